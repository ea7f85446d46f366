//! The key model: specs, usages, states, origins, and the persisted key and key-version records.
//!
//! The records are what `store` persists (a serialization boundary: their JSON shape is the
//! database format, so fields are only ever added, with defaults).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::{KeyPairSpec, MacAlgorithm};

/// Seconds since the Unix epoch.
pub type UnixSeconds = i64;

/// A key's spec (KMS `KeySpec`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeySpec {
    /// AES-256-GCM, kagi's symmetric encryption key.
    SymmetricDefault,
    /// RSA 2048.
    #[serde(rename = "RSA_2048")]
    Rsa2048,
    /// RSA 3072.
    #[serde(rename = "RSA_3072")]
    Rsa3072,
    /// RSA 4096.
    #[serde(rename = "RSA_4096")]
    Rsa4096,
    /// NIST P-256.
    #[serde(rename = "ECC_NIST_P256")]
    EccNistP256,
    /// NIST P-384.
    #[serde(rename = "ECC_NIST_P384")]
    EccNistP384,
    /// NIST P-521.
    #[serde(rename = "ECC_NIST_P521")]
    EccNistP521,
    /// secp256k1.
    #[serde(rename = "ECC_SECG_P256K1")]
    EccSecgP256k1,
    /// HMAC with a 224-bit key.
    #[serde(rename = "HMAC_224")]
    Hmac224,
    /// HMAC with a 256-bit key.
    #[serde(rename = "HMAC_256")]
    Hmac256,
    /// HMAC with a 384-bit key.
    #[serde(rename = "HMAC_384")]
    Hmac384,
    /// HMAC with a 512-bit key.
    #[serde(rename = "HMAC_512")]
    Hmac512,
}

impl KeySpec {
    /// Every spec, in KMS order.
    pub const ALL: [Self; 12] = [
        Self::SymmetricDefault,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
        Self::EccNistP256,
        Self::EccNistP384,
        Self::EccNistP521,
        Self::EccSecgP256k1,
        Self::Hmac224,
        Self::Hmac256,
        Self::Hmac384,
        Self::Hmac512,
    ];

    /// The AWS KMS name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::SymmetricDefault => "SYMMETRIC_DEFAULT",
            Self::Hmac224 => "HMAC_224",
            Self::Hmac256 => "HMAC_256",
            Self::Hmac384 => "HMAC_384",
            Self::Hmac512 => "HMAC_512",
            other => other.key_pair_spec().map_or("", KeyPairSpec::kms_name),
        }
    }

    /// Parses an AWS KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|spec| spec.kms_name() == name)
    }

    /// The asymmetric spec, for RSA and ECC keys.
    pub fn key_pair_spec(self) -> Option<KeyPairSpec> {
        match self {
            Self::Rsa2048 => Some(KeyPairSpec::Rsa2048),
            Self::Rsa3072 => Some(KeyPairSpec::Rsa3072),
            Self::Rsa4096 => Some(KeyPairSpec::Rsa4096),
            Self::EccNistP256 => Some(KeyPairSpec::EccNistP256),
            Self::EccNistP384 => Some(KeyPairSpec::EccNistP384),
            Self::EccNistP521 => Some(KeyPairSpec::EccNistP521),
            Self::EccSecgP256k1 => Some(KeyPairSpec::EccSecgP256k1),
            _ => None,
        }
    }

    /// The one MAC algorithm of an HMAC spec.
    pub fn mac_algorithm(self) -> Option<MacAlgorithm> {
        match self {
            Self::Hmac224 => Some(MacAlgorithm::HmacSha224),
            Self::Hmac256 => Some(MacAlgorithm::HmacSha256),
            Self::Hmac384 => Some(MacAlgorithm::HmacSha384),
            Self::Hmac512 => Some(MacAlgorithm::HmacSha512),
            _ => None,
        }
    }

    /// The usages AWS allows for this spec; the first is the default.
    pub fn usages(self) -> &'static [KeyUsage] {
        match self {
            Self::SymmetricDefault => &[KeyUsage::EncryptDecrypt],
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => {
                &[KeyUsage::EncryptDecrypt, KeyUsage::SignVerify]
            }
            Self::EccNistP256 | Self::EccNistP384 | Self::EccNistP521 => {
                &[KeyUsage::SignVerify, KeyUsage::KeyAgreement]
            }
            Self::EccSecgP256k1 => &[KeyUsage::SignVerify],
            Self::Hmac224 | Self::Hmac256 | Self::Hmac384 | Self::Hmac512 => {
                &[KeyUsage::GenerateVerifyMac]
            }
        }
    }

    /// Length of the secret of a symmetric or HMAC key.
    pub fn secret_len(self) -> Option<usize> {
        match self {
            Self::SymmetricDefault => Some(32),
            other => other.mac_algorithm().map(MacAlgorithm::key_len),
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kms_name())
    }
}

/// What a key is for (KMS `KeyUsageType`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyUsage {
    /// Encrypt and decrypt.
    EncryptDecrypt,
    /// Sign and verify.
    SignVerify,
    /// Generate and verify MACs.
    GenerateVerifyMac,
    /// Derive shared secrets (ECDH).
    KeyAgreement,
}

impl KeyUsage {
    /// Every usage.
    pub const ALL: [Self; 4] =
        [Self::EncryptDecrypt, Self::SignVerify, Self::GenerateVerifyMac, Self::KeyAgreement];

    /// The AWS KMS name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::EncryptDecrypt => "ENCRYPT_DECRYPT",
            Self::SignVerify => "SIGN_VERIFY",
            Self::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
            Self::KeyAgreement => "KEY_AGREEMENT",
        }
    }

    /// Parses an AWS KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|usage| usage.kms_name() == name)
    }
}

/// Where a key's material comes from (KMS `OriginType`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Origin {
    /// Generated by kagi.
    AwsKms,
    /// Imported by the operator.
    External,
}

impl Origin {
    /// The AWS KMS name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::AwsKms => "AWS_KMS",
            Self::External => "EXTERNAL",
        }
    }

    /// Parses an AWS KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        [Self::AwsKms, Self::External].into_iter().find(|origin| origin.kms_name() == name)
    }
}

/// A key's lifecycle state, in lifecycle order.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum KeyState {
    /// Created with origin EXTERNAL and waiting for material (or its material expired or was
    /// deleted).
    PendingImport,
    /// Usable.
    Enabled,
    /// Not usable for cryptography until enabled.
    Disabled,
    /// Scheduled for deletion; cancellable until the deletion date.
    PendingDeletion,
    /// Destroyed: the material is gone; the metadata stays for the audit trail, and every
    /// operation answers NotFoundException.
    Deleted,
}

impl KeyState {
    /// The AWS KMS name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::PendingImport => "PendingImport",
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::PendingDeletion => "PendingDeletion",
            Self::Deleted => "Deleted",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kms_name())
    }
}

/// Automatic rotation settings of a key.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct RotationSchedule {
    /// Days between automatic rotations (90–2560).
    pub period_days: u32,
    /// When the next automatic rotation is due.
    pub next_rotation: UnixSeconds,
}

/// A key's metadata as persisted. Changes only through the keystore's operations, each of
/// which bumps `revision` (the compare-and-swap token of the store).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct KeyRecord {
    /// The key id (a UUID).
    pub id: String,
    /// Incremented by every change; the store refuses an update whose expected revision is
    /// not the current one.
    pub revision: u64,
    /// When the key was created.
    pub created: UnixSeconds,
    /// Free text, ≤ 8192 characters.
    pub description: String,
    /// The spec.
    pub spec: KeySpec,
    /// The usage.
    pub usage: KeyUsage,
    /// Generated or imported.
    pub origin: Origin,
    /// The lifecycle state.
    pub state: KeyState,
    /// When a key pending deletion is destroyed.
    #[serde(default)]
    pub deletion_date: Option<UnixSeconds>,
    /// The waiting period chosen for a key pending deletion.
    #[serde(default)]
    pub pending_window_days: Option<u32>,
    /// Automatic rotation, when enabled.
    #[serde(default)]
    pub rotation: Option<RotationSchedule>,
    /// On-demand rotations performed so far (capped).
    #[serde(default)]
    pub on_demand_rotations: u32,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The key policy document (JSON).
    #[serde(default)]
    pub policy: String,
    /// The version that encrypts, signs and MACs (0 while no material exists).
    pub current_version: u32,
    /// The key's grants (CreateGrant), oldest first; retired and revoked grants are removed.
    #[serde(default)]
    pub grants: Vec<GrantRecord>,
}

/// Where a key version stands (KMS `KeyMaterialState`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VersionState {
    /// The version in use for new ciphertexts.
    Current,
    /// An older version: decrypts and verifies only.
    NonCurrent,
    /// Imported for a future on-demand rotation.
    PendingRotation,
}

/// How a version came to be current (KMS `RotationType`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RotationType {
    /// By the sweeper, on schedule.
    Automatic,
    /// By RotateKeyOnDemand.
    OnDemand,
}

/// One version of a key's material, as persisted: metadata plus the material sealed under the
/// root key.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct VersionRecord {
    /// 1, 2, 3, … in creation order.
    pub version: u32,
    /// The 64-hex-digit material id (KMS `KeyMaterialId`).
    pub material_id: String,
    /// When the version was created or imported.
    pub created: UnixSeconds,
    /// Where it stands.
    pub state: VersionState,
    /// How it became current, for versions made by a rotation.
    #[serde(default)]
    pub rotation_type: Option<RotationType>,
    /// When it became current through a rotation.
    #[serde(default)]
    pub rotation_date: Option<UnixSeconds>,
    /// For imported material: when it expires (none: never).
    #[serde(default)]
    pub valid_to: Option<UnixSeconds>,
    /// For imported material: a digest of the material (SHA-256 under a keyed hash), so a
    /// re-import can be checked for being the same material without keeping it.
    #[serde(default)]
    pub material_fingerprint: Option<String>,
    /// The material sealed under the root key, `nonce ‖ ciphertext ‖ tag`; empty once the
    /// material was destroyed (expired, deleted). Stored in its own column, not in the JSON.
    #[serde(skip)]
    pub sealed_material: Vec<u8>,
}

impl VersionRecord {
    /// Whether the version's material is present (not destroyed).
    pub fn has_material(&self) -> bool {
        !self.sealed_material.is_empty()
    }
}

/// An alias as persisted.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AliasRecord {
    /// `alias/…`.
    pub name: String,
    /// The key it names.
    pub key_id: String,
    /// When it was created.
    pub created: UnixSeconds,
    /// When it was last pointed at a key.
    pub updated: UnixSeconds,
}

/// Parameters handed out by GetParametersForImport, as persisted.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ImportTokenRecord {
    /// Random id; the import token is this id, base64 on the wire.
    pub token_id: String,
    /// The key the token is for.
    pub key_id: String,
    /// The wrapping algorithm the caller chose.
    pub wrapping_algorithm: String,
    /// The wrapping key's spec.
    pub wrapping_spec: String,
    /// The wrapping private key (PKCS#8) sealed under the root key.
    pub sealed_wrapping_key: Vec<u8>,
    /// When the token stops being accepted.
    pub expires: UnixSeconds,
}

/// An operation a grant can permit (KMS `GrantOperation`), spelled as AWS spells it.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
pub enum GrantOperation {
    /// Decrypt.
    Decrypt,
    /// Encrypt.
    Encrypt,
    /// GenerateDataKey.
    GenerateDataKey,
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext,
    /// ReEncrypt, the key as source.
    ReEncryptFrom,
    /// ReEncrypt, the key as destination.
    ReEncryptTo,
    /// Sign.
    Sign,
    /// Verify.
    Verify,
    /// GetPublicKey.
    GetPublicKey,
    /// CreateGrant (no wider than the grant that permits it).
    CreateGrant,
    /// RetireGrant (of this grant).
    RetireGrant,
    /// DescribeKey.
    DescribeKey,
    /// GenerateDataKeyPair.
    GenerateDataKeyPair,
    /// GenerateDataKeyPairWithoutPlaintext.
    GenerateDataKeyPairWithoutPlaintext,
    /// GenerateMac.
    GenerateMac,
    /// VerifyMac.
    VerifyMac,
    /// DeriveSharedSecret.
    DeriveSharedSecret,
}

impl GrantOperation {
    /// Every grant operation, in the model's order.
    pub const ALL: [Self; 17] = [
        Self::Decrypt,
        Self::Encrypt,
        Self::GenerateDataKey,
        Self::GenerateDataKeyWithoutPlaintext,
        Self::ReEncryptFrom,
        Self::ReEncryptTo,
        Self::Sign,
        Self::Verify,
        Self::GetPublicKey,
        Self::CreateGrant,
        Self::RetireGrant,
        Self::DescribeKey,
        Self::GenerateDataKeyPair,
        Self::GenerateDataKeyPairWithoutPlaintext,
        Self::GenerateMac,
        Self::VerifyMac,
        Self::DeriveSharedSecret,
    ];

    /// The AWS KMS name (also the action without its `kms:` prefix).
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::Decrypt => "Decrypt",
            Self::Encrypt => "Encrypt",
            Self::GenerateDataKey => "GenerateDataKey",
            Self::GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            Self::ReEncryptFrom => "ReEncryptFrom",
            Self::ReEncryptTo => "ReEncryptTo",
            Self::Sign => "Sign",
            Self::Verify => "Verify",
            Self::GetPublicKey => "GetPublicKey",
            Self::CreateGrant => "CreateGrant",
            Self::RetireGrant => "RetireGrant",
            Self::DescribeKey => "DescribeKey",
            Self::GenerateDataKeyPair => "GenerateDataKeyPair",
            Self::GenerateDataKeyPairWithoutPlaintext => "GenerateDataKeyPairWithoutPlaintext",
            Self::GenerateMac => "GenerateMac",
            Self::VerifyMac => "VerifyMac",
            Self::DeriveSharedSecret => "DeriveSharedSecret",
        }
    }

    /// Parses an AWS KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.kms_name() == name)
    }

    /// Whether the operation takes an encryption context (so encryption context constraints
    /// apply to it).
    pub fn takes_encryption_context(self) -> bool {
        matches!(
            self,
            Self::Decrypt
                | Self::Encrypt
                | Self::GenerateDataKey
                | Self::GenerateDataKeyWithoutPlaintext
                | Self::ReEncryptFrom
                | Self::ReEncryptTo
                | Self::GenerateDataKeyPair
                | Self::GenerateDataKeyPairWithoutPlaintext
        )
    }

    /// Whether the operation concerns the grant or the key's metadata rather than its
    /// cryptography (any key may grant it; encryption context constraints do not apply).
    pub fn is_key_independent(self) -> bool {
        matches!(self, Self::CreateGrant | Self::RetireGrant | Self::DescribeKey)
    }

    /// Whether a key of `spec` and `usage` supports the operation.
    pub fn fits(self, spec: KeySpec, usage: KeyUsage) -> bool {
        if self.is_key_independent() {
            return true;
        }
        match (spec, usage) {
            (KeySpec::SymmetricDefault, _) => self.takes_encryption_context(),
            (_, KeyUsage::EncryptDecrypt) => matches!(
                self,
                Self::Encrypt
                    | Self::Decrypt
                    | Self::ReEncryptFrom
                    | Self::ReEncryptTo
                    | Self::GetPublicKey
            ),
            (_, KeyUsage::SignVerify) => {
                matches!(self, Self::Sign | Self::Verify | Self::GetPublicKey)
            }
            (_, KeyUsage::GenerateVerifyMac) => matches!(self, Self::GenerateMac | Self::VerifyMac),
            (_, KeyUsage::KeyAgreement) => {
                matches!(self, Self::DeriveSharedSecret | Self::GetPublicKey)
            }
        }
    }
}

impl fmt::Display for GrantOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kms_name())
    }
}

/// A grant's encryption context constraints (KMS `GrantConstraints`).
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct GrantConstraints {
    /// The request's encryption context must equal this one exactly.
    #[serde(default)]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
    /// The request's encryption context must contain every pair of this one.
    #[serde(default)]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
}

impl GrantConstraints {
    /// Whether there is no constraint at all.
    pub fn is_empty(&self) -> bool {
        self.encryption_context_equals.is_none() && self.encryption_context_subset.is_none()
    }
}

/// A grant as persisted in its key's record.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct GrantRecord {
    /// 64 hex digits, unique per key.
    pub grant_id: String,
    /// The friendly name, which makes CreateGrant idempotent.
    #[serde(default)]
    pub name: Option<String>,
    /// Who may use the grant (an IAM ARN or an account).
    pub grantee_principal: String,
    /// Who may retire the grant besides the account and (with RetireGrant) the grantee.
    #[serde(default)]
    pub retiring_principal: Option<String>,
    /// The operations the grant permits, as given (without duplicates).
    pub operations: Vec<GrantOperation>,
    /// Encryption context constraints, if any.
    #[serde(default)]
    pub constraints: Option<GrantConstraints>,
    /// When it was created.
    pub created: UnixSeconds,
    /// The account it was created in.
    pub issuing_account: String,
    /// The ARN of the principal that created it.
    #[serde(default)]
    pub issuing_principal: String,
}

impl GrantRecord {
    /// Whether the grant permits `operation`.
    pub fn permits(&self, operation: GrantOperation) -> bool {
        self.operations.contains(&operation)
    }
}
