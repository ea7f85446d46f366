//! Upstream pools: targets tried round robin, kept-alive connections, timeouts and passive
//! health.
//!
//! A target whose connection fails (refused, timed out, TLS refused) or that does not answer
//! within the response timeout is skipped for `fail_timeout`; when every target is being
//! skipped, the one whose pause ends first is tried anyway, so a pool never stays dark longer
//! than its targets do. A failure is answered at once (502, or 504 for a timeout): the body of
//! a request streams to the upstream as it arrives, so it cannot be replayed to another target.
//!
//! Each connection is driven by a task on the proxy worker that opened it, and serves only
//! that worker's requests (`super::workers`), so a request never hops between threads.
//! HTTP/1.1: idle connections are pooled per target (up to `max_idle_per_target`, all workers
//! together); a connection goes back to the pool when its response body has been read to the
//! end, and is dropped otherwise. HTTP/2: one multiplexed connection per target and worker,
//! re-opened when it closes.
//! Upgraded requests (WebSocket) get a connection of their own that is never pooled.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::BoxError;
use crate::config::{UpstreamConfig, UpstreamProtocol};

/// The Host (HTTP/1.1) or authority (HTTP/2) a request carries when the upstream should see
/// the address of the target it goes to; the pool puts that address in.
pub(super) const TARGET_HOST: &str = "kagi.target.invalid";

/// A request or response body as the proxy passes it along.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why an upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection was refused or failed (502).
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// The target.
        target: String,
        /// Why.
        message: String,
    },
    /// The connection or the response head did not come in time (504).
    #[error("{target} did not answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The target.
        target: String,
        /// The limit.
        timeout: Duration,
    },
    /// The exchange failed midway: a reset, a malformed response (502).
    #[error("{target}: {message}")]
    Protocol {
        /// The target.
        target: String,
        /// Why.
        message: String,
    },
    /// The request body failed (the client went away, or sent more than allowed).
    #[error("the request body: {0}")]
    Body(BoxError),
}

impl UpstreamError {
    /// A short, bounded name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Protocol { .. } => "protocol",
            Self::Body(_) => "request_body",
        }
    }
}

/// A pool's TLS: the client configuration and the name certificates must carry.
#[derive(Debug)]
struct PoolTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// One upstream pool.
#[derive(Debug)]
pub struct Pool {
    config: Arc<UpstreamConfig>,
    tls: Option<PoolTls>,
    targets: Vec<Arc<Target>>,
    next: AtomicUsize,
    /// The instant failure pauses count from.
    epoch: Instant,
    /// Connections opened.
    connects: prometheus::IntCounter,
    /// Times to a response head.
    answered: prometheus::Histogram,
}

/// One target of a pool.
#[derive(Debug)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// Milliseconds since the pool's epoch until which the target is skipped (0: healthy).
    down_until: AtomicU64,
    /// Idle HTTP/1.1 connections, each with the worker whose runtime drives it.
    idle: Mutex<VecDeque<(usize, http1::SendRequest<ProxyBody>)>>,
    /// Each worker's HTTP/2 connection slot (at most one per worker).
    h2: Mutex<Vec<(usize, Arc<H2Slot>)>>,
}

/// A response from a target, and the target that gave it.
#[derive(Debug)]
pub struct Answer {
    /// The response; its body gives the connection back to the pool when read to the end.
    pub response: http::Response<ProxyBody>,
    /// The target's address.
    pub target: String,
}

impl Pool {
    /// A pool for `config`; reads its CA bundle.
    ///
    /// # Errors
    /// When the CA bundle cannot be read or holds no certificate, or the server name is
    /// invalid.
    pub fn new(
        config: Arc<UpstreamConfig>,
        connects: prometheus::IntCounter,
        answered: prometheus::Histogram,
    ) -> Result<Self, String> {
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                let version = match config.protocol {
                    UpstreamProtocol::Http1 => crate::api::client::HttpVersion::Http1,
                    UpstreamProtocol::Http2 => crate::api::client::HttpVersion::Http2,
                };
                let client = crate::api::client::tls_config(&tls.ca, version)
                    .map_err(|e| format!("upstream {:?}: {e}", config.name))?;
                let server_name = tls
                    .server_name
                    .as_ref()
                    .map(|name| {
                        rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
                            format!("upstream {:?}: server_name {name:?}: {e}", config.name)
                        })
                    })
                    .transpose()?;
                Some(PoolTls { config: Arc::new(client), server_name })
            }
        };
        let targets = config
            .targets
            .iter()
            .map(|address| {
                Arc::new(Target {
                    address: address.clone(),
                    down_until: AtomicU64::new(0),
                    idle: Mutex::new(VecDeque::new()),
                    h2: Mutex::new(Vec::new()),
                })
            })
            .collect();
        Ok(Self {
            config,
            tls,
            targets,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            connects,
            answered,
        })
    }

    /// Records that a target took `seconds` to a response head.
    pub fn answered(&self, seconds: f64) {
        self.answered.observe(seconds);
    }

    /// The pool's configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The next target round robin, skipping those paused after a failure; when all are
    /// paused, the one whose pause ends first.
    pub fn pick(&self) -> Arc<Target> {
        let now = self.now_ms();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.targets.len();
        let mut soonest = &self.targets[start % count];
        for offset in 0..count {
            let target = &self.targets[(start + offset) % count];
            let until = target.down_until.load(Ordering::Relaxed);
            if until <= now {
                return Arc::clone(target);
            }
            if until < soonest.down_until.load(Ordering::Relaxed) {
                soonest = target;
            }
        }
        Arc::clone(soonest)
    }

    fn mark_failed(&self, target: &Target) {
        let until = self.now_ms().saturating_add(
            u64::try_from(self.config.fail_timeout.as_millis()).unwrap_or(u64::MAX),
        );
        target.down_until.store(until, Ordering::Relaxed);
        tracing::warn!(
            target: "kagi::proxy",
            upstream = %self.config.name,
            target_address = %target.address,
            pause_ms = self.config.fail_timeout.as_millis(),
            "upstream target failed; skipping it for a while"
        );
    }

    fn mark_healthy(&self, target: &Target) {
        if target.down_until.load(Ordering::Relaxed) != 0 {
            target.down_until.store(0, Ordering::Relaxed);
        }
    }

    /// Sends `request` (origin-form or absolute URI; the caller sets Host) to the next
    /// target, and returns the response head as soon as it arrives.
    ///
    /// # Errors
    /// [`UpstreamError`]: connect failures and timeouts pause the target.
    pub async fn send(
        self: &Arc<Self>,
        request: http::Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Answer, UpstreamError> {
        let target = self.pick();
        let timeout = self.config.response_timeout;
        let result =
            match tokio::time::timeout(timeout, self.send_to(&target, request, upgrade)).await {
                Ok(result) => result,
                Err(_) => Err(UpstreamError::Timeout { target: target.address.clone(), timeout }),
            };
        match &result {
            Ok(_) => self.mark_healthy(&target),
            Err(UpstreamError::Body(_)) => {}
            Err(_) => self.mark_failed(&target),
        }
        result.map(|response| Answer { response, target: target.address.clone() })
    }

    async fn send_to(
        self: &Arc<Self>,
        target: &Arc<Target>,
        request: http::Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<http::Response<ProxyBody>, UpstreamError> {
        let mut request = request;
        set_target_host(&mut request, &target.address);
        match self.config.protocol {
            UpstreamProtocol::Http2 if !upgrade => self.send_h2(target, request).await,
            _ => self.send_h1(target, request, upgrade).await,
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        target: &Arc<Target>,
        request: http::Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<http::Response<ProxyBody>, UpstreamError> {
        let mut pooled = if upgrade { None } else { target.take_idle() };
        // A pooled connection may have been closed by the target since: try the next.
        while let Some(mut sender) = pooled.take() {
            if sender.ready().await.is_ok() {
                pooled = Some(sender);
                break;
            }
            pooled = target.take_idle();
        }
        let mut sender = match pooled {
            Some(sender) => sender,
            None => self.connect_h1(target).await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| classify(&target.address, &error))?;
        let (parts, body) = response.into_parts();
        let give_back = (!upgrade && self.config.max_idle_per_target > 0).then(|| Pooled {
            sender,
            target: Arc::clone(target),
            worker: super::workers::current(),
            max_idle: self.config.max_idle_per_target,
        });
        Ok(http::Response::from_parts(
            parts,
            UnsyncBoxBody::new(PooledBody { inner: body, give_back }),
        ))
    }

    async fn send_h2(
        &self,
        target: &Arc<Target>,
        request: http::Request<ProxyBody>,
    ) -> Result<http::Response<ProxyBody>, UpstreamError> {
        // Only this worker's requests wait here while its connection is (re)opened: the
        // others have their own slots.
        let slot = target.h2_slot();
        let mut sender = {
            let mut connection = slot.lock().await;
            match connection.as_ref() {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let sender = self.connect_h2(target).await?;
                    *connection = Some(sender.clone());
                    sender
                }
            }
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| classify(&target.address, &error))?;
        Ok(response.map(|body| {
            UnsyncBoxBody::new(http_body_util::BodyExt::map_err(body, |e| Box::new(e) as BoxError))
        }))
    }

    /// A TCP (and TLS) connection to `target` within the connect timeout.
    async fn dial(&self, target: &Target) -> Result<Stream, UpstreamError> {
        let address = &target.address;
        let timeout = self.config.connect_timeout;
        let connect = async {
            let tcp = TcpStream::connect(address.as_str()).await.map_err(|error| {
                UpstreamError::Connect { target: address.clone(), message: error.to_string() }
            })?;
            let _ = tcp.set_nodelay(true);
            self.connects.inc();
            let Some(tls) = &self.tls else { return Ok(Stream::Plain(tcp)) };
            let server_name = match &tls.server_name {
                Some(name) => name.clone(),
                None => {
                    let host = address.rsplit_once(':').map_or(address.as_str(), |(host, _)| host);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                        UpstreamError::Connect { target: address.clone(), message: e.to_string() }
                    })?
                }
            };
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
            let stream = connector.connect(server_name, tcp).await.map_err(|error| {
                UpstreamError::Connect { target: address.clone(), message: format!("TLS: {error}") }
            })?;
            Ok(Stream::Tls(Box::new(stream)))
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout { target: address.clone(), timeout }),
        }
    }

    async fn connect_h1(
        &self,
        target: &Target,
    ) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
        let stream = self.dial(target).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| classify(&target.address, &error))?;
        let address = target.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(target: "kagi::proxy", upstream_target = %address, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(
        &self,
        target: &Target,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let stream = self.dial(target).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| classify(&target.address, &error))?;
        let address = target.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(target: "kagi::proxy", upstream_target = %address, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// A worker's HTTP/2 connection to a target; the lock makes one request open it while the
/// worker's others wait for it.
type H2Slot = tokio::sync::Mutex<Option<http2::SendRequest<ProxyBody>>>;

impl Target {
    /// The calling worker's HTTP/2 connection slot, made on first use.
    fn h2_slot(&self) -> Arc<H2Slot> {
        let here = super::workers::current();
        let mut slots = self.h2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, slot)) = slots.iter().find(|(worker, _)| *worker == here) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(H2Slot::new(None));
        slots.push((here, Arc::clone(&slot)));
        slot
    }

    /// The calling worker's most recently used idle connection that is ready for a request,
    /// else its most recently used one not known to be closed (its connection may still be
    /// finishing the last response: the caller waits on `ready()`), if any. Another worker's
    /// connection is never taken: its task runs on that worker, and each request would hop
    /// there and back; a new connection costs less than that over its life.
    fn take_idle(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let here = super::workers::current();
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|(_, sender)| !sender.is_closed());
        let ready = idle.iter().rposition(|(worker, sender)| *worker == here && sender.is_ready());
        let taken = ready.or_else(|| idle.iter().rposition(|(worker, _)| *worker == here))?;
        idle.remove(taken).map(|(_, sender)| sender)
    }
}

/// An HTTP/1.1 connection on its way back to its target's idle list.
struct Pooled {
    sender: http1::SendRequest<ProxyBody>,
    target: Arc<Target>,
    /// The worker whose runtime drives the connection.
    worker: usize,
    max_idle: usize,
}

impl Pooled {
    /// Keeps the connection for the next request of its worker. It may still be finishing the
    /// response (hyper marks it ready a moment later): the next user waits on `ready()`.
    fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.target.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() >= self.max_idle {
            // Drop the oldest: it is the likeliest to have been closed by the target.
            idle.pop_front();
        }
        idle.push_back((self.worker, self.sender));
    }
}

/// Puts `address` where the request carries [`TARGET_HOST`].
fn set_target_host(request: &mut http::Request<ProxyBody>, address: &str) {
    if request.headers().get(http::header::HOST).is_some_and(|h| h == TARGET_HOST)
        && let Ok(value) = http::HeaderValue::from_str(address)
    {
        request.headers_mut().insert(http::header::HOST, value);
    }
    if request.uri().host() == Some(TARGET_HOST) {
        let mut parts = request.uri().clone().into_parts();
        if let Ok(authority) = address.parse() {
            parts.authority = Some(authority);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
}

/// Maps a hyper client error: a request body that failed is the client's doing, anything
/// else the upstream's.
fn classify(target: &str, error: &hyper::Error) -> UpstreamError {
    use std::error::Error as _;
    if error.is_user() || error.is_body_write_aborted() {
        // The body's own error (too large, client gone) comes through as the source.
        let message = error.source().map_or_else(|| error.to_string(), ToString::to_string);
        return UpstreamError::Body(message.into());
    }
    let message = match error.source() {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    };
    UpstreamError::Protocol { target: target.to_owned(), message }
}

/// A response body that gives its HTTP/1.1 connection back to the pool once read to the end.
struct PooledBody {
    inner: Incoming,
    give_back: Option<Pooled>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(pooled) = self.give_back.take() {
            pooled.give_back();
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body that ended (an empty one is never polled) leaves a reusable connection; one
        // dropped midway does not.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            // hyper's server stops polling a body once `is_end_stream` says it ended, so the
            // last data frame may be the last poll: give the connection back then too.
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection to a target: plain TCP or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }
}
