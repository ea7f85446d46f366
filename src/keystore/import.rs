//! Imported key material (BYOK): GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial.
//!
//! The caller wraps its material with the RSA public key GetParametersForImport hands out and
//! sends it back with the import token, which is valid for 24 hours and names one key. The
//! wrapping is RSAES-OAEP of the material itself (SHA-1 or SHA-256), or, for material too long
//! for that (RSA private keys), RSA-OAEP of an ephemeral AES-256 key followed by AES-KWP
//! (RFC 5649) of the material under it: `RSA_AES_KEY_WRAP_SHA_1` and `_SHA_256`.
//!
//! Material is what AWS takes: 32 bytes for SYMMETRIC_DEFAULT; for HMAC keys 28–64 (HMAC_224),
//! 32–64 (HMAC_256), 48–128 (HMAC_384) or 64–128 (HMAC_512) bytes; a PKCS#8 DER private key of
//! the key's spec for RSA and ECC keys. Material may expire (`ValidTo`); expired or deleted material
//! returns the key to PendingImport until the same material is imported again — a keyed
//! fingerprint (never the material) is kept to check that it is the same.

use super::error::{Error, ErrorKind};
use super::key::{ImportTokenRecord, KeyState, Origin, UnixSeconds, VersionState};
use super::lifecycle::OperationClass;
use super::trail::Trail;
use super::{KeySpec, Keystore, OpContext, material_from_bytes, rotation};
use crate::crypto::{self, AesKey, KeyPairSpec, OaepHash, PrivateKey, SecretBytes};

const IMPORT_TOKEN_TTL: i64 = 24 * 3600;
const MAX_VALID_TO: i64 = 365 * 86_400;

/// The algorithm that wraps material for import (KMS `AlgorithmSpec`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum WrappingAlgorithm {
    /// RSAES-OAEP with SHA-1.
    RsaesOaepSha1,
    /// RSAES-OAEP with SHA-256.
    RsaesOaepSha256,
    /// RSAES-OAEP with SHA-1 of an ephemeral AES-256 key, then AES-KWP of the material.
    RsaAesKeyWrapSha1,
    /// RSAES-OAEP with SHA-256 of an ephemeral AES-256 key, then AES-KWP of the material.
    RsaAesKeyWrapSha256,
}

impl WrappingAlgorithm {
    /// The AWS KMS name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
            Self::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
            Self::RsaAesKeyWrapSha1 => "RSA_AES_KEY_WRAP_SHA_1",
            Self::RsaAesKeyWrapSha256 => "RSA_AES_KEY_WRAP_SHA_256",
        }
    }

    /// Parses an AWS KMS name. RSAES_PKCS1_V1_5 (withdrawn by AWS in 2023) and SM2PKE are not
    /// offered.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        [
            Self::RsaesOaepSha1,
            Self::RsaesOaepSha256,
            Self::RsaAesKeyWrapSha1,
            Self::RsaAesKeyWrapSha256,
        ]
        .into_iter()
        .find(|a| a.kms_name() == name)
    }

    /// The OAEP hash (of the material, or of the ephemeral AES key).
    pub fn hash(self) -> OaepHash {
        match self {
            Self::RsaesOaepSha1 | Self::RsaAesKeyWrapSha1 => OaepHash::Sha1,
            Self::RsaesOaepSha256 | Self::RsaAesKeyWrapSha256 => OaepHash::Sha256,
        }
    }

    /// Whether the material is wrapped with AES-KWP under an ephemeral AES-256 key.
    pub fn is_rsa_aes(self) -> bool {
        matches!(self, Self::RsaAesKeyWrapSha1 | Self::RsaAesKeyWrapSha256)
    }

    /// Checks AWS's rules for wrapping material of `spec` with this algorithm and a wrapping
    /// key of `wrapping_spec`: RSA private keys need an RSA_AES algorithm, and RSAES-OAEP with
    /// an RSA_2048 wrapping key cannot carry an ECC_NIST_P521 private key.
    ///
    /// # Errors
    /// ValidationException naming the rule.
    pub fn check_fits(self, spec: KeySpec, wrapping_spec: KeyPairSpec) -> Result<(), Error> {
        let pair = spec.key_pair_spec();
        if pair.is_some_and(KeyPairSpec::is_rsa) && !self.is_rsa_aes() {
            return Err(Error::validation(format!(
                "{} cannot wrap {spec} key material: use RSA_AES_KEY_WRAP_SHA_256 or \
                 RSA_AES_KEY_WRAP_SHA_1",
                self.kms_name()
            )));
        }
        if pair == Some(KeyPairSpec::EccNistP521)
            && wrapping_spec == KeyPairSpec::Rsa2048
            && !self.is_rsa_aes()
        {
            return Err(Error::validation(format!(
                "{} with an RSA_2048 wrapping key cannot wrap {spec} key material: use a \
                 longer wrapping key or an RSA_AES wrapping algorithm",
                self.kms_name()
            )));
        }
        Ok(())
    }
}

/// What GetParametersForImport returns.
#[derive(Debug)]
pub struct ImportParameters {
    /// The key's ARN.
    pub key_arn: String,
    /// The import token (opaque).
    pub import_token: Vec<u8>,
    /// The wrapping public key, DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// When the token and public key stop working.
    pub valid_to: UnixSeconds,
}

/// Whether an import restores the key's material or stages new material for rotation.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ImportType {
    /// The first import, or a re-import of the same material.
    ExistingKeyMaterial,
    /// New material for a later RotateKeyOnDemand (symmetric keys).
    NewKeyMaterial,
}

/// What ImportKeyMaterial takes.
#[derive(Debug)]
pub struct ImportRequest<'a> {
    /// The import token from GetParametersForImport.
    pub import_token: &'a [u8],
    /// The material wrapped with the token's public key.
    pub encrypted_key_material: &'a [u8],
    /// When the material expires (none: never).
    pub valid_to: Option<UnixSeconds>,
    /// Restore or stage.
    pub import_type: ImportType,
}

impl Keystore {
    /// GetParametersForImport for a key of origin EXTERNAL.
    ///
    /// # Errors
    /// UnsupportedOperationException for keys not of origin EXTERNAL; ValidationException for
    /// an unknown wrapping spec; the state errors.
    pub async fn get_parameters_for_import(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        algorithm: WrappingAlgorithm,
        wrapping_spec: KeyPairSpec,
    ) -> Result<ImportParameters, Error> {
        let trail = self.trail(ctx, "GetParametersForImport");
        let outcome = async {
            if !wrapping_spec.is_rsa() {
                return Err(Error::validation(
                    "WrappingKeySpec must be RSA_2048, RSA_3072 or RSA_4096",
                ));
            }
            let key = self.resolve(key_ref, false).await?;
            super::lifecycle::check(OperationClass::Import, &key.record, &key.arn)?;
            external_only(key.record.origin, &key.arn)?;
            algorithm.check_fits(key.record.spec, wrapping_spec)?;
            // Every wrapping algorithm decrypts with RSAES-OAEP: a FIPS build refuses here,
            // before handing out a token that ImportKeyMaterial could not use.
            crypto::fips_check_oaep()?;
            let wrapping_key = self.backend().generate_key_pair(wrapping_spec)?;
            let public_key = self
                .backend()
                .load_private_key(wrapping_spec, wrapping_key.expose_secret())?
                .public_key_der();
            let token_id = self.new_material_id()?;
            let sealed = self.root().seal(
                self.backend(),
                token_aad(&token_id).as_bytes(),
                wrapping_key.expose_secret(),
            )?;
            let valid_to = self.now() + IMPORT_TOKEN_TTL;
            let token = ImportTokenRecord {
                token_id: token_id.clone(),
                key_id: key.record.id.clone(),
                wrapping_algorithm: algorithm.kms_name().to_owned(),
                wrapping_spec: wrapping_spec.kms_name().to_owned(),
                sealed_wrapping_key: sealed,
                expires: valid_to,
            };
            trail
                .commit(&key.arn, None, || async {
                    Ok(self.store().insert_import_token(token).await?)
                })
                .await?;
            Ok(ImportParameters {
                key_arn: key.arn.clone(),
                import_token: hex::decode(&token_id)
                    .map_err(|_| Error::internal("token id is hex"))?,
                public_key,
                valid_to,
            })
        }
        .await;
        trail.finish_key(outcome, |p| &p.key_arn).await
    }

    /// ImportKeyMaterial.
    ///
    /// # Errors
    /// InvalidImportTokenException (unknown token, or one for another key),
    /// ExpiredImportTokenException, IncorrectKeyMaterialException (different material than
    /// before, or material of the wrong size or type), ValidationException for a bad ValidTo.
    pub async fn import_key_material(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        request: ImportRequest<'_>,
    ) -> Result<(String, String), Error> {
        let trail = self.trail(ctx, "ImportKeyMaterial");
        let outcome = self.import_inner(&trail, key_ref, request).await;
        trail.finish(outcome, |(arn, id)| (Some(arn), Some(id)), None).await
    }

    async fn import_inner(
        &self,
        trail: &Trail<'_>,
        key_ref: &str,
        request: ImportRequest<'_>,
    ) -> Result<(String, String), Error> {
        let ImportRequest { import_token, encrypted_key_material, valid_to, import_type } = request;
        let now = self.now();
        if let Some(valid_to) = valid_to
            && (valid_to <= now || valid_to > now + MAX_VALID_TO)
        {
            return Err(Error::validation(
                "ValidTo must be in the future and at most 365 days away",
            ));
        }
        let key = self.resolve(key_ref, false).await?;
        super::lifecycle::check(OperationClass::Import, &key.record, &key.arn)?;
        external_only(key.record.origin, &key.arn)?;
        let invalid_token = || {
            Error::new(ErrorKind::InvalidImportToken, "the import token is not valid for this key")
        };
        let token_id = hex::encode(import_token);
        let token = self.store().import_token(&token_id).await?.ok_or_else(invalid_token)?;
        if token.key_id != key.record.id {
            return Err(invalid_token());
        }
        if token.expires <= now {
            return Err(Error::new(ErrorKind::ExpiredImportToken, "the import token has expired"));
        }
        let wrapping_spec =
            KeyPairSpec::from_kms_name(&token.wrapping_spec).ok_or_else(invalid_token)?;
        let algorithm = WrappingAlgorithm::from_kms_name(&token.wrapping_algorithm)
            .ok_or_else(invalid_token)?;
        let wrapping_key = self
            .root()
            .unseal(self.backend(), token_aad(&token_id).as_bytes(), &token.sealed_wrapping_key)
            // Sealed under a root key since rotated away: the parameters are gone, not damaged.
            .map_err(|_| {
                Error::new(
                    ErrorKind::InvalidImportToken,
                    "the import token was issued under a root key since rotated: call \
                 GetParametersForImport again",
                )
            })?;
        let wrapping_key =
            self.backend().load_private_key(wrapping_spec, wrapping_key.expose_secret())?;
        let incorrect = |why: &str| Error::new(ErrorKind::IncorrectKeyMaterial, why.to_owned());
        let material = self
            .unwrap_material(algorithm, wrapping_key.as_ref(), encrypted_key_material)
            .map_err(|_| {
                incorrect("the key material does not unwrap with the import parameters")
            })?;
        // The material must be of the key's type and size.
        let spec = key.record.spec;
        match imported_secret_len(spec) {
            Some((min, max)) if !(min..=max).contains(&material.len()) => {
                let bytes = if min == max { min.to_string() } else { format!("{min} to {max}") };
                return Err(incorrect(&format!("{spec} key material is {bytes} bytes")));
            }
            Some(_) => {}
            None => {
                material_from_bytes(self.backend(), spec, material.duplicate()).map_err(|_| {
                    incorrect("the key material is not a PKCS#8 private key of the key's spec")
                })?;
            }
        }
        let fingerprint = self.root().fingerprint(self.backend(), material.expose_secret())?;
        let arn = key.arn.clone();
        let mut material_id = String::new();
        self.update(trail, &key.record.id, false, OperationClass::Import, |record, loaded| {
            let existing = loaded.versions.get(&record.current_version);
            match import_type {
                ImportType::ExistingKeyMaterial => {
                    let (version, state) = match existing {
                        Some(previous) => {
                            if previous.record.material_fingerprint.as_deref() != Some(fingerprint.as_str()) {
                                return Err(incorrect("the key material is not the material previously imported for this key"));
                            }
                            (previous.record.version, previous.record.state)
                        }
                        None => (1, VersionState::Current),
                    };
                    let mut sealed = self.seal_version(&record.id, version, now, state, &material, valid_to)?;
                    if let Some(previous) = existing {
                        sealed.material_id = previous.record.material_id.clone();
                        sealed.created = previous.record.created;
                        sealed.rotation_type = previous.record.rotation_type;
                        sealed.rotation_date = previous.record.rotation_date;
                    }
                    sealed.material_fingerprint = Some(fingerprint.clone());
                    material_id = sealed.material_id.clone();
                    record.current_version = version;
                    if record.state == KeyState::PendingImport {
                        record.state = KeyState::Enabled;
                    }
                    Ok(vec![sealed])
                }
                ImportType::NewKeyMaterial => {
                    if spec != KeySpec::SymmetricDefault || existing.is_none() {
                        return Err(Error::new(
                            ErrorKind::UnsupportedOperation,
                            "new key material can be imported only for rotation of a symmetric key that has material",
                        ));
                    }
                    if loaded.versions.values().any(|v| v.record.state == VersionState::PendingRotation) {
                        return Err(Error::new(ErrorKind::Conflict, "key material is already pending rotation"));
                    }
                    let next = loaded.versions.keys().next_back().copied().unwrap_or(0) + 1;
                    let mut sealed =
                        self.seal_version(&record.id, next, now, VersionState::PendingRotation, &material, valid_to)?;
                    sealed.material_fingerprint = Some(fingerprint.clone());
                    material_id = sealed.material_id.clone();
                    Ok(vec![sealed])
                }
            }
        })
        .await?;
        Ok((arn, material_id))
    }

    /// DeleteImportedKeyMaterial: destroys every version's material; the key becomes
    /// PendingImport until the same material is imported again.
    ///
    /// # Errors
    /// UnsupportedOperationException for keys not of origin EXTERNAL; the state errors.
    pub async fn delete_imported_key_material(
        &self,
        ctx: &OpContext,
        key_ref: &str,
    ) -> Result<String, Error> {
        let trail = self.trail(ctx, "DeleteImportedKeyMaterial");
        let outcome = self
            .update(&trail, key_ref, false, OperationClass::Import, |record, loaded| {
                external_only(record.origin, &loaded.arn)?;
                if record.state != KeyState::PendingDeletion {
                    record.state = KeyState::PendingImport;
                }
                // Staged (PENDING_ROTATION) material goes too: it can be imported again.
                Ok(rotation::destroy_all(loaded))
            })
            .await;
        trail.finish_key(outcome, |arn| arn).await
    }
}

impl Keystore {
    /// Undoes `algorithm`'s wrapping with the token's private key.
    fn unwrap_material(
        &self,
        algorithm: WrappingAlgorithm,
        wrapping_key: &dyn PrivateKey,
        wrapped: &[u8],
    ) -> crypto::Result<SecretBytes> {
        if !algorithm.is_rsa_aes() {
            return wrapping_key.decrypt_oaep(algorithm.hash(), wrapped);
        }
        // The RSA part is as long as the wrapping key's modulus; AES-KWP output follows.
        let rsa_len = wrapping_key.spec().rsa_bits().unwrap_or(0) / 8;
        if wrapped.len() <= rsa_len {
            return Err(crypto::Error::DecryptFailed);
        }
        let (encrypted_aes_key, wrapped_material) = wrapped.split_at(rsa_len);
        let aes_key = wrapping_key.decrypt_oaep(algorithm.hash(), encrypted_aes_key)?;
        let aes_key = AesKey::from_slice(aes_key.expose_secret())
            .map_err(|_| crypto::Error::DecryptFailed)?;
        self.backend().unwrap_key(&aes_key, wrapped_material)
    }
}

/// The bounds of imported symmetric or HMAC material of `spec`, in bytes (none for key pairs).
fn imported_secret_len(spec: KeySpec) -> Option<(usize, usize)> {
    let len = spec.secret_len()?;
    Some(match spec {
        KeySpec::Hmac224 | KeySpec::Hmac256 => (len, 64),
        KeySpec::Hmac384 | KeySpec::Hmac512 => (len, 128),
        _ => (len, len),
    })
}

fn external_only(origin: Origin, arn: &str) -> Result<(), Error> {
    if origin == Origin::External {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::UnsupportedOperation,
            format!("{arn} origin is {} which is not valid for this operation.", origin.kms_name()),
        ))
    }
}

/// The associated data sealing an import token's wrapping key under the root key.
pub(crate) fn token_aad(token_id: &str) -> String {
    format!("kagi import wrapping key v1\0{token_id}")
}
