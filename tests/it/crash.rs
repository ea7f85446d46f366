//! Crash consistency: `kill -9` at an arbitrary moment loses nothing that reported success.
//!
//! Two shell loops run `kagi` against one data directory at once, each iteration creating a
//! key, rotating it and encrypting under it, and printing a line after each success. The test
//! reads a varying number of those lines, then SIGKILLs the whole process group, wherever the
//! processes are (most likely inside a SQLite commit). It then checks, through the binary and
//! SQLite's own integrity check, that the keystore opens, every reported key, rotation and
//! ciphertext is there, and every key in it (reported or not) is whole. Three rounds run on the
//! same directory, so each also starts from a crashed one. No assertion depends on timing.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use kagi::crypto::BackendKind;

use crate::support::{Kagi, arg};

/// Each loop: create → rotate → encrypt, a line after each success, `FAILED …` on a failure.
const LOOPS: &str = r#"
kagi() { "$KAGI" --data-dir "$DATA_DIR" "$@" 2>>"$ERRORS"; }
work() {
    n=0
    while :; do
        n=$((n + 1)); tag="$ROUND$1$n"
        out=$(kagi --output json keys create --description "$tag") || { echo "FAILED create $tag"; exit 1; }
        id=$(printf '%s' "$out" | sed 's/.*"KeyId":"\([^"]*\)".*/\1/')
        echo "created $id"
        kagi keys rotate "$id" >/dev/null || { echo "FAILED rotate $id"; exit 1; }
        echo "rotated $id"
        printf '%s' "$tag" | kagi encrypt --key "$id" --context "tag=$tag" --out "$BLOBS/$tag" \
            || { echo "FAILED encrypt $tag"; exit 1; }
        echo "encrypted $id $tag"
    done
}
work -a- & work -b- & wait
"#;

/// What the loops reported before they died.
#[derive(Default)]
struct Reported {
    created: BTreeSet<String>,
    rotated: BTreeSet<String>,
    /// (key id, tag): the blob `BLOBS/tag` decrypts to `tag` under the context `tag=tag`.
    encrypted: Vec<(String, String)>,
}

impl Reported {
    fn add(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["created", id] => {
                self.created.insert((*id).to_owned());
            }
            ["rotated", id] => {
                self.rotated.insert((*id).to_owned());
            }
            ["encrypted", id, tag] => self.encrypted.push(((*id).to_owned(), (*tag).to_owned())),
            _ => panic!("the loop reported {line:?}"),
        }
    }
}

/// Starts the loops, reads `lines` success lines, kills the process group with SIGKILL, and
/// adds every line printed before the kill (the ones still in the pipe included).
fn run_and_kill(
    kagi: &Kagi,
    round: usize,
    (lines, delay): (usize, Duration),
    reported: &mut Reported,
) {
    let errors = kagi.path("loops.err");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(LOOPS)
        .env("KAGI", env!("CARGO_BIN_EXE_kagi"))
        .env("DATA_DIR", kagi.data_dir())
        .env("BLOBS", kagi.path("blobs"))
        .env("ERRORS", &errors)
        .env("ROUND", format!("r{round}"))
        .env_remove("KAGI_DATA_DIR")
        .env_remove("KAGI_ROOT_PASSPHRASE_ENV")
        .env_remove("KAGI_FAKE_NOW")
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the loops");
    let group = child.id();
    let mut output = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for _ in 0..lines {
        let line = output.next().expect("the loops ended early").expect("a line");
        reported.add(&line);
    }
    // Only moves where in a `kagi` process's life the kill lands (start, SQLite commit, audit
    // write, exit); no assertion depends on it.
    std::thread::sleep(delay);
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -9 of process group {group}");
    child.wait().expect("wait for the shell");
    // The pipe closes when the last process of the group is gone.
    for line in output {
        reported.add(&line.expect("a line"));
    }
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    assert!(!stderr.contains("panicked"), "kagi panicked: {stderr}");
}

/// The keystore opens, is whole, and holds everything reported. Keys and ciphertexts already
/// checked after an earlier round are not checked again (the loops never touch them again).
/// Returns how many keys exist that no loop reported.
fn check_after_crash(
    kagi: &Kagi,
    reported: &Reported,
    rounds: usize,
    checked: &mut (BTreeSet<String>, usize),
) -> usize {
    let listed = kagi.ok(&["--output", "json", "keys", "list"]).json();
    let listed: BTreeSet<String> = listed["Keys"]
        .as_array()
        .expect("Keys")
        .iter()
        .map(|key| key["KeyId"].as_str().expect("KeyId").to_owned())
        .collect();
    let integrity: String = rusqlite::Connection::open(kagi.data_dir().join("keystore.db"))
        .and_then(|db| db.query_row("PRAGMA integrity_check", [], |row| row.get(0)))
        .expect("integrity check");
    assert_eq!(integrity, "ok");

    let unreported: Vec<&String> = listed.difference(&reported.created).collect();
    assert!(
        reported.created.is_subset(&listed),
        "reported keys missing after the crash: {:?}",
        reported.created.difference(&listed).collect::<Vec<_>>()
    );
    // Each of the two loops may have created one key it did not live to report, per round.
    assert!(unreported.len() <= 2 * rounds, "unreported keys: {unreported:?}");
    let probe = kagi.write("probe", b"probe");
    for id in listed.difference(&checked.0) {
        // Every key, reported or not, is whole: enabled, versions 1..=n with n ≤ 2, the newest
        // current, and its material unseals.
        let metadata = kagi.describe(id);
        assert_eq!(metadata["KeyState"], "Enabled", "{id}");
        let rotations = kagi.ok(&["--output", "json", "keys", "rotation", "list", id]).json();
        let versions: Vec<&serde_json::Value> =
            rotations["Rotations"].as_array().expect("Rotations").iter().collect();
        let numbers: Vec<u64> =
            versions.iter().map(|v| v["Version"].as_u64().expect("n")).collect();
        assert!(numbers == [1] || numbers == [1, 2], "{id}: versions {numbers:?}");
        if reported.rotated.contains(id) {
            assert_eq!(numbers, [1, 2], "{id}: a reported rotation is missing");
        }
        let newest = versions.last().expect("a version");
        assert_eq!(newest["KeyMaterialState"], "CURRENT", "{id}");
        assert_eq!(metadata["CurrentKeyMaterialId"], newest["KeyMaterialId"], "{id}");
        kagi.ok(&[
            "encrypt",
            "--key",
            id,
            "--in",
            arg(&probe),
            "--out",
            arg(&kagi.path("probe.blob")),
        ]);
    }
    for (id, tag) in &reported.encrypted[checked.1..] {
        let blob = kagi.path(&format!("blobs/{tag}"));
        let context = format!("tag={tag}");
        let run = kagi.ok(&["decrypt", "--key", id, "--context", &context, "--in", arg(&blob)]);
        assert_eq!(run.stdout, tag.as_bytes(), "{tag}");
        // Encrypted after the rotation: under version 2 (blob bytes 17..21).
        let bytes = std::fs::read(&blob).expect("blob");
        assert_eq!(bytes[17..21], 2u32.to_be_bytes(), "{tag}");
    }
    let unreported = unreported.len();
    *checked = (listed, reported.encrypted.len());
    unreported
}

#[test]
fn kill_9_loses_no_reported_operation() {
    let kagi = Kagi::new();
    std::fs::create_dir(kagi.path("blobs")).expect("blobs directory");
    let mut reported = Reported::default();
    let mut checked = (BTreeSet::new(), 0);
    for round in 0..3 {
        // Between 12 and 27 lines and up to 100 ms more, so the kill lands at a different step
        // each time.
        let mut jitter = [0u8; 3];
        BackendKind::AwsLc.backend().fill_random(&mut jitter).expect("random");
        let lines = 12 + usize::from(jitter[0] % 16);
        let delay =
            Duration::from_micros(u64::from(u16::from_le_bytes([jitter[1], jitter[2]])) % 100_000);
        let before = reported.created.len();
        run_and_kill(&kagi, round, (lines, delay), &mut reported);
        let unreported = check_after_crash(&kagi, &reported, round + 1, &mut checked);
        println!(
            "round {round}: killed {delay:?} after {lines} lines; {} keys reported this round; in all {} \
             rotations and {} ciphertexts reported, {unreported} keys created but not reported",
            reported.created.len() - before,
            reported.rotated.len(),
            reported.encrypted.len()
        );
    }
}
