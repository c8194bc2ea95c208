//! A repository of `kind = "s3"` on a real S3 server (SeaweedFS): init, backup,
//! verify (full and quick) and restore through backupctl, exactly as with a
//! local repository.

use std::time::{Duration, Instant};

use backup_sinks::{S3Credentials, S3Options, S3Sink, SecretSource};
use backup_testing::servers::{
    skip_s3_tests, SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY,
};

use crate::roundtrip::build_varied_tree;
use crate::support::*;

const BUCKET: &str = "backupd-it";

fn s3_config(endpoint: &str) -> String {
    format!(
        r#"[catalog]
url = "sqlite://var/catalog.db"
[encryption]
key-file = "var/keys/repo.key"
[[repository]]
name = "region-a"
kind = "s3"
bucket = "{BUCKET}"
region = "us-east-1"
prefix = "repo"
endpoint = "{endpoint}"
force-path-style = true
part-size-mib = 5
access-key-id-file = "s3-key-id"
secret-access-key-file = "s3-secret"
[[source]]
name = "files"
kind = "files"
paths = ["./data"]
repository = "region-a"
"#
    )
}

/// Creates the bucket (the repository expects it to exist), retrying while the server settles.
fn create_bucket(work: &Work, endpoint: &str) {
    create_bucket_named(work, endpoint, BUCKET);
}

/// Creates `bucket` with the credentials in the work dir's `s3-key-id` / `s3-secret` files.
pub fn create_bucket_named(work: &Work, endpoint: &str, bucket: &str) {
    let mut options = S3Options::new("setup", bucket, "us-east-1");
    options.endpoint = Some(endpoint.to_owned());
    options.force_path_style = true;
    options.credentials = S3Credentials::Static {
        access_key_id: SecretSource::File(work.path("s3-key-id")),
        secret_access_key: SecretSource::File(work.path("s3-secret")),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sink = S3Sink::new(options).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sink.client().create_bucket().bucket(bucket).send().await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create bucket: {e:?}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("create bucket: {e:?}"),
            }
        }
    });
}

#[test]
fn backup_verify_and_restore_through_an_s3_repository() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let endpoint = server.endpoint();
    let work = Work::new();
    work.write_config(&s3_config(&endpoint));
    std::fs::write(work.path("s3-key-id"), SEAWEEDFS_ACCESS_KEY).unwrap();
    std::fs::write(work.path("s3-secret"), SEAWEEDFS_SECRET_KEY).unwrap();
    build_varied_tree(&work);
    // Big enough for multipart uploads (5 MiB parts).
    write_file(
        &work.data().join("large.bin"),
        &mixed_bytes(12 << 20, 9),
        0o644,
    );
    let source = snapshot(&work.data());
    create_bucket(&work, &endpoint);

    work.init();
    let id = work.backup();
    assert_eq!(work.status_of(&id), "complete");
    work.ok(&["verify", &id]).expect_mentions(&[&id]);
    work.ok(&["verify", "--all", "--quick"]);
    let target = work.path("restored");
    work.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_same_tree(&source, &snapshot(&target.join("data")), true);
    // The secret never shows up in what backupctl prints.
    let shown = work.ok(&["show", &id]);
    assert!(!shown.text().contains(SEAWEEDFS_SECRET_KEY));

    // A wrong secret is a clear, immediate failure naming the bucket.
    std::fs::write(work.path("s3-secret"), "not-the-secret").unwrap();
    let out = work.run(&["backup", "files"]);
    assert_ne!(out.code, EXIT_OK, "{}", out.dump());
    assert!(out.text().contains(BUCKET), "{}", out.dump());
    assert!(!out.text().contains("not-the-secret"), "{}", out.dump());
}
