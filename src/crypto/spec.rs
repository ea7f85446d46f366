//! Algorithm names, with the AWS KMS spellings (`RSA_2048`, `ECDSA_SHA_256`, `HMAC_SHA_256`).
//!
//! Plain data: which algorithm, its sizes and which keys it fits. The behaviour lives in the
//! backends.

use std::fmt;

/// An elliptic curve.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum EcCurve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// secp256k1 (SECG), for blockchain signatures. No ECDH here, as in AWS KMS.
    Secp256k1,
}

impl EcCurve {
    /// Length of a field element (and of the scalar) in bytes.
    pub fn field_len(self) -> usize {
        match self {
            Self::P256 | Self::Secp256k1 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }
}

/// The spec of an asymmetric key pair (KMS `KeySpec` minus the symmetric and HMAC ones).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum KeyPairSpec {
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
    /// ECC on NIST P-256.
    EccNistP256,
    /// ECC on NIST P-384.
    EccNistP384,
    /// ECC on NIST P-521.
    EccNistP521,
    /// ECC on secp256k1.
    EccSecgP256k1,
}

impl KeyPairSpec {
    /// Every spec, in KMS order.
    pub const ALL: [Self; 7] = [
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
        Self::EccNistP256,
        Self::EccNistP384,
        Self::EccNistP521,
        Self::EccSecgP256k1,
    ];

    /// The AWS KMS name (`RSA_2048`, `ECC_NIST_P256`, …).
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::Rsa2048 => "RSA_2048",
            Self::Rsa3072 => "RSA_3072",
            Self::Rsa4096 => "RSA_4096",
            Self::EccNistP256 => "ECC_NIST_P256",
            Self::EccNistP384 => "ECC_NIST_P384",
            Self::EccNistP521 => "ECC_NIST_P521",
            Self::EccSecgP256k1 => "ECC_SECG_P256K1",
        }
    }

    /// Parses an AWS KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|spec| spec.kms_name() == name)
    }

    /// The RSA modulus length in bits, for RSA specs.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// The curve, for ECC specs.
    pub fn curve(self) -> Option<EcCurve> {
        match self {
            Self::EccNistP256 => Some(EcCurve::P256),
            Self::EccNistP384 => Some(EcCurve::P384),
            Self::EccNistP521 => Some(EcCurve::P521),
            Self::EccSecgP256k1 => Some(EcCurve::Secp256k1),
            _ => None,
        }
    }

    /// Whether this is an RSA spec.
    pub fn is_rsa(self) -> bool {
        self.rsa_bits().is_some()
    }

    /// The signing algorithms AWS KMS allows for this spec.
    pub fn signing_algorithms(self) -> &'static [SigningAlgorithm] {
        use SigningAlgorithm as S;
        match self {
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => &[
                S::RsassaPssSha256,
                S::RsassaPssSha384,
                S::RsassaPssSha512,
                S::RsassaPkcs1V15Sha256,
                S::RsassaPkcs1V15Sha384,
                S::RsassaPkcs1V15Sha512,
            ],
            Self::EccNistP256 | Self::EccSecgP256k1 => &[S::EcdsaSha256],
            Self::EccNistP384 => &[S::EcdsaSha384],
            Self::EccNistP521 => &[S::EcdsaSha512],
        }
    }

    /// The largest OAEP plaintext for this key and hash (RFC 8017: k − 2·hLen − 2), for RSA.
    pub fn max_oaep_plaintext(self, hash: OaepHash) -> Option<usize> {
        self.rsa_bits().map(|bits| bits / 8 - 2 * hash.digest_len() - 2)
    }
}

impl fmt::Display for KeyPairSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kms_name())
    }
}

/// A signing algorithm (KMS `SigningAlgorithmSpec`).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum SigningAlgorithm {
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt.
    RsassaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt.
    RsassaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512 and a 64-byte salt.
    RsassaPssSha512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsassaPkcs1V15Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsassaPkcs1V15Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsassaPkcs1V15Sha512,
    /// ECDSA with SHA-256 (P-256 and secp256k1), DER signature.
    EcdsaSha256,
    /// ECDSA with SHA-384 (P-384), DER signature.
    EcdsaSha384,
    /// ECDSA with SHA-512 (P-521), DER signature.
    EcdsaSha512,
}

impl SigningAlgorithm {
    /// Every algorithm, in KMS order.
    pub const ALL: [Self; 9] = [
        Self::RsassaPssSha256,
        Self::RsassaPssSha384,
        Self::RsassaPssSha512,
        Self::RsassaPkcs1V15Sha256,
        Self::RsassaPkcs1V15Sha384,
        Self::RsassaPkcs1V15Sha512,
        Self::EcdsaSha256,
        Self::EcdsaSha384,
        Self::EcdsaSha512,
    ];

    /// The AWS KMS name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::RsassaPssSha256 => "RSASSA_PSS_SHA_256",
            Self::RsassaPssSha384 => "RSASSA_PSS_SHA_384",
            Self::RsassaPssSha512 => "RSASSA_PSS_SHA_512",
            Self::RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
            Self::RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
            Self::RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
            Self::EcdsaSha256 => "ECDSA_SHA_256",
            Self::EcdsaSha384 => "ECDSA_SHA_384",
            Self::EcdsaSha512 => "ECDSA_SHA_512",
        }
    }

    /// Parses an AWS KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.kms_name() == name)
    }

    /// Length in bytes of the algorithm's digest (what `MessageType=DIGEST` must supply).
    pub fn digest_len(self) -> usize {
        match self {
            Self::RsassaPssSha256 | Self::RsassaPkcs1V15Sha256 | Self::EcdsaSha256 => 32,
            Self::RsassaPssSha384 | Self::RsassaPkcs1V15Sha384 | Self::EcdsaSha384 => 48,
            Self::RsassaPssSha512 | Self::RsassaPkcs1V15Sha512 | Self::EcdsaSha512 => 64,
        }
    }

    /// Whether this is an RSASSA-PSS algorithm.
    pub fn is_pss(self) -> bool {
        matches!(self, Self::RsassaPssSha256 | Self::RsassaPssSha384 | Self::RsassaPssSha512)
    }

    /// Whether this is an ECDSA algorithm.
    pub fn is_ecdsa(self) -> bool {
        matches!(self, Self::EcdsaSha256 | Self::EcdsaSha384 | Self::EcdsaSha512)
    }

    /// Whether this algorithm may be used with a key of `spec`.
    pub fn fits(self, spec: KeyPairSpec) -> bool {
        spec.signing_algorithms().contains(&self)
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kms_name())
    }
}

/// The hash of RSAES-OAEP (used for both the label hash and MGF1, as AWS KMS does).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum OaepHash {
    /// SHA-1 (`RSAES_OAEP_SHA_1`).
    Sha1,
    /// SHA-256 (`RSAES_OAEP_SHA_256`).
    Sha256,
}

impl OaepHash {
    /// Length of the hash output in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// The AWS KMS encryption algorithm name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::Sha1 => "RSAES_OAEP_SHA_1",
            Self::Sha256 => "RSAES_OAEP_SHA_256",
        }
    }
}

/// An HMAC algorithm (KMS `MacAlgorithmSpec`).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum MacAlgorithm {
    /// HMAC-SHA-224.
    HmacSha224,
    /// HMAC-SHA-256.
    HmacSha256,
    /// HMAC-SHA-384.
    HmacSha384,
    /// HMAC-SHA-512.
    HmacSha512,
}

impl MacAlgorithm {
    /// Every algorithm, in KMS order.
    pub const ALL: [Self; 4] =
        [Self::HmacSha224, Self::HmacSha256, Self::HmacSha384, Self::HmacSha512];

    /// The AWS KMS name.
    pub fn kms_name(self) -> &'static str {
        match self {
            Self::HmacSha224 => "HMAC_SHA_224",
            Self::HmacSha256 => "HMAC_SHA_256",
            Self::HmacSha384 => "HMAC_SHA_384",
            Self::HmacSha512 => "HMAC_SHA_512",
        }
    }

    /// Parses an AWS KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.kms_name() == name)
    }

    /// Length of the MAC in bytes.
    pub fn tag_len(self) -> usize {
        match self {
            Self::HmacSha224 => 28,
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }

    /// Length of the key AWS KMS generates for this algorithm (`HMAC_224` … `HMAC_512`).
    pub fn key_len(self) -> usize {
        self.tag_len()
    }
}

impl fmt::Display for MacAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kms_name())
    }
}
