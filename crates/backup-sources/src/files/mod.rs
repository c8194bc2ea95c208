//! The `files` source: directory trees (regular files, directories, symlinks,
//! modes, ownership, mtimes).
//!
//! Backup walks each root depth-first in name order and appends file contents
//! to one data stream; each file's manifest entry records its offset, size and
//! BLAKE3. Restore replays the manifest against the stream.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use backup_core::manifest::{EntryKind, EntryPath, FileEntry, SkippedEntry};

mod readers;

use readers::{ParallelReads, ReadMsg};

const COPY_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("source path {path}: {source}; check that it exists and is readable")]
    Root { path: PathBuf, source: io::Error },
    #[error("source paths {a} and {b} have the same name {name:?}; give each root a distinct final component")]
    DuplicateRootName {
        a: PathBuf,
        b: PathBuf,
        name: String,
    },
    #[error("cannot read {path}: {source} (set `on-unreadable = \"skip\"` on the source to record it as skipped instead)")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("writing backup data: {0}")]
    Output(io::Error),
    #[error("reading backup data for {path}: {source}")]
    Input { path: String, source: io::Error },
    #[error("manifest entry {path:?} is unsafe: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("{path}: content does not match the checksum recorded at backup time (expected BLAKE3 {expected}, got {found})")]
    ChecksumMismatch {
        path: String,
        expected: String,
        found: String,
    },
    #[error("manifest entry {path}: offset {offset} is before the current data position {position}; the manifest is corrupt")]
    OffsetOutOfOrder {
        path: String,
        offset: u64,
        position: u64,
    },
    #[error("restoring {path}: {source}")]
    Restore { path: PathBuf, source: io::Error },
    #[error("cannot start the threads that read files: {0}")]
    Threads(io::Error),
    /// A streamed source (a database export) failed while being read.
    #[error("reading the source for {0}")]
    Source(String),
}

impl FilesError {
    /// True when the backup data itself is wrong (exit code 3), not the environment.
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            Self::ChecksumMismatch { .. } | Self::OffsetOutOfOrder { .. } | Self::UnsafePath { .. }
        )
    }
}

/// What to do with a file or directory that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnreadablePolicy {
    /// Fail the backup, naming the path.
    #[default]
    Fail,
    /// Record the path as skipped in the manifest and carry on.
    Skip,
}

/// Receives manifest entries as the walk produces them.
pub trait EntryRecorder {
    fn entry(&mut self, entry: &FileEntry) -> io::Result<()>;
    fn skipped(&mut self, skipped: SkippedEntry) -> io::Result<()>;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub files: u64,
    /// Files found unchanged since the previous backup (incremental backups); not stored.
    pub unchanged: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub skipped: u64,
    pub bytes: u64,
}

impl TreeStats {
    pub fn entries(&self) -> u64 {
        self.files + self.dirs + self.symlinks
    }
}

/// The label under which a root's contents are stored: its final path component.
pub fn root_labels(roots: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, FilesError> {
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    for root in roots {
        let abs = fs::canonicalize(root).map_err(|source| FilesError::Root {
            path: root.clone(),
            source,
        })?;
        let name = abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        if let Some((a, _)) = out.iter().find(|(_, n)| *n == name) {
            return Err(FilesError::DuplicateRootName {
                a: a.clone(),
                b: root.clone(),
                name,
            });
        }
        out.push((abs, name));
    }
    Ok(out)
}

/// Backs up `roots` into `data` (file contents, concatenated) and `recorder` (entries).
pub fn backup_tree(
    roots: &[PathBuf],
    policy: UnreadablePolicy,
    data: &mut impl Write,
    recorder: &mut impl EntryRecorder,
    progress: &mut dyn FnMut(u64),
) -> Result<TreeStats, FilesError> {
    let mut tree = TreeBackup::new(policy, data, recorder, progress);
    for (abs, label) in root_labels(roots)? {
        tree.add_root(&abs, &label, None)?;
    }
    Ok(tree.finish())
}

/// A file as the previous backup of an incremental chain recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousFile {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub blake3: String,
    /// The backup whose data holds the content.
    pub stored_in: backup_core::BackupId,
}

/// Leaves a path out of a backup: gets its path below the root (`b"pg_wal/0000..."`).
pub type Exclude<'a> = &'a dyn Fn(&[u8]) -> bool;

/// Reads ahead of a walk: a background thread asks the kernel (`posix_fadvise(WILLNEED)`) to
/// load the next files of the walk while the walker reads and compresses the current one, so
/// the storage reads several files at once without this process holding their data. It stays
/// at most [`PREFETCH_WINDOW`] bytes ahead of what the walker consumed, so it never evicts
/// what the walker is about to read.
struct Prefetcher {
    hints: Option<std::sync::mpsc::SyncSender<PathBuf>>,
    consumed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const PREFETCH_WINDOW: u64 = 256 << 20;
/// Paths queued for read-ahead; more are dropped (read-ahead is only a hint).
const PREFETCH_QUEUE: usize = 4096;

impl Prefetcher {
    fn start() -> Prefetcher {
        use std::sync::atomic::Ordering;
        let (hints, queue) = std::sync::mpsc::sync_channel::<PathBuf>(PREFETCH_QUEUE);
        let consumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, halt) = (consumed.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("backupd-prefetch".into())
            .spawn(move || {
                let mut advised = 0u64;
                for path in queue {
                    while advised.saturating_sub(seen.load(Ordering::Relaxed)) > PREFETCH_WINDOW {
                        if halt.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    let Ok(file) = File::open(&path) else {
                        continue;
                    };
                    let Ok(meta) = file.metadata() else { continue };
                    if meta.is_file() && meta.len() > 0 {
                        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
                        advised += meta.len();
                    }
                }
            })
            .ok();
        Prefetcher {
            hints: Some(hints),
            consumed,
            stop,
            thread,
        }
    }

    fn hint(&self, path: PathBuf) {
        if let Some(hints) = &self.hints {
            let _ = hints.try_send(path);
        }
    }

    fn consumed(&self, bytes: u64) {
        self.consumed
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.hints = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A backup of trees built step by step: roots (optionally with exclusions) and files whose
/// content is given rather than read (such as PostgreSQL's `backup_label`).
pub struct TreeBackup<'a, W: Write, R: EntryRecorder> {
    walker: Walker<'a, W, R>,
}

impl<'a, W: Write, R: EntryRecorder> TreeBackup<'a, W, R> {
    pub fn new(
        policy: UnreadablePolicy,
        data: &'a mut W,
        recorder: &'a mut R,
        progress: &'a mut dyn FnMut(u64),
    ) -> Self {
        TreeBackup {
            walker: Walker {
                policy,
                data,
                recorder,
                progress,
                offset: 0,
                stats: TreeStats::default(),
                reads: None,
                vanished_ok: false,
                previous: HashMap::new(),
                prefetch: None,
            },
        }
    }

    /// Makes this an incremental backup: a file whose path, size and mtime match `previous`
    /// (keyed by entry path) and whose content still has the recorded BLAKE3 is recorded as
    /// unchanged instead of stored. The hash check catches changes that keep size and mtime.
    pub fn incremental_since(&mut self, previous: HashMap<Vec<u8>, PreviousFile>) {
        self.walker.previous = previous;
    }

    /// Reads ahead: the kernel loads the next files of the walk while the current one is
    /// read and compressed (see `Prefetcher`).
    pub fn read_ahead(&mut self) {
        self.walker.prefetch = Some(Prefetcher::start());
    }

    /// Files that disappear while being backed up are left out silently instead of being
    /// unreadable (a live database server removes files during an online backup).
    pub fn tolerate_vanished_files(&mut self) {
        self.walker.vanished_ok = true;
    }

    /// Adds the tree at `abs` under `label`, without the paths `exclude` rejects.
    pub fn add_root(
        &mut self,
        abs: &Path,
        label: &str,
        exclude: Option<Exclude<'_>>,
    ) -> Result<(), FilesError> {
        let meta = fs::symlink_metadata(abs).map_err(|source| FilesError::Root {
            path: abs.to_path_buf(),
            source,
        })?;
        let prefix_len = label.len() + 1;
        let skip =
            |rel: &[u8]| exclude.is_some_and(|f| rel.len() > prefix_len && f(&rel[prefix_len..]));
        self.walker
            .visit(abs, label.as_bytes().to_vec(), &meta, &skip)
    }

    /// Adds a regular file at `rel` (below the roots' labels) with the given content.
    pub fn add_file(&mut self, rel: &str, content: &[u8], mode: u32) -> Result<(), FilesError> {
        let w = &mut self.walker;
        let start = w.offset;
        w.data.write_all(content).map_err(FilesError::Output)?;
        w.offset += content.len() as u64;
        (w.progress)(content.len() as u64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let e = FileEntry {
            path: EntryPath::from_bytes(rel.as_bytes()),
            kind: EntryKind::File,
            mode,
            uid: 0,
            gid: 0,
            mtime: now.as_secs() as i64,
            mtime_nsec: now.subsec_nanos(),
            size: content.len() as u64,
            offset: Some(start),
            blake3: Some(blake3::hash(content).to_hex().to_string()),
            target: None,
            unchanged_from: None,
        };
        w.record(e)?;
        w.stats.files += 1;
        w.stats.bytes += content.len() as u64;
        Ok(())
    }

    /// Adds a regular file at `rel` whose content is read from `content` to its end, in
    /// bounded memory (a database's export streamed from a cursor); returns its size.
    pub fn add_stream(
        &mut self,
        rel: &str,
        content: &mut dyn Read,
        mode: u32,
    ) -> Result<u64, FilesError> {
        let w = &mut self.walker;
        let start = w.offset;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FilesError::Source(format!("{rel}: {e}"))),
            };
            hasher.update(&buf[..n]);
            w.data.write_all(&buf[..n]).map_err(FilesError::Output)?;
            size += n as u64;
            (w.progress)(n as u64);
        }
        w.offset += size;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        w.record(FileEntry {
            path: EntryPath::from_bytes(rel.as_bytes()),
            kind: EntryKind::File,
            mode,
            uid: 0,
            gid: 0,
            mtime: now.as_secs() as i64,
            mtime_nsec: now.subsec_nanos(),
            size,
            offset: Some(start),
            blake3: Some(hasher.finalize().to_hex().to_string()),
            target: None,
            unchanged_from: None,
        })?;
        w.stats.files += 1;
        w.stats.bytes += size;
        Ok(size)
    }

    pub fn finish(self) -> TreeStats {
        self.walker.stats
    }
}

struct Walker<'a, W: Write, R: EntryRecorder> {
    policy: UnreadablePolicy,
    data: &'a mut W,
    recorder: &'a mut R,
    progress: &'a mut dyn FnMut(u64),
    offset: u64,
    stats: TreeStats,
    /// Started by the first walk; reads the next files ahead of it.
    reads: Option<ParallelReads>,
    /// A path that vanished mid-walk is left out rather than unreadable.
    vanished_ok: bool,
    /// Incremental backups: what the previous backup recorded, by entry path.
    previous: HashMap<Vec<u8>, PreviousFile>,
    prefetch: Option<Prefetcher>,
}

impl<W: Write, R: EntryRecorder> Walker<'_, W, R> {
    /// Depth-first with an explicit stack, so deep trees cannot overflow the thread stack.
    /// Paths `skip` accepts (and everything below them) are left out.
    fn visit(
        &mut self,
        abs: &Path,
        rel: Vec<u8>,
        meta: &fs::Metadata,
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<(), FilesError> {
        if self.reads.is_none() {
            self.reads = Some(ParallelReads::start().map_err(FilesError::Threads)?);
        }
        let mut stack = vec![(abs.to_path_buf(), rel, meta.clone())];
        loop {
            self.read_ahead_of(&stack);
            let Some((path, rel, meta)) = stack.pop() else {
                break;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                let children = match read_dir_sorted(&path) {
                    Ok(c) => c,
                    Err(source) => {
                        self.unreadable(&path, &rel, source)?;
                        continue;
                    }
                };
                self.record(entry_for(&rel, EntryKind::Dir, &meta))?;
                self.stats.dirs += 1;
                if let Some(prefetch) = &self.prefetch {
                    for name in &children {
                        prefetch.hint(path.join(name));
                    }
                }
                // Reverse so the stack pops children in name order.
                for name in children.into_iter().rev() {
                    let child = path.join(&name);
                    let mut child_rel = rel.clone();
                    child_rel.push(b'/');
                    child_rel.extend_from_slice(name.as_bytes());
                    if skip(&child_rel) {
                        continue;
                    }
                    match fs::symlink_metadata(&child) {
                        Ok(m) => stack.push((child, child_rel, m)),
                        Err(source) => self.unreadable(&child, &child_rel, source)?,
                    }
                }
            } else if ft.is_symlink() {
                match fs::read_link(&path) {
                    Ok(target) => {
                        let mut e = entry_for(&rel, EntryKind::Symlink, &meta);
                        e.target = Some(EntryPath::from_bytes(target.as_os_str().as_bytes()));
                        self.record(e)?;
                        self.stats.symlinks += 1;
                    }
                    Err(source) => self.unreadable(&path, &rel, source)?,
                }
            } else if ft.is_file() {
                self.file(&path, &rel, &meta)?;
            } else {
                // FIFOs, sockets and devices carry no content worth restoring; say so in the manifest.
                let error = "special file (fifo, socket or device) is not backed up".to_string();
                tracing::warn!(path = %path.display(), "{error}");
                self.recorder
                    .skipped(SkippedEntry {
                        path: EntryPath::from_bytes(&rel),
                        error,
                    })
                    .map_err(FilesError::Output)?;
                self.stats.skipped += 1;
            }
        }
        Ok(())
    }

    /// Submits reads for the regular files the walk reaches next: those on top of the stack
    /// up to the first directory (a directory pushes its children above what follows it, so
    /// only files before it are next in order), at most `readers::WINDOW` ahead.
    fn read_ahead_of(&mut self, stack: &[(PathBuf, Vec<u8>, fs::Metadata)]) {
        let Some(reads) = self.reads.as_mut() else {
            return;
        };
        let mut already = reads.pending();
        for (path, rel, meta) in stack.iter().rev() {
            if reads.pending() >= readers::WINDOW || meta.is_dir() {
                break;
            }
            if !meta.is_file() {
                continue;
            }
            if already > 0 {
                already -= 1;
                continue;
            }
            let expected = self.previous.get(rel.as_slice()).and_then(|p| {
                (p.size == meta.len()
                    && p.mtime == meta.mtime()
                    && p.mtime_nsec == meta.mtime_nsec() as u32)
                    .then(|| (p.size, p.blake3.clone()))
            });
            reads.submit(path, expected);
        }
    }

    fn file(&mut self, path: &Path, rel: &[u8], meta: &fs::Metadata) -> Result<(), FilesError> {
        let read = self.reads.as_mut().and_then(ParallelReads::next);
        let Some(read) = read.filter(|r| r.path == path) else {
            unreachable!(
                "the walk reads {} out of the submitted order",
                path.display()
            );
        };
        let start = self.offset;
        loop {
            let message = read.messages.recv().unwrap_or_else(|_| {
                ReadMsg::Failed(io::Error::other("the file reader thread stopped"))
            });
            match message {
                ReadMsg::Chunk(buf) => {
                    let n = buf.len() as u64;
                    self.data.write_all(&buf).map_err(FilesError::Output)?;
                    self.offset += n;
                    (self.progress)(n);
                    if let Some(prefetch) = &self.prefetch {
                        prefetch.consumed(n);
                    }
                    if let Some(reads) = &self.reads {
                        reads.recycle(buf);
                    }
                }
                ReadMsg::Unchanged { size } => {
                    if let Some(prefetch) = &self.prefetch {
                        prefetch.consumed(size);
                    }
                    let previous = &self.previous[rel];
                    let mut e = entry_for(rel, EntryKind::File, meta);
                    e.size = size;
                    e.blake3 = Some(previous.blake3.clone());
                    e.unchanged_from = Some(previous.stored_in);
                    self.record(e)?;
                    self.stats.unchanged += 1;
                    self.stats.files += 1;
                    return Ok(());
                }
                ReadMsg::End { size, blake3 } => {
                    debug_assert_eq!(size, self.offset - start);
                    let mut e = entry_for(rel, EntryKind::File, meta);
                    e.size = size;
                    e.offset = Some(start);
                    e.blake3 = Some(blake3.to_hex().to_string());
                    self.record(e)?;
                    self.stats.files += 1;
                    self.stats.bytes += size;
                    return Ok(());
                }
                // Bytes already written stay in the stream unreferenced; offsets keep restore correct.
                ReadMsg::Failed(source) => return self.unreadable(path, rel, source),
            }
        }
    }

    fn record(&mut self, e: FileEntry) -> Result<(), FilesError> {
        self.recorder.entry(&e).map_err(FilesError::Output)
    }

    fn unreadable(&mut self, path: &Path, rel: &[u8], source: io::Error) -> Result<(), FilesError> {
        if self.vanished_ok && source.kind() == io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), "vanished during the backup; left out");
            return Ok(());
        }
        match self.policy {
            UnreadablePolicy::Fail => Err(FilesError::Unreadable {
                path: path.to_path_buf(),
                source,
            }),
            UnreadablePolicy::Skip => {
                tracing::warn!(path = %path.display(), error = %source, "skipping unreadable path");
                self.recorder
                    .skipped(SkippedEntry {
                        path: EntryPath::from_bytes(rel),
                        error: source.to_string(),
                    })
                    .map_err(FilesError::Output)?;
                self.stats.skipped += 1;
                Ok(())
            }
        }
    }
}

fn read_dir_sorted(path: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names = fs::read_dir(path)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn entry_for(rel: &[u8], kind: EntryKind, meta: &fs::Metadata) -> FileEntry {
    FileEntry {
        path: EntryPath::from_bytes(rel),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        size: 0,
        offset: None,
        blake3: None,
        target: None,
        unchanged_from: None,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Restores entries (in manifest order) from `data` into `target`.
///
/// Symlinks are created last, so no file write can follow a restored link out
/// of the target; entry paths must be relative without `..`. Directory modes
/// and mtimes are applied after their contents, deepest first.
pub struct TreeRestorer<'a, R: Read> {
    target: PathBuf,
    data: R,
    position: u64,
    restore_owner: bool,
    writers: writers::FileWriters,
    dirs: Vec<(PathBuf, FileEntry)>,
    symlinks: Vec<(PathBuf, FileEntry)>,
    created_dirs: HashSet<PathBuf>,
    stats: RestoreStats,
    progress: &'a mut dyn FnMut(u64),
    /// Overlay mode (a later backup of an incremental chain): every path restored or kept,
    /// so `finish` can remove what this backup no longer has.
    listed: Option<HashSet<PathBuf>>,
}

impl<'a, R: Read> TreeRestorer<'a, R> {
    /// Restores over the previous layers of an incremental chain: files marked unchanged
    /// must already be there (with their recorded size), and paths this backup does not list
    /// are removed by `finish`.
    pub fn overlay(mut self) -> Self {
        self.listed = Some(HashSet::new());
        self
    }

    /// Calls `hook` with each file's path as soon as that file is complete and checked, so
    /// a consumer can use it while later files are still being restored.
    pub fn on_file_restored(self, hook: FileRestored) -> Self {
        self.writers.on_file_restored(hook);
        self
    }

    pub fn new(target: &Path, data: R, progress: &'a mut dyn FnMut(u64)) -> Self {
        Self {
            target: target.to_path_buf(),
            data,
            position: 0,
            // Only root can give files away; others keep their own uid like tar does.
            restore_owner: is_root(),
            writers: writers::FileWriters::new(),
            dirs: Vec::new(),
            symlinks: Vec::new(),
            created_dirs: HashSet::new(),
            stats: RestoreStats::default(),
            progress,
            listed: None,
        }
    }

    pub fn entry(&mut self, e: FileEntry) -> Result<(), FilesError> {
        let rel = safe_relative(&e.path)?;
        let dest = self.target.join(&rel);
        if let Some(listed) = &mut self.listed {
            listed.insert(dest.clone());
        }
        if e.kind == EntryKind::File && e.unchanged_from.is_some() {
            return self.unchanged_file(&dest, &e);
        }
        match e.kind {
            EntryKind::Dir => {
                self.ensure_dir(&dest)?;
                self.stats.dirs += 1;
                self.dirs.push((dest, e));
            }
            EntryKind::Symlink => self.symlinks.push((dest, e)),
            EntryKind::File => self.file(&dest, &e)?,
        }
        Ok(())
    }

    fn ensure_dir(&mut self, dir: &Path) -> Result<(), FilesError> {
        if self.created_dirs.contains(dir) {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(|source| FilesError::Restore {
            path: dir.to_path_buf(),
            source,
        })?;
        self.created_dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn file(&mut self, dest: &Path, e: &FileEntry) -> Result<(), FilesError> {
        let path = e.path.display();
        let offset = e.offset.unwrap_or(self.position);
        if offset < self.position {
            return Err(FilesError::OffsetOutOfOrder {
                path,
                offset,
                position: self.position,
            });
        }
        // Skip bytes of files that were skipped part-way through at backup time.
        let gap = offset - self.position;
        if gap > 0 {
            let copied =
                io::copy(&mut (&mut self.data).take(gap), &mut io::sink()).map_err(|source| {
                    FilesError::Input {
                        path: path.clone(),
                        source,
                    }
                })?;
            if copied != gap {
                return Err(FilesError::Input {
                    path,
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            self.position += gap;
        }
        if let Some(parent) = dest.parent() {
            self.ensure_dir(parent)?;
        }
        let slot = self.writers.open(dest.to_path_buf())?;
        let mut left = e.size;
        while left > 0 {
            let want = left.min(COPY_BUFFER as u64) as usize;
            let mut chunk = self.writers.buffer(want);
            let n = match self.data.read(&mut chunk) {
                Ok(0) => {
                    return Err(FilesError::Input {
                        path,
                        source: io::ErrorKind::UnexpectedEof.into(),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(FilesError::Input { path, source }),
            };
            chunk.truncate(n);
            self.writers.data(slot, chunk)?;
            left -= n as u64;
            self.position += n as u64;
            (self.progress)(n as u64);
        }
        // The writer thread checks the BLAKE3 before it applies the metadata.
        self.writers.close(slot, e.clone(), self.restore_owner)?;
        self.stats.files += 1;
        self.stats.bytes += e.size;
        Ok(())
    }

    /// A file an earlier layer of the chain restored: check it is there, apply metadata.
    fn unchanged_file(&mut self, dest: &Path, e: &FileEntry) -> Result<(), FilesError> {
        let found = fs::symlink_metadata(dest)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        if found != Some(e.size) {
            return Err(FilesError::ChecksumMismatch {
                path: e.path.display(),
                expected: format!(
                    "{} bytes restored from backup {}",
                    e.size,
                    e.unchanged_from.map(|b| b.to_string()).unwrap_or_default()
                ),
                found: found.map_or("no such file".into(), |n| format!("{n} bytes")),
            });
        }
        apply_metadata(dest, e, self.restore_owner).map_err(|source| FilesError::Restore {
            path: dest.to_path_buf(),
            source,
        })?;
        self.stats.files += 1;
        Ok(())
    }

    /// Overlay mode: removes what earlier layers restored and this backup does not list.
    fn remove_unlisted(&self, listed: &HashSet<PathBuf>) -> Result<(), FilesError> {
        let mut stack = vec![self.target.clone()];
        while let Some(dir) = stack.pop() {
            let entries = fs::read_dir(&dir).map_err(|source| FilesError::Restore {
                path: dir.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| FilesError::Restore {
                    path: dir.clone(),
                    source,
                })?;
                let path = entry.path();
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let gone = |source| FilesError::Restore {
                    path: path.clone(),
                    source,
                };
                if !listed.contains(&path) {
                    if is_dir {
                        fs::remove_dir_all(&path).map_err(gone)?;
                    } else {
                        fs::remove_file(&path).map_err(gone)?;
                    }
                } else if is_dir {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    /// Creates symlinks and applies directory metadata; call after the last entry.
    pub fn finish(mut self) -> Result<RestoreStats, FilesError> {
        // Every file must be complete before symlinks and directory times are applied.
        std::mem::take(&mut self.writers).join()?;
        if let Some(listed) = self.listed.take() {
            self.remove_unlisted(&listed)?;
        }
        for (dest, e) in std::mem::take(&mut self.symlinks) {
            let target = e
                .target
                .as_ref()
                .map(|t| t.to_bytes())
                .transpose()
                .map_err(|_| FilesError::UnsafePath {
                    path: e.path.display(),
                    reason: "symlink target is not decodable",
                })?;
            let target = target.unwrap_or_default();
            if let Some(parent) = dest.parent() {
                self.ensure_dir(parent)?;
            }
            let restore_err = |source| FilesError::Restore {
                path: dest.clone(),
                source,
            };
            if fs::symlink_metadata(&dest).is_ok() {
                fs::remove_file(&dest).map_err(restore_err)?;
            }
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest).map_err(restore_err)?;
            apply_metadata(&dest, &e, self.restore_owner).map_err(restore_err)?;
            self.stats.symlinks += 1;
        }
        // Deepest first, so setting a parent's mtime is not undone by its children.
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
        for (dest, e) in &self.dirs {
            apply_metadata(dest, e, self.restore_owner).map_err(|source| FilesError::Restore {
                path: dest.clone(),
                source,
            })?;
        }
        Ok(self.stats)
    }
}

fn safe_relative(path: &EntryPath) -> Result<PathBuf, FilesError> {
    let bytes = path.to_bytes().map_err(|_| FilesError::UnsafePath {
        path: path.display(),
        reason: "not decodable",
    })?;
    let p = Path::new(OsStr::from_bytes(&bytes));
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(FilesError::UnsafePath {
            path: path.display(),
            reason: "empty or contains NUL",
        });
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::CurDir => {}
            _ => {
                return Err(FilesError::UnsafePath {
                    path: path.display(),
                    reason: "must be relative without `..`",
                })
            }
        }
    }
    Ok(p.to_path_buf())
}

fn apply_metadata(dest: &Path, e: &FileEntry, restore_owner: bool) -> io::Result<()> {
    let mtime = filetime::FileTime::from_unix_time(e.mtime, e.mtime_nsec);
    if e.kind == EntryKind::Symlink {
        if restore_owner {
            std::os::unix::fs::lchown(dest, Some(e.uid), Some(e.gid))?;
        }
        return filetime::set_symlink_file_times(dest, mtime, mtime);
    }
    if restore_owner {
        std::os::unix::fs::chown(dest, Some(e.uid), Some(e.gid))?;
    }
    // chown clears setuid bits, so permissions come after it.
    fs::set_permissions(dest, fs::Permissions::from_mode(e.mode))?;
    filetime::set_file_times(dest, mtime, mtime)
}

/// Whether this process runs as root (then restores also restore ownership).
pub fn is_root() -> bool {
    // /proc/self belongs to the process's effective uid; avoids unsafe FFI for geteuid().
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

mod writers;
pub use writers::FileRestored;

#[cfg(test)]
mod tests;
