//! The admin listener: plain HTTP/1.1, loopback by default. `/metrics` (the Prometheus text
//! format, key gauges refreshed from the keystore on each scrape), `/healthz` (the process
//! answers) and `/readyz` (ready to serve: every readiness check passes and the keystore's store
//! answers).
//!
//! It serves nothing that changes state and needs no authentication; keep it off public
//! addresses.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::keystore::Keystore;
use crate::metrics::Metrics;

/// Named readiness checks: `/readyz` answers 200 only when all pass. The server sets
/// `listeners` once it listens; later parts (TLS certificates, config reload) add their own.
#[derive(Debug, Default)]
pub struct Readiness {
    checks: Mutex<BTreeMap<&'static str, bool>>,
}

impl Readiness {
    /// Sets check `name` to `passing`.
    pub fn set(&self, name: &'static str, passing: bool) {
        self.lock().insert(name, passing);
    }

    /// Every check with whether it passes, by name.
    pub fn checks(&self) -> BTreeMap<&'static str, bool> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.checks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the admin listener serves from.
#[derive(Clone, Debug)]
pub(super) struct Admin {
    pub(super) metrics: Arc<Metrics>,
    pub(super) keystore: Arc<Keystore>,
    pub(super) readiness: Arc<Readiness>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the process ends.
pub(super) async fn admin_loop(listener: TcpListener, admin: Admin) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<Incoming>| {
                let admin = admin.clone();
                async move {
                    let (status, content_type, body) = match request.uri().path() {
                        "/metrics" => (
                            200,
                            "text/plain; version=0.0.4",
                            admin.metrics.scrape(&admin.keystore).await,
                        ),
                        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
                        "/readyz" => {
                            let (ready, body) = readyz(&admin).await;
                            (if ready { 200 } else { 503 }, "text/plain", body)
                        }
                        _ => (404, "text/plain", "not found\n".to_owned()),
                    };
                    let response = http::Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default();
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Whether the server is ready, and one line per check (`name ok` or `name failing`).
async fn readyz(admin: &Admin) -> (bool, String) {
    let mut checks = admin.readiness.checks();
    checks.insert("keystore", admin.keystore.is_open().await);
    let ready = checks.values().all(|passing| *passing);
    let mut body: String = checks
        .iter()
        .map(|(name, passing)| format!("{name} {}\n", if *passing { "ok" } else { "failing" }))
        .collect();
    body.push_str(if ready { "ready\n" } else { "not ready\n" });
    (ready, body)
}
