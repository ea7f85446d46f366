//! Request quotas: a token bucket per principal and operation class.
//!
//! Time is passed in (seconds from any fixed origin), so tests drive it; the server uses a
//! monotonic clock.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::Quotas;

/// The classes AWS KMS sets separate request quotas for.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum OperationClass {
    /// Symmetric cryptographic operations.
    Symmetric,
    /// Asymmetric cryptographic operations.
    Asymmetric,
    /// Everything else.
    Management,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: f64,
}

/// Token buckets, created on first use.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<(String, OperationClass), Bucket>>,
}

impl Limiter {
    /// Takes one token from `principal`'s bucket for `class` at time `now` (seconds), the
    /// bucket refilling at `quotas`' rates (the principal's); false when it is empty (the request
    /// is throttled).
    pub fn try_acquire(
        &self,
        principal: &str,
        quotas: &Quotas,
        class: OperationClass,
        now: f64,
    ) -> bool {
        let rate = match class {
            OperationClass::Symmetric => quotas.symmetric,
            OperationClass::Asymmetric => quotas.asymmetric,
            OperationClass::Management => quotas.management,
        };
        let capacity = (rate * quotas.burst_seconds).max(1.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets
            .entry((principal.to_owned(), class))
            .or_insert(Bucket { tokens: capacity, at: now });
        let elapsed = (now - bucket.at).max(0.0);
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_and_refills() {
        let quotas = Quotas { management: 2.0, burst_seconds: 1.0, ..Quotas::default() };
        let limiter = Limiter::default();
        let class = OperationClass::Management;
        assert!(limiter.try_acquire("alice", &quotas, class, 0.0));
        assert!(limiter.try_acquire("alice", &quotas, class, 0.0));
        assert!(!limiter.try_acquire("alice", &quotas, class, 0.0));
        // Others and other classes have their own buckets.
        assert!(limiter.try_acquire("bob", &quotas, class, 0.0));
        assert!(limiter.try_acquire("alice", &quotas, OperationClass::Symmetric, 0.0));
        // Half a second refills one token; a long pause refills only up to capacity.
        assert!(limiter.try_acquire("alice", &quotas, class, 0.5));
        assert!(!limiter.try_acquire("alice", &quotas, class, 0.5));
        assert!(limiter.try_acquire("alice", &quotas, class, 100.0));
        assert!(limiter.try_acquire("alice", &quotas, class, 100.0));
        assert!(!limiter.try_acquire("alice", &quotas, class, 100.0));
        // A principal's own quotas.
        let slow = Quotas { management: 0.001, ..Quotas::default() };
        assert!(limiter.try_acquire("carol", &slow, class, 0.0));
        assert!(!limiter.try_acquire("carol", &slow, class, 10.0));
    }
}
