//! The `[listener]` settings as `serve` uses them at start (SPEC §1 gate 1, §2.1), checked in one
//! place. `keyhole check`, a reload and `serve` itself all call [`check`]: whatever would stop
//! `serve` from starting — an address that does not parse or does not exist on this host, plain
//! HTTP off loopback without `allow_unencrypted`, no listener at all, an `ip_allow` entry that is
//! not a CIDR, TLS files that do not parse or do not match, a `client_ca` rustls refuses,
//! `require_client_certificate` without `client_ca`, a self-signed pair in `state_directory`
//! that is unusable or cannot be generated — is a [`Problem`] naming its setting, which
//! `config::validate` turns into a `file:line:col` error and `serve` into its refusal to start.
//!
//! The plaintext rule (SPEC §2.1): an `http` listener on a loopback address, or anywhere with
//! `allow_unencrypted = true`, admits everything; off loopback without it, it is accepted only
//! when `[auth] negotiate` is on, and then admits nothing but encrypted Negotiate
//! ([`Listeners::http_encrypted_only`]): Basic, a plaintext body or an unencrypted Negotiate
//! request get the generic 401.
//!
//! What no configuration check can know is left to `serve`: a port another process holds now,
//! and the privileges of the account `serve` runs as (ports below 1024).
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::diag::Seg;
use super::ListenerConfig;

/// The self-signed pair `serve` generates in `state_directory` when no certificate is configured.
pub const SELF_SIGNED_CERT: &str = "keyhole-tls-cert.pem";
pub const SELF_SIGNED_KEY: &str = "keyhole-tls-key.pem";

/// The setting a problem is about: where `check` points in `keyhole.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Https,
    Http,
    /// The `[listener]` table as a whole.
    Listener,
    IpAllow(usize),
    TlsCertificate,
    TlsPrivateKey,
    ClientCa,
    RequireClientCertificate,
    /// The self-signed pair (or the directory it is generated in).
    StateDirectory,
}

impl Setting {
    /// Its path in `keyhole.toml`.
    pub fn toml_path(&self) -> Vec<Seg> {
        let l = |k: &str| vec![Seg::from("listener"), Seg::from(k)];
        match self {
            Setting::Https => l("https"),
            Setting::Http => l("http"),
            Setting::Listener => vec![Seg::from("listener")],
            Setting::IpAllow(i) => {
                vec![Seg::from("listener"), Seg::from("ip_allow"), Seg::Index(*i)]
            }
            Setting::TlsCertificate => l("tls_certificate"),
            Setting::TlsPrivateKey => l("tls_private_key"),
            Setting::ClientCa => l("client_ca"),
            Setting::RequireClientCertificate => l("require_client_certificate"),
            Setting::StateDirectory => vec![Seg::from("state_directory")],
        }
    }
}

/// One reason `serve` would not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: Setting,
    pub message: String,
}

fn problem(setting: Setting, message: impl Into<String>) -> Problem {
    Problem {
        setting,
        message: message.into(),
    }
}

/// The listener settings `serve` binds with, once every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// The `http` listener is off loopback without `allow_unencrypted`: it admits only
    /// encrypted Negotiate.
    pub http_encrypted_only: bool,
    pub ip_allow: Vec<IpNet>,
}

/// `""` disables a listener; anything else must be `address:port`.
pub fn parse_addr(key: &str, s: &str) -> Result<Option<SocketAddr>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("{key} = {s:?} is not an address:port like \"127.0.0.1:5986\" or \"[::]:5986\" (\"\" disables it)")
    })
}

/// One `ip_allow` entry: a CIDR range or a single address.
pub fn parse_ip_allow(entry: &str) -> Result<IpNet, String> {
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{entry:?} is not an address or CIDR range (e.g. \"10.0.0.0/8\")"))
}

/// Whether this host has the address (binding it with port 0 succeeds). `None`: fine.
fn address_problem(key: &str, a: SocketAddr) -> Option<String> {
    match std::net::TcpListener::bind(SocketAddr::new(a.ip(), 0)) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Some(format!(
            "{key} = \"{a}\": this host has no address {} (use one of its addresses, 0.0.0.0 or [::] for all, or 127.0.0.1)",
            a.ip()
        )),
        Err(e) => Some(format!("{key} = \"{a}\": cannot listen on {}: {e}", a.ip())),
    }
}

/// Addresses, the plaintext rule and `ip_allow`: every problem, or what to bind. `negotiate`
/// is `[auth] negotiate` (an `http` listener off loopback may then admit encrypted Negotiate).
pub fn addresses(l: &ListenerConfig, negotiate: bool) -> Result<Listeners, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut parsed = |setting: Setting, key: &str, v: &str| match parse_addr(key, v) {
        Ok(a) => {
            if let Some(msg) = a.and_then(|a| address_problem(key, a)) {
                problems.push(problem(setting, msg));
            }
            a
        }
        Err(msg) => {
            problems.push(problem(setting, msg));
            None
        }
    };
    let https = parsed(Setting::Https, "https", &l.https);
    let http = parsed(Setting::Http, "http", &l.http);
    if l.https.trim().is_empty() && l.http.trim().is_empty() {
        problems.push(problem(
            Setting::Listener,
            "both https and http are disabled (\"\"): `keyhole serve` would have nothing to listen on; enable at least one",
        ));
    }
    let http_encrypted_only = http.is_some_and(|a| !a.ip().is_loopback() && !l.allow_unencrypted);
    if let Some(a) = http {
        if http_encrypted_only && !negotiate {
            problems.push(problem(
                Setting::Http,
                format!(
                    "http = \"{a}\" is not a loopback address: plain HTTP would send passwords in clear text. \
                     Use https, bind http to 127.0.0.1, turn on [auth] negotiate (the listener then admits only \
                     encrypted Negotiate, as Windows' port 5985 does), or set allow_unencrypted = true if you really mean it"
                ),
            ));
        }
    }
    let mut ip_allow = Vec::new();
    for (i, c) in l.ip_allow.iter().enumerate() {
        match parse_ip_allow(c) {
            Ok(n) => ip_allow.push(n),
            Err(msg) => problems.push(problem(Setting::IpAllow(i), msg)),
        }
    }
    if problems.is_empty() {
        Ok(Listeners {
            https,
            http,
            http_encrypted_only,
            ip_allow,
        })
    } else {
        Err(problems)
    }
}

/// The PEM certificates in a file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = read_pem_file(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    match certs {
        Ok(c) if c.is_empty() => Err(format!("{} holds no PEM certificate", path.display())),
        Ok(c) => Ok(c),
        Err(e) => Err(format!("{} is not valid PEM: {e}", path.display())),
    }
}

/// The PEM private key in a file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = read_pem_file(path)?;
    match rustls_pemfile::private_key(&mut data.as_slice()) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(format!("{} holds no PEM private key", path.display())),
        Err(e) => Err(format!("{} is not valid PEM: {e}", path.display())),
    }
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    match super::read_regular_file(path, super::MAX_PEM_BYTES) {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(format!(
            "{} cannot be read: it does not exist",
            path.display()
        )),
        Err(e) => Err(format!("{} cannot be read: {e}", path.display())),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client-certificate verifier `client_ca` and `require_client_certificate` ask for.
pub fn client_verifier(
    l: &ListenerConfig,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, Problem> {
    if l.client_ca.is_empty() {
        if l.require_client_certificate {
            return Err(problem(
                Setting::RequireClientCertificate,
                "require_client_certificate = true needs client_ca (the PEM bundle of the CAs that issue client certificates)",
            ));
        }
        return Ok(rustls::server::WebPkiClientVerifier::no_client_auth());
    }
    let ca = Path::new(&l.client_ca);
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca).map_err(|m| problem(Setting::ClientCa, m))? {
        roots.add(c).map_err(|e| {
            problem(
                Setting::ClientCa,
                format!(
                    "{}: a certificate in it is unusable as a CA: {e}",
                    ca.display()
                ),
            )
        })?;
    }
    let b =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let b = if l.require_client_certificate {
        b
    } else {
        b.allow_unauthenticated()
    };
    b.build()
        .map_err(|e| problem(Setting::ClientCa, format!("{}: {e}", ca.display())))
}

/// How long after its full handshake a TLS session may be resumed. Enforced by keyhole (rustls
/// itself only rotates its ticket keys every 6 hours and keeps accepting the previous key):
/// a resumed connection skips the certificate checks of the handshake it resumes — the client
/// certificate's chain, expiry and `client_ca` were checked at most this long ago. Every request
/// is still authenticated (gate 2) and gate 1 still applies to every connection.
pub const TLS_RESUMPTION_MAX_AGE_SECS: u32 = 3600;

/// Stateless TLS session tickets (rustls' rotating ChaCha20-Poly1305 ticketer) that carry the
/// time they were issued and are refused once older than [`TLS_RESUMPTION_MAX_AGE_SECS`]. No
/// per-session state on the server: 10,000 clients can resume as well as one.
#[derive(Debug)]
struct AgedTickets {
    inner: Arc<dyn rustls::server::ProducesTickets>,
    max_age: u32,
}

impl AgedTickets {
    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn encrypt_at(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let mut m = Vec::with_capacity(8 + plain.len());
        m.extend_from_slice(&now.to_be_bytes());
        m.extend_from_slice(plain);
        self.inner.encrypt(&m)
    }

    fn decrypt_at(&self, cipher: &[u8], now: u64) -> Option<Vec<u8>> {
        let m = self.inner.decrypt(cipher)?;
        let (stamp, plain) = m.split_at_checked(8)?;
        let issued = u64::from_be_bytes(stamp.try_into().ok()?);
        let age = now.checked_sub(issued)?;
        (age <= u64::from(self.max_age)).then(|| plain.to_vec())
    }
}

impl rustls::server::ProducesTickets for AgedTickets {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        self.max_age
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.encrypt_at(plain, Self::now())
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.decrypt_at(cipher, Self::now())
    }
}

/// The rustls configuration `serve` accepts TLS with: TLS 1.3 and 1.2, this certificate chain
/// and key (which must match), the client-certificate verifier, HTTP/1.1, and session
/// resumption through [`AgedTickets`] only (no server-side session cache).
pub fn server_tls_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    l: &ListenerConfig,
) -> Result<rustls::ServerConfig, Problem> {
    let verifier = client_verifier(l)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| problem(Setting::TlsCertificate, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            problem(
                Setting::TlsPrivateKey,
                format!("the certificate and the private key do not match or are unusable: {e}"),
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| problem(Setting::TlsCertificate, format!("TLS session tickets: {e}")))?;
    cfg.ticketer = Arc::new(AgedTickets {
        inner: ticketer,
        max_age: TLS_RESUMPTION_MAX_AGE_SECS,
    });
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// Whether keyhole may create `p` (and the directories above it that do not exist yet): the
/// nearest existing ancestor must be a directory keyhole can write.
pub(crate) fn creatable(p: &Path) -> Result<(), String> {
    let mut cur = p.parent();
    while let Some(dir) = cur {
        if dir.as_os_str().is_empty() {
            break;
        }
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(format!("{} is not a directory", dir.display()));
            }
            Ok(_) => {
                return nix::unistd::access(
                    dir,
                    nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
                )
                .map_err(|e| format!("cannot create anything in {}: {e}", dir.display()));
            }
            Err(_) => cur = dir.parent(),
        }
    }
    Ok(())
}

/// The self-signed pair: usable when it exists, else `state_directory` must let `serve`
/// create it (a 0700 directory keyhole owns).
fn self_signed_problems(l: &ListenerConfig, state_dir: &Path) -> Vec<Problem> {
    let sd = |m: String| vec![problem(Setting::StateDirectory, m)];
    let (cert, key) = (
        state_dir.join(SELF_SIGNED_CERT),
        state_dir.join(SELF_SIGNED_KEY),
    );
    if cert.exists() && key.exists() {
        let fix = "delete both files to have a new pair generated, or configure tls_certificate and tls_private_key";
        let pair = load_certs(&cert).and_then(|c| load_key(&key).map(|k| (c, k)));
        return match pair {
            Err(m) => sd(format!(
                "the self-signed certificate pair is unusable: {m}; {fix}"
            )),
            Ok((c, k)) => match server_tls_config(c, k, l) {
                Ok(_) => Vec::new(),
                Err(p) if p.setting == Setting::TlsPrivateKey => sd(format!(
                    "the self-signed pair in {} is unusable: {}; {fix}",
                    state_dir.display(),
                    p.message
                )),
                Err(p) => vec![p],
            },
        };
    }
    match std::fs::metadata(state_dir) {
        Ok(m) if !m.is_dir() => sd(format!(
            "{} is not a directory: the self-signed TLS certificate cannot be generated there",
            state_dir.display()
        )),
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            let me = nix::unistd::geteuid();
            if !me.is_root() && m.uid() != me.as_raw() {
                return sd(format!(
                    "{} belongs to another account: keyhole cannot restrict it to 0700 to keep the self-signed TLS key there",
                    state_dir.display()
                ));
            }
            match nix::unistd::access(
                state_dir,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            ) {
                Ok(()) => Vec::new(),
                Err(e) => sd(format!(
                    "{} is not writable ({e}): the self-signed TLS certificate cannot be generated there",
                    state_dir.display()
                )),
            }
        }
        Err(_) => match creatable(state_dir) {
            Ok(()) => Vec::new(),
            Err(m) => sd(format!(
                "state_directory {} cannot be created ({m}): the self-signed TLS certificate is generated there",
                state_dir.display()
            )),
        },
    }
}

/// TLS: configured files parse and match, `client_ca` is usable, and without configured files
/// the self-signed pair is usable or can be generated (only when HTTPS is enabled).
pub fn tls_problems(l: &ListenerConfig, state_dir: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    let (cert, key) = (&l.tls_certificate, &l.tls_private_key);
    if cert.is_empty() != key.is_empty() {
        let s = if cert.is_empty() {
            Setting::TlsPrivateKey
        } else {
            Setting::TlsCertificate
        };
        out.push(problem(s, "tls_certificate and tls_private_key go together: set both, or neither (a self-signed pair is generated)"));
    }
    let certs = (!cert.is_empty()).then(|| {
        load_certs(Path::new(cert)).map_err(|m| out.push(problem(Setting::TlsCertificate, m)))
    });
    let k = (!key.is_empty()).then(|| {
        load_key(Path::new(key)).map_err(|m| out.push(problem(Setting::TlsPrivateKey, m)))
    });
    match (certs, k) {
        (Some(Ok(c)), Some(Ok(k))) => {
            if let Err(p) = server_tls_config(c, k, l) {
                out.push(p);
            }
        }
        _ => {
            if let Err(p) = client_verifier(l) {
                out.push(p);
            }
            if cert.is_empty() && key.is_empty() && !l.https.trim().is_empty() {
                out.extend(self_signed_problems(l, state_dir));
            }
        }
    }
    out
}

/// Everything `serve` checks before it binds, with the TLS paths and `state_dir` already
/// resolved: the addresses to bind, or every problem. `negotiate` is `[auth] negotiate`.
pub fn check(
    l: &ListenerConfig,
    negotiate: bool,
    state_dir: &Path,
) -> Result<Listeners, Vec<Problem>> {
    let addrs = addresses(l, negotiate);
    let mut problems = tls_problems(l, state_dir);
    match addrs {
        Ok(a) if problems.is_empty() => Ok(a),
        Ok(_) => Err(problems),
        Err(mut p) => {
            p.append(&mut problems);
            Err(p)
        }
    }
}

/// `l` with its file settings resolved by `resolve` (relative to the configuration directory).
pub fn resolved(l: &ListenerConfig, resolve: impl Fn(&str) -> PathBuf) -> ListenerConfig {
    let r = |p: &str| {
        if p.is_empty() {
            String::new()
        } else {
            resolve(p).to_string_lossy().into_owned()
        }
    };
    ListenerConfig {
        tls_certificate: r(&l.tls_certificate),
        tls_private_key: r(&l.tls_private_key),
        client_ca: r(&l.client_ca),
        ..l.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn session_tickets_expire_after_the_maximum_age() {
        use rustls::server::ProducesTickets;
        let t = AgedTickets {
            inner: rustls::crypto::ring::Ticketer::new().unwrap(),
            max_age: 3600,
        };
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 3600);
        let now = AgedTickets::now();
        let c = t.encrypt_at(b"session state", now).unwrap();
        assert_eq!(
            t.decrypt_at(&c, now + 10).as_deref(),
            Some(&b"session state"[..])
        );
        assert_eq!(
            t.decrypt_at(&c, now + 3600).as_deref(),
            Some(&b"session state"[..])
        );
        assert_eq!(
            t.decrypt_at(&c, now + 3601),
            None,
            "older than the maximum age"
        );
        assert_eq!(t.decrypt_at(&c, now - 5), None, "issued in the future");
        assert_eq!(t.decrypt(&c).as_deref(), Some(&b"session state"[..]));
        let mut forged = c.clone();
        if let Some(b) = forged.last_mut() {
            *b ^= 1;
        }
        assert_eq!(t.decrypt(&forged), None, "tickets are authenticated");
        assert_eq!(t.decrypt(b"short"), None);
    }

    fn listener(https: &str, http: &str) -> ListenerConfig {
        ListenerConfig {
            https: https.into(),
            http: http.into(),
            ..ListenerConfig::default()
        }
    }

    #[test]
    fn addresses_and_the_plaintext_rule() {
        let ok = addresses(&listener("127.0.0.1:0", "127.0.0.1:0"), false).unwrap();
        assert!(ok.https.is_some() && ok.http.is_some());
        assert!(!ok.http_encrypted_only);
        let e = addresses(&listener("", "0.0.0.0:5985"), false).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].setting, Setting::Http);
        assert!(e[0].message.contains("allow_unencrypted"), "{e:?}");
        assert!(e[0].message.contains("[auth] negotiate"), "{e:?}");
        let mut l = listener("", "0.0.0.0:5985");
        l.allow_unencrypted = true;
        let ok = addresses(&l, false).unwrap();
        assert!(!ok.http_encrypted_only);
        // Off loopback with Negotiate on: accepted, and only encrypted Negotiate gets in.
        let ok = addresses(&listener("", "0.0.0.0:5985"), true).unwrap();
        assert!(ok.http_encrypted_only);
        let ok = addresses(&l, true).unwrap();
        assert!(
            !ok.http_encrypted_only,
            "allow_unencrypted admits everything"
        );
        let ok = addresses(&listener("", "127.0.0.1:5985"), true).unwrap();
        assert!(!ok.http_encrypted_only, "loopback admits everything");
        let e = addresses(&listener("", ""), false).unwrap_err();
        assert_eq!(e[0].setting, Setting::Listener);
        let e = addresses(&listener("localhost:5986", ""), false).unwrap_err();
        assert_eq!(e[0].setting, Setting::Https);
        // TEST-NET-3: no host has it.
        let e = addresses(&listener("203.0.113.7:5986", ""), false).unwrap_err();
        assert!(e[0].message.contains("this host has no address"), "{e:?}");
        let mut l = listener("127.0.0.1:0", "");
        l.ip_allow = vec!["10.0.0.0/8".into(), "nope".into(), "::1".into()];
        let e = addresses(&l, false).unwrap_err();
        assert_eq!(e[0].setting, Setting::IpAllow(1));
    }

    #[test]
    fn tls_pairs_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        std::fs::write(dir.path().join("a.pem"), a.cert.pem()).unwrap();
        std::fs::write(dir.path().join("b.key"), b.key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("a.key"), a.key_pair.serialize_pem()).unwrap();
        let mut l = listener("127.0.0.1:0", "");
        l.tls_certificate = dir.path().join("a.pem").to_string_lossy().into_owned();
        l.tls_private_key = dir.path().join("b.key").to_string_lossy().into_owned();
        let p = tls_problems(&l, dir.path());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].setting, Setting::TlsPrivateKey);
        assert!(p[0].message.contains("do not match"), "{p:?}");
        l.tls_private_key = dir.path().join("a.key").to_string_lossy().into_owned();
        assert!(tls_problems(&l, dir.path()).is_empty());
    }

    #[test]
    fn a_broken_self_signed_pair_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let l = listener("127.0.0.1:0", "");
        assert!(tls_problems(&l, &dir.path().join("state")).is_empty());
        std::fs::write(dir.path().join(SELF_SIGNED_CERT), "junk").unwrap();
        std::fs::write(dir.path().join(SELF_SIGNED_KEY), "junk").unwrap();
        let p = tls_problems(&l, dir.path());
        assert_eq!(p[0].setting, Setting::StateDirectory, "{p:?}");
        // A file where the directory should be.
        let p = tls_problems(&l, &dir.path().join(SELF_SIGNED_CERT).join("state"));
        assert_eq!(p[0].setting, Setting::StateDirectory, "{p:?}");
        // Without HTTPS no certificate is needed.
        let l = listener("", "127.0.0.1:0");
        assert!(tls_problems(&l, dir.path()).is_empty());
    }
}
