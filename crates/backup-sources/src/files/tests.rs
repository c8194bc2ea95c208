use std::os::unix::fs::symlink;

use backup_core::manifest::{FileEntry, SkippedEntry};
use proptest::prelude::*;

use super::*;

#[derive(Default, Debug)]
struct Collect {
    entries: Vec<FileEntry>,
    skipped: Vec<SkippedEntry>,
}

impl EntryRecorder for Collect {
    fn entry(&mut self, entry: &FileEntry) -> io::Result<()> {
        self.entries.push(entry.clone());
        Ok(())
    }
    fn skipped(&mut self, skipped: SkippedEntry) -> io::Result<()> {
        self.skipped.push(skipped);
        Ok(())
    }
}

fn backup(
    root: &Path,
    policy: UnreadablePolicy,
) -> Result<(Vec<u8>, Collect, TreeStats), FilesError> {
    let mut data = Vec::new();
    let mut rec = Collect::default();
    let stats = backup_tree(
        &[root.to_path_buf()],
        policy,
        &mut data,
        &mut rec,
        &mut |_| {},
    )?;
    Ok((data, rec, stats))
}

fn restore(
    data: &[u8],
    entries: Vec<FileEntry>,
    target: &Path,
) -> Result<RestoreStats, FilesError> {
    let mut progress = |_| {};
    let mut r = TreeRestorer::new(target, data, &mut progress);
    for e in entries {
        r.entry(e)?;
    }
    r.finish()
}

/// Everything a restore must reproduce, per relative path.
fn snapshot(root: &Path) -> Vec<(String, String, u32, i64, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let (kind, content) = if m.is_dir() {
            for c in fs::read_dir(&p).unwrap() {
                stack.push(c.unwrap().path());
            }
            ("dir", vec![])
        } else if m.file_type().is_symlink() {
            (
                "link",
                fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec(),
            )
        } else {
            ("file", fs::read(&p).unwrap())
        };
        let mode = if kind == "link" { 0 } else { m.mode() & 0o7777 };
        out.push((
            rel,
            kind.to_string(),
            mode,
            m.mtime(),
            m.mtime_nsec() as u32,
            content,
        ));
    }
    out.sort();
    out
}

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/hello.txt"), b"hello").unwrap();
    fs::write(root.join("a/b/empty"), b"").unwrap();
    fs::write(root.join("a/b/c/big.bin"), vec![7u8; 3 << 20]).unwrap();
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), b"latin1 name").unwrap();
    symlink("../hello.txt", root.join("a/b/link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::set_permissions(root.join("a/hello.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("a/b/c"), fs::Permissions::from_mode(0o700)).unwrap();
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_file_times(root.join("a/hello.txt"), t, t).unwrap();
    filetime::set_symlink_file_times(root.join("a/b/link"), t, t).unwrap();
    filetime::set_file_times(root.join("a/b"), t, t).unwrap();
}

#[test]
fn restore_recreates_tree_exactly() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("data");
    sample_tree(&root);
    let (data, rec, stats) = backup(&root, UnreadablePolicy::Fail).unwrap();
    assert_eq!(stats.files, 4);
    assert_eq!(stats.symlinks, 2);
    assert_eq!(stats.dirs, 4);
    assert_eq!(stats.bytes, data.len() as u64);
    assert!(rec
        .entries
        .iter()
        .all(|e| e.path.to_bytes().unwrap().starts_with(b"data")));

    let dst = tempfile::tempdir().unwrap();
    let rs = restore(&data, rec.entries, dst.path()).unwrap();
    assert_eq!(rs.files, 4);
    assert_eq!(snapshot(&root), snapshot(&dst.path().join("data")));
}

/// The hook hears of each file once, only when its content is all there and checked, and
/// never of a file whose checksum fails.
#[test]
fn each_file_is_reported_once_complete_and_never_when_damaged() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("data");
    sample_tree(&root);
    let (data, rec, _) = backup(&root, UnreadablePolicy::Fail).unwrap();
    let restore_reporting = |data: &[u8]| {
        let dst = tempfile::tempdir().unwrap();
        let reported = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook: FileRestored = {
            let reported = reported.clone();
            std::sync::Arc::new(move |path: &Path| {
                // Read at once, on the writer thread: the file must already be whole.
                let content = fs::read(path).unwrap();
                reported.lock().unwrap().push((path.to_path_buf(), content));
            })
        };
        let mut progress = |_| {};
        let mut r = TreeRestorer::new(dst.path(), data, &mut progress).on_file_restored(hook);
        let result = rec
            .entries
            .iter()
            .try_for_each(|e| r.entry(e.clone()))
            .and_then(|()| r.finish().map(|_| ()));
        let reported = std::mem::take(&mut *reported.lock().unwrap());
        (result, reported, dst)
    };

    let (result, reported, dst) = restore_reporting(&data);
    result.unwrap();
    let mut paths: Vec<_> = reported.iter().map(|(p, _)| p.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 4, "{reported:?}");
    assert_eq!(reported.len(), 4, "a file was reported twice: {paths:?}");
    for (path, content) in &reported {
        let rel = path.strip_prefix(dst.path()).unwrap();
        assert_eq!(
            content,
            &fs::read(src.path().join(rel)).unwrap(),
            "{}",
            rel.display()
        );
    }

    let mut damaged = data.clone();
    damaged[0] ^= 1;
    let first = rec
        .entries
        .iter()
        .find(|e| e.kind == EntryKind::File)
        .unwrap();
    let (result, reported, dst) = restore_reporting(&damaged);
    assert!(result.unwrap_err().is_integrity_failure());
    let first = dst.path().join(first.path.display());
    assert!(
        reported.iter().all(|(p, _)| *p != first),
        "the damaged file was reported: {first:?}"
    );
}

#[test]
fn corrupt_content_and_unsafe_paths_are_refused() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("data");
    sample_tree(&root);
    let (mut data, rec, _) = backup(&root, UnreadablePolicy::Fail).unwrap();
    data[0] ^= 1;
    let dst = tempfile::tempdir().unwrap();
    let err = restore(&data, rec.entries.clone(), dst.path()).unwrap_err();
    assert!(err.is_integrity_failure(), "{err}");

    let mut evil = rec.entries[1].clone();
    evil.path = EntryPath::Utf8("data/../../etc/passwd".into());
    let err = restore(&data, vec![evil], dst.path()).unwrap_err();
    assert!(matches!(err, FilesError::UnsafePath { .. }), "{err}");
}

#[test]
fn special_files_are_recorded_as_skipped_not_dropped_silently() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("data");
    fs::create_dir(&root).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    let (_, rec, stats) = backup(&root, UnreadablePolicy::Fail).unwrap();
    drop(sock);
    assert_eq!(stats.skipped, 1);
    assert_eq!(rec.skipped[0].path.display(), "data/sock");
}

#[test]
fn missing_root_and_duplicate_names_are_errors() {
    let src = tempfile::tempdir().unwrap();
    let err = backup(&src.path().join("nope"), UnreadablePolicy::Fail).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    fs::create_dir_all(src.path().join("x/data")).unwrap();
    fs::create_dir_all(src.path().join("y/data")).unwrap();
    let err = root_labels(&[src.path().join("x/data"), src.path().join("y/data")]).unwrap_err();
    assert!(matches!(err, FilesError::DuplicateRootName { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn any_small_tree_round_trips(files in prop::collection::btree_map("[a-z]{1,3}(/[a-z]{1,3}){0,2}", prop::collection::vec(any::<u8>(), 0..3000), 0..12)) {
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("t");
        fs::create_dir(&root).unwrap();
        for (path, content) in &files {
            let p = root.join(path);
            // A path may collide with a directory made for another; skip those.
            if fs::create_dir_all(p.parent().unwrap()).is_err() || p.is_dir() { continue; }
            fs::write(&p, content).unwrap();
        }
        let (data, rec, _) = backup(&root, UnreadablePolicy::Fail).unwrap();
        let dst = tempfile::tempdir().unwrap();
        restore(&data, rec.entries, dst.path()).unwrap();
        prop_assert_eq!(snapshot(&root), snapshot(&dst.path().join("t")));
    }
}

#[test]
fn read_ahead_exclusions_and_incremental_runs_store_what_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pgdata");
    sample_tree(&root);
    fs::create_dir_all(root.join("pg_wal")).unwrap();
    fs::write(
        root.join("pg_wal/000000010000000000000001"),
        vec![7u8; 4096],
    )
    .unwrap();
    let (plain_data, plain, _) = backup(&root, UnreadablePolicy::Fail).unwrap();

    let run = |exclude: Option<Exclude<'_>>, previous: Option<HashMap<Vec<u8>, PreviousFile>>| {
        let mut data = Vec::new();
        let mut rec = Collect::default();
        let mut on_bytes = |_| {};
        let mut tree = TreeBackup::new(UnreadablePolicy::Fail, &mut data, &mut rec, &mut on_bytes);
        tree.read_ahead();
        tree.tolerate_vanished_files();
        if let Some(previous) = previous {
            tree.incremental_since(previous);
        }
        tree.add_root(&root, "pgdata", exclude).unwrap();
        tree.add_file("pgdata/backup_label", b"LABEL", 0o600)
            .unwrap();
        let stats = tree.finish();
        (data, rec, stats)
    };
    // Read-ahead changes nothing in what is stored.
    let (data, rec, _) = run(None, None);
    assert!(data.starts_with(&plain_data));
    assert_eq!(&rec.entries[..plain.entries.len()], &plain.entries[..]);
    let label = rec.entries.last().unwrap();
    assert_eq!(label.path.display(), "pgdata/backup_label");
    assert_eq!(&data[label.offset.unwrap() as usize..], b"LABEL");

    // Excluded paths are left out, the directory itself stays.
    let skip_wal = |rel: &[u8]| rel.starts_with(b"pg_wal/");
    let (_, rec, _) = run(Some(&skip_wal), None);
    let paths: Vec<String> = rec.entries.iter().map(|e| e.path.display()).collect();
    assert!(paths.contains(&"pgdata/pg_wal".to_owned()), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.starts_with("pgdata/pg_wal/")),
        "{paths:?}"
    );

    // Incremental: unchanged files are referenced, not stored; a file changed in place with
    // the same size and mtime is caught by its hash.
    let base = backup_core::BackupId::new();
    let previous: HashMap<Vec<u8>, PreviousFile> = rec
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && !e.path.display().ends_with("backup_label"))
        .map(|e| {
            (
                e.path.to_bytes().unwrap(),
                PreviousFile {
                    size: e.size,
                    mtime: e.mtime,
                    mtime_nsec: e.mtime_nsec,
                    blake3: e.blake3.clone().unwrap(),
                    stored_in: base,
                },
            )
        })
        .collect();
    let changed = rec
        .entries
        .iter()
        .find(|e| {
            e.kind == EntryKind::File && e.size > 0 && e.path.display() != "pgdata/backup_label"
        })
        .unwrap()
        .clone();
    let changed_path = dir.path().join(changed.path.display());
    let mut content = fs::read(&changed_path).unwrap();
    content[0] ^= 0xff;
    fs::write(&changed_path, &content).unwrap();
    filetime::set_file_mtime(
        &changed_path,
        filetime::FileTime::from_unix_time(changed.mtime, changed.mtime_nsec),
    )
    .unwrap();
    let (data, rec, stats) = run(Some(&skip_wal), Some(previous));
    let stored: Vec<&FileEntry> = rec.entries.iter().filter(|e| e.offset.is_some()).collect();
    let unchanged: Vec<&FileEntry> = rec
        .entries
        .iter()
        .filter(|e| e.unchanged_from == Some(base))
        .collect();
    assert!(
        stored.iter().any(|e| e.path == changed.path),
        "the changed file is stored"
    );
    assert!(
        stored.len() == 2 && !unchanged.is_empty(),
        "only the changed file and the label are stored: {stored:?}"
    );
    assert_eq!(stats.unchanged as usize, unchanged.len());
    assert_eq!(data.len() as u64, changed.size + 5);
}

#[test]
fn many_files_read_ahead_in_parallel_keep_walk_order() {
    // More files than the read-ahead window, directories between runs of files, and files
    // larger than what a reader may buffer, so readers block and resume.
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("data");
    let mut seed = 7u64;
    for d in 0..3 {
        let dir = root.join(format!("d{d}"));
        fs::create_dir_all(dir.join("sub")).unwrap();
        for f in 0..(readers::WINDOW * 2 + 3) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 33) as usize % (300 << 10);
            let content: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
            fs::write(dir.join(format!("f{f:03}")), content).unwrap();
        }
        fs::write(dir.join("sub/large"), vec![d as u8; 5 << 20]).unwrap();
        fs::write(dir.join("zz-after-sub"), b"tail").unwrap();
    }
    let (data, rec, stats) = backup(&root, UnreadablePolicy::Fail).unwrap();
    assert_eq!(stats.files as usize, 3 * (readers::WINDOW * 2 + 5));
    // Entries come in walk order (depth first, by name) and their data follows one another.
    let files: Vec<&FileEntry> = rec
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    let mut next = 0;
    for e in &files {
        assert_eq!(e.offset, Some(next), "{}", e.path.display());
        next += e.size;
    }
    assert_eq!(next, data.len() as u64);
    let names: Vec<String> = files.iter().map(|e| e.path.display()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    let dst = tempfile::tempdir().unwrap();
    restore(&data, rec.entries, dst.path()).unwrap();
    assert_eq!(snapshot(&root), snapshot(&dst.path().join("data")));
}
