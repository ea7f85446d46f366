//! The reverse proxy's part of the configuration: `[proxy]`, `[[listeners]]`, `[[upstreams]]`
//! and `[[routes]]`, checked whole (names unique, every reference resolves, addresses free of
//! each other) before anything uses them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{Builder, ConfigError, raw};
use crate::tls::TlsProfile;

/// The proxy: listeners, pools and routes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyConfig {
    /// Where clients connect, in file order.
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// Backend pools, in file order.
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    /// Routes, first match wins.
    pub routes: Vec<Arc<RouteConfig>>,
    /// How long SIGTERM waits for requests in flight.
    pub drain_timeout: Duration,
    /// The access log.
    pub access_log: AccessLogConfig,
    /// Worker threads that serve the listeners' connections (restart only); 0 in a
    /// configuration built by hand means one.
    pub workers: usize,
}

/// Where the access log goes and how it reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// The line format.
    pub format: AccessLogFormat,
    /// A file to append to; `None`: standard output; `off`: no access log.
    pub path: Option<PathBuf>,
}

/// An access log line's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// `key=value` pairs, logfmt style.
    Text,
}

/// One `[[listeners]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Its name.
    pub name: String,
    /// Its address.
    pub listen: SocketAddr,
    /// TLS, or plain HTTP.
    pub tls: Option<ListenerTls>,
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a request head may take.
    pub header_timeout: Duration,
    /// How long a connection may sit idle.
    pub idle_timeout: Duration,
    /// The largest request head, in bytes.
    pub max_header_bytes: usize,
}

/// A listener's TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// Certificate names in DATA_DIR/certs; the first is the default (no SNI, or no match).
    pub certificates: Vec<String>,
    /// Clients must present a certificate chaining to this PEM bundle.
    pub client_ca: Option<PathBuf>,
    /// The TLS versions offered.
    pub profile: TlsProfile,
}

/// One `[[upstreams]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Its name.
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// TLS to the targets, or plain.
    pub tls: Option<UpstreamTls>,
    /// HTTP/1.1 or HTTP/2 to the targets.
    pub protocol: UpstreamProtocol,
    /// How long a connection may take.
    pub connect_timeout: Duration,
    /// How long a response's head may take.
    pub response_timeout: Duration,
    /// How long a failed target is skipped.
    pub fail_timeout: Duration,
    /// Idle connections kept per target.
    pub max_idle_per_target: usize,
}

/// TLS to an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The PEM bundle the targets' certificates chain to.
    pub ca: PathBuf,
    /// The name their certificates carry; `None`: each target's host.
    pub server_name: Option<String>,
}

/// The HTTP version spoken to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (pooled keep-alive connections).
    Http1,
    /// HTTP/2 (one multiplexed connection per target and proxy worker; prior knowledge without
    /// TLS).
    Http2,
}

/// One `[[routes]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Its name.
    pub name: String,
    /// The listeners it applies to; empty: all.
    pub listeners: Vec<String>,
    /// The host it matches.
    pub host: HostMatch,
    /// The path prefix it matches.
    pub path_prefix: String,
    /// The pool it sends to.
    pub upstream: String,
    /// The largest request body.
    pub max_body_bytes: u64,
    /// The Host the upstream sees.
    pub host_header: HostHeader,
    /// Envelope encryption of bodies, if the route has it.
    pub envelope: Option<EnvelopeConfig>,
}

/// A route's envelope encryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeConfig {
    /// The KMS key (id, ARN or alias).
    pub key: String,
    /// The request methods whose bodies are encrypted.
    pub methods: Vec<http::Method>,
    /// The request content types encrypted (`type/subtype` or `type/*`, lowercase); empty: all.
    pub content_types: Vec<String>,
    /// The encryption context, pair by pair, in file order.
    pub context: Vec<(String, ContextSource)>,
    /// Whether response bodies are decrypted.
    pub decrypt_responses: bool,
    /// Whether a response that is not an encrypted message passes through.
    pub allow_plaintext_responses: bool,
    /// The algorithm suite messages are written with.
    pub suite: crate::envelope::Suite,
    /// Plaintext bytes per frame.
    pub frame_length: u32,
    /// JSON pointers of the values encrypted (field mode); empty: whole bodies.
    pub json_fields: Vec<String>,
    /// The largest JSON document in field mode.
    pub max_json_bytes: u64,
    /// The principal the route acts as under key policies.
    pub principal: String,
    /// Whether Range requests are answered from the decrypted stream (else 416).
    pub decrypt_ranges: bool,
}

/// Where an encryption context value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextSource {
    /// A constant.
    Value(String),
    /// A request header; a request without it is refused.
    Header(http::HeaderName),
    /// The route's name.
    Route,
    /// The request path (without the query).
    Path,
}

/// Which hosts a route matches. Hosts compare lowercase, without port or trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this one.
    Exact(String),
    /// `*.SUFFIX`: one label, then this suffix (`a.example.com`, not `example.com`).
    Wildcard(String),
}

impl HostMatch {
    /// Whether `host` (lowercase, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => host == name,
            Self::Wildcard(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        }
    }
}

/// The Host header an upstream sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's.
    Client,
    /// The target's `host:port`.
    Upstream,
    /// This one.
    Fixed(String),
}

/// Defaults, each documented in config/kagi.toml.
const DRAIN_TIMEOUT_MS: u64 = 30_000;
const MAX_CONNECTIONS: u64 = 10_000;
const HEADER_TIMEOUT_MS: u64 = 10_000;
const IDLE_TIMEOUT_MS: u64 = 60_000;
const MAX_HEADER_BYTES: u64 = 64 * 1024;
const CONNECT_TIMEOUT_MS: u64 = 2_000;
const RESPONSE_TIMEOUT_MS: u64 = 30_000;
const FAIL_TIMEOUT_MS: u64 = 10_000;
const MAX_IDLE_PER_TARGET: u64 = 64;
const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// One proxy worker per CPU the process may use.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl Builder<'_> {
    /// Builds and cross-checks the proxy's tables. `taken` holds the addresses other
    /// listeners (API, admin) use.
    pub(super) fn proxy(
        &self,
        proxy: Option<raw::Proxy>,
        listeners: Vec<raw::Listener>,
        upstreams: Vec<raw::Upstream>,
        routes: Vec<raw::Route>,
        taken: &[SocketAddr],
    ) -> Result<ProxyConfig, ConfigError> {
        let mut config = ProxyConfig {
            drain_timeout: Duration::from_millis(DRAIN_TIMEOUT_MS),
            workers: default_workers(),
            ..ProxyConfig::default()
        };
        if let Some(proxy) = proxy {
            let workers = self.count(proxy.workers.as_ref(), config.workers as u64, 1, 256)?;
            config.workers = usize::try_from(workers).unwrap_or(1);
            if let Some(ms) = &proxy.drain_timeout_ms {
                config.drain_timeout = self.millis(ms, 0, 3_600_000)?;
            }
            if let Some(format) = &proxy.access_log_format {
                config.access_log.format = match format.get_ref().as_str() {
                    "json" => AccessLogFormat::Json,
                    "text" => AccessLogFormat::Text,
                    _ => return Err(self.error(format, "access_log_format is json or text")),
                };
            }
            match proxy.access_log.as_ref().map(|p| p.get_ref().as_str()) {
                None | Some("-") => {}
                Some("off") => config.access_log.path = Some(PathBuf::from("off")),
                Some(path) => config.access_log.path = Some(self.path(path)),
            }
        }
        let mut names = HashSet::new();
        let mut addresses: Vec<SocketAddr> = taken.to_vec();
        for raw in listeners {
            let listener = self.listener(&raw)?;
            if !names.insert(listener.name.clone()) {
                return Err(self.error(&raw.name, "a second listener of this name"));
            }
            if addresses.iter().any(|a| a.port() != 0 && *a == listener.listen) {
                return Err(self.error(&raw.listen, "this address is already used by a listener"));
            }
            addresses.push(listener.listen);
            config.listeners.push(Arc::new(listener));
        }
        let mut pools = HashSet::new();
        for raw in upstreams {
            let upstream = self.upstream(&raw)?;
            if !pools.insert(upstream.name.clone()) {
                return Err(self.error(&raw.name, "a second upstream of this name"));
            }
            config.upstreams.push(Arc::new(upstream));
        }
        let mut route_names = HashSet::new();
        for raw in routes {
            let route = self.route(&raw)?;
            if !route_names.insert(route.name.clone()) {
                return Err(self.error(&raw.name, "a second route of this name"));
            }
            if !pools.contains(&route.upstream) {
                return Err(self.error(
                    &raw.upstream,
                    format!("no [[upstreams]] is named {:?}", route.upstream),
                ));
            }
            for (name, raw_name) in route.listeners.iter().zip(raw.listeners.iter().flatten()) {
                if !names.contains(name) {
                    return Err(self.error(raw_name, format!("no [[listeners]] is named {name:?}")));
                }
            }
            // The same match twice: the second can never be chosen.
            if let Some(earlier) = config.routes.iter().find(|r| {
                r.host == route.host
                    && r.path_prefix == route.path_prefix
                    && r.listeners == route.listeners
            }) {
                return Err(self.error(
                    &raw.name,
                    format!("route {:?} already matches the same host and path", earlier.name),
                ));
            }
            config.routes.push(Arc::new(route));
        }
        if !config.listeners.is_empty() && config.routes.is_empty() {
            return Err(ConfigError {
                origin: self.origin.to_owned(),
                line: None,
                message: "[[listeners]] without any [[routes]]: every request would be 404".into(),
            });
        }
        Ok(config)
    }

    fn millis(&self, ms: &Spanned<u64>, min: u64, max: u64) -> Result<Duration, ConfigError> {
        if !(min..=max).contains(ms.get_ref()) {
            return Err(self.error(ms, format!("must be {min} to {max} milliseconds")));
        }
        Ok(Duration::from_millis(*ms.get_ref()))
    }

    fn count(
        &self,
        value: Option<&Spanned<u64>>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(value) = value else { return Ok(default) };
        if !(min..=max).contains(value.get_ref()) {
            return Err(self.error(value, format!("must be {min} to {max}")));
        }
        Ok(*value.get_ref())
    }

    fn name(&self, name: &Spanned<String>, what: &str) -> Result<String, ConfigError> {
        let text = name.get_ref();
        let ok = (1..=64).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            return Err(self.error(name, format!("a {what} name is 1–64 of A-Z a-z 0-9 _ - .")));
        }
        Ok(text.clone())
    }

    fn listener(&self, raw: &raw::Listener) -> Result<ListenerConfig, ConfigError> {
        let name = self.name(&raw.name, "listener")?;
        let tls = raw.tls.as_ref().is_none_or(|tls| *tls.get_ref());
        let tls = if tls {
            let certificates: Vec<String> = raw
                .certificates
                .iter()
                .flatten()
                .map(|cert| {
                    crate::tls::check_name(cert.get_ref())
                        .map(|()| cert.get_ref().clone())
                        .map_err(|e| self.error(cert, e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            if certificates.is_empty() {
                return Err(self.error(
                    &raw.name,
                    "a TLS listener names its certificates (certificates = [\"NAME\"], see \
                     `kagi certs list`), or says tls = false",
                ));
            }
            let client_ca = raw.client_ca.as_ref().map(|path| self.path(path.get_ref()));
            let profile = self.tls_profile(raw.tls_profile.as_ref())?;
            Some(ListenerTls { certificates, client_ca, profile })
        } else {
            if let Some(certificates) = raw.certificates.as_ref().and_then(|c| c.first()) {
                return Err(self.error(certificates, "certificates on a listener with tls = false"));
            }
            if let Some(ca) = &raw.client_ca {
                return Err(self.error(ca, "client_ca on a listener with tls = false"));
            }
            if let Some(profile) = &raw.tls_profile {
                return Err(self.error(profile, "tls_profile on a listener with tls = false"));
            }
            None
        };
        let header_timeout = match &raw.header_timeout_ms {
            Some(ms) => self.millis(ms, 100, 600_000)?,
            None => Duration::from_millis(HEADER_TIMEOUT_MS),
        };
        let idle_timeout = match &raw.idle_timeout_ms {
            Some(ms) => self.millis(ms, 100, 86_400_000)?,
            None => Duration::from_millis(IDLE_TIMEOUT_MS),
        };
        Ok(ListenerConfig {
            name,
            listen: self.address(&raw.listen)?,
            tls,
            max_connections: usize::try_from(self.count(
                raw.max_connections.as_ref(),
                MAX_CONNECTIONS,
                1,
                1_000_000,
            )?)
            .unwrap_or(usize::MAX),
            header_timeout,
            idle_timeout,
            // hyper's smallest read buffer is 8 KiB.
            max_header_bytes: usize::try_from(self.count(
                raw.max_header_bytes.as_ref(),
                MAX_HEADER_BYTES,
                8192,
                1024 * 1024,
            )?)
            .unwrap_or(usize::MAX),
        })
    }

    fn upstream(&self, raw: &raw::Upstream) -> Result<UpstreamConfig, ConfigError> {
        let name = self.name(&raw.name, "upstream")?;
        if raw.targets.get_ref().is_empty() {
            return Err(self.error(&raw.targets, "an upstream has at least one target"));
        }
        let mut targets = Vec::new();
        for target in raw.targets.get_ref() {
            let text = target.get_ref();
            let valid = text
                .parse::<http::uri::Authority>()
                .ok()
                .filter(|authority| authority.port_u16().is_some() && !text.contains('@'));
            if valid.is_none() {
                return Err(self.error(target, "a target is host:port, like 127.0.0.1:9000"));
            }
            targets.push(text.clone());
        }
        let tls = raw.tls.as_ref().is_some_and(|tls| *tls.get_ref());
        let tls = if tls {
            let Some(ca) = &raw.ca else {
                return Err(self.error(
                    &raw.name,
                    "a TLS upstream names the CA bundle its certificates chain to (ca = \"FILE\")",
                ));
            };
            Some(UpstreamTls {
                ca: self.path(ca.get_ref()),
                server_name: raw.server_name.as_ref().map(|n| n.get_ref().clone()),
            })
        } else {
            if let Some(ca) = &raw.ca {
                return Err(self.error(ca, "ca on an upstream without tls = true"));
            }
            None
        };
        let protocol = match raw.protocol.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("http2") => UpstreamProtocol::Http2,
            Some(_) => {
                let spanned = raw.protocol.as_ref().unwrap_or(&raw.name);
                return Err(self.error(spanned, "protocol is http1 or http2"));
            }
        };
        let duration = |ms: Option<&Spanned<u64>>, default: u64, max: u64| match ms {
            Some(ms) => self.millis(ms, 1, max),
            None => Ok(Duration::from_millis(default)),
        };
        Ok(UpstreamConfig {
            name,
            targets,
            tls,
            protocol,
            connect_timeout: duration(
                raw.connect_timeout_ms.as_ref(),
                CONNECT_TIMEOUT_MS,
                600_000,
            )?,
            response_timeout: duration(
                raw.response_timeout_ms.as_ref(),
                RESPONSE_TIMEOUT_MS,
                86_400_000,
            )?,
            fail_timeout: duration(raw.fail_timeout_ms.as_ref(), FAIL_TIMEOUT_MS, 3_600_000)?,
            max_idle_per_target: usize::try_from(self.count(
                raw.max_idle_per_target.as_ref(),
                MAX_IDLE_PER_TARGET,
                0,
                100_000,
            )?)
            .unwrap_or(usize::MAX),
        })
    }

    fn envelope(&self, route: &str, raw: &raw::Envelope) -> Result<EnvelopeConfig, ConfigError> {
        if let Some(why) = crate::envelope::FIPS_REFUSAL {
            return Err(self.error(&raw.key, why));
        }
        if raw.key.get_ref().is_empty() {
            return Err(self.error(&raw.key, "key names a KMS key: an id, ARN or alias/NAME"));
        }
        let methods = match &raw.methods {
            None => vec![http::Method::PUT, http::Method::POST, http::Method::PATCH],
            Some(methods) => methods
                .iter()
                .map(|m| {
                    http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes())
                        .map_err(|_| self.error(m, "not an HTTP method"))
                })
                .collect::<Result<_, _>>()?,
        };
        let mut content_types = Vec::new();
        for content_type in raw.content_types.iter().flatten() {
            let text = content_type.get_ref().trim().to_ascii_lowercase();
            let valid = text.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && !text.contains([' ', ';', ','])
            });
            if !valid {
                return Err(self.error(content_type, "a content type is type/subtype or type/*"));
            }
            content_types.push(text);
        }
        let mut context = Vec::new();
        for pair in &raw.context {
            let key = pair.key.get_ref();
            if key.is_empty() || key.starts_with("aws") {
                return Err(
                    self.error(&pair.key, "a context key is not empty and does not start with aws")
                );
            }
            if context.iter().any(|(k, _)| k == key) {
                return Err(self.error(&pair.key, "a second context pair with this key"));
            }
            let source = match (&pair.value, &pair.header, &pair.from) {
                (Some(value), None, None) => ContextSource::Value(value.get_ref().clone()),
                (None, Some(header), None) => ContextSource::Header(
                    http::HeaderName::from_bytes(header.get_ref().as_bytes())
                        .map_err(|_| self.error(header, "not a header name"))?,
                ),
                (None, None, Some(from)) => match from.get_ref().as_str() {
                    "route" => ContextSource::Route,
                    "path" => ContextSource::Path,
                    _ => return Err(self.error(from, "from is route or path")),
                },
                _ => {
                    return Err(self.error(&pair.key, "give exactly one of value, header or from"));
                }
            };
            context.push((key.clone(), source));
        }
        let suite = match raw.suite.as_ref().map(|s| (s, s.get_ref().trim_start_matches("0x"))) {
            None | Some((_, "0478")) => crate::envelope::Suite::Aes256GcmHkdfSha512CommitKey,
            Some((_, "0578")) => crate::envelope::Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
            Some((spanned, _)) => return Err(self.error(spanned, "suite is 0478 or 0578")),
        };
        let frame_length = match &raw.frame_length {
            None => crate::envelope::format::DEFAULT_FRAME_LENGTH,
            Some(length) => {
                let value = u32::try_from(*length.get_ref()).ok().filter(|v| {
                    crate::envelope::format::check_frame_length(*v).is_ok()
                        && *v <= 16 * 1024 * 1024
                });
                value.ok_or_else(|| self.error(length, "frame_length is 1 to 16777216"))?
            }
        };
        let mut json_fields = Vec::new();
        for pointer in raw.json_fields.iter().flatten() {
            if !pointer.get_ref().starts_with('/') {
                return Err(self.error(pointer, "a JSON pointer starts with / (RFC 6901)"));
            }
            json_fields.push(pointer.get_ref().clone());
        }
        let principal = match &raw.principal {
            Some(principal) => {
                let name = principal.get_ref();
                let ok = (1..=64).contains(&name.len())
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
                if !ok {
                    return Err(
                        self.error(principal, "a principal name is 1–64 of A-Z a-z 0-9 +=,.@_-")
                    );
                }
                name.clone()
            }
            None => format!("route-{route}").chars().take(64).collect(),
        };
        let decrypt_ranges = match raw.range.as_ref().map(|r| (r, r.get_ref().as_str())) {
            None | Some((_, "refuse")) => false,
            Some((_, "decrypt")) => true,
            Some((spanned, _)) => return Err(self.error(spanned, "range is refuse or decrypt")),
        };
        Ok(EnvelopeConfig {
            key: raw.key.get_ref().clone(),
            methods,
            content_types,
            context,
            decrypt_responses: raw.decrypt_responses.unwrap_or(true),
            allow_plaintext_responses: raw.allow_plaintext_responses.unwrap_or(false),
            suite,
            frame_length,
            json_fields,
            max_json_bytes: self.count(raw.max_json_bytes.as_ref(), 1024 * 1024, 2, 1 << 30)?,
            principal,
            decrypt_ranges,
        })
    }

    fn route(&self, raw: &raw::Route) -> Result<RouteConfig, ConfigError> {
        let name = self.name(&raw.name, "route")?;
        let host = match &raw.host {
            None => HostMatch::Any,
            Some(host) => {
                let text = host.get_ref().trim_end_matches('.').to_ascii_lowercase();
                let (wildcard, name) = match text.strip_prefix("*.") {
                    Some(suffix) => (true, suffix.to_owned()),
                    None => (false, text),
                };
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
                if !valid {
                    return Err(
                        self.error(host, "host is a name like example.com or *.example.com")
                    );
                }
                if wildcard { HostMatch::Wildcard(name) } else { HostMatch::Exact(name) }
            }
        };
        let path_prefix = match &raw.path_prefix {
            None => "/".to_owned(),
            Some(prefix) if prefix.get_ref().starts_with('/') => prefix.get_ref().clone(),
            Some(prefix) => return Err(self.error(prefix, "path_prefix starts with /")),
        };
        let host_header = match raw.host_header.as_ref().map(|h| (h, h.get_ref().as_str())) {
            None | Some((_, "client")) => HostHeader::Client,
            Some((_, "upstream")) => HostHeader::Upstream,
            Some((spanned, fixed)) => {
                if fixed.parse::<http::uri::Authority>().is_err() || fixed.contains('@') {
                    return Err(
                        self.error(spanned, "host_header is client, upstream or a host name")
                    );
                }
                HostHeader::Fixed(fixed.to_owned())
            }
        };
        Ok(RouteConfig {
            listeners: raw.listeners.iter().flatten().map(|l| l.get_ref().clone()).collect(),
            host,
            path_prefix,
            upstream: raw.upstream.get_ref().clone(),
            max_body_bytes: self.count(raw.max_body_bytes.as_ref(), MAX_BODY_BYTES, 0, u64::MAX)?,
            host_header,
            envelope: raw.envelope.as_ref().map(|e| self.envelope(&name, e)).transpose()?,
            name,
        })
    }
}
