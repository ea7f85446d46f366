//! `kagi envelope` against the official AWS Encryption SDK for Python, through a real `kagi
//! serve`: what kagi encrypts the SDK decrypts (its KMS calls going to kagi), what the SDK
//! encrypts under a kagi key kagi decrypts, for both suites; tampered and truncated messages
//! are refused with no plaintext written. Also the command on a stopped server's directory.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::server::{ADMIN, Server};
use crate::support::{Kagi, arg, python};

const GENEROUS: &str = "symmetric = 1000000.0\nasymmetric = 1000000.0\nmanagement = 1000000.0\n";
const CONTEXT: [&str; 4] = ["--context", "tenant=acme", "--context", "purpose=envelope it"];
const CONTEXT_JSON: &str = r#"{"tenant": "acme", "purpose": "envelope it"}"#;

/// What one run of `kagi` did.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `kagi --data-dir DIR ARGS…` on the server's directory (so through its API, as the
/// administrator) with `stdin`.
fn kagi(data_dir: &Path, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("KAGI_DATA_DIR")
        .env_remove("KAGI_ROOT_PASSPHRASE_ENV")
        .env("AWS_ACCESS_KEY_ID", ADMIN.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", ADMIN.secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kagi");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Written from a thread: kagi streams, so it writes stdout while stdin is still coming.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait");
    writer.join().expect("stdin writer");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "kagi panicked: {stderr}");
    Run { code: output.status.code().unwrap_or(-1), stdout: output.stdout, stderr }
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

/// Runs the SDK script; it must succeed.
fn esdk(server: &Server, args: &[&str]) {
    python::check(server, "python", &[&["esdk_envelope.py"], args].concat());
}

/// `kagi envelope decrypt` of `message` must be refused (exit 5) with nothing on stdout.
fn check_refused(data_dir: &Path, key_arn: &str, message: &[u8], what: &str) {
    let run = kagi(
        data_dir,
        &[&["envelope", "decrypt", "--key", key_arn], &CONTEXT[..]].concat(),
        message,
    );
    assert_eq!(run.code, 5, "{what}: {}", run.stderr);
    assert!(run.stdout.is_empty(), "{what}: {} bytes of plaintext written", run.stdout.len());
}

#[test]
fn kagi_and_the_python_sdk_read_each_others_messages() {
    let server = Server::start(&[ADMIN], GENEROUS);
    let data_dir = server.data_dir();
    let created = kagi(&data_dir, &["--output", "json", "keys", "create"], b"");
    assert_eq!(created.code, 0, "{}", created.stderr);
    let metadata: serde_json::Value = serde_json::from_slice(&created.stdout).expect("json");
    let key_arn = metadata["KeyMetadata"]["Arn"].as_str().expect("Arn").to_owned();
    let key_id = metadata["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned();
    let body = plaintext(150_000);
    let body_file = server.path("body.bin");
    std::fs::write(&body_file, &body).expect("write");
    for suite in ["0478", "0578"] {
        // kagi encrypts (naming the key by id: the message names it by ARN); the SDK decrypts.
        let args = [
            &["envelope", "encrypt", "--key", &key_id, "--suite", suite, "--frame-length", "4096"],
            &CONTEXT[..],
        ]
        .concat();
        let sealed = kagi(&data_dir, &args, &body);
        assert_eq!(sealed.code, 0, "{suite}: {}", sealed.stderr);
        let sealed_file = server.path(&format!("kagi-{suite}.bin"));
        std::fs::write(&sealed_file, &sealed.stdout).expect("write");
        let opened_file = server.path(&format!("kagi-{suite}.opened"));
        esdk(&server, &["decrypt", &key_arn, CONTEXT_JSON, arg(&sealed_file), arg(&opened_file)]);
        assert_eq!(std::fs::read(&opened_file).expect("read"), body, "{suite}");

        // The SDK encrypts under the kagi key; kagi decrypts.
        let python_file = server.path(&format!("python-{suite}.bin"));
        esdk(
            &server,
            &["encrypt", &key_arn, suite, CONTEXT_JSON, "4096", arg(&body_file), arg(&python_file)],
        );
        let message = std::fs::read(&python_file).expect("read");
        let decrypt = [&["envelope", "decrypt", "--key", key_arn.as_str()], &CONTEXT[..]].concat();
        let opened = kagi(&data_dir, &decrypt, &message);
        assert_eq!(opened.code, 0, "{suite}: {}", opened.stderr);
        assert!(opened.stdout == body, "{suite}: kagi decrypted the SDK's message wrongly");

        // Refused, with no plaintext: a changed byte in the header or in the first frame; the
        // message cut short within the first frame; another context.
        let header_len = kagi::envelope::format::parse_header(&message)
            .expect("the SDK's header parses")
            .expect("complete")
            .total_len();
        for (what, position) in [("header", 40), ("first frame", header_len + 100)] {
            let mut tampered = message.clone();
            tampered[position] ^= 0x01;
            check_refused(&data_dir, &key_arn, &tampered, &format!("{suite} {what}"));
        }
        // A change in the last frame (or, signed, the signature) is refused too, but the frames
        // before it, each authenticated, were written as they came: the documented price of
        // streaming (the output of a failed run is to be discarded).
        let mut tampered = message.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let run = kagi(&data_dir, &decrypt, &tampered);
        assert_eq!(run.code, 5, "{suite} last byte: {}", run.stderr);
        assert!(body.starts_with(&run.stdout), "{suite}: only authenticated frames are written");
        if suite == "0478" {
            assert!(run.stdout.len() < body.len(), "{suite}: the tampered frame is not written");
        }
        check_refused(&data_dir, &key_arn, &message[..header_len + 2000], "truncated");
        let other = kagi(
            &data_dir,
            &["envelope", "decrypt", "--key", &key_arn, "--context", "tenant=acme"],
            &message,
        );
        assert_eq!(other.code, 5, "another context: {}", other.stderr);
        assert!(other.stdout.is_empty());
    }
    // The SDK reads kagi's golden message (the bytes the unit tests pin).
    python::check(&server, "python", &["make_envelope_goldens.py", "check"]);
}

#[test]
fn envelope_commands_work_on_a_stopped_servers_directory() {
    let kagi = Kagi::new();
    let key = kagi.create_key(&[]);
    let body = plaintext(10_000);
    for suite in ["0478", "0578"] {
        let sealed = kagi.run_with_input(
            &["envelope", "encrypt", "--key", &key, "--suite", suite, "--frame-length", "1000"],
            &body,
        );
        assert_eq!(sealed.code, 0, "{}", sealed.stderr);
        let opened = kagi.run_with_input(&["envelope", "decrypt", "--key", &key], &sealed.stdout);
        assert_eq!(opened.code, 0, "{}", opened.stderr);
        assert!(opened.stdout == body);
        let refused = kagi.run_with_input(
            &["envelope", "decrypt", "--key", &key, "--context", "a=b"],
            &sealed.stdout,
        );
        assert_eq!(refused.code, 5, "{}", refused.stderr);
        assert!(refused.stdout.is_empty());
    }
    let other = kagi.create_key(&[]);
    let sealed = kagi.run_with_input(&["envelope", "encrypt", "--key", &key], b"x");
    let refused = kagi.run_with_input(&["envelope", "decrypt", "--key", &other], &sealed.stdout);
    assert_eq!(refused.code, 5, "another key: {}", refused.stderr);
    let bad = kagi.run_with_input(&["envelope", "encrypt", "--key", &key, "--suite", "0178"], b"");
    assert_eq!(bad.code, 6, "{}", bad.stderr);
}
