//! The real `kagi` binary against a temporary data directory: every command, the state
//! transitions (time moved with `KAGI_FAKE_NOW`), and the exit code of each refusal.

use sha2::Digest as _;

use crate::support::{Kagi, arg};

const DAY: i64 = 86_400;

/// Encrypts `plaintext` under `key` with `context`, returns the blob path.
fn encrypt(kagi: &Kagi, key: &str, plaintext: &[u8], context: &[&str], name: &str) -> String {
    let input = kagi.write(&format!("{name}.in"), plaintext);
    let output = kagi.path(name);
    let mut args = vec!["encrypt", "--key", key, "--in", arg(&input), "--out", arg(&output)];
    for pair in context {
        args.extend_from_slice(&["--context", pair]);
    }
    kagi.ok(&args);
    arg(&output).to_owned()
}

fn check_decrypt(kagi: &Kagi, blob: &str, context: &[&str], expect: Result<&[u8], i32>) {
    let mut args = vec!["decrypt", "--in", blob];
    for pair in context {
        args.extend_from_slice(&["--context", pair]);
    }
    match expect {
        Ok(plaintext) => assert_eq!(kagi.ok(&args).stdout, plaintext),
        Err(code) => {
            kagi.fails(&args, code);
        }
    }
}

#[test]
fn encrypt_decrypt_round_trip_with_context() {
    let kagi = Kagi::new();
    let key = kagi.create_key(&["--description", "app data"]);
    kagi.ok(&["aliases", "create", "alias/app", &key]);
    let blob = encrypt(&kagi, "alias/app", b"card 4111", &["tenant=acme", "env=prod"], "blob");
    check_decrypt(&kagi, &blob, &["env=prod", "tenant=acme"], Ok(b"card 4111"));
    check_decrypt(&kagi, &blob, &["tenant=acme"], Err(5));
    check_decrypt(&kagi, &blob, &["tenant=globex", "env=prod"], Err(5));
    check_decrypt(&kagi, &blob, &[], Err(5));
    // A damaged byte anywhere is refused.
    let mut bytes = std::fs::read(&blob).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let damaged = kagi.write("damaged", &bytes);
    check_decrypt(&kagi, arg(&damaged), &["tenant=acme", "env=prod"], Err(5));
    // Base64 in and out.
    let run = kagi.run_with_input(&["encrypt", "--key", &key, "--base64"], b"hello");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = kagi.run_with_input(&["decrypt", "--base64"], &run.stdout);
    assert_eq!(run.stdout, b"hello");
    // The key named on decrypt must be the blob's.
    let other = kagi.create_key(&[]);
    kagi.fails(
        &[
            "decrypt",
            "--key",
            &other,
            "--in",
            &blob,
            "--context",
            "tenant=acme",
            "--context",
            "env=prod",
        ],
        5,
    );
}

#[test]
fn every_key_spec_creates_with_its_usages() {
    let kagi = Kagi::new();
    let cases: &[(&str, &[&str])] = &[
        ("SYMMETRIC_DEFAULT", &["ENCRYPT_DECRYPT"]),
        ("RSA_2048", &["ENCRYPT_DECRYPT", "SIGN_VERIFY"]),
        ("RSA_3072", &["SIGN_VERIFY"]),
        ("RSA_4096", &["ENCRYPT_DECRYPT"]),
        ("ECC_NIST_P256", &["SIGN_VERIFY", "KEY_AGREEMENT"]),
        ("ECC_NIST_P384", &["SIGN_VERIFY", "KEY_AGREEMENT"]),
        ("ECC_NIST_P521", &["SIGN_VERIFY"]),
        ("ECC_SECG_P256K1", &["SIGN_VERIFY"]),
        ("HMAC_224", &["GENERATE_VERIFY_MAC"]),
        ("HMAC_256", &["GENERATE_VERIFY_MAC"]),
        ("HMAC_384", &["GENERATE_VERIFY_MAC"]),
        ("HMAC_512", &["GENERATE_VERIFY_MAC"]),
    ];
    for (spec, usages) in cases {
        for usage in *usages {
            let key = kagi.create_key(&["--spec", spec, "--usage", usage]);
            let metadata = kagi.describe(&key);
            assert_eq!(metadata["KeySpec"], *spec);
            assert_eq!(metadata["KeyUsage"], *usage);
            assert_eq!(metadata["KeyState"], "Enabled");
        }
    }
    kagi.fails(&["keys", "create", "--spec", "ECC_SECG_P256K1", "--usage", "KEY_AGREEMENT"], 6);
    kagi.fails(&["keys", "create", "--spec", "HMAC_256", "--usage", "ENCRYPT_DECRYPT"], 6);
    kagi.fails(&["keys", "create", "--spec", "AES_512"], 6);
    let listed = kagi.ok(&["--output", "json", "keys", "list"]).json();
    assert_eq!(listed["Keys"].as_array().map(Vec::len), Some(15));
}

#[test]
fn lifecycle_disable_enable_delete_cancel_and_sweep() {
    let mut kagi = Kagi::new();
    let key = kagi.create_key(&[]);
    kagi.ok(&["aliases", "create", "alias/doomed", &key]);
    let blob = encrypt(&kagi, &key, b"x", &[], "blob");

    kagi.ok(&["keys", "disable", &key]);
    assert_eq!(kagi.describe(&key)["KeyState"], "Disabled");
    kagi.fails(&["encrypt", "--key", &key, "--in", &blob], 4);
    check_decrypt(&kagi, &blob, &[], Err(4));
    kagi.ok(&["keys", "enable", &key]);
    check_decrypt(&kagi, &blob, &[], Ok(b"x"));

    kagi.fails(&["keys", "schedule-deletion", &key, "--days", "6"], 6);
    kagi.fails(&["keys", "schedule-deletion", &key, "--days", "31"], 6);
    kagi.fails(&["keys", "cancel-deletion", &key], 4);
    let schedule =
        kagi.ok(&["--output", "json", "keys", "schedule-deletion", &key, "--days", "7"]).json();
    assert_eq!(schedule["DeletionDate"], kagi.now + 7 * DAY);
    assert_eq!(kagi.describe(&key)["KeyState"], "PendingDeletion");
    check_decrypt(&kagi, &blob, &[], Err(4));
    kagi.fails(&["keys", "enable", &key], 4);
    kagi.fails(&["keys", "schedule-deletion", &key], 4);

    kagi.ok(&["keys", "cancel-deletion", &key]);
    assert_eq!(kagi.describe(&key)["KeyState"], "Disabled");
    kagi.ok(&["keys", "enable", &key]);

    kagi.ok(&["keys", "schedule-deletion", &key, "--days", "7"]);
    // One second before the window ends nothing happens.
    kagi.now += 7 * DAY - 1;
    let report = kagi.ok(&["--output", "json", "keys", "sweep"]).json();
    assert_eq!(report["Deleted"].as_array().map(Vec::len), Some(0));
    kagi.now += 1;
    let report = kagi.ok(&["--output", "json", "keys", "sweep"]).json();
    assert_eq!(report["Deleted"].as_array().map(Vec::len), Some(1));
    kagi.fails(&["keys", "describe", &key], 3);
    kagi.fails(&["keys", "describe", "alias/doomed"], 3);
    kagi.fails(&["keys", "cancel-deletion", &key], 3);
    // Every operation on a deleted key answers NotFoundException, Decrypt of its blobs included.
    check_decrypt(&kagi, &blob, &[], Err(3));
    let listed = kagi.ok(&["--output", "json", "keys", "list"]).json();
    assert_eq!(listed["Keys"].as_array().map(Vec::len), Some(0));
    // The audit trail recorded the deletion.
    let deleted =
        kagi.ok(&["--output", "json", "audit", "show", "--operation", "DeleteKey"]).json();
    assert_eq!(deleted["Records"].as_array().map(Vec::len), Some(1));
}

#[test]
fn rotation_keeps_old_versions_decrypting() {
    let mut kagi = Kagi::new();
    let key = kagi.create_key(&[]);
    let first = encrypt(&kagi, &key, b"one", &["k=v"], "one");
    kagi.ok(&["keys", "rotate", &key]);
    let second = encrypt(&kagi, &key, b"two", &["k=v"], "two");
    check_decrypt(&kagi, &first, &["k=v"], Ok(b"one"));
    check_decrypt(&kagi, &second, &["k=v"], Ok(b"two"));

    kagi.fails(&["keys", "rotation", "enable", &key, "--period-days", "89"], 6);
    kagi.ok(&["keys", "rotation", "enable", &key, "--period-days", "90"]);
    let status = kagi.ok(&["--output", "json", "keys", "rotation", "status", &key]).json();
    assert_eq!(status["KeyRotationEnabled"], true);
    assert_eq!(status["NextRotationDate"], kagi.now + 90 * DAY);
    kagi.now += 90 * DAY;
    let report = kagi.ok(&["--output", "json", "keys", "sweep"]).json();
    assert_eq!(report["Rotated"].as_array().map(Vec::len), Some(1));
    let rotations = kagi.ok(&["--output", "json", "keys", "rotation", "list", &key]).json();
    let rotations = rotations["Rotations"].as_array().expect("rotations").clone();
    assert_eq!(rotations.len(), 3);
    let current: Vec<_> = rotations.iter().filter(|r| r["KeyMaterialState"] == "CURRENT").collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["RotationType"], "AUTOMATIC");
    check_decrypt(&kagi, &first, &["k=v"], Ok(b"one"));
    check_decrypt(&kagi, &second, &["k=v"], Ok(b"two"));

    let signing = kagi.create_key(&["--spec", "ECC_NIST_P256"]);
    kagi.fails(&["keys", "rotate", &signing], 6);
    kagi.fails(&["keys", "rotation", "enable", &signing], 6);
}

#[test]
fn sign_and_verify_raw_and_digest() {
    let kagi = Kagi::new();
    let message = kagi.write("message", b"release 1.0");
    let digest = kagi.write("digest", &sha2::Sha256::digest(b"release 1.0"));
    for (spec, algorithm) in [
        ("ECC_NIST_P256", "ECDSA_SHA_256"),
        ("ECC_SECG_P256K1", "ECDSA_SHA_256"),
        ("RSA_2048", "RSASSA_PSS_SHA_256"),
        ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256"),
    ] {
        let key = kagi.create_key(&["--spec", spec, "--usage", "SIGN_VERIFY"]);
        let signature = kagi.path("sig");
        kagi.ok(&[
            "sign",
            "--key",
            &key,
            "--algorithm",
            algorithm,
            "--in",
            arg(&message),
            "--out",
            arg(&signature),
        ]);
        let verify =
            ["verify", "--key", &key, "--algorithm", algorithm, "--signature", arg(&signature)];
        kagi.ok(&[&verify[..], &["--in", arg(&message)]].concat());
        // A signature over the message verifies as one over its digest, and the other way round.
        kagi.ok(&[&verify[..], &["--digest", "--in", arg(&digest)]].concat());
        kagi.ok(&[
            "sign",
            "--key",
            &key,
            "--algorithm",
            algorithm,
            "--digest",
            "--in",
            arg(&digest),
            "--out",
            arg(&signature),
        ]);
        kagi.ok(&[&verify[..], &["--in", arg(&message)]].concat());
        // Tampered signature, other message, short digest.
        let mut bytes = std::fs::read(&signature).expect("sig");
        bytes[10] ^= 0x40;
        std::fs::write(&signature, &bytes).expect("write");
        kagi.fails(&[&verify[..], &["--in", arg(&message)]].concat(), 5);
        let short = kagi.write("short", &[0; 31]);
        kagi.fails(
            &["sign", "--key", &key, "--algorithm", algorithm, "--digest", "--in", arg(&short)],
            6,
        );
    }
    let key = kagi.create_key(&["--spec", "ECC_NIST_P256"]);
    kagi.fails(&["sign", "--key", &key, "--algorithm", "ECDSA_SHA_384", "--in", arg(&message)], 6);
    let symmetric = kagi.create_key(&[]);
    kagi.fails(
        &["sign", "--key", &symmetric, "--algorithm", "ECDSA_SHA_256", "--in", arg(&message)],
        6,
    );
}

#[test]
fn mac_generate_and_verify() {
    let kagi = Kagi::new();
    let key = kagi.create_key(&["--spec", "HMAC_384"]);
    let message = kagi.write("message", b"important");
    let mac = kagi.path("mac");
    kagi.ok(&[
        "mac",
        "--key",
        &key,
        "--algorithm",
        "HMAC_SHA_384",
        "--in",
        arg(&message),
        "--out",
        arg(&mac),
    ]);
    assert_eq!(std::fs::read(&mac).expect("mac").len(), 48);
    kagi.ok(&[
        "mac",
        "--key",
        &key,
        "--algorithm",
        "HMAC_SHA_384",
        "--in",
        arg(&message),
        "--verify",
        arg(&mac),
    ]);
    let other = kagi.write("other", b"importanT");
    kagi.fails(
        &[
            "mac",
            "--key",
            &key,
            "--algorithm",
            "HMAC_SHA_384",
            "--in",
            arg(&other),
            "--verify",
            arg(&mac),
        ],
        5,
    );
    kagi.fails(&["mac", "--key", &key, "--algorithm", "HMAC_SHA_256", "--in", arg(&message)], 6);
}

#[test]
fn data_key_decrypts_to_its_plaintext() {
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD;
    let kagi = Kagi::new();
    let key = kagi.create_key(&[]);
    let data_key =
        kagi.ok(&["--output", "json", "data-key", "--key", &key, "--context", "bucket=b1"]).json();
    let plaintext = base64.decode(data_key["Plaintext"].as_str().expect("Plaintext")).expect("b64");
    assert_eq!(plaintext.len(), 32);
    let blob = kagi.write(
        "dk",
        &base64.decode(data_key["CiphertextBlob"].as_str().expect("blob")).expect("b64"),
    );
    check_decrypt(&kagi, arg(&blob), &["bucket=b1"], Ok(&plaintext));
    let without = kagi
        .ok(&[
            "--output",
            "json",
            "data-key",
            "--key",
            &key,
            "--without-plaintext",
            "--bytes",
            "64",
        ])
        .json();
    assert!(without.get("Plaintext").is_none());
    kagi.fails(&["data-key", "--key", &key, "--bytes", "1025"], 6);
}

#[test]
fn aliases_create_update_delete() {
    let kagi = Kagi::new();
    let one = kagi.create_key(&[]);
    let two = kagi.create_key(&[]);
    kagi.ok(&["aliases", "create", "alias/app", &one]);
    kagi.fails(&["aliases", "create", "alias/app", &two], 6);
    kagi.fails(&["aliases", "create", "alias/aws/s3", &two], 6);
    kagi.fails(&["aliases", "create", "app", &two], 6);
    kagi.fails(&["aliases", "create", "alias/bad name", &two], 6);
    assert_eq!(kagi.describe("alias/app")["KeyId"], one.as_str());
    kagi.ok(&["aliases", "update", "alias/app", &two]);
    assert_eq!(kagi.describe("alias/app")["KeyId"], two.as_str());
    let listed = kagi.ok(&["--output", "json", "aliases", "list", "--key", &two]).json();
    assert_eq!(listed["Aliases"][0]["AliasName"], "alias/app");
    kagi.ok(&["aliases", "delete", "alias/app"]);
    kagi.fails(&["aliases", "delete", "alias/app"], 3);
    kagi.fails(&["keys", "describe", "alias/app"], 3);
}

#[test]
fn tags_and_descriptions() {
    let kagi = Kagi::new();
    let key = kagi.create_key(&["--tag", "team=payments"]);
    kagi.ok(&["keys", "tag", &key, "env=prod"]);
    let metadata = kagi.describe(&key);
    assert_eq!(metadata["Tags"]["team"], "payments");
    assert_eq!(metadata["Tags"]["env"], "prod");
    kagi.ok(&["keys", "untag", &key, "team"]);
    assert!(kagi.describe(&key)["Tags"].get("team").is_none());
    kagi.fails(&["keys", "tag", &key, "aws:reserved=x"], 6);
}

#[test]
fn refusals_change_nothing_and_never_panic() {
    let kagi = Kagi::uninitialised();
    kagi.fails(&["keys", "list"], 7);
    kagi.ok(&["init"]);
    kagi.fails(&["init"], 6);
    let key = kagi.create_key(&[]);
    let blob = encrypt(&kagi, &key, b"kept", &[], "blob");
    kagi.fails(&["keys", "describe", "not-a-key"], 3);
    kagi.fails(&["keys", "describe", "arn:aws:kms:us-east-1:111122223333:bogus"], 6);
    kagi.fails(&["keys", "describe", "00000000-0000-4000-8000-000000000000"], 3);
    let garbage =
        kagi.write("garbage", b"\x01not a blob at all, but long enough to parse a header");
    check_decrypt(&kagi, arg(&garbage), &[], Err(5));
    let empty = kagi.write("empty", b"");
    kagi.fails(&["encrypt", "--key", &key, "--in", arg(&empty)], 6);
    let big = kagi.write("big", &[0; 4097]);
    kagi.fails(&["encrypt", "--key", &key, "--in", arg(&big)], 6);
    assert_eq!(kagi.run(&["keys", "frobnicate"]).code, 2);

    // A wrong root key is refused at start, and the keystore is untouched by the attempt.
    let root = kagi.data_dir().join("root.key");
    let original = std::fs::read(&root).expect("root key");
    std::fs::write(&root, [7u8; 32]).expect("overwrite");
    kagi.fails(&["keys", "list"], 7);
    std::fs::write(&root, &original).expect("restore");
    check_decrypt(&kagi, &blob, &[], Ok(b"kept"));
    // A truncated root key file is refused too.
    std::fs::write(&root, &original[..16]).expect("truncate");
    kagi.fails(&["keys", "list"], 7);
    std::fs::write(&root, &original).expect("restore");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&root).expect("root key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn passphrase_root_key() {
    let kagi = Kagi::uninitialised();
    // SAFETY of the test: the variable is set for the child processes only.
    let run = |args: &[&str], passphrase: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kagi"))
            .arg("--data-dir")
            .arg(kagi.data_dir())
            .arg("--root-passphrase-env")
            .arg("KAGI_TEST_PASSPHRASE")
            .args(args)
            .env("KAGI_TEST_PASSPHRASE", passphrase)
            .output()
            .expect("run")
    };
    assert!(run(&["init"], "correct horse").status.success());
    assert!(!kagi.data_dir().join("root.key").exists());
    assert!(run(&["keys", "create"], "correct horse").status.success());
    let wrong = run(&["keys", "list"], "wrong horse");
    assert_eq!(wrong.status.code(), Some(7));
}
