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
use std::sync::Arc;

use crate::crypto::{AesKey, CryptoBackend, NONCE_LEN, SecretBytes, TAG_LEN};

use super::error::Error;
use super::shares::{self, RootShare, SetId, ShareError, SharePolicy};
use crate::crypto::shamir;

const KEY_FILE: &str = "root.key";
const SALT_FILE: &str = "root.salt";
const CHECK_FILE: &str = "root.check";
const CHECK_AAD: &[u8] = b"kagi root key check v1";
/// `root.lineage`: the key fingerprinting imported material, carried from the first root key
/// through every rotation (sealed under the current one), so a fingerprint taken before a
/// rotation still matches after it. Absent until the first rotation: the key then derives from
/// the root key itself.
const LINEAGE_FILE: &str = "root.lineage";
const LINEAGE_AAD: &[u8] = b"kagi root key lineage v1";
/// The next root key sealed under the current one, in the store's `meta` while a rotation is
/// under way (`root_next`).
const NEXT_AAD: &[u8] = b"kagi next root key v1";
/// Staged files of the next root key end with this; the commit renames them into place.
const NEXT_SUFFIX: &str = ".next";
/// Present while a rotation's staged files are being renamed into place: from the moment it
/// exists, the staged files are the data directory's root key.
const COMMIT_FILE: &str = "root.commit";
/// Every file that describes the root key, in the order a commit renames them (the check
/// value last).
const ROOT_FILES: [&str; 5] = [KEY_FILE, SALT_FILE, shares::SHARES_FILE, LINEAGE_FILE, CHECK_FILE];

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
    /// The key of [`RootKey::fingerprint`]: derived from the first root key of the keystore
    /// and carried through rotations (`root.lineage`).
    fingerprint_key: SecretBytes,
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
        let root = Self::fresh(backend, key)?;
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
        let root = Self::fresh(backend, AesKey::from_slice(bytes.expose_secret())?)?;
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
        let root = Self::fresh(backend, combine_for(&policy, given)?)?;
        root.unseal(backend, CHECK_AAD, &check).map_err(|_| ShareError::WrongShares)?;
        Ok(root.with_lineage_of(backend, data_dir)?)
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
        let root = Self::fresh(backend, key)?;
        root.unseal(backend, CHECK_AAD, &check).map_err(|_| {
            Error::validation(format!(
                "the root key does not open the keystore in {} (wrong key file or passphrase)",
                data_dir.display()
            ))
        })?;
        root.with_lineage_of(backend, data_dir)
    }

    /// Makes `data_dir`, which holds no `root.check` yet, use the root key whose check value is
    /// `check` (from a backup): the key is `root.key` (copied there by the operator), derives
    /// from the passphrase with the salt already in `root.salt`, else `salt`, or is rebuilt from
    /// shares of the split `split`. Writes `root.check` (and `root.salt`, `root.lineage`,
    /// `root.shares`) only once the key is proven to open `check`.
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
        lineage: Option<&[u8]>,
        split: Option<SharePolicy>,
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
            RootKeySource::Shares { files } => {
                let policy = split.ok_or_else(|| {
                    Error::validation("the backup's root key is not split into shares")
                })?;
                let given = read_share_files(files)?;
                combine_for(&policy, &given).map_err(|error| match error {
                    ShareError::Keystore(error) => error,
                    other => Error::validation(format!("the shares given: {other}")),
                })?
            }
        };
        let mut root = Self::fresh(backend, key)?;
        if !root.opens_check(backend, check) {
            return Err(Error::validation(format!(
                "the root key of {} is not the key the backup was made under",
                data_dir.display()
            )));
        }
        if let Some(lineage) = lineage {
            root.fingerprint_key = root.unseal(backend, LINEAGE_AAD, lineage)?;
        }
        fs::create_dir_all(data_dir).map_err(|e| io_error(data_dir, &e))?;
        if let (RootKeySource::Passphrase { .. }, Some(salt)) = (source, salt)
            && !data_dir.join(SALT_FILE).exists()
        {
            write_private(&data_dir.join(SALT_FILE), salt)?;
        }
        if let Some(lineage) = lineage {
            replace_private(&data_dir.join(LINEAGE_FILE), lineage)?;
        }
        if let (RootKeySource::Shares { .. }, Some(policy)) = (source, split) {
            replace_private(&data_dir.join(shares::SHARES_FILE), &policy.encode())?;
        }
        write_private(&data_dir.join(CHECK_FILE), check)?;
        Ok(root)
    }

    /// The sealed fingerprint key of `data_dir` (`root.lineage`), when its root key was ever
    /// rotated. Not secret without the root key.
    ///
    /// # Errors
    /// When it exists but cannot be read.
    pub fn stored_lineage(data_dir: &Path) -> Result<Option<Vec<u8>>, Error> {
        read_optional(&data_dir.join(LINEAGE_FILE))
    }

    /// A root key whose fingerprint key derives from itself (a new keystore's).
    fn fresh(backend: &dyn CryptoBackend, key: AesKey) -> Result<Self, Error> {
        let mut fingerprint_key = SecretBytes::zeroed(32);
        backend.hkdf_sha512(
            b"kagi",
            key.expose_secret(),
            b"imported material fingerprint v1",
            fingerprint_key.expose_secret_mut(),
        )?;
        Ok(Self { key, fingerprint_key })
    }

    /// This key (proven to open `root.check`) with the fingerprint key `root.lineage` carries,
    /// if the directory has one.
    fn with_lineage_of(
        mut self,
        backend: &dyn CryptoBackend,
        data_dir: &Path,
    ) -> Result<Self, Error> {
        if let Some(lineage) = Self::stored_lineage(data_dir)? {
            self.fingerprint_key = self.unseal(backend, LINEAGE_AAD, &lineage).map_err(|_| {
                Error::internal(format!(
                    "{} does not open under the root key (damaged?)",
                    data_dir.join(LINEAGE_FILE).display()
                ))
            })?;
        }
        Ok(self)
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
        read_optional(&data_dir.join(SALT_FILE))
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
        let given = read_share_files(files)?;
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
        let tag = backend.hmac(
            crate::crypto::MacAlgorithm::HmacSha256,
            self.fingerprint_key.expose_secret(),
            material,
        )?;
        Ok(hex::encode(tag))
    }
}

/// How `kagi root-key rotate` makes the next root key: of the same kind as the current one.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum NextRootSource {
    /// A new random `root.key`.
    File,
    /// A new passphrase, read from this environment variable, with a new salt.
    Passphrase {
        /// The environment variable's name.
        env_var: String,
    },
    /// A new random key split into new shares.
    Shares {
        /// How many shares.
        shares: u8,
        /// How many unseal.
        threshold: u8,
    },
}

/// The root key a rotation moves to, with what its files will hold: staged beside the current
/// ones (`root.*.next`) until the commit renames them into place.
///
/// # Security
/// The key is an [`AesKey`]: zeroized on drop, never printed.
#[derive(Debug)]
pub struct NextRoot {
    root: RootKey,
    salt: Option<Vec<u8>>,
    policy: Option<SharePolicy>,
}

/// [`NextRoot`] as `kagi root-key rotate` hands it to a running server over its control socket
/// (mode 0600: the same custody as `root.key`).
#[derive(serde::Deserialize, serde::Serialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct NextRootWire {
    /// The key, hex.
    pub key: String,
    /// The Argon2id salt (hex), for a passphrase-derived key.
    pub salt: Option<String>,
    /// The share policy (`root.shares`' JSON), for a split key.
    pub policy: Option<String>,
}

impl std::fmt::Debug for NextRootWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NextRootWire { .. }")
    }
}

impl NextRoot {
    /// A new root key as `source` says; for a split key, also its shares (hand each to its
    /// holder before the rotation starts: once it commits they are the only way to the key).
    ///
    /// # Errors
    /// A bad share policy, an unset or empty passphrase, or a crypto failure.
    pub fn generate(
        backend: &dyn CryptoBackend,
        source: &NextRootSource,
    ) -> Result<(Self, Vec<RootShare>), Error> {
        let mut bytes = SecretBytes::zeroed(AesKey::LEN);
        backend.fill_random(bytes.expose_secret_mut())?;
        let (key, salt, policy, split) = match source {
            NextRootSource::File => {
                (AesKey::from_slice(bytes.expose_secret())?, None, None, vec![])
            }
            NextRootSource::Passphrase { env_var } => {
                let mut salt = vec![0u8; 16];
                backend.fill_random(&mut salt)?;
                let key = derive(env_var, &salt)?;
                (key, Some(salt), None, vec![])
            }
            NextRootSource::Shares { shares, threshold } => {
                let policy = SharePolicy::new(backend, *shares, *threshold)?;
                let split = shamir::split(backend, bytes.expose_secret(), *shares, *threshold)
                    .map_err(|error| Error::validation(error.to_string()))?;
                let split =
                    split.into_iter().map(|share| RootShare::new(policy.set(), share)).collect();
                (AesKey::from_slice(bytes.expose_secret())?, None, Some(policy), split)
            }
        };
        let root = RootKey::fresh(backend, key)?;
        Ok((Self { root, salt, policy }, split))
    }

    /// What goes over the control socket.
    pub fn to_wire(&self) -> NextRootWire {
        NextRootWire {
            key: hex::encode(self.root.key.expose_secret()),
            salt: self.salt.as_ref().map(hex::encode),
            policy: self
                .policy
                .map(|policy| String::from_utf8_lossy(&policy.encode()).trim_end().to_owned()),
        }
    }

    /// What [`NextRoot::to_wire`] sent.
    ///
    /// # Errors
    /// A validation error when it is malformed.
    pub fn from_wire(backend: &dyn CryptoBackend, wire: &NextRootWire) -> Result<Self, Error> {
        let malformed = || Error::validation("malformed next root key");
        let bytes = SecretBytes::new(hex::decode(wire.key.as_bytes()).map_err(|_| malformed())?);
        let key = AesKey::from_slice(bytes.expose_secret()).map_err(|_| malformed())?;
        let salt = match &wire.salt {
            Some(salt) => Some(hex::decode(salt).map_err(|_| malformed())?),
            None => None,
        };
        let policy = match &wire.policy {
            Some(policy) => Some(SharePolicy::decode(policy.as_bytes()).ok_or_else(malformed)?),
            None => None,
        };
        Ok(Self { root: RootKey::fresh(backend, key)?, salt, policy })
    }

    /// Writes the staged files of this key into `data_dir` (replacing those of an earlier
    /// attempt that never started): the key, salt or share policy, the fingerprint key carried
    /// from `current`, and the check value. Answers the key sealed under `current`, which the
    /// store keeps while the rotation runs (`root_next`), so that whoever holds the current
    /// root key can finish it.
    ///
    /// # Errors
    /// When the new key is not of the current one's kind, or files cannot be written.
    pub(super) fn stage(
        mut self,
        backend: &dyn CryptoBackend,
        data_dir: &Path,
        current: &RootKey,
    ) -> Result<(RootKey, Vec<u8>), Error> {
        let split = data_dir.join(shares::SHARES_FILE).exists();
        let derived = data_dir.join(SALT_FILE).exists();
        if split != self.policy.is_some() || derived != self.salt.is_some() {
            let kind = if split {
                "split into shares"
            } else if derived {
                "derived from a passphrase"
            } else {
                "a root.key file"
            };
            return Err(Error::validation(format!(
                "the root key of {} is {kind}: the new one must be of the same kind",
                data_dir.display()
            )));
        }
        if data_dir.join(COMMIT_FILE).exists() {
            return Err(Error::internal("a root key commit is unfinished: reopen the keystore"));
        }
        for name in ROOT_FILES {
            remove_if_exists(&staged(data_dir, name))?;
        }
        self.root.fingerprint_key = current.fingerprint_key.duplicate();
        if let Some(salt) = &self.salt {
            write_private(&staged(data_dir, SALT_FILE), salt)?;
        } else if let Some(policy) = &self.policy {
            write_private(&staged(data_dir, shares::SHARES_FILE), &policy.encode())?;
        } else {
            write_private(&staged(data_dir, KEY_FILE), self.root.key.expose_secret())?;
        }
        let lineage =
            self.root.seal(backend, LINEAGE_AAD, self.root.fingerprint_key.expose_secret())?;
        write_private(&staged(data_dir, LINEAGE_FILE), &lineage)?;
        let check = self.root.seal(backend, CHECK_AAD, b"kagi")?;
        write_private(&staged(data_dir, CHECK_FILE), &check)?;
        sync_dir(data_dir)?;
        let sealed = current.seal(backend, NEXT_AAD, self.root.key.expose_secret())?;
        Ok((self.root, sealed))
    }
}

impl RootKey {
    /// The next root key of a rotation, from its value sealed under this key (the store's
    /// `root_next`); `None` when this key does not open it (it is then this key's own value,
    /// left by a commit that did not get to remove it).
    pub(super) fn open_next(&self, backend: &dyn CryptoBackend, sealed: &[u8]) -> Option<Self> {
        let bytes = self.unseal(backend, NEXT_AAD, sealed).ok()?;
        let key = AesKey::from_slice(bytes.expose_secret()).ok()?;
        Some(Self { key, fingerprint_key: self.fingerprint_key.duplicate() })
    }

    /// The staged check value of a rotation in `data_dir` (`root.check.next`), proven to open
    /// under this (the next) key.
    ///
    /// # Errors
    /// When it is missing or does not open: the staged files are not this key's.
    pub(super) fn staged_check(
        &self,
        backend: &dyn CryptoBackend,
        data_dir: &Path,
    ) -> Result<Vec<u8>, Error> {
        let path = staged(data_dir, CHECK_FILE);
        let check = fs::read(&path).map_err(|error| {
            Error::internal(format!(
                "a root key rotation is under way but its staged files are missing ({}: \
                 {error}): run the rotation on the node that started it",
                path.display()
            ))
        })?;
        if !self.opens_check(backend, &check) {
            return Err(Error::internal(format!(
                "{} is not the check value of the rotation's new root key",
                path.display()
            )));
        }
        Ok(check)
    }
}

/// Makes the staged files of a rotation `data_dir`'s root key: marks the commit, renames them
/// into place, and clears the mark. From the mark on, a crash is finished by
/// [`roll_forward`] at the next start.
///
/// # Errors
/// When files cannot be written or renamed.
pub(super) fn commit_staged(data_dir: &Path) -> Result<(), Error> {
    if !staged(data_dir, CHECK_FILE).exists() {
        return Err(Error::internal("no staged root key to commit"));
    }
    replace_private(&data_dir.join(COMMIT_FILE), b"")?;
    sync_dir(data_dir)?;
    roll_forward(data_dir).map(|_| ())
}

/// Finishes a commit of staged root key files that a crash interrupted (`root.commit`
/// exists): renames what is still staged, then clears the mark. True when there was one.
///
/// # Errors
/// When files cannot be renamed.
pub(super) fn roll_forward(data_dir: &Path) -> Result<bool, Error> {
    let mark = data_dir.join(COMMIT_FILE);
    if !mark.exists() {
        return Ok(false);
    }
    for name in ROOT_FILES {
        let from = staged(data_dir, name);
        if from.exists() {
            let to = data_dir.join(name);
            fs::rename(&from, &to).map_err(|e| io_error(&from, &e))?;
        }
    }
    sync_dir(data_dir)?;
    fs::remove_file(&mark).map_err(|e| io_error(&mark, &e))?;
    sync_dir(data_dir)?;
    Ok(true)
}

fn staged(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(format!("{name}{NEXT_SUFFIX}"))
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(path, &error)),
    }
}

/// Makes renames and new names in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, &e))
}

/// The root keys of a keystore: the current one seals; while a rotation re-seals, the
/// previous one still opens what is not re-sealed yet.
#[derive(Debug)]
pub(crate) struct Keyring {
    pub(crate) current: Arc<RootKey>,
    pub(crate) previous: Option<Arc<RootKey>>,
}

impl Keyring {
    /// Seals under the current key.
    pub(crate) fn seal(
        &self,
        backend: &dyn CryptoBackend,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        self.current.seal(backend, aad, plaintext)
    }

    /// Opens under the current key, else the previous one.
    pub(crate) fn unseal(
        &self,
        backend: &dyn CryptoBackend,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<SecretBytes, Error> {
        match (self.current.unseal(backend, aad, sealed), &self.previous) {
            (Ok(bytes), _) => Ok(bytes),
            (Err(_), Some(previous)) => previous.unseal(backend, aad, sealed),
            (Err(error), None) => Err(error),
        }
    }

    /// [`RootKey::fingerprint`] (the same under every key of a lineage).
    pub(crate) fn fingerprint(
        &self,
        backend: &dyn CryptoBackend,
        material: &[u8],
    ) -> Result<String, Error> {
        self.current.fingerprint(backend, material)
    }
}

/// The shares in `files`, one per file.
fn read_share_files(files: &[PathBuf]) -> Result<Vec<RootShare>, Error> {
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
    Ok(given)
}

/// The key `given` rebuild, once each is admitted under `policy`.
fn combine_for(policy: &SharePolicy, given: &[RootShare]) -> Result<AesKey, ShareError> {
    shares::admit_all(policy, given)?;
    let bytes = shares::combine(given)?;
    AesKey::from_slice(bytes.expose_secret()).map_err(|_| ShareError::WrongShares)
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
    roll_forward(data_dir)?;
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

/// A file's bytes, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(path, &error)),
    }
}

/// [`write_private`], replacing whatever `path` held.
fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    remove_if_exists(path)?;
    write_private(path, bytes)
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
