//! Restore writes files on background threads, so the thread decoding the
//! backup stream keeps going while the kernel copies data into files.
//! Each file is handled by one thread (in order); files alternate threads.
//! The writers also check each file's BLAKE3 (so hashing runs beside decoding) and hand
//! written buffers back for reuse (fresh 1 MiB buffers would cost page faults each).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use backup_core::manifest::FileEntry;
use crossbeam_channel::{bounded, Receiver, Sender};

use super::{apply_metadata, FilesError};

const THREADS: usize = 2;
/// Chunks (up to 1 MiB each) queued per thread: bounds memory.
const QUEUE: usize = 8;

enum Job {
    Open {
        slot: u64,
        path: PathBuf,
    },
    Data {
        slot: u64,
        bytes: Vec<u8>,
    },
    Close {
        slot: u64,
        entry: Box<FileEntry>,
        restore_owner: bool,
    },
}

/// Called with each file's path once it is complete: written, its BLAKE3 checked and its
/// metadata applied (on a writer thread).
pub type FileRestored = Arc<dyn Fn(&std::path::Path) + Send + Sync>;

pub(super) struct FileWriters {
    senders: Vec<SyncSender<Job>>,
    handles: Vec<JoinHandle<Result<(), FilesError>>>,
    failed: Arc<AtomicBool>,
    on_restored: Arc<OnceLock<FileRestored>>,
    next_slot: u64,
    spare: Receiver<Vec<u8>>,
}

impl Default for FileWriters {
    /// No threads: what is left once the writers were joined.
    fn default() -> Self {
        Self {
            senders: Vec::new(),
            handles: Vec::new(),
            failed: Arc::default(),
            on_restored: Arc::default(),
            next_slot: 0,
            spare: bounded(0).1,
        }
    }
}

/// An open file on a writer thread, with the hash of what was written so far.
struct OpenFile {
    path: PathBuf,
    file: File,
    hasher: blake3::Hasher,
}

impl FileWriters {
    pub fn new() -> Self {
        let failed = Arc::new(AtomicBool::new(false));
        let on_restored: Arc<OnceLock<FileRestored>> = Arc::default();
        let (recycle, spare) = bounded::<Vec<u8>>(THREADS * (QUEUE + 2));
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for i in 0..THREADS {
            let (tx, rx) = sync_channel::<Job>(QUEUE);
            let failed = failed.clone();
            let recycle = recycle.clone();
            let on_restored = on_restored.clone();
            let handle = std::thread::Builder::new()
                .name(format!("restore-writer-{i}"))
                .spawn(move || {
                    let mut open: HashMap<u64, OpenFile> = HashMap::new();
                    let mut first_error = None;
                    for job in rx {
                        // After an error keep draining, so the sender never blocks forever.
                        if first_error.is_some() {
                            continue;
                        }
                        if let Err(e) = run_job(job, &mut open, &recycle, on_restored.get()) {
                            failed.store(true, Ordering::Relaxed);
                            first_error = Some(e);
                        }
                    }
                    first_error.map_or(Ok(()), Err)
                })
                .expect("spawning a restore writer thread");
            senders.push(tx);
            handles.push(handle);
        }
        Self {
            senders,
            handles,
            failed,
            on_restored,
            next_slot: 0,
            spare,
        }
    }

    /// Calls `hook` for each file completed from now on.
    pub fn on_file_restored(&self, hook: FileRestored) {
        let _ = self.on_restored.set(hook);
    }

    /// A buffer of `len` bytes to read file content into (reused when one is free).
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    fn send(&mut self, slot: u64, job: Job) -> Result<(), FilesError> {
        if self.failed.load(Ordering::Relaxed) {
            return self.join_error();
        }
        let tx = &self.senders[(slot % self.senders.len() as u64) as usize];
        if tx.send(job).is_err() {
            return self.join_error();
        }
        Ok(())
    }

    fn join_error(&mut self) -> Result<(), FilesError> {
        let senders = std::mem::take(&mut self.senders);
        let handles = std::mem::take(&mut self.handles);
        let result = join_all(senders, handles);
        result.and(Err(FilesError::Restore {
            path: PathBuf::new(),
            source: std::io::Error::other("a restore writer stopped unexpectedly"),
        }))
    }

    pub fn open(&mut self, path: PathBuf) -> Result<u64, FilesError> {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.send(slot, Job::Open { slot, path })?;
        Ok(slot)
    }

    pub fn data(&mut self, slot: u64, bytes: Vec<u8>) -> Result<(), FilesError> {
        self.send(slot, Job::Data { slot, bytes })
    }

    pub fn close(
        &mut self,
        slot: u64,
        entry: FileEntry,
        restore_owner: bool,
    ) -> Result<(), FilesError> {
        self.send(
            slot,
            Job::Close {
                slot,
                entry: Box::new(entry),
                restore_owner,
            },
        )
    }

    /// Waits for every queued write; returns the first error.
    pub fn join(self) -> Result<(), FilesError> {
        join_all(self.senders, self.handles)
    }
}

fn join_all(
    senders: Vec<SyncSender<Job>>,
    handles: Vec<JoinHandle<Result<(), FilesError>>>,
) -> Result<(), FilesError> {
    drop(senders);
    let mut result = Ok(());
    for h in handles {
        let r = h.join().unwrap_or_else(|_| {
            Err(FilesError::Restore {
                path: PathBuf::new(),
                source: std::io::Error::other("a restore writer panicked"),
            })
        });
        if result.is_ok() {
            result = r;
        }
    }
    result
}

fn run_job(
    job: Job,
    open: &mut HashMap<u64, OpenFile>,
    recycle: &Sender<Vec<u8>>,
    on_restored: Option<&FileRestored>,
) -> Result<(), FilesError> {
    match job {
        Job::Open { slot, path } => {
            let err = |source| FilesError::Restore {
                path: path.clone(),
                source,
            };
            // Replace rather than write through whatever is there (only possible with --force).
            match fs::symlink_metadata(&path) {
                Ok(m) if !m.is_dir() => fs::remove_file(&path).map_err(err)?,
                _ => {}
            }
            let file = File::create(&path).map_err(err)?;
            let hasher = blake3::Hasher::new();
            open.insert(slot, OpenFile { path, file, hasher });
        }
        Job::Data { slot, bytes } => {
            let f = open.get_mut(&slot).expect("opened before data");
            f.hasher.update(&bytes);
            f.file
                .write_all(&bytes)
                .map_err(|source| FilesError::Restore {
                    path: f.path.clone(),
                    source,
                })?;
            let _ = recycle.try_send(bytes);
        }
        Job::Close {
            slot,
            entry,
            restore_owner,
        } => {
            let OpenFile { path, file, hasher } = open.remove(&slot).expect("opened before close");
            drop(file);
            if let Some(expected) = &entry.blake3 {
                let found = hasher.finalize().to_hex().to_string();
                if *expected != found {
                    return Err(FilesError::ChecksumMismatch {
                        path: entry.path.display(),
                        expected: expected.clone(),
                        found,
                    });
                }
            }
            apply_metadata(&path, &entry, restore_owner).map_err(|source| FilesError::Restore {
                path: path.clone(),
                source,
            })?;
            if let Some(hook) = on_restored {
                hook(&path);
            }
        }
    }
    Ok(())
}
