//! Key state change notifications: each change the keystore audits (created, enabled, disabled,
//! deletion scheduled, cancelled or carried out, rotated, material imported, expired or deleted)
//! POSTed as JSON to the configured webhooks.
//!
//! The keystore's observer only queues (one bounded in-memory queue per webhook: when full, the
//! oldest notification is dropped and counted), so a slow or dead webhook never delays a key
//! operation, nor the other webhooks. One background task per webhook delivers in order,
//! retrying with exponential backoff; a notification that still fails is counted and given up. Delivery is at most once
//! per webhook and not durable: the audit trail is the record, notifications are a convenience.
//! A change's line is written just before its commit, so in the rare case of a commit failing
//! afterwards a notification may announce a change that the trail then marks failed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::json;

use crate::audit::{AuditEvent, Outcome, chain};
use crate::keystore::observe::KeyObserver;
use crate::metrics::keys::key_id_of_arn;

/// How many notifications wait in memory at most; past it the oldest is dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// Attempts per notification and webhook.
pub const ATTEMPTS: u32 = 5;
/// The first retry's delay; each next one doubles (0.2, 0.4, 0.8, 1.6 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long one attempt may take, connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The state change an audited operation stands for, if it is one.
pub fn state_change(operation: &str) -> Option<&'static str> {
    Some(match operation {
        "CreateKey" => "created",
        "EnableKey" => "enabled",
        "DisableKey" => "disabled",
        "ScheduleKeyDeletion" => "deletion_scheduled",
        "CancelKeyDeletion" => "deletion_cancelled",
        "DeleteKey" => "deleted",
        "RotateKey" | "RotateKeyOnDemand" => "rotated",
        "ImportKeyMaterial" => "material_imported",
        "KeyMaterialExpired" => "material_expired",
        "DeleteImportedKeyMaterial" => "material_deleted",
        _ => return None,
    })
}

/// Queues state changes for the webhooks; [`Notifier::start`] delivers them.
#[derive(Debug)]
pub struct Notifier {
    webhooks: Vec<Arc<Webhook>>,
}

/// One webhook with its queue.
#[derive(Debug)]
struct Webhook {
    url: http::Uri,
    /// Its index in the configuration: the metrics label (a URL is not a label).
    index: String,
    queue: Mutex<VecDeque<Bytes>>,
    wake: tokio::sync::Notify,
    metrics: Arc<NotifyMetrics>,
}

/// The notification families.
#[derive(Debug)]
struct NotifyMetrics {
    deliveries: IntCounterVec,
    dropped: IntCounterVec,
}

impl NotifyMetrics {
    fn register(registry: &Registry) -> Self {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "kagi_webhook_deliveries_total",
                "Key state change notifications per webhook (by its index in the configuration) \
                 and outcome (delivered, failed after every retry).",
            ),
            &["webhook", "outcome"],
        )
        .expect("valid metric");
        let dropped = IntCounterVec::new(
            Opts::new(
                "kagi_webhook_notifications_dropped_total",
                "Notifications dropped, oldest first, because a webhook's in-memory queue was \
                 full, by webhook.",
            ),
            &["webhook"],
        )
        .expect("valid metric");
        registry.register(Box::new(deliveries.clone())).expect("registered once");
        registry.register(Box::new(dropped.clone())).expect("registered once");
        Self { deliveries, dropped }
    }
}

impl Notifier {
    /// A notifier for `webhooks`, its families registered in `registry`.
    pub fn new(webhooks: Vec<http::Uri>, registry: &Registry) -> Self {
        let metrics = Arc::new(NotifyMetrics::register(registry));
        let webhooks = webhooks
            .into_iter()
            .enumerate()
            .map(|(index, url)| {
                Arc::new(Webhook {
                    url,
                    index: index.to_string(),
                    queue: Mutex::new(VecDeque::new()),
                    wake: tokio::sync::Notify::new(),
                    metrics: Arc::clone(&metrics),
                })
            })
            .collect();
        Self { webhooks }
    }

    /// Spawns one delivery task per webhook, on the current runtime.
    pub fn start(&self) {
        for webhook in &self.webhooks {
            tokio::spawn(Arc::clone(webhook).run());
        }
    }
}

impl Webhook {
    /// Delivers queued notifications until the process ends.
    async fn run(self: Arc<Self>) {
        loop {
            let next = self.lock().pop_front();
            let Some(body) = next else {
                self.wake.notified().await;
                continue;
            };
            let outcome = if deliver(&self.url, &body).await { "delivered" } else { "failed" };
            self.metrics.deliveries.with_label_values(&[self.index.as_str(), outcome]).inc();
        }
    }

    fn push(&self, body: Bytes) {
        {
            let mut queue = self.lock();
            if queue.len() >= QUEUE_CAPACITY {
                queue.pop_front();
                self.metrics.dropped.with_label_values(&[self.index.as_str()]).inc();
            }
            queue.push_back(body);
        }
        // A permit is stored if the task is busy, so no notification is missed.
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl KeyObserver for Notifier {
    fn recorded(&self, event: &AuditEvent) {
        if event.outcome != Outcome::Success || self.webhooks.is_empty() {
            return;
        }
        let Some(change) = state_change(&event.operation) else { return };
        let Some(key_arn) = event.key_arn.as_deref() else { return };
        let body = json!({
            "type": "kagi.key.state_change",
            "change": change,
            "operation": event.operation,
            "key_id": key_id_of_arn(key_arn),
            "key_arn": key_arn,
            "key_material_id": event.key_material_id,
            "time": event.time,
            "time_utc": chain::format_utc(event.time),
            "principal": event.principal,
            "request_id": event.request_id,
        });
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        for webhook in &self.webhooks {
            webhook.push(body.clone());
        }
    }
}

/// POSTs `body` to `url`, retrying with backoff; whether a 2xx answer came.
async fn deliver(url: &http::Uri, body: &Bytes) -> bool {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, post(url, body.clone())).await {
            Ok(Ok(status)) if status.is_success() => return true,
            Ok(Ok(status)) => {
                tracing::debug!(target: "kagi::notify", %url, %status, attempt, "webhook refused");
            }
            Ok(Err(error)) => {
                tracing::debug!(target: "kagi::notify", %url, %error, attempt, "webhook failed");
            }
            Err(_) => tracing::debug!(target: "kagi::notify", %url, attempt, "webhook timed out"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::warn!(target: "kagi::notify", %url, "webhook notification given up after retries");
    false
}

/// One POST over a new HTTP/1.1 connection.
async fn post(url: &http::Uri, body: Bytes) -> Result<http::StatusCode, String> {
    let host = url.host().ok_or("no host")?;
    let port = url.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let authority = url.authority().map_or(host, |a| a.as_str());
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    Ok(response.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(operation: &str, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            time: 1_800_000_000,
            request_id: "r".into(),
            principal: "p".into(),
            source: "s".into(),
            operation: operation.into(),
            key_arn: Some("arn:aws:kms:us-east-1:111122223333:key/k1".into()),
            key_material_id: None,
            encryption_context: Default::default(),
            outcome,
            error_code: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn only_successful_state_changes_are_queued_and_a_full_queue_drops_the_oldest() {
        let registry = Registry::new();
        let url: http::Uri = "http://127.0.0.1:9/".parse().unwrap();
        let notifier = Notifier::new(vec![url], &registry);
        notifier.recorded(&event("Encrypt", Outcome::Success));
        notifier.recorded(&event("DisableKey", Outcome::Failure));
        assert_eq!(notifier.webhooks[0].lock().len(), 0);
        notifier.recorded(&event("CreateKey", Outcome::Success));
        for _ in 0..QUEUE_CAPACITY + 4 {
            notifier.recorded(&event("DisableKey", Outcome::Success));
        }
        let queue = notifier.webhooks[0].lock().clone();
        assert_eq!(queue.len(), QUEUE_CAPACITY);
        // The oldest (CreateKey) went first.
        let first: serde_json::Value = serde_json::from_slice(&queue[0]).unwrap();
        assert_eq!(first["change"], "disabled");
        assert_eq!(first["key_id"], "k1");
        assert_eq!(notifier.webhooks[0].metrics.dropped.with_label_values(&["0"]).get(), 5);
    }
}
