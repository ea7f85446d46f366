//! The embedded store: one SQLite file (WAL, `synchronous=FULL`) under the data directory.
//!
//! Calls run on tokio's blocking pool, one at a time through a mutex: SQLite serializes writers
//! anyway, and each statement takes microseconds.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    AliasWrite, CHANGES_KEPT, Changes, KeyUpdate, Store, StoreError, StoreFuture, StoreSnapshot,
};
use crate::keystore::key::{AliasRecord, ImportTokenRecord, KeyRecord, VersionRecord};

/// The schema version this build writes and reads.
///
/// 1: keys, versions, aliases, import tokens. 2: the change feed, leases and settings.
pub(crate) const SCHEMA_VERSION: i64 = 2;

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
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT,
    alias TEXT,
    at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE INDEX IF NOT EXISTS changes_at ON changes (at);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);
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
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
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

/// Appends to the change feed, and drops what it has kept for longer than [`CHANGES_KEPT`].
fn record_change(
    connection: &Connection,
    key_id: Option<&str>,
    alias: Option<&str>,
) -> Result<(), StoreError> {
    connection
        .execute("INSERT INTO changes (key_id, alias) VALUES (?1, ?2)", params![key_id, alias])
        .map_err(db)?;
    let gone: Option<i64> = connection
        .query_row(
            "SELECT MAX(seq) FROM changes WHERE at < unixepoch() - ?1",
            params![CHANGES_KEPT],
            |row| row.get(0),
        )
        .map_err(db)?;
    if let Some(floor) = gone {
        connection.execute("DELETE FROM changes WHERE seq <= ?1", params![floor]).map_err(db)?;
        connection
            .execute(
                "INSERT INTO settings (name, value) VALUES ('changes_floor', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![floor.to_string().into_bytes()],
            )
            .map_err(db)?;
    }
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

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ImportTokenRecord> {
    Ok(ImportTokenRecord {
        token_id: row.get(0)?,
        key_id: row.get(1)?,
        wrapping_algorithm: row.get(2)?,
        wrapping_spec: row.get(3)?,
        sealed_wrapping_key: row.get(4)?,
        expires: row.get(5)?,
    })
}

const TOKEN_COLUMNS: &str =
    "token_id, key_id, wrapping_algorithm, wrapping_spec, sealed, expires FROM import_tokens";

fn read_keys(connection: &Connection) -> Result<Vec<KeyRecord>, StoreError> {
    let mut statement = connection.prepare("SELECT record FROM keys ORDER BY id").map_err(db)?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0)).map_err(db)?;
    rows.map(|row| serde_json::from_str(&row.map_err(db)?).map_err(json)).collect()
}

/// The versions of `key_id`, or of every key.
fn read_versions(
    connection: &Connection,
    key_id: Option<&str>,
) -> Result<Vec<(String, VersionRecord)>, StoreError> {
    let mut statement = connection
        .prepare(
            "SELECT key_id, record, sealed FROM versions WHERE ?1 IS NULL OR key_id = ?1
             ORDER BY key_id, version",
        )
        .map_err(db)?;
    let rows = statement
        .query_map(params![key_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, Vec<u8>>(2)?))
        })
        .map_err(db)?;
    rows.map(|row| {
        let (key_id, text, sealed) = row.map_err(db)?;
        let mut version: VersionRecord = serde_json::from_str(&text).map_err(json)?;
        version.sealed_material = sealed;
        Ok((key_id, version))
    })
    .collect()
}

fn read_aliases(connection: &Connection) -> Result<Vec<AliasRecord>, StoreError> {
    let mut statement = connection
        .prepare("SELECT name, key_id, created, updated FROM aliases ORDER BY name")
        .map_err(db)?;
    let rows = statement.query_map([], alias_from_row).map_err(db)?;
    rows.map(|row| row.map_err(db)).collect()
}

fn insert_token(connection: &Connection, token: &ImportTokenRecord) -> Result<(), StoreError> {
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
}

fn setting(connection: &Connection, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    connection
        .query_row("SELECT value FROM settings WHERE name = ?1", params![name], |row| row.get(0))
        .optional()
        .map_err(db)
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
            record_change(&transaction, Some(&key.id), None)?;
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
        self.run(move |connection| read_keys(connection))
    }

    fn versions(&self, key_id: &str) -> StoreFuture<'_, Vec<VersionRecord>> {
        let key_id = key_id.to_owned();
        self.run(move |connection| {
            let versions = read_versions(connection, Some(&key_id))?;
            Ok(versions.into_iter().map(|(_, version)| version).collect())
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
                let deleted = transaction
                    .execute("DELETE FROM aliases WHERE key_id = ?1", params![key.id])
                    .map_err(db)?;
                if deleted > 0 {
                    record_change(&transaction, None, Some("*"))?;
                }
            }
            record_change(&transaction, Some(&key.id), None)?;
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
        self.run(move |connection| read_aliases(connection))
    }

    fn put_alias(&self, alias: AliasRecord, write: AliasWrite) -> StoreFuture<'_, ()> {
        self.run(move |connection| {
            let transaction = connection.transaction().map_err(db)?;
            let changed = match write {
                AliasWrite::Create => transaction.execute(
                    "INSERT OR IGNORE INTO aliases (name, key_id, created, updated) VALUES (?1, ?2, ?3, ?4)",
                    params![alias.name, alias.key_id, alias.created, alias.updated],
                ),
                AliasWrite::Update => transaction.execute(
                    "UPDATE aliases SET key_id = ?2, updated = ?3 WHERE name = ?1",
                    params![alias.name, alias.key_id, alias.updated],
                ),
            }
            .map_err(db)?;
            match (changed, write) {
                (0, AliasWrite::Create) => Err(StoreError::AlreadyExists(alias.name)),
                (0, AliasWrite::Update) => Err(StoreError::NotFound(alias.name)),
                _ => {
                    record_change(&transaction, None, Some(&alias.name))?;
                    transaction.commit().map_err(db)
                }
            }
        })
    }

    fn delete_alias(&self, name: &str) -> StoreFuture<'_, ()> {
        let name = name.to_owned();
        self.run(move |connection| {
            let transaction = connection.transaction().map_err(db)?;
            let changed = transaction
                .execute("DELETE FROM aliases WHERE name = ?1", params![name])
                .map_err(db)?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            record_change(&transaction, None, Some(&name))?;
            transaction.commit().map_err(db)
        })
    }

    fn insert_import_token(&self, token: ImportTokenRecord) -> StoreFuture<'_, ()> {
        self.run(move |connection| insert_token(connection, &token))
    }

    fn import_token(&self, token_id: &str) -> StoreFuture<'_, Option<ImportTokenRecord>> {
        let token_id = token_id.to_owned();
        self.run(move |connection| {
            connection
                .query_row(
                    &format!("SELECT {TOKEN_COLUMNS} WHERE token_id = ?1"),
                    params![token_id],
                    token_from_row,
                )
                .optional()
                .map_err(db)
        })
    }

    fn snapshot(&self) -> StoreFuture<'_, StoreSnapshot> {
        self.run(move |connection| {
            // One read transaction: WAL readers see one moment while writers carry on.
            let transaction = connection.transaction().map_err(db)?;
            let keys = read_keys(&transaction)?;
            let versions = read_versions(&transaction, None)?;
            let aliases = read_aliases(&transaction)?;
            let mut statement = transaction
                .prepare(&format!("SELECT {TOKEN_COLUMNS} ORDER BY token_id"))
                .map_err(db)?;
            let import_tokens = statement
                .query_map([], token_from_row)
                .map_err(db)?
                .map(|row| row.map_err(db))
                .collect::<Result<_, _>>()?;
            Ok(StoreSnapshot { keys, versions, aliases, import_tokens })
        })
    }

    fn restore(&self, snapshot: StoreSnapshot) -> StoreFuture<'_, ()> {
        self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
            let present: i64 =
                transaction.query_row("SELECT COUNT(*) FROM keys", [], |row| row.get(0)).map_err(db)?;
            if present > 0 {
                return Err(StoreError::AlreadyExists(format!("{present} keys in the store")));
            }
            for key in &snapshot.keys {
                transaction
                    .execute(
                        "INSERT INTO keys (id, revision, record) VALUES (?1, ?2, ?3)",
                        params![key.id, key.revision as i64, to_json(key)?],
                    )
                    .map_err(db)?;
                record_change(&transaction, Some(&key.id), None)?;
            }
            for (key_id, version) in &snapshot.versions {
                put_version(&transaction, key_id, version)?;
            }
            for alias in &snapshot.aliases {
                transaction
                    .execute(
                        "INSERT OR REPLACE INTO aliases (name, key_id, created, updated) VALUES (?1, ?2, ?3, ?4)",
                        params![alias.name, alias.key_id, alias.created, alias.updated],
                    )
                    .map_err(db)?;
            }
            for token in &snapshot.import_tokens {
                insert_token(&transaction, token)?;
            }
            record_change(&transaction, None, Some("*"))?;
            transaction.commit().map_err(db)
        })
    }

    fn changes(&self, cursor: Option<i64>) -> StoreFuture<'_, Changes> {
        self.run(move |connection| {
            let transaction = connection.transaction().map_err(db)?;
            let head: i64 = transaction
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |row| row.get(0))
                .map_err(db)?;
            let floor = setting(&transaction, "changes_floor")?
                .and_then(|value| String::from_utf8(value).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            Changes::read(cursor, head, floor, |cursor| {
                let mut statement = transaction
                    .prepare("SELECT key_id, alias FROM changes WHERE seq > ?1 AND seq <= ?2")
                    .map_err(db)?;
                let rows = statement
                    .query_map(params![cursor, head], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(db)?;
                rows.map(|row| row.map_err(db)).collect::<Result<Vec<_>, _>>()
            })
        })
    }

    fn try_lease(&self, name: &str, holder: &str, ttl_seconds: i64) -> StoreFuture<'_, bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.run(move |connection| {
            let held: Option<String> = connection
                .query_row(
                    "INSERT INTO leases (name, holder, expires) VALUES (?1, ?2, unixepoch() + ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
                     WHERE leases.holder = excluded.holder OR leases.expires <= unixepoch()
                     RETURNING holder",
                    params![name, holder, ttl_seconds],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db)?;
            Ok(held.is_some())
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> StoreFuture<'_, ()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.run(move |connection| {
            connection
                .execute(
                    "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                    params![name, holder],
                )
                .map_err(db)?;
            Ok(())
        })
    }

    fn meta(&self, name: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        let name = name.to_owned();
        self.run(move |connection| setting(connection, &name))
    }

    fn init_meta(&self, name: &str, value: Vec<u8>) -> StoreFuture<'_, Vec<u8>> {
        let name = name.to_owned();
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT OR IGNORE INTO settings (name, value) VALUES (?1, ?2)",
                    params![name, value],
                )
                .map_err(db)?;
            setting(connection, &name)?
                .ok_or_else(|| StoreError::Database(format!("setting {name} was not kept")))
        })
    }

    fn set_meta(&self, name: &str, value: Option<Vec<u8>>) -> StoreFuture<'_, ()> {
        let name = name.to_owned();
        self.run(move |connection| {
            match value {
                Some(value) => connection.execute(
                    "INSERT INTO settings (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    params![name, value],
                ),
                None => connection.execute("DELETE FROM settings WHERE name = ?1", params![name]),
            }
            .map_err(db)?;
            Ok(())
        })
    }
}
