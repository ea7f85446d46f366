//! The shared store: PostgreSQL, for several kagi nodes behind one load balancer.
//!
//! Each call takes a connection from a small pool and runs within [`PostgresOptions::timeout`]
//! (connecting included): a database that is down or stalls makes the call fail with
//! [`StoreError::Unavailable`] at the deadline, never hang. A connection that broke is not
//! given back, so the pool heals by itself when the database returns.
//!
//! Writers to the change feed bump one counter row (`feed.head`) in their transaction. Its row
//! lock orders them, so feed entries become visible in sequence order and a reader at `head`
//! has seen every entry up to it (a plain sequence would let a later number commit first).
//!
//! Schema migrations run at open, one transaction each, under an advisory lock, so nodes
//! starting together migrate once.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, IsolationLevel, NoTls, Transaction};

use super::{
    AliasWrite, CHANGES_KEPT, Changes, KeyUpdate, Store, StoreError, StoreFuture, StoreSnapshot,
};
use crate::keystore::key::{AliasRecord, ImportTokenRecord, KeyRecord, VersionRecord};

/// The schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    revision BIGINT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE versions (
    key_id TEXT NOT NULL REFERENCES keys(id),
    version BIGINT NOT NULL,
    record TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE aliases (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys(id),
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE import_tokens (
    token_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    wrapping_algorithm TEXT NOT NULL,
    wrapping_spec TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    expires BIGINT NOT NULL
);
CREATE TABLE feed (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), head BIGINT NOT NULL, floor BIGINT NOT NULL);
INSERT INTO feed (head, floor) VALUES (0, 0);
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    key_id TEXT,
    alias TEXT,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX changes_at ON changes (at);
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL);
CREATE TABLE settings (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
"];

/// The advisory lock key migrations hold ("kagi" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b61_6769;

/// How to reach the database.
pub struct PostgresOptions {
    /// `postgres://user@host:port/dbname` (a password in it is allowed, but better kept apart).
    pub url: String,
    /// The password, from a file or the environment (overrides one in the URL).
    pub password: Option<crate::crypto::SecretBytes>,
    /// Most connections open at once.
    pub pool_size: usize,
    /// Longest a call may take, connecting included.
    pub timeout: Duration,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `url` with any password in it replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    display: String,
    timeout: Duration,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("database", &self.inner.display).finish()
    }
}

/// A pooled connection, given back when dropped unless it broke.
struct Pooled {
    client: Option<Client>,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            lock(&self.inner.idle).push(client);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PostgresStore {
    /// Connects, runs the migrations this build knows, and checks the schema version.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached in time;
    /// [`StoreError::NewerSchema`] for a database migrated by a newer kagi;
    /// [`StoreError::Database`] for a URL that does not parse or a failed migration.
    pub async fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = options.url.parse().map_err(|error| {
            StoreError::Database(format!(
                "the PostgreSQL URL {} does not parse: {error}",
                redact_url(&options.url)
            ))
        })?;
        if let Some(password) = &options.password {
            config.password(password.expose_secret());
        }
        config.connect_timeout(options.timeout);
        config.application_name("kagi");
        let display = redact_url(&options.url);
        let store = Self {
            inner: Arc::new(Inner {
                config,
                display,
                timeout: options.timeout,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(options.pool_size.max(1))),
            }),
        };
        store.timed(store.migrate()).await?;
        Ok(store)
    }

    /// The database, with any password hidden.
    pub fn display(&self) -> &str {
        &self.inner.display
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg)?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS kagi_schema (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version BIGINT NOT NULL)",
            )
            .await
            .map_err(pg)?;
        let found: Option<i64> = transaction
            .query_opt("SELECT version FROM kagi_schema", &[])
            .await
            .map_err(pg)?
            .map(|row| row.get(0));
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found, supported: SCHEMA_VERSION });
        }
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            transaction.batch_execute(migration).await.map_err(pg)?;
            tracing::info!(
                target: "kagi::store",
                from,
                to = from + 1,
                "migrated the PostgreSQL schema"
            );
        }
        transaction
            .execute(
                "INSERT INTO kagi_schema (version) VALUES ($1)
                 ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
                &[&SCHEMA_VERSION],
            )
            .await
            .map_err(pg)?;
        transaction.commit().await.map_err(pg)
    }

    /// A connection from the pool, or a new one.
    async fn client(&self) -> Result<Pooled, StoreError> {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the connection pool is closed".into()))?;
        loop {
            let idle = lock(&self.inner.idle).pop();
            match idle {
                Some(client) if client.is_closed() => continue,
                Some(client) => {
                    return Ok(Pooled {
                        client: Some(client),
                        inner: Arc::clone(&self.inner),
                        _permit: permit,
                    });
                }
                None => break,
            }
        }
        let (client, connection) = self.inner.config.connect(NoTls).await.map_err(|error| {
            StoreError::Unavailable(format!("cannot connect to {}: {error}", self.inner.display))
        })?;
        let database = self.inner.display.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(target: "kagi::store", %database, %error, "PostgreSQL connection lost");
            }
        });
        Ok(Pooled { client: Some(client), inner: Arc::clone(&self.inner), _permit: permit })
    }

    /// Runs `work` within the store's deadline.
    fn timed<'a, T, F>(&'a self, work: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        let timeout = self.inner.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, work).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "no answer from {} within {} ms",
                    self.inner.display,
                    timeout.as_millis()
                ))),
            }
        })
    }
}

/// A read-only transaction seeing one moment of the database (REPEATABLE READ).
async fn read_transaction(client: &mut Client) -> Result<Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

fn pg(error: tokio_postgres::Error) -> StoreError {
    if error.is_closed() || error.as_db_error().is_none() {
        // The connection, not the statement: the database is down or unreachable.
        return StoreError::Unavailable(error.to_string());
    }
    StoreError::Database(error.to_string())
}

fn json(error: serde_json::Error) -> StoreError {
    StoreError::Database(format!("stored record does not parse: {error}"))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(json)
}

fn version_from(text: &str, sealed: Vec<u8>) -> Result<VersionRecord, StoreError> {
    let mut version: VersionRecord = serde_json::from_str(text).map_err(json)?;
    version.sealed_material = sealed;
    Ok(version)
}

fn alias_from(row: &tokio_postgres::Row) -> AliasRecord {
    AliasRecord { name: row.get(0), key_id: row.get(1), created: row.get(2), updated: row.get(3) }
}

fn token_from(row: &tokio_postgres::Row) -> ImportTokenRecord {
    ImportTokenRecord {
        token_id: row.get(0),
        key_id: row.get(1),
        wrapping_algorithm: row.get(2),
        wrapping_spec: row.get(3),
        sealed_wrapping_key: row.get(4),
        expires: row.get(5),
    }
}

const TOKEN_COLUMNS: &str =
    "token_id, key_id, wrapping_algorithm, wrapping_spec, sealed, expires FROM import_tokens";
const ALIAS_COLUMNS: &str = "name, key_id, created, updated FROM aliases";

async fn put_version(
    transaction: &Transaction<'_>,
    key_id: &str,
    version: &VersionRecord,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "INSERT INTO versions (key_id, version, record, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key_id, version) DO UPDATE SET record = EXCLUDED.record, sealed = EXCLUDED.sealed",
            &[&key_id, &i64::from(version.version), &to_json(version)?, &version.sealed_material],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Appends to the change feed (see the module docs for the ordering), and drops entries older
/// than [`CHANGES_KEPT`].
async fn record_change(
    transaction: &Transaction<'_>,
    key_id: Option<&str>,
    alias: Option<&str>,
) -> Result<(), StoreError> {
    let head: i64 = transaction
        .query_one("UPDATE feed SET head = head + 1 RETURNING head", &[])
        .await
        .map_err(pg)?
        .get(0);
    transaction
        .execute(
            "INSERT INTO changes (seq, key_id, alias) VALUES ($1, $2, $3)",
            &[&head, &key_id, &alias],
        )
        .await
        .map_err(pg)?;
    let gone: Option<i64> = transaction
        .query_one(
            "SELECT MAX(seq) FROM changes WHERE at < now() - make_interval(secs => $1)",
            &[&(CHANGES_KEPT as f64)],
        )
        .await
        .map_err(pg)?
        .get(0);
    if let Some(floor) = gone {
        transaction.execute("DELETE FROM changes WHERE seq <= $1", &[&floor]).await.map_err(pg)?;
        transaction.execute("UPDATE feed SET floor = $1", &[&floor]).await.map_err(pg)?;
    }
    Ok(())
}

async fn read_versions(
    client: &impl tokio_postgres::GenericClient,
    key_id: Option<&str>,
) -> Result<Vec<(String, VersionRecord)>, StoreError> {
    let rows = client
        .query(
            "SELECT key_id, record, sealed FROM versions WHERE $1::TEXT IS NULL OR key_id = $1
             ORDER BY key_id, version",
            &[&key_id],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|row| Ok((row.get::<_, String>(0), version_from(row.get(1), row.get(2))?)))
        .collect()
}

async fn read_keys(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<KeyRecord>, StoreError> {
    let rows = client.query("SELECT record FROM keys ORDER BY id", &[]).await.map_err(pg)?;
    rows.iter().map(|row| serde_json::from_str(row.get(0)).map_err(json)).collect()
}

async fn read_aliases(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<AliasRecord>, StoreError> {
    let rows =
        client.query(&format!("SELECT {ALIAS_COLUMNS} ORDER BY name"), &[]).await.map_err(pg)?;
    Ok(rows.iter().map(alias_from).collect())
}

async fn insert_token(
    client: &impl tokio_postgres::GenericClient,
    token: &ImportTokenRecord,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO import_tokens (token_id, key_id, wrapping_algorithm, wrapping_spec, sealed, expires)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &token.token_id,
                &token.key_id,
                &token.wrapping_algorithm,
                &token.wrapping_spec,
                &token.sealed_wrapping_key,
                &token.expires,
            ],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

fn revision(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Database("revision out of range".into()))
}

impl Store for PostgresStore {
    fn insert_key(&self, key: KeyRecord, versions: Vec<VersionRecord>) -> StoreFuture<'_, ()> {
        self.timed(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(pg)?;
            let inserted = transaction
                .execute(
                    "INSERT INTO keys (id, revision, record) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&key.id, &revision(key.revision)?, &to_json(&key)?],
                )
                .await
                .map_err(pg)?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists(format!("key {}", key.id)));
            }
            for version in &versions {
                put_version(&transaction, &key.id, version).await?;
            }
            record_change(&transaction, Some(&key.id), None).await?;
            transaction.commit().await.map_err(pg)
        })
    }

    fn key(&self, key_id: &str) -> StoreFuture<'_, Option<KeyRecord>> {
        let key_id = key_id.to_owned();
        self.timed(async move {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT record FROM keys WHERE id = $1", &[&key_id])
                .await
                .map_err(pg)?;
            row.map(|row| serde_json::from_str(row.get(0)).map_err(json)).transpose()
        })
    }

    fn keys(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        self.timed(async move {
            let client = self.client().await?;
            read_keys(&*client).await
        })
    }

    fn versions(&self, key_id: &str) -> StoreFuture<'_, Vec<VersionRecord>> {
        let key_id = key_id.to_owned();
        self.timed(async move {
            let client = self.client().await?;
            let versions = read_versions(&*client, Some(&key_id)).await?;
            Ok(versions.into_iter().map(|(_, version)| version).collect())
        })
    }

    fn update_key(&self, update: KeyUpdate) -> StoreFuture<'_, ()> {
        self.timed(async move {
            let KeyUpdate { key, expected_revision, put_versions, delete_aliases } = update;
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(pg)?;
            // Under READ COMMITTED a concurrent update of the row makes this one wait, then
            // re-check the revision: exactly one of two racing writers changes the key.
            let changed = transaction
                .execute(
                    "UPDATE keys SET revision = $1, record = $2 WHERE id = $3 AND revision = $4",
                    &[
                        &revision(key.revision)?,
                        &to_json(&key)?,
                        &key.id,
                        &revision(expected_revision)?,
                    ],
                )
                .await
                .map_err(pg)?;
            if changed == 0 {
                return Err(StoreError::Conflict);
            }
            for version in &put_versions {
                put_version(&transaction, &key.id, version).await?;
            }
            if delete_aliases {
                let deleted = transaction
                    .execute("DELETE FROM aliases WHERE key_id = $1", &[&key.id])
                    .await
                    .map_err(pg)?;
                if deleted > 0 {
                    record_change(&transaction, None, Some("*")).await?;
                }
            }
            record_change(&transaction, Some(&key.id), None).await?;
            transaction.commit().await.map_err(pg)
        })
    }

    fn alias(&self, name: &str) -> StoreFuture<'_, Option<AliasRecord>> {
        let name = name.to_owned();
        self.timed(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(&format!("SELECT {ALIAS_COLUMNS} WHERE name = $1"), &[&name])
                .await
                .map_err(pg)?;
            Ok(row.as_ref().map(alias_from))
        })
    }

    fn aliases(&self) -> StoreFuture<'_, Vec<AliasRecord>> {
        self.timed(async move {
            let client = self.client().await?;
            read_aliases(&*client).await
        })
    }

    fn put_alias(&self, alias: AliasRecord, write: AliasWrite) -> StoreFuture<'_, ()> {
        self.timed(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(pg)?;
            let changed = match write {
                AliasWrite::Create => {
                    transaction
                        .execute(
                            "INSERT INTO aliases (name, key_id, created, updated) VALUES ($1, $2, $3, $4)
                             ON CONFLICT DO NOTHING",
                            &[&alias.name, &alias.key_id, &alias.created, &alias.updated],
                        )
                        .await
                }
                AliasWrite::Update => {
                    transaction
                        .execute(
                            "UPDATE aliases SET key_id = $2, updated = $3 WHERE name = $1",
                            &[&alias.name, &alias.key_id, &alias.updated],
                        )
                        .await
                }
            }
            .map_err(pg)?;
            match (changed, write) {
                (0, AliasWrite::Create) => Err(StoreError::AlreadyExists(alias.name)),
                (0, AliasWrite::Update) => Err(StoreError::NotFound(alias.name)),
                _ => {
                    record_change(&transaction, None, Some(&alias.name)).await?;
                    transaction.commit().await.map_err(pg)
                }
            }
        })
    }

    fn delete_alias(&self, name: &str) -> StoreFuture<'_, ()> {
        let name = name.to_owned();
        self.timed(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(pg)?;
            let changed = transaction
                .execute("DELETE FROM aliases WHERE name = $1", &[&name])
                .await
                .map_err(pg)?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            record_change(&transaction, None, Some(&name)).await?;
            transaction.commit().await.map_err(pg)
        })
    }

    fn insert_import_token(&self, token: ImportTokenRecord) -> StoreFuture<'_, ()> {
        self.timed(async move {
            let client = self.client().await?;
            insert_token(&*client, &token).await
        })
    }

    fn import_token(&self, token_id: &str) -> StoreFuture<'_, Option<ImportTokenRecord>> {
        let token_id = token_id.to_owned();
        self.timed(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(&format!("SELECT {TOKEN_COLUMNS} WHERE token_id = $1"), &[&token_id])
                .await
                .map_err(pg)?;
            Ok(row.as_ref().map(token_from))
        })
    }

    fn snapshot(&self) -> StoreFuture<'_, StoreSnapshot> {
        self.timed(async move {
            let mut client = self.client().await?;
            let transaction = read_transaction(&mut client).await?;
            let keys = read_keys(&transaction).await?;
            let versions = read_versions(&transaction, None).await?;
            let aliases = read_aliases(&transaction).await?;
            let import_tokens = transaction
                .query(&format!("SELECT {TOKEN_COLUMNS} ORDER BY token_id"), &[])
                .await
                .map_err(pg)?
                .iter()
                .map(token_from)
                .collect();
            transaction.commit().await.map_err(pg)?;
            Ok(StoreSnapshot { keys, versions, aliases, import_tokens })
        })
    }

    fn restore(&self, snapshot: StoreSnapshot) -> StoreFuture<'_, ()> {
        self.timed(async move {
            let mut client = self.client().await?;
            let transaction = client.transaction().await.map_err(pg)?;
            transaction.execute("LOCK TABLE keys IN EXCLUSIVE MODE", &[]).await.map_err(pg)?;
            let present: i64 = transaction
                .query_one("SELECT COUNT(*) FROM keys", &[])
                .await
                .map_err(pg)?
                .get(0);
            if present > 0 {
                return Err(StoreError::AlreadyExists(format!("{present} keys in the store")));
            }
            for key in &snapshot.keys {
                transaction
                    .execute(
                        "INSERT INTO keys (id, revision, record) VALUES ($1, $2, $3)",
                        &[&key.id, &revision(key.revision)?, &to_json(key)?],
                    )
                    .await
                    .map_err(pg)?;
                record_change(&transaction, Some(&key.id), None).await?;
            }
            for (key_id, version) in &snapshot.versions {
                put_version(&transaction, key_id, version).await?;
            }
            for alias in &snapshot.aliases {
                transaction
                    .execute(
                        "INSERT INTO aliases (name, key_id, created, updated) VALUES ($1, $2, $3, $4)",
                        &[&alias.name, &alias.key_id, &alias.created, &alias.updated],
                    )
                    .await
                    .map_err(pg)?;
            }
            for token in &snapshot.import_tokens {
                insert_token(&transaction, token).await?;
            }
            record_change(&transaction, None, Some("*")).await?;
            transaction.commit().await.map_err(pg)
        })
    }

    fn changes(&self, cursor: Option<i64>) -> StoreFuture<'_, Changes> {
        self.timed(async move {
            let mut client = self.client().await?;
            let transaction = read_transaction(&mut client).await?;
            let row =
                transaction.query_one("SELECT head, floor FROM feed", &[]).await.map_err(pg)?;
            let (head, floor): (i64, i64) = (row.get(0), row.get(1));
            let rows = match cursor {
                Some(cursor) if (floor..=head).contains(&cursor) => {
                    transaction
                        .query(
                            "SELECT key_id, alias FROM changes WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                            &[&cursor, &head],
                        )
                        .await
                        .map_err(pg)?
                }
                _ => Vec::new(),
            };
            Changes::read(cursor, head, floor, |_| Ok(rows.iter().map(|row| (row.get(0), row.get(1)))))
        })
    }

    fn try_lease(&self, name: &str, holder: &str, ttl_seconds: i64) -> StoreFuture<'_, bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.timed(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "INSERT INTO leases (name, holder, expires)
                     VALUES ($1, $2, now() + make_interval(secs => $3))
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires
                     WHERE leases.holder = EXCLUDED.holder OR leases.expires <= now()
                     RETURNING holder",
                    &[&name, &holder, &(ttl_seconds as f64)],
                )
                .await
                .map_err(pg)?;
            Ok(row.is_some())
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> StoreFuture<'_, ()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.timed(async move {
            let client = self.client().await?;
            client
                .execute("DELETE FROM leases WHERE name = $1 AND holder = $2", &[&name, &holder])
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn meta(&self, name: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        let name = name.to_owned();
        self.timed(async move {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
                .await
                .map_err(pg)?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn init_meta(&self, name: &str, value: Vec<u8>) -> StoreFuture<'_, Vec<u8>> {
        let name = name.to_owned();
        self.timed(async move {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, &value],
                )
                .await
                .map_err(pg)?;
            let row = client
                .query_one("SELECT value FROM settings WHERE name = $1", &[&name])
                .await
                .map_err(pg)?;
            Ok(row.get(0))
        })
    }

    fn set_meta(&self, name: &str, value: Option<Vec<u8>>) -> StoreFuture<'_, ()> {
        let name = name.to_owned();
        self.timed(async move {
            let client = self.client().await?;
            match value {
                Some(value) => {
                    client
                        .execute(
                            "INSERT INTO settings (name, value) VALUES ($1, $2)
                             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                            &[&name, &value],
                        )
                        .await
                }
                None => client.execute("DELETE FROM settings WHERE name = $1", &[&name]).await,
            }
            .map_err(pg)?;
            Ok(())
        })
    }
}
