//! WS-Man message encryption (MS-WSMV §2.2.9.1), sans-IO: the `multipart/encrypted` bodies that
//! Negotiate and Kerberos clients send over plain HTTP, parsed with limits and built, using a
//! completed [`SecurityContext`]'s wrap/unwrap. Also the TLS channel binding data
//! (`tls-server-end-point`, RFC 5929) Negotiate clients bind to over HTTPS.
//!
//! One encrypted part looks like this (the framing pypsrp, pywinrm and Windows use):
//! ```text
//! --Encrypted Boundary\r\n
//! \tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n
//! \tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=<plaintext bytes>\r\n
//! --Encrypted Boundary\r\n
//! \tContent-Type: application/octet-stream\r\n
//! <u32 LE header length><header (signature / GSS wrap header)><encrypted data>--Encrypted Boundary--\r\n
//! ```
//! with HTTP `Content-Type: multipart/encrypted;protocol="<protocol>";boundary="Encrypted Boundary"`.
#![forbid(unsafe_code)]

use sha2::Digest as _;

use super::negotiate::{SecurityContext, WrapError};

/// The SPNEGO (Negotiate: Kerberos or NTLM) protocol name.
pub const PROTOCOL_SPNEGO: &str = "application/HTTP-SPNEGO-session-encrypted";
/// The protocol name clients use with the `Kerberos` scheme.
pub const PROTOCOL_KERBEROS: &str = "application/HTTP-Kerberos-session-encrypted";
/// The MIME boundary every client uses.
pub const BOUNDARY: &str = "Encrypted Boundary";
/// Longest header (signature / GSS wrap token header) accepted.
pub const MAX_WRAP_HEADER: usize = 1024;
/// Most MIME header bytes read before the binary part.
const MAX_MIME_HEADER: usize = 1024;

/// Why an encrypted body was refused (for the log).
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("malformed encrypted body: {0}")]
    Malformed(&'static str),
    #[error(
        "encrypted body declares {declared} plaintext bytes, more than the {limit}-byte limit"
    )]
    TooLarge { declared: usize, limit: usize },
    #[error("the body's protocol {got} is not the connection's ({want})")]
    WrongProtocol { got: String, want: &'static str },
    #[error("decryption failed: {0}")]
    Wrap(#[from] WrapError),
    #[error("decrypted {actual} bytes where the body declared {declared}")]
    Length { actual: usize, declared: usize },
}

/// The HTTP `Content-Type` of an encrypted body.
pub fn content_type(protocol: &str) -> String {
    format!("multipart/encrypted;protocol=\"{protocol}\";boundary=\"{BOUNDARY}\"")
}

/// Reads an HTTP `Content-Type`: `None` when it is not `multipart/encrypted` (a plain SOAP
/// body), else the protocol it names (one of ours) or an error.
pub fn parse_content_type(value: &str) -> Option<Result<&'static str, EncryptionError>> {
    let mut parts = value.split(';').map(str::trim);
    let media = parts.next()?;
    if !media.eq_ignore_ascii_case("multipart/encrypted") {
        return None;
    }
    let mut protocol = None;
    let mut boundary_ok = false;
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        if k.trim().eq_ignore_ascii_case("protocol") {
            protocol = [PROTOCOL_SPNEGO, PROTOCOL_KERBEROS]
                .into_iter()
                .find(|x| x.eq_ignore_ascii_case(v));
            if protocol.is_none() {
                return Some(Err(EncryptionError::WrongProtocol {
                    got: v.chars().take(100).collect(),
                    want: PROTOCOL_SPNEGO,
                }));
            }
        } else if k.trim().eq_ignore_ascii_case("boundary") {
            boundary_ok = v == BOUNDARY;
        }
    }
    match (protocol, boundary_ok) {
        (Some(p), true) => Some(Ok(p)),
        (None, _) => Some(Err(EncryptionError::Malformed("no protocol parameter"))),
        (_, false) => Some(Err(EncryptionError::Malformed(
            "boundary is not \"Encrypted Boundary\"",
        ))),
    }
}

fn strip_prefix<'a>(b: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
    b.strip_prefix(p)
}

/// Splits off one CRLF-terminated line (at most [`MAX_MIME_HEADER`] bytes).
fn line(b: &[u8]) -> Result<(&[u8], &[u8]), EncryptionError> {
    let limit = b.len().min(MAX_MIME_HEADER);
    let window = b.get(..limit).unwrap_or(b);
    let i = window
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(EncryptionError::Malformed("a MIME line has no CRLF"))?;
    Ok((b.get(..i).unwrap_or(&[]), b.get(i + 2..).unwrap_or(&[])))
}

fn declared_length(l: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(l).ok()?;
    let lower = text.to_ascii_lowercase();
    let at = lower.find("length=")?;
    let digits: String = text
        .get(at + 7..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    digits.parse().ok()
}

/// Decrypts a `multipart/encrypted` body with the connection's context. `protocol` is what the
/// Content-Type named; `max_plain` the largest plaintext accepted (the envelope limit).
pub fn decrypt_body(
    ctx: &mut SecurityContext,
    body: &[u8],
    max_plain: usize,
) -> Result<Vec<u8>, EncryptionError> {
    let open = format!("--{BOUNDARY}\r\n");
    let close = format!("--{BOUNDARY}--\r\n");
    let rest = strip_prefix(body, open.as_bytes()).ok_or(EncryptionError::Malformed(
        "does not start with the boundary",
    ))?;
    // MIME headers of the first part, up to the second boundary.
    let mut rest = rest;
    let mut declared = None;
    let mut protocol_seen = false;
    for _ in 0..8 {
        if let Some(r) = strip_prefix(rest, open.as_bytes()) {
            rest = r;
            break;
        }
        let (l, r) = line(rest)?;
        let t = String::from_utf8_lossy(l);
        let t = t.trim();
        if let Some(v) = t
            .strip_prefix("Content-Type:")
            .or_else(|| t.strip_prefix("Content-type:"))
        {
            let v = v.trim();
            protocol_seen = v.eq_ignore_ascii_case(PROTOCOL_SPNEGO)
                || v.eq_ignore_ascii_case(PROTOCOL_KERBEROS);
        } else if t.starts_with("OriginalContent:") {
            declared = declared_length(l);
        }
        rest = r;
    }
    if !protocol_seen {
        return Err(EncryptionError::Malformed(
            "the first part names no session-encrypted protocol",
        ));
    }
    let declared = declared.ok_or(EncryptionError::Malformed("no OriginalContent Length"))?;
    if declared > max_plain {
        return Err(EncryptionError::TooLarge {
            declared,
            limit: max_plain,
        });
    }
    let (l, binary) = line(rest)?;
    if !String::from_utf8_lossy(l)
        .trim()
        .eq_ignore_ascii_case("Content-Type: application/octet-stream")
    {
        return Err(EncryptionError::Malformed(
            "the second part is not application/octet-stream",
        ));
    }
    let binary = binary
        .strip_suffix(close.as_bytes())
        .or_else(|| binary.strip_suffix(close.trim_end().as_bytes()))
        .ok_or(EncryptionError::Malformed("no closing boundary at the end"))?;
    let len_bytes: [u8; 4] = binary
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(EncryptionError::Malformed("no header length"))?;
    let hlen = u32::from_le_bytes(len_bytes) as usize;
    if hlen == 0 || hlen > MAX_WRAP_HEADER {
        return Err(EncryptionError::Malformed("implausible header length"));
    }
    let header = binary
        .get(4..4 + hlen)
        .ok_or(EncryptionError::Malformed("header beyond the body"))?;
    let data = binary.get(4 + hlen..).unwrap_or(&[]);
    if data.len() > max_plain.saturating_add(64) {
        return Err(EncryptionError::TooLarge {
            declared: data.len(),
            limit: max_plain,
        });
    }
    let plain = ctx.unwrap(header, data)?;
    // Kerberos clients may count block padding in Length (pypsrp adds it).
    if plain.len() != declared && !(plain.len() < declared && declared - plain.len() <= 16) {
        return Err(EncryptionError::Length {
            actual: plain.len(),
            declared,
        });
    }
    Ok(plain)
}

/// Encrypts `plain` (a SOAP envelope) into a body for `protocol`.
pub fn encrypt_body(
    ctx: &mut SecurityContext,
    protocol: &str,
    plain: &[u8],
) -> Result<Vec<u8>, EncryptionError> {
    let (header, data) = ctx.wrap(plain)?;
    let mut out = Vec::with_capacity(plain.len() + header.len() + 256);
    out.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\n\tContent-Type: {protocol}\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={}\r\n--{BOUNDARY}\r\n\tContent-Type: application/octet-stream\r\n",
            plain.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Ok(out)
}

/// RFC 5929 `tls-server-end-point` channel binding application data for the server's
/// certificate (DER): `tls-server-end-point:` followed by its hash — SHA-256, or SHA-384/512 when
/// the certificate is signed with those (MD5 and SHA-1 become SHA-256).
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    let hash: Vec<u8> = match signature_hash(cert_der) {
        SigHash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        SigHash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
        SigHash::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
    };
    let mut out = b"tls-server-end-point:".to_vec();
    out.extend_from_slice(&hash);
    out
}

enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of the certificate's signatureAlgorithm (second element of the outer SEQUENCE).
fn signature_hash(cert: &[u8]) -> SigHash {
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    let oid = (|| {
        let (_, outer, _) = der_tlv(cert)?;
        let (_, _tbs, rest) = der_tlv(outer)?;
        let (_, alg, _) = der_tlv(rest)?;
        let (tag, oid, _) = der_tlv(alg)?;
        (tag == 0x06).then_some(oid)
    })();
    match oid {
        Some(o) if SHA384.contains(&o) => SigHash::Sha384,
        Some(o) if SHA512.contains(&o) => SigHash::Sha512,
        _ => SigHash::Sha256,
    }
}

fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        rest = rest.get(n..)?;
        bytes.iter().fold(0usize, |a, &x| (a << 8) | x as usize)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::auth::ntlm::{self, Role, Session};

    fn pair() -> (SecurityContext, Session) {
        let key = [7u8; 16];
        let server = Session::new(&key, ntlm::client::FLAGS, Role::Server);
        let client = Session::new(&key, ntlm::client::FLAGS, Role::Client);
        (SecurityContext::Ntlm(Box::new(server)), client)
    }

    /// Builds a body exactly as pypsrp's `WinRMEncryption._wrap_message` does.
    fn pypsrp_body(client: &mut Session, msg: &[u8]) -> Vec<u8> {
        let (sig, enc) = client.seal(msg);
        let mut b = format!(
            "--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={}\r\n--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n",
            msg.len()
        )
        .into_bytes();
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&sig);
        b.extend_from_slice(&enc);
        b.extend_from_slice(b"--Encrypted Boundary--\r\n");
        b
    }

    #[test]
    fn content_types() {
        let ct = content_type(PROTOCOL_SPNEGO);
        assert_eq!(
            ct,
            "multipart/encrypted;protocol=\"application/HTTP-SPNEGO-session-encrypted\";boundary=\"Encrypted Boundary\""
        );
        assert_eq!(parse_content_type(&ct).unwrap().unwrap(), PROTOCOL_SPNEGO);
        assert_eq!(
            parse_content_type(&content_type(PROTOCOL_KERBEROS))
                .unwrap()
                .unwrap(),
            PROTOCOL_KERBEROS
        );
        assert!(parse_content_type("application/soap+xml;charset=UTF-8").is_none());
        assert!(parse_content_type(
            "multipart/encrypted;protocol=\"application/HTTP-CredSSP-session-encrypted\";boundary=\"Encrypted Boundary\""
        )
        .unwrap()
        .is_err());
        assert!(parse_content_type("multipart/encrypted;protocol=\"application/HTTP-SPNEGO-session-encrypted\";boundary=\"x\"")
            .unwrap()
            .is_err());
    }

    #[test]
    fn pypsrp_framing_round_trips() {
        let (mut server, mut client) = pair();
        let soap = b"<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"/>";
        let body = pypsrp_body(&mut client, soap);
        assert_eq!(decrypt_body(&mut server, &body, 1 << 20).unwrap(), soap);
        // The reply parses the way pypsrp's unwrap_message reads it.
        let reply = encrypt_body(&mut server, PROTOCOL_SPNEGO, b"<reply/>").unwrap();
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=8\r\n--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n"));
        assert!(reply.ends_with(b"--Encrypted Boundary--\r\n"));
        let start = reply
            .windows(26)
            .position(|w| w == b"application/octet-stream\r\n")
            .unwrap()
            + 26;
        let hlen = u32::from_le_bytes(reply[start..start + 4].try_into().unwrap()) as usize;
        assert_eq!(hlen, 16);
        let sig = &reply[start + 4..start + 20];
        let enc = &reply[start + 20..reply.len() - 24];
        assert_eq!(client.unseal(sig, enc).unwrap(), b"<reply/>");
    }

    #[test]
    fn tampered_truncated_and_oversized_bodies_are_refused() {
        let (mut server, mut client) = pair();
        let body = pypsrp_body(&mut client, b"<a/>");
        // Every truncation is refused, except dropping the final CRLF (accepted, as pypsrp does).
        for n in (0..body.len()).filter(|n| *n != body.len() - 2) {
            let (mut s, mut c) = pair();
            let b = pypsrp_body(&mut c, b"<a/>");
            assert!(
                decrypt_body(&mut s, &b[..n], 1 << 20).is_err(),
                "prefix {n}"
            );
        }
        let mut flipped = body.clone();
        let i = flipped.len() - 26;
        flipped[i] ^= 0x40;
        assert!(decrypt_body(&mut server, &flipped, 1 << 20).is_err());
        let (mut s, mut c) = pair();
        let big = pypsrp_body(&mut c, &[b'x'; 2000]);
        assert!(matches!(
            decrypt_body(&mut s, &big, 1000),
            Err(EncryptionError::TooLarge { .. })
        ));
        // A lying Length is caught after decryption.
        let (mut s, mut c) = pair();
        let lie = String::from_utf8_lossy(&pypsrp_body(&mut c, b"<a/>"))
            .replace("Length=4", "Length=400")
            .into_bytes();
        // (lossy replacement may corrupt binary bytes; either way it must be refused)
        assert!(decrypt_body(&mut s, &lie, 1 << 20).is_err());
    }

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().to_vec();
        let cb = tls_server_end_point(&der);
        assert!(cb.starts_with(b"tls-server-end-point:"));
        assert_eq!(&cb[21..], sha2::Sha256::digest(&der).as_slice());
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let c384 = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&p384)
            .unwrap();
        let cb = tls_server_end_point(c384.der());
        assert_eq!(&cb[21..], sha2::Sha384::digest(c384.der()).as_slice());
    }
}
