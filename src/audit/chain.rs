//! The hash chain: how a line is sealed into the chain, what the chain head is, and how trail
//! files are named.
//!
//! A line is one JSON object ending in `"seq":N,"prev":"HEX"}` and a newline. `seq` numbers the
//! records from 1 without gaps across every file of a trail; `prev` is the hex SHA-256 of the
//! previous line's bytes (without its newline), or [`GENESIS`] for the first record. Changing,
//! removing, inserting or reordering any line therefore breaks the `prev` or `seq` of the next
//! one; the end of the trail is pinned by the chain head kept beside it (`head.json`).
//!
//! The chain is tamper-evident, not tamper-proof: it has no secret, so whoever can rewrite the
//! whole tail and the head can forge it. Copy the head elsewhere to anchor it.
//!
//! Does no I/O; `file.rs` writes, `verify.rs` reads.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The `prev` of the first record of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The name of the chain head file in a trail directory.
pub const HEAD_FILE: &str = "head.json";

/// Where the chain ends: the last record written, persisted after every batch so a restart
/// continues the chain and `kagi audit verify` notices a truncated trail.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct ChainHead {
    /// The last record's sequence number (0 before any record).
    pub seq: u64,
    /// The hex SHA-256 of the last record's line ([`GENESIS`] before any record).
    pub hash: String,
    /// The file name (not path) holding the last record; empty before any record.
    pub file: String,
}

impl ChainHead {
    /// The head of an empty trail.
    pub fn genesis() -> Self {
        Self { seq: 0, hash: GENESIS.to_owned(), file: String::new() }
    }
}

/// The fields every line carries for the chain; the rest of the line is the event.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Link {
    pub(crate) seq: u64,
    pub(crate) prev: String,
}

/// The hex SHA-256 of a line's bytes, without its newline.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Completes a rendered event (a JSON object) into a chained line, newline excluded: appends
/// `"seq":seq,"prev":prev` before the closing brace.
pub(crate) fn seal_line(body: &[u8], seq: u64, prev: &str, out: &mut Vec<u8>) {
    // `body` is a serde_json object with at least one field: it ends with `}`.
    let open = body.strip_suffix(b"}").unwrap_or(body);
    out.extend_from_slice(open);
    if open.len() > 1 {
        out.push(b',');
    }
    out.extend_from_slice(b"\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// The name of a trail file whose first record is `first_seq`, started at `time` (UTC):
/// `audit-YYYYMMDDTHHMMSS-SEQ.log`, with SEQ zero-padded to 12 digits so names sort in chain
/// order.
pub fn file_name(time: i64, first_seq: u64) -> String {
    let (date, clock) = utc_parts(time);
    let (year, month, day) = date;
    let (hour, minute, second) = clock;
    format!("audit-{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}-{first_seq:012}.log")
}

/// The first sequence number and the UTC day (days since the epoch) of a trail file name, or
/// `None` for a name that is not one.
pub fn parse_file_name(name: &str) -> Option<(u64, i64)> {
    let rest = name.strip_prefix("audit-")?.strip_suffix(".log")?;
    let (stamp, seq) = rest.split_once('-')?;
    if stamp.len() != 15 || seq.len() < 12 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (date, _clock) = stamp.split_once('T')?;
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = date[..4].parse().ok()?;
    let month: u32 = date[4..6].parse().ok()?;
    let day: u32 = date[6..].parse().ok()?;
    Some((seq.parse().ok()?, days_from_civil(year, month, day)))
}

/// The UTC day (days since the epoch) of a Unix time.
pub fn day_of(time: i64) -> i64 {
    time.div_euclid(86_400)
}

/// A Unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(time: i64) -> String {
    let ((year, month, day), (hour, minute, second)) = utc_parts(time);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// Parses epoch seconds, `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SS[Z]` (UTC).
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Some(seconds);
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, clock) = match text.split_once('T') {
        Some((date, clock)) => (date, Some(clock)),
        None => (text, None),
    };
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut seconds = days_from_civil(year, month, day) * 86_400;
    if let Some(clock) = clock {
        let mut clock_parts = clock.splitn(3, ':');
        let hour: i64 = clock_parts.next()?.parse().ok()?;
        let minute: i64 = clock_parts.next()?.parse().ok()?;
        let second: i64 = clock_parts.next().unwrap_or("0").parse().ok()?;
        if !(0..24).contains(&hour) || !(0..60).contains(&minute) || !(0..61).contains(&second) {
            return None;
        }
        seconds += hour * 3600 + minute * 60 + second;
    }
    Some(seconds)
}

type Date = (i64, u32, u32);
type TimeOfDay = (i64, i64, i64);

fn utc_parts(time: i64) -> (Date, TimeOfDay) {
    let days = day_of(time);
    let of_day = time.rem_euclid(86_400);
    (civil_from_days(days), (of_day / 3600, of_day % 3600 / 60, of_day % 60))
}

// Howard Hinnant's algorithms (http://howardhinnant.github.io/date_algorithms.html), proleptic
// Gregorian calendar.

pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

pub(crate) fn civil_from_days(days: i64) -> Date {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (day 1–31, month 1–12).
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}
