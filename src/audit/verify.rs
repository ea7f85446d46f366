//! Reading a trail back: [`verify`] checks the hash chain of a file or a directory of rotated
//! files and names the first altered, removed, inserted or reordered line; [`read_records`] and
//! [`Filter`] serve `kagi audit show`.
//!
//! Verification streams the trail once, holding one line of lookahead: a broken link between
//! lines `n-1` and `n` is blamed on line `n-1` when line `n` is confirmed by its successor (or by
//! the chain head), on line `n` otherwise; a jump or a step back in `seq` is a removal, an
//! insertion or a reordering depending on what the next line continues from.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use super::AuditRecord;
use super::chain::{self, ChainHead, GENESIS, HEAD_FILE, Link};
use super::file::read_head;

/// A trail file found in a directory.
#[derive(Clone, Debug)]
pub(crate) struct TrailFile {
    pub(crate) name: String,
    pub(crate) first_seq: u64,
    pub(crate) day: i64,
}

/// The trail files of `dir` in chain order (by the first sequence number in their names).
/// Other files are ignored.
pub(crate) fn trail_files(dir: &Path) -> io::Result<Vec<TrailFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if let Some((first_seq, day)) = chain::parse_file_name(&name) {
            files.push(TrailFile { name, first_seq, day });
        }
    }
    files.sort_by(|a, b| (a.first_seq, &a.name).cmp(&(b.first_seq, &b.name)));
    Ok(files)
}

/// What a successful verification found.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// The sequence number of the first record checked (1 unless older files are gone).
    pub first_seq: u64,
    /// Where the chain ends.
    pub head: ChainHead,
    /// What could not be checked, and other remarks.
    pub notes: Vec<String>,
}

/// What kind of damage a line shows.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum TamperKind {
    /// The line's bytes changed.
    Altered,
    /// Records are missing before this line.
    Removed,
    /// This line is not part of the chain.
    Inserted,
    /// This line is out of order.
    Reordered,
    /// The trail ends early: its last line is incomplete or records after it are gone.
    Truncated,
}

impl TamperKind {
    fn name(self) -> &'static str {
        match self {
            Self::Altered => "altered",
            Self::Removed => "removed",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
        }
    }
}

/// The first damage found.
#[derive(Clone, Debug)]
pub struct Tamper {
    /// The file.
    pub file: PathBuf,
    /// The line number in it, from 1.
    pub line: u64,
    /// What happened to it.
    pub kind: TamperKind,
    /// Details.
    pub detail: String,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: {}: {}",
            self.file.display(),
            self.line,
            self.kind.name(),
            self.detail
        )
    }
}

/// Why a trail does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The trail is damaged.
    #[error("{0}")]
    Tampered(Tamper),
    /// The path holds no trail, or a file could not be read.
    #[error("{path}: {message}")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Checks the trail at `path`: one file, or a directory whose trail files are checked in order
/// as one chain, ending at the directory's chain head.
///
/// # Errors
/// [`VerifyError::Tampered`] naming the first damaged line; [`VerifyError::Unreadable`] when
/// the path cannot be read or holds no trail file.
pub fn verify(path: &Path) -> Result<Verified, VerifyError> {
    let trail = Trail::at(path)?;
    let mut checker = Checker::new(trail.head.clone());
    let mut lines = trail.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line?;
        let next = match lines.peek() {
            Some(Ok(next)) => Some(next),
            _ => None,
        };
        checker.check(&trail, &line, next)?;
    }
    checker.finish(&trail)
}

/// Every record of the trail at `path` (a file or a directory), in order. Does not check the
/// chain.
///
/// # Errors
/// When a file cannot be read or a line is not a record.
pub fn read_records(path: &Path) -> Result<Vec<AuditRecord>, VerifyError> {
    let trail = Trail::at(path)?;
    let mut records = Vec::new();
    for line in trail.lines() {
        let line = line?;
        let record = serde_json::from_slice(&line.bytes).map_err(|_| VerifyError::Unreadable {
            path: trail.path(line.file),
            message: format!(
                "line {} is not an audit record: run `kagi audit verify`",
                line.number
            ),
        })?;
        records.push(record);
    }
    Ok(records)
}

/// Which records `kagi audit show` prints. Every criterion given must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The key: its id or ARN.
    pub key: Option<String>,
    /// The principal, exactly.
    pub principal: Option<String>,
    /// The operation, exactly (`Encrypt`).
    pub operation: Option<String>,
    /// Records at or after this Unix time.
    pub since: Option<i64>,
    /// Records at or before this Unix time.
    pub until: Option<i64>,
}

impl Filter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let key_matches = self.key.as_deref().is_none_or(|key| {
            record.key_arn.as_deref().is_some_and(|arn| {
                arn == key || arn.strip_suffix(key).is_some_and(|rest| rest.ends_with("key/"))
            })
        });
        key_matches
            && self.principal.as_deref().is_none_or(|p| record.principal == p)
            && self.operation.as_deref().is_none_or(|o| record.operation == o)
            && self.since.is_none_or(|since| record.time >= since)
            && self.until.is_none_or(|until| record.time <= until)
    }
}

// === impl Trail ===

/// The files to read and the head to end at.
struct Trail {
    dir: PathBuf,
    files: Vec<TrailFile>,
    /// The chain head that applies: the directory's, or for one file the head of its
    /// directory when that names this file.
    head: Option<ChainHead>,
    /// Whether a missing head is an error (a directory) or just a note (one file).
    head_required: bool,
}

/// One line read, with its position.
struct Line {
    file: usize,
    number: u64,
    bytes: Vec<u8>,
    /// Whether it ended with a newline.
    complete: bool,
}

impl Trail {
    fn at(path: &Path) -> Result<Self, VerifyError> {
        let unreadable =
            |message: String| VerifyError::Unreadable { path: path.to_owned(), message };
        let metadata = fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
        if metadata.is_dir() {
            let files = trail_files(path).map_err(|e| unreadable(e.to_string()))?;
            if files.is_empty() {
                return Err(unreadable("holds no audit trail file (audit-*.log)".into()));
            }
            let head = read_head(&path.join(HEAD_FILE));
            return Ok(Self { dir: path.to_owned(), files, head, head_required: true });
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| unreadable("not a file name".into()))?;
        let (first_seq, day) = chain::parse_file_name(name)
            .ok_or_else(|| unreadable("not an audit trail file (audit-*.log)".into()))?;
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
        let head = read_head(&dir.join(HEAD_FILE)).filter(|head| head.file == name);
        let files = vec![TrailFile { name: name.to_owned(), first_seq, day }];
        Ok(Self { dir, files, head, head_required: false })
    }

    fn path(&self, file: usize) -> PathBuf {
        self.dir.join(&self.files[file].name)
    }

    fn lines(&self) -> impl Iterator<Item = Result<Line, VerifyError>> + '_ {
        LineReader { trail: self, file: 0, reader: None, number: 0 }
    }
}

struct LineReader<'a> {
    trail: &'a Trail,
    file: usize,
    reader: Option<BufReader<File>>,
    number: u64,
}

impl Iterator for LineReader<'_> {
    type Item = Result<Line, VerifyError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.file >= self.trail.files.len() {
                return None;
            }
            let path = self.trail.path(self.file);
            let unreadable = |e: io::Error| VerifyError::Unreadable {
                path: path.clone(),
                message: e.to_string(),
            };
            let reader = match &mut self.reader {
                Some(reader) => reader,
                None => match File::open(&path) {
                    Ok(file) => self.reader.insert(BufReader::new(file)),
                    Err(e) => {
                        self.file = self.trail.files.len();
                        return Some(Err(unreadable(e)));
                    }
                },
            };
            let mut bytes = Vec::new();
            match reader.read_until(b'\n', &mut bytes) {
                Ok(0) => {
                    self.file += 1;
                    self.reader = None;
                    self.number = 0;
                }
                Ok(_) => {
                    self.number += 1;
                    let complete = bytes.last() == Some(&b'\n');
                    if complete {
                        bytes.pop();
                    }
                    return Some(Ok(Line {
                        file: self.file,
                        number: self.number,
                        bytes,
                        complete,
                    }));
                }
                Err(e) => {
                    self.file = self.trail.files.len();
                    return Some(Err(unreadable(e)));
                }
            }
        }
    }
}

// === impl Checker ===

/// The last line accepted.
struct Accepted {
    file: usize,
    number: u64,
    seq: u64,
    hash: String,
    /// The `prev` it carried: the hash of the line before it.
    prev: String,
}

struct Checker {
    head: Option<ChainHead>,
    last: Option<Accepted>,
    first_seq: Option<u64>,
    records: u64,
    notes: Vec<String>,
    /// Files seen so far (to check each file's first line against its name).
    files_seen: usize,
}

impl Checker {
    fn new(head: Option<ChainHead>) -> Self {
        Self { head, last: None, first_seq: None, records: 0, notes: Vec::new(), files_seen: 0 }
    }

    fn check(
        &mut self,
        trail: &Trail,
        line: &Line,
        next: Option<&Line>,
    ) -> Result<(), VerifyError> {
        let tamper = |file: usize, number: u64, kind: TamperKind, detail: String| {
            VerifyError::Tampered(Tamper { file: trail.path(file), line: number, kind, detail })
        };
        let here = |kind, detail| tamper(line.file, line.number, kind, detail);
        if !line.complete {
            return Err(here(TamperKind::Truncated, "the line is incomplete".into()));
        }
        let next_link = next.and_then(|n| parse_link(&n.bytes));
        let continues_from = |link: &Option<Link>, seq: u64, hash: &str| {
            link.as_ref().is_some_and(|l| l.seq == seq && l.prev == hash)
        };
        let Some(link) = parse_link(&line.bytes) else {
            if let Some(last) = &self.last
                && continues_from(&next_link, last.seq + 1, &last.hash)
            {
                return Err(here(TamperKind::Inserted, "not a record of the chain".into()));
            }
            return Err(here(TamperKind::Altered, "not a valid audit record".into()));
        };
        let hash = chain::line_hash(&line.bytes);
        // Whether this line is vouched for by what follows it.
        let confirmed = match (&next_link, next) {
            (Some(next), _) => next.prev == hash,
            (None, None) => self.head.as_ref().is_some_and(|h| h.seq == link.seq && h.hash == hash),
            (None, Some(_)) => false,
        };
        match &self.last {
            None => {
                if link.seq == 1 && link.prev != GENESIS {
                    return Err(here(
                        TamperKind::Altered,
                        "record 1 does not start the chain".into(),
                    ));
                }
                if link.seq != 1 {
                    self.notes.push(format!(
                        "the trail starts at record {}: older records are not here, so its first \
                         link is not checked",
                        link.seq
                    ));
                }
            }
            Some(last) => {
                let expected = last.seq + 1;
                let linked = link.prev == last.hash;
                if link.seq == expected && !linked {
                    if continues_from(&next_link, expected, &last.hash) {
                        return Err(here(
                            TamperKind::Inserted,
                            format!("the next line is the true record {expected}"),
                        ));
                    }
                    if confirmed {
                        return Err(tamper(
                            last.file,
                            last.number,
                            TamperKind::Altered,
                            format!(
                                "record {} does not match the hash the next line holds",
                                last.seq
                            ),
                        ));
                    }
                    return Err(here(
                        TamperKind::Altered,
                        format!("record {} does not link to record {}", link.seq, last.seq),
                    ));
                }
                if link.seq != expected && linked {
                    return Err(here(
                        TamperKind::Altered,
                        format!(
                            "the line links to record {} but is numbered {}",
                            last.seq, link.seq
                        ),
                    ));
                }
                if link.seq > expected {
                    if next_link.as_ref().is_some_and(|n| n.seq == expected) {
                        return Err(here(
                            TamperKind::Reordered,
                            format!("record {} comes before record {expected}", link.seq),
                        ));
                    }
                    return Err(here(
                        TamperKind::Removed,
                        format!(
                            "records {expected} to {} are missing before this line",
                            link.seq - 1
                        ),
                    ));
                }
                if link.seq < expected {
                    if continues_from(&next_link, expected, &last.hash) {
                        return Err(here(
                            TamperKind::Inserted,
                            format!("the line (numbered {}) is not part of the chain", link.seq),
                        ));
                    }
                    if link.seq == last.seq && link.prev == last.prev {
                        return Err(tamper(
                            last.file,
                            last.number,
                            TamperKind::Inserted,
                            format!("the next line is the true record {}", link.seq),
                        ));
                    }
                    return Err(here(
                        TamperKind::Reordered,
                        format!("record {} comes after record {}", link.seq, last.seq),
                    ));
                }
            }
        }
        // Each file's name gives the number of its first record.
        if line.number == 1 {
            let named = trail.files[line.file].first_seq;
            if named != link.seq {
                return Err(here(
                    TamperKind::Removed,
                    format!("the file's name says it starts at record {named}, not {}", link.seq),
                ));
            }
        }
        if line.file > self.files_seen {
            // Files skipped since the last line were empty.
            self.check_empty_files(trail, self.files_seen, line.file)?;
        }
        self.files_seen = line.file;
        if let Some(head) = &self.head
            && head.seq == link.seq
            && head.hash != hash
        {
            return Err(here(TamperKind::Altered, "the line does not match the chain head".into()));
        }
        self.first_seq.get_or_insert(link.seq);
        self.records += 1;
        self.last = Some(Accepted {
            file: line.file,
            number: line.number,
            seq: link.seq,
            hash,
            prev: link.prev,
        });
        Ok(())
    }

    /// Files strictly between `from` and `to` were read and held no line: only the last file of
    /// a trail may be empty (made just before a crash).
    fn check_empty_files(&self, trail: &Trail, from: usize, to: usize) -> Result<(), VerifyError> {
        let skipped = if self.last.is_some() { from + 1 } else { from };
        if skipped < to {
            return Err(VerifyError::Tampered(Tamper {
                file: trail.path(skipped),
                line: 1,
                kind: TamperKind::Removed,
                detail: "the file is empty".into(),
            }));
        }
        Ok(())
    }

    fn finish(mut self, trail: &Trail) -> Result<Verified, VerifyError> {
        let Some(last) = self.last.take() else {
            return Err(VerifyError::Tampered(Tamper {
                file: trail.path(0),
                line: 1,
                kind: TamperKind::Truncated,
                detail: "the trail holds no record".into(),
            }));
        };
        // Only the last file may be empty (made just before a crash).
        if last.file + 2 < trail.files.len() {
            return Err(VerifyError::Tampered(Tamper {
                file: trail.path(last.file + 1),
                line: 1,
                kind: TamperKind::Removed,
                detail: "the file is empty".into(),
            }));
        }
        let end = ChainHead {
            seq: last.seq,
            hash: last.hash.clone(),
            file: trail.files[last.file].name.clone(),
        };
        match &self.head {
            Some(head) if head.seq > last.seq => {
                return Err(VerifyError::Tampered(Tamper {
                    file: trail.path(last.file),
                    line: last.number + 1,
                    kind: TamperKind::Truncated,
                    detail: format!(
                        "the trail ends at record {} but its head is record {} (in {})",
                        last.seq, head.seq, head.file
                    ),
                }));
            }
            Some(head) if head.seq < last.seq => self.notes.push(format!(
                "the persisted head (record {}) lags the trail: records after it are checked by \
                 their links only",
                head.seq
            )),
            Some(_) => {}
            None if trail.head_required => {
                return Err(VerifyError::Tampered(Tamper {
                    file: trail.dir.join(HEAD_FILE),
                    line: 1,
                    kind: TamperKind::Removed,
                    detail: "the chain head is missing or unreadable: the end of the trail cannot \
                             be checked"
                        .into(),
                }));
            }
            None => self
                .notes
                .push("no chain head names this file: its last line is checked by nothing".into()),
        }
        Ok(Verified {
            records: self.records,
            files: trail.files.len(),
            first_seq: self.first_seq.unwrap_or(last.seq),
            head: end,
            notes: self.notes,
        })
    }
}

fn parse_link(bytes: &[u8]) -> Option<Link> {
    serde_json::from_slice::<Link>(bytes).ok()
}
