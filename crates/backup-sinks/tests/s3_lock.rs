//! Object Lock, legal holds and archive thaw of the S3 sink, on real servers. SeaweedFS and
//! moto both enforce retention on deletes by version id; moto's GetObjectRetention is broken
//! in server mode (it answers 500 with the object's body), so there the retention is read
//! from HEAD, and it ignores the retention headers of CreateMultipartUpload (SeaweedFS
//! checks multipart objects). Only moto knows archive storage classes and RestoreObject.

#![cfg(feature = "s3")]

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::DateTime;
use backup_sinks::{
    put_bytes, read_object, ErrorKind, ObjectLock, ObjectLockMode, RestoreRequested, RestoreTier,
    S3Options, S3Sink, Sink, SinkError, ThawState,
};
use backup_testing::s3::{create_bucket, key_files, test_options, PART_SIZE};
use backup_testing::servers::{
    skip_s3_tests, Moto, SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY,
};
use backup_testing::sink::test_data;
use tokio_util::sync::CancellationToken;

/// Retention of the locked test objects.
const DAYS: u32 = 2;

/// Options for a sink of repository `repo-<bucket>` on a test server, with credentials in
/// files under `dir`.
fn options(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    keys: (&str, &str),
    dir: &Path,
) -> S3Options {
    test_options(
        format!("repo-{bucket}"),
        endpoint,
        bucket,
        prefix,
        key_files(dir, keys),
    )
}

fn lock(mode: ObjectLockMode) -> Option<ObjectLock> {
    Some(ObjectLock { mode, days: DAYS })
}

/// The stored object's lock mode, retain-until date and version id, from HEAD.
async fn lock_of(sink: &S3Sink, key: &str) -> (Option<String>, Option<SystemTime>, String) {
    let head = sink
        .client()
        .head_object()
        .bucket(sink.bucket())
        .key(format!("{}{key}", sink.prefix()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("head {key}: {}", DisplayErrorContext(&e)));
    (
        head.object_lock_mode().map(|m| m.as_str().to_owned()),
        head.object_lock_retain_until_date()
            .map(|d| SystemTime::try_from(*d).unwrap()),
        head.version_id()
            .expect("a locked bucket is versioned")
            .to_owned(),
    )
}

/// Asserts `until` is `DAYS` after a write made between `before` and `after` (S3 keeps
/// whole seconds).
fn assert_retained_for_days(until: SystemTime, before: SystemTime, after: SystemTime) {
    let retention = Duration::from_secs(u64::from(DAYS) * 86_400);
    let slack = Duration::from_secs(2);
    assert!(
        until + slack >= before + retention && until <= after + retention + slack,
        "retained until {:?}, expected {DAYS} days after the write ({:?})",
        DateTime::from(until),
        DateTime::from(before)
    );
}

/// A sink whose repository wants Object Lock refuses a bucket without it, naming the
/// bucket, the repository and the fix; the same bucket is fine without `object-lock`.
async fn unlocked_bucket_is_refused(endpoint: &str, keys: (&str, &str), dir: &Path) {
    let cancel = CancellationToken::new();
    let mut plain = options(endpoint, "unlocked", "repo", keys, dir);
    let unlocked = S3Sink::new(plain.clone()).await.unwrap();
    create_bucket(&unlocked, false).await;
    unlocked.verify(&cancel).await.unwrap();
    plain.object_lock = lock(ObjectLockMode::Governance);
    let wants_lock = S3Sink::new(plain).await.unwrap();
    let err = wants_lock.verify(&cancel).await.unwrap_err();
    eprintln!("bucket without object lock: {err}");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    let msg = err.to_string();
    for needle in [
        "\"unlocked\"",
        "\"repo-unlocked\"",
        "does not have Object Lock enabled",
        "--object-lock-enabled-for-bucket",
        "remove `object-lock` from repository \"repo-unlocked\"",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing in: {msg}");
    }

    // Legal holds need Object Lock too; the error says where and why.
    put_bytes(&unlocked, "plain", &b"data"[..], &cancel)
        .await
        .unwrap();
    let err = unlocked
        .set_legal_hold("plain", true, &cancel)
        .await
        .unwrap_err();
    eprintln!("legal hold without object lock: {err}");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"unlocked\"") && msg.contains("repo/plain") && msg.contains("Object Lock"),
        "{msg}"
    );
}

/// Objects written through a locked sink carry the retention, single-part and multipart;
/// the server refuses to delete a retained version; the sink's delete only hides it; legal
/// holds go on and off.
async fn object_lock_is_enforced(
    endpoint: &str,
    keys: (&str, &str),
    dir: &Path,
    get_object_retention_works: bool,
    multipart_keeps_lock: bool,
) {
    let cancel = CancellationToken::new();
    let mut locked = options(endpoint, "locked", "repo", keys, dir);
    locked.object_lock = lock(ObjectLockMode::Compliance);
    let sink = S3Sink::new(locked.clone()).await.unwrap();
    assert_eq!(
        sink.object_lock(),
        lock(ObjectLockMode::Compliance).as_ref()
    );
    create_bucket(&sink, true).await;
    sink.verify(&cancel).await.unwrap();

    let small = test_data(1000, 1);
    let big = test_data(2 * PART_SIZE + 100, 2);
    let before = SystemTime::now();
    put_bytes(&sink, "small", small.clone(), &cancel)
        .await
        .unwrap();
    put_bytes(&sink, "big", big.clone(), &cancel).await.unwrap();
    let after = SystemTime::now();
    let keys: &[&str] = if multipart_keeps_lock {
        &["small", "big"]
    } else {
        &["small"]
    };
    for &key in keys {
        let (mode, until, version) = lock_of(&sink, key).await;
        assert_eq!(mode.as_deref(), Some("COMPLIANCE"), "{key}");
        assert_retained_for_days(until.expect("a retain-until date"), before, after);
        if get_object_retention_works {
            let retention = sink
                .client()
                .get_object_retention()
                .bucket(sink.bucket())
                .key(format!("repo/{key}"))
                .send()
                .await
                .unwrap();
            let retention = retention.retention().unwrap();
            assert_eq!(retention.mode().map(|m| m.as_str()), Some("COMPLIANCE"));
            let until = SystemTime::try_from(*retention.retain_until_date().unwrap()).unwrap();
            assert_retained_for_days(until, before, after);
        }
        // The locked version cannot be deleted, not even by its owner.
        let refused = sink
            .client()
            .delete_object()
            .bucket(sink.bucket())
            .key(format!("repo/{key}"))
            .version_id(&version)
            .send()
            .await;
        let err = refused.expect_err("deleting a version under compliance retention");
        eprintln!("delete of a locked version: {}", DisplayErrorContext(&err));
        assert_eq!(
            aws_sdk_s3::error::ProvideErrorMetadata::code(&err),
            Some("AccessDenied")
        );
    }
    assert!(read_object(&sink, "big", &cancel).await.unwrap() == big);

    // The sink's delete leaves a delete marker: the object is gone for readers, the locked
    // version stays and can still be read by its id.
    let (_, _, version) = lock_of(&sink, "small").await;
    sink.delete("small", &cancel).await.unwrap();
    assert_eq!(sink.head("small", &cancel).await.unwrap(), None);
    let kept = sink
        .client()
        .get_object()
        .bucket(sink.bucket())
        .key("repo/small")
        .version_id(&version)
        .send()
        .await
        .unwrap();
    assert_eq!(kept.body.collect().await.unwrap().into_bytes(), small);

    // Governance mode: also refused to a caller that does not ask to bypass it.
    let mut governed = locked;
    governed.prefix = "gov".into();
    governed.object_lock = lock(ObjectLockMode::Governance);
    let governed = S3Sink::new(governed).await.unwrap();
    put_bytes(&governed, "obj", &b"governed"[..], &cancel)
        .await
        .unwrap();
    let (mode, until, version) = lock_of(&governed, "obj").await;
    assert_eq!(mode.as_deref(), Some("GOVERNANCE"));
    assert!(until.is_some());
    let refused = governed
        .client()
        .delete_object()
        .bucket(governed.bucket())
        .key("gov/obj")
        .version_id(version)
        .send()
        .await;
    assert!(refused.is_err(), "deleted a version under governance");

    // Legal holds: off until set, then on, then off again.
    assert!(!sink.legal_hold("big", &cancel).await.unwrap());
    sink.set_legal_hold("big", true, &cancel).await.unwrap();
    assert!(sink.legal_hold("big", &cancel).await.unwrap());
    sink.set_legal_hold("big", false, &cancel).await.unwrap();
    assert!(!sink.legal_hold("big", &cancel).await.unwrap());
    let err = sink.legal_hold("missing", &cancel).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = sink
        .set_legal_hold("missing", true, &cancel)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_object_lock_and_legal_hold() {
    if skip_s3_tests() {
        return;
    }
    let server = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = ("testing", "testing");
    unlocked_bucket_is_refused(&server.endpoint(), keys, dir.path()).await;
    object_lock_is_enforced(&server.endpoint(), keys, dir.path(), false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_object_lock_and_legal_hold() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = (SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);
    unlocked_bucket_is_refused(&server.endpoint(), keys, dir.path()).await;
    object_lock_is_enforced(&server.endpoint(), keys, dir.path(), true, true).await;
}

/// DEEP_ARCHIVE objects are frozen until restored; moto completes restores at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_archive_thaw() {
    if skip_s3_tests() {
        return;
    }
    let server = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = server.endpoint();
    let keys = ("testing", "testing");
    let cancel = CancellationToken::new();
    let warm = S3Sink::new(options(&endpoint, "archive", "warm", keys, dir.path()))
        .await
        .unwrap();
    create_bucket(&warm, false).await;
    let mut cold = options(&endpoint, "archive", "cold", keys, dir.path());
    cold.storage_class = Some("DEEP_ARCHIVE".into());
    let cold = S3Sink::new(cold).await.unwrap();
    let data = test_data(3000, 7);
    put_bytes(&cold, "obj", data.clone(), &cancel)
        .await
        .unwrap();

    let err = cold.get("obj", &cancel).await.unwrap_err();
    assert!(err.to_string().contains("restore it first"), "{err}");
    assert_eq!(
        cold.thaw_state("obj", &cancel).await.unwrap(),
        ThawState::Frozen
    );

    // Deep Archive has no expedited tier (AWS refuses it; moto would accept it): the sink
    // says so before asking, and nothing is requested.
    let err = cold
        .request_restore("obj", 1, RestoreTier::Expedited, &cancel)
        .await
        .unwrap_err();
    eprintln!("expedited on DEEP_ARCHIVE: {err}");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("expedited") && msg.contains("DEEP_ARCHIVE") && msg.contains("cold/obj"),
        "{msg}"
    );
    assert_eq!(
        cold.thaw_state("obj", &cancel).await.unwrap(),
        ThawState::Frozen
    );
    let err = cold
        .request_restore("obj", 0, RestoreTier::Standard, &cancel)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 1 day"), "{err}");

    assert_eq!(
        cold.request_restore("obj", 3, RestoreTier::Standard, &cancel)
            .await
            .unwrap(),
        RestoreRequested::Started
    );
    // moto finishes the restore immediately, with an expiry date.
    let state = cold.thaw_state("obj", &cancel).await.unwrap();
    let ThawState::Restored {
        expires: Some(expires),
    } = &state
    else {
        panic!("expected a restored copy with an expiry date, got {state:?}");
    };
    assert!(expires.ends_with("GMT"), "{expires}");
    assert!(read_object(&cold, "obj", &cancel).await.unwrap() == data);
    assert_eq!(
        cold.request_restore("obj", 3, RestoreTier::Bulk, &cancel)
            .await
            .unwrap(),
        RestoreRequested::AlreadyAvailable
    );

    // GLACIER (Flexible Retrieval) has an expedited tier.
    let mut glacier = options(&endpoint, "archive", "glacier", keys, dir.path());
    glacier.storage_class = Some("GLACIER".into());
    let glacier = S3Sink::new(glacier).await.unwrap();
    put_bytes(&glacier, "obj", &b"glacier"[..], &cancel)
        .await
        .unwrap();
    assert_eq!(
        glacier.thaw_state("obj", &cancel).await.unwrap(),
        ThawState::Frozen
    );
    assert_eq!(
        glacier
            .request_restore("obj", 1, RestoreTier::Expedited, &cancel)
            .await
            .unwrap(),
        RestoreRequested::Started
    );

    // Objects in a readable class need nothing.
    put_bytes(&warm, "obj", &b"warm"[..], &cancel)
        .await
        .unwrap();
    assert_eq!(
        warm.thaw_state("obj", &cancel).await.unwrap(),
        ThawState::NotArchived
    );
    assert_eq!(
        warm.request_restore("obj", 1, RestoreTier::Expedited, &cancel)
            .await
            .unwrap(),
        RestoreRequested::NotArchived
    );
    for result in [
        cold.thaw_state("missing", &cancel).await.map(|_| ()),
        cold.request_restore("missing", 1, RestoreTier::Standard, &cancel)
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(SinkError::NotFound { .. })),
            "{result:?}"
        );
    }
}
