//! The `aws-lc` backend: aws-lc-rs (AWS-LC, BoringSSL-derived, FIPS-capable).
//!
//! The default backend. AWS-LC's RSA is blinded and constant-time, so this is the backend kagi
//! trusts with RSA private keys.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::key_wrap::KeyWrapPadded as _;
use aws_lc_rs::signature::KeyPair as _;
use aws_lc_rs::{aead, agreement, digest, hkdf, hmac, key_wrap, rand, rsa, signature};

use super::{
    AesKey, BackendKind, CryptoBackend, EcCurve, Error, FIPS, KeyPairSpec, MacAlgorithm, NONCE_LEN,
    OaepHash, PrivateKey, PublicKey, Result, SecretBytes, SignInput, SigningAlgorithm, TAG_LEN,
    check_digest_len, check_key_to_wrap, fips_check_hkdf, fips_check_oaep, fips_check_sign_input,
    fips_check_spec, is_wrapped_key_len,
};

/// The aws-lc-rs backend.
#[derive(Debug)]
pub(crate) struct AwsLc;

impl CryptoBackend for AwsLc {
    fn kind(&self) -> BackendKind {
        BackendKind::AwsLc
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<()> {
        rand::fill(out).map_err(|_| Error::Random)
    }

    fn seal(
        &self,
        key: &AesKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        if FIPS {
            return Err(Error::NotApproved("AES-GCM encryption under a caller-chosen nonce"));
        }
        let key = aead_key(key)?;
        let mut in_out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        in_out.extend_from_slice(plaintext);
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(*nonce),
            aead::Aad::from(aad),
            &mut in_out,
        )
        .map_err(|_| Error::Internal("aes-gcm seal failed"))?;
        Ok(in_out)
    }

    fn seal_fresh(
        &self,
        key: &AesKey,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>)> {
        let key = aead::RandomizedNonceKey::new(&aead::AES_256_GCM, key.expose_secret())
            .map_err(|_| Error::InvalidKey("aes-256-gcm key must be 32 bytes"))?;
        let mut in_out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        in_out.extend_from_slice(plaintext);
        let nonce = key
            .seal_in_place_append_tag(aead::Aad::from(aad), &mut in_out)
            .map_err(|_| Error::Internal("aes-gcm seal failed"))?;
        Ok((*nonce.as_ref(), in_out))
    }

    fn open(
        &self,
        key: &AesKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes> {
        if ciphertext_and_tag.len() < TAG_LEN {
            return Err(Error::DecryptFailed);
        }
        let key = aead_key(key)?;
        let mut in_out = SecretBytes::from_slice(ciphertext_and_tag);
        let plaintext_len = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                in_out.expose_secret_mut(),
            )
            .map_err(|_| Error::DecryptFailed)?
            .len();
        in_out.truncate(plaintext_len);
        Ok(in_out)
    }

    fn hmac(&self, algorithm: MacAlgorithm, key: &[u8], message: &[u8]) -> Result<Vec<u8>> {
        let key = hmac::Key::new(hmac_algorithm(algorithm), key);
        Ok(hmac::sign(&key, message).as_ref().to_vec())
    }

    fn verify_hmac(
        &self,
        algorithm: MacAlgorithm,
        key: &[u8],
        message: &[u8],
        tag: &[u8],
    ) -> Result<()> {
        let key = hmac::Key::new(hmac_algorithm(algorithm), key);
        // `hmac::verify` compares in constant time.
        hmac::verify(&key, message, tag).map_err(|_| Error::BadSignature)
    }

    fn hkdf_sha512(&self, salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        if out.len() > 255 * 64 {
            return Err(Error::InvalidInput("hkdf-sha512 output longer than 255 blocks"));
        }
        fips_check_hkdf(salt, info)?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA512, salt).extract(ikm);
        let info = [info];
        prk.expand(&info, Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .map_err(|_| Error::Internal("hkdf expand failed"))
    }

    fn wrap_key(&self, kek: &AesKey, key: &[u8]) -> Result<Vec<u8>> {
        check_key_to_wrap(key)?;
        let mut out = vec![0; key.len() + 15];
        let len = key_wrap_key(kek)?
            .wrap_with_padding(key, &mut out)
            .map_err(|_| Error::Internal("AES-KWP wrap failed"))?
            .len();
        out.truncate(len);
        Ok(out)
    }

    fn unwrap_key(&self, kek: &AesKey, wrapped: &[u8]) -> Result<SecretBytes> {
        if !is_wrapped_key_len(wrapped.len()) {
            return Err(Error::DecryptFailed);
        }
        let mut out = SecretBytes::zeroed(wrapped.len());
        let len = key_wrap_key(kek)?
            .unwrap_with_padding(wrapped, out.expose_secret_mut())
            .map_err(|_| Error::DecryptFailed)?
            .len();
        out.truncate(len);
        Ok(out)
    }

    fn generate_key_pair(&self, spec: KeyPairSpec) -> Result<SecretBytes> {
        fips_check_spec(spec)?;
        let pkcs8 = match spec.curve() {
            Some(curve) => signature::EcdsaKeyPair::generate(ecdsa_signing(curve))
                .and_then(|key| key.to_pkcs8v1())
                .map(|document| document.as_ref().to_vec())
                .map_err(|_| Error::Internal("ec key generation failed"))?,
            None => {
                let size = match spec {
                    KeyPairSpec::Rsa2048 => rsa::KeySize::Rsa2048,
                    KeyPairSpec::Rsa3072 => rsa::KeySize::Rsa3072,
                    _ => rsa::KeySize::Rsa4096,
                };
                let key = rsa::KeyPair::generate(size)
                    .map_err(|_| Error::Internal("rsa key generation failed"))?;
                pkcs8_of(&key)?
            }
        };
        Ok(SecretBytes::new(pkcs8))
    }

    fn load_private_key(&self, spec: KeyPairSpec, pkcs8: &[u8]) -> Result<Box<dyn PrivateKey>> {
        fips_check_spec(spec)?;
        let inner = match spec.curve() {
            Some(curve) => {
                let key = signature::EcdsaKeyPair::from_pkcs8(ecdsa_signing(curve), pkcs8)
                    .map_err(|_| Error::InvalidKey("not a pkcs#8 private key of this spec"))?;
                let public = key
                    .public_key()
                    .as_der()
                    .map_err(|_| Error::Internal("ec public key encoding failed"))?;
                PrivateInner::Ec { curve, key, public_der: public.as_ref().to_vec() }
            }
            None => {
                let key = rsa::KeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| Error::InvalidKey("not a pkcs#8 rsa private key"))?;
                let bits = key.public_modulus_len() * 8;
                if Some(bits) != spec.rsa_bits() {
                    return Err(Error::InvalidKey("rsa modulus size does not match the key spec"));
                }
                let decrypting = rsa::PrivateDecryptingKey::from_pkcs8(pkcs8)
                    .map_err(|_| Error::InvalidKey("not a pkcs#8 rsa private key"))
                    .and_then(|key| {
                        rsa::OaepPrivateDecryptingKey::new(key)
                            .map_err(|_| Error::InvalidKey("not a pkcs#8 rsa private key"))
                    })?;
                let public: PublicKeyX509Der<'static> = key
                    .public_key()
                    .as_der()
                    .map_err(|_| Error::Internal("rsa public key encoding failed"))?;
                PrivateInner::Rsa { key, decrypting, public_der: public.as_ref().to_vec() }
            }
        };
        Ok(Box::new(AwsLcPrivateKey { spec, pkcs8: SecretBytes::from_slice(pkcs8), inner }))
    }

    fn load_public_key(&self, spec: KeyPairSpec, spki: &[u8]) -> Result<Box<dyn PublicKey>> {
        fips_check_spec(spec)?;
        // Only DER SubjectPublicKeyInfo, as the trait promises: aws-lc would also take a bare
        // EC point or a PKCS#1 RSAPublicKey, the RustCrypto backend would not.
        if !is_spki(spki) {
            return Err(Error::InvalidKey("not a der subjectpublickeyinfo"));
        }
        let inner = match spec.curve() {
            Some(curve) => {
                let parsed = signature::ParsedPublicKey::new(ecdsa_verification(curve), spki)
                    .map_err(|_| Error::InvalidKey("not a public key of this spec"))?;
                PublicInner::Ec { parsed }
            }
            None => {
                let key = rsa::PublicEncryptingKey::from_der(spki)
                    .map_err(|_| Error::InvalidKey("not an rsa public key"))?;
                if Some(key.key_size_bits()) != spec.rsa_bits() {
                    return Err(Error::InvalidKey("rsa modulus size does not match the key spec"));
                }
                let encrypting = rsa::OaepPublicEncryptingKey::new(key)
                    .map_err(|_| Error::InvalidKey("not an rsa public key"))?;
                PublicInner::Rsa { encrypting }
            }
        };
        Ok(Box::new(AwsLcPublicKey { spec, spki: spki.to_vec(), inner }))
    }
}

// === impl AwsLcPrivateKey ===

/// A parsed private key. AWS-LC frees (and clears) its key structures on drop; the PKCS#8 copy
/// is a zeroizing [`SecretBytes`].
struct AwsLcPrivateKey {
    spec: KeyPairSpec,
    pkcs8: SecretBytes,
    inner: PrivateInner,
}

enum PrivateInner {
    Ec { curve: EcCurve, key: signature::EcdsaKeyPair, public_der: Vec<u8> },
    Rsa { key: rsa::KeyPair, decrypting: rsa::OaepPrivateDecryptingKey, public_der: Vec<u8> },
}

impl fmt::Debug for AwsLcPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsLcPrivateKey").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl PrivateKey for AwsLcPrivateKey {
    fn spec(&self) -> KeyPairSpec {
        self.spec
    }

    fn public_key_der(&self) -> Vec<u8> {
        match &self.inner {
            PrivateInner::Ec { public_der, .. } | PrivateInner::Rsa { public_der, .. } => {
                public_der.clone()
            }
        }
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes> {
        Ok(self.pkcs8.duplicate())
    }

    fn sign(&self, algorithm: SigningAlgorithm, input: SignInput<'_>) -> Result<Vec<u8>> {
        if !algorithm.fits(self.spec) {
            return Err(Error::WrongAlgorithm(algorithm.kms_name()));
        }
        check_digest_len(algorithm, input)?;
        fips_check_sign_input(input)?;
        match &self.inner {
            PrivateInner::Ec { key, .. } => {
                let signature = match input {
                    SignInput::Message(message) => key.sign(&rand::SystemRandom::new(), message),
                    SignInput::Digest(digest) => {
                        key.sign_digest(&import_digest(algorithm, digest)?)
                    }
                }
                .map_err(|_| Error::Internal("ecdsa signing failed"))?;
                Ok(signature.as_ref().to_vec())
            }
            PrivateInner::Rsa { key, .. } => {
                let encoding = rsa_encoding(algorithm);
                let mut signature = vec![0; key.public_modulus_len()];
                match input {
                    SignInput::Message(message) => {
                        key.sign(encoding, &rand::SystemRandom::new(), message, &mut signature)
                    }
                    SignInput::Digest(digest) => key.sign_digest(
                        encoding,
                        &import_digest(algorithm, digest)?,
                        &mut signature,
                    ),
                }
                .map_err(|_| Error::Internal("rsa signing failed"))?;
                Ok(signature)
            }
        }
    }

    fn decrypt_oaep(&self, hash: OaepHash, ciphertext: &[u8]) -> Result<SecretBytes> {
        fips_check_oaep()?;
        let PrivateInner::Rsa { decrypting, .. } = &self.inner else {
            return Err(Error::WrongAlgorithm(hash.kms_name()));
        };
        let mut out = SecretBytes::zeroed(decrypting.min_output_size());
        let len = decrypting
            .decrypt(oaep_algorithm(hash), ciphertext, out.expose_secret_mut(), None)
            .map_err(|_| Error::DecryptFailed)?
            .len();
        Ok(SecretBytes::from_slice(&out.expose_secret()[..len]))
    }

    fn agree(&self, peer_spki: &[u8]) -> Result<SecretBytes> {
        let curve = match &self.inner {
            PrivateInner::Ec { curve, .. } if *curve != EcCurve::Secp256k1 => *curve,
            _ => return Err(Error::WrongAlgorithm("ECDH")),
        };
        if !is_spki(peer_spki) {
            return Err(Error::InvalidKey("peer key is not a der subjectpublickeyinfo"));
        }
        // Only a named curve: aws-lc would also accept a key that spells out the curve's
        // parameters (Wycheproof's explicit-parameter vectors), the RustCrypto backend would not.
        if !names_curve(peer_spki, curve) {
            return Err(Error::InvalidKey("peer key does not name this curve"));
        }
        let algorithm = ecdh_algorithm(curve);
        let private =
            agreement::PrivateKey::from_private_key_der(algorithm, self.pkcs8.expose_secret())
                .map_err(|_| Error::Internal("ec private key does not load for ecdh"))?;
        let peer = agreement::ParsedPublicKey::try_from(&agreement::UnparsedPublicKey::new(
            algorithm, peer_spki,
        ))
        .map_err(|_| Error::InvalidKey("peer key is not a valid point on this curve"))?;
        agreement::agree(&private, peer, Error::InvalidKey("ecdh failed"), |shared| {
            Ok(SecretBytes::from_slice(shared))
        })
    }
}

// === impl AwsLcPublicKey ===

struct AwsLcPublicKey {
    spec: KeyPairSpec,
    spki: Vec<u8>,
    inner: PublicInner,
}

enum PublicInner {
    Ec { parsed: signature::ParsedPublicKey },
    Rsa { encrypting: rsa::OaepPublicEncryptingKey },
}

impl fmt::Debug for AwsLcPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsLcPublicKey").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl PublicKey for AwsLcPublicKey {
    fn spec(&self) -> KeyPairSpec {
        self.spec
    }

    fn verify(
        &self,
        algorithm: SigningAlgorithm,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<()> {
        if !algorithm.fits(self.spec) {
            return Err(Error::WrongAlgorithm(algorithm.kms_name()));
        }
        check_digest_len(algorithm, input)?;
        fips_check_sign_input(input)?;
        let outcome = match &self.inner {
            PublicInner::Ec { parsed } => match input {
                SignInput::Message(message) => parsed.verify_sig(message, signature),
                SignInput::Digest(digest) => {
                    parsed.verify_digest_sig(&import_digest(algorithm, digest)?, signature)
                }
            },
            PublicInner::Rsa { .. } => {
                let key = signature::UnparsedPublicKey::new(rsa_parameters(algorithm), &self.spki);
                match input {
                    SignInput::Message(message) => key.verify(message, signature),
                    SignInput::Digest(digest) => {
                        key.verify_digest(&import_digest(algorithm, digest)?, signature)
                    }
                }
            }
        };
        outcome.map_err(|_| Error::BadSignature)
    }

    fn encrypt_oaep(&self, hash: OaepHash, plaintext: &[u8]) -> Result<Vec<u8>> {
        fips_check_oaep()?;
        let PublicInner::Rsa { encrypting } = &self.inner else {
            return Err(Error::WrongAlgorithm(hash.kms_name()));
        };
        let algorithm = oaep_algorithm(hash);
        if plaintext.len() > encrypting.max_plaintext_size(algorithm) {
            return Err(Error::InvalidInput("plaintext too long for rsa-oaep with this key"));
        }
        let mut out = vec![0; encrypting.ciphertext_size()];
        let len = encrypting
            .encrypt(algorithm, plaintext, &mut out, None)
            .map_err(|_| Error::Internal("rsa-oaep encryption failed"))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

// === helpers ===

fn key_wrap_key(kek: &AesKey) -> Result<key_wrap::AesKek> {
    key_wrap::AesKek::new(&key_wrap::AES_256, kek.expose_secret())
        .map_err(|_| Error::Internal("AES-KWP key setup failed"))
}

fn aead_key(key: &AesKey) -> Result<aead::LessSafeKey> {
    aead::UnboundKey::new(&aead::AES_256_GCM, key.expose_secret())
        .map(aead::LessSafeKey::new)
        .map_err(|_| Error::InvalidKey("aes-256-gcm key"))
}

fn hmac_algorithm(algorithm: MacAlgorithm) -> hmac::Algorithm {
    match algorithm {
        MacAlgorithm::HmacSha224 => hmac::HMAC_SHA224,
        MacAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
        MacAlgorithm::HmacSha384 => hmac::HMAC_SHA384,
        MacAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
    }
}

fn ecdsa_signing(curve: EcCurve) -> &'static signature::EcdsaSigningAlgorithm {
    match curve {
        EcCurve::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        EcCurve::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        EcCurve::P521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        EcCurve::Secp256k1 => &signature::ECDSA_P256K1_SHA256_ASN1_SIGNING,
    }
}

fn ecdsa_verification(curve: EcCurve) -> &'static signature::EcdsaVerificationAlgorithm {
    match curve {
        EcCurve::P256 => &signature::ECDSA_P256_SHA256_ASN1,
        EcCurve::P384 => &signature::ECDSA_P384_SHA384_ASN1,
        EcCurve::P521 => &signature::ECDSA_P521_SHA512_ASN1,
        EcCurve::Secp256k1 => &signature::ECDSA_P256K1_SHA256_ASN1,
    }
}

fn ecdh_algorithm(curve: EcCurve) -> &'static agreement::Algorithm {
    match curve {
        EcCurve::P384 => &agreement::ECDH_P384,
        EcCurve::P521 => &agreement::ECDH_P521,
        EcCurve::P256 | EcCurve::Secp256k1 => &agreement::ECDH_P256,
    }
}

fn rsa_encoding(algorithm: SigningAlgorithm) -> &'static signature::RsaSignatureEncoding {
    match algorithm {
        SigningAlgorithm::RsassaPssSha256 => &signature::RSA_PSS_SHA256,
        SigningAlgorithm::RsassaPssSha384 => &signature::RSA_PSS_SHA384,
        SigningAlgorithm::RsassaPssSha512 => &signature::RSA_PSS_SHA512,
        SigningAlgorithm::RsassaPkcs1V15Sha384 => &signature::RSA_PKCS1_SHA384,
        SigningAlgorithm::RsassaPkcs1V15Sha512 => &signature::RSA_PKCS1_SHA512,
        _ => &signature::RSA_PKCS1_SHA256,
    }
}

fn rsa_parameters(algorithm: SigningAlgorithm) -> &'static signature::RsaParameters {
    match algorithm {
        SigningAlgorithm::RsassaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
        SigningAlgorithm::RsassaPssSha384 => &signature::RSA_PSS_2048_8192_SHA384,
        SigningAlgorithm::RsassaPssSha512 => &signature::RSA_PSS_2048_8192_SHA512,
        SigningAlgorithm::RsassaPkcs1V15Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        SigningAlgorithm::RsassaPkcs1V15Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

fn oaep_algorithm(hash: OaepHash) -> &'static rsa::OaepAlgorithm {
    match hash {
        OaepHash::Sha1 => &rsa::OAEP_SHA1_MGF1SHA1,
        OaepHash::Sha256 => &rsa::OAEP_SHA256_MGF1SHA256,
    }
}

fn import_digest(algorithm: SigningAlgorithm, digest: &[u8]) -> Result<digest::Digest> {
    let hash = match algorithm.digest_len() {
        32 => &digest::SHA256,
        48 => &digest::SHA384,
        _ => &digest::SHA512,
    };
    digest::Digest::import_less_safe(digest, hash)
        .map_err(|_| Error::InvalidInput("digest length does not match the signing algorithm"))
}

fn pkcs8_of(key: &rsa::KeyPair) -> Result<Vec<u8>> {
    let document: Pkcs8V1Der<'static> =
        key.as_der().map_err(|_| Error::Internal("rsa pkcs#8 encoding failed"))?;
    Ok(document.as_ref().to_vec())
}

/// Whether a DER SubjectPublicKeyInfo's AlgorithmIdentifier is id-ecPublicKey with the named
/// curve `curve` (not explicit parameters).
fn names_curve(spki: &[u8], curve: EcCurve) -> bool {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let curve_oid: &[u8] = match curve {
        EcCurve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        EcCurve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        EcCurve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
        EcCurve::Secp256k1 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
    };
    let mut identifier = EC_PUBLIC_KEY.to_vec();
    identifier.extend_from_slice(curve_oid);
    // The AlgorithmIdentifier SEQUENCE is the first element: its contents begin at offset 4
    // (short-form lengths) or later; look for the OID pair within the header.
    let header = &spki[..spki.len().min(32)];
    header.windows(identifier.len()).any(|window| window == identifier.as_slice())
}

/// A DER SubjectPublicKeyInfo starts with a SEQUENCE whose first element is the
/// AlgorithmIdentifier SEQUENCE; a bare EC point starts with 0x04 and a PKCS#1 RSAPublicKey's
/// first element is an INTEGER.
fn is_spki(der: &[u8]) -> bool {
    let Some((&0x30, rest)) = der.split_first() else {
        return false;
    };
    // Skip the outer length (short or long form) and look at the first inner tag.
    let Some((&len_byte, rest)) = rest.split_first() else {
        return false;
    };
    let skip = if len_byte & 0x80 == 0 { 0 } else { usize::from(len_byte & 0x7f) };
    rest.get(skip) == Some(&0x30)
}
