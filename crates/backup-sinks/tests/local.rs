//! LocalSink behaviour beyond the shared contract: temp files, disk full, permissions.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use backup_sinks::{
    put_bytes, read_object, sha256_of_object, Fault, FaultPlan, FaultySink, IoOp, LocalSink, Sink,
    SinkError,
};
use backup_testing::sink::{sha256, test_data};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

/// Every file below `root`, relative, sorted.
fn files_below(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(root).unwrap().to_owned();
                found.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn leftover_temp_file_is_not_listed_and_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalSink::open("repo", dir.path()).unwrap();
    let cancel = CancellationToken::new();
    put_bytes(
        &sink,
        "backups/b1/data-0000.bkpd",
        &b"complete"[..],
        &cancel,
    )
    .await
    .unwrap();

    // What a crash mid-put leaves: a dot temp file next to where the object would go.
    let objects = dir.path().join("backups/b1");
    let old = objects.join(".data-0001.bkpd.tmp-0192f0c4-0000-7000-8000-000000000000");
    let fresh = objects.join(".data-0002.bkpd.tmp-0192f0c4-0000-7000-8000-000000000001");
    std::fs::write(&old, b"partial").unwrap();
    std::fs::write(&fresh, b"being written").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 3600))
        .unwrap();

    let listed: Vec<_> = sink.list("", &cancel).await.unwrap();
    let keys: Vec<_> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["backups/b1/data-0000.bkpd"]);
    assert!(sink
        .head("backups/b1/data-0001.bkpd", &cancel)
        .await
        .unwrap()
        .is_none());

    let removed = sink
        .sweep_incomplete("", Duration::from_secs(3600), &cancel)
        .await
        .unwrap();
    assert_eq!(removed, 1, "only the old leftover goes");
    assert!(!old.exists());
    assert!(
        fresh.exists(),
        "a recent temp file may belong to a live upload"
    );
    assert_eq!(
        read_object(&sink, "backups/b1/data-0000.bkpd", &cancel)
            .await
            .unwrap(),
        b"complete"
    );
    assert_eq!(
        sink.sweep_incomplete("", Duration::ZERO, &cancel)
            .await
            .unwrap(),
        1
    );
    assert!(!fresh.exists());
}

#[tokio::test]
async fn a_folder_emptied_by_the_sweep_goes_with_its_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalSink::open("repo", dir.path()).unwrap();
    let cancel = CancellationToken::new();
    // An interrupted backup whose only trace is an old temp file in an old folder.
    let folder = dir.path().join("backups/b2");
    std::fs::create_dir_all(&folder).unwrap();
    let leftover = folder.join(".data-0000.bkpd.tmp-0192f0c4-0000-7000-8000-000000000002");
    std::fs::write(&leftover, b"partial").unwrap();
    let three_hours_ago = SystemTime::now() - Duration::from_secs(3 * 3600);
    for path in [&leftover, &folder] {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(three_hours_ago)
            .unwrap();
    }

    let removed = sink
        .sweep_incomplete("backups/b2", Duration::from_secs(3600), &cancel)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    // Removing the leftover made the folder's mtime new; its age is the one it had before.
    assert!(!folder.exists(), "the emptied folder is removed too");
}

/// Shared checks after a put failed for lack of space.
async fn assert_disk_full_handled(
    sink: &impl Sink,
    root: &Path,
    result: Result<backup_sinks::PutReceipt, SinkError>,
    key: &str,
    earlier: &[(&str, &[u8])],
) {
    let cancel = CancellationToken::new();
    let err = result.expect_err("a put that hits disk full must fail");
    match &err {
        SinkError::Io {
            repository,
            key: k,
            op,
            source,
        } => {
            assert_eq!(repository, sink.name());
            assert_eq!(k, key);
            assert!(matches!(op, IoOp::Write | IoOp::Sync), "{op:?}");
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{source:?}");
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    let msg = err.to_string();
    for part in [sink.name(), key, "No space left on device", "free space"] {
        assert!(msg.contains(part), "message {msg:?} lacks {part:?}");
    }
    assert_eq!(err.kind(), backup_sinks::ErrorKind::Permanent);

    assert!(
        sink.head(key, &cancel).await.unwrap().is_none(),
        "partial object visible"
    );
    let files = files_below(root);
    assert!(
        files.iter().all(|f| !f.contains(".tmp-")),
        "temp file left behind: {files:?}"
    );
    let listed = sink.list("", &cancel).await.unwrap();
    let keys: Vec<_> = listed.iter().map(|o| o.key.as_str()).collect();
    let expected: Vec<_> = earlier.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, expected);
    for (key, data) in earlier {
        let (size, hash) = sha256_of_object(sink, key, &cancel).await.unwrap();
        assert_eq!(
            (size, hash),
            (data.len() as u64, sha256(data)),
            "{key} damaged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_injected() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new().with(
        backup_sinks::FaultRule::new(Fault::PutFailsAfter {
            after_bytes: 1_500_000,
            error: io::ErrorKind::StorageFull,
        })
        .for_prefix("backups/big/"),
    );
    let sink = FaultySink::new(LocalSink::open("nearly-full", dir.path()).unwrap(), plan);
    let cancel = CancellationToken::new();
    let a = test_data(1 << 20, 1);
    put_bytes(&sink, "backups/a/data-0000.bkpd", a.clone(), &cancel)
        .await
        .unwrap();

    let key = "backups/big/data-0000.bkpd";
    let result = put_bytes(&sink, key, test_data(3 << 20, 2), &cancel).await;
    assert_disk_full_handled(
        &sink,
        dir.path(),
        result,
        key,
        &[("backups/a/data-0000.bkpd", &a)],
    )
    .await;
    assert_eq!(sink.faults_fired(), 1);
}

/// Unmounts on drop, so a failing test does not leave a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_on_a_real_small_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("tiny");
    std::fs::create_dir(&mountpoint).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs"])
        .arg(&mountpoint)
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIPPED disk_full_on_a_real_small_filesystem: cannot mount a 2 MiB tmpfs \
                 (needs root/CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED disk_full_on_a_real_small_filesystem: cannot run mount: {e}");
            return;
        }
    }
    let _mount = Mount(mountpoint.clone());

    let sink = LocalSink::open("tiny-tmpfs", &mountpoint).unwrap();
    let cancel = CancellationToken::new();
    let a = test_data(1 << 20, 3);
    put_bytes(&sink, "backups/a/data-0000.bkpd", a.clone(), &cancel)
        .await
        .unwrap();

    let key = "backups/b/data-0000.bkpd";
    let result = put_bytes(&sink, key, test_data(3 << 20, 4), &cancel).await;
    assert_disk_full_handled(
        &sink,
        &mountpoint,
        result,
        key,
        &[("backups/a/data-0000.bkpd", &a)],
    )
    .await;

    // The failed put's space came back.
    let c = test_data(512 << 10, 5);
    put_bytes(&sink, "backups/c/data-0000.bkpd", c, &cancel)
        .await
        .unwrap();
}

#[tokio::test]
async fn files_and_directories_are_not_world_readable() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalSink::open("repo", dir.path()).unwrap();
    let cancel = CancellationToken::new();
    put_bytes(&sink, "backups/b1/data-0000.bkpd", &b"secret"[..], &cancel)
        .await
        .unwrap();
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let file = mode(dir.path().join("backups/b1/data-0000.bkpd"));
    assert_eq!(file & !0o640, 0, "file mode {file:o}");
    assert_eq!(file & 0o600, 0o600, "file mode {file:o}");
    for d in ["backups", "backups/b1"] {
        let m = mode(dir.path().join(d));
        assert_eq!(m & !0o750, 0, "{d} mode {m:o}");
        assert_eq!(m & 0o700, 0o700, "{d} mode {m:o}");
    }
}

#[test]
fn open_reports_unusable_directories() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = LocalSink::open("offsite", &missing).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SinkError::Unusable { .. }), "{err:?}");
    assert!(msg.contains("offsite") && msg.contains("missing") && msg.contains("does not exist"));

    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let msg = LocalSink::open("offsite", &file).unwrap_err().to_string();
    assert!(msg.contains("not a directory"), "{msg}");

    assert!(LocalSink::open("", dir.path()).is_err());

    let created = LocalSink::create("offsite", dir.path().join("new/repo")).unwrap();
    assert!(created.root().is_dir());
    assert_eq!(created.name(), "offsite");
    // Nothing but the repository itself is left by the writability probe.
    assert!(files_below(created.root()).is_empty());
}

#[tokio::test]
async fn delete_prunes_empty_directories() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalSink::open("repo", dir.path()).unwrap();
    let cancel = CancellationToken::new();
    put_bytes(&sink, "backups/b1/data-0000.bkpd", &b"1"[..], &cancel)
        .await
        .unwrap();
    put_bytes(&sink, "backups/b2/data-0000.bkpd", &b"2"[..], &cancel)
        .await
        .unwrap();
    sink.delete("backups/b1/data-0000.bkpd", &cancel)
        .await
        .unwrap();
    assert!(!dir.path().join("backups/b1").exists());
    assert!(dir.path().join("backups/b2").exists());
    sink.delete("backups/b2/data-0000.bkpd", &cancel)
        .await
        .unwrap();
    assert!(!dir.path().join("backups").exists());
    assert!(dir.path().exists(), "the repository root stays");
}

#[tokio::test]
async fn key_below_an_object_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalSink::open("repo", dir.path()).unwrap();
    let cancel = CancellationToken::new();
    put_bytes(&sink, "a/b", &b"object"[..], &cancel)
        .await
        .unwrap();
    let err = put_bytes(&sink, "a/b/c", &b"below"[..], &cancel)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("a/b/c"), "{err}");
    assert!(sink.head("a/b/c", &cancel).await.unwrap().is_none());
    assert!(matches!(
        read_object(&sink, "a/b/c", &cancel).await,
        Err(SinkError::NotFound { .. })
    ));
    // A directory is not an object either.
    assert!(sink.head("a", &cancel).await.unwrap().is_none());
    sink.delete("a", &cancel).await.unwrap();
    assert_eq!(read_object(&sink, "a/b", &cancel).await.unwrap(), b"object");
}

/// Not run by default: prints put/get throughput on this machine's page cache.
/// `cargo nextest run -p backup-sinks --run-ignored only throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    const TOTAL: usize = 2 << 30;
    // BENCH_DIR=/dev/shm measures without the disk (fsync is a no-op on tmpfs).
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let sink = LocalSink::open("bench", dir.path()).unwrap();
    let cancel = CancellationToken::new();
    let chunk = Bytes::from(test_data(1 << 20, 9));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let start = Instant::now();
    tokio::spawn(async move {
        for _ in 0..TOTAL / chunk.len() {
            tx.send(Ok(chunk.clone())).await.unwrap();
        }
    });
    let receipt = sink.put("bench/object", rx, &cancel).await.unwrap();
    let put = start.elapsed();
    assert_eq!(receipt.size, TOTAL as u64);
    let start = Instant::now();
    let (size, hash) = sha256_of_object(&sink, "bench/object", &cancel)
        .await
        .unwrap();
    let get = start.elapsed();
    assert_eq!((size, hash), (receipt.size, receipt.sha256));
    let gbps = |d: Duration| TOTAL as f64 / d.as_secs_f64() / 1e9;
    eprintln!(
        "put {:.2} GB/s (write + sha256 + fsync), get+sha256 {:.2} GB/s",
        gbps(put),
        gbps(get)
    );
}
