//! The real `kagi` binary against a temporary data directory: every command, the state
//! transitions (time moved with `KAGI_FAKE_NOW`), and the exit code of each refusal.

use std::path::Path;

use kagi::crypto::{
    AesKey, BackendKind, CryptoBackend, KeyPairSpec, MacAlgorithm, SignInput, SigningAlgorithm,
};
use kagi::keystore::WrappingAlgorithm;
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

// === import, re-encrypt, data key pairs, key agreement ===

/// The other backend than the binary's default: the tests wrap, verify and agree with it.
fn local() -> &'static dyn CryptoBackend {
    BackendKind::RustCrypto.backend()
}

fn random(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    local().fill_random(&mut bytes).expect("random");
    bytes
}

/// `kagi keys import-parameters KEY` with `algorithm` and an RSA_2048 wrapping key, then wraps
/// `material` as an AWS KMS caller does. Returns the token and wrapped-material paths.
fn wrap_for_import(
    kagi: &Kagi,
    key: &str,
    algorithm: &str,
    material: &[u8],
    name: &str,
) -> (String, String) {
    let (public_key, token) =
        (kagi.path(&format!("{name}.der")), kagi.path(&format!("{name}.token")));
    let parameters = kagi
        .ok(&[
            "--output",
            "json",
            "keys",
            "import-parameters",
            key,
            "--wrapping-algorithm",
            algorithm,
            "--wrapping-key-spec",
            "RSA_2048",
            "--public-key",
            arg(&public_key),
            "--token",
            arg(&token),
        ])
        .json();
    assert_eq!(parameters["ParametersValidTo"], kagi.now + DAY);
    let public_key = std::fs::read(&public_key).expect("public key");
    let public = local().load_public_key(KeyPairSpec::Rsa2048, &public_key).expect("wrapping key");
    let algorithm = WrappingAlgorithm::from_kms_name(algorithm).expect("a wrapping algorithm");
    let wrapped = if algorithm.is_rsa_aes() {
        let aes_key = random(32);
        let mut wrapped = public.encrypt_oaep(algorithm.hash(), &aes_key).expect("oaep");
        let kek = AesKey::from_slice(&aes_key).expect("32 bytes");
        wrapped.extend(local().wrap_key(&kek, material).expect("AES-KWP"));
        wrapped
    } else {
        public.encrypt_oaep(algorithm.hash(), material).expect("oaep")
    };
    let wrapped = kagi.write(&format!("{name}.wrapped"), &wrapped);
    (arg(&token).to_owned(), arg(&wrapped).to_owned())
}

/// `kagi keys import-material KEY --token … --material … EXPIRY…`.
fn import_args<'a>(key: &'a str, files: &'a (String, String), expiry: &[&'a str]) -> Vec<&'a str> {
    let mut args =
        vec!["keys", "import-material", key, "--token", &files.0, "--material", &files.1];
    args.extend_from_slice(expiry);
    args
}

#[test]
fn import_round_trips_expires_at_sweep_and_reimports() {
    let mut kagi = Kagi::new();
    let key = kagi.create_key(&["--origin", "EXTERNAL"]);
    assert_eq!(kagi.describe(&key)["KeyState"], "PendingImport");
    let plaintext = kagi.write("plaintext", b"imported");
    kagi.fails(&["encrypt", "--key", &key, "--in", arg(&plaintext)], 4);

    let material = random(32);
    let first = wrap_for_import(&kagi, &key, "RSA_AES_KEY_WRAP_SHA_256", &material, "first");
    let expires = (kagi.now + DAY).to_string();
    let imported =
        kagi.ok(&import_args(&key, &first, &["--output", "json", "--expires-at", &expires])).json();
    assert_eq!(imported["ValidTo"], kagi.now + DAY);
    let metadata = kagi.describe(&key);
    assert_eq!(metadata["KeyState"], "Enabled");
    assert_eq!(metadata["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert_eq!(metadata["ValidTo"], kagi.now + DAY);
    assert_eq!(metadata["CurrentKeyMaterialId"], imported["KeyMaterialId"]);
    let blob = encrypt(&kagi, &key, b"imported", &["app=byok"], "blob");
    check_decrypt(&kagi, &blob, &["app=byok"], Ok(b"imported"));

    // One second before the expiry the sweeper leaves the material; at the expiry it destroys it.
    kagi.now += DAY - 1;
    let report = kagi.ok(&["--output", "json", "keys", "sweep"]).json();
    assert_eq!(report["Expired"].as_array().map(Vec::len), Some(0));
    kagi.now += 1;
    let report = kagi.ok(&["--output", "json", "keys", "sweep"]).json();
    assert_eq!(report["Expired"].as_array().map(Vec::len), Some(1));
    assert_eq!(kagi.describe(&key)["KeyState"], "PendingImport");
    kagi.fails(&["encrypt", "--key", &key, "--in", arg(&plaintext)], 4);
    check_decrypt(&kagi, &blob, &["app=byok"], Err(4));

    // The first token expired with the material; different material is refused; the same
    // material, wrapped anew with another algorithm, brings the key and its ciphertexts back.
    let refused = |args: &[&str], exception: &str| {
        let run = kagi.fails(args, 6);
        assert!(run.stderr.contains(exception), "{args:?}: {}", run.stderr);
    };
    refused(&import_args(&key, &first, &["--no-expiry"]), "ExpiredImportTokenException");
    let other = wrap_for_import(&kagi, &key, "RSA_AES_KEY_WRAP_SHA_1", &random(32), "other");
    refused(&import_args(&key, &other, &["--no-expiry"]), "IncorrectKeyMaterialException");
    let again = wrap_for_import(&kagi, &key, "RSAES_OAEP_SHA_1", &material, "again");
    let too_late = (kagi.now + 366 * DAY).to_string();
    refused(&import_args(&key, &again, &["--expires-at", &too_late]), "ValidationException");
    kagi.ok(&import_args(&key, &again, &["--no-expiry"]));
    let metadata = kagi.describe(&key);
    assert_eq!(metadata["KeyState"], "Enabled");
    assert_eq!(metadata["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE");
    check_decrypt(&kagi, &blob, &["app=byok"], Ok(b"imported"));
    // A token names one key.
    let elsewhere = kagi.create_key(&["--origin", "EXTERNAL"]);
    refused(&import_args(&elsewhere, &again, &["--no-expiry"]), "InvalidImportTokenException");

    kagi.ok(&["keys", "delete-material", &key]);
    assert_eq!(kagi.describe(&key)["KeyState"], "PendingImport");
    check_decrypt(&kagi, &blob, &["app=byok"], Err(4));

    // Refusals: a key of origin AWS_KMS, an unknown or unfit wrapping algorithm, no expiry
    // choice at all.
    let native = kagi.create_key(&[]);
    let rsa = kagi.create_key(&["--spec", "RSA_2048", "--origin", "EXTERNAL"]);
    let (public_key, token) = (kagi.path("p.der"), kagi.path("p.token"));
    let files = ["--public-key", arg(&public_key), "--token", arg(&token)];
    for (key, algorithm) in
        [(&native, "RSAES_OAEP_SHA_256"), (&key, "RSAES_PKCS1_V1_5"), (&rsa, "RSAES_OAEP_SHA_256")]
    {
        let args = ["keys", "import-parameters", key, "--wrapping-algorithm", algorithm];
        kagi.fails(&[&args[..], &files].concat(), 6);
    }
    assert_eq!(kagi.run(&import_args(&key, &again, &[])).code, 2, "no expiry choice");
}

#[test]
fn imported_signing_and_hmac_keys_match_the_original_material() {
    let kagi = Kagi::new();
    let signer = kagi.create_key(&["--spec", "ECC_NIST_P256", "--origin", "EXTERNAL"]);
    let pkcs8 = local().generate_key_pair(KeyPairSpec::EccNistP256).expect("generate");
    let files =
        wrap_for_import(&kagi, &signer, "RSA_AES_KEY_WRAP_SHA_1", pkcs8.expose_secret(), "p256");
    kagi.ok(&import_args(&signer, &files, &["--no-expiry"]));
    let original = local()
        .load_private_key(KeyPairSpec::EccNistP256, pkcs8.expose_secret())
        .expect("load")
        .public_key_der();
    assert_eq!(kagi.ok(&["public-key", "--key", &signer]).stdout, original);
    let message = kagi.write("message", b"signed by an imported key");
    let signature = kagi.path("signature");
    kagi.ok(&[
        "sign",
        "--key",
        &signer,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        arg(&message),
        "--out",
        arg(&signature),
    ]);
    local()
        .load_public_key(KeyPairSpec::EccNistP256, &original)
        .expect("public key")
        .verify(
            SigningAlgorithm::EcdsaSha256,
            SignInput::Message(b"signed by an imported key"),
            &std::fs::read(&signature).expect("signature"),
        )
        .expect("the original public key verifies kagi's signature");

    let hmac = kagi.create_key(&["--spec", "HMAC_256", "--origin", "EXTERNAL"]);
    let material = random(48);
    let files = wrap_for_import(&kagi, &hmac, "RSAES_OAEP_SHA_256", &material, "hmac");
    kagi.ok(&import_args(&hmac, &files, &["--no-expiry"]));
    let mac =
        kagi.ok(&["mac", "--key", &hmac, "--algorithm", "HMAC_SHA_256", "--in", arg(&message)]);
    let expected = local()
        .hmac(MacAlgorithm::HmacSha256, &material, b"signed by an imported key")
        .expect("hmac");
    assert_eq!(mac.stdout, expected);
}

#[test]
fn re_encrypt_to_another_key_then_decrypt() {
    let kagi = Kagi::new();
    let (source, destination) = (kagi.create_key(&[]), kagi.create_key(&[]));
    let blob = encrypt(&kagi, &source, b"moving", &["tenant=acme"], "blob");
    let moved = kagi.path("moved");
    let re_encrypt = |extra: &[&str], out: &str| {
        let mut args = vec!["re-encrypt", "--in", &blob, "--out", out];
        args.extend_from_slice(extra);
        kagi.run(&args)
    };
    let run = re_encrypt(
        &["--key", &destination, "--source-context", "tenant=acme", "--context", "tenant=globex"],
        arg(&moved),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    check_decrypt(&kagi, arg(&moved), &["tenant=globex"], Ok(b"moving"));
    check_decrypt(&kagi, arg(&moved), &["tenant=acme"], Err(5));
    kagi.fails(
        &["decrypt", "--key", &source, "--in", arg(&moved), "--context", "tenant=globex"],
        5,
    );
    // The source context must match, and a named source key must be the blob's.
    assert_eq!(re_encrypt(&["--key", &destination], arg(&moved)).code, 5);
    let named_wrong =
        ["--key", &destination, "--source-key", &destination, "--source-context", "tenant=acme"];
    assert_eq!(re_encrypt(&named_wrong, arg(&moved)).code, 5);
    // To its own key after a rotation: the newest version (blob bytes 17..21).
    kagi.ok(&["keys", "rotate", &source]);
    let rotated = kagi.path("rotated");
    let run = re_encrypt(
        &["--key", &source, "--source-context", "tenant=acme", "--context", "tenant=acme"],
        arg(&rotated),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read(&rotated).expect("blob")[17..21], 2u32.to_be_bytes());
    check_decrypt(&kagi, arg(&rotated), &["tenant=acme"], Ok(b"moving"));
    // To an RSA key with OAEP, which takes no context.
    let rsa = kagi.create_key(&["--spec", "RSA_2048", "--usage", "ENCRYPT_DECRYPT"]);
    let oaep = kagi.path("oaep");
    let to_rsa =
        ["--key", &rsa, "--algorithm", "RSAES_OAEP_SHA_256", "--source-context", "tenant=acme"];
    let run = re_encrypt(&to_rsa, arg(&oaep));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let decrypted = kagi.ok(&[
        "decrypt",
        "--key",
        &rsa,
        "--algorithm",
        "RSAES_OAEP_SHA_256",
        "--in",
        arg(&oaep),
    ]);
    assert_eq!(decrypted.stdout, b"moving");
}

#[test]
fn data_key_pair_is_usable() {
    use base64::Engine as _;
    let base64 = |value: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("a string"))
            .expect("base64")
    };
    let kagi = Kagi::new();
    let key = kagi.create_key(&[]);
    for (spec, pair, algorithm) in [
        ("ECC_NIST_P256", KeyPairSpec::EccNistP256, SigningAlgorithm::EcdsaSha256),
        ("RSA_2048", KeyPairSpec::Rsa2048, SigningAlgorithm::RsassaPssSha256),
    ] {
        let args = [
            "--output",
            "json",
            "data-key-pair",
            "--key",
            &key,
            "--spec",
            spec,
            "--context",
            "use=tls",
        ];
        let document = kagi.ok(&args).json();
        assert_eq!(document["KeyPairSpec"], spec);
        let (public_key, private_key) =
            (base64(&document["PublicKey"]), base64(&document["PrivateKeyPlaintext"]));
        // The private key signs, the public key verifies, on a backend other than kagi's.
        let private = local().load_private_key(pair, &private_key).expect("PKCS#8 private key");
        assert_eq!(private.public_key_der(), public_key);
        let signature = private.sign(algorithm, SignInput::Message(b"m")).expect("sign");
        let public = local().load_public_key(pair, &public_key).expect("public key");
        public.verify(algorithm, SignInput::Message(b"m"), &signature).expect("verify");
        // The encrypted private key decrypts under the key, with its context, to the same bytes.
        let blob = kagi.write("pair.blob", &base64(&document["PrivateKeyCiphertextBlob"]));
        check_decrypt(&kagi, arg(&blob), &["use=tls"], Ok(&private_key));
        check_decrypt(&kagi, arg(&blob), &[], Err(5));
    }
    let without = kagi
        .ok(&[
            "--output",
            "json",
            "data-key-pair",
            "--key",
            &key,
            "--spec",
            "ECC_NIST_P384",
            "--without-plaintext",
        ])
        .json();
    assert!(without.get("PrivateKeyPlaintext").is_none(), "{without}");
    assert!(without.get("PrivateKeyCiphertextBlob").is_some());
    kagi.fails(&["data-key-pair", "--key", &key, "--spec", "ED25519"], 6);
    let rsa = kagi.create_key(&["--spec", "RSA_2048", "--usage", "ENCRYPT_DECRYPT"]);
    kagi.fails(&["data-key-pair", "--key", &rsa, "--spec", "ECC_NIST_P256"], 6);
}

#[test]
fn derive_shared_secret_agrees_on_both_sides() {
    let kagi = Kagi::new();
    let keys = ["alice", "bob"].map(|name| {
        let key = kagi.create_key(&["--spec", "ECC_NIST_P384", "--usage", "KEY_AGREEMENT"]);
        let public_key = kagi.path(&format!("{name}.der"));
        kagi.ok(&["public-key", "--key", &key, "--out", arg(&public_key)]);
        (key, public_key)
    });
    let derive = |key: &str, peer: &Path| {
        kagi.ok(&["derive-shared-secret", "--key", key, "--in", arg(peer)]).stdout
    };
    let alice_bob = derive(&keys[0].0, &keys[1].1);
    assert_eq!(alice_bob.len(), 48);
    assert_eq!(alice_bob, derive(&keys[1].0, &keys[0].1));
    // With a peer outside kagi, base64 in and out.
    let peer = local().generate_key_pair(KeyPairSpec::EccNistP384).expect("generate");
    let peer =
        local().load_private_key(KeyPairSpec::EccNistP384, peer.expose_secret()).expect("load");
    use base64::Engine as _;
    let peer_b64 = base64::engine::general_purpose::STANDARD.encode(peer.public_key_der());
    let run = kagi.run_with_input(
        &["derive-shared-secret", "--key", &keys[0].0, "--base64"],
        peer_b64.as_bytes(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let alice_public = std::fs::read(&keys[0].1).expect("public key");
    let expected = peer.agree(&alice_public).expect("agree");
    assert_eq!(
        run.stdout_text().trim(),
        base64::engine::general_purpose::STANDARD.encode(expected.expose_secret())
    );
    // A SIGN_VERIFY key does not agree; a peer on another curve is invalid.
    let signer = kagi.create_key(&["--spec", "ECC_NIST_P384"]);
    kagi.fails(&["derive-shared-secret", "--key", &signer, "--in", arg(&keys[1].1)], 6);
    let p256 = kagi.create_key(&["--spec", "ECC_NIST_P256", "--usage", "KEY_AGREEMENT"]);
    kagi.fails(&["derive-shared-secret", "--key", &p256, "--in", arg(&keys[1].1)], 6);
}
