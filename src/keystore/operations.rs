//! The cryptographic operations: Encrypt, Decrypt, ReEncrypt, data keys, random bytes,
//! Sign/Verify, GetPublicKey, MACs and DeriveSharedSecret.
//!
//! Only the current version encrypts, signs and MACs; any version with material decrypts and
//! verifies. Limits are AWS's: plaintext ≤ 4096 bytes, messages ≤ 4096 bytes, data keys of
//! 1–1024 bytes, ciphertext blobs ≤ 6144 bytes.

use std::sync::Arc;

use super::ciphertext::{self, BlobHeader, EncryptionContext};
use super::error::{Error, ErrorKind};
use super::key::KeyUsage;
use super::lifecycle::{self, OperationClass};
use super::{KeyPair, KeySpec, Keystore, LoadedKey, LoadedVersion, Material, OpContext};
use crate::crypto::{
    KeyPairSpec, MacAlgorithm, NONCE_LEN, OaepHash, SecretBytes, SignInput, SigningAlgorithm,
};

/// Largest plaintext Encrypt takes.
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest ciphertext blob.
pub const MAX_CIPHERTEXT: usize = 6144;
/// Largest message for Sign, Verify, GenerateMac and VerifyMac.
pub const MAX_MESSAGE: usize = 4096;

/// An encryption algorithm (KMS `EncryptionAlgorithmSpec`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum EncryptionAlgorithm {
    /// AES-256-GCM in kagi's ciphertext blob.
    SymmetricDefault,
    /// RSAES-OAEP with SHA-1.
    RsaesOaepSha1,
    /// RSAES-OAEP with SHA-256.
    RsaesOaepSha256,
}

impl EncryptionAlgorithm {
    /// The AWS KMS name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::SymmetricDefault => "SYMMETRIC_DEFAULT",
            Self::RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
            Self::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
        }
    }

    /// Parses an AWS KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        [Self::SymmetricDefault, Self::RsaesOaepSha1, Self::RsaesOaepSha256]
            .into_iter()
            .find(|alg| alg.kms_name() == name)
    }

    fn oaep(self) -> Option<OaepHash> {
        match self {
            Self::SymmetricDefault => None,
            Self::RsaesOaepSha1 => Some(OaepHash::Sha1),
            Self::RsaesOaepSha256 => Some(OaepHash::Sha256),
        }
    }

    /// The algorithms a key of `spec` and `usage` encrypts with.
    pub fn for_key(spec: KeySpec, usage: KeyUsage) -> &'static [Self] {
        match (spec, usage) {
            (KeySpec::SymmetricDefault, _) => &[Self::SymmetricDefault],
            (_, KeyUsage::EncryptDecrypt)
                if spec.key_pair_spec().is_some_and(KeyPairSpec::is_rsa) =>
            {
                &[Self::RsaesOaepSha1, Self::RsaesOaepSha256]
            }
            _ => &[],
        }
    }
}

/// What Encrypt returns.
#[derive(Debug)]
pub struct EncryptOutput {
    /// The ciphertext blob.
    pub ciphertext_blob: Vec<u8>,
    /// The key's ARN.
    pub key_arn: String,
    /// The algorithm used.
    pub algorithm: EncryptionAlgorithm,
    /// The material id used (symmetric keys).
    pub key_material_id: Option<String>,
}

/// What Decrypt returns.
#[derive(Debug)]
pub struct DecryptOutput {
    /// The plaintext.
    pub plaintext: SecretBytes,
    /// The key's ARN.
    pub key_arn: String,
    /// The algorithm used.
    pub algorithm: EncryptionAlgorithm,
    /// The material id used (symmetric keys).
    pub key_material_id: Option<String>,
}

/// What ReEncrypt returns.
#[derive(Debug)]
pub struct ReEncryptOutput {
    /// The new ciphertext blob.
    pub ciphertext_blob: Vec<u8>,
    /// The source key's ARN.
    pub source_key_arn: String,
    /// The destination key's ARN.
    pub key_arn: String,
    /// The source algorithm.
    pub source_algorithm: EncryptionAlgorithm,
    /// The destination algorithm.
    pub destination_algorithm: EncryptionAlgorithm,
    /// The source material id.
    pub source_material_id: Option<String>,
    /// The destination material id.
    pub destination_material_id: Option<String>,
}

/// The size of a data key.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum DataKeySize {
    /// `KeySpec=AES_256`.
    Aes256,
    /// `KeySpec=AES_128`.
    Aes128,
    /// `NumberOfBytes`, 1–1024.
    Bytes(u32),
}

/// A data key.
#[derive(Debug)]
pub struct DataKey {
    /// The plaintext key (absent for GenerateDataKeyWithoutPlaintext).
    pub plaintext: Option<SecretBytes>,
    /// The key encrypted under the KMS key.
    pub ciphertext_blob: Vec<u8>,
    /// The KMS key's ARN.
    pub key_arn: String,
    /// The material id used.
    pub key_material_id: Option<String>,
}

/// A data key pair.
#[derive(Debug)]
pub struct DataKeyPair {
    /// The private key, PKCS#8 DER (absent for …WithoutPlaintext).
    pub private_key_plaintext: Option<SecretBytes>,
    /// The private key encrypted under the KMS key.
    pub private_key_ciphertext_blob: Vec<u8>,
    /// The public key, DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// The KMS key's ARN.
    pub key_arn: String,
    /// The pair's spec.
    pub spec: KeyPairSpec,
    /// The material id used.
    pub key_material_id: Option<String>,
}

/// What GetPublicKey returns.
#[derive(Debug)]
pub struct PublicKeyInfo {
    /// The key's ARN.
    pub key_arn: String,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// The spec.
    pub spec: KeySpec,
    /// The usage.
    pub usage: KeyUsage,
}

/// What [`Keystore::signing_key_info`] returns.
#[derive(Clone, Debug)]
pub struct SigningKeyInfo {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub key_arn: String,
    /// The key pair's spec.
    pub spec: KeyPairSpec,
    /// The key's state (a certificate of a key that is not Enabled fails its handshakes).
    pub state: super::KeyState,
    /// DER SubjectPublicKeyInfo of the current version.
    pub public_key: Vec<u8>,
}

/// Whether a signing input is the message or its digest (KMS `MessageType`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum MessageType {
    /// The message; kagi hashes it.
    Raw,
    /// A digest the caller computed; never hashed again.
    Digest,
}

impl Keystore {
    /// Encrypt: a symmetric key seals up to 4096 bytes into a blob bound to `context`; an RSA
    /// key encrypts with OAEP (no context allowed).
    ///
    /// # Errors
    /// ValidationException for sizes; InvalidKeyUsageException for a key or algorithm that does
    /// not encrypt; the state errors.
    pub async fn encrypt(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
        algorithm: EncryptionAlgorithm,
    ) -> Result<EncryptOutput, Error> {
        let outcome = async {
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                return Err(Error::validation(format!(
                    "Plaintext must be 1 to {MAX_PLAINTEXT} bytes"
                )));
            }
            let key = self.crypto_key(key_ref, KeyUsage::EncryptDecrypt).await?;
            check_algorithm(&key, algorithm)?;
            match algorithm.oaep() {
                None => {
                    let (blob, version) = self.seal_blob(&key, plaintext, context)?;
                    Ok(EncryptOutput {
                        ciphertext_blob: blob,
                        key_arn: key.arn.clone(),
                        algorithm,
                        key_material_id: Some(version.record.material_id.clone()),
                    })
                }
                Some(hash) => {
                    no_context(context)?;
                    let blob = key_pair(&key)?.public.encrypt_oaep(hash, plaintext)?;
                    Ok(EncryptOutput {
                        ciphertext_blob: blob,
                        key_arn: key.arn.clone(),
                        algorithm,
                        key_material_id: None,
                    })
                }
            }
        }
        .await;
        self.audit_crypto(
            ctx,
            "Encrypt",
            outcome,
            |o| (&o.key_arn, o.key_material_id.as_deref()),
            Some(context),
        )
        .await
    }

    /// Decrypt. For symmetric blobs `key_ref` is optional (the blob names its key) and, when
    /// given, must name the blob's key. RSA ciphertexts need `key_ref` and the algorithm.
    ///
    /// # Errors
    /// InvalidCiphertextException for anything that does not authenticate (wrong context
    /// included); IncorrectKeyException for a `key_ref` that is not the blob's key; the state
    /// errors.
    pub async fn decrypt(
        &self,
        ctx: &OpContext,
        blob: &[u8],
        context: &EncryptionContext,
        key_ref: Option<&str>,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> Result<DecryptOutput, Error> {
        let outcome = self.decrypt_inner(blob, context, key_ref, algorithm).await;
        self.audit_crypto(
            ctx,
            "Decrypt",
            outcome,
            |o| (&o.key_arn, o.key_material_id.as_deref()),
            Some(context),
        )
        .await
    }

    async fn decrypt_inner(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
        key_ref: Option<&str>,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> Result<DecryptOutput, Error> {
        if blob.is_empty() || blob.len() > MAX_CIPHERTEXT {
            return Err(Error::validation(format!(
                "CiphertextBlob must be 1 to {MAX_CIPHERTEXT} bytes"
            )));
        }
        let algorithm = algorithm.unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        if let Some(hash) = algorithm.oaep() {
            let key_ref = key_ref.ok_or_else(|| {
                Error::validation("KeyId is required to decrypt with an asymmetric key")
            })?;
            let key = self.crypto_key(key_ref, KeyUsage::EncryptDecrypt).await?;
            check_algorithm(&key, algorithm)?;
            no_context(context)?;
            let plaintext = key_pair(&key)?.private.decrypt_oaep(hash, blob)?;
            return Ok(DecryptOutput {
                plaintext,
                key_arn: key.arn.clone(),
                algorithm,
                key_material_id: None,
            });
        }
        // A named key is checked first: an asymmetric key needs its algorithm, whatever the
        // ciphertext's bytes look like.
        let named = match key_ref {
            Some(key_ref) => {
                let named = self.crypto_key(key_ref, KeyUsage::EncryptDecrypt).await?;
                check_algorithm(&named, algorithm)?;
                Some(named)
            }
            None => None,
        };
        let (header, _) = BlobHeader::decode(blob).ok_or_else(Error::invalid_ciphertext)?;
        let blob_key_id = uuid::Uuid::from_bytes(header.key_id).to_string();
        if let Some(named) = named
            && named.record.id != blob_key_id
        {
            return Err(Error::new(
                ErrorKind::IncorrectKey,
                "the key ID in the request does not identify the key that encrypted the ciphertext",
            ));
        }
        let key = self.resolve(&blob_key_id, false).await.map_err(|error| match error.kind() {
            // A blob naming no key here is just an invalid ciphertext.
            ErrorKind::NotFound => Error::invalid_ciphertext(),
            _ => error,
        })?;
        self.check_loaded_usable(&key)?;
        if key.record.spec != KeySpec::SymmetricDefault {
            return Err(Error::invalid_ciphertext());
        }
        let (plaintext, version) = self.open_blob(&key, blob, context)?;
        Ok(DecryptOutput {
            plaintext,
            key_arn: key.arn.clone(),
            algorithm,
            key_material_id: Some(version.record.material_id.clone()),
        })
    }

    /// ReEncrypt: decrypts under the source key and encrypts under the destination key without
    /// returning the plaintext.
    ///
    /// # Errors
    /// Those of Decrypt for the source, of Encrypt for the destination.
    #[allow(clippy::too_many_arguments)]
    pub async fn re_encrypt(
        &self,
        ctx: &OpContext,
        blob: &[u8],
        source_context: &EncryptionContext,
        source_key_ref: Option<&str>,
        source_algorithm: Option<EncryptionAlgorithm>,
        destination_key_ref: &str,
        destination_context: &EncryptionContext,
        destination_algorithm: EncryptionAlgorithm,
    ) -> Result<ReEncryptOutput, Error> {
        let outcome = async {
            let source =
                self.decrypt_inner(blob, source_context, source_key_ref, source_algorithm).await?;
            let destination =
                self.crypto_key(destination_key_ref, KeyUsage::EncryptDecrypt).await?;
            check_algorithm(&destination, destination_algorithm)?;
            let (ciphertext_blob, destination_material_id) = match destination_algorithm.oaep() {
                None => {
                    let (blob, version) = self.seal_blob(
                        &destination,
                        source.plaintext.expose_secret(),
                        destination_context,
                    )?;
                    (blob, Some(version.record.material_id.clone()))
                }
                Some(hash) => {
                    no_context(destination_context)?;
                    let public = &key_pair(&destination)?.public;
                    (public.encrypt_oaep(hash, source.plaintext.expose_secret())?, None)
                }
            };
            Ok(ReEncryptOutput {
                ciphertext_blob,
                source_key_arn: source.key_arn,
                key_arn: destination.arn.clone(),
                source_algorithm: source.algorithm,
                destination_algorithm,
                source_material_id: source.key_material_id,
                destination_material_id,
            })
        }
        .await;
        self.audit_crypto(
            ctx,
            "ReEncrypt",
            outcome,
            |o| (&o.key_arn, o.destination_material_id.as_deref()),
            Some(destination_context),
        )
        .await
    }

    /// GenerateDataKey (`with_plaintext`) or GenerateDataKeyWithoutPlaintext.
    ///
    /// # Errors
    /// ValidationException for a size out of range; InvalidKeyUsageException for a key that is
    /// not symmetric; the state errors.
    pub async fn generate_data_key(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        size: DataKeySize,
        context: &EncryptionContext,
        with_plaintext: bool,
    ) -> Result<DataKey, Error> {
        let operation =
            if with_plaintext { "GenerateDataKey" } else { "GenerateDataKeyWithoutPlaintext" };
        let outcome = async {
            let len = match size {
                DataKeySize::Aes256 => 32,
                DataKeySize::Aes128 => 16,
                DataKeySize::Bytes(n @ 1..=1024) => n as usize,
                DataKeySize::Bytes(_) => {
                    return Err(Error::validation("NumberOfBytes must be 1 to 1024"));
                }
            };
            let key = self.crypto_key(key_ref, KeyUsage::EncryptDecrypt).await?;
            symmetric_only(&key)?;
            let mut plaintext = SecretBytes::zeroed(len);
            self.backend.fill_random(plaintext.expose_secret_mut())?;
            let (blob, version) = self.seal_blob(&key, plaintext.expose_secret(), context)?;
            Ok(DataKey {
                plaintext: with_plaintext.then_some(plaintext),
                ciphertext_blob: blob,
                key_arn: key.arn.clone(),
                key_material_id: Some(version.record.material_id.clone()),
            })
        }
        .await;
        self.audit_crypto(
            ctx,
            operation,
            outcome,
            |o| (&o.key_arn, o.key_material_id.as_deref()),
            Some(context),
        )
        .await
    }

    /// GenerateDataKeyPair (`with_plaintext`) or GenerateDataKeyPairWithoutPlaintext: a new
    /// key pair whose private key is encrypted under a symmetric KMS key.
    ///
    /// # Errors
    /// As GenerateDataKey.
    pub async fn generate_data_key_pair(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        spec: KeyPairSpec,
        context: &EncryptionContext,
        with_plaintext: bool,
    ) -> Result<DataKeyPair, Error> {
        let operation = if with_plaintext {
            "GenerateDataKeyPair"
        } else {
            "GenerateDataKeyPairWithoutPlaintext"
        };
        let outcome = async {
            let key = self.crypto_key(key_ref, KeyUsage::EncryptDecrypt).await?;
            symmetric_only(&key)?;
            let private = self.backend.generate_key_pair(spec)?;
            let public_key =
                self.backend.load_private_key(spec, private.expose_secret())?.public_key_der();
            let (blob, version) = self.seal_blob(&key, private.expose_secret(), context)?;
            Ok(DataKeyPair {
                private_key_plaintext: with_plaintext.then_some(private),
                private_key_ciphertext_blob: blob,
                public_key,
                key_arn: key.arn.clone(),
                spec,
                key_material_id: Some(version.record.material_id.clone()),
            })
        }
        .await;
        self.audit_crypto(
            ctx,
            operation,
            outcome,
            |o| (&o.key_arn, o.key_material_id.as_deref()),
            Some(context),
        )
        .await
    }

    /// GenerateRandom: 1–1024 random bytes.
    ///
    /// # Errors
    /// ValidationException for a count out of range.
    pub async fn generate_random(
        &self,
        ctx: &OpContext,
        number_of_bytes: u32,
    ) -> Result<SecretBytes, Error> {
        let outcome = (|| {
            if !(1..=1024).contains(&number_of_bytes) {
                return Err(Error::validation("NumberOfBytes must be 1 to 1024"));
            }
            let mut bytes = SecretBytes::zeroed(number_of_bytes as usize);
            self.backend.fill_random(bytes.expose_secret_mut())?;
            Ok(bytes)
        })();
        self.trail(ctx, "GenerateRandom").finish(outcome, |_| (None, None), None).await
    }

    /// Sign with the current version of a SIGN_VERIFY key.
    ///
    /// # Errors
    /// ValidationException for a message over 4096 bytes or a digest of the wrong length;
    /// InvalidKeyUsageException for a key or algorithm that does not sign; the state errors.
    pub async fn sign(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        message: &[u8],
        message_type: MessageType,
        algorithm: SigningAlgorithm,
    ) -> Result<(Vec<u8>, String), Error> {
        let outcome = async {
            check_message(message)?;
            let key = self.crypto_key(key_ref, KeyUsage::SignVerify).await?;
            let pair = key_pair(&key)?;
            check_signing_algorithm(&key, algorithm)?;
            let signature = pair.private.sign(algorithm, sign_input(message, message_type))?;
            Ok((signature, key.arn.clone()))
        }
        .await;
        self.audit_crypto(ctx, "Sign", outcome, |(_, arn)| (arn, None), None).await
    }

    /// Verify. A signature that does not verify is KMSInvalidSignatureException, never
    /// `false`.
    ///
    /// # Errors
    /// As Sign, plus KMSInvalidSignatureException.
    pub async fn verify(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        message: &[u8],
        message_type: MessageType,
        algorithm: SigningAlgorithm,
        signature: &[u8],
    ) -> Result<String, Error> {
        let outcome = async {
            check_message(message)?;
            if signature.is_empty() || signature.len() > MAX_CIPHERTEXT {
                return Err(Error::validation("Signature must be 1 to 6144 bytes"));
            }
            let key = self.crypto_key(key_ref, KeyUsage::SignVerify).await?;
            let pair = key_pair(&key)?;
            check_signing_algorithm(&key, algorithm)?;
            pair.public.verify(algorithm, sign_input(message, message_type), signature)?;
            Ok(key.arn.clone())
        }
        .await;
        self.audit_crypto(ctx, "Verify", outcome, |arn| (arn, None), None).await
    }

    /// GetPublicKey of an asymmetric key.
    ///
    /// # Errors
    /// UnsupportedOperationException for symmetric and HMAC keys; the state errors.
    pub async fn get_public_key(
        &self,
        ctx: &OpContext,
        key_ref: &str,
    ) -> Result<PublicKeyInfo, Error> {
        let outcome = async {
            let key = self.resolve(key_ref, true).await?;
            self.check_loaded_usable(&key)?;
            let Some(Material::Pair(pair)) = &current(&key)?.material else {
                return Err(Error::new(
                    ErrorKind::UnsupportedOperation,
                    format!("{} is not an asymmetric key", key.arn),
                ));
            };
            Ok(PublicKeyInfo {
                key_arn: key.arn.clone(),
                public_key: pair.private.public_key_der(),
                spec: key.record.spec,
                usage: key.record.usage,
            })
        }
        .await;
        self.audit_crypto(ctx, "GetPublicKey", outcome, |o| (&o.key_arn, None), None).await
    }

    /// Signs `message` (MessageType RAW) with the current version of a SIGN_VERIFY key found
    /// in the cache, synchronously. This is the TLS handshake's path: rustls's `Signer::sign`
    /// cannot await, so the caller loads the key first with [`Keystore::signing_key_info`]
    /// (which fills the cache) and signs here without blocking on the store.
    ///
    /// The checks are Sign's (state, usage, algorithm). It is not audited: handshakes are
    /// counted in metrics by the caller, not audited one by one (DESIGN.md), since an audit line
    /// and its fsync per handshake would cost more than the handshake itself.
    ///
    /// # Errors
    /// Internal when the key is not in the cache (it changed since it was loaded: load it
    /// again); the state errors; InvalidKeyUsageException.
    pub fn sign_cached(
        &self,
        key_id: &str,
        message: &[u8],
        algorithm: SigningAlgorithm,
    ) -> Result<Vec<u8>, Error> {
        let key = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key_id)
            .cloned()
            .ok_or_else(|| {
                Error::internal("the key is not loaded (it changed since); load it again")
            })?;
        let signed = self.sign_loaded(&key, message, algorithm);
        if let Some(observer) = self.observer() {
            let outcome = signed.as_ref().map_or_else(|e| e.kind().aws_name(), |_| "success");
            observer.handshake_signed(&key.record.id, key.record.spec, outcome);
        }
        signed
    }

    fn sign_loaded(
        &self,
        key: &LoadedKey,
        message: &[u8],
        algorithm: SigningAlgorithm,
    ) -> Result<Vec<u8>, Error> {
        self.check_loaded_usable(key)?;
        if key.record.usage != KeyUsage::SignVerify {
            return Err(Error::new(
                ErrorKind::InvalidKeyUsage,
                format!(
                    "{} key usage is {}, not SIGN_VERIFY",
                    key.arn,
                    key.record.usage.kms_name()
                ),
            ));
        }
        let pair = key_pair(key)?;
        check_signing_algorithm(key, algorithm)?;
        Ok(pair.private.sign(algorithm, SignInput::Message(message))?)
    }

    /// What a TLS certificate needs of its key, whatever the key's state: its id, spec, state
    /// and public key. Loads the key into the cache for [`Keystore::sign_cached`].
    ///
    /// A disabled key, or one pending deletion, is answered (its certificate stays configured,
    /// and each handshake fails in `sign_cached`); not audited, like `sign_cached`.
    ///
    /// # Errors
    /// NotFoundException; InvalidKeyUsageException for a key that does not sign; the pending
    /// import error for a key without material.
    pub async fn signing_key_info(&self, key_ref: &str) -> Result<SigningKeyInfo, Error> {
        let key = self.resolve(key_ref, true).await?;
        lifecycle::check(OperationClass::Read, &key.record, &key.arn)?;
        let spec =
            key.record.spec.key_pair_spec().filter(|_| key.record.usage == KeyUsage::SignVerify);
        let Some(spec) = spec else {
            return Err(Error::new(
                ErrorKind::InvalidKeyUsage,
                format!("{} is not an asymmetric SIGN_VERIFY key", key.arn),
            ));
        };
        let pair = key_pair(&key)?;
        Ok(SigningKeyInfo {
            key_id: key.record.id.clone(),
            key_arn: key.arn.clone(),
            spec,
            state: key.record.state,
            public_key: pair.private.public_key_der(),
        })
    }

    /// GenerateMac with an HMAC key.
    ///
    /// # Errors
    /// InvalidKeyUsageException for another key type or a MAC algorithm that is not the key's.
    pub async fn generate_mac(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        message: &[u8],
        algorithm: MacAlgorithm,
    ) -> Result<(Vec<u8>, String), Error> {
        let outcome = async {
            check_message(message)?;
            let key = self.crypto_key(key_ref, KeyUsage::GenerateVerifyMac).await?;
            let secret = mac_secret(&key, algorithm)?;
            let mac = self.backend.hmac(algorithm, secret.expose_secret(), message)?;
            Ok((mac, key.arn.clone()))
        }
        .await;
        self.audit_crypto(ctx, "GenerateMac", outcome, |(_, arn)| (arn, None), None).await
    }

    /// VerifyMac, in constant time. A MAC that does not verify is KMSInvalidMacException.
    ///
    /// # Errors
    /// As GenerateMac, plus KMSInvalidMacException.
    pub async fn verify_mac(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        message: &[u8],
        algorithm: MacAlgorithm,
        mac: &[u8],
    ) -> Result<String, Error> {
        let outcome = async {
            check_message(message)?;
            let key = self.crypto_key(key_ref, KeyUsage::GenerateVerifyMac).await?;
            let secret = mac_secret(&key, algorithm)?;
            self.backend
                .verify_hmac(algorithm, secret.expose_secret(), message, mac)
                .map_err(|_| Error::new(ErrorKind::InvalidMac, "the MAC is not valid"))?;
            Ok(key.arn.clone())
        }
        .await;
        self.audit_crypto(ctx, "VerifyMac", outcome, |arn| (arn, None), None).await
    }

    /// DeriveSharedSecret: ECDH between a KEY_AGREEMENT key and a peer's public key (DER
    /// SubjectPublicKeyInfo).
    ///
    /// # Errors
    /// InvalidKeyUsageException for a key that is not for key agreement; ValidationException
    /// for a peer key that is malformed or on another curve.
    pub async fn derive_shared_secret(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        peer_public_key: &[u8],
    ) -> Result<(SecretBytes, String, String), Error> {
        let outcome = async {
            let key = self.crypto_key(key_ref, KeyUsage::KeyAgreement).await?;
            let secret = key_pair(&key)?.private.agree(peer_public_key)?;
            Ok((secret, key.arn.clone(), current(&key)?.record.material_id.clone()))
        }
        .await;
        self.audit_crypto(
            ctx,
            "DeriveSharedSecret",
            outcome,
            |(_, arn, id)| (arn, Some(id.as_str())),
            None,
        )
        .await
    }

    // === internals ===

    /// Resolves a key for a cryptographic operation: any reference form, enabled, with `usage`.
    /// Whether `key` may be used for cryptography now: its state allows it, and no imported
    /// material has expired (the sweeper then makes the key PendingImport; until it runs, the
    /// expired material is refused here, so expiry takes effect on the second).
    pub(crate) fn check_loaded_usable(&self, key: &LoadedKey) -> Result<(), Error> {
        lifecycle::check(OperationClass::Cryptographic, &key.record, &key.arn)?;
        let now = self.now();
        if key
            .versions
            .values()
            .any(|v| v.material.is_some() && v.record.valid_to.is_some_and(|t| t <= now))
        {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("{} is pending import: its imported key material has expired.", key.arn),
            ));
        }
        Ok(())
    }

    async fn crypto_key(&self, key_ref: &str, usage: KeyUsage) -> Result<Arc<LoadedKey>, Error> {
        let key = self.resolve(key_ref, true).await?;
        self.check_loaded_usable(&key)?;
        if key.record.usage != usage {
            return Err(Error::new(
                ErrorKind::InvalidKeyUsage,
                format!(
                    "{} key usage is {} which is not valid for this operation",
                    key.arn,
                    key.record.usage.kms_name()
                ),
            ));
        }
        Ok(key)
    }

    /// Seals `plaintext` under the key's current version.
    fn seal_blob<'k>(
        &self,
        key: &'k LoadedKey,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<(Vec<u8>, &'k LoadedVersion), Error> {
        if !ciphertext::check_context(context) {
            return Err(Error::validation("EncryptionContext entries must be at most 65535 bytes"));
        }
        let version = current(key)?;
        let Some(Material::Aes(aes)) = &version.material else {
            return Err(Error::internal("symmetric key without material; this is a bug"));
        };
        let mut header = BlobHeader {
            format: self.blob_format,
            key_id: key.uuid,
            version: version.record.version,
            nonce: [0u8; NONCE_LEN],
        };
        let sealed = if header.format == ciphertext::BLOB_VERSION_1 {
            self.backend.fill_random(&mut header.nonce)?;
            let aad = ciphertext::associated_data(&header, context);
            self.backend.seal(aes, &header.nonce, &aad, plaintext)?
        } else {
            // The nonce is not in the associated data, so the library may draw it.
            let aad = ciphertext::associated_data(&header, context);
            let (nonce, sealed) = self.backend.seal_fresh(aes, &aad, plaintext)?;
            header.nonce = nonce;
            sealed
        };
        if let Some(observer) = self.observer() {
            observer.sealed(&key.record.id, version.record.version, plaintext.len());
        }
        let header = header.encode();
        let mut blob = Vec::with_capacity(header.len() + sealed.len());
        blob.extend_from_slice(&header);
        blob.extend_from_slice(&sealed);
        Ok((blob, version))
    }

    /// Opens a blob of `key` (already matched to the blob's key id).
    fn open_blob<'k>(
        &self,
        key: &'k LoadedKey,
        blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<(SecretBytes, &'k LoadedVersion), Error> {
        let (header, body) = BlobHeader::decode(blob).ok_or_else(Error::invalid_ciphertext)?;
        let version = key.versions.get(&header.version).ok_or_else(Error::invalid_ciphertext)?;
        let Some(Material::Aes(aes)) = &version.material else {
            // Destroyed (expired or deleted imported) material cannot decrypt.
            return Err(Error::invalid_ciphertext());
        };
        let aad = ciphertext::associated_data(&header, context);
        let plaintext = self.backend.open(aes, &header.nonce, &aad, body)?;
        Ok((plaintext, version))
    }

    /// Ends a cryptographic operation: its result is returned only if its audit line (with the
    /// key, the material used and the encryption context) was written.
    async fn audit_crypto<T>(
        &self,
        ctx: &OpContext,
        operation: &str,
        outcome: Result<T, Error>,
        ids: impl FnOnce(&T) -> (&String, Option<&str>),
        context: Option<&EncryptionContext>,
    ) -> Result<T, Error> {
        let ids = higher_ranked(move |value: &T| {
            let (arn, material_id) = ids(value);
            (Some(arn.as_str()), material_id)
        });
        self.trail(ctx, operation).finish(outcome, ids, context).await
    }
}

/// Gives a closure the signature `for<'t> FnOnce(&'t T) -> (Option<&'t str>, …)`, which
/// closure inference does not find by itself.
fn higher_ranked<T, F>(f: F) -> F
where
    F: FnOnce(&T) -> (Option<&str>, Option<&str>),
{
    f
}

fn current(key: &LoadedKey) -> Result<&LoadedVersion, Error> {
    key.versions
        .get(&key.record.current_version)
        .filter(|version| version.material.is_some())
        .ok_or_else(|| {
            Error::new(ErrorKind::InvalidState, format!("{} is pending import.", key.arn))
        })
}

/// The current version's key pair, for operations whose key usage already implies one.
fn key_pair(key: &LoadedKey) -> Result<&KeyPair, Error> {
    match &current(key)?.material {
        Some(Material::Pair(pair)) => Ok(pair),
        _ => Err(Error::internal("asymmetric key without a key pair; this is a bug")),
    }
}

fn check_algorithm(key: &LoadedKey, algorithm: EncryptionAlgorithm) -> Result<(), Error> {
    if EncryptionAlgorithm::for_key(key.record.spec, key.record.usage).contains(&algorithm) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidKeyUsage,
            format!("{} is not a valid encryption algorithm for {}", algorithm.kms_name(), key.arn),
        ))
    }
}

fn check_signing_algorithm(key: &LoadedKey, algorithm: SigningAlgorithm) -> Result<(), Error> {
    match key.record.spec.key_pair_spec() {
        Some(spec) if algorithm.fits(spec) => Ok(()),
        _ => Err(Error::new(
            ErrorKind::InvalidKeyUsage,
            format!("{algorithm} is not a valid signing algorithm for {}", key.arn),
        )),
    }
}

fn symmetric_only(key: &LoadedKey) -> Result<(), Error> {
    if key.record.spec == KeySpec::SymmetricDefault {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidKeyUsage,
            format!("{} is not a symmetric encryption key", key.arn),
        ))
    }
}

fn no_context(context: &EncryptionContext) -> Result<(), Error> {
    if context.is_empty() {
        Ok(())
    } else {
        Err(Error::validation("EncryptionContext is not supported with asymmetric keys"))
    }
}

fn check_message(message: &[u8]) -> Result<(), Error> {
    if message.is_empty() || message.len() > MAX_MESSAGE {
        return Err(Error::validation(format!("Message must be 1 to {MAX_MESSAGE} bytes")));
    }
    Ok(())
}

fn sign_input(message: &[u8], message_type: MessageType) -> SignInput<'_> {
    match message_type {
        MessageType::Raw => SignInput::Message(message),
        MessageType::Digest => SignInput::Digest(message),
    }
}

fn mac_secret(key: &LoadedKey, algorithm: MacAlgorithm) -> Result<&SecretBytes, Error> {
    if key.record.spec.mac_algorithm() != Some(algorithm) {
        return Err(Error::new(
            ErrorKind::InvalidKeyUsage,
            format!("{algorithm} is not a valid MAC algorithm for {}", key.arn),
        ));
    }
    match &current(key)?.material {
        Some(Material::Hmac(secret)) => Ok(secret),
        _ => Err(Error::internal("hmac key without material; this is a bug")),
    }
}
