//! sslyze against kagi's TLS listeners: the KMS API listener and a proxy listener meet Mozilla's
//! "intermediate" profile, a proxy listener with `tls_profile = "modern"` meets "modern", and
//! none of them is open to the known TLS attacks sslyze probes (Heartbleed, ROBOT, CCS
//! injection, insecure renegotiation, compression, downgrade without fallback SCSV, missing
//! extended master secret).
//!
//! sslyze runs from the test virtualenv (tests/py/requirements.txt) against 127.0.0.1 with SNI
//! `localhost`, trusting the test CA; its JSON output is parsed here, so a finding names the
//! listener and the check that failed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::proxy;
use crate::support::server::{ADMIN, Server};
use crate::support::{arg, python};

#[test]
fn api_and_proxy_listeners_meet_mozilla_profiles_with_no_known_vulnerability() {
    let kagi = proxy::keystore();
    let extra = "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
                 certificates = [\"web\"]\ntls_profile = \"intermediate\"\n\n\
                 [[listeners]]\nname = \"strict\"\nlisten = \"127.0.0.1:0\"\n\
                 certificates = [\"web\"]\ntls_profile = \"modern\"\n\n\
                 [[upstreams]]\nname = \"nowhere\"\ntargets = [\"127.0.0.1:9\"]\n\n\
                 [[routes]]\nname = \"all\"\nupstream = \"nowhere\"\n";
    let server = Server::start_on_with(&kagi.data_dir(), &[ADMIN], extra);
    let ca = proxy::ca(&kagi);
    // The API's certificate chains to its own CA bundle, the proxy's to the test CA: one trust
    // file with both.
    let trust = server.path("trust.pem");
    let bundle = [
        std::fs::read_to_string(&server.ready.ca_bundle).expect("API CA"),
        std::fs::read_to_string(&ca).expect("test CA"),
    ]
    .concat();
    std::fs::write(&trust, bundle).expect("trust file");

    let intermediate = scan(
        &server,
        "intermediate",
        &trust,
        &[("api", server.ready.api), ("public", server.listener("public"))],
    );
    let modern = scan(&server, "modern", &trust, &[("strict", server.listener("strict"))]);

    for (name, result) in intermediate.iter().chain(&modern) {
        check_no_vulnerability(name, result);
    }
    // What the profiles mean, read from the scan and not only from sslyze's verdict: 1.3
    // everywhere, 1.2 only where intermediate, nothing older anywhere.
    for (name, result) in &intermediate {
        assert_eq!(accepted_suites(result, "tls_1_3_cipher_suites").len(), 3, "{name}: TLS 1.3");
        let tls12 = accepted_suites(result, "tls_1_2_cipher_suites");
        assert!(!tls12.is_empty(), "{name}: TLS 1.2 is offered under intermediate");
        for suite in &tls12 {
            assert!(
                suite.starts_with("TLS_ECDHE_")
                    && (suite.contains("GCM") || suite.contains("CHACHA20")),
                "{name}: TLS 1.2 suite {suite} is not AEAD with forward secrecy"
            );
        }
    }
    for (name, result) in &modern {
        assert_eq!(accepted_suites(result, "tls_1_3_cipher_suites").len(), 3, "{name}: TLS 1.3");
        assert!(
            accepted_suites(result, "tls_1_2_cipher_suites").is_empty(),
            "{name}: TLS 1.2 is refused under modern"
        );
    }
    for (name, result) in intermediate.iter().chain(&modern) {
        for old in [
            "ssl_2_0_cipher_suites",
            "ssl_3_0_cipher_suites",
            "tls_1_0_cipher_suites",
            "tls_1_1_cipher_suites",
        ] {
            assert!(accepted_suites(result, old).is_empty(), "{name}: {old} accepted");
        }
    }
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// Runs sslyze with `--mozilla_config=profile` against `targets` and requires it to find every
/// one compliant; returns each target's scan result (the `scan_result` object of sslyze's
/// JSON), by name.
fn scan(
    server: &Server,
    profile: &str,
    trust: &Path,
    targets: &[(&'static str, SocketAddr)],
) -> Vec<(&'static str, Value)> {
    let venv = python::venv();
    let json = server.path(&format!("sslyze-{profile}.json"));
    let mut command = Command::new(venv.join("bin").join("python"));
    command
        .args(["-m", "sslyze"])
        .arg(format!("--mozilla_config={profile}"))
        .arg(format!("--certinfo_ca_file={}", arg(trust)))
        .arg(format!("--json_out={}", arg(&json)))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (_, address) in targets {
        // SNI localhost (the certificates' name), connecting to the listener's address.
        command.arg(format!("localhost:{}{{{}}}", address.port(), address.ip()));
    }
    let output = command.output().expect("run sslyze");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("sslyze wrote no JSON ({e}): {}\n{stdout}\n{stderr}", output.status)
    });
    assert!(
        output.status.success(),
        "sslyze: not compliant with Mozilla's {profile} profile ({}):\n{stdout}\n{stderr}\n\
         --- server log\n{}",
        output.status,
        server.log()
    );
    let results = report["server_scan_results"].as_array().expect("server_scan_results");
    targets
        .iter()
        .map(|(name, address)| {
            let found = results
                .iter()
                .find(|r| r["server_location"]["port"] == address.port())
                .unwrap_or_else(|| panic!("{name}: no result in {text}"));
            assert_eq!(found["scan_status"], "COMPLETED", "{name}: {found}");
            (*name, found["scan_result"].clone())
        })
        .collect()
}

/// The result of one of sslyze's scan commands, which must have completed.
fn completed<'a>(name: &str, scan_result: &'a Value, command: &str) -> &'a Value {
    let attempt = &scan_result[command];
    assert_eq!(attempt["status"], "COMPLETED", "{name}: {command} did not complete: {attempt}");
    &attempt["result"]
}

fn check_no_vulnerability(name: &str, scan_result: &Value) {
    let checks: [(&str, &str, Value); 7] = [
        ("heartbleed", "is_vulnerable_to_heartbleed", false.into()),
        ("openssl_ccs_injection", "is_vulnerable_to_ccs_injection", false.into()),
        ("tls_compression", "supports_compression", false.into()),
        ("session_renegotiation", "is_vulnerable_to_client_renegotiation_dos", false.into()),
        ("session_renegotiation", "supports_secure_renegotiation", true.into()),
        ("tls_fallback_scsv", "supports_fallback_scsv", true.into()),
        ("tls_extended_master_secret", "supports_ems_extension", true.into()),
    ];
    for (command, field, expected) in checks {
        let result = completed(name, scan_result, command);
        assert_eq!(result[field], expected, "{name}: {command}.{field}: {result}");
    }
    let robot = completed(name, scan_result, "robot");
    // No RSA key exchange at all: nothing to be an oracle for.
    assert_eq!(robot["robot_result"], "NOT_VULNERABLE_RSA_NOT_SUPPORTED", "{name}: {robot}");
}

/// The names of the cipher suites sslyze saw accepted for one protocol version.
fn accepted_suites(scan_result: &Value, command: &str) -> Vec<String> {
    let result = completed("scan", scan_result, command);
    result["accepted_cipher_suites"]
        .as_array()
        .expect("accepted_cipher_suites")
        .iter()
        .map(|accepted| accepted["cipher_suite"]["name"].as_str().expect("name").to_owned())
        .collect()
}
