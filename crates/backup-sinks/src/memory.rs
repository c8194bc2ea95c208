//! An in-memory repository for tests: same contract as the real sinks (it passes the
//! conformance suite), no disk, deterministic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::stream::{byte_stream_from, recv_or_cancel, CHUNK_SIZE};
use crate::{
    validate_key, validate_prefix, ByteStream, Capabilities, ObjectInfo, PutReceipt, Sink,
    SinkError,
};

/// A repository held in memory. Clones share the same objects.
#[derive(Debug, Clone)]
pub struct MemorySink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    objects: Mutex<BTreeMap<String, Object>>,
}

#[derive(Debug)]
struct Object {
    data: Bytes,
    sha256: [u8; 32],
    modified: SystemTime,
}

impl MemorySink {
    pub fn new(name: impl Into<String>) -> Self {
        MemorySink {
            inner: Arc::new(Inner {
                name: name.into(),
                objects: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.objects().len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects().is_empty()
    }

    /// Flips bits of a stored byte, simulating corruption at rest for verify tests.
    /// Returns false if the object or offset does not exist.
    pub fn corrupt(&self, key: &str, offset: usize, mask: u8) -> bool {
        let mut objects = self.objects();
        let Some(object) = objects.get_mut(key) else {
            return false;
        };
        if offset >= object.data.len() {
            return false;
        }
        let mut data = BytesMut::from(&object.data[..]);
        data[offset] ^= mask;
        object.data = data.freeze();
        true
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Object>> {
        // A panic elsewhere cannot leave the map half-updated (every update is one insert
        // or remove), so a poisoned lock is still safe to use.
        self.inner
            .objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Sink for MemorySink {
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
        mut body: ByteStream,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        validate_key(key)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        let mut data = BytesMut::new();
        while let Some(item) = recv_or_cancel(&mut body, cancel).await? {
            let chunk = item.map_err(|e| SinkError::body(self.name(), key, e))?;
            data.extend_from_slice(&chunk);
        }
        let data = data.freeze();
        let receipt = PutReceipt {
            size: data.len() as u64,
            sha256: Sha256::digest(&data).into(),
        };
        let mut objects = self.objects();
        match objects.get(key) {
            Some(existing) if existing.sha256 == receipt.sha256 && existing.data == data => {}
            Some(_) => return Err(SinkError::already_exists(self.name(), key)),
            None => {
                objects.insert(
                    key.to_owned(),
                    Object {
                        data,
                        sha256: receipt.sha256,
                        modified: SystemTime::now(),
                    },
                );
            }
        }
        Ok(receipt)
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<ByteStream, SinkError> {
        validate_key(key)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        let data = match self.objects().get(key) {
            Some(object) => object.data.clone(),
            None => return Err(SinkError::not_found(self.name(), key)),
        };
        Ok(byte_stream_from(data, CHUNK_SIZE))
    }

    async fn head(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<ObjectInfo>, SinkError> {
        validate_key(key)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        Ok(self.objects().get(key).map(|o| info(key, o)))
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, SinkError> {
        validate_prefix(prefix)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        Ok(self
            .objects()
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, object)| info(key, object))
            .collect())
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), SinkError> {
        validate_key(key)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        self.objects().remove(key);
        Ok(())
    }

    /// Nothing to sweep: an interrupted put never reaches the map.
    async fn sweep_incomplete(
        &self,
        prefix: &str,
        _older_than: Duration,
        cancel: &CancellationToken,
    ) -> Result<u64, SinkError> {
        validate_prefix(prefix)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        Ok(0)
    }
}

fn info(key: &str, object: &Object) -> ObjectInfo {
    ObjectInfo {
        key: key.to_owned(),
        size: object.data.len() as u64,
        modified: object.modified,
        storage_class: None,
    }
}
