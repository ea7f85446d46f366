//! The idle timeout: a connection with no request in flight and no byte read or written for
//! the listener's `idle_timeout` is closed. Reads wait on a timer as well as on the socket;
//! while a request is in flight the timer only re-arms, so a slow upstream never trips it.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests in flight on one connection, and whether it timed out idle.
#[derive(Debug, Default)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    /// Set when the idle timeout closed the connection.
    pub(super) timed_out: AtomicBool,
}

impl Activity {
    /// One more request in flight until the guard drops.
    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight; dropping it ends the request.
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O stream that fails reads with `TimedOut` once idle too long.
#[derive(Debug)]
pub(super) struct IdleIo<T> {
    inner: T,
    timeout: Duration,
    last_active: Instant,
    timer: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
}

impl<T> IdleIo<T> {
    /// Wraps `inner`.
    pub(super) fn new(inner: T, timeout: Duration, activity: Arc<Activity>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timeout,
            last_active: now,
            timer: Box::pin(tokio::time::sleep(timeout)),
            activity,
        }
    }

    /// Whether the connection has been idle past its timeout; re-arms the timer otherwise.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_active + self.timeout;
            let busy = self.activity.in_flight.load(Ordering::Relaxed) > 0;
            if busy || deadline > Instant::now() {
                let next = if busy { Instant::now() + self.timeout } else { deadline };
                self.timer.as_mut().reset(next);
                continue;
            }
            return true;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.last_active = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => {
                if this.poll_idle(cx) {
                    this.activity.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if polled.is_ready() {
            this.last_active = Instant::now();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            this.last_active = Instant::now();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_but_a_busy_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = IdleIo::new(server, Duration::from_secs(5), Arc::clone(&activity));
        let mut byte = [0u8; 1];
        // Busy: a request in flight keeps the connection through several timeouts.
        let request = activity.start();
        let mut client = client;
        let read = tokio::spawn(async move {
            let result = io.read(&mut byte).await;
            (io, result)
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        client.write_all(b"x").await.unwrap();
        let (mut io, result) = read.await.unwrap();
        assert_eq!(result.unwrap(), 1);
        drop(request);
        // Idle: the next read fails once the timeout passes.
        let error = io.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(activity.timed_out.load(Ordering::Relaxed));
        drop(client);
    }
}
