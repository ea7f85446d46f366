//! Body wrappers: a request body that counts its bytes and stops at the route's limit, and a
//! response body that counts its bytes and runs a callback (the access log line) when it ends
//! or is dropped. Both stream: nothing is buffered whole.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::BoxError;

/// What a body has carried so far, shared with whoever logs it.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Bytes of data frames.
    pub(super) bytes: AtomicU64,
    /// Whether the limit was passed.
    pub(super) exceeded: AtomicBool,
}

/// A request body past its route's limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub(super) struct TooLarge(pub u64);

/// A body that counts its data and fails past `limit` bytes.
#[derive(Debug)]
pub(super) struct Limited<B> {
    inner: B,
    limit: u64,
    tally: Arc<Tally>,
}

impl<B> Limited<B> {
    /// Wraps `inner`.
    pub(super) fn new(inner: B, limit: u64, tally: Arc<Tally>) -> Self {
        Self { inner, limit, tally }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
            let total = self.tally.bytes.fetch_add(len, Ordering::Relaxed).saturating_add(len);
            if total > self.limit {
                self.tally.exceeded.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(TooLarge(self.limit)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that counts its data and calls `on_end` once: when it ends, fails, or is dropped
/// (the client went away).
pub(super) struct Observed<B: Body, F: FnOnce(u64, Option<&str>)> {
    inner: B,
    bytes: u64,
    on_end: Option<F>,
}

impl<B: Body, F: FnOnce(u64, Option<&str>)> std::fmt::Debug for Observed<B, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl<B: Body, F: FnOnce(u64, Option<&str>)> Observed<B, F> {
    /// Wraps `inner`; `on_end(bytes, error)` runs once.
    pub(super) fn new(inner: B, on_end: F) -> Self {
        Self { inner, bytes: 0, on_end: Some(on_end) }
    }

    fn end(&mut self, error: Option<&str>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes, error);
        }
    }
}

impl<B, F> Body for Observed<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    F: FnOnce(u64, Option<&str>) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes = self.bytes.saturating_add(data.len() as u64);
                }
                if self.inner.is_end_stream() {
                    self.end(None);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                let message = error.to_string();
                self.end(Some(&message));
            }
            Poll::Ready(None) => self.end(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, F: FnOnce(u64, Option<&str>)> Drop for Observed<B, F> {
    fn drop(&mut self) {
        // An empty body (204, HEAD) may never be polled: it ended all the same.
        if self.inner.is_end_stream() {
            self.end(None);
        } else if self.on_end.is_some() {
            self.end(Some("the client went away before the response ended"));
        }
    }
}
