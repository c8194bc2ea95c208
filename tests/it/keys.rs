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
