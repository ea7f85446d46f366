//! The Prometheus registry and each part's metric families, exposed as text on the admin
//! listener's `/metrics`. Every part registers its families here; names follow Prometheus
//! conventions (`kagi_` prefix, base units, `_total` counters).
//!
//! | part | families | counted by |
//! |---|---|---|
//! | API | `kagi_api_*` | [`Metrics::api_request`], once per answered request |
//! | TLS | `kagi_tls_*` (`tls.rs`) | the listeners per handshake, [`Metrics::scrape`] (expiry from the certificate store) |
//! | proxy | `kagi_proxy_*`, `kagi_config_*` (`proxy.rs`) | the proxy per request and connection, the reloader |
//! | keys | `kagi_key_*`, `kagi_keys`, `kagi_audit_*` (`keys.rs`) | the API (per key), the keystore through [`KeyObserver`], and [`Metrics::scrape`] (gauges from the inventory) |
//! | envelope | `kagi_envelope_*` (`envelope.rs`) | the proxy per body, the data-key cache (`envelope::cache`) per lookup and eviction |
//! | shared store | `kagi_store_changes_applied_total` | the keystore's change-feed follower through [`KeyObserver::changed_elsewhere`] |
//! | process | `kagi_memory_locked` | set once from `hardening::memory_lock` |
//!
//! TLS, envelope and proxy families come as their own `XxxMetrics` beside `KeyMetrics`,
//! registered in [`Metrics::new`].

pub mod envelope;
pub mod keys;
pub mod proxy;
pub mod tls;

use std::time::Duration;

use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::audit::AuditEvent;
use crate::keystore::Keystore;
use crate::keystore::observe::KeyObserver;
pub use envelope::EnvelopeMetrics;
pub use keys::KeyMetrics;
pub use proxy::ProxyMetrics;
pub use tls::{HandshakeOutcome, TlsMetrics};

/// The registry and its families.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
    api_throttled: IntCounterVec,
    api_access_denied: IntCounterVec,
    /// Change-feed entries applied, by kind (`key`, `other`).
    store_changes: [prometheus::IntCounter; 2],
    keys: KeyMetrics,
    envelope: EnvelopeMetrics,
    proxy: ProxyMetrics,
    tls: TlsMetrics,
    /// The data directory whose certificate store the expiry gauges read, once set.
    certificates: std::sync::OnceLock<std::path::PathBuf>,
    /// One scrape at a time: a refresh resets the gauges before it sets them.
    scrape_lock: tokio::sync::Mutex<()>,
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
        let api_throttled = IntCounterVec::new(
            Opts::new(
                "kagi_api_throttled_requests_total",
                "KMS API requests refused with ThrottlingException (request quota), by operation.",
            ),
            &["operation"],
        )
        .expect("valid metric");
        let api_access_denied = IntCounterVec::new(
            Opts::new(
                "kagi_api_access_denied_total",
                "KMS API requests refused with AccessDeniedException (key policy, grants or \
                 account actions), by operation.",
            ),
            &["operation"],
        )
        .expect("valid metric");
        registry.register(Box::new(api_requests.clone())).expect("registered once");
        registry.register(Box::new(api_duration.clone())).expect("registered once");
        registry.register(Box::new(api_throttled.clone())).expect("registered once");
        registry.register(Box::new(api_access_denied.clone())).expect("registered once");
        // Set once: the process locks its memory at start or not at all (`hardening`).
        let memory_locked = prometheus::IntGauge::new(
            "kagi_memory_locked",
            "1 when the server's memory is locked in RAM (mlockall), so no secret reaches swap; \
             0 when it is not (see the start-up log line for why).",
        )
        .expect("valid metric");
        memory_locked
            .set(i64::from(crate::hardening::memory_lock().is_some_and(|m| m.is_locked())));
        registry.register(Box::new(memory_locked)).expect("registered once");
        let fips_mode = prometheus::IntGauge::new(
            "kagi_fips_mode",
            "1 when this is a FIPS build (the fips feature) running with the AWS-LC FIPS module in \
             FIPS mode; 0 for a build without the feature.",
        )
        .expect("valid metric");
        fips_mode.set(i64::from(crate::crypto::FIPS && crate::crypto::check_fips_mode().is_ok()));
        registry.register(Box::new(fips_mode)).expect("registered once");
        let store_changes = IntCounterVec::new(
            Opts::new(
                "kagi_store_changes_applied_total",
                "Entries of a shared store's change feed this node applied, dropping what it had \
                 cached: kind=\"key\" for a key changed (by any node, this one included), \
                 kind=\"other\" for aliases, or everything when the node fell behind the feed.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        registry.register(Box::new(store_changes.clone())).expect("registered once");
        let store_changes = ["key", "other"].map(|kind| store_changes.with_label_values(&[kind]));
        let keys = KeyMetrics::register(&registry);
        let envelope = EnvelopeMetrics::register(&registry);
        let proxy = ProxyMetrics::register(&registry);
        let tls = TlsMetrics::register(&registry);
        Self {
            proxy,
            tls,
            certificates: std::sync::OnceLock::new(),
            registry,
            api_requests,
            api_duration,
            api_throttled,
            api_access_denied,
            store_changes,
            keys,
            envelope,
            scrape_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts one answered API request.
    pub fn api_request(&self, operation: &str, outcome: &str, elapsed: Duration) {
        self.api_requests.with_label_values(&[operation, outcome]).inc();
        self.api_duration.with_label_values(&[operation]).observe(elapsed.as_secs_f64());
        match outcome {
            "ThrottlingException" => self.api_throttled.with_label_values(&[operation]).inc(),
            "AccessDeniedException" => self.api_access_denied.with_label_values(&[operation]).inc(),
            _ => {}
        }
    }

    /// The registry, for parts that own their families (`notify`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The key families.
    pub fn keys(&self) -> &KeyMetrics {
        &self.keys
    }

    /// The envelope families (bodies, failures, the data-key cache).
    pub fn envelope(&self) -> &EnvelopeMetrics {
        &self.envelope
    }

    /// The TLS families.
    pub fn tls(&self) -> &TlsMetrics {
        &self.tls
    }

    /// Reads certificate expiry from `data_dir`'s certificate store on each scrape.
    pub fn watch_certificates(&self, data_dir: &std::path::Path) {
        let _ = self.certificates.set(data_dir.to_owned());
    }

    /// The proxy's and reloads' families.
    pub fn proxy(&self) -> &ProxyMetrics {
        &self.proxy
    }

    /// Refreshes the gauges from `keystore`'s inventory, then renders every family. When the
    /// store cannot be read the gauges keep their last values (and the scrape still answers).
    pub async fn scrape(&self, keystore: &Keystore) -> String {
        let _one_at_a_time = self.scrape_lock.lock().await;
        match keystore.inventory().await {
            Ok(inventory) => self.keys.refresh(&inventory, keystore.now()),
            Err(error) => {
                tracing::warn!(target: "kagi::metrics", %error, "cannot read the key inventory");
            }
        }
        if let Some(data_dir) = self.certificates.get() {
            match crate::tls::CertStore::new(data_dir).list() {
                Ok(certificates) => self.tls.refresh(&certificates, keystore.now()),
                Err(error) => {
                    tracing::warn!(target: "kagi::metrics", %error, "cannot read the certificate store");
                }
            }
        }
        self.render()
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The keystore's observer is the key families.
impl KeyObserver for Metrics {
    fn sealed(&self, key_id: &str, version: u32, plaintext_bytes: usize) {
        self.keys.sealed(key_id, version, plaintext_bytes);
    }

    fn recorded(&self, event: &AuditEvent) {
        self.keys.recorded(event);
    }

    fn audit_failed(&self, operation: &str) {
        self.keys.audit_failed(operation);
    }

    fn handshake_signed(&self, key_id: &str, spec: crate::keystore::KeySpec, outcome: &str) {
        self.keys.handshake_signed(key_id, spec, outcome);
    }

    fn changed_elsewhere(&self, key_arn: Option<&str>) {
        self.store_changes[usize::from(key_arn.is_none())].inc();
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

    #[test]
    fn applied_store_changes_are_counted_by_kind() {
        let metrics = Metrics::new();
        metrics.changed_elsewhere(Some("arn:aws:kms:us-east-1:111122223333:key/k1"));
        metrics.changed_elsewhere(Some("arn:aws:kms:us-east-1:111122223333:key/k2"));
        metrics.changed_elsewhere(None);
        let text = metrics.render();
        assert!(text.contains(r#"kagi_store_changes_applied_total{kind="key"} 2"#), "{text}");
        assert!(text.contains(r#"kagi_store_changes_applied_total{kind="other"} 1"#), "{text}");
    }
}
