//! Byte streams between blocking code and sinks.
//!
//! A [`ByteStream`] ends cleanly only when all data was delivered; any failure arrives as an
//! `Err` item. The adapters here keep that promise on the blocking side: [`ChannelWriter`]
//! sends an `Err` when dropped without [`ChannelWriter::finish`], so a producer that bails out
//! with `?` can never make a sink store a truncated object.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc::{self, OwnedPermit, Sender};
use tokio_util::sync::CancellationToken;

use crate::{ByteStream, SinkError};

/// Sending half of a [`ByteStream`].
pub type ByteSender = Sender<io::Result<Bytes>>;

/// Chunk size used by the sinks and adapters: large enough to amortise per-chunk costs,
/// small enough to keep a few in flight per transfer.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Chunks buffered in a stream channel created by this crate.
pub const CHANNEL_CAPACITY: usize = 4;

/// A bounded stream channel of the crate's usual capacity.
pub fn byte_channel() -> (ByteSender, ByteStream) {
    mpsc::channel(CHANNEL_CAPACITY)
}

/// A finished stream holding `data` in `chunk_size` pieces (zero-copy slices of `data`);
/// handy for small objects and tests.
pub fn byte_stream_from(data: impl Into<Bytes>, chunk_size: usize) -> ByteStream {
    let mut data: Bytes = data.into();
    let chunk_size = chunk_size.max(1);
    let (tx, rx) = mpsc::channel(data.len().div_ceil(chunk_size).max(1));
    while !data.is_empty() {
        let chunk = data.split_to(chunk_size.min(data.len()));
        tx.try_send(Ok(chunk)).expect("capacity covers every chunk");
    }
    rx
}

/// A finished stream of the given items, e.g. some chunks followed by an `Err`.
pub fn byte_stream_from_items(items: impl IntoIterator<Item = io::Result<Bytes>>) -> ByteStream {
    let items: Vec<_> = items.into_iter().collect();
    let (tx, rx) = mpsc::channel(items.len().max(1));
    for item in items {
        tx.try_send(item).expect("capacity covers every item");
    }
    rx
}

/// Next item of `stream`, or `Err(Cancelled)` as soon as `cancel` fires.
pub async fn recv_or_cancel(
    stream: &mut ByteStream,
    cancel: &CancellationToken,
) -> Result<Option<io::Result<Bytes>>, SinkError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(SinkError::Cancelled),
        item = stream.recv() => Ok(item),
    }
}

/// Runs a future to completion on the current (blocking) thread, without needing a tokio
/// runtime handle. Used by blocking workers to wait on channels *and* a cancellation token
/// at once, which `blocking_recv` alone cannot do. Must not be called on an async worker.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unparker(Thread);
    impl Wake for Unparker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

/// `std::io::Write` into a [`ByteStream`], for producers running on blocking threads (e.g.
/// the compress/encrypt pipeline feeding [`Sink::put`](crate::Sink::put)).
///
/// Data goes out in [`CHUNK_SIZE`] chunks. Call [`finish`](Self::finish) to end the stream
/// cleanly; dropping the writer otherwise (an error path, a panic) sends an `Err` so the
/// consumer stores nothing. To make that possible without blocking in `Drop`, the writer
/// always holds a reserved slot in the channel. Writes block while the channel is full;
/// they fail with `BrokenPipe` once the consumer has gone away.
pub struct ChannelWriter {
    sender: Option<ByteSender>,
    permit: Option<OwnedPermit<io::Result<Bytes>>>,
    buf: BytesMut,
    chunk_size: usize,
}

impl ChannelWriter {
    pub fn new(sender: ByteSender) -> Self {
        Self::with_chunk_size(sender, CHUNK_SIZE)
    }

    pub fn with_chunk_size(sender: ByteSender, chunk_size: usize) -> Self {
        ChannelWriter {
            sender: Some(sender),
            permit: None,
            buf: BytesMut::new(),
            chunk_size: chunk_size.max(1),
        }
    }

    /// Sends buffered data and ends the stream cleanly: the consumer sees a complete object.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buffered()?;
        self.permit = None;
        self.sender = None;
        Ok(())
    }

    /// Ends the stream with `error`, so the consumer discards what it received.
    pub fn abort(mut self, error: io::Error) {
        self.send_error(error);
    }

    /// Blocks until a slot is reserved; afterwards the writer holds it until the next send.
    fn ensure_permit(&mut self) -> io::Result<()> {
        if self.permit.is_none() {
            let sender = self.sender.take().ok_or_else(consumer_gone)?;
            self.permit = Some(block_on(sender.reserve_owned()).map_err(|_| consumer_gone())?);
        }
        Ok(())
    }

    fn send_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.ensure_permit()?;
        let permit = self.permit.take().expect("reserved above");
        let sender = permit.send(Ok(chunk));
        // Reserve the slot for the next chunk or the final error right away, so `Drop`
        // never has to wait.
        self.permit = Some(block_on(sender.reserve_owned()).map_err(|_| consumer_gone())?);
        Ok(())
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.send_chunk(chunk)?;
        }
        Ok(())
    }

    fn send_error(&mut self, error: io::Error) {
        if let Some(permit) = self.permit.take() {
            permit.send(Err(error));
        } else if let Some(sender) = self.sender.take() {
            // No slot held: the writer never sent anything, so the channel has room unless
            // someone else shares the sender.
            let _ = sender.try_send(Err(error));
        }
        self.sender = None;
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.sender.is_none() && self.permit.is_none() {
            return Err(consumer_gone());
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.chunk_size);
        }
        let n = data.len().min(self.chunk_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk_size {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        if self.sender.is_some() || self.permit.is_some() {
            self.send_error(io::Error::other(
                "the producer stopped before finishing the stream (writer dropped without finish)",
            ));
        }
    }
}

fn consumer_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the consumer of the stream has stopped (the upload failed or was cancelled)",
    )
}

/// `std::io::Read` over a [`ByteStream`], for consumers on blocking threads (e.g. restore
/// decoding an object returned by [`Sink::get`](crate::Sink::get)). An `Err` item in the
/// stream is returned from `read`, and every later `read` fails too, so a reader never
/// mistakes a failed stream for a short object.
pub struct ChannelReader {
    stream: ByteStream,
    current: Bytes,
    failed: Option<(io::ErrorKind, String)>,
}

impl ChannelReader {
    pub fn new(stream: ByteStream) -> Self {
        ChannelReader {
            stream,
            current: Bytes::new(),
            failed: None,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((kind, message)) = &self.failed {
                return Err(io::Error::new(*kind, message.clone()));
            }
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current[..n]);
                self.current.advance(n);
                return Ok(n);
            }
            match self.stream.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => {
                    self.failed = Some((error.kind(), format!("stream failed earlier: {error}")));
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(mut stream: ByteStream) -> Vec<io::Result<Bytes>> {
        let mut items = Vec::new();
        while let Some(item) = stream.blocking_recv() {
            items.push(item);
        }
        items
    }

    #[test]
    fn byte_stream_from_chunks_zero_copy() {
        let items = collect(byte_stream_from(vec![7u8; 10], 4));
        let sizes: Vec<usize> = items.iter().map(|i| i.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert!(collect(byte_stream_from(Bytes::new(), 4)).is_empty());
    }

    #[test]
    fn writer_finish_delivers_everything_in_chunks() {
        let (tx, rx) = mpsc::channel(2);
        let consumer = thread::spawn(move || collect(rx));
        let mut w = ChannelWriter::with_chunk_size(tx, 1000);
        for i in 0..2500u32 {
            w.write_all(&[(i % 251) as u8]).unwrap();
        }
        w.finish().unwrap();
        let items = consumer.join().unwrap();
        let sizes: Vec<usize> = items.iter().map(|i| i.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        let data: Vec<u8> = items.into_iter().flat_map(|i| i.unwrap()).collect();
        assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }

    #[test]
    fn writer_dropped_without_finish_ends_with_error() {
        let (tx, rx) = mpsc::channel(1);
        let consumer = thread::spawn(move || collect(rx));
        let mut w = ChannelWriter::with_chunk_size(tx, 10);
        w.write_all(&[1; 35]).unwrap();
        drop(w);
        let items = consumer.join().unwrap();
        assert_eq!(items.len(), 4, "three chunks then the error");
        assert!(items[..3].iter().all(|i| i.is_ok()));
        assert!(items[3].is_err());
    }

    #[test]
    fn writer_dropped_before_writing_ends_with_error() {
        let (tx, rx) = mpsc::channel(1);
        drop(ChannelWriter::new(tx));
        let items = collect(rx);
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
    }

    #[test]
    fn writer_abort_sends_the_error() {
        let (tx, rx) = mpsc::channel(4);
        let mut w = ChannelWriter::with_chunk_size(tx, 4);
        w.write_all(b"abcdef").unwrap();
        w.abort(io::Error::new(io::ErrorKind::InvalidData, "bad source"));
        let items = collect(rx);
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1].as_ref().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn writer_fails_when_consumer_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChannelWriter::with_chunk_size(tx, 4);
        let err = w.write_all(b"abcdefgh").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn reader_reads_all_and_reports_errors() {
        let stream = byte_stream_from_items([
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ]);
        let mut s = String::new();
        ChannelReader::new(stream).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");

        let stream = byte_stream_from_items([
            Ok(Bytes::from_static(b"partial")),
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")),
        ]);
        let mut r = ChannelReader::new(stream);
        let mut v = Vec::new();
        let err = r.read_to_end(&mut v).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            r.read(&mut [0; 4]).unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
    }

    #[test]
    fn writer_to_reader_across_threads() {
        let (tx, rx) = mpsc::channel(2);
        let producer = thread::spawn(move || {
            let mut w = ChannelWriter::with_chunk_size(tx, 4096);
            for i in 0..1000u32 {
                w.write_all(&i.to_le_bytes()).unwrap();
            }
            w.finish().unwrap();
        });
        let mut v = Vec::new();
        ChannelReader::new(rx).read_to_end(&mut v).unwrap();
        producer.join().unwrap();
        assert_eq!(v.len(), 4000);
        assert_eq!(&v[3996..], &999u32.to_le_bytes());
    }

    #[test]
    fn block_on_waits_for_other_threads() {
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        let t = thread::spawn(move || {
            thread::sleep(std::time::Duration::from_millis(20));
            tx.blocking_send(5).unwrap();
        });
        assert_eq!(block_on(rx.recv()), Some(5));
        t.join().unwrap();
    }
}
