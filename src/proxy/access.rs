//! The access log: one line per proxied request, written when its response ends (so the
//! byte counts and durations are the real ones), as JSON or logfmt text, to a file or
//! standard output.
//!
//! Lines are appended to a shared buffer that a writer thread empties every
//! [`FLUSH_INTERVAL`] (sooner once it holds [`FLUSH_BYTES`]): a request never waits on the
//! disk, and no request wakes a thread. When the buffer is full ([`MAX_BUFFER`]) a line is
//! dropped and counted (`kagi_proxy_access_log_dropped_total`), never waited for. The path is
//! logged without its query string, which often carries tokens.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::config::{AccessLogConfig, AccessLogFormat};

/// How often the writer empties the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// The writer is woken early once the buffer holds this much.
const FLUSH_BYTES: usize = 256 * 1024;
/// Lines past this many buffered bytes are dropped.
const MAX_BUFFER: usize = 8 * 1024 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// When it started; written RFC 3339 UTC.
    pub time: Timestamp,
    /// The listener it came in on.
    pub listener: String,
    /// The route it matched.
    pub route: Option<String>,
    /// The upstream pool.
    pub upstream: Option<String>,
    /// The target that answered.
    pub target: Option<String>,
    /// The client's address.
    pub client: SocketAddr,
    /// `GET`, `PUT`…
    #[serde(serialize_with = "method_str")]
    pub method: http::Method,
    /// The path, without the query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// The status sent.
    pub status: u16,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// From the request head to the end of the response, in milliseconds.
    pub duration_ms: f64,
    /// From sending upstream to its response head, in milliseconds.
    pub upstream_ms: Option<f64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Where access log lines go.
#[derive(Debug)]
pub struct AccessLog {
    /// `None`: the log is off.
    shared: Option<Arc<Shared>>,
    format: AccessLogFormat,
    dropped: prometheus::IntCounter,
}

/// The buffer between requests and the writer.
#[derive(Debug, Default)]
struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// Set when the log is dropped (a reload replaced it): the writer flushes and ends.
    closed: bool,
}

impl AccessLog {
    /// Starts the writer for `config`.
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn open(config: &AccessLogConfig, dropped: prometheus::IntCounter) -> Result<Self, String> {
        let mut out: Box<dyn std::io::Write + Send> = match &config.path {
            Some(path) if path.as_os_str() == "off" => {
                return Ok(Self { shared: None, format: config.format, dropped });
            }
            Some(path) => Box::new(open_append(path)?),
            None => Box::new(std::io::stdout()),
        };
        let shared = Arc::new(Shared::default());
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("kagi-access-log".into())
            .spawn(move || {
                let mut failed = false;
                let mut batch = Vec::new();
                loop {
                    let closed = {
                        let buffer = writer.buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let (mut buffer, _) = writer
                            .wake
                            .wait_timeout_while(buffer, FLUSH_INTERVAL, |b| !b.closed && b.bytes.len() < FLUSH_BYTES)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        std::mem::swap(&mut batch, &mut buffer.bytes);
                        buffer.closed
                    };
                    if !batch.is_empty() {
                        match out.write_all(&batch).and_then(|()| out.flush()) {
                            Err(error) if !failed => {
                                failed = true;
                                tracing::error!(target: "kagi::proxy", %error, "cannot write the access log");
                            }
                            Err(_) => {}
                            Ok(()) => failed = false,
                        }
                        batch.clear();
                    }
                    if closed {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(Self { shared: Some(shared), format: config.format, dropped })
    }

    /// Appends `entry`'s line.
    pub fn log(&self, entry: &Entry) {
        let Some(shared) = &self.shared else { return };
        let line = match self.format {
            AccessLogFormat::Json => {
                let mut line = serde_json::to_string(entry).unwrap_or_default();
                line.push('\n');
                line
            }
            AccessLogFormat::Text => text_line(entry),
        };
        let mut buffer = shared.buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buffer.bytes.len() + line.len() > MAX_BUFFER {
            drop(buffer);
            self.dropped.inc();
            return;
        }
        buffer.bytes.extend_from_slice(line.as_bytes());
        if buffer.bytes.len() >= FLUSH_BYTES {
            shared.wake.notify_one();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).closed = true;
            shared.wake.notify_one();
        }
    }
}

fn open_append(path: &PathBuf) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("access log {}: {e}", path.display()))
}

/// logfmt: `key=value`, values with spaces or quotes quoted.
fn text_line(entry: &Entry) -> String {
    fn field(out: &mut String, key: &str, value: &str) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(key);
        out.push('=');
        if value.is_empty()
            || value.contains([' ', '"', '=', '\\'])
            || value.contains(char::is_control)
        {
            out.push_str(&serde_json::to_string(value).unwrap_or_default());
        } else {
            out.push_str(value);
        }
    }
    let mut out = String::with_capacity(256);
    field(&mut out, "time", &entry.time.to_string());
    field(&mut out, "listener", &entry.listener);
    field(&mut out, "route", entry.route.as_deref().unwrap_or("-"));
    field(&mut out, "upstream", entry.upstream.as_deref().unwrap_or("-"));
    field(&mut out, "target", entry.target.as_deref().unwrap_or("-"));
    field(&mut out, "client", &entry.client.to_string());
    field(&mut out, "method", entry.method.as_str());
    field(&mut out, "path", &entry.path);
    field(&mut out, "protocol", entry.protocol);
    field(&mut out, "status", &entry.status.to_string());
    field(&mut out, "bytes_in", &entry.bytes_in.to_string());
    field(&mut out, "bytes_out", &entry.bytes_out.to_string());
    field(&mut out, "duration_ms", &format!("{:.3}", entry.duration_ms));
    if let Some(ms) = entry.upstream_ms {
        field(&mut out, "upstream_ms", &format!("{ms:.3}"));
    }
    if let Some(error) = &entry.error {
        field(&mut out, "error", error);
    }
    out.push('\n');
    out
}

fn method_str<S: serde::Serializer>(
    method: &http::Method,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(method.as_str())
}

/// When a request started: taken per request, formatted (RFC 3339 UTC, milliseconds) only
/// when a line is written.
#[derive(Clone, Copy, Debug)]
pub struct Timestamp(time::OffsetDateTime);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        Self(time::OffsetDateTime::now_utc())
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let text = self.0.format(&format).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: Timestamp(time::macros::datetime!(2026-11-29 12:00 UTC)),
            listener: "public".into(),
            route: Some("objects".into()),
            upstream: Some("store".into()),
            target: Some("127.0.0.1:9000".into()),
            client: "127.0.0.1:5000".parse().unwrap(),
            method: http::Method::PUT,
            path: "/objects/a b".into(),
            protocol: "HTTP/2",
            status: 201,
            bytes_in: 10,
            bytes_out: 0,
            duration_ms: 1.5,
            upstream_ms: Some(1.25),
            error: None,
        }
    }

    #[test]
    fn text_lines_quote_what_needs_it() {
        let line = text_line(&entry());
        assert_eq!(
            line,
            "time=2026-11-29T12:00:00.000Z listener=public route=objects upstream=store \
             target=127.0.0.1:9000 client=127.0.0.1:5000 method=PUT path=\"/objects/a b\" \
             protocol=HTTP/2 status=201 bytes_in=10 bytes_out=0 duration_ms=1.500 \
             upstream_ms=1.250\n"
        );
    }

    #[test]
    fn json_lines_carry_every_field() {
        let value = serde_json::to_value(entry()).unwrap();
        assert_eq!(value["route"], "objects");
        assert_eq!(value["status"], 201);
        assert_eq!(value["client"], "127.0.0.1:5000");
        assert!(value["error"].is_null());
        assert_eq!(value["time"], "2026-11-29T12:00:00.000Z");
        assert!(Timestamp::now().to_string().ends_with('Z'));
    }
}
