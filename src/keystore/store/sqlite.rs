//! The embedded store: one SQLite file (WAL, `synchronous=FULL`) under the data directory.
//!
//! Calls run on tokio's blocking pool, one at a time through a mutex: SQLite serializes writers
//! anyway, and each statement takes microseconds.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{AliasWrite, KeyUpdate, Store, StoreError, StoreFuture};
use crate::keystore::key::{AliasRecord, ImportTokenRecord, KeyRecord, VersionRecord};

/// The schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    key_id TEXT NOT NULL REFERENCES keys(id),
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys(id),
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS import_tokens (
    token_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    wrapping_algorithm TEXT NOT NULL,
    wrapping_spec TEXT NOT NULL,
    sealed BLOB NOT NULL,
    expires INTEGER NOT NULL
);
";

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and checks its schema version.
    ///
    /// # Errors
    /// [`StoreError::NewerSchema`] for a database from a newer kagi;
    /// [`StoreError::Database`] when it cannot be opened.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path).map_err(db)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(db)?;
        let found: Option<i64> = connection
            .query_row("SELECT value FROM meta WHERE name = 'schema_version'", [], |row| row.get(0))
            .optional()
            .or_else(|error| match error {
                // A new, empty database has no meta table yet.
                rusqlite::Error::SqliteFailure(_, Some(ref message))
                    if message.contains("no such table") =>
                {
                    Ok(None)
                }
                other => Err(other),
            })
            .map_err(db)?;
        if let Some(found) = found
            && found > SCHEMA_VERSION
        {
            return Err(StoreError::NewerSchema { found, supported: SCHEMA_VERSION });
        }
        connection.execute_batch(SCHEMA).map_err(db)?;
        connection
            .execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION],
            )
            .map_err(db)?;
        Ok(Self { connection: Arc::new(Mutex::new(connection)) })
    }

    /// Runs `work` on the blocking pool with the connection.
    fn run<T, F>(&self, work: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        Box::pin(async move {
            let task = tokio::task::spawn_blocking(move || {
                let mut guard = lock(&connection)?;
                work(&mut guard)
            });
            task.await.map_err(|_| StoreError::Database("storage task failed".into()))?
        })
    }
}

fn lock(connection: &Mutex<Connection>) -> Result<MutexGuard<'_, Connection>, StoreError> {
    // A panic while holding the lock cannot leave a half-applied change: every write is one
    // SQLite transaction, rolled back when dropped. So a poisoned lock is safe to reuse.
    Ok(connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn db(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

fn json(error: serde_json::Error) -> StoreError {
    StoreError::Database(format!("stored record does not parse: {error}"))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(json)
}

fn put_version(
    connection: &Connection,
    key_id: &str,
    version: &VersionRecord,
) -> Result<(), StoreError> {
    connection
        .execute(
            "INSERT OR REPLACE INTO versions (key_id, version, record, sealed) VALUES (?1, ?2, ?3, ?4)",
            params![key_id, version.version, to_json(version)?, version.sealed_material],
        )
        .map_err(db)?;
    Ok(())
}

fn alias_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AliasRecord> {
    Ok(AliasRecord {
        name: row.get(0)?,
        key_id: row.get(1)?,
        created: row.get(2)?,
        updated: row.get(3)?,
    })
}

impl Store for SqliteStore {
    fn insert_key(&self, key: KeyRecord, versions: Vec<VersionRecord>) -> StoreFuture<'_, ()> {
        self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
            let inserted = transaction
                .execute(
                    "INSERT OR IGNORE INTO keys (id, revision, record) VALUES (?1, ?2, ?3)",
                    params![key.id, key.revision as i64, to_json(&key)?],
                )
                .map_err(db)?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists(format!("key {}", key.id)));
            }
            for version in &versions {
                put_version(&transaction, &key.id, version)?;
            }
            transaction.commit().map_err(db)
        })
    }

    fn key(&self, key_id: &str) -> StoreFuture<'_, Option<KeyRecord>> {
        let key_id = key_id.to_owned();
        self.run(move |connection| {
            let record: Option<String> = connection
                .query_row("SELECT record FROM keys WHERE id = ?1", params![key_id], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(db)?;
            record.map(|text| serde_json::from_str(&text).map_err(json)).transpose()
        })
    }

    fn keys(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        self.run(move |connection| {
            let mut statement =
                connection.prepare("SELECT record FROM keys ORDER BY id").map_err(db)?;
            let rows = statement.query_map([], |row| row.get::<_, String>(0)).map_err(db)?;
            rows.map(|row| serde_json::from_str(&row.map_err(db)?).map_err(json)).collect()
        })
    }

    fn versions(&self, key_id: &str) -> StoreFuture<'_, Vec<VersionRecord>> {
        let key_id = key_id.to_owned();
        self.run(move |connection| {
            let mut statement = connection
                .prepare("SELECT record, sealed FROM versions WHERE key_id = ?1 ORDER BY version")
                .map_err(db)?;
            let rows = statement
                .query_map(params![key_id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .map_err(db)?;
            rows.map(|row| {
                let (text, sealed) = row.map_err(db)?;
                let mut version: VersionRecord = serde_json::from_str(&text).map_err(json)?;
                version.sealed_material = sealed;
                Ok(version)
            })
            .collect()
        })
    }

    fn update_key(&self, update: KeyUpdate) -> StoreFuture<'_, ()> {
        self.run(move |connection| {
            let KeyUpdate { key, expected_revision, put_versions, delete_aliases } = update;
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
            let changed = transaction
                .execute(
                    "UPDATE keys SET revision = ?1, record = ?2 WHERE id = ?3 AND revision = ?4",
                    params![key.revision as i64, to_json(&key)?, key.id, expected_revision as i64],
                )
                .map_err(db)?;
            if changed == 0 {
                return Err(StoreError::Conflict);
            }
            for version in &put_versions {
                put_version(&transaction, &key.id, version)?;
            }
            if delete_aliases {
                transaction
                    .execute("DELETE FROM aliases WHERE key_id = ?1", params![key.id])
                    .map_err(db)?;
            }
            transaction.commit().map_err(db)
        })
    }

    fn alias(&self, name: &str) -> StoreFuture<'_, Option<AliasRecord>> {
        let name = name.to_owned();
        self.run(move |connection| {
            connection
                .query_row(
                    "SELECT name, key_id, created, updated FROM aliases WHERE name = ?1",
                    params![name],
                    alias_from_row,
                )
                .optional()
                .map_err(db)
        })
    }

    fn aliases(&self) -> StoreFuture<'_, Vec<AliasRecord>> {
        self.run(move |connection| {
            let mut statement = connection
                .prepare("SELECT name, key_id, created, updated FROM aliases ORDER BY name")
                .map_err(db)?;
            let rows = statement.query_map([], alias_from_row).map_err(db)?;
            rows.map(|row| row.map_err(db)).collect()
        })
    }

    fn put_alias(&self, alias: AliasRecord, write: AliasWrite) -> StoreFuture<'_, ()> {
        self.run(move |connection| {
            let changed = match write {
                AliasWrite::Create => connection.execute(
                    "INSERT OR IGNORE INTO aliases (name, key_id, created, updated) VALUES (?1, ?2, ?3, ?4)",
                    params![alias.name, alias.key_id, alias.created, alias.updated],
                ),
                AliasWrite::Update => connection.execute(
                    "UPDATE aliases SET key_id = ?2, updated = ?3 WHERE name = ?1",
                    params![alias.name, alias.key_id, alias.updated],
                ),
            }
            .map_err(db)?;
            match (changed, write) {
                (0, AliasWrite::Create) => Err(StoreError::AlreadyExists(alias.name)),
                (0, AliasWrite::Update) => Err(StoreError::NotFound(alias.name)),
                _ => Ok(()),
            }
        })
    }

    fn delete_alias(&self, name: &str) -> StoreFuture<'_, ()> {
        let name = name.to_owned();
        self.run(move |connection| {
            let changed = connection
                .execute("DELETE FROM aliases WHERE name = ?1", params![name])
                .map_err(db)?;
            if changed == 0 { Err(StoreError::NotFound(name)) } else { Ok(()) }
        })
    }

    fn insert_import_token(&self, token: ImportTokenRecord) -> StoreFuture<'_, ()> {
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT INTO import_tokens (token_id, key_id, wrapping_algorithm, wrapping_spec, sealed, expires)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        token.token_id,
                        token.key_id,
                        token.wrapping_algorithm,
                        token.wrapping_spec,
                        token.sealed_wrapping_key,
                        token.expires
                    ],
                )
                .map_err(db)?;
            Ok(())
        })
    }

    fn import_token(&self, token_id: &str) -> StoreFuture<'_, Option<ImportTokenRecord>> {
        let token_id = token_id.to_owned();
        self.run(move |connection| {
            connection
                .query_row(
                    "SELECT token_id, key_id, wrapping_algorithm, wrapping_spec, sealed, expires
                     FROM import_tokens WHERE token_id = ?1",
                    params![token_id],
                    |row| {
                        Ok(ImportTokenRecord {
                            token_id: row.get(0)?,
                            key_id: row.get(1)?,
                            wrapping_algorithm: row.get(2)?,
                            wrapping_spec: row.get(3)?,
                            sealed_wrapping_key: row.get(4)?,
                            expires: row.get(5)?,
                        })
                    },
                )
                .optional()
                .map_err(db)
        })
    }
}
