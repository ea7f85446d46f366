//! The contract every [`Store`] keeps, checked against SQLite here and against PostgreSQL when
//! `KAGI_TEST_POSTGRES` names a database (`.ci/run` starts one).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::keystore::key::{KeySpec, KeyState, KeyUsage, Origin, VersionState};

fn key(id: &str, revision: u64) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        revision,
        created: 1_700_000_000,
        description: "a key".into(),
        spec: KeySpec::SymmetricDefault,
        usage: KeyUsage::EncryptDecrypt,
        origin: Origin::AwsKms,
        state: KeyState::Enabled,
        deletion_date: None,
        pending_window_days: None,
        rotation: None,
        on_demand_rotations: 0,
        tags: BTreeMap::new(),
        policy: "{}".into(),
        current_version: 1,
        grants: Vec::new(),
    }
}

fn version(number: u32, sealed: &[u8]) -> VersionRecord {
    VersionRecord {
        version: number,
        material_id: format!("{number:064x}"),
        created: 1_700_000_000,
        state: VersionState::Current,
        rotation_type: None,
        rotation_date: None,
        valid_to: None,
        material_fingerprint: None,
        sealed_material: sealed.to_vec(),
    }
}

fn alias(name: &str, key_id: &str) -> AliasRecord {
    AliasRecord { name: name.into(), key_id: key_id.into(), created: 1, updated: 1 }
}

const A: &str = "11111111-1111-4111-8111-111111111111";
const B: &str = "22222222-2222-4222-8222-222222222222";

/// Runs the whole contract on an empty store.
pub(crate) async fn contract(store: &dyn Store) {
    // Keys and versions.
    store.insert_key(key(A, 1), vec![version(1, b"sealed-1")]).await.expect("insert");
    assert_eq!(
        store.insert_key(key(A, 1), Vec::new()).await,
        Err(StoreError::AlreadyExists(format!("key {A}")))
    );
    assert_eq!(store.key(A).await.expect("key"), Some(key(A, 1)));
    assert_eq!(store.key(B).await.expect("key"), None);
    let versions = store.versions(A).await.expect("versions");
    assert_eq!(versions, vec![version(1, b"sealed-1")]);

    // Compare-and-swap.
    let start = store.changes(None).await.expect("changes");
    assert_eq!(start.keys, Vec::<String>::new());
    let update = |revision, expected| KeyUpdate {
        key: key(A, revision),
        expected_revision: expected,
        put_versions: vec![version(revision as u32, b"sealed-n")],
        delete_aliases: false,
    };
    store.update_key(update(2, 1)).await.expect("update");
    assert_eq!(store.update_key(update(2, 1)).await, Err(StoreError::Conflict));
    assert_eq!(store.key(A).await.expect("key").map(|k| k.revision), Some(2));
    assert_eq!(store.versions(A).await.expect("versions").len(), 2);

    // Aliases.
    store.insert_key(key(B, 1), Vec::new()).await.expect("insert b");
    store.put_alias(alias("alias/a", A), AliasWrite::Create).await.expect("alias");
    assert_eq!(
        store.put_alias(alias("alias/a", B), AliasWrite::Create).await,
        Err(StoreError::AlreadyExists("alias/a".into()))
    );
    assert_eq!(
        store.put_alias(alias("alias/none", B), AliasWrite::Update).await,
        Err(StoreError::NotFound("alias/none".into()))
    );
    store.put_alias(alias("alias/a", B), AliasWrite::Update).await.expect("re-point");
    assert_eq!(store.alias("alias/a").await.expect("alias").map(|a| a.key_id), Some(B.into()));
    store.put_alias(alias("alias/b", B), AliasWrite::Create).await.expect("alias b");
    assert_eq!(store.aliases().await.expect("aliases").len(), 2);
    store.delete_alias("alias/a").await.expect("delete");
    assert_eq!(store.delete_alias("alias/a").await, Err(StoreError::NotFound("alias/a".into())));

    // The change feed names each changed key once, and alias changes.
    let changes = store.changes(Some(start.cursor)).await.expect("changes");
    let mut keys = changes.keys.clone();
    keys.sort();
    assert_eq!(keys, vec![A.to_owned(), B.to_owned()]);
    assert!(changes.aliases && !changes.all);
    let quiet = store.changes(Some(changes.cursor)).await.expect("changes");
    assert_eq!(quiet, Changes { cursor: changes.cursor, ..Changes::default() });

    // Deletion carried out takes the key's aliases with it.
    let mut deleted = key(B, 2);
    deleted.state = KeyState::Deleted;
    store
        .update_key(KeyUpdate {
            key: deleted,
            expected_revision: 1,
            put_versions: Vec::new(),
            delete_aliases: true,
        })
        .await
        .expect("delete b");
    assert_eq!(store.alias("alias/b").await.expect("alias"), None);
    let changes = store.changes(Some(quiet.cursor)).await.expect("changes");
    assert_eq!(changes.keys, vec![B.to_owned()]);
    assert!(changes.aliases);

    // Import tokens.
    let token = ImportTokenRecord {
        token_id: "t1".into(),
        key_id: A.into(),
        wrapping_algorithm: "RSAES_OAEP_SHA_256".into(),
        wrapping_spec: "RSA_2048".into(),
        sealed_wrapping_key: vec![1, 2, 3],
        expires: 5,
    };
    store.insert_import_token(token.clone()).await.expect("token");
    assert_eq!(store.import_token("t1").await.expect("token"), Some(token.clone()));
    assert_eq!(store.import_token("t2").await.expect("token"), None);

    // Leases: one holder at a time, renewable by its holder.
    assert!(store.try_lease("sweep", "node-1", 60).await.expect("lease"));
    assert!(!store.try_lease("sweep", "node-2", 60).await.expect("lease"));
    assert!(store.try_lease("sweep", "node-1", 60).await.expect("renew"));
    assert!(store.try_lease("other", "node-2", 60).await.expect("other lease"));
    // An expired lease passes to whoever asks.
    assert!(store.try_lease("short", "node-1", -1).await.expect("lease"));
    assert!(store.try_lease("short", "node-2", 60).await.expect("take over"));
    // Released by its holder only, then free for anyone.
    store.release_lease("sweep", "node-2").await.expect("not the holder: no-op");
    assert!(!store.try_lease("sweep", "node-2", 60).await.expect("still node-1's"));
    store.release_lease("sweep", "node-1").await.expect("release");
    assert!(store.try_lease("sweep", "node-2", 60).await.expect("free"));

    // Settings are written once.
    assert_eq!(store.meta("root_check").await.expect("meta"), None);
    assert_eq!(store.init_meta("root_check", vec![7]).await.expect("init"), vec![7]);
    assert_eq!(store.init_meta("root_check", vec![8]).await.expect("init"), vec![7]);
    assert_eq!(store.meta("root_check").await.expect("meta"), Some(vec![7]));
    // ... and replaced or removed only on purpose (a root key rotation).
    store.set_meta("root_check", Some(vec![9])).await.expect("set");
    store.set_meta("root_next", Some(vec![1, 2])).await.expect("set new");
    assert_eq!(store.meta("root_check").await.expect("meta"), Some(vec![9]));
    assert_eq!(store.meta("root_next").await.expect("meta"), Some(vec![1, 2]));
    store.set_meta("root_next", None).await.expect("remove");
    store.set_meta("root_next", None).await.expect("removing twice is a no-op");
    assert_eq!(store.meta("root_next").await.expect("meta"), None);

    // A snapshot holds everything, and restores only into an empty store.
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.keys.len(), 2);
    assert_eq!(snapshot.versions.len(), 2);
    assert_eq!(snapshot.aliases.len(), 0);
    assert_eq!(snapshot.import_tokens, vec![token]);
    assert!(matches!(
        store.restore(StoreSnapshot::default()).await,
        Err(StoreError::AlreadyExists(_))
    ));
}

/// A snapshot of one store restores into another, record for record.
pub(crate) async fn round_trip(from: &dyn Store, to: &dyn Store) {
    from.insert_key(key(A, 1), vec![version(1, b"one"), version(2, b"two")]).await.expect("a");
    from.insert_key(key(B, 3), Vec::new()).await.expect("b");
    from.put_alias(alias("alias/a", A), AliasWrite::Create).await.expect("alias");
    let snapshot = from.snapshot().await.expect("snapshot");
    to.restore(snapshot).await.expect("restore");
    assert_eq!(to.keys().await.expect("keys"), from.keys().await.expect("keys"));
    assert_eq!(to.versions(A).await.expect("versions"), from.versions(A).await.expect("v"));
    assert_eq!(to.aliases().await.expect("aliases"), from.aliases().await.expect("aliases"));
    // The restored keys keep their revisions, so compare-and-swap carries on from them.
    assert_eq!(to.key(B).await.expect("key").map(|k| k.revision), Some(3));
}

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("keystore.db")).expect("open");
    (dir, Arc::new(store))
}

#[tokio::test]
async fn sqlite_keeps_the_contract() {
    let (_dir, store) = sqlite();
    contract(&*store).await;
}

#[tokio::test]
async fn sqlite_round_trips_a_snapshot() {
    let (_a, from) = sqlite();
    let (_b, to) = sqlite();
    round_trip(&*from, &*to).await;
}

#[tokio::test]
async fn sqlite_feed_of_a_new_reader_starts_at_the_head() {
    let (_dir, store) = sqlite();
    store.insert_key(key(A, 1), Vec::new()).await.expect("insert");
    let head = store.changes(None).await.expect("changes");
    assert!(head.cursor > 0 && head.keys.is_empty());
    // A cursor from the future (a restored database) reads as everything changed.
    let ahead = store.changes(Some(head.cursor + 10)).await.expect("changes");
    assert!(ahead.all);
}

/// A new, empty database in the cluster `KAGI_TEST_POSTGRES` names, as a URL; `None` (the
/// test is skipped, saying so) when it names none, except under `CI=true`, where that fails.
pub(crate) async fn postgres_database() -> Option<String> {
    let Ok(url) = std::env::var("KAGI_TEST_POSTGRES") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "KAGI_TEST_POSTGRES is not set: .ci/run starts a cluster (tests/pg/cluster.sh)"
        );
        eprintln!("KAGI_TEST_POSTGRES is not set: skipping the PostgreSQL half of this test");
        return None;
    };
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("random");
    let name = format!("kagi_test_{}", hex::encode(random));
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to KAGI_TEST_POSTGRES");
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    Some(format!("{base}/{name}"))
}

pub(crate) fn options(url: &str) -> PostgresOptions {
    PostgresOptions {
        url: url.to_owned(),
        password: None,
        pool_size: 4,
        timeout: std::time::Duration::from_secs(10),
    }
}

/// A store on a new, empty test database (see [`postgres_database`]).
pub(crate) async fn postgres() -> Option<Arc<dyn Store>> {
    let url = postgres_database().await?;
    Some(Arc::new(PostgresStore::open(&options(&url)).await.expect("open the test database")))
}

#[tokio::test]
async fn postgres_keeps_the_contract() {
    let Some(store) = postgres().await else { return };
    contract(&*store).await;
}

#[tokio::test]
async fn postgres_round_trips_a_snapshot_both_ways() {
    let (_a, sqlite_store) = sqlite();
    let Some(pg) = postgres().await else { return };
    round_trip(&*sqlite_store, &*pg).await;
    let (_b, back) = sqlite();
    back.restore(pg.snapshot().await.expect("snapshot")).await.expect("restore");
    assert_eq!(back.keys().await.expect("keys"), pg.keys().await.expect("keys"));
}

#[tokio::test]
async fn postgres_migrates_once_and_refuses_a_newer_schema() {
    let Some(url) = postgres_database().await else { return };
    let first = PostgresStore::open(&options(&url)).await.expect("first node");
    first.insert_key(key(A, 1), Vec::new()).await.expect("insert");
    // A second node finds the schema in place and the data intact.
    let second = PostgresStore::open(&options(&url)).await.expect("second node");
    assert_eq!(second.key(A).await.expect("key"), Some(key(A, 1)));
    let (client, connection) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute("UPDATE kagi_schema SET version = 99").await.expect("bump");
    let error = PostgresStore::open(&options(&url)).await.expect_err("newer schema");
    assert_eq!(error, StoreError::NewerSchema { found: 99, supported: 1 });
}

#[tokio::test]
async fn postgres_unreachable_fails_fast() {
    // Nothing listens on this socket directory: the call fails at once or at its deadline,
    // as Unavailable (DependencyTimeoutException to a caller), never hanging.
    let dir = tempfile::tempdir().expect("tempdir");
    let host = dir.path().display().to_string().replace('/', "%2F");
    let mut options = options(&format!("postgres://postgres@{host}:5432/postgres"));
    options.timeout = std::time::Duration::from_secs(2);
    let error = PostgresStore::open(&options).await.expect_err("no database");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
}
