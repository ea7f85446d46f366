//! `kagi serve`: the KMS API on its TLS listener (HTTP/1.1 and HTTP/2, certificates from the
//! store with keys in the keystore, see `tls`), the admin listener (`/metrics`, `/healthz`,
//! `/readyz`: `admin.rs`), the background sweeper, and graceful shutdown.
//!
//! Listeners bind the configured addresses (port 0 picks a free port); once both are
//! listening, the addresses go to the ready file, so tests and supervisors never guess ports.

use std::collections::BTreeMap;
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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;

mod admin;
pub mod control;
pub mod unseal;

pub use admin::Readiness;

use crate::api::{Api, ApiError, MAX_BODY};
use crate::config::{self, Config};
use crate::envelope::{CacheLimits, CachingKeys, KeystoreKeys};
use crate::keystore::observe::{KeyObserver, Observers};
use crate::keystore::{Keystore, OpContext};
use crate::metrics::{HandshakeOutcome, Metrics};
use crate::notify::Notifier;
use crate::proxy::{Drain, Listeners, Snapshot, Workers};
use crate::tls::{SessionState, SniResolver};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The proxy's listeners, by name.
    pub listeners: BTreeMap<String, SocketAddr>,
}

/// The API listener's TLS, replaced on reload (new or renewed certificates).
#[derive(Debug)]
struct ApiTls {
    config: Arc<rustls::ServerConfig>,
    resolver: Arc<SniResolver>,
}

/// Serves until `shutdown` completes, then drains. `on_ready` runs once every listener is up
/// (to write a ready file, publish the address in the lock file), and again after each reload
/// that moves a listener. With `config_path`, SIGHUP and changes to that file reload the
/// configuration (see `Reloader::reload`).
///
/// # Errors
/// When a listener cannot bind, the TLS configuration cannot be built, or `on_ready` fails.
pub async fn serve(
    config: Config,
    config_path: Option<&Path>,
    keystore: Arc<Keystore>,
    mut on_ready: impl FnMut(&Ready) -> Result<(), ServeError>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    // The keystore reports seals, audited events and audit failures to the key metrics, and
    // state changes to the webhooks.
    let notifier = Arc::new(Notifier::new(config.webhooks.clone(), metrics.registry()));
    // Envelope routes get their data keys through a cache in front of the keystore, each route
    // acting as its own principal under the key policies; the cache drops a key's data keys
    // when the keystore records a change that revokes them.
    let keys: crate::proxy::Keys = Arc::new(CachingKeys::new(
        Arc::new(KeystoreKeys::new(Arc::clone(&keystore), "proxy")),
        CacheLimits::default(),
        Some(metrics.envelope().clone()),
    ));
    let observers: Vec<Arc<dyn KeyObserver>> =
        vec![metrics.clone(), notifier.clone(), Arc::new(keys.invalidator())];
    keystore.set_observer(Arc::new(Observers(observers)));
    notifier.start();
    metrics.watch_certificates(&config.data_dir);
    let readiness = Arc::new(Readiness::default());
    let api = Arc::new(Api::new(
        Arc::clone(&keystore),
        Arc::clone(&config.principals),
        Arc::clone(&metrics),
    ));
    let sessions = if config.store.poll_interval().is_some() {
        // Several nodes: a client resumes on whichever node the balancer picks.
        let secret = keystore
            .derive_secret(b"tls session tickets")
            .map_err(|e| ServeError(format!("cannot derive the session ticket key: {e}")))?;
        SessionState::shared(crate::tls::SharedTicketer::new(keystore.backend(), secret))
    } else {
        SessionState::new().map_err(|e| ServeError(e.to_string()))?
    };

    let (api_tls, ca_bundle) = api_tls(&config, &keystore, &sessions).await?;
    let (api_tls, api_tls_rx) = watch::channel(Arc::new(api_tls));
    let snapshot = Snapshot::build(
        &config.proxy,
        &keystore,
        &config.data_dir,
        &sessions,
        metrics.proxy(),
        metrics.envelope(),
        &keys,
    )
    .await
    .map_err(ServeError)?;
    let (snapshots, snapshots_rx) = watch::channel(Arc::new(snapshot));
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
    let drain = Arc::new(Drain::new());
    let (workers, worker_threads) = Workers::start(config.proxy.workers)
        .map_err(|e| ServeError(format!("cannot start the proxy's workers: {e}")))?;
    let mut listeners = Listeners::new(
        snapshots_rx,
        Arc::clone(&keystore),
        metrics.proxy().clone(),
        metrics.tls().clone(),
        Arc::clone(&drain),
        workers,
    );
    let bound = listeners.bind(&config.proxy).await.map_err(ServeError)?;
    listeners.start(&config.proxy, bound);
    let mut ready = Ready {
        api: api_addr,
        admin: admin.as_ref().and_then(|l| l.local_addr().ok()),
        ca_bundle,
        listeners: listeners.addresses(),
    };
    tracing::info!(target: "kagi::server", fips_mode = crate::crypto::FIPS, api = %ready.api, admin = ?ready.admin, listeners = ?ready.listeners, ca_bundle = %ready.ca_bundle.display(), "listening");
    on_ready(&ready)?;
    metrics.proxy().loaded();
    readiness.set("listeners", true);
    readiness.set("config", true);
    if let Some(listener) = admin {
        let admin = admin::Admin {
            metrics: Arc::clone(&metrics),
            keystore: Arc::clone(&keystore),
            readiness: Arc::clone(&readiness),
        };
        tokio::spawn(admin::admin_loop(listener, admin));
    }
    let shared = config.store.poll_interval();
    tokio::spawn(sweep_loop(Arc::clone(&keystore), config.sweep_interval, shared.is_some()));
    if let Some(interval) = shared {
        // Where the feed stands before this node answers anything: every change after it,
        // this node's own included, reaches the follower.
        let cursor = keystore.apply_changes(None).await.ok();
        let follower = Arc::clone(&keystore);
        tokio::spawn(async move { follower.follow_changes(interval, cursor).await });
    }
    tokio::spawn(purge_loop(Arc::clone(&keys)));
    let (stop_api, api_stopped) = watch::channel(false);
    tokio::spawn(api_loop(
        listener,
        api_tls_rx,
        Arc::clone(&keystore),
        Arc::clone(&api),
        Arc::clone(&drain),
        metrics.tls().clone(),
        api_stopped,
    ));
    let mut reloader = Reloader {
        path: config_path.map(Path::to_owned),
        current: config,
        last_text: config_path.and_then(|path| std::fs::read_to_string(path).ok()),
        keystore: Arc::clone(&keystore),
        sessions,
        metrics: Arc::clone(&metrics),
        api: Arc::clone(&api),
        api_tls,
        snapshots,
        keys,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| ServeError(format!("cannot watch SIGHUP: {e}")))?;
    let mut poll = tokio::time::interval(CONFIG_POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let forced = tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => true,
            _ = poll.tick() => false,
        };
        if !forced && !reloader.file_changed() {
            continue;
        }
        let good = reloader.reload(&mut listeners).await;
        readiness.set("config", good);
        if good {
            ready.listeners = listeners.addresses();
            if let Err(error) = on_ready(&ready) {
                tracing::warn!(target: "kagi::server", %error, "cannot publish the listeners' addresses");
            }
        }
    }
    let drain_timeout = reloader.current.proxy.drain_timeout;
    tracing::info!(target: "kagi::server", "shutting down: draining requests in flight");
    let _ = stop_api.send(true);
    listeners.stop_all();
    if !drain.finish(drain_timeout).await {
        tracing::warn!(target: "kagi::server", "drain timed out; closing the remaining connections");
    }
    worker_threads.stop();
    if shared.is_some()
        && let Err(error) = keystore.release_lease("sweeper").await
    {
        tracing::warn!(target: "kagi::sweeper", %error, "cannot release the sweeper lease; it runs out by itself");
    }
    Ok(())
}

/// How often the configuration file is checked for changes.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reloads the configuration: on SIGHUP, and when the file's content changes.
struct Reloader {
    path: Option<PathBuf>,
    current: Config,
    last_text: Option<String>,
    keystore: Arc<Keystore>,
    sessions: SessionState,
    metrics: Arc<Metrics>,
    api: Arc<Api>,
    api_tls: watch::Sender<Arc<ApiTls>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    keys: crate::proxy::Keys,
}

impl Reloader {
    /// Whether the file's content differs from what was last loaded (or tried).
    fn file_changed(&mut self) -> bool {
        let Some(path) = &self.path else { return false };
        let Ok(text) = std::fs::read_to_string(path) else { return false };
        if self.last_text.as_ref() == Some(&text) {
            return false;
        }
        true
    }

    /// Loads, checks and builds the new configuration whole, then publishes it; on any
    /// problem, logs one line and keeps the current one. Returns whether it took.
    async fn reload(&mut self, listeners: &mut Listeners) -> bool {
        let Some(path) = self.path.clone() else {
            tracing::info!(target: "kagi::server", "reload: running on the embedded default, nothing to reload");
            return true;
        };
        match self.try_reload(&path, listeners).await {
            Ok(()) => {
                self.metrics.proxy().reload(true);
                tracing::info!(target: "kagi::server", config = %path.display(), "configuration reloaded");
                true
            }
            Err(error) => {
                self.metrics.proxy().reload(false);
                tracing::error!(target: "kagi::server", %error, "configuration reload rejected; the previous configuration keeps serving");
                false
            }
        }
    }

    async fn try_reload(&mut self, path: &Path, listeners: &mut Listeners) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
        // A file that cannot be read is tried again only once it changes.
        self.last_text = text.as_ref().ok().cloned();
        let text = text?;
        let config = Config::parse(&text, &path.display().to_string(), &config::base_dir(path))
            .map_err(|e| e.to_string())?;
        let fixed = self.current.restart_only_changes(&config);
        let snapshot = Snapshot::build(
            &config.proxy,
            &self.keystore,
            &self.current.data_dir,
            &self.sessions,
            self.metrics.proxy(),
            self.metrics.envelope(),
            &self.keys,
        )
        .await?;
        let (api_tls, _) =
            api_tls(&config, &self.keystore, &self.sessions).await.map_err(|e| e.to_string())?;
        let bound = listeners.bind(&config.proxy).await?;
        // Everything is ready: publish. New connections take the new snapshot; those open
        // keep theirs until they close.
        self.snapshots.send_replace(Arc::new(snapshot));
        self.api_tls.send_replace(Arc::new(api_tls));
        self.api.set_principals(Arc::clone(&config.principals));
        // Routes' principals or keys may have changed: no data key outlives the reload.
        self.keys.invalidate_all();
        listeners.start(&config.proxy, bound);
        for setting in fixed {
            tracing::warn!(target: "kagi::server", %setting, "this setting changed but takes effect only on restart");
        }
        // Settings that need a restart keep their running values.
        let mut config = config;
        config.keep_restart_only(&self.current);
        self.current = config;
        Ok(())
    }
}

/// Accepts API connections until stopped.
async fn api_loop(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ApiTls>>,
    keystore: Arc<Keystore>,
    api: Arc<Api>,
    drain: Arc<Drain>,
    tls_metrics: crate::metrics::TlsMetrics,
    mut stopped: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that trickles its headers (slowloris) is cut off.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    crate::proxy::limit_http2(&mut builder.http2());
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
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let tls = Arc::clone(&tls.borrow());
        let keystore = Arc::clone(&keystore);
        let api = Arc::clone(&api);
        let builder = builder.clone();
        let Some(watcher) = drain.watcher() else { break };
        let tls_metrics = tls_metrics.clone();
        tokio::spawn(async move {
            let mut certificate = None;
            let result = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                handshake(stream, &tls, &keystore, &mut certificate),
            )
            .await;
            let certificate = certificate.as_deref().unwrap_or("-");
            let stream = match result {
                Ok(Ok(stream)) => {
                    let (_, connection) = stream.get_ref();
                    let outcome = match connection.handshake_kind() {
                        Some(rustls::HandshakeKind::Resumed) => HandshakeOutcome::Resumed,
                        _ => HandshakeOutcome::Full,
                    };
                    tls_metrics.handshake("api", certificate, Some(connection), outcome);
                    stream
                }
                Ok(Err(error)) => {
                    tls_metrics.handshake("api", certificate, None, HandshakeOutcome::Failure);
                    tracing::debug!(target: "kagi::server", %peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tls_metrics.handshake("api", certificate, None, HandshakeOutcome::Timeout);
                    return;
                }
            };
            let service = service_fn(move |request: http::Request<Incoming>| {
                let api = Arc::clone(&api);
                async move { Ok::<_, Infallible>(answer(&api, request, peer).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(target: "kagi::server", %peer, %error, "connection ended");
            }
        });
    }
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
/// keystore, chosen by SNI), and the PEM file clients should trust (written now).
async fn api_tls(
    config: &Config,
    keystore: &Arc<Keystore>,
    sessions: &SessionState,
) -> Result<(ApiTls, PathBuf), ServeError> {
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
        crate::tls::server_config(Arc::clone(&resolver), None, config.api.tls_profile, sessions)
            .map_err(|e| ServeError(e.to_string()))?;
    Ok((ApiTls { config: Arc::new(tls), resolver }, path))
}

/// Completes a TLS handshake: reads the ClientHello, loads the key of the certificate SNI
/// chooses into the keystore's cache (the handshake signature is synchronous), then finishes.
async fn handshake(
    stream: tokio::net::TcpStream,
    tls: &ApiTls,
    keystore: &Keystore,
    certificate: &mut Option<String>,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let server_name = start.client_hello().server_name().map(str::to_owned);
    *certificate = tls.resolver.lookup(server_name.as_deref()).map(|e| e.name.clone());
    tls.resolver.prepare(keystore, server_name.as_deref()).await;
    start.into_stream(Arc::clone(&tls.config)).await
}

/// Drops expired data keys from the cache, so plaintext keys do not outlive their age in memory
/// when no request comes to evict them.
async fn purge_loop(keys: crate::proxy::Keys) {
    let mut interval = tokio::time::interval(Duration::from_secs(10));
    loop {
        interval.tick().await;
        keys.purge_expired();
    }
}

/// Runs the sweeper every `interval`: deletions, rotations and expiries that have come due.
///
/// With a store `shared` by several nodes only the holder of the `sweeper` lease sweeps. The
/// lease outlives a few intervals, so a node that dies holding it (mid-sweep, say) hands over
/// once it runs out; every step of a sweep is a compare-and-swap on the key, so a step another
/// node already carried out is never repeated.
async fn sweep_loop(keystore: Arc<Keystore>, interval: Duration, shared: bool) {
    let lease = (interval * 3).max(Duration::from_secs(2));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if shared {
            match keystore.try_lease("sweeper", lease).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!(target: "kagi::sweeper", %error, "cannot take the sweeper lease");
                    continue;
                }
            }
        }
        let Ok(request_id) = keystore.new_uuid() else { continue };
        let ctx = OpContext { principal: "kagi".into(), source: "sweeper".into(), request_id };
        match keystore.sweep(&ctx).await {
            Ok(report) if report != crate::keystore::SweepReport::default() => {
                tracing::info!(target: "kagi::sweeper", node = keystore.node_id(), ?report, "sweep");
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
