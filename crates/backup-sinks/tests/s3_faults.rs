//! The S3 sink against network faults: a `FaultProxy` between the sink and a real server
//! throttles requests, drops the endpoint mid-upload, or keeps it down. The proxy's request
//! log shows the SDK's retries without any timing.

#![cfg(feature = "s3")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use backup_sinks::{put_bytes, read_object, ErrorKind, S3Sink, Sink, SinkError};
use backup_testing::proxy::{FaultProxy, Outcome, Request};
use backup_testing::s3::{create_bucket, incomplete_uploads, key_files, test_options, PART_SIZE};
use backup_testing::servers::{
    skip_s3_tests, Moto, SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY,
};
use backup_testing::sink::{live_stream, sha256, test_data};
use tokio_util::sync::CancellationToken;

const SEAWEEDFS_KEYS: (&str, &str) = (SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);

/// A sink talking to the server directly (for setup and checks) and one through a proxy,
/// both with credentials in files under `dir`.
async fn sinks(
    endpoint: &str,
    bucket: &str,
    keys: (&str, &str),
    dir: &Path,
) -> (S3Sink, FaultProxy, S3Sink) {
    let credentials = key_files(dir, keys);
    let options = |endpoint: &str| {
        test_options(
            format!("s3-{bucket}"),
            endpoint,
            bucket,
            "repo",
            credentials.clone(),
        )
    };
    let direct = S3Sink::new(options(endpoint)).await.unwrap();
    create_bucket(&direct, false).await;
    let proxy = FaultProxy::start(endpoint);
    let proxied = S3Sink::new(options(&proxy.endpoint())).await.unwrap();
    (direct, proxy, proxied)
}

/// Outcomes of the requests with `method` whose path (without the query) is `path`.
fn outcomes(requests: &[Request], method: &str, path: &str) -> Vec<Outcome> {
    requests
        .iter()
        .filter(|r| r.method == method && r.target.split('?').next() == Some(path))
        .map(|r| r.outcome)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_requests_are_retried_until_they_succeed() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let dir = tempfile::tempdir().unwrap();
    let (direct, proxy, sink) =
        sinks(&server.endpoint(), "throttled", SEAWEEDFS_KEYS, dir.path()).await;
    let cancel = CancellationToken::new();
    let started = Instant::now();

    // A single-request put: the upload itself (not the lookup before it) is throttled.
    let small = test_data(300_000, 1);
    proxy.throttle_next_with_method(2, "PUT");
    let receipt = put_bytes(&sink, "small", small.clone(), &cancel)
        .await
        .unwrap();
    assert_eq!(receipt.size, small.len() as u64);
    assert_eq!(receipt.sha256, sha256(&small));
    assert_eq!(proxy.throttled(), 2);
    assert!(read_object(&direct, "small", &cancel).await.unwrap() == small);
    let requests = proxy.requests();
    assert_eq!(
        outcomes(&requests, "PUT", "/throttled/repo/small"),
        [Outcome::Throttled, Outcome::Throttled, Outcome::Forwarded],
        "{requests:#?}"
    );

    // A get.
    proxy.throttle_next(2);
    assert!(read_object(&sink, "small", &cancel).await.unwrap() == small);
    assert_eq!(proxy.throttled(), 4);
    let requests = proxy.requests();
    assert_eq!(
        outcomes(&requests, "GET", "/throttled/repo/small"),
        [Outcome::Throttled, Outcome::Throttled, Outcome::Forwarded],
        "{requests:#?}"
    );

    // A multipart put whose first two parts (5 MiB bodies, sent at once) are throttled.
    let big = test_data(2 * PART_SIZE + 4321, 2);
    proxy.throttle_next_with_method(2, "PUT");
    let receipt = sink
        .put("big", live_stream(big.clone(), 1 << 20), &cancel)
        .await
        .unwrap();
    assert_eq!(receipt.sha256, sha256(&big));
    assert_eq!(proxy.throttled(), 6);
    let requests = proxy.requests();
    let throttled_parts: Vec<&Request> = requests
        .iter()
        .filter(|r| r.outcome == Outcome::Throttled && r.target.contains("partNumber="))
        .collect();
    assert_eq!(throttled_parts.len(), 2, "{requests:#?}");
    assert!(read_object(&direct, "big", &cancel).await.unwrap() == big);
    assert!(incomplete_uploads(&direct).await.is_empty());
    eprintln!(
        "6 throttled requests retried in {:?}; {} requests in all",
        started.elapsed(),
        requests.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_mid_upload_fails_temporarily_and_stores_nothing() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let dir = tempfile::tempdir().unwrap();
    let (direct, proxy, sink) =
        sinks(&server.endpoint(), "cut-off", SEAWEEDFS_KEYS, dir.path()).await;
    let cancel = CancellationToken::new();

    // 8 parts of 5 MiB; the endpoint goes away during the third.
    let data = test_data(8 * PART_SIZE, 3);
    proxy.cut_after_bytes(12 << 20);
    let started = Instant::now();
    let err = sink
        .put("big/cut", live_stream(data.clone(), 1 << 20), &cancel)
        .await
        .unwrap_err();
    let failed_after = started.elapsed();
    eprintln!("endpoint down mid-upload ({failed_after:?}): {err}");
    assert!(proxy.is_down());
    assert_eq!(err.kind(), ErrorKind::Temporary, "{err}");
    match &err {
        SinkError::Remote { bucket, key, .. } => {
            assert_eq!(bucket, "cut-off");
            assert_eq!(key, "repo/big/cut");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("\"cut-off\"") && message.contains("\"repo/big/cut\""),
        "{message}"
    );

    // The SDK retried: a part the cut interrupted went out again (and was refused).
    let requests = proxy.requests();
    let mut parts: BTreeMap<&str, Vec<Outcome>> = BTreeMap::new();
    for r in requests
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
    {
        parts.entry(&r.target).or_default().push(r.outcome);
    }
    let retried: Vec<_> = parts
        .iter()
        .filter(|(_, o)| o.contains(&Outcome::Forwarded) && o.contains(&Outcome::Refused))
        .collect();
    assert!(!retried.is_empty(), "no part was retried: {parts:#?}");
    let refused = requests
        .iter()
        .filter(|r| r.outcome == Outcome::Refused)
        .count();
    eprintln!(
        "{refused} requests refused while down; attempts per part: {:?}",
        parts.values().collect::<Vec<_>>()
    );

    proxy.heal();
    assert!(sink.list("big/", &cancel).await.unwrap().is_empty());
    assert_eq!(sink.head("big/cut", &cancel).await.unwrap(), None);
    // Its abort could not reach the store either: the upload waits for the sweep.
    assert_eq!(incomplete_uploads(&direct).await, ["repo/big/cut"]);
    let swept = sink
        .sweep_incomplete("big/", Duration::ZERO, &cancel)
        .await
        .unwrap();
    assert_eq!(swept, 1);
    assert!(incomplete_uploads(&direct).await.is_empty());

    // Healed, the same put goes through.
    let receipt = sink
        .put("big/cut", live_stream(data.clone(), 1 << 20), &cancel)
        .await
        .unwrap();
    assert_eq!(receipt.sha256, sha256(&data));
    assert!(read_object(&direct, "big/cut", &cancel).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_before_a_put_is_a_temporary_error_naming_the_bucket() {
    if skip_s3_tests() {
        return;
    }
    let server = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (direct, proxy, sink) = sinks(
        &server.endpoint(),
        "down-before",
        ("testing", "testing"),
        dir.path(),
    )
    .await;
    let cancel = CancellationToken::new();

    proxy.go_down();
    let started = Instant::now();
    let err = put_bytes(&sink, "obj", &b"data"[..], &cancel)
        .await
        .unwrap_err();
    eprintln!("endpoint down ({:?}): {err}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Temporary, "{err}");
    let message = err.to_string();
    assert!(message.contains("\"down-before\""), "{message}");
    assert!(message.contains("\"repo/obj\""), "{message}");
    assert!(message.contains("check the endpoint"), "{message}");
    let requests = proxy.requests();
    assert!(
        requests.len() >= 2 && requests.iter().all(|r| r.outcome == Outcome::Refused),
        "expected retried, refused requests: {requests:#?}"
    );
    eprintln!("{} attempts, all refused", requests.len());

    proxy.heal();
    put_bytes(&sink, "obj", &b"data"[..], &cancel)
        .await
        .unwrap();
    assert_eq!(read_object(&direct, "obj", &cancel).await.unwrap(), b"data");
}
