//! `kagi backup` while `kagi serve` answers a stream of requests, `kagi backup verify`, and
//! `kagi restore` on a fresh machine: the old ciphertext decrypts on a server started there, and
//! the alias, grant and key policy work as before. A restore under another root key, and a
//! backup with one byte changed, are refused.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kagi::api::client::{CallError, Client, HttpVersion};
use serde_json::{Value, json};

use crate::support::server::{ADMIN, APP, Server};
use crate::support::{Kagi, Run, arg};

const DEADLINE: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

async fn call(client: &mut Client, operation: &str, input: Value) -> Value {
    client.call(operation, &input).await.unwrap_or_else(|e| panic!("{operation} failed: {e:?}"))
}

fn user_arn(name: &str) -> String {
    format!("arn:aws:iam::111122223333:user/{name}")
}

/// What the source keystore held before its backup, to find again after the restore.
struct Before {
    symmetric: String,
    signer: String,
    hmac: String,
    policy: String,
    grant_id: String,
    blob: Value,
    signature: Value,
    mac: Value,
}

const CONTEXT: &str = "orders";
const PLAINTEXT: &[u8] = b"encrypted before the backup";
const MESSAGE: &[u8] = b"signed and MAC'd before the backup";

/// Keys (symmetric, ECC signing, HMAC), an alias, a policy that lets only the admin in, a
/// grant that lets `app` decrypt, and a ciphertext, signature and MAC made with them.
async fn populate(server: &Server) -> Before {
    let mut admin = server.client(HttpVersion::Http2, &ADMIN).await;
    let symmetric = create_key(&mut admin, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let signer = create_key(&mut admin, "ECC_NIST_P256", "SIGN_VERIFY").await;
    let hmac = create_key(&mut admin, "HMAC_256", "GENERATE_VERIFY_MAC").await;
    call(&mut admin, "CreateAlias", json!({"AliasName": "alias/orders", "TargetKeyId": symmetric}))
        .await;
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "admin only",
            "Effect": "Allow",
            "Principal": {"AWS": user_arn("admin")},
            "Action": "kms:*",
            "Resource": "*",
        }],
    })
    .to_string();
    call(&mut admin, "PutKeyPolicy", json!({"KeyId": symmetric, "Policy": policy})).await;
    let grant = call(
        &mut admin,
        "CreateGrant",
        json!({"KeyId": symmetric, "GranteePrincipal": user_arn("app"), "Operations": ["Decrypt"]}),
    )
    .await;
    let context = json!({"tenant": CONTEXT});
    let encrypted = call(
        &mut admin,
        "Encrypt",
        json!({"KeyId": "alias/orders", "Plaintext": BASE64.encode(PLAINTEXT), "EncryptionContext": context}),
    )
    .await;
    let signed = call(
        &mut admin,
        "Sign",
        json!({"KeyId": signer, "Message": BASE64.encode(MESSAGE), "SigningAlgorithm": "ECDSA_SHA_256"}),
    )
    .await;
    let mac = call(
        &mut admin,
        "GenerateMac",
        json!({"KeyId": hmac, "Message": BASE64.encode(MESSAGE), "MacAlgorithm": "HMAC_SHA_256"}),
    )
    .await;
    Before {
        symmetric,
        signer,
        hmac,
        policy,
        grant_id: grant["GrantId"].as_str().expect("GrantId").to_owned(),
        blob: encrypted["CiphertextBlob"].clone(),
        signature: signed["Signature"].clone(),
        mac: mac["Mac"].clone(),
    }
}

async fn create_key(client: &mut Client, spec: &str, usage: &str) -> String {
    let created = call(client, "CreateKey", json!({"KeySpec": spec, "KeyUsage": usage})).await;
    created["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned()
}

/// Encrypts under `key` on its own connection until `stop` is set, counting what succeeded.
fn encrypt_loop(
    server: &Server,
    key: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let runtime = runtime();
    let mut client = runtime.block_on(server.client(HttpVersion::Http1, &ADMIN));
    std::thread::spawn(move || {
        runtime.block_on(async {
            while !stop.load(Ordering::SeqCst) {
                let input = json!({"KeyId": key, "Plaintext": BASE64.encode(b"load")});
                call(&mut client, "Encrypt", input).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    })
}

/// Polls until `condition` holds, failing after [`DEADLINE`].
fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks on a server started on the restored directory that everything came back and works.
async fn check_restored(server: &Server, before: &Before) {
    let mut admin = server.client(HttpVersion::Http2, &ADMIN).await;
    let context = json!({"tenant": CONTEXT});
    let decrypted = call(
        &mut admin,
        "Decrypt",
        json!({"CiphertextBlob": before.blob, "EncryptionContext": context}),
    )
    .await;
    assert_eq!(decrypted["Plaintext"], BASE64.encode(PLAINTEXT), "the old ciphertext decrypts");
    let aliases = call(&mut admin, "ListAliases", json!({"KeyId": before.symmetric})).await;
    assert_eq!(aliases["Aliases"][0]["AliasName"], "alias/orders");
    let policy = call(&mut admin, "GetKeyPolicy", json!({"KeyId": before.symmetric})).await;
    assert_eq!(policy["Policy"], before.policy);
    let grants = call(&mut admin, "ListGrants", json!({"KeyId": before.symmetric})).await;
    assert_eq!(grants["Grants"][0]["GrantId"], before.grant_id.as_str());
    let verified = call(
        &mut admin,
        "Verify",
        json!({"KeyId": before.signer, "Message": BASE64.encode(MESSAGE), "Signature": before.signature, "SigningAlgorithm": "ECDSA_SHA_256"}),
    )
    .await;
    assert_eq!(verified["SignatureValid"], true);
    let mac = call(
        &mut admin,
        "VerifyMac",
        json!({"KeyId": before.hmac, "Message": BASE64.encode(MESSAGE), "Mac": before.mac, "MacAlgorithm": "HMAC_SHA_256"}),
    )
    .await;
    assert_eq!(mac["MacValid"], true);
    // The grant lets `app` decrypt; the policy still keeps it from encrypting.
    let mut app = server.client(HttpVersion::Http2, &APP).await;
    let decrypted = call(
        &mut app,
        "Decrypt",
        json!({"CiphertextBlob": before.blob, "EncryptionContext": context}),
    )
    .await;
    assert_eq!(decrypted["Plaintext"], BASE64.encode(PLAINTEXT));
    let refused = app
        .call("Encrypt", &json!({"KeyId": before.symmetric, "Plaintext": BASE64.encode(b"x")}))
        .await;
    match refused {
        Err(CallError::Api(error)) => assert_eq!(error.code_name, "AccessDeniedException"),
        other => panic!("the restored policy should refuse app's Encrypt: {other:?}"),
    }
}

fn restored_machine(source: &Path) -> Kagi {
    let machine = Kagi::uninitialised();
    std::fs::create_dir(machine.data_dir()).expect("data dir");
    std::fs::copy(source.join("root.key"), machine.data_dir().join("root.key")).expect("root key");
    machine
}

#[test]
fn a_backup_taken_while_serving_restores_on_a_fresh_machine() {
    let source = Kagi::uninitialised();
    let server = Server::start_on(&source.data_dir(), &[ADMIN, APP], "");
    let before = runtime().block_on(populate(&server));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load =
        encrypt_loop(&server, before.symmetric.clone(), Arc::clone(&stop), Arc::clone(&done));
    wait_for("the load to start", || done.load(Ordering::SeqCst) > 0);
    let file = source.path("kagi.backup");
    let taken = source.ok(&["--output", "json", "backup", "--out", arg(&file)]).json();
    let during = done.load(Ordering::SeqCst);
    // The server kept answering after the backup.
    wait_for("more requests after the backup", || done.load(Ordering::SeqCst) > during + 3);
    stop.store(true, Ordering::SeqCst);
    load.join().expect("the load ran without failures");
    assert_eq!(
        taken["Counts"],
        json!({"keys": 4, "versions": 4, "aliases": 2, "import_tokens": 0, "certificates": 1})
    );
    assert!(taken["AuditHead"]["seq"].as_u64().expect("audit head") > 0);
    // Verified with the root key while the server runs, and again once it stopped.
    source.ok(&["backup", "verify", arg(&file)]);
    assert!(server.terminate(), "the server stops cleanly");
    let verified = source.ok(&["--output", "json", "backup", "verify", arg(&file)]).json();
    assert_eq!(verified["RootKeyChecked"], true);
    assert_eq!(verified["VersionsOpened"], 4);

    let machine = restored_machine(&source.data_dir());
    let restored = machine.ok(&["--output", "json", "restore", arg(&file)]).json();
    assert_eq!(restored["Counts"], taken["Counts"]);
    assert_eq!(restored["Proof"]["Unsealed"], 4);
    // A restore into it again is refused: it holds keys now.
    let again = machine.fails(&["restore", arg(&file)], 7);
    assert!(again.stderr.contains("already holds 4 key"), "{}", again.stderr);
    let server = Server::start_on(&machine.data_dir(), &[ADMIN, APP], "");
    runtime().block_on(check_restored(&server, &before));
}

#[test]
fn a_restore_under_another_root_key_is_refused() {
    let source = Kagi::new();
    source.create_key(&[]);
    let file = source.path("kagi.backup");
    source.ok(&["backup", "--out", arg(&file)]);
    // A keystore of its own root key.
    let other = Kagi::new();
    let refused = other.fails(&["restore", arg(&file)], 7);
    assert!(refused.stderr.contains("another root key"), "{}", refused.stderr);
    assert!(
        other.ok(&["--output", "json", "keys", "list"]).json()["Keys"]
            .as_array()
            .expect("Keys")
            .is_empty()
    );
    // A new machine given the wrong root key file: nothing is written.
    let machine = Kagi::uninitialised();
    std::fs::create_dir(machine.data_dir()).expect("data dir");
    std::fs::write(machine.data_dir().join("root.key"), [7u8; 32]).expect("root key");
    let refused = machine.fails(&["restore", arg(&file)], 7);
    assert!(refused.stderr.contains("not the key the backup was made under"), "{}", refused.stderr);
    assert!(!machine.data_dir().join("root.check").exists());
    assert!(!machine.data_dir().join("keystore.db").exists());
    // Verifying against another keystore's root key says so too.
    let refused = other.fails(&["backup", "verify", arg(&file)], 7);
    assert!(refused.stderr.contains("another root key"), "{}", refused.stderr);
}

#[test]
fn a_backup_with_one_byte_changed_fails_verify_and_restore() {
    let source = Kagi::new();
    let key = source.create_key(&[]);
    source.ok(&["aliases", "create", "alias/x", &key]);
    let file = source.path("kagi.backup");
    source.ok(&["backup", "--out", arg(&file)]);
    let bytes = std::fs::read(&file).expect("backup");
    for at in [10, bytes.len() / 2, bytes.len() - 3] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x20;
        let tampered = source.write("tampered.backup", &damaged);
        let refused = source.fails(&["backup", "verify", arg(&tampered)], 5);
        assert!(refused.stderr.contains("damaged"), "{}", refused.stderr);
        let machine = restored_machine(&source.data_dir());
        machine.fails(&["restore", arg(&tampered)], 5);
        assert!(!machine.data_dir().join("keystore.db").exists(), "nothing restored");
    }
    let truncated = source.write("truncated.backup", &bytes[..bytes.len() - 1]);
    source.fails(&["backup", "verify", arg(&truncated)], 5);
}

/// Runs `kagi` with its root key derived from `passphrase`.
fn with_passphrase(kagi: &Kagi, args: &[&str], stdin: &[u8], passphrase: &str) -> Run {
    let mut all = vec!["--root-passphrase-env", "KAGI_TEST_ROOT_PASSPHRASE"];
    all.extend_from_slice(args);
    kagi.run_with_env(&all, stdin, &[("KAGI_TEST_ROOT_PASSPHRASE", passphrase)])
}

#[test]
fn a_passphrase_keystore_restores_with_the_passphrase_alone() {
    const PASSPHRASE: &str = "correct horse battery staple";
    let source = Kagi::uninitialised();
    assert_eq!(with_passphrase(&source, &["init"], b"", PASSPHRASE).code, 0);
    let created =
        with_passphrase(&source, &["--output", "json", "keys", "create"], b"", PASSPHRASE);
    let key_id = created.json()["KeyId"].as_str().expect("KeyId").to_owned();
    let blob = with_passphrase(&source, &["encrypt", "--key", &key_id], b"secret", PASSPHRASE);
    assert_eq!(blob.code, 0, "{}", blob.stderr);
    let file = source.path("kagi.backup");
    let backup = with_passphrase(&source, &["backup", "--out", arg(&file)], b"", PASSPHRASE);
    assert_eq!(backup.code, 0, "{}", backup.stderr);
    // The new machine has nothing but the passphrase: the salt comes from the backup.
    let machine = Kagi::uninitialised();
    let restored = with_passphrase(&machine, &["restore", arg(&file)], b"", PASSPHRASE);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    let decrypted = with_passphrase(&machine, &["decrypt"], &blob.stdout, PASSPHRASE);
    assert_eq!(decrypted.code, 0, "{}", decrypted.stderr);
    assert_eq!(decrypted.stdout, b"secret");
    // Another passphrase is refused, and leaves nothing behind.
    let elsewhere = Kagi::uninitialised();
    let refused = with_passphrase(&elsewhere, &["restore", arg(&file)], b"", "wrong");
    assert_eq!(refused.code, 7, "{}", refused.stderr);
    assert!(!elsewhere.data_dir().join("root.check").exists());
}

#[test]
fn a_split_root_key_keystore_restores_with_its_shares() {
    let source = Kagi::uninitialised();
    let shares_dir = source.path("shares");
    source.ok(&["init", "--shares", "3", "--threshold", "2", "--shares-dir", arg(&shares_dir)]);
    let share = |i: u32| shares_dir.join(format!("share-{i}.txt"));
    let (one, two, three) = (share(1), share(2), share(3));
    let with = |kagi: &Kagi, shares: [&Path; 2], args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--share-file", arg(shares[0]), "--share-file", arg(shares[1])];
        all.extend_from_slice(args);
        kagi.run_with_input(&all, stdin)
    };
    let created = with(&source, [&one, &two], &["--output", "json", "keys", "create"], b"");
    let key_id = created.json()["KeyId"].as_str().expect("KeyId").to_owned();
    let blob = with(&source, [&one, &two], &["encrypt", "--key", &key_id], b"split secret");
    assert_eq!(blob.code, 0, "{}", blob.stderr);
    let file = source.path("kagi.backup");
    let backup = with(&source, [&one, &three], &["backup", "--out", arg(&file)], b"");
    assert_eq!(backup.code, 0, "{}", backup.stderr);
    let verified = with(&source, [&two, &three], &["backup", "verify", arg(&file)], b"");
    assert_eq!(verified.code, 0, "{}", verified.stderr);

    // The new machine has nothing but two shares: the split comes from the backup.
    let machine = Kagi::uninitialised();
    let restored = with(&machine, [&two, &three], &["restore", arg(&file)], b"");
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert!(machine.data_dir().join("root.shares").exists());
    assert!(!machine.data_dir().join("root.key").exists(), "the key is still written nowhere");
    let decrypted = with(&machine, [&three, &one], &["decrypt"], &blob.stdout);
    assert_eq!(decrypted.code, 0, "{}", decrypted.stderr);
    assert_eq!(decrypted.stdout, b"split secret");
    // Another keystore's shares are refused and leave nothing behind.
    let other = Kagi::uninitialised();
    let other_dir = other.path("shares");
    other.ok(&["init", "--shares", "2", "--threshold", "2", "--shares-dir", arg(&other_dir)]);
    let (x, y) = (other_dir.join("share-1.txt"), other_dir.join("share-2.txt"));
    let elsewhere = Kagi::uninitialised();
    let refused = with(&elsewhere, [&x, &y], &["restore", arg(&file)], b"");
    assert_eq!(refused.code, 7, "{}", refused.stderr);
    assert!(!elsewhere.data_dir().join("root.check").exists());
}
