//! Envelope families (`kagi_envelope_*`): bodies and plaintext bytes encrypted and decrypted
//! per route and key, failures by reason, and the data-key cache's lookups, evictions and size.
//!
//! Labels are bounded: `route` names come from the configuration, `key_id` only keys a route is
//! configured with (the proxy labels a body with its route's key once resolved, never with what
//! a client sent), `direction`, `reason` and `result` small fixed sets ([`Direction`],
//! [`FailureReason`], [`EvictionReason`], [`CacheLookup`]). The cache families carry no key
//! label: the cache is keyed by principal, key and encryption context, and only its totals are
//! worth a series.
//!
//! The proxy calls [`EnvelopeMetrics::body`] and [`EnvelopeMetrics::failure`];
//! `envelope::cache` calls the cache methods.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::envelope::Error;
use crate::keystore::ErrorKind;

/// The envelope families. Cloning is cheap (the families are shared handles).
#[derive(Clone, Debug)]
pub struct EnvelopeMetrics {
    bodies: IntCounterVec,
    bytes: IntCounterVec,
    failures: IntCounterVec,
    /// `kagi_envelope_data_key_cache_total`'s four series, by direction (decrypt, encrypt)
    /// then result (hit, miss): counted on every message, so not looked up by label each time.
    cache_lookups: [[IntCounter; 2]; 2],
    cache_evictions: IntCounterVec,
    cache_entries: IntGauge,
}

/// The body and byte counters of one route, key and direction
/// ([`EnvelopeMetrics::body_counters`]). Cloning is cheap.
#[derive(Clone, Debug)]
pub struct BodyCounters {
    bodies: IntCounter,
    bytes: IntCounter,
}

impl BodyCounters {
    /// Counts one body of `plaintext_bytes`.
    pub fn count(&self, plaintext_bytes: u64) {
        self.bodies.inc();
        self.bytes.inc_by(plaintext_bytes);
    }
}

/// Which way a body went through the envelope.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Direction {
    /// A message was decrypted (a response body, or a data key for one).
    Decrypt,
    /// A message was written (a request body, or a data key for one).
    Encrypt,
}

impl Direction {
    /// The label value: `decrypt` or `encrypt`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Decrypt => "decrypt",
            Self::Encrypt => "encrypt",
        }
    }
}

/// Why the envelope failed a body. A bounded set, so it can be a label.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum FailureReason {
    /// The key service refused the principal (AccessDenied).
    AccessDenied,
    /// Nobody's input: a bug, or a key service that failed on its side.
    Internal,
    /// The key is disabled, pending deletion, deleted or otherwise unusable.
    KeyDisabled,
    /// The request lacks what the route's encryption context is built from.
    MissingContext,
    /// The body is not a message kagi reads (not an Encryption SDK message, an unsupported
    /// version or suite, a field that is not an encrypted value).
    NotEncrypted,
    /// The message (or its data key blob) does not authenticate, or bytes follow its end.
    Tampered,
    /// The body is larger than the route or one message allows.
    TooLarge,
    /// The message ends before its final frame.
    Truncated,
    /// The upstream failed while the body streamed.
    Upstream,
    /// The message's encryption context is not the route's.
    WrongContext,
    /// The message's data key is under another key (or another key provider).
    WrongKey,
}

impl FailureReason {
    /// Every reason, in label order (so each series can exist from the start).
    pub const ALL: [Self; 11] = [
        Self::AccessDenied,
        Self::Internal,
        Self::KeyDisabled,
        Self::MissingContext,
        Self::NotEncrypted,
        Self::Tampered,
        Self::TooLarge,
        Self::Truncated,
        Self::Upstream,
        Self::WrongContext,
        Self::WrongKey,
    ];

    /// The label value (`access_denied`, `key_disabled`…).
    pub fn label(self) -> &'static str {
        match self {
            Self::AccessDenied => "access_denied",
            Self::Internal => "internal",
            Self::KeyDisabled => "key_disabled",
            Self::MissingContext => "missing_context",
            Self::NotEncrypted => "not_encrypted",
            Self::Tampered => "tampered",
            Self::TooLarge => "too_large",
            Self::Truncated => "truncated",
            Self::Upstream => "upstream",
            Self::WrongContext => "wrong_context",
            Self::WrongKey => "wrong_key",
        }
    }

    /// The reason an envelope [`Error`] counts as. [`FailureReason::MissingContext`] and
    /// [`FailureReason::Upstream`] are the proxy's own and never come from here.
    ///
    /// The label is for operators; the client still gets one uniform answer for every
    /// message fault ([`Error::is_message_fault`]).
    pub fn of(error: &Error) -> Self {
        match error {
            Error::Malformed(_) | Error::Unsupported(_) | Error::NotAnEncryptedField(_) => {
                Self::NotEncrypted
            }
            Error::WrongProvider | Error::WrongKey => Self::WrongKey,
            Error::ContextMismatch => Self::WrongContext,
            Error::CommitmentMismatch
            | Error::HeaderTampered
            | Error::FrameTampered(_)
            | Error::BadSignature
            | Error::TrailingData => Self::Tampered,
            Error::Truncated => Self::Truncated,
            Error::TooLong => Self::TooLarge,
            Error::KeyService(error) => match error.kind() {
                ErrorKind::AccessDenied => Self::AccessDenied,
                ErrorKind::Disabled | ErrorKind::InvalidState | ErrorKind::NotFound => {
                    Self::KeyDisabled
                }
                ErrorKind::IncorrectKey => Self::WrongKey,
                // Uniform on purpose: a blob that does not authenticate under the context.
                ErrorKind::InvalidCiphertext => Self::Tampered,
                _ => Self::Internal,
            },
            Error::InvalidContext(_)
            | Error::InvalidFrameLength(_)
            | Error::InvalidDataKey(_)
            | Error::InvalidPointer(_)
            | Error::Internal(_) => Self::Internal,
        }
    }
}

/// What a data-key cache lookup found.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum CacheLookup {
    /// A cached data key was used: no key service call.
    Hit,
    /// The key service was asked (or a concurrent identical request's answer awaited).
    Miss,
}

impl CacheLookup {
    /// The label value: `hit` or `miss`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// Why a cached data key was dropped.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum EvictionReason {
    /// It reached its maximum age.
    Age,
    /// It protected its maximum number of plaintext bytes.
    Bytes,
    /// The cache was full and it was the least recently used.
    Capacity,
    /// It encrypted its maximum number of messages.
    Messages,
    /// Its key was disabled, scheduled for deletion, re-policied, rotated… or the cache was
    /// cleared.
    Revoked,
}

impl EvictionReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 5] =
        [Self::Age, Self::Bytes, Self::Capacity, Self::Messages, Self::Revoked];

    /// The label value (`age`, `bytes`, `capacity`, `messages`, `revoked`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::Bytes => "bytes",
            Self::Capacity => "capacity",
            Self::Messages => "messages",
            Self::Revoked => "revoked",
        }
    }
}

impl EnvelopeMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Panics
    /// If called twice on one registry (a programming error).
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let family = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(family.clone())).expect("registered once");
            family
        };
        let bodies = counter(
            "kagi_envelope_bodies_total",
            "Bodies encrypted into or decrypted from Encryption SDK messages, by route, key and \
             direction (encrypt or decrypt).",
            &["route", "key_id", "direction"],
        );
        let bytes = counter(
            "kagi_envelope_bytes_total",
            "Plaintext bytes of the bodies encrypted or decrypted, by route, key and direction.",
            &["route", "key_id", "direction"],
        );
        let failures = counter(
            "kagi_envelope_failures_total",
            "Bodies the envelope could not encrypt or decrypt, by route and reason.",
            &["route", "reason"],
        );
        let cache_lookups = counter(
            "kagi_envelope_data_key_cache_total",
            "Data-key cache lookups, by direction (encrypt: GenerateDataKey, decrypt: Decrypt) \
             and result (hit: no key service call; miss).",
            &["direction", "result"],
        );
        let cache_evictions = counter(
            "kagi_envelope_data_key_cache_evictions_total",
            "Data keys dropped from the cache, by reason (age, bytes, capacity, messages, \
             revoked).",
            &["reason"],
        );
        let cache_entries = IntGauge::new(
            "kagi_envelope_data_key_cache_entries",
            "Data keys in the cache (both directions).",
        )
        .expect("valid metric");
        registry.register(Box::new(cache_entries.clone())).expect("registered once");
        // The cache's series exist from the start, so `increase()` sees the first of each.
        let cache_lookups = [Direction::Decrypt, Direction::Encrypt].map(|direction| {
            [CacheLookup::Hit, CacheLookup::Miss]
                .map(|result| cache_lookups.with_label_values(&[direction.label(), result.label()]))
        });
        for reason in EvictionReason::ALL {
            cache_evictions.with_label_values(&[reason.label()]);
        }
        Self { bodies, bytes, failures, cache_lookups, cache_evictions, cache_entries }
    }

    /// Counts one body of `plaintext_bytes` that went `direction` on `route` under the key
    /// `key_id` (an id the route is configured with, not what a client typed).
    pub fn body(&self, route: &str, key_id: &str, direction: Direction, plaintext_bytes: u64) {
        self.body_counters(route, key_id, direction).count(plaintext_bytes);
    }

    /// The counters [`EnvelopeMetrics::body`] counts into for `route`, `key_id` and
    /// `direction`, looked up once: a caller counting many bodies keeps them (a lookup hashes
    /// the labels and takes the family's lock). The series exist from this call on.
    pub fn body_counters(&self, route: &str, key_id: &str, direction: Direction) -> BodyCounters {
        let labels = [route, key_id, direction.label()];
        BodyCounters {
            bodies: self.bodies.with_label_values(&labels),
            bytes: self.bytes.with_label_values(&labels),
        }
    }

    /// Counts one body on `route` that failed for `reason`.
    pub fn failure(&self, route: &str, reason: FailureReason) {
        self.failures.with_label_values(&[route, reason.label()]).inc();
    }

    /// Counts one data-key cache lookup.
    pub fn cache_lookup(&self, direction: Direction, result: CacheLookup) {
        let direction = usize::from(direction == Direction::Encrypt);
        let result = usize::from(result == CacheLookup::Miss);
        self.cache_lookups[direction][result].inc();
    }

    /// Counts `n` data keys dropped from the cache for `reason`.
    pub fn cache_evictions(&self, reason: EvictionReason, n: u64) {
        if n > 0 {
            self.cache_evictions.with_label_values(&[reason.label()]).inc_by(n);
        }
    }

    /// Sets the number of data keys in the cache.
    pub fn cache_entries(&self, entries: usize) {
        self.cache_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut out)
            .expect("encode");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn families_register_and_render() {
        let registry = Registry::new();
        let metrics = EnvelopeMetrics::register(&registry);
        metrics.body("uploads", "k1", Direction::Encrypt, 1000);
        metrics.body("uploads", "k1", Direction::Encrypt, 24);
        metrics.body("uploads", "k1", Direction::Decrypt, 7);
        metrics.failure("uploads", FailureReason::Tampered);
        metrics.cache_lookup(Direction::Encrypt, CacheLookup::Hit);
        metrics.cache_evictions(EvictionReason::Revoked, 3);
        metrics.cache_entries(5);
        let text = render(&registry);
        for line in [
            r#"kagi_envelope_bodies_total{direction="encrypt",key_id="k1",route="uploads"} 2"#,
            r#"kagi_envelope_bytes_total{direction="encrypt",key_id="k1",route="uploads"} 1024"#,
            r#"kagi_envelope_bytes_total{direction="decrypt",key_id="k1",route="uploads"} 7"#,
            r#"kagi_envelope_failures_total{reason="tampered",route="uploads"} 1"#,
            r#"kagi_envelope_data_key_cache_total{direction="encrypt",result="hit"} 1"#,
            r#"kagi_envelope_data_key_cache_total{direction="decrypt",result="miss"} 0"#,
            r#"kagi_envelope_data_key_cache_evictions_total{reason="revoked"} 3"#,
            r#"kagi_envelope_data_key_cache_evictions_total{reason="age"} 0"#,
            "kagi_envelope_data_key_cache_entries 5",
            "# TYPE kagi_envelope_bodies_total counter",
            "# TYPE kagi_envelope_data_key_cache_entries gauge",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Every family has help text and counters end in `_total` (promtool's rules).
        for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
            let mut words = line.split(' ').skip(2);
            let (name, kind) = (words.next().expect("name"), words.next().expect("type"));
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
        }
    }

    #[test]
    fn labels_are_distinct_and_snake_case() {
        let labels: Vec<_> = FailureReason::ALL.iter().map(|reason| reason.label()).collect();
        let mut sorted = labels.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(labels, sorted, "FailureReason::ALL in label order, no duplicates");
        let labels: Vec<_> = EvictionReason::ALL.iter().map(|reason| reason.label()).collect();
        let mut sorted = labels.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(labels, sorted, "EvictionReason::ALL in label order, no duplicates");
    }

    #[test]
    fn envelope_errors_map_to_reasons() {
        use crate::envelope::KeyServiceError;
        let kms = |kind| Error::KeyService(KeyServiceError::Kms { kind, message: String::new() });
        let cases = [
            (Error::Truncated, FailureReason::Truncated),
            (Error::FrameTampered(3), FailureReason::Tampered),
            (Error::ContextMismatch, FailureReason::WrongContext),
            (Error::WrongKey, FailureReason::WrongKey),
            (Error::Malformed("x"), FailureReason::NotEncrypted),
            (Error::TooLong, FailureReason::TooLarge),
            (kms(ErrorKind::Disabled), FailureReason::KeyDisabled),
            (kms(ErrorKind::AccessDenied), FailureReason::AccessDenied),
            (kms(ErrorKind::InvalidCiphertext), FailureReason::Tampered),
            (kms(ErrorKind::DependencyTimeout), FailureReason::Internal),
        ];
        for (error, reason) in cases {
            assert_eq!(FailureReason::of(&error), reason, "{error:?}");
        }
    }
}
