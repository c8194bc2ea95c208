//! Bad configuration: exit 2 with a message naming the file and the key.

use crate::support::*;

fn with_config(text: &str) -> Work {
    let work = Work::new();
    work.write_config(text);
    work
}

#[test]
fn unknown_keys_are_rejected_naming_the_key_and_file() {
    let good = config_toml(&ConfigOpts::default());
    let cases = [
        (
            "top-level table",
            format!("{good}\n[bogus-section]\nx = 1\n"),
            "bogus-section",
        ),
        (
            "catalog key",
            good.replace("[catalog]\n", "[catalog]\nbogus-key = 1\n"),
            "bogus-key",
        ),
        (
            "repository key",
            good.replace(
                "kind = \"local\"\n",
                "kind = \"local\"\nbogus-repo-key = 1\n",
            ),
            "bogus-repo-key",
        ),
        // A typo in an optional key must not silently fall back to the default.
        (
            "source key typo",
            good.replace("on-unreadable =", "on-unreadble ="),
            "on-unreadble",
        ),
    ];
    for (what, text, key) in cases {
        assert!(text.contains(key), "{what}: the replacement applied");
        let work = with_config(&text);
        let config = work.config.to_str().unwrap().to_owned();
        for args in [vec!["init"], vec!["list"], vec!["backup", "files"]] {
            let out = work.run(&args);
            assert_eq!(
                out.code,
                EXIT_USAGE,
                "{what}: `{}` should exit 2\n{}",
                out.args,
                out.dump()
            );
            out.expect_mentions(&[key, &config]);
        }
    }
}

#[test]
fn a_missing_config_file_is_exit_2_naming_the_path() {
    let work = Work::new();
    let out = work.run_raw(&["--config", "/nonexistent.toml", "list"]);
    out.expect_code(EXIT_USAGE)
        .expect_mentions(&["/nonexistent.toml"]);

    // The same through the environment.
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("backupctl"));
    cmd.current_dir(work.root())
        .env("BACKUPD_CONFIG", "/nonexistent/env.toml")
        .arg("list");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(EXIT_USAGE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/env.toml"));
}

#[test]
fn a_source_naming_an_unknown_repository_is_exit_2() {
    let work = with_config(
        &config_toml(&ConfigOpts::default())
            .replace("repository = \"region-a\"", "repository = \"region-zz\""),
    );
    for args in [vec!["init"], vec!["list"], vec!["backup", "files"]] {
        work.run(&args).expect_code(EXIT_USAGE).expect_mentions(&[
            "source[0].repository",
            "region-zz",
            work.config.to_str().unwrap(),
        ]);
    }
}

#[test]
fn a_missing_source_path_fails_the_backup_with_exit_2() {
    let work = with_config(&config_toml(&ConfigOpts::default()).replace("./data", "./no-such-dir"));
    work.init();
    work.run(&["backup", "files"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["source[0].paths[0]", "no-such-dir"]);
    assert!(work.list().is_empty(), "nothing should be recorded");
    // An unknown source name is a usage error too.
    work.run(&["backup", "nope"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["nope"]);
}
