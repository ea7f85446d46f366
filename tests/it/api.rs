//! The end-to-end proof that real AWS tooling works against `kagi serve`: each test starts the
//! real server (port 0, a self-signed certificate, principals from its configuration) and runs
//! one script of `tests/py` against it from the test virtualenv (`support::python`).

use crate::support::python;
use crate::support::server::{ADMIN, APP, Server, TestPrincipal};

/// Quotas no test reaches (the scripts make hundreds of management calls in a second).
const GENEROUS: &str = "symmetric = 1000000.0\nasymmetric = 1000000.0\nmanagement = 1000000.0\n";

#[test]
fn boto3_drives_every_operation() {
    let mut server = Server::start(&[ADMIN, APP], GENEROUS);
    python::check(&server, "python", &["test_kms_boto3.py"]);
    // The trail these calls left verifies; one changed byte is found.
    server.kill();
    let trail = server.data_dir().join("audit");
    let verify = |what: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kagi"))
            .args(["audit", "verify"])
            .arg(&trail)
            .output()
            .unwrap_or_else(|e| panic!("kagi audit verify ({what}): {e}"))
    };
    let intact = verify("intact");
    assert!(intact.status.success(), "{}", String::from_utf8_lossy(&intact.stderr));
    let file = std::fs::read_dir(&trail)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .min()
        .expect("a trail file");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let tampered = verify("tampered");
    assert_eq!(tampered.status.code(), Some(5), "{}", String::from_utf8_lossy(&tampered.stdout));
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("line"));
}

#[test]
fn boto3_is_throttled_past_the_quota() {
    // One management call per 1000 s with a bucket of one: the second call in a row is refused
    // however slow the machine (no timing assumption beyond "less than 1000 s apart").
    let slow = TestPrincipal {
        name: "slow",
        access_key_id: "AKIAKAGITESTSLOW0001",
        account_actions: &["kms:*"],
        ..APP
    };
    let patient = TestPrincipal { name: "patient", access_key_id: "AKIAKAGITESTPATIENT1", ..slow };
    let quotas = "symmetric = 1000000.0\nasymmetric = 1000000.0\nmanagement = 0.001\n";
    let server = Server::start(&[ADMIN, slow, patient], quotas);
    python::check(&server, "python", &["test_kms_throttling.py"]);
}

#[test]
fn aws_cli_encrypts_and_signs() {
    let server = Server::start(&[ADMIN], GENEROUS);
    python::check(&server, "bash", &["test_awscli.sh"]);
}

#[test]
fn aws_encryption_sdk_round_trips() {
    let server = Server::start(&[ADMIN], GENEROUS);
    python::check(&server, "python", &["test_esdk.py"]);
}
