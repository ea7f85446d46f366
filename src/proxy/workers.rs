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
//! The keystore, the data-key cache and the configuration snapshots stay shared (locks,
//! atomics, tokio's sync types work across runtimes), and the KMS API, the admin endpoint and
//! the background loops keep running on the main runtime. What a keystore call spawns from a
//! worker runs on that worker: SQLite's blocking calls use the worker's own blocking pool
//! (capped at [`MAX_BLOCKING_THREADS`] each), and a PostgreSQL connection the call opens is
//! driven by the worker while the keystore's pool shares it (it ends with the worker, at
//! shutdown).
//!
//! The workers stop when their [`WorkerThreads`] is stopped or dropped, which the server does
//! after the drain: each worker's runtime then drops whatever connections remain.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// 1 + the index of the worker this thread is, 0 on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Threads each worker runtime may start for blocking calls (tokio's default is 512 per
/// runtime, which times the worker count is more than a proxy should ever start).
const MAX_BLOCKING_THREADS: usize = 32;

/// The worker the calling thread is (1-based), or 0 when it is not a proxy worker. The
/// upstream pools keep each worker's connections apart with it.
pub(super) fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Where connections go: the workers' runtimes, in turn.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

/// The worker threads; they stop when this is stopped or dropped.
#[derive(Debug)]
pub struct WorkerThreads {
    /// Each worker runs until its sender is dropped.
    stops: Vec<oneshot::Sender<()>>,
}

impl WorkerThreads {
    /// Stops every worker: each drops its runtime and the tasks still on it (connections the
    /// drain did not see finish are closed). Blocking calls in flight finish on their own.
    pub fn stop(self) {
        drop(self);
    }
}

impl Workers {
    /// Starts `count` workers (at least one), each a thread that builds and runs its own
    /// single-threaded runtime.
    ///
    /// # Errors
    /// When a thread or its runtime cannot be created (the workers already started stop).
    pub fn start(count: usize) -> std::io::Result<(Self, WorkerThreads)> {
        let mut handles = Vec::new();
        let mut threads = WorkerThreads { stops: Vec::new() };
        for index in 0..count.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::channel();
            // The runtime is built and dropped on its own thread: a runtime must never be
            // dropped where blocking is not allowed (the caller may be async).
            std::thread::Builder::new().name(format!("kagi-proxy-{index}")).spawn(move || {
                let runtime = match Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(MAX_BLOCKING_THREADS)
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                WORKER.with(|worker| worker.set(index + 1));
                // Err: the sender was dropped, which is the signal.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_background();
            })?;
            threads.stops.push(stop);
            let handle = handle
                .recv()
                .map_err(|_| std::io::Error::other("a proxy worker ended as it started"))??;
            handles.push(handle);
        }
        Ok((Self { handles, next: AtomicUsize::new(0) }, threads))
    }

    /// How many workers run.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on the next worker, round robin. After the workers stopped, the task is
    /// dropped unrun.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[index].spawn(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_workers_in_turn_and_know_which() {
        let (workers, threads) = Workers::start(2).unwrap();
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
        // Stopped, a worker drops what it still runs, and what it is given later.
        let (dropped, gone) = std::sync::mpsc::channel::<()>();
        let held = dropped.clone();
        workers.spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        threads.stop();
        workers.spawn(async move {
            let _held = dropped;
        });
        assert!(gone.recv().is_err(), "every task and its sender were dropped");
    }
}
