//! The audit trail: one [`AuditEvent`] per keystore operation or background event, written by
//! an [`AuditSink`].
//!
//! An event names who did what to which key and how it ended; it never carries plaintext, key
//! material or secrets. Its encryption context is written as [`ContextMode`] says: keys only
//! (the default), as given, or each value HMAC'd under a key of the trail's own.
//!
//! | sink | what it is for |
//! |---|---|
//! | [`FileSink`] | the trail: JSON lines in a hash chain (`chain.rs`), group commit, rotation |
//! | [`NullSink`] | tests and benchmarks that measure the keystore alone |
//!
//! The keystore fails an operation whose event cannot be written (fail closed), and for a change
//! writes the event before committing it. `verify.rs` checks a trail (`kagi audit verify`) and
//! reads it back (`kagi audit show`).
//!
//! This module does not decide what is audited: the keystore does.

pub mod chain;
mod file;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) use file::render_keys_only;
pub use file::{FileSink, SinkStats};

/// The shape version of [`AuditRecord`]: 1 was the unchained `audit.log` (context keys only);
/// 2 adds `seq`, `prev` and the context modes.
pub const RECORD_VERSION: u32 = 2;

/// How long the keystore waits for an event to be durable before failing the operation, unless
/// the sink says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One audited operation, as the keystore hands it to a sink. Not serialized as such: a sink
/// renders it into an [`AuditRecord`], applying its [`ContextMode`].
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// Unix seconds, from the keystore's clock.
    pub time: i64,
    /// The request id.
    pub request_id: String,
    /// Who called.
    pub principal: String,
    /// From where.
    pub source: String,
    /// The KMS operation name (`Encrypt`), or a background event (`DeleteKey`, `RotateKey`,
    /// `KeyMaterialExpired`).
    pub operation: String,
    /// The key's ARN, when the operation concerns one key.
    pub key_arn: Option<String>,
    /// The key material id used or made, when there is one.
    pub key_material_id: Option<String>,
    /// The encryption context as the caller gave it. A sink writes only what its
    /// [`ContextMode`] allows.
    pub encryption_context: BTreeMap<String, String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The AWS error name on failure.
    pub error_code: Option<&'static str>,
    /// Remarks the caller does not see, e.g. the parts of a key policy kagi does not evaluate.
    pub notes: Vec<String>,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It succeeded; for a change, it is about to be committed (a `failure` line with the same
    /// request id follows if the commit then fails).
    Success,
    /// It failed with `error_code`.
    Failure,
}

/// One line of the trail: the serialization boundary, versioned by `v`
/// ([`RECORD_VERSION`]). Fields are only ever added.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct AuditRecord {
    /// Shape version.
    pub v: u32,
    /// Unix seconds.
    pub time: i64,
    /// The request id.
    pub request_id: String,
    /// Who called.
    pub principal: String,
    /// From where.
    pub source: String,
    /// The operation or background event.
    pub operation: String,
    /// The key's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
    /// The key material id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_material_id: Option<String>,
    /// The encryption context's keys ([`ContextMode::KeysOnly`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encryption_context_keys: Vec<String>,
    /// The encryption context as given ([`ContextMode::AsGiven`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<BTreeMap<String, String>>,
    /// Each context value as hex HMAC-SHA256 under the trail's key ([`ContextMode::Hmac`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_hmac: Option<BTreeMap<String, String>>,
    /// How it ended.
    pub outcome: Outcome,
    /// The AWS error name on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Remarks the caller does not see (parts of a key policy kagi does not evaluate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The record's number in the chain (from 1); set by the sink as it writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The hex SHA-256 of the previous line; set by the sink as it writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// What of an encryption context a line carries.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextMode {
    /// Keys and values as given. Values may be sensitive: choose this only when they are not.
    AsGiven,
    /// Keys only (the default).
    #[default]
    KeysOnly,
    /// Keys, and each value as HMAC-SHA256 under a per-trail secret key: equal values can be
    /// matched (compute the HMAC of a value to search for it) but not read.
    Hmac,
}

impl ContextMode {
    /// The configuration name: `as-given`, `keys-only` or `hmac`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AsGiven => "as-given",
            Self::KeysOnly => "keys-only",
            Self::Hmac => "hmac",
        }
    }

    /// Parses a configuration name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::AsGiven, Self::KeysOnly, Self::Hmac].into_iter().find(|mode| mode.name() == name)
    }
}

/// The audit trail's configuration. Relative paths are taken from the data directory.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AuditConfig {
    /// The trail's directory. Default `audit` (that is, `DATA_DIR/audit`).
    pub dir: PathBuf,
    /// A new file starts once the current one has reached this many bytes (checked before each
    /// batch, so a file may pass it by one batch). Default 64 MiB.
    pub max_file_bytes: u64,
    /// A new file starts with the first record of each UTC day (by event time). Default true.
    pub rotate_daily: bool,
    /// What of an encryption context a line carries. Default [`ContextMode::KeysOnly`].
    pub context_mode: ContextMode,
    /// The HMAC key of [`ContextMode::Hmac`] (32 bytes, mode 0600, made on first use). Kept
    /// outside the trail's directory so a copy of the trail does not carry it. Default
    /// `audit-hmac.key`.
    pub hmac_key_file: PathBuf,
    /// How long an operation waits for its line to be durable before it fails with
    /// KMSInternalException. Default 5 s.
    pub timeout: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("audit"),
            max_file_bytes: 64 << 20,
            rotate_daily: true,
            context_mode: ContextMode::KeysOnly,
            hmac_key_file: PathBuf::from("audit-hmac.key"),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The chain head persisted in the trail directory `dir` (`head.json`), if it exists and reads
/// as one. A writer rewrites it in place, so a reader may meet it half-written (`None`): retry.
pub fn persisted_head(dir: &std::path::Path) -> Option<chain::ChainHead> {
    file::read_head(&dir.join(chain::HEAD_FILE))
}

/// A failure to record an event.
#[derive(Clone, Debug, thiserror::Error)]
#[error("audit write failed: {0}")]
pub struct AuditError(pub String);

/// A boxed future, so `AuditSink` can be used as `dyn AuditSink`.
pub type AuditFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AuditError>> + Send + 'a>>;

/// Where events go.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records `event`. The sink takes what it needs from `event` before returning; the future
    /// completes when the event is durable.
    ///
    /// # Errors
    /// When the event could not be written; the caller then fails its operation.
    fn record(&self, event: &AuditEvent) -> AuditFuture<'_>;

    /// How long the keystore waits for [`AuditSink::record`] before failing the operation.
    fn timeout(&self) -> Duration {
        DEFAULT_TIMEOUT
    }
}

/// Discards events. For tests and benchmarks that measure the keystore alone.
#[derive(Debug, Default)]
pub struct NullSink;

impl AuditSink for NullSink {
    fn record(&self, _: &AuditEvent) -> AuditFuture<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests;
