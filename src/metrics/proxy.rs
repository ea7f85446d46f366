//! The reverse proxy's families (`kagi_proxy_*`) and the configuration reloads'
//! (`kagi_config_*`). Labels are bounded: route, listener and upstream names come from the
//! configuration, methods outside the standard set count as `OTHER`, statuses by class.

use std::sync::OnceLock;

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// The proxy's and reloads' metric families.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    upstream_connections: IntCounterVec,
    connections_open: IntGaugeVec,
    limits: IntCounterVec,
    access_log_dropped: IntCounter,
    reloads: IntCounterVec,
    last_reload: Gauge,
}

impl ProxyMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Panics
    /// If called twice on one registry (a programming error).
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "kagi_proxy_requests_total",
                "Requests the proxy answered, by listener, route, method and status class.",
            ),
            &["listener", "route", "method", "status_class"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "kagi_proxy_upstream_duration_seconds",
                "Time from sending a request upstream to its response head, by upstream.",
            )
            .buckets(vec![
                0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0, 30.0,
            ]),
            &["upstream"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "kagi_proxy_upstream_errors_total",
                "Requests an upstream did not answer, by upstream and kind (connect, timeout, \
                 protocol, request_body).",
            ),
            &["upstream", "kind"],
        )
        .expect("valid metric");
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "kagi_proxy_upstream_connections_opened_total",
                "Connections opened to upstream targets, by upstream (kept-alive connections are \
                 reused: this grows far slower than requests).",
            ),
            &["upstream"],
        )
        .expect("valid metric");
        let connections_open = IntGaugeVec::new(
            Opts::new("kagi_proxy_connections_open", "Client connections open, by listener."),
            &["listener"],
        )
        .expect("valid metric");
        let limits = IntCounterVec::new(
            Opts::new(
                "kagi_proxy_limit_rejections_total",
                "Requests or connections refused by a limit, by listener and limit \
                 (max_connections, body_size, header_size, header_timeout, idle_timeout).",
            ),
            &["listener", "limit"],
        )
        .expect("valid metric");
        let access_log_dropped = IntCounter::new(
            "kagi_proxy_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "kagi_config_reloads_total",
                "Configuration reloads, by outcome (success or failure).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let last_reload = Gauge::new(
            "kagi_config_last_reload_success_timestamp_seconds",
            "When the configuration in use was loaded (start or last good reload), Unix time.",
        )
        .expect("valid metric");
        for family in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(connections_open.clone()),
            Box::new(limits.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(reloads.clone()),
            Box::new(last_reload.clone()),
        ] {
            registry.register(family).expect("registered once");
        }
        // Both outcomes exist from the start, so `increase()` sees the first failure.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        Self {
            requests,
            upstream_duration,
            upstream_errors,
            upstream_connections,
            connections_open,
            limits,
            access_log_dropped,
            reloads,
            last_reload,
        }
    }

    /// `kagi_proxy_requests_total`'s series for `route` (empty: no route matched) on
    /// `listener`, to be resolved once per configuration rather than on every request.
    pub fn request_counters(&self, listener: &str, route: &str) -> RequestCounters {
        RequestCounters {
            family: self.requests.clone(),
            listener: listener.to_owned(),
            route: route.to_owned(),
            series: Default::default(),
        }
    }

    /// The histogram of `upstream`'s time to a response head.
    pub fn upstream_duration(&self, upstream: &str) -> prometheus::Histogram {
        self.upstream_duration.with_label_values(&[upstream])
    }

    /// Counts an upstream failure of `kind`.
    pub fn upstream_error(&self, upstream: &str, kind: &str) {
        self.upstream_errors.with_label_values(&[upstream, kind]).inc();
    }

    /// The counter of connections opened to `upstream`'s targets.
    pub fn upstream_connections(&self, upstream: &str) -> IntCounter {
        self.upstream_connections.with_label_values(&[upstream])
    }

    /// One more (`delta` 1) or one fewer (-1) open connection on `listener`.
    pub fn connection(&self, listener: &str, delta: i64) {
        self.connections_open.with_label_values(&[listener]).add(delta);
    }

    /// Counts a refusal by `limit` on `listener`.
    pub fn limit(&self, listener: &str, limit: &str) {
        self.limits.with_label_values(&[listener, limit]).inc();
    }

    /// The counter of dropped access log lines.
    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// Counts a reload; a good one sets the last-good time to now.
    pub fn reload(&self, success: bool) {
        self.reloads.with_label_values(&[if success { "success" } else { "failure" }]).inc();
        if success {
            self.loaded();
        }
    }

    /// The configuration in use was loaded now.
    pub fn loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_reload.set(now);
    }
}

/// A bounded label for a method.
/// The method labels, `OTHER` last.
const METHODS: [&str; 10] =
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "OTHER"];
/// The status classes.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        http::Method::OPTIONS => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// `kagi_proxy_requests_total`'s series for one listener and route, each looked up in the
/// family on its first request (a series appears with its first request, as before).
#[derive(Debug)]
pub struct RequestCounters {
    family: IntCounterVec,
    listener: String,
    route: String,
    series: [[OnceLock<IntCounter>; 5]; 10],
}

impl RequestCounters {
    /// Counts one request answered with `status`.
    pub fn count(&self, method: &http::Method, status: u16) {
        let (method, class) = (method_index(method), class_index(status));
        self.series[method][class]
            .get_or_init(|| {
                self.family.with_label_values(&[
                    &self.listener,
                    &self.route,
                    METHODS[method],
                    CLASSES[class],
                ])
            })
            .inc();
    }
}
