//! `kagi serve`: the KMS API on its TLS listener (HTTP/1.1 and HTTP/2), the admin listener
//! (`/metrics`, `/healthz`, `/readyz`: `admin.rs`), the background sweeper, and graceful
//! shutdown.
//!
//! Listeners bind the configured addresses (port 0 picks a free port); once both are
//! listening, the addresses go to the ready file, so tests and supervisors never guess ports.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

mod admin;

pub use admin::Readiness;

use crate::api::{Api, ApiError, MAX_BODY};
use crate::config::Config;
use crate::keystore::observe::{KeyObserver, Observers};
use crate::keystore::{Keystore, OpContext};
use crate::metrics::Metrics;
use crate::notify::Notifier;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the sweeper runs (deletions due, rotations due, imported material expired).
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A failure to start serving.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeError(pub String);

/// Where the server listens, once it does.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ready {
    /// The KMS API (HTTPS).
    pub api: SocketAddr,
    /// The admin listener (HTTP), if configured.
    pub admin: Option<SocketAddr>,
    /// The PEM file clients trust for the API's certificate (`--ca-bundle`).
    pub ca_bundle: PathBuf,
}

/// Serves until `shutdown` completes, then drains. `on_ready` runs once every listener is up
/// (to write a ready file, publish the address in the lock file).
///
/// # Errors
/// When a listener cannot bind, the TLS configuration cannot be built, or `on_ready` fails.
pub async fn serve(
    config: &Config,
    keystore: Arc<Keystore>,
    on_ready: impl FnOnce(&Ready) -> Result<(), ServeError>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    // The keystore reports seals, audited events and audit failures to the key metrics, and
    // state changes to the webhooks.
    let notifier = Arc::new(Notifier::new(config.webhooks.clone(), metrics.registry()));
    let observers: Vec<Arc<dyn KeyObserver>> = vec![metrics.clone(), notifier.clone()];
    keystore.set_observer(Arc::new(Observers(observers)));
    notifier.start();
    let readiness = Arc::new(Readiness::default());
    let principals = Arc::clone(&config.principals);
    let api =
        Arc::new(Api::new(Arc::clone(&keystore), principals, config.quotas, Arc::clone(&metrics)));
    let (tls, ca_bundle) = tls_config(config)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(config.api.listen)
        .await
        .map_err(|e| ServeError(format!("cannot listen on {}: {e}", config.api.listen)))?;
    let api_addr = listener.local_addr().map_err(|e| ServeError(e.to_string()))?;
    let admin = match config.admin {
        Some(addr) => {
            let admin = TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError(format!("cannot listen on {addr}: {e}")))?;
            Some(admin)
        }
        None => None,
    };
    let ready =
        Ready { api: api_addr, admin: admin.as_ref().and_then(|l| l.local_addr().ok()), ca_bundle };
    tracing::info!(target: "kagi::server", api = %ready.api, admin = ?ready.admin, ca_bundle = %ready.ca_bundle.display(), "listening");
    on_ready(&ready)?;
    readiness.set("listeners", true);
    let graceful = GracefulShutdown::new();
    if let Some(listener) = admin {
        let admin = admin::Admin {
            metrics: Arc::clone(&metrics),
            keystore: Arc::clone(&keystore),
            readiness: Arc::clone(&readiness),
        };
        tokio::spawn(admin::admin_loop(listener, admin));
    }
    tokio::spawn(sweep_loop(Arc::clone(&keystore)));
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(target: "kagi::server", %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let api = Arc::clone(&api);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(target: "kagi::server", %peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |request: http::Request<Incoming>| {
                let api = Arc::clone(&api);
                async move { Ok::<_, Infallible>(answer(&api, request, peer).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(target: "kagi::server", %peer, %error, "connection ended");
            }
        });
    }
    tracing::info!(target: "kagi::server", "shutting down: draining requests in flight");
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!(target: "kagi::server", "drain timed out; closing the remaining connections");
    }
    Ok(())
}

async fn answer(
    api: &Api,
    request: http::Request<Incoming>,
    peer: SocketAddr,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(ApiError::validation(format!(
            "The request body is larger than {MAX_BODY} bytes or was cut short"
        ))),
    };
    api.handle(&parts, body, peer).await.map(Full::new)
}

/// The TLS configuration of the API listener, and the PEM file clients should trust.
fn tls_config(config: &Config) -> Result<(rustls::ServerConfig, PathBuf), ServeError> {
    let (chain, key, ca_bundle) = match &config.api.tls_files {
        Some((cert_path, key_path)) => {
            let chain = CertificateDer::pem_file_iter(cert_path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| ServeError(format!("{}: {e}", cert_path.display())))?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| ServeError(format!("{}: {e}", key_path.display())))?;
            (chain, key, cert_path.clone())
        }
        None => {
            // A certificate issued at start, until certificates live in the keystore.
            let key = rcgen::KeyPair::generate()
                .map_err(|e| ServeError(format!("cannot generate the API key: {e}")))?;
            let mut params = rcgen::CertificateParams::new(config.api.tls_names.clone())
                .map_err(|e| ServeError(format!("invalid TLS names: {e}")))?;
            params.distinguished_name.push(rcgen::DnType::CommonName, "kagi KMS API");
            let cert = params
                .self_signed(&key)
                .map_err(|e| ServeError(format!("cannot issue the API certificate: {e}")))?;
            let path = config.data_dir.join("api-ca.pem");
            write_atomically(&path, cert.pem().as_bytes())
                .map_err(|e| ServeError(format!("cannot write {}: {e}", path.display())))?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (vec![cert.der().clone()], key, path)
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServeError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ServeError(format!("the API certificate and key do not fit: {e}")))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((tls, ca_bundle))
}

/// Runs the sweeper periodically: deletions, rotations and expiries that have come due.
async fn sweep_loop(keystore: Arc<Keystore>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        let Ok(request_id) = keystore.new_uuid() else { continue };
        let ctx = OpContext { principal: "kagi".into(), source: "sweeper".into(), request_id };
        match keystore.sweep(&ctx).await {
            Ok(report) if report != crate::keystore::SweepReport::default() => {
                tracing::info!(target: "kagi::sweeper", ?report, "sweep");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(target: "kagi::sweeper", %error, "sweep failed"),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half.
///
/// # Errors
/// When the file cannot be written or renamed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
