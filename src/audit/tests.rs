//! Tests of the audit trail: the chain, each kind of tampering `verify` must name, rotation
//! continuity, restarts, group commit, failed batches and the context modes.
//!
//! Each trail is real files in a temporary directory; faults come from the writer's test hooks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::chain::{self, GENESIS};
use super::verify::{self, TamperKind, VerifyError};
use super::*;
use crate::crypto::{BackendKind, MacAlgorithm};

const T0: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

// === harness ===

fn backend() -> &'static dyn crate::crypto::CryptoBackend {
    BackendKind::AwsLc.backend()
}

fn event(n: u64, time: i64) -> AuditEvent {
    AuditEvent {
        time,
        request_id: format!("r{n}"),
        principal: "alice".into(),
        source: "unit".into(),
        operation: "Encrypt".into(),
        key_arn: Some("arn:aws:kms:us-east-1:111122223333:key/k".into()),
        key_material_id: Some("m".into()),
        encryption_context: BTreeMap::from([("tenant".to_owned(), "acme-secret".to_owned())]),
        outcome: Outcome::Success,
        error_code: None,
        notes: Vec::new(),
    }
}

fn open(data_dir: &Path, config: &AuditConfig) -> FileSink {
    FileSink::open(data_dir, config, backend()).expect("open the trail")
}

/// Writes `count` records one after another, numbered from `from`, at `time`.
async fn write(sink: &FileSink, from: u64, count: u64, time: i64) {
    for n in from..from + count {
        sink.record(&event(n, time)).await.expect("record");
    }
}

fn trail_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    verify::trail_files(dir).expect("list").into_iter().map(|f| dir.join(f.name)).collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).expect("read").lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>())
        .expect("write");
}

/// A one-file trail of six records.
async fn six_records() -> (tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir().expect("tempdir");
    let sink = open(data.path(), &AuditConfig::default());
    write(&sink, 1, 6, T0).await;
    let file = files(&trail_dir(data.path())).remove(0);
    (data, file)
}

/// `verify` of `path` fails naming `file` (a file name), `line` and `kind`.
fn check_tamper(path: &Path, file: &Path, line: u64, kind: TamperKind) {
    match verify::verify(path) {
        Err(VerifyError::Tampered(tamper)) => {
            assert_eq!(
                (tamper.file.file_name(), tamper.line, tamper.kind),
                (file.file_name(), line, kind),
                "{tamper}"
            );
        }
        other => panic!("expected {kind:?} at {} line {line}, got {other:?}", file.display()),
    }
}

// === the chain ===

#[tokio::test]
async fn every_line_links_to_the_one_before() {
    let (data, file) = six_records().await;
    let lines = lines(&file);
    assert_eq!(lines.len(), 6);
    let mut prev = GENESIS.to_owned();
    for (index, line) in lines.iter().enumerate() {
        let record: AuditRecord = serde_json::from_str(line).expect("a record");
        assert_eq!(record.seq, Some(index as u64 + 1));
        assert_eq!(record.prev.as_deref(), Some(prev.as_str()));
        assert_eq!(record.v, RECORD_VERSION);
        assert_eq!(record.request_id, format!("r{}", index + 1));
        prev = chain::line_hash(line.as_bytes());
    }
    let verified = verify::verify(&trail_dir(data.path())).expect("verifies");
    assert_eq!((verified.records, verified.files, verified.first_seq), (6, 1, 1));
    assert_eq!(verified.head.hash, prev);
    assert!(verified.notes.is_empty(), "{:?}", verified.notes);
    // The persisted head is the last line.
    let head = file::read_head(&trail_dir(data.path()).join(chain::HEAD_FILE)).expect("head");
    assert_eq!(head, verified.head);
    // One file alone verifies too.
    assert_eq!(verify::verify(&file).expect("the file verifies").records, 6);
}

#[test]
fn file_names_and_times() {
    assert_eq!(chain::file_name(T0, 7), "audit-20270115T080000-000000000007.log");
    assert_eq!(
        chain::parse_file_name("audit-20270115T080000-000000000007.log"),
        Some((7, T0 / DAY))
    );
    assert_eq!(chain::parse_file_name("audit.log"), None);
    assert_eq!(chain::parse_file_name("audit-20270115T080000-7.log"), None);
    assert_eq!(chain::format_utc(T0), "2027-01-15T08:00:00Z");
    assert_eq!(chain::format_utc(0), "1970-01-01T00:00:00Z");
    for text in ["1800000000", "2027-01-15T08:00:00Z", "2027-01-15T08:00:00"] {
        assert_eq!(chain::parse_time(text), Some(T0), "{text}");
    }
    assert_eq!(chain::parse_time("2027-01-15"), Some(T0 - 8 * 3600));
    assert_eq!(chain::parse_time("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    assert_eq!(chain::parse_time("yesterday"), None);
    assert_eq!(chain::parse_time("2027-13-01"), None);
}

// === tampering: verify names the first damaged line ===

#[tokio::test]
async fn an_altered_byte_is_named() {
    let (data, file) = six_records().await;
    let mut lines = lines(&file);
    lines[2] = lines[2].replace("alice", "alicf");
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 3, TamperKind::Altered);
    // A byte of the chain fields themselves.
    let (data, file) = six_records().await;
    let mut lines = lines_of(&file);
    lines[3] = lines[3].replacen("\"seq\":4", "\"seq\":9", 1);
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 4, TamperKind::Altered);
    // One that breaks the JSON.
    let (data, file) = six_records().await;
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[0] = b'[';
    std::fs::write(&file, bytes).expect("write");
    check_tamper(&trail_dir(data.path()), &file, 1, TamperKind::Altered);
}

fn lines_of(path: &Path) -> Vec<String> {
    lines(path)
}

#[tokio::test]
async fn an_altered_last_line_is_named_by_the_head() {
    let (data, file) = six_records().await;
    let mut lines = lines(&file);
    lines[5] = lines[5].replace("acme", "acmf").replace("alice", "mallory");
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 6, TamperKind::Altered);
}

#[tokio::test]
async fn a_removed_line_is_named() {
    let (data, file) = six_records().await;
    let mut lines = lines(&file);
    lines.remove(2);
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 3, TamperKind::Removed);
    // The first line of a file: its name says where it starts.
    let (data, file) = six_records().await;
    let mut lines = lines_of(&file);
    lines.remove(0);
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 1, TamperKind::Removed);
}

#[tokio::test]
async fn an_inserted_line_is_named() {
    // A copy of a line.
    let (data, file) = six_records().await;
    let mut lines = lines(&file);
    let copy = lines[1].clone();
    lines.insert(2, copy);
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 3, TamperKind::Inserted);
    // A forged line that links to its predecessor: the true successor then shows it.
    let (data, file) = six_records().await;
    let mut lines = lines_of(&file);
    let mut forged: AuditRecord = serde_json::from_str(&lines[2]).expect("record");
    forged.principal = "mallory".into();
    forged.prev = Some(chain::line_hash(lines[1].as_bytes()));
    lines.insert(2, serde_json::to_string(&forged).expect("json"));
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 3, TamperKind::Inserted);
    // A forged line numbered as the next record but linked to nothing.
    let (data, file) = six_records().await;
    let mut lines = lines_of(&file);
    let mut forged: AuditRecord = serde_json::from_str(&lines[2]).expect("record");
    forged.principal = "mallory".into();
    lines.insert(2, serde_json::to_string(&forged).expect("json").replace("r3", "r9"));
    let mut forged: AuditRecord = serde_json::from_str(&lines[2]).expect("record");
    forged.prev = Some(GENESIS.into());
    lines[2] = serde_json::to_string(&forged).expect("json");
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 3, TamperKind::Inserted);
    // Something that is not a record.
    let (data, file) = six_records().await;
    let mut lines = lines_of(&file);
    lines.insert(4, "{\"note\":\"hello\"}".into());
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 5, TamperKind::Inserted);
}

#[tokio::test]
async fn swapped_lines_are_named() {
    let (data, file) = six_records().await;
    let mut lines = lines(&file);
    lines.swap(2, 3);
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 3, TamperKind::Reordered);
}

#[tokio::test]
async fn a_truncated_trail_is_named() {
    // Whole lines cut from the end: the head still says where the trail ended.
    let (data, file) = six_records().await;
    let mut lines = lines(&file);
    lines.truncate(4);
    write_lines(&file, &lines);
    check_tamper(&trail_dir(data.path()), &file, 5, TamperKind::Truncated);
    // Cut inside a line.
    let (data, file) = six_records().await;
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() - 10]).expect("write");
    check_tamper(&trail_dir(data.path()), &file, 6, TamperKind::Truncated);
    // The head removed: the end can no longer be checked, which is itself a failure.
    let (data, _) = six_records().await;
    std::fs::remove_file(trail_dir(data.path()).join(chain::HEAD_FILE)).expect("rm head");
    let head_path = trail_dir(data.path()).join(chain::HEAD_FILE);
    check_tamper(&trail_dir(data.path()), &head_path, 1, TamperKind::Removed);
}

// === rotation ===

/// Every batch starts a new file.
fn tiny_files() -> AuditConfig {
    AuditConfig { max_file_bytes: 1, ..AuditConfig::default() }
}

#[tokio::test]
async fn rotation_by_size_continues_the_chain() {
    let data = tempfile::tempdir().expect("tempdir");
    let sink = open(data.path(), &tiny_files());
    write(&sink, 1, 4, T0).await;
    let dir = trail_dir(data.path());
    let files = files(&dir);
    assert_eq!(files.len(), 4);
    let mut prev = GENESIS.to_owned();
    for (index, file) in files.iter().enumerate() {
        let lines = lines(file);
        assert_eq!(lines.len(), 1);
        let record: AuditRecord = serde_json::from_str(&lines[0]).expect("record");
        // Each file's first line chains to the previous file's last line.
        assert_eq!(record.prev.as_deref(), Some(prev.as_str()));
        let name = file.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(name, chain::file_name(T0, index as u64 + 1));
        prev = chain::line_hash(lines[0].as_bytes());
    }
    let verified = verify::verify(&dir).expect("the directory verifies");
    assert_eq!((verified.records, verified.files), (4, 4));
    // A file removed from the middle.
    std::fs::remove_file(&files[1]).expect("rm");
    check_tamper(&dir, &files[2], 1, TamperKind::Removed);
}

#[tokio::test]
async fn rotation_by_day_and_across_restarts() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = trail_dir(data.path());
    {
        let sink = open(data.path(), &AuditConfig::default());
        write(&sink, 1, 2, T0).await;
        write(&sink, 3, 1, T0 + 3600).await;
        write(&sink, 4, 2, T0 + DAY).await;
    }
    assert_eq!(files(&dir).len(), 2, "one file per day");
    // A new sink continues the chain, in the same day's file.
    {
        let sink = open(data.path(), &AuditConfig::default());
        write(&sink, 6, 2, T0 + DAY + 60).await;
    }
    let files = files(&dir);
    assert_eq!(files.len(), 2);
    assert_eq!(lines(&files[1]).len(), 4);
    assert!(files[1].to_string_lossy().ends_with("audit-20270116T080000-000000000004.log"));
    let verified = verify::verify(&dir).expect("verifies");
    assert_eq!(verified.records, 7);
    // The last file removed: the head still names it.
    std::fs::remove_file(&files[1]).expect("rm");
    check_tamper(&dir, &files[0], 4, TamperKind::Truncated);
}

#[tokio::test]
async fn one_process_writes_a_trail_at_a_time() {
    let data = tempfile::tempdir().expect("tempdir");
    let first = open(data.path(), &AuditConfig::default());
    write(&first, 1, 1, T0).await;
    // A second writer would fork the chain: it waits for the lock, then gives up.
    let started = std::time::Instant::now();
    let second = FileSink::open(data.path(), &AuditConfig::default(), backend());
    assert!(second.is_err());
    assert!(started.elapsed() >= Duration::from_secs(4), "it waited");
    // Once the first is gone, the trail opens and continues.
    drop(first);
    let second = open(data.path(), &AuditConfig::default());
    write(&second, 2, 1, T0).await;
    assert_eq!(verify::verify(&trail_dir(data.path())).expect("verifies").records, 2);
}

#[tokio::test]
async fn open_refuses_a_trail_shorter_than_its_head() {
    let (data, file) = six_records().await;
    let mut lines = lines(&file);
    lines.truncate(5);
    write_lines(&file, &lines);
    assert!(FileSink::open(data.path(), &AuditConfig::default(), backend()).is_err());
}

#[tokio::test]
async fn a_torn_last_line_is_cut_at_open() {
    let (data, file) = six_records().await;
    // A crash in the middle of a write that was never acknowledged.
    let mut bytes = std::fs::read(&file).expect("read");
    bytes.extend_from_slice(b"{\"v\":2,\"time\":1800000000,\"req");
    std::fs::write(&file, bytes).expect("write");
    let sink = open(data.path(), &AuditConfig::default());
    write(&sink, 7, 1, T0).await;
    assert_eq!(verify::verify(&trail_dir(data.path())).expect("verifies").records, 7);
}

// === group commit and failures ===

/// Queues `count` records while the writer is held at its gate, then releases it.
async fn record_batch(sink: &FileSink, from: u64, count: u64) -> Vec<Result<(), AuditError>> {
    let (release, gate) = std::sync::mpsc::channel();
    *sink.hooks().gate.lock().expect("gate") = Some(gate);
    let events: Vec<AuditEvent> = (from..from + count).map(|n| event(n, T0)).collect();
    // `record` queues the line at once; the futures only wait.
    let waits: Vec<_> = events.iter().map(|e| sink.record(e)).collect();
    release.send(()).expect("release");
    let mut results = Vec::new();
    for wait in waits {
        results.push(wait.await);
    }
    results
}

#[tokio::test]
async fn concurrent_records_share_one_sync() {
    let data = tempfile::tempdir().expect("tempdir");
    let sink = open(data.path(), &AuditConfig::default());
    let results = record_batch(&sink, 1, 64).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        sink.stats(),
        SinkStats { records: 64, batches: 1, syncs: 1, failed_batches: 0 },
        "64 records, one write and one sync"
    );
    assert_eq!(verify::verify(&trail_dir(data.path())).expect("verifies").records, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_are_batched() {
    let data = tempfile::tempdir().expect("tempdir");
    let sink = std::sync::Arc::new(open(data.path(), &AuditConfig::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200 {
        let sink = std::sync::Arc::clone(&sink);
        tasks.spawn(async move { sink.record(&event(n, T0)).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("task").expect("record");
    }
    let stats = sink.stats();
    assert_eq!(stats.records, 200);
    assert!(stats.syncs < 200, "some records shared a sync: {stats:?}");
    assert_eq!(verify::verify(&trail_dir(data.path())).expect("verifies").records, 200);
}

#[tokio::test]
async fn a_failed_batch_fails_every_record_and_the_next_batch_retries() {
    for fault in ["write", "sync"] {
        let data = tempfile::tempdir().expect("tempdir");
        let sink = open(data.path(), &AuditConfig::default());
        write(&sink, 1, 2, T0).await;
        let flag = match fault {
            "write" => &sink.hooks().fail_write,
            _ => &sink.hooks().fail_sync,
        };
        flag.store(true, Ordering::SeqCst);
        let results = record_batch(&sink, 3, 5).await;
        assert!(results.iter().all(Result::is_err), "{fault}: every record of the batch fails");
        flag.store(false, Ordering::SeqCst);
        // The sink is still usable and the chain continues from the last durable line.
        write(&sink, 8, 2, T0).await;
        let dir = trail_dir(data.path());
        let verified = verify::verify(&dir).expect("verifies");
        assert_eq!(verified.records, 4, "{fault}");
        let ids: Vec<String> = verify::read_records(&dir)
            .expect("records")
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, ["r1", "r2", "r8", "r9"], "{fault}");
        assert_eq!(sink.stats().failed_batches, 1);
    }
}

// === what a line carries ===

#[tokio::test]
async fn context_modes() {
    let record_with = |mode: ContextMode| async move {
        let data = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig { context_mode: mode, ..AuditConfig::default() };
        let sink = open(data.path(), &config);
        write(&sink, 1, 1, T0).await;
        let line = lines(&files(&trail_dir(data.path()))[0]).remove(0);
        (data, line)
    };
    let (_data, line) = record_with(ContextMode::KeysOnly).await;
    assert!(line.contains("\"encryption_context_keys\":[\"tenant\"]"), "{line}");
    assert!(!line.contains("acme-secret"), "{line}");

    let (_data, line) = record_with(ContextMode::AsGiven).await;
    assert!(line.contains("\"encryption_context\":{\"tenant\":\"acme-secret\"}"), "{line}");

    let (data, line) = record_with(ContextMode::Hmac).await;
    assert!(!line.contains("acme-secret"), "{line}");
    let key_path = data.path().join("audit-hmac.key");
    let key = std::fs::read(&key_path).expect("the trail's key");
    assert_eq!(key.len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let expected =
        hex::encode(backend().hmac(MacAlgorithm::HmacSha256, &key, b"acme-secret").expect("hmac"));
    let record: AuditRecord = serde_json::from_str(&line).expect("record");
    assert_eq!(record.encryption_context_hmac, Some(BTreeMap::from([("tenant".into(), expected)])));
    // The key is kept: a second sink HMACs the same value the same way.
    let sink = open(
        data.path(),
        &AuditConfig { context_mode: ContextMode::Hmac, ..AuditConfig::default() },
    );
    write(&sink, 2, 1, T0).await;
    let records = verify::read_records(&trail_dir(data.path())).expect("records");
    assert_eq!(records[0].encryption_context_hmac, records[1].encryption_context_hmac);

    assert_eq!(ContextMode::from_name("keys-only"), Some(ContextMode::KeysOnly));
    assert_eq!(ContextMode::default(), ContextMode::KeysOnly);
}

#[test]
fn filters() {
    let mut record: AuditRecord =
        serde_json::from_str(&render_keys_only(&event(1, T0))).expect("record");
    record.seq = Some(1);
    let matches = |filter: Filter| filter.matches(&record);
    use verify::Filter;
    assert!(matches(Filter::default()));
    assert!(matches(Filter { key: Some("k".into()), ..Filter::default() }));
    assert!(matches(Filter {
        key: Some("arn:aws:kms:us-east-1:111122223333:key/k".into()),
        ..Filter::default()
    }));
    assert!(!matches(Filter { key: Some("other".into()), ..Filter::default() }));
    assert!(matches(Filter {
        principal: Some("alice".into()),
        operation: Some("Encrypt".into()),
        since: Some(T0),
        until: Some(T0),
        ..Filter::default()
    }));
    assert!(!matches(Filter { since: Some(T0 + 1), ..Filter::default() }));
    assert!(!matches(Filter { operation: Some("Decrypt".into()), ..Filter::default() }));
}
