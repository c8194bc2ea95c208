//! Repository sinks: where backup artifacts are stored.
//!
//! A repository holds immutable objects named by keys such as
//! `backups/<uuid>/data-0000.bkpd` (rules in [`key`]). Every backend implements the small
//! [`Sink`] trait; the engine uses the closed enum [`AnySink`]. Behaviour that applies to any
//! backend (fault injection today; retries, timeouts and metrics later) wraps a sink as a
//! layer, in the style of OpenDAL.
//!
//! Contract highlights, checked for every backend by `backup_testing::sink::sink_conformance`:
//! a `put` is atomic and durable when it returns, and its receipt carries the SHA-256 of
//! exactly the bytes stored, computed by the sink; objects are never overwritten with other
//! content; every call stops promptly when its `CancellationToken` fires.

use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

mod any;
mod error;
pub mod faults;
pub mod key;
mod local;
mod memory;
#[cfg(feature = "s3")]
pub mod s3;
pub mod stream;

pub use any::AnySink;
pub use error::{ErrorKind, IoOp, SinkError};
pub use faults::{Fault, FaultPlan, FaultRule, FaultySink, Op};
pub use key::{validate_key, validate_prefix};
pub use local::LocalSink;
pub use memory::MemorySink;
#[cfg(feature = "s3")]
pub use s3::{
    ObjectLock, ObjectLockMode, RestoreRequested, RestoreTier, S3Credentials, S3Options, S3Sink,
    SecretSource, ThawState, UnknownRestoreTier,
};
pub use stream::{byte_stream_from, ChannelReader, ChannelWriter};

/// Object data in flight: a bounded channel of chunks. The stream ends (`None`) only after
/// all data; a failure is an `Err` item, after which the stream carries nothing useful.
pub type ByteStream = tokio::sync::mpsc::Receiver<io::Result<Bytes>>;

/// Proof of a completed `put`: what the sink itself counted and hashed while storing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutReceipt {
    pub size: u64,
    pub sha256: [u8; 32],
}

impl PutReceipt {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// What `head` and `list` report about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
    /// Backend storage class (e.g. S3 `GLACIER`); `None` where the backend has none.
    pub storage_class: Option<String>,
}

/// What a backend can do, as data, so callers branch on values rather than types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Objects must be restored (thawed) before `get` works, as in deep-archive tiers.
    pub needs_restore_before_read: bool,
    /// Readers never observe a partially written object.
    pub atomic_put: bool,
    /// The backend verifies a checksum sent with the upload on its side.
    pub server_side_checksum: bool,
}

/// A repository backend.
///
/// Methods are `async` (implementations write `async fn`); the returned futures are `Send`
/// so generic code can spawn them. Every method takes a `CancellationToken`, checks it on
/// entry, and returns [`SinkError::Cancelled`] promptly once it fires.
pub trait Sink: Send + Sync {
    /// Repository name, used in errors and logs.
    fn name(&self) -> &str;

    fn capabilities(&self) -> Capabilities;

    /// Stores the stream under `key` atomically: readers never see a partial object.
    ///
    /// If the stream yields an `Err`, or `cancel` fires, nothing is left under `key` and the
    /// error is returned. Returns only once the object is durable. Refuses to overwrite an
    /// existing key with different content ([`SinkError::AlreadyExists`]); putting
    /// identical bytes again succeeds, which makes retried uploads idempotent.
    fn put(
        &self,
        key: &str,
        body: ByteStream,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<PutReceipt, SinkError>> + Send;

    /// Streams the object in chunks through a bounded channel; [`SinkError::NotFound`] if
    /// absent. A failure while streaming arrives as an `Err` item (use
    /// [`SinkError::from_stream`] to recover the sink error); `cancel` keeps governing the
    /// stream after `get` returns. A stream never ends cleanly before the whole object.
    fn get(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<ByteStream, SinkError>> + Send;

    fn head(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Option<ObjectInfo>, SinkError>> + Send;

    /// All objects whose key starts with `prefix` ("" = all), sorted by key, excluding
    /// in-progress uploads.
    fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Vec<ObjectInfo>, SinkError>> + Send;

    /// Idempotent: deleting a missing key is `Ok`.
    fn delete(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Removes leftovers of interrupted puts (local temp files; S3 incomplete multipart
    /// uploads) under `prefix` ("" = everywhere) older than `older_than`, which must exceed
    /// the longest pause of a live upload (or be zero for a prefix whose writer is known to
    /// be dead). Returns how many were removed.
    fn sweep_incomplete(
        &self,
        prefix: &str,
        older_than: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<u64, SinkError>> + Send;
}

/// Reads an object back and returns its size and SHA-256, for quick verification against
/// a [`PutReceipt`] or a manifest.
pub async fn sha256_of_object(
    sink: &impl Sink,
    key: &str,
    cancel: &CancellationToken,
) -> Result<(u64, [u8; 32]), SinkError> {
    let mut stream = sink.get(key, cancel).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(item) = stream::recv_or_cancel(&mut stream, cancel).await? {
        let chunk = item.map_err(|e| SinkError::from_stream(sink.name(), key, e))?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((size, hasher.finalize().into()))
}

/// Reads a whole object into memory; for small objects (manifests, indexes) and tests.
pub async fn read_object(
    sink: &impl Sink,
    key: &str,
    cancel: &CancellationToken,
) -> Result<Vec<u8>, SinkError> {
    let mut stream = sink.get(key, cancel).await?;
    let mut data = Vec::new();
    while let Some(item) = stream::recv_or_cancel(&mut stream, cancel).await? {
        let chunk = item.map_err(|e| SinkError::from_stream(sink.name(), key, e))?;
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

/// Stores an in-memory buffer; for small objects (manifests, indexes) and tests.
pub async fn put_bytes(
    sink: &impl Sink,
    key: &str,
    data: impl Into<Bytes>,
    cancel: &CancellationToken,
) -> Result<PutReceipt, SinkError> {
    sink.put(key, byte_stream_from(data, stream::CHUNK_SIZE), cancel)
        .await
}
