//! `kagi serve`: the KMS API on its TLS listener (HTTP/1.1 and HTTP/2, certificates from the
//! store with keys in the keystore, see `tls`), the admin listener (`/metrics`, `/healthz`,
//! `/readyz`: `admin.rs`), the background sweeper, and graceful shutdown.
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

mod admin;

pub use admin::Readiness;

use crate::api::{Api, ApiError, MAX_BODY};
use crate::config::Config;
use crate::keystore::observe::{KeyObserver, Observers};
use crate::keystore::{Keystore, OpContext};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::tls::SniResolver;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
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
    let api = Arc::new(Api::new(Arc::clone(&keystore), principals, Arc::clone(&metrics)));
    let (tls, resolver, ca_bundle) = tls_config(config, &keystore).await?;
    let tls = Arc::new(tls);
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that trickles its headers (slowloris) is cut off.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
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
        let tls = Arc::clone(&tls);
        let resolver = Arc::clone(&resolver);
        let keystore = Arc::clone(&keystore);
        let api = Arc::clone(&api);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                handshake(stream, tls, &resolver, &keystore),
            )
            .await
            {
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
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(_)) => Err(ApiError::validation(format!(
                "The request body is larger than {MAX_BODY} bytes or was cut short"
            ))),
            Err(_) => Err(ApiError::validation(format!(
                "The request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ))),
        };
    api.handle(&parts, body, peer).await.map(Full::new)
}

/// The TLS configuration of the API listener (certificates from the store, keys in the
/// keystore, chosen by SNI), its resolver, and the PEM file clients should trust.
async fn tls_config(
    config: &Config,
    keystore: &Arc<Keystore>,
) -> Result<(rustls::ServerConfig, Arc<SniResolver>, PathBuf), ServeError> {
    let (resolver, trusted) = crate::tls::api_resolver(
        keystore,
        &config.data_dir,
        config.api.certificate.as_deref(),
        &config.api.tls_names,
    )
    .await
    .map_err(|e| ServeError(format!("the API certificate: {e}")))?;
    let path = config.data_dir.join("api-ca.pem");
    write_atomically(&path, trusted.as_bytes())
        .map_err(|e| ServeError(format!("cannot write {}: {e}", path.display())))?;
    let resolver = Arc::new(resolver);
    let tls =
        crate::tls::server_config(Arc::clone(&resolver)).map_err(|e| ServeError(e.to_string()))?;
    Ok((tls, resolver, path))
}

/// Completes a TLS handshake: reads the ClientHello, loads the key of the certificate SNI
/// chooses into the keystore's cache (the handshake signature is synchronous), then finishes.
async fn handshake(
    stream: tokio::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    resolver: &SniResolver,
    keystore: &Keystore,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let server_name = start.client_hello().server_name().map(str::to_owned);
    resolver.prepare(keystore, server_name.as_deref()).await;
    start.into_stream(tls).await
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
