//! `kagi serve` driven by kagi's own client: HTTP/2 and HTTP/1.1, SigV4 refusals, protocol
//! errors, the admin listener, and shutdown on SIGTERM.

use std::process::Command;

use bytes::Bytes;
use kagi::api::client::{CallError, HttpVersion};
use serde_json::{Value, json};

use crate::support::http_get;
use crate::support::server::{ADMIN, Server};

const ADMIN_KEY: &str = ADMIN.access_key_id;
const ADMIN_SECRET: &str = ADMIN.secret;

fn start() -> Server {
    Server::start(&[ADMIN], "")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn api_error(result: Result<Value, CallError>) -> (u16, String, Option<String>) {
    match result {
        Err(CallError::Api(error)) => (error.status, error.code_name, error.error_type_header),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn both_http_versions_serve_the_api() {
    let server = start();
    runtime().block_on(async {
        for version in [HttpVersion::Http2, HttpVersion::Http1] {
            let mut client = server.client(version, &ADMIN).await;
            let key = client.call("CreateKey", &json!({"Description": "h2"})).await.unwrap();
            let key_id = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
            // Several requests on one connection (HTTP/2 streams, HTTP/1.1 keep-alive).
            for i in 0..5 {
                let plaintext = kagi_b64(format!("secret {i}").as_bytes());
                let encrypted = client
                    .call(
                        "Encrypt",
                        &json!({"KeyId": key_id, "Plaintext": plaintext, "EncryptionContext": {"n": i.to_string()}}),
                    )
                    .await
                    .unwrap();
                let decrypted = client
                    .call(
                        "Decrypt",
                        &json!({"CiphertextBlob": encrypted["CiphertextBlob"], "EncryptionContext": {"n": i.to_string()}}),
                    )
                    .await
                    .unwrap();
                assert_eq!(decrypted["Plaintext"], plaintext, "{version:?}");
                assert_eq!(decrypted["KeyId"], key["KeyMetadata"]["Arn"]);
            }
        }
    });
}

fn kagi_b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn authentication_is_checked_first() {
    let server = start();
    runtime().block_on(async {
        for version in [HttpVersion::Http2, HttpVersion::Http1] {
            let mut wrong_secret =
                server.client_with(version, ADMIN_KEY, "not-the-secret-0000").await;
            let (status, code, header) = api_error(wrong_secret.call("ListKeys", &json!({})).await);
            assert_eq!((status, code.as_str()), (400, "InvalidSignatureException"));
            assert_eq!(header.as_deref(), Some("InvalidSignatureException"));
            let mut unknown =
                server.client_with(version, "AKIAUNKNOWN000000000", ADMIN_SECRET).await;
            let (_, code, _) = api_error(unknown.call("ListKeys", &json!({})).await);
            assert_eq!(code, "UnrecognizedClientException");
            // Unsigned: refused before the operation is even looked at.
            let mut client = server.client(version, &ADMIN).await;
            let response =
                client.send_raw("NoSuchOperation", Bytes::from_static(b"{}"), false).await.unwrap();
            assert_eq!(response.status(), 403);
            assert!(response.headers().contains_key("x-amzn-requestid"));
        }
    });
}

#[test]
fn protocol_errors_are_400_with_the_aws_code() {
    let server = start();
    runtime().block_on(async {
        let mut client = server.client(HttpVersion::Http2, &ADMIN).await;
        let cases: [(&str, &[u8], &str); 7] = [
            ("NoSuchOperation", b"{}", "UnknownOperationException"),
            ("ListKeys", b"{not json", "SerializationException"),
            ("ListKeys", b"[1, 2]", "SerializationException"),
            ("ListKeys", br#"{"Limit": "ten"}"#, "SerializationException"),
            ("ListKeys", br#"{"Limit": 0}"#, "ValidationException"),
            ("Encrypt", br#"{"Plaintext": "aGk="}"#, "ValidationException"),
            (
                "Encrypt",
                br#"{"KeyId": "alias/none", "Plaintext": "***"}"#,
                "SerializationException",
            ),
        ];
        for (operation, body, expected) in cases {
            let response =
                client.send_raw(operation, Bytes::copy_from_slice(body), true).await.unwrap();
            let text = String::from_utf8_lossy(response.body()).into_owned();
            assert_eq!(response.status(), 400, "{operation} {text}");
            assert_eq!(response.headers()["x-amzn-errortype"], expected, "{text}");
            let document: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(document["__type"], expected);
            assert!(document["message"].is_string());
        }
        // DryRun is honoured only where the model has it: DescribeKey ignores it, Encrypt stops.
        let key = client.call("CreateKey", &json!({})).await.unwrap();
        let key_id = key["KeyMetadata"]["KeyId"].clone();
        client.call("DescribeKey", &json!({"KeyId": key_id, "DryRun": true})).await.unwrap();
        let dry = json!({"KeyId": key_id, "Plaintext": "eA==", "DryRun": true});
        let (status, code, _) = api_error(client.call("Encrypt", &dry).await);
        assert_eq!((status, code.as_str()), (412, "DryRunOperationException"));
        // An oversized body is refused, not buffered without bound.
        let huge = Bytes::from(vec![b' '; kagi::api::MAX_BODY + 1]);
        let response = client.send_raw("ListKeys", huge, true).await.unwrap();
        assert_eq!(response.status(), 400);
    });
}

#[test]
fn metrics_count_requests_and_sigterm_drains() {
    let server = start();
    runtime().block_on(async {
        let mut client = server.client(HttpVersion::Http1, &ADMIN).await;
        client.call("ListKeys", &json!({})).await.unwrap();
        let _ = client.call("DescribeKey", &json!({"KeyId": "alias/missing"})).await;
    });
    let metrics = http_get(&server.ready.admin.to_string(), "/metrics");
    assert!(
        metrics.contains(r#"kagi_api_requests_total{operation="ListKeys",outcome="success"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"operation="DescribeKey",outcome="NotFoundException"} 1"#));
    assert!(http_get(&server.ready.admin.to_string(), "/healthz").ends_with("ok\n"));
    assert!(server.data_dir().join("api-ca.pem").exists());
    assert!(server.terminate(), "kagi serve exits 0 on SIGTERM");
}

/// Runs `kagi --data-dir DIR ARGS…` with `env`; returns (exit code, stdout, stderr).
fn kagi(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<u8>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("KAGI_FAKE_NOW")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", data_dir.join("no-such-credentials"))
        .envs(env.iter().copied())
        .output()
        .expect("kagi runs");
    (
        output.status.code().unwrap_or(-1),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_goes_through_a_running_server() {
    let mut server = start();
    let data_dir = server.data_dir();
    let admin = [("AWS_ACCESS_KEY_ID", ADMIN_KEY), ("AWS_SECRET_ACCESS_KEY", ADMIN_SECRET)];
    let (code, stdout, stderr) =
        kagi(&data_dir, &["--output", "json", "keys", "create", "--description", "remote"], &admin);
    assert_eq!(code, 0, "{stderr}");
    let created: Value = serde_json::from_slice(&stdout).unwrap();
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    std::fs::write(data_dir.join("plain.txt"), b"through the API").unwrap();
    let plain = data_dir.join("plain.txt").display().to_string();
    let sealed = data_dir.join("sealed.bin").display().to_string();
    let (code, _, stderr) = kagi(
        &data_dir,
        &["encrypt", "--key", &key_id, "--context", "app=t", "--in", &plain, "--out", &sealed],
        &admin,
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) =
        kagi(&data_dir, &["decrypt", "--context", "app=t", "--in", &sealed], &admin);
    assert_eq!((code, stdout.as_slice()), (0, &b"through the API"[..]), "{stderr}");
    // Wrong context: the API's error, mapped to the documented exit code.
    let (code, _, stderr) = kagi(&data_dir, &["decrypt", "--in", &sealed], &admin);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("InvalidCiphertextException"), "{stderr}");
    // A profile file works like the AWS CLI's.
    let profile = data_dir.join("credentials");
    std::fs::write(
        &profile,
        format!("[ops]\naws_access_key_id = {ADMIN_KEY}\naws_secret_access_key = {ADMIN_SECRET}\n"),
    )
    .unwrap();
    let profile_env =
        [("AWS_SHARED_CREDENTIALS_FILE", profile.to_str().unwrap()), ("AWS_PROFILE", "ops")];
    let (code, stdout, stderr) =
        kagi(&data_dir, &["--output", "json", "keys", "list"], &profile_env);
    assert_eq!(code, 0, "{stderr}");
    assert!(String::from_utf8_lossy(&stdout).contains(&key_id));
    // No credentials: a clear usage error, not a silent direct access.
    let (code, _, stderr) = kagi(&data_dir, &["keys", "list"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("needs credentials"), "{stderr}");
    // A second server on the same directory is refused.
    let (code, _, stderr) = kagi(&data_dir, &["serve", "--config", "/nonexistent.toml"], &[]);
    assert_ne!(code, 0, "{stderr}");
    let config = server.path("kagi.toml");
    let (code, _, stderr) = kagi(&data_dir, &["serve", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains("in use by another kagi"), "{stderr}");
    // The trail names the principal the server authenticated.
    server.kill();
    let (code, stdout, stderr) =
        kagi(&data_dir, &["--output", "json", "audit", "show", "--operation", "Encrypt"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        String::from_utf8_lossy(&stdout).contains("\"admin\""),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}

#[test]
fn policy_parts_kagi_does_not_evaluate_are_noted_in_the_trail() {
    let mut server = start();
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/admin"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "office only", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/admin"},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}
        ]
    })
    .to_string();
    runtime().block_on(async {
        let mut client = server.client(HttpVersion::Http1, &ADMIN).await;
        let key = client.call("CreateKey", &json!({"Policy": policy})).await.unwrap();
        // The caller sees nothing of it.
        assert!(!key.to_string().contains("SourceIp"), "{key}");
    });
    server.kill();
    let (code, stdout, stderr) = kagi(
        &server.data_dir(),
        &["--output", "json", "audit", "show", "--operation", "CreateKey"],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let text = String::from_utf8_lossy(&stdout);
    assert!(text.contains("aws:SourceIp") && text.contains("never matches"), "{text}");
}

#[test]
fn check_config_names_the_line_of_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[keystore]\ndata_dir = \"data\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n[[principals]]\n\
         name = \"ops\"\naccess_key_id = \"AKIA0000000000000009\"\nsecret_env = \"KAGI_CHECK_SECRET\"\n",
    )
    .unwrap();
    let run = |file: &std::path::Path, env: &[(&str, &str)]| {
        kagi(dir.path(), &["check-config", file.to_str().unwrap()], env)
    };
    let (code, stdout, stderr) = run(&good, &[("KAGI_CHECK_SECRET", "0123456789abcdef")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(String::from_utf8_lossy(&stdout).contains("ok (api 127.0.0.1:0"));
    // The secret's variable unset: the line of secret_env.
    let (code, _, stderr) = run(&good, &[]);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("good.toml:10: ") && stderr.contains("KAGI_CHECK_SECRET"), "{stderr}");
    // A typo'd key and a bad address.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[keystore]\ndata_dir = \"data\"\n\n[api]\nlisten = \"localhost\"\n")
        .unwrap();
    let (code, _, stderr) = run(&bad, &[]);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("bad.toml:5: ") && stderr.contains("not an address"), "{stderr}");
    // A certificate the store does not have.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let named = dir.path().join("named.toml");
    std::fs::write(
        &named,
        "[keystore]\ndata_dir = \"data\"\n\n[api]\nlisten = \"127.0.0.1:0\"\ncertificate = \"web\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&named, &[]);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("certificate \"web\""), "{stderr}");
}
