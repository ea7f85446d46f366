//! Key metrics: operations per key, AES-GCM usage per key version, and the key inventory's
//! state as gauges refreshed from the keystore on each scrape.
//!
//! Labels are bounded by the keystore's contents: `key_id` names only keys the keystore holds
//! (the API labels a request with its key only once the key was resolved), `material_version`
//! only their versions, `operation` the KMS operation names, `outcome` the AWS error names.
//! Aliases are not labels of the per-operation families (a request may name a key by an alias
//! it does not have): `kagi_key_alias_info{key_id, alias}` lists each key's aliases as the
//! keystore holds them (created by key administrators, so bounded like key ids), and a query
//! joins on `key_id` to count by alias. Nothing else a client types is a label.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::audit::{AuditEvent, Outcome};
use crate::keystore::observe::KeyObserver;
use crate::keystore::{InventoryKey, KeySpec, KeyState, UnixSeconds};

/// How many AES-256-GCM invocations with random 96-bit nonces NIST SP 800-38D allows per key:
/// 2^32. Each key version has its own AES key, so the bound is per version.
pub const AES_GCM_INVOCATION_LIMIT: i64 = 1 << 32;

/// The key families.
#[derive(Debug)]
pub struct KeyMetrics {
    operations: IntCounterVec,
    encrypted_bytes: IntCounterVec,
    encrypted_messages: IntCounterVec,
    keys: IntGaugeVec,
    aliases: IntGaugeVec,
    since_last_use: GaugeVec,
    until_rotation: GaugeVec,
    until_deletion: GaugeVec,
    until_material_expiry: GaugeVec,
    audit_write_failures: IntCounterVec,
    /// When each key was last used successfully for cryptography, by key id, since start.
    last_use: Mutex<HashMap<String, UnixSeconds>>,
}

impl KeyMetrics {
    /// Registers the key families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let family = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(family.clone())).expect("registered once");
            family
        };
        let gauge = |name: &str, help: &str| {
            let family = GaugeVec::new(Opts::new(name, help), &["key_id"]).expect("valid metric");
            registry.register(Box::new(family.clone())).expect("registered once");
            family
        };
        let operations = counter(
            "kagi_key_operations_total",
            "KMS API requests that named an existing key, and TLS handshake signatures \
             (operation TlsHandshakeSign), by operation, key, key spec and outcome (success or \
             the AWS error).",
            &["operation", "key_id", "key_spec", "outcome"],
        );
        let encrypted_bytes = counter(
            "kagi_key_encrypted_bytes_total",
            "Plaintext bytes sealed with AES-256-GCM since the server started, by key and key \
             material version.",
            &["key_id", "material_version"],
        );
        let encrypted_messages = counter(
            "kagi_key_encrypted_messages_total",
            "AES-256-GCM invocations (Encrypt, GenerateDataKey*, ReEncrypt) since the server \
             started, by key and key material version; compare with \
             kagi_aes_gcm_invocation_limit.",
            &["key_id", "material_version"],
        );
        let audit_write_failures = counter(
            "kagi_audit_write_failures_total",
            "Audit lines that could not be written (the operation failed closed), by operation.",
            &["operation"],
        );
        let keys = IntGaugeVec::new(
            Opts::new("kagi_keys", "Keys in the keystore, by state and key spec."),
            &["state", "key_spec"],
        )
        .expect("valid metric");
        registry.register(Box::new(keys.clone())).expect("registered once");
        let aliases = IntGaugeVec::new(
            Opts::new(
                "kagi_key_alias_info",
                "1 for each alias of each key (refreshed from the keystore on each scrape): join \
                 it on key_id to see any key family by alias.",
            ),
            &["key_id", "alias"],
        )
        .expect("valid metric");
        registry.register(Box::new(aliases.clone())).expect("registered once");
        let limit = IntGauge::new(
            "kagi_aes_gcm_invocation_limit",
            "Invocations of one AES-256-GCM key with random nonces NIST SP 800-38D allows (2^32); \
             each key material version is one key.",
        )
        .expect("valid metric");
        limit.set(AES_GCM_INVOCATION_LIMIT);
        registry.register(Box::new(limit)).expect("registered once");
        Self {
            operations,
            encrypted_bytes,
            encrypted_messages,
            keys,
            aliases,
            since_last_use: gauge(
                "kagi_key_seconds_since_last_use",
                "Seconds since the key was last used for cryptography (since the server started; \
                 absent if not used since).",
            ),
            until_rotation: gauge(
                "kagi_key_seconds_until_rotation",
                "Seconds until the key's next automatic rotation (negative when overdue); absent \
                 without automatic rotation.",
            ),
            until_deletion: gauge(
                "kagi_key_seconds_until_deletion",
                "Seconds until a key pending deletion is destroyed; absent for other keys.",
            ),
            until_material_expiry: gauge(
                "kagi_key_seconds_until_material_expiry",
                "Seconds until the key's imported material expires; absent when it does not.",
            ),
            audit_write_failures,
            last_use: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one API request that named the existing key `key_id`.
    pub fn operation(&self, operation: &str, key_id: &str, spec: KeySpec, outcome: &str) {
        self.operations.with_label_values(&[operation, key_id, spec.kms_name(), outcome]).inc();
    }

    /// Sets the gauges from the keystore's inventory as of `now`. Series of keys and states no
    /// longer present go.
    pub fn refresh(&self, inventory: &[InventoryKey], now: UnixSeconds) {
        self.keys.reset();
        self.aliases.reset();
        self.since_last_use.reset();
        self.until_rotation.reset();
        self.until_deletion.reset();
        self.until_material_expiry.reset();
        let last_use = self.last_use.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in inventory {
            let record = &key.record;
            self.keys.with_label_values(&[record.state.kms_name(), record.spec.kms_name()]).inc();
            for alias in &key.aliases {
                self.aliases.with_label_values(&[&record.id, alias]).set(1);
            }
            if record.state == KeyState::Deleted {
                continue;
            }
            let id = record.id.as_str();
            let seconds = |time: UnixSeconds| (time - now) as f64;
            if let Some(used) = last_use.get(id) {
                self.since_last_use.with_label_values(&[id]).set((now - used) as f64);
            }
            if let Some(rotation) = &record.rotation {
                self.until_rotation.with_label_values(&[id]).set(seconds(rotation.next_rotation));
            }
            if let Some(date) = record.deletion_date
                && record.state == KeyState::PendingDeletion
            {
                self.until_deletion.with_label_values(&[id]).set(seconds(date));
            }
            if let Some(expiry) = key.material_expiry() {
                self.until_material_expiry.with_label_values(&[id]).set(seconds(expiry));
            }
        }
    }
}

impl KeyObserver for KeyMetrics {
    fn sealed(&self, key_id: &str, version: u32, plaintext_bytes: usize) {
        let version = version.to_string();
        let labels = [key_id, version.as_str()];
        self.encrypted_messages.with_label_values(&labels).inc();
        self.encrypted_bytes.with_label_values(&labels).inc_by(plaintext_bytes as u64);
    }

    fn recorded(&self, event: &AuditEvent) {
        if event.outcome != Outcome::Success || !is_key_use(&event.operation) {
            return;
        }
        let Some(key_id) = event.key_arn.as_deref().and_then(key_id_of_arn) else { return };
        let mut last_use = self.last_use.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last_use.insert(key_id.to_owned(), event.time);
    }

    fn audit_failed(&self, operation: &str) {
        self.audit_write_failures.with_label_values(&[operation]).inc();
    }

    fn handshake_signed(&self, key_id: &str, spec: KeySpec, outcome: &str) {
        self.operation(TLS_HANDSHAKE_SIGN, key_id, spec, outcome);
        if outcome == "success" {
            let now = crate::keystore::clock::Clock::now(&crate::keystore::clock::SystemClock);
            let mut last_use =
                self.last_use.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            last_use.insert(key_id.to_owned(), now);
        }
    }
}

/// The operation label of a TLS handshake signature in `kagi_key_operations_total`.
pub const TLS_HANDSHAKE_SIGN: &str = "TlsHandshakeSign";

/// Whether `operation` is a cryptographic use of its key (what "last used" means: the
/// operations GetKeyLastUsage tracks).
pub fn is_key_use(operation: &str) -> bool {
    matches!(
        operation,
        "Encrypt"
            | "Decrypt"
            | "ReEncrypt"
            | "GenerateDataKey"
            | "GenerateDataKeyWithoutPlaintext"
            | "GenerateDataKeyPair"
            | "GenerateDataKeyPairWithoutPlaintext"
            | "Sign"
            | "Verify"
            | "GenerateMac"
            | "VerifyMac"
            | "DeriveSharedSecret"
            | "GetPublicKey"
    )
}

/// The key id of a key ARN (`arn:…:key/ID`).
pub fn key_id_of_arn(arn: &str) -> Option<&str> {
    arn.rsplit_once(":key/").map(|(_, id)| id)
}
