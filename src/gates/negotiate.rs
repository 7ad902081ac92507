//! Gate 2 for Negotiate (issue 12): the per-connection half of [`Authenticate`] for [`Gates`].
//!
//! A connection carries one [`NegotiateState`] in its [`Connection::state`]: the exchange in
//! progress ([`ConnectionAuth`]) and, once it completed, who it authenticated and the security
//! context that encrypts its bodies. An `Authorization: Negotiate|Kerberos|NTLM` header starts
//! (or continues) an exchange and drops any earlier authentication of the connection; a request
//! without one rides the connection's authentication (re-checked against the accounts and
//! rules as they stand now); Basic and certificates stay per request, as without Negotiate.
//! Every refusal is the generic 401; the log and the audit log say why (gate 2 or 3).
//!
//! Bodies: a `multipart/encrypted` body is decrypted with the connection's context and its
//! response encrypted the same way; the empty request a client authenticates with before it
//! encrypts gets a 200; on a listener that admits only encrypted Negotiate, any other plaintext
//! body is refused. A body that does not decrypt, or a response that cannot be encrypted,
//! ends the connection's authentication.
#![forbid(unsafe_code)]

use std::sync::Arc;

use super::{Denied, Gates, Origin};
use crate::audit::{AuditGate, AuditKind};
use crate::auth::encryption;
use crate::auth::negotiate::{
    parse_authorization, ConnectionAuth, NegotiateError, NegotiateSettings, Negotiated, Outcome,
    Scheme, SecurityContext,
};
use crate::auth::{self, AuthResult, Authenticator};
use crate::config::LoadedConfig;
use crate::wsman::shell::{Connection, RequestBody, ResponseBody, Verdict};

/// The content type a decrypted envelope is served with (what every client wraps).
const SOAP: &str = "application/soap+xml;charset=UTF-8";

/// Negotiate's settings for `cfg`, or None when `[auth] negotiate` is off. The error says
/// what is wrong (`serve` refuses to start; a reload keeps the running configuration).
pub(super) fn settings_for(cfg: &LoadedConfig) -> Result<Option<Arc<NegotiateSettings>>, String> {
    let a = &cfg.server.auth;
    if !a.negotiate {
        return Ok(None);
    }
    let keytab = (!a.keytab.is_empty()).then(|| cfg.resolve(&a.keytab));
    NegotiateSettings::from_config(a, keytab.as_deref(), &cfg.server.computer_name)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| format!("[auth] negotiate: {e}"))
}

/// What one connection keeps between its requests.
#[derive(Default)]
struct NegotiateState {
    exchange: ConnectionAuth,
    done: Option<Authenticated>,
    /// The protocol the request being served was encrypted with: its response is encrypted the
    /// same way.
    sealing: Option<&'static str>,
}

/// A completed exchange.
struct Authenticated {
    identity: auth::Identity,
    security: SecurityContext,
}

impl NegotiateState {
    fn forget(&mut self) {
        *self = NegotiateState::default();
    }
}

/// The connection's Negotiate state, if it has one.
fn state(conn: &mut Connection) -> Option<&mut NegotiateState> {
    conn.state.as_mut()?.downcast_mut()
}

/// The connection's Negotiate state, made fresh when it has none.
fn state_or_new(conn: &mut Connection) -> Option<&mut NegotiateState> {
    let slot = conn
        .state
        .get_or_insert_with(|| Box::<NegotiateState>::default());
    if !slot.is::<NegotiateState>() {
        *slot = Box::<NegotiateState>::default();
    }
    slot.downcast_mut()
}

fn refuse(gates: &Gates, origin: Origin, user: &str, reason: String) -> Verdict {
    let d = Denied {
        gate: 2,
        reason,
        rule_id: None,
    };
    gates.deny(
        AuditKind::Authentication,
        AuditGate::Authentication,
        user,
        origin,
        None,
        &d,
    );
    Verdict::Refuse
}

/// [`crate::wsman::shell::Authenticate::authenticate_connection`] for [`Gates`].
pub(super) fn authenticate_connection(
    gates: &Gates,
    conn: &mut Connection,
    authorization: Option<&[u8]>,
) -> Verdict {
    let origin = Origin::Remote(conn.peer);
    let Some(authn) = gates.auth.as_ref() else {
        tracing::error!("gate 2: these gates were built for local sessions only");
        return Verdict::Refuse;
    };
    let settings = gates.negotiate_settings();
    if let (Some(settings), Some(h)) = (settings.as_deref(), authorization) {
        if let Some(parsed) = parse_authorization(h) {
            return step(gates, authn, settings, conn, parsed);
        }
    }
    if authorization.is_none() {
        if let Some(st) = state(conn) {
            if st.done.is_some() {
                return ride(gates, authn, origin, st);
            }
        }
    }
    // Basic or a client certificate: per request, as without Negotiate. A connection
    // Negotiate authenticated is no longer authenticated that way.
    if let Some(st) = state(conn) {
        st.forget();
    }
    if conn.encrypted_only {
        if authorization.is_none() {
            return Verdict::Refuse;
        }
        return refuse(
            gates,
            origin,
            "",
            "this plain-HTTP listener is off loopback without allow_unencrypted: it admits only encrypted Negotiate, not this Authorization scheme".into(),
        );
    }
    match crate::wsman::shell::Authenticate::authenticate(
        gates,
        authorization,
        conn.peer,
        conn.client_cert_sha256,
    ) {
        Some(identity) => Verdict::Allow {
            identity,
            www_authenticate: None,
        },
        None => Verdict::Refuse,
    }
}

/// One leg of an exchange.
fn step(
    gates: &Gates,
    authn: &Authenticator,
    settings: &NegotiateSettings,
    conn: &mut Connection,
    parsed: Result<(Scheme, Vec<u8>), NegotiateError>,
) -> Verdict {
    let origin = Origin::Remote(conn.peer);
    let ip = conn.peer.ip();
    let bindings = conn.channel_binding.clone();
    let Some(st) = state_or_new(conn) else {
        return Verdict::Refuse;
    };
    // A new exchange replaces whatever the connection was authenticated as.
    st.done = None;
    st.sealing = None;
    let outcome = match parsed {
        Ok((scheme, token)) => {
            st.exchange
                .step(settings, scheme, &token, bindings.as_deref(), &|u| {
                    authn.nt_hash_of(u)
                })
        }
        Err(e) => {
            st.exchange = ConnectionAuth::new();
            Err(e)
        }
    };
    match outcome {
        Ok(Outcome::Continue { www_authenticate }) => Verdict::Continue { www_authenticate },
        Ok(Outcome::Complete(n)) => {
            let n: Negotiated = *n;
            match authn.verify_negotiated(Ok(&n), ip) {
                AuthResult::Ok(id) => {
                    let how = format!(
                        "{} via {}{}",
                        n.principal,
                        n.scheme.as_str(),
                        if n.channel_bound {
                            ", channel-bound"
                        } else {
                            ""
                        }
                    );
                    let Some(identity) = gates.admit(id.clone(), origin, Some(&how), true) else {
                        return Verdict::Refuse;
                    };
                    st.done = Some(Authenticated {
                        identity: id,
                        security: n.security,
                    });
                    Verdict::Allow {
                        identity,
                        www_authenticate: n.www_authenticate,
                    }
                }
                AuthResult::Denied(reason) => refuse(
                    gates,
                    origin,
                    &n.principal,
                    format!("{reason} (Negotiate principal {})", n.principal),
                ),
            }
        }
        Err(e) => {
            let user = e.failed_user().unwrap_or("").to_string();
            match authn.verify_negotiated(Err(&e), ip) {
                AuthResult::Denied(reason) => refuse(gates, origin, &user, reason.to_string()),
                // verify_negotiated never accepts a failed exchange.
                AuthResult::Ok(_) => Verdict::Refuse,
            }
        }
    }
}

/// A request without `Authorization` on a connection Negotiate authenticated.
fn ride(gates: &Gates, authn: &Authenticator, origin: Origin, st: &mut NegotiateState) -> Verdict {
    let Some(done) = st.done.as_ref() else {
        return Verdict::Refuse;
    };
    let user = done.identity.user.clone();
    let Some(now) = authn.negotiated_identity_now(&done.identity) else {
        st.forget();
        return refuse(
            gates,
            origin,
            &user,
            "the account this connection authenticated as is disabled or gone since".into(),
        );
    };
    match gates.admit(now, origin, None, false) {
        Some(identity) => Verdict::Allow {
            identity,
            www_authenticate: None,
        },
        None => {
            st.forget();
            Verdict::Refuse
        }
    }
}

/// [`crate::wsman::shell::Authenticate::open_body`] for [`Gates`].
pub(super) fn open_body(
    conn: &mut Connection,
    content_type: Option<&str>,
    body: Vec<u8>,
    max_envelope: usize,
) -> Option<RequestBody> {
    let peer = conn.peer;
    let encrypted_only = conn.encrypted_only;
    let encrypted = content_type.and_then(encryption::parse_content_type);
    let st = state(conn);
    match encrypted {
        Some(Ok(protocol)) => {
            let Some(st) = st else {
                tracing::warn!(%peer, "gate 2: an encrypted body on a connection Negotiate did not authenticate (401)");
                return None;
            };
            let Some(done) = st.done.as_mut() else {
                tracing::warn!(%peer, "gate 2: an encrypted body on a connection Negotiate did not authenticate (401)");
                return None;
            };
            match encryption::decrypt_body(&mut done.security, &body, max_envelope) {
                Ok(plain) => {
                    st.sealing = Some(protocol);
                    Some(RequestBody::Envelope {
                        content_type: Some(SOAP.to_string()),
                        bytes: plain,
                    })
                }
                Err(e) => {
                    tracing::warn!(%peer, user = %done.identity.user, "gate 2: {e}; the connection must authenticate again (401)");
                    st.forget();
                    None
                }
            }
        }
        Some(Err(e)) => {
            tracing::warn!(%peer, "gate 2: {e} (401)");
            if let Some(st) = st {
                st.forget();
            }
            None
        }
        None => {
            if let Some(st) = st {
                st.sealing = None;
                if st.done.is_some() && body.is_empty() {
                    // The empty request clients authenticate with before they encrypt.
                    return Some(RequestBody::Setup);
                }
                if encrypted_only {
                    st.forget();
                }
            }
            if encrypted_only {
                tracing::warn!(%peer, "gate 2: a plaintext body on an HTTP listener that admits only encrypted Negotiate (off loopback without allow_unencrypted) (401)");
                return None;
            }
            Some(RequestBody::Envelope {
                content_type: content_type.map(str::to_string),
                bytes: body,
            })
        }
    }
}

/// [`crate::wsman::shell::Authenticate::seal_body`] for [`Gates`].
pub(super) fn seal_body(conn: &mut Connection, soap: Vec<u8>) -> Option<ResponseBody> {
    let peer = conn.peer;
    let plain = |bytes| {
        Some(ResponseBody {
            content_type: None,
            bytes,
        })
    };
    let Some(st) = state(conn) else {
        return plain(soap);
    };
    let Some(protocol) = st.sealing.take() else {
        return plain(soap);
    };
    let done = st.done.as_mut()?;
    match encryption::encrypt_body(&mut done.security, protocol, &soap) {
        Ok(bytes) => Some(ResponseBody {
            content_type: Some(encryption::content_type(protocol)),
            bytes,
        }),
        Err(e) => {
            tracing::warn!(%peer, user = %done.identity.user, "gate 2: cannot encrypt the response: {e}; the connection must authenticate again (401)");
            st.forget();
            None
        }
    }
}
