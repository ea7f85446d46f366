//! Envelope routes: request bodies encrypted into AWS Encryption SDK messages before they reach
//! the upstream, response bodies decrypted before they reach the client.
//!
//! # Who may read what
//!
//! The route acts as its own principal (`route-NAME`, or `principal` in its configuration)
//! under the key policies: its data keys are generated and decrypted as that principal, and
//! audited as such. Before any plaintext is released, the message's data key must be under the
//! route's key (the ARN, resolved when the configuration loads) and the message's encryption
//! context must equal the one built from *this* request (a pair taken from `X-Tenant` means
//! tenant A never reads tenant B's object, and a backend that swaps objects is caught).
//!
//! # Bodies
//!
//! Whole-body mode streams frame by frame both ways. Requests: `Content-Length` is rewritten
//! when the plaintext length is declared and the suite is 0x0478 (0x0578's signature length
//! varies); chunked otherwise. Responses (`GET` and `HEAD`, 2xx): one of at most
//! [`WHOLE_RESPONSE`] bytes is decrypted whole before the client sees a byte, so a tampered or
//! truncated one is a clean 502 with no plaintext released; a larger one streams, each frame
//! released only once authenticated, and a failure mid-way aborts the response (the client
//! sees a broken transfer, never a complete one). JSON field mode reads whole documents (at
//! most `max_json_bytes`; 413 above) and rewrites the values at its pointers, in requests and
//! in any 2xx JSON response.
//!
//! # HEAD, Range, ETag
//!
//! `HEAD` asks the upstream for the object (`GET`), reads its header and answers the plaintext
//! length when it can be computed (0x0478 and a known length). A `Range` request is refused
//! (416) unless the route says `range = "decrypt"`, in which case the upstream sends the whole
//! object and the range is cut from the decrypted stream; never from ciphertext. The
//! upstream's `ETag` (over ciphertext) is dropped from decrypted responses, and conditional
//! request fields (`If-Match`, `If-None-Match`, `If-Range`) are not forwarded on such routes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame};

use super::{BoxError, ProxyBody};
use crate::config::{ContextSource, EnvelopeConfig, RouteConfig};
use crate::envelope::{
    self, CachingKeys, DecryptOptions, Decryptor, EncryptOptions, EncryptRequest,
    EncryptionContext, KeyService, Suite,
};
use crate::keystore::ErrorKind;
use crate::metrics::envelope::FailureReason;

/// Responses up to this many bytes are decrypted whole before any is sent.
pub(super) const WHOLE_RESPONSE: u64 = 1024 * 1024;

/// A request the envelope refuses, or a response it cannot release: status, kind, message.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) message: String,
}

impl Refusal {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into() }
    }

    /// A refusal for an envelope error on the request side (encrypting).
    fn encrypting(error: &envelope::Error) -> Self {
        match error {
            envelope::Error::KeyService(service) => {
                key_refusal(service.kind(), &service.to_string())
            }
            envelope::Error::InvalidPointer(_) | envelope::Error::NotAnEncryptedField(_) => {
                Self::new(StatusCode::BAD_REQUEST, "bad_request", error.to_string())
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "envelope_failed", error.to_string()),
        }
    }

    /// A refusal for an envelope error on the response side (decrypting): every fault of the
    /// message is one answer, so the answer is no oracle.
    fn decrypting(error: &envelope::Error) -> Self {
        match error {
            envelope::Error::KeyService(service) => {
                key_refusal(service.kind(), &service.to_string())
            }
            error if error.is_message_fault() => Self::new(
                StatusCode::BAD_GATEWAY,
                "bad_encrypted_response",
                "the upstream's response is not a valid message for this route and request",
            ),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "envelope_failed", error.to_string()),
        }
    }
}

fn key_refusal(kind: ErrorKind, message: &str) -> Refusal {
    match kind {
        ErrorKind::AccessDenied => {
            Refusal::new(StatusCode::FORBIDDEN, "access_denied", "the route may not use its key")
        }
        ErrorKind::Disabled | ErrorKind::InvalidState | ErrorKind::NotFound => Refusal::new(
            StatusCode::FORBIDDEN,
            "key_unavailable",
            "the route's key is disabled, pending deletion or gone",
        ),
        ErrorKind::Throttling | ErrorKind::DependencyTimeout => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "key_service_busy",
            "the key service is busy; retry",
        ),
        _ => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "key_service_failed", message),
    }
}

/// The encryption context of a request on `route`.
///
/// # Errors
/// 400 when a header the context takes a value from is missing or not UTF-8.
pub(super) fn request_context(
    route: &RouteConfig,
    envelope: &EnvelopeConfig,
    headers: &HeaderMap,
    path: &str,
) -> Result<EncryptionContext, Refusal> {
    let mut context = EncryptionContext::new();
    for (key, source) in &envelope.context {
        let value = match source {
            ContextSource::Value(value) => value.clone(),
            ContextSource::Route => route.name.clone(),
            ContextSource::Path => path.to_owned(),
            ContextSource::Header(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "missing_context",
                        format!("this route needs the {name} header"),
                    )
                })?
                .to_owned(),
        };
        context.insert(key.clone(), value);
    }
    Ok(context)
}

/// Whether a request with `method` and `headers` has its body encrypted on this route.
pub(super) fn encrypts(envelope: &EnvelopeConfig, method: &Method, headers: &HeaderMap) -> bool {
    if !envelope.methods.contains(method) {
        return false;
    }
    if envelope.content_types.is_empty() {
        return true;
    }
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    envelope.content_types.iter().any(|wanted| match wanted.strip_suffix("/*") {
        Some(kind) => essence.split('/').next() == Some(kind),
        None => *wanted == essence,
    })
}

fn options(envelope: &EnvelopeConfig) -> EncryptOptions {
    EncryptOptions { suite: envelope.suite, frame_length: envelope.frame_length }
}

/// The ciphertext length of a 0x0478 message of `plaintext` bytes in frames of
/// `frame_length`, whose header (with its tag) is `header_len` bytes.
pub(super) fn ciphertext_len(header_len: u64, plaintext: u64, frame_length: u64) -> u64 {
    // Regular frames: sequence number, IV, content, tag. The final frame adds the end marker
    // and its content length, and holds 1..=frame_length bytes (0 only for an empty body).
    let regular = if plaintext == 0 { 0 } else { (plaintext - 1) / frame_length };
    let last = plaintext - regular * frame_length;
    header_len + regular * (frame_length + 4 + 12 + 16) + last + 4 + 4 + 12 + 4 + 16
}

/// The plaintext length of a 0x0478 message of `ciphertext` bytes whose header is
/// `header_len` bytes, if the length is consistent.
pub(super) fn plaintext_len(header_len: u64, ciphertext: u64, frame_length: u64) -> Option<u64> {
    let body = ciphertext.checked_sub(header_len)?.checked_sub(40)?;
    let regular = body / (frame_length + 32);
    let last = body % (frame_length + 32);
    (last <= frame_length).then(|| regular * frame_length + last)
}

/// Called once with the plaintext bytes a body carried, when it ends.
pub(super) type OnEnd = Box<dyn FnOnce(u64) + Send>;

/// Encrypts a request body (whole-body mode): gets the data key now (from the cache, or the
/// key service as the route's principal), then streams. Returns the body and, when it can be
/// known, its new length. `fixed` is the route's data-key request when its context is the
/// same for every request (then `context` is its context).
pub(super) async fn encrypt_body(
    keys: &CachingKeys,
    envelope: &EnvelopeConfig,
    fixed: Option<&EncryptRequest>,
    context: &EncryptionContext,
    body: ProxyBody,
    declared: Option<u64>,
    on_end: OnEnd,
) -> Result<(ProxyBody, Option<u64>), (Refusal, Option<FailureReason>)> {
    let options = options(envelope);
    let started = match fixed {
        Some(request) => keys.start_encryption(request, options).await,
        None => {
            keys.start_encryption_with(&envelope.principal, &envelope.key, context, options).await
        }
    };
    let (encryptor, usage) =
        started.map_err(|e| (Refusal::encrypting(&e), Some(FailureReason::of(&e))))?;
    let length = match (declared, envelope.suite) {
        (Some(plaintext), Suite::Aes256GcmHkdfSha512CommitKey) => Some(ciphertext_len(
            encryptor.header_len() as u64,
            plaintext,
            u64::from(envelope.frame_length),
        )),
        _ => None,
    };
    let body = Transformed::new(body, Encrypting { encryptor, usage }, true, on_end);
    Ok((UnsyncBoxBody::new(body), length))
}

/// Reads a whole body of at most `limit` bytes.
async fn collect(body: ProxyBody, limit: u64) -> Result<Bytes, Option<BoxError>> {
    let mut out = Vec::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Some)?;
        if let Some(data) = frame.data_ref() {
            if out.len() as u64 + data.len() as u64 > limit {
                return Err(None);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(out))
}

/// Encrypts the configured fields of a JSON request body.
pub(super) async fn encrypt_json(
    keys: &dyn KeyService,
    envelope: &EnvelopeConfig,
    context: &EncryptionContext,
    body: ProxyBody,
) -> Result<Bytes, (Refusal, Option<FailureReason>)> {
    let bytes = collect(body, envelope.max_json_bytes).await.map_err(|error| match error {
        None => (
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "a JSON document on this route is at most {} bytes",
                    envelope.max_json_bytes
                ),
            ),
            Some(FailureReason::TooLarge),
        ),
        Some(error) => {
            (Refusal::new(StatusCode::BAD_REQUEST, "request_body", error.to_string()), None)
        }
    })?;
    let mut document: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
        (Refusal::new(StatusCode::BAD_REQUEST, "not_json", "this route takes JSON documents"), None)
    })?;
    let pointers: Vec<&str> = envelope.json_fields.iter().map(String::as_str).collect();
    envelope::encrypt_fields(
        keys,
        &envelope.principal,
        &envelope.key,
        context,
        options(envelope),
        &mut document,
        &pointers,
    )
    .await
    .map_err(|e| (Refusal::encrypting(&e), Some(FailureReason::of(&e))))?;
    Ok(Bytes::from(serde_json::to_vec(&document).unwrap_or_default()))
}

/// Decrypts the configured fields of a JSON response body.
pub(super) async fn decrypt_json(
    keys: &dyn KeyService,
    envelope: &EnvelopeConfig,
    expected: &DecryptOptions,
    body: ProxyBody,
) -> Result<Bytes, (Refusal, Option<FailureReason>)> {
    let bytes = collect(body, envelope.max_json_bytes).await.map_err(|_| {
        (
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                "bad_encrypted_response",
                "the upstream's JSON response is too large or broke off",
            ),
            Some(FailureReason::Upstream),
        )
    })?;
    let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return if envelope.allow_plaintext_responses {
            Ok(bytes)
        } else {
            Err((
                Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_encrypted_response",
                    "the upstream's response is not JSON",
                ),
                Some(FailureReason::NotEncrypted),
            ))
        };
    };
    let pointers: Vec<&str> = envelope.json_fields.iter().map(String::as_str).collect();
    match envelope::decrypt_fields(keys, &envelope.principal, expected, &mut document, &pointers)
        .await
    {
        Ok(_) => Ok(Bytes::from(serde_json::to_vec(&document).unwrap_or_default())),
        Err(envelope::Error::NotAnEncryptedField(_)) if envelope.allow_plaintext_responses => {
            Ok(bytes)
        }
        Err(error) => Err((Refusal::decrypting(&error), Some(FailureReason::of(&error)))),
    }
}

/// What `open_response` found.
pub(super) enum Opened {
    /// Not an encrypted message, passed through as it came (the route allows it).
    Plaintext(ProxyBody),
    /// Decrypted whole.
    Whole(Bytes),
    /// Decrypting as it streams; the plaintext length, when it can be computed.
    Streaming(ProxyBody, Option<u64>),
}

/// Starts decrypting a response body: reads the message header, gets its data key (as the
/// route's principal), and then either decrypts the rest whole (small or unknown-length bodies
/// up to [`WHOLE_RESPONSE`]) or streams it.
pub(super) async fn open_response(
    keys: &dyn KeyService,
    envelope: &EnvelopeConfig,
    expected: DecryptOptions,
    mut body: ProxyBody,
    length: Option<u64>,
    on_end: OnEnd,
) -> Result<Opened, (Refusal, Option<FailureReason>)> {
    let mut decryptor = Decryptor::new(expected);
    let mut plaintext = Vec::new();
    let mut started = false;
    let fault =
        |error: envelope::Error| (Refusal::decrypting(&error), Some(FailureReason::of(&error)));
    let broke_off = |_| {
        let refusal = Refusal::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the upstream's response broke off",
        );
        (refusal, Some(FailureReason::Upstream))
    };
    // Up to the data key request: the header.
    while decryptor.data_key_request().is_none() {
        let Some(frame) = body.frame().await else {
            if !started && envelope.allow_plaintext_responses {
                return Ok(Opened::Whole(Bytes::new()));
            }
            return Err(fault(envelope::Error::Truncated));
        };
        let frame = frame.map_err(broke_off)?;
        let Some(data) = frame.data_ref() else { continue };
        if data.is_empty() {
            continue;
        }
        if !started && data[0] != 0x02 {
            // Not a version 2 message at all.
            if envelope.allow_plaintext_responses {
                let rest = ChainBody { first: Some(data.clone()), rest: body };
                return Ok(Opened::Plaintext(UnsyncBoxBody::new(rest)));
            }
            return Err(fault(envelope::Error::Unsupported("not an encrypted message".into())));
        }
        started = true;
        decryptor.update(data, &mut plaintext).map_err(fault)?;
    }
    let header_len = decryptor.data_key_request().map(|request| request.header_len as u64);
    decryptor.fetch_data_key(keys, &envelope.principal, &mut plaintext).await.map_err(fault)?;
    let header = decryptor.header().cloned();
    let computed = match (header.as_ref(), header_len, length) {
        (Some(header), Some(header_len), Some(length))
            if header.suite == Suite::Aes256GcmHkdfSha512CommitKey =>
        {
            plaintext_len(header_len, length, u64::from(header.frame_length))
        }
        _ => None,
    };
    if length.is_none_or(|length| length <= WHOLE_RESPONSE) {
        // Small (or of unknown length, bounded here): all of it, verified, before any is sent.
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(broke_off)?;
            if let Some(data) = frame.data_ref() {
                decryptor.update(data, &mut plaintext).map_err(fault)?;
                if plaintext.len() as u64 > WHOLE_RESPONSE * 2 && length.is_none() {
                    // An unannounced large body: stream the rest instead.
                    let first = Bytes::from(std::mem::take(&mut plaintext));
                    let mut stream = Transformed::new(body, decryptor, false, on_end);
                    stream.first = Some(first);
                    return Ok(Opened::Streaming(UnsyncBoxBody::new(stream), None));
                }
            }
        }
        decryptor.finish().map_err(fault)?;
        on_end(plaintext.len() as u64);
        return Ok(Opened::Whole(Bytes::from(plaintext)));
    }
    let first = (!plaintext.is_empty()).then(|| Bytes::from(plaintext));
    let mut stream = Transformed::new(body, decryptor, false, on_end);
    stream.first = first;
    Ok(Opened::Streaming(UnsyncBoxBody::new(stream), computed))
}

/// One direction of the envelope as a body transform: bytes in, bytes out, then an end.
trait Transform: Send + Unpin + 'static {
    /// Takes `input`, appending what it completes to `out`.
    fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), envelope::Error>;
    /// Ends the input, appending what remains to `out`.
    fn finish(self, out: &mut Vec<u8>) -> Result<(), envelope::Error>;
    /// Takes the last `input` and ends; the same as [`Transform::update`] then
    /// [`Transform::finish`], which is what it does unless a transform knows better.
    fn finish_with(mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), envelope::Error>
    where
        Self: Sized,
    {
        self.update(input, out)?;
        self.finish(out)
    }
    /// Whether the message is complete without more input (a decrypted message's final frame
    /// and footer were read).
    fn is_done(&self) -> bool {
        false
    }
}

/// Encrypting: the plaintext bytes also count against the data key (cache limits).
struct Encrypting {
    encryptor: envelope::Encryptor,
    usage: envelope::DataKeyUsage,
}

impl Transform for Encrypting {
    fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), envelope::Error> {
        self.usage.record_bytes(input.len() as u64);
        self.encryptor.update(input, out)
    }

    fn finish(self, out: &mut Vec<u8>) -> Result<(), envelope::Error> {
        self.encryptor.finish(out)
    }

    fn finish_with(self, input: &[u8], out: &mut Vec<u8>) -> Result<(), envelope::Error> {
        self.usage.record_bytes(input.len() as u64);
        self.encryptor.finish_with(input, out)
    }
}

impl Transform for Decryptor {
    fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), envelope::Error> {
        Self::update(self, input, out)
    }

    fn finish(self, _: &mut Vec<u8>) -> Result<(), envelope::Error> {
        Self::finish(self)
    }

    fn is_done(&self) -> bool {
        Self::is_done(self)
    }
}

/// A body passed through a [`Transform`] frame by frame. A failure ends it with an error
/// (which aborts a response, and fails a request before the upstream sees its end); the end
/// reports the plaintext bytes (`plaintext_in`: counted on the input side, else the output).
struct Transformed<T: Transform> {
    inner: ProxyBody,
    transform: Option<T>,
    /// Output produced before streaming started (the start of a decrypted response).
    first: Option<Bytes>,
    plaintext_in: bool,
    bytes: u64,
    on_end: Option<OnEnd>,
}

impl<T: Transform> Transformed<T> {
    fn new(inner: ProxyBody, transform: T, plaintext_in: bool, on_end: OnEnd) -> Self {
        Self {
            inner,
            transform: Some(transform),
            first: None,
            plaintext_in,
            bytes: 0,
            on_end: Some(on_end),
        }
    }

    /// Ends the input with its `last` bytes: what `out` holds, then what the transform
    /// finishes with.
    fn end(
        &mut self,
        last: &[u8],
        mut out: Vec<u8>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(transform) = self.transform.take() {
            if let Err(error) = transform.finish_with(last, &mut out) {
                return self.failed(error);
            }
            if !self.plaintext_in {
                self.bytes += out.len() as u64;
            }
            if let Some(on_end) = self.on_end.take() {
                on_end(self.bytes);
            }
        }
        if out.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }

    fn failed(&mut self, error: envelope::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.transform = None;
        if !self.plaintext_in {
            tracing::warn!(target: "kagi::proxy", %error, "an encrypted response failed mid-way; the response is aborted");
        }
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl<T: Transform> Drop for Transformed<T> {
    fn drop(&mut self) {
        // hyper stops polling a response once it has sent its Content-Length, so a complete
        // message may never see its end polled: count it when its last frame was read.
        if self.transform.as_ref().is_some_and(T::is_done)
            && let Some(on_end) = self.on_end.take()
        {
            on_end(self.bytes);
        }
    }
}

impl<T: Transform> Body for Transformed<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            self.bytes += first.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            if self.transform.is_none() {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => {
                    self.transform = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not forwarded: they would describe the other side's bytes.
                    let Ok(data) = frame.into_data() else { continue };
                    if self.plaintext_in {
                        self.bytes += data.len() as u64;
                    }
                    // Decrypting gives back at most what it takes: room for it at once. The
                    // encryptor sizes its own output (a sealed frame becomes `out` itself).
                    if !self.plaintext_in {
                        out.reserve(data.len());
                    }
                    if self.inner.is_end_stream() {
                        // The last chunk (its length was declared): end now, so the rest of
                        // the message goes out with it, in one buffer.
                        return self.end(&data, out);
                    }
                    let Some(transform) = self.transform.as_mut() else { continue };
                    if let Err(error) = transform.update(&data, &mut out) {
                        return self.failed(error);
                    }
                }
                Poll::Ready(None) => return self.end(&[], out),
            }
            if !out.is_empty() {
                if !self.plaintext_in {
                    self.bytes += out.len() as u64;
                }
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.transform.is_none()
    }
}

/// A first chunk, then the rest of a body.
struct ChainBody {
    first: Option<Bytes>,
    rest: ProxyBody,
}

impl Body for ChainBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// A body that skips `skip` bytes and then yields at most `take`.
pub(super) struct RangeBody {
    pub(super) inner: ProxyBody,
    pub(super) skip: u64,
    pub(super) take: Option<u64>,
}

impl Body for RangeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.take == Some(0) {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                other => return other,
            };
            let Ok(mut data) = frame.into_data() else { continue };
            if self.skip > 0 {
                let skip = self.skip.min(data.len() as u64);
                self.skip -= skip;
                data = data.slice(usize::try_from(skip).unwrap_or(data.len())..);
            }
            if let Some(take) = self.take {
                let keep = take.min(data.len() as u64);
                self.take = Some(take - keep);
                data = data.slice(..usize::try_from(keep).unwrap_or(data.len()));
            }
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
    }
}

/// A single byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`), resolved against `length` when
/// known: (first byte, count or to the end).
pub(super) fn parse_range(value: &HeaderValue, length: Option<u64>) -> Option<(u64, Option<u64>)> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    match (start.trim(), end.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok()?;
            let length = length?;
            let start = length.saturating_sub(suffix);
            Some((start, Some(length - start)))
        }
        (start, "") => Some((start.parse().ok()?, None)),
        (start, end) => {
            let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
            (end >= start).then(|| (start, Some(end - start + 1)))
        }
    }
}

/// The key service routes use: the data-key cache in front of the keystore.
pub type Keys = Arc<CachingKeys>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_what_the_encryptor_writes() {
        use crate::crypto::AesKey;
        use crate::envelope::PreparedEncryption;
        for (plaintext, frame) in
            [(0u64, 16u32), (1, 16), (15, 16), (16, 16), (17, 16), (64, 16), (1000, 64)]
        {
            let prepared = PreparedEncryption::new(
                EncryptionContext::from([("a".to_owned(), "b".to_owned())]),
                EncryptOptions { suite: Suite::Aes256GcmHkdfSha512CommitKey, frame_length: frame },
            )
            .unwrap();
            let data_key = envelope::DataKey {
                plaintext: AesKey::from_slice(&[7u8; 32]).unwrap(),
                ciphertext_blob: vec![1, 2, 3],
                key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
            };
            let mut encryptor = prepared.start(data_key).unwrap();
            let header = encryptor.header_len() as u64;
            let mut out = Vec::new();
            encryptor.update(&vec![0u8; plaintext as usize], &mut out).unwrap();
            encryptor.finish(&mut out).unwrap();
            let expected = ciphertext_len(header, plaintext, u64::from(frame));
            assert_eq!(out.len() as u64, expected, "{plaintext} bytes in frames of {frame}");
            assert_eq!(plaintext_len(header, expected, u64::from(frame)), Some(plaintext));
        }
    }

    #[test]
    fn ranges_resolve_against_the_plaintext() {
        let range = |text: &str, length| parse_range(&HeaderValue::from_str(text).unwrap(), length);
        assert_eq!(range("bytes=0-9", None), Some((0, Some(10))));
        assert_eq!(range("bytes=5-", None), Some((5, None)));
        assert_eq!(range("bytes=-4", Some(10)), Some((6, Some(4))));
        assert_eq!(range("bytes=-4", None), None);
        assert_eq!(range("bytes=0-1,4-5", Some(10)), None);
        assert_eq!(range("bytes=9-3", Some(10)), None);
    }
}
