//! The root key: seals every version of key material at rest.
//!
//! It is a 32-byte file `root.key` (mode 0600) made by `kagi init` (the default), or is derived
//! with Argon2id from a passphrase in an environment variable and a random salt kept in
//! `root.salt`, or is split into shares held by different people (`kagi init --shares N
//! --threshold K`: `shares.rs`), rebuilt from K of them at start and kept nowhere on disk. A check value sealed under it (`root.check`) proves at start that the key is the
//! one the data directory was made with: a wrong or missing root key is a clear error, never a
//! silent new keystore.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::crypto::{AesKey, CryptoBackend, NONCE_LEN, SecretBytes, TAG_LEN};

use super::error::Error;
use super::shares::{self, RootShare, SetId, ShareError, SharePolicy};
use crate::crypto::shamir;

const KEY_FILE: &str = "root.key";
const SALT_FILE: &str = "root.salt";
const CHECK_FILE: &str = "root.check";
const CHECK_AAD: &[u8] = b"kagi root key check v1";

/// Where the root key comes from.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum RootKeySource {
    /// The `root.key` file in the data directory.
    File,
    /// A passphrase read from the named environment variable, stretched with Argon2id.
    Passphrase {
        /// The environment variable's name.
        env_var: String,
    },
    /// Shares of a root key split by `kagi init --shares`, one share's text per file; at least
    /// the threshold of them. (A server is given its shares one at a time instead: see
    /// [`super::Unsealer`].)
    Shares {
        /// The files.
        files: Vec<PathBuf>,
    },
}

/// The root key.
///
/// # Security
/// Held in an [`AesKey`]: zeroized on drop, never printed.
#[derive(Debug)]
pub struct RootKey {
    key: AesKey,
}

impl RootKey {
    /// Creates a new root key in `data_dir` (which must not hold one yet).
    ///
    /// # Errors
    /// When the directory already has a root key, or files cannot be written.
    pub fn create(
        backend: &dyn CryptoBackend,
        data_dir: &Path,
        source: &RootKeySource,
    ) -> Result<Self, Error> {
        refuse_existing(data_dir)?;
        let key = match source {
            RootKeySource::File => {
                let mut bytes = SecretBytes::zeroed(AesKey::LEN);
                backend.fill_random(bytes.expose_secret_mut())?;
                write_private(&data_dir.join(KEY_FILE), bytes.expose_secret())?;
                AesKey::from_slice(bytes.expose_secret())?
            }
            RootKeySource::Shares { .. } => {
                return Err(Error::internal(
                    "a split root key is made by RootKey::create_split: this is a bug",
                ));
            }
            RootKeySource::Passphrase { env_var } => {
                let mut salt = [0u8; 16];
                backend.fill_random(&mut salt)?;
                write_private(&data_dir.join(SALT_FILE), &salt)?;
                derive(env_var, &salt)?
            }
        };
        let root = Self { key };
        root.write_check(backend, data_dir)?;
        Ok(root)
    }

    /// Creates a new root key in `data_dir` split into `policy.shares()` shares, any
    /// `policy.threshold()` of which rebuild it. The key itself is written nowhere: only its
    /// check value and the policy (`root.shares`).
    ///
    /// # Security
    /// The shares returned are the only way to the key: hand each to its holder once.
    ///
    /// # Errors
    /// When the directory already has a root key, or files cannot be written.
    pub fn create_split(
        backend: &dyn CryptoBackend,
        data_dir: &Path,
        policy: SharePolicy,
    ) -> Result<(Self, Vec<RootShare>), Error> {
        refuse_existing(data_dir)?;
        let mut bytes = SecretBytes::zeroed(AesKey::LEN);
        backend.fill_random(bytes.expose_secret_mut())?;
        let split =
            shamir::split(backend, bytes.expose_secret(), policy.shares(), policy.threshold())
                .map_err(|error| Error::validation(error.to_string()))?;
        let root = Self { key: AesKey::from_slice(bytes.expose_secret())? };
        drop(bytes);
        let set: SetId = policy.set();
        let split: Vec<RootShare> =
            split.into_iter().map(|share| RootShare::new(set, share)).collect();
        // The policy first: a directory with root.check and no root.shares would look like a
        // keystore whose root.key is missing.
        policy.write(data_dir)?;
        root.write_check(backend, data_dir)?;
        Ok((root, split))
    }

    /// Rebuilds the root key of `data_dir` from shares and proves it is the right one.
    ///
    /// # Errors
    /// [`ShareError::TooFew`], a refusal of one share (another keystore's, out of range, given
    /// twice), [`ShareError::WrongShares`] when they do not rebuild the key that opens
    /// `root.check`; [`ShareError::Keystore`] when the directory holds no keystore or its root
    /// key is not split.
    pub fn from_shares(
        backend: &dyn CryptoBackend,
        data_dir: &Path,
        given: &[RootShare],
    ) -> Result<Self, ShareError> {
        let check = read_check(data_dir)?;
        let policy = SharePolicy::read(data_dir)?.ok_or_else(|| {
            Error::validation(format!(
                "the root key of {} is not split into shares",
                data_dir.display()
            ))
        })?;
        shares::admit_all(&policy, given)?;
        let bytes = shares::combine(given)?;
        let key = AesKey::from_slice(bytes.expose_secret()).map_err(|_| ShareError::WrongShares)?;
        drop(bytes);
        let root = Self { key };
        root.unseal(backend, CHECK_AAD, &check).map_err(|_| ShareError::WrongShares)?;
        Ok(root)
    }

    /// Loads the root key of `data_dir` and proves it is the right one.
    ///
    /// # Errors
    /// When the directory holds no keystore, the key is missing, or it is the wrong key.
    pub fn load(
        backend: &dyn CryptoBackend,
        data_dir: &Path,
        source: &RootKeySource,
    ) -> Result<Self, Error> {
        let check = read_check(data_dir)?;
        if let RootKeySource::Shares { files } = source {
            return Self::from_share_files(backend, data_dir, files);
        }
        if let Some(policy) = SharePolicy::read(data_dir)? {
            return Err(Error::validation(format!(
                "the root key of {} is split into shares ({} of {} needed): unseal a `kagi \
                 serve` with `kagi unseal`, or give a command --share-file {} times",
                data_dir.display(),
                policy.threshold(),
                policy.shares(),
                policy.threshold()
            )));
        }
        let key = match source {
            RootKeySource::File => read_key_file(data_dir, "")?,
            RootKeySource::Shares { .. } => {
                return Err(Error::internal("shares are loaded above: this is a bug"));
            }
            RootKeySource::Passphrase { env_var } => {
                let path = data_dir.join(SALT_FILE);
                let salt = fs::read(&path).map_err(|e| io_error(&path, &e))?;
                derive(env_var, &salt)?
            }
        };
        let root = Self { key };
        root.unseal(backend, CHECK_AAD, &check).map_err(|_| {
            Error::validation(format!(
                "the root key does not open the keystore in {} (wrong key file or passphrase)",
                data_dir.display()
            ))
        })?;
        Ok(root)
    }

    /// Makes `data_dir`, which holds no `root.check` yet, use the root key whose check value is
    /// `check` (from a backup): the key is `root.key` (copied there by the operator) or derives
    /// from the passphrase with the salt already in `root.salt`, else `salt`. Writes `root.check`
    /// (and `root.salt`) only once the key is proven to open `check`.
    ///
    /// # Errors
    /// When the directory already has a root key check value, the key is missing, or it does
    /// not open `check` (nothing is left written then).
    pub fn adopt(
        backend: &dyn CryptoBackend,
        data_dir: &Path,
        source: &RootKeySource,
        check: &[u8],
        salt: Option<&[u8]>,
    ) -> Result<Self, Error> {
        if data_dir.join(CHECK_FILE).exists() {
            return Err(Error::validation(format!(
                "{} already holds a root key check value (root.check)",
                data_dir.display()
            )));
        }
        let key = match source {
            RootKeySource::File => read_key_file(data_dir, " (copy the root key there first)")?,
            RootKeySource::Passphrase { env_var } => {
                let path = data_dir.join(SALT_FILE);
                let salt = match fs::read(&path) {
                    Ok(salt) => salt,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        salt.map(<[u8]>::to_vec).ok_or_else(|| {
                            Error::validation(format!(
                                "{} is missing and the backup carries no salt: the root key \
                                 does not derive from a passphrase",
                                path.display()
                            ))
                        })?
                    }
                    Err(error) => return Err(io_error(&path, &error)),
                };
                derive(env_var, &salt)?
            }
            RootKeySource::Shares { .. } => {
                return Err(Error::validation(
                    "restoring onto a root key split into shares is not supported: restore \
                     with root.key (or the passphrase) on the new machine",
                ));
            }
        };
        let root = Self { key };
        if !root.opens_check(backend, check) {
            return Err(Error::validation(format!(
                "the root key of {} is not the key the backup was made under",
                data_dir.display()
            )));
        }
        fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, &e))?;
        if let (RootKeySource::Passphrase { .. }, Some(salt)) = (source, salt)
            && !data_dir.join(SALT_FILE).exists()
        {
            write_private(&data_dir.join(SALT_FILE), salt)?;
        }
        write_private(&data_dir.join(CHECK_FILE), check)?;
        Ok(root)
    }

    /// The check value of `data_dir` (`root.check`): sealed under the root key, it proves a key
    /// is the right one without opening anything else. Not secret.
    ///
    /// # Errors
    /// When the directory holds no keystore.
    pub fn stored_check(data_dir: &Path) -> Result<Vec<u8>, Error> {
        let path = data_dir.join(CHECK_FILE);
        fs::read(&path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                Error::validation(format!(
                    "{} holds no keystore (no root.check)",
                    data_dir.display()
                ))
            } else {
                io_error(&path, &error)
            }
        })
    }

    /// The Argon2id salt of `data_dir` (`root.salt`), when its root key derives from a
    /// passphrase. Not secret.
    ///
    /// # Errors
    /// When it exists but cannot be read.
    pub fn stored_salt(data_dir: &Path) -> Result<Option<Vec<u8>>, Error> {
        let path = data_dir.join(SALT_FILE);
        match fs::read(&path) {
            Ok(salt) => Ok(Some(salt)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(&path, &error)),
        }
    }

    /// Whether `check` (a `root.check` value, from any data directory, a backup or a
    /// database) was sealed under this key.
    pub fn opens_check(&self, backend: &dyn CryptoBackend, check: &[u8]) -> bool {
        self.unseal(backend, CHECK_AAD, check).is_ok()
    }

    /// A 32-byte secret derived from the root key for `label` (HKDF-SHA512), the same on every
    /// node that holds the root key: TLS session-ticket keys, say.
    ///
    /// # Errors
    /// Only on crypto failure.
    pub fn derive_secret(
        &self,
        backend: &dyn CryptoBackend,
        label: &[u8],
    ) -> Result<SecretBytes, Error> {
        let mut out = SecretBytes::zeroed(32);
        backend.hkdf_sha512(
            b"kagi root key derivation v1",
            self.key.expose_secret(),
            label,
            out.expose_secret_mut(),
        )?;
        Ok(out)
    }

    /// [`RootKey::from_shares`] with each share read from a file.
    fn from_share_files(
        backend: &dyn CryptoBackend,
        data_dir: &Path,
        files: &[PathBuf],
    ) -> Result<Self, Error> {
        let mut given = Vec::with_capacity(files.len());
        for path in files {
            let text = fs::read(path).map_err(|e| {
                Error::validation(format!("cannot read the share {}: {e}", path.display()))
            })?;
            let text = SecretBytes::new(text);
            let parsed = std::str::from_utf8(text.expose_secret())
                .map_err(|_| ShareError::Malformed)
                .and_then(RootShare::parse)
                .map_err(|e| Error::validation(format!("{}: {e}", path.display())))?;
            given.push(parsed);
        }
        Self::from_shares(backend, data_dir, &given).map_err(|error| match error {
            ShareError::Keystore(error) => error,
            other => Error::validation(format!("cannot unseal {}: {other}", data_dir.display())),
        })
    }

    /// Seals `plaintext` with a fresh random nonce that the library draws:
    /// `nonce ‖ ciphertext ‖ tag`.
    ///
    /// # Errors
    /// Only on crypto failure.
    pub fn seal(
        &self,
        backend: &dyn CryptoBackend,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let (nonce, sealed) = backend.seal_fresh(&self.key, aad, plaintext)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Writes `root.check`: a fixed value sealed under this key.
    fn write_check(&self, backend: &dyn CryptoBackend, data_dir: &Path) -> Result<(), Error> {
        let sealed = self.seal(backend, CHECK_AAD, b"kagi")?;
        write_private(&data_dir.join(CHECK_FILE), &sealed)
    }

    /// Opens what [`RootKey::seal`] made.
    ///
    /// # Errors
    /// [`super::ErrorKind::Internal`] when it does not authenticate: sealed material that fails
    /// is storage corruption or tampering, never the caller's fault.
    pub fn unseal(
        &self,
        backend: &dyn CryptoBackend,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<SecretBytes, Error> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::internal("sealed key material is truncated"));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] =
            nonce.try_into().map_err(|_| Error::internal("sealed key material is truncated"))?;
        backend.open(&self.key, &nonce, aad, body).map_err(|_| {
            Error::internal("sealed key material does not authenticate under the root key")
        })
    }

    /// A keyed fingerprint of imported material (HMAC-SHA256 under a key derived from the root
    /// key), so a re-import can be checked for being the same material without keeping it.
    ///
    /// # Errors
    /// Only on crypto failure.
    pub fn fingerprint(
        &self,
        backend: &dyn CryptoBackend,
        material: &[u8],
    ) -> Result<String, Error> {
        let mut fingerprint_key = SecretBytes::zeroed(32);
        backend.hkdf_sha512(
            b"kagi",
            self.key.expose_secret(),
            b"imported material fingerprint v1",
            fingerprint_key.expose_secret_mut(),
        )?;
        let tag = backend.hmac(
            crate::crypto::MacAlgorithm::HmacSha256,
            fingerprint_key.expose_secret(),
            material,
        )?;
        Ok(hex::encode(tag))
    }
}

/// Refuses a directory that already holds a root key (or a split one); creates it otherwise.
fn refuse_existing(data_dir: &Path) -> Result<(), Error> {
    for file in [CHECK_FILE, shares::SHARES_FILE] {
        if data_dir.join(file).exists() {
            return Err(Error::validation(format!(
                "{} already holds a keystore ({file} exists)",
                data_dir.display()
            )));
        }
    }
    fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, &e))
}

/// The check value of `data_dir`.
fn read_check(data_dir: &Path) -> Result<Vec<u8>, Error> {
    let check_path = data_dir.join(CHECK_FILE);
    fs::read(&check_path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            Error::validation(format!(
                "{} holds no keystore: run `kagi init --data-dir {}` first",
                data_dir.display(),
                data_dir.display()
            ))
        } else {
            io_error(&check_path, &error)
        }
    })
}

fn derive(env_var: &str, salt: &[u8]) -> Result<AesKey, Error> {
    let passphrase = SecretBytes::new(
        std::env::var(env_var)
            .map_err(|_| {
                Error::validation(format!("the root key passphrase variable {env_var} is not set"))
            })?
            .into_bytes(),
    );
    if passphrase.is_empty() {
        return Err(Error::validation(format!("the root key passphrase in {env_var} is empty")));
    }
    let mut out = SecretBytes::zeroed(AesKey::LEN);
    // OWASP's recommended Argon2id parameters: 19 MiB, 2 passes, 1 lane.
    let params = argon2::Params::new(19 * 1024, 2, 1, Some(AesKey::LEN))
        .map_err(|_| Error::internal("argon2 parameters"))?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase.expose_secret(), salt, out.expose_secret_mut())
        .map_err(|_| Error::internal("argon2 failed"))?;
    Ok(AesKey::from_slice(out.expose_secret())?)
}

pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| io_error(path, &e))?;
    file.write_all(bytes).map_err(|e| io_error(path, &e))?;
    file.sync_all().map_err(|e| io_error(path, &e))
}

/// The root key file of `data_dir`; `hint` ends the message when it cannot be read.
fn read_key_file(data_dir: &Path, hint: &str) -> Result<AesKey, Error> {
    let path = data_dir.join(KEY_FILE);
    let bytes = SecretBytes::new(fs::read(&path).map_err(|error| {
        Error::validation(format!("cannot read the root key {}: {error}{hint}", path.display()))
    })?);
    AesKey::from_slice(bytes.expose_secret())
        .map_err(|_| Error::validation(format!("the root key {} is not 32 bytes", path.display())))
}

pub(super) fn io_error(path: &Path, error: &std::io::Error) -> Error {
    Error::internal(format!("{}: {error}", path.display()))
}
