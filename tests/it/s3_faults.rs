//! An S3 repository whose endpoint goes down in the middle of a backup (a `FaultProxy`
//! between backupctl and SeaweedFS): the backup fails cleanly, nothing half-written counts
//! as a backup, and once the endpoint is back a backup, verify, restore and gc all work.

use std::time::{Duration, Instant};

use backup_sinks::{S3Credentials, S3Options, S3Sink, SecretSource, Sink};
use backup_testing::proxy::{FaultProxy, Outcome};
use backup_testing::servers::{
    skip_s3_tests, SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY,
};
use tokio_util::sync::CancellationToken;

use crate::roundtrip::build_varied_tree;
use crate::support::*;

const BUCKET: &str = "backupd-faults";

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
concurrency = 2
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

/// A sink on the server itself (not through the proxy), for setup and checks.
fn direct_sink(rt: &tokio::runtime::Runtime, work: &Work, endpoint: &str) -> S3Sink {
    let mut options = S3Options::new("direct", BUCKET, "us-east-1");
    options.endpoint = Some(endpoint.to_owned());
    options.force_path_style = true;
    options.prefix = "repo".into();
    options.credentials = S3Credentials::Static {
        access_key_id: SecretSource::File(work.path("s3-key-id")),
        secret_access_key: SecretSource::File(work.path("s3-secret")),
    };
    rt.block_on(S3Sink::new(options)).unwrap()
}

/// Creates the bucket, retrying while the server settles.
fn create_bucket(rt: &tokio::runtime::Runtime, sink: &S3Sink) {
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sink.client().create_bucket().bucket(BUCKET).send().await {
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

/// Keys of the bucket's incomplete multipart uploads.
fn incomplete_uploads(rt: &tokio::runtime::Runtime, sink: &S3Sink) -> Vec<String> {
    rt.block_on(async {
        let page = sink
            .client()
            .list_multipart_uploads()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        page.uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_owned))
            .collect()
    })
}

#[test]
fn endpoint_down_mid_backup_fails_cleanly_and_the_next_backup_works() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let proxy = FaultProxy::start(&server.endpoint());
    let work = Work::new();
    work.write_config(&s3_config(&proxy.endpoint()));
    std::fs::write(work.path("s3-key-id"), SEAWEEDFS_ACCESS_KEY).unwrap();
    std::fs::write(work.path("s3-secret"), SEAWEEDFS_SECRET_KEY).unwrap();
    build_varied_tree(&work);
    // Incompressible, so the data artifact needs several 5 MiB parts.
    write_file(
        &work.data().join("large.bin"),
        &random_bytes(30 << 20, 11),
        0o644,
    );
    let source = snapshot(&work.data());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let direct = direct_sink(&rt, &work, &server.endpoint());
    create_bucket(&rt, &direct);
    work.init();

    // The endpoint goes away during the third part of the data upload.
    proxy.cut_after_bytes(12 << 20);
    let started = Instant::now();
    let out = work.run(&["backup", "files"]);
    eprintln!(
        "backup with the endpoint gone ({:?}):\n{}",
        started.elapsed(),
        out.dump()
    );
    out.expect_code(EXIT_FAILED);
    assert!(proxy.is_down());
    assert!(out.stderr.contains(BUCKET), "{}", out.dump());
    assert!(!out.text().contains(SEAWEEDFS_SECRET_KEY), "{}", out.dump());
    let requests = proxy.requests();
    let refused = requests
        .iter()
        .filter(|r| r.outcome == Outcome::Refused)
        .count();
    assert!(refused > 0, "nothing was retried: {requests:#?}");
    eprintln!("{refused} requests refused while the endpoint was down");
    // Listed as failed (or not at all), never as complete.
    let listed = work.list();
    assert!(
        listed.iter().all(|b| b["status"] == "failed"),
        "{listed:#?}"
    );

    proxy.heal();
    let id = work.backup();
    assert_eq!(work.status_of(&id), "complete");
    work.ok(&["verify", "--all"]);
    let target = work.path("restored");
    work.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_same_tree(&source, &snapshot(&target.join("data")), true);

    work.ok(&["gc", "--grace", "0s"]);
    assert_eq!(incomplete_uploads(&rt, &direct), Vec::<String>::new());
    // Only the good backup's objects are left in the bucket.
    let cancel = CancellationToken::new();
    let objects = rt.block_on(direct.list("backups/", &cancel)).unwrap();
    assert!(!objects.is_empty());
    let strays: Vec<_> = objects
        .iter()
        .filter(|o| !o.key.starts_with(&format!("backups/{id}/")))
        .map(|o| &o.key)
        .collect();
    assert!(
        strays.is_empty(),
        "objects of the failed backup remain: {strays:?}"
    );
}
