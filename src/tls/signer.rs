//! The keystore-backed signing keys: [`KeystoreSigningKey`] (rustls's `SigningKey` and
//! `Signer`) signs handshakes, [`IssuingKey`] (rcgen's `SigningKey`) signs certificates.
//! Neither holds key material: each holds a key id and asks the keystore.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::SignatureScheme;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{Signer, SigningKey};
use sha2::Digest as _;

use crate::crypto::{KeyPairSpec, SigningAlgorithm};
use crate::keystore::operations::{MessageType, SigningKeyInfo};
use crate::keystore::{Keystore, OpContext};

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
/// rcgen's `sign` is synchronous; it waits for the keystore on `runtime`, so it must run on a
/// thread that is not a runtime worker (`tokio::task::spawn_blocking`).
pub struct IssuingKey {
    keystore: Arc<Keystore>,
    ctx: OpContext,
    runtime: tokio::runtime::Handle,
    key_id: String,
    /// The subjectPublicKey bits of the SubjectPublicKeyInfo (what rcgen calls `der_bytes`).
    subject_public_key: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
    signing_algorithm: SigningAlgorithm,
}

impl IssuingKey {
    /// The issuing key of the keystore key `info` describes.
    ///
    /// # Errors
    /// `None` for a spec rcgen cannot sign with or a malformed public key.
    pub fn new(
        keystore: Arc<Keystore>,
        ctx: OpContext,
        runtime: tokio::runtime::Handle,
        info: &SigningKeyInfo,
    ) -> Option<Self> {
        // rcgen signs RSA certificates with PKCS#1 v1.5 only.
        let (algorithm, signing_algorithm) = match info.spec {
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
        let subject_public_key = subject_public_key(&info.public_key)?;
        Some(Self {
            keystore,
            ctx,
            runtime,
            key_id: info.key_id.clone(),
            subject_public_key,
            algorithm,
            signing_algorithm,
        })
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
        // The digest, not the message: a certificate with many names outgrows Sign's
        // 4096-byte message limit.
        let digest = match self.signing_algorithm.digest_len() {
            32 => sha2::Sha256::digest(message).to_vec(),
            48 => sha2::Sha384::digest(message).to_vec(),
            _ => sha2::Sha512::digest(message).to_vec(),
        };
        let signed = self.runtime.block_on(self.keystore.sign(
            &self.ctx,
            &self.key_id,
            &digest,
            MessageType::Digest,
            self.signing_algorithm,
        ));
        signed.map(|(signature, _)| signature).map_err(|error| {
            tracing::warn!(target: "kagi::tls", key_id = %self.key_id, %error, "cannot sign the certificate");
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The subjectPublicKey bits of a DER SubjectPublicKeyInfo.
fn subject_public_key(spki: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer as _;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    Some(info.subject_public_key.data.to_vec())
}
