//! `kagi root-key rotate` (issue 8, root key custody): while `kagi serve` answers a stream of
//! requests, through its control socket; and directly on a passphrase-derived and a split root
//! key. Old ciphertext decrypts afterwards, also after a restart, and the old key opens nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kagi::api::client::{Client, HttpVersion};
use serde_json::{Value, json};

use crate::support::server::{ADMIN, Server};
use crate::support::{Kagi, Run, arg};

const DEADLINE: Duration = Duration::from_secs(60);
/// Exit code of a keystore that cannot be opened (`exit_code::STORAGE`).
const STORAGE: i32 = 7;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

async fn call(client: &mut Client, operation: &str, input: Value) -> Value {
    client.call(operation, &input).await.unwrap_or_else(|e| panic!("{operation} failed: {e:?}"))
}

/// Polls until `condition` holds, failing after [`DEADLINE`].
fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Files of the data directory whose names start with `root.`.
fn root_files(kagi: &Kagi) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(kagi.data_dir())
        .expect("data dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("root."))
        .collect();
    names.sort();
    names
}

#[test]
fn the_root_key_rotates_while_the_server_serves() {
    let kagi = Kagi::uninitialised();
    let server = Server::start_on(&kagi.data_dir(), &[ADMIN], "");
    let rt = runtime();
    let (key, blob, hmac, mac) = rt.block_on(async {
        let mut admin = server.client(HttpVersion::Http2, &ADMIN).await;
        let key = call(&mut admin, "CreateKey", json!({})).await["KeyMetadata"]["KeyId"].clone();
        call(&mut admin, "RotateKeyOnDemand", json!({"KeyId": key})).await;
        let blob = call(
            &mut admin,
            "Encrypt",
            json!({"KeyId": key, "Plaintext": BASE64.encode(b"before")}),
        )
        .await["CiphertextBlob"]
            .clone();
        let hmac = call(
            &mut admin,
            "CreateKey",
            json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
        )
        .await["KeyMetadata"]["KeyId"]
            .clone();
        let mac = call(
            &mut admin,
            "GenerateMac",
            json!({"KeyId": hmac, "Message": BASE64.encode(b"m"), "MacAlgorithm": "HMAC_SHA_256"}),
        )
        .await["Mac"]
            .clone();
        (key, blob, hmac, mac)
    });
    let old_key = std::fs::read(kagi.data_dir().join("root.key")).expect("root.key");

    // A client encrypts and creates keys throughout: every call must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // The client's connection lives on the runtime that made it: both go to the thread.
    let worker_runtime = runtime();
    let mut client = worker_runtime.block_on(server.client(HttpVersion::Http1, &ADMIN));
    let worker = {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        std::thread::spawn(move || {
            worker_runtime.block_on(async {
                let mut blobs = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let input = json!({"KeyId": key, "Plaintext": BASE64.encode(b"during")});
                    blobs.push(call(&mut client, "Encrypt", input).await["CiphertextBlob"].clone());
                    call(&mut client, "CreateKey", json!({})).await;
                    done.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
                blobs
            })
        })
    };
    wait_for("requests before the rotation", || done.load(Ordering::SeqCst) >= 5);
    let rotated = kagi.ok(&["--output", "json", "root-key", "rotate"]).json();
    assert!(rotated["ResealedVersions"].as_u64().expect("count") >= 4, "{rotated}");
    let after = done.load(Ordering::SeqCst);
    wait_for("requests after the rotation", || done.load(Ordering::SeqCst) >= after + 5);
    stop.store(true, Ordering::SeqCst);
    let during = worker.join().expect("no request failed");
    assert_eq!(root_files(&kagi), ["root.check", "root.key", "root.lineage"]);
    assert_ne!(std::fs::read(kagi.data_dir().join("root.key")).expect("root.key"), old_key);
    assert!(server.log().contains("root key rotated"), "{}", server.log());

    // A server started again on the new root key serves everything made before and during.
    assert!(server.terminate(), "clean exit");
    let server = Server::start_on(&kagi.data_dir(), &[ADMIN], "");
    rt.block_on(async {
        let mut admin = server.client(HttpVersion::Http2, &ADMIN).await;
        let plain =
            call(&mut admin, "Decrypt", json!({"CiphertextBlob": blob})).await["Plaintext"].clone();
        assert_eq!(plain, BASE64.encode(b"before"));
        for blob in during.iter().step_by(7) {
            let plain = call(&mut admin, "Decrypt", json!({"CiphertextBlob": blob})).await;
            assert_eq!(plain["Plaintext"], BASE64.encode(b"during"));
        }
        let verified = call(
            &mut admin,
            "VerifyMac",
            json!({"KeyId": hmac, "Message": BASE64.encode(b"m"), "Mac": mac, "MacAlgorithm": "HMAC_SHA_256"}),
        )
        .await;
        assert_eq!(verified["MacValid"], true);
    });
    drop(server);

    // The old root key opens nothing: it does not open the new check value.
    std::fs::write(kagi.data_dir().join("root.key"), &old_key).expect("old key back");
    let refused = kagi.fails(&["keys", "list"], STORAGE);
    assert!(refused.stderr.contains("does not open"), "{}", refused.stderr);
    let audit = kagi.ok(&["audit", "verify"]);
    assert_eq!(audit.code, 0);
}

fn with_env(kagi: &Kagi, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Run {
    kagi.run_with_env(args, stdin, env)
}

#[test]
fn a_passphrase_root_key_rotates_to_a_new_passphrase() {
    let old = [("KAGI_OLD", "correct horse battery staple")];
    let both = [("KAGI_OLD", "correct horse battery staple"), ("KAGI_NEW", "another passphrase")];
    let new = [("KAGI_NEW", "another passphrase")];
    let kagi = Kagi::uninitialised();
    let on_old = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--root-passphrase-env", "KAGI_OLD"];
        all.extend_from_slice(args);
        with_env(&kagi, &all, stdin, &old)
    };
    assert_eq!(on_old(&["init"], b"").code, 0);
    let key = on_old(&["--output", "json", "keys", "create"], b"").json()["KeyId"]
        .as_str()
        .expect("KeyId")
        .to_owned();
    let blob = on_old(&["encrypt", "--key", &key], b"secret");
    assert_eq!(blob.code, 0, "{}", blob.stderr);
    // Without the new passphrase, or with the same variable, nothing happens.
    let missing = on_old(&["root-key", "rotate"], b"");
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("--new-passphrase-env"), "{}", missing.stderr);
    let rotate = [
        "--root-passphrase-env",
        "KAGI_OLD",
        "root-key",
        "rotate",
        "--new-passphrase-env",
        "KAGI_NEW",
    ];
    let rotated = with_env(&kagi, &rotate, b"", &both);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    assert!(rotated.stdout_text().contains("KAGI_NEW"), "{}", rotated.stdout_text());
    assert_eq!(root_files(&kagi), ["root.check", "root.lineage", "root.salt"]);
    // The new passphrase opens the keystore and decrypts; the old one is refused.
    let decrypted =
        with_env(&kagi, &["--root-passphrase-env", "KAGI_NEW", "decrypt"], &blob.stdout, &new);
    assert_eq!(decrypted.code, 0, "{}", decrypted.stderr);
    assert_eq!(decrypted.stdout, b"secret");
    let refused = on_old(&["decrypt"], &blob.stdout);
    assert_eq!(refused.code, STORAGE, "{}", refused.stderr);
}

#[test]
fn a_split_root_key_rotates_to_new_shares() {
    let kagi = Kagi::uninitialised();
    let old_dir = kagi.path("old-shares");
    kagi.ok(&["init", "--shares", "3", "--threshold", "2", "--shares-dir", arg(&old_dir)]);
    let (old_1, old_3) = (old_dir.join("share-1.txt"), old_dir.join("share-3.txt"));
    let with_old = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--share-file", arg(&old_1), "--share-file", arg(&old_3)];
        all.extend_from_slice(args);
        kagi.run_with_input(&all, stdin)
    };
    let key = with_old(&["--output", "json", "keys", "create"], b"").json()["KeyId"]
        .as_str()
        .expect("KeyId")
        .to_owned();
    let blob = with_old(&["encrypt", "--key", &key], b"split");
    assert_eq!(blob.code, 0, "{}", blob.stderr);
    let new_dir = kagi.path("new-shares");
    let rotated = with_old(
        &["root-key", "rotate", "--shares", "4", "--threshold", "3", "--shares-dir", arg(&new_dir)],
        b"",
    );
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    assert_eq!(root_files(&kagi), ["root.check", "root.lineage", "root.shares"]);
    let new: Vec<_> = [4, 2, 1].map(|i| new_dir.join(format!("share-{i}.txt"))).into();
    let decrypted = kagi.run_with_input(
        &[
            "--share-file",
            arg(&new[0]),
            "--share-file",
            arg(&new[1]),
            "--share-file",
            arg(&new[2]),
            "decrypt",
        ],
        &blob.stdout,
    );
    assert_eq!(decrypted.code, 0, "{}", decrypted.stderr);
    assert_eq!(decrypted.stdout, b"split");
    // The old shares belong to another split now.
    let refused = with_old(&["decrypt"], &blob.stdout);
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(refused.stderr.contains("set"), "{}", refused.stderr);
}
