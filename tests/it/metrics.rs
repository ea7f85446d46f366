//! The admin listener's `/metrics` and `/readyz` after a scripted workload through the API:
//! exact per-key counter values, AES-GCM usage per key material version, the inventory gauges,
//! and `promtool check metrics` on the real scrape.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use kagi::api::client::{CallError, Client, HttpVersion};
use serde_json::{Value, json};

use crate::support::http_get;
use crate::support::server::{ADMIN, APP, Server};

const DAY: f64 = 86_400.0;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// One scrape, as series (`name{labels}` exactly as exposed) to values.
struct Scrape {
    text: String,
    series: BTreeMap<String, f64>,
}

impl Scrape {
    fn of(server: &Server) -> Self {
        let response = http_get(&server.ready.admin.to_string(), "/metrics");
        let (head, text) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (name, value) = line.rsplit_once(' ').expect("series and value");
                (name.to_owned(), value.parse().expect("a number"))
            })
            .collect();
        Self { text: text.to_owned(), series }
    }

    /// The value of `name` with exactly `labels` (in the exposition's order), 0 when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series.get(&series(name, labels)).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.series.contains_key(&series(name, labels))
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// Checks the per-key operation counter of `key` moved by `delta` between two scrapes.
fn check_key_operation(
    before: &Scrape,
    after: &Scrape,
    (operation, key, spec, outcome): (&str, &str, &str, &str),
    delta: f64,
) {
    let labels =
        [("key_id", key), ("key_spec", spec), ("operation", operation), ("outcome", outcome)];
    let moved = after.value("kagi_key_operations_total", &labels)
        - before.value("kagi_key_operations_total", &labels);
    assert_eq!(moved, delta, "{operation} {key} {outcome}:\n{}", after.text);
}

async fn create_key(client: &mut Client, body: Value) -> String {
    let key = client.call("CreateKey", &body).await.unwrap();
    key["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn error_code(result: Result<Value, CallError>) -> String {
    match result {
        Err(CallError::Api(error)) => error.code_name,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn a_workload_moves_exactly_its_keys_counters() {
    let server = Server::start(&[ADMIN, APP], "");
    let (sym, mac) = runtime().block_on(async {
        let mut admin = server.client(HttpVersion::Http2, &ADMIN).await;
        let sym = create_key(&mut admin, json!({})).await;
        let mac = create_key(
            &mut admin,
            json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
        )
        .await;
        (sym, mac)
    });
    let before = Scrape::of(&server);
    runtime().block_on(async {
        let mut admin = server.client(HttpVersion::Http2, &ADMIN).await;
        let mut blobs = Vec::new();
        for plaintext in [&b"12345"[..], &[7; 10], &[9; 20]] {
            let out = admin
                .call("Encrypt", &json!({"KeyId": sym, "Plaintext": b64(plaintext)}))
                .await
                .unwrap();
            blobs.push(out["CiphertextBlob"].clone());
        }
        // A wrong encryption context: the blob names the key, so the failure is counted on it.
        let wrong = admin
            .call("Decrypt", &json!({"CiphertextBlob": blobs[0], "EncryptionContext": {"a": "b"}}))
            .await;
        assert_eq!(error_code(wrong), "InvalidCiphertextException");
        admin.call("Decrypt", &json!({"CiphertextBlob": blobs[1]})).await.unwrap();
        admin.call("RotateKeyOnDemand", &json!({"KeyId": sym})).await.unwrap();
        admin.call("Encrypt", &json!({"KeyId": sym, "Plaintext": b64(&[1; 7])})).await.unwrap();
        admin.call("GenerateDataKey", &json!({"KeyId": sym, "NumberOfBytes": 32})).await.unwrap();
        admin
            .call("EnableKeyRotation", &json!({"KeyId": sym, "RotationPeriodInDays": 90}))
            .await
            .unwrap();
        admin
            .call(
                "GenerateMac",
                &json!({"KeyId": mac, "Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_256"}),
            )
            .await
            .unwrap();
        admin
            .call("ScheduleKeyDeletion", &json!({"KeyId": mac, "PendingWindowInDays": 7}))
            .await
            .unwrap();
        // Used while pending deletion: refused, and counted on the key.
        let refused = admin
            .call(
                "GenerateMac",
                &json!({"KeyId": mac, "Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_256"}),
            )
            .await;
        assert_eq!(error_code(refused), "KMSInvalidStateException");
        // A principal the key policy does not name.
        let mut app = server.client(HttpVersion::Http1, &APP).await;
        let denied = app.call("Encrypt", &json!({"KeyId": sym, "Plaintext": b64(b"x")})).await;
        assert_eq!(error_code(denied), "AccessDeniedException");
        // Unknown keys are not labelled (a client chooses the name).
        let missing = admin.call("DescribeKey", &json!({"KeyId": "alias/made-up"})).await;
        assert_eq!(error_code(missing), "NotFoundException");
    });
    let after = Scrape::of(&server);
    let s = "SYMMETRIC_DEFAULT";
    for (labels, delta) in [
        (("Encrypt", sym.as_str(), s, "success"), 4.0),
        (("Encrypt", &sym, s, "AccessDeniedException"), 1.0),
        (("Decrypt", &sym, s, "success"), 1.0),
        (("Decrypt", &sym, s, "InvalidCiphertextException"), 1.0),
        (("RotateKeyOnDemand", &sym, s, "success"), 1.0),
        (("GenerateDataKey", &sym, s, "success"), 1.0),
        (("EnableKeyRotation", &sym, s, "success"), 1.0),
        (("GenerateMac", &mac, "HMAC_256", "success"), 1.0),
        (("GenerateMac", &mac, "HMAC_256", "KMSInvalidStateException"), 1.0),
        (("ScheduleKeyDeletion", &mac, "HMAC_256", "success"), 1.0),
    ] {
        check_key_operation(&before, &after, labels, delta);
    }
    assert!(!after.text.contains("made-up"), "{}", after.text);
    // AES-GCM invocations per key material version: 3 Encrypts under version 1; one Encrypt and
    // one GenerateDataKey under version 2.
    fn version<'a>(key: &'a str, v: &'a str) -> [(&'a str, &'a str); 2] {
        [("key_id", key), ("material_version", v)]
    }
    assert_eq!(after.value("kagi_key_encrypted_messages_total", &version(&sym, "1")), 3.0);
    assert_eq!(after.value("kagi_key_encrypted_bytes_total", &version(&sym, "1")), 35.0);
    assert_eq!(after.value("kagi_key_encrypted_messages_total", &version(&sym, "2")), 2.0);
    assert_eq!(after.value("kagi_key_encrypted_bytes_total", &version(&sym, "2")), 39.0);
    assert_eq!(after.value("kagi_aes_gcm_invocation_limit", &[]), 4_294_967_296.0);
    // Refusals by kind.
    assert_eq!(after.value("kagi_api_access_denied_total", &[("operation", "Encrypt")]), 1.0);
    // The inventory gauges.
    let keys =
        |state: &str, spec: &str| after.value("kagi_keys", &[("key_spec", spec), ("state", state)]);
    assert_eq!(keys("Enabled", s), 1.0, "{}", after.text);
    assert_eq!(keys("PendingDeletion", "HMAC_256"), 1.0);
    let until_deletion = after.value("kagi_key_seconds_until_deletion", &[("key_id", &mac)]);
    assert!((7.0 * DAY - 120.0..=7.0 * DAY).contains(&until_deletion), "{until_deletion}");
    assert!(!after.has("kagi_key_seconds_until_deletion", &[("key_id", &sym)]));
    let until_rotation = after.value("kagi_key_seconds_until_rotation", &[("key_id", &sym)]);
    assert!((90.0 * DAY - 120.0..=90.0 * DAY).contains(&until_rotation), "{until_rotation}");
    let idle = after.value("kagi_key_seconds_since_last_use", &[("key_id", &sym)]);
    assert!(after.has("kagi_key_seconds_since_last_use", &[("key_id", &sym)]) && idle < 120.0);
    assert!(!after.has("kagi_key_seconds_until_material_expiry", &[("key_id", &sym)]));
    assert_eq!(after.value("kagi_audit_write_failures_total", &[("operation", "Encrypt")]), 0.0);
    check_promtool(&after.text);
    check_dashboard(&after.text);
    // Ready: the listeners are up and the keystore answers.
    let ready = http_get(&server.ready.admin.to_string(), "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("keystore ok\n") && ready.contains("listeners ok\n"), "{ready}");
}

#[test]
fn throttled_requests_are_counted() {
    // One management request per 100 s, a bucket of one.
    let server = Server::start(&[ADMIN], "management = 0.01\nburst_seconds = 100.0\n");
    runtime().block_on(async {
        let mut admin = server.client(HttpVersion::Http1, &ADMIN).await;
        admin.call("ListKeys", &json!({})).await.unwrap();
        for _ in 0..2 {
            let throttled = admin.call("ListKeys", &json!({})).await;
            assert_eq!(error_code(throttled), "ThrottlingException");
        }
    });
    let scrape = Scrape::of(&server);
    let throttled = scrape.value("kagi_api_throttled_requests_total", &[("operation", "ListKeys")]);
    assert_eq!(throttled, 2.0, "{}", scrape.text);
}

/// Runs `promtool check metrics` on a scrape when promtool is installed; in CI (`CI=true`) it
/// must be.
pub(crate) fn check_promtool(scrape: &str) {
    let Some(promtool) = promtool() else { return };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success() && findings.trim().is_empty(), "promtool: {findings}");
}

/// The promtool binary, if installed. Panics in CI without it (`.ci/run` installs it).
pub(crate) fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but promtool is not installed (.ci/run installs Debian's prometheus package)"
    );
    eprintln!("promtool not installed: skipping the promtool checks");
    None
}

/// Every metric the Grafana dashboard (config/grafana-dashboard.json) queries is a family the
/// server exposes in this scrape, or registers (a labelled family shows no series before its
/// first event: throttles, dropped notifications); histograms by their `_bucket` series.
fn check_dashboard(scrape: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/config/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exposed: std::collections::BTreeSet<String> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .map(str::to_owned)
        .collect();
    for file in [
        "src/metrics/mod.rs",
        "src/metrics/keys.rs",
        "src/metrics/proxy.rs",
        "src/metrics/tls.rs",
        "src/metrics/envelope.rs",
        "src/notify.rs",
    ] {
        let source = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        exposed.extend(source.split('"').filter(|s| s.starts_with("kagi_")).map(str::to_owned));
    }
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("kagi_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = name.strip_suffix("_bucket").unwrap_or(&name);
                assert!(exposed.contains(family), "{}: {name} is not a metric", panel["title"]);
                queried += 1;
                rest = &rest[at + name.len()..];
            }
        }
    }
    assert!(queried >= 14, "the dashboard queries {queried} metrics");
}
