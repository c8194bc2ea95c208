//! Back up a varied tree and restore it exactly.

use std::fs;
use std::os::unix::fs::symlink;

use crate::support::*;

/// Builds a tree with nested dirs, an empty file, a 5 MiB mixed file, symlinks,
/// odd modes and set mtimes (with nanoseconds) under `work.data()`.
pub fn build_varied_tree(work: &Work) {
    let d = work.data();
    write_file(&d.join("empty"), b"", 0o644);
    write_file(&d.join("big.bin"), &mixed_bytes(5 << 20, 1), 0o640);
    write_file(&d.join("secret.txt"), b"only for me\n", 0o600);
    write_file(&d.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&d.join("readonly.txt"), b"look, don't touch\n", 0o444);
    write_file(&d.join("a/b/c/deep.txt"), b"deep down\n", 0o644);
    write_file(&d.join("a/b/sibling.dat"), &random_bytes(70_000, 2), 0o600);
    write_file(
        &d.join("a/name with spaces & ünïcödé.txt"),
        b"odd name\n",
        0o644,
    );
    fs::create_dir_all(d.join("a/empty-dir")).unwrap();
    fs::create_dir_all(d.join("private")).unwrap();
    write_file(&d.join("private/key"), b"k", 0o400);
    symlink("a/b/c/deep.txt", d.join("link-relative")).unwrap();
    symlink("/nonexistent/target", d.join("link-dangling")).unwrap();
    symlink("b", d.join("a/link-to-dir")).unwrap();

    set_mtime(&d.join("big.bin"), 1_600_000_000, 123_456_789);
    set_mtime(&d.join("empty"), 1_000_000_000, 1);
    set_mtime(&d.join("run.sh"), 1_700_000_000, 999_999_999);
    set_mtime(&d.join("a/b/c/deep.txt"), 1_234_567_890, 500_000_000);
    // Directories last, deepest first, so creating children does not undo it.
    set_mode(&d.join("private"), 0o700);
    set_mode(&d.join("a/b"), 0o750);
    set_mtime(&d.join("a/b/c"), 1_500_000_000, 42);
    set_mtime(&d.join("a/b"), 1_500_000_001, 43);
    set_mtime(&d.join("a/empty-dir"), 1_500_000_002, 44);
    set_mtime(&d.join("private"), 1_500_000_003, 45);
    set_mtime(&d.join("a"), 1_500_000_004, 46);
    set_mtime(&d, 1_500_000_005, 47);
}

#[test]
fn round_trip_restores_every_path_exactly() {
    let work = Work::new();
    build_varied_tree(&work);
    let source = snapshot(&work.data());
    work.init();
    let id = work.backup();

    let listed = work.listed(&id).expect("new backup is listed");
    assert_eq!(listed["status"], "complete", "{listed:#}");
    assert_eq!(listed["source"], "files");
    let files = source
        .values()
        .filter(|n| matches!(n.kind, Kind::File { .. }))
        .count();
    assert_eq!(listed["file_count"], files as u64, "{listed:#}");
    assert_eq!(listed["skipped_count"], 0);
    assert!(
        listed["plaintext_bytes"].as_u64().unwrap() >= 5 << 20,
        "{listed:#}"
    );

    work.ok(&["verify", &id]).expect_mentions(&[&id]);
    work.ok(&["verify", &id, "--quick"]).expect_mentions(&[&id]);
    work.ok(&["verify", "--all"]);

    let target = work.path("restore-1");
    work.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_same_tree(&source, &snapshot(&target.join("data")), true);
    assert_eq!(
        fs::read_dir(&target).unwrap().count(),
        1,
        "restore writes only <target>/data"
    );

    // A target that does not exist yet is created; --latest picks the only backup.
    let latest = work.path("restore-latest/nested");
    work.ok(&[
        "restore",
        "--source",
        "files",
        "--latest",
        "--target",
        latest.to_str().unwrap(),
    ]);
    assert_same_tree(&source, &snapshot(&latest.join("data")), true);

    // A non-empty target is refused without --force and left alone.
    let busy = work.path("restore-busy");
    write_file(&busy.join("data/big.bin"), b"something else", 0o600);
    write_file(&busy.join("unrelated.txt"), b"keep me", 0o644);
    work.run(&["restore", &id, "--target", busy.to_str().unwrap()])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["not empty", "--force"]);
    assert_eq!(
        fs::read(busy.join("data/big.bin")).unwrap(),
        b"something else"
    );

    // With --force the backup's paths are replaced; other files stay.
    work.ok(&[
        "restore",
        &id,
        "--target",
        busy.to_str().unwrap(),
        "--force",
    ]);
    assert_same_tree(&source, &snapshot(&busy.join("data")), true);
    assert_eq!(fs::read(busy.join("unrelated.txt")).unwrap(), b"keep me");

    // Forcing over a previous restore of the same backup also yields the exact tree.
    work.ok(&[
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
        "--force",
    ]);
    assert_same_tree(&source, &snapshot(&target.join("data")), true);
}
