//! The share text form, the share policy, split/recombine/verify against `root.check`, and the
//! unseal progress.

use std::path::Path;

use super::*;
use crate::crypto::BackendKind;
use crate::keystore::RootKeySource;

fn backend() -> &'static dyn CryptoBackend {
    BackendKind::AwsLc.backend()
}

/// A split keystore's root key in a new directory: the key, its shares, the directory.
fn split_dir(shares: u8, threshold: u8) -> (tempfile::TempDir, RootKey, Vec<RootShare>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = SharePolicy::new(backend(), shares, threshold).expect("policy");
    let (root, split) = RootKey::create_split(backend(), dir.path(), policy).expect("split");
    (dir, root, split)
}

/// A copy of a share through its text form, as its holder would type it back.
fn retyped(share: &RootShare) -> RootShare {
    RootShare::parse(&share.to_text()).expect("parses")
}

/// Proves two root keys are the same: what one seals the other opens.
fn same_key(a: &RootKey, b: &RootKey) -> bool {
    let sealed = a.seal(backend(), b"test", b"probe").expect("seal");
    b.unseal(backend(), b"test", &sealed).is_ok()
}

/// A share of `set` that passes every check of its own (checksum included) but is not a share
/// of the key: a forgery, or damage the checksum cannot see.
fn forged(set: SetId, index: u8) -> RootShare {
    let mut value = SecretBytes::zeroed(32);
    backend().fill_random(value.expose_secret_mut()).expect("random");
    RootShare::new(set, Share::new(index, value).expect("index"))
}

#[test]
fn text_form_round_trips() {
    let (_dir, _root, split) = split_dir(3, 2);
    for share in &split {
        let text = share.to_text();
        assert!(text.starts_with("kagi-share-v1:"), "{}", text.as_str());
        assert_eq!(text.split(':').count(), 5);
        let parsed = RootShare::parse(&format!("  {}\n", text.as_str())).expect("parses");
        assert_eq!(parsed.index(), share.index());
        assert_eq!(parsed.set(), share.set());
        assert_eq!(parsed.share.expose_secret(), share.share.expose_secret());
        // Upper-case hex typed by hand is the same share.
        let upper = text.to_uppercase().replacen("KAGI-SHARE-V1", "kagi-share-v1", 1);
        assert_eq!(RootShare::parse(&upper).expect("upper case").index(), share.index());
    }
}

#[test]
fn a_typo_fails_the_checksum() {
    let (_dir, _root, split) = split_dir(3, 2);
    let text = split[0].to_text();
    let value_start = text.rfind(':').expect("checksum") - 10;
    for position in [value_start, value_start + 3] {
        let mut bytes = text.as_bytes().to_vec();
        bytes[position] = if bytes[position] == b'0' { b'1' } else { b'0' };
        let typo = String::from_utf8(bytes).expect("ascii");
        assert_eq!(RootShare::parse(&typo).map(|_| ()), Err(ShareError::Checksum));
    }
    // A changed index or set is caught too.
    let other_index = text.replacen(":1:", ":2:", 1);
    assert_eq!(RootShare::parse(&other_index).map(|_| ()), Err(ShareError::Checksum));
}

#[test]
fn garbage_is_malformed() {
    let (_dir, _root, split) = split_dir(2, 2);
    let text = split[0].to_text();
    let long = "a".repeat(MAX_SHARE_TEXT + 1);
    let cases = [
        "",
        "hello",
        "kagi-share-v1:",
        "kagi-share-v2:00000000:1:00:00000000",
        "kagi-share-v1:0000000:1:00:00000000",
        "kagi-share-v1:00000000:0:00:00000000",
        "kagi-share-v1:00000000:256:00:00000000",
        "kagi-share-v1:00000000:+1:00:00000000",
        "kagi-share-v1:00000000:1::00000000",
        "kagi-share-v1:00000000:1:0g:00000000",
        "kagi-share-v1:00000000:1:00:000000",
        long.as_str(),
    ];
    for case in cases {
        assert_eq!(RootShare::parse(case).map(|_| ()), Err(ShareError::Malformed), "{case:?}");
    }
    let extra = format!("{}:00", text.as_str());
    assert_eq!(RootShare::parse(&extra).map(|_| ()), Err(ShareError::Malformed));
}

#[test]
fn any_threshold_of_the_shares_rebuild_the_key() {
    let (dir, root, split) = split_dir(5, 3);
    for (a, b, c) in [(0, 1, 2), (4, 2, 0), (1, 3, 4), (2, 3, 4)] {
        let given = [retyped(&split[a]), retyped(&split[b]), retyped(&split[c])];
        let rebuilt = RootKey::from_shares(backend(), dir.path(), &given).expect("rebuilt");
        assert!(same_key(&root, &rebuilt));
    }
    let all: Vec<RootShare> = split.iter().map(retyped).collect();
    let rebuilt = RootKey::from_shares(backend(), dir.path(), &all).expect("all five");
    assert!(same_key(&root, &rebuilt));
}

#[test]
fn too_few_shares_are_refused() {
    let (dir, _root, split) = split_dir(5, 3);
    let given = [retyped(&split[0]), retyped(&split[1])];
    assert_eq!(
        RootKey::from_shares(backend(), dir.path(), &given).map(|_| ()),
        Err(ShareError::TooFew { given: 2, threshold: 3 })
    );
}

#[test]
fn wrong_shares_never_make_a_key() {
    let (dir, _root, split) = split_dir(3, 2);
    // A share of the right set that is not a share of the key.
    let given = [retyped(&split[0]), forged(split[0].set(), 2)];
    assert_eq!(
        RootKey::from_shares(backend(), dir.path(), &given).map(|_| ()),
        Err(ShareError::WrongShares)
    );
    // Shares of another keystore are refused by their set, before any combination.
    let (_other_dir, _other_root, other) = split_dir(3, 2);
    let given = [retyped(&other[0]), retyped(&other[1])];
    assert!(matches!(
        RootKey::from_shares(backend(), dir.path(), &given),
        Err(ShareError::OtherSet { .. })
    ));
    // Duplicates and indexes beyond the split.
    let given = [retyped(&split[0]), retyped(&split[0])];
    assert_eq!(
        RootKey::from_shares(backend(), dir.path(), &given).map(|_| ()),
        Err(ShareError::Duplicate(1))
    );
    let given = [retyped(&split[0]), forged(split[0].set(), 4)];
    assert_eq!(
        RootKey::from_shares(backend(), dir.path(), &given).map(|_| ()),
        Err(ShareError::OutOfRange { index: 4, shares: 3 })
    );
}

#[test]
fn a_split_directory_keeps_no_key_and_refuses_other_sources() {
    let (dir, _root, _split) = split_dir(3, 2);
    assert!(!dir.path().join("root.key").exists());
    assert!(dir.path().join("root.check").exists());
    let policy = SharePolicy::read(dir.path()).expect("read").expect("split");
    assert_eq!((policy.threshold(), policy.shares()), (2, 3));
    for source in
        [RootKeySource::File, RootKeySource::Passphrase { env_var: "KAGI_NO_SUCH_VAR".into() }]
    {
        let error = RootKey::load(backend(), dir.path(), &source).expect_err("split");
        assert_eq!(error.kind(), crate::keystore::ErrorKind::Validation);
    }
    // Neither kind of keystore is created over it.
    assert!(RootKey::create(backend(), dir.path(), &RootKeySource::File).is_err());
    let policy = SharePolicy::new(backend(), 3, 2).expect("policy");
    assert!(RootKey::create_split(backend(), dir.path(), policy).is_err());
}

#[test]
fn a_file_keystore_is_not_unsealed_by_shares() {
    let dir = tempfile::tempdir().expect("tempdir");
    RootKey::create(backend(), dir.path(), &RootKeySource::File).expect("create");
    assert_eq!(SharePolicy::read(dir.path()).expect("read"), None);
    let (_other_dir, _root, other) = split_dir(2, 2);
    let given: Vec<RootShare> = other.iter().map(retyped).collect();
    assert!(matches!(
        RootKey::from_shares(backend(), dir.path(), &given),
        Err(ShareError::Keystore(_))
    ));
}

#[test]
fn thresholds_are_checked() {
    for (shares, threshold) in [(3, 1), (3, 0), (2, 3), (0, 0)] {
        let error = SharePolicy::new(backend(), shares, threshold).expect_err("refused");
        assert_eq!(error.kind(), crate::keystore::ErrorKind::Validation);
    }
    assert!(SharePolicy::new(backend(), 255, 255).is_ok());
    assert!(SharePolicy::new(backend(), 2, 2).is_ok());
}

#[test]
fn a_damaged_policy_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for text in
        ["", "{}", r#"{"format":"kagi-root-shares-v1","threshold":1,"shares":3,"set":"00000000"}"#]
    {
        fs::write(dir.path().join(SHARES_FILE), text).expect("write");
        assert!(SharePolicy::read(dir.path()).is_err(), "{text}");
    }
}

fn need(progress: Result<Progress, ShareError>) -> (u8, u8) {
    match progress {
        Ok(Progress::Need { have, threshold }) => (have, threshold),
        other => panic!("expected more shares needed, got {other:?}"),
    }
}

fn unsealer(dir: &Path) -> Unsealer {
    Unsealer::new(dir, SharePolicy::read(dir).expect("read").expect("split"))
}

#[test]
fn unsealer_counts_shares_and_unseals() {
    let (dir, root, split) = split_dir(5, 3);
    let mut unsealer = unsealer(dir.path());
    assert_eq!(need(unsealer.submit(backend(), &split[3].to_text())), (1, 3));
    // Refused shares leave the progress as it was.
    assert_eq!(
        unsealer.submit(backend(), "garbage").map(|_| ()).err(),
        Some(ShareError::Malformed)
    );
    assert_eq!(
        unsealer.submit(backend(), &split[3].to_text()).map(|_| ()).err(),
        Some(ShareError::Duplicate(4))
    );
    let (_other_dir, _other_root, other) = split_dir(5, 3);
    assert!(matches!(
        unsealer.submit(backend(), &other[0].to_text()),
        Err(ShareError::OtherSet { .. })
    ));
    assert_eq!(need(unsealer.submit(backend(), &split[0].to_text())), (2, 3));
    match unsealer.submit(backend(), &split[1].to_text()) {
        Ok(Progress::Unsealed(rebuilt)) => assert!(same_key(&root, &rebuilt)),
        other => panic!("expected unsealed, got {other:?}"),
    }
}

#[test]
fn unsealer_resets_after_a_wrong_set() {
    let (dir, root, split) = split_dir(3, 2);
    let mut unsealer = unsealer(dir.path());
    assert_eq!(need(unsealer.submit(backend(), &split[0].to_text())), (1, 2));
    let forgery = forged(split[0].set(), 2).to_text();
    assert_eq!(
        unsealer.submit(backend(), &forgery).map(|_| ()).err(),
        Some(ShareError::WrongShares)
    );
    // Started again: the first share counts as the first, and two good ones unseal.
    assert_eq!(need(unsealer.submit(backend(), &split[0].to_text())), (1, 2));
    match unsealer.submit(backend(), &split[2].to_text()) {
        Ok(Progress::Unsealed(rebuilt)) => assert!(same_key(&root, &rebuilt)),
        other => panic!("expected unsealed, got {other:?}"),
    }
}

#[test]
fn shares_do_not_print_their_value() {
    let (_dir, _root, split) = split_dir(2, 2);
    let value = hex::encode(split[0].share.expose_secret());
    let shown = format!("{:?} {:#?}", split[0], split);
    assert!(!shown.contains(&value[..16]), "{shown}");
    assert!(shown.contains("index: 1"), "{shown}");
}
