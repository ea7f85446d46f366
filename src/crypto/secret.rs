//! Secret byte containers: key material, data keys, shared secrets, decrypted plaintext.
//!
//! Every secret in kagi lives in one of these types.
//! They zeroize their bytes on drop, are not `Clone` (copying a secret is a visible
//! [`SecretBytes::duplicate`] call), never implement `Serialize`, and their `Debug` prints only
//! the length.
//! Reading the bytes is the named, greppable call [`SecretBytes::expose_secret`].

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// A heap buffer of secret bytes that is wiped when dropped.
///
/// # Security
/// The `Debug` output names the length only; there is no `Display`, no `Clone`, no `Serialize`.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are wiped when the returned value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret buffer. The caller remains responsible for its copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// A buffer of `len` zero bytes, to be filled in place (by a random generator, a KDF).
    pub fn zeroed(len: usize) -> Self {
        Self::new(vec![0; len])
    }

    /// The secret bytes.
    ///
    /// # Security
    /// Every call site is a place where a secret is read; keep them few and greppable.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// The secret bytes, mutable, for filling in place.
    pub fn expose_secret_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// An explicit copy. Secrets are not `Clone` so that copies are visible in review.
    pub fn duplicate(&self) -> Self {
        Self::from_slice(&self.0)
    }

    /// Shortens the buffer to `len` bytes (the bytes cut off are wiped with the rest on drop,
    /// since the whole capacity is zeroized).
    pub fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    /// Number of bytes held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBytes").field("len", &self.0.len()).finish_non_exhaustive()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// The 32 bytes of an AES-256 key (a root key, a key material version, a derived message key).
///
/// # Security
/// Zeroized on drop; `Debug` prints nothing of the key.
pub struct AesKey(Zeroizing<[u8; 32]>);

impl AesKey {
    /// Length of an AES-256 key in bytes.
    pub const LEN: usize = 32;

    /// Copies a 32-byte key out of `bytes`.
    ///
    /// # Errors
    /// [`super::Error::InvalidKey`] when `bytes` is not exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, super::Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != Self::LEN {
            return Err(super::Error::InvalidKey("an AES-256 key is 32 bytes"));
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The key bytes.
    ///
    /// # Security
    /// Only the crypto backends read these.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesKey").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATTERN: [u8; 32] = [0xA5; 32];

    #[test]
    fn secret_bytes_debug_hides_bytes() {
        let secret = SecretBytes::from_slice(&PATTERN);
        let shown = format!("{secret:?} {secret:#?}");
        assert!(!shown.contains("165"), "{shown}");
        assert!(!shown.to_lowercase().contains("a5"), "{shown}");
        assert!(shown.contains("len: 32"), "{shown}");
    }

    #[test]
    fn aes_key_debug_hides_bytes() {
        let key = AesKey::from_slice(&PATTERN).expect("32 bytes");
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains("165"), "{shown}");
        assert!(!shown.to_lowercase().contains("a5"), "{shown}");
    }

    #[test]
    fn aes_key_rejects_wrong_length() {
        assert!(AesKey::from_slice(&[0; 16]).is_err());
        assert!(AesKey::from_slice(&[0; 33]).is_err());
    }

    #[test]
    fn secret_bytes_zeroize_clears() {
        let mut secret = SecretBytes::from_slice(&PATTERN);
        secret.zeroize();
        assert!(secret.expose_secret().iter().all(|b| *b == 0));
    }

    // Compile-time checks: secrets are neither Clone nor Serialize.
    trait NotClone {
        const IS_CLONE: bool = false;
    }
    impl<T> NotClone for T {}
    struct Probe<T>(std::marker::PhantomData<T>);
    #[allow(dead_code)]
    impl<T: Clone> Probe<T> {
        const IS_CLONE: bool = true;
    }

    trait NotSerialize {
        const IS_SERIALIZE: bool = false;
    }
    impl<T> NotSerialize for T {}
    struct SerializeProbe<T>(std::marker::PhantomData<T>);
    #[allow(dead_code)]
    impl<T: serde::Serialize> SerializeProbe<T> {
        const IS_SERIALIZE: bool = true;
    }

    #[test]
    fn probes_detect_clone_and_serialize() {
        const { assert!(<Probe<Vec<u8>>>::IS_CLONE) };
        const { assert!(<SerializeProbe<Vec<u8>>>::IS_SERIALIZE) };
    }

    #[test]
    fn secrets_are_neither_clone_nor_serialize() {
        const { assert!(!<Probe<SecretBytes>>::IS_CLONE) };
        const { assert!(!<Probe<AesKey>>::IS_CLONE) };
        const { assert!(!<SerializeProbe<SecretBytes>>::IS_SERIALIZE) };
        const { assert!(!<SerializeProbe<AesKey>>::IS_SERIALIZE) };
    }
}
