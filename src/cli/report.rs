//! `kagi report`: the key inventory for people. Every key with its spec, usage, state, aliases,
//! creation, last use, rotation, deletion date, imported material expiry and the certificates
//! whose key it is; keys unused for
//! `--unused-days` flagged as candidates for removal; keys pending deletion that something tried
//! to use during their waiting period flagged loudly. As a table, JSON (`--output json`), and a
//! self-contained HTML page (`--html FILE`).
//!
//! It reads a stopped server's data directory: the store through the keystore's inventory (not
//! audited, no material) and the audit trail for last use. Through a running server it is not
//! available yet.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use serde::Serialize;
use serde_json::json;

use super::Output;
use crate::audit::verify::read_records;
use crate::audit::{AuditConfig, AuditRecord, chain};
use crate::error::{Error, exit_code};
use crate::keystore::{InventoryKey, KeyState, Keystore, UnixSeconds};
use crate::metrics::keys::{is_key_use, key_id_of_arn};

const DAY: i64 = 86_400;

/// `kagi report`.
#[derive(Debug, ClapArgs)]
pub struct ReportArgs {
    /// Flag keys not used for this many days (or never, and created longer ago) as candidates
    /// for removal.
    #[arg(long, default_value_t = 90)]
    pub unused_days: u32,
    /// Also write the report as a self-contained HTML page to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// One key in the report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    key_id: String,
    arn: String,
    aliases: Vec<String>,
    key_spec: &'static str,
    key_usage: &'static str,
    key_state: &'static str,
    origin: &'static str,
    created: String,
    /// The last successful cryptographic use in the audit trail.
    last_used: Option<String>,
    days_since_last_use: Option<i64>,
    rotation_enabled: bool,
    rotation_period_days: Option<u32>,
    next_rotation: Option<String>,
    rotation_overdue: bool,
    deletion_date: Option<String>,
    material_expiry: Option<String>,
    /// Attempts to use the key (any outcome) since its deletion was scheduled.
    uses_while_pending_deletion: usize,
    /// The certificates (in DATA_DIR/certs) whose key this is.
    certificates: Vec<String>,
    /// `unused`, `pending-deletion-in-use`, `rotation-overdue`, `material-expiring`.
    flags: Vec<&'static str>,
}

/// Builds and prints the report.
pub(super) async fn run(
    keystore: &Keystore,
    data_dir: &Path,
    output: Output,
    args: &ReportArgs,
) -> Result<(), Error> {
    let inventory = keystore
        .inventory()
        .await
        .map_err(|e| Error::new(exit_code::STORAGE, e.message().to_owned()))?;
    let trail_dir = data_dir.join(AuditConfig::default().dir);
    let records = match read_records(&trail_dir) {
        Ok(records) => records,
        Err(error) => {
            eprintln!("warning: cannot read the audit trail, last use unknown: {error}");
            Vec::new()
        }
    };
    let now = keystore.now();
    let mut rows = rows(&inventory, &records, now, args.unused_days);
    // The certificates each key signs handshakes for.
    match crate::tls::CertStore::new(data_dir).list() {
        Ok(certificates) => {
            for row in &mut rows {
                row.certificates = certificates
                    .iter()
                    .filter(|c| c.meta.key_id == row.key_id)
                    .map(|c| c.meta.name.clone())
                    .collect();
            }
        }
        Err(error) => eprintln!("warning: cannot read the certificate store: {error}"),
    }
    match output {
        Output::Json => {
            let ids = |flag: &str| -> Vec<&str> {
                rows.iter().filter(|r| r.flags.contains(&flag)).map(|r| r.key_id.as_str()).collect()
            };
            outln!(
                "{}",
                json!({
                    "GeneratedAt": chain::format_utc(now),
                    "UnusedDays": args.unused_days,
                    "Keys": rows,
                    "UnusedCandidates": ids("unused"),
                    "PendingDeletionInUse": ids("pending-deletion-in-use"),
                })
            );
        }
        Output::Table => outln!("{}", table(&rows, args.unused_days).trim_end_matches('\n')),
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html(&rows, now, args.unused_days))
            .map_err(|e| Error::new(exit_code::FAILURE, format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

fn rows(
    inventory: &[InventoryKey],
    records: &[AuditRecord],
    now: UnixSeconds,
    unused_days: u32,
) -> Vec<Row> {
    // Per key id: the last successful use, every attempted use with its time, and the
    // attempts after the key's last ScheduleKeyDeletion line (the trail is in order, so this
    // is exact even within one second).
    let mut last_use: HashMap<&str, i64> = HashMap::new();
    let mut attempts: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut since_scheduled: HashMap<&str, usize> = HashMap::new();
    for record in records {
        let Some(key_id) = record.key_arn.as_deref().and_then(key_id_of_arn) else { continue };
        let success = record.outcome == crate::audit::Outcome::Success;
        if is_key_use(&record.operation) {
            attempts.entry(key_id).or_default().push(record.time);
            if let Some(count) = since_scheduled.get_mut(key_id) {
                *count += 1;
            }
            if success {
                let last = last_use.entry(key_id).or_insert(record.time);
                *last = (*last).max(record.time);
            }
        } else if success && record.operation == "ScheduleKeyDeletion" {
            since_scheduled.insert(key_id, 0);
        }
    }
    let time = |t: i64| chain::format_utc(t);
    inventory
        .iter()
        .map(|key| {
            let record = &key.record;
            let id = record.id.as_str();
            let last_used = last_use.get(id).copied();
            let live = record.state != KeyState::Deleted;
            let mut flags = Vec::new();
            let idle_since = last_used.unwrap_or(record.created);
            // A key pending deletion is already on its way out: not a candidate.
            let removable = live && record.state != KeyState::PendingDeletion;
            if removable && now - idle_since >= i64::from(unused_days) * DAY {
                flags.push("unused");
            }
            let mut uses_while_pending_deletion = 0;
            if record.state == KeyState::PendingDeletion {
                uses_while_pending_deletion = match since_scheduled.get(id) {
                    Some(count) => *count,
                    // The scheduling line is in a trail no longer kept: count from the date
                    // the window began.
                    None => {
                        let days = i64::from(record.pending_window_days.unwrap_or(30));
                        let start = record.deletion_date.map_or(i64::MAX, |d| d - days * DAY);
                        attempts.get(id).map_or(0, |t| t.iter().filter(|t| **t > start).count())
                    }
                };
                if uses_while_pending_deletion > 0 {
                    flags.push("pending-deletion-in-use");
                }
            }
            let next_rotation = record.rotation.as_ref().map(|r| r.next_rotation);
            let rotation_overdue = live && next_rotation.is_some_and(|next| next < now);
            if rotation_overdue {
                flags.push("rotation-overdue");
            }
            let material_expiry = key.material_expiry();
            if live && material_expiry.is_some_and(|expiry| expiry - now < 14 * DAY) {
                flags.push("material-expiring");
            }
            Row {
                key_id: record.id.clone(),
                arn: key.arn.clone(),
                aliases: key.aliases.clone(),
                key_spec: record.spec.kms_name(),
                key_usage: record.usage.kms_name(),
                key_state: record.state.kms_name(),
                origin: record.origin.kms_name(),
                created: time(record.created),
                last_used: last_used.map(time),
                days_since_last_use: last_used.map(|t| (now - t) / DAY),
                rotation_enabled: record.rotation.is_some(),
                rotation_period_days: record.rotation.as_ref().map(|r| r.period_days),
                next_rotation: next_rotation.map(time),
                rotation_overdue,
                deletion_date: record.deletion_date.filter(|_| live).map(time),
                material_expiry: material_expiry.map(time),
                uses_while_pending_deletion,
                certificates: Vec::new(),
                flags,
            }
        })
        .collect()
}

fn table(rows: &[Row], unused_days: u32) -> String {
    let mut out = String::new();
    let dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{:<36}  {:<17}  {:<19}  {:<15}  {:<20}  {:<20}  {:<20}  {:<20}  {:<20}  {:<20}  {:<20}  FLAGS",
        "KEY ID",
        "SPEC",
        "USAGE",
        "STATE",
        "ALIASES",
        "CERTIFICATES",
        "CREATED",
        "LAST USED",
        "NEXT ROTATION",
        "DELETION",
        "MATERIAL EXPIRES"
    );
    for row in rows {
        let aliases = if row.aliases.is_empty() { "-".into() } else { row.aliases.join(",") };
        let flags = if row.flags.is_empty() { "-".into() } else { row.flags.join(",") };
        let certificates =
            if row.certificates.is_empty() { "-".into() } else { row.certificates.join(",") };
        let _ = writeln!(
            out,
            "{:<36}  {:<17}  {:<19}  {:<15}  {:<20}  {:<20}  {:<20}  {:<20}  {:<20}  {:<20}  {:<20}  {flags}",
            row.key_id,
            row.key_spec,
            row.key_usage,
            row.key_state,
            aliases,
            certificates,
            row.created,
            dash(&row.last_used),
            dash(&row.next_rotation),
            dash(&row.deletion_date),
            dash(&row.material_expiry),
        );
    }
    let unused: Vec<&str> =
        rows.iter().filter(|r| r.flags.contains(&"unused")).map(|r| r.key_id.as_str()).collect();
    let _ = writeln!(out);
    if unused.is_empty() {
        let _ = writeln!(out, "no key unused for {unused_days} days");
    } else {
        let _ = writeln!(out, "unused for {unused_days} days, candidates for removal:");
        for id in unused {
            let _ = writeln!(out, "  {id}");
        }
    }
    for row in rows.iter().filter(|r| r.flags.contains(&"pending-deletion-in-use")) {
        let _ = writeln!(
            out,
            "!!! PENDING DELETION BUT STILL IN USE: {} ({} attempts since deletion was \
             scheduled; destroyed {}). Cancel the deletion until its users have moved.",
            row.key_id,
            row.uses_while_pending_deletion,
            dash(&row.deletion_date)
        );
    }
    out
}

/// The report as one HTML page with inline CSS and no external resources.
fn html(rows: &[Row], now: UnixSeconds, unused_days: u32) -> String {
    let mut out = String::new();
    let generated = chain::format_utc(now);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>kagi key report {generated}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n\
         <h1>kagi key report</h1>\n<p class=\"meta\">Generated {generated}. {} keys. Keys \
         unused for {unused_days} days are candidates for removal.</p>\n",
        rows.len()
    );
    for row in rows.iter().filter(|r| r.flags.contains(&"pending-deletion-in-use")) {
        let _ = writeln!(
            out,
            "<div class=\"alarm\"><strong>Pending deletion but still in use:</strong> key \
             <code>{}</code>{} had {} attempted uses since its deletion was scheduled; it is \
             destroyed {}. Cancel the deletion until its users have moved.</div>",
            escape(&row.key_id),
            aliases_suffix(&row.aliases),
            row.uses_while_pending_deletion,
            escape(row.deletion_date.as_deref().unwrap_or("-")),
        );
    }
    let unused: Vec<&Row> = rows.iter().filter(|r| r.flags.contains(&"unused")).collect();
    if !unused.is_empty() {
        let _ = write!(
            out,
            "<div class=\"notice\"><strong>Candidates for removal</strong> (unused for \
             {unused_days} days):<ul>"
        );
        for row in unused {
            let _ = write!(
                out,
                "<li><code>{}</code>{}</li>",
                escape(&row.key_id),
                aliases_suffix(&row.aliases)
            );
        }
        let _ = writeln!(out, "</ul></div>");
    }
    let _ = writeln!(
        out,
        "<table>\n<thead><tr><th>Key</th><th>Aliases</th><th>Spec</th><th>Usage</th>\
         <th>State</th><th>Created</th><th>Last used</th><th>Rotation</th><th>Deletion</th>\
         <th>Material expires</th><th>Certificates</th><th>Flags</th></tr></thead>\n<tbody>"
    );
    for row in rows {
        let class = if row.flags.contains(&"pending-deletion-in-use") {
            "alarm"
        } else if row.flags.is_empty() {
            ""
        } else {
            "flagged"
        };
        let cell = |value: Option<&str>| escape(value.unwrap_or("-"));
        let rotation = match (&row.next_rotation, row.rotation_period_days) {
            (Some(next), Some(days)) => format!("every {days} days, next {next}"),
            _ => "off".into(),
        };
        let flags: String = row
            .flags
            .iter()
            .map(|flag| format!("<span class=\"flag {flag}\">{flag}</span>"))
            .collect();
        let _ = writeln!(
            out,
            "<tr class=\"{class}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"state {}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{flags}</td></tr>",
            escape(&row.key_id),
            escape(&row.aliases.join(", ")),
            row.key_spec,
            row.key_usage,
            row.key_state,
            row.key_state,
            escape(&row.created),
            cell(row.last_used.as_deref()),
            escape(&rotation),
            cell(row.deletion_date.as_deref()),
            cell(row.material_expiry.as_deref()),
            escape(&row.certificates.join(", ")),
        );
    }
    let _ = writeln!(out, "</tbody>\n</table>\n</body>\n</html>");
    out
}

fn aliases_suffix(aliases: &[String]) -> String {
    if aliases.is_empty() { String::new() } else { format!(" ({})", escape(&aliases.join(", "))) }
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

const CSS: &str = "\
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d1d1f; }
h1 { font-size: 1.5rem; margin-bottom: 0.25rem; }
.meta { color: #555; }
table { border-collapse: collapse; width: 100%; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f6; position: sticky; top: 0; }
tr.flagged { background: #fff8e1; }
tr.alarm { background: #fde2e1; }
code { font-size: 0.8rem; }
.alarm { border: 2px solid #c62828; background: #fde2e1; padding: 0.75rem 1rem; margin: 1rem 0; }
.notice { border: 1px solid #f9a825; background: #fff8e1; padding: 0.75rem 1rem; margin: 1rem 0; }
.flag { display: inline-block; border-radius: 0.6rem; padding: 0 0.5rem; margin-right: 0.25rem; background: #eee; }
.flag.pending-deletion-in-use { background: #c62828; color: #fff; font-weight: bold; }
.flag.unused { background: #f9a825; }
.state.Enabled { color: #2e7d32; }
.state.PendingDeletion, .state.Deleted { color: #c62828; }
";
