//! The audit trail through the real binary: operations leave a hash-chained trail in
//! `DATA_DIR/audit/` that `kagi audit verify` accepts, and rejects (exit 5, naming the file and
//! line) once one byte is changed or a file is removed; `kagi audit show` filters it.

use std::path::PathBuf;

use crate::support::{Kagi, arg};

const DAY: i64 = 86_400;

/// The trail files, in chain order (their names sort so).
fn trail_files(kagi: &Kagi) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kagi.data_dir().join("audit"))
        .expect("the trail directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn records(kagi: &Kagi, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--output", "json", "audit", "show"];
    args.extend_from_slice(filters);
    let document = kagi.ok(&args).json();
    document["Records"].as_array().expect("Records").clone()
}

#[test]
fn verify_accepts_the_trail_and_names_a_changed_byte() {
    let kagi = Kagi::new();
    let key = kagi.create_key(&[]);
    kagi.ok(&["aliases", "create", "alias/audited", &key]);
    let run = kagi.run_with_input(
        &["encrypt", "--key", "alias/audited", "--context", "tenant=acme-private", "--base64"],
        b"audited plaintext",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    kagi.ok(&["keys", "disable", &key]);
    let verified = kagi.ok(&["--output", "json", "audit", "verify"]).json();
    assert_eq!(verified["Records"], 4);
    assert_eq!(verified["Head"]["Seq"], 4);
    let table = kagi.ok(&["audit", "verify"]).stdout_text();
    assert!(table.starts_with("verified 4 records in 1 files"), "{table}");
    // The trail names keys and context keys, never plaintext or context values.
    let files = trail_files(&kagi);
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).expect("trail");
    assert!(text.contains("\"encryption_context_keys\":[\"tenant\"]"), "{text}");
    assert!(!text.contains("acme-private") && !text.contains("audited plaintext"), "{text}");

    // One byte of line 2 changed.
    let mut bytes = text.into_bytes();
    let line_2 = bytes.iter().position(|&b| b == b'\n').expect("two lines") + 1;
    bytes[line_2 + 10] ^= 0x01;
    std::fs::write(&files[0], bytes).expect("write");
    let name = files[0].file_name().and_then(|n| n.to_str()).expect("name").to_owned();
    for args in [vec!["audit", "verify"], vec!["audit", "verify", arg(&files[0])]] {
        let run = kagi.fails(&args, 5);
        assert!(run.stderr.contains(&format!("{name} line 2: altered")), "{}", run.stderr);
    }
    // A path that holds no trail is an invalid argument.
    kagi.fails(&["audit", "verify", arg(&kagi.path("nowhere"))], 6);
}

#[test]
fn a_trail_of_several_days_is_one_chain() {
    let mut kagi = Kagi::new();
    let key = kagi.create_key(&[]);
    kagi.now += DAY;
    kagi.ok(&["keys", "describe", &key]);
    kagi.now += DAY;
    kagi.ok(&["keys", "disable", &key]);
    let files = trail_files(&kagi);
    assert_eq!(files.len(), 3, "one file per day");
    let verified = kagi.ok(&["--output", "json", "audit", "verify"]).json();
    assert_eq!((verified["Records"].clone(), verified["Files"].clone()), (3.into(), 3.into()));
    // A file removed from the middle.
    std::fs::remove_file(&files[1]).expect("rm");
    let run = kagi.fails(&["audit", "verify"], 5);
    let last = files[2].file_name().and_then(|n| n.to_str()).expect("name");
    assert!(run.stderr.contains(&format!("{last} line 1: removed")), "{}", run.stderr);
}

#[test]
fn show_filters_by_key_principal_operation_and_time() {
    let mut kagi = Kagi::new();
    let first = kagi.create_key(&[]);
    let second = kagi.create_key(&[]);
    let run = kagi.run_with_input(&["encrypt", "--key", &first, "--base64"], b"x");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let start = kagi.now;
    kagi.now += 3600;
    kagi.ok(&["keys", "disable", &second]);
    let operations = |records: Vec<serde_json::Value>| -> Vec<String> {
        records.iter().map(|r| r["operation"].as_str().expect("operation").to_owned()).collect()
    };
    assert_eq!(operations(records(&kagi, &["--key", &first])), ["CreateKey", "Encrypt"]);
    assert_eq!(operations(records(&kagi, &["--key", &second])), ["CreateKey", "DisableKey"]);
    assert_eq!(operations(records(&kagi, &["--operation", "Encrypt"])), ["Encrypt"]);
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    assert_eq!(records(&kagi, &["--principal", &format!("cli:{user}")]).len(), 4);
    assert_eq!(records(&kagi, &["--principal", "nobody"]).len(), 0);
    let since = (start + 1).to_string();
    assert_eq!(operations(records(&kagi, &["--since", &since])), ["DisableKey"]);
    let until = start.to_string();
    assert_eq!(records(&kagi, &["--until", &until]).len(), 3);
    assert_eq!(operations(records(&kagi, &["--since", "2027-01-15T09:00:00Z"])), ["DisableKey"]);
    let table = kagi.ok(&["audit", "show", "--operation", "DisableKey"]).stdout_text();
    assert!(table.contains("2027-01-15T09:00:00Z") && table.contains(&second), "{table}");
    kagi.fails(&["audit", "show", "--since", "yesterday"], 6);
}

/// `kagi audit show | head`: a reader that closes the pipe early ends the command quietly
/// (exit 0, nothing on stderr), as it ends a Unix tool, rather than with a panic.
#[test]
fn show_into_a_closed_pipe_ends_quietly() {
    let kagi = Kagi::new();
    kagi.create_key(&[]);
    for output in ["table", "json"] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kagi"))
            .arg("--data-dir")
            .arg(kagi.data_dir())
            .args(["--output", output, "audit", "show"])
            .env("KAGI_FAKE_NOW", kagi.now.to_string())
            .env_remove("KAGI_DATA_DIR")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn kagi");
        let done = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(0), "--output {output}: {stderr}");
        assert!(stderr.is_empty(), "--output {output}: {stderr}");
    }
}
