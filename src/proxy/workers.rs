//! The proxy's worker threads, one single-threaded runtime each, as nginx runs worker processes
//! and Pingora its no-stealing runtimes.
//!
//! An accepted connection is handed to one worker, round robin, and stays there: its TLS
//! handshake, its requests, the upstream connections they open (each driven by a task on the
//! same worker, and pooled for that worker's next request) and its WebSocket tunnels. A request
//! and its upstream exchange then never hop between threads: no cross-thread wake-up, no
//! futex, no task stolen from a cold cache. On tokio's work-stealing runtime they did, and a
//! request cost 15–25 % more CPU than on one thread (bench/README.md).
//!
//! The keystore, the data-key cache and the configuration snapshots stay shared: they are
//! runtime-agnostic (locks, atomics, tokio's sync types), and the KMS API, the admin endpoint
//! and the background loops keep running on the main runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// 1 + the index of the worker this thread is, 0 on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is (1-based), or 0 when it is not a proxy worker. The
/// upstream pools keep each worker's idle connections apart with it.
pub(super) fn current() -> usize {
    WORKER.with(Cell::get)
}

/// The running workers; they stop when this is dropped (their remaining tasks are dropped
/// with their runtimes: the server drains before).
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Each worker runs until its sender is dropped.
    stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    ///
    /// # Errors
    /// When a thread or its runtime cannot be created.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for index in 0..count.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new().name(format!("kagi-proxy-{index}")).spawn(move || {
                WORKER.with(|worker| worker.set(index + 1));
                // Err: the sender was dropped, which is the signal.
                let _ = runtime.block_on(stopped);
            })?;
        }
        Ok(Self { handles, next: AtomicUsize::new(0), stops })
    }

    /// How many workers run.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on the next worker, round robin.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[index].spawn(task));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_workers_in_turn_and_know_which() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.count(), 2);
        let (sent, received) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let sent = sent.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                sent.send((current(), name)).unwrap();
            });
        }
        let mut seen: Vec<_> = (0..4).map(|_| received.recv().unwrap()).collect();
        seen.sort();
        let name = |i: usize| Some(format!("kagi-proxy-{i}"));
        assert_eq!(seen, [(1, name(0)), (1, name(0)), (2, name(1)), (2, name(1))]);
        assert_eq!(current(), 0, "the test's own thread is no worker");
    }
}
