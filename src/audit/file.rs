//! [`FileSink`]: the trail as chained JSON lines in a directory, written by group commit.
//!
//! `record` renders the event (applying the context mode) and queues the line for one writer
//! thread. The writer takes everything queued, seals each line into the chain (`chain.rs`),
//! writes them with one `write`, syncs the file once, records the new chain head, and only then
//! completes every request of the batch: many requests share one fsync, and none returns before
//! its line is durable. A failed write or sync fails every request of the batch; the file is cut
//! back to its last durable length so the next batch continues the chain from the last durable
//! line.
//!
//! Files rotate by size and by UTC day; a new file's first line chains to the previous file's
//! last line, so a directory is one chain. The head (`head.json`) is rewritten in place after
//! every batch, without its own sync: after a crash it may lag the log, never lead it.
//!
//! One process writes a trail at a time (an exclusive lock on `head.json`, held by the writer).
//!
//! The sink itself never times out: the keystore bounds its wait with [`AuditSink::timeout`].
//! A line queued before the wait gave up may still be written later.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::chain::{self, ChainHead, HEAD_FILE, Link};
use super::verify::trail_files;
use super::{
    AuditConfig, AuditError, AuditEvent, AuditFuture, AuditRecord, AuditSink, ContextMode,
    RECORD_VERSION,
};
use crate::crypto::{CryptoBackend, MacAlgorithm, SecretBytes};

/// Most records in one batch.
const MAX_BATCH_RECORDS: usize = 4096;
/// Most bytes in one batch (a batch is one buffer and one write).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// The head file is rewritten in place at this fixed size, so a rewrite never leaves a longer
/// old tail behind.
const HEAD_LEN: usize = 256;
const HMAC_KEY_LEN: usize = 32;
/// How long opening a trail waits for another process to release it.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The trail writer. See the module documentation.
#[derive(Debug)]
pub struct FileSink {
    queue: mpsc::Sender<Pending>,
    renderer: Renderer,
    timeout: Duration,
    dir: PathBuf,
    stats: Arc<Stats>,
    #[cfg(test)]
    hooks: Arc<Hooks>,
}

/// Counters of a [`FileSink`] since it was opened.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct SinkStats {
    /// Records made durable.
    pub records: u64,
    /// Batches committed (each one write and one file sync).
    pub batches: u64,
    /// Syncs of trail files (one per batch attempted that reached the sync).
    pub syncs: u64,
    /// Batches that failed.
    pub failed_batches: u64,
}

impl FileSink {
    /// Opens the trail of `config` under `data_dir` (creating the directory, mode 0700), checks
    /// that its last line agrees with the persisted chain head, and starts the writer thread.
    /// A torn last line (a crash during a write that was never acknowledged) is cut off.
    ///
    /// # Errors
    /// When the directory or the HMAC key cannot be made or read, or the trail is shorter than
    /// its head says or ends in a line that does not match it (run `kagi audit verify`; moving
    /// the directory aside starts a new trail).
    pub fn open(
        data_dir: &Path,
        config: &AuditConfig,
        backend: &'static dyn CryptoBackend,
    ) -> Result<Self, AuditError> {
        let AuditConfig { dir, max_file_bytes, rotate_daily, context_mode, hmac_key_file, timeout } =
            config;
        let dir = data_dir.join(dir);
        create_private_dir(&dir).map_err(|e| io_error(&dir, &e))?;
        let hmac_key = match context_mode {
            ContextMode::Hmac => Some(load_or_create_key(&data_dir.join(hmac_key_file), backend)?),
            ContextMode::AsGiven | ContextMode::KeysOnly => None,
        };
        let renderer = Renderer { mode: *context_mode, hmac_key, backend };
        let stats = Arc::new(Stats::default());
        #[cfg(test)]
        let hooks = Arc::new(Hooks::default());
        #[cfg_attr(not(test), allow(unused_mut))]
        let mut writer = Writer::recover(&dir, *max_file_bytes, *rotate_daily, Arc::clone(&stats))?;
        #[cfg(test)]
        {
            writer.hooks = Arc::clone(&hooks);
        }
        let (queue, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("kagi-audit".into())
            .spawn(move || writer.run(&receiver))
            .map_err(|e| AuditError(format!("cannot start the audit writer: {e}")))?;
        Ok(Self {
            queue,
            renderer,
            timeout: *timeout,
            dir,
            stats,
            #[cfg(test)]
            hooks,
        })
    }

    /// The trail's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counters so far.
    pub fn stats(&self) -> SinkStats {
        self.stats.snapshot()
    }

    #[cfg(test)]
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.hooks
    }
}

impl AuditSink for FileSink {
    fn record(&self, event: &AuditEvent) -> AuditFuture<'_> {
        let (done, completion) = oneshot::channel();
        let queued = self.renderer.render(event).and_then(|body| {
            self.queue
                .send(Pending { body, time: event.time, done })
                .map_err(|_| AuditError("the audit writer has stopped".into()))
        });
        Box::pin(async move {
            queued?;
            completion
                .await
                .unwrap_or_else(|_| Err(AuditError("the audit writer has stopped".into())))
        })
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

// === impl Renderer ===

/// Turns an event into the JSON object of its line (without `seq` and `prev`).
struct Renderer {
    mode: ContextMode,
    /// # Security
    /// The trail's HMAC key ([`ContextMode::Hmac`]); `SecretBytes` never prints it.
    hmac_key: Option<SecretBytes>,
    backend: &'static dyn CryptoBackend,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Renderer {
    fn render(&self, event: &AuditEvent) -> Result<Vec<u8>, AuditError> {
        // Destructured in full: a new field must be placed here on purpose.
        let AuditEvent {
            time,
            request_id,
            principal,
            source,
            operation,
            key_arn,
            key_material_id,
            encryption_context,
            outcome,
            error_code,
            notes,
        } = event;
        let mut record = AuditRecord {
            v: RECORD_VERSION,
            time: *time,
            request_id: request_id.clone(),
            principal: principal.clone(),
            source: source.clone(),
            operation: operation.clone(),
            key_arn: key_arn.clone(),
            key_material_id: key_material_id.clone(),
            encryption_context_keys: Vec::new(),
            encryption_context: None,
            encryption_context_hmac: None,
            outcome: *outcome,
            error_code: error_code.map(str::to_owned),
            notes: notes.clone(),
            seq: None,
            prev: None,
        };
        if !encryption_context.is_empty() {
            match (self.mode, &self.hmac_key) {
                (ContextMode::AsGiven, _) => {
                    record.encryption_context = Some(encryption_context.clone());
                }
                (ContextMode::Hmac, Some(key)) => {
                    let mut hashed = std::collections::BTreeMap::new();
                    for (name, value) in encryption_context {
                        let mac = self
                            .backend
                            .hmac(MacAlgorithm::HmacSha256, key.expose_secret(), value.as_bytes())
                            .map_err(|e| AuditError(format!("context HMAC: {e}")))?;
                        hashed.insert(name.clone(), hex::encode(mac));
                    }
                    record.encryption_context_hmac = Some(hashed);
                }
                (ContextMode::KeysOnly | ContextMode::Hmac, _) => {
                    record.encryption_context_keys = encryption_context.keys().cloned().collect();
                }
            }
        }
        serde_json::to_vec(&record).map_err(|e| AuditError(format!("cannot render: {e}")))
    }
}

#[cfg(test)]
impl Renderer {
    pub(crate) fn keys_only(backend: &'static dyn CryptoBackend) -> Self {
        Self { mode: ContextMode::KeysOnly, hmac_key: None, backend }
    }
}

/// Renders `event` as the default sink would (keys only), for tests that look at lines.
#[cfg(test)]
pub(crate) fn render_keys_only(event: &AuditEvent) -> String {
    let backend = crate::crypto::BackendKind::AwsLc.backend();
    String::from_utf8(Renderer::keys_only(backend).render(event).expect("render")).expect("utf-8")
}

// === impl Writer ===

/// A line waiting for its batch.
struct Pending {
    body: Vec<u8>,
    time: i64,
    done: oneshot::Sender<Result<(), AuditError>>,
}

/// The open trail file.
struct Current {
    file: File,
    name: String,
    /// The UTC day of the file's first record (from its name).
    day: i64,
    /// Its durable length: everything before is synced and in the chain.
    len: u64,
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    rotate_daily: bool,
    head: ChainHead,
    current: Option<Current>,
    /// A batch failed: cut the file back to its durable length before writing again.
    needs_repair: bool,
    head_file: Option<File>,
    stats: Arc<Stats>,
    #[cfg(test)]
    hooks: Arc<Hooks>,
}

impl Writer {
    /// Finds where the trail in `dir` ends and checks it against the persisted head.
    fn recover(
        dir: &Path,
        max_file_bytes: u64,
        rotate_daily: bool,
        stats: Arc<Stats>,
    ) -> Result<Self, AuditError> {
        // One writer per trail, or two processes would each continue the chain from the same
        // head and fork it: the head file is locked for the writer's life.
        let head_path = dir.join(HEAD_FILE);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        set_private_mode(&mut options);
        let head_file = options.open(&head_path).map_err(|e| io_error(&head_path, &e))?;
        lock_trail(&head_file, &head_path)?;
        let files = trail_files(dir).map_err(|e| io_error(dir, &e))?;
        let mut head = ChainHead::genesis();
        let mut current = None;
        // The last file holds the end of the chain unless it is empty (a crash right after it
        // was made); then the file before does.
        for (index, trail_file) in files.iter().enumerate().rev().take(2) {
            let path = dir.join(&trail_file.name);
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_error(&path, &e))?;
            let (complete_len, last_line) =
                last_line(&mut file).map_err(|e| io_error(&path, &e))?;
            if file.metadata().map_err(|e| io_error(&path, &e))?.len() != complete_len {
                // A torn line: its write was never acknowledged.
                file.set_len(complete_len)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io_error(&path, &e))?;
            }
            if index + 1 == files.len() {
                current = Some(Current {
                    file,
                    name: trail_file.name.clone(),
                    day: trail_file.day,
                    len: complete_len,
                });
            }
            if let Some(line) = last_line {
                let link: Link = serde_json::from_slice(&line).map_err(|_| {
                    AuditError(format!(
                        "the last line of {} is not an audit record: run `kagi audit verify`",
                        path.display()
                    ))
                })?;
                head = ChainHead {
                    seq: link.seq,
                    hash: chain::line_hash(&line),
                    file: trail_file.name.clone(),
                };
                break;
            }
        }
        if let Some(persisted) = read_head(&head_path) {
            let behind = persisted.seq > head.seq;
            let differs = persisted.seq == head.seq && persisted.hash != head.hash;
            if behind || differs {
                return Err(AuditError(format!(
                    "the audit trail in {} ends at record {} but its head is record {} ({}): the \
                     trail was truncated or altered; run `kagi audit verify`, and move the \
                     directory aside to start a new trail",
                    dir.display(),
                    head.seq,
                    persisted.seq,
                    persisted.file
                )));
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            max_file_bytes,
            rotate_daily,
            head,
            current,
            needs_repair: false,
            head_file: Some(head_file),
            stats,
            #[cfg(test)]
            hooks: Arc::new(Hooks::default()),
        })
    }

    /// Takes batches until every [`FileSink`] handle is gone.
    fn run(mut self, queue: &mpsc::Receiver<Pending>) {
        while let Ok(first) = queue.recv() {
            #[cfg(test)]
            self.hooks.wait_at_gate();
            let mut bytes = first.body.len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(pending) => {
                        bytes += pending.body.len();
                        batch.push(pending);
                    }
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch);
            for pending in batch {
                // A requester that stopped waiting (timed out) has dropped its receiver.
                let _ = pending.done.send(result.clone());
            }
        }
    }

    /// Writes one batch durably, or nothing.
    fn commit(&mut self, batch: &[Pending]) -> Result<(), AuditError> {
        let result = self.try_commit(batch);
        if result.is_err() {
            self.needs_repair = true;
            self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            // Best effort now; the next batch retries before writing.
            let _ = self.repair();
        }
        result
    }

    fn try_commit(&mut self, batch: &[Pending]) -> Result<(), AuditError> {
        let Some(first) = batch.first() else { return Ok(()) };
        if self.needs_repair {
            self.repair()?;
        }
        self.rotate_if_due(first.time)?;
        let mut buffer = Vec::with_capacity(batch.iter().map(|p| p.body.len() + 100).sum());
        let mut seq = self.head.seq;
        let mut hash = self.head.hash.clone();
        for pending in batch {
            seq += 1;
            let start = buffer.len();
            chain::seal_line(&pending.body, seq, &hash, &mut buffer);
            hash = chain::line_hash(&buffer[start..]);
            buffer.push(b'\n');
        }
        let Some(current) = self.current.as_mut() else {
            return Err(AuditError("no trail file is open; this is a bug".into()));
        };
        let path = self.dir.join(&current.name);
        #[cfg(test)]
        let hooks = Arc::clone(&self.hooks);
        let written = (|| {
            #[cfg(test)]
            if hooks.fail_write.load(Ordering::SeqCst) {
                // Half the batch reaches the file, as a full disk might leave it.
                current.file.write_all(&buffer[..buffer.len() / 2])?;
                return Err(io::Error::other("injected write failure"));
            }
            current.file.write_all(&buffer)?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            #[cfg(test)]
            if hooks.fail_sync.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected sync failure"));
            }
            current.file.sync_data()
        })();
        written.map_err(|e| io_error(&path, &e))?;
        current.len += buffer.len() as u64;
        self.head = ChainHead { seq, hash, file: current.name.clone() };
        self.write_head();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Cuts the current file back to its durable length after a failed batch.
    fn repair(&mut self) -> Result<(), AuditError> {
        if let Some(current) = self.current.as_mut() {
            let path = self.dir.join(&current.name);
            current
                .file
                .set_len(current.len)
                .and_then(|()| current.file.sync_data())
                .map_err(|e| io_error(&path, &e))?;
        }
        self.needs_repair = false;
        Ok(())
    }

    /// Starts a new file when there is none, the current one is full, or (daily rotation) the
    /// batch's first record is of another UTC day than the file.
    fn rotate_if_due(&mut self, time: i64) -> Result<(), AuditError> {
        let due = match &self.current {
            None => true,
            Some(current) if current.len == 0 => false,
            Some(current) => {
                current.len >= self.max_file_bytes
                    || (self.rotate_daily && current.day != chain::day_of(time))
            }
        };
        if !due {
            return Ok(());
        }
        let name = chain::file_name(time, self.head.seq + 1);
        let path = self.dir.join(&name);
        let mut options = OpenOptions::new();
        options.read(true).append(true).create_new(true);
        set_private_mode(&mut options);
        let file = options.open(&path).map_err(|e| io_error(&path, &e))?;
        // The new name must survive a crash as much as the lines written into it.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_error(&self.dir, &e))?;
        self.current = Some(Current { file, name, day: chain::day_of(time), len: 0 });
        Ok(())
    }

    /// Rewrites the head file in place. Not synced: it may lag the log after a crash, never
    /// lead it, because it is written after the log's sync. A failure is retried next batch.
    fn write_head(&mut self) {
        let Some(file) = self.head_file.as_mut() else { return };
        let Ok(mut text) = serde_json::to_vec(&self.head) else { return };
        if text.len() >= HEAD_LEN {
            return;
        }
        text.resize(HEAD_LEN - 1, b' ');
        text.push(b'\n');
        let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.write_all(&text));
    }
}

/// Takes the exclusive lock of a trail, waiting up to [`LOCK_WAIT`] for another process (a
/// concurrent `kagi` command) to finish with it.
fn lock_trail(head_file: &File, head_path: &Path) -> Result<(), AuditError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match head_file.try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(AuditError(format!(
                    "{}: the audit trail is in use by another kagi process",
                    head_path.display()
                )));
            }
            Err(fs::TryLockError::Error(error)) => return Err(io_error(head_path, &error)),
        }
    }
}

/// The persisted head, if the file exists and reads as one.
pub(crate) fn read_head(path: &Path) -> Option<ChainHead> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(text.trim_ascii()).ok()
}

/// The length of `file` up to its last newline, and its last complete line (without the
/// newline), reading backwards from the end.
fn last_line(file: &mut File) -> io::Result<(u64, Option<Vec<u8>>)> {
    const CHUNK: u64 = 64 << 10;
    let len = file.metadata()?.len();
    let mut start = len;
    let mut tail: Vec<u8> = Vec::new();
    while start > 0 && tail.iter().filter(|&&b| b == b'\n').count() < 2 {
        let chunk = CHUNK.min(start);
        start -= chunk;
        let mut buffer = vec![0; usize::try_from(chunk).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buffer)?;
        buffer.extend_from_slice(&tail);
        tail = buffer;
    }
    let Some(last_newline) = tail.iter().rposition(|&b| b == b'\n') else {
        return Ok((0, None));
    };
    let line_start = tail[..last_newline].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    Ok((start + last_newline as u64 + 1, Some(tail[line_start..last_newline].to_vec())))
}

fn load_or_create_key(
    path: &Path,
    backend: &'static dyn CryptoBackend,
) -> Result<SecretBytes, AuditError> {
    match fs::read(path) {
        Ok(bytes) => {
            let key = SecretBytes::new(bytes);
            if key.len() != HMAC_KEY_LEN {
                return Err(AuditError(format!(
                    "{} is not a {HMAC_KEY_LEN}-byte key",
                    path.display()
                )));
            }
            Ok(key)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut key = SecretBytes::zeroed(HMAC_KEY_LEN);
            backend
                .fill_random(key.expose_secret_mut())
                .map_err(|e| AuditError(format!("cannot make the trail's HMAC key: {e}")))?;
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            set_private_mode(&mut options);
            options
                .open(path)
                .and_then(|mut file| {
                    file.write_all(key.expose_secret())?;
                    file.sync_all()
                })
                .map_err(|e| io_error(path, &e))?;
            Ok(key)
        }
        Err(error) => Err(io_error(path, &error)),
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn set_private_mode(options: &mut OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = options;
}

fn io_error(path: &Path, error: &io::Error) -> AuditError {
    AuditError(format!("{}: {error}", path.display()))
}

// === impl Stats ===

#[derive(Debug, Default)]
struct Stats {
    records: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    failed_batches: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> SinkStats {
        SinkStats {
            records: self.records.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
        }
    }
}

// === test hooks ===

/// Fault injection and pacing of the writer, for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    /// Every batch writes half its bytes, then fails.
    pub(crate) fail_write: std::sync::atomic::AtomicBool,
    /// Every batch writes, then its sync fails.
    pub(crate) fail_sync: std::sync::atomic::AtomicBool,
    /// When set, the writer waits for a message (or the sender's drop) after taking a batch's
    /// first record and before taking the rest.
    pub(crate) gate: std::sync::Mutex<Option<mpsc::Receiver<()>>>,
}

#[cfg(test)]
impl Hooks {
    fn wait_at_gate(&self) {
        let gate = self.gate.lock().expect("gate lock").take();
        if let Some(gate) = gate {
            let _ = gate.recv();
        }
    }
}
