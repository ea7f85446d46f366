//! Hostile clients against a TLS proxy listener (and the KMS API listener where it applies):
//! slowloris, oversized heads and bodies, HTTP/2 stream floods and rapid reset
//! (CVE-2023-44487), malformed TLS records, and idle connections up to `max_connections`.
//!
//! Each test asserts the abuse is refused the way the configured limits say, and that a
//! well-behaved client is served during the abuse (or, for the connection limit, right after
//! it). Limits are small in the test configuration, and every wait polls for a condition with a
//! generous deadline: nothing depends on how fast the machine is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proxy::{self, Process, START_TIMEOUT, Serve};
use crate::support::Kagi;

/// The listener's header timeout (also the TLS handshake's) in the test configuration.
const HEADER_TIMEOUT_MS: u64 = 1000;
/// The listener's connection limit in the test configuration.
const MAX_CONNECTIONS: usize = 12;

/// A keystore, an object store behind a TLS listener with small limits, and TLS clients.
struct Fixture {
    _kagi: Kagi,
    _store: Process,
    serve: Serve,
    address: SocketAddr,
    h1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
    /// The KMS API listener, and a client trusting its certificate.
    api: SocketAddr,
    api_h2: Arc<rustls::ClientConfig>,
}

fn fixture() -> Fixture {
    let kagi = proxy::keystore();
    let (store_process, store) = proxy::backend(&kagi.path(""), "store");
    let config = format!(
        "{head}[proxy]\naccess_log = \"off\"\n\n\
         [[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\ncertificates = [\"web\"]\n\
         header_timeout_ms = {HEADER_TIMEOUT_MS}\nmax_header_bytes = 8192\n\
         max_connections = {MAX_CONNECTIONS}\n\n\
         [[upstreams]]\nname = \"store\"\ntargets = [\"{store}\"]\n\n\
         [[routes]]\nname = \"objects\"\nupstream = \"store\"\nmax_body_bytes = 1024\n",
        head = proxy::head(&kagi),
    );
    let serve = Serve::start(&kagi, &config);
    let address = serve.listener("public");
    let ca = proxy::ca(&kagi);
    let h1 = proxy::tls_client(&ca, &[b"http/1.1"], None);
    let h2 = proxy::tls_client(&ca, &[b"h2"], None);
    let text = std::fs::read_to_string(kagi.path("ready.json")).expect("ready file");
    let ready: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let api = ready["api"].as_str().expect("api").parse().expect("address");
    let api_ca = std::path::PathBuf::from(ready["ca_bundle"].as_str().expect("ca_bundle"));
    let api_h2 = proxy::tls_client(&api_ca, &[b"h2"], None);
    Fixture { _kagi: kagi, _store: store_process, serve, address, h1, h2, api, api_h2 }
}

impl Fixture {
    /// A well-behaved client's request over each HTTP version, on new connections: the object
    /// store's 404 for a missing object means the request went all the way through.
    async fn served(&self) -> Result<(), String> {
        for tls in [&self.h1, &self.h2] {
            let answer = proxy::send(
                tls,
                self.address,
                Some("localhost"),
                proxy::get("localhost", "/objects/missing"),
            )
            .await?;
            if answer.status != 404 {
                return Err(format!("status {} ({:?})", answer.status, answer.body));
            }
        }
        Ok(())
    }

    /// [`Fixture::served`], which must succeed now.
    async fn assert_served(&self, during: &str) {
        if let Err(error) = self.served().await {
            panic!("a well-behaved client was not served {during}: {error}\n{}", self.serve.log());
        }
    }

    /// A request to the KMS API over a new HTTP/2 connection must be answered now: an unsigned
    /// one, so the answer is the API's refusal (403 MissingAuthenticationTokenException).
    async fn assert_api_served(&self, during: &str) {
        let request = http::Request::post("https://localhost/")
            .header("x-amz-target", "TrentService.ListKeys")
            .header("content-type", "application/x-amz-json-1.1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request");
        let answer = proxy::send(&self.api_h2, self.api, Some("localhost"), request)
            .await
            .unwrap_or_else(|e| panic!("the API did not answer {during}: {e}"));
        assert!(
            answer.status == 403
                && answer.json()["__type"] == "MissingAuthenticationTokenException",
            "the API's answer {during}: {} {:?}",
            answer.status,
            answer.body
        );
    }

    /// Polls until a well-behaved client is served again.
    async fn wait_served(&self, after: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.served().await {
                Ok(()) => return,
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "not served again after {after}: {error}\n{}",
                    self.serve.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A TLS connection to the listener, handshake done, offering `tls`'s ALPN.
    async fn connect(&self, tls: &Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.address).await.expect("connect");
        tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake")
    }

    /// A raw HTTP/2 connection to the proxy listener, or the API's.
    async fn h2_raw(&self, api: bool) -> (tokio::io::WriteHalf<TlsStream<TcpStream>>, Frames) {
        let (address, tls) = if api { (self.api, &self.api_h2) } else { (self.address, &self.h2) };
        let tcp = TcpStream::connect(address).await.expect("connect");
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        H2Raw::open(stream).await
    }

    fn limit_count(&self, limit: &str) -> f64 {
        self.serve.metric(&format!(
            "kagi_proxy_limit_rejections_total{{limit=\"{limit}\",listener=\"public\"}}"
        ))
    }
}

/// Reads until the server closes the connection (EOF, reset or TLS close); false if it is
/// still open at the deadline.
async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    proxy::runtime()
}

#[test]
fn slowloris_is_cut_at_the_header_timeout_while_others_are_served() {
    let fixture = fixture();
    runtime().block_on(async {
        // Six clients that complete the handshake, then dribble a request head one byte every
        // 50 ms, forever; three that connect and never send a ClientHello. Together they stay
        // under max_connections (which they count against), leaving room for others.
        let mut dribblers = Vec::new();
        for n in 0..6 {
            let mut stream = fixture.connect(&fixture.h1).await;
            dribblers.push(tokio::spawn(async move {
                let head = format!("GET /objects/slow HTTP/1.1\r\nHost: localhost\r\nX-Slow-{n}: ");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return true;
                }
                let deadline = Instant::now() + START_TIMEOUT;
                let mut buffer = [0u8; 1024];
                while Instant::now() < deadline {
                    if stream.write_all(b"a").await.is_err() || stream.flush().await.is_err() {
                        return true;
                    }
                    // Paces the dribble: 50 ms without news from the server, then one more
                    // byte. Only the close ends it.
                    let read =
                        tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buffer))
                            .await;
                    if let Ok(Ok(0) | Err(_)) = read {
                        return true;
                    }
                }
                false
            }));
        }
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(fixture.address).await.expect("connect"));
        }
        // Served while the slow ones hold their connections.
        fixture.assert_served("during slowloris").await;
        for dribbler in dribblers {
            assert!(dribbler.await.expect("task"), "a dribbling client was never cut off");
        }
        for mut stream in silent {
            assert!(closed_by_server(&mut stream).await, "a silent connection was never closed");
        }
        fixture.assert_served("after slowloris").await;
    });
    assert!(fixture.limit_count("header_timeout") >= 9.0, "{}", fixture.serve.log());
}

#[test]
fn oversized_heads_and_bodies_are_refused_on_both_versions() {
    let fixture = fixture();
    runtime().block_on(async {
        let big = "y".repeat(20_000);
        // HTTP/1.1: 431 for the head, 413 for a declared body over the route's limit.
        for (tls, version) in [(&fixture.h1, "HTTP/1.1"), (&fixture.h2, "HTTP/2")] {
            let request = http::Request::get("https://localhost/objects/a")
                .header("x-big", big.as_str())
                .body(Full::new(Bytes::new()))
                .expect("request");
            let answer = proxy::send(tls, fixture.address, Some("localhost"), request)
                .await
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(answer.status, 431, "{version}: {:?}", answer.body);
            let request = http::Request::put("https://localhost/objects/big")
                .body(Full::new(Bytes::from(vec![b'x'; 4096])))
                .expect("request");
            let answer = proxy::send(tls, fixture.address, Some("localhost"), request)
                .await
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(answer.status, 413, "{version}: {:?}", answer.body);
            fixture.assert_served(&format!("after oversized requests over {version}")).await;
        }
        // A body with no declared length that grows past the limit: HTTP/1.1 chunked.
        let mut stream = fixture.connect(&fixture.h1).await;
        let chunk = "x".repeat(600);
        let request = format!(
            "PUT /objects/chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        fixture.assert_served("after a streamed oversized body").await;
    });
    assert!(fixture.limit_count("body_size") >= 3.0, "{}", fixture.serve.log());
}

#[test]
fn http2_stream_floods_are_refused_past_the_stream_limit() {
    let fixture = fixture();
    runtime().block_on(async {
        for api in [false, true] {
            let (mut writer, frames) = fixture.h2_raw(api).await;
            // 300 requests whose bodies never come: they stay open. The server allows 100 at
            // once (SETTINGS_MAX_CONCURRENT_STREAMS) and refuses the rest.
            let mut burst = Vec::new();
            for n in 0..300u32 {
                burst.extend(headers_frame(2 * n + 1, "PUT", "/objects/flood", false));
            }
            writer.write_all(&burst).await.expect("write");
            writer.flush().await.expect("flush");
            let seen = frames.wait_for(|seen| seen.refused >= 200 || seen.goaway.is_some()).await;
            assert!(seen.goaway.is_none(), "api {api}: the connection was closed: {seen:?}");
            assert_eq!(seen.max_concurrent_streams, Some(100), "api {api}: {seen:?}");
            assert!(seen.refused >= 200, "api {api}: streams past the limit not refused: {seen:?}");
            fixture.assert_served("while a connection holds 100 streams open").await;
            fixture.assert_api_served("while a connection holds 100 streams open").await;
            drop(writer);
        }
    });
}

#[test]
fn http2_rapid_reset_closes_the_connection_and_others_are_served() {
    // See: CVE-2023-44487.
    let fixture = fixture();
    runtime().block_on(async {
        for api in [false, true] {
            let (mut writer, frames) = fixture.h2_raw(api).await;
            let mut burst = Vec::new();
            for n in 0..5_000u32 {
                let stream = 2 * n + 1;
                burst.extend(headers_frame(stream, "GET", "/objects/missing", true));
                burst.extend(frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
            }
            // The server may close before reading it all: a failed write is part of the outcome.
            let _ = writer.write_all(&burst).await;
            let _ = writer.flush().await;
            let seen = frames.wait_for(|seen| seen.goaway.is_some() || seen.closed).await;
            assert_eq!(
                seen.goaway,
                Some(11),
                "api {api}: the abusive connection ends with GOAWAY ENHANCE_YOUR_CALM: {seen:?}"
            );
            fixture.assert_served("after a rapid reset").await;
            fixture.assert_api_served("after a rapid reset").await;
        }
    });
}

#[test]
fn malformed_tls_records_are_refused_and_others_are_served() {
    let fixture = fixture();
    let api = fixture.api;
    runtime().block_on(async {
        // Plaintext HTTP, random bytes, a record longer than TLS allows, a handshake record
        // of the wrong type: refused at once on both listeners.
        let mut oversized_record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
        oversized_record.extend(vec![0u8; 256]);
        let not_a_client_hello = [0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00];
        let garbage: [(&str, Vec<u8>); 4] = [
            ("plaintext HTTP", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
            ("random bytes", (0u8..=255).map(|b| b.wrapping_mul(151).wrapping_add(7)).collect()),
            ("an oversized record", oversized_record),
            ("a ServerHello from a client", not_a_client_hello.to_vec()),
        ];
        for address in [fixture.address, api] {
            for (what, bytes) in &garbage {
                let mut stream = TcpStream::connect(address).await.expect("connect");
                let _ = stream.write_all(bytes).await;
                assert!(closed_by_server(&mut stream).await, "{what} to {address}: still open");
            }
        }
        // A ClientHello cut short: the proxy listener waits for the rest until its handshake
        // timeout, then closes.
        let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
        hello.extend([0x42; 40]);
        let mut stream = TcpStream::connect(fixture.address).await.expect("connect");
        stream.write_all(&hello).await.expect("write");
        fixture.assert_served("while a truncated ClientHello waits").await;
        assert!(closed_by_server(&mut stream).await, "a truncated ClientHello: still open");
        fixture.assert_served("after malformed TLS").await;
        fixture.assert_api_served("after malformed TLS").await;
    });
    let failures = fixture
        .serve
        .metric_sum("kagi_tls_handshakes_total", &["listener=\"public\"", "outcome=\"failure\""]);
    assert!(failures >= 4.0, "failed handshakes not counted: {failures}");
}

#[test]
fn idle_connections_up_to_max_connections_then_refused_then_served_again() {
    let fixture = fixture();
    runtime().block_on(async {
        // MAX_CONNECTIONS HTTP/2 connections, each having completed a request (so the server
        // surely counts it), then idle.
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let stream = fixture.connect(&fixture.h2).await;
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(stream),
            )
            .await
            .expect("h2 handshake");
            let task = tokio::spawn(connection);
            let response = sender
                .send_request(proxy::get("localhost", "/objects/missing"))
                .await
                .expect("response");
            assert_eq!(response.status(), 404);
            held.push((sender, task));
        }
        // One more: accepted by the kernel, closed by kagi before the handshake.
        let refused = proxy::send(
            &fixture.h2,
            fixture.address,
            Some("localhost"),
            proxy::get("localhost", "/objects/missing"),
        )
        .await;
        assert!(refused.is_err(), "a connection past max_connections was served: {refused:?}");
        drop(held);
        fixture.wait_served("the idle connections closed").await;
    });
    assert!(fixture.limit_count("max_connections") >= 1.0, "{}", fixture.serve.log());
}

// === raw HTTP/2 ===

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("small frame").to_be_bytes();
    let mut bytes = vec![length[1], length[2], length[3], kind, flags];
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// A HEADERS frame for `method path` on `localhost` (HPACK without the dynamic table:
/// indexed `:scheme https`, literal `:method`, `:path` and `:authority` with indexed names).
fn headers_frame(stream: u32, method: &str, path: &str, end_stream: bool) -> Vec<u8> {
    let mut block = vec![0x87]; // :scheme https
    for (index, value) in [(2u8, method), (4, path), (1, "localhost")] {
        block.push(index); // literal without indexing, indexed name (4-bit prefix)
        block.push(u8::try_from(value.len()).expect("short value"));
        block.extend(value.as_bytes());
    }
    let flags = 0x4 | if end_stream { 0x1 } else { 0 }; // END_HEADERS, END_STREAM
    frame(0x1, flags, stream, &block)
}

/// What the server sent on a raw HTTP/2 connection so far.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// The error code of its GOAWAY, if it sent one.
    goaway: Option<u32>,
    /// RST_STREAM frames with REFUSED_STREAM.
    refused: usize,
    /// Response HEADERS frames.
    responses: usize,
    /// Its SETTINGS_MAX_CONCURRENT_STREAMS.
    max_concurrent_streams: Option<u32>,
    /// Whether it closed the connection.
    closed: bool,
}

/// The reading half of a raw HTTP/2 connection, parsed by a task as frames arrive.
struct Frames(tokio::sync::watch::Receiver<Seen>);

impl Frames {
    /// Waits until `done` holds for what was seen, or the connection closed; fails at the
    /// deadline.
    async fn wait_for(mut self, done: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            {
                let seen = self.0.borrow_and_update();
                if done(&seen) || seen.closed {
                    return seen.clone();
                }
            }
            match tokio::time::timeout_at(deadline, self.0.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return self.0.borrow().clone(),
                Err(_) => {
                    panic!("nothing conclusive from the server in time: {:?}", self.0.borrow())
                }
            }
        }
    }
}

/// A raw HTTP/2 client connection over TLS.
struct H2Raw;

impl H2Raw {
    /// Sends the preface and empty SETTINGS on `stream` (ALPN h2), and returns the writing half
    /// and the parsed reading half.
    async fn open(
        stream: TlsStream<TcpStream>,
    ) -> (tokio::io::WriteHalf<TlsStream<TcpStream>>, Frames) {
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // Empty SETTINGS. The server's are never acknowledged: it does not wait for that.
        preface.extend(frame(0x4, 0, 0, &[]));
        writer.write_all(&preface).await.expect("preface");
        let (tx, rx) = tokio::sync::watch::channel(Seen::default());
        tokio::spawn(async move {
            let mut header = [0u8; 9];
            loop {
                if reader.read_exact(&mut header).await.is_err() {
                    break;
                }
                let length = usize::from(header[0]) << 16
                    | usize::from(header[1]) << 8
                    | usize::from(header[2]);
                let mut payload = vec![0u8; length];
                if reader.read_exact(&mut payload).await.is_err() {
                    break;
                }
                tx.send_modify(|seen| match header[3] {
                    0x1 => seen.responses += 1,
                    0x3 if payload.get(..4) == Some(&7u32.to_be_bytes()[..]) => seen.refused += 1,
                    0x4 if header[4] & 0x1 == 0 => {
                        for setting in payload.chunks_exact(6) {
                            if setting[..2] == [0, 3] {
                                seen.max_concurrent_streams = Some(u32::from_be_bytes([
                                    setting[2], setting[3], setting[4], setting[5],
                                ]));
                            }
                        }
                    }
                    0x7 if payload.len() >= 8 => {
                        seen.goaway = Some(u32::from_be_bytes([
                            payload[4], payload[5], payload[6], payload[7],
                        ]));
                    }
                    _ => {}
                });
            }
            tx.send_modify(|seen| seen.closed = true);
        });
        (writer, Frames(rx))
    }
}
