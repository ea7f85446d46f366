//! What authorization needs from the keystore: which key a request targets and its policy, and
//! the key policy operations (GetKeyPolicy, PutKeyPolicy). Policy *evaluation* lives in
//! `crate::policy`; the keystore only stores the document.

use std::sync::Arc;

use super::ciphertext::BlobHeader;
use super::key::GrantRecord;
use super::lifecycle::OperationClass;
use super::{Error, Keystore, LoadedKey, OpContext};

/// The key a request targets, as authorization sees it.
#[derive(Clone, Debug)]
pub struct AccessTarget {
    /// The key as loaded (shared with the cache, not copied per call).
    key: Arc<LoadedKey>,
}

impl AccessTarget {
    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key.record.id
    }

    /// The key ARN (policies name resources by it).
    pub fn arn(&self) -> &str {
        &self.key.arn
    }

    /// The key record's revision: a cached parsed policy is valid while this is unchanged.
    pub fn revision(&self) -> u64 {
        self.key.record.revision
    }

    /// The key policy document.
    pub fn policy(&self) -> &str {
        &self.key.record.policy
    }

    /// The key's grants, as of this request.
    pub fn grants(&self) -> &[GrantRecord] {
        &self.key.record.grants
    }

    /// The key's spec (a bounded metric label).
    pub fn spec(&self) -> super::KeySpec {
        self.key.record.spec
    }
}

impl Keystore {
    /// Region and account of this keystore's ARNs.
    pub fn partition(&self) -> &super::Partition {
        &self.partition
    }

    /// The key `key_ref` names (id, ARN, alias or alias ARN), with its policy.
    ///
    /// # Errors
    /// NotFoundException, InvalidArnException for a malformed reference; the key's state is
    /// not checked here (the operation does that after authorization).
    pub async fn access_target(&self, key_ref: &str) -> Result<AccessTarget, Error> {
        let key = self.resolve(key_ref, true).await?;
        Ok(AccessTarget { key })
    }

    /// Whether the key `key_ref` names is in a state to encrypt, sign or MAC: what a dry run
    /// checks beyond authorization, so it answers DryRunOperationException only for a request
    /// that would succeed.
    ///
    /// # Errors
    /// NotFoundException; DisabledException or KMSInvalidStateException as the key's state
    /// gives.
    pub async fn check_usable(&self, key_ref: &str) -> Result<(), Error> {
        let key = self.resolve(key_ref, true).await?;
        self.check_loaded_usable(&key)
    }

    /// The key id a kagi ciphertext blob names, if it parses (not yet authenticated).
    pub fn ciphertext_key_id(blob: &[u8]) -> Option<String> {
        BlobHeader::decode(blob)
            .map(|(header, _)| uuid::Uuid::from_bytes(header.key_id).to_string())
    }

    /// PutKeyPolicy: replaces the key's policy. The caller has validated the document; `notes`
    /// (what of it kagi does not evaluate) go to the audit line only.
    ///
    /// # Errors
    /// NotFoundException; KMSInvalidStateException for a key pending deletion.
    pub async fn put_key_policy(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        policy: &str,
        notes: Vec<String>,
    ) -> Result<(), Error> {
        let trail = self.trail(ctx, "PutKeyPolicy").with_notes(notes);
        let outcome = self
            .update(&trail, key_ref, false, OperationClass::Manage, |key, _| {
                policy.clone_into(&mut key.policy);
                Ok(Vec::new())
            })
            .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// Records an operation that was refused before it reached the keystore (access denied,
    /// throttled), so every denial is in the trail.
    ///
    /// # Errors
    /// KMSInternalException when the record cannot be written.
    pub async fn audit_refusal(
        &self,
        ctx: &OpContext,
        operation: &str,
        key_arn: Option<&str>,
        error: &Error,
    ) -> Result<(), Error> {
        self.trail(ctx, operation).refused(key_arn, error).await
    }
}
