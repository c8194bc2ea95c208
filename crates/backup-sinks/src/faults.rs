//! Fault injection as a layer over any sink, so tests can prove that backups and restores
//! survive disk-full, failing reads, corrupted or truncated data and stalls.
//!
//! Faults come from an explicit [`FaultPlan`] (no randomness), so a failing test replays
//! exactly. Each [`FaultRule`] matches an operation and a key prefix and can fire a limited
//! number of times.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stream::{ByteSender, CHANNEL_CAPACITY};
use crate::{
    validate_key, validate_prefix, ByteStream, Capabilities, IoOp, ObjectInfo, PutReceipt, Sink,
    SinkError,
};

/// Sink operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
    Sweep,
}

/// One misbehaviour. Error kinds with an errno equivalent (e.g. `StorageFull` → ENOSPC) are
/// injected as that OS error, so messages read exactly as on a real failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The put accepts `after_bytes` bytes, then fails as a write error of kind `error`,
    /// like a disk filling up. The inner sink sees its stream fail, so it must clean up.
    PutFailsAfter {
        after_bytes: u64,
        error: io::ErrorKind,
    },
    /// The operation fails before reaching the inner sink.
    Fails { op: Op, error: io::ErrorKind },
    /// The get stream delivers `after_bytes` bytes, then an `Err` of kind `error`.
    GetFailsAfter {
        after_bytes: u64,
        error: io::ErrorKind,
    },
    /// The get stream ends cleanly after `at` bytes: a silent truncation readers must catch
    /// with sizes or checksums.
    GetTruncatedAt { at: u64 },
    /// The byte at `offset` of the get stream is XORed with `mask`: silent corruption.
    GetCorruptAt { offset: u64, mask: u8 },
    /// The operation waits `duration` (or until cancelled) before proceeding.
    Stall { op: Op, duration: Duration },
}

impl Fault {
    pub fn op(&self) -> Op {
        match self {
            Fault::PutFailsAfter { .. } => Op::Put,
            Fault::Fails { op, .. } | Fault::Stall { op, .. } => *op,
            Fault::GetFailsAfter { .. }
            | Fault::GetTruncatedAt { .. }
            | Fault::GetCorruptAt { .. } => Op::Get,
        }
    }
}

/// A fault, the keys it applies to, and how often it may fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub fault: Fault,
    /// Applies to keys (or list prefixes) starting with this; "" = all.
    pub key_prefix: String,
    /// Remaining firings; `None` = every time.
    pub times: Option<u32>,
}

impl FaultRule {
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            fault,
            key_prefix: String::new(),
            times: None,
        }
    }

    pub fn for_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    pub fn times(mut self, times: u32) -> Self {
        self.times = Some(times);
        self
    }
}

/// The faults a [`FaultySink`] injects; every matching rule fires on a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// No faults: the layer passes everything through.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Adds `fault` for every key, every time.
    pub fn always(self, fault: Fault) -> Self {
        self.with(FaultRule::new(fault))
    }

    /// Adds `fault` for every key, once.
    pub fn once(self, fault: Fault) -> Self {
        self.with(FaultRule::new(fault).times(1))
    }
}

/// Wraps a sink and injects the faults of its [`FaultPlan`].
#[derive(Debug)]
pub struct FaultySink<S> {
    inner: S,
    plan: Mutex<FaultPlan>,
    fired: AtomicU64,
}

impl<S: Sink> FaultySink<S> {
    pub fn new(inner: S, plan: FaultPlan) -> Self {
        FaultySink {
            inner,
            plan: Mutex::new(plan),
            fired: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Replaces the plan, e.g. to let a retried operation succeed.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = plan;
    }

    /// How many faults were taken by operations so far (a `PutFailsAfter` counts even if
    /// the stream ended before its limit).
    pub fn faults_fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// The faults matching this call; uses up one firing of each.
    fn take_faults(&self, op: Op, key: &str) -> Vec<Fault> {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        let mut faults = Vec::new();
        for rule in &mut plan.rules {
            if rule.fault.op() != op || !key.starts_with(&rule.key_prefix) || rule.times == Some(0)
            {
                continue;
            }
            if let Some(times) = &mut rule.times {
                *times -= 1;
            }
            faults.push(rule.fault.clone());
        }
        self.fired.fetch_add(faults.len() as u64, Ordering::Relaxed);
        faults
    }

    /// Applies stalls and outright failures; returns the faults left for the operation.
    async fn before(
        &self,
        op: Op,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<Fault>, SinkError> {
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        let faults = self.take_faults(op, key);
        for fault in &faults {
            if let Fault::Stall { duration, .. } = fault {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                    _ = tokio::time::sleep(*duration) => {}
                }
            }
        }
        for fault in &faults {
            if let Fault::Fails { error, .. } = fault {
                return Err(SinkError::io(
                    self.inner.name(),
                    key,
                    io_op(op),
                    injected_error(*error),
                ));
            }
        }
        Ok(faults)
    }
}

impl<S: Sink> Sink for FaultySink<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        validate_key(key)?;
        let faults = self.before(Op::Put, key, cancel).await?;
        let fail_after = faults.iter().find_map(|f| match f {
            Fault::PutFailsAfter { after_bytes, error } => Some((*after_bytes, *error)),
            _ => None,
        });
        let Some((limit, kind)) = fail_after else {
            return self.inner.put(key, body, cancel).await;
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (result, injected) = tokio::join!(
            self.inner.put(key, rx, cancel),
            relay_put(body, tx, limit, kind)
        );
        match result {
            Err(SinkError::Body { .. }) if injected => Err(SinkError::io(
                self.inner.name(),
                key,
                IoOp::Write,
                injected_error(kind),
            )),
            other => other,
        }
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<ByteStream, SinkError> {
        validate_key(key)?;
        let faults = self.before(Op::Get, key, cancel).await?;
        let stream = self.inner.get(key, cancel).await?;
        let mut edits = StreamEdits::default();
        for fault in faults {
            match fault {
                Fault::GetCorruptAt { offset, mask } => edits.corrupt.push((offset, mask)),
                Fault::GetTruncatedAt { at } => edits.cut(at, None),
                Fault::GetFailsAfter { after_bytes, error } => edits.cut(after_bytes, Some(error)),
                _ => {}
            }
        }
        if edits.corrupt.is_empty() && edits.cut.is_none() {
            return Ok(stream);
        }
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(relay_get(stream, tx, edits));
        Ok(rx)
    }

    async fn head(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<ObjectInfo>, SinkError> {
        validate_key(key)?;
        self.before(Op::Head, key, cancel).await?;
        self.inner.head(key, cancel).await
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, SinkError> {
        validate_prefix(prefix)?;
        self.before(Op::List, prefix, cancel).await?;
        self.inner.list(prefix, cancel).await
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), SinkError> {
        validate_key(key)?;
        self.before(Op::Delete, key, cancel).await?;
        self.inner.delete(key, cancel).await
    }

    async fn sweep_incomplete(
        &self,
        prefix: &str,
        older_than: Duration,
        cancel: &CancellationToken,
    ) -> Result<u64, SinkError> {
        self.before(Op::Sweep, prefix, cancel).await?;
        self.inner
            .sweep_incomplete(prefix, older_than, cancel)
            .await
    }
}

/// Forwards up to `limit` bytes, then fails the stream. Returns whether it injected the
/// error (false if the body ended, failed on its own, or the inner put stopped first).
async fn relay_put(mut body: ByteStream, tx: ByteSender, limit: u64, kind: io::ErrorKind) -> bool {
    let mut passed = 0u64;
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return false,
            item = body.recv() => item,
        };
        let chunk = match item {
            None => return false,
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return false;
            }
            Some(Ok(chunk)) => chunk,
        };
        let room = limit - passed;
        if chunk.len() as u64 <= room {
            passed += chunk.len() as u64;
            if tx.send(Ok(chunk)).await.is_err() {
                return false;
            }
            continue;
        }
        if room > 0 && tx.send(Ok(chunk.slice(..room as usize))).await.is_err() {
            return false;
        }
        return tx.send(Err(injected_error(kind))).await.is_ok();
    }
}

#[derive(Default)]
struct StreamEdits {
    corrupt: Vec<(u64, u8)>,
    /// Where the stream stops, and the error to send there (`None`: end cleanly).
    cut: Option<(u64, Option<io::ErrorKind>)>,
}

impl StreamEdits {
    fn cut(&mut self, at: u64, error: Option<io::ErrorKind>) {
        if self.cut.is_none_or(|(current, _)| at < current) {
            self.cut = Some((at, error));
        }
    }
}

async fn relay_get(mut stream: ByteStream, tx: ByteSender, edits: StreamEdits) {
    let mut offset = 0u64;
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return,
            item = stream.recv() => item,
        };
        let mut chunk = match item {
            None => return,
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Some(Ok(chunk)) => chunk,
        };
        let end = offset + chunk.len() as u64;
        chunk = corrupt(chunk, offset, &edits.corrupt);
        if let Some((at, error)) = edits.cut {
            if at < end {
                let keep = (at - offset) as usize;
                if keep > 0 && tx.send(Ok(chunk.slice(..keep))).await.is_err() {
                    return;
                }
                if let Some(kind) = error {
                    let _ = tx.send(Err(injected_error(kind))).await;
                }
                return;
            }
        }
        if tx.send(Ok(chunk)).await.is_err() {
            return;
        }
        offset = end;
    }
}

fn corrupt(chunk: Bytes, start: u64, flips: &[(u64, u8)]) -> Bytes {
    let end = start + chunk.len() as u64;
    let hits: Vec<_> = flips
        .iter()
        .filter(|(offset, _)| (start..end).contains(offset))
        .collect();
    if hits.is_empty() {
        return chunk;
    }
    let mut data = BytesMut::from(&chunk[..]);
    for (offset, mask) in hits {
        data[(offset - start) as usize] ^= mask;
    }
    data.freeze()
}

fn io_op(op: Op) -> IoOp {
    match op {
        Op::Put => IoOp::Write,
        Op::Get => IoOp::Open,
        Op::Head => IoOp::Stat,
        Op::List => IoOp::List,
        Op::Delete => IoOp::Delete,
        Op::Sweep => IoOp::Sweep,
    }
}

/// The error a real system would return for `kind`: the matching OS error where there is
/// one (so `StorageFull` reads "No space left on device"), else a plain error of that kind.
pub fn injected_error(kind: io::ErrorKind) -> io::Error {
    let errno = match kind {
        io::ErrorKind::StorageFull => Some(libc::ENOSPC),
        io::ErrorKind::QuotaExceeded => Some(libc::EDQUOT),
        io::ErrorKind::PermissionDenied => Some(libc::EACCES),
        io::ErrorKind::ReadOnlyFilesystem => Some(libc::EROFS),
        io::ErrorKind::TimedOut => Some(libc::ETIMEDOUT),
        io::ErrorKind::ConnectionReset => Some(libc::ECONNRESET),
        io::ErrorKind::BrokenPipe => Some(libc::EPIPE),
        _ => None,
    };
    match errno {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::new(kind, "injected fault"),
    }
}
