//! The Prometheus registry and each part's metric families, exposed as text on the admin
//! listener's `/metrics`. Every part registers its families here; names follow Prometheus
//! conventions (`kagi_` prefix, base units, `_total` counters).

use std::time::Duration;

use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The registry and its families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let api_requests = IntCounterVec::new(
            Opts::new(
                "kagi_api_requests_total",
                "KMS API requests answered, by operation and outcome (success or the AWS error).",
            ),
            &["operation", "outcome"],
        )
        .expect("valid metric");
        let api_duration = HistogramVec::new(
            HistogramOpts::new(
                "kagi_api_request_duration_seconds",
                "Time from a complete KMS API request to its answer, by operation.",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 1.0,
            ]),
            &["operation"],
        )
        .expect("valid metric");
        registry.register(Box::new(api_requests.clone())).expect("registered once");
        registry.register(Box::new(api_duration.clone())).expect("registered once");
        Self { registry, api_requests, api_duration }
    }

    /// Counts one answered API request.
    pub fn api_request(&self, operation: &str, outcome: &str, elapsed: Duration) {
        self.api_requests.with_label_values(&[operation, outcome]).inc();
        self.api_duration.with_label_values(&[operation]).observe(elapsed.as_secs_f64());
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted() {
        let metrics = Metrics::new();
        metrics.api_request("Encrypt", "success", Duration::from_micros(300));
        metrics.api_request("Encrypt", "AccessDeniedException", Duration::from_micros(30));
        let text = metrics.render();
        assert!(
            text.contains(r#"kagi_api_requests_total{operation="Encrypt",outcome="success"} 1"#)
        );
        assert!(text.contains(r#"kagi_api_request_duration_seconds_count{operation="Encrypt"} 2"#));
        assert!(text.contains("# HELP kagi_api_requests_total"));
    }
}
