//! The root key split into shares (`kagi init --shares N --threshold K`), as Vault's unseal
//! keys: no single person holds it, and any K of the N shares rebuild it at start.
//!
//! This file owns the share's text form, the share policy recorded in `DATA_DIR/root.shares`
//! (the threshold, the number of shares and the set id: no secret) and [`Unsealer`], the
//! progress of an unseal, one share at a time. The arithmetic is `crypto::shamir`; checking a
//! combination against `root.check` is [`RootKey::from_shares`]. It does not read shares from
//! people or sockets: `kagi unseal` and the server do.
//!
//! # The text form
//!
//! `kagi-share-v1:SET:INDEX:VALUE:CHECKSUM`, for example
//! `kagi-share-v1:9f3a61c2:2:5c1e…(64 hex digits)…:a1b2c3d4`:
//!
//! - `SET`: 8 hex digits naming the split (random at `kagi init`, kept in `root.shares`), so a
//!   share of another keystore is refused at once instead of spoiling a combination;
//! - `INDEX`: the share's x coordinate, 1 to N;
//! - `VALUE`: the share's 32 bytes in hex (upper or lower case);
//! - `CHECKSUM`: the first 4 bytes of SHA-256 over the text before it (canonical, lower case),
//!   in hex, so a mistyped share is caught before it is combined.
//!
//! The checksum catches mistakes, not forgery; a set of shares that passes every check but is
//! not K shares of the root key still fails against `root.check`, never making a new key.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::error::Error;
use super::root::{RootKey, io_error, write_private};
use crate::crypto::shamir::{self, Share};
use crate::crypto::{CryptoBackend, SecretBytes};

/// The share policy's file in the data directory.
pub const SHARES_FILE: &str = "root.shares";
const TEXT_PREFIX: &str = "kagi-share-v1";
const POLICY_FORMAT: &str = "kagi-root-shares-v1";
/// The longest share text read (a share is about 100 characters).
pub const MAX_SHARE_TEXT: usize = 1024;

/// Names one split of a root key: 4 random bytes, shown as 8 hex digits.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct SetId([u8; 4]);

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// How a data directory's root key is split. No secret: kept in `root.shares`.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct SharePolicy {
    threshold: u8,
    shares: u8,
    set: SetId,
}

/// What `root.shares` holds (JSON): the on-disk form of [`SharePolicy`].
#[derive(serde::Deserialize, serde::Serialize)]
struct PolicyFile {
    format: String,
    threshold: u8,
    shares: u8,
    set: String,
}

impl SharePolicy {
    /// A new policy for `shares` shares of which `threshold` unseal, with a random set id.
    ///
    /// # Errors
    /// A validation error unless 2 ≤ threshold ≤ shares (≤ 255 by the type): one share would be
    /// the key itself.
    pub fn new(backend: &dyn CryptoBackend, shares: u8, threshold: u8) -> Result<Self, Error> {
        if threshold < 2 {
            return Err(Error::validation(
                "the threshold must be at least 2: with 1, every share is the whole root key",
            ));
        }
        if threshold > shares {
            return Err(Error::validation(format!(
                "the threshold ({threshold}) cannot exceed the number of shares ({shares})"
            )));
        }
        let mut set = [0u8; 4];
        backend.fill_random(&mut set)?;
        Ok(Self { threshold, shares, set: SetId(set) })
    }

    /// How many shares unseal.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// How many shares there are.
    pub fn shares(&self) -> u8 {
        self.shares
    }

    /// The split's id, which every share carries.
    pub fn set(&self) -> SetId {
        self.set
    }

    /// The policy of `data_dir`, or `None` when its root key is not split.
    ///
    /// # Errors
    /// When `root.shares` exists but cannot be read or is not a share policy.
    pub fn read(data_dir: &Path) -> Result<Option<Self>, Error> {
        // A rotation interrupted while committing a new split finishes first.
        super::root::roll_forward(data_dir)?;
        let path = data_dir.join(SHARES_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&path, &error)),
        };
        Self::decode(&text)
            .map(Some)
            .ok_or_else(|| Error::internal(format!("{} is damaged", path.display())))
    }

    /// The policy `encode` wrote, or `None` when `text` is not one.
    pub fn decode(text: &[u8]) -> Option<Self> {
        let file: PolicyFile = serde_json::from_slice(text).ok()?;
        let mut set = [0u8; 4];
        hex::decode_to_slice(&file.set, &mut set).ok()?;
        if file.format != POLICY_FORMAT || file.threshold < 2 || file.threshold > file.shares {
            return None;
        }
        Some(Self { threshold: file.threshold, shares: file.shares, set: SetId(set) })
    }

    /// The policy as `root.shares` holds it: one JSON line.
    pub fn encode(&self) -> Vec<u8> {
        let file = PolicyFile {
            format: POLICY_FORMAT.to_owned(),
            threshold: self.threshold,
            shares: self.shares,
            set: self.set.to_string(),
        };
        let mut text = serde_json::to_vec(&file).unwrap_or_default();
        text.push(b'\n');
        text
    }

    pub(super) fn write(&self, data_dir: &Path) -> Result<(), Error> {
        write_private(&data_dir.join(SHARES_FILE), &self.encode())
    }

    /// Whether `share` may join `given` in a combination: this split's, in range, not given yet.
    fn admit(&self, given: &[RootShare], share: &RootShare) -> Result<(), ShareError> {
        if share.set != self.set {
            return Err(ShareError::OtherSet { share: share.set, keystore: self.set });
        }
        if share.index() > self.shares {
            return Err(ShareError::OutOfRange { index: share.index(), shares: self.shares });
        }
        if given.iter().any(|other| other.index() == share.index()) {
            return Err(ShareError::Duplicate(share.index()));
        }
        Ok(())
    }
}

/// One share of a root key, as its holder keeps it.
///
/// # Security
/// k of these give the root key: the value is zeroized on drop and never printed; `Debug`
/// shows the set and index only.
pub struct RootShare {
    set: SetId,
    share: Share,
}

impl RootShare {
    pub(super) fn new(set: SetId, share: Share) -> Self {
        Self { set, share }
    }

    /// Reads the text form (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`ShareError::Malformed`] when it is not a share's text; [`ShareError::Checksum`] when its
    /// checksum does not match (a typo).
    pub fn parse(text: &str) -> Result<Self, ShareError> {
        let text = text.trim();
        if text.len() > MAX_SHARE_TEXT {
            return Err(ShareError::Malformed);
        }
        let mut fields = text.split(':');
        let (Some(TEXT_PREFIX), Some(set), Some(index), Some(value), Some(checksum), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(ShareError::Malformed);
        };
        let mut set_bytes = [0u8; 4];
        hex::decode_to_slice(set, &mut set_bytes).map_err(|_| ShareError::Malformed)?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ShareError::Malformed);
        }
        let index: u8 = index.parse().map_err(|_| ShareError::Malformed)?;
        let value = SecretBytes::new(hex::decode(value).map_err(|_| ShareError::Malformed)?);
        if value.is_empty() {
            return Err(ShareError::Malformed);
        }
        let share = Share::new(index, value).map_err(|_| ShareError::Malformed)?;
        let parsed = Self { set: SetId(set_bytes), share };
        // Compared over the canonical text, so upper-case hex typed by hand is accepted.
        let mut expected = [0u8; 4];
        hex::decode_to_slice(checksum, &mut expected).map_err(|_| ShareError::Malformed)?;
        if parsed.checksum() != expected {
            return Err(ShareError::Checksum);
        }
        Ok(parsed)
    }

    /// The text form: `kagi-share-v1:SET:INDEX:VALUE:CHECKSUM`.
    ///
    /// # Security
    /// The text is the share: give it to its holder only. Wiped when dropped.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut text = self.body();
        text.push(':');
        text.push_str(&hex::encode(self.checksum()));
        text
    }

    /// The share's index (x coordinate), 1 to N.
    pub fn index(&self) -> u8 {
        self.share.x()
    }

    /// The split the share belongs to.
    pub fn set(&self) -> SetId {
        self.set
    }

    /// The text before the checksum.
    fn body(&self) -> Zeroizing<String> {
        let value = Zeroizing::new(hex::encode(self.share.expose_secret()));
        let mut text = Zeroizing::new(String::with_capacity(value.len() + 32));
        text.push_str(TEXT_PREFIX);
        text.push(':');
        text.push_str(&self.set.to_string());
        text.push(':');
        text.push_str(&self.share.x().to_string());
        text.push(':');
        text.push_str(&value);
        text
    }

    fn checksum(&self) -> [u8; 4] {
        let digest = Sha256::digest(self.body().as_bytes());
        [digest[0], digest[1], digest[2], digest[3]]
    }
}

impl fmt::Debug for RootShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootShare")
            .field("set", &self.set)
            .field("index", &self.share.x())
            .finish_non_exhaustive()
    }
}

/// Why a share, or a set of shares, was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ShareError {
    // One share, refused on its own (an unseal in progress keeps its shares).
    /// The checksum does not match: the share was mistyped or damaged.
    #[error("the share's checksum does not match: it is mistyped or damaged")]
    Checksum,
    /// The same index was given twice.
    #[error("share {0} was already given")]
    Duplicate(u8),
    /// Not the text of a share.
    #[error("not a kagi share (expected kagi-share-v1:SET:INDEX:HEX:CHECKSUM)")]
    Malformed,
    /// A share of another split (another keystore, or an earlier `kagi init`).
    #[error("the share belongs to another keystore (set {share}; this one's is {keystore})")]
    OtherSet {
        /// The share's set.
        share: SetId,
        /// The data directory's set.
        keystore: SetId,
    },
    /// An index above the number of shares.
    #[error("there is no share {index}: this keystore has {shares}")]
    OutOfRange {
        /// The share's index.
        index: u8,
        /// The number of shares.
        shares: u8,
    },
    // A set of shares.
    /// Fewer shares than the threshold.
    #[error("{threshold} shares are needed, {given} given")]
    TooFew {
        /// Shares given.
        given: usize,
        /// Shares needed.
        threshold: u8,
    },
    /// The shares passed every check but do not rebuild the root key (`root.check` does not
    /// open): a forged or corrupted share, never a new key.
    #[error("the shares do not open the keystore: they are not shares of its root key")]
    WrongShares,
    // Not the shares' fault.
    /// The data directory could not be read, or its root key is not split.
    #[error("{}", .0.message())]
    Keystore(Error),
}

impl From<Error> for ShareError {
    fn from(error: Error) -> Self {
        Self::Keystore(error)
    }
}

/// An unseal in progress: shares are given one at a time; the threshold-th one rebuilds the root
/// key and checks it against `root.check`.
///
/// A refused share (malformed, mistyped, another keystore's, out of range, already given) is
/// refused alone and the shares given so far stay; a complete set that does not open the
/// keystore is dropped whole, and the unseal starts again.
#[derive(Debug)]
pub struct Unsealer {
    data_dir: PathBuf,
    policy: SharePolicy,
    given: Vec<RootShare>,
}

/// Where an unseal stands after a share.
#[derive(Debug)]
pub enum Progress {
    /// More shares are needed.
    Need {
        /// Valid shares given so far.
        have: u8,
        /// Shares needed.
        threshold: u8,
    },
    /// The root key, rebuilt and checked.
    Unsealed(RootKey),
}

impl Unsealer {
    /// An unseal of the keystore in `data_dir`, split as `policy` says.
    pub fn new(data_dir: &Path, policy: SharePolicy) -> Self {
        Self { data_dir: data_dir.to_owned(), policy, given: Vec::new() }
    }

    /// The policy being unsealed.
    pub fn policy(&self) -> SharePolicy {
        self.policy
    }

    /// Takes one share's text.
    ///
    /// # Errors
    /// Any [`ShareError`] about the share (the progress stays), or [`ShareError::WrongShares`]
    /// (the progress is reset) or [`ShareError::Keystore`] once the set is complete.
    pub fn submit(
        &mut self,
        backend: &dyn CryptoBackend,
        text: &str,
    ) -> Result<Progress, ShareError> {
        let share = RootShare::parse(text)?;
        self.policy.admit(&self.given, &share)?;
        self.given.push(share);
        let have = u8::try_from(self.given.len())
            .map_err(|_| Error::internal("more shares than the policy allows: this is a bug"))?;
        if have < self.policy.threshold {
            return Ok(Progress::Need { have, threshold: self.policy.threshold });
        }
        // Complete: whatever happens next, these shares are used up.
        let given = std::mem::take(&mut self.given);
        RootKey::from_shares(backend, &self.data_dir, &given).map(Progress::Unsealed)
    }
}

/// Checks `shares` against `policy` (set, range, duplicates, count).
pub(super) fn admit_all(policy: &SharePolicy, shares: &[RootShare]) -> Result<(), ShareError> {
    for (index, share) in shares.iter().enumerate() {
        policy.admit(&shares[..index], share)?;
    }
    if shares.len() < usize::from(policy.threshold) {
        return Err(ShareError::TooFew { given: shares.len(), threshold: policy.threshold });
    }
    Ok(())
}

/// Interpolates `shares` (admitted by [`admit_all`]): the root key's bytes if they are its
/// shares, other bytes if not.
pub(super) fn combine(shares: &[RootShare]) -> Result<SecretBytes, ShareError> {
    let shares: Vec<&Share> = shares.iter().map(|root_share| &root_share.share).collect();
    shamir::combine(&shares).map_err(|error| match error {
        shamir::Error::DuplicateX(x) => ShareError::Duplicate(x),
        _ => ShareError::Malformed,
    })
}

#[cfg(test)]
mod tests;
