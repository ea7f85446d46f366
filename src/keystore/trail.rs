//! How an operation reaches the audit trail: a [`Trail`] per operation, fail closed.
//!
//! A read or crypto operation writes one line when it ends ([`Trail::finish`]) and returns its
//! result only if that line was written. A change writes its line before the commit
//! ([`Trail::before_commit`]): if the line cannot be written the change is not made, and if
//! the commit then fails a second, failure line with the same request id follows
//! ([`Trail::commit_failed`]). Every wait on the sink is bounded by [`AuditSink::timeout`].
//!
//! [`AuditSink::timeout`]: crate::audit::AuditSink::timeout

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{Error, ErrorKind};
use super::{EncryptionContext, Keystore, OpContext};
use crate::audit::{AuditEvent, Outcome};

/// The audit lines of one operation.
#[derive(Debug)]
pub(crate) struct Trail<'a> {
    keystore: &'a Keystore,
    ctx: &'a OpContext,
    operation: &'a str,
    /// A line of this operation was written (or attempted): [`Trail::finish`] writes no more.
    written: AtomicBool,
    /// A line of this operation could not be written.
    audit_failed: AtomicBool,
    /// Remarks every line of this operation carries.
    notes: Vec<String>,
}

impl Keystore {
    /// The trail of one operation.
    pub(crate) fn trail<'a>(&'a self, ctx: &'a OpContext, operation: &'a str) -> Trail<'a> {
        Trail {
            keystore: self,
            ctx,
            operation,
            written: AtomicBool::new(false),
            audit_failed: AtomicBool::new(false),
            notes: Vec::new(),
        }
    }
}

impl Trail<'_> {
    /// Adds remarks to every line of this operation (never shown to the caller).
    #[must_use]
    pub(crate) fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes = notes;
        self
    }

    /// The operation's name.
    pub(crate) fn operation(&self) -> &str {
        self.operation
    }

    /// Whether a line of this operation could not be written.
    pub(crate) fn audit_failed(&self) -> bool {
        self.audit_failed.load(Ordering::SeqCst)
    }

    /// Writes the success line of a change about to be committed.
    ///
    /// # Errors
    /// KMSInternalException when the line is not durable within the sink's timeout: the caller
    /// must not commit.
    pub(crate) async fn before_commit(
        &self,
        key_arn: &str,
        key_material_id: Option<&str>,
    ) -> Result<(), Error> {
        self.written.store(true, Ordering::SeqCst);
        let event = self.event(Some(key_arn), key_material_id, None, None);
        self.write(event).await
    }

    /// Writes the failure line of a change whose commit failed after its success line. Best
    /// effort: the commit's error is what the caller gets either way.
    pub(crate) async fn commit_failed(&self, key_arn: &str, error: &Error) {
        let event = self.event(Some(key_arn), None, None, Some(error));
        let _ = self.write(event).await;
        if error.kind() == ErrorKind::Conflict {
            // The change is retried: its next attempt, or the error that ends it, gets a line.
            self.written.store(false, Ordering::SeqCst);
        }
    }

    /// Ends the operation: writes its line unless a change already did, and returns `outcome`
    /// only if that line was written.
    ///
    /// # Errors
    /// `outcome`'s error, or KMSInternalException when the line could not be written.
    pub(crate) async fn finish<T>(
        &self,
        outcome: Result<T, Error>,
        ids: impl FnOnce(&T) -> (Option<&str>, Option<&str>),
        context: Option<&EncryptionContext>,
    ) -> Result<T, Error> {
        if self.written.swap(true, Ordering::SeqCst) {
            return outcome;
        }
        let event = match &outcome {
            Ok(value) => {
                let (key_arn, key_material_id) = ids(value);
                self.event(key_arn, key_material_id, context, None)
            }
            Err(error) => self.event(error.key_arn(), None, context, Some(error)),
        };
        self.write(event).await?;
        outcome
    }

    /// Commits a change to `key_arn` after writing its success line: `commit` is not called
    /// unless the line is durable; if it fails, its failure line follows.
    ///
    /// # Errors
    /// KMSInternalException when the line cannot be written (nothing is committed), or the
    /// commit's error.
    pub(crate) async fn commit<T, F, Fut>(
        &self,
        key_arn: &str,
        key_material_id: Option<&str>,
        commit: F,
    ) -> Result<T, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.before_commit(key_arn, key_material_id).await?;
        let result = commit().await;
        if let Err(error) = &result {
            self.commit_failed(key_arn, error).await;
        }
        result
    }

    /// Records an operation refused before it ran (access denied, throttled), naming the key
    /// it was refused on.
    ///
    /// # Errors
    /// KMSInternalException when the line could not be written.
    pub(crate) async fn refused(&self, key_arn: Option<&str>, error: &Error) -> Result<(), Error> {
        self.written.store(true, Ordering::SeqCst);
        let event = self.event(key_arn, None, None, Some(error));
        self.write(event).await
    }

    /// [`Trail::finish`] for operations whose result names the key ARN alone.
    pub(crate) async fn finish_key<T>(
        &self,
        outcome: Result<T, Error>,
        arn: impl FnOnce(&T) -> &str,
    ) -> Result<T, Error> {
        self.finish(outcome, |value| (Some(arn(value)), None), None).await
    }

    fn event(
        &self,
        key_arn: Option<&str>,
        key_material_id: Option<&str>,
        context: Option<&EncryptionContext>,
        error: Option<&Error>,
    ) -> AuditEvent {
        AuditEvent {
            time: self.keystore.now(),
            request_id: self.ctx.request_id.clone(),
            principal: self.ctx.principal.clone(),
            source: self.ctx.source.clone(),
            operation: self.operation.to_owned(),
            key_arn: key_arn.map(str::to_owned),
            key_material_id: key_material_id.map(str::to_owned),
            encryption_context: context.cloned().unwrap_or_default(),
            outcome: if error.is_some() { Outcome::Failure } else { Outcome::Success },
            error_code: error.map(|e| e.kind().aws_name()),
            notes: self.notes.clone(),
        }
    }

    /// Writes `event` and waits, at most the sink's timeout, for it to be durable.
    async fn write(&self, event: AuditEvent) -> Result<(), Error> {
        let sink = &self.keystore.audit;
        let timeout = sink.timeout();
        let why = match tokio::time::timeout(timeout, sink.record(&event)).await {
            Ok(Ok(())) => {
                if let Some(observer) = self.keystore.observer() {
                    observer.recorded(&event);
                }
                return Ok(());
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("the audit line was not durable within {} ms", timeout.as_millis()),
        };
        self.audit_failed.store(true, Ordering::SeqCst);
        if let Some(observer) = self.keystore.observer() {
            observer.audit_failed(&event.operation);
        }
        if event.outcome == Outcome::Success {
            // The success line may still land later (a sink that queued it before the wait gave
            // up): queue its correction without waiting, so the trail then shows the failure.
            let correction = AuditEvent {
                outcome: Outcome::Failure,
                error_code: Some(ErrorKind::Internal.aws_name()),
                ..event
            };
            drop(sink.record(&correction));
        }
        // The cause names the trail's files (a full disk, say): the operator's business. The
        // command line is the operator, and is told; a client over the network learns only
        // that the operation was not audited, and the server's log has the cause.
        if self.ctx.source == OpContext::CLI {
            return Err(Error::internal(format!("the operation could not be audited: {why}")));
        }
        tracing::error!(target: "kagi::audit", operation = %self.operation, reason = %why, "an operation could not be audited and was refused");
        Err(Error::internal("the operation could not be audited (the server's log has the cause)"))
    }
}
