//! TLS families (`kagi_tls_*`): handshakes by listener, certificate, protocol version, cipher
//! suite and outcome, and each certificate's time to expiry (refreshed from the certificate
//! store on each scrape). Handshake signatures per keystore key are key operations
//! (`kagi_key_operations_total{operation="TlsHandshakeSign"}`, `keys.rs`).

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

use crate::tls::StoredCert;

/// The TLS families.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    handshakes: IntCounterVec,
    expiry: GaugeVec,
}

/// How a handshake ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Completed in full (the certificate's key signed).
    Full,
    /// Resumed from a session ticket or id (no signature).
    Resumed,
    /// Failed: bad ClientHello, no shared parameters, a key that would not sign, a bad client
    /// certificate.
    Failure,
    /// Not completed within the listener's header timeout.
    Timeout,
}

impl HandshakeOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Resumed => "resumed",
            Self::Failure => "failure",
            Self::Timeout => "timeout",
        }
    }
}

impl TlsMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Panics
    /// If called twice on one registry (a programming error).
    pub fn register(registry: &Registry) -> Self {
        let handshakes = IntCounterVec::new(
            Opts::new(
                "kagi_tls_handshakes_total",
                "TLS handshakes, by listener (api or a proxy listener), certificate, protocol \
                 version, cipher suite and outcome (full, resumed, failure, timeout).",
            ),
            &["listener", "certificate", "version", "cipher_suite", "outcome"],
        )
        .expect("valid metric");
        let expiry = GaugeVec::new(
            Opts::new(
                "kagi_tls_certificate_expiry_seconds",
                "Seconds until the certificate's leaf expires (negative once expired), by \
                 certificate name in the store.",
            ),
            &["certificate", "kind"],
        )
        .expect("valid metric");
        registry.register(Box::new(handshakes.clone())).expect("registered once");
        registry.register(Box::new(expiry.clone())).expect("registered once");
        Self { handshakes, expiry }
    }

    /// Counts a handshake on `listener` for `certificate` ("-" when none was chosen).
    pub fn handshake(
        &self,
        listener: &str,
        certificate: &str,
        connection: Option<&rustls::ServerConnection>,
        outcome: HandshakeOutcome,
    ) {
        let version = connection.and_then(|c| c.protocol_version()).map_or("-", |v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "other",
        });
        let suite = connection
            .and_then(|c| c.negotiated_cipher_suite())
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("-");
        self.handshakes
            .with_label_values(&[listener, certificate, version, suite, outcome.label()])
            .inc();
    }

    /// Sets each certificate's time to expiry as of `now`; certificates no longer in the store
    /// go.
    pub fn refresh(&self, certificates: &[StoredCert], now: i64) {
        self.expiry.reset();
        for cert in certificates {
            let kind = match cert.meta.kind {
                crate::tls::CertKind::Ca => "ca",
                crate::tls::CertKind::Issued => "issued",
                crate::tls::CertKind::Imported => "imported",
            };
            #[allow(clippy::cast_precision_loss)]
            let seconds = (cert.meta.not_after - now) as f64;
            self.expiry.with_label_values(&[&cert.meta.name, kind]).set(seconds);
        }
    }
}
