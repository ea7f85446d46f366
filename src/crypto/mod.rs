//! The crypto layer: every algorithm kagi uses, behind one [`CryptoBackend`] trait. No I/O.
//!
//! This is the only module that handles raw key bytes.
//! It does not persist, authorize or audit anything; the keystore does that around it.
//!
//! # Choosing a backend
//!
//! | backend | crate | use it for |
//! |---|---|---|
//! | [`BackendKind::AwsLc`] (default) | aws-lc-rs | everything: constant-time, fast, FIPS-capable |
//! | [`BackendKind::RustCrypto`] | aes-gcm, aes-kw, p256, p384, p521, k256, rsa, hmac, sha2 | a pure-Rust build, and cross-checking the default |
//!
//! Both give the same answers; the tests sign on one and verify on the other.
//!
//! # What each call takes
//!
//! - Symmetric: [`CryptoBackend::seal`] / [`CryptoBackend::open`] (AES-256-GCM with associated
//!   data), [`CryptoBackend::hmac`] / [`CryptoBackend::verify_hmac`],
//!   [`CryptoBackend::hkdf_sha512`], [`CryptoBackend::fill_random`], and AES key wrap with
//!   padding (RFC 5649) with [`CryptoBackend::wrap_key`] / [`CryptoBackend::unwrap_key`].
//! - Asymmetric: generate a key pair as PKCS#8 DER with [`CryptoBackend::generate_key_pair`],
//!   load it once with [`CryptoBackend::load_private_key`] (parsing RSA keys is expensive; the
//!   keystore caches loaded keys) and sign, decrypt or agree with the [`PrivateKey`]; load a DER
//!   SubjectPublicKeyInfo with [`CryptoBackend::load_public_key`] and verify or encrypt.
//!
//! # Security
//!
//! RSA private-key operations (signing, OAEP decryption) must not leak timing.
//! aws-lc uses constant-time, blinded RSA; the `rsa` crate is affected by RUSTSEC-2023-0071
//! (the Marvin attack: timing of its big-integer arithmetic), which has no fix.
//! kagi therefore trusts only `aws-lc` with RSA private keys in production; the `rustcrypto`
//! backend does them for cross-checking and a pure-Rust build, and says so at start.

mod awslc;
mod rustcrypto;
pub mod secret;
pub mod shamir;
mod spec;

use std::fmt;

pub use secret::{AesKey, SecretBytes};
pub use spec::{EcCurve, KeyPairSpec, MacAlgorithm, OaepHash, SigningAlgorithm};

/// Whether this is a FIPS build (the `fips` cargo feature): aws-lc-rs on the AWS-LC FIPS module,
/// the `rustcrypto` backend refused, and every call the module does not approve refused with
/// [`Error::NotApproved`] (docs/FIPS.md lists them).
pub const FIPS: bool = cfg!(feature = "fips");

/// Checks, at start, that the FIPS module is in FIPS mode (its power-on self-tests passed).
/// Always `Ok` in a build without the `fips` feature.
///
/// # Errors
/// A message saying why the module is not in FIPS mode.
pub fn check_fips_mode() -> std::result::Result<(), &'static str> {
    if FIPS { aws_lc_rs::try_fips_mode() } else { Ok(()) }
}

/// Length of an AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM authentication tag in bytes.
pub const TAG_LEN: usize = 16;
/// Largest key [`CryptoBackend::wrap_key`] wraps, in bytes (aws-lc takes at most `INT_MAX`).
pub const MAX_WRAPPED_KEY_LEN: usize = i32::MAX as usize - 16;

/// Which implementation of the algorithms to use; chosen at run time by configuration.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub enum BackendKind {
    /// aws-lc-rs: constant-time, fast, FIPS-capable. The default.
    #[default]
    AwsLc,
    /// The RustCrypto crates: pure Rust.
    RustCrypto,
}

impl BackendKind {
    /// Both backends, default first.
    pub const ALL: [Self; 2] = [Self::AwsLc, Self::RustCrypto];

    /// The configuration name: `aws-lc` or `rustcrypto`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AwsLc => "aws-lc",
            Self::RustCrypto => "rustcrypto",
        }
    }

    /// Parses a configuration name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Whether this build may use the backend: in a FIPS build only `aws-lc` (the FIPS module).
    ///
    /// # Errors
    /// [`Error::NotApproved`] for `rustcrypto` in a FIPS build.
    pub fn check_allowed(self) -> Result<()> {
        match self {
            Self::RustCrypto if FIPS => Err(Error::NotApproved("the rustcrypto backend")),
            _ => Ok(()),
        }
    }

    /// The backend itself.
    pub fn backend(self) -> &'static dyn CryptoBackend {
        match self {
            Self::AwsLc => &awslc::AwsLc,
            Self::RustCrypto => &rustcrypto::RustCrypto,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a signature covers.
#[derive(Clone, Copy, Debug)]
pub enum SignInput<'a> {
    /// The message itself; the backend hashes it with the algorithm's hash.
    Message(&'a [u8]),
    /// A digest the caller computed with the algorithm's hash. It is checked for length and
    /// never hashed again.
    Digest(&'a [u8]),
}

/// Failures of the crypto layer. Messages carry no key or plaintext bytes.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum Error {
    /// An AEAD open failed: wrong key, wrong associated data, damaged or truncated input.
    /// Deliberately carries no detail (no decryption oracle).
    #[error("decryption failed")]
    DecryptFailed,
    /// A signature or MAC did not verify.
    #[error("signature or mac is not valid")]
    BadSignature,
    /// Key bytes that are malformed or the wrong size for the algorithm.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// Input of the wrong size or shape (a digest of the wrong length, an oversized message).
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// The algorithm does not apply to this key (an RSA algorithm on an EC key, say).
    #[error("algorithm {0} does not apply to this key")]
    WrongAlgorithm(&'static str),
    /// A FIPS build refuses the algorithm or the way it is called: the FIPS module does not
    /// approve it (docs/FIPS.md).
    #[error("{0} is not approved in FIPS mode")]
    NotApproved(&'static str),
    /// The operating system's random generator failed.
    #[error("random generator failed")]
    Random,
    /// The library failed in a way the inputs do not explain. This is a bug or a resource
    /// failure, never the caller's fault.
    #[error("crypto library failure: {0}")]
    Internal(&'static str),
}

/// Result of a crypto call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The algorithms kagi needs, implemented once per backend.
///
/// Implementations are stateless unit structs; get one with [`BackendKind::backend`].
pub trait CryptoBackend: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Fills `out` from the operating system's random generator.
    ///
    /// # Errors
    /// [`Error::Random`] when the generator fails.
    fn fill_random(&self, out: &mut [u8]) -> Result<()>;

    /// AES-256-GCM encryption under a nonce the caller chose: returns `ciphertext ‖ tag`
    /// (plaintext length + [`TAG_LEN`]). Known-answer tests use it; kagi's own encryption uses
    /// [`CryptoBackend::seal_fresh`].
    ///
    /// # Errors
    /// [`Error::NotApproved`] in a FIPS build (a caller-chosen GCM nonce); otherwise only on
    /// library failure.
    fn seal(
        &self,
        key: &AesKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>>;

    /// AES-256-GCM encryption under a fresh random nonce that the library draws (in a FIPS build
    /// the module's own IV generation, the only AES-GCM encryption it approves): returns the
    /// nonce and `ciphertext ‖ tag`.
    ///
    /// # Errors
    /// Only on library or random-generator failure.
    fn seal_fresh(
        &self,
        key: &AesKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>)>;

    /// AES-256-GCM decryption of `ciphertext ‖ tag`.
    ///
    /// # Errors
    /// [`Error::DecryptFailed`] for any input that does not authenticate, including one shorter
    /// than a tag.
    fn open(
        &self,
        key: &AesKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes>;

    /// HMAC of `message` under `key` (any length, the empty key included, as RFC 2104 allows;
    /// the keystore only ever passes keys of the spec's length).
    ///
    /// # Errors
    /// Only on library failure.
    fn hmac(&self, algorithm: MacAlgorithm, key: &[u8], message: &[u8]) -> Result<Vec<u8>>;

    /// Checks an HMAC in constant time.
    ///
    /// # Errors
    /// [`Error::BadSignature`] when `tag` is not the HMAC of `message` (any length mismatch
    /// included).
    fn verify_hmac(
        &self,
        algorithm: MacAlgorithm,
        key: &[u8],
        message: &[u8],
        tag: &[u8],
    ) -> Result<()>;

    /// HKDF-SHA512 (RFC 5869): extract with `salt` and `ikm`, expand with `info` into `out`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `out` is longer than 255 × 64 bytes; [`Error::NotApproved`]
    /// in a FIPS build for an empty `salt` or `info`.
    fn hkdf_sha512(&self, salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<()>;

    /// AES Key Wrap with Padding (RFC 5649; NIST SP 800-38F KWP) of `key` under the AES-256
    /// key-encryption key `kek`. The result is `key` padded to a multiple of 8 bytes plus 8
    /// (16 bytes at least).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty key or one over [`MAX_WRAPPED_KEY_LEN`] bytes.
    fn wrap_key(&self, kek: &AesKey, key: &[u8]) -> Result<Vec<u8>>;

    /// Unwraps an AES-KWP wrapped key, checking its integrity value and padding.
    ///
    /// # Errors
    /// [`Error::DecryptFailed`] for any input that does not unwrap under `kek`: a wrong key,
    /// damaged bytes, bad padding, or a length that is not a multiple of 8 of at least 16.
    fn unwrap_key(&self, kek: &AesKey, wrapped: &[u8]) -> Result<SecretBytes>;

    /// Generates a new asymmetric key pair, returned as PKCS#8 DER.
    ///
    /// # Errors
    /// [`Error::NotApproved`] in a FIPS build for secp256k1; otherwise only on library or
    /// random-generator failure.
    fn generate_key_pair(&self, spec: KeyPairSpec) -> Result<SecretBytes>;

    /// Parses a PKCS#8 DER private key of the given spec.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] when the DER is malformed or is not a key of `spec`;
    /// [`Error::NotApproved`] in a FIPS build for secp256k1.
    fn load_private_key(&self, spec: KeyPairSpec, pkcs8: &[u8]) -> Result<Box<dyn PrivateKey>>;

    /// Parses a DER SubjectPublicKeyInfo of the given spec.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] when the DER is malformed or is not a key of `spec`;
    /// [`Error::NotApproved`] in a FIPS build for secp256k1.
    fn load_public_key(&self, spec: KeyPairSpec, spki: &[u8]) -> Result<Box<dyn PublicKey>>;
}

/// A parsed private key, ready to sign, decrypt or agree.
///
/// # Security
/// Implementations zeroize their key on drop and their `Debug` prints only the spec.
pub trait PrivateKey: Send + Sync + fmt::Debug {
    /// The key's spec.
    fn spec(&self) -> KeyPairSpec;

    /// The public half as DER SubjectPublicKeyInfo.
    fn public_key_der(&self) -> Vec<u8>;

    /// The private key as PKCS#8 DER (to seal it for storage).
    ///
    /// # Errors
    /// Only on library failure.
    fn to_pkcs8_der(&self) -> Result<SecretBytes>;

    /// Signs. ECDSA signatures are DER; RSA signatures are the modulus length.
    ///
    /// # Errors
    /// [`Error::WrongAlgorithm`] when `algorithm` does not fit the key;
    /// [`Error::InvalidInput`] for a digest of the wrong length;
    /// [`Error::NotApproved`] in a FIPS build for any digest.
    fn sign(&self, algorithm: SigningAlgorithm, input: SignInput<'_>) -> Result<Vec<u8>>;

    /// RSAES-OAEP decryption.
    ///
    /// # Errors
    /// [`Error::WrongAlgorithm`] for a non-RSA key; [`Error::DecryptFailed`] for any ciphertext
    /// that does not decrypt; [`Error::NotApproved`] in a FIPS build.
    fn decrypt_oaep(&self, hash: OaepHash, ciphertext: &[u8]) -> Result<SecretBytes>;

    /// ECDH with a peer's public key (DER SubjectPublicKeyInfo on the same curve): the raw
    /// shared secret (the x coordinate).
    ///
    /// # Errors
    /// [`Error::WrongAlgorithm`] for a non-NIST-curve key; [`Error::InvalidKey`] for a peer
    /// key that is malformed, on another curve or not on the curve.
    fn agree(&self, peer_spki: &[u8]) -> Result<SecretBytes>;
}

/// A parsed public key, ready to verify or encrypt.
pub trait PublicKey: Send + Sync + fmt::Debug {
    /// The key's spec.
    fn spec(&self) -> KeyPairSpec;

    /// Verifies a signature. ECDSA signatures are DER; high-S signatures are accepted (as
    /// aws-lc and Wycheproof do).
    ///
    /// # Errors
    /// [`Error::BadSignature`] when the signature does not verify or is malformed;
    /// [`Error::WrongAlgorithm`] when `algorithm` does not fit the key;
    /// [`Error::InvalidInput`] for a digest of the wrong length;
    /// [`Error::NotApproved`] in a FIPS build for any digest.
    fn verify(
        &self,
        algorithm: SigningAlgorithm,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<()>;

    /// RSAES-OAEP encryption.
    ///
    /// # Errors
    /// [`Error::WrongAlgorithm`] for a non-RSA key; [`Error::InvalidInput`] when the plaintext
    /// is too long for the key and hash; [`Error::NotApproved`] in a FIPS build.
    fn encrypt_oaep(&self, hash: OaepHash, plaintext: &[u8]) -> Result<Vec<u8>>;
}

/// Checks that `input`, when it is a digest, has the length of `algorithm`'s hash.
pub(crate) fn check_digest_len(algorithm: SigningAlgorithm, input: SignInput<'_>) -> Result<()> {
    match input {
        SignInput::Digest(digest) if digest.len() != algorithm.digest_len() => {
            Err(Error::InvalidInput("digest length does not match the signing algorithm"))
        }
        _ => Ok(()),
    }
}

/// In a FIPS build, refuses a key pair spec the module does not approve: secp256k1 (the module
/// approves ECDSA and ECDH on P-224, P-256, P-384 and P-521 only).
pub(crate) fn fips_check_spec(spec: KeyPairSpec) -> Result<()> {
    match spec {
        KeyPairSpec::EccSecgP256k1 if FIPS => {
            Err(Error::NotApproved("ECC_SECG_P256K1 (secp256k1)"))
        }
        _ => Ok(()),
    }
}

/// In a FIPS build, refuses signing or verifying a precomputed digest: the module approves
/// ECDSA and RSA signatures only when it hashes the message itself.
pub(crate) fn fips_check_sign_input(input: SignInput<'_>) -> Result<()> {
    match input {
        SignInput::Digest(_) if FIPS => {
            Err(Error::NotApproved("signing or verifying a precomputed digest"))
        }
        _ => Ok(()),
    }
}

/// In a FIPS build, refuses RSAES-OAEP: the module has no approved RSA key transport.
pub(crate) fn fips_check_oaep() -> Result<()> {
    if FIPS { Err(Error::NotApproved("RSAES-OAEP encryption and decryption")) } else { Ok(()) }
}

/// In a FIPS build, refuses HKDF with an empty salt or an empty info, which the module does not
/// approve (NIST SP 800-56C).
pub(crate) fn fips_check_hkdf(salt: &[u8], info: &[u8]) -> Result<()> {
    if FIPS && (salt.is_empty() || info.is_empty()) {
        Err(Error::NotApproved("HKDF with an empty salt or info"))
    } else {
        Ok(())
    }
}

/// Checks the input of [`CryptoBackend::wrap_key`].
pub(crate) fn check_key_to_wrap(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_WRAPPED_KEY_LEN {
        return Err(Error::InvalidInput("AES-KWP wraps a key of 1 to 2^31 - 17 bytes"));
    }
    Ok(())
}

/// Whether `len` can be the length of an AES-KWP wrapped key (RFC 5649: two semiblocks at
/// least). Checked before either library sees the input, so both reject the same lengths; and
/// aes-kw 0.3.1 alone "unwraps" the 8-byte input `a65959a6 00000000` to an empty key under any
/// key-encryption key (Wycheproof aes_kwp tcId 253).
pub(crate) fn is_wrapped_key_len(len: usize) -> bool {
    (16..=MAX_WRAPPED_KEY_LEN + 8).contains(&len) && len.is_multiple_of(8)
}

#[cfg(test)]
mod tests;
