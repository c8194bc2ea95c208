//! Damaged artifacts: every kind of damage must be caught by verify (full and
//! quick) and by restore with exit 3 and a message naming what is broken.

use std::fs;
use std::path::Path;

use crate::support::*;

/// A work dir with one backup of `data` whose data artifact has several segments.
fn backed_up(data: &[u8]) -> (Work, String) {
    let work = Work::with_config(&ConfigOpts {
        segment_size_kib: Some(64),
        ..ConfigOpts::default()
    });
    write_file(&work.data().join("payload.bin"), data, 0o644);
    write_file(&work.data().join("sub/small.txt"), b"small file\n", 0o644);
    work.init();
    let id = work.backup();
    (work, id)
}

/// verify, verify --quick and restore must all fail with exit 3 naming the backup and artifact.
#[track_caller]
fn expect_integrity_failure(
    work: &Work,
    backup: &str,
    artifact: &str,
    mentions_segment: bool,
    case: &str,
) {
    expect_verify_failure(work, backup, artifact, mentions_segment, case);
    expect_restore_failure(work, backup, artifact, mentions_segment, case);
}

#[track_caller]
fn expect_verify_failure(
    work: &Work,
    backup: &str,
    artifact: &str,
    mentions_segment: bool,
    case: &str,
) {
    let full = work.run(&["verify", backup]);
    assert_eq!(
        full.code,
        EXIT_INTEGRITY,
        "{case}: verify should exit 3\n{}",
        full.dump()
    );
    full.expect_mentions(&[backup, artifact]);
    if mentions_segment {
        full.expect_mentions(&["segment"]);
    }

    let quick = work.run(&["verify", backup, "--quick"]);
    assert_eq!(
        quick.code,
        EXIT_INTEGRITY,
        "{case}: verify --quick should exit 3\n{}",
        quick.dump()
    );
    quick.expect_mentions(&[backup, artifact]);

    let all = work.run(&["verify", "--all"]);
    assert_eq!(
        all.code,
        EXIT_INTEGRITY,
        "{case}: verify --all should exit 3\n{}",
        all.dump()
    );
}

#[track_caller]
fn expect_restore_failure(
    work: &Work,
    backup: &str,
    artifact: &str,
    mentions_segment: bool,
    case: &str,
) {
    let target = tempfile::tempdir().unwrap();
    let restore = work.run(&[
        "restore",
        backup,
        "--target",
        target.path().to_str().unwrap(),
    ]);
    assert_eq!(
        restore.code,
        EXIT_INTEGRITY,
        "{case}: restore should exit 3\n{}",
        restore.dump()
    );
    restore.expect_mentions(&[artifact]);
    if mentions_segment {
        restore.expect_mentions(&["segment"]);
    }
}

/// Replaces `path` with `damaged`, checks, then puts the original back and checks it verifies again.
#[track_caller]
fn with_damage(work: &Work, backup: &str, path: &Path, damaged: &[u8], check: impl FnOnce()) {
    let original = fs::read(path).unwrap();
    fs::write(path, damaged).unwrap();
    check();
    fs::write(path, &original).unwrap();
    work.ok(&["verify", backup]);
}

#[test]
fn a_flipped_bit_anywhere_is_an_integrity_failure() {
    let (work, id) = backed_up(&mixed_bytes(300 << 10, 7));
    for role in ["data", "manifest"] {
        let (artifact, path) = work.artifact(&id, role);
        let original = fs::read(&path).unwrap();
        let layout = Layout::parse(&original);
        let seg = layout.segments()[layout.segments().len() / 2];
        let trailer = layout.trailer();
        let mut positions = vec![
            // (what, byte offset, bit, message names a segment)
            ("header: magic", 3, 0, false),
            ("header: artifact id", 20, 5, false),
            ("header: nonce prefix", 30, 1, true),
            ("header: key id", layout.header_len - 1, 0, false),
            (
                "middle of a segment",
                seg.body().start + seg.len / 2,
                3,
                true,
            ),
            ("last byte of a segment's tag", seg.end() - 1, 7, true),
            ("trailer", trailer.body().start + trailer.len / 2, 6, true),
        ];
        if role == "data" {
            assert!(
                layout.segments().len() >= 3,
                "expected several segments: {layout:?}"
            );
            positions.push(("record flags", seg.offset, 1, true));
            positions.push(("record length", seg.offset + 1, 0, true));
        }
        for (what, offset, bit, mentions_segment) in positions {
            let case = format!("{role} artifact, {what} (byte {offset}, bit {bit})");
            let mut damaged = original.clone();
            damaged[offset] ^= 1 << bit;
            with_damage(&work, &id, &path, &damaged, || {
                if role == "manifest" && what == "trailer" {
                    // Restore does not read the manifest's trailer: see the ignored test below.
                    expect_verify_failure(&work, &id, &artifact, mentions_segment, &case)
                } else {
                    expect_integrity_failure(&work, &id, &artifact, mentions_segment, &case)
                }
            });
        }
    }
}

#[test]
fn restore_detects_a_damaged_or_missing_manifest_trailer() {
    let (work, id) = backed_up(&mixed_bytes(100 << 10, 7));
    let (artifact, path) = work.artifact(&id, "manifest");
    let original = fs::read(&path).unwrap();
    let trailer = Layout::parse(&original).trailer();
    let mut flipped = original.clone();
    flipped[trailer.body().start + 3] ^= 0x10;
    with_damage(&work, &id, &path, &flipped, || {
        expect_integrity_failure(&work, &id, &artifact, true, "manifest trailer bit flip")
    });
    with_damage(&work, &id, &path, &original[..trailer.offset], || {
        expect_integrity_failure(&work, &id, &artifact, true, "manifest trailer removed")
    });
}

#[test]
fn a_truncated_artifact_is_an_integrity_failure() {
    let (work, id) = backed_up(&random_bytes(200 << 10, 8));
    let (artifact, path) = work.artifact(&id, "data");
    let original = fs::read(&path).unwrap();
    let layout = Layout::parse(&original);
    let cuts = [
        ("a few bytes short", original.len() - 3),
        ("trailer removed (record boundary)", layout.trailer().offset),
        (
            "after the first segment (record boundary)",
            layout.segments()[1].offset,
        ),
        ("inside a record header", layout.segments()[1].offset + 2),
        ("header only", layout.header_len),
    ];
    for (what, len) in cuts {
        with_damage(&work, &id, &path, &original[..len], || {
            expect_integrity_failure(
                &work,
                &id,
                &artifact,
                len > layout.header_len,
                &format!("data artifact cut to {len} bytes: {what}"),
            )
        });
    }
    // An empty object is as broken as a short one.
    with_damage(&work, &id, &path, &[], || {
        expect_integrity_failure(&work, &id, &artifact, false, "empty data artifact")
    });
}

#[test]
fn swapped_segments_are_detected() {
    let (work, id) = backed_up(&random_bytes(400 << 10, 9));
    let (artifact, path) = work.artifact(&id, "data");
    let original = fs::read(&path).unwrap();
    let layout = Layout::parse(&original);
    assert!(
        layout.segments().len() >= 5,
        "400 KiB in 64 KiB segments: {layout:?}"
    );
    let (a, b) = (layout.segments()[1], layout.segments()[3]);
    let mut swapped = original[..a.offset].to_vec();
    swapped.extend_from_slice(&original[b.offset..b.end()]);
    swapped.extend_from_slice(&original[a.end()..b.offset]);
    swapped.extend_from_slice(&original[a.offset..a.end()]);
    swapped.extend_from_slice(&original[b.end()..]);
    assert_eq!(swapped.len(), original.len());
    assert_ne!(swapped, original);
    with_damage(&work, &id, &path, &swapped, || {
        expect_integrity_failure(&work, &id, &artifact, true, "segments 1 and 3 swapped")
    });

    // Two neighbours swapped, too.
    let (a, b) = (layout.segments()[0], layout.segments()[1]);
    let mut swapped = original[..a.offset].to_vec();
    swapped.extend_from_slice(&original[b.offset..b.end()]);
    swapped.extend_from_slice(&original[a.offset..a.end()]);
    swapped.extend_from_slice(&original[b.end()..]);
    with_damage(&work, &id, &path, &swapped, || {
        expect_integrity_failure(&work, &id, &artifact, true, "segments 0 and 1 swapped")
    });
}

#[test]
fn an_artifact_of_another_backup_in_its_place_is_detected() {
    let (work, a) = backed_up(&random_bytes(100 << 10, 10));
    write_file(
        &work.data().join("payload.bin"),
        &random_bytes(120 << 10, 11),
        0o644,
    );
    let b = work.backup();
    let (a_data, a_path) = work.artifact(&a, "data");
    let (b_data, b_path) = work.artifact(&b, "data");
    assert_ne!(a_data, b_data);

    let other = fs::read(&b_path).unwrap();
    with_damage(&work, &a, &a_path, &other, || {
        expect_integrity_failure(
            &work,
            &a,
            &a_data,
            false,
            "backup B's data artifact copied over A's",
        );
        let full = work.run(&["verify", &a]);
        full.expect_mentions(&[&b_data])
            .expect_mentions_any(&["replaced", "another", "other", "wrong"]);
        let target = tempfile::tempdir().unwrap();
        work.run(&["restore", &a, "--target", target.path().to_str().unwrap()])
            .expect_code(EXIT_INTEGRITY)
            .expect_mentions(&[&b_data]);
        // B itself is untouched.
        work.ok(&["verify", &b]);
    });

    // The manifests, too.
    let (a_manifest, a_mpath) = work.artifact(&a, "manifest");
    let (_, b_mpath) = work.artifact(&b, "manifest");
    let other = fs::read(&b_mpath).unwrap();
    with_damage(&work, &a, &a_mpath, &other, || {
        expect_integrity_failure(
            &work,
            &a,
            &a_manifest,
            false,
            "backup B's manifest copied over A's",
        )
    });
}
