//! The audit trail: one [`AuditEvent`] per keystore operation, written by an [`AuditSink`].
//!
//! An event names who did what to which key and how it ended; it never carries plaintext, key
//! material or secrets, and carries encryption-context keys only (values may be sensitive).
//! Sinks here: [`JsonLinesSink`] (one JSON object per line, fsynced) and [`NullSink`] (tests).
//! The keystore fails an operation whose event cannot be written (fail closed).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// One audited operation. Its JSON shape is versioned by `v`.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEvent {
    /// Shape version of this record.
    pub v: u32,
    /// Unix seconds.
    pub time: i64,
    /// The request id.
    pub request_id: String,
    /// Who called.
    pub principal: String,
    /// From where.
    pub source: String,
    /// The KMS operation name (`Encrypt`), or a background event (`DeleteKey`, `RotateKey`).
    pub operation: String,
    /// The key's ARN, when the operation concerns one key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
    /// The key material id used, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_material_id: Option<String>,
    /// The encryption context's keys (never its values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encryption_context_keys: Vec<String>,
    /// `success` or `failure`.
    pub outcome: &'static str,
    /// The AWS error name on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
}

/// A failure to record an event.
#[derive(Debug, thiserror::Error)]
#[error("audit write failed: {0}")]
pub struct AuditError(pub String);

/// Where events go.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records `event` durably before returning.
    ///
    /// # Errors
    /// When the event could not be written; the caller then fails its operation.
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError>;
}

/// Discards events. For tests and benchmarks that measure the keystore alone.
#[derive(Debug, Default)]
pub struct NullSink;

impl AuditSink for NullSink {
    fn record(&self, _: &AuditEvent) -> Result<(), AuditError> {
        Ok(())
    }
}

/// Appends one JSON line per event to a file and syncs it.
#[derive(Debug)]
pub struct JsonLinesSink {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonLinesSink {
    /// Opens (creating) `path` for appending, mode 0600.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .map_err(|error| AuditError(format!("{}: {error}", path.display())))?;
        Ok(Self { path: path.to_owned(), file: Mutex::new(file) })
    }
}

impl AuditSink for JsonLinesSink {
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(event).map_err(|error| AuditError(error.to_string()))?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|error| AuditError(format!("{}: {error}", self.path.display())))
    }
}
