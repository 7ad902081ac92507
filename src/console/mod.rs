//! `console`: the web console — PowerShell Web Access for keyhole endpoints — on the HTTPS
//! listener at `/console` (registered by the composition root when `[console] enabled`; the
//! listener routes to it through [`WebRoutes`] and knows nothing else of it).
//!
//! - Sign-in (`POST /console/sign-in`, a form with user name, password, computer name and
//!   configuration name): gate 2 through [`Gates::sign_in`] (the same Basic verification,
//!   lock-out and refusal accounting as WS-Man), the computer name ([`Gates::check_computer`]),
//!   then [`Gates::open`] with [`SessionKind::Console`] (gates 3–4, `[console]
//!   max_sessions_per_user`, the transcript, the audit records). Every refusal shows one
//!   generic message; the log and the audit log say which gate refused and why.
//! - Sessions ([`store`]): a random 256-bit cookie (`Secure; HttpOnly; SameSite=Strict;
//!   Path=/console`), server-side state, a CSRF token per session (a header on API calls, a
//!   hidden field on forms; compared in constant time) and the same-origin checks
//!   (`Origin`, `Sec-Fetch-Site`) on every state-changing request, an idle time-out with a
//!   warning, a request budget, one command at a time.
//! - The page (`assets/`, served from the binary): HTML, one script, one style sheet; a strict
//!   Content-Security-Policy; output inserted as text. The JSON API under `/console/api/`:
//!   `poll` (long poll for output), `run`, `stop`, `complete`, `keepalive`, `sign-out`.
#![forbid(unsafe_code)]

pub mod complete;
pub mod store;
pub mod web;

use crate::wsman::shell::ShellControl;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::gates::{Gates, Origin, SessionKind};
use crate::http::{WebRequest, WebResponse, WebRoutes};
use crate::shells::console::{ConsoleShell, RunError, Snapshot};
use crate::shells::runner::Workers;
use crate::shells::UserBudgets;
use store::{ConsoleSession, Ended, Lookup, Store};

/// Where the console is served.
pub const PREFIX: &str = "/console";
/// The largest request body the console reads (a command line is at most
/// `shells::console::MAX_LINE`).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a poll waits for output before it answers with nothing.
pub const POLL_WAIT: Duration = Duration::from_secs(20);

/// The one message every refused sign-in shows, whichever gate refused.
pub const ACCESS_DENIED: &str = "Access denied. Check the user name, password, computer name and configuration name, or ask your administrator whether you may sign in there.";
const CROSS_SITE_FORM: &str =
    "This form has expired or was sent from another site. Sign in again on this page.";

const SIGN_IN_HTML: &str = include_str!("assets/sign-in.html");
const CONSOLE_HTML: &str = include_str!("assets/console.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Fill `{{name}}` placeholders with HTML-escaped values.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), &web::html_escape(v));
    }
    out
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> WebResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    web::secure_headers(r.headers_mut());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: serde_json::Value) -> WebResponse {
    respond(status, "application/json", v.to_string())
}

fn with_cookie(mut r: WebResponse, cookie: &str) -> WebResponse {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn see_other(location: &'static str) -> WebResponse {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    r
}

fn clear_session_cookie(r: WebResponse) -> WebResponse {
    with_cookie(r, &web::set_cookie(web::SESSION_COOKIE, "", Some(0)))
}

/// The page's words for why a session ended.
fn ended_message(why: Ended) -> &'static str {
    match why {
        Ended::SignedOut => "You have signed out. Programs you started in the session were stopped.",
        Ended::TimedOut => "You were signed out because the session was idle too long. Programs you started in it were stopped.",
        Ended::Exited => "The session has ended (exit).",
        Ended::ServerStopped => "The session ended because the server stopped.",
        Ended::Closed => "The session was closed by the administrator. Programs you started in it were stopped.",
    }
}

/// A position in `s` counted in UTF-16 code units (what a browser counts) as a byte offset.
fn utf16_to_byte(s: &str, units: usize) -> usize {
    let mut n = 0usize;
    for (i, c) in s.char_indices() {
        if n >= units {
            return i;
        }
        n = n.saturating_add(c.len_utf16());
    }
    s.len()
}

fn byte_to_utf16(s: &str, byte: usize) -> usize {
    s.get(..byte.min(s.len()))
        .map_or(0, |p| p.chars().map(char::len_utf16).sum())
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// What a sign-in attempt ended with.
enum SignIn {
    Opened(Box<ConsoleSession>),
    Refused,
    Failed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PollBody {
    cursor: u64,
    /// What the page believes: a poll answers at once when that is no longer so.
    #[serde(default)]
    running: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    line: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    line: String,
    /// UTF-16 code units, as the browser counts.
    cursor: usize,
}

/// How long a sign-in waits for the session its browser held to end (see
/// `Console::await_session_end`).
const OLD_SESSION_WAIT: Duration = Duration::from_secs(1);

/// The web console (see the module documentation).
pub struct Console {
    gates: Arc<Gates>,
    workers: Arc<Workers>,
    budgets: Arc<UserBudgets>,
    store: Store,
}

impl Console {
    /// `budgets`: the server's one table of per-user output budgets (shared with the WS-Man
    /// shells).
    pub fn new(
        gates: Arc<Gates>,
        workers: Arc<Workers>,
        budgets: Arc<UserBudgets>,
    ) -> Arc<Console> {
        Arc::new(Console {
            gates,
            workers,
            budgets,
            store: Store::new(),
        })
    }

    /// The console's sessions.
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn route(self: Arc<Self>, req: WebRequest) -> WebResponse {
        let signed_in = web::cookie(&req.headers, web::SESSION_COOKIE)
            .is_some_and(|id| matches!(self.store.get(&id), Lookup::Live(_)));
        let mut r = self.route_inner(req).await;
        if signed_in {
            r.extensions_mut().insert(crate::http::Authenticated);
        }
        r
    }

    async fn route_inner(self: Arc<Self>, req: WebRequest) -> WebResponse {
        let path = req.path.as_str();
        match (&req.method, path) {
            (&Method::GET, "/console" | "/console/") => self.page(&req),
            (&Method::GET, "/console/console.js") => {
                respond(StatusCode::OK, "text/javascript; charset=utf-8", CONSOLE_JS)
            }
            (&Method::GET, "/console/console.css") => {
                respond(StatusCode::OK, "text/css; charset=utf-8", CONSOLE_CSS)
            }
            (&Method::POST, "/console/sign-in") => self.sign_in(req).await,
            (&Method::POST, "/console/sign-out") => self.sign_out_form(&req),
            (&Method::POST, p) if p.starts_with("/console/api/") => self.api(req).await,
            (
                _,
                "/console"
                | "/console/"
                | "/console/console.js"
                | "/console/console.css"
                | "/console/sign-in"
                | "/console/sign-out",
            ) => {
                let mut r = respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain; charset=utf-8",
                    "method not allowed\n",
                );
                let allow = if path.ends_with("sign-in") || path.ends_with("sign-out") {
                    "POST"
                } else {
                    "GET"
                };
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n",
            ),
        }
    }

    /// `GET /console`: the console of a live session, else the sign-in form.
    fn page(&self, req: &WebRequest) -> WebResponse {
        let now = Instant::now();
        let message = match web::cookie(&req.headers, web::SESSION_COOKIE) {
            Some(id) => match self.store.get(&id) {
                Lookup::Live(s) => {
                    s.touch(now);
                    return self.console_page(&s);
                }
                Lookup::Ended(why) => Some(ended_message(why)),
                Lookup::Unknown => None,
            },
            None => None,
        };
        let message = message.or_else(|| match query_param(req.query.as_deref(), "ended") {
            Some("signed-out") => Some(ended_message(Ended::SignedOut)),
            Some("timed-out") => Some(ended_message(Ended::TimedOut)),
            Some("exited") => Some(ended_message(Ended::Exited)),
            Some("server-stopped") => Some(ended_message(Ended::ServerStopped)),
            _ => None,
        });
        let r = self.sign_in_page(StatusCode::OK, message.unwrap_or(""), None);
        if web::cookie(&req.headers, web::SESSION_COOKIE).is_some() {
            clear_session_cookie(r)
        } else {
            r
        }
    }

    /// The sign-in form with a fresh CSRF token (in its cookie and its hidden field), the
    /// defaults of `[console]`, and what the user typed last time (`typed`: user, computer,
    /// configuration; never the password).
    fn sign_in_page(
        &self,
        status: StatusCode,
        message: &str,
        typed: Option<(&str, &str, &str)>,
    ) -> WebResponse {
        let Some(token) = web::random_token() else {
            tracing::error!("console: the operating system gave no random bytes");
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "the server cannot make a sign-in form now; try again later\n",
            );
        };
        let cfg = self.gates.config();
        let c = &cfg.server.console;
        let default_computer = if c.default_computer.trim().is_empty() {
            cfg.server.computer_name.clone()
        } else {
            c.default_computer.trim().to_string()
        };
        let (user, computer, configuration) =
            typed.unwrap_or(("", &default_computer, c.default_configuration.trim()));
        let html = render(
            SIGN_IN_HTML,
            &[
                ("csrf", &token),
                ("message", message),
                ("user", user),
                ("computer", computer),
                ("configuration", configuration),
            ],
        );
        with_cookie(
            respond(status, "text/html; charset=utf-8", html),
            &web::set_cookie(
                web::SIGN_IN_COOKIE,
                &token,
                Some(web::SIGN_IN_TOKEN_MAX_AGE),
            ),
        )
    }

    fn console_page(&self, s: &ConsoleSession) -> WebResponse {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).to_string();
        let html = render(
            CONSOLE_HTML,
            &[
                ("csrf", &s.csrf),
                ("remaining_ms", &ms(s.remaining(Instant::now()))),
                ("warning_ms", &ms(s.warning())),
                ("user", &s.user),
                ("endpoint", &s.endpoint),
                ("computer", &s.computer),
            ],
        );
        respond(StatusCode::OK, "text/html; charset=utf-8", html)
    }

    /// `POST /console/sign-in`.
    async fn sign_in(self: Arc<Self>, req: WebRequest) -> WebResponse {
        let peer = req.peer;
        if let Err(why) = web::same_origin(&req.headers) {
            tracing::warn!(source = %peer.ip(), "console: sign-in refused: {why}");
            return self.sign_in_page(StatusCode::FORBIDDEN, CROSS_SITE_FORM, None);
        }
        let Some(fields) = web::parse_form(&req.body) else {
            tracing::warn!(source = %peer.ip(), "console: sign-in refused: the body is not a form this console sends");
            return self.sign_in_page(StatusCode::BAD_REQUEST, CROSS_SITE_FORM, None);
        };
        let token_ok = match (
            web::field(&fields, "csrf"),
            web::cookie(&req.headers, web::SIGN_IN_COOKIE),
        ) {
            (Some(f), Some(c)) => web::token_shaped(f) && web::same_token(f, &c),
            _ => false,
        };
        if !token_ok {
            tracing::warn!(source = %peer.ip(), "console: sign-in refused: missing or wrong CSRF token (form field and cookie differ)");
            return self.sign_in_page(StatusCode::FORBIDDEN, CROSS_SITE_FORM, None);
        }
        // A browser holds one console session: the one it had (the form was sent from an old
        // tab) ends here, rather than idle on holding a slot its user may need now.
        let old = web::cookie(&req.headers, web::SESSION_COOKIE)
            .and_then(|id| self.store.end(&id, Ended::SignedOut, Instant::now()));
        let get = |k: &str| web::field(&fields, k).unwrap_or("").to_string();
        let (user, password, computer, configuration) = (
            get("user").trim().to_string(),
            get("password"),
            get("computer").trim().to_string(),
            get("configuration").trim().to_string(),
        );
        // Gate 2's verification waits for a slot like a WS-Man request's (bounded, fair between
        // addresses, with a deadline): a flood of sign-ins cannot run more at once.
        let Some(permit) = self.gates.verify_slots().acquire(peer.ip()).await else {
            tracing::warn!(source = %peer.ip(), "console: sign-in refused: no password verification slot came free in time");
            // Ended on a blocking thread, as below (its transcript's end is synced).
            tokio::task::spawn_blocking(move || drop(old));
            let typed = Some((user.as_str(), computer.as_str(), configuration.as_str()));
            return self.sign_in_page(StatusCode::FORBIDDEN, ACCESS_DENIED, typed);
        };
        let me = self.clone();
        let (u, comp, conf) = (user.clone(), computer.clone(), configuration.clone());
        let old_id = old.as_ref().map(|s| s.session_id.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // Released first (its slot, its transcript's end), on this blocking thread.
            drop(old);
            if let Some(id) = old_id {
                me.await_session_end(&id);
            }
            me.open_session(&u, &password, &comp, &conf, peer)
        })
        .await
        .unwrap_or(SignIn::Failed);
        let typed = Some((user.as_str(), computer.as_str(), configuration.as_str()));
        match outcome {
            SignIn::Opened(session) => {
                let (who, ep, sid) = (
                    session.user.clone(),
                    session.endpoint.clone(),
                    session.session_id.clone(),
                );
                let hook = session.hook.clone();
                let Some(id) = self.store.insert(*session) else {
                    tracing::error!("console: the operating system gave no random bytes");
                    return self.sign_in_page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ACCESS_DENIED,
                        typed,
                    );
                };
                if let Some(h) = hook {
                    h.attach(Arc::new(ConsoleControl {
                        console: Arc::downgrade(&self),
                        session_id: sid.clone(),
                    }));
                }
                tracing::info!(user = %who, endpoint = %ep, session = %sid, source = %peer.ip(), "console session started");
                let r = see_other("/console");
                let r = with_cookie(r, &web::set_cookie(web::SESSION_COOKIE, &id, None));
                with_cookie(r, &web::set_cookie(web::SIGN_IN_COOKIE, "", Some(0)))
            }
            SignIn::Refused => self.sign_in_page(StatusCode::FORBIDDEN, ACCESS_DENIED, typed),
            SignIn::Failed => {
                tracing::error!("console: a sign-in task failed");
                self.sign_in_page(StatusCode::FORBIDDEN, ACCESS_DENIED, typed)
            }
        }
    }

    /// Wait (at most [`OLD_SESSION_WAIT`]) until the session `id` has left the session list: a
    /// session's slot goes with its last reference, which the worker that ran its last line may
    /// hold a moment after the line ended, so that a sign-in from the browser that held it
    /// finds the slot it just gave up.
    fn await_session_end(&self, id: &str) {
        let until = Instant::now() + OLD_SESSION_WAIT;
        while self.gates.sessions().find(id).is_ok() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Gates 2–4 and the session (on a blocking thread: argon2, the transcript's fsync).
    fn open_session(
        &self,
        user: &str,
        password: &str,
        computer: &str,
        configuration: &str,
        peer: SocketAddr,
    ) -> SignIn {
        let origin = Origin::Remote(peer);
        let Some(who) = self.gates.sign_in(user, password, peer) else {
            return SignIn::Refused;
        };
        let Ok(computer) = self
            .gates
            .check_computer(&who, computer, origin, configuration)
        else {
            return SignIn::Refused;
        };
        // The one grant-to-shell helper (deadline, output budget, the guard kept alive); a
        // refusal or a session limit is logged and audited by the gates, the page says only
        // "access denied".
        let Ok(o) = crate::shells::open_session(
            &self.gates,
            &self.workers,
            &self.budgets,
            &who,
            configuration,
            origin,
            SessionKind::Console,
        ) else {
            return SignIn::Refused;
        };
        let Some(csrf) = web::random_token() else {
            tracing::error!("console: the operating system gave no random bytes");
            return SignIn::Failed;
        };
        let visible = o.session.visible().to_vec();
        let idle_timeout = o.limits.idle_timeout;
        let hook = o.hook;
        let shell = ConsoleShell::new(o.session, o.setup);
        let mut session = ConsoleSession::new(
            who.user,
            o.endpoint,
            computer,
            o.session_id,
            peer,
            csrf,
            shell,
            visible,
            idle_timeout,
            Instant::now(),
        );
        session.hook = Some(hook);
        SignIn::Opened(Box::new(session))
    }

    /// `POST /console/sign-out` (the page's form: the CSRF token in a hidden field).
    fn sign_out_form(&self, req: &WebRequest) -> WebResponse {
        if let Err(why) = web::same_origin(&req.headers) {
            tracing::warn!(source = %req.peer.ip(), "console: sign-out refused: {why}");
            return respond(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "cross-site request refused\n",
            );
        }
        let Some(id) = web::cookie(&req.headers, web::SESSION_COOKIE) else {
            return see_other("/console");
        };
        let Lookup::Live(s) = self.store.get(&id) else {
            return clear_session_cookie(see_other("/console"));
        };
        let token = web::parse_form(&req.body)
            .and_then(|f| web::field(&f, "csrf").map(str::to_string))
            .unwrap_or_default();
        if !web::same_token(&token, &s.csrf) {
            tracing::warn!(user = %s.user, session = %s.session_id, source = %req.peer.ip(), "console: sign-out refused: missing or wrong CSRF token");
            return respond(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "missing or wrong CSRF token\n",
            );
        }
        self.end(&id, Ended::SignedOut);
        clear_session_cookie(see_other("/console?ended=signed-out"))
    }

    /// End a session; what it holds is released off the async threads (the transcript's end
    /// is fsync'd).
    fn end(&self, id: &str, why: Ended) {
        if let Some(s) = self.store.end(id, why, Instant::now()) {
            release(vec![s]);
        }
    }

    /// `POST /console/api/...`: the same-origin checks, the session, its CSRF token (header),
    /// its request budget, then the call.
    async fn api(self: Arc<Self>, req: WebRequest) -> WebResponse {
        let now = Instant::now();
        if let Err(why) = web::same_origin(&req.headers) {
            tracing::warn!(source = %req.peer.ip(), path = %req.path, "console: API call refused: {why}");
            return json_response(
                StatusCode::FORBIDDEN,
                json!({"error": "cross-site request refused"}),
            );
        }
        let json_body = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json_body {
            return json_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": "API calls send application/json"}),
            );
        }
        let Some(id) = web::cookie(&req.headers, web::SESSION_COOKIE) else {
            return json_response(
                StatusCode::FORBIDDEN,
                json!({"signed_out": true, "reason": "unknown"}),
            );
        };
        let s = match self.store.get(&id) {
            Lookup::Live(s) => s,
            Lookup::Ended(why) => {
                return clear_session_cookie(json_response(
                    StatusCode::FORBIDDEN,
                    json!({"signed_out": true, "reason": why.as_str(), "message": ended_message(why)}),
                ))
            }
            Lookup::Unknown => {
                return clear_session_cookie(json_response(
                    StatusCode::FORBIDDEN,
                    json!({"signed_out": true, "reason": "unknown"}),
                ))
            }
        };
        let token = req
            .headers
            .get(web::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !web::same_token(token, &s.csrf) {
            tracing::warn!(user = %s.user, session = %s.session_id, source = %req.peer.ip(), path = %req.path, "console: API call refused: missing or wrong CSRF token");
            return json_response(
                StatusCode::FORBIDDEN,
                json!({"error": "missing or wrong CSRF token"}),
            );
        }
        if !s.allow_request(now) {
            tracing::warn!(user = %s.user, session = %s.session_id, "console: request budget spent (429)");
            return json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "too many requests; slow down"}),
            );
        }
        let bad = |e: serde_json::Error| {
            json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("malformed request: {e}")}),
            )
        };
        match req.path.as_str() {
            "/console/api/poll" => match serde_json::from_slice::<PollBody>(&req.body) {
                Ok(b) => self.poll(&id, s, b).await,
                Err(e) => bad(e),
            },
            "/console/api/run" => match serde_json::from_slice::<RunBody>(&req.body) {
                Ok(b) => {
                    s.touch(now);
                    match s.shell.run(&b.line) {
                        Ok(()) => {
                            tracing::debug!(user = %s.user, session = %s.session_id, "console: line started");
                            json_response(
                                StatusCode::ACCEPTED,
                                with_idle(json!({"ok": true}), &s, now),
                            )
                        }
                        Err(e @ RunError::Busy) => {
                            json_response(StatusCode::CONFLICT, json!({"error": e.to_string()}))
                        }
                        Err(e @ RunError::TooLong) => json_response(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            json!({"error": e.to_string()}),
                        ),
                        Err(RunError::Closed) => json_response(
                            StatusCode::FORBIDDEN,
                            json!({"signed_out": true, "reason": "exited"}),
                        ),
                    }
                }
                Err(e) => bad(e),
            },
            "/console/api/stop" => {
                s.touch(now);
                let stopped = s.shell.stop();
                json_response(
                    StatusCode::OK,
                    with_idle(json!({"stopped": stopped}), &s, now),
                )
            }
            "/console/api/complete" => match serde_json::from_slice::<CompleteBody>(&req.body) {
                Ok(b) => {
                    s.touch(now);
                    let at = utf16_to_byte(&b.line, b.cursor);
                    let c = complete::complete(&s.visible, &b.line, at);
                    json_response(
                        StatusCode::OK,
                        with_idle(
                            json!({
                                "start": byte_to_utf16(&b.line, c.start),
                                "end": byte_to_utf16(&b.line, c.end),
                                "matches": c.matches,
                            }),
                            &s,
                            now,
                        ),
                    )
                }
                Err(e) => bad(e),
            },
            "/console/api/keepalive" => {
                s.touch(now);
                json_response(StatusCode::OK, idle_json(&s, now))
            }
            "/console/api/sign-out" => {
                self.end(&id, Ended::SignedOut);
                clear_session_cookie(json_response(
                    StatusCode::OK,
                    json!({"signed_out": true, "reason": Ended::SignedOut.as_str(), "message": ended_message(Ended::SignedOut)}),
                ))
            }
            _ => json_response(StatusCode::NOT_FOUND, json!({"error": "no such call"})),
        }
    }

    /// Long poll: answer when there is output after the cursor, the running state is not what
    /// the page believes, the session ended, a newer poll came, or after [`POLL_WAIT`].
    async fn poll(&self, id: &str, s: Arc<ConsoleSession>, b: PollBody) -> WebResponse {
        let me = s.begin_poll();
        let deadline = tokio::time::Instant::now() + POLL_WAIT;
        let notify = s.shell.notify();
        loop {
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let snap = s.shell.read(b.cursor);
            if snap.ended {
                // exit / Exit-PSSession: end it now rather than at the next tick.
                if let Lookup::Live(_) = self.store.get(id) {
                    self.end(id, Ended::Exited);
                }
                let why = match self.store.get(id) {
                    Lookup::Ended(w) => w,
                    _ => Ended::Exited,
                };
                return json_response(
                    StatusCode::OK,
                    json!({
                        "entries": entries_json(&snap),
                        "cursor": snap.cursor,
                        "signed_out": true,
                        "reason": why.as_str(),
                        "message": ended_message(why),
                    }),
                );
            }
            let superseded = s.current_poll() != me;
            if !snap.entries.is_empty()
                || snap.gap
                || snap.running != b.running
                || superseded
                || tokio::time::Instant::now() >= deadline
            {
                let v = json!({
                    "entries": entries_json(&snap),
                    "cursor": snap.cursor,
                    "gap": snap.gap,
                    "running": snap.running,
                    "more": snap.more,
                });
                return json_response(StatusCode::OK, with_idle(v, &s, Instant::now()));
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline) => {}
                // A newer poll wakes nobody: look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

fn entries_json(snap: &Snapshot) -> serde_json::Value {
    serde_json::Value::Array(
        snap.entries
            .iter()
            .map(|e| json!({"seq": e.seq, "kind": e.kind.as_str(), "text": e.text}))
            .collect(),
    )
}

/// `v` with the idle clock added (the page schedules its time-out warning from it).
fn with_idle(mut v: serde_json::Value, s: &ConsoleSession, now: Instant) -> serde_json::Value {
    if let (Some(o), serde_json::Value::Object(idle)) = (v.as_object_mut(), idle_json(s, now)) {
        o.extend(idle);
    }
    v
}

fn idle_json(s: &ConsoleSession, now: Instant) -> serde_json::Value {
    json!({
        "remaining_ms": u64::try_from(s.remaining(now).as_millis()).unwrap_or(u64::MAX),
        "warning_ms": u64::try_from(s.warning().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Drop ended sessions on a blocking thread when there is a runtime (their transcripts end
/// with an fsync), else here.
/// How `keyhole sessions` reaches a console session: closed as its idle time-out would close
/// it (the command stopped, its programs killed; the page then says the administrator closed
/// it).
struct ConsoleControl {
    console: Weak<Console>,
    session_id: String,
}

impl ShellControl for ConsoleControl {
    fn shell_id(&self) -> String {
        "web console".to_string()
    }

    fn idle(&self) -> Option<Duration> {
        let c = self.console.upgrade()?;
        let s = c.store.by_session_id(&self.session_id)?;
        Some(s.idle(Instant::now()))
    }

    fn close(&self, reason: &str) -> bool {
        let Some(c) = self.console.upgrade() else {
            return false;
        };
        match c
            .store
            .end_session(&self.session_id, Ended::Closed, Instant::now())
        {
            Some(s) => {
                if let Some(h) = &s.hook {
                    h.closing(reason);
                }
                release(vec![s]);
                true
            }
            None => false,
        }
    }
}

fn release(done: Vec<Arc<ConsoleSession>>) {
    if done.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(move || drop(done));
        }
        Err(_) => drop(done),
    }
}

impl WebRoutes for Console {
    fn prefix(&self) -> &str {
        PREFIX
    }

    fn max_body(&self) -> usize {
        MAX_BODY
    }

    fn handle(
        self: Arc<Self>,
        req: WebRequest,
    ) -> Pin<Box<dyn Future<Output = WebResponse> + Send + 'static>> {
        Box::pin(self.route(req))
    }

    fn tick(&self) {
        let done = self.store.tick(Instant::now());
        release(done.into_iter().map(|(s, _)| s).collect());
    }

    fn close_all(&self) {
        self.store.close_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn browser_positions_are_utf16() {
        let s = "é😀x";
        assert_eq!(utf16_to_byte(s, 0), 0);
        assert_eq!(utf16_to_byte(s, 1), 2);
        assert_eq!(utf16_to_byte(s, 3), 6);
        assert_eq!(utf16_to_byte(s, 2), 6, "inside a pair: after it");
        assert_eq!(utf16_to_byte(s, 99), s.len());
        assert_eq!(byte_to_utf16(s, 6), 3);
        assert_eq!(byte_to_utf16(s, 99), 4);
    }

    #[test]
    fn templates_escape_what_they_insert() {
        let out = render("<p title=\"{{a}}\">{{a}}</p>", &[("a", "<b>\"x\"</b>")]);
        assert_eq!(
            out,
            "<p title=\"&lt;b&gt;&quot;x&quot;&lt;/b&gt;\">&lt;b&gt;&quot;x&quot;&lt;/b&gt;</p>"
        );
    }

    #[test]
    fn the_assets_have_no_inline_script_or_style_and_nothing_from_elsewhere() {
        let handler = regex::Regex::new(r"<[^>]*\son[a-z]+\s*=").unwrap();
        for (name, html) in [("sign-in", SIGN_IN_HTML), ("console", CONSOLE_HTML)] {
            let lower = html.to_ascii_lowercase();
            assert!(!lower.contains("<style"), "{name}: inline style element");
            assert!(!lower.contains(" style="), "{name}: style attribute");
            assert!(
                !handler.is_match(&lower),
                "{name}: an event-handler attribute"
            );
            assert!(!lower.contains("javascript:"), "{name}");
            assert!(
                !lower.contains("http://") && !lower.contains("https://"),
                "{name}: another origin"
            );
            for tag in lower.split("<script").skip(1) {
                let head = tag.split('>').next().unwrap_or("");
                assert!(
                    head.contains("src=\"/console/console.js\""),
                    "{name}: inline script"
                );
                assert!(
                    tag.split('>').nth(1).unwrap_or("").starts_with("</script"),
                    "{name}"
                );
            }
        }
        assert!(
            !CONSOLE_JS.contains("innerHTML"),
            "output is inserted as text"
        );
        assert!(!CONSOLE_JS.contains("insertAdjacentHTML"));
        assert!(!CONSOLE_JS.contains("eval("));
        assert!(!CONSOLE_JS.contains("document.write"));
    }
}
