//! The sink contract as one executable check: [`sink_conformance`]. A backend is done when
//! it passes. It only uses keys under a fresh `conformance-<uuid>/` prefix and deletes them
//! at the end, so it can run against a shared bucket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use backup_sinks::stream::{byte_stream_from_items, ByteSender};
use backup_sinks::{
    byte_stream_from, read_object, sha256_of_object, ByteStream, ObjectInfo, Sink, SinkError,
};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous bound for any single step, so a hanging sink fails instead of hanging CI.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How quickly a cancelled operation must return.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every check of the sink contract against `sink`, panicking with a description of
/// the first violation.
pub async fn sink_conformance<S: Sink>(sink: &S) {
    let base = format!("conformance-{}", uuid::Uuid::new_v4());
    let t = Suite { sink, base };
    t.round_trips().await;
    t.absent_objects().await;
    t.list_by_prefix().await;
    t.identical_put_is_idempotent().await;
    t.different_content_is_refused().await;
    t.concurrent_conflicting_puts().await;
    t.delete_is_idempotent().await;
    t.failed_stream_leaves_nothing().await;
    t.cancelled_put_leaves_nothing().await;
    t.dropped_put_leaves_nothing().await;
    t.cancelled_token_stops_every_method().await;
    t.cancelled_get_never_looks_complete().await;
    t.invalid_keys_are_rejected().await;
    t.concurrent_puts().await;
    t.sweep_runs().await;
    t.cleanup().await;
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    data
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A stream fed by a task in small, uneven chunks through a tiny channel, so the sink
/// sees back-pressure and arbitrary chunk boundaries.
pub fn live_stream(data: Vec<u8>, chunk_size: usize) -> ByteStream {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let data = Bytes::from(data);
        for start in (0..data.len()).step_by(chunk_size.max(1)) {
            let end = (start + chunk_size).min(data.len());
            if tx.send(Ok(data.slice(start..end))).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Polls all futures concurrently on the current task and returns their outputs in order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("all ready")).collect()
}

async fn step<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {STEP_TIMEOUT:?}"))
}

fn is_invalid<T>(result: &Result<T, SinkError>) -> bool {
    matches!(result, Err(SinkError::InvalidKey { .. }))
}

fn keys(objects: &[ObjectInfo]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

struct Suite<'a, S> {
    sink: &'a S,
    base: String,
}

impl<S: Sink> Suite<'_, S> {
    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.base)
    }

    fn who(&self) -> String {
        format!("sink {:?}", self.sink.name())
    }

    async fn put(&self, key: &str, data: &[u8], chunk: usize) -> Result<[u8; 32], SinkError> {
        let cancel = CancellationToken::new();
        let stream = byte_stream_from(Bytes::copy_from_slice(data), chunk);
        let receipt = step(
            &format!("{}: put {key}", self.who()),
            self.sink.put(key, stream, &cancel),
        )
        .await?;
        assert_eq!(
            receipt.size,
            data.len() as u64,
            "{}: receipt size of {key}",
            self.who()
        );
        assert_eq!(
            receipt.sha256,
            sha256(data),
            "{}: receipt sha256 of {key}",
            self.who()
        );
        Ok(receipt.sha256)
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, SinkError> {
        let cancel = CancellationToken::new();
        step(
            &format!("{}: get {key}", self.who()),
            read_object(self.sink, key, &cancel),
        )
        .await
    }

    async fn head(&self, key: &str) -> Option<ObjectInfo> {
        let cancel = CancellationToken::new();
        step(
            &format!("{}: head {key}", self.who()),
            self.sink.head(key, &cancel),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: head {key}: {e}", self.who()))
    }

    async fn list(&self, prefix: &str) -> Vec<ObjectInfo> {
        let cancel = CancellationToken::new();
        let objects = step(
            &format!("{}: list {prefix:?}", self.who()),
            self.sink.list(prefix, &cancel),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: list {prefix:?}: {e}", self.who()));
        let listed = keys(&objects);
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        assert_eq!(
            listed,
            sorted,
            "{}: list {prefix:?} is not sorted",
            self.who()
        );
        assert!(
            listed.iter().all(|k| k.starts_with(prefix)),
            "{}: list {prefix:?} returned keys outside the prefix: {listed:?}",
            self.who()
        );
        objects
    }

    async fn delete(&self, key: &str) {
        let cancel = CancellationToken::new();
        step(
            &format!("{}: delete {key}", self.who()),
            self.sink.delete(key, &cancel),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: delete {key}: {e}", self.who()));
    }

    /// Nothing visible under `key`: no head, no get, not listed.
    async fn assert_absent(&self, key: &str, context: &str) {
        let who = self.who();
        assert_eq!(self.head(key).await, None, "{who}: {context}: head {key}");
        match self.read(key).await {
            Err(SinkError::NotFound { .. }) => {}
            other => panic!("{who}: {context}: get {key} should be NotFound, got {other:?}"),
        }
        let listed = self.list(&self.base).await;
        assert!(
            !keys(&listed).contains(&key),
            "{who}: {context}: {key} is listed"
        );
    }

    async fn round_trips(&self) {
        for (seed, size) in [0usize, 1, 1 << 20, (8 << 20) + 3].into_iter().enumerate() {
            let key = self.key(&format!("roundtrip/size-{size}"));
            let data = test_data(size, seed as u64);
            let cancel = CancellationToken::new();
            let receipt = step(
                &format!("{}: put {key}", self.who()),
                self.sink
                    .put(&key, live_stream(data.clone(), 100_003), &cancel),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: put {key}: {e}", self.who()));
            assert_eq!(receipt.size, size as u64, "{}: receipt size", self.who());
            assert_eq!(
                receipt.sha256,
                sha256(&data),
                "{}: receipt sha256",
                self.who()
            );

            let read = self.read(&key).await.unwrap();
            assert!(read == data, "{}: {key} read back differs", self.who());

            let info = self.head(&key).await.expect("head of a stored object");
            assert_eq!(info.key, key, "{}: head key", self.who());
            assert_eq!(info.size, size as u64, "{}: head size", self.who());

            let (hashed_size, hash) = sha256_of_object(self.sink, &key, &cancel).await.unwrap();
            assert_eq!((hashed_size, hash), (receipt.size, receipt.sha256));
        }
    }

    async fn absent_objects(&self) {
        let key = self.key("absent/object");
        self.assert_absent(&key, "never stored").await;
        let cancel = CancellationToken::new();
        match sha256_of_object(self.sink, &key, &cancel).await {
            Err(SinkError::NotFound { repository, key: k }) => {
                assert_eq!(repository, self.sink.name());
                assert_eq!(k, key);
            }
            other => panic!("{}: sha256 of missing object: {other:?}", self.who()),
        }
        assert!(self.list(&self.key("absent/")).await.is_empty());
    }

    async fn list_by_prefix(&self) {
        let names = ["list/b/1", "list/a/2", "list/a/10", "list/ab", "list/c"];
        for (i, name) in names.iter().enumerate() {
            self.put(&self.key(name), &test_data(10 + i, 100 + i as u64), 7)
                .await
                .unwrap();
        }
        let expect = |names: &[&str]| names.iter().map(|n| self.key(n)).collect::<Vec<_>>();
        let cases: [(&str, &[&str]); 5] = [
            (
                "list/",
                &["list/a/10", "list/a/2", "list/ab", "list/b/1", "list/c"],
            ),
            ("list/a", &["list/a/10", "list/a/2", "list/ab"]),
            ("list/a/", &["list/a/10", "list/a/2"]),
            ("list/a/1", &["list/a/10"]),
            ("list/d", &[]),
        ];
        for (prefix, want) in cases {
            let listed = self.list(&self.key(prefix)).await;
            assert_eq!(keys(&listed), expect(want), "{}: list {prefix}", self.who());
        }
        let info = &self.list(&self.key("list/ab")).await[0];
        assert_eq!(info.size, 13, "{}: listed size", self.who());

        let everything = self.list("").await;
        let all = keys(&everything);
        for key in expect(&names) {
            assert!(
                all.contains(&key.as_str()),
                "{}: list \"\" lacks {key}",
                self.who()
            );
        }
    }

    async fn identical_put_is_idempotent(&self) {
        let key = self.key("idempotent/obj");
        let data = test_data(300_000, 7);
        let first = self.put(&key, &data, 65_536).await.unwrap();
        let again = self
            .put(&key, &data, 4_099)
            .await
            .unwrap_or_else(|e| panic!("{}: identical re-put must succeed: {e}", self.who()));
        assert_eq!(first, again);
        assert_eq!(
            keys(&self.list(&self.key("idempotent/")).await),
            [key.as_str()]
        );
        assert!(self.read(&key).await.unwrap() == data);
    }

    async fn different_content_is_refused(&self) {
        let key = self.key("conflict/obj");
        let data = test_data(1000, 8);
        self.put(&key, &data, 100).await.unwrap();
        let mut same_size = data.clone();
        same_size[500] ^= 1;
        for (what, other) in [("same size", same_size), ("other size", test_data(999, 8))] {
            match self.put(&key, &other, 100).await {
                Err(SinkError::AlreadyExists { repository, key: k }) => {
                    assert_eq!(repository, self.sink.name());
                    assert_eq!(k, key);
                }
                result => panic!(
                    "{}: overwriting with different content ({what}) must be AlreadyExists, \
                     got {result:?}",
                    self.who()
                ),
            }
        }
        assert!(
            self.read(&key).await.unwrap() == data,
            "{}: a refused put changed the object",
            self.who()
        );
    }

    async fn concurrent_conflicting_puts(&self) {
        let key = self.key("race/obj");
        let a = test_data(2 << 20, 21);
        let b = test_data(2 << 20, 22);
        let cancel = CancellationToken::new();
        let (ra, rb) = step("concurrent conflicting puts", async {
            tokio::join!(
                self.sink.put(&key, live_stream(a.clone(), 65_536), &cancel),
                self.sink.put(&key, live_stream(b.clone(), 65_536), &cancel),
            )
        })
        .await;
        let winner = match (ra, rb) {
            (Ok(_), Err(SinkError::AlreadyExists { .. })) => a,
            (Err(SinkError::AlreadyExists { .. }), Ok(_)) => b,
            other => panic!(
                "{}: of two concurrent puts with different content exactly one must win, \
                 the other get AlreadyExists; got {other:?}",
                self.who()
            ),
        };
        assert!(
            self.read(&key).await.unwrap() == winner,
            "{}: stored content is not the winner's",
            self.who()
        );
    }

    async fn delete_is_idempotent(&self) {
        let key = self.key("delete/obj");
        self.put(&key, b"doomed", 3).await.unwrap();
        self.delete(&key).await;
        self.assert_absent(&key, "after delete").await;
        self.delete(&key).await;
        self.delete(&self.key("delete/never-existed")).await;
        // A deleted key can be reused, with other content.
        self.put(&key, b"reborn with other content", 5)
            .await
            .unwrap();
        assert_eq!(self.read(&key).await.unwrap(), b"reborn with other content");
    }

    async fn failed_stream_leaves_nothing(&self) {
        let key = self.key("failed/obj");
        let data = Bytes::from(test_data(3 << 20, 9));
        let cancel = CancellationToken::new();

        // A stream that yields an error after some data, then ends.
        let stream = byte_stream_from_items([
            Ok(data.slice(..1 << 20)),
            Ok(data.slice(1 << 20..2 << 20)),
            Err(io::Error::new(io::ErrorKind::InvalidData, "source broke")),
        ]);
        let result = step(
            "put of a failing stream",
            self.sink.put(&key, stream, &cancel),
        )
        .await;
        match result {
            Err(SinkError::Body {
                repository,
                key: k,
                source,
            }) => {
                assert_eq!(repository, self.sink.name());
                assert_eq!(k, key);
                assert_eq!(source.kind(), io::ErrorKind::InvalidData);
            }
            other => panic!(
                "{}: a put whose stream fails must return Body error, got {other:?}",
                self.who()
            ),
        }
        self.assert_absent(&key, "after a failed stream").await;

        // A live producer that fails midway and drops its sender.
        let (tx, rx) = mpsc::channel(2);
        let producer = tokio::spawn({
            let data = data.clone();
            async move {
                tx.send(Ok(data.slice(..1 << 20))).await.ok();
                tx.send(Err(io::Error::other("producer crashed")))
                    .await
                    .ok();
            }
        });
        let result = step(
            "put of a crashing producer",
            self.sink.put(&key, rx, &cancel),
        )
        .await;
        assert!(
            matches!(result, Err(SinkError::Body { .. })),
            "{}: {result:?}",
            self.who()
        );
        producer.await.unwrap();
        self.assert_absent(&key, "after a crashed producer").await;

        // Nothing left behind blocks a later good put.
        self.put(&key, &data, 1 << 20).await.unwrap();
    }

    async fn cancelled_put_leaves_nothing(&self) {
        let key = self.key("cancelled/obj");
        let cancel = CancellationToken::new();
        let (tx, rx): (ByteSender, ByteStream) = mpsc::channel(1);
        let chunk = Bytes::from(test_data(1 << 20, 10));
        let feeder = async {
            tx.send(Ok(chunk.clone())).await.ok();
            tx.send(Ok(chunk.clone())).await.ok();
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        };
        // The sender stays open: the put must stop on the token, not on end-of-stream.
        let (result, ()) = tokio::time::timeout(CANCEL_TIMEOUT, async {
            tokio::join!(self.sink.put(&key, rx, &cancel), feeder)
        })
        .await
        .unwrap_or_else(|_| panic!("{}: put ignored cancellation", self.who()));
        assert!(
            matches!(result, Err(SinkError::Cancelled)),
            "{}: cancelled put returned {result:?}",
            self.who()
        );
        drop(tx);
        self.assert_absent(&key, "after a cancelled put").await;
        self.put(&key, &chunk, 1 << 16).await.unwrap();
    }

    /// Dropping a put future (e.g. a timeout around it) must not publish the object later.
    async fn dropped_put_leaves_nothing(&self) {
        let key = self.key("dropped/obj");
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Bytes::from_static(b"partial"))).await.unwrap();
        let timed_out =
            tokio::time::timeout(Duration::from_millis(100), self.sink.put(&key, rx, &cancel))
                .await;
        assert!(
            timed_out.is_err(),
            "{}: put finished without end of stream",
            self.who()
        );
        drop(tx);
        // Give a background writer time to (wrongly) finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.assert_absent(&key, "after a dropped put").await;
    }

    async fn cancelled_token_stops_every_method(&self) {
        let key = self.key("roundtrip/size-1");
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let who = self.who();
        let expect = |what: &str, cancelled: bool| {
            assert!(
                cancelled,
                "{who}: {what} with a cancelled token must return Cancelled"
            );
        };
        let r = self
            .sink
            .put(
                &self.key("cancelled/early"),
                byte_stream_from(&b"x"[..], 1),
                &cancelled,
            )
            .await;
        expect("put", matches!(r, Err(SinkError::Cancelled)));
        let r = self.sink.get(&key, &cancelled).await;
        expect("get", matches!(r, Err(SinkError::Cancelled)));
        let r = self.sink.head(&key, &cancelled).await;
        expect("head", matches!(r, Err(SinkError::Cancelled)));
        let r = self.sink.list(&self.base, &cancelled).await;
        expect("list", matches!(r, Err(SinkError::Cancelled)));
        let r = self.sink.delete(&key, &cancelled).await;
        expect("delete", matches!(r, Err(SinkError::Cancelled)));
        let r = self
            .sink
            .sweep_incomplete("", Duration::from_secs(3600), &cancelled)
            .await;
        expect("sweep_incomplete", matches!(r, Err(SinkError::Cancelled)));
        assert!(
            self.head(&key).await.is_some(),
            "{who}: cancelled delete deleted"
        );
        self.assert_absent(&self.key("cancelled/early"), "put with a cancelled token")
            .await;
    }

    /// After cancelling a get, the stream either delivers the whole object or ends with an
    /// error, never a clean but short end that would pass for a smaller object.
    async fn cancelled_get_never_looks_complete(&self) {
        let key = self.key(&format!("roundtrip/size-{}", (8 << 20) + 3));
        let cancel = CancellationToken::new();
        let mut stream = self.sink.get(&key, &cancel).await.unwrap();
        let mut received = 0u64;
        if let Some(first) = stream.recv().await {
            received += first.unwrap().len() as u64;
        }
        cancel.cancel();
        let outcome = tokio::time::timeout(CANCEL_TIMEOUT, async {
            while let Some(item) = stream.recv().await {
                match item {
                    Ok(chunk) => received += chunk.len() as u64,
                    Err(e) => return Err(e),
                }
            }
            Ok(received)
        })
        .await
        .unwrap_or_else(|_| panic!("{}: get stream ignored cancellation", self.who()));
        if let Ok(total) = outcome {
            assert_eq!(
                total,
                (8 << 20) + 3,
                "{}: cancelled get ended cleanly but short",
                self.who()
            );
        }
    }

    async fn invalid_keys_are_rejected(&self) {
        let cancel = CancellationToken::new();
        let who = self.who();
        let bad = [
            "",
            "/absolute",
            "a//b",
            "a/",
            "..",
            "a/../../escape",
            "./a",
            ".hidden",
            "a/.tmp",
            "nul\0byte",
            "back\\slash",
        ];
        for key in bad {
            let r = self
                .sink
                .put(key, byte_stream_from(&b"x"[..], 1), &cancel)
                .await;
            assert!(
                is_invalid(&r),
                "{who}: put {key:?} must be InvalidKey, got {r:?}"
            );
            let r = self.sink.get(key, &cancel).await;
            assert!(
                is_invalid(&r.map(|_| ())),
                "{who}: get {key:?} must be InvalidKey"
            );
            let r = self.sink.head(key, &cancel).await;
            assert!(
                is_invalid(&r),
                "{who}: head {key:?} must be InvalidKey, got {r:?}"
            );
            let r = self.sink.delete(key, &cancel).await;
            assert!(
                is_invalid(&r),
                "{who}: delete {key:?} must be InvalidKey, got {r:?}"
            );
        }
        for prefix in ["/", "../", "a//"] {
            let r = self.sink.list(prefix, &cancel).await;
            assert!(
                matches!(r, Err(SinkError::InvalidKey { .. })),
                "{who}: list {prefix:?} must be InvalidKey, got {r:?}"
            );
        }
    }

    async fn concurrent_puts(&self) {
        let cancel = CancellationToken::new();
        let objects: Vec<(String, Vec<u8>)> = (0..8)
            .map(|i| {
                (
                    self.key(&format!("concurrent/dir-{}/obj-{i}", i % 3)),
                    test_data((256 << 10) + i, 300 + i as u64),
                )
            })
            .collect();
        let puts = objects
            .iter()
            .map(|(key, data)| {
                self.sink
                    .put(key, live_stream(data.clone(), 32_768), &cancel)
            })
            .collect();
        let results = step("concurrent puts", join_all(puts)).await;
        for ((key, data), result) in objects.iter().zip(results) {
            let receipt =
                result.unwrap_or_else(|e| panic!("{}: concurrent put {key}: {e}", self.who()));
            assert_eq!(receipt.sha256, sha256(data));
        }
        let listed = self.list(&self.key("concurrent/")).await;
        assert_eq!(
            listed.len(),
            objects.len(),
            "{}: {:?}",
            self.who(),
            keys(&listed)
        );
        for (key, data) in &objects {
            assert!(
                self.read(key).await.unwrap() == *data,
                "{}: {key}",
                self.who()
            );
        }
    }

    async fn sweep_runs(&self) {
        let cancel = CancellationToken::new();
        let before = self.list(&self.base).await;
        // Nothing of ours is incomplete, and recent leftovers of others are not ours to take.
        step(
            "sweep",
            self.sink
                .sweep_incomplete("", Duration::from_secs(3600), &cancel),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: sweep_incomplete: {e}", self.who()));
        let after = self.list(&self.base).await;
        assert_eq!(
            keys(&before),
            keys(&after),
            "{}: sweep removed objects",
            self.who()
        );
    }

    async fn cleanup(&self) {
        for object in self.list(&format!("{}/", self.base)).await {
            self.delete(&object.key).await;
        }
        let left = self.list(&self.base).await;
        assert!(
            left.is_empty(),
            "{}: left after cleanup: {:?}",
            self.who(),
            keys(&left)
        );
    }
}
