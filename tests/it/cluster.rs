//! Several `kagi serve` nodes on one PostgreSQL database (a throwaway cluster each test starts):
//! keys and changes shared, a disable seen by every node, concurrent rotations, deletion carried
//! out once (also when a node dies), the database stopped and started under load, TLS sessions
//! resumed on another node, and `kagi migrate` from SQLite.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kagi::api::client::{CallError, Client, HttpVersion};
use serde_json::{Value, json};

use crate::support::postgres::PgCluster;
use crate::support::server::{ADMIN, Server};
use crate::support::{Kagi, arg};

/// Generous: these wait for a node to read the change feed (every 100 ms here) on a busy
/// machine, never for a fixed time.
const DEADLINE: Duration = Duration::from_secs(60);

/// A node on `data_dir` sharing `pg`; the first node of a cluster makes the root key, the
/// others get a copy of it (as an operator would).
fn node(pg: &PgCluster, data_dir: &Path, keystore: &str, env: &[(&str, &str)]) -> Server {
    Server::start_node(data_dir, &[ADMIN], keystore, &pg.store_table(), env)
}

/// Two nodes on `pg`, in data directories `a` and `b` of a temporary directory.
struct TwoNodes {
    _dir: tempfile::TempDir,
    a_dir: std::path::PathBuf,
    b_dir: std::path::PathBuf,
    a: Server,
    b: Server,
}

fn two_nodes(pg: &PgCluster) -> TwoNodes {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a = node(pg, &a_dir, "", &[]);
    copy_root(&a_dir, &b_dir);
    let b = node(pg, &b_dir, "", &[]);
    TwoNodes { _dir: dir, a_dir, b_dir, a, b }
}

fn copy_root(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for file in ["root.key", "root.check"] {
        std::fs::copy(from.join(file), to.join(file)).expect("copy the root key");
    }
    // Once the root key was rotated: the fingerprint key it carries.
    if from.join("root.lineage").exists() {
        std::fs::copy(from.join("root.lineage"), to.join("root.lineage")).expect("copy lineage");
    }
}

fn code(result: Result<Value, CallError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(CallError::Api(error)) => error.code_name,
        Err(other) => format!("transport: {other}"),
    }
}

async fn create_key(client: &mut Client) -> String {
    let created = client.call("CreateKey", &json!({})).await.expect("CreateKey");
    created["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned()
}

async fn encrypt(client: &mut Client, key: &str) -> Result<Value, CallError> {
    client.call("Encrypt", &json!({"KeyId": key, "Plaintext": BASE64.encode(b"shared")})).await
}

/// Evaluates `probe` (an expression that may `.await`) until it equals `want`.
macro_rules! eventually {
    ($what:expr, $want:expr, $probe:expr) => {{
        let start = Instant::now();
        loop {
            let got: String = $probe;
            if got == $want {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "{}: still {got}, want {}", $what, $want);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

/// The audit lines of a node's trail.
fn audit_lines(data_dir: &Path) -> Vec<Value> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(data_dir.join("audit")).expect("audit dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        lines.extend(text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()));
    }
    lines
}

/// How many `operation`s on `key` committed on a node: success lines not followed by a failure
/// line of the same request.
fn committed(data_dir: &Path, operation: &str, key: &str) -> usize {
    let lines = audit_lines(data_dir);
    let on_key = |line: &&Value| {
        line["operation"] == operation
            && line["key_arn"].as_str().is_some_and(|arn| arn.ends_with(key))
    };
    let failed: Vec<&Value> =
        lines.iter().filter(on_key).filter(|l| l["outcome"] == "failure").collect();
    lines
        .iter()
        .filter(on_key)
        .filter(|l| l["outcome"] == "success")
        .filter(|l| !failed.iter().any(|f| f["request_id"] == l["request_id"]))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_keys_and_each_sees_the_others_changes() {
    let Some(pg) = PgCluster::start() else { return };
    let TwoNodes { _dir: _dir_guard, a_dir, b_dir, a, b } = two_nodes(&pg);
    let mut on_a = a.client(HttpVersion::Http1, &ADMIN).await;
    let mut on_b = b.client(HttpVersion::Http1, &ADMIN).await;

    // A key made on one node works on the other, by id and by alias.
    let key = create_key(&mut on_a).await;
    on_a.call("CreateAlias", &json!({"AliasName": "alias/shared", "TargetKeyId": key}))
        .await
        .expect("CreateAlias");
    let sealed = encrypt(&mut on_b, "alias/shared").await.expect("Encrypt on b");
    let opened = on_a
        .call("Decrypt", &json!({"CiphertextBlob": sealed["CiphertextBlob"]}))
        .await
        .expect("Decrypt on a");
    assert_eq!(opened["Plaintext"], BASE64.encode(b"shared"));

    // Disabled on a: refused on b, which had the key cached, within its poll.
    on_a.call("DisableKey", &json!({"KeyId": key})).await.expect("DisableKey");
    eventually!(
        "b after a disabled the key",
        "DisabledException",
        code(encrypt(&mut on_b, &key).await)
    );
    // Enabled on b: usable on a again.
    on_b.call("EnableKey", &json!({"KeyId": key})).await.expect("EnableKey");
    eventually!("a after b enabled the key", "ok", code(encrypt(&mut on_a, &key).await));
    // An alias re-pointed on b is followed by a (which had it cached).
    let other = create_key(&mut on_b).await;
    encrypt(&mut on_a, "alias/shared").await.expect("alias cached on a");
    on_b.call("UpdateAlias", &json!({"AliasName": "alias/shared", "TargetKeyId": other}))
        .await
        .expect("UpdateAlias");
    eventually!("a after b re-pointed the alias", other, {
        let sealed = encrypt(&mut on_a, "alias/shared").await.expect("Encrypt");
        sealed["KeyId"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or("").to_owned()
    });
    // Scheduled for deletion on a: refused on b.
    on_a.call("ScheduleKeyDeletion", &json!({"KeyId": key, "PendingWindowInDays": 7}))
        .await
        .expect("ScheduleKeyDeletion");
    eventually!(
        "b after a scheduled deletion",
        "KMSInvalidStateException",
        code(encrypt(&mut on_b, &key).await)
    );

    // Each node keeps its own audit chain, and each verifies.
    for data_dir in [&a_dir, &b_dir] {
        let kagi = Kagi::new();
        let run = kagi.run(&["audit", "verify", arg(&data_dir.join("audit"))]);
        assert_eq!(run.code, 0, "{}{}", run.stdout_text(), run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_on_two_nodes_make_one_version_each_time() {
    let Some(pg) = PgCluster::start() else { return };
    let TwoNodes { _dir: _dir_guard, a_dir: _a, b_dir: _b, a, b } = two_nodes(&pg);
    let mut on_a = a.client(HttpVersion::Http1, &ADMIN).await;
    let mut on_b = b.client(HttpVersion::Http1, &ADMIN).await;
    let key = create_key(&mut on_a).await;
    let mut acknowledged = 0;
    for _ in 0..5 {
        let request = json!({"KeyId": key});
        let (first, second) = tokio::join!(
            on_a.call("RotateKeyOnDemand", &request),
            on_b.call("RotateKeyOnDemand", &request)
        );
        for outcome in [code(first), code(second)] {
            match outcome.as_str() {
                "ok" => acknowledged += 1,
                // The other node's rotation committed first: not repeated on top of it.
                "ConflictException" => {}
                other => panic!("a rotation failed with {other}"),
            }
        }
    }
    // Exactly one new version per acknowledged rotation, none lost, none doubled.
    let rotations = on_b.call("ListKeyRotations", &json!({"KeyId": key})).await.expect("list");
    let listed = rotations["Rotations"].as_array().expect("Rotations").len();
    assert_eq!(listed, acknowledged, "{rotations}");
    assert!(acknowledged >= 5, "at least one rotation of each pair lands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_is_carried_out_once_even_when_a_node_dies() {
    let Some(pg) = PgCluster::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| dir.path().join(n)).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // Every node sweeps often, so the sweeper lease (three sweep intervals, at least 2 s)
    // passes on quickly from a node that stopped or died.
    let keystore = "sweep_interval_ms = 200";
    let (key, doomed) = {
        let a = node(&pg, &dirs[0], keystore, &[]);
        let mut on_a = a.client(HttpVersion::Http1, &ADMIN).await;
        let key = create_key(&mut on_a).await;
        let doomed: Vec<String> = {
            let mut keys = Vec::new();
            for _ in 0..3 {
                keys.push(create_key(&mut on_a).await);
            }
            keys
        };
        for id in doomed.iter().chain([&key]) {
            on_a.call("ScheduleKeyDeletion", &json!({"KeyId": id, "PendingWindowInDays": 7}))
                .await
                .expect("ScheduleKeyDeletion");
        }
        // A node stopping cleanly gives the sweeper lease up (it held it: the only node).
        drop(on_a);
        assert!(a.terminate(), "a clean exit");
        (key, doomed)
    };
    let (db, connection) =
        tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let leases = db.query("SELECT holder FROM leases", &[]).await.expect("leases");
    assert!(leases.is_empty(), "the lease was released at shutdown");
    let mut scheduled = std::collections::HashMap::new();
    for id in doomed.iter().chain([&key]) {
        let row =
            db.query_one("SELECT revision FROM keys WHERE id = $1", &[id]).await.expect("row");
        scheduled.insert(id.clone(), row.get::<_, i64>(0));
    }
    for to in &dirs[1..] {
        copy_root(&dirs[0], to);
    }
    // Eight days on, every node sweeps often. The first is killed as soon as it listens: it may
    // hold the sweeper lease, mid-sweep or not; the others take over once its lease runs out.
    let later = (now + 8 * 86_400).to_string();
    let env = [("KAGI_FAKE_NOW", later.as_str())];
    let mut first = node(&pg, &dirs[0], keystore, &env);
    first.kill();
    let b = node(&pg, &dirs[1], keystore, &env);
    let _c = node(&pg, &dirs[2], keystore, &env);
    // The nodes' clocks are 8 days ahead, so a SigV4 client's requests look stale to them:
    // read the keys' state from the database itself.
    for id in doomed.iter().chain([&key]) {
        eventually!("the key deleted", "Deleted", {
            let row = db
                .query_one("SELECT record FROM keys WHERE id = $1", &[id])
                .await
                .expect("the key's row");
            let record: Value = serde_json::from_str(row.get(0)).expect("JSON");
            record["state"].as_str().unwrap_or_default().to_owned()
        });
    }
    drop((b, _c));
    // Carried out once across the cluster: every change bumps a key's revision by one, so a
    // deletion carried out twice would show as two. (The audit trails cannot tell: a node killed
    // between writing its line and committing leaves a success line for a change it never
    // made, as designed: a line is written before its commit.)
    for id in doomed.iter().chain([&key]) {
        let row =
            db.query_one("SELECT revision FROM keys WHERE id = $1", &[id]).await.expect("row");
        let revision: i64 = row.get(0);
        assert_eq!(revision, scheduled[id] + 1, "the deletion of {id} committed once");
        let lines: usize = dirs.iter().map(|d| committed(d, "DeleteKey", id)).sum();
        assert!(lines >= 1, "the deletion of {id} is audited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_fails_changes_fast_and_keeps_loaded_keys_serving() {
    let Some(pg) = PgCluster::start() else { return };
    let TwoNodes { _dir: _dir_guard, a_dir: _a, b_dir: _b, a, b } = two_nodes(&pg);
    let mut on_a = a.client(HttpVersion::Http1, &ADMIN).await;
    let key = create_key(&mut on_a).await;
    // The change feed echoes the creation back to a, which drops the key from its cache
    // then: wait for that, so the key a loads next stays loaded through the outage.
    let admin = a.ready.admin.to_string();
    eventually!("a applied the creation from the change feed", "yes", {
        let metrics = crate::support::http_get(&admin, "/metrics");
        let applied = metrics
            .lines()
            .find_map(|line| line.strip_prefix(r#"kagi_store_changes_applied_total{kind="key"} "#))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if applied >= 1 { "yes" } else { "no" }.to_owned()
    });
    encrypt(&mut on_a, &key).await.expect("loads the key on a");

    // Load throughout: Encrypt with the loaded key on a, counting failures.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // The last failure, for the message if the load stalls.
    let last_error = Arc::new(std::sync::Mutex::new(String::new()));
    let load = {
        let (stop, done, failed) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failed));
        let last_error = Arc::clone(&last_error);
        let mut client = a.client(HttpVersion::Http1, &ADMIN).await;
        let (api, ca_bundle) = (a.ready.api.to_string(), a.ready.ca_bundle.clone());
        let key = key.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match encrypt(&mut client, &key).await {
                    Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                    Err(error) => {
                        *last_error.lock().expect("lock") = code(Err(error));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                // A closed connection is opened again, as any client does.
                if !client.is_open()
                    && let Ok(again) =
                        crate::support::server::client_for(&api, &ca_bundle, &ADMIN).await
                {
                    client = again;
                }
                // A failure can come back without waiting on anything: let the test run.
                tokio::task::yield_now().await;
            }
        })
    };
    let wait_for_load = |from: u64| {
        let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
        let last_error = Arc::clone(&last_error);
        async move {
            let start = Instant::now();
            while done.load(Ordering::SeqCst) < from + 20 {
                assert!(
                    start.elapsed() < DEADLINE,
                    "the load stalled at {} done, {} failed, the last with {}",
                    done.load(Ordering::SeqCst),
                    failed.load(Ordering::SeqCst),
                    last_error.lock().expect("lock")
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_load(0).await;

    pg.stop();
    // Changes fail with a dependency error (each within the 3 s store deadline), on both nodes.
    let mut on_b = b.client(HttpVersion::Http1, &ADMIN).await;
    for client in [&mut on_a, &mut on_b] {
        let outcome = code(client.call("CreateKey", &json!({})).await);
        assert_eq!(outcome, "DependencyTimeoutException");
        let outcome = code(client.call("DisableKey", &json!({"KeyId": key})).await);
        assert_eq!(outcome, "DependencyTimeoutException");
    }
    // The loaded key keeps serving meanwhile.
    wait_for_load(done.load(Ordering::SeqCst)).await;

    pg.start_again();
    // Both nodes recover by themselves.
    for client in [&mut on_a, &mut on_b] {
        eventually!(
            "CreateKey after the database returned",
            "ok",
            code(client.call("CreateKey", &json!({})).await)
        );
    }
    wait_for_load(done.load(Ordering::SeqCst)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "Encrypt with a loaded key never failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_from_one_node_resumes_on_another() {
    let Some(pg) = PgCluster::start() else { return };
    let TwoNodes { _dir: _dir_guard, a_dir: _a, b_dir: _b, a, b } = two_nodes(&pg);
    // Each node certified the shared API key with its own self-signed certificate: trust both.
    let mut roots = rustls::RootCertStore::empty();
    for server in [&a, &b] {
        let pem = std::fs::read(&server.ready.ca_bundle).expect("CA bundle");
        for der in rustls_pemfile_certs(&pem) {
            roots.add(der).expect("root");
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let config = Arc::new(config);
    let request = || {
        http::Request::get("/")
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request")
    };
    let first = crate::proxy::send(&config, a.ready.api, Some("localhost"), request())
        .await
        .expect("first connection");
    assert!(!first.resumed);
    let second = crate::proxy::send(&config, b.ready.api, Some("localhost"), request())
        .await
        .expect("second connection");
    assert!(second.resumed, "a ticket node a issued resumes on node b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_key_rotated_on_one_node_is_taken_up_by_the_other() {
    let Some(pg) = PgCluster::start() else { return };
    let TwoNodes { _dir: _dir_guard, a_dir, b_dir, a, b } = two_nodes(&pg);
    let mut on_a = a.client(HttpVersion::Http2, &ADMIN).await;
    let mut on_b = b.client(HttpVersion::Http2, &ADMIN).await;
    let before = create_key(&mut on_a).await;
    let old_blob = encrypt(&mut on_a, &before).await.expect("encrypt")["CiphertextBlob"].clone();
    let decrypt = |blob: &Value| json!({"CiphertextBlob": blob});
    on_b.call("Decrypt", &decrypt(&old_blob)).await.expect("node b has the key");

    // `kagi root-key rotate` on node a's directory: node a does it, node b follows.
    let rotate = {
        let a_dir = a_dir.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kagi"))
                .arg("--data-dir")
                .arg(&a_dir)
                .args(["root-key", "rotate"])
                .output()
                .expect("kagi runs")
        })
    };
    let rotated = rotate.await.expect("join");
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    assert!(b.log().contains("sealing with its new key"), "{}", b.log());

    // Keys made on either node after the rotation work on both; the old ciphertext too.
    let on_b_key = create_key(&mut on_b).await;
    let b_blob =
        encrypt(&mut on_b, &on_b_key).await.expect("encrypt on b")["CiphertextBlob"].clone();
    on_a.call("Decrypt", &decrypt(&b_blob)).await.expect("a opens b's new key");
    let on_a_key = create_key(&mut on_a).await;
    let a_blob =
        encrypt(&mut on_a, &on_a_key).await.expect("encrypt on a")["CiphertextBlob"].clone();
    on_b.call("Decrypt", &decrypt(&a_blob)).await.expect("b opens a's new key");
    on_b.call("Decrypt", &decrypt(&old_blob)).await.expect("the old ciphertext");

    // Node b restarted with node a's new root files serves everything.
    drop(on_b);
    assert!(b.terminate(), "clean exit");
    copy_root(&a_dir, &b_dir);
    let b = node(&pg, &b_dir, "", &[]);
    let mut on_b = b.client(HttpVersion::Http2, &ADMIN).await;
    for blob in [&old_blob, &a_blob, &b_blob] {
        on_b.call("Decrypt", &decrypt(blob)).await.expect("after the restart");
    }
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).map(|c| c.expect("PEM")).collect()
}

#[test]
fn migrate_moves_a_sqlite_keystore_to_postgres_and_proves_it() {
    let Some(pg) = PgCluster::start() else { return };
    let kagi = Kagi::new();
    let key = kagi.create_key(&[]);
    let signing = kagi.create_key(&["--spec", "ECC_NIST_P256", "--usage", "SIGN_VERIFY"]);
    kagi.ok(&["aliases", "create", "alias/moved", &key]);
    let sealed = kagi.run_with_input(&["encrypt", "--key", "alias/moved", "--base64"], b"before");
    assert_eq!(sealed.code, 0, "{}", sealed.stderr);
    let ciphertext = sealed.stdout_text().trim().to_owned();

    let config = kagi.write(
        "kagi.toml",
        format!(
            "[keystore]\ndata_dir = {:?}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n{}",
            kagi.data_dir().to_str().expect("utf-8"),
            pg.store_table()
        )
        .as_bytes(),
    );
    let run =
        kagi.run(&["migrate", "--from", "sqlite", "--to", "postgres", "--config", arg(&config)]);
    assert_eq!(run.code, 0, "{}{}", run.stdout_text(), run.stderr);
    let report = run.stdout_text();
    assert!(report.contains("2 keys"), "{report}");
    assert!(report.contains("proved"), "{report}");
    // A second migration finds the database full and refuses.
    let again =
        kagi.run(&["migrate", "--from", "sqlite", "--to", "postgres", "--config", arg(&config)]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);
    let _ = signing;

    // A node on the database decrypts what the SQLite keystore encrypted.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let node_dir = tempfile::tempdir().expect("tempdir");
        let data = node_dir.path().join("node");
        copy_root(&kagi.data_dir(), &data);
        let server = node(&pg, &data, "", &[]);
        let mut client = server.client(HttpVersion::Http1, &ADMIN).await;
        let opened = client
            .call("Decrypt", &json!({"CiphertextBlob": ciphertext}))
            .await
            .expect("Decrypt after the migration");
        assert_eq!(opened["Plaintext"], BASE64.encode(b"before"));
        let alias = client.call("DescribeKey", &json!({"KeyId": "alias/moved"})).await;
        assert_eq!(alias.expect("alias")["KeyMetadata"]["KeyId"], key);
    });
}
