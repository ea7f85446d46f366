//! Persistence behind the [`Store`] trait: SQLite embedded (the default), PostgreSQL shared by
//! several nodes.
//!
//! The store keeps records; it makes no crypto decisions and never sees plaintext material
//! (versions arrive sealed under the root key).
//! Concurrency control is compare-and-swap on a key's `revision`: [`Store::update_key`] applies
//! a [`KeyUpdate`] only if the stored revision is the one the keystore read, atomically with the
//! version and alias changes it carries. A shared database serializes rotations and deletions
//! this way, not the process.
//!
//! Every change to a key or an alias is also appended to a change feed ([`Store::changes`]),
//! so a node sharing the database with others drops what it cached of a key another node
//! changed; background work that must run once across nodes takes a lease
//! ([`Store::try_lease`]).

mod postgres;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use postgres::{PostgresOptions, PostgresStore, redact_url};
pub use sqlite::SqliteStore;

/// How long the change feed keeps an entry, in seconds. A reader further behind than this is
/// told everything changed.
pub const CHANGES_KEPT: i64 = 3600;

use super::key::{AliasRecord, ImportTokenRecord, KeyRecord, VersionRecord};

/// A boxed future, so `Store` can be used as `dyn Store`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Storage failures.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The key's revision changed since it was read.
    #[error("the record changed concurrently")]
    Conflict,
    /// A unique name is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The record does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The database was written by a newer kagi.
    #[error(
        "the database has schema version {found}, newer than this kagi supports ({supported}): upgrade kagi"
    )]
    NewerSchema {
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The database did not answer in time, or cannot be reached.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database failed (I/O, corruption, a full disk).
    #[error("database error: {0}")]
    Database(String),
}

/// A change to one key, applied atomically if the key's revision is still `expected_revision`.
#[derive(Debug)]
pub struct KeyUpdate {
    /// The key's new metadata; its `revision` must be `expected_revision + 1`.
    pub key: KeyRecord,
    /// The revision the change was computed from.
    pub expected_revision: u64,
    /// Versions to insert or replace (by version number).
    pub put_versions: Vec<VersionRecord>,
    /// Whether to delete every alias of the key (deletion carried out).
    pub delete_aliases: bool,
}

/// Everything a store holds, read in one transaction: what a backup or a migration copies.
#[derive(Debug, Default)]
pub struct StoreSnapshot {
    /// Every key, ordered by id.
    pub keys: Vec<KeyRecord>,
    /// Every version, as (key id, version), ordered by key id then version.
    pub versions: Vec<(String, VersionRecord)>,
    /// Every alias, ordered by name.
    pub aliases: Vec<AliasRecord>,
    /// Every import token, ordered by id.
    pub import_tokens: Vec<ImportTokenRecord>,
}

/// What changed since a point of the change feed.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Changes {
    /// Where the feed stands now: the cursor for the next call.
    pub cursor: i64,
    /// Keys changed (metadata, versions, state), each once.
    pub keys: Vec<String>,
    /// Whether any alias was created, re-pointed or deleted.
    pub aliases: bool,
    /// Whether the reader fell behind what the feed keeps: treat everything as changed.
    pub all: bool,
}

impl Changes {
    /// The feed at `head` for a reader at `cursor`, whose entries (key id, alias name) after
    /// `cursor` up to `head` `entries` reads; `floor` is the newest entry the feed dropped.
    /// A reader with no cursor yet, or one the feed left behind (or a feed that restarted
    /// below it), reads no entries.
    pub(crate) fn read<E, I>(
        cursor: Option<i64>,
        head: i64,
        floor: i64,
        entries: E,
    ) -> Result<Self, StoreError>
    where
        E: FnOnce(i64) -> Result<I, StoreError>,
        I: IntoIterator<Item = (Option<String>, Option<String>)>,
    {
        let Some(cursor) = cursor else { return Ok(Self { cursor: head, ..Self::default() }) };
        if cursor < floor || cursor > head {
            return Ok(Self { cursor: head, keys: Vec::new(), aliases: true, all: true });
        }
        let mut changes = Self { cursor: head, ..Self::default() };
        for (key_id, alias) in entries(cursor)? {
            if let Some(key_id) = key_id
                && !changes.keys.contains(&key_id)
            {
                changes.keys.push(key_id);
            }
            changes.aliases |= alias.is_some();
        }
        Ok(changes)
    }
}

/// How [`Store::put_alias`] treats an existing alias.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum AliasWrite {
    /// Fail with [`StoreError::AlreadyExists`] if the name is taken.
    Create,
    /// Fail with [`StoreError::NotFound`] if the name is free.
    Update,
}

/// Where keys, versions, aliases and import tokens are kept.
pub trait Store: Send + Sync + fmt::Debug {
    /// Inserts a new key with its first versions.
    fn insert_key(&self, key: KeyRecord, versions: Vec<VersionRecord>) -> StoreFuture<'_, ()>;

    /// One key, if it exists.
    fn key(&self, key_id: &str) -> StoreFuture<'_, Option<KeyRecord>>;

    /// Every key, ordered by id.
    fn keys(&self) -> StoreFuture<'_, Vec<KeyRecord>>;

    /// A key's versions, ordered by version number.
    fn versions(&self, key_id: &str) -> StoreFuture<'_, Vec<VersionRecord>>;

    /// Applies `update` if the key's revision is still `update.expected_revision`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it is not; nothing is changed then.
    fn update_key(&self, update: KeyUpdate) -> StoreFuture<'_, ()>;

    /// One alias.
    fn alias(&self, name: &str) -> StoreFuture<'_, Option<AliasRecord>>;

    /// Every alias, ordered by name.
    fn aliases(&self) -> StoreFuture<'_, Vec<AliasRecord>>;

    /// Creates or re-points an alias.
    fn put_alias(&self, alias: AliasRecord, write: AliasWrite) -> StoreFuture<'_, ()>;

    /// Deletes an alias.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when there is no such alias.
    fn delete_alias(&self, name: &str) -> StoreFuture<'_, ()>;

    /// Keeps the parameters handed out by GetParametersForImport.
    fn insert_import_token(&self, token: ImportTokenRecord) -> StoreFuture<'_, ()>;

    /// Parameters by token id.
    fn import_token(&self, token_id: &str) -> StoreFuture<'_, Option<ImportTokenRecord>>;

    /// Everything, as of one moment, while writers carry on.
    fn snapshot(&self) -> StoreFuture<'_, StoreSnapshot>;

    /// Writes `snapshot` into this store, which must hold no key, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when the store is not empty; nothing is written then.
    fn restore(&self, snapshot: StoreSnapshot) -> StoreFuture<'_, ()>;

    /// What changed after `cursor` (`None`: only where the feed stands now, with no changes).
    fn changes(&self, cursor: Option<i64>) -> StoreFuture<'_, Changes>;

    /// Takes or renews the lease `name` for `holder` for `ttl_seconds` (by the database's
    /// clock), unless another holder's lease is still running. True when `holder` holds it.
    fn try_lease(&self, name: &str, holder: &str, ttl_seconds: i64) -> StoreFuture<'_, bool>;

    /// Gives up the lease `name` if `holder` holds it (a node stopping cleanly), so another
    /// node need not wait for it to run out.
    fn release_lease(&self, name: &str, holder: &str) -> StoreFuture<'_, ()>;

    /// A value of the store's `meta` table (the root key's check value, say).
    fn meta(&self, name: &str) -> StoreFuture<'_, Option<Vec<u8>>>;

    /// Sets `name` in the `meta` table unless it is set; answers the value it holds afterwards.
    fn init_meta(&self, name: &str, value: Vec<u8>) -> StoreFuture<'_, Vec<u8>>;

    /// Sets `name` in the `meta` table to `value`, or removes it (`None`).
    fn set_meta(&self, name: &str, value: Option<Vec<u8>>) -> StoreFuture<'_, ()>;
}

/// Which store a keystore uses, as configured (`[store]`).
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub enum StoreSettings {
    /// `DATA_DIR/keystore.db`.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by several nodes.
    Postgres(PostgresSettings),
}

/// `[store]` for PostgreSQL. The password is read when the store opens, never kept here.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PostgresSettings {
    /// `postgres://user@host:port/dbname`.
    pub url: String,
    /// Where the password comes from.
    pub password: PasswordSource,
    /// Most connections open at once per node.
    pub pool_size: usize,
    /// Longest a database call may take, connecting included.
    pub timeout: std::time::Duration,
    /// How often a node reads the change feed (the bound on how stale its caches can be).
    pub poll_interval: std::time::Duration,
}

/// Where a database password comes from.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum PasswordSource {
    /// None, or the one in the URL.
    None,
    /// A file holding it (trailing newline ignored).
    File(std::path::PathBuf),
    /// An environment variable holding it.
    Env(String),
}

impl StoreSettings {
    /// Opens the store for `data_dir`.
    ///
    /// # Errors
    /// When the password cannot be read, or the store cannot be opened (see
    /// [`SqliteStore::open`], [`PostgresStore::open`]).
    pub async fn open(&self, data_dir: &std::path::Path) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            Self::Sqlite => Ok(Arc::new(SqliteStore::open(&data_dir.join("keystore.db"))?)),
            Self::Postgres(settings) => {
                let password = match &settings.password {
                    PasswordSource::None => None,
                    PasswordSource::File(path) => {
                        let mut text = std::fs::read(path).map_err(|error| {
                            StoreError::Database(format!(
                                "cannot read the database password from {}: {error}",
                                path.display()
                            ))
                        })?;
                        let end =
                            text.iter().rposition(|b| !b"\r\n".contains(b)).map_or(0, |i| i + 1);
                        let password = crate::crypto::SecretBytes::from(text[..end].to_vec());
                        zeroize::Zeroize::zeroize(&mut text);
                        Some(password)
                    }
                    PasswordSource::Env(name) => {
                        let value = std::env::var(name).map_err(|_| {
                            StoreError::Database(format!(
                                "the database password variable {name} is not set"
                            ))
                        })?;
                        Some(crate::crypto::SecretBytes::from(value.into_bytes()))
                    }
                };
                let options = PostgresOptions {
                    url: settings.url.clone(),
                    password,
                    pool_size: settings.pool_size,
                    timeout: settings.timeout,
                };
                Ok(Arc::new(PostgresStore::open(&options).await?))
            }
        }
    }

    /// How often the change feed is read: `None` for SQLite, which one process owns.
    pub fn poll_interval(&self) -> Option<std::time::Duration> {
        match self {
            Self::Sqlite => None,
            Self::Postgres(settings) => Some(settings.poll_interval),
        }
    }
}
