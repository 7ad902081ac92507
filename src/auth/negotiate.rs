//! HTTP Negotiate (RFC 4559) for gate 2, sans-IO: `Authorization: Negotiate|Kerberos|NTLM <b64>`
//! headers in, `WWW-Authenticate` values and a completed security context out.
//!
//! The HTTP layer keeps one [`ConnectionAuth`] per TCP connection (Negotiate authenticates the
//! connection, and its exchanges take several requests on it) and one [`NegotiateSettings`] per
//! loaded configuration. Each `Authorization` header goes to [`ConnectionAuth::step`]:
//! - [`Outcome::Continue`]: answer 401 with the `WWW-Authenticate` value given (the same generic
//!   401 otherwise — only the token differs);
//! - [`Outcome::Complete`]: the caller is [`Negotiated::user`] (a local name: Kerberos principals
//!   are mapped by `[auth] realms`, NTLM names are users.toml accounts); send
//!   [`Negotiated::www_authenticate`] (the mutual-authentication token) with the response, and
//!   keep [`Negotiated::security`] with the connection for message encryption;
//! - `Err`: a refusal — the generic 401, with the error for the log.
//!
//! Kerberos (raw, or inside SPNEGO) goes to the system's GSSAPI with the configured keytab. NTLM
//! (raw under `Negotiate`/`NTLM`, or inside SPNEGO when the client prefers it or Kerberos is off)
//! is keyhole's own ([`super::ntlm`]) against users.toml NT hashes, SPNEGO-wrapped by
//! [`super::spnego`] with the mechListMIC exchange MS-SPNG requires.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;

use super::ntlm::{self, NtlmError};
use super::spnego::{self, ClientToken, NegState, NegTokenResp, SpnegoError};
use crate::config::keytab::{read_keytab, realms_of};
use crate::config::{AuthConfig, ChannelBinding};
use crate::sys::gssapi::{self, AcceptorCred, GssError};

/// Longest `Authorization` header value parsed for Negotiate (Kerberos tickets with a large
/// PAC reach ~48 KB of token; Windows' MaxTokenSize is 48,000 bytes, 64,000 in base64).
pub const MAX_AUTH_HEADER_LEN: usize = 96 * 1024;
/// Largest decoded token accepted.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Most legs of one exchange on one connection (Kerberos takes 1, NTLM 2, SPNEGO-NTLM with a
/// mechanism switch 3).
pub const MAX_LEGS: u32 = 4;

/// The HTTP authentication scheme a client used; the server answers in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Negotiate,
    Kerberos,
    Ntlm,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Negotiate => "Negotiate",
            Scheme::Kerberos => "Kerberos",
            Scheme::Ntlm => "NTLM",
        }
    }
}

/// Parses an `Authorization` value of the Negotiate family: `None` when it is another scheme
/// (Basic, certificate) so the caller tries those; `Some(Err)` when it is ours but malformed.
pub fn parse_authorization(value: &[u8]) -> Option<Result<(Scheme, Vec<u8>), NegotiateError>> {
    let text = value.trim_ascii();
    let (name, rest) = match text.iter().position(|b| *b == b' ') {
        Some(i) => (text.get(..i)?, text.get(i + 1..)?),
        None => (text, &b""[..]),
    };
    let scheme = if name.eq_ignore_ascii_case(b"Negotiate") {
        Scheme::Negotiate
    } else if name.eq_ignore_ascii_case(b"Kerberos") {
        Scheme::Kerberos
    } else if name.eq_ignore_ascii_case(b"NTLM") {
        Scheme::Ntlm
    } else {
        return None;
    };
    if value.len() > MAX_AUTH_HEADER_LEN {
        return Some(Err(NegotiateError::Malformed(format!(
            "Authorization header of {} bytes (limit {MAX_AUTH_HEADER_LEN})",
            value.len()
        ))));
    }
    let b64 = rest.trim_ascii();
    let token = match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(t) if !t.is_empty() && t.len() <= MAX_TOKEN_LEN => t,
        Ok(t) => {
            return Some(Err(NegotiateError::Malformed(format!(
                "{} token of {} bytes",
                scheme.as_str(),
                t.len()
            ))))
        }
        Err(_) => {
            return Some(Err(NegotiateError::Malformed(format!(
                "{} token is not base64",
                scheme.as_str()
            ))))
        }
    };
    Some(Ok((scheme, token)))
}

/// Why a Negotiate exchange was refused (for the server and audit logs; the client sees the
/// generic 401).
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    #[error("{0}")]
    Malformed(String),
    #[error("the client offered no mechanism enabled here: {0}")]
    NoMechanism(String),
    #[error("Kerberos: {0}")]
    Kerberos(#[from] GssError),
    #[error("{0}")]
    Ntlm(#[from] NtlmError),
    #[error("{0}")]
    Spnego(#[from] SpnegoError),
    #[error("principal {principal} is of a realm not in [auth] realms ({allowed})")]
    Realm { principal: String, allowed: String },
    #[error("principal {0} does not map to a local user name (only NAME@REALM with a plain name)")]
    NotAUser(String),
    #[error("channel bindings: {0}")]
    ChannelBinding(&'static str),
    #[error("{0} token arrived in a state that does not expect it")]
    UnexpectedToken(&'static str),
    #[error("more than {MAX_LEGS} legs in one exchange")]
    TooManyLegs,
}

impl NegotiateError {
    /// The user a failure is about when the client proved nothing but named one (an NTLM wrong
    /// response), for lock-out counting.
    pub fn failed_user(&self) -> Option<&str> {
        match self {
            NegotiateError::Ntlm(NtlmError::WrongResponse { user, .. })
            | NegotiateError::Ntlm(NtlmError::UnknownUser { user, .. }) => Some(user),
            _ => None,
        }
    }
}

/// A configuration problem found when building [`NegotiateSettings`] (serve refuses to start,
/// `check` reports it).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Kerberos(GssError),
    #[error("cannot read the keytab: {0}")]
    Keytab(String),
    #[error("[auth] negotiate = true, but keytab = \"\" and ntlm = false leave no mechanism: set keytab (Kerberos) or ntlm = true")]
    Nothing,
}

/// Negotiate settings for one loaded configuration.
pub struct NegotiateSettings {
    kerberos: Option<Arc<AcceptorCred>>,
    realms: Vec<String>,
    ntlm: bool,
    channel_binding: ChannelBinding,
    names: ntlm::ServerNames,
}

impl std::fmt::Debug for NegotiateSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NegotiateSettings")
            .field("kerberos", &self.kerberos.is_some())
            .field("realms", &self.realms)
            .field("ntlm", &self.ntlm)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

impl NegotiateSettings {
    /// Builds the settings from `[auth]`; `keytab` is the resolved keytab path. Acquires the
    /// Kerberos acceptor credentials once (every principal of the keytab).
    pub fn from_config(
        auth: &AuthConfig,
        keytab: Option<&Path>,
        computer_name: &str,
    ) -> Result<Self, SetupError> {
        let (kerberos, keytab_realms) = match keytab {
            Some(path) if !auth.keytab.is_empty() => {
                let entries = read_keytab(path).map_err(|e| SetupError::Keytab(e.to_string()))?;
                let cred = AcceptorCred::acquire(path).map_err(SetupError::Kerberos)?;
                (Some(Arc::new(cred)), realms_of(&entries))
            }
            _ => (None, Vec::new()),
        };
        if kerberos.is_none() && !auth.ntlm {
            return Err(SetupError::Nothing);
        }
        let realms = if auth.realms.is_empty() {
            keytab_realms
        } else {
            auth.realms.clone()
        };
        Ok(NegotiateSettings {
            kerberos,
            realms,
            ntlm: auth.ntlm,
            channel_binding: auth.channel_binding,
            names: ntlm::ServerNames::for_host(computer_name),
        })
    }

    /// Settings for NTLM only (no keytab), e.g. `keyhole demo`.
    pub fn ntlm_only(channel_binding: ChannelBinding, computer_name: &str) -> Self {
        NegotiateSettings {
            kerberos: None,
            realms: Vec::new(),
            ntlm: true,
            channel_binding,
            names: ntlm::ServerNames::for_host(computer_name),
        }
    }

    /// The `WWW-Authenticate` values of the generic 401, in order (each its own header line, as
    /// Windows sends them): `Negotiate`, and `Kerberos` when a keytab is configured.
    pub fn challenge_headers(&self) -> Vec<&'static str> {
        let mut v = vec!["Negotiate"];
        if self.kerberos.is_some() {
            v.push("Kerberos");
        }
        v
    }

    /// Whether Kerberos is on (a keytab was loaded).
    pub fn kerberos(&self) -> bool {
        self.kerberos.is_some()
    }

    /// The realms whose principals are accepted.
    pub fn realms(&self) -> &[String] {
        &self.realms
    }

    /// `alice@EXAMPLE.COM` → `alice` when EXAMPLE.COM is an accepted realm (compared without
    /// regard to case: AD realms are DNS names). Service principals (`HTTP/x@R`), enterprise
    /// names (`a@b@R`) and names keyhole cannot hold are refused.
    pub fn map_principal(&self, principal: &str) -> Result<String, NegotiateError> {
        let (name, realm) = principal
            .rsplit_once('@')
            .ok_or_else(|| NegotiateError::NotAUser(principal.to_string()))?;
        if !self.realms.iter().any(|r| r.eq_ignore_ascii_case(realm)) {
            return Err(NegotiateError::Realm {
                principal: principal.to_string(),
                allowed: self.realms.join(", "),
            });
        }
        if name.contains(['/', '@', '\\']) || super::validate_user_name(name).is_err() {
            return Err(NegotiateError::NotAUser(principal.to_string()));
        }
        Ok(name.to_string())
    }
}

/// Which mechanism authenticated the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Kerberos,
    Ntlm,
}

/// The security context of an authenticated connection, for message encryption.
pub enum SecurityContext {
    Kerberos(gssapi::Context),
    Ntlm(Box<ntlm::Session>),
}

impl std::fmt::Debug for SecurityContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecurityContext::Kerberos(_) => "SecurityContext::Kerberos",
            SecurityContext::Ntlm(_) => "SecurityContext::Ntlm",
        })
    }
}

/// A context's wrap/unwrap failed (for the log).
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("{0}")]
    Kerberos(#[from] GssError),
    #[error("{0}")]
    Ntlm(#[from] NtlmError),
    #[error("the NTLM context was negotiated without sealing")]
    NoSealing,
}

impl SecurityContext {
    /// Encrypts one message: (header/signature, encrypted data) as MS-WSMV frames them.
    pub fn wrap(&mut self, data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WrapError> {
        match self {
            SecurityContext::Kerberos(c) => Ok(c.wrap_winrm(data)?),
            SecurityContext::Ntlm(s) => {
                if !s.can_seal() {
                    return Err(WrapError::NoSealing);
                }
                let (sig, enc) = s.seal(data);
                Ok((sig.to_vec(), enc))
            }
        }
    }

    /// Decrypts one message from the peer and checks its integrity.
    pub fn unwrap(&mut self, header: &[u8], data: &[u8]) -> Result<Vec<u8>, WrapError> {
        match self {
            SecurityContext::Kerberos(c) => Ok(c.unwrap_winrm(header, data)?),
            SecurityContext::Ntlm(s) => {
                if !s.can_seal() {
                    return Err(WrapError::NoSealing);
                }
                Ok(s.unseal(header, data)?)
            }
        }
    }
}

/// A completed exchange.
#[derive(Debug)]
pub struct Negotiated {
    /// The local user name (Kerberos: mapped from the principal; NTLM: as sent, a users.toml
    /// account — compare case-insensitively).
    pub user: String,
    /// What the client authenticated as: `alice@EXAMPLE.COM`, or `DOMAIN\alice` for NTLM.
    pub principal: String,
    pub mechanism: Mechanism,
    /// The scheme the client used (the encryption protocol name follows it).
    pub scheme: Scheme,
    /// Whether the client's channel bindings were checked and matched.
    pub channel_bound: bool,
    /// The value for `WWW-Authenticate` on the response that completes the exchange (the
    /// mutual-authentication token), if any.
    pub www_authenticate: Option<String>,
    pub security: SecurityContext,
}

impl Negotiated {
    /// The MS-WSMV protocol name for message encryption with this context.
    pub fn encryption_protocol(&self) -> &'static str {
        match self.scheme {
            Scheme::Kerberos => super::encryption::PROTOCOL_KERBEROS,
            _ => super::encryption::PROTOCOL_SPNEGO,
        }
    }
}

/// What one `Authorization` header led to.
#[derive(Debug)]
pub enum Outcome {
    /// Answer 401 with this `WWW-Authenticate` value and wait for the next leg.
    Continue { www_authenticate: String },
    /// Authenticated.
    Complete(Box<Negotiated>),
}

enum State {
    Fresh,
    Kerberos(gssapi::Context),
    /// NTLM in progress. `spnego` is the client's mechTypes (DER) and whether NTLM was its
    /// first choice, when the exchange is SPNEGO-wrapped.
    Ntlm {
        challenged: Option<ntlm::Challenged>,
        spnego: Option<(Vec<u8>, bool)>,
    },
}

/// The per-connection Negotiate state the HTTP layer keeps.
pub struct ConnectionAuth {
    state: State,
    legs: u32,
}

impl Default for ConnectionAuth {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ConnectionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.state {
            State::Fresh => "fresh",
            State::Kerberos(_) => "kerberos",
            State::Ntlm { .. } => "ntlm",
        };
        write!(f, "ConnectionAuth({s}, leg {})", self.legs)
    }
}

fn header(scheme: Scheme, token: &[u8]) -> String {
    format!(
        "{} {}",
        scheme.as_str(),
        base64::engine::general_purpose::STANDARD.encode(token)
    )
}

fn is_krb(oid: &[u8]) -> bool {
    oid == spnego::OID_KRB5 || oid == spnego::OID_MS_KRB5
}

impl ConnectionAuth {
    pub fn new() -> Self {
        ConnectionAuth {
            state: State::Fresh,
            legs: 0,
        }
    }

    /// Whether an exchange is under way (a 401 with a token was sent and the next leg is due).
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Fresh)
    }

    /// Feeds one client token. `bindings` is the TLS channel binding application data
    /// (`tls-server-end-point:` followed by the certificate hash, see
    /// [`super::encryption::tls_server_end_point`]) on HTTPS, `None` on plain HTTP.
    /// `nt_hash` looks up the NT hash of a users.toml account (case-insensitive; `None` for
    /// unknown, disabled or hash-less accounts). On any error the state is reset.
    pub fn step(
        &mut self,
        settings: &NegotiateSettings,
        scheme: Scheme,
        token: &[u8],
        bindings: Option<&[u8]>,
        nt_hash: &dyn Fn(&str) -> Option<[u8; 16]>,
    ) -> Result<Outcome, NegotiateError> {
        self.legs += 1;
        if self.legs > MAX_LEGS {
            self.reset();
            return Err(NegotiateError::TooManyLegs);
        }
        let state = std::mem::replace(&mut self.state, State::Fresh);
        let result = self.advance(state, settings, scheme, token, bindings, nt_hash);
        if !matches!(result, Ok(Outcome::Continue { .. })) {
            self.reset();
        }
        result
    }

    fn reset(&mut self) {
        self.state = State::Fresh;
        self.legs = 0;
    }

    fn advance(
        &mut self,
        state: State,
        settings: &NegotiateSettings,
        scheme: Scheme,
        token: &[u8],
        bindings: Option<&[u8]>,
        nt_hash: &dyn Fn(&str) -> Option<[u8; 16]>,
    ) -> Result<Outcome, NegotiateError> {
        let bindings = match settings.channel_binding {
            ChannelBinding::Ignore => None,
            _ => bindings,
        };
        match state {
            State::Fresh => {
                if ntlm::is_ntlm(token) {
                    if !settings.ntlm {
                        return Err(NegotiateError::NoMechanism(
                            "raw NTLM (ntlm = false)".into(),
                        ));
                    }
                    let (c, out) = ntlm::challenge(token, &settings.names)?;
                    self.state = State::Ntlm {
                        challenged: Some(c),
                        spnego: None,
                    };
                    return Ok(Outcome::Continue {
                        www_authenticate: header(scheme, &out),
                    });
                }
                if spnego::is_raw_kerberos(token) {
                    return self.kerberos(settings, None, scheme, token, bindings);
                }
                let init = match spnego::parse_client(token)? {
                    ClientToken::Init(i) => i,
                    ClientToken::Resp(_) => {
                        return Err(NegotiateError::UnexpectedToken("a NegTokenResp"))
                    }
                };
                let pick = init.mech_types.iter().position(|m| {
                    (is_krb(m) && settings.kerberos.is_some())
                        || (m.as_slice() == spnego::OID_NTLM && settings.ntlm)
                });
                let Some(index) = pick else {
                    return Err(NegotiateError::NoMechanism(format!(
                        "SPNEGO offered {} mechanism(s), none of Kerberos (keytab {}) or NTLM (ntlm = {})",
                        init.mech_types.len(),
                        if settings.kerberos.is_some() { "loaded" } else { "off" },
                        settings.ntlm
                    )));
                };
                if init.mech_types.get(index).is_some_and(|m| is_krb(m)) {
                    return self.kerberos(settings, None, scheme, token, bindings);
                }
                let first = index == 0;
                let mut resp = NegTokenResp {
                    neg_state: Some(NegState::AcceptIncomplete as u8),
                    supported_mech: Some(spnego::OID_NTLM.to_vec()),
                    ..NegTokenResp::default()
                };
                let mut challenged = None;
                if let (true, Some(t)) = (first, init.mech_token.as_deref()) {
                    let (c, out) = ntlm::challenge(t, &settings.names)?;
                    challenged = Some(c);
                    resp.response_token = Some(out);
                }
                self.state = State::Ntlm {
                    challenged,
                    spnego: Some((init.mech_types_der, first)),
                };
                Ok(Outcome::Continue {
                    www_authenticate: header(scheme, &spnego::encode_resp(&resp)),
                })
            }
            State::Kerberos(ctx) => self.kerberos(settings, Some(ctx), scheme, token, bindings),
            State::Ntlm {
                challenged: None,
                spnego: Some(sp),
            } => {
                let resp = match spnego::parse_client(token)? {
                    ClientToken::Resp(r) => r,
                    ClientToken::Init(_) => {
                        return Err(NegotiateError::UnexpectedToken("a second NegTokenInit"))
                    }
                };
                let t = resp.response_token.ok_or(NegotiateError::UnexpectedToken(
                    "a NegTokenResp without NTLM",
                ))?;
                let (c, out) = ntlm::challenge(&t, &settings.names)?;
                self.state = State::Ntlm {
                    challenged: Some(c),
                    spnego: Some(sp),
                };
                let resp = NegTokenResp {
                    neg_state: Some(NegState::AcceptIncomplete as u8),
                    response_token: Some(out),
                    ..NegTokenResp::default()
                };
                Ok(Outcome::Continue {
                    www_authenticate: header(scheme, &spnego::encode_resp(&resp)),
                })
            }
            State::Ntlm {
                challenged: None,
                spnego: None,
            } => Err(NegotiateError::UnexpectedToken("an NTLM")),
            State::Ntlm {
                challenged: Some(c),
                spnego: sp,
            } => {
                let (auth_bytes, mic) = match &sp {
                    None => (token.to_vec(), None),
                    Some(_) => match spnego::parse_client(token)? {
                        ClientToken::Resp(r) => (
                            r.response_token.ok_or(NegotiateError::UnexpectedToken(
                                "a NegTokenResp without NTLM AUTHENTICATE",
                            ))?,
                            r.mech_list_mic,
                        ),
                        ClientToken::Init(_) => {
                            return Err(NegotiateError::UnexpectedToken("a second NegTokenInit"))
                        }
                    },
                };
                let auth = ntlm::parse_authenticate(&auth_bytes)?;
                let hash = nt_hash(&auth.user);
                let ok =
                    ntlm::verify(&c, &auth, hash.as_ref(), bindings, settings.channel_binding)?;
                let mut session = ok.session;
                let mut www = None;
                if let Some((mech_types, first)) = sp {
                    let mut resp = NegTokenResp {
                        neg_state: Some(NegState::AcceptCompleted as u8),
                        ..NegTokenResp::default()
                    };
                    match mic {
                        Some(m) => {
                            session.verify(&mech_types, &m)?;
                            session.reset_in();
                            resp.mech_list_mic = Some(session.sign(&mech_types).to_vec());
                            session.reset_out();
                        }
                        None if !first => {
                            return Err(NegotiateError::Malformed(
                                "SPNEGO chose NTLM over the client's first choice but the client sent no mechListMIC (possible downgrade)".into(),
                            ))
                        }
                        None => {}
                    }
                    www = Some(header(scheme, &spnego::encode_resp(&resp)));
                }
                let principal = if ok.domain.is_empty() {
                    ok.user.clone()
                } else {
                    format!("{}\\{}", ok.domain, ok.user)
                };
                Ok(Outcome::Complete(Box::new(Negotiated {
                    user: ok.user,
                    principal,
                    mechanism: Mechanism::Ntlm,
                    scheme,
                    channel_bound: ok.channel_bound,
                    www_authenticate: www,
                    security: SecurityContext::Ntlm(Box::new(session)),
                })))
            }
        }
    }

    fn kerberos(
        &mut self,
        settings: &NegotiateSettings,
        ctx: Option<gssapi::Context>,
        scheme: Scheme,
        token: &[u8],
        bindings: Option<&[u8]>,
    ) -> Result<Outcome, NegotiateError> {
        let cred = settings
            .kerberos
            .as_ref()
            .ok_or_else(|| NegotiateError::NoMechanism("Kerberos (no keytab)".into()))?;
        let mut ctx = match ctx {
            Some(c) => c,
            None => gssapi::Context::acceptor()?,
        };
        match ctx.accept(cred, token, bindings)? {
            gssapi::Step::Continue(out) => {
                self.state = State::Kerberos(ctx);
                Ok(Outcome::Continue {
                    www_authenticate: header(scheme, &out),
                })
            }
            gssapi::Step::Complete {
                principal,
                out,
                flags,
            } => {
                let bound = flags & gssapi::FLAG_CHANNEL_BOUND != 0;
                if bindings.is_some()
                    && settings.channel_binding == ChannelBinding::Required
                    && !bound
                {
                    return Err(NegotiateError::ChannelBinding(
                        "channel_binding = \"required\" and the Kerberos client sent none",
                    ));
                }
                let user = settings.map_principal(&principal)?;
                Ok(Outcome::Complete(Box::new(Negotiated {
                    user,
                    principal,
                    mechanism: Mechanism::Kerberos,
                    scheme,
                    channel_bound: bound,
                    www_authenticate: (!out.is_empty()).then(|| header(scheme, &out)),
                    security: SecurityContext::Kerberos(ctx),
                })))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn b64(t: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(t)
    }

    fn token_of(header: &str) -> Vec<u8> {
        let (_, t) = header.split_once(' ').unwrap();
        base64::engine::general_purpose::STANDARD.decode(t).unwrap()
    }

    fn lookup(name: &str) -> Option<[u8; 16]> {
        name.eq_ignore_ascii_case("alice")
            .then(|| ntlm::nt_hash("s3cret"))
    }

    fn settings() -> NegotiateSettings {
        NegotiateSettings::ntlm_only(ChannelBinding::WhenOffered, "web01.example.com")
    }

    #[test]
    fn authorization_headers_parse_with_limits() {
        assert!(parse_authorization(b"Basic YTpi").is_none());
        let (s, t) = parse_authorization(b"Negotiate TlRMTVNTUAA=")
            .unwrap()
            .unwrap();
        assert_eq!((s, t.as_slice()), (Scheme::Negotiate, &b"NTLMSSP\0"[..]));
        let (s, _) = parse_authorization(b"kerberos YQ==").unwrap().unwrap();
        assert_eq!(s, Scheme::Kerberos);
        assert_eq!(
            parse_authorization(b"NTLM YQ==").unwrap().unwrap().0,
            Scheme::Ntlm
        );
        assert!(parse_authorization(b"Negotiate").unwrap().is_err());
        assert!(parse_authorization(b"Negotiate !!!").unwrap().is_err());
        let huge = format!("Negotiate {}", "A".repeat(MAX_AUTH_HEADER_LEN));
        assert!(parse_authorization(huge.as_bytes()).unwrap().is_err());
    }

    #[test]
    fn realms_map_principals_to_local_names() {
        let mut s = settings();
        s.realms = vec!["EXAMPLE.COM".into()];
        assert_eq!(s.map_principal("alice@EXAMPLE.COM").unwrap(), "alice");
        assert_eq!(s.map_principal("bob@example.com").unwrap(), "bob");
        assert!(matches!(
            s.map_principal("alice@EVIL.ORG"),
            Err(NegotiateError::Realm { .. })
        ));
        for p in [
            "HTTP/web01@EXAMPLE.COM",
            "a@b@EXAMPLE.COM",
            "alice",
            "al ice@EXAMPLE.COM",
            "@EXAMPLE.COM",
        ] {
            assert!(s.map_principal(p).is_err(), "{p}");
        }
    }

    /// Raw NTLM under `Negotiate`, as pywinrm's `transport="ntlm"` sends it.
    #[test]
    fn raw_ntlm_exchange() {
        let s = settings();
        let mut conn = ConnectionAuth::new();
        let neg = ntlm::client::negotiate();
        let Outcome::Continue { www_authenticate } = conn
            .step(&s, Scheme::Negotiate, &neg, None, &lookup)
            .unwrap()
        else {
            panic!("expected a challenge")
        };
        assert!(www_authenticate.starts_with("Negotiate "));
        let chal = token_of(&www_authenticate);
        let (auth, mut client) =
            ntlm::client::authenticate(&neg, &chal, "Alice", "", &ntlm::nt_hash("s3cret"), None)
                .unwrap();
        let Outcome::Complete(done) = conn
            .step(&s, Scheme::Negotiate, &auth, None, &lookup)
            .unwrap()
        else {
            panic!("expected completion")
        };
        assert_eq!(done.user, "Alice");
        assert_eq!(done.mechanism, Mechanism::Ntlm);
        assert!(done.www_authenticate.is_none());
        assert!(!conn.in_progress());
        let mut sec = done.security;
        let (h, d) = client.seal(b"<Envelope/>");
        assert_eq!(sec.unwrap(&h, &d).unwrap(), b"<Envelope/>");
        let (h, d) = sec.wrap(b"<Response/>").unwrap();
        assert_eq!(client.unseal(&h, &d).unwrap(), b"<Response/>");
    }

    /// SPNEGO-wrapped NTLM with the mechListMIC exchange (what pypsrp `auth="negotiate"` sends
    /// without Kerberos), including the RC4 reset MS-SPNG requires.
    #[test]
    fn spnego_ntlm_exchange_with_mech_list_mic() {
        let s = settings();
        let mut conn = ConnectionAuth::new();
        let neg = ntlm::client::negotiate();
        let init = spnego::encode_init(&[spnego::OID_NTLM], Some(&neg));
        let Outcome::Continue { www_authenticate } = conn
            .step(&s, Scheme::Negotiate, &init, None, &lookup)
            .unwrap()
        else {
            panic!()
        };
        let resp = spnego::parse_server(&token_of(&www_authenticate)).unwrap();
        assert_eq!(resp.supported_mech.as_deref(), Some(spnego::OID_NTLM));
        let chal = resp.response_token.unwrap();
        let (auth, mut client) = ntlm::client::authenticate(
            &neg,
            &chal,
            "alice",
            "KEYHOLE",
            &ntlm::nt_hash("s3cret"),
            None,
        )
        .unwrap();
        let mech_types = spnego::encode_mech_types(&[spnego::OID_NTLM]);
        let mic = client.sign(&mech_types);
        client.reset_out();
        let leg = spnego::encode_resp(&NegTokenResp {
            response_token: Some(auth),
            mech_list_mic: Some(mic.to_vec()),
            ..NegTokenResp::default()
        });
        let Outcome::Complete(done) = conn
            .step(&s, Scheme::Negotiate, &leg, None, &lookup)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(done.principal, "KEYHOLE\\alice");
        let last =
            spnego::parse_server(&token_of(done.www_authenticate.as_ref().unwrap())).unwrap();
        assert_eq!(last.neg_state, Some(NegState::AcceptCompleted as u8));
        client
            .verify(&mech_types, &last.mech_list_mic.unwrap())
            .unwrap();
        client.reset_in();
        let mut sec = done.security;
        for _ in 0..2 {
            let (h, d) = client.seal(b"request");
            assert_eq!(sec.unwrap(&h, &d).unwrap(), b"request");
            let (h, d) = sec.wrap(b"response").unwrap();
            assert_eq!(client.unseal(&h, &d).unwrap(), b"response");
        }
    }

    #[test]
    fn spnego_ntlm_as_second_choice_needs_a_mic() {
        let s = settings();
        let mut conn = ConnectionAuth::new();
        // Kerberos first (with a bogus optimistic token), NTLM second, Kerberos off here.
        let init = spnego::encode_init(&[spnego::OID_KRB5, spnego::OID_NTLM], Some(b"krb"));
        let Outcome::Continue { www_authenticate } = conn
            .step(&s, Scheme::Negotiate, &init, None, &lookup)
            .unwrap()
        else {
            panic!()
        };
        let resp = spnego::parse_server(&token_of(&www_authenticate)).unwrap();
        assert!(
            resp.response_token.is_none(),
            "the optimistic token was not NTLM"
        );
        let neg = ntlm::client::negotiate();
        let leg2 = spnego::encode_resp(&NegTokenResp {
            response_token: Some(neg.clone()),
            ..NegTokenResp::default()
        });
        let Outcome::Continue { www_authenticate } = conn
            .step(&s, Scheme::Negotiate, &leg2, None, &lookup)
            .unwrap()
        else {
            panic!()
        };
        let chal = spnego::parse_server(&token_of(&www_authenticate))
            .unwrap()
            .response_token
            .unwrap();
        let (auth, _) =
            ntlm::client::authenticate(&neg, &chal, "alice", "", &ntlm::nt_hash("s3cret"), None)
                .unwrap();
        let leg3 = spnego::encode_resp(&NegTokenResp {
            response_token: Some(auth),
            ..NegTokenResp::default()
        });
        let err = conn
            .step(&s, Scheme::Negotiate, &leg3, None, &lookup)
            .unwrap_err();
        assert!(err.to_string().contains("mechListMIC"), "{err}");
    }

    #[test]
    fn refusals_reset_the_connection_state() {
        let s = settings();
        let mut conn = ConnectionAuth::new();
        let neg = ntlm::client::negotiate();
        let Outcome::Continue { www_authenticate } =
            conn.step(&s, Scheme::Ntlm, &neg, None, &lookup).unwrap()
        else {
            panic!()
        };
        assert!(www_authenticate.starts_with("NTLM "));
        let chal = token_of(&www_authenticate);
        let (auth, _) =
            ntlm::client::authenticate(&neg, &chal, "alice", "", &ntlm::nt_hash("wrong"), None)
                .unwrap();
        let err = conn
            .step(&s, Scheme::Ntlm, &auth, None, &lookup)
            .unwrap_err();
        assert_eq!(err.failed_user(), Some("alice"));
        assert!(!conn.in_progress());
        // An unknown user fails the same way (and is named for the log).
        let mut conn = ConnectionAuth::new();
        let Outcome::Continue { www_authenticate } = conn
            .step(&s, Scheme::Negotiate, &neg, None, &lookup)
            .unwrap()
        else {
            panic!()
        };
        let (auth, _) = ntlm::client::authenticate(
            &neg,
            &token_of(&www_authenticate),
            "mallory",
            "",
            &ntlm::nt_hash("x"),
            None,
        )
        .unwrap();
        let err = conn
            .step(&s, Scheme::Negotiate, &auth, None, &lookup)
            .unwrap_err();
        assert_eq!(err.failed_user(), Some("mallory"));
        // Kerberos without a keytab, garbage, a NegTokenResp out of the blue.
        for t in [
            &[
                0x60, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
            ][..],
            b"garbage",
            &spnego::encode_resp(&NegTokenResp::default()),
        ] {
            let mut conn = ConnectionAuth::new();
            assert!(conn.step(&s, Scheme::Negotiate, t, None, &lookup).is_err());
            assert!(!conn.in_progress());
        }
        // NTLM disabled.
        let mut off = settings();
        off.ntlm = false;
        let mut conn = ConnectionAuth::new();
        assert!(conn
            .step(&off, Scheme::Negotiate, &neg, None, &lookup)
            .is_err());
        let _ = b64(b"");
    }

    #[test]
    fn an_endless_exchange_is_cut() {
        let s = settings();
        let mut conn = ConnectionAuth::new();
        let init = spnego::encode_init(&[spnego::OID_KRB5, spnego::OID_NTLM], None);
        conn.step(&s, Scheme::Negotiate, &init, None, &lookup)
            .unwrap();
        // Keep sending NegTokenResps carrying NTLM NEGOTIATEs: the state never completes.
        let leg = spnego::encode_resp(&NegTokenResp {
            response_token: Some(ntlm::client::negotiate()),
            ..NegTokenResp::default()
        });
        let mut refused = false;
        for _ in 0..10 {
            if conn
                .step(&s, Scheme::Negotiate, &leg, None, &lookup)
                .is_err()
            {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn lookup(_: &str) -> Option<[u8; 16]> {
        Some(ntlm::nt_hash("pw"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// No sequence of client tokens makes the Negotiate state machine or its parsers panic;
        /// random bytes never authenticate.
        #[test]
        fn arbitrary_tokens_never_panic_or_authenticate(
            legs in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..300),
                    proptest::collection::vec(any::<u8>(), 0..300).prop_map(|mut v| {
                        let mut t = b"NTLMSSP\0".to_vec();
                        t.push(1 + v.first().copied().unwrap_or(0) % 3);
                        t.extend([0, 0, 0]);
                        t.append(&mut v);
                        t
                    }),
                    proptest::collection::vec(any::<u8>(), 0..200).prop_map(|v| {
                        spnego::encode_init(&[spnego::OID_NTLM], Some(&v))
                    }),
                    proptest::collection::vec(any::<u8>(), 0..200).prop_map(|v| {
                        spnego::encode_resp(&NegTokenResp { response_token: Some(v), ..NegTokenResp::default() })
                    }),
                ],
                1..5,
            )
        ) {
            let s = NegotiateSettings::ntlm_only(ChannelBinding::WhenOffered, "h");
            let mut conn = ConnectionAuth::new();
            for t in legs {
                if let Ok(Outcome::Complete(_)) = conn.step(&s, Scheme::Negotiate, &t, Some(b"cb"), &lookup) {
                    prop_assert!(false, "random tokens authenticated");
                }
            }
        }

        #[test]
        fn header_and_spnego_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_authorization(&bytes);
            let _ = spnego::parse_client(&bytes);
            let _ = spnego::is_raw_kerberos(&bytes);
            let _ = ntlm::parse_authenticate(&bytes);
            let _ = crate::config::keytab::parse_keytab(&bytes);
            let (mut server, _) = {
                let k = [1u8; 16];
                (
                    SecurityContext::Ntlm(Box::new(ntlm::Session::new(&k, ntlm::client::FLAGS, ntlm::Role::Server))),
                    (),
                )
            };
            let _ = super::super::encryption::decrypt_body(&mut server, &bytes, 1 << 16);
            let mut framed = b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=5\r\n--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n".to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(b"--Encrypted Boundary--\r\n");
            prop_assert!(super::super::encryption::decrypt_body(&mut server, &framed, 1 << 16).is_err());
        }
    }
}
