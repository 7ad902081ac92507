//! TLS for the HTTPS listener: the configured certificate, or a self-signed one generated in
//! `state_directory` on first start; client-certificate verification against `client_ca`.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use super::{ServerError, ServerRuntime};

pub use crate::config::listener::{SELF_SIGNED_CERT, SELF_SIGNED_KEY};

/// `AB:CD:...` SHA-256 of a DER certificate, as administrators compare fingerprints.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the self-signed certificate in `state_directory`, if one was generated.
pub fn self_signed_fingerprint(state_directory: &Path) -> Result<Option<String>, ServerError> {
    let path = state_directory.join(SELF_SIGNED_CERT);
    if !path.exists() {
        return Ok(None);
    }
    let certs = load_certs(&path)?;
    Ok(certs.first().map(|c| certificate_fingerprint(c.as_ref())))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    crate::config::listener::load_certs(path).map_err(ServerError::Tls)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    crate::config::listener::load_key(path).map_err(ServerError::Tls)
}

/// Load the configured certificate, or the self-signed one in `state_directory` (generated on
/// first start). Returns the chain, the key and the leaf's fingerprint.
pub fn load_or_generate_certificate(
    rt: &ServerRuntime,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), ServerError> {
    let l = &rt.listener;
    if !l.tls_certificate.is_empty() || !l.tls_private_key.is_empty() {
        if l.tls_certificate.is_empty() || l.tls_private_key.is_empty() {
            return Err(ServerError::Config(
                "set both tls_certificate and tls_private_key, or neither".into(),
            ));
        }
        let certs = load_certs(Path::new(&l.tls_certificate))?;
        let key = load_key(Path::new(&l.tls_private_key))?;
        let fp = certs
            .first()
            .map(|c| certificate_fingerprint(c.as_ref()))
            .unwrap_or_default();
        return Ok((certs, key, fp));
    }
    let dir = &rt.state_directory;
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    if cert_path.exists() && key_path.exists() {
        let certs = load_certs(&cert_path)?;
        let key = load_key(&key_path)?;
        let fp = certs
            .first()
            .map(|c| certificate_fingerprint(c.as_ref()))
            .unwrap_or_default();
        tracing::info!(
            "TLS: using the self-signed certificate {} (SHA-256 {fp})",
            cert_path.display()
        );
        return Ok((certs, key, fp));
    }
    generate_self_signed(rt, &cert_path, &key_path)
}

fn generate_self_signed(
    rt: &ServerRuntime,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), ServerError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let dir = &rt.state_directory;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ServerError::File {
            what: "creating state_directory",
            path: dir.clone(),
            source,
        })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        ServerError::File {
            what: "restricting state_directory to 0700",
            path: dir.clone(),
            source,
        }
    })?;
    let mut sans: Vec<String> = Vec::new();
    for n in std::iter::once(&rt.computer_name)
        .chain(rt.computer_aliases.iter())
        .map(String::as_str)
        .chain(["localhost", "127.0.0.1"])
    {
        if !n.is_empty() && !sans.iter().any(|s| s.eq_ignore_ascii_case(n)) {
            sans.push(n.to_string());
        }
    }
    let ck = rcgen::generate_simple_self_signed(sans.clone())
        .map_err(|e| ServerError::Tls(format!("generating a self-signed certificate: {e}")))?;
    let key_pem = ck.key_pair.serialize_pem();
    let cert_pem = ck.cert.pem();
    let write =
        |path: &Path, mode: u32, data: &str, what: &'static str| -> Result<(), ServerError> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(path)
                .map_err(|source| ServerError::File {
                    what,
                    path: path.to_path_buf(),
                    source,
                })?;
            f.write_all(data.as_bytes())
                .map_err(|source| ServerError::File {
                    what,
                    path: path.to_path_buf(),
                    source,
                })?;
            f.sync_all().map_err(|source| ServerError::File {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
    write(key_path, 0o600, &key_pem, "writing the TLS private key")?;
    write(cert_path, 0o644, &cert_pem, "writing the TLS certificate")?;
    let fp = certificate_fingerprint(ck.cert.der().as_ref());
    let msg = format!(
        "TLS: generated a self-signed certificate {} for {} (SHA-256 fingerprint {fp}); clients must trust it or skip CA checks",
        cert_path.display(),
        sans.join(", ")
    );
    println!("{msg}");
    tracing::warn!("{msg}");
    let certs = vec![ck.cert.der().clone()];
    let key = load_key(key_path)?;
    Ok((certs, key, fp))
}

/// The acceptor, the leaf certificate's fingerprint and its DER (for channel bindings).
pub(super) fn tls_acceptor(
    rt: &ServerRuntime,
) -> Result<(TlsAcceptor, String, Vec<u8>), ServerError> {
    let (certs, key, fp) = load_or_generate_certificate(rt)?;
    let leaf = certs
        .first()
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    // The same rustls configuration `keyhole check` builds (config::listener).
    let cfg = crate::config::listener::server_tls_config(certs, key, &rt.listener)
        .map_err(|p| ServerError::Tls(p.message))?;
    Ok((TlsAcceptor::from(Arc::new(cfg)), fp, leaf))
}
