//! What the keystore tells an observer as it works: each AES-GCM invocation (so usage per key
//! version can be counted against the invocation limit), each audited event once durable, and
//! each audit write that failed.
//!
//! The keystore knows no metrics library and no notification transport: the server passes in
//! an observer (`metrics`, webhooks) that must return at once. An observer is never asked for
//! permission; it cannot fail or delay an operation.

use std::fmt;

use crate::audit::AuditEvent;

/// Receives notice of what the keystore did. Every method has an empty default.
pub trait KeyObserver: Send + Sync + fmt::Debug {
    /// `plaintext_bytes` were sealed with AES-256-GCM under version `version` of key `key_id`:
    /// one invocation of that version's key (NIST SP 800-38D bounds random-nonce invocations at
    /// 2^32 per key).
    fn sealed(&self, key_id: &str, version: u32, plaintext_bytes: usize) {
        let _ = (key_id, version, plaintext_bytes);
    }

    /// `event` is durable in the audit trail (for a change: about to be committed).
    fn recorded(&self, event: &AuditEvent) {
        let _ = event;
    }

    /// An audit line could not be written (the operation failed closed).
    fn audit_failed(&self, operation: &str) {
        let _ = operation;
    }

    /// Key `key_id` (of `spec`) was asked for a TLS handshake signature, with `outcome`
    /// (`success` or the AWS error name): a use of the key, counted but not audited
    /// (handshakes are too many to audit one by one).
    fn handshake_signed(&self, key_id: &str, spec: crate::keystore::KeySpec, outcome: &str) {
        let _ = (key_id, spec, outcome);
    }

    /// Another node sharing the store changed key `key_arn` (`None`: an alias, or anything),
    /// as this node read from the store's change feed. Changes of this node are seen here too,
    /// after [`KeyObserver::recorded`].
    fn changed_elsewhere(&self, key_arn: Option<&str>) {
        let _ = key_arn;
    }
}

/// Several observers, each told everything, in order (metrics, then notifications).
#[derive(Debug, Default)]
pub struct Observers(pub Vec<std::sync::Arc<dyn KeyObserver>>);

impl KeyObserver for Observers {
    fn sealed(&self, key_id: &str, version: u32, plaintext_bytes: usize) {
        for observer in &self.0 {
            observer.sealed(key_id, version, plaintext_bytes);
        }
    }

    fn recorded(&self, event: &AuditEvent) {
        for observer in &self.0 {
            observer.recorded(event);
        }
    }

    fn audit_failed(&self, operation: &str) {
        for observer in &self.0 {
            observer.audit_failed(operation);
        }
    }

    fn handshake_signed(&self, key_id: &str, spec: crate::keystore::KeySpec, outcome: &str) {
        for observer in &self.0 {
            observer.handshake_signed(key_id, spec, outcome);
        }
    }

    fn changed_elsewhere(&self, key_arn: Option<&str>) {
        for observer in &self.0 {
            observer.changed_elsewhere(key_arn);
        }
    }
}
