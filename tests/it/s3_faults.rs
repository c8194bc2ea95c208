//! An S3 repository whose endpoint goes down in the middle of a backup (a `FaultProxy`
//! between backupctl and SeaweedFS): the backup fails cleanly, nothing half-written counts
//! as a backup, and once the endpoint is back a backup, verify, restore and gc all work.

use std::time::Instant;

use backup_sinks::Sink;
use backup_testing::proxy::{FaultProxy, Outcome};
use backup_testing::s3::{create_bucket, incomplete_uploads};
use backup_testing::servers::{
    skip_s3_tests, SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY,
};
use tokio_util::sync::CancellationToken;

use crate::roundtrip::build_varied_tree;
use crate::s3::{runtime, s3_config_toml, setup_sink, write_s3_keys};
use crate::support::*;

const BUCKET: &str = "backupd-faults";

#[test]
fn endpoint_down_mid_backup_fails_cleanly_and_the_next_backup_works() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let proxy = FaultProxy::start(&server.endpoint());
    let work = Work::new();
    work.write_config(&s3_config_toml(
        "region-a",
        &proxy.endpoint(),
        BUCKET,
        5,
        "concurrency = 2\n",
    ));
    write_s3_keys(&work, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);
    build_varied_tree(&work);
    // Incompressible, so the data artifact needs several 5 MiB parts.
    write_file(
        &work.data().join("large.bin"),
        &random_bytes(30 << 20, 11),
        0o644,
    );
    let source = snapshot(&work.data());
    let rt = runtime();
    // On the server itself, not through the proxy.
    let direct = setup_sink(&rt, &work, &server.endpoint(), BUCKET, "repo");
    rt.block_on(create_bucket(&direct, false));
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
    assert_eq!(
        rt.block_on(incomplete_uploads(&direct)),
        Vec::<String>::new()
    );
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
