//! A repository of `kind = "s3"` on a real S3 server (SeaweedFS): init, backup,
//! verify (full and quick) and restore through backupctl, exactly as with a
//! local repository. Also the S3 setup the other end-to-end tests share: the
//! repository's config and a sink for setup and checks, with the credentials of
//! the work dir's `s3-key-id` / `s3-secret` files.

use backup_sinks::{S3Credentials, S3Sink, SecretSource};
use backup_testing::s3::{create_bucket, test_options};
use backup_testing::servers::{
    skip_s3_tests, SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY,
};
use tokio::runtime::Runtime;

use crate::roundtrip::build_varied_tree;
use crate::support::*;

const BUCKET: &str = "backupd-it";

/// A `[[repository]]` named `name` in `bucket` (keys under `repo/`) at `endpoint`, with
/// the credentials of the work dir's `s3-key-id` / `s3-secret` files; `extra`: more lines
/// of its table, each ending in a newline.
pub fn s3_repository_toml(
    name: &str,
    endpoint: &str,
    bucket: &str,
    part_size_mib: u32,
    extra: &str,
) -> String {
    format!(
        r#"[[repository]]
name = "{name}"
kind = "s3"
bucket = "{bucket}"
region = "us-east-1"
prefix = "repo"
endpoint = "{endpoint}"
force-path-style = true
part-size-mib = {part_size_mib}
access-key-id-file = "s3-key-id"
secret-access-key-file = "s3-secret"
{extra}"#
    )
}

/// A whole config: [`CONFIG_HEAD`], the S3 repository of [`s3_repository_toml`] and the
/// `files` source backing up `./data` to it.
pub fn s3_config_toml(
    name: &str,
    endpoint: &str,
    bucket: &str,
    part_size_mib: u32,
    extra: &str,
) -> String {
    format!(
        "{CONFIG_HEAD}{}{}",
        s3_repository_toml(name, endpoint, bucket, part_size_mib, extra),
        files_source_toml(name, "")
    )
}

/// Writes the credentials that [`s3_repository_toml`] and [`setup_sink`] read: the work
/// dir's `s3-key-id` and `s3-secret` files.
pub fn write_s3_keys(work: &Work, access_key: &str, secret_key: &str) {
    std::fs::write(work.path("s3-key-id"), access_key).unwrap();
    std::fs::write(work.path("s3-secret"), secret_key).unwrap();
}

/// A current-thread runtime for a test's S3 setup and checks.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A sink on `bucket` (keys under `prefix`) at `endpoint`, with the credentials in the work
/// dir's `s3-key-id` / `s3-secret` files: for setup and checks next to the repository that
/// backupctl uses.
pub fn setup_sink(rt: &Runtime, work: &Work, endpoint: &str, bucket: &str, prefix: &str) -> S3Sink {
    let credentials = S3Credentials::Static {
        access_key_id: SecretSource::File(work.path("s3-key-id")),
        secret_access_key: SecretSource::File(work.path("s3-secret")),
    };
    let options = test_options("setup", endpoint, bucket, prefix, credentials);
    rt.block_on(S3Sink::new(options)).unwrap()
}

/// Creates `bucket` (the repository expects it to exist) with the credentials in the work
/// dir's `s3-key-id` / `s3-secret` files, retrying while the server settles. For a bucket
/// with Object Lock, or to keep the sink for checks, use [`setup_sink`] and
/// [`create_bucket`].
pub fn create_bucket_named(work: &Work, endpoint: &str, bucket: &str) {
    let rt = runtime();
    let sink = setup_sink(&rt, work, endpoint, bucket, "");
    rt.block_on(create_bucket(&sink, false));
}

#[test]
fn backup_verify_and_restore_through_an_s3_repository() {
    if skip_s3_tests() {
        return;
    }
    let server = SeaweedFs::start();
    let endpoint = server.endpoint();
    let work = Work::new();
    work.write_config(&s3_config_toml("region-a", &endpoint, BUCKET, 5, ""));
    write_s3_keys(&work, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);
    build_varied_tree(&work);
    // Big enough for multipart uploads (5 MiB parts).
    write_file(
        &work.data().join("large.bin"),
        &mixed_bytes(12 << 20, 9),
        0o644,
    );
    let source = snapshot(&work.data());
    create_bucket_named(&work, &endpoint, BUCKET);

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
