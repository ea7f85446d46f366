//! The reverse proxy: listeners, routing, upstream pools, header hygiene, limits and the
//! access log.
//!
//! A [`Snapshot`] is one configuration made ready to serve: the listeners' TLS configurations
//! (certificates loaded from the store, each checked against its keystore key), a pool per
//! upstream, the routes in file order. The server publishes a new snapshot on each good
//! reload; a connection takes the snapshot current when it is accepted and keeps it until it
//! closes, so a request never sees half of one configuration and half of another.
//!
//! A request goes: route (listener, host, path prefix; first match in file order) → limits
//! (body size) → header hygiene (hop-by-hop fields out, `X-Forwarded-*` in, Host as the route
//! says) → the pool (round robin over healthy targets) → the response, streamed back with its
//! hop-by-hop fields removed → one access log line when it ends. A WebSocket upgrade the
//! upstream accepts (101) becomes a byte tunnel between the two connections.
//!
//! Errors answer as JSON `{"error": KIND, "message": …}`: 404 no route, 413 body too large,
//! 502 upstream refused or broke, 504 upstream too slow.

mod access;
mod body;
mod envelope;
mod headers;
mod idle;
mod listener;
mod upstream;
mod workers;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;

pub use access::{AccessLog, Entry};
pub use envelope::Keys;
pub(crate) use listener::limit_http2;
pub use listener::{Bound, Drain, Listeners};
pub use upstream::{Pool, ProxyBody, UpstreamError};
pub use workers::{WorkerThreads, Workers};

use crate::config::{HostHeader, ListenerConfig, ProxyConfig, RouteConfig, UpstreamProtocol};
use crate::envelope::EncryptRequest;
use crate::keystore::Keystore;
use crate::metrics::ProxyMetrics;
use crate::metrics::envelope::{BodyCounters, Direction, EnvelopeMetrics, FailureReason};
use crate::metrics::proxy::RequestCounters;
use crate::tls::{CertStore, SessionState, SniResolver, TlsError};

/// `Content-MD5`: a digest of the body.
const CONTENT_MD5: header::HeaderName = header::HeaderName::from_static("content-md5");
/// `Digest` (RFC 3230): a digest of the body.
const DIGEST: header::HeaderName = header::HeaderName::from_static("digest");

/// Any error a body may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One configuration, ready to serve.
#[derive(Debug)]
pub struct Snapshot {
    config: ProxyConfig,
    listeners: HashMap<String, Arc<ListenerState>>,
    pools: HashMap<String, Arc<Pool>>,
    access_log: Arc<AccessLog>,
    metrics: ProxyMetrics,
    /// Data keys for envelope routes (through the data-key cache).
    keys: Keys,
    envelope_metrics: EnvelopeMetrics,
    /// What each envelope route resolved when the snapshot was built, by route name.
    envelope_routes: HashMap<String, EnvelopeRoute>,
    /// The request counters by listener, then route name ("": no route matched).
    requests: HashMap<String, HashMap<String, RequestCounters>>,
}

/// What a snapshot resolves once for an envelope route.
#[derive(Debug)]
struct EnvelopeRoute {
    /// The ARN of the route's key.
    key_arn: String,
    /// Its body counters by direction (decrypt, encrypt), looked up on first use: a series
    /// appears with its first body.
    counters: [OnceLock<BodyCounters>; 2],
    /// The route's data-key request when its encryption context is the same for every request
    /// (made of values and the route's name only), its cache entry named once.
    fixed: Option<EncryptRequest>,
}

/// A listener's part of a snapshot.
#[derive(Debug)]
pub struct ListenerState {
    /// Its configuration.
    pub config: Arc<ListenerConfig>,
    /// Its TLS configuration; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificates it serves, for the handshake to load the chosen key first.
    pub resolver: Option<Arc<SniResolver>>,
}

impl Snapshot {
    /// Makes `config` ready: loads every listener's certificates (each checked against its
    /// keystore key), reads upstream CA bundles and client CA bundles, opens the access log.
    ///
    /// # Errors
    /// The first problem found, naming the listener, certificate or upstream.
    pub async fn build(
        config: &ProxyConfig,
        keystore: &Arc<Keystore>,
        data_dir: &Path,
        sessions: &SessionState,
        metrics: &ProxyMetrics,
        envelope_metrics: &EnvelopeMetrics,
        keys: &Keys,
    ) -> Result<Self, String> {
        let store = CertStore::new(data_dir);
        // Each certificate read and checked once, however many listeners serve it.
        let mut loaded: HashMap<String, (Arc<crate::tls::CertEntry>, Vec<String>)> = HashMap::new();
        let mut listeners = HashMap::new();
        for listener in &config.listeners {
            let (tls, resolver) = match &listener.tls {
                None => (None, None),
                Some(tls) => {
                    let mut resolver = SniResolver::new();
                    for (index, name) in tls.certificates.iter().enumerate() {
                        let (entry, names) = match loaded.get(name) {
                            Some(loaded) => loaded.clone(),
                            None => {
                                let certificate = load_certificate(keystore, &store, name)
                                    .await
                                    .map_err(|e| format!("listener {:?}: {e}", listener.name))?;
                                loaded.insert(name.clone(), certificate.clone());
                                certificate
                            }
                        };
                        resolver.add(&entry, &names);
                        if index == 0 {
                            resolver.set_default(entry);
                        }
                    }
                    let resolver = Arc::new(resolver);
                    let server = crate::tls::server_config(
                        Arc::clone(&resolver),
                        tls.client_ca.as_deref(),
                        tls.profile,
                        sessions,
                    )
                    .map_err(|e| format!("listener {:?}: client_ca: {e}", listener.name))?;
                    (Some(Arc::new(server)), Some(resolver))
                }
            };
            let state = ListenerState { config: Arc::clone(listener), tls, resolver };
            listeners.insert(listener.name.clone(), Arc::new(state));
        }
        let mut pools = HashMap::new();
        for upstream in &config.upstreams {
            let connects = metrics.upstream_connections(&upstream.name);
            let answered = metrics.upstream_duration(&upstream.name);
            pools.insert(
                upstream.name.clone(),
                Arc::new(Pool::new(Arc::clone(upstream), connects, answered)?),
            );
        }
        // Every envelope route's key must exist; messages name it by ARN.
        let mut envelope_routes = HashMap::new();
        for route in &config.routes {
            let Some(envelope) = &route.envelope else { continue };
            let arn = crate::envelope::KeyService::key_arn(
                keys.as_ref(),
                &envelope.principal,
                &envelope.key,
            )
            .await
            .map_err(|e| format!("route {:?}: key {:?}: {e}", route.name, envelope.key))?;
            let fixed = envelope
                .context
                .iter()
                .all(|(_, source)| {
                    matches!(
                        source,
                        crate::config::ContextSource::Value(_)
                            | crate::config::ContextSource::Route
                    )
                })
                .then(|| envelope::request_context(route, envelope, &http::HeaderMap::new(), ""))
                .and_then(Result::ok)
                .map(|context| EncryptRequest::new(&envelope.principal, &envelope.key, context));
            let counters = [OnceLock::new(), OnceLock::new()];
            envelope_routes
                .insert(route.name.clone(), EnvelopeRoute { key_arn: arn, counters, fixed });
        }
        let access_log =
            Arc::new(AccessLog::open(&config.access_log, metrics.access_log_dropped())?);
        let requests = config
            .listeners
            .iter()
            .map(|listener| {
                let name = &listener.name;
                let routes = config
                    .routes
                    .iter()
                    .filter(|route| route.listeners.is_empty() || route.listeners.contains(name))
                    .map(|route| route.name.as_str())
                    .chain([""])
                    .map(|route| (route.to_owned(), metrics.request_counters(name, route)))
                    .collect();
                (name.clone(), routes)
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            listeners,
            pools,
            access_log,
            metrics: metrics.clone(),
            keys: Arc::clone(keys),
            envelope_metrics: envelope_metrics.clone(),
            envelope_routes,
            requests,
        })
    }

    /// Counts a request on `listener` answered with `status`; `route` is empty when none
    /// matched.
    fn count_request(&self, listener: &str, route: &str, method: &Method, status: u16) {
        match self.requests.get(listener).and_then(|routes| routes.get(route)) {
            Some(counters) => counters.count(method, status),
            // Every listener and route of the configuration has its counters.
            None => self.metrics.request_counters(listener, route).count(method, status),
        }
    }

    /// A callback counting a body of `route` in `direction` once it ends.
    fn count_body(&self, route: &RouteConfig, direction: Direction) -> envelope::OnEnd {
        let counters = |key_arn: Option<&str>| {
            let key_id = key_arn.and_then(crate::metrics::keys::key_id_of_arn).unwrap_or("-");
            self.envelope_metrics.body_counters(&route.name, key_id, direction)
        };
        let counters = match self.envelope_routes.get(&route.name) {
            Some(resolved) => resolved.counters[usize::from(direction == Direction::Encrypt)]
                .get_or_init(|| counters(Some(&resolved.key_arn)))
                .clone(),
            None => counters(None),
        };
        Box::new(move |bytes| counters.count(bytes))
    }

    /// The configuration this snapshot serves.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// A listener's state, if the configuration still has it.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerState>> {
        self.listeners.get(name)
    }

    /// The first route matching a request on `listener` for `host` (lowercase, no port) and
    /// `path`.
    pub fn route(&self, listener: &str, host: &str, path: &str) -> Option<&Arc<RouteConfig>> {
        self.config.routes.iter().find(|route| {
            (route.listeners.is_empty() || route.listeners.iter().any(|l| l == listener))
                && route.host.matches(host)
                && path.starts_with(&route.path_prefix)
        })
    }
}

/// Loads a certificate of the store with its keystore-backed key, and the names it covers.
async fn load_certificate(
    keystore: &Arc<Keystore>,
    store: &CertStore,
    name: &str,
) -> Result<(Arc<crate::tls::CertEntry>, Vec<String>), TlsError> {
    let stored = store.load(name)?;
    let names = stored.meta.dns_names.clone();
    Ok((Arc::new(crate::tls::load_entry(keystore, stored).await?), names))
}

/// What the proxy knows of the connection a request came on.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the client spoke TLS.
    pub tls: bool,
    /// The client's IP address as `X-Forwarded-For` names it, formatted once per connection.
    client: HeaderValue,
}

impl Connection {
    /// A connection from `peer`, over TLS or not.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Self { peer, tls, client: headers::client_address(peer.ip()) }
    }
}

/// Answers one request on `listener` with `snapshot`.
pub async fn handle(
    snapshot: &Arc<Snapshot>,
    listener: &str,
    mut request: Request<Incoming>,
    connection: &Connection,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let host = request_host(&request);
    let mut entry = Entry {
        time: access::Timestamp::now(),
        listener: listener.to_owned(),
        route: None,
        upstream: None,
        target: None,
        client: connection.peer,
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
        protocol: protocol_name(request.version()),
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0.0,
        upstream_ms: None,
        error: None,
    };
    let Some(route) = snapshot.route(listener, host.as_deref().unwrap_or(""), &entry.path).cloned()
    else {
        let message =
            format!("no route for host {:?} and path {:?}", host.unwrap_or_default(), entry.path);
        return finish_error(snapshot, entry, started, StatusCode::NOT_FOUND, "no_route", message);
    };
    entry.route = Some(route.name.clone());
    entry.upstream = Some(route.upstream.clone());
    let Some(pool) = snapshot.pools.get(&route.upstream).cloned() else {
        // The configuration checks every route's upstream exists: this is unreachable.
        let message = format!("upstream {:?} is not configured", route.upstream);
        return finish_error(
            snapshot,
            entry,
            started,
            StatusCode::BAD_GATEWAY,
            "no_upstream",
            message,
        );
    };
    // A declared length over the limit is refused before anything is sent.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > route.max_body_bytes) {
        snapshot.metrics.limit(listener, "body_size");
        let message = format!("the request body is larger than {} bytes", route.max_body_bytes);
        return finish_error(
            snapshot,
            entry,
            started,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            message,
        );
    }
    let upgrade = (request.version() == Version::HTTP_11)
        .then(|| headers::websocket_upgrade(request.headers()))
        .flatten();
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let tally = Arc::new(body::Tally::default());
    let (mut parts, incoming) = request.into_parts();
    let mut outbound_body: ProxyBody =
        UnsyncBoxBody::new(body::Limited::new(incoming, route.max_body_bytes, Arc::clone(&tally)));
    // Envelope routes: the context of this request, the request body encrypted, and what to
    // do with the response.
    let mut decrypting = None;
    if let Some(config) = &route.envelope {
        let prepared = prepare_envelope(snapshot, &route, config, &mut parts, outbound_body).await;
        match prepared {
            Ok((body, plan)) => {
                outbound_body = body;
                decrypting = plan;
            }
            Err((refusal, reason)) => {
                return refuse_envelope(snapshot, &route, entry, started, refusal, reason);
            }
        }
    }
    let outbound = match upstream_request(
        parts,
        outbound_body,
        &route,
        pool.config(),
        connection,
        host.as_deref(),
        upgrade.as_ref(),
    ) {
        Ok(outbound) => outbound,
        Err(message) => {
            return finish_error(
                snapshot,
                entry,
                started,
                StatusCode::BAD_REQUEST,
                "bad_request",
                message,
            );
        }
    };
    let sent = Instant::now();
    let answer = pool.send(outbound, upgrade.is_some()).await;
    entry.bytes_in = tally.bytes.load(std::sync::atomic::Ordering::Relaxed);
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let (status, kind) = match &error {
                UpstreamError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
                UpstreamError::Body(_)
                    if tally.exceeded.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    snapshot.metrics.limit(listener, "body_size");
                    (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
                }
                UpstreamError::Body(_) => (StatusCode::BAD_REQUEST, "request_body"),
                UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => {
                    (StatusCode::BAD_GATEWAY, "bad_gateway")
                }
            };
            snapshot.metrics.upstream_error(&route.upstream, error.kind());
            tracing::warn!(
                target: "kagi::proxy",
                route = %route.name,
                upstream = %route.upstream,
                client = %connection.peer,
                %error,
                "no answer from the upstream"
            );
            let message = match &error {
                UpstreamError::Body(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                    format!("the request body is larger than {} bytes", route.max_body_bytes)
                }
                // Upstream addresses are the operator's business, not the client's.
                UpstreamError::Timeout { .. } => "the upstream did not answer in time".to_owned(),
                UpstreamError::Body(_) => "the request body was cut short".to_owned(),
                _ => "the upstream could not be reached".to_owned(),
            };
            entry.error = Some(error.to_string());
            return finish_error(snapshot, entry, started, status, kind, message);
        }
    };
    let waited = sent.elapsed().as_secs_f64();
    pool.answered(waited);
    entry.upstream_ms = Some(waited * 1000.0);
    entry.target = Some(answer.target);
    let mut response = answer.response;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let response_upgrade = if switching { upgrade.clone() } else { None };
    headers::strip_hop_by_hop(response.headers_mut(), response_upgrade.as_ref());
    if let (true, Some(client_upgrade)) = (switching && upgrade.is_some(), client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let route_name = route.name.clone();
        tokio::spawn(async move {
            tunnel(client_upgrade, upstream_upgrade, &route_name).await;
        });
    }
    if let Some(plan) = decrypting {
        match open_envelope(snapshot, &route, plan, response).await {
            Ok(decrypted) => response = decrypted,
            Err((refusal, reason)) => {
                tracing::warn!(
                    target: "kagi::proxy",
                    route = %route.name,
                    client = %connection.peer,
                    reason = reason.map_or("-", FailureReason::label),
                    "an encrypted response was not released"
                );
                return refuse_envelope(snapshot, &route, entry, started, refusal, reason);
            }
        }
    }
    let status = response.status();
    *response.version_mut() = Version::HTTP_11;
    let snapshot_for_log = Arc::clone(snapshot);
    response.map(move |inner| {
        UnsyncBoxBody::new(body::Observed::new(inner, move |bytes_out, error: Option<&str>| {
            entry.status = status.as_u16();
            entry.bytes_out = bytes_out;
            entry.bytes_in = tally.bytes.load(std::sync::atomic::Ordering::Relaxed);
            entry.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            entry.error = error.map(str::to_owned);
            snapshot_for_log.count_request(
                &entry.listener,
                route_label(&entry),
                &entry.method,
                entry.status,
            );
            snapshot_for_log.access_log.log(&entry);
        }))
    })
}

/// How a response on an envelope route is to be decrypted.
struct DecryptPlan {
    options: crate::envelope::DecryptOptions,
    /// The client asked HEAD (the upstream was asked GET).
    head: bool,
    /// The client's Range, to cut from the decrypted stream.
    range: Option<HeaderValue>,
}

/// The request side of an envelope route: checks, the context, the body encrypted when the
/// route encrypts this request, and the plan for its response.
async fn prepare_envelope(
    snapshot: &Snapshot,
    route: &RouteConfig,
    config: &crate::config::EnvelopeConfig,
    parts: &mut http::request::Parts,
    body: ProxyBody,
) -> Result<(ProxyBody, Option<DecryptPlan>), (envelope::Refusal, Option<FailureReason>)> {
    let state = snapshot.envelope_routes.get(&route.name);
    let fixed = state.and_then(|r| r.fixed.as_ref());
    let context = match fixed {
        Some(request) => Cow::Borrowed(request.context()),
        None => Cow::Owned(
            envelope::request_context(route, config, &parts.headers, parts.uri.path())
                .map_err(|refusal| (refusal, Some(FailureReason::MissingContext)))?,
        ),
    };
    let keys = snapshot.keys.as_ref();
    let mut body = body;
    if envelope::encrypts(config, &parts.method, &parts.headers) {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if config.json_fields.is_empty() {
            let on_end = snapshot.count_body(route, Direction::Encrypt);
            let (encrypted, length) =
                envelope::encrypt_body(keys, config, fixed, &context, body, declared, on_end)
                    .await?;
            body = encrypted;
            set_length(&mut parts.headers, length);
        } else {
            let document = envelope::encrypt_json(keys, config, &context, body).await?;
            snapshot.count_body(route, Direction::Encrypt)(document.len() as u64);
            set_length(&mut parts.headers, Some(document.len() as u64));
            body = full_body(document);
        }
        // The upstream's digests would be of plaintext it never sees.
        parts.headers.remove(CONTENT_MD5);
        parts.headers.remove(DIGEST);
    }
    if !config.decrypt_responses {
        return Ok((body, None));
    }
    let whole = config.json_fields.is_empty();
    let head = parts.method == Method::HEAD;
    let fetches = parts.method == Method::GET || head;
    let mut range = None;
    if whole && fetches {
        if let Some(value) = parts.headers.remove(header::RANGE) {
            if !config.decrypt_ranges {
                return Err((
                    envelope::Refusal {
                        status: StatusCode::RANGE_NOT_SATISFIABLE,
                        kind: "range_refused",
                        message: "this route does not serve ranges of encrypted objects".into(),
                    },
                    None,
                ));
            }
            range = Some(value);
        }
        // Conditions on validators the client never saw (they are the ciphertext's).
        for name in [header::IF_MATCH, header::IF_NONE_MATCH, header::IF_RANGE] {
            parts.headers.remove(name);
        }
        if head {
            parts.method = Method::GET;
        }
    }
    if whole && !fetches {
        return Ok((body, None));
    }
    let Some(key_arn) = state.map(|r| r.key_arn.clone()) else {
        return Ok((body, None));
    };
    let options = crate::envelope::DecryptOptions { key_arn, context: context.into_owned() };
    Ok((body, Some(DecryptPlan { options, head, range })))
}

/// The response side of an envelope route.
async fn open_envelope(
    snapshot: &Snapshot,
    route: &RouteConfig,
    plan: DecryptPlan,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, (envelope::Refusal, Option<FailureReason>)> {
    let Some(config) = &route.envelope else { return Ok(response) };
    if !response.status().is_success() || response.status() == StatusCode::NO_CONTENT {
        return Ok(response);
    }
    let keys = snapshot.keys.as_ref();
    let (mut parts, body) = response.into_parts();
    if !config.json_fields.is_empty() {
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        if !is_json {
            return Ok(Response::from_parts(parts, body));
        }
        let document = envelope::decrypt_json(keys, config, &plan.options, body).await?;
        snapshot.count_body(route, Direction::Decrypt)(document.len() as u64);
        set_length(&mut parts.headers, Some(document.len() as u64));
        parts.headers.remove(header::ETAG);
        return Ok(Response::from_parts(parts, full_body(document)));
    }
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let on_end = snapshot.count_body(route, Direction::Decrypt);
    let opened = envelope::open_response(keys, config, plan.options, body, length, on_end).await?;
    let (body, plaintext_length) = match opened {
        envelope::Opened::Plaintext(body) => return Ok(Response::from_parts(parts, body)),
        envelope::Opened::Whole(bytes) => {
            let length = bytes.len() as u64;
            (full_body(bytes), Some(length))
        }
        envelope::Opened::Streaming(body, length) => (body, length),
    };

    for name in [header::ETAG, CONTENT_MD5, DIGEST] {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::ACCEPT_RANGES);
    let mut body = body;
    if let Some(range) = plan.range {
        let Some((start, count)) = envelope::parse_range(&range, plaintext_length)
            .filter(|(start, _)| plaintext_length.is_none_or(|total| *start < total))
        else {
            return Err((
                envelope::Refusal {
                    status: StatusCode::RANGE_NOT_SATISFIABLE,
                    kind: "range_not_satisfiable",
                    message: "the range is not within the object".into(),
                },
                None,
            ));
        };
        let count = match (count, plaintext_length) {
            (Some(count), Some(total)) => Some(count.min(total - start)),
            (count, _) => count,
        };
        let end = match (count, plaintext_length) {
            (Some(count), _) => (start + count).saturating_sub(1).to_string(),
            (None, Some(total)) => (total - 1).to_string(),
            (None, None) => String::new(),
        };
        let total = plaintext_length.map_or_else(|| "*".to_owned(), |t| t.to_string());
        let content_range = if end.is_empty() {
            // The end is unknown until the stream ends: say what is known.
            format!("bytes {start}-*/{total}")
        } else {
            format!("bytes {start}-{end}/{total}")
        };
        if let Ok(value) = HeaderValue::from_str(&content_range) {
            parts.headers.insert(header::CONTENT_RANGE, value);
        }
        parts.status = StatusCode::PARTIAL_CONTENT;
        set_length(&mut parts.headers, count);
        body = UnsyncBoxBody::new(envelope::RangeBody { inner: body, skip: start, take: count });
    } else {
        set_length(&mut parts.headers, plaintext_length);
    }
    if plan.head {
        body = full_body(Bytes::new());
    }
    Ok(Response::from_parts(parts, body))
}

/// An envelope refusal: counted by reason, logged in the access log, answered as JSON.
fn refuse_envelope(
    snapshot: &Snapshot,
    route: &RouteConfig,
    mut entry: Entry,
    started: Instant,
    refusal: envelope::Refusal,
    reason: Option<FailureReason>,
) -> Response<ProxyBody> {
    if let Some(reason) = reason {
        snapshot.envelope_metrics.failure(&route.name, reason);
    }
    let label = reason.map_or("-", FailureReason::label);
    entry.error = Some(format!("{label}: {}", refusal.message));
    finish_error(snapshot, entry, started, refusal.status, refusal.kind, refusal.message)
}

/// Sets Content-Length, or removes it when the length is not known (chunked).
fn set_length(headers: &mut http::HeaderMap, length: Option<u64>) {
    match length {
        Some(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
}

fn full_body(bytes: Bytes) -> ProxyBody {
    UnsyncBoxBody::new(Full::new(bytes).map_err(|never| match never {}))
}

fn route_label(entry: &Entry) -> &str {
    entry.route.as_deref().unwrap_or("")
}

/// Builds the request kagi sends upstream.
fn upstream_request(
    mut parts: http::request::Parts,
    body: ProxyBody,
    route: &RouteConfig,
    upstream: &crate::config::UpstreamConfig,
    connection: &Connection,
    host: Option<&str>,
    upgrade: Option<&HeaderValue>,
) -> Result<Request<ProxyBody>, String> {
    // The Host the client sent (its `:authority` in HTTP/2), kept as the value it came as.
    let client_host = parts
        .headers
        .get(header::HOST)
        .filter(|v| v.to_str().is_ok())
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let forwarded_host =
        client_host.clone().or_else(|| host.and_then(|h| HeaderValue::from_str(h).ok()));
    headers::set_forwarded(&mut parts.headers, &connection.client, connection.tls, forwarded_host);
    // The Host the upstream sees; for the target's own address, a placeholder the pool
    // replaces once it picks a target.
    let authority = match &route.host_header {
        HostHeader::Client => client_host,
        HostHeader::Fixed(name) => {
            Some(HeaderValue::from_str(name).map_err(|_| format!("invalid host {name:?}"))?)
        }
        HostHeader::Upstream => None,
    }
    .unwrap_or(HeaderValue::from_static(upstream::TARGET_HOST));
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match upstream.protocol {
        UpstreamProtocol::Http2 if upgrade.is_none() => {
            let scheme = if upstream.tls.is_some() { "https" } else { "http" };
            let authority = authority.to_str().unwrap_or_default();
            parts.uri = Uri::builder()
                .scheme(scheme)
                .authority(authority)
                .path_and_query(path_and_query)
                .build()
                .map_err(|e| format!("cannot forward to {authority:?}: {e}"))?;
            parts.headers.remove(header::HOST);
            parts.version = Version::HTTP_2;
        }
        _ => {
            let mut uri = http::uri::Parts::default();
            uri.path_and_query = Some(path_and_query);
            parts.uri = Uri::from_parts(uri).map_err(|e| format!("invalid path: {e}"))?;
            parts.headers.insert(header::HOST, authority);
            parts.version = Version::HTTP_11;
        }
    }
    Ok(Request::from_parts(parts, body))
}

/// Copies bytes both ways between an upgraded client connection and an upgraded upstream
/// connection, until either side closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: &str,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(target: "kagi::proxy", %route, %error, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(target: "kagi::proxy", %route, %error, "tunnel ended");
    }
}

/// The host a request is for: the URI's authority (HTTP/2) or its Host header, lowercase,
/// without port or trailing dot.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.host().to_owned(),
        None => {
            let host = request.headers().get(header::HOST)?.to_str().ok()?;
            host.parse::<http::uri::Authority>().ok()?.host().to_owned()
        }
    };
    Some(authority.trim_end_matches('.').to_ascii_lowercase())
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// A JSON error response, counted and logged.
fn finish_error(
    snapshot: &Snapshot,
    mut entry: Entry,
    started: Instant,
    status: StatusCode,
    kind: &str,
    message: String,
) -> Response<ProxyBody> {
    entry.status = status.as_u16();
    entry.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    if entry.error.is_none() {
        entry.error = Some(message.clone());
    }
    snapshot.count_request(&entry.listener, route_label(&entry), &entry.method, entry.status);
    snapshot.access_log.log(&entry);
    error_response(status, kind, &message)
}

/// `{"error": kind, "message": message}` with `status`.
pub fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": kind, "message": message }).to_string();
    let mut response = Response::new(UnsyncBoxBody::new(
        Full::new(Bytes::from(body)).map_err(|never| match never {}),
    ));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests;
