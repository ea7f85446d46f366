//! [`KeyService`]: the only way the envelope (and the proxy) reach keys. Two calls: generate a
//! data key under a KMS key, decrypt a data key; plus resolving a key reference to the ARN
//! messages name it by.
//!
//! Implementations:
//! - [`KeystoreKeys`]: the embedded keystore, acting as a named principal under the key
//!   policies (authorized by `crate::policy::Authorizer`, the path the KMS API takes) and
//!   audited as that principal;
//! - [`RemoteKeys`]: a KMS endpoint (a running `kagi serve`, or AWS KMS) through the signed API
//!   client, for the `kagi` command while a server holds the data directory.
//!
//! Neither does I/O of its own: they delegate to the keystore and to the API client.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::EncryptionContext;
use crate::api::client::{CallError, Client};
use crate::crypto::AesKey;
use crate::keystore::operations::DataKeySize;
use crate::keystore::{self, ErrorKind, Keystore, OpContext};
use crate::policy::{self, Authorizer, KeyAccess};

/// The future a [`KeyService`] call returns.
pub type KeyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KeyServiceError>> + Send + 'a>>;

/// A data key, fresh from the key service.
pub struct DataKey {
    /// The data key (AES-256).
    pub plaintext: AesKey,
    /// The data key encrypted under the KMS key: a KMS ciphertext blob.
    pub ciphertext_blob: Vec<u8>,
    /// The ARN of the KMS key that encrypted it.
    pub key_arn: String,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").field("key_arn", &self.key_arn).finish_non_exhaustive()
    }
}

/// Where data keys come from. Held as `Arc<dyn KeyService>`.
///
/// `principal` names who the call acts for: implementations that authorize (the keystore's)
/// check the key policies for it and audit it; one that authenticates with credentials of its
/// own ([`RemoteKeys`]) acts as those credentials' principal instead.
pub trait KeyService: fmt::Debug + Send + Sync {
    /// GenerateDataKey: a new 32-byte data key under `key` (key id, key ARN, alias name or
    /// alias ARN), bound to `context`.
    ///
    /// # Errors
    /// The KMS error of the refusal (not found, disabled, pending deletion, access denied…).
    fn generate_data_key<'a>(
        &'a self,
        principal: &'a str,
        key: &'a str,
        context: &'a EncryptionContext,
    ) -> KeyFuture<'a, DataKey>;

    /// Decrypt: the data key in `blob`, which must be under `key` and bound to `context`.
    ///
    /// # Errors
    /// InvalidCiphertext for a blob that does not authenticate under `context`; IncorrectKey
    /// for a blob under another key; the state and access errors.
    fn decrypt_data_key<'a>(
        &'a self,
        principal: &'a str,
        blob: &'a [u8],
        context: &'a EncryptionContext,
        key: &'a str,
    ) -> KeyFuture<'a, AesKey>;

    /// The ARN of the key `key` names (messages name their key by ARN, whatever the caller
    /// typed).
    ///
    /// # Errors
    /// NotFound; the access errors of a remote DescribeKey.
    fn key_arn<'a>(&'a self, principal: &'a str, key: &'a str) -> KeyFuture<'a, String>;
}

/// A key service failure. The KMS error kind is kept, so callers can map it to a status.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum KeyServiceError {
    /// The key service refused or failed, with the KMS error kind of its answer.
    #[error("{}: {message}", kind.aws_name())]
    Kms {
        /// The KMS error kind.
        kind: ErrorKind,
        /// The key service's message (names keys by ARN; no secrets).
        message: String,
    },
    /// The key service could not be reached, or answered something that is not a KMS answer.
    #[error("the key service is unavailable: {0}")]
    Unavailable(String),
}

impl KeyServiceError {
    /// The KMS error kind; an unreachable service counts as DependencyTimeout (the server is
    /// at fault, not the caller).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Kms { kind, .. } => *kind,
            Self::Unavailable(_) => ErrorKind::DependencyTimeout,
        }
    }
}

impl From<keystore::Error> for KeyServiceError {
    fn from(error: keystore::Error) -> Self {
        Self::Kms { kind: error.kind(), message: error.message().to_owned() }
    }
}

// === impl KeystoreKeys ===

/// The embedded keystore as a [`KeyService`].
///
/// Each call is authorized for `principal` under the key's policy and grants (the same
/// [`Authorizer`] path as the KMS API, with the IAM actions `kms:GenerateDataKey` and
/// `kms:Decrypt`), and audited as `principal` from `source`.
#[derive(Debug)]
pub struct KeystoreKeys {
    keystore: Arc<Keystore>,
    /// `None`: key policies are not consulted ([`KeystoreKeys::without_key_policies`]).
    authorizer: Option<Authorizer>,
    source: String,
}

impl KeystoreKeys {
    /// A key service over `keystore`; calls are audited as coming from `source` (`proxy`).
    pub fn new(keystore: Arc<Keystore>, source: impl Into<String>) -> Self {
        Self { keystore, authorizer: Some(Authorizer::new()), source: source.into() }
    }

    /// A key service over `keystore` that does not consult key policies, for the local
    /// operator (the `kagi` command on a stopped server's data directory).
    ///
    /// # Security
    /// Skips authorization, as every direct `kagi` command does: whoever holds the data
    /// directory and the root key can use every key anyway. Calls are still audited. Never
    /// use it for a caller that arrives over the network.
    pub fn without_key_policies(keystore: Arc<Keystore>, source: impl Into<String>) -> Self {
        Self { keystore, authorizer: None, source: source.into() }
    }

    fn op_context(&self, principal: &str) -> Result<OpContext, KeyServiceError> {
        Ok(OpContext {
            principal: principal.to_owned(),
            source: self.source.clone(),
            request_id: self.keystore.new_uuid()?,
        })
    }

    /// Authorizes `action` on `key` for the call `ctx` describes; returns the key's ARN.
    async fn authorize(
        &self,
        ctx: &OpContext,
        operation: &str,
        action: &str,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<String, KeyServiceError> {
        let target = self.keystore.access_target(key).await?;
        if let Some(authorizer) = &self.authorizer {
            let principal_arn =
                policy::user_arn(&self.keystore.partition().account, &ctx.principal);
            let access = KeyAccess {
                principal_arn: &principal_arn,
                operation,
                action,
                context: Some(context),
            };
            authorizer.authorize(&self.keystore, ctx, &target, access, |_| true).await?;
        }
        Ok(target.arn().to_owned())
    }
}

impl KeyService for KeystoreKeys {
    fn generate_data_key<'a>(
        &'a self,
        principal: &'a str,
        key: &'a str,
        context: &'a EncryptionContext,
    ) -> KeyFuture<'a, DataKey> {
        Box::pin(async move {
            let ctx = self.op_context(principal)?;
            let arn = self
                .authorize(&ctx, "GenerateDataKey", "kms:GenerateDataKey", key, context)
                .await?;
            // The key authorized is the key used, even if an alias moves meanwhile.
            let out = self
                .keystore
                .generate_data_key(&ctx, &arn, DataKeySize::Aes256, context, true)
                .await?;
            let plaintext = out.plaintext.ok_or_else(|| internal("no plaintext data key"))?;
            let plaintext = AesKey::from_slice(plaintext.expose_secret())
                .map_err(|_| internal("the data key is not 32 bytes"))?;
            Ok(DataKey { plaintext, ciphertext_blob: out.ciphertext_blob, key_arn: out.key_arn })
        })
    }

    fn decrypt_data_key<'a>(
        &'a self,
        principal: &'a str,
        blob: &'a [u8],
        context: &'a EncryptionContext,
        key: &'a str,
    ) -> KeyFuture<'a, AesKey> {
        Box::pin(async move {
            let ctx = self.op_context(principal)?;
            let arn = self.authorize(&ctx, "Decrypt", "kms:Decrypt", key, context).await?;
            let out = self.keystore.decrypt(&ctx, blob, context, Some(&arn), None).await?;
            AesKey::from_slice(out.plaintext.expose_secret())
                .map_err(|_| invalid_ciphertext("the blob does not hold a 32-byte data key"))
        })
    }

    fn key_arn<'a>(&'a self, _principal: &'a str, key: &'a str) -> KeyFuture<'a, String> {
        // Resolving a name is not a use of the key: no authorization, no audit line. The
        // decryption that follows is both.
        Box::pin(async move { Ok(self.keystore.access_target(key).await?.arn().to_owned()) })
    }
}

// === impl RemoteKeys ===

/// A KMS endpoint as a [`KeyService`], through the SigV4-signing API client: GenerateDataKey,
/// Decrypt and DescribeKey calls, made as the client's credentials' principal (the
/// `principal` argument is not sent; the endpoint knows who signs).
pub struct RemoteKeys {
    client: tokio::sync::Mutex<Client>,
}

impl fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKeys").finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// A key service calling through `client` (one call at a time).
    pub fn new(client: Client) -> Self {
        Self { client: tokio::sync::Mutex::new(client) }
    }

    async fn call(&self, operation: &str, input: Value) -> Result<Value, KeyServiceError> {
        let mut client = self.client.lock().await;
        client.call(operation, &input).await.map_err(|error| match error {
            CallError::Api(remote) => match ErrorKind::from_aws_name(&remote.code_name) {
                Some(kind) => KeyServiceError::Kms { kind, message: remote.message },
                None => KeyServiceError::Unavailable(format!(
                    "{operation} answered HTTP {} {}: {}",
                    remote.status, remote.code_name, remote.message
                )),
            },
            CallError::Transport(error) => KeyServiceError::Unavailable(error.to_string()),
        })
    }
}

fn answer_blob(answer: &Value, name: &str) -> Result<Vec<u8>, KeyServiceError> {
    answer[name]
        .as_str()
        .and_then(|text| BASE64.decode(text).ok())
        .ok_or_else(|| KeyServiceError::Unavailable(format!("the answer has no base64 {name}")))
}

fn answer_key(answer: &Value, name: &str) -> Result<AesKey, KeyServiceError> {
    let bytes = zeroize::Zeroizing::new(answer_blob(answer, name)?);
    AesKey::from_slice(&bytes)
        .map_err(|_| KeyServiceError::Unavailable(format!("the answer's {name} is not 32 bytes")))
}

impl KeyService for RemoteKeys {
    fn generate_data_key<'a>(
        &'a self,
        _principal: &'a str,
        key: &'a str,
        context: &'a EncryptionContext,
    ) -> KeyFuture<'a, DataKey> {
        Box::pin(async move {
            let input = json!({"KeyId": key, "EncryptionContext": context, "KeySpec": "AES_256"});
            let answer = self.call("GenerateDataKey", input).await?;
            let key_arn = answer["KeyId"]
                .as_str()
                .ok_or_else(|| KeyServiceError::Unavailable("the answer has no KeyId".into()))?
                .to_owned();
            Ok(DataKey {
                plaintext: answer_key(&answer, "Plaintext")?,
                ciphertext_blob: answer_blob(&answer, "CiphertextBlob")?,
                key_arn,
            })
        })
    }

    fn decrypt_data_key<'a>(
        &'a self,
        _principal: &'a str,
        blob: &'a [u8],
        context: &'a EncryptionContext,
        key: &'a str,
    ) -> KeyFuture<'a, AesKey> {
        Box::pin(async move {
            let input = json!({
                "CiphertextBlob": BASE64.encode(blob),
                "EncryptionContext": context,
                "KeyId": key,
            });
            let answer = self.call("Decrypt", input).await?;
            answer_key(&answer, "Plaintext")
        })
    }

    fn key_arn<'a>(&'a self, _principal: &'a str, key: &'a str) -> KeyFuture<'a, String> {
        Box::pin(async move {
            if is_key_arn(key) {
                return Ok(key.to_owned());
            }
            let answer = self.call("DescribeKey", json!({"KeyId": key})).await?;
            answer["KeyMetadata"]["Arn"].as_str().map(str::to_owned).ok_or_else(|| {
                KeyServiceError::Unavailable("the DescribeKey answer has no Arn".into())
            })
        })
    }
}

/// Whether `key` is a key ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`), not an alias ARN.
pub fn is_key_arn(key: &str) -> bool {
    let parts: Vec<&str> = key.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "kms"
        && parts[5].strip_prefix("key/").is_some_and(|id| !id.is_empty())
}

fn internal(message: &str) -> KeyServiceError {
    KeyServiceError::Kms { kind: ErrorKind::Internal, message: message.to_owned() }
}

fn invalid_ciphertext(message: &str) -> KeyServiceError {
    KeyServiceError::Kms { kind: ErrorKind::InvalidCiphertext, message: message.to_owned() }
}
