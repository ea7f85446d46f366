//! Unit tests of backups: the file round-trips, any damage is refused, inconsistencies are named,
//! the root key is checked, and a restore proves it lost nothing (and a lossy copy is caught).

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::audit::{AuditConfig, FileSink, NullSink};
use crate::crypto::{BackendKind, CryptoBackend};
use crate::keystore::clock::ManualClock;
use crate::keystore::store::StoreSettings;
use crate::keystore::{
    CreateKeyRequest, GrantOperation, KeySpec, KeyUsage, NewGrant, Origin, RootKeySource,
};

const T0: i64 = 1_800_000_000;

fn backend() -> &'static dyn CryptoBackend {
    BackendKind::AwsLc.backend()
}

fn ctx() -> OpContext {
    OpContext { principal: "test".into(), source: "unit".into(), request_id: "r".into() }
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(ManualClock::new(T0))
}

/// A keystore in a temporary directory, with its audit trail when `trail` is set.
fn keystore(trail: bool) -> (tempfile::TempDir, Keystore) {
    let dir = tempfile::tempdir().expect("tempdir");
    Keystore::init(backend(), dir.path(), &RootKeySource::File).expect("init");
    let audit: Arc<dyn AuditSink> = if trail {
        Arc::new(FileSink::open(dir.path(), &AuditConfig::default(), backend()).expect("trail"))
    } else {
        Arc::new(NullSink)
    };
    let keystore = Keystore::open(
        backend(),
        dir.path(),
        &RootKeySource::File,
        clock(),
        audit,
        Partition::default(),
    )
    .expect("open");
    (dir, keystore)
}

/// Keys of every usage, a rotated key, an alias, a grant, a tag, a disabled key, a key waiting
/// for its material and an import token.
async fn populate(keystore: &Keystore) -> String {
    let create = |spec, usage| async move {
        keystore
            .create_key(
                &ctx(),
                CreateKeyRequest {
                    spec,
                    usage: Some(usage),
                    tags: [("team".to_owned(), "payments".to_owned())].into(),
                    ..CreateKeyRequest::default()
                },
            )
            .await
            .expect("create_key")
            .record
            .id
    };
    let symmetric = create(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await;
    create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac).await;
    create(KeySpec::EccNistP256, KeyUsage::SignVerify).await;
    create(KeySpec::EccNistP256, KeyUsage::KeyAgreement).await;
    create(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await;
    let disabled = create(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await;
    keystore.disable_key(&ctx(), &disabled).await.expect("disable");
    keystore.rotate_key_on_demand(&ctx(), &symmetric).await.expect("rotate");
    keystore.create_alias(&ctx(), "alias/app", &symmetric).await.expect("alias");
    keystore
        .create_grant(
            &ctx(),
            &symmetric,
            NewGrant {
                grantee_principal: "arn:aws:iam::111122223333:role/app".into(),
                retiring_principal: None,
                operations: vec![GrantOperation::Decrypt],
                constraints: None,
                name: Some("app".into()),
                issuing_principal: "arn:aws:iam::111122223333:root".into(),
            },
        )
        .await
        .expect("grant");
    let external = keystore
        .create_key(
            &ctx(),
            CreateKeyRequest { origin: Origin::External, ..CreateKeyRequest::default() },
        )
        .await
        .expect("external key")
        .record
        .id;
    keystore
        .get_parameters_for_import(
            &ctx(),
            &external,
            crate::keystore::WrappingAlgorithm::RsaAesKeyWrapSha256,
            crate::crypto::KeyPairSpec::Rsa2048,
        )
        .await
        .expect("import parameters");
    symmetric
}

async fn take_backup(dir: &Path, keystore: &Keystore) -> Backup {
    let audit_dir = dir.join("audit");
    let source = Source {
        store: keystore.store(),
        store_kind: "sqlite",
        data_dir: dir,
        audit_dir: Some(&audit_dir),
        partition: &Partition::default(),
        certificates: true,
    };
    take(&source, T0).await.expect("backup")
}

/// A populated keystore and the bytes of its backup.
async fn fixture() -> (tempfile::TempDir, Keystore, Vec<u8>) {
    let (dir, keystore) = keystore(false);
    populate(&keystore).await;
    let backup = take_backup(dir.path(), &keystore).await;
    let bytes = encode(&backup).expect("encode");
    (dir, keystore, bytes)
}

/// A change made to a decoded backup.
type Change = Box<dyn FnOnce(&mut Backup)>;

/// Rewrites a backup through `change` and encodes it again with a valid checksum.
fn reencoded(bytes: &[u8], change: impl FnOnce(&mut Backup)) -> Vec<u8> {
    let mut backup = decode(bytes).expect("decode");
    change(&mut backup);
    backup.header.counts = backup.counts();
    encode(&backup).expect("encode")
}

fn root_of(dir: &Path) -> RootKey {
    RootKey::load(backend(), dir, &RootKeySource::File).expect("root key")
}

#[tokio::test]
async fn a_backup_round_trips_every_record() {
    let (dir, keystore, bytes) = fixture().await;
    let backup = decode(&bytes).expect("decode");
    let stored = keystore.store().snapshot().await.expect("snapshot");
    assert!(compare(&stored, &backup.snapshot).is_empty());
    assert_eq!(
        backup.header.counts,
        Counts { keys: 7, versions: 7, aliases: 1, import_tokens: 1, certificates: 0 }
    );
    assert_eq!(backup.header.root_check, RootKey::stored_check(dir.path()).expect("check"));
    assert_eq!(backup.header.root_salt, None);
    assert_eq!(backup.header.format_version, FORMAT_VERSION);
    assert_eq!(backup.header.created, T0);
    // Grants, tags and policies live in the key records.
    let symmetric = backup.snapshot.keys.iter().find(|k| !k.grants.is_empty()).expect("grant");
    assert_eq!(symmetric.tags["team"], "payments");
    assert!(symmetric.policy.contains("Statement"));
    // Encoding is deterministic: the same backup gives the same bytes.
    assert_eq!(encode(&backup).expect("encode"), bytes);
}

#[tokio::test]
async fn the_header_records_the_audit_chain_head_after_the_snapshot() {
    let (dir, keystore) = keystore(true);
    populate(&keystore).await;
    let backup = take_backup(dir.path(), &keystore).await;
    let head = backup.header.audit_head.expect("a chain head");
    let verified = crate::audit::verify::verify(&dir.path().join("audit")).expect("trail");
    assert_eq!(head, verified.head);
    assert!(head.seq >= 10, "every change is audited: {head:?}");
}

#[tokio::test]
async fn every_flipped_byte_is_refused() {
    let (_dir, _keystore, bytes) = fixture().await;
    for index in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[index] ^= 0x01;
        match decode(&damaged) {
            Err(BackupError::Corrupt(_)) => {}
            other => panic!("byte {index} flipped: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_truncated_backup_is_refused() {
    let (_dir, _keystore, bytes) = fixture().await;
    for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        assert!(
            matches!(decode(&bytes[..len]), Err(BackupError::Corrupt(_))),
            "truncated to {len} bytes"
        );
    }
    let mut extended = bytes;
    extended.extend_from_slice(b"{\"alias\":{}}\n");
    assert!(matches!(decode(&extended), Err(BackupError::Corrupt(_))), "a line after the trailer");
}

#[tokio::test]
async fn inconsistent_records_are_named() {
    let (_dir, _keystore, bytes) = fixture().await;
    let cases: Vec<(&str, Change)> = vec![
        (
            "alias of a missing key",
            Box::new(|b| {
                b.snapshot.aliases[0].key_id = "00000000-0000-4000-8000-000000000000".into()
            }),
        ),
        ("version of a missing key", Box::new(|b| b.snapshot.versions[0].0 = "gone".into())),
        ("current version missing", Box::new(|b| b.snapshot.keys[0].current_version = 9)),
        ("duplicate key", Box::new(|b| b.snapshot.keys.push(b.snapshot.keys[0].clone()))),
        (
            "duplicate version",
            Box::new(|b| b.snapshot.versions.push(b.snapshot.versions[0].clone())),
        ),
        (
            "certificate of a missing key",
            Box::new(|b| {
                b.certificates.push(StoredCert {
                    meta: CertMeta {
                        name: "web".into(),
                        kind: crate::tls::CertKind::Issued,
                        key_id: "00000000-0000-4000-8000-000000000000".into(),
                        key_alias: None,
                        ca: None,
                        issuer: "CN=web".into(),
                        dns_names: vec!["web.example".into()],
                        ip_addresses: Vec::new(),
                        not_before: T0,
                        not_after: T0 + 86_400,
                    },
                    chain: Vec::new(),
                });
            }),
        ),
        (
            "import token of a missing key",
            Box::new(|b| b.snapshot.import_tokens[0].key_id = "gone".into()),
        ),
    ];
    for (name, change) in cases {
        let bytes = reencoded(&bytes, change);
        assert!(matches!(decode(&bytes), Err(BackupError::Inconsistent(_))), "{name}");
    }
    // Counts that disagree with the records.
    let mut backup = decode(&bytes).expect("decode");
    backup.header.counts.keys += 1;
    let bytes = encode(&backup).expect("encode");
    assert!(matches!(decode(&bytes), Err(BackupError::Inconsistent(_))));
}

#[tokio::test]
async fn a_newer_format_or_another_file_is_refused() {
    let (_dir, _keystore, bytes) = fixture().await;
    let mut backup = decode(&bytes).expect("decode");
    backup.header.format_version = FORMAT_VERSION + 1;
    let newer = encode(&backup).expect("encode");
    assert!(matches!(decode(&newer), Err(BackupError::NewerFormat { found: 2, supported: 1 })));
    backup.header.format = "something-else".into();
    let other = encode(&backup).expect("encode");
    assert!(matches!(decode(&other), Err(BackupError::Corrupt(_))));
    assert!(matches!(decode(b""), Err(BackupError::Corrupt(_))));
    assert!(matches!(decode(b"\n"), Err(BackupError::Corrupt(_))));
}

#[tokio::test]
async fn sealed_material_opens_only_under_the_right_root_key() {
    let (dir, _keystore, bytes) = fixture().await;
    let backup = decode(&bytes).expect("decode");
    let sealed = check_sealed(backend(), &root_of(dir.path()), &backup).expect("opens");
    assert_eq!(sealed, Sealed { versions: 7, destroyed: 0, import_tokens: 1 });
    let (other, _other_keystore) = keystore(false);
    assert!(matches!(
        check_sealed(backend(), &root_of(other.path()), &backup),
        Err(BackupError::WrongRootKey(_))
    ));
    // A sealed version changed and the checksum recomputed: the version does not open.
    let tampered = reencoded(&bytes, |b| {
        let sealed = &mut b.snapshot.versions[1].1.sealed_material;
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
    });
    let tampered = decode(&tampered).expect("structure is fine");
    assert!(matches!(
        check_sealed(backend(), &root_of(dir.path()), &tampered),
        Err(BackupError::Unseal(_))
    ));
    // Material moved to another key or version does not open either (bound by its AAD).
    let moved = reencoded(&bytes, |b| {
        let material = b.snapshot.versions[0].1.sealed_material.clone();
        b.snapshot.versions[2].1.sealed_material = material;
    });
    let moved = decode(&moved).expect("structure is fine");
    assert!(matches!(
        check_sealed(backend(), &root_of(dir.path()), &moved),
        Err(BackupError::Unseal(_))
    ));
}

/// Restores `bytes` into a new keystore that adopts the source's root key.
async fn restored(source_dir: &Path, bytes: &[u8]) -> (tempfile::TempDir, Keystore, Sealed) {
    let backup = decode(bytes).expect("decode");
    let dir = tempfile::tempdir().expect("tempdir");
    fs::copy(source_dir.join("root.key"), dir.path().join("root.key")).expect("copy key");
    let root = RootKey::adopt(
        backend(),
        dir.path(),
        &RootKeySource::File,
        &backup.header.root_check,
        None,
        backup.header.root_lineage.as_deref(),
        None,
    )
    .expect("adopt");
    let store = open_store(dir.path(), &StoreSettings::Sqlite, true).await.expect("store");
    let sealed = restore(backend(), &root, store.as_ref(), &NullSink, &ctx(), T0, &backup)
        .await
        .expect("restore");
    let keystore = Keystore::with_store(
        backend(),
        store,
        root,
        clock(),
        Arc::new(NullSink),
        Partition::default(),
    );
    (dir, keystore, sealed)
}

#[tokio::test]
async fn a_restore_loses_nothing_and_old_ciphertexts_decrypt() {
    let (dir, source, bytes) = fixture().await;
    let alias_target = source.store().alias("alias/app").await.expect("alias").expect("there");
    let context: EncryptionContext = [("tenant".to_owned(), "acme".to_owned())].into();
    let before = source
        .encrypt(
            &ctx(),
            "alias/app",
            b"made before the backup",
            &context,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .await
        .expect("encrypt");
    let (new_dir, destination, sealed) = restored(dir.path(), &bytes).await;
    assert_eq!(sealed.versions, 7);
    let decrypted = destination
        .decrypt(&ctx(), &before.ciphertext_blob, &context, None, None)
        .await
        .expect("decrypts after the restore");
    assert_eq!(decrypted.plaintext.expose_secret(), b"made before the backup");
    let proof = prove_nothing_lost(&source, &destination, &ctx()).await.expect("nothing lost");
    assert_eq!(
        proof.counts,
        Counts { keys: 7, versions: 7, aliases: 1, import_tokens: 1, certificates: 0 }
    );
    assert_eq!(proof.unsealed, 7);
    assert_eq!(
        (proof.encrypt_decrypt, proof.sign_verify, proof.mac, proof.key_agreement),
        (2, 1, 1, 1)
    );
    // The disabled key and the key waiting for material.
    assert_eq!(proof.records_only, 2);
    let alias = destination.store().alias("alias/app").await.expect("alias").expect("restored");
    assert_eq!(alias, alias_target);
    // The restored directory is a keystore of its own now.
    assert_eq!(
        RootKey::stored_check(new_dir.path()).expect("check"),
        RootKey::stored_check(dir.path()).expect("check")
    );
}

#[tokio::test]
async fn a_restore_refuses_a_keystore_with_keys_and_writes_nothing() {
    let (dir, _source, bytes) = fixture().await;
    let (new_dir, destination, _) = restored(dir.path(), &bytes).await;
    let backup = decode(&bytes).expect("decode");
    let result = restore(
        backend(),
        &root_of(new_dir.path()),
        destination.store(),
        &NullSink,
        &ctx(),
        T0,
        &backup,
    )
    .await;
    assert!(matches!(result, Err(BackupError::NotEmpty(_))), "{result:?}");
    assert_eq!(destination.store().keys().await.expect("keys").len(), 7);
}

#[tokio::test]
async fn a_restore_under_another_root_key_is_refused() {
    let (_dir, _source, bytes) = fixture().await;
    let (other, other_keystore) = keystore(false);
    let backup = decode(&bytes).expect("decode");
    let result = restore(
        backend(),
        &root_of(other.path()),
        other_keystore.store(),
        &NullSink,
        &ctx(),
        T0,
        &backup,
    )
    .await;
    assert!(matches!(result, Err(BackupError::WrongRootKey(_))), "{result:?}");
    assert!(other_keystore.store().keys().await.expect("keys").is_empty());
    // Adopting the backup's check value with another key leaves nothing behind.
    let fresh = tempfile::tempdir().expect("tempdir");
    fs::copy(other.path().join("root.key"), fresh.path().join("root.key")).expect("copy");
    let adopted = RootKey::adopt(
        backend(),
        fresh.path(),
        &RootKeySource::File,
        &backup.header.root_check,
        None,
        None,
        None,
    );
    assert!(adopted.is_err());
    assert!(!fresh.path().join("root.check").exists());
}

#[tokio::test]
async fn the_proof_names_what_a_lossy_copy_lost() {
    let (dir, source, bytes) = fixture().await;
    let lossy = reencoded(&bytes, |b| {
        b.snapshot.aliases.clear();
        b.snapshot.keys[0].policy = "{}".into();
    });
    let (_new_dir, destination, _) = restored(dir.path(), &lossy).await;
    match prove_nothing_lost(&source, &destination, &ctx()).await {
        Err(BackupError::Lost(differences)) => {
            assert_eq!(differences.len(), 2, "{differences:?}");
            assert!(differences.iter().any(|d| d.contains("alias alias/app is missing")));
            assert!(differences.iter().any(|d| d.contains("differs")));
        }
        other => panic!("expected differences, got {other:?}"),
    }
}

#[tokio::test]
async fn the_backup_file_is_private_and_replaced_whole() {
    let (_dir, _keystore, bytes) = fixture().await;
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("kagi.backup");
    write_atomically(&path, b"old").expect("write");
    write_atomically(&path, &bytes).expect("replace");
    assert_eq!(fs::read(&path).expect("read"), bytes);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let names: Vec<_> =
        fs::read_dir(out.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["kagi.backup"], "no temporary file left");
    assert!(read(&path).is_ok());
}
