//! Backup reads files on a small pool of threads, several files at once, while the walk
//! consumes them in order: the walk's thread only appends bytes to the backup stream, and
//! opening, reading and hashing (BLAKE3) the next files happens beside it.
//!
//! Reads are submitted in the order the walk will consume them and taken from one FIFO queue,
//! so the oldest unconsumed read is always running or done: a reader blocked on a full
//! per-file channel waits only for the consumer, never for another reader. Memory is bounded
//! by [`WINDOW`] files of at most [`CHUNKS_PER_FILE`] chunks of [`CHUNK`] bytes each.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

/// Bytes per read.
const CHUNK: usize = 256 << 10;
/// Chunks a reader may hold for a file the walk has not reached yet.
const CHUNKS_PER_FILE: usize = 4;
/// Files read ahead of the walk.
pub(super) const WINDOW: usize = 16;

/// What a reader reports about one file, in this order: chunks, then one end.
pub(super) enum ReadMsg {
    Chunk(Vec<u8>),
    /// Content as read (to EOF), with its BLAKE3.
    End {
        size: u64,
        blake3: blake3::Hash,
    },
    /// The file still has the BLAKE3 it was expected to have; no content was sent.
    Unchanged {
        size: u64,
    },
    Failed(io::Error),
}

struct ReadJob {
    path: PathBuf,
    /// Incremental backups: the size and BLAKE3 the previous backup recorded, when size and
    /// mtime still match. The file is hashed first and sent only when it changed.
    expected: Option<(u64, String)>,
    out: Sender<ReadMsg>,
}

/// A submitted read, taken by the walk when it reaches the file.
pub(super) struct PendingRead {
    pub path: PathBuf,
    pub messages: Receiver<ReadMsg>,
}

pub(super) struct ParallelReads {
    jobs: Option<Sender<ReadJob>>,
    pending: VecDeque<PendingRead>,
    /// Buffers handed back by the walk, reused by the readers.
    spare: Sender<Vec<u8>>,
    threads: Vec<JoinHandle<()>>,
}

impl ParallelReads {
    pub fn start() -> io::Result<Self> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        let (jobs, queue) = unbounded::<ReadJob>();
        let (spare, spares) = bounded::<Vec<u8>>(WINDOW * CHUNKS_PER_FILE);
        let mut reads = ParallelReads {
            jobs: Some(jobs),
            pending: VecDeque::new(),
            spare,
            threads: Vec::new(),
        };
        for i in 0..threads {
            let (queue, spares) = (queue.clone(), spares.clone());
            let thread = std::thread::Builder::new()
                .name(format!("backup-reader-{i}"))
                .spawn(move || {
                    for job in queue {
                        read_file(job, &spares);
                    }
                })?;
            reads.threads.push(thread);
        }
        Ok(reads)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn submit(&mut self, path: &Path, expected: Option<(u64, String)>) {
        let (out, messages) = bounded(CHUNKS_PER_FILE);
        let job = ReadJob {
            path: path.to_path_buf(),
            expected,
            out,
        };
        if let Some(jobs) = &self.jobs {
            // The readers outlive `self.jobs`, so the queue is open; were it not, the
            // read's channel would report a closed stream, which the walk turns into an error.
            let _ = jobs.send(job);
        }
        self.pending.push_back(PendingRead {
            path: path.to_path_buf(),
            messages,
        });
    }

    /// The oldest submitted read (the walk consumes reads in submission order).
    pub fn next(&mut self) -> Option<PendingRead> {
        self.pending.pop_front()
    }

    /// Returns a consumed chunk's buffer for reuse.
    pub fn recycle(&self, buf: Vec<u8>) {
        let _ = self.spare.try_send(buf);
    }
}

impl Drop for ParallelReads {
    fn drop(&mut self) {
        // Unconsumed reads fail their next send and stop; then the queue closes.
        self.pending.clear();
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn read_file(job: ReadJob, spares: &Receiver<Vec<u8>>) {
    let out = &job.out;
    let mut file = match File::open(&job.path) {
        Ok(f) => f,
        Err(e) => {
            let _ = out.send(ReadMsg::Failed(e));
            return;
        }
    };
    if let Some((size, blake3)) = &job.expected {
        let mut hasher = blake3::Hasher::new();
        match io::copy(&mut file, &mut hasher) {
            Ok(n) if n == *size && hasher.finalize().to_hex().as_str() == blake3 => {
                let _ = out.send(ReadMsg::Unchanged { size: n });
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = out.send(ReadMsg::Failed(e));
                return;
            }
        }
        if let Err(e) = file.rewind() {
            let _ = out.send(ReadMsg::Failed(e));
            return;
        }
    }
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    // Read to EOF rather than to the stat size: a file that changes while being read is
    // stored as read, with matching size and checksum.
    loop {
        let mut buf = spares.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let n = loop {
            match file.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match n {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                hasher.update(&buf);
                size += n as u64;
                if out.send(ReadMsg::Chunk(buf)).is_err() {
                    return; // the walk stopped
                }
            }
            Err(e) => {
                let _ = out.send(ReadMsg::Failed(e));
                return;
            }
        }
    }
    let _ = out.send(ReadMsg::End {
        size,
        blake3: hasher.finalize(),
    });
}
