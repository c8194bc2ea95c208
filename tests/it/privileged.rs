//! Scenarios that need root: reading as an unprivileged user (root ignores
//! permission bits) and a repository on a tiny tmpfs (mount).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A missing privilege fails the test, saying why, unless
/// BACKUPD_SKIP_PRIVILEGED_TESTS=1 (then the caller returns early).
fn fail_unless_skipping_privileged(what: &str, problem: &str) {
    if std::env::var("BACKUPD_SKIP_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping {what}: {problem} (BACKUPD_SKIP_PRIVILEGED_TESTS=1)");
        return;
    }
    panic!("{what} needs root: {problem}; run the tests as root or set BACKUPD_SKIP_PRIVILEGED_TESTS=1 to skip it");
}

/// A work dir whose data has one file the backup cannot read (mode 000, read as
/// `nobody` when running as root), initialised. Returns it with the file's
/// canonical path and the expected restore of everything else.
fn with_unreadable_file() -> (Work, PathBuf, Snapshot) {
    let mut work = Work::new();
    let d = work.data();
    write_file(&d.join("readable.txt"), b"anyone can read this\n", 0o644);
    write_file(&d.join("sub/nested.bin"), &random_bytes(50_000, 5), 0o644);
    write_file(
        &d.join("sub/zz-after.txt"),
        b"comes after the unreadable one\n",
        0o644,
    );
    write_file(&d.join("sub/locked.txt"), b"nobody may read this\n", 0o000);
    set_mode(&d.join("sub"), 0o755);
    set_mode(&d, 0o755);
    let locked = fs::canonicalize(d.join("sub/locked.txt")).unwrap();
    if is_root() {
        // root reads anything; the unprivileged user makes the file really unreadable.
        work.run_as("nobody");
    }
    let mut expected = snapshot(&d);
    expected.remove("sub/locked.txt").expect("in the snapshot");
    work.init();
    (work, locked, expected)
}

#[test]
fn an_unreadable_file_fails_or_is_skipped_as_configured() {
    let (work, _, expected) = with_unreadable_file();

    // on-unreadable = "fail"
    work.run(&["backup", "files"]).expect_code(EXIT_FAILED);
    let list = work.list();
    assert!(
        list.iter().all(|b| b["status"] != "complete"),
        "a failed backup must not be listed as complete: {list:#?}"
    );
    assert_eq!(list.len(), 1, "the failed attempt is recorded: {list:#?}");
    assert_eq!(list[0]["status"], "failed");
    let target = work.path("restore-failed");
    work.run(&[
        "restore",
        "--source",
        "files",
        "--latest",
        "--target",
        target.to_str().unwrap(),
    ])
    .expect_code(EXIT_FAILED);

    // on-unreadable = "skip"
    work.write_config(&config_toml(&ConfigOpts {
        on_unreadable: "skip",
        ..ConfigOpts::default()
    }));
    let out = work.ok(&["backup", "files"]);
    out.expect_mentions_any(&["skipped"]);
    let id = out.stdout.trim().to_owned();
    let show = work.show(&id);
    assert_eq!(show["backup"]["skipped_count"], 1, "{show:#}");
    assert_eq!(show["backup"]["status"], "complete", "{show:#}");
    assert_eq!(show["backup"]["file_count"], 3, "{show:#}");

    work.ok(&["verify", &id]);
    let target = work.path("restored");
    work.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    // An unprivileged restore cannot give files back to their owner.
    assert_same_tree(&expected, &snapshot(&target.join("data")), false);
}

#[test]
fn an_unreadable_file_with_the_fail_policy_is_named_in_the_error() {
    let (work, locked, _) = with_unreadable_file();
    work.run(&["backup", "files"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&[locked.to_str().unwrap()])
        .expect_mentions_any(&["permission denied"]);
}

/// Unmounts on drop (lazily if busy), so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Mount(dir.to_path_buf()))
        } else {
            Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn a_full_repository_fails_the_backup_cleanly() {
    disk_full_scenario(false);
}

#[test]
fn a_full_repository_leaves_no_empty_directory_behind() {
    disk_full_scenario(true);
}

/// `check_dirs`: also require that no (empty) directory of the failed backup remains.
fn disk_full_scenario(check_dirs: bool) {
    let work = Work::new();
    write_file(&work.data().join("small.txt"), b"fits easily\n", 0o644);
    write_file(
        &work.data().join("dir/also-small.bin"),
        &random_bytes(20_000, 6),
        0o600,
    );
    fs::create_dir_all(work.repo()).unwrap();
    // Declared after `work`, so it is unmounted before the tempdir is removed.
    let _mount = match Mount::tmpfs(&work.repo(), "3m") {
        Ok(m) => m,
        Err(problem) => {
            let problem = if is_root() {
                problem
            } else {
                format!("not root ({problem})")
            };
            fail_unless_skipping_privileged("the disk-full test (tmpfs repository)", &problem);
            return;
        }
    };
    let small = snapshot(&work.data());
    work.init();
    let first = work.backup();
    let before = work.repo_files();
    assert_eq!(
        backup_files_of(&before, &first).len(),
        3,
        "keys.json, data, manifest: {before:?}"
    );

    write_file(
        &work.data().join("huge.bin"),
        &random_bytes(10 << 20, 12),
        0o644,
    );
    let out = work.run(&["backup", "files"]);
    out.expect_code(EXIT_FAILED)
        .expect_mentions_any(&["no space left on device", "no space"])
        .expect_mentions(&["region-a"]);

    let list = work.list();
    let failed: Vec<_> = list.iter().filter(|b| b["id"] != first.as_str()).collect();
    assert_eq!(failed.len(), 1, "the failed backup is recorded: {list:#?}");
    assert_ne!(failed[0]["status"], "complete", "{list:#?}");
    assert_eq!(failed[0]["status"], "failed", "{list:#?}");
    let failed_id = failed[0]["id"].as_str().unwrap().to_owned();
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("no space"),
        "{list:#?}"
    );

    // The earlier backup is untouched.
    work.ok(&["verify", &first]);
    work.ok(&["verify", &first, "--quick"]);
    let target = work.path("restored");
    work.ok(&["restore", &first, "--target", target.to_str().unwrap()]);
    assert_same_tree(&small, &snapshot(&target.join("data")), true);

    work.ok(&["gc", "--grace", "0s"]);
    assert_eq!(
        work.repo_files(),
        before,
        "only the marker and the first backup's objects may remain"
    );
    let dirs = dirs_below(&work.repo());
    assert!(
        !check_dirs || !dirs.iter().any(|d| d.contains(&failed_id)),
        "the failed backup's directory is left behind: {dirs:?}"
    );

    // Space was given back: a backup that fits works again.
    fs::remove_file(work.data().join("huge.bin")).unwrap();
    let again = work.backup();
    work.ok(&["verify", &again]);
}
