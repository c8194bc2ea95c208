//! The S3 sink against real servers: SeaweedFS (a real S3 API with signatures) and moto.
//! Each test starts its own server; see `backup_testing::servers`.

#![cfg(feature = "s3")]

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use backup_sinks::{put_bytes, read_object, ErrorKind, S3Options, S3Sink, Sink, SinkError};
use backup_testing::s3::{create_bucket, incomplete_uploads, key_files, test_options, PART_SIZE};
use backup_testing::servers::{
    skip_s3_tests, Moto, SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY,
};
use backup_testing::sink::{live_stream, sha256, sink_conformance, test_data};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Options for a sink on a test server, with credentials in files under `dir`.
fn options(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    keys: (&str, &str),
    dir: &Path,
) -> S3Options {
    test_options(
        format!("s3-{bucket}"),
        endpoint,
        bucket,
        prefix,
        key_files(dir, keys),
    )
}

async fn wait_for_no_uploads(sink: &S3Sink, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = incomplete_uploads(sink).await;
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: incomplete multipart uploads left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Objects of several parts, uploaded in parallel, come back intact; nothing is left over.
/// `conditional_complete`: the server honours `If-None-Match` on CompleteMultipartUpload
/// (AWS and SeaweedFS do, moto ignores it, so there concurrent multipart puts can both win).
async fn multipart_round_trip(sink: &S3Sink, conditional_complete: bool) {
    let cancel = CancellationToken::new();
    // 3 parts of 5 MiB and a short one: more parts than the concurrency of 2.
    let data = test_data(3 * PART_SIZE + 12_345, 77);
    let receipt = sink
        .put("big/object", live_stream(data.clone(), 300_007), &cancel)
        .await
        .unwrap();
    assert_eq!(receipt.size, data.len() as u64);
    assert_eq!(receipt.sha256, sha256(&data));
    let info = sink.head("big/object", &cancel).await.unwrap().unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert!(read_object(sink, "big/object", &cancel).await.unwrap() == data);
    // Identical multipart object again: accepted without a second copy.
    let again = sink
        .put("big/object", live_stream(data.clone(), 1 << 20), &cancel)
        .await
        .unwrap();
    assert_eq!(again, receipt);
    // Same size, other content: refused even though no hash is stored with it.
    let mut other = data.clone();
    other[PART_SIZE + 1] ^= 0x40;
    let err = sink
        .put("big/object", live_stream(other, 1 << 20), &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::AlreadyExists { .. }), "{err:?}");
    // Exactly one part.
    let exact = test_data(PART_SIZE, 78);
    put_bytes(sink, "big/exact", exact.clone(), &cancel)
        .await
        .unwrap();
    assert!(read_object(sink, "big/exact", &cancel).await.unwrap() == exact);
    // Two concurrent multipart puts of different content: exactly one wins, and the
    // loser's upload is aborted.
    let a = test_data(PART_SIZE + 1000, 91);
    let b = test_data(PART_SIZE + 1000, 92);
    if conditional_complete {
        let (ra, rb) = tokio::join!(
            sink.put("big/race", live_stream(a.clone(), 1 << 20), &cancel),
            sink.put("big/race", live_stream(b.clone(), 1 << 20), &cancel),
        );
        let winner = match (ra, rb) {
            (Ok(_), Err(SinkError::AlreadyExists { .. })) => a,
            (Err(SinkError::AlreadyExists { .. }), Ok(_)) => b,
            other => panic!("one concurrent multipart put must win, got {other:?}"),
        };
        assert!(read_object(sink, "big/race", &cancel).await.unwrap() == winner);
    }
    wait_for_no_uploads(sink, "after multipart puts").await;
    for key in ["big/object", "big/exact", "big/race"] {
        sink.delete(key, &cancel).await.unwrap();
    }
}

/// A stream that delivers `data` in 1 MiB chunks and then stays open (the sender is
/// returned) or fails.
async fn stream_of(
    data: &[u8],
    then_fail: bool,
) -> (mpsc::Sender<io::Result<Bytes>>, backup_sinks::ByteStream) {
    let (tx, rx) = mpsc::channel(16);
    for chunk in data.chunks(1 << 20) {
        tx.send(Ok(Bytes::copy_from_slice(chunk))).await.unwrap();
    }
    if then_fail {
        tx.send(Err(io::Error::other("source broke")))
            .await
            .unwrap();
    }
    (tx, rx)
}

/// Failed, cancelled and dropped multipart puts leave no incomplete upload behind, and
/// `sweep_incomplete` aborts one whose writer died. `real_initiated_times`: false for moto,
/// which reports every upload as initiated in 2010.
async fn interrupted_puts_leave_no_uploads(sink: &S3Sink, real_initiated_times: bool) {
    let data = test_data(PART_SIZE + (2 << 20), 5);

    let cancel = CancellationToken::new();
    let (_tx, rx) = stream_of(&data, true).await;
    let err = sink
        .put("interrupted/failed", rx, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Body { .. }), "{err:?}");
    wait_for_no_uploads(sink, "after a failed stream").await;

    let (tx, rx) = stream_of(&data, false).await;
    let put = sink.put("interrupted/cancelled", rx, &cancel);
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(put, canceller);
    assert!(matches!(result, Err(SinkError::Cancelled)), "{result:?}");
    drop(tx);
    wait_for_no_uploads(sink, "after a cancelled put").await;

    let cancel = CancellationToken::new();
    let (tx, rx) = stream_of(&data, false).await;
    let dropped = tokio::time::timeout(
        Duration::from_secs(1),
        sink.put("interrupted/dropped", rx, &cancel),
    )
    .await;
    assert!(dropped.is_err(), "the put finished without end of stream");
    drop(tx);
    wait_for_no_uploads(sink, "after a dropped put").await;
    for key in [
        "interrupted/failed",
        "interrupted/cancelled",
        "interrupted/dropped",
    ] {
        assert_eq!(sink.head(key, &cancel).await.unwrap(), None, "{key}");
    }

    // A writer that died mid-upload: its upload stays until swept.
    let full_key = format!("{}dangling/obj", sink.prefix());
    let created = sink
        .client()
        .create_multipart_upload()
        .bucket(sink.bucket())
        .key(&full_key)
        .send()
        .await
        .unwrap();
    sink.client()
        .upload_part()
        .bucket(sink.bucket())
        .key(&full_key)
        .upload_id(created.upload_id().unwrap())
        .part_number(1)
        .body(Bytes::from(test_data(1000, 1)).into())
        .send()
        .await
        .unwrap();
    assert_eq!(
        incomplete_uploads(sink).await,
        std::slice::from_ref(&full_key)
    );
    if real_initiated_times {
        let young = sink
            .sweep_incomplete("", Duration::from_secs(3600), &cancel)
            .await
            .unwrap();
        assert_eq!(young, 0, "a young upload may belong to a live writer");
    }
    let elsewhere = sink
        .sweep_incomplete("other/", Duration::ZERO, &cancel)
        .await
        .unwrap();
    assert_eq!(elsewhere, 0, "swept outside the prefix");
    assert_eq!(incomplete_uploads(sink).await, [full_key]);
    let swept = sink
        .sweep_incomplete("dangling/", Duration::ZERO, &cancel)
        .await
        .unwrap();
    assert_eq!(swept, 1);
    assert!(incomplete_uploads(sink).await.is_empty());
}

/// `put_creates_bucket`: SeaweedFS creates a missing bucket on the first write of an admin.
async fn missing_bucket_is_a_permanent_error_naming_it(
    options: S3Options,
    put_creates_bucket: bool,
) {
    let sink = S3Sink::new(options).await.unwrap();
    let cancel = CancellationToken::new();
    let names_it = |err: &SinkError| {
        eprintln!("missing bucket: {err}");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("\"no-such-bucket\""), "{msg}");
        assert!(
            msg.contains("does not exist") && msg.contains("create the bucket"),
            "{msg}"
        );
    };
    names_it(&sink.verify(&cancel).await.unwrap_err());
    names_it(&sink.list("", &cancel).await.unwrap_err());
    names_it(&sink.get("a/b", &cancel).await.unwrap_err());
    names_it(
        &sink
            .sweep_incomplete("", Duration::ZERO, &cancel)
            .await
            .unwrap_err(),
    );
    if !put_creates_bucket {
        names_it(
            &put_bytes(&sink, "a/b", &b"data"[..], &cancel)
                .await
                .unwrap_err(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_conformance() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = (SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);
    let sink = S3Sink::new(options(
        &server.endpoint(),
        "conformance",
        "repo",
        keys,
        dir.path(),
    ))
    .await
    .unwrap();
    create_bucket(&sink, false).await;
    sink.verify(&CancellationToken::new()).await.unwrap();
    sink_conformance(&sink).await;
    multipart_round_trip(&sink, true).await;
    wait_for_no_uploads(&sink, "after the conformance suite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_faults() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = server.endpoint();
    let keys = (SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);
    let sink = S3Sink::new(options(&endpoint, "faults", "repo", keys, dir.path()))
        .await
        .unwrap();
    create_bucket(&sink, false).await;
    let cancel = CancellationToken::new();
    put_bytes(&sink, "present", &b"x"[..], &cancel)
        .await
        .unwrap();

    // Wrong secret: refused with a permanent error that names the bucket.
    let wrong = (SEAWEEDFS_ACCESS_KEY, "not-the-secret");
    let bad = S3Sink::new(options(&endpoint, "faults", "repo", wrong, dir.path()))
        .await
        .unwrap();
    let err = bad.verify(&cancel).await.unwrap_err();
    eprintln!("wrong secret: {err}");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("\"faults\""), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");
    let err = put_bytes(&bad, "k", &b"x"[..], &cancel).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("\"faults\""), "{err}");
    let err = bad.get("present", &cancel).await.unwrap_err();
    assert!(!err.is_not_found(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    // Unknown access key, too.
    let unknown = ("nobody", SEAWEEDFS_SECRET_KEY);
    let bad = S3Sink::new(options(&endpoint, "faults", "repo", unknown, dir.path()))
        .await
        .unwrap();
    let err = bad.list("", &cancel).await.unwrap_err();
    eprintln!("unknown access key: {err}");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("\"faults\""), "{err}");

    missing_bucket_is_a_permanent_error_naming_it(
        options(&endpoint, "no-such-bucket", "", keys, dir.path()),
        true,
    )
    .await;
    interrupted_puts_leave_no_uploads(&sink, true).await;

    // A server that is gone: a temporary error (after the SDK's retries).
    drop(server);
    let err = sink.head("present", &cancel).await.unwrap_err();
    eprintln!("server gone: {err}");
    assert_eq!(err.kind(), ErrorKind::Temporary, "{err}");
    assert!(err.to_string().contains("\"faults\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_conformance() {
    if skip_s3_tests() {
        return;
    }
    let server = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = ("testing", "testing");
    let sink = S3Sink::new(options(
        &server.endpoint(),
        "conformance",
        "repo",
        keys,
        dir.path(),
    ))
    .await
    .unwrap();
    create_bucket(&sink, false).await;
    sink_conformance(&sink).await;
    multipart_round_trip(&sink, false).await;
    wait_for_no_uploads(&sink, "after the conformance suite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_faults() {
    if skip_s3_tests() {
        return;
    }
    let server = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = server.endpoint();
    let keys = ("testing", "testing");
    let sink = S3Sink::new(options(&endpoint, "faults", "repo", keys, dir.path()))
        .await
        .unwrap();
    create_bucket(&sink, false).await;
    missing_bucket_is_a_permanent_error_naming_it(
        options(&endpoint, "no-such-bucket", "", keys, dir.path()),
        false,
    )
    .await;
    interrupted_puts_leave_no_uploads(&sink, false).await;

    // Objects in an archive tier must be restored before reading, and the error says so.
    let mut cold = options(&endpoint, "faults", "cold", keys, dir.path());
    cold.storage_class = Some("DEEP_ARCHIVE".into());
    let cold = S3Sink::new(cold).await.unwrap();
    assert!(cold.capabilities().needs_restore_before_read);
    let cancel = CancellationToken::new();
    let data = test_data(1000, 3);
    let receipt = put_bytes(&cold, "obj", data.clone(), &cancel)
        .await
        .unwrap();
    let info = cold.head("obj", &cancel).await.unwrap().unwrap();
    assert_eq!(info.storage_class.as_deref(), Some("DEEP_ARCHIVE"));
    let err = cold.get("obj", &cancel).await.unwrap_err();
    eprintln!("archived: {err}");
    assert!(!err.is_not_found(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("restore it first"), "{err}");
    // A retried put of an archived object is recognised without reading it.
    let again = put_bytes(&cold, "obj", data, &cancel).await.unwrap();
    assert_eq!(again, receipt);
}
