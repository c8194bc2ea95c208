//! A small fixed pool of worker threads for CPU-bound work (compression,
//! encryption), kept off any async executor. Results come back through
//! per-task channels so callers can wait for them in submission order.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::thread;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct WorkerPool {
    jobs: Sender<Job>,
    threads: usize,
}

/// The result of one submitted job.
pub struct Task<T>(Receiver<T>);

impl<T> Task<T> {
    /// Blocks until the job has run. `None` if the job panicked.
    pub fn wait(self) -> Option<T> {
        self.0.recv().ok()
    }
}

impl WorkerPool {
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (jobs, rx) = unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("backup-worker-{i}"))
                .spawn(move || {
                    for job in rx {
                        // A panicking job drops its result sender; the waiter sees None.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .expect("spawning a worker thread");
        }
        Self { jobs, threads }
    }

    /// The process-wide pool, one thread per available core.
    pub fn global() -> &'static WorkerPool {
        static POOL: OnceLock<WorkerPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let n = thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            WorkerPool::new(n)
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
        let (tx, rx) = bounded(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).expect("worker pool is never shut down");
        Task(rx)
    }
}

/// Hashes a sequence of buffers with SHA-256 on a dedicated thread, so the
/// sequential hash does not serialise the producer.
pub struct BackgroundHasher {
    tx: Option<Sender<std::sync::Arc<Vec<u8>>>>,
    done: Option<thread::JoinHandle<[u8; 32]>>,
}

impl BackgroundHasher {
    #[allow(clippy::new_without_default)] // spawns a thread: keep it explicit
    pub fn new() -> Self {
        use sha2::{Digest, Sha256};
        // A short queue: each item may be a whole segment, and memory must stay bounded.
        let (tx, rx) = bounded::<std::sync::Arc<Vec<u8>>>(4);
        let done = thread::Builder::new()
            .name("backup-hasher".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for buf in rx {
                    h.update(&buf[..]);
                }
                h.finalize().into()
            })
            .expect("spawning the hasher thread");
        Self {
            tx: Some(tx),
            done: Some(done),
        }
    }

    pub fn update(&self, buf: std::sync::Arc<Vec<u8>>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(buf);
        }
    }

    pub fn finish(mut self) -> [u8; 32] {
        drop(self.tx.take());
        self.done
            .take()
            .expect("finish once")
            .join()
            .expect("hasher thread panicked")
    }
}

impl Drop for BackgroundHasher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.done.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_return_results_and_survive_panics() {
        let pool = WorkerPool::new(2);
        let tasks: Vec<_> = (0..10u64).map(|i| pool.spawn(move || i * i)).collect();
        let got: Vec<u64> = tasks.into_iter().map(|t| t.wait().unwrap()).collect();
        assert_eq!(got, (0..10u64).map(|i| i * i).collect::<Vec<_>>());
        let bad = pool.spawn(|| -> u32 { panic!("boom") });
        assert!(bad.wait().is_none());
        assert_eq!(pool.spawn(|| 7).wait(), Some(7));
    }

    #[test]
    fn background_hasher_matches_sha256() {
        use sha2::{Digest, Sha256};
        let h = BackgroundHasher::new();
        h.update(std::sync::Arc::new(b"hello ".to_vec()));
        h.update(std::sync::Arc::new(b"world".to_vec()));
        let want: [u8; 32] = Sha256::digest(b"hello world").into();
        assert_eq!(h.finish(), want);
    }
}
