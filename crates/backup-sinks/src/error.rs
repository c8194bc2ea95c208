//! The one error type of this crate.
//!
//! Every message names the repository and the object so an operator can act on it without
//! a debugger, and [`SinkError::kind`] tells retry layers whether trying again can help.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Whether retrying the same operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying will fail the same way until something outside changes (bad key, disk full,
    /// permissions, content conflict, cancellation).
    Permanent,
    /// A transient condition (timeouts, resets, device hiccups); a retry may succeed.
    Temporary,
}

/// The filesystem or network step that failed, so the message says more than "I/O error".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoOp {
    Open,
    Read,
    Write,
    Sync,
    Publish,
    CreateDir,
    Stat,
    List,
    Delete,
    Sweep,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Open => "opening object",
            IoOp::Read => "reading object",
            IoOp::Write => "writing object",
            IoOp::Sync => "fsyncing object",
            IoOp::Publish => "publishing object",
            IoOp::CreateDir => "creating the directory for object",
            IoOp::Stat => "inspecting object",
            IoOp::List => "listing objects under",
            IoOp::Delete => "deleting object",
            IoOp::Sweep => "sweeping incomplete uploads under",
        })
    }
}

/// Errors of repository sinks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("repository {repository:?}: object {key:?} not found")]
    NotFound { repository: String, key: String },

    #[error(
        "repository {repository:?}: object {key:?} already exists with different content; \
         objects are immutable, so write the new data under a new key"
    )]
    AlreadyExists { repository: String, key: String },

    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    #[error(
        "repository {repository:?}: {op} {key:?} failed: {source}{}",
        io_hint(source)
    )]
    Io {
        repository: String,
        key: String,
        op: IoOp,
        source: io::Error,
    },

    /// The caller's data stream failed; nothing was stored.
    #[error(
        "repository {repository:?}: the data to store as object {key:?} could not be read, \
         nothing was stored: {source}"
    )]
    Body {
        repository: String,
        key: String,
        source: io::Error,
    },

    #[error("operation cancelled")]
    Cancelled,

    #[error(
        "repository {repository:?}: object {key:?} is corrupt: expected sha256 {expected}, \
         read {actual}; restore it from another copy"
    )]
    ChecksumMismatch {
        repository: String,
        key: String,
        expected: String,
        actual: String,
    },

    /// A remote object store (S3) refused or failed a request. `message` already says what to
    /// do; `temporary` is what [`SinkError::kind`] reports.
    #[error("repository {repository:?}: {op} {key:?} in bucket {bucket:?} failed: {message}")]
    Remote {
        repository: String,
        bucket: String,
        /// The full key in the bucket (or the prefix, for listings).
        key: String,
        op: IoOp,
        /// The service's error code (`AccessDenied`, `NoSuchBucket`, `SlowDown`, ...), if any.
        code: Option<String>,
        message: String,
        temporary: bool,
    },

    /// The repository itself cannot be used (missing, not a directory, not writable).
    #[error("repository {repository:?} at {}: {problem}", path.display())]
    Unusable {
        repository: String,
        path: PathBuf,
        problem: String,
    },
}

impl SinkError {
    pub fn io(repository: &str, key: &str, op: IoOp, source: io::Error) -> Self {
        SinkError::Io {
            repository: repository.to_owned(),
            key: key.to_owned(),
            op,
            source,
        }
    }

    pub fn not_found(repository: &str, key: &str) -> Self {
        SinkError::NotFound {
            repository: repository.to_owned(),
            key: key.to_owned(),
        }
    }

    pub fn already_exists(repository: &str, key: &str) -> Self {
        SinkError::AlreadyExists {
            repository: repository.to_owned(),
            key: key.to_owned(),
        }
    }

    pub fn body(repository: &str, key: &str, source: io::Error) -> Self {
        SinkError::Body {
            repository: repository.to_owned(),
            key: key.to_owned(),
            source,
        }
    }

    /// Turns an error read from an object's [`ByteStream`](crate::ByteStream) back into a
    /// `SinkError`: sinks wrap their own errors (e.g. `Cancelled`) in the `io::Error` they
    /// send, and those are unwrapped here; anything else becomes an `Io` read error.
    pub fn from_stream(repository: &str, key: &str, error: io::Error) -> Self {
        if error.get_ref().is_some_and(|inner| inner.is::<SinkError>()) {
            let inner = error.into_inner().expect("checked: wraps an error");
            return *inner
                .downcast::<SinkError>()
                .expect("checked: is a SinkError");
        }
        SinkError::io(repository, key, IoOp::Read, error)
    }

    /// Wraps this error in an `io::Error` so it can travel through a `ByteStream`;
    /// [`SinkError::from_stream`] recovers it.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            SinkError::Io { source, .. } | SinkError::Body { source, .. } => source.kind(),
            SinkError::NotFound { .. } => io::ErrorKind::NotFound,
            SinkError::Cancelled => io::ErrorKind::Other,
            SinkError::ChecksumMismatch { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// Permanent or temporary, for retry layers.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SinkError::Io { source, .. } => io_kind(source),
            // The stream was consumed: a retry needs a new stream from the caller.
            SinkError::Body { .. } => ErrorKind::Permanent,
            SinkError::Remote { temporary, .. } => {
                if *temporary {
                    ErrorKind::Temporary
                } else {
                    ErrorKind::Permanent
                }
            }
            SinkError::NotFound { .. }
            | SinkError::AlreadyExists { .. }
            | SinkError::InvalidKey { .. }
            | SinkError::Cancelled
            | SinkError::ChecksumMismatch { .. }
            | SinkError::Unusable { .. } => ErrorKind::Permanent,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        matches!(self, SinkError::Cancelled)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, SinkError::NotFound { .. })
    }
}

fn io_kind(error: &io::Error) -> ErrorKind {
    use io::ErrorKind as K;
    match error.kind() {
        K::NotFound
        | K::PermissionDenied
        | K::AlreadyExists
        | K::InvalidInput
        | K::InvalidData
        | K::StorageFull
        | K::QuotaExceeded
        | K::ReadOnlyFilesystem
        | K::NotADirectory
        | K::IsADirectory
        | K::FileTooLarge
        | K::Unsupported => ErrorKind::Permanent,
        // Timeouts, resets, EIO and anything unknown: worth another try.
        _ => ErrorKind::Temporary,
    }
}

/// What to do about common OS errors, appended to the message.
pub(crate) fn io_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSPC) => {
            return "; the repository's filesystem is full: free space (e.g. prune old backups) \
                    or grow the volume, then run the backup again"
        }
        Some(libc::EDQUOT) => {
            return "; the disk quota of the backupd user is exhausted: raise the quota or \
                    free space, then run the backup again"
        }
        Some(libc::EIO) => {
            return "; the storage device reported an I/O error: check the kernel log (dmesg) \
                    and the health of the disk"
        }
        _ => {}
    }
    match error.kind() {
        io::ErrorKind::StorageFull => {
            "; the repository's storage is full: free space or grow it, then run the backup again"
        }
        io::ErrorKind::QuotaExceeded => "; a storage quota is exhausted: raise it or free space",
        io::ErrorKind::PermissionDenied => {
            "; check that the user running backupd may read and write the repository"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            "; the repository's filesystem is mounted read-only: remount it read-write"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_message_names_repository_key_operation_and_hint() {
        let e = SinkError::io(
            "offsite",
            "backups/x/data-0000.bkpd",
            IoOp::Write,
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let msg = e.to_string();
        assert!(msg.contains("\"offsite\""), "{msg}");
        assert!(msg.contains("\"backups/x/data-0000.bkpd\""), "{msg}");
        assert!(msg.contains("writing"), "{msg}");
        assert!(msg.contains("No space left on device"), "{msg}");
        assert!(msg.contains("free space"), "{msg}");
        assert_eq!(e.kind(), ErrorKind::Permanent);
    }

    #[test]
    fn kinds() {
        let timeout = SinkError::io("r", "k", IoOp::Read, io::ErrorKind::TimedOut.into());
        assert_eq!(timeout.kind(), ErrorKind::Temporary);
        assert_eq!(SinkError::Cancelled.kind(), ErrorKind::Permanent);
        assert_eq!(SinkError::not_found("r", "k").kind(), ErrorKind::Permanent);
    }

    #[test]
    fn stream_round_trip_keeps_the_variant() {
        let e = SinkError::from_stream("r", "k", SinkError::Cancelled.into_io());
        assert!(e.is_cancelled());
        let e = SinkError::from_stream("r", "k", io::ErrorKind::UnexpectedEof.into());
        assert!(matches!(e, SinkError::Io { op: IoOp::Read, .. }), "{e:?}");
    }
}
