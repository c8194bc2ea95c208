//! The closed set of sinks the engine works with, dispatched by `match` rather than
//! `dyn`, since the async trait methods are not object-safe.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    ByteStream, Capabilities, FaultySink, LocalSink, MemorySink, ObjectInfo, PutReceipt, Sink,
    SinkError,
};

/// Any repository backend.
#[derive(Debug)]
pub enum AnySink {
    Local(LocalSink),
    Memory(MemorySink),
    #[cfg(feature = "s3")]
    S3(crate::S3Sink),
    /// Boxed because it nests an `AnySink`.
    Faulty(Box<FaultySink<AnySink>>),
}

impl From<LocalSink> for AnySink {
    fn from(sink: LocalSink) -> Self {
        AnySink::Local(sink)
    }
}

#[cfg(feature = "s3")]
impl From<crate::S3Sink> for AnySink {
    fn from(sink: crate::S3Sink) -> Self {
        AnySink::S3(sink)
    }
}

impl From<MemorySink> for AnySink {
    fn from(sink: MemorySink) -> Self {
        AnySink::Memory(sink)
    }
}

impl From<FaultySink<AnySink>> for AnySink {
    fn from(sink: FaultySink<AnySink>) -> Self {
        AnySink::Faulty(Box::new(sink))
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Calls through the generic `Sink` bound and boxes the future: `AnySink`'s futures contain
/// `FaultySink<AnySink>`'s, which contain `AnySink`'s, so that arm needs an indirection.
fn boxed<'a, T>(future: impl Future<Output = T> + Send + 'a) -> BoxFuture<'a, T> {
    Box::pin(future)
}

fn faulty_put<'a, S: Sink>(
    sink: &'a S,
    key: &'a str,
    body: ByteStream,
    cancel: &'a CancellationToken,
) -> BoxFuture<'a, Result<PutReceipt, SinkError>> {
    boxed(sink.put(key, body, cancel))
}

fn faulty_get<'a, S: Sink>(
    sink: &'a S,
    key: &'a str,
    cancel: &'a CancellationToken,
) -> BoxFuture<'a, Result<ByteStream, SinkError>> {
    boxed(sink.get(key, cancel))
}

fn faulty_head<'a, S: Sink>(
    sink: &'a S,
    key: &'a str,
    cancel: &'a CancellationToken,
) -> BoxFuture<'a, Result<Option<ObjectInfo>, SinkError>> {
    boxed(sink.head(key, cancel))
}

fn faulty_list<'a, S: Sink>(
    sink: &'a S,
    prefix: &'a str,
    cancel: &'a CancellationToken,
) -> BoxFuture<'a, Result<Vec<ObjectInfo>, SinkError>> {
    boxed(sink.list(prefix, cancel))
}

fn faulty_delete<'a, S: Sink>(
    sink: &'a S,
    key: &'a str,
    cancel: &'a CancellationToken,
) -> BoxFuture<'a, Result<(), SinkError>> {
    boxed(sink.delete(key, cancel))
}

fn faulty_sweep<'a, S: Sink>(
    sink: &'a S,
    prefix: &'a str,
    older_than: Duration,
    cancel: &'a CancellationToken,
) -> BoxFuture<'a, Result<u64, SinkError>> {
    boxed(sink.sweep_incomplete(prefix, older_than, cancel))
}

impl Sink for AnySink {
    fn name(&self) -> &str {
        match self {
            AnySink::Local(s) => s.name(),
            AnySink::Memory(s) => s.name(),
            #[cfg(feature = "s3")]
            AnySink::S3(s) => s.name(),
            AnySink::Faulty(s) => s.name(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self {
            AnySink::Local(s) => s.capabilities(),
            AnySink::Memory(s) => s.capabilities(),
            #[cfg(feature = "s3")]
            AnySink::S3(s) => s.capabilities(),
            AnySink::Faulty(s) => s.capabilities(),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        match self {
            AnySink::Local(s) => s.put(key, body, cancel).await,
            AnySink::Memory(s) => s.put(key, body, cancel).await,
            #[cfg(feature = "s3")]
            AnySink::S3(s) => s.put(key, body, cancel).await,
            AnySink::Faulty(s) => faulty_put(&**s, key, body, cancel).await,
        }
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<ByteStream, SinkError> {
        match self {
            AnySink::Local(s) => s.get(key, cancel).await,
            AnySink::Memory(s) => s.get(key, cancel).await,
            #[cfg(feature = "s3")]
            AnySink::S3(s) => s.get(key, cancel).await,
            AnySink::Faulty(s) => faulty_get(&**s, key, cancel).await,
        }
    }

    async fn head(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<ObjectInfo>, SinkError> {
        match self {
            AnySink::Local(s) => s.head(key, cancel).await,
            AnySink::Memory(s) => s.head(key, cancel).await,
            #[cfg(feature = "s3")]
            AnySink::S3(s) => s.head(key, cancel).await,
            AnySink::Faulty(s) => faulty_head(&**s, key, cancel).await,
        }
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, SinkError> {
        match self {
            AnySink::Local(s) => s.list(prefix, cancel).await,
            AnySink::Memory(s) => s.list(prefix, cancel).await,
            #[cfg(feature = "s3")]
            AnySink::S3(s) => s.list(prefix, cancel).await,
            AnySink::Faulty(s) => faulty_list(&**s, prefix, cancel).await,
        }
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), SinkError> {
        match self {
            AnySink::Local(s) => s.delete(key, cancel).await,
            AnySink::Memory(s) => s.delete(key, cancel).await,
            #[cfg(feature = "s3")]
            AnySink::S3(s) => s.delete(key, cancel).await,
            AnySink::Faulty(s) => faulty_delete(&**s, key, cancel).await,
        }
    }

    async fn sweep_incomplete(
        &self,
        prefix: &str,
        older_than: Duration,
        cancel: &CancellationToken,
    ) -> Result<u64, SinkError> {
        match self {
            AnySink::Local(s) => s.sweep_incomplete(prefix, older_than, cancel).await,
            AnySink::Memory(s) => s.sweep_incomplete(prefix, older_than, cancel).await,
            #[cfg(feature = "s3")]
            AnySink::S3(s) => s.sweep_incomplete(prefix, older_than, cancel).await,
            AnySink::Faulty(s) => faulty_sweep(&**s, prefix, older_than, cancel).await,
        }
    }
}
