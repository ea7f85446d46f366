//! The `rustcrypto` backend: aes-gcm, aes-kw, p256, p384, p521, k256, rsa, hmac, sha2.
//!
//! Pure Rust, built from the RustCrypto crates only. It gives the same answers as the `aws-lc`
//! backend: AES-256-GCM returns `ciphertext ‖ tag`; RSASSA-PSS uses a salt as long as the hash
//! and MGF1 with the same hash; RSAES-OAEP uses an empty label and MGF1 with the OAEP hash;
//! ECDSA signatures are DER, and verification accepts high-S signatures (it normalizes S
//! first) but rejects any encoding that is not strict DER; HMAC accepts keys of any length,
//! the empty key included, as aws-lc does.
//!
//! Randomness comes from the operating system (`getrandom`), through a fallible generator, so
//! a generator failure becomes [`Error::Random`] rather than a panic. ECDSA signatures are
//! hedged: RFC 6979 deterministic nonces with fresh random bytes mixed in.
//!
//! # Security
//! The RSA private-key operations here (signing, OAEP decryption) are affected by
//! RUSTSEC-2023-0071 (the Marvin timing attack on the `rsa` crate, unfixed), so kagi trusts
//! only `aws-lc` with RSA private keys in production and uses this backend for them only to
//! cross-check and for a pure-Rust build.

use std::borrow::Cow;
use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{self, Aead, AeadInOut, KeyInit, Payload};
use ecdsa::elliptic_curve::{CurveArithmetic, Generate};
use ecdsa::signature::hazmat::{PrehashVerifier, RandomizedPrehashSigner};
use ecdsa::{EcdsaCurve, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::rand_core::{TryCryptoRng, TryRng};
use rsa::traits::PublicKeyParts;
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use super::{
    AesKey, BackendKind, CryptoBackend, Error, KeyPairSpec, MacAlgorithm, NONCE_LEN, OaepHash,
    PrivateKey, PublicKey, Result, SecretBytes, SignInput, SigningAlgorithm, TAG_LEN,
    check_digest_len, check_key_to_wrap, is_wrapped_key_len,
};

/// The pure-Rust backend (RustCrypto crates). Stateless.
#[derive(Debug)]
pub(crate) struct RustCrypto;

/// The operating system's generator as a fallible `rand_core` generator: failures surface as
/// errors from the crates (mapped to [`Error::Random`]), never as panics.
#[derive(Debug)]
struct OsRng;

impl TryRng for OsRng {
    type Error = getrandom::Error;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        getrandom::u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        getrandom::u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        getrandom::fill(dst)
    }
}

impl TryCryptoRng for OsRng {}

/// The name used in [`Error::WrongAlgorithm`] for key agreement.
const ECDH: &str = "ECDH";

// ----------------------------------------------------------------------------------------------
// Hashes.

/// The hash of a signing algorithm.
#[derive(Clone, Copy, Debug)]
enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

impl SigHash {
    fn of(algorithm: SigningAlgorithm) -> Self {
        use SigningAlgorithm as S;
        match algorithm {
            S::RsassaPssSha256 | S::RsassaPkcs1V15Sha256 | S::EcdsaSha256 => Self::Sha256,
            S::RsassaPssSha384 | S::RsassaPkcs1V15Sha384 | S::EcdsaSha384 => Self::Sha384,
            S::RsassaPssSha512 | S::RsassaPkcs1V15Sha512 | S::EcdsaSha512 => Self::Sha512,
        }
    }

    fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(message).to_vec(),
            Self::Sha384 => Sha384::digest(message).to_vec(),
            Self::Sha512 => Sha512::digest(message).to_vec(),
        }
    }
}

/// Runs `$body` with the type alias `$d` bound to the digest type of a [`SigHash`].
macro_rules! with_sig_hash {
    ($hash:expr, $d:ident => $body:expr) => {
        match $hash {
            SigHash::Sha256 => {
                type $d = Sha256;
                $body
            }
            SigHash::Sha384 => {
                type $d = Sha384;
                $body
            }
            SigHash::Sha512 => {
                type $d = Sha512;
                $body
            }
        }
    };
}

/// The digest a signature covers: the hash of a message, or a caller's digest as is (never
/// hashed again). The caller has checked the digest length with [`check_digest_len`].
fn prehash(algorithm: SigningAlgorithm, input: SignInput<'_>) -> Cow<'_, [u8]> {
    match input {
        SignInput::Message(message) => Cow::Owned(SigHash::of(algorithm).digest(message)),
        SignInput::Digest(digest) => Cow::Borrowed(digest),
    }
}

/// The common checks before a signature or verification: digest length, then key fit.
fn check_signing(
    spec: KeyPairSpec,
    algorithm: SigningAlgorithm,
    input: SignInput<'_>,
) -> Result<()> {
    check_digest_len(algorithm, input)?;
    if !algorithm.fits(spec) {
        return Err(Error::WrongAlgorithm(algorithm.kms_name()));
    }
    Ok(())
}

fn key_wrap_key(kek: &AesKey) -> Result<aes_kw::KwpAes256> {
    aes_kw::KwpAes256::new_from_slice(kek.expose_secret())
        .map_err(|_| Error::Internal("AES-KWP key setup failed"))
}

fn hmac_tag<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Result<Vec<u8>> {
    let mut mac =
        <M as KeyInit>::new_from_slice(key).map_err(|_| Error::InvalidKey("HMAC key rejected"))?;
    mac.update(message);
    Ok(mac.finalize().into_bytes().to_vec())
}

fn hmac_verify<M: Mac + KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> Result<()> {
    let mut mac =
        <M as KeyInit>::new_from_slice(key).map_err(|_| Error::InvalidKey("HMAC key rejected"))?;
    mac.update(message);
    // Constant time; a tag of the wrong length fails too.
    mac.verify_slice(tag).map_err(|_| Error::BadSignature)
}

// ----------------------------------------------------------------------------------------------
// The backend.

impl CryptoBackend for RustCrypto {
    fn kind(&self) -> BackendKind {
        BackendKind::RustCrypto
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<()> {
        getrandom::fill(out).map_err(|_| Error::Random)
    }

    fn seal(
        &self,
        key: &AesKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new_from_slice(key.expose_secret())
            .map_err(|_| Error::Internal("AES-256-GCM key setup failed"))?;
        let nonce = aead::Nonce::<Aes256Gcm>::from(*nonce);
        cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad })
            .map_err(|_| Error::Internal("AES-256-GCM encryption failed"))
    }

    fn seal_fresh(
        &self,
        key: &AesKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>)> {
        let mut nonce = [0u8; NONCE_LEN];
        self.fill_random(&mut nonce)?;
        Ok((nonce, self.seal(key, &nonce, aad, plaintext)?))
    }

    fn open(
        &self,
        key: &AesKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes> {
        let Some(tag_start) = ciphertext_and_tag.len().checked_sub(TAG_LEN) else {
            return Err(Error::DecryptFailed);
        };
        let (ciphertext, tag) = ciphertext_and_tag.split_at(tag_start);
        let tag = aead::Tag::<Aes256Gcm>::try_from(tag).map_err(|_| Error::DecryptFailed)?;
        let cipher = Aes256Gcm::new_from_slice(key.expose_secret())
            .map_err(|_| Error::Internal("AES-256-GCM key setup failed"))?;
        let nonce = aead::Nonce::<Aes256Gcm>::from(*nonce);
        // Decrypt in a buffer that is wiped on drop, whether or not the tag checks.
        let mut plaintext = SecretBytes::from_slice(ciphertext);
        cipher
            .decrypt_inout_detached(&nonce, aad, plaintext.expose_secret_mut().into(), &tag)
            .map_err(|_| Error::DecryptFailed)?;
        Ok(plaintext)
    }

    /// Accepts keys of any length, the empty key included, as aws-lc does.
    fn hmac(&self, algorithm: MacAlgorithm, key: &[u8], message: &[u8]) -> Result<Vec<u8>> {
        match algorithm {
            MacAlgorithm::HmacSha224 => hmac_tag::<Hmac<Sha224>>(key, message),
            MacAlgorithm::HmacSha256 => hmac_tag::<Hmac<Sha256>>(key, message),
            MacAlgorithm::HmacSha384 => hmac_tag::<Hmac<Sha384>>(key, message),
            MacAlgorithm::HmacSha512 => hmac_tag::<Hmac<Sha512>>(key, message),
        }
    }

    fn verify_hmac(
        &self,
        algorithm: MacAlgorithm,
        key: &[u8],
        message: &[u8],
        tag: &[u8],
    ) -> Result<()> {
        match algorithm {
            MacAlgorithm::HmacSha224 => hmac_verify::<Hmac<Sha224>>(key, message, tag),
            MacAlgorithm::HmacSha256 => hmac_verify::<Hmac<Sha256>>(key, message, tag),
            MacAlgorithm::HmacSha384 => hmac_verify::<Hmac<Sha384>>(key, message, tag),
            MacAlgorithm::HmacSha512 => hmac_verify::<Hmac<Sha512>>(key, message, tag),
        }
    }

    fn hkdf_sha512(&self, salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
        Hkdf::<Sha512>::new(Some(salt), ikm)
            .expand(info, out)
            .map_err(|_| Error::InvalidInput("HKDF-SHA512 output is longer than 255 × 64 bytes"))
    }

    fn wrap_key(&self, kek: &AesKey, key: &[u8]) -> Result<Vec<u8>> {
        check_key_to_wrap(key)?;
        let mut out = vec![0; key.len().div_ceil(8) * 8 + 8];
        key_wrap_key(kek)?
            .wrap_key(key, &mut out)
            .map_err(|_| Error::Internal("AES-KWP wrap failed"))?;
        Ok(out)
    }

    fn unwrap_key(&self, kek: &AesKey, wrapped: &[u8]) -> Result<SecretBytes> {
        if !is_wrapped_key_len(wrapped.len()) {
            return Err(Error::DecryptFailed);
        }
        // aes-kw wipes the buffer itself when the check fails; this one is wiped on drop.
        let mut out = SecretBytes::zeroed(wrapped.len() - 8);
        let len = key_wrap_key(kek)?
            .unwrap_key(wrapped, out.expose_secret_mut())
            .map_err(|_| Error::DecryptFailed)?
            .len();
        out.truncate(len);
        Ok(out)
    }

    fn generate_key_pair(&self, spec: KeyPairSpec) -> Result<SecretBytes> {
        match spec {
            KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
                let bits = rsa_bits(spec)?;
                // `new` uses the public exponent 65537.
                let key = rsa::PrivateKey::new(&mut OsRng, bits).map_err(|error| match error {
                    rsa::Error::Rng => Error::Random,
                    _ => Error::Internal("RSA key generation failed"),
                })?;
                rsa_pkcs8(&key)
            }
            KeyPairSpec::EccNistP256 => generate_ec::<p256::NistP256>(),
            KeyPairSpec::EccNistP384 => generate_ec::<p384::NistP384>(),
            KeyPairSpec::EccNistP521 => generate_ec::<p521::NistP521>(),
            KeyPairSpec::EccSecgP256k1 => generate_ec::<k256::Secp256k1>(),
        }
    }

    fn load_private_key(&self, spec: KeyPairSpec, pkcs8: &[u8]) -> Result<Box<dyn PrivateKey>> {
        match spec {
            KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
                let key = rsa::PrivateKey::from_pkcs8_der(pkcs8)
                    .map_err(|_| Error::InvalidKey("not a PKCS#8 RSA private key"))?;
                check_rsa_bits(spec, key.as_public_key())?;
                let public_der = rsa_spki(key.as_public_key())?;
                Ok(Box::new(RsaPrivate { spec, key, public_der }))
            }
            KeyPairSpec::EccNistP256 => load_ec_private::<p256::NistP256>(spec, pkcs8),
            KeyPairSpec::EccNistP384 => load_ec_private::<p384::NistP384>(spec, pkcs8),
            KeyPairSpec::EccNistP521 => load_ec_private::<p521::NistP521>(spec, pkcs8),
            KeyPairSpec::EccSecgP256k1 => load_ec_private::<k256::Secp256k1>(spec, pkcs8),
        }
    }

    fn load_public_key(&self, spec: KeyPairSpec, spki: &[u8]) -> Result<Box<dyn PublicKey>> {
        match spec {
            KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
                let key = rsa::PublicKey::from_public_key_der(spki)
                    .map_err(|_| Error::InvalidKey("not a DER RSA SubjectPublicKeyInfo"))?;
                check_rsa_bits(spec, &key)?;
                Ok(Box::new(RsaPublic { spec, key }))
            }
            KeyPairSpec::EccNistP256 => load_ec_public::<p256::NistP256>(spec, spki),
            KeyPairSpec::EccNistP384 => load_ec_public::<p384::NistP384>(spec, spki),
            KeyPairSpec::EccNistP521 => load_ec_public::<p521::NistP521>(spec, spki),
            KeyPairSpec::EccSecgP256k1 => load_ec_public::<k256::Secp256k1>(spec, spki),
        }
    }
}

// ----------------------------------------------------------------------------------------------
// RSA.

fn rsa_bits(spec: KeyPairSpec) -> Result<usize> {
    spec.rsa_bits().ok_or(Error::Internal("not an RSA spec"))
}

/// Checks that the modulus has exactly the spec's size.
fn check_rsa_bits(spec: KeyPairSpec, key: &rsa::PublicKey) -> Result<()> {
    // The modulus is public: variable time is fine.
    let bits = usize::try_from(key.n().bit_width_vartime()).unwrap_or(usize::MAX);
    if bits == rsa_bits(spec)? {
        Ok(())
    } else {
        Err(Error::InvalidKey("RSA modulus size does not match the key spec"))
    }
}

fn rsa_pkcs8(key: &rsa::PrivateKey) -> Result<SecretBytes> {
    key.to_pkcs8_der()
        .map(|document| SecretBytes::from_slice(document.as_bytes()))
        .map_err(|_| Error::Internal("PKCS#8 encoding of an RSA key failed"))
}

fn rsa_spki(key: &rsa::PublicKey) -> Result<Vec<u8>> {
    key.to_public_key_der()
        .map(|document| document.as_bytes().to_vec())
        .map_err(|_| Error::Internal("SubjectPublicKeyInfo encoding of an RSA key failed"))
}

/// An RSA private key. The `rsa` crate wipes it on drop.
struct RsaPrivate {
    spec: KeyPairSpec,
    key: rsa::PrivateKey,
    public_der: Vec<u8>,
}

impl fmt::Debug for RsaPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivate").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl PrivateKey for RsaPrivate {
    fn spec(&self) -> KeyPairSpec {
        self.spec
    }

    fn public_key_der(&self) -> Vec<u8> {
        self.public_der.clone()
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes> {
        rsa_pkcs8(&self.key)
    }

    fn sign(&self, algorithm: SigningAlgorithm, input: SignInput<'_>) -> Result<Vec<u8>> {
        check_signing(self.spec, algorithm, input)?;
        let digest = prehash(algorithm, input);
        // Both schemes blind the private-key operation with `OsRng`; PSS draws its salt
        // (as long as the hash) from it too, and uses MGF1 with the same hash.
        let signature = with_sig_hash!(SigHash::of(algorithm), D => {
            if algorithm.is_pss() {
                self.key.pss_sign_prehash_with_rng::<D, _>(&mut OsRng, &digest)
            } else {
                self.key.pkcs1v15_sign_prehash_with_rng::<D, _>(&mut OsRng, &digest)
            }
        });
        signature.map_err(|error| match error {
            rsa::Error::Rng => Error::Random,
            _ => Error::Internal("RSA signing failed"),
        })
    }

    fn decrypt_oaep(&self, hash: OaepHash, ciphertext: &[u8]) -> Result<SecretBytes> {
        let plaintext = match hash {
            OaepHash::Sha1 => self.key.oaep_decrypt_with_rng::<Sha1, _>(&mut OsRng, ciphertext),
            OaepHash::Sha256 => self.key.oaep_decrypt_with_rng::<Sha256, _>(&mut OsRng, ciphertext),
        };
        plaintext.map(SecretBytes::new).map_err(|_| Error::DecryptFailed)
    }

    fn agree(&self, _peer_spki: &[u8]) -> Result<SecretBytes> {
        Err(Error::WrongAlgorithm(ECDH))
    }
}

/// An RSA public key.
#[derive(Debug)]
struct RsaPublic {
    spec: KeyPairSpec,
    key: rsa::PublicKey,
}

impl PublicKey for RsaPublic {
    fn spec(&self) -> KeyPairSpec {
        self.spec
    }

    fn verify(
        &self,
        algorithm: SigningAlgorithm,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<()> {
        check_signing(self.spec, algorithm, input)?;
        let digest = prehash(algorithm, input);
        // PSS: the salt must be as long as the hash, as aws-lc requires.
        let verified = with_sig_hash!(SigHash::of(algorithm), D => {
            if algorithm.is_pss() {
                self.key.pss_verify_prehash::<D>(&digest, signature)
            } else {
                self.key.pkcs1v15_verify_prehash::<D>(&digest, signature)
            }
        });
        verified.map_err(|_| Error::BadSignature)
    }

    fn encrypt_oaep(&self, hash: OaepHash, plaintext: &[u8]) -> Result<Vec<u8>> {
        let too_long = Error::InvalidInput("plaintext is too long for RSAES-OAEP with this key");
        let max = self.key.size().checked_sub(2 * hash.digest_len() + 2).ok_or(too_long.clone())?;
        if plaintext.len() > max {
            return Err(too_long);
        }
        let ciphertext = match hash {
            OaepHash::Sha1 => self.key.oaep_encrypt_with_rng::<Sha1, _>(&mut OsRng, plaintext),
            OaepHash::Sha256 => self.key.oaep_encrypt_with_rng::<Sha256, _>(&mut OsRng, plaintext),
        };
        ciphertext.map_err(|error| match error {
            rsa::Error::Rng => Error::Random,
            rsa::Error::MessageTooLong => too_long,
            _ => Error::Internal("RSAES-OAEP encryption failed"),
        })
    }
}

// ----------------------------------------------------------------------------------------------
// Elliptic curves.

fn generate_ec<C>() -> Result<SecretBytes>
where
    C: EcdsaCurve + CurveArithmetic,
    SigningKey<C>: Generate + EncodePrivateKey,
{
    let key = SigningKey::<C>::try_generate_from_rng(&mut OsRng).map_err(|_| Error::Random)?;
    // The PKCS#8 document includes the public key.
    key.to_pkcs8_der()
        .map(|document| SecretBytes::from_slice(document.as_bytes()))
        .map_err(|_| Error::Internal("PKCS#8 encoding of an EC key failed"))
}

fn load_ec_private<C>(spec: KeyPairSpec, pkcs8: &[u8]) -> Result<Box<dyn PrivateKey>>
where
    C: EcdsaCurve + CurveArithmetic,
    SigningKey<C>: DecodePrivateKey,
    VerifyingKey<C>: EncodePublicKey,
    EcPrivate<C>: PrivateKey + 'static,
{
    // Decoding checks the curve OID, the scalar range and any embedded public key.
    let key = SigningKey::<C>::from_pkcs8_der(pkcs8)
        .map_err(|_| Error::InvalidKey("not a PKCS#8 EC private key on the spec's curve"))?;
    let public_der = key
        .verifying_key()
        .to_public_key_der()
        .map_err(|_| Error::Internal("SubjectPublicKeyInfo encoding of an EC key failed"))?
        .as_bytes()
        .to_vec();
    Ok(Box::new(EcPrivate { spec, key, public_der }))
}

fn load_ec_public<C>(spec: KeyPairSpec, spki: &[u8]) -> Result<Box<dyn PublicKey>>
where
    C: EcdsaCurve + CurveArithmetic,
    VerifyingKey<C>: DecodePublicKey,
    EcPublic<C>: PublicKey + 'static,
{
    // Decoding checks the curve OID and that the point is on the curve and not the identity.
    let key = VerifyingKey::<C>::from_public_key_der(spki)
        .map_err(|_| Error::InvalidKey("not a DER EC SubjectPublicKeyInfo on the spec's curve"))?;
    Ok(Box::new(EcPublic { spec, key }))
}

/// An EC private key. `SigningKey` wipes its scalar on drop.
struct EcPrivate<C: EcdsaCurve + CurveArithmetic> {
    spec: KeyPairSpec,
    key: SigningKey<C>,
    /// The public key as DER SubjectPublicKeyInfo (uncompressed point).
    public_der: Vec<u8>,
}

impl<C: EcdsaCurve + CurveArithmetic> fmt::Debug for EcPrivate<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcPrivate").field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// An EC public key.
struct EcPublic<C: EcdsaCurve + CurveArithmetic> {
    spec: KeyPairSpec,
    key: VerifyingKey<C>,
}

impl<C: EcdsaCurve + CurveArithmetic> fmt::Debug for EcPublic<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcPublic").field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// ECDH for a curve that has it (`yes`) or not (`no`, secp256k1 as in AWS KMS).
macro_rules! ec_agree {
    (yes, $curve:ty, $key:expr, $peer_spki:expr) => {{
        let peer = ecdsa::elliptic_curve::PublicKey::<$curve>::from_public_key_der($peer_spki)
            .map_err(|_| {
                Error::InvalidKey("peer key is malformed, on another curve or not on the curve")
            })?;
        let shared =
            ecdsa::elliptic_curve::ecdh::diffie_hellman($key.as_nonzero_scalar(), peer.as_affine());
        Ok(SecretBytes::from_slice(shared.raw_secret_bytes()))
    }};
    (no, $curve:ty, $key:expr, $peer_spki:expr) => {{
        let _ = ($key, $peer_spki);
        Err(Error::WrongAlgorithm(ECDH))
    }};
}

/// The key traits for one curve (the `der` signature bounds are easier to meet per curve).
macro_rules! ec_keys {
    ($curve:ty, ecdh: $ecdh:tt) => {
        impl PrivateKey for EcPrivate<$curve> {
            fn spec(&self) -> KeyPairSpec {
                self.spec
            }

            fn public_key_der(&self) -> Vec<u8> {
                self.public_der.clone()
            }

            fn to_pkcs8_der(&self) -> Result<SecretBytes> {
                self.key
                    .to_pkcs8_der()
                    .map(|document| SecretBytes::from_slice(document.as_bytes()))
                    .map_err(|_| Error::Internal("PKCS#8 encoding of an EC key failed"))
            }

            fn sign(&self, algorithm: SigningAlgorithm, input: SignInput<'_>) -> Result<Vec<u8>> {
                check_signing(self.spec, algorithm, input)?;
                let digest = prehash(algorithm, input);
                // Hedged RFC 6979: the only failure left (the digest length is checked) is the
                // random generator's.
                let signature: ecdsa::der::Signature<$curve> = self
                    .key
                    .sign_prehash_with_rng(&mut OsRng, &digest)
                    .map_err(|_| Error::Random)?;
                Ok(signature.as_bytes().to_vec())
            }

            fn decrypt_oaep(&self, hash: OaepHash, _ciphertext: &[u8]) -> Result<SecretBytes> {
                Err(Error::WrongAlgorithm(hash.kms_name()))
            }

            fn agree(&self, peer_spki: &[u8]) -> Result<SecretBytes> {
                ec_agree!($ecdh, $curve, &self.key, peer_spki)
            }
        }

        impl PublicKey for EcPublic<$curve> {
            fn spec(&self) -> KeyPairSpec {
                self.spec
            }

            fn verify(
                &self,
                algorithm: SigningAlgorithm,
                input: SignInput<'_>,
                signature: &[u8],
            ) -> Result<()> {
                check_signing(self.spec, algorithm, input)?;
                let digest = prehash(algorithm, input);
                // Strict DER (no BER, no trailing bytes, no out-of-range or zero scalars).
                let signature = ecdsa::Signature::<$curve>::from_der(signature)
                    .map_err(|_| Error::BadSignature)?;
                // (r, s) and (r, n − s) are both valid: accept high S, as aws-lc does.
                self.key
                    .verify_prehash(&digest, &signature.normalize_s())
                    .map_err(|_| Error::BadSignature)
            }

            fn encrypt_oaep(&self, hash: OaepHash, _plaintext: &[u8]) -> Result<Vec<u8>> {
                Err(Error::WrongAlgorithm(hash.kms_name()))
            }
        }
    };
}

ec_keys!(p256::NistP256, ecdh: yes);
ec_keys!(p384::NistP384, ecdh: yes);
ec_keys!(p521::NistP521, ecdh: yes);
ec_keys!(k256::Secp256k1, ecdh: no);

#[cfg(test)]
mod tests {
    use ecdsa::elliptic_curve::ff::PrimeField;

    use super::*;

    const MESSAGE: &[u8] = b"kagi rustcrypto backend test message";

    fn backend() -> &'static dyn CryptoBackend {
        &RustCrypto
    }

    fn key_pair(spec: KeyPairSpec) -> (Box<dyn PrivateKey>, Box<dyn PublicKey>) {
        let pkcs8 = backend().generate_key_pair(spec).expect("generate");
        let private =
            backend().load_private_key(spec, pkcs8.expose_secret()).expect("load private");
        let public =
            backend().load_public_key(spec, &private.public_key_der()).expect("load public");
        (private, public)
    }

    fn digest_of(algorithm: SigningAlgorithm, message: &[u8]) -> Vec<u8> {
        match algorithm.digest_len() {
            32 => Sha256::digest(message).to_vec(),
            48 => Sha384::digest(message).to_vec(),
            _ => Sha512::digest(message).to_vec(),
        }
    }

    fn aes_key() -> AesKey {
        AesKey::from_slice(&[7; 32]).expect("32 bytes")
    }

    #[test]
    fn kind_and_random() {
        assert_eq!(backend().kind(), BackendKind::RustCrypto);
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        backend().fill_random(&mut a).expect("random");
        backend().fill_random(&mut b).expect("random");
        assert_ne!(a, b);
        backend().fill_random(&mut []).expect("empty fill");
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = aes_key();
        let nonce = [9u8; NONCE_LEN];
        for plaintext in [&b""[..], b"x", &[0x5a; 1000][..]] {
            let sealed = backend().seal(&key, &nonce, b"aad", plaintext).expect("seal");
            assert_eq!(sealed.len(), plaintext.len() + TAG_LEN);
            let opened = backend().open(&key, &nonce, b"aad", &sealed).expect("open");
            assert_eq!(opened.expose_secret(), plaintext);

            for i in 0..sealed.len() {
                let mut tampered = sealed.clone();
                tampered[i] ^= 1;
                let result = backend().open(&key, &nonce, b"aad", &tampered);
                assert_eq!(result.err(), Some(Error::DecryptFailed));
            }
            let result = backend().open(&key, &nonce, b"aaD", &sealed);
            assert_eq!(result.err(), Some(Error::DecryptFailed));
            let result = backend().open(&key, &[8; NONCE_LEN], b"aad", &sealed);
            assert_eq!(result.err(), Some(Error::DecryptFailed));
            let other = AesKey::from_slice(&[6; 32]).expect("32 bytes");
            let result = backend().open(&other, &nonce, b"aad", &sealed);
            assert_eq!(result.err(), Some(Error::DecryptFailed));
            let result = backend().open(&key, &nonce, b"aad", &sealed[..sealed.len() - 1]);
            assert_eq!(result.err(), Some(Error::DecryptFailed));
        }
        for len in 0..TAG_LEN {
            let result = backend().open(&key, &nonce, b"", &vec![0; len]);
            assert_eq!(result.err(), Some(Error::DecryptFailed), "len {len}");
        }
    }

    #[test]
    fn seal_known_answer() {
        // AES-256-GCM with an all-zero key and nonce, empty plaintext (McGrew–Viega test case 13).
        let key = AesKey::from_slice(&[0; 32]).expect("32 bytes");
        let sealed = backend().seal(&key, &[0; NONCE_LEN], b"", b"").expect("seal");
        assert_eq!(hex::encode(sealed), "530f8afbc74536b9a963b4f1c4cb738b");
    }

    #[test]
    fn hmac_known_answers() {
        // RFC 4231, test case 2.
        let tag = backend()
            .hmac(MacAlgorithm::HmacSha256, b"Jefe", b"what do ya want for nothing?")
            .expect("hmac");
        assert_eq!(
            hex::encode(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        backend()
            .verify_hmac(MacAlgorithm::HmacSha256, b"Jefe", b"what do ya want for nothing?", &tag)
            .expect("verify");
        let mut bad = tag.clone();
        bad[31] ^= 1;
        for wrong in [&bad[..], &tag[..31], &[][..], &[tag.clone(), vec![0]].concat()[..]] {
            let result = backend().verify_hmac(
                MacAlgorithm::HmacSha256,
                b"Jefe",
                b"what do ya want for nothing?",
                wrong,
            );
            assert_eq!(result, Err(Error::BadSignature));
        }
        // The empty key is accepted, as aws-lc does (python3: hmac.new(b"", b"", sha256)).
        let tag = backend().hmac(MacAlgorithm::HmacSha256, b"", b"").expect("empty key");
        assert_eq!(
            hex::encode(tag),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"
        );
        for algorithm in MacAlgorithm::ALL {
            let key = vec![0x0b; algorithm.key_len()];
            let tag = backend().hmac(algorithm, &key, b"Hi There").expect("hmac");
            assert_eq!(tag.len(), algorithm.tag_len());
            backend().verify_hmac(algorithm, &key, b"Hi There", &tag).expect("verify");
            let result = backend().verify_hmac(algorithm, &key, b"Hi there", &tag);
            assert_eq!(result, Err(Error::BadSignature));
        }
        // RFC 4231 test case 1, HMAC-SHA-512.
        let tag = backend().hmac(MacAlgorithm::HmacSha512, &[0x0b; 20], b"Hi There").expect("hmac");
        assert_eq!(
            hex::encode(tag),
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde\
             daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
        );
    }

    #[test]
    fn hkdf_sha512_known_answer_and_limits() {
        // RFC 5869 test case 1 inputs with SHA-512 (computed with python3's hmac module).
        let mut out = [0u8; 42];
        backend()
            .hkdf_sha512(
                &hex::decode("000102030405060708090a0b0c").expect("hex"),
                &[0x0b; 22],
                &hex::decode("f0f1f2f3f4f5f6f7f8f9").expect("hex"),
                &mut out,
            )
            .expect("hkdf");
        assert_eq!(
            hex::encode(out),
            "832390086cda71fb47625bb5ceb168e4c8e26a1a16ed34d9fc7fe92c1481579338da362cb8d9f925d7cb"
        );
        let mut max = vec![0u8; 255 * 64];
        backend().hkdf_sha512(b"", b"ikm", b"", &mut max).expect("maximum length");
        let mut too_long = vec![0u8; 255 * 64 + 1];
        let result = backend().hkdf_sha512(b"", b"ikm", b"", &mut too_long);
        assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
    }

    fn sign_verify_round_trip(spec: KeyPairSpec) {
        let (private, public) = key_pair(spec);
        assert_eq!(private.spec(), spec);
        assert_eq!(public.spec(), spec);
        assert_eq!(
            format!("{private:?}"),
            format!("{}Private {{ spec: {spec:?}, .. }}", {
                if spec.is_rsa() { "Rsa" } else { "Ec" }
            })
        );

        // PKCS#8 round trip.
        let again = private.to_pkcs8_der().expect("pkcs8");
        let reloaded = backend().load_private_key(spec, again.expose_secret()).expect("reload");
        assert_eq!(reloaded.public_key_der(), private.public_key_der());

        for &algorithm in spec.signing_algorithms() {
            let digest = digest_of(algorithm, MESSAGE);
            let by_message = private.sign(algorithm, SignInput::Message(MESSAGE)).expect("sign");
            let by_digest = private.sign(algorithm, SignInput::Digest(&digest)).expect("sign");
            if let Some(bits) = spec.rsa_bits() {
                assert_eq!(by_message.len(), bits / 8);
            }
            for signature in [&by_message, &by_digest] {
                public
                    .verify(algorithm, SignInput::Message(MESSAGE), signature)
                    .unwrap_or_else(|e| panic!("{spec} {algorithm} message: {e}"));
                public
                    .verify(algorithm, SignInput::Digest(&digest), signature)
                    .unwrap_or_else(|e| panic!("{spec} {algorithm} digest: {e}"));
                let result = public.verify(algorithm, SignInput::Message(b"other"), signature);
                assert_eq!(result, Err(Error::BadSignature), "{spec} {algorithm}");
                let mut bad = signature.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                let result = public.verify(algorithm, SignInput::Message(MESSAGE), &bad);
                assert_eq!(result, Err(Error::BadSignature), "{spec} {algorithm}");
            }
            let result = public.verify(algorithm, SignInput::Message(MESSAGE), &[]);
            assert_eq!(result, Err(Error::BadSignature), "{spec} {algorithm}");

            // A digest of the wrong length.
            let short = &digest[..digest.len() - 1];
            let result = private.sign(algorithm, SignInput::Digest(short));
            assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
            let result = public.verify(algorithm, SignInput::Digest(short), &by_message);
            assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
        }
        for algorithm in SigningAlgorithm::ALL.into_iter().filter(|a| !a.fits(spec)) {
            let expected = Err(Error::WrongAlgorithm(algorithm.kms_name()));
            let digest = digest_of(algorithm, MESSAGE);
            assert_eq!(private.sign(algorithm, SignInput::Message(MESSAGE)), expected);
            assert_eq!(private.sign(algorithm, SignInput::Digest(&digest)), expected);
            let result = public.verify(algorithm, SignInput::Message(MESSAGE), &[0; 8]);
            assert_eq!(result, Err(Error::WrongAlgorithm(algorithm.kms_name())));
        }
    }

    #[test]
    fn sign_verify_rsa_2048() {
        sign_verify_round_trip(KeyPairSpec::Rsa2048);
    }

    #[test]
    fn sign_verify_rsa_3072() {
        sign_verify_round_trip(KeyPairSpec::Rsa3072);
    }

    #[test]
    fn sign_verify_rsa_4096() {
        sign_verify_round_trip(KeyPairSpec::Rsa4096);
    }

    #[test]
    fn sign_verify_ec() {
        for spec in KeyPairSpec::ALL.into_iter().filter(|spec| !spec.is_rsa()) {
            sign_verify_round_trip(spec);
        }
    }

    /// Re-encodes a DER ECDSA signature on `$curve` with S replaced by n − S.
    macro_rules! flip_s {
        ($curve:ty, $der:expr) => {{
            let signature = ecdsa::Signature::<$curve>::from_der($der).expect("der");
            let (r, s) = signature.split_scalars();
            let flipped = ecdsa::Signature::<$curve>::from_scalars(r.to_repr(), (-*s).to_repr())
                .expect("flipped");
            flipped.to_der().as_bytes().to_vec()
        }};
    }

    #[test]
    fn ecdsa_accepts_high_s_and_rejects_ber() {
        for spec in [KeyPairSpec::EccSecgP256k1, KeyPairSpec::EccNistP256] {
            let (private, public) = key_pair(spec);
            let algorithm = SigningAlgorithm::EcdsaSha256;
            let signature = private.sign(algorithm, SignInput::Message(MESSAGE)).expect("sign");
            let flipped = match spec {
                KeyPairSpec::EccSecgP256k1 => flip_s!(k256::Secp256k1, &signature),
                _ => flip_s!(p256::NistP256, &signature),
            };
            assert_ne!(flipped, signature);
            // One of the two is high-S; both verify.
            public.verify(algorithm, SignInput::Message(MESSAGE), &signature).expect("low");
            public.verify(algorithm, SignInput::Message(MESSAGE), &flipped).expect("flipped");

            // BER long-form length of the SEQUENCE: not DER.
            assert!(signature[1] < 0x80);
            let mut ber = vec![0x30, 0x81, signature[1]];
            ber.extend_from_slice(&signature[2..]);
            let result = public.verify(algorithm, SignInput::Message(MESSAGE), &ber);
            assert_eq!(result, Err(Error::BadSignature));
            // Trailing garbage.
            let mut trailing = signature.clone();
            trailing.push(0);
            let result = public.verify(algorithm, SignInput::Message(MESSAGE), &trailing);
            assert_eq!(result, Err(Error::BadSignature));
            // Raw r ‖ s is not DER.
            let result = public.verify(algorithm, SignInput::Message(MESSAGE), &[1; 64]);
            assert_eq!(result, Err(Error::BadSignature));
        }
    }

    #[test]
    fn oaep_round_trip() {
        let (private, public) = key_pair(KeyPairSpec::Rsa2048);
        for hash in [OaepHash::Sha1, OaepHash::Sha256] {
            let max = KeyPairSpec::Rsa2048.max_oaep_plaintext(hash).expect("rsa");
            for plaintext in [&b""[..], b"data key", &vec![0xa5; max][..]] {
                let ciphertext = public.encrypt_oaep(hash, plaintext).expect("encrypt");
                assert_eq!(ciphertext.len(), 256);
                let decrypted = private.decrypt_oaep(hash, &ciphertext).expect("decrypt");
                assert_eq!(decrypted.expose_secret(), plaintext);
                let mut bad = ciphertext.clone();
                bad[100] ^= 1;
                assert_eq!(private.decrypt_oaep(hash, &bad).err(), Some(Error::DecryptFailed));
            }
            let result = public.encrypt_oaep(hash, &vec![0; max + 1]);
            assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
            assert_eq!(private.decrypt_oaep(hash, &[]).err(), Some(Error::DecryptFailed));
            assert_eq!(private.decrypt_oaep(hash, &[1; 257]).err(), Some(Error::DecryptFailed));
        }
        // The hashes are not interchangeable.
        let ciphertext = public.encrypt_oaep(OaepHash::Sha1, b"x").expect("encrypt");
        let result = private.decrypt_oaep(OaepHash::Sha256, &ciphertext);
        assert_eq!(result.err(), Some(Error::DecryptFailed));

        // OAEP on an EC key.
        let (ec_private, ec_public) = key_pair(KeyPairSpec::EccNistP256);
        let result = ec_public.encrypt_oaep(OaepHash::Sha256, b"x");
        assert!(matches!(result, Err(Error::WrongAlgorithm(_))), "{result:?}");
        let result = ec_private.decrypt_oaep(OaepHash::Sha256, &ciphertext);
        assert!(matches!(result, Err(Error::WrongAlgorithm(_))), "{result:?}");
        // ECDH on an RSA key.
        let result = private.agree(&ec_private.public_key_der());
        assert!(matches!(result, Err(Error::WrongAlgorithm(_))), "{result:?}");
    }

    #[test]
    fn ecdh_agrees() {
        let nist = [KeyPairSpec::EccNistP256, KeyPairSpec::EccNistP384, KeyPairSpec::EccNistP521];
        for spec in nist {
            let (alice, _) = key_pair(spec);
            let (bob, _) = key_pair(spec);
            let ab = alice.agree(&bob.public_key_der()).expect("agree");
            let ba = bob.agree(&alice.public_key_der()).expect("agree");
            assert_eq!(ab.expose_secret(), ba.expose_secret());
            assert_eq!(ab.len(), spec.curve().expect("ec").field_len());

            // A key on another curve, a malformed key, a point off the curve.
            let other = if spec == KeyPairSpec::EccNistP256 {
                KeyPairSpec::EccNistP384
            } else {
                KeyPairSpec::EccNistP256
            };
            let (stranger, _) = key_pair(other);
            let result = alice.agree(&stranger.public_key_der());
            assert!(matches!(result, Err(Error::InvalidKey(_))), "{result:?}");
            let result = alice.agree(b"\x30\x03\x02\x01\x00");
            assert!(matches!(result, Err(Error::InvalidKey(_))), "{result:?}");
            let mut off_curve = bob.public_key_der();
            let last = off_curve.len() - 1;
            off_curve[last] ^= 1;
            let result = alice.agree(&off_curve);
            assert!(matches!(result, Err(Error::InvalidKey(_))), "{result:?}");
        }
        let (k1, _) = key_pair(KeyPairSpec::EccSecgP256k1);
        let (k2, _) = key_pair(KeyPairSpec::EccSecgP256k1);
        let result = k1.agree(&k2.public_key_der());
        assert!(matches!(result, Err(Error::WrongAlgorithm(_))), "{result:?}");
    }

    #[test]
    fn malformed_and_mismatched_keys_are_invalid() {
        let p256 = backend().generate_key_pair(KeyPairSpec::EccNistP256).expect("generate");
        let p256 = p256.expose_secret();
        let loaded = backend().load_private_key(KeyPairSpec::EccNistP256, p256).expect("load");
        let p256_spki = loaded.public_key_der();
        let rsa = backend().generate_key_pair(KeyPairSpec::Rsa2048).expect("generate");
        let rsa = rsa.expose_secret();
        let rsa_loaded = backend().load_private_key(KeyPairSpec::Rsa2048, rsa).expect("load");
        let rsa_spki = rsa_loaded.public_key_der();

        let garbage: [&[u8]; 5] = [b"", b"\x30", b"\x30\x00", &[0xff; 64], b"\x30\x82\xff\xff"];
        for spec in KeyPairSpec::ALL {
            for bytes in garbage.iter().copied().chain([&p256[..p256.len() / 2]]) {
                let result = backend().load_private_key(spec, bytes);
                assert!(matches!(result, Err(Error::InvalidKey(_))), "{spec}: {result:?}");
                let result = backend().load_public_key(spec, bytes);
                assert!(matches!(result, Err(Error::InvalidKey(_))), "{spec}: {result:?}");
            }
            if spec != KeyPairSpec::EccNistP256 {
                let result = backend().load_private_key(spec, p256);
                assert!(matches!(result, Err(Error::InvalidKey(_))), "{spec}: {result:?}");
                let result = backend().load_public_key(spec, &p256_spki);
                assert!(matches!(result, Err(Error::InvalidKey(_))), "{spec}: {result:?}");
            }
            if spec != KeyPairSpec::Rsa2048 {
                let result = backend().load_private_key(spec, rsa);
                assert!(matches!(result, Err(Error::InvalidKey(_))), "{spec}: {result:?}");
                let result = backend().load_public_key(spec, &rsa_spki);
                assert!(matches!(result, Err(Error::InvalidKey(_))), "{spec}: {result:?}");
            }
        }
        // Every truncation of a valid key is rejected without a panic.
        for len in 0..p256.len() {
            let result = backend().load_private_key(KeyPairSpec::EccNistP256, &p256[..len]);
            assert!(result.is_err(), "{len}");
        }
        for len in 0..rsa_spki.len() {
            let result = backend().load_public_key(KeyPairSpec::Rsa2048, &rsa_spki[..len]);
            assert!(result.is_err(), "{len}");
        }
    }
}
