//! The proxy's listeners: binding them (and re-binding on reload only those whose address
//! changed), accepting with a connection limit, the TLS handshake, HTTP/1.1 and HTTP/2 with
//! the listener's limits, and the drain on shutdown.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;

use super::idle::{Activity, IdleIo, InFlight};
use super::workers::Workers;
use super::{BoxError, Connection, ListenerState, ProxyBody, Snapshot};
use crate::config::ProxyConfig;
use crate::keystore::Keystore;
use crate::metrics::{HandshakeOutcome, ProxyMetrics, TlsMetrics};

/// Every connection's drain: on shutdown, each is told to finish its requests in flight and
/// close; the server waits for them up to its deadline.
#[derive(Debug, Default)]
pub struct Drain(Mutex<Option<GracefulShutdown>>);

impl Drain {
    /// A drain that has not started.
    pub fn new() -> Self {
        Self(Mutex::new(Some(GracefulShutdown::new())))
    }

    /// A watcher for a new connection; `None` once the drain has started.
    pub fn watcher(&self) -> Option<Watcher> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(GracefulShutdown::watcher)
    }

    /// Tells every connection to finish and waits up to `deadline` for them; returns whether
    /// they all did.
    pub async fn finish(&self, deadline: Duration) -> bool {
        let graceful = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(graceful) = graceful else { return true };
        tokio::time::timeout(deadline, graceful.shutdown()).await.is_ok()
    }
}

/// What every accept loop shares.
#[derive(Debug)]
struct Shared {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    keystore: Arc<Keystore>,
    metrics: ProxyMetrics,
    tls_metrics: TlsMetrics,
    drain: Arc<Drain>,
    workers: Workers,
}

/// A running listener.
#[derive(Debug)]
struct Running {
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Sockets bound for a configuration, not yet accepting.
#[derive(Debug, Default)]
pub struct Bound(Vec<(String, SocketAddr, TcpListener)>);

/// The proxy's listeners.
#[derive(Debug)]
pub struct Listeners {
    shared: Arc<Shared>,
    running: HashMap<String, Running>,
}

impl Listeners {
    /// No listener yet; connections take their snapshot from `snapshots`.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        keystore: Arc<Keystore>,
        metrics: ProxyMetrics,
        tls_metrics: TlsMetrics,
        drain: Arc<Drain>,
        workers: Workers,
    ) -> Self {
        let shared = Shared { snapshots, keystore, metrics, tls_metrics, drain, workers };
        Self { shared: Arc::new(shared), running: HashMap::new() }
    }

    /// Binds the listeners of `config` that are not running at their configured address.
    /// Nothing changes until [`Listeners::start`].
    ///
    /// # Errors
    /// When an address cannot be bound (in use, not local).
    pub async fn bind(&self, config: &ProxyConfig) -> Result<Bound, String> {
        let mut bound = Bound::default();
        for listener in &config.listeners {
            let running = self.running.get(&listener.name);
            if running.is_some_and(|r| r.configured == listener.listen) {
                continue;
            }
            let socket = TcpListener::bind(listener.listen).await.map_err(|e| {
                format!("listener {:?}: cannot listen on {}: {e}", listener.name, listener.listen)
            })?;
            bound.0.push((listener.name.clone(), listener.listen, socket));
        }
        Ok(bound)
    }

    /// Starts accepting on `bound`, and stops the listeners `config` no longer has or has
    /// moved (their open connections finish on the configuration they started with).
    pub fn start(&mut self, config: &ProxyConfig, bound: Bound) {
        let wanted: HashMap<&str, SocketAddr> =
            config.listeners.iter().map(|l| (l.name.as_str(), l.listen)).collect();
        let moved: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| wanted.get(name.as_str()) != Some(&running.configured))
            .map(|(name, _)| name.clone())
            .collect();
        for name in moved {
            if let Some(running) = self.running.remove(&name) {
                let _ = running.stop.send(true);
                tracing::info!(target: "kagi::proxy", listener = %name, address = %running.bound, "listener stopped");
            }
        }
        for (name, configured, socket) in bound.0 {
            let Ok(address) = socket.local_addr() else { continue };
            let (stop, stopped) = watch::channel(false);
            tracing::info!(target: "kagi::proxy", listener = %name, %address, "listening");
            tokio::spawn(accept_loop(socket, name.clone(), Arc::clone(&self.shared), stopped));
            self.running.insert(name, Running { configured, bound: address, stop });
        }
    }

    /// Where each listener listens.
    pub fn addresses(&self) -> BTreeMap<String, SocketAddr> {
        self.running.iter().map(|(name, running)| (name.clone(), running.bound)).collect()
    }

    /// Stops accepting everywhere (shutdown).
    pub fn stop_all(&mut self) {
        for (_, running) in self.running.drain() {
            let _ = running.stop.send(true);
        }
    }
}

/// Streams one HTTP/2 connection may have open at once (the SETTINGS value clients see; a
/// stream past it is refused with REFUSED_STREAM). hyper's default is 200; 100 is what RFC 9113
/// recommends as the least and what nginx uses.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Streams a client may open and reset before the server accepted them (CVE-2023-44487, "rapid
/// reset"): past it the connection is closed with GOAWAY ENHANCE_YOUR_CALM. h2's default.
pub(crate) const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams the server may reset because of the client's errors (malformed requests, frames
/// over limits) before it closes the connection with GOAWAY ENHANCE_YOUR_CALM.
pub(crate) const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// The HTTP/2 limits of every server connection kagi accepts (proxy listeners and the KMS
/// API), against stream floods and resets.
pub(crate) fn limit_http2(http2: &mut auto::Http2Builder<'_, TokioExecutor>) {
    http2
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
}

/// Accepts until stopped or until the configuration drops this listener.
async fn accept_loop(
    socket: TcpListener,
    name: String,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut refusing = false;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(target: "kagi::proxy", listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let snapshot = Arc::clone(&shared.snapshots.borrow());
        let Some(state) = snapshot.listener(&name).cloned() else { break };
        if open.load(Ordering::Relaxed) >= state.config.max_connections {
            shared.metrics.limit(&name, "max_connections");
            if !refusing {
                tracing::warn!(target: "kagi::proxy", listener = %name, limit = state.config.max_connections, "connection limit reached: closing new connections");
            }
            refusing = true;
            drop(stream);
            continue;
        }
        refusing = false;
        let Some(watcher) = shared.drain.watcher() else { break };
        let _ = stream.set_nodelay(true);
        // Registered again on the worker's own runtime.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(target: "kagi::proxy", listener = %name, %peer, %error, "accepted connection lost");
                continue;
            }
        };
        let guard = OpenGuard::new(&open, &shared.metrics, &name);
        let on_worker = Arc::clone(&shared);
        let name = name.clone();
        shared.workers.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    serve_connection(stream, peer, snapshot, state, &name, &on_worker, watcher)
                        .await;
                }
                Err(error) => {
                    tracing::debug!(target: "kagi::proxy", listener = %name, %peer, %error, "accepted connection lost");
                }
            }
            drop(guard);
        });
    }
}

/// Counts a connection open until dropped.
struct OpenGuard {
    open: Arc<AtomicUsize>,
    metrics: ProxyMetrics,
    listener: String,
}

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>, metrics: &ProxyMetrics, listener: &str) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics.connection(listener, 1);
        Self { open: Arc::clone(open), metrics: metrics.clone(), listener: listener.to_owned() }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connection(&self.listener, -1);
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    snapshot: Arc<Snapshot>,
    state: Arc<ListenerState>,
    name: &str,
    shared: &Shared,
    watcher: Watcher,
) {
    let config = &state.config;
    match (&state.tls, &state.resolver) {
        (Some(tls), Some(resolver)) => {
            let mut certificate = None;
            let handshake = async {
                let start =
                    LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
                let server_name = start.client_hello().server_name().map(str::to_owned);
                certificate = resolver.lookup(server_name.as_deref()).map(|e| e.name.clone());
                resolver.prepare(&shared.keystore, server_name.as_deref()).await;
                start.into_stream(Arc::clone(tls)).await
            };
            let result = tokio::time::timeout(config.header_timeout, handshake).await;
            let certificate = certificate.as_deref().unwrap_or("-");
            match result {
                Ok(Ok(stream)) => {
                    let (_, connection) = stream.get_ref();
                    let outcome = match connection.handshake_kind() {
                        Some(rustls::HandshakeKind::Resumed) => HandshakeOutcome::Resumed,
                        _ => HandshakeOutcome::Full,
                    };
                    shared.tls_metrics.handshake(name, certificate, Some(connection), outcome);
                    serve_http(stream, peer, true, snapshot, state, name, shared, watcher).await;
                }
                Ok(Err(error)) => {
                    shared.tls_metrics.handshake(
                        name,
                        certificate,
                        None,
                        HandshakeOutcome::Failure,
                    );
                    tracing::debug!(target: "kagi::proxy", listener = %name, %peer, %error, "TLS handshake failed");
                }
                Err(_) => {
                    shared.tls_metrics.handshake(
                        name,
                        certificate,
                        None,
                        HandshakeOutcome::Timeout,
                    );
                    shared.metrics.limit(name, "header_timeout");
                    tracing::info!(target: "kagi::proxy", listener = %name, %peer, "TLS handshake timed out");
                }
            }
        }
        _ => serve_http(stream, peer, false, snapshot, state, name, shared, watcher).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    snapshot: Arc<Snapshot>,
    state: Arc<ListenerState>,
    name: &str,
    shared: &Shared,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &state.config;
    let activity = Arc::new(Activity::default());
    let io = IdleIo::new(io, config.idle_timeout, Arc::clone(&activity));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    limit_http2(&mut builder.http2());
    let connection = Arc::new(Connection::new(peer, tls));
    let listener: Arc<str> = Arc::from(name);
    let requests = Arc::clone(&activity);
    let service = service_fn(move |request: http::Request<Incoming>| {
        let snapshot = Arc::clone(&snapshot);
        let listener = Arc::clone(&listener);
        let connection = Arc::clone(&connection);
        let in_flight = requests.start();
        async move {
            let response = super::handle(&snapshot, &listener, request, &connection).await;
            Ok::<_, Infallible>(response.map(|body| {
                http_body_util::combinators::UnsyncBoxBody::new(Guarded {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let result = watcher.watch(served.into_owned()).await;
    // hyper ends an idle keep-alive connection quietly even when its read failed, so the idle
    // timeout is known from the flag, not the result.
    let limit = if activity.timed_out.load(Ordering::Relaxed) {
        Some("idle_timeout")
    } else {
        match result.as_ref().err().and_then(|e| e.downcast_ref::<hyper::Error>()) {
            Some(error) if error.is_timeout() => Some("header_timeout"),
            Some(error) if error.is_parse_too_large() => Some("header_size"),
            _ => None,
        }
    };
    match (limit, result) {
        (Some(limit), _) => {
            shared.metrics.limit(name, limit);
            tracing::info!(target: "kagi::proxy", listener = %name, %peer, %limit, "connection closed by a limit");
        }
        (None, Err(error)) => {
            tracing::debug!(target: "kagi::proxy", listener = %name, %peer, %error, "connection ended");
        }
        (None, Ok(())) => {}
    }
}

/// A response body that keeps its request counted in flight until it is sent or dropped.
struct Guarded {
    inner: ProxyBody,
    _in_flight: InFlight,
}

impl Body for Guarded {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
