//! `kagi report` on a stopped server's data directory: every key with its facts, unused keys
//! flagged for removal, keys pending deletion that are still used flagged loudly; as a table,
//! JSON and a self-contained HTML page. Time moves with `KAGI_FAKE_NOW`.

use serde_json::Value;

use crate::support::Kagi;

const DAY: i64 = 86_400;

struct Keys {
    used: String,
    idle: String,
    doomed: String,
}

/// Day 0: three keys, `used` and `doomed` used; `doomed` scheduled for deletion in 30 days and
/// then used again on day 1 (refused, but in the trail); `used` used again on day 20; the clock
/// left at day 25.
fn workload() -> (Kagi, Keys) {
    let mut kagi = Kagi::new();
    let used = kagi.create_key(&["--description", "used"]);
    let idle = kagi.create_key(&["--description", "idle"]);
    let doomed = kagi.create_key(&["--description", "doomed"]);
    kagi.ok(&["aliases", "create", "alias/orders", &used]);
    kagi.ok(&["keys", "rotation", "enable", &used]);
    let encrypt = |kagi: &Kagi, key: &str| kagi.run_with_input(&["encrypt", "--key", key], b"x");
    assert_eq!(encrypt(&kagi, &used).code, 0);
    assert_eq!(encrypt(&kagi, &doomed).code, 0);
    kagi.ok(&["keys", "schedule-deletion", &doomed, "--days", "30"]);
    let start = kagi.now;
    kagi.now = start + DAY;
    assert_ne!(encrypt(&kagi, &doomed).code, 0, "refused while pending deletion");
    kagi.now = start + 20 * DAY;
    assert_eq!(encrypt(&kagi, &used).code, 0);
    kagi.now = start + 25 * DAY;
    (kagi, Keys { used, idle, doomed })
}

fn key<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["Keys"].as_array().unwrap().iter().find(|k| k["KeyId"] == id).expect("key in report")
}

fn flags(report: &Value, id: &str) -> Vec<String> {
    key(report, id)["Flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().into())
        .collect()
}

#[test]
fn the_report_flags_unused_keys_and_keys_pending_deletion_still_in_use() {
    let (kagi, keys) = workload();
    let report = kagi.ok(&["--output", "json", "report", "--unused-days", "10"]).json();
    assert_eq!(report["Keys"].as_array().unwrap().len(), 3);
    assert_eq!(report["UnusedCandidates"], serde_json::json!([keys.idle]));
    assert_eq!(report["PendingDeletionInUse"], serde_json::json!([keys.doomed]));
    assert_eq!(flags(&report, &keys.used), Vec::<String>::new());
    assert_eq!(flags(&report, &keys.idle), ["unused"]);
    assert_eq!(flags(&report, &keys.doomed), ["pending-deletion-in-use"]);
    let used = key(&report, &keys.used);
    assert_eq!(used["Aliases"], serde_json::json!(["alias/orders"]));
    assert_eq!(used["KeySpec"], "SYMMETRIC_DEFAULT");
    assert_eq!(used["KeyUsage"], "ENCRYPT_DECRYPT");
    assert_eq!(used["KeyState"], "Enabled");
    assert_eq!(used["DaysSinceLastUse"], 5);
    assert_eq!(used["RotationEnabled"], true);
    assert!(used["NextRotation"].is_string());
    assert_eq!(key(&report, &keys.idle)["LastUsed"], Value::Null);
    let doomed = key(&report, &keys.doomed);
    assert_eq!(doomed["KeyState"], "PendingDeletion");
    assert_eq!(doomed["UsesWhilePendingDeletion"], 1);
    assert!(doomed["DeletionDate"].is_string());
    // With a longer horizon nothing is unused yet.
    let report = kagi.ok(&["--output", "json", "report"]).json();
    assert_eq!(report["UnusedDays"], 90);
    assert_eq!(report["UnusedCandidates"], serde_json::json!([]));
}

#[test]
fn the_table_and_the_html_page_say_the_same() {
    let (kagi, keys) = workload();
    let html = kagi.path("report.html");
    let table =
        kagi.ok(&["report", "--unused-days", "10", "--html", html.to_str().unwrap()]).stdout_text();
    for id in [&keys.used, &keys.idle, &keys.doomed] {
        assert!(table.contains(id.as_str()), "{table}");
    }
    assert!(table.contains("alias/orders"), "{table}");
    assert!(table.contains(&format!("candidates for removal:\n  {}\n", keys.idle)), "{table}");
    assert!(
        table.contains(&format!("!!! PENDING DELETION BUT STILL IN USE: {}", keys.doomed)),
        "{table}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<style>"), "{page}");
    for id in [&keys.used, &keys.idle, &keys.doomed] {
        assert!(page.contains(id.as_str()), "{page}");
    }
    assert!(page.contains("Pending deletion but still in use"), "{page}");
    assert!(page.contains("Candidates for removal"), "{page}");
    assert!(page.contains("alias/orders"), "{page}");
    // Self-contained: nothing to fetch.
    for external in ["<link", "<script", "src=", "http://", "https://", "url("] {
        assert!(!page.contains(external), "{external} in {page}");
    }
}

#[test]
fn the_report_names_the_certificates_each_key_signs_for() {
    let kagi = Kagi::new();
    kagi.ok(&["certs", "ca", "create", "--name", "internal"]);
    kagi.ok(&["certs", "issue", "--name", "web", "--dns", "www.example.com", "--ca", "internal"]);
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(kagi.data_dir().join("certs/web.json")).unwrap(),
    )
    .unwrap();
    let report = kagi.ok(&["--output", "json", "report"]).json();
    let web_key = meta["key_id"].as_str().unwrap();
    assert_eq!(key(&report, web_key)["Certificates"], serde_json::json!(["web"]));
    let table = kagi.ok(&["report"]).stdout_text();
    assert!(table.contains("CERTIFICATES") && table.contains(" web "), "{table}");
}
