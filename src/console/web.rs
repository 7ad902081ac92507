//! The web console's small HTTP pieces, each with its limits: random tokens from the OS,
//! constant-time comparison, cookies (parsing and the `Set-Cookie` the console sends), the
//! same-origin checks, form decoding, HTML escaping and the headers every answer carries.
#![forbid(unsafe_code)]

use base64::Engine as _;
use hyper::header::{self, HeaderMap, HeaderValue};
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

/// The session cookie (`__Secure-`: browsers accept it only with `Secure`, from HTTPS).
pub const SESSION_COOKIE: &str = "__Secure-keyhole-console";
/// The sign-in form's own CSRF cookie (double submit: the form carries the same token).
pub const SIGN_IN_COOKIE: &str = "__Secure-keyhole-sign-in";
/// The header API calls carry the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-keyhole-csrf";
/// The cookies' path: the console and nothing else on the listener.
pub const COOKIE_PATH: &str = "/console";
/// Lifetime of the sign-in form's token (a form left open longer is sent again).
pub const SIGN_IN_TOKEN_MAX_AGE: u64 = 3600;

/// Most form fields read; longest field (bytes, decoded).
pub const MAX_FORM_FIELDS: usize = 16;
pub const MAX_FIELD_BYTES: usize = 4096;
/// Longest Cookie header read.
pub const MAX_COOKIE_HEADER: usize = 8192;

/// Every console answer carries these (the page and the API alike).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// 256 random bits from the operating system, URL-safe base64 (43 characters). None when the
/// OS cannot give them (the caller refuses to make a session without them).
pub fn random_token() -> Option<String> {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut b).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// Constant-time equality of two tokens (the length is not secret: tokens have one length).
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `s` looks like a token [`random_token`] made (before it is compared or looked up).
pub fn token_shaped(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The value of cookie `name` (the first one; every Cookie header looked at).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(text) = v.to_str() else { continue };
        if text.len() > MAX_COOKIE_HEADER {
            continue;
        }
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k.trim() == name {
                    return Some(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    None
}

/// `Set-Cookie` for a console cookie: `Secure; HttpOnly; SameSite=Strict; Path=/console`, a
/// session cookie unless `max_age` is given (0 deletes it).
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let mut s = format!("{name}={value}; Secure; HttpOnly; SameSite=Strict; Path={COOKIE_PATH}");
    if let Some(a) = max_age {
        s.push_str(&format!("; Max-Age={a}"));
    }
    s
}

/// Why a state-changing request is refused as cross-site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossSite {
    /// `Origin` is present and is not this server as the browser reached it.
    Origin(String),
    /// `Sec-Fetch-Site` is present and is not `same-origin`.
    FetchSite(String),
}

impl std::fmt::Display for CrossSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrossSite::Origin(o) => write!(f, "Origin {o:?} is not this server"),
            CrossSite::FetchSite(s) => write!(f, "Sec-Fetch-Site is {s:?}, not same-origin"),
        }
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// The same-origin checks on a state-changing request: when the browser sends `Origin` it
/// must be `https://` and the `Host` it sent; when it sends `Sec-Fetch-Site` it must be
/// `same-origin`. Under this console's `Referrer-Policy: no-referrer` a browser sends
/// `Origin: null` on its own POSTs (the Fetch standard serialises the origin so), which is
/// accepted only with `Sec-Fetch-Site: same-origin` beside it (another site's page can send
/// `null` too, never `same-origin`). Headers a browser does not send are not required: the
/// CSRF token is.
pub fn same_origin(headers: &HeaderMap) -> Result<(), CrossSite> {
    let fetch_site = header_text(headers, "sec-fetch-site");
    if let Some(o) = header_text(headers, "origin") {
        let host = header_text(headers, "host").unwrap_or("");
        let expected = format!("https://{host}");
        let ok = if o == "null" {
            fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("same-origin"))
        } else {
            !host.is_empty() && o.eq_ignore_ascii_case(&expected)
        };
        if !ok {
            return Err(CrossSite::Origin(o.chars().take(200).collect()));
        }
    }
    if let Some(s) = fetch_site {
        if !s.eq_ignore_ascii_case("same-origin") {
            return Err(CrossSite::FetchSite(s.chars().take(50).collect()));
        }
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let h = hex(*bytes.get(i + 1)?)?;
                let l = hex(*bytes.get(i + 2)?)?;
                out.push(h * 16 + l);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A form body's fields, in order. None when it is not a form this console sent: too many
/// fields, a field too long, bad escapes or not UTF-8.
pub fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut fields = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        if fields.len() >= MAX_FORM_FIELDS {
            return None;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (form_decode(k)?, form_decode(v)?);
        if k.len() > MAX_FIELD_BYTES || v.len() > MAX_FIELD_BYTES {
            return None;
        }
        fields.push((k, v));
    }
    Some(fields)
}

/// The first field named `name`.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Text for HTML (element content and quoted attribute values).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The headers every console answer carries: the strict CSP, no framing, no sniffing, no
/// referrer, no caching, and a separate browsing context.
pub fn secure_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", CONTENT_SECURITY_POLICY);
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cache-control", "no-store");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits_and_compare_whole() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        assert!(token_shaped(&a), "{a}");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a)
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..42]));
        assert!(!same_token("", &a));
        assert!(!token_shaped("short"));
        assert!(!token_shaped(&format!("{}!", &a[..42])));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Secure-keyhole-console-x=2"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Secure-keyhole-console=abc; b=3"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("3"));
        assert_eq!(cookie(&h, "c"), None);
        let big = format!("{SESSION_COOKIE}={}", "x".repeat(MAX_COOKIE_HEADER));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&big).unwrap());
        assert_eq!(
            cookie(&h, SESSION_COOKIE),
            None,
            "oversized headers are skipped"
        );
    }

    #[test]
    fn set_cookie_has_every_flag() {
        let c = set_cookie(SESSION_COOKIE, "v", None);
        assert_eq!(
            c,
            "__Secure-keyhole-console=v; Secure; HttpOnly; SameSite=Strict; Path=/console"
        );
        assert!(set_cookie(SIGN_IN_COOKIE, "", Some(0)).ends_with("; Max-Age=0"));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_checks_what_the_browser_sends() {
        assert!(same_origin(&headers(&[("host", "h:5986")])).is_ok());
        assert!(same_origin(&headers(&[
            ("host", "h:5986"),
            ("origin", "https://h:5986"),
            ("sec-fetch-site", "same-origin")
        ]))
        .is_ok());
        assert!(matches!(
            same_origin(&headers(&[
                ("host", "h:5986"),
                ("origin", "https://evil.example")
            ])),
            Err(CrossSite::Origin(_))
        ));
        assert!(matches!(
            same_origin(&headers(&[("host", "h:5986"), ("origin", "http://h:5986")])),
            Err(CrossSite::Origin(_))
        ));
        assert!(matches!(
            same_origin(&headers(&[("origin", "https://h:5986")])),
            Err(CrossSite::Origin(_))
        ));
        assert!(matches!(
            same_origin(&headers(&[("host", "h"), ("sec-fetch-site", "cross-site")])),
            Err(CrossSite::FetchSite(_))
        ));
        assert!(matches!(
            same_origin(&headers(&[("host", "h"), ("sec-fetch-site", "same-site")])),
            Err(CrossSite::FetchSite(_))
        ));
        // `Origin: null` (no-referrer): only beside Sec-Fetch-Site: same-origin.
        assert!(same_origin(&headers(&[
            ("host", "h"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ]))
        .is_ok());
        assert!(matches!(
            same_origin(&headers(&[("host", "h"), ("origin", "null")])),
            Err(CrossSite::Origin(_))
        ));
        assert!(matches!(
            same_origin(&headers(&[
                ("host", "h"),
                ("origin", "null"),
                ("sec-fetch-site", "cross-site")
            ])),
            Err(CrossSite::Origin(_))
        ));
    }

    #[test]
    fn forms_decode_within_limits() {
        let f = parse_form(b"user=al%69ce&password=a+b%26c&empty=&flag").unwrap();
        assert_eq!(field(&f, "user"), Some("alice"));
        assert_eq!(field(&f, "password"), Some("a b&c"));
        assert_eq!(field(&f, "empty"), Some(""));
        assert_eq!(field(&f, "flag"), Some(""));
        assert_eq!(field(&f, "nope"), None);
        assert!(parse_form(b"a=%zz").is_none());
        assert!(parse_form(b"a=%4").is_none());
        assert!(parse_form(b"a=%ff").is_none(), "not UTF-8");
        assert!(parse_form("a=1&".repeat(MAX_FORM_FIELDS + 1).as_bytes()).is_none());
        assert!(parse_form(format!("a={}", "x".repeat(MAX_FIELD_BYTES + 1)).as_bytes()).is_none());
    }

    #[test]
    fn html_escaping_leaves_no_markup() {
        assert_eq!(
            html_escape("<script>\"x\" & 'y'</script>\u{7}"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;\u{fffd}"
        );
    }
}
