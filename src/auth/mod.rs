//! `auth`: gate 2, who is calling — HTTP Basic against `users.toml` (argon2id) or PAM, and
//! client-certificate fingerprints mapped to users — with a keyed success cache and lock-outs.
//!
//! Everything a refusal says is for the log only: the client always gets the same 401.
//! Passwords are never logged, never cached (the cache key is an HMAC under a per-process
//! random key) and never kept beyond the call.
//!
//! Lock-outs cannot be turned against a user (SPEC §1, §2.1 `[auth]`): failures are counted per
//! (user, source address) and per source address (IPv6 per /64), never per user alone, so
//! failures from one address never lock the user out at another; only a verification that
//! failed counts (an empty or over-long password is refused unverified and not counted); and a
//! lock-out never cuts open sessions: a credential verified from an address is remembered for
//! that address (the cache key includes it) and keeps working during a lock-out of that address
//! or of that user there, while every other attempt from there is refused unverified.
//!
//! Refusals reveal nothing through time (SPEC §1): every Basic refusal costs exactly one argon2id
//! verification — against the stored hash when there is one, else (unknown user, locked out,
//! empty or over-long credentials, an unusable stored hash) against a dummy hash of the same
//! parameters — and the cache holds only users who can open a session (the caller's `admit`,
//! gates 3–4, decides inside the verification: [`Authenticator::verify_basic_admitting`]). Each
//! verification runs in a reused work area ([`verification_slots`] of them are kept), and the
//! listener runs at most that many at once ([`slots`]).
#![forbid(unsafe_code)]

pub mod encryption;
pub mod negotiate;
pub mod ntlm;
mod pam;
pub mod slots;
pub mod spnego;
mod users_file;

pub use pam::MAX_OS_GROUPS;
pub use users_file::{
    hash_password, load_users, read_password, read_password_line, user_add, user_add_ntlm,
    user_list, user_passwd, user_passwd_ntlm, user_remove, validate_user_name, MAX_GROUPS_PER_USER,
    MAX_GROUP_NAME_LEN, MAX_USERS_FILE_BYTES, MAX_USER_NAME_LEN,
};

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHash;
use argon2::Argon2;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

use crate::config::{AuthConfig, UserEntry, UsersFile};

/// How long a successful verification is remembered after its last use (a local account's entry
/// is checked against the users file at every use, so it may slide; a PAM user's is fixed).
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most remembered successful verifications.
pub const MAX_CACHE_ENTRIES: usize = 10_000;
/// Most failure counters kept per kind (users, sources); the oldest are evicted beyond.
pub const MAX_LOCKOUT_ENTRIES: usize = 100_000;
/// Longest user name accepted from a client.
pub const MAX_LOGIN_NAME_LEN: usize = 256;
/// Longest password accepted (from a client or for `keyhole user`).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Longest `Authorization: Basic` header value parsed.
pub const MAX_BASIC_HEADER_LEN: usize = 4096;
/// The realm advertised in `WWW-Authenticate: Basic`.
pub const BASIC_REALM: &str = "keyhole";
/// Concurrent password verifications per CPU core ([`verification_slots`]).
pub const VERIFICATIONS_PER_CORE: usize = 2;
/// Largest argon2 memory cost (KiB) a stored hash may ask for; a hash asking for more is
/// unusable (refused like a wrong password, logged): one verification must not take the
/// server's memory. `keyhole user` writes 19 MiB (argon2's default).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;

/// How many password verifications (argon2id, 19 MiB each) may run at once: twice the cores
/// the process may use, at least 2. The listener admits this many at a time ([`slots`]) and
/// the authenticator keeps this many work areas for reuse.
pub fn verification_slots() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .saturating_mul(VERIFICATIONS_PER_CORE)
        .max(2)
}

/// Errors of the users file operations.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the users file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the users file {path} is not valid: {message}; fix it (or run `keyhole check`) and try again")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write the users file {path}: {source}; the file was left unchanged")]
    Write { path: PathBuf, source: io::Error },
    #[error("invalid user name \"{0}\": use 1 to 64 characters among letters, digits, '.', '_', '@' and '-'")]
    InvalidName(String),
    #[error("invalid group: {0}")]
    InvalidGroup(String),
    #[error("user {name} already exists in {path}; use `keyhole user passwd {name}` to change the password")]
    UserExists { name: String, path: PathBuf },
    #[error("no user {name} in {path}; `keyhole user list` shows the accounts")]
    NoSuchUser { name: String, path: PathBuf },
    #[error("the password is empty; an account needs a password")]
    EmptyPassword,
    #[error("the password is longer than {MAX_PASSWORD_LEN} bytes")]
    PasswordTooLong,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic checked against `users.toml`.
    Basic,
    /// HTTP Basic checked by PAM (`[auth] pam_service`), groups from the OS.
    Pam,
    /// A TLS client certificate whose fingerprint a user lists.
    Certificate,
    /// Negotiate/Kerberos: a principal of an accepted realm, mapped to a local name.
    Kerberos,
    /// Negotiate/NTLM against a users.toml NT hash.
    Ntlm,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Basic => "basic",
            AuthMethod::Pam => "pam",
            AuthMethod::Certificate => "certificate",
            AuthMethod::Kerberos => "kerberos",
            AuthMethod::Ntlm => "ntlm",
        })
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name as written in `users.toml` (or the OS account name for PAM).
    pub user: String,
    pub groups: Vec<String>,
    pub method: AuthMethod,
}

/// Why a caller was refused — for the server log and the audit log, never for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// `[auth] basic = false`.
    BasicDisabled,
    /// Empty or over-long name or password.
    Malformed,
    UnknownUser,
    WrongPassword,
    Disabled,
    /// This user is locked out at this source address (failures from there).
    LockedOutUser,
    /// This source address is locked out (failures from there, whatever the user).
    LockedOutSource,
    /// The stored hash cannot be used (not argon2id, unparsable).
    BadStoredHash(String),
    /// PAM refused or failed.
    Pam(String),
    UnknownCertificate,
    /// A Negotiate (Kerberos/NTLM) exchange failed, or its principal has no local account.
    Negotiate(String),
    /// The password was right, but no authorization rule and role lets this user open a
    /// session on this server (gates 3–4 would refuse every endpoint): refused at gate 2 like a
    /// wrong password, counted like one, and never remembered.
    NoSession,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::BasicDisabled => f.write_str("basic authentication is disabled"),
            DenyReason::Malformed => f.write_str("empty or over-long user name or password"),
            DenyReason::UnknownUser => f.write_str("unknown user"),
            DenyReason::WrongPassword => f.write_str("wrong password"),
            DenyReason::Disabled => f.write_str("account disabled"),
            DenyReason::LockedOutUser => {
                f.write_str("user locked out at this source address after failed logins")
            }
            DenyReason::LockedOutSource => {
                f.write_str("source address locked out after failed logins")
            }
            DenyReason::BadStoredHash(m) => {
                write!(f, "unusable password hash in the users file: {m}")
            }
            DenyReason::Pam(m) => write!(f, "PAM: {m}"),
            DenyReason::UnknownCertificate => {
                f.write_str("no user lists this client certificate's fingerprint")
            }
            DenyReason::Negotiate(m) => write!(f, "Negotiate: {m}"),
            DenyReason::NoSession => f.write_str(
                "credentials verified, but no authorization rule and role lets this user open a session here",
            ),
        }
    }
}

impl DenyReason {
    /// A stable short code for the JSON audit log ("wrong_password", "locked_out_user", …).
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::BasicDisabled => "basic_disabled",
            DenyReason::Malformed => "malformed",
            DenyReason::UnknownUser => "unknown_user",
            DenyReason::WrongPassword => "wrong_password",
            DenyReason::Disabled => "disabled",
            DenyReason::LockedOutUser => "locked_out_user",
            DenyReason::LockedOutSource => "locked_out_source",
            DenyReason::BadStoredHash(_) => "bad_stored_hash",
            DenyReason::Pam(_) => "pam",
            DenyReason::UnknownCertificate => "unknown_certificate",
            DenyReason::Negotiate(_) => "negotiate",
            DenyReason::NoSession => "no_session",
        }
    }
}

/// A user's groups — the one definition the server's login, `keyhole rule test`,
/// `keyhole run` and `keyhole capability` all use:
/// 1. an account of `users.toml` (names compared after `to_lowercase`, as at login): its
///    `groups`, exactly as written;
/// 2. otherwise, when PAM is configured (`pam_enabled`) and the system's user database knows
///    the account (names exact, as PAM and getpwnam see them): its OS groups, primary group
///    included (getgrouplist, at most [`MAX_OS_GROUPS`]);
/// 3. otherwise `None`: nobody of that name can log in here.
pub fn groups_of(users: &UsersFile, pam_enabled: bool, user: &str) -> Option<Vec<String>> {
    let lower = user.to_lowercase();
    let entry = users
        .users
        .iter()
        .find(|(n, _)| n.to_lowercase() == lower)
        .map(|(_, e)| e);
    groups_for(entry, pam_enabled, user)
}

/// [`groups_of`] once the `users.toml` entry (if any) is found.
fn groups_for(entry: Option<&UserEntry>, pam_enabled: bool, user: &str) -> Option<Vec<String>> {
    match entry {
        Some(e) => Some(e.groups.clone()),
        None if pam_enabled => pam::os_groups(user),
        None => None,
    }
}

/// The outcome of gate 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    Ok(Identity),
    Denied(DenyReason),
}

impl AuthResult {
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            AuthResult::Ok(i) => Some(i),
            AuthResult::Denied(_) => None,
        }
    }
}

/// One local account, with the fingerprint of its entry (name + entry) for cache validation.
#[derive(Clone)]
struct UserRecord {
    name: String,
    entry: UserEntry,
    fingerprint: [u8; 32],
}

#[derive(Default)]
struct UsersState {
    /// Keyed by lower-case name.
    by_name: HashMap<String, UserRecord>,
    /// Certificate SHA-256 → lower-case user name.
    by_cert: HashMap<[u8; 32], String>,
}

struct CacheEntry {
    expires: Instant,
    /// The user entry's fingerprint (None for PAM users).
    fingerprint: Option<[u8; 32]>,
    identity: Identity,
}

#[derive(Clone, Copy)]
struct Counter {
    failures: u64,
    window_start: Instant,
    locked_until: Option<Instant>,
    last: Instant,
    /// Attempts refused unverified while this counter was locked (pair counters only): once
    /// they reach the limit, even a remembered credential is refused until the lock-out ends,
    /// so the cache cannot be used to test passwords at full speed during a lock-out.
    guesses_while_locked: u64,
}

/// A (lower-case user name, source key) pair.
type PairKey = (String, IpAddr);

#[derive(Default)]
struct Lockouts {
    by_pair: HashMap<PairKey, Counter>,
    by_source: HashMap<IpAddr, Counter>,
}

/// Gate 2. Thread-safe; `verify_basic` is CPU-heavy (argon2): call it from `spawn_blocking`.
pub struct Authenticator {
    cfg: RwLock<AuthConfig>,
    users_path: PathBuf,
    users: RwLock<UsersState>,
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
    lockouts: Mutex<Lockouts>,
    cache_key: [u8; 32],
    /// A hash of a random password with default parameters, verified for unknown users so
    /// that the time taken does not tell whether an account exists.
    /// What refusals with nothing real to verify are verified against: a hash made at the first
    /// verification (see [`Authenticator::dummy_hash`]).
    dummy_hash: OnceLock<String>,
    verifications: AtomicU64,
    /// argon2's work areas, kept for the next verification.
    memory: ArgonMemory,
    /// Failure and lock-out counters, once the daemon attaches its metrics.
    metrics: std::sync::OnceLock<std::sync::Arc<crate::metrics::Metrics>>,
}

/// argon2id work areas (19 MiB each with the default parameters) kept between verifications,
/// at most [`verification_slots`] of them: a verification takes one (or allocates one when
/// more run at once than the listener admits, e.g. `keyhole run` or tests), and gives it back
/// wiped. Memory then stays at the slots' worth however many verifications come, instead of
/// growing with every allocator arena that once served one.
struct ArgonMemory {
    free: Mutex<Vec<Vec<argon2::Block>>>,
    keep: usize,
}

impl ArgonMemory {
    fn new(keep: usize) -> ArgonMemory {
        ArgonMemory {
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// A work area of at least `blocks` blocks.
    fn take(&self, blocks: usize) -> Vec<argon2::Block> {
        let mut v = lock(&self.free).pop().unwrap_or_default();
        if v.len() < blocks {
            v.resize(blocks, argon2::Block::new());
        }
        v
    }

    /// Back for reuse, wiped (the blocks derive from the password); dropped when enough are
    /// kept, or when it is larger than the default parameters need (a stored hash with a
    /// larger memory cost is rare: its area is not worth keeping).
    fn give(&self, mut v: Vec<argon2::Block>) {
        if v.len() > argon2::Params::DEFAULT.block_count() {
            return;
        }
        for b in v.iter_mut() {
            *b = argon2::Block::new();
        }
        let mut free = lock(&self.free);
        if free.len() < self.keep {
            free.push(v);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn entry_fingerprint(name: &str, entry: &UserEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0u8]);
    h.update(serde_json::to_vec(entry).unwrap_or_default());
    h.finalize().into()
}

/// Parses `sha256:AB:CD…` / `sha256:abcd…` (prefix and colons optional, any case).
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let hex = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256:") => s.get(7..)?,
        _ => s,
    };
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let hi = (*pair.first()? as char).to_digit(16)?;
        let lo = (*pair.get(1)? as char).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Formats a fingerprint as `sha256:` + lower-case hex (the form `users.toml` accepts).
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    let hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn build_state(users: UsersFile) -> UsersState {
    let mut state = UsersState::default();
    for (name, entry) in users.users {
        let lower = name.to_lowercase();
        for c in &entry.client_certificates {
            match parse_fingerprint(c) {
                Some(fp) => {
                    state.by_cert.insert(fp, lower.clone());
                }
                None => tracing::warn!(
                    user = %name,
                    "ignoring a client certificate fingerprint that is not sha256: + 64 hex digits"
                ),
            }
        }
        let fingerprint = entry_fingerprint(&name, &entry);
        state.by_name.insert(
            lower,
            UserRecord {
                name,
                entry,
                fingerprint,
            },
        );
    }
    state
}

/// The lock-out key of a source: the address, or its /64 for IPv6 (one host owns a /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn is_locked<K: Hash + Eq>(map: &mut HashMap<K, Counter>, key: &K, now: Instant) -> bool {
    let Some(c) = map.get(key) else { return false };
    match c.locked_until {
        Some(t) if t > now => true,
        Some(_) => {
            // The lock-out is over: start afresh.
            map.remove(key);
            false
        }
        None => false,
    }
}

/// Is a remembered credential still honoured for this pair? Not once the pair is locked and
/// has seen `max` refused guesses during the lock-out.
fn cache_budget_left(
    map: &HashMap<PairKey, Counter>,
    key: &PairKey,
    now: Instant,
    max: u64,
) -> bool {
    match map.get(key) {
        Some(c) => !(c.locked_until.is_some_and(|t| t > now) && c.guesses_while_locked >= max),
        None => true,
    }
}

/// An attempt refused unverified because the pair or the source is locked: it spends the
/// pair's guessing budget (locking the pair first when only the source was locked).
fn record_locked_guess(
    map: &mut HashMap<PairKey, Counter>,
    key: &PairKey,
    now: Instant,
    max: u64,
    window: Duration,
) {
    match map.get_mut(key) {
        Some(c) if c.locked_until.is_some_and(|t| t > now) => {
            c.guesses_while_locked = c.guesses_while_locked.saturating_add(1);
            c.last = now;
        }
        _ => {
            record_failure(map, key, now, max, window);
        }
    }
}

/// Count one failure; true when it starts a lock-out.
fn record_failure<K: Hash + Eq + Clone>(
    map: &mut HashMap<K, Counter>,
    key: &K,
    now: Instant,
    max: u64,
    window: Duration,
) -> bool {
    if !map.contains_key(key) && map.len() >= MAX_LOCKOUT_ENTRIES {
        map.retain(|_, c| match c.locked_until {
            Some(t) => t > now,
            None => now.saturating_duration_since(c.window_start) <= window,
        });
        if map.len() >= MAX_LOCKOUT_ENTRIES {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
    }
    let c = map.entry(key.clone()).or_insert(Counter {
        failures: 0,
        window_start: now,
        locked_until: None,
        last: now,
        guesses_while_locked: 0,
    });
    if c.locked_until.is_none() && now.saturating_duration_since(c.window_start) > window {
        c.failures = 0;
        c.window_start = now;
    }
    c.failures = c.failures.saturating_add(1);
    c.last = now;
    if c.failures >= max && c.locked_until.is_none() {
        c.locked_until = now.checked_add(window);
        return true;
    }
    false
}

/// What an unknown user's password is verified against, so that an unknown user costs the same
/// argon2id work as a known one: a hash with the parameters `hash_password` uses (argon2's
/// defaults: m = 19 MiB, t = 2, p = 1, 32-byte output; a test holds them equal) of a random
/// password that was discarded. A constant: hashing one at every start made the 19 MiB
/// start-up peak (issue 10); the salt need not be secret and nobody can pass this check.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$Jg7YVePCnAoXVKo4SHRz4A$0RlZsBBlNtV1Vb8jUALD7lpTV+p5B1RJxAeWbW9UMRc";

impl Authenticator {
    /// `users_path` is where `reload_users` reads from; `users` is its parsed content.
    pub fn new(cfg: &AuthConfig, users_path: &Path, users: UsersFile) -> Self {
        let cache_key: [u8; 32] = rand::random();
        Authenticator {
            cfg: RwLock::new(cfg.clone()),
            users_path: users_path.to_path_buf(),
            users: RwLock::new(build_state(users)),
            cache: Mutex::new(HashMap::new()),
            lockouts: Mutex::new(Lockouts::default()),
            cache_key,
            dummy_hash: OnceLock::new(),
            verifications: AtomicU64::new(0),
            memory: ArgonMemory::new(verification_slots()),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// Count failures (`keyhole_auth_failures_total`) and lock-outs
    /// (`keyhole_auth_lockouts_total`) in `metrics` from now on (the first call wins).
    pub fn attach_metrics(&self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The users file this authenticator reloads from.
    pub fn users_path(&self) -> &Path {
        &self.users_path
    }

    /// Swaps in a new users file (reload). A remembered verification whose account entry
    /// changed (password, groups, disabled, certificates), disappeared, or (for PAM) is now
    /// shadowed by a local account is dropped; the others stay, so a reload never makes an
    /// open session verify again (which a lock-out of its address would refuse).
    pub fn replace_users(&self, users: UsersFile) {
        let new_state = build_state(users);
        let mut cache = lock(&self.cache);
        cache.retain(|_, e| entry_still_valid(e, &new_state));
        let mut state = self.users.write().unwrap_or_else(|e| e.into_inner());
        *state = new_state;
    }

    /// Re-reads `users_path` and swaps it in; on error the running accounts stay.
    pub fn reload_users(&self) -> Result<(), AuthError> {
        let users = load_users(&self.users_path)?;
        self.replace_users(users);
        Ok(())
    }

    /// Swaps in new `[auth]` settings (reload). Counters and cache are kept.
    pub fn replace_config(&self, cfg: &AuthConfig) {
        *self.cfg.write().unwrap_or_else(|e| e.into_inner()) = cfg.clone();
    }

    /// How many argon2 verifications ran (real and dummy); for tests and the benchmark of the
    /// cache (the `test-util` feature, which only dev-dependencies turn on).
    #[cfg(any(test, feature = "test-util"))]
    pub fn verification_count(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// The groups of `user` as this authenticator's logins see them ([`groups_of`] on the
    /// loaded users file and `[auth]` settings).
    pub fn groups_of(&self, user: &str) -> Option<Vec<String>> {
        let entry = {
            let state = self.users.read().unwrap_or_else(|e| e.into_inner());
            state
                .by_name
                .get(&user.to_lowercase())
                .map(|r| r.entry.clone())
        };
        groups_for(entry.as_ref(), self.pam_enabled(), user)
    }

    fn pam_enabled(&self) -> bool {
        !self
            .cfg
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pam_service
            .is_empty()
    }

    /// NTLM: the NT hash of `user` (case-insensitive) for [`negotiate::ConnectionAuth::step`];
    /// `None` when `[auth] ntlm` is off, or the account is unknown, disabled or has no valid
    /// `nt_hash`. (Lock-outs are the caller's, as for Basic: check them before the exchange and
    /// count [`negotiate::NegotiateError::failed_user`] after it.)
    pub fn nt_hash_of(&self, user: &str) -> Option<[u8; 16]> {
        if !self.cfg.read().unwrap_or_else(|e| e.into_inner()).ntlm {
            return None;
        }
        let state = self.users.read().unwrap_or_else(|e| e.into_inner());
        let r = state.by_name.get(&user.to_lowercase())?;
        if r.entry.disabled {
            return None;
        }
        ntlm::parse_nt_hash(r.entry.nt_hash.as_deref()?)
    }

    /// The cache key of a credential presented from a source: remembered credentials are
    /// per source (IPv6 /64), so a lock-out elsewhere never touches them and a guess from
    /// elsewhere never hits them.
    fn cache_key_for(&self, source: IpAddr, username: &str, password: &str) -> Option<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.cache_key).ok()?;
        match source_key(source) {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac.update(&[0u8]);
        mac.update(username.to_lowercase().as_bytes());
        mac.update(&[0u8]);
        mac.update(password.as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    /// argon2id verification of `password` against the PHC string `stored`, in a reused work
    /// area; `Err` when the stored hash is unusable (checked before any hashing: the caller
    /// then verifies against the dummy hash, so that the time is the same).
    /// The dummy hash, made by `hash_password` at the first verification (not at start: that
    /// made the 19 MiB start-up peak of issue 10; the first verification needs that memory
    /// anyway). Made before any work area is taken: with a constant hash and no hashing before
    /// the first verification, verifications against real hashes measured 1–2 ms slower than
    /// against the dummy on the live server (the refusal timing test failed), which hashing
    /// once first removes. [`DUMMY_HASH`] (same parameters) if hashing fails.
    fn dummy_hash(&self) -> &str {
        self.dummy_hash.get_or_init(|| {
            let random: [u8; 32] = rand::random();
            hash_password(&base64::engine::general_purpose::STANDARD.encode(random))
                .unwrap_or_else(|_| DUMMY_HASH.to_string())
        })
    }

    fn argon2_verify(&self, stored: &str, password: &[u8]) -> Result<bool, String> {
        // The first verification makes the dummy hash before it takes a work area.
        let _ = self.dummy_hash();
        let parsed = PasswordHash::new(stored).map_err(|e| format!("cannot parse it: {e}"))?;
        if parsed.algorithm != argon2::Algorithm::Argon2id.ident() {
            return Err(format!(
                "algorithm {} is not argon2id; set a new password with `keyhole user passwd`",
                parsed.algorithm
            ));
        }
        let params = argon2::Params::try_from(&parsed)
            .map_err(|e| format!("its parameters are not usable: {e}"))?;
        if params.m_cost() > MAX_ARGON2_MEMORY_KIB {
            return Err(format!(
                "its memory cost ({} KiB) is above {MAX_ARGON2_MEMORY_KIB} KiB; set a new password with `keyhole user passwd`",
                params.m_cost()
            ));
        }
        let version = match parsed.version {
            Some(v) => argon2::Version::try_from(v)
                .map_err(|e| format!("its version is not usable: {e}"))?,
            None => argon2::Version::default(),
        };
        let expected = parsed
            .hash
            .ok_or_else(|| "it has no hash output".to_string())?;
        let salt = parsed.salt.ok_or_else(|| "it has no salt".to_string())?;
        let mut salt_buf = [0u8; 64];
        let salt = salt
            .decode_b64(&mut salt_buf)
            .map_err(|e| format!("its salt is not usable: {e}"))?;
        let hasher = Argon2::new(argon2::Algorithm::Argon2id, version, params);
        // Counted here, where the hashing starts: a hash refused before it costs nothing.
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let mut memory = self.memory.take(hasher.params().block_count());
        let mut out = [0u8; argon2::password_hash::Output::MAX_LENGTH];
        let computed = out
            .get_mut(..expected.len())
            .ok_or("its output is too long")?;
        let result =
            hasher.hash_password_into_with_memory(password, salt, computed, memory.as_mut_slice());
        self.memory.give(memory);
        result.map_err(|e| format!("cannot verify against it: {e}"))?;
        Ok(bool::from(subtle::ConstantTimeEq::ct_eq(
            &*computed,
            expected.as_bytes(),
        )))
    }

    /// One verification against the dummy hash: the work a refusal costs when there is nothing
    /// real to verify (unknown user, locked out, malformed, unusable stored hash).
    fn dummy_verify(&self, password: &[u8]) {
        let _ = self.argon2_verify(self.dummy_hash(), password);
    }

    fn deny(
        &self,
        username: &str,
        source: Option<IpAddr>,
        reason: DenyReason,
        count: bool,
    ) -> AuthResult {
        if count {
            let cfg = self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
            let now = Instant::now();
            let mut l = lock(&self.lockouts);
            let max = cfg.max_failed_logins.0.max(1);
            // Certificates (no source) are never counted; every Basic refusal has a source.
            if let Some(ip) = source {
                let pair = (username.to_lowercase(), source_key(ip));
                let pair_locked = record_failure(&mut l.by_pair, &pair, now, max, cfg.lockout.0);
                let source_locked =
                    record_failure(&mut l.by_source, &source_key(ip), now, max, cfg.lockout.0);
                drop(l);
                if let Some(m) = self.metrics.get() {
                    for (locked, scope) in [(pair_locked, "user_source"), (source_locked, "source")]
                    {
                        if locked {
                            m.auth_lockouts.with(&[scope]).inc();
                        }
                    }
                }
            }
        }
        if let Some(m) = self.metrics.get() {
            m.auth_failures.with(&[reason.code()]).inc();
        }
        match source {
            Some(ip) => {
                tracing::warn!(user = %username, source = %ip, %reason, "authentication refused")
            }
            None => tracing::warn!(user = %username, %reason, "authentication refused"),
        }
        AuthResult::Denied(reason)
    }

    /// `verified`: the password was checked just now (not remembered), which clears this
    /// user's failures at this source (never the source's own counter).
    fn accept(&self, identity: Identity, source: Option<IpAddr>, verified: bool) -> AuthResult {
        if let (true, Some(ip)) = (verified, source) {
            lock(&self.lockouts)
                .by_pair
                .remove(&(identity.user.to_lowercase(), source_key(ip)));
        }
        match source {
            Some(ip) => {
                tracing::info!(user = %identity.user, source = %ip, method = %identity.method, "authenticated")
            }
            None => {
                tracing::info!(user = %identity.user, method = %identity.method, "authenticated")
            }
        }
        AuthResult::Ok(identity)
    }

    fn cache_lookup(&self, key: &[u8; 32], now: Instant) -> Option<Identity> {
        let mut cache = lock(&self.cache);
        let hit = cache.get_mut(key)?;
        let valid = hit.expires > now && {
            let state = self.users.read().unwrap_or_else(|e| e.into_inner());
            entry_still_valid(hit, &state)
        };
        if valid {
            // A local account's entry slides: it is checked against the users file at each
            // use. A PAM user's expires CACHE_TTL after the verification, whatever happens.
            if hit.fingerprint.is_some() {
                if let Some(t) = now.checked_add(CACHE_TTL) {
                    hit.expires = t;
                }
            }
            Some(hit.identity.clone())
        } else {
            cache.remove(key);
            None
        }
    }

    fn cache_store(&self, key: [u8; 32], entry: CacheEntry, now: Instant) {
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHE_ENTRIES {
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= MAX_CACHE_ENTRIES {
                if let Some(oldest) = cache.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k) {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(key, entry);
    }

    /// Gate 2 for `Authorization: Basic` when every verified user may open a session (tools
    /// and tests without gates 3–4): [`Authenticator::verify_basic_admitting`] admitting all.
    pub fn verify_basic(&self, username: &str, password: &str, source: IpAddr) -> AuthResult {
        self.verify_basic_admitting(username, password, source, &mut |_| true)
    }

    /// Is this an empty or over-long name or password (refused without counting: an empty
    /// password is not a guess)?
    fn malformed(username: &str, password: &str) -> bool {
        username.is_empty()
            || username.len() > MAX_LOGIN_NAME_LEN
            || password.is_empty()
            || password.len() > MAX_PASSWORD_LEN
    }

    /// The credential as remembered from an earlier verification at this source, if it is
    /// and `admit` still admits its user (the configuration may have changed since): no
    /// hashing, no counting, never a refusal — None means "verify"
    /// ([`Authenticator::verify_basic_admitting`]). Cheap enough for the threads that accept
    /// connections. A remembered credential is honoured during a lock-out of its pair or
    /// source (a lock-out never cuts an open session) until the lock-out's guessing budget is
    /// spent.
    pub fn remembered(
        &self,
        username: &str,
        password: &str,
        source: IpAddr,
        admit: &mut dyn FnMut(&Identity) -> bool,
    ) -> Option<Identity> {
        let cfg = self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
        if !cfg.basic || Self::malformed(username, password) {
            return None;
        }
        let now = Instant::now();
        let max = cfg.max_failed_logins.0.max(1);
        let pair = (username.to_lowercase(), source_key(source));
        let budget_left = {
            let mut l = lock(&self.lockouts);
            // Expired lock-outs end here, as in a verification.
            is_locked(&mut l.by_pair, &pair, now);
            cache_budget_left(&l.by_pair, &pair, now, max)
        };
        if !budget_left {
            return None;
        }
        let key = self.cache_key_for(source, username, password)?;
        let identity = self.cache_lookup(&key, now)?;
        if !admit(&identity) {
            // Rules or roles changed since: forget it; the verification refuses it.
            lock(&self.cache).remove(&key);
            return None;
        }
        match self.accept(identity, Some(source), false) {
            AuthResult::Ok(i) => Some(i),
            AuthResult::Denied(_) => None,
        }
    }

    /// Gate 2 for `Authorization: Basic`, as the server runs it: a remembered credential
    /// ([`Authenticator::remembered`]) or one argon2id verification — CPU-heavy, for a blocking
    /// thread. A verified user whom `admit` refuses (no rule and role lets them open a session
    /// here: gates 3–4) is refused with [`DenyReason::NoSession`], counted as a failed login and
    /// never remembered, so that neither the answer, nor its time, nor the lock-outs tell a
    /// right password from a wrong one.
    ///
    /// Every refusal costs exactly one argon2id verification and nothing else differs between
    /// them: the stored hash when the account exists (disabled too), the dummy hash when there
    /// is none to verify against (unknown user, locked out, empty or over-long credentials, an
    /// unusable stored hash, Basic switched off). (PAM takes the time PAM takes.)
    pub fn verify_basic_admitting(
        &self,
        username: &str,
        password: &str,
        source: IpAddr,
        admit: &mut dyn FnMut(&Identity) -> bool,
    ) -> AuthResult {
        if let Some(identity) = self.remembered(username, password, source, admit) {
            return AuthResult::Ok(identity);
        }
        let cfg = self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
        let src = Some(source);
        if !cfg.basic {
            self.dummy_verify(password.as_bytes());
            return self.deny(username, src, DenyReason::BasicDisabled, false);
        }
        // Nothing real is verified for an empty or over-long name or password, and nothing is
        // counted: an empty password is not a guess.
        if Self::malformed(username, password) {
            let head = password.as_bytes();
            self.dummy_verify(head.get(..MAX_PASSWORD_LEN).unwrap_or(head));
            return self.deny(username, src, DenyReason::Malformed, false);
        }
        let now = Instant::now();
        let max = cfg.max_failed_logins.0.max(1);
        let pair = (username.to_lowercase(), source_key(source));
        let (pair_locked, source_locked) = {
            let mut l = lock(&self.lockouts);
            let p = is_locked(&mut l.by_pair, &pair, now);
            let s = is_locked(&mut l.by_source, &pair.1, now);
            (p, s)
        };
        if pair_locked || source_locked {
            record_locked_guess(
                &mut lock(&self.lockouts).by_pair,
                &pair,
                now,
                max,
                cfg.lockout.0,
            );
            self.dummy_verify(password.as_bytes());
            let reason = if pair_locked {
                DenyReason::LockedOutUser
            } else {
                DenyReason::LockedOutSource
            };
            return self.deny(username, src, reason, false);
        }
        let record = {
            let state = self.users.read().unwrap_or_else(|e| e.into_inner());
            state.by_name.get(&username.to_lowercase()).cloned()
        };
        let (identity, fingerprint) = match record {
            Some(rec) => {
                let verdict = self.argon2_verify(&rec.entry.password, password.as_bytes());
                if verdict.is_err() {
                    // Refused before any hashing: the same work as every other refusal.
                    self.dummy_verify(password.as_bytes());
                }
                if rec.entry.disabled {
                    return self.deny(username, src, DenyReason::Disabled, true);
                }
                match verdict {
                    Err(m) => return self.deny(username, src, DenyReason::BadStoredHash(m), true),
                    Ok(false) => return self.deny(username, src, DenyReason::WrongPassword, true),
                    Ok(true) => (
                        Identity {
                            user: rec.name.clone(),
                            groups: groups_for(Some(&rec.entry), false, &rec.name)
                                .unwrap_or_default(),
                            method: AuthMethod::Basic,
                        },
                        Some(rec.fingerprint),
                    ),
                }
            }
            None if !cfg.pam_service.is_empty() && validate_user_name(username).is_ok() => {
                match pam::authenticate(&cfg.pam_service, username, password) {
                    Ok(()) => (
                        Identity {
                            user: username.to_string(),
                            groups: groups_for(None, true, username).unwrap_or_default(),
                            method: AuthMethod::Pam,
                        },
                        None,
                    ),
                    Err(m) => return self.deny(username, src, DenyReason::Pam(m), true),
                }
            }
            None => {
                self.dummy_verify(password.as_bytes());
                return self.deny(username, src, DenyReason::UnknownUser, true);
            }
        };
        if !admit(&identity) {
            return self.deny(&identity.user, src, DenyReason::NoSession, true);
        }
        let key = self.cache_key_for(source, username, password);
        if let (Some(k), Some(expires)) = (key, now.checked_add(CACHE_TTL)) {
            let entry = CacheEntry {
                expires,
                fingerprint,
                identity: identity.clone(),
            };
            self.cache_store(k, entry, now);
        }
        self.accept(identity, src, true)
    }

    /// Forget every remembered credential whose user `keep` no longer admits (a reload that
    /// changed rules or roles): the cache holds only users who can open a session.
    pub fn forget_remembered_unless(&self, keep: &mut dyn FnMut(&Identity) -> bool) {
        lock(&self.cache).retain(|_, e| keep(&e.identity));
    }

    /// How many credentials are remembered now (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn remembered_count(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Gate 2 for a finished Negotiate exchange (issue 12), with Basic's lock-outs: an NTLM
    /// wrong response or unknown user counts as a failed login for that name and `source`; a
    /// locked-out user or source is refused even with the right credentials; other failures
    /// (bad tokens, realms, channel bindings) are refused without counting. The caller is the
    /// local account: a users.toml entry (refused when disabled) or an OS account (groups from
    /// the OS, e.g. SSSD); a Kerberos principal with neither is refused as an unknown user.
    pub fn verify_negotiated(
        &self,
        outcome: Result<&negotiate::Negotiated, &negotiate::NegotiateError>,
        source: IpAddr,
    ) -> AuthResult {
        let src = Some(source);
        let done = match outcome {
            Ok(d) => d,
            Err(e) => {
                return match e.failed_user() {
                    Some(user) => self.deny(user, src, DenyReason::WrongPassword, true),
                    None => self.deny("-", src, DenyReason::Negotiate(e.to_string()), false),
                }
            }
        };
        let now = Instant::now();
        {
            let mut l = lock(&self.lockouts);
            let pair = (done.user.to_lowercase(), source_key(source));
            if is_locked(&mut l.by_pair, &pair, now) {
                drop(l);
                return self.deny(&done.user, src, DenyReason::LockedOutUser, false);
            }
            if is_locked(&mut l.by_source, &source_key(source), now) {
                drop(l);
                return self.deny(&done.user, src, DenyReason::LockedOutSource, false);
            }
        }
        let method = match done.mechanism {
            negotiate::Mechanism::Kerberos => AuthMethod::Kerberos,
            negotiate::Mechanism::Ntlm => AuthMethod::Ntlm,
        };
        let record = self
            .users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .get(&done.user.to_lowercase())
            .cloned();
        let identity = match record {
            Some(r) if r.entry.disabled => {
                return self.deny(&r.name, src, DenyReason::Disabled, true)
            }
            Some(r) => Identity {
                user: r.name,
                groups: r.entry.groups,
                method,
            },
            None if method == AuthMethod::Kerberos
                && nix::unistd::User::from_name(&done.user)
                    .ok()
                    .flatten()
                    .is_some() =>
            {
                // A domain account (SSSD) that Kerberos proved: its groups come from the OS, through
                // the one lookup every login uses.
                Identity {
                    user: done.user.clone(),
                    groups: groups_for(None, true, &done.user).unwrap_or_default(),
                    method,
                }
            }
            None => return self.deny(&done.user, src, DenyReason::UnknownUser, false),
        };
        tracing::info!(principal = %done.principal, "Negotiate principal");
        self.accept(identity, src, true)
    }

    /// A caller Negotiate authenticated earlier on this connection, as the accounts stand now
    /// (each later request on the connection rides that authentication): a users.toml account
    /// with its current groups, None once it is disabled or removed; a Kerberos principal
    /// without a users.toml entry keeps the groups it was admitted with while the OS (SSSD)
    /// still knows the account. No
    /// lock-out check: a lock-out refuses new logins and never cuts what is open.
    pub fn negotiated_identity_now(&self, id: &Identity) -> Option<Identity> {
        let state = self.users.read().unwrap_or_else(|e| e.into_inner());
        match state.by_name.get(&id.user.to_lowercase()) {
            Some(r) if r.entry.disabled => None,
            Some(r) => Some(Identity {
                user: r.name.clone(),
                groups: r.entry.groups.clone(),
                method: id.method,
            }),
            None if id.method == AuthMethod::Kerberos
                && nix::unistd::User::from_name(&id.user)
                    .ok()
                    .flatten()
                    .is_some() =>
            {
                Some(id.clone())
            }
            None => None,
        }
    }

    /// Gate 2 for a verified TLS client certificate (its DER's SHA-256).
    pub fn verify_certificate_fingerprint(&self, sha256_fingerprint: &[u8; 32]) -> AuthResult {
        let shown = format_fingerprint(sha256_fingerprint);
        let state = self.users.read().unwrap_or_else(|e| e.into_inner());
        let rec = state
            .by_cert
            .get(sha256_fingerprint)
            .and_then(|n| state.by_name.get(n))
            .cloned();
        drop(state);
        match rec {
            None => self.deny(&shown, None, DenyReason::UnknownCertificate, false),
            Some(r) if r.entry.disabled => self.deny(&r.name, None, DenyReason::Disabled, false),
            Some(r) => self.accept(
                Identity {
                    groups: groups_for(Some(&r.entry), false, &r.name).unwrap_or_default(),
                    user: r.name,
                    method: AuthMethod::Certificate,
                },
                None,
                true,
            ),
        }
    }
}

/// Is a remembered verification still good for `state` (same account entry, not disabled; a
/// PAM user only while no local account shadows the name)?
fn entry_still_valid(e: &CacheEntry, state: &UsersState) -> bool {
    let lower = e.identity.user.to_lowercase();
    match e.fingerprint {
        Some(fp) => state
            .by_name
            .get(&lower)
            .is_some_and(|r| r.fingerprint == fp && !r.entry.disabled),
        None => !state.by_name.contains_key(&lower),
    }
}

/// Parses an `Authorization` header value `Basic <base64(user:password)>`; `None` when it is
/// another scheme, too long, not base64, not UTF-8, has no ':' or an empty user name.
pub fn parse_basic_header(value: &[u8]) -> Option<(String, String)> {
    if value.len() > MAX_BASIC_HEADER_LEN {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

/// The `WWW-Authenticate` header values of a 401 (one header each), for the enabled methods.
/// A client certificate is requested in the TLS handshake and has no HTTP challenge, so with
/// Basic disabled the list is empty.
pub fn www_authenticate_headers(cfg: &AuthConfig, client_cert_enabled: bool) -> Vec<String> {
    let _ = client_cert_enabled;
    let mut out = Vec::new();
    if cfg.basic {
        out.push(format!("Basic realm=\"{BASIC_REALM}\""));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let real_text = hash_password("a password of the usual length").unwrap();
        let real = PasswordHash::new(&real_text).unwrap();
        assert_eq!(dummy.algorithm, argon2::Algorithm::Argon2id.ident());
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(
            argon2::Params::try_from(&dummy).unwrap(),
            argon2::Params::try_from(&real).unwrap(),
            "same m, t, p and output length as hash_password"
        );
        assert_eq!(
            dummy.hash.unwrap().len(),
            real.hash.unwrap().len(),
            "same output length"
        );
    }

    #[test]
    fn basic_header() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pa:ss")
        );
        assert_eq!(
            parse_basic_header(h.as_bytes()),
            Some(("alice".into(), "pa:ss".into()))
        );
        let h = format!(
            "basic   {}",
            base64::engine::general_purpose::STANDARD.encode("bob:")
        );
        assert_eq!(
            parse_basic_header(h.as_bytes()),
            Some(("bob".into(), String::new()))
        );
        assert_eq!(parse_basic_header(b"Negotiate abc"), None);
        assert_eq!(parse_basic_header(b"Basic !!!"), None);
        assert_eq!(parse_basic_header(b"Basic"), None);
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(":pw")
        );
        assert_eq!(parse_basic_header(h.as_bytes()), None);
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("nocolon")
        );
        assert_eq!(parse_basic_header(h.as_bytes()), None);
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'x'])
        );
        assert_eq!(parse_basic_header(h.as_bytes()), None);
        let long = format!("Basic {}", "A".repeat(MAX_BASIC_HEADER_LEN));
        assert_eq!(parse_basic_header(long.as_bytes()), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                               text in ".{0,120}") {
            let _ = parse_basic_header(&bytes);
            let mut h = b"Basic ".to_vec();
            h.extend_from_slice(&bytes);
            let _ = parse_basic_header(&h);
            let _ = parse_fingerprint(&text);
            let _ = parse_fingerprint(&format!("sha256:{text}"));
        }

        #[test]
        fn basic_header_round_trip(user in "[^:\\x00]{1,40}", pw in ".{0,60}") {
            let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")));
            proptest::prop_assert_eq!(parse_basic_header(v.as_bytes()), Some((user, pw)));
        }
    }

    #[test]
    fn groups_from_file_then_os() {
        let users: UsersFile =
            toml::from_str("[users.Alice]\npassword = \"x\"\ngroups = [\"g\"]\n").unwrap();
        assert_eq!(
            groups_of(&users, false, "alice"),
            Some(vec!["g".to_string()])
        );
        assert_eq!(groups_of(&users, false, "root"), None);
        assert!(groups_of(&users, true, "root")
            .unwrap()
            .contains(&"root".to_string()));
        assert_eq!(DenyReason::LockedOutSource.code(), "locked_out_source");
    }

    #[test]
    fn fingerprints() {
        let hex = "AB".repeat(32);
        let fp = parse_fingerprint(&format!("sha256:{hex}")).unwrap();
        assert_eq!(fp, [0xab; 32]);
        let colons: Vec<String> = (0..32).map(|_| "ab".to_string()).collect();
        assert_eq!(
            parse_fingerprint(&format!("SHA256:{}", colons.join(":"))),
            Some([0xab; 32])
        );
        assert_eq!(parse_fingerprint("sha256:abc"), None);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{}", "zz".repeat(32))),
            None
        );
        assert_eq!(
            format_fingerprint(&[0xab; 32]),
            format!("sha256:{}", "ab".repeat(32))
        );
    }

    #[test]
    fn www_authenticate() {
        let cfg = AuthConfig::default();
        assert_eq!(
            www_authenticate_headers(&cfg, false),
            vec!["Basic realm=\"keyhole\"".to_string()]
        );
        let off = AuthConfig {
            basic: false,
            ..AuthConfig::default()
        };
        assert!(www_authenticate_headers(&off, true).is_empty());
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_key(m), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn counters_lock_then_expire() {
        let mut m: HashMap<String, Counter> = HashMap::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let k = "u".to_string();
        record_failure(&mut m, &k, t0, 2, w);
        assert!(!is_locked(&mut m, &k, t0));
        record_failure(&mut m, &k, t0, 2, w);
        assert!(is_locked(&mut m, &k, t0 + Duration::from_secs(5)));
        assert!(!is_locked(&mut m, &k, t0 + Duration::from_secs(11)));
        assert!(m.is_empty());
    }

    #[test]
    fn guesses_while_locked_spend_the_cache_budget() {
        let mut m: HashMap<PairKey, Counter> = HashMap::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let k: PairKey = ("u".into(), "10.0.0.1".parse().unwrap());
        // Only the source was locked: the first guesses lock the pair.
        record_locked_guess(&mut m, &k, t0, 2, w);
        assert!(cache_budget_left(&m, &k, t0, 2));
        record_locked_guess(&mut m, &k, t0, 2, w);
        assert!(is_locked(&mut m, &k, t0));
        assert!(cache_budget_left(&m, &k, t0, 2));
        record_locked_guess(&mut m, &k, t0, 2, w);
        assert!(cache_budget_left(&m, &k, t0, 2));
        record_locked_guess(&mut m, &k, t0, 2, w);
        assert!(!cache_budget_left(&m, &k, t0, 2));
        // The lock-out ends: the budget is back.
        assert!(!is_locked(&mut m, &k, t0 + Duration::from_secs(11)));
        assert!(cache_budget_left(&m, &k, t0 + Duration::from_secs(11), 2));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut m: HashMap<String, Counter> = HashMap::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let k = "u".to_string();
        record_failure(&mut m, &k, t0, 2, w);
        record_failure(&mut m, &k, t0 + Duration::from_secs(20), 2, w);
        assert!(!is_locked(&mut m, &k, t0 + Duration::from_secs(20)));
    }
}
