//! A repository in a local directory (or a mounted filesystem).
//!
//! Each object is a file at `<root>/<key>`. A put writes `.<file>.tmp-<uuid>` next to the
//! final name while hashing, fsyncs it, links it into place and fsyncs the directory, so a
//! crash leaves either the complete object or a dot-file that `list` ignores and
//! `sweep_incomplete` removes. Publishing uses `link(2)`, which fails if the name exists,
//! so two concurrent puts of one key can never overwrite each other.
//!
//! All file I/O runs on blocking threads: one per put or get, fed through the stream's
//! bounded channel, so the async executor never waits on the disk.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::io_hint;
use crate::stream::{block_on, ByteSender, CHANNEL_CAPACITY, CHUNK_SIZE};
use crate::{
    validate_key, validate_prefix, ByteStream, Capabilities, IoOp, ObjectInfo, PutReceipt, Sink,
    SinkError,
};

/// Marks in-progress uploads (`.<file>.tmp-<uuid>`); see the module docs.
const TEMP_MARKER: &str = ".tmp-";
/// Objects readable by the backup group, never by others: backups hold sensitive data.
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;

/// A repository stored in a local directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    root: PathBuf,
    /// Cleared the first time the filesystem refuses hard links (e.g. vfat, some FUSE).
    hard_links: AtomicBool,
}

impl LocalSink {
    /// Opens an existing repository directory, checking that it is a directory we can write
    /// to, so misconfiguration fails at startup rather than mid-backup. Does a little
    /// blocking I/O.
    pub fn open(name: impl Into<String>, path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let name = name.into();
        let path = path.as_ref();
        let unusable = |problem: String| SinkError::Unusable {
            repository: name.clone(),
            path: path.to_owned(),
            problem,
        };
        if name.is_empty() {
            return Err(unusable("the repository name is empty".into()));
        }
        let meta = fs::metadata(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                unusable(
                    "the directory does not exist: fix the path or create the repository first"
                        .into(),
                )
            } else {
                unusable(format!("cannot access the directory: {e}{}", io_hint(&e)))
            }
        })?;
        if !meta.is_dir() {
            return Err(unusable("this is not a directory".into()));
        }
        let root = fs::canonicalize(path)
            .map_err(|e| unusable(format!("cannot resolve the path: {e}{}", io_hint(&e))))?;
        // Writing a file is the only reliable test: permissions, ACLs, read-only mounts.
        let probe = root.join(format!(".backupd-probe{TEMP_MARKER}{}", Uuid::new_v4()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&probe)
            .map_err(|e| {
                let hint = match io_hint(&e) {
                    "" => {
                        "; check its owner and permissions and that the filesystem is mounted \
                           read-write"
                    }
                    hint => hint,
                };
                unusable(format!("the directory is not writable: {e}{hint}"))
            })?;
        let _ = fs::remove_file(&probe);
        Ok(LocalSink {
            inner: Arc::new(Inner {
                name,
                root,
                hard_links: AtomicBool::new(true),
            }),
        })
    }

    /// Creates the repository directory (and missing parents) if needed, then opens it.
    pub fn create(name: impl Into<String>, path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let name = name.into();
        let path = path.as_ref();
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
            .map_err(|e| SinkError::Unusable {
                repository: name.clone(),
                path: path.to_owned(),
                problem: format!("cannot create the directory: {e}{}", io_hint(&e)),
            })?;
        if let Some(parent) = path.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            // Best effort: the repository is usable either way; this makes it survive a crash.
            let _ = sync_dir(parent);
        }
        Self::open(name, path)
    }

    /// The repository directory (canonical).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

impl Sink for LocalSink {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_restore_before_read: false,
            atomic_put: true,
            server_side_checksum: false,
        }
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        validate_key(key)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        // Dropping this future (e.g. a timeout) cancels the writer thread too, so an
        // abandoned put cannot publish the object later.
        let token = cancel.child_token();
        let _stop_writer_on_drop = token.clone().drop_guard();
        let inner = self.inner.clone();
        let key = key.to_owned();
        // Not raced against `cancel` here: the writer notices cancellation between chunks,
        // and waiting for it guarantees no object appears after we returned `Cancelled`.
        let writer = tokio::task::spawn_blocking(move || inner.put_blocking(&key, body, &token));
        join_result(writer.await)
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<ByteStream, SinkError> {
        validate_key(key)?;
        let inner = self.inner.clone();
        let owned_key = key.to_owned();
        let (file, size) = run_blocking(cancel, move || inner.open_object(&owned_key)).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY + 1);
        let inner = self.inner.clone();
        let key = key.to_owned();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || inner.stream_file(&key, file, size, tx, &cancel));
        Ok(rx)
    }

    async fn head(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<ObjectInfo>, SinkError> {
        validate_key(key)?;
        let inner = self.inner.clone();
        let key = key.to_owned();
        run_blocking(cancel, move || inner.head_blocking(&key)).await
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, SinkError> {
        validate_prefix(prefix)?;
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        let token = cancel.clone();
        run_blocking(cancel, move || inner.list_blocking(&prefix, &token)).await
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), SinkError> {
        validate_key(key)?;
        let inner = self.inner.clone();
        let key = key.to_owned();
        run_blocking(cancel, move || inner.delete_blocking(&key)).await
    }

    async fn sweep_incomplete(
        &self,
        prefix: &str,
        older_than: Duration,
        cancel: &CancellationToken,
    ) -> Result<u64, SinkError> {
        validate_prefix(prefix)?;
        let inner = self.inner.clone();
        let token = cancel.clone();
        // Only whole directories: "backups/x" sweeps the folder backups/x/.
        let start = inner.root.join(prefix.trim_end_matches('/'));
        run_blocking(cancel, move || {
            inner.sweep_blocking(start, older_than, &token)
        })
        .await
    }
}

impl Inner {
    fn io(&self, key: &str, op: IoOp, error: io::Error) -> SinkError {
        SinkError::io(&self.name, key, op, error)
    }

    /// Keys are validated relative '/'-paths, so joining cannot escape the root.
    fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn put_blocking(
        &self,
        key: &str,
        mut body: ByteStream,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        let path = self.object_path(key);
        let dir = path.parent().expect("an object path is below the root");
        let file_name = key.rsplit('/').next().expect("split yields one item");
        let (mut file, temp) = self.create_temp(key, dir, file_name)?;

        let mut hasher = OverlappedHasher::new();
        let mut size = 0u64;
        loop {
            let item = block_on(async {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    item = body.recv() => Some(item),
                }
            });
            match item {
                None => return Err(SinkError::Cancelled),
                Some(None) => break,
                Some(Some(Err(e))) => return Err(SinkError::body(&self.name, key, e)),
                Some(Some(Ok(chunk))) => {
                    size += chunk.len() as u64;
                    hasher.update(&chunk);
                    file.write_all(&chunk)
                        .map_err(|e| self.io(key, IoOp::Write, e))?;
                }
            }
        }
        drop(body);
        file.sync_data().map_err(|e| self.io(key, IoOp::Sync, e))?;
        drop(file);
        let receipt = PutReceipt {
            size,
            sha256: hasher.finish(),
        };
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        self.publish(key, &temp.path, &path, dir, &receipt, cancel)?;
        drop(temp);
        tracing::debug!(repository = %self.name, key, size, "stored object");
        Ok(receipt)
    }

    /// Creates the object's directory and an exclusive temp file in it. Retries when a
    /// concurrent delete prunes the (momentarily empty) directory under our feet.
    fn create_temp(
        &self,
        key: &str,
        dir: &Path,
        file_name: &str,
    ) -> Result<(File, TempFile), SinkError> {
        let mut attempts = 0;
        loop {
            let result = self.ensure_dir(key, dir).and_then(|()| {
                let path = dir.join(format!(".{file_name}{TEMP_MARKER}{}", Uuid::new_v4()));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(FILE_MODE)
                    .open(&path)?;
                Ok((file, TempFile { path }))
            });
            match result {
                Ok(created) => return Ok(created),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
                Err(e) => return Err(self.io(key, IoOp::Write, e)),
            }
        }
    }

    /// Creates missing directories below the root, fsyncing each new one's parent so the
    /// object stays reachable after a crash.
    fn ensure_dir(&self, key: &str, dir: &Path) -> io::Result<()> {
        if dir == self.root || dir.is_dir() {
            return Ok(());
        }
        let rel = dir.strip_prefix(&self.root).expect("below the root");
        let mut current = self.root.clone();
        for component in rel.components() {
            let parent = current.clone();
            current.push(component);
            match DirBuilder::new().mode(DIR_MODE).create(&current) {
                Ok(()) => sync_dir(&parent)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !current.is_dir() {
                        let object = current.strip_prefix(&self.root).unwrap_or(&current);
                        return Err(io::Error::new(
                            io::ErrorKind::NotADirectory,
                            format!(
                                "{} is an object, so key {key:?} cannot be stored below it",
                                object.display()
                            ),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves the finished temp file to its final name without ever replacing an object.
    fn publish(
        &self,
        key: &str,
        temp: &Path,
        path: &Path,
        dir: &Path,
        receipt: &PutReceipt,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        if self.hard_links.load(Ordering::Relaxed) {
            match fs::hard_link(temp, path) {
                Ok(()) => {
                    let _ = fs::remove_file(temp);
                    return sync_dir(dir).map_err(|e| self.io(key, IoOp::Sync, e));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return self.compare_existing(key, path, dir, receipt, cancel);
                }
                Err(e) if links_unsupported(&e) => {
                    tracing::warn!(
                        repository = %self.name,
                        error = %e,
                        "filesystem refuses hard links; falling back to check-then-rename, \
                         which cannot detect two concurrent puts of one key"
                    );
                    self.hard_links.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(self.io(key, IoOp::Publish, e)),
            }
        }
        match fs::symlink_metadata(path) {
            Ok(_) => return self.compare_existing(key, path, dir, receipt, cancel),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(key, IoOp::Publish, e)),
        }
        fs::rename(temp, path).map_err(|e| self.io(key, IoOp::Publish, e))?;
        sync_dir(dir).map_err(|e| self.io(key, IoOp::Sync, e))
    }

    /// Identical content makes a repeated put succeed; anything else is a conflict.
    fn compare_existing(
        &self,
        key: &str,
        path: &Path,
        dir: &Path,
        receipt: &PutReceipt,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        let meta = fs::symlink_metadata(path).map_err(|e| self.io(key, IoOp::Stat, e))?;
        if !meta.is_file() {
            return Err(self.io(
                key,
                IoOp::Publish,
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a directory of other objects exists at this key",
                ),
            ));
        }
        if meta.len() != receipt.size {
            return Err(SinkError::already_exists(&self.name, key));
        }
        let (size, sha256) = hash_file(path, cancel)
            .map_err(|e| self.io(key, IoOp::Read, e))?
            .ok_or(SinkError::Cancelled)?;
        if size != receipt.size || sha256 != receipt.sha256 {
            return Err(SinkError::already_exists(&self.name, key));
        }
        // The earlier put may have crashed before its directory fsync.
        sync_dir(dir).map_err(|e| self.io(key, IoOp::Sync, e))
    }

    fn open_object(&self, key: &str) -> Result<(File, u64), SinkError> {
        let path = self.object_path(key);
        let not_found = || SinkError::not_found(&self.name, key);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(not_found()),
            Err(e) if is_missing(&e) => return Err(not_found()),
            Err(e) => return Err(self.io(key, IoOp::Open, e)),
        }
        let file = File::open(&path).map_err(|e| {
            if is_missing(&e) {
                not_found()
            } else {
                self.io(key, IoOp::Open, e)
            }
        })?;
        let size = file
            .metadata()
            .map_err(|e| self.io(key, IoOp::Stat, e))?
            .len();
        Ok((file, size))
    }

    /// Sends the file in chunks. One channel slot stays reserved for the final error, so a
    /// failure or cancellation is always delivered and the consumer never mistakes a cut
    /// stream for a complete object.
    fn stream_file(
        &self,
        key: &str,
        mut file: File,
        size: u64,
        tx: ByteSender,
        cancel: &CancellationToken,
    ) {
        let reserve = |tx: &ByteSender| {
            let tx = tx.clone();
            block_on(async {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(true),
                    permit = tx.reserve_owned() => permit.map_err(|_| false),
                }
            })
        };
        // Err(true): cancelled; Err(false): the consumer dropped the stream.
        let spare: OwnedPermit<_> = match reserve(&tx) {
            Ok(permit) => permit,
            Err(_) => return,
        };
        let mut sent = 0u64;
        loop {
            let mut buf = BytesMut::zeroed(CHUNK_SIZE);
            let n = match read_full(&mut file, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    spare.send(Err(self.io(key, IoOp::Read, e).into_io()));
                    return;
                }
            };
            if n == 0 {
                if sent != size {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("object changed while being read: {sent} of {size} bytes"),
                    );
                    spare.send(Err(self.io(key, IoOp::Read, e).into_io()));
                }
                return;
            }
            buf.truncate(n);
            match reserve(&tx) {
                Ok(permit) => {
                    permit.send(Ok(buf.freeze()));
                    sent += n as u64;
                }
                Err(true) => {
                    spare.send(Err(SinkError::Cancelled.into_io()));
                    return;
                }
                Err(false) => return,
            }
        }
    }

    fn head_blocking(&self, key: &str) -> Result<Option<ObjectInfo>, SinkError> {
        match fs::symlink_metadata(self.object_path(key)) {
            Ok(meta) if meta.is_file() => Ok(Some(object_info(key.to_owned(), &meta))),
            Ok(_) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(self.io(key, IoOp::Stat, e)),
        }
    }

    fn list_blocking(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, SinkError> {
        let err = |e| self.io(prefix, IoOp::List, e);
        // Start at the deepest directory the prefix names completely.
        let start = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut objects = Vec::new();
        let mut pending = vec![start.to_owned()];
        while let Some(rel) = pending.pop() {
            if cancel.is_cancelled() {
                return Err(SinkError::Cancelled);
            }
            let entries = match fs::read_dir(self.root.join(&rel)) {
                Ok(entries) => entries,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(err(e)),
            };
            for entry in entries {
                let entry = entry.map_err(err)?;
                let file_name = entry.file_name();
                // Dot-files are in-progress uploads; non-UTF-8 names are not ours.
                let Some(name) = file_name.to_str().filter(|n| !n.starts_with('.')) else {
                    continue;
                };
                let key = if rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel}/{name}")
                };
                let file_type = entry.file_type().map_err(err)?;
                if file_type.is_dir() {
                    let as_prefix = format!("{key}/");
                    if as_prefix.starts_with(prefix) || prefix.starts_with(&as_prefix) {
                        pending.push(key);
                    }
                } else if file_type.is_file() && key.starts_with(prefix) {
                    match entry.metadata() {
                        Ok(meta) => objects.push(object_info(key, &meta)),
                        Err(e) if is_missing(&e) => {} // deleted while listing
                        Err(e) => return Err(err(e)),
                    }
                }
            }
        }
        objects.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    fn delete_blocking(&self, key: &str) -> Result<(), SinkError> {
        let path = self.object_path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if is_missing(&e) || e.kind() == io::ErrorKind::IsADirectory => return Ok(()),
            Err(e) => return Err(self.io(key, IoOp::Delete, e)),
        }
        // Prune directories left empty, so deleted backups leave no trace; stops at the
        // first non-empty one (or one holding an in-progress upload).
        let mut dir = path.parent().expect("below the root");
        while dir != self.root && fs::remove_dir(dir).is_ok() {
            dir = dir.parent().expect("below the root");
        }
        sync_dir(dir).map_err(|e| self.io(key, IoOp::Sync, e))
    }

    fn sweep_blocking(
        &self,
        start: PathBuf,
        older_than: Duration,
        cancel: &CancellationToken,
    ) -> Result<u64, SinkError> {
        let err = |e| self.io("", IoOp::Sweep, e);
        let Some(cutoff) = SystemTime::now().checked_sub(older_than) else {
            return Ok(0);
        };
        let mut removed = 0;
        let mut visited = Vec::new();
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            if cancel.is_cancelled() {
                return Err(SinkError::Cancelled);
            }
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(err(e)),
            };
            // Its age is taken before the sweep empties it: removing a leftover touches the
            // folder's mtime, which would otherwise make every swept folder look young.
            let old_enough = fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m <= cutoff);
            visited.push((dir.clone(), old_enough));
            for entry in entries {
                let entry = entry.map_err(err)?;
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str() else {
                    continue;
                };
                let file_type = entry.file_type().map_err(err)?;
                if file_type.is_dir() && !name.starts_with('.') {
                    pending.push(entry.path());
                } else if file_type.is_file() && name.starts_with('.') && name.contains(TEMP_MARKER)
                {
                    let modified = match entry.metadata().and_then(|m| m.modified()) {
                        Ok(modified) => modified,
                        Err(e) if is_missing(&e) => continue,
                        Err(e) => return Err(err(e)),
                    };
                    if modified <= cutoff {
                        match fs::remove_file(entry.path()) {
                            Ok(()) => {
                                removed += 1;
                                tracing::info!(
                                    repository = %self.name,
                                    file = %entry.path().display(),
                                    "removed leftover of an interrupted upload"
                                );
                            }
                            Err(e) if is_missing(&e) => {}
                            Err(e) => return Err(err(e)),
                        }
                    }
                }
            }
        }
        // Folders emptied by the sweep (e.g. of an interrupted backup) go too; deepest first,
        // never the root, and remove_dir refuses any folder that still holds something.
        // A young folder may be one a live upload has just created.
        visited.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        for (dir, old_enough) in visited {
            if dir != self.root && old_enough && fs::remove_dir(&dir).is_ok() {
                let _ = sync_dir(dir.parent().expect("below the root"));
            }
        }
        Ok(removed)
    }
}

/// SHA-256 of a put, computed on the writer thread for small objects and on a helper
/// thread for large ones, so hashing (~1-2 GB/s with SHA-NI) overlaps with writing instead
/// of halving put throughput.
enum OverlappedHasher {
    Inline(Sha256, u64),
    Offloaded {
        chunks: std_mpsc::SyncSender<Bytes>,
        thread: thread::JoinHandle<Sha256>,
    },
}

impl OverlappedHasher {
    /// Below this many bytes a helper thread costs more than it saves.
    const OFFLOAD_AFTER: u64 = 4 << 20;

    fn new() -> Self {
        OverlappedHasher::Inline(Sha256::new(), 0)
    }

    fn update(&mut self, chunk: &Bytes) {
        match self {
            OverlappedHasher::Inline(hasher, hashed) => {
                hasher.update(chunk);
                *hashed += chunk.len() as u64;
                if *hashed >= Self::OFFLOAD_AFTER {
                    self.offload();
                }
            }
            OverlappedHasher::Offloaded { chunks, .. } => {
                chunks
                    .send(chunk.clone())
                    .expect("the hasher thread lives until finish");
            }
        }
    }

    fn offload(&mut self) {
        let OverlappedHasher::Inline(hasher, _) = self else {
            return;
        };
        let mut hasher = hasher.clone();
        let (chunks, received) = std_mpsc::sync_channel::<Bytes>(CHANNEL_CAPACITY);
        let spawned = thread::Builder::new()
            .name("sink-sha256".into())
            .spawn(move || {
                for chunk in received {
                    hasher.update(&chunk);
                }
                hasher
            });
        // If no thread can be had, keep hashing inline.
        if let Ok(thread) = spawned {
            *self = OverlappedHasher::Offloaded { chunks, thread };
        }
    }

    fn finish(self) -> [u8; 32] {
        match self {
            OverlappedHasher::Inline(hasher, _) => hasher.finalize().into(),
            OverlappedHasher::Offloaded { chunks, thread } => {
                drop(chunks);
                match thread.join() {
                    Ok(hasher) => hasher.finalize().into(),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        }
    }
}

/// Removes the temp file when the put ends, however it ends.
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %self.path.display(),
                error = %e,
                "could not remove temp file; sweep_incomplete will retry"
            ),
        }
    }
}

/// Runs blocking filesystem work off the executor; returns as soon as `cancel` fires (the
/// work itself, short and harmless, may still finish in the background).
async fn run_blocking<T: Send + 'static>(
    cancel: &CancellationToken,
    work: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    if cancel.is_cancelled() {
        return Err(SinkError::Cancelled);
    }
    let task = tokio::task::spawn_blocking(work);
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(SinkError::Cancelled),
        joined = task => join_result(joined),
    }
}

fn join_result<T>(joined: Result<Result<T, SinkError>, JoinError>) -> Result<T, SinkError> {
    match joined {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only happens when the runtime shuts down.
            Err(_) => Err(SinkError::Cancelled),
        },
    }
}

fn object_info(key: String, meta: &fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key,
        size: meta.len(),
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        storage_class: None,
    }
}

/// Absent, or a parent is a regular file: either way there is no object.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn links_unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::EOPNOTSUPP | libc::EXDEV)
        )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads until `buf` is full or EOF; returns the byte count.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Size and SHA-256 of a file; `None` if cancelled.
fn hash_file(path: &Path, cancel: &CancellationToken) -> io::Result<Option<(u64, [u8; 32])>> {
    let mut file = File::open(path)?;
    let mut buf = vec![0; CHUNK_SIZE];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            return Ok(Some((size, hasher.finalize().into())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{put_bytes, read_object};

    #[tokio::test]
    async fn rename_fallback_still_refuses_different_content() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalSink::open("repo", dir.path()).unwrap();
        sink.inner.hard_links.store(false, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let first = put_bytes(&sink, "a/b", &b"one"[..], &cancel).await.unwrap();
        let again = put_bytes(&sink, "a/b", &b"one"[..], &cancel).await.unwrap();
        assert_eq!(first, again);
        let err = put_bytes(&sink, "a/b", &b"two"[..], &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(read_object(&sink, "a/b", &cancel).await.unwrap(), b"one");
        let names: Vec<_> = fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b"], "temp files left behind");
    }

    #[test]
    fn overlapped_hasher_matches_sha256_across_the_offload_threshold() {
        let data: Vec<u8> = (0..(10u32 << 20) + 7).map(|i| (i % 253) as u8).collect();
        let mut hasher = OverlappedHasher::new();
        let mut rest = Bytes::from(data.clone());
        let mut step = 1;
        while !rest.is_empty() {
            let chunk = rest.split_to(step.min(rest.len()));
            hasher.update(&chunk);
            step = step * 3 + 1;
        }
        assert!(matches!(hasher, OverlappedHasher::Offloaded { .. }));
        assert_eq!(hasher.finish(), <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
