//! The keystore operations certificates need, behind one trait, [`CertKeys`]: create a key, alias
//! it, read its public key, sign a digest, import key material. Two implementations:
//!
//! - [`EmbeddedKeys`]: the keystore opened in this process (`kagi serve`, or a command on a
//!   stopped server's data directory), as the caller's [`OpContext`];
//! - [`RemoteKeys`]: a running server's keystore, through its KMS API with kagi's own
//!   [`Client`], SigV4-signed with the caller's credentials, so the server authorizes and audits
//!   each operation as that principal, like any API call.
//!
//! Every operation is the keystore's own; this module decides nothing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::api::client::{CallError, Client};
use crate::crypto::{KeyPairSpec, SigningAlgorithm};
use crate::keystore::operations::MessageType;
use crate::keystore::{
    self, CreateKeyRequest, ErrorKind, ImportParameters, ImportRequest, ImportType, KeyUsage,
    Keystore, OpContext, WrappingAlgorithm,
};

/// A boxed future, so [`CertKeys`] can be used as `dyn CertKeys`.
pub(crate) type KeysFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, keystore::Error>> + Send + 'a>>;

/// An asymmetric SIGN_VERIFY key, as a certificate needs it.
#[derive(Clone, Debug)]
pub(crate) struct CertKey {
    /// The key id.
    pub(crate) key_id: String,
    /// The key ARN.
    pub(crate) key_arn: String,
    /// The key pair's spec.
    pub(crate) spec: KeyPairSpec,
    /// DER SubjectPublicKeyInfo.
    pub(crate) public_key: Vec<u8>,
}

/// The keystore operations of certificate issuance, renewal and import.
pub(crate) trait CertKeys: fmt::Debug + Send + Sync {
    /// CreateKey; the new key's id.
    fn create_key(&self, request: CreateKeyRequest) -> KeysFuture<'_, String>;

    /// CreateAlias: `alias` names `key_id`.
    fn create_alias<'a>(&'a self, alias: &'a str, key_id: &'a str) -> KeysFuture<'a, ()>;

    /// UpdateAlias: `alias` moves to `key_id`.
    fn update_alias<'a>(&'a self, alias: &'a str, key_id: &'a str) -> KeysFuture<'a, ()>;

    /// The asymmetric SIGN_VERIFY key `key_ref` (key id, ARN or alias) names; an
    /// InvalidKeyUsageException for any other key.
    fn signing_key<'a>(&'a self, key_ref: &'a str) -> KeysFuture<'a, CertKey>;

    /// Sign of a digest the caller computed; the signature.
    fn sign_digest<'a>(
        &'a self,
        key_id: &'a str,
        digest: &'a [u8],
        algorithm: SigningAlgorithm,
    ) -> KeysFuture<'a, Vec<u8>>;

    /// GetParametersForImport.
    fn import_parameters<'a>(
        &'a self,
        key_id: &'a str,
        algorithm: WrappingAlgorithm,
        wrapping_spec: KeyPairSpec,
    ) -> KeysFuture<'a, ImportParameters>;

    /// ImportKeyMaterial.
    fn import_key_material<'a>(
        &'a self,
        key_id: &'a str,
        request: ImportRequest<'a>,
    ) -> KeysFuture<'a, ()>;
}

/// The keystore opened in this process, every operation as `ctx`.
#[derive(Debug)]
pub(crate) struct EmbeddedKeys<'k> {
    pub(crate) keystore: &'k Keystore,
    pub(crate) ctx: &'k OpContext,
}

impl CertKeys for EmbeddedKeys<'_> {
    fn create_key(&self, request: CreateKeyRequest) -> KeysFuture<'_, String> {
        Box::pin(async move { Ok(self.keystore.create_key(self.ctx, request).await?.record.id) })
    }

    fn create_alias<'a>(&'a self, alias: &'a str, key_id: &'a str) -> KeysFuture<'a, ()> {
        Box::pin(self.keystore.create_alias(self.ctx, alias, key_id))
    }

    fn update_alias<'a>(&'a self, alias: &'a str, key_id: &'a str) -> KeysFuture<'a, ()> {
        Box::pin(self.keystore.update_alias(self.ctx, alias, key_id))
    }

    fn signing_key<'a>(&'a self, key_ref: &'a str) -> KeysFuture<'a, CertKey> {
        Box::pin(async move {
            let info = self.keystore.signing_key_info(key_ref).await?;
            Ok(CertKey {
                key_id: info.key_id,
                key_arn: info.key_arn,
                spec: info.spec,
                public_key: info.public_key,
            })
        })
    }

    fn sign_digest<'a>(
        &'a self,
        key_id: &'a str,
        digest: &'a [u8],
        algorithm: SigningAlgorithm,
    ) -> KeysFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let (signature, _) = self
                .keystore
                .sign(self.ctx, key_id, digest, MessageType::Digest, algorithm)
                .await?;
            Ok(signature)
        })
    }

    fn import_parameters<'a>(
        &'a self,
        key_id: &'a str,
        algorithm: WrappingAlgorithm,
        wrapping_spec: KeyPairSpec,
    ) -> KeysFuture<'a, ImportParameters> {
        Box::pin(self.keystore.get_parameters_for_import(
            self.ctx,
            key_id,
            algorithm,
            wrapping_spec,
        ))
    }

    fn import_key_material<'a>(
        &'a self,
        key_id: &'a str,
        request: ImportRequest<'a>,
    ) -> KeysFuture<'a, ()> {
        Box::pin(async move {
            self.keystore.import_key_material(self.ctx, key_id, request).await?;
            Ok(())
        })
    }
}

/// A running server's keystore, through its KMS API.
#[derive(Debug)]
pub(crate) struct RemoteKeys {
    /// One connection; the calls of a command follow one another.
    client: tokio::sync::Mutex<Client>,
}

impl RemoteKeys {
    /// The keystore behind the server `client` is connected to.
    pub(crate) fn new(client: Client) -> Self {
        Self { client: tokio::sync::Mutex::new(client) }
    }

    /// Calls `operation`; an AWS error answer becomes the keystore error of that name.
    async fn call(&self, operation: &str, input: Value) -> Result<Value, keystore::Error> {
        let mut client = self.client.lock().await;
        client.call(operation, &input).await.map_err(|error| match error {
            CallError::Api(remote) => match ErrorKind::from_aws_name(&remote.code_name) {
                Some(kind) => keystore::Error::new(kind, remote.message),
                None => keystore::Error::new(
                    ErrorKind::Internal,
                    format!("the server answered {}: {}", remote.code_name, remote.message),
                ),
            },
            CallError::Transport(error) => keystore::Error::new(
                ErrorKind::DependencyTimeout,
                format!("the server did not answer {operation}: {error}"),
            ),
        })
    }
}

impl CertKeys for RemoteKeys {
    fn create_key(&self, request: CreateKeyRequest) -> KeysFuture<'_, String> {
        Box::pin(async move {
            let CreateKeyRequest { spec, usage, origin, description, tags, policy } = request;
            let tags: Vec<Value> =
                tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect();
            let mut input = json!({
                "KeySpec": spec.kms_name(),
                "Origin": origin.kms_name(),
                "Description": description,
                "Tags": tags,
            });
            if let Some(usage) = usage {
                input["KeyUsage"] = json!(usage.kms_name());
            }
            if let Some(policy) = policy {
                input["Policy"] = json!(policy);
            }
            let created = self.call("CreateKey", input).await?;
            Ok(text(&created["KeyMetadata"], "KeyId")?.to_owned())
        })
    }

    fn create_alias<'a>(&'a self, alias: &'a str, key_id: &'a str) -> KeysFuture<'a, ()> {
        Box::pin(async move {
            self.call("CreateAlias", json!({"AliasName": alias, "TargetKeyId": key_id})).await?;
            Ok(())
        })
    }

    fn update_alias<'a>(&'a self, alias: &'a str, key_id: &'a str) -> KeysFuture<'a, ()> {
        Box::pin(async move {
            self.call("UpdateAlias", json!({"AliasName": alias, "TargetKeyId": key_id})).await?;
            Ok(())
        })
    }

    fn signing_key<'a>(&'a self, key_ref: &'a str) -> KeysFuture<'a, CertKey> {
        Box::pin(async move {
            let answer = self.call("GetPublicKey", json!({"KeyId": key_ref})).await?;
            let key_arn = text(&answer, "KeyId")?.to_owned();
            let spec = KeyPairSpec::from_kms_name(text(&answer, "KeySpec")?);
            let signs = text(&answer, "KeyUsage")? == KeyUsage::SignVerify.kms_name();
            let Some(spec) = spec.filter(|_| signs) else {
                return Err(keystore::Error::new(
                    ErrorKind::InvalidKeyUsage,
                    format!("{key_arn} is not an asymmetric SIGN_VERIFY key"),
                ));
            };
            // A key ARN ends in `:key/KEY-ID`.
            let key_id = key_arn
                .rsplit_once(":key/")
                .map(|(_, key_id)| key_id.to_owned())
                .ok_or_else(|| answer_error("KeyId"))?;
            Ok(CertKey { key_id, key_arn, spec, public_key: blob(&answer, "PublicKey")? })
        })
    }

    fn sign_digest<'a>(
        &'a self,
        key_id: &'a str,
        digest: &'a [u8],
        algorithm: SigningAlgorithm,
    ) -> KeysFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let input = json!({
                "KeyId": key_id,
                "Message": BASE64.encode(digest),
                "MessageType": "DIGEST",
                "SigningAlgorithm": algorithm.kms_name(),
            });
            blob(&self.call("Sign", input).await?, "Signature")
        })
    }

    fn import_parameters<'a>(
        &'a self,
        key_id: &'a str,
        algorithm: WrappingAlgorithm,
        wrapping_spec: KeyPairSpec,
    ) -> KeysFuture<'a, ImportParameters> {
        Box::pin(async move {
            let input = json!({
                "KeyId": key_id,
                "WrappingAlgorithm": algorithm.kms_name(),
                "WrappingKeySpec": wrapping_spec.kms_name(),
            });
            let answer = self.call("GetParametersForImport", input).await?;
            Ok(ImportParameters {
                key_arn: text(&answer, "KeyId")?.to_owned(),
                import_token: blob(&answer, "ImportToken")?,
                public_key: blob(&answer, "PublicKey")?,
                valid_to: answer["ParametersValidTo"]
                    .as_i64()
                    .ok_or_else(|| answer_error("ParametersValidTo"))?,
            })
        })
    }

    fn import_key_material<'a>(
        &'a self,
        key_id: &'a str,
        request: ImportRequest<'a>,
    ) -> KeysFuture<'a, ()> {
        Box::pin(async move {
            let ImportRequest { import_token, encrypted_key_material, valid_to, import_type } =
                request;
            let mut input = json!({
                "KeyId": key_id,
                "ImportToken": BASE64.encode(import_token),
                "EncryptedKeyMaterial": BASE64.encode(encrypted_key_material),
                "ImportType": match import_type {
                    ImportType::ExistingKeyMaterial => "EXISTING_KEY_MATERIAL",
                    ImportType::NewKeyMaterial => "NEW_KEY_MATERIAL",
                },
            });
            match valid_to {
                Some(valid_to) => {
                    input["ExpirationModel"] = json!("KEY_MATERIAL_EXPIRES");
                    input["ValidTo"] = json!(valid_to);
                }
                None => input["ExpirationModel"] = json!("KEY_MATERIAL_DOES_NOT_EXPIRE"),
            }
            self.call("ImportKeyMaterial", input).await?;
            Ok(())
        })
    }
}

/// A string member of an answer.
fn text<'v>(answer: &'v Value, member: &str) -> Result<&'v str, keystore::Error> {
    answer[member].as_str().ok_or_else(|| answer_error(member))
}

/// A base64 blob member of an answer.
fn blob(answer: &Value, member: &str) -> Result<Vec<u8>, keystore::Error> {
    BASE64.decode(text(answer, member)?).map_err(|_| answer_error(member))
}

/// An answer the server should not have given.
fn answer_error(member: &str) -> keystore::Error {
    keystore::Error::new(ErrorKind::Internal, format!("the server's answer has no valid {member}"))
}
