//! Setup and checks for tests of the S3 sink on the servers of [`crate::servers`]: options
//! with static credentials, a bucket created on a server that has just started, and the
//! multipart uploads a test left behind.

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use backup_sinks::{S3Credentials, S3Options, S3Sink, SecretSource};

/// Part size of the test sinks: S3's smallest, so that a few MiB make a multipart upload.
pub const PART_SIZE: usize = backup_sinks::s3::MIN_PART_SIZE;

/// How long [`create_bucket`] keeps trying while a just-started server settles.
const CREATE_BUCKET_DEADLINE: Duration = Duration::from_secs(30);

/// Options for a sink named `name` on `bucket` (keys under `prefix`) of the test server at
/// `endpoint`: region `us-east-1`, path-style addressing, [`PART_SIZE`] parts, two at a time.
pub fn test_options(
    name: impl Into<String>,
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    credentials: S3Credentials,
) -> S3Options {
    let mut options = S3Options::new(name, bucket, "us-east-1");
    options.prefix = prefix.to_owned();
    options.endpoint = Some(endpoint.to_owned());
    options.force_path_style = true;
    options.part_size = PART_SIZE;
    options.concurrency = 2;
    options.credentials = credentials;
    options
}

/// Static credentials `(access key id, secret)`, written to files under `dir` the way an
/// operator gives them to backupd (one value a file, with a newline). Each key pair gets
/// files of its own, so sinks with other (or wrong) keys can share `dir`.
pub fn key_files(dir: &Path, (access_key, secret_key): (&str, &str)) -> S3Credentials {
    let id_file = dir.join(format!("access-key-{access_key}-{secret_key}"));
    let secret_file = dir.join(format!("secret-key-{access_key}-{secret_key}"));
    std::fs::write(&id_file, format!("{access_key}\n")).unwrap();
    std::fs::write(&secret_file, format!("{secret_key}\n")).unwrap();
    S3Credentials::Static {
        access_key_id: SecretSource::File(id_file),
        secret_access_key: SecretSource::File(secret_file),
    }
}

/// Creates the sink's bucket, with Object Lock if `object_lock`, retrying for up to 30 s
/// while a just-started server settles. Panics with the server's error after that.
pub async fn create_bucket(sink: &S3Sink, object_lock: bool) {
    let deadline = Instant::now() + CREATE_BUCKET_DEADLINE;
    loop {
        let request = sink
            .client()
            .create_bucket()
            .bucket(sink.bucket())
            .set_object_lock_enabled_for_bucket(object_lock.then_some(true));
        match request.send().await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!(
                    "create bucket {}: {}; retrying",
                    sink.bucket(),
                    DisplayErrorContext(&e)
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!(
                "create bucket {}: {}",
                sink.bucket(),
                DisplayErrorContext(&e)
            ),
        }
    }
}

/// Full keys (with the prefix) of the bucket's incomplete multipart uploads, in any part
/// of the bucket.
pub async fn incomplete_uploads(sink: &S3Sink) -> Vec<String> {
    let page = sink
        .client()
        .list_multipart_uploads()
        .bucket(sink.bucket())
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "list multipart uploads of {}: {}",
                sink.bucket(),
                DisplayErrorContext(&e)
            )
        });
    page.uploads()
        .iter()
        .filter_map(|u| u.key().map(str::to_owned))
        .collect()
}
