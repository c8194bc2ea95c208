//! The repository key file: wrong, missing, and never overwritten.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;

fn another_valid_key() -> String {
    let other = Work::new();
    other.init();
    let key = fs::read_to_string(other.key_file()).unwrap();
    assert_eq!(key.trim().len(), 44, "32 bytes of base64: {key:?}");
    key
}

fn key_id_from_init(out: &Out) -> String {
    // "created key file PATH (key ID); ..." or "using existing key file PATH (key ID)"
    let text = out.text();
    let start = text
        .find("(key ")
        .unwrap_or_else(|| panic!("init names the key id\n{}", out.dump()))
        + 5;
    text[start..].split(')').next().unwrap().to_owned()
}

#[test]
fn init_creates_a_private_key_file_and_never_overwrites_it() {
    let work = Work::new();
    let first = work.ok(&["init"]);
    let meta = fs::metadata(work.key_file()).expect("init creates var/keys/repo.key");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "key file mode");
    let key = fs::read(work.key_file()).unwrap();
    let key_id = key_id_from_init(&first);

    // Again: same key, exit 0, content unchanged.
    let again = work.ok(&["init"]);
    assert_eq!(key_id_from_init(&again), key_id);
    assert_eq!(
        fs::read(work.key_file()).unwrap(),
        key,
        "init must not rewrite the key file"
    );

    // With a different (valid) key in place: the file is still not touched.
    let other = another_valid_key();
    fs::write(work.key_file(), &other).unwrap();
    let out = work.run(&["init"]);
    assert_eq!(
        fs::read_to_string(work.key_file()).unwrap(),
        other,
        "init must not rewrite the key file\n{}",
        out.dump()
    );
    assert_ne!(
        out.code,
        EXIT_OK,
        "init with a key that does not match the repository should fail\n{}",
        out.dump()
    );
}

#[test]
fn a_different_key_file_is_refused_with_exit_2() {
    let work = Work::new();
    write_file(&work.data().join("f.txt"), b"hello\n", 0o644);
    let init = work.ok(&["init"]);
    let repo_key_id = key_id_from_init(&init);
    let id = work.backup();
    let original = fs::read(work.key_file()).unwrap();

    let other = another_valid_key();
    fs::write(work.key_file(), &other).unwrap();
    let target = work.path("restored");
    let target = target.to_str().unwrap();
    for args in [
        vec!["backup", "files"],
        vec!["verify", id.as_str()],
        vec!["verify", id.as_str(), "--quick"],
        vec!["verify", "--all"],
        vec!["restore", id.as_str(), "--target", target],
        vec!["catalog", "rebuild"],
    ] {
        let out = work.run(&args);
        out.expect_code(EXIT_USAGE)
            .expect_mentions(&[&repo_key_id])
            .expect_mentions_any(&["key file"]);
    }
    assert_eq!(
        work.list().len(),
        1,
        "the refused backup must not be recorded"
    );

    // The right key makes everything work again.
    fs::write(work.key_file(), &original).unwrap();
    work.ok(&["verify", &id]);
    work.ok(&["restore", &id, "--target", target]);
}

#[test]
fn a_missing_key_file_is_exit_2_naming_the_path_and_init() {
    let work = Work::new();
    write_file(&work.data().join("f.txt"), b"hello\n", 0o644);
    work.init();
    let id = work.backup();
    fs::remove_file(work.key_file()).unwrap();
    let target = work.path("restored");
    for args in [
        vec!["backup", "files"],
        vec!["verify", id.as_str()],
        vec!["restore", id.as_str(), "--target", target.to_str().unwrap()],
    ] {
        work.run(&args)
            .expect_code(EXIT_USAGE)
            .expect_mentions(&["var/keys/repo.key", "backupctl init"]);
    }
}

fn key_ids(work: &Work) -> Vec<(String, bool, u64)> {
    let out = work.ok(&["key", "list", "--json"]);
    out.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key_id"].as_str().unwrap().to_owned(),
                k["active"].as_bool().unwrap(),
                k["envelopes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn key_rotation_rewraps_every_envelope_retires_the_old_key_and_restores_keep_working() {
    let work = Work::new();
    work.write_config(&format!(
        "{CONFIG_HEAD}[[repository]]\nname = \"region-a\"\nkind = \"local\"\npath = \"var/repo/region-a\"\n\
         [[repository]]\nname = \"region-b\"\nkind = \"local\"\npath = \"var/repo/region-b\"\n{}",
        files_source_toml("region-a", "copy-to = [\"region-b\"]\n")
    ));
    write_file(&work.data().join("f.txt"), b"before the rotation\n", 0o644);
    work.init();
    let old_backup = work.backup();
    let old = key_ids(&work);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].2, 2, "one envelope per repository: {old:?}");

    // A new active key: the old one stays to read the first backup.
    let added = work.ok(&["key", "add", "--json"]).json();
    let new_id = added["active"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old[0].0);
    assert_eq!(
        fs::metadata(work.key_file()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    write_file(&work.data().join("g.txt"), b"after the new key\n", 0o644);
    let new_backup = work.backup();
    let both = key_ids(&work);
    assert_eq!(both[0], (new_id.clone(), true, 2), "{both:?}");
    assert_eq!(both[1], (old[0].0.clone(), false, 2), "{both:?}");
    for id in [&old_backup, &new_backup] {
        work.ok(&["verify", id]);
    }

    // A rotation cut short (region-b unreachable half way) changes region-a only and retires
    // nothing; both keys still read everything.
    let b = work.path("var/repo/region-b");
    let b_away = work.path("var/repo/region-b.away");
    fs::rename(&b, &b_away).unwrap();
    work.run(&["key", "rotate"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["region-b"]);
    fs::rename(&b_away, &b).unwrap();
    assert_eq!(
        key_ids(&work).len(),
        2,
        "nothing retired by a cut-short rotation"
    );
    let from_b = work.path("r-from-b");
    work.ok(&[
        "restore",
        &old_backup,
        "--from",
        "region-b",
        "--target",
        from_b.to_str().unwrap(),
    ]);

    // Run again: the rest is re-wrapped, the old key retired, everything restores.
    let rotated = work.ok(&["key", "rotate", "--json"]).json();
    // Two envelopes were under the old key; the cut-short run may have done one of them.
    let rewrapped = rotated["rewrapped"].as_u64().unwrap();
    assert!((1..=2).contains(&rewrapped), "{rotated:#}");
    assert_eq!(rotated["retired"][0], old[0].0.as_str(), "{rotated:#}");
    let after = key_ids(&work);
    assert_eq!(after, vec![(new_id.clone(), true, 4)]);
    let key_text = fs::read_to_string(work.key_file()).unwrap();
    assert_eq!(key_text.lines().filter(|l| !l.starts_with('#')).count(), 1);
    for (id, dir, from) in [
        (&old_backup, "r-old", "region-a"),
        (&new_backup, "r-new", "region-a"),
        (&old_backup, "r-old-b", "region-b"),
    ] {
        let target = work.path(dir);
        work.ok(&[
            "restore",
            id,
            "--from",
            from,
            "--target",
            target.to_str().unwrap(),
        ]);
    }
    assert_eq!(
        fs::read(work.path("r-old/data/f.txt")).unwrap(),
        b"before the rotation\n"
    );
    work.ok(&["verify", "--all"]);
    // Running it again changes nothing (and so would a rerun after a crash half way).
    let again = work.ok(&["key", "rotate", "--json"]).json();
    assert_eq!(again["rewrapped"], 0, "{again:#}");
    // The repositories accept the rotated key file (their creation key is retired), and a
    // catalog rebuilt from them alone restores the rotated backup.
    work.backup();
    fs::remove_file(work.path("var/catalog.db")).unwrap();
    work.ok(&["catalog", "rebuild"]);
    let again = work.path("r-rebuilt");
    work.ok(&["restore", &old_backup, "--target", again.to_str().unwrap()]);
}

#[test]
fn a_shredded_backup_can_never_be_read_again_and_is_recorded() {
    let work = Work::new();
    write_file(&work.data().join("secret.txt"), b"personal data\n", 0o644);
    work.init();
    let keep = work.backup();
    let gone = work.backup();
    work.run(&["shred", &gone])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["--yes", "cannot be undone"]);
    work.ok(&["hold", &gone]);
    work.run(&["shred", &gone, "--yes"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["legal hold"]);
    work.ok(&["unhold", &gone]);

    let out = work.ok(&["shred", &gone, "--yes", "--json"]).json();
    assert_eq!(out["backup_id"], gone.as_str());
    assert_eq!(out["repositories"][0], "region-a", "{out:#}");
    assert!(
        !work.repo_files().iter().any(|f| f.contains(&gone)),
        "no object of the shredded backup is left: {:?}",
        work.repo_files()
    );
    let target = work.path("r");
    work.run(&["restore", &gone, "--target", target.to_str().unwrap()])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["not found"]);
    assert!(work.listed(&gone).is_none());
    // The other backup is untouched.
    work.ok(&["verify", &keep]);
    // The shred stays on record.
    let shreds = work.ok(&["shred", "--list", "--json"]).json();
    assert_eq!(shreds.as_array().unwrap().len(), 1, "{shreds:#}");
    assert_eq!(shreds[0]["backup_id"], gone.as_str());
    assert_eq!(shreds[0]["source"], "files");
}
