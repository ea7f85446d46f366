//! Persistence behind the [`Store`] trait: SQLite embedded (the default); PostgreSQL later.
//!
//! The store keeps records; it makes no crypto decisions and never sees plaintext material
//! (versions arrive sealed under the root key).
//! Concurrency control is compare-and-swap on a key's `revision`: [`Store::update_key`] applies
//! a [`KeyUpdate`] only if the stored revision is the one the keystore read, atomically with the
//! version and alias changes it carries. A shared database serializes rotations and deletions
//! this way, not the process.

mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub use sqlite::SqliteStore;

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
}
