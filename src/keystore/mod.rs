//! The keystore: kagi's KMS. Keys, versions, aliases, the lifecycle, rotation, import, and the
//! operations (CreateKey … DeriveSharedSecret), with AWS KMS semantics and error kinds.
//!
//! It does no HTTP, TLS or config-file work; `store` is its only I/O.
//! Every operation takes an [`OpContext`] and goes: resolve key → check state and usage → act
//! → audit; a change is audited before it is committed (`trail.rs`). An operation whose audit
//! event cannot be written fails and changes nothing.
//!
//! # Choosing an operation family
//!
//! | family | operations | file |
//! |---|---|---|
//! | keys, aliases, tags, deletion | `create_key` … `list_resource_tags` | this file |
//! | cryptography | `encrypt` … `derive_shared_secret` | `operations.rs` |
//! | rotation and the sweeper | `enable_key_rotation` … `sweep` | `rotation.rs` |
//! | imported material | `get_parameters_for_import` … `delete_imported_key_material` | `import.rs` |
//! | grants | `create_grant` … `revoke_grant`, `check_grant_tokens` | `grants.rs` |
//!
//! # Caching
//!
//! Unsealed material, key records and alias targets are cached in memory and dropped on every
//! change this process makes. On SQLite one process owns the store, so the cache is never
//! stale; nodes sharing a PostgreSQL store also drop what the store's change feed says another
//! node changed, within one poll interval (`cluster.rs`).

mod access;
pub mod ciphertext;
pub mod clock;
mod cluster;
mod error;
pub mod grants;
pub mod import;
mod inventory;
pub mod key;
pub mod lifecycle;
pub mod observe;
pub mod operations;
mod root;
mod root_rotation;
pub mod rotation;
pub mod shares;
pub mod store;
mod trail;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use access::AccessTarget;
pub use ciphertext::EncryptionContext;
pub use error::{Error, ErrorKind};
pub use grants::{CreatedGrant, GrantEntry, GrantRef, NewGrant, Retirer};
pub use import::{ImportParameters, ImportRequest, ImportType, WrappingAlgorithm};
pub use inventory::{InventoryKey, InventoryVersion};
pub use key::{
    GrantConstraints, GrantOperation, GrantRecord, KeySpec, KeyState, KeyUsage, Origin, UnixSeconds,
};
pub use operations::{
    DataKey, DataKeyPair, DataKeySize, DecryptOutput, EncryptOutput, EncryptionAlgorithm,
    ReEncryptOutput,
};
pub use root::{NextRoot, NextRootSource, NextRootWire, RootKey, RootKeySource};
pub use root_rotation::RootRotation;
pub use rotation::{IncludeKeyMaterial, RotationEntry, RotationStatus, SweepReport};
pub use shares::{RootShare, ShareError, SharePolicy, Unsealer};

use crate::audit::AuditSink;
use crate::crypto::{AesKey, CryptoBackend, PrivateKey, PublicKey, SecretBytes};
use clock::Clock;
use key::{AliasRecord, KeyRecord, RotationSchedule, VersionRecord, VersionState};
use lifecycle::OperationClass;
use store::{AliasWrite, KeyUpdate, Store};
use trail::Trail;

/// This process's name as a lease holder: its pid and a random suffix (pids repeat across
/// machines and restarts).
fn node_id(backend: &dyn CryptoBackend) -> String {
    let mut random = [0u8; 8];
    // A failed draw leaves zeros: the pid alone still tells nodes apart on one machine.
    let _ = backend.fill_random(&mut random);
    format!("{}-{}", std::process::id(), hex::encode(random))
}

/// Largest description, in characters.
pub const MAX_DESCRIPTION: usize = 8192;
/// Most aliases per key.
pub const MAX_ALIASES_PER_KEY: usize = 50;
/// Default and bounds of the deletion waiting period, in days.
pub const PENDING_WINDOW_DAYS: (u32, u32, u32) = (7, 30, 30);
const DAY: i64 = 86_400;

/// Who calls, from where, and the request id: carried by every operation into the audit trail.
#[derive(Clone, Debug)]
pub struct OpContext {
    /// The principal's name.
    pub principal: String,
    /// Where the call came from (an address, or [`OpContext::CLI`]).
    pub source: String,
    /// A unique id for the request.
    pub request_id: String,
}

impl OpContext {
    /// The source of a call made by the command line on this machine (the operator).
    pub const CLI: &'static str = "cli";
}

/// Where the keystore's ARNs live.
#[derive(Clone, Debug)]
pub struct Partition {
    /// The region in ARNs (`us-east-1`).
    pub region: String,
    /// The 12-digit account id in ARNs.
    pub account: String,
}

impl Default for Partition {
    fn default() -> Self {
        Self { region: "us-east-1".into(), account: "111122223333".into() }
    }
}

/// The keystore.
#[derive(Debug)]
pub struct Keystore {
    backend: &'static dyn CryptoBackend,
    store: Arc<dyn Store>,
    /// The root key; while a rotation re-seals, also the one it replaces.
    root: RwLock<Arc<root::Keyring>>,
    /// Held by the one root key rotation running in this process.
    root_rotation: tokio::sync::Mutex<()>,
    /// A root key rotation is staged in this process's data directory, to be finished here.
    root_rotation_here: std::sync::atomic::AtomicBool,
    clock: Arc<dyn Clock>,
    audit: Arc<dyn AuditSink>,
    partition: Partition,
    cache: RwLock<HashMap<String, Arc<LoadedKey>>>,
    /// Alias name → key id, as last read; emptied by any alias change this node makes or
    /// reads from the change feed.
    aliases: RwLock<HashMap<String, String>>,
    /// This process, as the holder of leases on background work.
    node_id: String,
    /// Bumped by every invalidation: a load that started before one must not fill the cache,
    /// or a key disabled meanwhile would keep working from a stale record.
    generation: AtomicU64,
    /// Serializes this process's changes to keys, so they do not spin on compare-and-swap
    /// conflicts among themselves; the store's compare-and-swap still guards other processes.
    write_lock: tokio::sync::Mutex<()>,
    /// Who hears of seals and audited events (metrics, notifications), once the server sets it.
    observer: std::sync::OnceLock<Arc<dyn observe::KeyObserver>>,
    /// The ciphertext blob version Encrypt writes ([`ciphertext::BLOB_VERSION`]; tests of the
    /// other version change it).
    blob_format: u8,
}

/// A key as cached: its record and its unsealed versions.
#[derive(Debug)]
pub(crate) struct LoadedKey {
    pub(crate) record: KeyRecord,
    /// The key id's UUID bytes, as the ciphertext blob carries them.
    pub(crate) uuid: [u8; 16],
    pub(crate) arn: String,
    pub(crate) versions: BTreeMap<u32, LoadedVersion>,
}

/// One version with its material unsealed (if it has any).
#[derive(Debug)]
pub(crate) struct LoadedVersion {
    pub(crate) record: VersionRecord,
    pub(crate) material: Option<Material>,
}

/// Unsealed key material.
///
/// # Security
/// Each variant zeroizes on drop and prints no key bytes.
#[derive(Debug)]
pub(crate) enum Material {
    Aes(AesKey),
    Hmac(SecretBytes),
    Pair(KeyPair),
}

/// An asymmetric version: the private key and its public half, both parsed once when the
/// version is unsealed (verification and OAEP encryption need no per-call parsing).
#[derive(Debug)]
pub(crate) struct KeyPair {
    pub(crate) private: Box<dyn PrivateKey>,
    pub(crate) public: Box<dyn PublicKey>,
}

/// Metadata of a key, as DescribeKey returns it.
#[derive(Clone, Debug)]
pub struct KeyMetadata {
    /// The persisted record.
    pub record: KeyRecord,
    /// The key ARN.
    pub arn: String,
    /// The account id.
    pub account: String,
    /// The current version's material id.
    pub current_material_id: Option<String>,
    /// For imported material: when the current material expires.
    pub valid_to: Option<UnixSeconds>,
}

/// A page of a list.
#[derive(Clone, Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts, when there is one.
    pub next_marker: Option<String>,
}

/// An alias, as ListAliases returns it.
#[derive(Clone, Debug)]
pub struct AliasEntry {
    /// `alias/…`.
    pub name: String,
    /// The alias ARN.
    pub arn: String,
    /// The key id it names.
    pub target_key_id: String,
    /// When it was created.
    pub created: UnixSeconds,
    /// When it was last changed.
    pub updated: UnixSeconds,
}

/// What CreateKey takes.
#[derive(Clone, Debug)]
pub struct CreateKeyRequest {
    /// The spec (default SYMMETRIC_DEFAULT).
    pub spec: KeySpec,
    /// The usage (default: the spec's first).
    pub usage: Option<KeyUsage>,
    /// Generated or imported material.
    pub origin: Origin,
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// The key policy (none: the default policy).
    pub policy: Option<String>,
}

impl Default for CreateKeyRequest {
    fn default() -> Self {
        Self {
            spec: KeySpec::SymmetricDefault,
            usage: None,
            origin: Origin::AwsKms,
            description: String::new(),
            tags: BTreeMap::new(),
            policy: None,
        }
    }
}

/// What ScheduleKeyDeletion answers.
#[derive(Clone, Debug)]
pub struct DeletionSchedule {
    /// The key ARN.
    pub key_arn: String,
    /// When the key will be destroyed.
    pub deletion_date: UnixSeconds,
    /// The waiting period in days.
    pub pending_window_days: u32,
}

impl Keystore {
    /// Opens the keystore in `data_dir` (made by [`Keystore::init`]).
    ///
    /// # Errors
    /// When the directory holds no keystore, the root key is wrong, or the database cannot be
    /// opened or is from a newer kagi.
    pub fn open(
        backend: &'static dyn CryptoBackend,
        data_dir: &Path,
        root_source: &RootKeySource,
        clock: Arc<dyn Clock>,
        audit: Arc<dyn AuditSink>,
        partition: Partition,
    ) -> Result<Self, Error> {
        let root = RootKey::load(backend, data_dir, root_source)?;
        Self::open_with_root(backend, data_dir, root, clock, audit, partition)
    }

    /// Opens the keystore in `data_dir` with its root key already loaded and checked (rebuilt
    /// from shares by [`RootKey::from_shares`], say).
    ///
    /// # Errors
    /// When the database cannot be opened or is from a newer kagi.
    pub fn open_with_root(
        backend: &'static dyn CryptoBackend,
        data_dir: &Path,
        root: RootKey,
        clock: Arc<dyn Clock>,
        audit: Arc<dyn AuditSink>,
        partition: Partition,
    ) -> Result<Self, Error> {
        let store = store::SqliteStore::open(&data_dir.join("keystore.db"))?;
        Ok(Self::with_store(backend, Arc::new(store), root, clock, audit, partition))
    }

    /// Opens the keystore of `data_dir` on `store` (SQLite or a PostgreSQL database shared
    /// with other nodes), proving that the root key is the one the store's material is sealed
    /// under: the first node records its root key's check value in the store, and every node
    /// after it must open that value.
    ///
    /// # Errors
    /// As [`Keystore::open`], and when the store's check value is another root key's.
    pub async fn open_with_store(
        backend: &'static dyn CryptoBackend,
        data_dir: &Path,
        root: RootKey,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        audit: Arc<dyn AuditSink>,
        partition: Partition,
    ) -> Result<Self, Error> {
        let keystore = Self::with_store(backend, store, root, clock, audit, partition);
        keystore.reconcile_root(data_dir).await?;
        Ok(keystore)
    }

    /// Creates a new keystore in `data_dir`: the root key (or its salt), its check value and
    /// the database.
    ///
    /// # Errors
    /// When `data_dir` already holds a keystore or cannot be written.
    pub fn init(
        backend: &'static dyn CryptoBackend,
        data_dir: &Path,
        root_source: &RootKeySource,
    ) -> Result<(), Error> {
        RootKey::create(backend, data_dir, root_source)?;
        store::SqliteStore::open(&data_dir.join("keystore.db"))?;
        Ok(())
    }

    /// Creates a new keystore in `data_dir` whose root key is split as `policy` says; returns
    /// the shares (see [`RootKey::create_split`]).
    ///
    /// # Security
    /// The shares are the only way to the root key: hand each to its holder once.
    ///
    /// # Errors
    /// When `data_dir` already holds a keystore or cannot be written.
    pub fn init_split(
        backend: &'static dyn CryptoBackend,
        data_dir: &Path,
        policy: SharePolicy,
    ) -> Result<Vec<RootShare>, Error> {
        let (_root, shares) = RootKey::create_split(backend, data_dir, policy)?;
        store::SqliteStore::open(&data_dir.join("keystore.db"))?;
        Ok(shares)
    }

    /// A keystore over any store (PostgreSQL later, in-memory SQLite in tests).
    pub fn with_store(
        backend: &'static dyn CryptoBackend,
        store: Arc<dyn Store>,
        root: RootKey,
        clock: Arc<dyn Clock>,
        audit: Arc<dyn AuditSink>,
        partition: Partition,
    ) -> Self {
        Self {
            backend,
            store,
            root: RwLock::new(Arc::new(root::Keyring { current: Arc::new(root), previous: None })),
            root_rotation: tokio::sync::Mutex::new(()),
            root_rotation_here: std::sync::atomic::AtomicBool::new(false),
            clock,
            audit,
            partition,
            cache: RwLock::new(HashMap::new()),
            aliases: RwLock::new(HashMap::new()),
            node_id: node_id(backend),
            generation: AtomicU64::new(0),
            write_lock: tokio::sync::Mutex::new(()),
            observer: std::sync::OnceLock::new(),
            blob_format: ciphertext::BLOB_VERSION,
        }
    }

    /// Sets the observer told of seals and audited events; a keystore has at most one (the
    /// server's), so a second call is ignored and answers false.
    pub fn set_observer(&self, observer: Arc<dyn observe::KeyObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    pub(crate) fn observer(&self) -> Option<&dyn observe::KeyObserver> {
        self.observer.get().map(|observer| &**observer)
    }

    /// The crypto backend in use.
    pub fn backend(&self) -> &'static dyn CryptoBackend {
        self.backend
    }

    /// The current time of the keystore's clock.
    pub fn now(&self) -> UnixSeconds {
        self.clock.now()
    }

    /// The ARN of key `key_id`.
    pub fn key_arn(&self, key_id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{key_id}", self.partition.region, self.partition.account)
    }

    fn alias_arn(&self, name: &str) -> String {
        format!("arn:aws:kms:{}:{}:{name}", self.partition.region, self.partition.account)
    }

    // === keys ===

    /// CreateKey.
    ///
    /// # Errors
    /// ValidationException for a usage the spec does not allow or an over-long description;
    /// TagException for bad tags.
    pub async fn create_key(
        &self,
        ctx: &OpContext,
        request: CreateKeyRequest,
    ) -> Result<KeyMetadata, Error> {
        self.create_key_noted(ctx, request, Vec::new()).await
    }

    /// [`Keystore::create_key`] whose audit line carries `notes` (the parts of its policy kagi
    /// does not evaluate), which the caller never sees.
    ///
    /// # Errors
    /// As [`Keystore::create_key`].
    pub async fn create_key_noted(
        &self,
        ctx: &OpContext,
        request: CreateKeyRequest,
        notes: Vec<String>,
    ) -> Result<KeyMetadata, Error> {
        let trail = self.trail(ctx, "CreateKey").with_notes(notes);
        let outcome = async {
            let (record, versions) = self.new_key(ctx, request)?;
            let metadata = self.metadata_of(&record, &versions);
            trail
                .commit(&metadata.arn, metadata.current_material_id.as_deref(), || async {
                    Ok(self.store.insert_key(record, versions).await?)
                })
                .await?;
            Ok(metadata)
        }
        .await;
        trail.finish_key(outcome, |m| &m.arn).await
    }

    /// The record and first versions of a new key.
    fn new_key(
        &self,
        ctx: &OpContext,
        request: CreateKeyRequest,
    ) -> Result<(KeyRecord, Vec<VersionRecord>), Error> {
        let CreateKeyRequest { spec, usage, origin, description, tags, policy } = request;
        let usage = usage.unwrap_or(spec.usages()[0]);
        if !spec.usages().contains(&usage) {
            return Err(Error::validation(format!(
                "KeyUsage {} is not compatible with KeySpec {spec}",
                usage.kms_name()
            )));
        }
        check_description(&description)?;
        check_tags(&tags)?;
        let now = self.now();
        let id = self.new_uuid()?;
        let policy = match policy {
            Some(policy) => policy,
            None => default_policy(&self.partition, &ctx.principal),
        };
        let mut record = KeyRecord {
            id: id.clone(),
            revision: 1,
            created: now,
            description,
            spec,
            usage,
            origin,
            state: KeyState::PendingImport,
            deletion_date: None,
            pending_window_days: None,
            rotation: None,
            on_demand_rotations: 0,
            tags,
            policy,
            current_version: 0,
            grants: Vec::new(),
        };
        let mut versions = Vec::new();
        if origin == Origin::AwsKms {
            let material = self.generate_material(spec)?;
            versions.push(self.seal_version(
                &id,
                1,
                now,
                VersionState::Current,
                &material,
                None,
            )?);
            record.state = KeyState::Enabled;
            record.current_version = 1;
        }
        Ok((record, versions))
    }

    /// DescribeKey (any key reference form; every state but deleted).
    ///
    /// # Errors
    /// NotFoundException for unknown and deleted keys.
    pub async fn describe_key(&self, ctx: &OpContext, key_ref: &str) -> Result<KeyMetadata, Error> {
        let outcome = async {
            let key = self.resolve(key_ref, true).await?;
            lifecycle::check(OperationClass::Read, &key.record, &key.arn)?;
            self.metadata(&key.record).await
        }
        .await;
        self.trail(ctx, "DescribeKey").finish_key(outcome, |m| &m.arn).await
    }

    /// ListKeys: every key not yet deleted, by id, paginated.
    ///
    /// # Errors
    /// InvalidMarkerException for a marker kagi did not issue.
    pub async fn list_keys(
        &self,
        ctx: &OpContext,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> Result<Page<(String, String)>, Error> {
        let outcome = async {
            let keys = self.store.keys().await?;
            let entries: Vec<(String, (String, String))> = keys
                .into_iter()
                .filter(|key| key.state != KeyState::Deleted)
                .map(|key| {
                    let arn = self.key_arn(&key.id);
                    (key.id.clone(), (key.id, arn))
                })
                .collect();
            paginate(entries, limit, marker, 1000, 100)
        }
        .await;
        self.trail(ctx, "ListKeys").finish(outcome, |_| (None, None), None).await
    }

    /// EnableKey.
    ///
    /// # Errors
    /// As the state matrix says.
    pub async fn enable_key(&self, ctx: &OpContext, key_ref: &str) -> Result<(), Error> {
        self.set_enabled(ctx, key_ref, true).await
    }

    /// DisableKey.
    ///
    /// # Errors
    /// As the state matrix says.
    pub async fn disable_key(&self, ctx: &OpContext, key_ref: &str) -> Result<(), Error> {
        self.set_enabled(ctx, key_ref, false).await
    }

    async fn set_enabled(&self, ctx: &OpContext, key_ref: &str, enable: bool) -> Result<(), Error> {
        let trail = self.trail(ctx, if enable { "EnableKey" } else { "DisableKey" });
        let outcome = self
            .update(&trail, key_ref, false, OperationClass::EnableDisable, |key, _| {
                key.state = if enable { KeyState::Enabled } else { KeyState::Disabled };
                Ok(Vec::new())
            })
            .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// UpdateKeyDescription.
    ///
    /// # Errors
    /// ValidationException for a description over 8192 characters.
    pub async fn update_key_description(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        description: &str,
    ) -> Result<(), Error> {
        let trail = self.trail(ctx, "UpdateKeyDescription");
        let outcome = async {
            check_description(description)?;
            self.update(&trail, key_ref, false, OperationClass::Manage, |key, _| {
                key.description = description.to_owned();
                Ok(Vec::new())
            })
            .await
        }
        .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// ScheduleKeyDeletion: the key becomes PendingDeletion for 7–30 days (default 30).
    ///
    /// # Errors
    /// ValidationException for a window outside 7–30 days; KMSInvalidStateException when
    /// already pending deletion.
    pub async fn schedule_key_deletion(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        pending_window_days: Option<u32>,
    ) -> Result<DeletionSchedule, Error> {
        let (min, max, default) = PENDING_WINDOW_DAYS;
        let trail = self.trail(ctx, "ScheduleKeyDeletion");
        let outcome = async {
            let days = pending_window_days.unwrap_or(default);
            if !(min..=max).contains(&days) {
                return Err(Error::validation(format!(
                    "PendingWindowInDays must be between {min} and {max}"
                )));
            }
            let now = self.now();
            let arn = self
                .update(&trail, key_ref, false, OperationClass::ScheduleDeletion, |key, _| {
                    key.state = KeyState::PendingDeletion;
                    key.deletion_date = Some(now + i64::from(days) * DAY);
                    key.pending_window_days = Some(days);
                    Ok(Vec::new())
                })
                .await?;
            Ok(DeletionSchedule {
                key_arn: arn,
                deletion_date: now + i64::from(days) * DAY,
                pending_window_days: days,
            })
        }
        .await;
        trail.finish_key(outcome, |s| &s.key_arn).await
    }

    /// CancelKeyDeletion: the key returns to Disabled.
    ///
    /// # Errors
    /// KMSInvalidStateException when the key is not pending deletion.
    pub async fn cancel_key_deletion(
        &self,
        ctx: &OpContext,
        key_ref: &str,
    ) -> Result<String, Error> {
        let trail = self.trail(ctx, "CancelKeyDeletion");
        let outcome = self
            .update(&trail, key_ref, false, OperationClass::CancelDeletion, |key, _| {
                key.state = lifecycle::AFTER_CANCEL;
                key.deletion_date = None;
                key.pending_window_days = None;
                Ok(Vec::new())
            })
            .await;
        trail.finish_key(outcome, |arn| arn).await
    }

    // === aliases ===

    /// CreateAlias.
    ///
    /// # Errors
    /// InvalidAliasNameException, AlreadyExistsException, LimitExceededException (50 per key),
    /// KMSInvalidStateException for a key pending deletion.
    pub async fn create_alias(
        &self,
        ctx: &OpContext,
        name: &str,
        target: &str,
    ) -> Result<(), Error> {
        let trail = self.trail(ctx, "CreateAlias");
        let outcome = async {
            check_alias_name(name)?;
            let key = self.resolve(target, false).await?;
            lifecycle::check(OperationClass::Manage, &key.record, &key.arn)?;
            let already_exists = || {
                Error::new(
                    ErrorKind::AlreadyExists,
                    format!("An alias with the name {} already exists", self.alias_arn(name)),
                )
            };
            // Checked before the audit line too, so a taken name is one failure line.
            if self.store.alias(name).await?.is_some() {
                return Err(already_exists());
            }
            let count =
                self.store.aliases().await?.iter().filter(|a| a.key_id == key.record.id).count();
            if count >= MAX_ALIASES_PER_KEY {
                return Err(Error::new(
                    ErrorKind::LimitExceeded,
                    format!("{} already has {MAX_ALIASES_PER_KEY} aliases", key.arn),
                ));
            }
            let now = self.now();
            let alias = AliasRecord {
                name: name.to_owned(),
                key_id: key.record.id.clone(),
                created: now,
                updated: now,
            };
            trail
                .commit(&key.arn, None, || async {
                    self.store.put_alias(alias, AliasWrite::Create).await.map_err(|error| {
                        match error {
                            store::StoreError::AlreadyExists(_) => already_exists(),
                            other => other.into(),
                        }
                    })
                })
                .await?;
            Ok(key.arn.clone())
        }
        .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// UpdateAlias: points an existing alias at another key of the same type and usage.
    ///
    /// # Errors
    /// NotFoundException for an unknown alias; KMSInvalidStateException when the new target is
    /// pending deletion; ValidationException when the keys differ in type or usage.
    pub async fn update_alias(
        &self,
        ctx: &OpContext,
        name: &str,
        target: &str,
    ) -> Result<(), Error> {
        let trail = self.trail(ctx, "UpdateAlias");
        let outcome = async {
            check_alias_name(name)?;
            let alias = self
                .store
                .alias(name)
                .await?
                .ok_or_else(|| Error::not_found(format!("Alias {}", self.alias_arn(name))))?;
            let key = self.resolve(target, false).await?;
            lifecycle::check(OperationClass::Manage, &key.record, &key.arn)?;
            if let Some(old) = self.store.key(&alias.key_id).await? {
                let same_kind = (old.spec == KeySpec::SymmetricDefault)
                    == (key.record.spec == KeySpec::SymmetricDefault)
                    && old.usage == key.record.usage;
                if !same_kind {
                    return Err(Error::validation(
                        "the alias's current and new keys must have the same key type and usage",
                    ));
                }
            }
            let updated =
                AliasRecord { key_id: key.record.id.clone(), updated: self.now(), ..alias };
            let committed = trail
                .commit(&key.arn, None, || async {
                    Ok(self.store.put_alias(updated, AliasWrite::Update).await?)
                })
                .await;
            // Even a failed commit may have landed (a timeout): forget what was read.
            self.invalidate_aliases();
            committed?;
            Ok(key.arn.clone())
        }
        .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// DeleteAlias (allowed whatever the key's state).
    ///
    /// # Errors
    /// NotFoundException for an unknown alias.
    pub async fn delete_alias(&self, ctx: &OpContext, name: &str) -> Result<(), Error> {
        let trail = self.trail(ctx, "DeleteAlias");
        let outcome = async {
            check_alias_name(name)?;
            let alias = self
                .store
                .alias(name)
                .await?
                .ok_or_else(|| Error::not_found(format!("Alias {}", self.alias_arn(name))))?;
            let arn = self.key_arn(&alias.key_id);
            let committed = trail
                .commit(&arn, None, || async { Ok(self.store.delete_alias(name).await?) })
                .await;
            self.invalidate_aliases();
            committed?;
            Ok(arn)
        }
        .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// ListAliases, all or those of one key, paginated by name.
    ///
    /// # Errors
    /// NotFoundException for an unknown key; InvalidMarkerException.
    pub async fn list_aliases(
        &self,
        ctx: &OpContext,
        key_ref: Option<&str>,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> Result<Page<AliasEntry>, Error> {
        let outcome = async {
            let key_id = match key_ref {
                Some(key_ref) => Some(self.resolve(key_ref, false).await?.record.id.clone()),
                None => None,
            };
            let entries: Vec<(String, AliasEntry)> = self
                .store
                .aliases()
                .await?
                .into_iter()
                .filter(|alias| key_id.as_ref().is_none_or(|id| *id == alias.key_id))
                .map(|alias| {
                    let entry = AliasEntry {
                        arn: self.alias_arn(&alias.name),
                        name: alias.name.clone(),
                        target_key_id: alias.key_id,
                        created: alias.created,
                        updated: alias.updated,
                    };
                    (alias.name, entry)
                })
                .collect();
            paginate(entries, limit, marker, 100, 50)
        }
        .await;
        self.trail(ctx, "ListAliases").finish(outcome, |_| (None, None), None).await
    }

    // === tags ===

    /// TagResource: adds or replaces tags.
    ///
    /// # Errors
    /// TagException for keys of 1–128 or values of 0–256 characters out of bounds, or more than
    /// 50 tags.
    pub async fn tag_resource(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let trail = self.trail(ctx, "TagResource");
        let outcome = async {
            check_tags(tags)?;
            self.update(&trail, key_ref, false, OperationClass::Manage, |key, _| {
                key.tags.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
                check_tags(&key.tags)?;
                Ok(Vec::new())
            })
            .await
        }
        .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// UntagResource.
    ///
    /// # Errors
    /// As the state matrix says.
    pub async fn untag_resource(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        tag_keys: &[String],
    ) -> Result<(), Error> {
        let trail = self.trail(ctx, "UntagResource");
        let outcome = self
            .update(&trail, key_ref, false, OperationClass::Manage, |key, _| {
                for tag_key in tag_keys {
                    key.tags.remove(tag_key);
                }
                Ok(Vec::new())
            })
            .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// ListResourceTags.
    ///
    /// # Errors
    /// NotFoundException; InvalidMarkerException.
    pub async fn list_resource_tags(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> Result<Page<(String, String)>, Error> {
        let outcome = async {
            let key = self.resolve(key_ref, false).await?;
            lifecycle::check(OperationClass::Read, &key.record, &key.arn)?;
            let entries =
                key.record.tags.iter().map(|(k, v)| (k.clone(), (k.clone(), v.clone()))).collect();
            paginate(entries, limit, marker, 50, 50)
        }
        .await;
        self.trail(ctx, "ListResourceTags").finish(outcome, |_| (None, None), None).await
    }

    /// The key policy document.
    ///
    /// # Errors
    /// NotFoundException.
    pub async fn key_policy(&self, key_ref: &str) -> Result<String, Error> {
        let key = self.resolve(key_ref, false).await?;
        lifecycle::check(OperationClass::Read, &key.record, &key.arn)?;
        Ok(key.record.policy.clone())
    }

    // === internals shared by the operation families ===

    /// Resolves a key reference (id, key ARN, and with `allow_alias` alias name or alias ARN)
    /// to its cached key.
    pub(crate) async fn resolve(
        &self,
        key_ref: &str,
        allow_alias: bool,
    ) -> Result<Arc<LoadedKey>, Error> {
        let key_id = self.key_id_of(key_ref, allow_alias).await?;
        if let Some(loaded) =
            self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key_id)
        {
            return Ok(Arc::clone(loaded));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let record = self
            .store
            .key(&key_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("Key '{}'", self.key_arn(&key_id))))?;
        let versions = self.store.versions(&key_id).await?;
        let loaded = Arc::new(self.load_adopting(&key_id, record, versions).await?);
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Cache only what no change has overtaken since the read began.
        if self.generation.load(Ordering::SeqCst) == generation {
            cache.insert(key_id, Arc::clone(&loaded));
        }
        Ok(loaded)
    }

    /// Key `key_id` as the store holds it now, bypassing (and not filling) the cache.
    async fn load_fresh(&self, key_id: &str) -> Result<LoadedKey, Error> {
        let record = self
            .store
            .key(key_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("Key '{}'", self.key_arn(key_id))))?;
        let versions = self.store.versions(key_id).await?;
        self.load_adopting(key_id, record, versions).await
    }

    /// [`Keystore::load`]; when material does not open, once more after taking up the next
    /// root key of a rotation started elsewhere, if there is one.
    async fn load_adopting(
        &self,
        key_id: &str,
        record: KeyRecord,
        versions: Vec<VersionRecord>,
    ) -> Result<LoadedKey, Error> {
        match self.load(record, versions) {
            Err(error) if error.kind() == ErrorKind::Internal && self.adopt_next_root().await? => {
                let record =
                    self.store.key(key_id).await?.ok_or_else(|| {
                        Error::not_found(format!("Key '{}'", self.key_arn(key_id)))
                    })?;
                let versions = self.store.versions(key_id).await?;
                self.load(record, versions)
            }
            outcome => outcome,
        }
    }

    async fn key_id_of(&self, key_ref: &str, allow_alias: bool) -> Result<String, Error> {
        if key_ref.is_empty() || key_ref.len() > 2048 {
            return Err(Error::validation("KeyId must have length between 1 and 2048"));
        }
        let local = if let Some(rest) = key_ref.strip_prefix("arn:") {
            let arn_prefix =
                format!("arn:aws:kms:{}:{}:", self.partition.region, self.partition.account);
            let Some(local) = key_ref.strip_prefix(arn_prefix.as_str()) else {
                // A well-formed ARN of another region or account names no key here.
                let parts: Vec<&str> = rest.splitn(5, ':').collect();
                if parts.len() == 5 && parts[1] == "kms" {
                    return Err(Error::not_found(format!("Key '{key_ref}'")));
                }
                return Err(Error::new(
                    ErrorKind::InvalidArn,
                    format!("{key_ref} is not a valid ARN"),
                ));
            };
            if let Some(id) = local.strip_prefix("key/") {
                id.to_owned()
            } else if local.starts_with("alias/") {
                if !allow_alias {
                    return Err(Error::new(
                        ErrorKind::InvalidArn,
                        "an alias ARN is not accepted here",
                    ));
                }
                return self.alias_target(local).await;
            } else {
                return Err(Error::new(
                    ErrorKind::InvalidArn,
                    format!("{key_ref} is not a valid ARN"),
                ));
            }
        } else if key_ref.starts_with("alias/") {
            if !allow_alias {
                return Err(Error::validation(
                    "an alias name is not accepted here: give a key id or key ARN",
                ));
            }
            return self.alias_target(key_ref).await;
        } else {
            key_ref.to_owned()
        };
        if uuid::Uuid::try_parse(&local).is_err() {
            return Err(Error::not_found(format!("Key '{}'", self.key_arn(&local))));
        }
        Ok(local)
    }

    async fn alias_target(&self, name: &str) -> Result<String, Error> {
        if let Some(key_id) =
            self.aliases.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name)
        {
            return Ok(key_id.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        match self.store.alias(name).await? {
            Some(alias) => {
                let mut aliases =
                    self.aliases.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                if self.generation.load(Ordering::SeqCst) == generation {
                    aliases.insert(alias.name, alias.key_id.clone());
                }
                Ok(alias.key_id)
            }
            None => Err(Error::not_found(format!("Alias {}", self.alias_arn(name)))),
        }
    }

    /// Forgets every alias this node read (after any alias change).
    pub(crate) fn invalidate_aliases(&self) {
        let mut aliases = self.aliases.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        aliases.clear();
    }

    fn load(&self, record: KeyRecord, versions: Vec<VersionRecord>) -> Result<LoadedKey, Error> {
        let arn = self.key_arn(&record.id);
        let mut loaded = BTreeMap::new();
        for version in versions {
            let material = if version.has_material() {
                Some(self.unseal_material(&record, &version)?)
            } else {
                None
            };
            loaded.insert(version.version, LoadedVersion { record: version, material });
        }
        let uuid = *uuid::Uuid::try_parse(&record.id)
            .map_err(|_| Error::internal("stored key id is not a uuid"))?
            .as_bytes();
        Ok(LoadedKey { record, uuid, arn, versions: loaded })
    }

    fn invalidate(&self, key_id: &str) {
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        cache.remove(key_id);
    }

    /// Applies `change` to a key under compare-and-swap, retrying on a concurrent change.
    /// `change` gets the record (with `revision` already bumped) and the loaded key, and returns
    /// the versions to write. Returns the key ARN.
    ///
    /// The change is audited on `trail` before each commit attempt, and nothing is committed
    /// if that line cannot be written; an attempt that fails to commit (a concurrent change
    /// included) gets its failure line. Errors before the commit (state, `change`) are left to
    /// the caller's [`Trail::finish`].
    pub(crate) async fn update<F>(
        &self,
        trail: &Trail<'_>,
        key_ref: &str,
        allow_alias: bool,
        class: OperationClass,
        change: F,
    ) -> Result<String, Error>
    where
        F: FnMut(&mut KeyRecord, &LoadedKey) -> Result<Vec<VersionRecord>, Error>,
    {
        // A handful of attempts: a conflict means another process committed in between.
        self.update_with(trail, key_ref, allow_alias, class, 8, change).await
    }

    /// [`Keystore::update`] with at most `attempts` commits: 1 for a change that must not be
    /// repeated on top of another node's (two nodes rotating a key at once make one new
    /// version, and the other caller gets ConflictException).
    pub(crate) async fn update_with<F>(
        &self,
        trail: &Trail<'_>,
        key_ref: &str,
        allow_alias: bool,
        class: OperationClass,
        attempts: usize,
        mut change: F,
    ) -> Result<String, Error>
    where
        F: FnMut(&mut KeyRecord, &LoadedKey) -> Result<Vec<VersionRecord>, Error>,
    {
        let key_id = self.key_id_of(key_ref, allow_alias).await?;
        let _writer = self.write_lock.lock().await;
        for _ in 0..attempts {
            // Read the store, not the cache (another node may have changed the key), and leave
            // the cache alone until the change commits: with the store unreachable, keys
            // already loaded keep serving.
            let loaded = self.load_fresh(&key_id).await?;
            lifecycle::check(class, &loaded.record, &loaded.arn)?;
            let mut record = loaded.record.clone();
            record.revision += 1;
            let put_versions = change(&mut record, &loaded)?;
            let delete_aliases = record.state == KeyState::Deleted;
            let material_id = changed_material_id(&put_versions).map(str::to_owned);
            let update = KeyUpdate {
                key: record,
                expected_revision: loaded.record.revision,
                put_versions,
                delete_aliases,
            };
            trail.before_commit(&loaded.arn, material_id.as_deref()).await?;
            let result = self.store.update_key(update).await;
            // Committed, or another change won: what was cached is stale. Unavailable: the
            // outcome is unknown, and the change feed tells once the store answers again.
            if matches!(result, Ok(()) | Err(store::StoreError::Conflict)) {
                self.invalidate(&key_id);
                if delete_aliases {
                    self.invalidate_aliases();
                }
            }
            let error = match result {
                Ok(()) => return Ok(loaded.arn.clone()),
                Err(store::StoreError::Conflict) => {
                    Error::new(ErrorKind::Conflict, "a concurrent change committed first; retrying")
                }
                Err(other) => other.into(),
            };
            trail.commit_failed(&loaded.arn, &error).await;
            if error.kind() != ErrorKind::Conflict {
                return Err(error);
            }
        }
        Err(Error::new(ErrorKind::Conflict, "the key is being changed concurrently; retry"))
    }

    pub(crate) async fn metadata(&self, record: &KeyRecord) -> Result<KeyMetadata, Error> {
        let versions = self.store.versions(&record.id).await?;
        Ok(self.metadata_of(record, &versions))
    }

    fn metadata_of(&self, record: &KeyRecord, versions: &[VersionRecord]) -> KeyMetadata {
        let current = versions.iter().find(|v| v.version == record.current_version);
        KeyMetadata {
            record: record.clone(),
            arn: self.key_arn(&record.id),
            account: self.partition.account.clone(),
            current_material_id: current.map(|v| v.material_id.clone()),
            valid_to: current.and_then(|v| v.valid_to),
        }
    }

    pub(crate) fn new_uuid(&self) -> Result<String, Error> {
        let mut bytes = [0u8; 16];
        self.backend.fill_random(&mut bytes)?;
        Ok(uuid::Builder::from_random_bytes(bytes).into_uuid().to_string())
    }

    pub(crate) fn new_material_id(&self) -> Result<String, Error> {
        let mut bytes = [0u8; 32];
        self.backend.fill_random(&mut bytes)?;
        Ok(hex::encode(bytes))
    }

    pub(crate) fn generate_material(&self, spec: KeySpec) -> Result<SecretBytes, Error> {
        if let Some(pair) = spec.key_pair_spec() {
            return Ok(self.backend.generate_key_pair(pair)?);
        }
        let len = spec
            .secret_len()
            .ok_or_else(|| Error::internal("spec without material size; this is a bug"))?;
        let mut bytes = SecretBytes::zeroed(len);
        self.backend.fill_random(bytes.expose_secret_mut())?;
        Ok(bytes)
    }

    /// The associated data sealing version `version` of `key_id` under the root key.
    pub(crate) fn material_aad(key_id: &str, version: u32) -> Vec<u8> {
        let mut aad = b"kagi key material v1\0".to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    pub(crate) fn seal_version(
        &self,
        key_id: &str,
        version: u32,
        now: UnixSeconds,
        state: VersionState,
        material: &SecretBytes,
        valid_to: Option<UnixSeconds>,
    ) -> Result<VersionRecord, Error> {
        let sealed = self.root().seal(
            self.backend,
            &Self::material_aad(key_id, version),
            material.expose_secret(),
        )?;
        Ok(VersionRecord {
            version,
            material_id: self.new_material_id()?,
            created: now,
            state,
            rotation_type: None,
            rotation_date: None,
            valid_to,
            material_fingerprint: None,
            sealed_material: sealed,
        })
    }

    fn unseal_material(
        &self,
        record: &KeyRecord,
        version: &VersionRecord,
    ) -> Result<Material, Error> {
        let bytes = self.root().unseal(
            self.backend,
            &Self::material_aad(&record.id, version.version),
            &version.sealed_material,
        )?;
        material_from_bytes(self.backend, record.spec, bytes)
    }

    /// The root keys as they stand (a rotation may replace them at any moment).
    pub(crate) fn root(&self) -> Arc<root::Keyring> {
        Arc::clone(&self.root.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
}

/// The material id an audit line of a change names: the last version written that has
/// material (a rotation's new version, an import), else the one version written (an expiry).
fn changed_material_id(versions: &[VersionRecord]) -> Option<&str> {
    match versions.iter().rev().find(|v| v.has_material()) {
        Some(version) => Some(&version.material_id),
        None if versions.len() == 1 => Some(&versions[0].material_id),
        None => None,
    }
}

/// Turns unsealed bytes into material of `spec`.
pub(crate) fn material_from_bytes(
    backend: &dyn CryptoBackend,
    spec: KeySpec,
    bytes: SecretBytes,
) -> Result<Material, Error> {
    if let Some(pair) = spec.key_pair_spec() {
        let private = backend.load_private_key(pair, bytes.expose_secret())?;
        let public = backend.load_public_key(pair, &private.public_key_der())?;
        return Ok(Material::Pair(KeyPair { private, public }));
    }
    if spec == KeySpec::SymmetricDefault {
        return Ok(Material::Aes(AesKey::from_slice(bytes.expose_secret())?));
    }
    Ok(Material::Hmac(bytes))
}

fn check_description(description: &str) -> Result<(), Error> {
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(Error::validation(format!(
            "Description must be at most {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(())
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), Error> {
    if tags.len() > 50 {
        return Err(Error::new(ErrorKind::Tag, "a key has at most 50 tags"));
    }
    for (key, value) in tags {
        let key_len = key.chars().count();
        if !(1..=128).contains(&key_len) || value.chars().count() > 256 {
            return Err(Error::new(
                ErrorKind::Tag,
                "tag keys are 1 to 128 characters and tag values at most 256",
            ));
        }
        if key.starts_with("aws:") {
            return Err(Error::new(ErrorKind::Tag, "tag keys beginning with aws: are reserved"));
        }
    }
    Ok(())
}

/// Checks an alias name as AWS constrains it: `alias/` prefix, 1–256 characters of
/// `[a-zA-Z0-9:/_-]`, `alias/aws/` reserved.
pub fn check_alias_name(name: &str) -> Result<(), Error> {
    let invalid =
        |why: &str| Error::new(ErrorKind::InvalidAliasName, format!("alias name {name:?} {why}"));
    if !(1..=256).contains(&name.len()) {
        return Err(invalid("must be 1 to 256 characters"));
    }
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(invalid("must begin with alias/"));
    };
    if rest.is_empty() {
        return Err(invalid("needs a name after alias/"));
    }
    if name.starts_with("alias/aws/") {
        return Err(invalid("is reserved (alias/aws/ names belong to AWS managed keys)"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-:".contains(&b)) {
        return Err(invalid("may contain only letters, digits and /_-:"));
    }
    Ok(())
}

/// The default key policy: the account root (every principal of the account) may do
/// everything, as AWS's default policy says; the API issue narrows it with administrators.
fn default_policy(partition: &Partition, _creator: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{}:root", partition.account)},
            "Action": "kms:*",
            "Resource": "*"
        }]
    })
    .to_string()
}

/// Paginates `entries` (sorted by their first element) after `marker`. The marker is the sort
/// key of the last item returned (base64url), so pages stay consistent while items are added;
/// a marker that does not decode is InvalidMarkerException, one that decodes is a position.
fn paginate<T>(
    entries: Vec<(String, T)>,
    limit: Option<u32>,
    marker: Option<&str>,
    max: u32,
    default: u32,
) -> Result<Page<T>, Error> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(Error::validation(format!("Limit must be between 1 and {max}")));
    }
    let start = match marker {
        None => 0,
        Some(marker) => {
            let after = decode_marker(marker)?;
            entries.partition_point(|(key, _)| *key <= after)
        }
    };
    let mut items: Vec<(String, T)> = entries.into_iter().skip(start).collect();
    let next_marker = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|(key, _)| encode_marker(key))
    } else {
        None
    };
    Ok(Page { items: items.into_iter().map(|(_, item)| item).collect(), next_marker })
}

fn encode_marker(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_marker(marker: &str) -> Result<String, Error> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(marker)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidMarker, "the marker does not decode"))
}

impl RotationSchedule {
    /// A schedule of `period_days` starting at `now`.
    pub fn starting(now: UnixSeconds, period_days: u32) -> Self {
        Self { period_days, next_rotation: now + i64::from(period_days) * DAY }
    }
}

#[cfg(test)]
mod tests;
