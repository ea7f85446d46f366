//! Backups: a consistent snapshot of a keystore in one file, checked without restoring it,
//! restored into an empty keystore that has the same root key, and a proof that nothing was lost
//! on the way.
//!
//! A backup copies what the [`Store`] holds as of one moment ([`Store::snapshot`]: one read
//! transaction, so it is taken while a server writes). Key material stays sealed under the root
//! key, exactly as stored: a backup holds no plaintext material and is useless without the root
//! key, which is never in it. Taking a backup does not need the root key either.
//!
//! # The file (format version 1)
//!
//! JSON lines, each ending in `\n`, in this order:
//!
//! 1. The header: `{"format":"kagi-backup","format_version":1,"kagi_version":"0.1.0",
//!    "created":EPOCH,"store":"sqlite","root_check":B64,"root_salt":B64|null,
//!    "root_lineage":B64|null,"root_shares":POLICY_JSON|null,"partition":{"region":…,"account":…},"counts":{"keys":N,"versions":N,"aliases":N,
//!    "import_tokens":N},"audit_head":{"seq":N,"hash":HEX,"file":NAME}|null}`.
//!    `root_check` is the data directory's `root.check` (a value sealed under the root key):
//!    whether a root key opens it says whether it is the key the backup was made under, without
//!    opening anything else. `root_salt` is `root.salt` when the root key derives from a
//!    passphrase; `root_lineage` is `root.lineage` once the root key was rotated; `root_shares`
//!    is `root.shares` (the split's K, N and id: no secret) when the root key is split.
//!    `audit_head` is the audit chain head read just after the snapshot: the trail
//!    is written before each change commits, so every change the backup holds is audited at or
//!    before that record.
//! 2. One line per record: `{"key":KEY_RECORD}` (the store's JSON of a key: metadata, policy,
//!    grants, tags), then `{"version":{"key_id":…,"record":VERSION_RECORD,"sealed":B64}}`
//!    (`sealed` is the material sealed under the root key, empty once destroyed), then
//!    `{"alias":{"name":…,"key_id":…,"created":…,"updated":…}}`, then
//!    `{"import_token":{"token_id":…,"key_id":…,"wrapping_algorithm":…,"wrapping_spec":…,
//!    "sealed":B64,"expires":…}}`, then `{"certificate":{"meta":CERT_META,"chain":[B64_DER,…]}}`
//!    for each certificate of `DATA_DIR/certs` (public chains naming their keystore key; read
//!    before the snapshot, so the keys they name are in it).
//! 3. The trailer: `{"sha256":HEX}`, the SHA-256 of every byte before it. Nothing follows.
//!
//! The checksum finds damage and truncation; it is no signature (it has no secret). A changed
//! sealed version does not open (its associated data binds it to its key and version), but a
//! changed policy or alias would go unnoticed by whoever can also recompute the checksum: keep
//! backups where only the operators can write.
//!
//! A newer `format_version` is refused; fields are only ever added.
//!
//! This module does the file work of backups (reading, writing atomically with mode 0600); the
//! command line (`cli/backup.rs`) decides where from and where to.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::audit::chain::ChainHead;
use crate::audit::{AuditEvent, AuditSink, NullSink, Outcome};
use crate::crypto::CryptoBackend;
use crate::keystore::clock::Clock;
use crate::keystore::key::{AliasRecord, ImportTokenRecord, KeyRecord, KeyState, VersionRecord};
use crate::keystore::operations::{EncryptionAlgorithm, MessageType};
use crate::keystore::store::{SqliteStore, Store, StoreError, StoreSettings, StoreSnapshot};
use crate::keystore::{EncryptionContext, KeyUsage, Keystore, OpContext, Partition, RootKey};
use crate::tls::{CertMeta, CertStore, StoredCert};
use rustls::pki_types::CertificateDer;

/// The `format` of a backup's header.
pub const FORMAT: &str = "kagi-backup";
/// The format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The SQLite database's file name in a data directory.
pub const DATABASE_FILE: &str = "keystore.db";
/// The audit operation name of a restore.
pub const RESTORE_OPERATION: &str = "RestoreBackup";

/// Why a backup could not be taken, checked or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    // Untrusted input: the file.
    /// The file is damaged, truncated or not a backup.
    #[error("the backup is damaged: {0}")]
    Corrupt(String),
    /// The records contradict each other or the header.
    #[error("the backup is inconsistent: {0}")]
    Inconsistent(String),
    /// Written by a newer kagi.
    #[error(
        "the backup has format version {found}, newer than this kagi reads ({supported}): use a newer kagi"
    )]
    NewerFormat {
        /// The version found.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// A sealed version (or import token) does not open under the root key.
    #[error("{0}")]
    Unseal(String),
    // Operator: the root key, the destination.
    /// The root key is not the one the backup was made under.
    #[error("{0}")]
    WrongRootKey(String),
    /// The destination keystore already holds keys.
    #[error("{0}")]
    NotEmpty(String),
    /// No keystore where one was expected.
    #[error("{0}")]
    NoKeystore(String),
    /// The destination lacks something the source has, or holds it differently.
    #[error("{} difference(s) between source and destination: {}", .0.len(), summary(.0))]
    Lost(Vec<String>),
    // Environment.
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The certificates of the data directory could not be read or written.
    #[error("certificates: {0}")]
    Certificates(String),
    /// The audit trail could not record the restore (nothing was restored then).
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The keystore failed (the root key, an audit write).
    #[error("{0}")]
    Keystore(#[from] crate::keystore::Error),
}

/// The first differences, for a one-line message.
fn summary(differences: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = differences.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if differences.len() > SHOWN {
        text.push_str(&format!("; and {} more", differences.len() - SHOWN));
    }
    text
}

/// How many records of each kind.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct Counts {
    /// Keys (every state, deleted ones included).
    pub keys: usize,
    /// Key versions, with or without material.
    pub versions: usize,
    /// Aliases.
    pub aliases: usize,
    /// Import tokens (GetParametersForImport).
    pub import_tokens: usize,
    /// TLS certificates of the data directory (chains and the keystore key of each).
    #[serde(default)]
    pub certificates: usize,
}

impl Counts {
    /// The counts of `snapshot`.
    pub fn of(snapshot: &StoreSnapshot) -> Self {
        Self {
            keys: snapshot.keys.len(),
            versions: snapshot.versions.len(),
            aliases: snapshot.aliases.len(),
            import_tokens: snapshot.import_tokens.len(),
            certificates: 0,
        }
    }
}

/// Region and account of the keystore's ARNs when the backup was taken.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct PartitionHeader {
    /// The region.
    pub region: String,
    /// The 12-digit account id.
    pub account: String,
}

/// A backup's first line. See the module documentation.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// The version of the kagi that wrote it.
    pub kagi_version: String,
    /// When it was taken, Unix seconds.
    pub created: i64,
    /// The kind of store it was taken from (`sqlite`).
    pub store: String,
    /// The root key's check value (`root.check`), base64.
    #[serde(with = "base64_bytes")]
    pub root_check: Vec<u8>,
    /// The passphrase salt (`root.salt`), base64, when the root key derives from a passphrase.
    #[serde(default, with = "base64_option")]
    pub root_salt: Option<Vec<u8>>,
    /// The sealed fingerprint key (`root.lineage`), base64, once the root key was rotated.
    #[serde(default, with = "base64_option")]
    pub root_lineage: Option<Vec<u8>>,
    /// The share policy (`root.shares`, its JSON), when the root key is split into shares.
    #[serde(default)]
    pub root_shares: Option<String>,
    /// The ARN partition.
    pub partition: PartitionHeader,
    /// How many records follow.
    pub counts: Counts,
    /// The audit chain head just after the snapshot, when the trail was readable.
    #[serde(default)]
    pub audit_head: Option<ChainHead>,
}

/// A backup in memory: its header and the records.
#[derive(Debug)]
pub struct Backup {
    /// The header.
    pub header: Header,
    /// The records, sealed material included.
    pub snapshot: StoreSnapshot,
    /// The certificates of the data directory.
    pub certificates: Vec<StoredCert>,
}

impl Backup {
    /// How many records of each kind it holds.
    pub fn counts(&self) -> Counts {
        Counts { certificates: self.certificates.len(), ..Counts::of(&self.snapshot) }
    }
}

/// One record line.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Key(KeyRecord),
    Version {
        key_id: String,
        record: VersionRecord,
        sealed: String,
    },
    Alias {
        name: String,
        key_id: String,
        created: i64,
        updated: i64,
    },
    ImportToken {
        token_id: String,
        key_id: String,
        wrapping_algorithm: String,
        wrapping_spec: String,
        sealed: String,
        expires: i64,
    },
    Certificate {
        meta: CertMeta,
        chain: Vec<String>,
    },
}

/// The last line.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    sha256: String,
}

// === taking a backup ===

/// Where a backup is taken from.
#[derive(Debug)]
pub struct Source<'a> {
    /// The store.
    pub store: &'a dyn Store,
    /// The kind of store (`sqlite`), for the header.
    pub store_kind: &'a str,
    /// The data directory holding `root.check` (and `root.salt`).
    pub data_dir: &'a Path,
    /// The audit trail's directory, whose chain head the header records.
    pub audit_dir: Option<&'a Path>,
    /// The ARN partition.
    pub partition: &'a Partition,
    /// Whether to copy the data directory's TLS certificates.
    pub certificates: bool,
}

/// Opens the store of `data_dir`: its SQLite database, created when `create` is set.
///
/// Opening beside a running server is safe: SQLite in WAL mode lets this process read one
/// consistent moment while the server writes, and its own (rare) writes wait for the server's
/// (`busy_timeout`). Opening runs the schema check of [`SqliteStore::open`], so take backups with
/// the kagi that runs the server.
///
/// # Errors
/// [`BackupError::NoKeystore`] when the database is missing and `create` is not set; the store's
/// error when it cannot be opened.
pub async fn open_store(
    data_dir: &Path,
    store: &StoreSettings,
    create: bool,
) -> Result<Arc<dyn Store>, BackupError> {
    if *store == StoreSettings::Sqlite {
        let path = data_dir.join(DATABASE_FILE);
        if !create && !path.exists() {
            return Err(BackupError::NoKeystore(format!(
                "{} holds no keystore database ({DATABASE_FILE})",
                data_dir.display()
            )));
        }
    }
    Ok(store.open(data_dir).await?)
}

/// Takes a backup of `source` at `now`.
///
/// # Errors
/// When the data directory has no `root.check`, or the store fails.
pub async fn take(source: &Source<'_>, now: i64) -> Result<Backup, BackupError> {
    let root_check = RootKey::stored_check(source.data_dir)
        .map_err(|error| BackupError::NoKeystore(error.message().to_owned()))?;
    let root_salt = RootKey::stored_salt(source.data_dir)?;
    let root_lineage = RootKey::stored_lineage(source.data_dir)?;
    let root_shares = crate::keystore::SharePolicy::read(source.data_dir)?
        .map(|policy| String::from_utf8_lossy(&policy.encode()).trim_end().to_owned());
    // Mid-rotation, versions are sealed under two root keys and `root.check` names one.
    if source.store.meta("root_next").await?.is_some() {
        return Err(BackupError::NoKeystore(
            "a root key rotation is under way: take the backup once it has committed".into(),
        ));
    }
    // Before the snapshot: a certificate is written after its key is committed, and a key's
    // record is never removed, so every key a certificate names is in the snapshot.
    let certificates = if source.certificates {
        CertStore::new(source.data_dir)
            .list()
            .map_err(|e| BackupError::Certificates(e.to_string()))?
    } else {
        Vec::new()
    };
    let snapshot = source.store.snapshot().await?;
    // Read after the snapshot: every change it holds was audited before it committed.
    let audit_head = source.audit_dir.and_then(read_head);
    let header = Header {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        kagi_version: env!("CARGO_PKG_VERSION").to_owned(),
        created: now,
        store: source.store_kind.to_owned(),
        root_check,
        root_salt,
        root_lineage,
        root_shares,
        partition: PartitionHeader {
            region: source.partition.region.clone(),
            account: source.partition.account.clone(),
        },
        counts: Counts { certificates: certificates.len(), ..Counts::of(&snapshot) },
        audit_head,
    };
    Ok(Backup { header, snapshot, certificates })
}

/// The chain head of the trail in `dir`. The server rewrites `head.json` in place, so a read
/// can meet a half-written file: try a few times.
fn read_head(dir: &Path) -> Option<ChainHead> {
    (0..3).find_map(|_| crate::audit::persisted_head(dir))
}

// === the file ===

/// The bytes of `backup`: header, records, checksum.
///
/// # Errors
/// Only when a record does not serialize (a bug).
pub fn encode(backup: &Backup) -> Result<Vec<u8>, BackupError> {
    let Backup { header, snapshot, certificates } = backup;
    let StoreSnapshot { keys, versions, aliases, import_tokens } = snapshot;
    let mut out = Vec::new();
    push_line(&mut out, header)?;
    for key in keys {
        push_line(&mut out, &Line::Key(key.clone()))?;
    }
    for (key_id, version) in versions {
        push_line(
            &mut out,
            &Line::Version {
                key_id: key_id.clone(),
                record: version.clone(),
                sealed: BASE64.encode(&version.sealed_material),
            },
        )?;
    }
    for AliasRecord { name, key_id, created, updated } in aliases {
        push_line(
            &mut out,
            &Line::Alias {
                name: name.clone(),
                key_id: key_id.clone(),
                created: *created,
                updated: *updated,
            },
        )?;
    }
    for token in import_tokens {
        let ImportTokenRecord {
            token_id,
            key_id,
            wrapping_algorithm,
            wrapping_spec,
            sealed_wrapping_key,
            expires,
        } = token;
        push_line(
            &mut out,
            &Line::ImportToken {
                token_id: token_id.clone(),
                key_id: key_id.clone(),
                wrapping_algorithm: wrapping_algorithm.clone(),
                wrapping_spec: wrapping_spec.clone(),
                sealed: BASE64.encode(sealed_wrapping_key),
                expires: *expires,
            },
        )?;
    }
    for StoredCert { meta, chain } in certificates {
        let chain = chain.iter().map(|der| BASE64.encode(der)).collect();
        push_line(&mut out, &Line::Certificate { meta: meta.clone(), chain })?;
    }
    let checksum = hex::encode(Sha256::digest(&out));
    push_line(&mut out, &Trailer { sha256: checksum })?;
    Ok(out)
}

fn push_line<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), BackupError> {
    serde_json::to_writer(&mut *out, value)
        .map_err(|e| BackupError::Corrupt(format!("a record does not serialize: {e}")))?;
    out.push(b'\n');
    Ok(())
}

/// Reads a backup: the checksum, the header, every record, and their consistency (see
/// [`check_consistency`]). Opens nothing sealed.
///
/// # Errors
/// [`BackupError::Corrupt`] for a damaged or truncated file, [`BackupError::NewerFormat`],
/// [`BackupError::Inconsistent`].
pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
    let corrupt = |why: &str| BackupError::Corrupt(why.to_owned());
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return Err(corrupt(if bytes.is_empty() {
            "the file is empty"
        } else {
            "it does not end with its checksum line (truncated?)"
        }));
    };
    let trailer_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
    if trailer_start == 0 {
        return Err(corrupt("it has no header and records before its last line"));
    }
    let trailer: Trailer = serde_json::from_slice(&body[trailer_start..])
        .map_err(|_| corrupt("its last line is not the checksum line (truncated?)"))?;
    let computed = hex::encode(Sha256::digest(&bytes[..trailer_start]));
    if computed != trailer.sha256 {
        return Err(corrupt(
            "its SHA-256 checksum does not match: it changed after it was written",
        ));
    }
    let mut lines = bytes[..trailer_start - 1].split(|&b| b == b'\n');
    let header_line = lines.next().unwrap_or_default();
    let header = parse_header(header_line)?;
    let mut snapshot = StoreSnapshot::default();
    let mut certificates = Vec::new();
    for (index, line) in lines.enumerate() {
        let number = index + 2;
        let record: Line = serde_json::from_slice(line).map_err(|e| {
            BackupError::Corrupt(format!("line {number} is not a backup record: {e}"))
        })?;
        match record {
            Line::Key(key) => snapshot.keys.push(key),
            Line::Version { key_id, mut record, sealed } => {
                record.sealed_material = BASE64.decode(sealed).map_err(|_| {
                    BackupError::Corrupt(format!("line {number}: sealed material is not base64"))
                })?;
                snapshot.versions.push((key_id, record));
            }
            Line::Alias { name, key_id, created, updated } => {
                snapshot.aliases.push(AliasRecord { name, key_id, created, updated });
            }
            Line::ImportToken {
                token_id,
                key_id,
                wrapping_algorithm,
                wrapping_spec,
                sealed,
                expires,
            } => {
                let sealed_wrapping_key = BASE64.decode(sealed).map_err(|_| {
                    BackupError::Corrupt(format!(
                        "line {number}: sealed wrapping key is not base64"
                    ))
                })?;
                snapshot.import_tokens.push(ImportTokenRecord {
                    token_id,
                    key_id,
                    wrapping_algorithm,
                    wrapping_spec,
                    sealed_wrapping_key,
                    expires,
                });
            }
            Line::Certificate { meta, chain } => {
                let chain = chain
                    .into_iter()
                    .map(|der| BASE64.decode(der).map(CertificateDer::from))
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        BackupError::Corrupt(format!("line {number}: a certificate is not base64"))
                    })?;
                certificates.push(StoredCert { meta, chain });
            }
        }
    }
    let backup = Backup { header, snapshot, certificates };
    let counts = backup.counts();
    let header = &backup.header;
    if counts != header.counts {
        return Err(BackupError::Inconsistent(format!(
            "the header counts {:?} but the file holds {:?}",
            header.counts, counts
        )));
    }
    let mut problems = check_consistency(&backup.snapshot);
    let key_ids: BTreeSet<&str> = backup.snapshot.keys.iter().map(|k| k.id.as_str()).collect();
    let mut names = BTreeSet::new();
    for StoredCert { meta, .. } in &backup.certificates {
        if !names.insert(meta.name.as_str()) {
            problems.push(format!("certificate {} appears twice", meta.name));
        }
        if !key_ids.contains(meta.key_id.as_str()) {
            problems.push(format!(
                "certificate {} names key {}, which is not there",
                meta.name, meta.key_id
            ));
        }
    }
    if !problems.is_empty() {
        return Err(BackupError::Inconsistent(summary(&problems)));
    }
    Ok(backup)
}

fn parse_header(line: &[u8]) -> Result<Header, BackupError> {
    #[derive(Deserialize)]
    struct Probe {
        format: Option<String>,
        format_version: Option<u32>,
    }
    let not_a_backup = || BackupError::Corrupt("its first line is not a kagi backup header".into());
    let probe: Probe = serde_json::from_slice(line).map_err(|_| not_a_backup())?;
    if probe.format.as_deref() != Some(FORMAT) {
        return Err(not_a_backup());
    }
    match probe.format_version {
        Some(found) if found > FORMAT_VERSION => {
            return Err(BackupError::NewerFormat { found, supported: FORMAT_VERSION });
        }
        Some(1..) => {}
        _ => return Err(not_a_backup()),
    }
    serde_json::from_slice(line)
        .map_err(|e| BackupError::Corrupt(format!("the header does not parse: {e}")))
}

/// What is wrong with the records of `snapshot` as a keystore: duplicate ids, a version, alias
/// or import token of a key that is not there, a key whose current version is missing. Empty
/// when nothing is.
pub fn check_consistency(snapshot: &StoreSnapshot) -> Vec<String> {
    let StoreSnapshot { keys, versions, aliases, import_tokens } = snapshot;
    let mut problems = Vec::new();
    let mut key_ids = BTreeSet::new();
    for key in keys {
        if !key_ids.insert(key.id.as_str()) {
            problems.push(format!("key {} appears twice", key.id));
        }
        if uuid::Uuid::try_parse(&key.id).is_err() {
            problems.push(format!("key id {:?} is not a UUID", key.id));
        }
    }
    let mut version_ids = BTreeSet::new();
    for (key_id, version) in versions {
        if !key_ids.contains(key_id.as_str()) {
            problems
                .push(format!("version {} of key {key_id}, which is not there", version.version));
        }
        if !version_ids.insert((key_id.as_str(), version.version)) {
            problems.push(format!("version {} of key {key_id} appears twice", version.version));
        }
    }
    for key in keys {
        if key.current_version != 0
            && !version_ids.contains(&(key.id.as_str(), key.current_version))
        {
            problems.push(format!(
                "key {}: its current version {} is not there",
                key.id, key.current_version
            ));
        }
    }
    let mut alias_names = BTreeSet::new();
    for alias in aliases {
        if !alias_names.insert(alias.name.as_str()) {
            problems.push(format!("alias {} appears twice", alias.name));
        }
        if !key_ids.contains(alias.key_id.as_str()) {
            problems.push(format!(
                "alias {} names key {}, which is not there",
                alias.name, alias.key_id
            ));
        }
    }
    let mut token_ids = BTreeSet::new();
    for token in import_tokens {
        if !token_ids.insert(token.token_id.as_str()) {
            problems.push(format!("import token {} appears twice", token.token_id));
        }
        if !key_ids.contains(token.key_id.as_str()) {
            problems.push(format!(
                "import token {} is for key {}, which is not there",
                token.token_id, token.key_id
            ));
        }
    }
    problems
}

/// Reads a backup file (`-`: stdin) and decodes it.
///
/// # Errors
/// As [`decode`], or when the file cannot be read.
pub fn read(path: &Path) -> Result<Backup, BackupError> {
    let bytes = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map_err(|e| io(path, &e))?;
        bytes
    } else {
        fs::read(path).map_err(|e| io(path, &e))?
    };
    decode(&bytes)
}

/// Writes `bytes` to `path` so that the file is either absent, the old one, or all of the new
/// one: a temporary file beside it (mode 0600), synced, renamed over `path`, and the directory
/// synced.
///
/// # Errors
/// When any step fails; the temporary file is removed then.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| BackupError::Io {
        path: path.to_owned(),
        message: "not a file name".into(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(|e| io(&tmp, &e))?;
        file.write_all(bytes).map_err(|e| io(&tmp, &e))?;
        file.sync_all().map_err(|e| io(&tmp, &e))?;
        fs::rename(&tmp, path).map_err(|e| io(path, &e))?;
        // The rename is durable once the directory is.
        fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io(&dir, &e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn io(path: &Path, error: &std::io::Error) -> BackupError {
    BackupError::Io { path: path.to_owned(), message: error.to_string() }
}

// === checking sealed material ===

/// What [`check_sealed`] opened.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Sealed {
    /// Versions with material, each opened and parsed as its key's spec.
    pub versions: usize,
    /// Versions whose material was destroyed (nothing to open).
    pub destroyed: usize,
    /// Import tokens' wrapping keys opened.
    pub import_tokens: usize,
}

/// Proves `root` is the key `backup` was made under (its check value opens), and that every
/// sealed version and import token of the backup opens under it (and each version parses as
/// its key's spec). The material is dropped (zeroized) at once, never returned.
///
/// # Errors
/// [`BackupError::WrongRootKey`] when the check value does not open; [`BackupError::Unseal`]
/// naming the first version or token that does not.
///
/// # Security
/// Unseals every key's material, one at a time, in memory only.
pub fn check_sealed(
    backend: &dyn CryptoBackend,
    root: &RootKey,
    backup: &Backup,
) -> Result<Sealed, BackupError> {
    if !root.opens_check(backend, &backup.header.root_check) {
        return Err(BackupError::WrongRootKey(
            "the backup was made under another root key: this root key does not open its check \
             value (use the root key file, or the passphrase and salt, of the keystore it was \
             taken from)"
                .into(),
        ));
    }
    let specs: BTreeMap<&str, _> =
        backup.snapshot.keys.iter().map(|key| (key.id.as_str(), key.spec)).collect();
    let mut sealed = Sealed::default();
    for (key_id, version) in &backup.snapshot.versions {
        if !version.has_material() {
            sealed.destroyed += 1;
            continue;
        }
        let spec = specs.get(key_id.as_str()).copied().ok_or_else(|| {
            BackupError::Inconsistent(format!("version of key {key_id}, which is not there"))
        })?;
        let unsealable = || {
            BackupError::Unseal(format!(
                "version {} of key {key_id} does not open under the root key (damaged or \
                 tampered with)",
                version.version
            ))
        };
        let bytes = root
            .unseal(
                backend,
                &Keystore::material_aad(key_id, version.version),
                &version.sealed_material,
            )
            .map_err(|_| unsealable())?;
        crate::keystore::material_from_bytes(backend, spec, bytes).map_err(|_| unsealable())?;
        sealed.versions += 1;
    }
    for token in &backup.snapshot.import_tokens {
        root.unseal(
            backend,
            crate::keystore::import::token_aad(&token.token_id).as_bytes(),
            &token.sealed_wrapping_key,
        )
        .map_err(|_| {
            BackupError::Unseal(format!(
                "the wrapping key of import token {} does not open under the root key",
                token.token_id
            ))
        })?;
        sealed.import_tokens += 1;
    }
    Ok(sealed)
}

// === restoring ===

/// Restores `backup` into `store`, which must hold no key: checks the root key and every
/// sealed version first ([`check_sealed`]), audits the restore on `audit` (before it commits,
/// and its failure if the commit fails), then writes everything in one transaction. The
/// certificates are written by [`restore_certificates`].
///
/// # Errors
/// As [`check_sealed`]; [`BackupError::NotEmpty`] when the store holds keys (nothing is
/// written then); the audit or store failure.
pub async fn restore(
    backend: &dyn CryptoBackend,
    root: &RootKey,
    store: &dyn Store,
    audit: &dyn AuditSink,
    ctx: &OpContext,
    now: i64,
    backup: &Backup,
) -> Result<Sealed, BackupError> {
    let sealed = check_sealed(backend, root, backup)?;
    let present = store.keys().await?.len();
    if present > 0 {
        return Err(not_empty(present));
    }
    let event = |outcome, error_code| AuditEvent {
        time: now,
        request_id: ctx.request_id.clone(),
        principal: ctx.principal.clone(),
        source: ctx.source.clone(),
        operation: RESTORE_OPERATION.to_owned(),
        key_arn: None,
        key_material_id: None,
        encryption_context: BTreeMap::new(),
        outcome,
        error_code,
        notes: restore_notes(&backup.header),
    };
    // Audited before it commits, as every change is, within the sink's timeout.
    tokio::time::timeout(audit.timeout(), audit.record(&event(Outcome::Success, None)))
        .await
        .map_err(|_| crate::audit::AuditError("the audit trail did not answer in time".into()))??;
    let result = store.restore(copy_snapshot(&backup.snapshot)).await;
    if let Err(error) = result {
        // The failure line is best effort: the restore already failed and says why.
        let _ = audit.record(&event(Outcome::Failure, Some("KMSInternalException"))).await;
        return Err(match error {
            StoreError::AlreadyExists(what) => {
                BackupError::NotEmpty(format!("the destination is not empty ({what})"))
            }
            other => other.into(),
        });
    }
    Ok(sealed)
}

/// Writes the backup's certificates into `data_dir/certs` (replacing any of the same name).
///
/// # Errors
/// When a file cannot be written.
pub fn restore_certificates(data_dir: &Path, backup: &Backup) -> Result<usize, BackupError> {
    let store = CertStore::new(data_dir);
    for certificate in &backup.certificates {
        store.save(certificate).map_err(|e| BackupError::Certificates(e.to_string()))?;
    }
    Ok(backup.certificates.len())
}

fn not_empty(present: usize) -> BackupError {
    BackupError::NotEmpty(format!(
        "the destination keystore already holds {present} key(s): restore only into a new, empty \
         keystore"
    ))
}

/// What the restore's audit line says of the backup: ids and counts, nothing secret.
fn restore_notes(header: &Header) -> Vec<String> {
    let Counts { keys, versions, aliases, import_tokens, certificates } = header.counts;
    let mut notes = vec![
        format!("backup taken at {} by kagi {}", header.created, header.kagi_version),
        format!(
            "{keys} keys, {versions} versions, {aliases} aliases, {import_tokens} import tokens, \
             {certificates} certificates"
        ),
    ];
    if let Some(head) = &header.audit_head {
        notes.push(format!("source audit chain head: record {} {}", head.seq, head.hash));
    }
    notes
}

/// A copy of `snapshot` (the store takes its snapshot by value).
pub fn copy_snapshot(snapshot: &StoreSnapshot) -> StoreSnapshot {
    let StoreSnapshot { keys, versions, aliases, import_tokens } = snapshot;
    StoreSnapshot {
        keys: keys.clone(),
        versions: versions.clone(),
        aliases: aliases.clone(),
        import_tokens: import_tokens.clone(),
    }
}

/// A keystore over an in-memory copy of `backup`, with `root` (which should be the key it was
/// made under): the source side of [`prove_nothing_lost`] when the source is a backup file.
/// Audits nothing.
///
/// # Errors
/// When the in-memory store fails.
pub async fn keystore_of(
    backend: &'static dyn CryptoBackend,
    root: RootKey,
    clock: Arc<dyn Clock>,
    backup: &Backup,
) -> Result<Keystore, BackupError> {
    let store = SqliteStore::open(Path::new(":memory:"))?;
    store.restore(copy_snapshot(&backup.snapshot)).await?;
    let partition = Partition {
        region: backup.header.partition.region.clone(),
        account: backup.header.partition.account.clone(),
    };
    Ok(Keystore::with_store(backend, Arc::new(store), root, clock, Arc::new(NullSink), partition))
}

// === proving nothing was lost ===

/// What [`prove_nothing_lost`] checked.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Proof {
    /// The records, equal on both sides.
    pub counts: Counts,
    /// Versions with material that the destination's root key opened and that parse.
    pub unsealed: usize,
    /// Keys encrypted with by the source and decrypted by the destination (symmetric, RSA).
    pub encrypt_decrypt: usize,
    /// Keys that signed on the destination, verified by the source.
    pub sign_verify: usize,
    /// HMAC keys: MAC by the source, verified by the destination.
    pub mac: usize,
    /// Key agreement keys: the same shared secret on both sides.
    pub key_agreement: usize,
    /// Keys checked by their records and sealed material only (not Enabled, or no current
    /// material).
    pub records_only: usize,
}

/// Proves `destination` holds everything `source` does: the same keys (metadata, policies,
/// grants, tags), versions (sealed material byte for byte), aliases and import tokens; every
/// version with material opens under the destination's root key; and every Enabled key works
/// across the two: encrypted by the source and decrypted by the destination (symmetric and RSA
/// keys), signed by the destination and verified by the source, MAC'd by the source and verified
/// by the destination, or the same ECDH secret on both. The source must not change meanwhile.
///
/// The operations are audited by each keystore as `ctx`'s.
///
/// # Errors
/// [`BackupError::Lost`] listing every difference; a store failure.
pub async fn prove_nothing_lost(
    source: &Keystore,
    destination: &Keystore,
    ctx: &OpContext,
) -> Result<Proof, BackupError> {
    let from = source.store().snapshot().await?;
    let to = destination.store().snapshot().await?;
    let mut differences = compare(&from, &to);
    let mut proof = Proof { counts: Counts::of(&to), ..Proof::default() };
    let backend = destination.backend();
    let specs: BTreeMap<&str, _> = to.keys.iter().map(|key| (key.id.as_str(), key.spec)).collect();
    for (key_id, version) in &to.versions {
        if !version.has_material() {
            continue;
        }
        let Some(&spec) = specs.get(key_id.as_str()) else { continue };
        let opened = destination
            .root()
            .unseal(
                backend,
                &Keystore::material_aad(key_id, version.version),
                &version.sealed_material,
            )
            .and_then(|bytes| crate::keystore::material_from_bytes(backend, spec, bytes));
        match opened {
            Ok(_) => proof.unsealed += 1,
            Err(_) => differences.push(format!(
                "version {} of key {key_id} does not open under the destination's root key",
                version.version
            )),
        }
    }
    let current_material: BTreeSet<(&str, u32)> = to
        .versions
        .iter()
        .filter(|(_, version)| version.has_material())
        .map(|(key_id, version)| (key_id.as_str(), version.version))
        .collect();
    for key in &to.keys {
        let usable = key.state == KeyState::Enabled
            && current_material.contains(&(key.id.as_str(), key.current_version));
        if !usable {
            proof.records_only += 1;
            continue;
        }
        match round_trip(source, destination, ctx, key).await {
            Ok(RoundTrip::EncryptDecrypt) => proof.encrypt_decrypt += 1,
            Ok(RoundTrip::SignVerify) => proof.sign_verify += 1,
            Ok(RoundTrip::Mac) => proof.mac += 1,
            Ok(RoundTrip::KeyAgreement) => proof.key_agreement += 1,
            Err(difference) => differences.push(format!("key {}: {difference}", key.id)),
        }
    }
    if differences.is_empty() { Ok(proof) } else { Err(BackupError::Lost(differences)) }
}

/// Every difference between two snapshots' records.
fn compare(from: &StoreSnapshot, to: &StoreSnapshot) -> Vec<String> {
    let mut differences = Vec::new();
    differ(
        &mut differences,
        "key",
        from.keys.iter().map(|key| (key.id.clone(), key)).collect(),
        to.keys.iter().map(|key| (key.id.clone(), key)).collect(),
    );
    differ(
        &mut differences,
        "version",
        from.versions.iter().map(|(id, v)| (format!("{} of key {id}", v.version), v)).collect(),
        to.versions.iter().map(|(id, v)| (format!("{} of key {id}", v.version), v)).collect(),
    );
    differ(
        &mut differences,
        "alias",
        from.aliases.iter().map(|alias| (alias.name.clone(), alias)).collect(),
        to.aliases.iter().map(|alias| (alias.name.clone(), alias)).collect(),
    );
    differ(
        &mut differences,
        "import token",
        from.import_tokens.iter().map(|token| (token.token_id.clone(), token)).collect(),
        to.import_tokens.iter().map(|token| (token.token_id.clone(), token)).collect(),
    );
    differences
}

fn differ<T: PartialEq>(
    differences: &mut Vec<String>,
    what: &str,
    from: BTreeMap<String, &T>,
    to: BTreeMap<String, &T>,
) {
    for (id, record) in &from {
        match to.get(id) {
            None => differences.push(format!("{what} {id} is missing from the destination")),
            Some(other) if other != record => {
                differences.push(format!("{what} {id} differs in the destination"));
            }
            Some(_) => {}
        }
    }
    for id in to.keys().filter(|id| !from.contains_key(*id)) {
        differences.push(format!("{what} {id} is in the destination only"));
    }
}

/// Which operation proved a key.
enum RoundTrip {
    EncryptDecrypt,
    SignVerify,
    Mac,
    KeyAgreement,
}

/// One operation of `key` across the two keystores; the error says what failed.
async fn round_trip(
    source: &Keystore,
    destination: &Keystore,
    ctx: &OpContext,
    key: &KeyRecord,
) -> Result<RoundTrip, String> {
    let backend = destination.backend();
    let mut message = [0u8; 32];
    backend.fill_random(&mut message).map_err(|e| e.to_string())?;
    let id = key.id.as_str();
    match key.usage {
        KeyUsage::EncryptDecrypt => {
            let algorithm = *EncryptionAlgorithm::for_key(key.spec, key.usage)
                .last()
                .ok_or("no encryption algorithm fits the key")?;
            let context: EncryptionContext = if algorithm == EncryptionAlgorithm::SymmetricDefault {
                [("kagi:proof".to_owned(), id.to_owned())].into()
            } else {
                EncryptionContext::new()
            };
            let encrypted = source
                .encrypt(ctx, id, &message, &context, algorithm)
                .await
                .map_err(|e| format!("the source does not encrypt: {e}"))?;
            let decrypted = destination
                .decrypt(ctx, &encrypted.ciphertext_blob, &context, Some(id), Some(algorithm))
                .await
                .map_err(|e| {
                    format!("the destination does not decrypt the source's ciphertext: {e}")
                })?;
            if !bool::from(decrypted.plaintext.expose_secret().ct_eq(&message)) {
                return Err("the destination decrypts to other bytes".into());
            }
            Ok(RoundTrip::EncryptDecrypt)
        }
        KeyUsage::SignVerify => {
            let algorithm = *key
                .spec
                .key_pair_spec()
                .and_then(|pair| pair.signing_algorithms().first())
                .ok_or("no signing algorithm fits the key")?;
            let (signature, _) = destination
                .sign(ctx, id, &message, MessageType::Raw, algorithm)
                .await
                .map_err(|e| format!("the destination does not sign: {e}"))?;
            source
                .verify(ctx, id, &message, MessageType::Raw, algorithm, &signature)
                .await
                .map_err(|e| {
                    format!("the source does not verify the destination's signature: {e}")
                })?;
            Ok(RoundTrip::SignVerify)
        }
        KeyUsage::GenerateVerifyMac => {
            let algorithm = key.spec.mac_algorithm().ok_or("no MAC algorithm fits the key")?;
            let (mac, _) = source
                .generate_mac(ctx, id, &message, algorithm)
                .await
                .map_err(|e| format!("the source does not MAC: {e}"))?;
            destination
                .verify_mac(ctx, id, &message, algorithm, &mac)
                .await
                .map_err(|e| format!("the destination does not verify the source's MAC: {e}"))?;
            Ok(RoundTrip::Mac)
        }
        KeyUsage::KeyAgreement => {
            let public = source
                .get_public_key(ctx, id)
                .await
                .map_err(|e| format!("the source has no public key: {e}"))?
                .public_key;
            let (theirs, _, _) = source
                .derive_shared_secret(ctx, id, &public)
                .await
                .map_err(|e| format!("the source does not agree: {e}"))?;
            let (ours, _, _) = destination
                .derive_shared_secret(ctx, id, &public)
                .await
                .map_err(|e| format!("the destination does not agree: {e}"))?;
            if !bool::from(ours.expose_secret().ct_eq(theirs.expose_secret())) {
                return Err("the two sides derive different secrets".into());
            }
            Ok(RoundTrip::KeyAgreement)
        }
    }
}

// === serde helpers ===

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

mod base64_option {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&BASE64.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| BASE64.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
