//! Root key rotation: every version re-sealed, the old key retired, and each interruption
//! resumed or finished when the keystore opens again.

use std::time::Duration;

use super::*;

fn context() -> EncryptionContext {
    EncryptionContext::from([("tenant".to_owned(), "acme".to_owned())])
}

fn next_file_root() -> NextRoot {
    NextRoot::generate(backend(), &NextRootSource::File).expect("next root").0
}

/// The keystore of `h.dir` opened again from its files (the process restarted), squared with
/// its store; answers whether a rotation is to be resumed.
async fn reopen(h: Harness) -> (Harness, bool) {
    let Harness { ks, clock, dir, .. } = h;
    drop(ks);
    let audit = Arc::new(RecordingSink::default());
    let ks = open_at(dir.path(), &clock, &audit).expect("reopen");
    let resume = ks.reconcile_root(dir.path()).await.expect("reconcile");
    (Harness { ks: Arc::new(ks), clock, audit, dir }, resume)
}

/// Files a data directory holds whose names start with `root.`.
fn root_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("root."))
        .collect();
    names.sort();
    names
}

/// Stages `next` on `h` and records it in the store, as the first step of a rotation does,
/// and stops there (a crash).
async fn stage_only(h: &Harness, next: NextRoot) {
    let ring = h.ks.root();
    let (_next, sealed) = next.stage(backend(), h.dir.path(), &ring.current).expect("stage");
    h.ks.store().set_meta("root_next", Some(sealed)).await.expect("root_next");
}

#[tokio::test]
async fn rotation_reseals_every_version_and_retires_the_old_key() {
    let h = harness();
    let symmetric = h.symmetric().await;
    let before = h.encrypt(&symmetric, b"sealed before", &context()).await;
    h.ks.rotate_key_on_demand(&ctx(), &symmetric).await.expect("rotate material");
    let after = h.encrypt(&symmetric, b"sealed after", &context()).await;
    let hmac = h.create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac).await.record.id;
    let (mac, _) =
        h.ks.generate_mac(&ctx(), &hmac, b"message", MacAlgorithm::HmacSha256).await.expect("mac");
    let external = h.external().await;
    let material = random_bytes(32);
    check_import(&h, &external, &material, ImportType::ExistingKeyMaterial, None)
        .await
        .expect("import");
    let imported = h.encrypt(&external, b"imported", &context()).await;
    let old_key = std::fs::read(h.dir.path().join("root.key")).expect("old root.key");

    let done =
        h.ks.rotate_root(&ctx(), h.dir.path(), next_file_root(), Duration::ZERO)
            .await
            .expect("rotate");
    assert_eq!(done, RootRotation { keys: 3, versions: 4 });
    assert_eq!(root_files(h.dir.path()), ["root.check", "root.key", "root.lineage"]);
    assert_ne!(std::fs::read(h.dir.path().join("root.key")).expect("root.key"), old_key);
    assert!(h.ks.root().previous.is_none(), "the old key is dropped");
    assert!(h.ks.store().meta("root_next").await.expect("meta").is_none());
    let audited = h.audit.events();
    assert!(audited.iter().any(|e| e.operation == "RotateRootKey" && e.error_code.is_none()));

    // Every version in the store opens under the new key alone...
    let ring = h.ks.root();
    for id in [&symmetric, &hmac, &external] {
        for version in h.ks.store().versions(id).await.expect("versions") {
            let aad = Keystore::material_aad(id, version.version);
            ring.current.unseal(backend(), &aad, &version.sealed_material).expect("new key");
        }
    }
    // ... and the keystore opened again from its files serves everything made before.
    let (h, resume) = reopen(h).await;
    assert!(!resume);
    assert_eq!(h.decrypt(&before, &context()).await.expect("v1"), b"sealed before");
    assert_eq!(h.decrypt(&after, &context()).await.expect("v2"), b"sealed after");
    assert_eq!(h.decrypt(&imported, &context()).await.expect("imported"), b"imported");
    h.ks.verify_mac(&ctx(), &hmac, b"message", MacAlgorithm::HmacSha256, &mac)
        .await
        .expect("the MAC still verifies");
    // The fingerprint of imported material survives: the same material is accepted again
    // and other material refused.
    check_import(&h, &external, &material, ImportType::ExistingKeyMaterial, None)
        .await
        .expect("the same material again");
    let other =
        check_import(&h, &external, &random_bytes(32), ImportType::ExistingKeyMaterial, None)
            .await
            .expect_err("other material");
    assert_eq!(other.kind(), ErrorKind::IncorrectKeyMaterial);

    // The old key opens nothing any more.
    let stale = tempfile::tempdir().expect("tempdir");
    std::fs::write(stale.path().join("root.key"), &old_key).expect("old key");
    std::fs::copy(h.dir.path().join("root.check"), stale.path().join("root.check")).expect("copy");
    let refused = RootKey::load(backend(), stale.path(), &RootKeySource::File)
        .expect_err("the old key does not open the new check value");
    assert!(refused.message().contains("does not open"), "{}", refused.message());
}

#[tokio::test]
async fn a_rotation_interrupted_while_resealing_resumes_when_reopened() {
    let h = harness();
    let old = h.symmetric().await;
    let sealed_old = h.encrypt(&old, b"under the old key", &context()).await;
    stage_only(&h, next_file_root()).await;
    // The keystore opened again seals with the new key and opens with both.
    let (h, resume) = reopen(h).await;
    assert!(resume, "a rotation is under way");
    assert!(h.ks.root().previous.is_some());
    let new = h.symmetric().await;
    let sealed_new = h.encrypt(&new, b"under the new key", &context()).await;
    assert_eq!(h.decrypt(&sealed_old, &context()).await.expect("old"), b"under the old key");
    // A backup now would mix root keys: refused until the commit.
    let snapshot_refused = crate::backup::take(
        &crate::backup::Source {
            data_dir: h.dir.path(),
            store: h.ks.store(),
            store_kind: "sqlite",
            partition: &Partition::default(),
            audit_dir: None,
            certificates: false,
        },
        0,
    )
    .await
    .expect_err("no backup mid-rotation");
    assert!(snapshot_refused.to_string().contains("rotation"), "{snapshot_refused}");
    // A second crash, then the resume finishes: only the old key's version is re-sealed.
    let (h, resume) = reopen(h).await;
    assert!(resume);
    let done =
        h.ks.finish_root_rotation(&ctx(), h.dir.path(), Duration::ZERO).await.expect("finish");
    assert_eq!(done, RootRotation { keys: 1, versions: 1 });
    let (h, resume) = reopen(h).await;
    assert!(!resume);
    assert_eq!(h.decrypt(&sealed_old, &context()).await.expect("old"), b"under the old key");
    assert_eq!(h.decrypt(&sealed_new, &context()).await.expect("new"), b"under the new key");
    assert_eq!(root_files(h.dir.path()), ["root.check", "root.key", "root.lineage"]);
}

/// Stages a rotation on `h`, opens it again (resuming), and re-seals `key` under the new root
/// key by hand and records its check value in the store, as the rotation does just before it
/// renames the files; answers the keystore so reopened.
async fn reseal_up_to_the_commit(h: Harness, key: &str) -> Harness {
    let ring = h.ks.root();
    let (next, sealed_next) =
        next_file_root().stage(backend(), h.dir.path(), &ring.current).expect("stage");
    h.ks.store().set_meta("root_next", Some(sealed_next)).await.expect("root_next");
    let (h, resume) = reopen(h).await;
    assert!(resume);
    let ring = h.ks.root();
    let previous = ring.previous.as_ref().expect("previous");
    let mut record = h.ks.store().key(key).await.expect("key").expect("some");
    let mut put_versions = Vec::new();
    for mut version in h.ks.store().versions(key).await.expect("versions") {
        let aad = Keystore::material_aad(key, version.version);
        let material = previous.unseal(backend(), &aad, &version.sealed_material).expect("old");
        version.sealed_material =
            next.seal(backend(), &aad, material.expose_secret()).expect("seal");
        put_versions.push(version);
    }
    let expected_revision = record.revision;
    record.revision += 1;
    let update = KeyUpdate { key: record, expected_revision, put_versions, delete_aliases: false };
    h.ks.store().update_key(update).await.expect("re-seal");
    let check = next.staged_check(backend(), h.dir.path()).expect("check");
    h.ks.store().set_meta("root_check", Some(check)).await.expect("root_check");
    h
}

#[tokio::test]
async fn a_commit_interrupted_before_the_files_is_finished_when_reopened() {
    let h = harness();
    let key = h.symmetric().await;
    let sealed = h.encrypt(&key, b"kept", &context()).await;
    let h = reseal_up_to_the_commit(h, &key).await;
    assert!(root_files(h.dir.path()).contains(&"root.key.next".to_owned()));
    // The files still hold the old key, the store the new key's check value: opening finishes
    // the commit from the store's `root_next`.
    let (h, resume) = reopen(h).await;
    assert!(!resume);
    assert_eq!(root_files(h.dir.path()), ["root.check", "root.key", "root.lineage"]);
    assert!(h.ks.store().meta("root_next").await.expect("meta").is_none());
    assert_eq!(h.decrypt(&sealed, &context()).await.expect("decrypt"), b"kept");
    let (h, _) = reopen(h).await;
    assert_eq!(h.decrypt(&sealed, &context()).await.expect("decrypt"), b"kept");
}

#[tokio::test]
async fn a_commit_interrupted_between_renames_rolls_forward_at_load() {
    let h = harness();
    let key = h.symmetric().await;
    let sealed = h.encrypt(&key, b"kept", &context()).await;
    let h = reseal_up_to_the_commit(h, &key).await;
    // The commit mark is written and only the key file moved.
    std::fs::write(h.dir.path().join("root.commit"), b"").expect("mark");
    std::fs::rename(h.dir.path().join("root.key.next"), h.dir.path().join("root.key"))
        .expect("one rename");
    let (h, resume) = reopen(h).await;
    assert!(!resume);
    assert_eq!(root_files(h.dir.path()), ["root.check", "root.key", "root.lineage"]);
    assert!(h.ks.store().meta("root_next").await.expect("meta").is_none());
    assert_eq!(h.decrypt(&sealed, &context()).await.expect("decrypt"), b"kept");
}

#[tokio::test]
async fn the_new_key_must_be_of_the_current_kind() {
    let h = harness();
    let (next, shares) =
        NextRoot::generate(backend(), &NextRootSource::Shares { shares: 3, threshold: 2 })
            .expect("generate");
    assert_eq!(shares.len(), 3);
    let refused =
        h.ks.rotate_root(&ctx(), h.dir.path(), next, Duration::ZERO)
            .await
            .expect_err("another kind");
    assert!(refused.message().contains("same kind"), "{}", refused.message());
    assert_eq!(root_files(h.dir.path()), ["root.check", "root.key"]);
    assert!(h.ks.store().meta("root_next").await.expect("meta").is_none());
}

#[tokio::test]
async fn another_process_takes_up_the_new_key_while_a_rotation_runs() {
    if test_store(tempfile::tempdir().expect("tempdir").path()).is_some() {
        // Two keystores on one SQLite file: the PostgreSQL suite covers nodes in tests/it.
        return;
    }
    let h = harness();
    let clock = Arc::clone(&h.clock);
    let other_audit = Arc::new(RecordingSink::default());
    let other = open_at(h.dir.path(), &clock, &other_audit).expect("a second process");
    // The first process stages a rotation and makes a key sealed under the new root key.
    stage_only(&h, next_file_root()).await;
    assert!(h.ks.reconcile_root(h.dir.path()).await.expect("reconcile"));
    let key = h.symmetric().await;
    let sealed = h.encrypt(&key, b"new", &context()).await;
    // The second, which holds only the old key, opens it by taking up the new one.
    let plaintext = other.decrypt(&ctx(), &sealed, &context(), None, None).await.expect("decrypt");
    assert_eq!(plaintext.plaintext.expose_secret(), b"new");
    assert!(other.root().previous.is_some());
}
