//! The in-run baseline: a minimal hyper + rustls HTTPS server that answers every POST with a
//! small fixed SOAP body. Same TLS settings as keyhole's listener (rustls with ring, TLS 1.3
//! negotiated, an ECDSA P-256 self-signed certificate from rcgen, ALPN http/1.1, TCP_NODELAY,
//! HTTP/1.1 keep-alive), on its own tokio runtime with as many workers as keyhole's (one per
//! core), so that it competes with the client for the CPU the way keyhole does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::net::Res;

/// The answer, shaped like keyhole's IdentifyResponse (456 bytes; keyhole's, with its
/// addressing headers, is 1,031: both fit one TLS record).
pub const BODY: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><wsmid:IdentifyResponse><wsmid:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd</wsmid:ProtocolVersion><wsmid:ProductVendor>Baseline</wsmid:ProductVendor><wsmid:ProductVersion>OS: Linux SP: 0.0 Stack: 3.0 baseline</wsmid:ProductVersion></wsmid:IdentifyResponse></s:Body></s:Envelope>";

/// A running baseline server; stops when dropped.
pub struct Baseline {
    pub addr: SocketAddr,
    pub cert: CertificateDer<'static>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Baseline {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub fn start() -> Res<Baseline> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| format!("baseline certificate: {e}"))?;
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("baseline")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let lis = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("baseline bind: {e}"))?;
    let addr = lis.local_addr().map_err(|e| e.to_string())?;
    runtime.spawn(async move {
        loop {
            let Ok((tcp, _)) = lis.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    // Read the request body as a server must before answering.
                    let _ = req.into_body().collect().await;
                    let mut r =
                        hyper::Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "application/soap+xml;charset=UTF-8",
                        ),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(Baseline {
        addr,
        cert,
        runtime: Some(runtime),
    })
}
