//! The keystore operations certificates need, behind one trait, [`CertKeys`]: create a key, alias
//! it, read its public key, sign a digest, import key material. [`EmbeddedKeys`] is the keystore
//! opened in this process (`kagi serve`, or a command on a stopped server's data directory).
//!
//! Every operation is the keystore's own, audited as the caller; this module decides nothing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::crypto::{KeyPairSpec, SigningAlgorithm};
use crate::keystore::operations::MessageType;
use crate::keystore::{
    self, CreateKeyRequest, ImportParameters, ImportRequest, Keystore, OpContext, WrappingAlgorithm,
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
