//! The `rustcrypto` backend: aes-gcm, p256, p384, p521, k256, rsa, hmac, sha2.
//!
//! Placeholder while the backend is written: every call fails with [`Error::Internal`].

use super::{
    AesKey, BackendKind, CryptoBackend, Error, KeyPairSpec, MacAlgorithm, NONCE_LEN, PrivateKey,
    PublicKey, Result, SecretBytes,
};

/// The RustCrypto backend.
#[derive(Debug)]
pub(crate) struct RustCrypto;

const PENDING: Error = Error::Internal("the rustcrypto backend is not built yet");

impl CryptoBackend for RustCrypto {
    fn kind(&self) -> BackendKind {
        BackendKind::RustCrypto
    }
    fn fill_random(&self, _: &mut [u8]) -> Result<()> {
        Err(PENDING)
    }
    fn seal(&self, _: &AesKey, _: &[u8; NONCE_LEN], _: &[u8], _: &[u8]) -> Result<Vec<u8>> {
        Err(PENDING)
    }
    fn open(&self, _: &AesKey, _: &[u8; NONCE_LEN], _: &[u8], _: &[u8]) -> Result<SecretBytes> {
        Err(PENDING)
    }
    fn hmac(&self, _: MacAlgorithm, _: &[u8], _: &[u8]) -> Result<Vec<u8>> {
        Err(PENDING)
    }
    fn verify_hmac(&self, _: MacAlgorithm, _: &[u8], _: &[u8], _: &[u8]) -> Result<()> {
        Err(PENDING)
    }
    fn hkdf_sha512(&self, _: &[u8], _: &[u8], _: &[u8], _: &mut [u8]) -> Result<()> {
        Err(PENDING)
    }
    fn generate_key_pair(&self, _: KeyPairSpec) -> Result<SecretBytes> {
        Err(PENDING)
    }
    fn load_private_key(&self, _: KeyPairSpec, _: &[u8]) -> Result<Box<dyn PrivateKey>> {
        Err(PENDING)
    }
    fn load_public_key(&self, _: KeyPairSpec, _: &[u8]) -> Result<Box<dyn PublicKey>> {
        Err(PENDING)
    }
}
