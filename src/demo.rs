//! The sample backend `kagi demo` puts behind the proxy, and that the proxy's tests run as a
//! real upstream process (`kagi sample-backend`): a small object store with a few diagnostic
//! endpoints, plain HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
//!
//! | request | answer |
//! |---|---|
//! | `PUT /objects/NAME` | stores the body as it arrived, and its content type (201) |
//! | `GET`/`HEAD /objects/NAME` | the stored bytes with their content type (404 if none) |
//! | `DELETE /objects/NAME` | forgets them (204) |
//! | `GET /objects` | the names stored, as JSON |
//! | `ANY /echo…` | the request as JSON: method, path, version, headers, body length |
//! | `GET /slow?ms=N` | answers after N milliseconds |
//! | `GET /bytes?n=N` | N bytes, streamed in 64 KiB chunks |
//! | `GET /ws` with `Upgrade: websocket` | 101, then echoes every byte back |
//!
//! Objects live in memory (at most [`MAX_STORED`] bytes in all): this is a demo and a test
//! fixture, not storage.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The most the store holds, in bytes.
pub const MAX_STORED: usize = 1 << 30;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The objects stored.
#[derive(Debug, Default)]
struct Store {
    /// Each object's content type and bytes.
    objects: Mutex<BTreeMap<String, (String, Bytes)>>,
}

/// Serves the sample backend on `listener` until the task is dropped.
pub async fn sample_backend(listener: TcpListener) {
    let store = Arc::new(Store::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let store = Arc::clone(&store);
                async move { Ok::<_, Infallible>(answer(&store, request).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
        });
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response =
        Response::new(UnsyncBoxBody::new(Full::new(body.into()).map_err(|never| match never {})));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn query_number(request: &Request<Incoming>, name: &str) -> Option<u64> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

async fn answer(store: &Store, mut request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/ws" {
        return websocket_echo(&mut request);
    }
    if path.starts_with("/echo") {
        let headers: BTreeMap<String, Vec<String>> = request
            .headers()
            .keys()
            .map(|name| {
                let values = request
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                (name.as_str().to_owned(), values)
            })
            .collect();
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let version = format!("{:?}", request.version());
        let length = match request.into_body().collect().await {
            Ok(body) => body.to_bytes().len(),
            Err(_) => return full(StatusCode::BAD_REQUEST, "text/plain", "body failed"),
        };
        let json = serde_json::json!({
            "method": method, "uri": uri, "version": version, "headers": headers,
            "body_bytes": length,
        });
        return full(StatusCode::OK, "application/json", json.to_string());
    }
    if path == "/slow" {
        let ms = query_number(&request, "ms").unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return full(StatusCode::OK, "text/plain", "slow\n");
    }
    if path == "/bytes" {
        let n = query_number(&request, "n").unwrap_or(0);
        let filler = Filler { left: n, chunk: Bytes::from(vec![b'x'; 64 * 1024]) };
        return Response::new(UnsyncBoxBody::new(filler));
    }
    if path == "/objects" && request.method() == Method::GET {
        let names: Vec<String> = lock(store).keys().cloned().collect();
        return full(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&names).unwrap_or_default(),
        );
    }
    let Some(name) = path.strip_prefix("/objects/").filter(|n| !n.is_empty()) else {
        return full(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    let name = name.to_owned();
    match *request.method() {
        Method::PUT | Method::POST => {
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            let body = match request.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return full(StatusCode::BAD_REQUEST, "text/plain", "body failed\n"),
            };
            let mut objects = lock(store);
            let stored: usize = objects.values().map(|(_, bytes)| bytes.len()).sum();
            if stored.saturating_add(body.len()) > MAX_STORED {
                return full(StatusCode::INSUFFICIENT_STORAGE, "text/plain", "store full\n");
            }
            objects.insert(name, (content_type, body));
            drop(objects);
            full(StatusCode::CREATED, "text/plain", "")
        }
        Method::GET | Method::HEAD => match lock(store).get(&name) {
            Some((content_type, bytes)) => full(StatusCode::OK, content_type, bytes.clone()),
            None => full(StatusCode::NOT_FOUND, "text/plain", "no such object\n"),
        },
        Method::DELETE => {
            lock(store).remove(&name);
            full(StatusCode::NO_CONTENT, "text/plain", "")
        }
        _ => full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n"),
    }
}

fn lock(store: &Store) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, Bytes)>> {
    store.objects.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `n` bytes of `x`, in 64 KiB frames.
#[derive(Debug)]
struct Filler {
    left: u64,
    chunk: Bytes,
}

impl hyper::body::Body for Filler {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = self.left.min(self.chunk.len() as u64);
        self.left -= take;
        let frame = self.chunk.slice(..usize::try_from(take).unwrap_or(0));
        std::task::Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// `Upgrade: websocket` → 101, then every byte the client sends comes back.
fn websocket_echo(request: &mut Request<Incoming>) -> Response<Body> {
    let is_upgrade = request
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !is_upgrade {
        return full(StatusCode::BAD_REQUEST, "text/plain", "expected Upgrade: websocket\n");
    }
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let (mut reader, mut writer) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    });
    let mut response = full(StatusCode::SWITCHING_PROTOCOLS, "text/plain", "");
    response
        .headers_mut()
        .insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    response
        .headers_mut()
        .insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    response.headers_mut().remove(http::header::CONTENT_TYPE);
    response
}
