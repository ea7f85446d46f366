//! The reverse proxy's families (`kagi_proxy_*`) and the configuration reloads'
//! (`kagi_config_*`). Labels are bounded: route, listener and upstream names come from the
//! configuration, methods outside the standard set count as `OTHER`, statuses by class.

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

    /// Counts one answered request.
    pub fn request(&self, listener: &str, route: &str, method: &http::Method, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.with_label_values(&[listener, route, method_label(method), class]).inc();
    }

    /// Records how long `upstream` took to its response head.
    pub fn upstream_answered(&self, upstream: &str, seconds: f64) {
        self.upstream_duration.with_label_values(&[upstream]).observe(seconds);
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
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
