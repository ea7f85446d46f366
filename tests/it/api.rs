//! The end-to-end proof that real AWS tooling works against `kagi serve`: each test starts the
//! real server (port 0, a self-signed certificate, principals from its configuration) and runs
//! one script of `tests/py` against it from the test virtualenv (`support::python`).

use crate::support::python;
use crate::support::server::{ADMIN, APP, Server, TestPrincipal};

/// Quotas no test reaches (the scripts make hundreds of management calls in a second).
const GENEROUS: &str = "symmetric = 1000000.0\nasymmetric = 1000000.0\nmanagement = 1000000.0\n";

#[test]
fn boto3_drives_every_operation() {
    let server = Server::start(&[ADMIN, APP], GENEROUS);
    python::check(&server, "python", &["test_kms_boto3.py"]);
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
