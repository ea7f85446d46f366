//! Envelope routes end to end: `kagi serve` proxying to a real object store (`kagi
//! sample-backend`) that keeps whatever it receives. The store holds only ciphertext; clients
//! read their plaintext back; the tenant's context binds each object; tampering, disabled keys
//! and missing context are refused; rotation keeps old objects readable; JSON field mode leaves
//! the other fields readable; and the official AWS Encryption SDK for Python reads what kagi
//! stored and writes what kagi reads.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use kagi::api::client::HttpVersion;
use serde_json::{Value, json};

use crate::support::server::{ACCOUNT, ADMIN, Server};
use crate::support::{arg, python};

/// A `kagi sample-backend` on a free port, killed on drop.
struct Backend {
    child: std::process::Child,
    address: SocketAddr,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backend(dir: &Path) -> Backend {
    let ready = dir.join("backend.ready");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(["sample-backend", "--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sample-backend");
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break text.trim().parse().expect("address");
        }
        assert!(child.try_wait().unwrap().is_none(), "sample-backend exited");
        assert!(Instant::now() < deadline, "sample-backend not ready");
        std::thread::sleep(Duration::from_millis(20));
    };
    Backend { child, address }
}

/// What came back.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

impl Answer {
    fn bytes(&self) -> &Bytes {
        self.body.as_ref().unwrap_or_else(|e| panic!("body failed: {e}"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(self.bytes()).expect("JSON")
    }
}

/// One HTTP/1.1 request over a new plain connection.
async fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(connection);
    let mut request = http::Request::builder().method(method).uri(path).header("host", "store");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let response = sender.send_request(request).await.expect("response head");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).map_err(|e| e.to_string());
    Answer { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// Distinctive bytes: no 32-byte window repeats.
fn plaintext(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut n: u64 = 0;
    while out.len() < len {
        out.extend_from_slice(format!("record {n:012} of tenant acme; ").as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}

/// Whether any 32-byte window of `plaintext` appears in `stored`.
fn leaks(plaintext: &[u8], stored: &[u8]) -> bool {
    let windows: std::collections::HashSet<&[u8]> = stored.windows(32).collect();
    plaintext.chunks(32).filter(|c| c.len() == 32).any(|c| windows.contains(c))
}

const TENANT: (&str, &str) = ("x-tenant", "acme");

fn proxy_config(store: SocketAddr) -> String {
    format!(
        "[[listeners]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\ntls = false\n\n\
         [[upstreams]]\nname = \"store\"\ntargets = [\"{store}\"]\n\n\
         [[routes]]\nname = \"records\"\npath_prefix = \"/objects/records/\"\nupstream = \"store\"\n\
         [routes.envelope]\nkey = \"alias/objects\"\njson_fields = [\"/card/number\", \"/patient/ssn\"]\n\
         [[routes.envelope.context]]\nkey = \"route\"\nfrom = \"route\"\n\n\
         [[routes]]\nname = \"ranged\"\npath_prefix = \"/objects/ranged/\"\nupstream = \"store\"\n\
         [routes.envelope]\nkey = \"alias/objects\"\nrange = \"decrypt\"\nframe_length = 1024\n\
         principal = \"route-objects\"\n\n\
         [[routes]]\nname = \"denied\"\npath_prefix = \"/objects/denied/\"\nupstream = \"store\"\n\
         [routes.envelope]\nkey = \"alias/objects\"\n\n\
         [[routes]]\nname = \"objects\"\npath_prefix = \"/objects/\"\nupstream = \"store\"\n\
         max_body_bytes = 67108864\n\
         [routes.envelope]\nkey = \"alias/objects\"\nframe_length = 4096\n\
         [[routes.envelope.context]]\nkey = \"tenant\"\nheader = \"X-Tenant\"\n\
         [[routes.envelope.context]]\nkey = \"bucket\"\nvalue = \"demo\"\n\n"
    )
}

#[test]
fn the_backend_stores_only_ciphertext_and_clients_read_plaintext() {
    let first = Server::start(&[ADMIN], "");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // The key, usable by the two routes' principals for data keys and nothing else.
    let key_arn = runtime.block_on(async {
        let mut kms = first.client(HttpVersion::Http1, &ADMIN).await;
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "admin", "Effect": "Allow", "Action": "kms:*", "Resource": "*",
                 "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/admin")}},
                {"Sid": "routes", "Effect": "Allow", "Resource": "*",
                 "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                 "Principal": {"AWS": [
                     format!("arn:aws:iam::{ACCOUNT}:user/route-objects"),
                     format!("arn:aws:iam::{ACCOUNT}:user/route-records")]}}
            ]
        });
        let key = kms
            .call("CreateKey", &json!({"Policy": policy.to_string(), "Description": "objects"}))
            .await
            .unwrap();
        let key_arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
        kms.call("CreateAlias", &json!({"AliasName": "alias/objects", "TargetKeyId": key_arn}))
            .await
            .unwrap();
        key_arn
    });
    let mut first = first;
    first.kill();
    let store = backend(&first.path(""));
    let server = Server::start_on_with(&first.data_dir(), &[ADMIN], &proxy_config(store.address));
    let proxy = server.listener("plain");
    let direct = store.address;
    let small = plaintext(300_000);
    let large = plaintext(3 * 1024 * 1024 + 123);
    runtime.block_on(async {
        // Writes: the store receives ciphertext only.
        for (name, body) in [("small", &small), ("large", &large)] {
            let put = send(proxy, "PUT", &format!("/objects/{name}"), &[TENANT], body.clone()).await;
            assert_eq!(put.status, 201, "PUT {name}");
            let stored = send(direct, "GET", &format!("/objects/{name}"), &[], vec![]).await;
            let stored = stored.bytes();
            assert_eq!(stored[0], 0x02, "an AWS Encryption SDK v2 message");
            assert_eq!(&stored[1..3], &[0x04, 0x78], "suite 0x0478");
            assert!(!leaks(body, stored), "the store holds plaintext of {name}");
            // Reads: the original bytes, with their length.
            let got = send(proxy, "GET", &format!("/objects/{name}"), &[TENANT], vec![]).await;
            assert_eq!(got.status, 200);
            assert_eq!(got.bytes().as_ref(), body.as_slice(), "GET {name}");
            assert_eq!(got.headers["content-length"], body.len().to_string().as_str());
            assert!(!got.headers.contains_key("etag"));
            // HEAD: the plaintext length, no body.
            let head = send(proxy, "HEAD", &format!("/objects/{name}"), &[TENANT], vec![]).await;
            assert_eq!(head.status, 200);
            assert_eq!(head.headers["content-length"], body.len().to_string().as_str());
        }
        // The context binds each object to its tenant: another tenant, or none, reads nothing.
        let other = send(proxy, "GET", "/objects/small", &[("x-tenant", "globex")], vec![]).await;
        assert_eq!(other.status, 502, "a swapped or foreign object is caught");
        assert_eq!(other.json()["error"], "bad_encrypted_response");
        assert!(!leaks(&small, other.bytes()));
        let none = send(proxy, "GET", "/objects/small", &[], vec![]).await;
        assert_eq!(none.status, 400);
        assert_eq!(none.json()["error"], "missing_context");
        let refused = send(proxy, "PUT", "/objects/x", &[], b"secret".to_vec()).await;
        assert_eq!(refused.status, 400, "nothing reaches the store without the context");
        assert_eq!(send(direct, "GET", "/objects/x", &[], vec![]).await.status, 404);
        // Range on an encrypted object: refused (the route does not say decrypt).
        let range = send(proxy, "GET", "/objects/small", &[TENANT, ("range", "bytes=0-9")], vec![]).await;
        assert_eq!(range.status, 416);
        // A flipped byte: 502 and no plaintext (small: decrypted whole before release).
        let mut tampered = send(direct, "GET", "/objects/small", &[], vec![]).await.bytes().to_vec();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0x01;
        assert_eq!(send(direct, "PUT", "/objects/tampered", &[], tampered).await.status, 201);
        let got = send(proxy, "GET", "/objects/tampered", &[TENANT], vec![]).await;
        assert_eq!(got.status, 502);
        assert!(!leaks(&small, got.bytes()));
        // A large one streams: the response breaks off, never completes.
        let mut tampered = send(direct, "GET", "/objects/large", &[], vec![]).await.bytes().to_vec();
        let late = tampered.len() - 10_000;
        tampered[late] ^= 0x01;
        assert_eq!(send(direct, "PUT", "/objects/tampered-large", &[], tampered).await.status, 201);
        let got = send(proxy, "GET", "/objects/tampered-large", &[TENANT], vec![]).await;
        assert!(
            got.body.as_ref().map_or(true, |b| b.len() < large.len()),
            "a tampered large object never arrives whole"
        );
        // A route whose principal the key policy does not name: refused, nothing stored.
        let denied = send(proxy, "PUT", "/objects/denied/x", &[], b"secret".to_vec()).await;
        assert_eq!(denied.status, 403);
        assert_eq!(denied.json()["error"], "access_denied");
        assert_eq!(send(direct, "GET", "/objects/denied/x", &[], vec![]).await.status, 404);
        // A route that serves ranges cuts them from the decrypted stream.
        let body = plaintext(10_000);
        let put = send(proxy, "PUT", "/objects/ranged/r", &[], body.clone()).await;
        assert_eq!(put.status, 201);
        for (range, from, to) in [("bytes=0-9", 0, 10), ("bytes=5000-6023", 5000, 6024), ("bytes=-10", 9990, 10_000), ("bytes=9000-", 9000, 10_000)] {
            let got = send(proxy, "GET", "/objects/ranged/r", &[("range", range)], vec![]).await;
            assert_eq!(got.status, 206, "{range}");
            assert_eq!(got.bytes().as_ref(), &body[from..to], "{range}");
            let expected = format!("bytes {from}-{}/10000", to - 1);
            assert_eq!(got.headers["content-range"], expected.as_str());
        }
        let beyond = send(proxy, "GET", "/objects/ranged/r", &[("range", "bytes=20000-")], vec![]).await;
        assert_eq!(beyond.status, 416);
        // JSON field mode: the named fields are encrypted, the rest stays readable.
        let record = json!({"name": "Ann", "card": {"number": "4111111111111111", "expiry": "12/29"},
                            "patient": {"ssn": "078-05-1120"}});
        let put = send(proxy, "PUT", "/objects/records/r1", &[("content-type", "application/json")],
                       serde_json::to_vec(&record).unwrap()).await;
        assert_eq!(put.status, 201);
        let stored: Value = send(direct, "GET", "/objects/records/r1", &[], vec![]).await.json();
        assert_eq!(stored["name"], "Ann");
        assert_eq!(stored["card"]["expiry"], "12/29");
        let number = stored["card"]["number"].as_str().unwrap();
        assert!(!number.contains("4111") && number.len() > 100, "{number}");
        assert!(!stored.to_string().contains("078-05-1120"));
        let got = send(proxy, "GET", "/objects/records/r1", &[], vec![]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.json(), record, "the fields decrypted, the rest as stored");
    });
    // The official SDK reads what kagi stored, its KMS calls going to kagi's API.
    let stored = server.path("stored-small.bin");
    runtime.block_on(async {
        let bytes = send(direct, "GET", "/objects/small", &[], vec![]).await.bytes().to_vec();
        std::fs::write(&stored, bytes).unwrap();
    });
    let context = r#"{"tenant": "acme", "bucket": "demo"}"#;
    let out = server.path("esdk-small.out");
    python::check(
        &server,
        "python",
        &["esdk_envelope.py", "decrypt", &key_arn, context, arg(&stored), arg(&out)],
    );
    assert_eq!(std::fs::read(&out).unwrap(), small);
    // And kagi reads what the SDK wrote, with either committing suite.
    let source = server.path("esdk-source.bin");
    std::fs::write(&source, &small[..50_000]).unwrap();
    for suite in ["0478", "0578"] {
        let message = server.path(&format!("esdk-{suite}.bin"));
        python::check(
            &server,
            "python",
            &[
                "esdk_envelope.py",
                "encrypt",
                &key_arn,
                suite,
                context,
                "4096",
                arg(&source),
                arg(&message),
            ],
        );
        runtime.block_on(async {
            let bytes = std::fs::read(&message).unwrap();
            let path = format!("/objects/esdk-{suite}");
            assert_eq!(send(direct, "PUT", &path, &[], bytes).await.status, 201);
            let got = send(proxy, "GET", &path, &[TENANT], vec![]).await;
            assert_eq!(got.status, 200, "suite {suite}");
            assert_eq!(got.bytes().as_ref(), &small[..50_000]);
        });
    }
    // Rotation: old objects still read, new ones are written under the new version.
    runtime.block_on(async {
        let mut kms = server.client(HttpVersion::Http1, &ADMIN).await;
        kms.call("RotateKeyOnDemand", &json!({"KeyId": key_arn})).await.unwrap();
        let got = send(proxy, "GET", "/objects/small", &[TENANT], vec![]).await;
        assert_eq!(got.bytes().as_ref(), small.as_slice());
        let put = send(proxy, "PUT", "/objects/after", &[TENANT], b"after rotation".to_vec()).await;
        assert_eq!(put.status, 201);
        let got = send(proxy, "GET", "/objects/after", &[TENANT], vec![]).await;
        assert_eq!(got.bytes().as_ref(), b"after rotation");
        // A disabled key refuses both writes and reads.
        kms.call("DisableKey", &json!({"KeyId": key_arn})).await.unwrap();
        let put = send(proxy, "PUT", "/objects/denied", &[TENANT], b"no".to_vec()).await;
        assert_eq!(put.status, 403, "write with a disabled key");
        assert_eq!(put.json()["error"], "key_unavailable");
        assert_eq!(send(direct, "GET", "/objects/denied", &[], vec![]).await.status, 404);
        let got = send(proxy, "GET", "/objects/small", &[TENANT], vec![]).await;
        assert_eq!(got.status, 403, "read with a disabled key");
        kms.call("EnableKey", &json!({"KeyId": key_arn})).await.unwrap();
        let got = send(proxy, "GET", "/objects/small", &[TENANT], vec![]).await;
        assert_eq!(got.status, 200);
    });
    // Metrics: bodies and bytes per route and key, failures by reason, the data-key cache.
    let metrics = crate::support::http_get(&server.ready.admin.to_string(), "/metrics");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    // A scrape with every family in use (API, keys, TLS, proxy, envelope, cache) is clean.
    crate::metrics::check_promtool(
        metrics.split_once("\r\n\r\n").map_or(&*metrics, |(_, body)| body),
    );
    let key_id = key_arn.rsplit('/').next().unwrap();
    let encrypted = format!(
        "kagi_envelope_bytes_total{{direction=\"encrypt\",key_id=\"{key_id}\",route=\"objects\"}}"
    );
    // The streamed (large) GET counts too, though hyper stops polling it after its length.
    let decrypted = format!(
        "kagi_envelope_bytes_total{{direction=\"decrypt\",key_id=\"{key_id}\",route=\"objects\"}}"
    );
    assert!(value(&decrypted) >= large.len() as f64, "{decrypted} = {}", value(&decrypted));
    // Aliases join the key families through an info series.
    let alias = format!("kagi_key_alias_info{{alias=\"alias/objects\",key_id=\"{key_id}\"}}");
    assert_eq!(value(&alias), 1.0, "{alias}");
    // small + large + "after rotation"; the refused ones never started.
    assert_eq!(value(&encrypted), (small.len() + large.len() + b"after rotation".len()) as f64);
    for reason in ["wrong_context", "missing_context", "key_disabled", "tampered"] {
        let series =
            format!("kagi_envelope_failures_total{{reason=\"{reason}\",route=\"objects\"}}");
        assert!(value(&series) >= 1.0, "{series} not counted");
    }
    assert!(
        value("kagi_envelope_data_key_cache_total{direction=\"decrypt\",result=\"hit\"}") >= 1.0,
        "repeated reads of one object hit the cache"
    );
    assert!(value("kagi_envelope_data_key_cache_evictions_total{reason=\"revoked\"}") >= 1.0);
    // The trail names the route's principal for its data keys.
    let trail = std::fs::read_dir(server.data_dir().join("audit"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(trail.contains("route-objects"), "the route acts as its own principal");
    drop(first);
}
