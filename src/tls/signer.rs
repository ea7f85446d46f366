//! The keystore-backed signing keys: [`KeystoreSigningKey`] (rustls's `SigningKey` and
//! `Signer`) signs handshakes, [`IssuingKey`] (rcgen's `SigningKey`) signs certificates.
//! Neither holds key material: each holds a key id; the first asks the keystore for each
//! signature, the second is given the keystore's signature by its caller.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::SignatureScheme;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{Signer, SigningKey};
use sha2::Digest as _;

use crate::crypto::{KeyPairSpec, SigningAlgorithm};
use crate::keystore::Keystore;
use crate::keystore::operations::SigningKeyInfo;

/// Handshake signatures of one certificate: made, and refused by the keystore (disabled key,
/// key pending deletion…). Each made signature is a use of the key; the metrics registry reads
/// these counters.
#[derive(Debug, Default)]
pub struct HandshakeCounter {
    signed: AtomicU64,
    refused: AtomicU64,
}

impl HandshakeCounter {
    /// Signatures made.
    pub fn signed(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }

    /// Signatures the keystore refused (each a failed handshake).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The TLS signature schemes a key of `spec` signs with, in order of preference, and the
/// keystore algorithm of each. ECDSA signatures are DER and RSA-PSS salts are the hash's
/// length in both TLS and KMS, so the keystore's signatures are what TLS expects as they are.
pub fn schemes(spec: KeyPairSpec) -> &'static [(SignatureScheme, SigningAlgorithm)] {
    use SignatureScheme as S;
    use SigningAlgorithm as A;
    match spec {
        KeyPairSpec::EccNistP256 => &[(S::ECDSA_NISTP256_SHA256, A::EcdsaSha256)],
        KeyPairSpec::EccNistP384 => &[(S::ECDSA_NISTP384_SHA384, A::EcdsaSha384)],
        KeyPairSpec::EccNistP521 => &[(S::ECDSA_NISTP521_SHA512, A::EcdsaSha512)],
        KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => &[
            (S::RSA_PSS_SHA512, A::RsassaPssSha512),
            (S::RSA_PSS_SHA384, A::RsassaPssSha384),
            (S::RSA_PSS_SHA256, A::RsassaPssSha256),
            (S::RSA_PKCS1_SHA512, A::RsassaPkcs1V15Sha512),
            (S::RSA_PKCS1_SHA384, A::RsassaPkcs1V15Sha384),
            (S::RSA_PKCS1_SHA256, A::RsassaPkcs1V15Sha256),
        ],
        // secp256k1 has no TLS signature scheme.
        KeyPairSpec::EccSecgP256k1 => &[],
    }
}

/// A rustls signing key whose private key is a keystore key.
pub struct KeystoreSigningKey {
    keystore: Arc<Keystore>,
    key_id: String,
    spec: KeyPairSpec,
    public_key: Vec<u8>,
    counter: Arc<HandshakeCounter>,
}

impl KeystoreSigningKey {
    /// The signing key of the keystore key `info` describes.
    pub fn new(
        keystore: Arc<Keystore>,
        info: &SigningKeyInfo,
        counter: Arc<HandshakeCounter>,
    ) -> Self {
        Self {
            keystore,
            key_id: info.key_id.clone(),
            spec: info.spec,
            public_key: info.public_key.clone(),
            counter,
        }
    }
}

impl fmt::Debug for KeystoreSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeystoreSigningKey")
            .field("key_id", &self.key_id)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl SigningKey for KeystoreSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let &(scheme, algorithm) =
            schemes(self.spec).iter().find(|(scheme, _)| offered.contains(scheme))?;
        Some(Box::new(KeystoreSigner {
            keystore: Arc::clone(&self.keystore),
            key_id: self.key_id.clone(),
            scheme,
            algorithm,
            counter: Arc::clone(&self.counter),
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.public_key.as_slice()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        if self.spec.is_rsa() {
            rustls::SignatureAlgorithm::RSA
        } else {
            rustls::SignatureAlgorithm::ECDSA
        }
    }
}

/// One handshake's signer: the key and the scheme chosen.
struct KeystoreSigner {
    keystore: Arc<Keystore>,
    key_id: String,
    scheme: SignatureScheme,
    algorithm: SigningAlgorithm,
    counter: Arc<HandshakeCounter>,
}

impl fmt::Debug for KeystoreSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeystoreSigner")
            .field("key_id", &self.key_id)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Signer for KeystoreSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        match self.keystore.sign_cached(&self.key_id, message, self.algorithm) {
            Ok(signature) => {
                self.counter.signed.fetch_add(1, Ordering::Relaxed);
                Ok(signature)
            }
            Err(error) => {
                self.counter.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "kagi::tls",
                    key_id = %self.key_id,
                    %error,
                    "the keystore refused a handshake signature: the certificate is unusable"
                );
                Err(rustls::Error::General("the certificate's key cannot sign".into()))
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// An rcgen signing key whose private key is a keystore key: it signs certificates (its own
/// self-signed one, or others' as a CA) through the keystore's audited Sign.
///
/// rcgen asks for the signature synchronously, in the middle of its serializer, and a keystore
/// signs asynchronously (a running server's is a network call away). Our options were a
/// blocking thread that waits for the runtime, or two builds; we build twice, since rcgen's
/// serialization depends on the parameters and the keys only. The first build
/// ([`IssuingKey::to_be_signed`]) records the TBSCertificate rcgen asks this key to sign, and
/// fails there; the caller has the keystore sign it; the second build, with the key
/// [`IssuingKey::with_signature`] returns, gets that signature, and only for those same bytes.
pub struct IssuingKey {
    key_id: String,
    /// The subjectPublicKey bits of the SubjectPublicKeyInfo (what rcgen calls `der_bytes`).
    subject_public_key: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
    signing_algorithm: SigningAlgorithm,
    /// The second build's answer: the keystore's signature of these bytes. None in the first.
    signed: Option<Signed>,
    /// What rcgen asked to sign, in the first build.
    recorded: Mutex<Option<Vec<u8>>>,
}

/// The keystore's signature of a TBSCertificate.
struct Signed {
    to_be_signed: Vec<u8>,
    signature: Vec<u8>,
}

impl IssuingKey {
    /// The issuing key of the keystore key `key_id`, whose key pair is `spec` and whose DER
    /// SubjectPublicKeyInfo is `public_key`. `None` for a spec rcgen cannot sign with or a
    /// malformed public key.
    pub(crate) fn new(key_id: &str, spec: KeyPairSpec, public_key: &[u8]) -> Option<Self> {
        // rcgen signs RSA certificates with PKCS#1 v1.5 only.
        let (algorithm, signing_algorithm) = match spec {
            KeyPairSpec::EccNistP256 => {
                (&rcgen::PKCS_ECDSA_P256_SHA256, SigningAlgorithm::EcdsaSha256)
            }
            KeyPairSpec::EccNistP384 => {
                (&rcgen::PKCS_ECDSA_P384_SHA384, SigningAlgorithm::EcdsaSha384)
            }
            KeyPairSpec::EccNistP521 => {
                (&rcgen::PKCS_ECDSA_P521_SHA512, SigningAlgorithm::EcdsaSha512)
            }
            KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096 => {
                (&rcgen::PKCS_RSA_SHA256, SigningAlgorithm::RsassaPkcs1V15Sha256)
            }
            KeyPairSpec::EccSecgP256k1 => return None,
        };
        Some(Self {
            key_id: key_id.to_owned(),
            subject_public_key: subject_public_key(public_key)?,
            algorithm,
            signing_algorithm,
            signed: None,
            recorded: Mutex::new(None),
        })
    }

    /// The keystore key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The keystore algorithm that signs for this key.
    pub fn signing_algorithm(&self) -> SigningAlgorithm {
        self.signing_algorithm
    }

    /// The first build: runs `build` with this key and returns the bytes it asked the key to
    /// sign.
    ///
    /// # Errors
    /// `build`'s error when it failed before asking for a signature.
    pub fn to_be_signed<T>(
        &self,
        build: impl FnOnce(&Self) -> Result<T, rcgen::Error>,
    ) -> Result<Vec<u8>, rcgen::Error> {
        let recorder = self.with(None);
        let built = build(&recorder);
        let recorded = recorder.recorded.into_inner().unwrap_or_else(PoisonError::into_inner);
        match (recorded, built) {
            (Some(to_be_signed), _) => Ok(to_be_signed),
            (None, Err(error)) => Err(error),
            // A recording key never signs, so a build that needs one cannot succeed.
            (None, Ok(_)) => Err(rcgen::Error::RemoteKeyError),
        }
    }

    /// The signature the digest of `to_be_signed` gets: SHA-256, SHA-384 or SHA-512, as the
    /// algorithm says. Sign is given the digest, not the message: a certificate with many names
    /// outgrows Sign's 4096-byte message limit.
    pub fn digest(&self, to_be_signed: &[u8]) -> Vec<u8> {
        match self.signing_algorithm.digest_len() {
            32 => sha2::Sha256::digest(to_be_signed).to_vec(),
            48 => sha2::Sha384::digest(to_be_signed).to_vec(),
            _ => sha2::Sha512::digest(to_be_signed).to_vec(),
        }
    }

    /// The key for the second build: it answers `signature` when asked to sign `to_be_signed`,
    /// and refuses anything else.
    pub fn with_signature(&self, to_be_signed: Vec<u8>, signature: Vec<u8>) -> Self {
        self.with(Some(Signed { to_be_signed, signature }))
    }

    fn with(&self, signed: Option<Signed>) -> Self {
        Self {
            key_id: self.key_id.clone(),
            subject_public_key: self.subject_public_key.clone(),
            algorithm: self.algorithm,
            signing_algorithm: self.signing_algorithm,
            signed,
            recorded: Mutex::new(None),
        }
    }
}

impl fmt::Debug for IssuingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuingKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl rcgen::PublicKeyData for IssuingKey {
    fn der_bytes(&self) -> &[u8] {
        &self.subject_public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for IssuingKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match &self.signed {
            None => {
                *self.recorded.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(message.to_vec());
                // Stops the first build: its certificate would carry no signature.
                Err(rcgen::Error::RemoteKeyError)
            }
            Some(Signed { to_be_signed, signature }) if to_be_signed == message => {
                Ok(signature.clone())
            }
            Some(_) => {
                tracing::error!(
                    target: "kagi::tls",
                    key_id = %self.key_id,
                    "rcgen built a different certificate the second time: this is a bug"
                );
                Err(rcgen::Error::RemoteKeyError)
            }
        }
    }
}

/// The subjectPublicKey bits of a DER SubjectPublicKeyInfo.
fn subject_public_key(spki: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer as _;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    Some(info.subject_public_key.data.to_vec())
}
