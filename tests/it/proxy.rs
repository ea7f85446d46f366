//! The reverse proxy end to end: the real `kagi serve` in front of real `kagi sample-backend`
//! processes on loopback, driven by a real TLS client (hyper over rustls): SNI, HTTP/1.1 and
//! HTTP/2, header hygiene, 502/504 and passive health, limits, WebSocket, reload (good, bad, and
//! 100 in a row under load), session resumption across a reload, client certificates, renewal
//! and drain.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::support::{Kagi, arg, http_get};

pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process killed on drop.
pub(crate) struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `path` to appear, failing if `child` exits first.
pub(crate) fn wait_for(path: &Path, child: &mut Child, log: &Path) -> String {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("exited with {status}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "not ready in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `kagi sample-backend` on a free port.
pub(crate) fn backend(dir: &Path, name: &str) -> (Process, SocketAddr) {
    let ready = dir.join(format!("{name}.ready"));
    let log = dir.join(format!("{name}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(["sample-backend", "--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn sample-backend");
    let address = wait_for(&ready, &mut child, &log).trim().parse().expect("address");
    (Process(child), address)
}

/// A keystore (real clock) with an internal CA and two certificates: `web` (localhost,
/// 127.0.0.1) and `other` (other.test, *.wild.test).
pub(crate) fn keystore() -> Kagi {
    let mut kagi = Kagi::new();
    kagi.now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        .try_into()
        .expect("fits");
    kagi.ok(&["certs", "ca", "create", "--name", "test-ca"]);
    kagi.ok(&[
        "certs",
        "issue",
        "--name",
        "web",
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--ca",
        "test-ca",
    ]);
    kagi.ok(&[
        "certs",
        "issue",
        "--name",
        "other",
        "--dns",
        "other.test",
        "--dns",
        "*.wild.test",
        "--ca",
        "test-ca",
    ]);
    kagi
}

const ADMIN_KEY_ID: &str = "AKIAKAGIPROXYADMIN01";
const ADMIN_SECRET: &str = "proxy-test-admin-secret";

/// The head of a configuration: keystore, API and admin on free ports, an administrator.
pub(crate) fn head(kagi: &Kagi) -> String {
    format!(
        "[keystore]\ndata_dir = {:?}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n[[principals]]\nname = \"admin\"\n\
         access_key_id = {ADMIN_KEY_ID:?}\nsecret = {ADMIN_SECRET:?}\nadministrator = true\n\n",
        arg(&kagi.data_dir())
    )
}

/// A running `kagi serve --config`.
pub(crate) struct Serve {
    pub(crate) process: Process,
    config: PathBuf,
    ready_file: PathBuf,
    log: PathBuf,
    admin: String,
    listeners: serde_json::Map<String, Value>,
}

impl Serve {
    pub(crate) fn start(kagi: &Kagi, config: &str) -> Self {
        let path = kagi.path("kagi.toml");
        std::fs::write(&path, config).expect("config");
        let ready_file = kagi.path("ready.json");
        let _ = std::fs::remove_file(&ready_file);
        let log = kagi.path("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kagi"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("NO_COLOR", "1")
            .env_remove("KAGI_FAKE_NOW")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn kagi serve");
        let text = wait_for(&ready_file, &mut child, &log);
        let ready: Value = serde_json::from_str(&text).expect("ready JSON");
        Self {
            process: Process(child),
            config: path,
            ready_file,
            log,
            admin: ready["admin"].as_str().expect("admin").to_owned(),
            listeners: ready["listeners"].as_object().expect("listeners").clone(),
        }
    }

    pub(crate) fn listener(&self, name: &str) -> SocketAddr {
        self.listeners[name].as_str().expect("address").parse().expect("address")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A counter or gauge from /metrics (0 when absent).
    pub(crate) fn metric(&self, series: &str) -> f64 {
        let text = http_get(&self.admin, "/metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The sum of every series of `family` whose labels contain each of `labels`.
    pub(crate) fn metric_sum(&self, family: &str, labels: &[&str]) -> f64 {
        let text = http_get(&self.admin, "/metrics");
        text.lines()
            .filter(|line| line.starts_with(&format!("{family}{{")))
            .filter(|line| labels.iter().all(|label| line.contains(label)))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.process.0.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().expect("kill").success());
    }

    /// Writes `config` (atomically, as editors and configuration tools do) and waits until
    /// the server has tried it (a reload counted), by SIGHUP. Returns whether it took.
    fn reload(&self, config: &str) -> bool {
        let before = self.reloads();
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, config).expect("config");
        std::fs::rename(&tmp, &self.config).expect("config");
        self.signal("-HUP");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let after = self.reloads();
            if after.0 + after.1 > before.0 + before.1 {
                // The file watcher may also have seen the change: both count the same file.
                return after.0 > before.0;
            }
            assert!(Instant::now() < deadline, "no reload counted:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `config` and waits, without a signal, until the server has noticed the file
    /// changed and tried it. Returns whether it took.
    fn reload_by_file(&self, config: &str) -> bool {
        let before = self.reloads();
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, config).expect("config");
        std::fs::rename(&tmp, &self.config).expect("config");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let after = self.reloads();
            if after.0 + after.1 > before.0 + before.1 {
                return after.0 > before.0;
            }
            assert!(Instant::now() < deadline, "the file change was not noticed:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (successes, failures).
    fn reloads(&self) -> (f64, f64) {
        (
            self.metric("kagi_config_reloads_total{outcome=\"success\"}"),
            self.metric("kagi_config_reloads_total{outcome=\"failure\"}"),
        )
    }

    fn ready_listeners(&self) -> Value {
        let text = std::fs::read_to_string(&self.ready_file).expect("ready file");
        serde_json::from_str::<Value>(&text).expect("JSON")["listeners"].clone()
    }
}

/// A TLS client configuration trusting `ca` (PEM), offering h2 and/or http/1.1, with an
/// optional client certificate.
pub(crate) fn tls_client(
    ca: &Path,
    alpn: &[&[u8]],
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<_> =
        CertificateDer::pem_file_iter(ca).expect("CA").collect::<Result<_, _>>().expect("PEM");
    roots.add_parsable_certificates(certs);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Sessions of this configuration only (the default store is shared process-wide).
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    Arc::new(config)
}

/// What a request got back.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
    /// The leaf certificate the server presented.
    leaf: Option<CertificateDer<'static>>,
    pub(crate) resumed: bool,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One request over a new TLS connection to `address` with SNI `sni` (none: by IP).
pub(crate) async fn send(
    tls: &Arc<rustls::ClientConfig>,
    address: SocketAddr,
    sni: Option<&str>,
    request: http::Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_owned()).expect("name"),
        None => ServerName::IpAddress(address.ip().into()),
    };
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (_, connection) = stream.get_ref();
    let leaf = connection.peer_certificates().map(|chain| chain[0].clone());
    let resumed = connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let h2 = connection.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = request;
        *request.version_mut() = http::Version::HTTP_11;
        sender.send_request(request).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer { status: parts.status.as_u16(), body, leaf, resumed })
}

pub(crate) fn get(host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("https://{host}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub(crate) fn ca(kagi: &Kagi) -> PathBuf {
    kagi.data_dir().join("certs").join("test-ca.pem")
}

/// The chain `kagi certs` keeps for `name`: its leaf.
fn leaf_of(kagi: &Kagi, name: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(kagi.data_dir().join("certs").join(format!("{name}.pem")))
        .expect("chain")
        .next()
        .expect("a certificate")
        .expect("PEM")
}

fn proxy_config(kagi: &Kagi, store: SocketAddr, echo: SocketAddr, extra: &str) -> String {
    format!(
        "{head}[proxy]\naccess_log = {log:?}\nworkers = 2\n\n\
         [[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"web\", \"other\"]\n\n\
         [[upstreams]]\nname = \"store\"\ntargets = [\"{store}\"]\n\n\
         [[upstreams]]\nname = \"echo\"\ntargets = [\"{echo}\"]\nprotocol = \"http2\"\n\n\
         [[routes]]\nname = \"wild\"\nhost = \"*.wild.test\"\nupstream = \"echo\"\nhost_header = \"backend.internal\"\n\n\
         [[routes]]\nname = \"objects\"\npath_prefix = \"/objects/\"\nupstream = \"store\"\nmax_body_bytes = 1024\n\n\
         [[routes]]\nname = \"rest\"\nupstream = \"echo\"\n\n{extra}",
        head = head(kagi),
        log = arg(&kagi.path("access.log")),
    )
}

#[test]
fn requests_are_routed_by_host_and_path_with_clean_headers_over_both_versions() {
    let kagi = keystore();
    let (_store, store) = backend(&kagi.path(""), "store");
    let (_echo, echo) = backend(&kagi.path(""), "echo");
    let serve = Serve::start(&kagi, &proxy_config(&kagi, store, echo, ""));
    let address = serve.listener("public");
    let ca = ca(&kagi);
    let admin = serve.admin.clone();
    runtime().block_on(async {
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let tls = tls_client(&ca, &[alpn], None);
            // SNI picks the certificate: exact name, wildcard, and the default without SNI.
            let answer = send(&tls, address, Some("localhost"), get("localhost", "/echo?x=1"))
                .await
                .unwrap();
            assert_eq!(answer.leaf.as_ref(), Some(&leaf_of(&kagi, "web")));
            assert_eq!(answer.status, 200);
            let seen = answer.json();
            // The echo pool speaks HTTP/2 to its target, whatever the client spoke.
            assert_eq!(seen["version"], "HTTP/2.0");
            assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
            assert_eq!(seen["headers"]["x-forwarded-for"][0], "127.0.0.1");
            let answer = send(&tls, address, Some("a.wild.test"), get("a.wild.test", "/echo"))
                .await
                .unwrap();
            assert_eq!(answer.leaf.as_ref(), Some(&leaf_of(&kagi, "other")));
            let seen = answer.json();
            assert!(seen["uri"].as_str().unwrap().contains("backend.internal"), "{seen}");
            assert_eq!(seen["headers"]["x-forwarded-host"][0], "a.wild.test");
            let answer = send(&tls, address, None, get("127.0.0.1", "/echo")).await.unwrap();
            assert_eq!(answer.leaf.as_ref(), Some(&leaf_of(&kagi, "web")), "the default");
        }
        // HTTP/1.1 client: hop-by-hop fields, and those Connection names, do not reach the
        // upstream; earlier X-Forwarded-For values are kept in front.
        let tls = tls_client(&ca, &[b"http/1.1"], None);
        let request = http::Request::get("/echo")
            .header("host", "localhost")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-end-to-end", "kept")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let seen = send(&tls, address, Some("localhost"), request).await.unwrap().json();
        let headers = seen["headers"].as_object().unwrap();
        for gone in ["x-hop", "keep-alive", "proxy-authorization", "connection"] {
            assert!(!headers.contains_key(gone), "{gone} reached the upstream: {seen}");
        }
        assert_eq!(headers["x-end-to-end"][0], "kept");
        assert_eq!(headers["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
        // The echo pool speaks HTTP/2: the client's Host arrives as the authority.
        let uri = seen["uri"].as_str().unwrap();
        assert!(
            uri.starts_with("http://localhost/"),
            "Host forwarded as the client sent it: {uri}"
        );
        // The path prefix routes to the object store; bodies go through both ways.
        let put = http::Request::put("https://localhost/objects/a")
            .body(Full::new(Bytes::from_static(b"stored through kagi")))
            .unwrap();
        assert_eq!(send(&tls, address, Some("localhost"), put).await.unwrap().status, 201);
        let answer =
            send(&tls, address, Some("localhost"), get("localhost", "/objects/a")).await.unwrap();
        assert_eq!(answer.body, Bytes::from_static(b"stored through kagi"));
        // Kept-alive connections to the upstream are reused: twenty requests (each on a new
        // client connection, handed to the two workers in turn), at most two connections per
        // worker (the previous one may still be finishing), not twenty.
        let opened = |serve_admin: &str| {
            let text = http_get(serve_admin, "/metrics");
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "kagi_proxy_upstream_connections_opened_total{upstream=\"store\"} ",
                    )
                })
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let before = opened(&admin);
        for _ in 0..20 {
            let answer = send(&tls, address, Some("localhost"), get("localhost", "/objects/a"))
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
        }
        let opened = opened(&admin) - before;
        assert!(opened <= 4.0, "{opened} connections for 20 requests");
        // A streamed response larger than any buffer arrives whole.
        let answer = send(&tls, address, Some("localhost"), get("localhost", "/bytes?n=5000000"))
            .await
            .unwrap();
        assert_eq!(answer.body.len(), 5_000_000);
    });
    assert_eq!(serve.metric("kagi_proxy_requests_total{listener=\"public\",method=\"PUT\",route=\"objects\",status_class=\"2xx\"}"), 1.0);
    // TLS: every connection's handshake is counted by certificate; each full one is a
    // signature by the certificate's keystore key (a resumed one is not).
    let handshakes = |certificate: &str, outcome: &str| {
        serve.metric_sum(
            "kagi_tls_handshakes_total",
            &[
                "listener=\"public\"",
                &format!("certificate=\"{certificate}\""),
                &format!("outcome=\"{outcome}\""),
                "version=\"TLSv1.3\"",
            ],
        )
    };
    let web = handshakes("web", "full") + handshakes("web", "resumed");
    assert_eq!(web, 28.0, "connections that got the web certificate");
    assert_eq!(handshakes("other", "full") + handshakes("other", "resumed"), 2.0);
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(kagi.data_dir().join("certs/web.json")).unwrap(),
    )
    .unwrap();
    let key_id = meta["key_id"].as_str().unwrap();
    let signatures = serve.metric_sum(
        "kagi_key_operations_total",
        &["operation=\"TlsHandshakeSign\"", &format!("key_id=\"{key_id}\""), "outcome=\"success\""],
    );
    assert_eq!(signatures, handshakes("web", "full"), "one signature per full handshake");
    assert!(signatures >= 2.0, "one full handshake per client configuration at least");
    let expiry = serve.metric_sum("kagi_tls_certificate_expiry_seconds", &["certificate=\"web\""]);
    assert!(expiry > 80.0 * 86400.0 && expiry <= 90.0 * 86400.0, "90 days: {expiry}");
    // The access log is written in batches: wait for the line.
    let deadline = Instant::now() + START_TIMEOUT;
    let line = loop {
        let log = std::fs::read_to_string(kagi.path("access.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("\"PUT\"")) {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no access log line");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(line["route"], "objects");
    assert_eq!(line["status"], 201);
    assert_eq!(line["bytes_in"], 19);
    assert_eq!(line["target"], store.to_string());
}

#[test]
fn dead_and_slow_upstreams_answer_502_and_504_without_stalling_others() {
    let kagi = keystore();
    let (_live, live) = backend(&kagi.path(""), "live");
    // A port that refuses: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // A target that accepts but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "{head}[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"web\"]\n\n\
         [[upstreams]]\nname = \"mixed\"\ntargets = [\"{dead}\", \"{live}\"]\nfail_timeout_ms = 600000\n\n\
         [[upstreams]]\nname = \"dead\"\ntargets = [\"{dead}\"]\n\n\
         [[upstreams]]\nname = \"silent\"\ntargets = [\"{silent}\"]\nresponse_timeout_ms = 1500\n\n\
         [[routes]]\nname = \"dead\"\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n\
         [[routes]]\nname = \"silent\"\npath_prefix = \"/silent\"\nupstream = \"silent\"\n\n\
         [[routes]]\nname = \"mixed\"\nupstream = \"mixed\"\n",
        head = head(&kagi),
        silent = silent.local_addr().unwrap(),
    );
    let serve = Serve::start(&kagi, &config);
    let address = serve.listener("public");
    let tls = tls_client(&ca(&kagi), &[b"h2"], None);
    runtime().block_on(async {
        let answer =
            send(&tls, address, Some("localhost"), get("localhost", "/dead")).await.unwrap();
        assert_eq!(answer.status, 502);
        assert_eq!(answer.json()["error"], "bad_gateway");
        // While one request waits on the silent target, others are answered.
        let slow = tokio::spawn({
            let tls = Arc::clone(&tls);
            async move { send(&tls, address, Some("localhost"), get("localhost", "/silent")).await }
        });
        // Passive health: the dead target of the mixed pool fails at most once, then is skipped.
        let mut failures = 0;
        for _ in 0..6 {
            let answer =
                send(&tls, address, Some("localhost"), get("localhost", "/echo")).await.unwrap();
            match answer.status {
                200 => {}
                502 => failures += 1,
                other => panic!("unexpected {other}"),
            }
        }
        assert!(failures <= 1, "{failures} failures: the dead target was not skipped");
        assert!(!slow.is_finished(), "the silent upstream answered?");
        let answer = slow.await.unwrap().unwrap();
        assert_eq!(answer.status, 504);
        assert_eq!(answer.json()["error"], "upstream_timeout");
    });
    assert!(
        serve.metric("kagi_proxy_upstream_errors_total{kind=\"connect\",upstream=\"dead\"}") >= 1.0
    );
    assert_eq!(
        serve.metric("kagi_proxy_upstream_errors_total{kind=\"timeout\",upstream=\"silent\"}"),
        1.0
    );
    drop(silent);
}

/// Reads from a raw TCP connection until EOF or error; true if the server closed it.
pub(crate) fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    stream.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

#[test]
fn limits_refuse_with_clear_statuses_and_keep_serving() {
    let kagi = keystore();
    let (_store, store) = backend(&kagi.path(""), "store");
    let config = format!(
        "{head}[[listeners]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\ntls = false\n\
         header_timeout_ms = 200\nmax_header_bytes = 8192\nmax_connections = 3\n\n\
         [[listeners]]\nname = \"idle\"\nlisten = \"127.0.0.1:0\"\ntls = false\nheader_timeout_ms = 600000\nidle_timeout_ms = 300\n\n\
         [[upstreams]]\nname = \"store\"\ntargets = [\"{store}\"]\n\n\
         [[routes]]\nname = \"objects\"\nupstream = \"store\"\nmax_body_bytes = 1024\n",
        head = head(&kagi),
    );
    let serve = Serve::start(&kagi, &config);
    let address = serve.listener("plain");
    let request = |text: &str| {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(text.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    };
    // A declared body over the limit: 413 before anything is sent upstream.
    let response = request(
        "PUT /objects/big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("body_too_large"), "{response}");
    // A chunked body that grows past the limit: 413 too, and nothing stored.
    let chunk = "x".repeat(600);
    let response = request(&format!(
        "PUT /objects/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    ));
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    let response = request("GET /objects/chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 404"), "a cut-off body is not stored: {response}");
    // Headers over the limit: 431.
    let response = request(&format!(
        "GET /objects/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(20_000)
    ));
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    // Slowloris: half a request head, then nothing: the server hangs up.
    let mut slow = std::net::TcpStream::connect(address).unwrap();
    slow.write_all(b"GET /objects/a HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_by_server(&mut slow));
    // Idle keep-alive connection: closed after a request once idle.
    let mut idle = std::net::TcpStream::connect(serve.listener("idle")).unwrap();
    idle.write_all(b"GET /objects/a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_by_server(&mut idle));
    // Connection limit: three held open, the fourth is closed at once.
    let held: Vec<_> = (0..3)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            // A complete request each, so the server has surely accepted them.
            stream.write_all(b"GET /objects/a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).unwrap();
            stream
        })
        .collect();
    let mut fourth = std::net::TcpStream::connect(address).unwrap();
    let _ = fourth.write_all(b"GET /objects/a HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut response = String::new();
    let _ = fourth.read_to_string(&mut response);
    assert!(response.is_empty(), "the fourth connection was served: {response}");
    drop(held);
    for (listener, limit) in [
        ("plain", "body_size"),
        ("plain", "header_size"),
        ("plain", "header_timeout"),
        ("idle", "idle_timeout"),
        ("plain", "max_connections"),
    ] {
        let series = format!(
            "kagi_proxy_limit_rejections_total{{limit=\"{limit}\",listener=\"{listener}\"}}"
        );
        assert!(serve.metric(&series) >= 1.0, "{series} not counted:\n{}", serve.log());
    }
    // And it still serves.
    let wait = Instant::now() + START_TIMEOUT;
    loop {
        let response =
            request("GET /objects/none HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if response.starts_with("HTTP/1.1 404") {
            break;
        }
        assert!(Instant::now() < wait, "not serving after the limits: {response}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn websocket_upgrades_pass_through() {
    let kagi = keystore();
    let (_echo, echo) = backend(&kagi.path(""), "ws");
    let config = format!(
        "{head}[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"web\"]\n\n\
         [[upstreams]]\nname = \"ws\"\ntargets = [\"{echo}\"]\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n",
        head = head(&kagi),
    );
    let serve = Serve::start(&kagi, &config);
    let address = serve.listener("public");
    let tls = tls_client(&ca(&kagi), &[b"http/1.1"], None);
    runtime().block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        for message in [&b"first frame"[..], b"second, after the first came back"] {
            stream.write_all(message).await.unwrap();
            let mut echoed = vec![0u8; message.len()];
            stream.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed, message);
        }
    });
}

#[test]
fn reloads_apply_good_files_reject_bad_ones_and_keep_sessions() {
    let kagi = keystore();
    let (_first, first) = backend(&kagi.path(""), "first");
    let (_second, second) = backend(&kagi.path(""), "second");
    let config = |target: SocketAddr, extra: &str| {
        format!(
            "{head}[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"web\"]\n\n\
             [[upstreams]]\nname = \"app\"\ntargets = [\"{target}\"]\n\n\
             [[routes]]\nname = \"app\"\nupstream = \"app\"\n\n{extra}",
            head = head(&kagi),
        )
    };
    let serve = Serve::start(&kagi, &config(first, ""));
    let address = serve.listener("public");
    let tls = tls_client(&ca(&kagi), &[b"http/1.1"], None);
    let rt = runtime();
    let put = |name: &str| {
        http::Request::put(format!("https://localhost/{name}"))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap()
    };
    // Mark the first backend, to tell the two apart.
    assert_eq!(
        rt.block_on(send(&tls, address, Some("localhost"), put("objects/first"))).unwrap().status,
        201
    );
    let which = |rt: &tokio::runtime::Runtime| {
        rt.block_on(send(&tls, address, Some("localhost"), get("localhost", "/objects/first")))
            .unwrap()
    };
    assert_eq!(which(&rt).status, 200);
    // A client with no session yet: a full handshake now, a resumption after the reload.
    let fresh = tls_client(&ca(&kagi), &[b"http/1.1"], None);
    let first_handshake =
        rt.block_on(send(&fresh, address, Some("localhost"), get("localhost", "/"))).unwrap();
    // A bad file: rejected with its line, the old configuration keeps serving.
    let bad = config(second, "[[routes]]\nname = \"broken\"\nupstream = \"nowhere\"\n");
    assert!(!serve.reload(&bad));
    let log = serve.log();
    assert!(
        log.contains("kagi.toml:") && log.contains("no [[upstreams]] is named \\\"nowhere\\\"")
            || log.contains("no [[upstreams]] is named"),
        "{log}"
    );
    assert!(log.contains("configuration reload rejected"), "{log}");
    assert_eq!(which(&rt).status, 200, "still the first backend");
    let readyz = http_get(&serve.admin, "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 503"), "a failed reload shows in /readyz: {readyz}");
    // A certificate whose key does not exist is rejected too.
    let missing =
        config(second, "").replace("certificates = [\"web\"]", "certificates = [\"nope\"]");
    assert!(!serve.reload(&missing));
    // A good file: new connections go to the second backend; a new listener comes up.
    let good =
        config(second, "[[listeners]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\ntls = false\n");
    assert!(serve.reload(&good));
    assert_eq!(which(&rt).status, 404, "the second backend has no such object");
    assert!(serve.ready_listeners()["plain"].is_string(), "the ready file names the new listener");
    assert!(http_get(&serve.admin, "/readyz").starts_with("HTTP/1.1 200"));
    // A session from before the reload resumes after it.
    assert!(!first_handshake.resumed);
    let resumed =
        rt.block_on(send(&fresh, address, Some("localhost"), get("localhost", "/"))).unwrap();
    assert!(resumed.resumed, "the session ticket survived the reload");
    // Saving the file is enough: no signal needed.
    assert!(serve.reload_by_file(&config(first, "")));
    assert_eq!(which(&rt).status, 200, "back on the first backend");
    assert!(serve.reload_by_file(&good));
    // A setting that needs a restart is reported, not silently ignored.
    let moved =
        good.replace("[admin]\nlisten = \"127.0.0.1:0\"", "[admin]\nlisten = \"127.0.0.2:0\"");
    assert!(serve.reload(&moved));
    assert!(serve.log().contains("takes effect only on restart"), "{}", serve.log());
    assert_eq!(serve.reloads().1, 2.0);
}

#[test]
fn a_hundred_reloads_under_load_lose_no_request() {
    let kagi = keystore();
    let (_a, a) = backend(&kagi.path(""), "a");
    let (_b, b) = backend(&kagi.path(""), "b");
    let config = |target: SocketAddr| {
        format!(
            "{head}[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"web\"]\n\n\
             [[upstreams]]\nname = \"app\"\ntargets = [\"{target}\"]\n\n[[routes]]\nname = \"app\"\nupstream = \"app\"\n",
            head = head(&kagi),
        )
    };
    let serve = Serve::start(&kagi, &config(a));
    let address = serve.listener("public");
    let tls = tls_client(&ca(&kagi), &[b"h2", b"http/1.1"], None);
    let rt = runtime();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        rt.spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // New connections and requests on them, both protocols in turn.
                match send(&tls, address, Some("localhost"), get("localhost", "/echo")).await {
                    Ok(answer) if answer.status == 200 => ok += 1,
                    Ok(answer) => failed.push(format!("status {}", answer.status)),
                    Err(error) => failed.push(error),
                }
            }
            (ok, failed)
        })
    };
    for round in 0..100 {
        assert!(serve.reload(&config(if round % 2 == 0 { b } else { a })), "reload {round}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = rt.block_on(load).unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 0);
    assert!(serve.reloads().0 >= 100.0);
}

#[test]
fn client_certificates_are_required_where_configured() {
    let kagi = keystore();
    let (_app, app) = backend(&kagi.path(""), "app");
    // A client CA and a client certificate, made here (they are the client's, not kagi's).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_params = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    std::fs::write(kagi.path("clients.pem"), ca_cert.pem()).unwrap();
    let config = format!(
        "{head}[[listeners]]\nname = \"mtls\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"web\"]\nclient_ca = {clients:?}\n\n\
         [[upstreams]]\nname = \"app\"\ntargets = [\"{app}\"]\n\n[[routes]]\nname = \"app\"\nupstream = \"app\"\n",
        head = head(&kagi),
        clients = arg(&kagi.path("clients.pem")),
    );
    let serve = Serve::start(&kagi, &config);
    let address = serve.listener("mtls");
    runtime().block_on(async {
        let without = tls_client(&ca(&kagi), &[b"http/1.1"], None);
        assert!(
            send(&without, address, Some("localhost"), get("localhost", "/echo")).await.is_err()
        );
        let key = PrivateKeyDer::try_from(client_key.serialize_der()).unwrap();
        let with =
            tls_client(&ca(&kagi), &[b"http/1.1"], Some((vec![client_cert.der().clone()], key)));
        let answer =
            send(&with, address, Some("localhost"), get("localhost", "/echo")).await.unwrap();
        assert_eq!(answer.status, 200);
    });
}

#[test]
fn renewal_is_served_after_a_reload_and_sigterm_drains() {
    let kagi = keystore();
    let (_app, app) = backend(&kagi.path(""), "app");
    let config = format!(
        "{head}[proxy]\ndrain_timeout_ms = 60000\n\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"web\"]\n\n\
         [[upstreams]]\nname = \"app\"\ntargets = [\"{app}\"]\n\n[[routes]]\nname = \"app\"\nupstream = \"app\"\n",
        head = head(&kagi),
    );
    let mut serve = Serve::start(&kagi, &config);
    let address = serve.listener("public");
    let tls = tls_client(&ca(&kagi), &[b"h2"], None);
    let rt = runtime();
    let before =
        rt.block_on(send(&tls, address, Some("localhost"), get("localhost", "/echo"))).unwrap();
    // Renewed through the running server's API (a new key, a new certificate, the alias moved),
    // then picked up by a reload.
    let run = kagi.run_with_env(
        &["certs", "renew", "web"],
        b"",
        &[("AWS_ACCESS_KEY_ID", ADMIN_KEY_ID), ("AWS_SECRET_ACCESS_KEY", ADMIN_SECRET)],
    );
    assert_eq!(run.code, 0, "renew through the server: {}", run.stderr);
    assert_ne!(leaf_of(&kagi, "web"), before.leaf.clone().unwrap(), "renewed:\n{}", serve.log());
    assert!(serve.reload(&config));
    // A full handshake: a resumed session would show the certificate it began with.
    let tls = tls_client(&ca(&kagi), &[b"h2"], None);
    let after =
        rt.block_on(send(&tls, address, Some("localhost"), get("localhost", "/echo"))).unwrap();
    assert_eq!(after.status, 200);
    assert_eq!(after.leaf, Some(leaf_of(&kagi, "web")), "the renewed certificate is served");
    // SIGTERM while a request is in flight: it completes, then the server exits 0.
    let slow =
        rt.spawn({
            let tls = Arc::clone(&tls);
            async move {
                send(&tls, address, Some("localhost"), get("localhost", "/slow?ms=1500")).await
            }
        });
    // Wait until the request is in flight upstream (the connection gauge shows it).
    let deadline = Instant::now() + START_TIMEOUT;
    while serve.metric("kagi_proxy_connections_open{listener=\"public\"}") < 1.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    serve.signal("-TERM");
    let answer = rt.block_on(slow).unwrap().unwrap();
    assert_eq!(answer.status, 200, "the request in flight finished");
    let status = serve.process.0.wait().unwrap();
    assert!(status.success(), "exit 0 after draining: {status}");
}

#[test]
fn kagi_demo_serves_a_sample_backend_through_the_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready.json");
    let log = dir.path().join("demo.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kagi"))
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn kagi demo");
    let text = wait_for(&ready, &mut child, &log);
    let demo = Process(child);
    let ready: Value = serde_json::from_str(&text).expect("JSON");
    let address: SocketAddr = ready["listeners"]["demo"].as_str().unwrap().parse().unwrap();
    let ca = dir.path().join("demo/data/certs/demo-ca.pem");
    let tls = tls_client(&ca, &[b"h2"], None);
    runtime().block_on(async {
        let put = http::Request::put("https://localhost/objects/hello")
            .body(Full::new(Bytes::from_static(b"hello through kagi")))
            .unwrap();
        assert_eq!(send(&tls, address, Some("localhost"), put).await.unwrap().status, 201);
        let answer = send(&tls, address, Some("localhost"), get("localhost", "/objects/hello"))
            .await
            .unwrap();
        assert_eq!(answer.body, Bytes::from_static(b"hello through kagi"));
    });
    drop(demo);
    let mut out = String::new();
    // The guide names the commands to try.
    let _ = std::fs::read_to_string(dir.path().join("demo/kagi.toml")).map(|t| out = t);
    assert!(out.contains("[[routes]]"), "the demo writes its configuration");
}

#[test]
fn check_config_checks_certificates_and_envelope_keys_like_a_reload() {
    let kagi = keystore();
    let config = |certificate: &str, key: &str| {
        format!(
            "{head}[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"{certificate}\"]\n\n\
             [[upstreams]]\nname = \"app\"\ntargets = [\"127.0.0.1:9\"]\n\n\
             [[routes]]\nname = \"app\"\nupstream = \"app\"\n[routes.envelope]\nkey = \"{key}\"\n",
            head = head(&kagi),
        )
    };
    let key = kagi.ok(&["--output", "json", "keys", "create"]).json()["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = kagi.path("check.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        kagi.run_with_env(&["check-config", arg(&path)], b"", &[])
    };
    let good = check(&config("web", &key));
    assert_eq!(good.code, 0, "{}", good.stderr);
    assert!(
        good.stdout_text().contains("certificate and envelope keys checked"),
        "{}",
        good.stdout_text()
    );
    let missing_key = check(&config("web", "alias/nowhere"));
    assert_eq!(missing_key.code, 6);
    assert!(
        missing_key.stderr.contains("route \"app\": key \"alias/nowhere\""),
        "{}",
        missing_key.stderr
    );
    let missing_cert = check(&config("nope", &key));
    assert_eq!(missing_cert.code, 6);
    assert!(
        missing_cert.stderr.contains("listener \"public\": certificate \"nope\""),
        "{}",
        missing_cert.stderr
    );
}

#[test]
fn upstreams_over_tls_are_verified_against_their_ca() {
    let kagi = keystore();
    let (_app, app) = backend(&kagi.path(""), "app");
    let base = |extra: &str| {
        format!(
            "{head}[[listeners]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\ntls = false\n\n\
             [[upstreams]]\nname = \"app\"\ntargets = [\"{app}\"]\n\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/app/\"\nupstream = \"app\"\n\n{extra}",
            head = head(&kagi),
        )
    };
    let serve = Serve::start(&kagi, &base(""));
    // kagi's own KMS API listener is a TLS upstream with a CA of its own.
    let ready: Value =
        serde_json::from_str(&std::fs::read_to_string(&serve.ready_file).unwrap()).unwrap();
    let api = ready["api"].as_str().unwrap().to_owned();
    let ca = ready["ca_bundle"].as_str().unwrap().to_owned();
    let upstreams = |protocol: &str, ca: &str| {
        format!(
            "[[upstreams]]\nname = \"kms\"\ntargets = [\"{api}\"]\ntls = true\nca = {ca:?}\n\
             server_name = \"localhost\"\nprotocol = \"{protocol}\"\n\n\
             [[routes]]\nname = \"kms\"\npath_prefix = \"/\"\nupstream = \"kms\"\nhost_header = \"upstream\"\n"
        )
    };
    let address = serve.listener("plain");
    let request = || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            )
            .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.to_ascii_lowercase()
    };
    for protocol in ["http1", "http2"] {
        assert!(serve.reload(&base(&upstreams(protocol, &ca))), "{}", serve.log());
        // The KMS API answered (it wants a signature): TLS to it was verified and spoken.
        let response = request();
        assert!(response.contains("x-amzn-requestid"), "{protocol}: {response}");
    }
    // A CA that did not issue the upstream's certificate: 502, never an unverified connection.
    let other_ca = kagi.data_dir().join("certs/test-ca.pem");
    assert!(serve.reload(&base(&upstreams("http1", arg(&other_ca)))));
    let response = request();
    assert!(response.starts_with("http/1.1 502"), "{response}");
    assert!(serve.log().contains("TLS"), "the log says why");
}
