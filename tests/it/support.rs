//! Shared helpers: a work directory with a config, running `backupctl` in it,
//! building and comparing file trees, and parsing the artifact record layout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// No single `backupctl` call in these tests should come anywhere near this.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_INTEGRITY: i32 = 3;

/// Knobs of the config written into a work directory.
#[derive(Debug, Clone)]
pub struct ConfigOpts {
    pub on_unreadable: &'static str,
    pub segment_size_kib: Option<usize>,
    /// Catalog URL; the embedded SQLite default when `None`.
    pub catalog_url: Option<String>,
}

impl Default for ConfigOpts {
    fn default() -> Self {
        Self {
            on_unreadable: "fail",
            segment_size_kib: None,
            catalog_url: None,
        }
    }
}

/// The documented example config (relative paths, resolved against the work dir).
pub fn config_toml(opts: &ConfigOpts) -> String {
    let url = opts
        .catalog_url
        .as_deref()
        .unwrap_or("sqlite://var/catalog.db");
    let mut s = format!(
        r#"[catalog]
url = "{url}"

[encryption]
key-file = "var/keys/repo.key"
"#,
    );
    if let Some(kib) = opts.segment_size_kib {
        write!(s, "\n[pipeline]\nsegment-size-kib = {kib}\n").unwrap();
    }
    write!(
        s,
        r#"
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"

[[source]]
name = "files"
kind = "files"
paths = ["./data"]
repository = "region-a"
on-unreadable = "{}"
"#,
        opts.on_unreadable
    )
    .unwrap();
    s
}

/// The top of a config written piece by piece: the SQLite catalog and the key file,
/// both under `var/` of the work dir.
pub const CONFIG_HEAD: &str = r#"[catalog]
url = "sqlite://var/catalog.db"
[encryption]
key-file = "var/keys/repo.key"
"#;

/// A `[[source]]` named `files` that backs up `./data` to `repository`; `extra`: more
/// lines of its table, each ending in a newline.
pub fn files_source_toml(repository: &str, extra: &str) -> String {
    format!(
        r#"[[source]]
name = "files"
kind = "files"
paths = ["./data"]
repository = "{repository}"
{extra}"#
    )
}

/// How `backupctl` is started.
enum Runner {
    /// `cargo_bin("backupctl")` as the current user.
    Direct,
    /// `runuser -u USER -- BIN`: BIN is a copy inside the work dir, because the
    /// build directory (under /root) is not reachable by other users.
    AsUser { user: String, bin: PathBuf },
}

/// The result of one `backupctl` run.
#[derive(Debug, Clone)]
pub struct Out {
    pub args: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout and stderr together, for "the message names X" checks.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "`backupctl {}`: expected exit {code}, got {}\n{}",
            self.args,
            self.code,
            self.dump()
        );
        self
    }

    /// Asserts that stdout or stderr contains every needle.
    #[track_caller]
    pub fn expect_mentions(&self, needles: &[&str]) -> &Self {
        let text = self.text();
        for n in needles {
            assert!(
                text.contains(n),
                "`backupctl {}`: output does not mention {n:?}\n{}",
                self.args,
                self.dump()
            );
        }
        self
    }

    /// Asserts that stdout or stderr contains at least one of the needles (case-insensitive).
    #[track_caller]
    pub fn expect_mentions_any(&self, needles: &[&str]) -> &Self {
        let text = self.text().to_lowercase();
        assert!(
            needles.iter().any(|n| text.contains(&n.to_lowercase())),
            "`backupctl {}`: output mentions none of {needles:?}\n{}",
            self.args,
            self.dump()
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`backupctl {}`: stdout is not JSON ({e})\n{}",
                self.args,
                self.dump()
            )
        })
    }

    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// A temporary directory holding `backupd.toml`, `data/`, and (after init) `var/`.
pub struct Work {
    // Declared first, dropped last: guards that hold mounts inside it are declared after it.
    pub dir: TempDir,
    pub config: PathBuf,
    runner: Runner,
}

impl Work {
    pub fn new() -> Work {
        Self::with_config(&ConfigOpts::default())
    }

    pub fn with_config(opts: &ConfigOpts) -> Work {
        let dir = tempfile::Builder::new()
            .prefix("backupd-it-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("backupd.toml");
        let work = Work {
            dir,
            config,
            runner: Runner::Direct,
        };
        work.write_config(&config_toml(opts));
        fs::create_dir(work.data()).expect("create data dir");
        work
    }

    /// Runs every later command as `user`; opens the work dir to everyone (0777).
    pub fn run_as(&mut self, user: &str) {
        let bin = self.path("bin/backupctl");
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::copy(assert_cmd::cargo::cargo_bin("backupctl"), &bin).expect("copy backupctl binary");
        set_mode(bin.parent().unwrap(), 0o755);
        set_mode(&bin, 0o755);
        set_mode(self.root(), 0o777);
        self.runner = Runner::AsUser {
            user: user.to_owned(),
            bin,
        };
    }

    pub fn write_config(&self, text: &str) {
        fs::write(&self.config, text).expect("write config");
        set_mode(&self.config, 0o644);
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }
    pub fn data(&self) -> PathBuf {
        self.path("data")
    }
    pub fn repo(&self) -> PathBuf {
        self.path("var/repo/region-a")
    }
    pub fn key_file(&self) -> PathBuf {
        self.path("var/keys/repo.key")
    }

    /// A `Command` for `backupctl ARGS` in the work dir with `--config`, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.runner {
            Runner::Direct => Command::new(assert_cmd::cargo::cargo_bin("backupctl")),
            Runner::AsUser { user, bin } => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(bin);
                c
            }
        };
        cmd.current_dir(self.root())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("BACKUPD_CONFIG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        cmd
    }

    /// Runs `backupctl ARGS` with the work dir's config.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_command(self.command(args), args)
    }

    /// Runs `backupctl ARGS` without adding `--config` (for config tests).
    pub fn run_raw(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("backupctl"));
        cmd.current_dir(self.root())
            .args(args)
            .env_remove("BACKUPD_CONFIG")
            .env_remove("RUST_LOG");
        self.run_command(cmd, args)
    }

    fn run_command(&self, cmd: Command, args: &[&str]) -> Out {
        let output = assert_cmd::Command::from_std(cmd)
            .timeout(COMMAND_TIMEOUT)
            .output()
            .unwrap_or_else(|e| panic!("running backupctl {args:?}: {e}"));
        Out {
            args: args.join(" "),
            // None: killed by a signal (e.g. the timeout).
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs and asserts exit 0.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        out.expect_code(EXIT_OK);
        out
    }

    #[track_caller]
    pub fn init(&self) {
        self.ok(&["init"]);
    }

    /// `backup files`; returns the id printed on stdout.
    #[track_caller]
    pub fn backup(&self) -> String {
        self.backup_of("files")
    }

    /// `backup SOURCE`; returns the id printed on stdout.
    #[track_caller]
    pub fn backup_of(&self, source: &str) -> String {
        let out = self.ok(&["backup", source]);
        let id = out.stdout.trim().to_owned();
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "backup should print the id alone on stdout\n{}",
            out.dump()
        );
        id
    }

    #[track_caller]
    pub fn list(&self) -> Vec<Value> {
        match self.ok(&["list", "--json"]).json() {
            Value::Array(v) => v,
            other => panic!("list --json is not an array: {other}"),
        }
    }

    /// The `list --json` entry of `id`, if listed.
    #[track_caller]
    pub fn listed(&self, id: &str) -> Option<Value> {
        self.list().into_iter().find(|b| b["id"] == id)
    }

    #[track_caller]
    pub fn status_of(&self, id: &str) -> String {
        let b = self
            .listed(id)
            .unwrap_or_else(|| panic!("backup {id} is not in `list --json`"));
        b["status"].as_str().expect("status is a string").to_owned()
    }

    #[track_caller]
    pub fn show(&self, id: &str) -> Value {
        self.ok(&["show", id, "--json"]).json()
    }

    /// (artifact id, object file) of the backup's artifact with `role` ("data" or "manifest").
    #[track_caller]
    pub fn artifact(&self, backup: &str, role: &str) -> (String, PathBuf) {
        let show = self.show(backup);
        let artifacts = show["artifacts"].as_array().expect("artifacts array");
        let a = artifacts
            .iter()
            .find(|a| a["artifact"]["role"] == role)
            .unwrap_or_else(|| panic!("backup {backup} has no {role} artifact: {show:#}"));
        let id = a["artifact"]["id"]
            .as_str()
            .expect("artifact id")
            .to_owned();
        let key = a["copies"][0]["object_key"].as_str().expect("object key");
        let path = self.repo().join(key);
        assert!(path.is_file(), "{} should exist", path.display());
        (id, path)
    }

    /// Every file below the repository, relative to it (sorted).
    pub fn repo_files(&self) -> Vec<String> {
        files_below(&self.repo())
    }
}

/// Every regular file below `root` (relative, sorted), including dot-files.
pub fn files_below(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                pending.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// Every directory below `root` (relative, sorted).
pub fn dirs_below(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                pending.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The repository files a complete backup consists of, given its id.
pub fn backup_files_of(files: &[String], backup: &str) -> Vec<String> {
    files
        .iter()
        .filter(|f| f.starts_with(&format!("backups/{backup}/")))
        .cloned()
        .collect()
}

// ---- building trees ------------------------------------------------------------------------

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

pub fn write_file(path: &Path, content: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_mode(path, mode);
}

/// Sets atime and mtime of a file or directory (not through symlinks).
pub fn set_mtime(path: &Path, secs: u64, nsec: u32) {
    let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nsec);
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap_or_else(|e| panic!("set times of {}: {e}", path.display()));
}

/// A fast deterministic PRNG (splitmix64): test data, not cryptography.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// Incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Alternating 64 KiB stretches of random bytes, text and zeros.
pub fn mixed_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len);
    let mut i = 0u64;
    while v.len() < len {
        let n = (len - v.len()).min(64 << 10);
        match i % 3 {
            0 => {
                let mut b = vec![0u8; n];
                rng.fill(&mut b);
                v.extend_from_slice(&b);
            }
            1 => {
                let mut t = String::new();
                let mut line = 0;
                while t.len() < n {
                    writeln!(
                        t,
                        "line {line} of stretch {i}: the quick brown fox jumps over the lazy dog"
                    )
                    .unwrap();
                    line += 1;
                }
                v.extend_from_slice(&t.as_bytes()[..n]);
            }
            _ => v.resize(v.len() + n, 0),
        }
        i += 1;
    }
    v
}

// ---- snapshots -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, sha256: String },
    Symlink { target: PathBuf },
}

/// What a restore must reproduce exactly for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

/// Path (relative to the snapshot root, "" for the root itself) -> node.
pub type Snapshot = BTreeMap<String, Node>;

/// Walks `root` without following symlinks.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                pending.push(e.unwrap().path());
            }
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink {
                target: fs::read_link(&path).unwrap(),
            }
        } else {
            let content =
                fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            Kind::File {
                size: content.len() as u64,
                sha256: hex(&Sha256::digest(&content)),
            }
        };
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        out.insert(
            rel,
            Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                mtime_nsec: meta.mtime_nsec(),
            },
        );
    }
    out
}

/// Asserts two snapshots are identical, listing every difference.
#[track_caller]
pub fn assert_same_tree(expected: &Snapshot, actual: &Snapshot, compare_owner: bool) {
    let mut diffs = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => diffs.push(format!("{path:?}: missing from the restore")),
            Some(got) => {
                let mut got = got.clone();
                if !compare_owner {
                    got.uid = want.uid;
                    got.gid = want.gid;
                }
                if got != *want {
                    diffs.push(format!(
                        "{path:?}:\n    expected {want:?}\n    restored {got:?}"
                    ));
                }
            }
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        diffs.push(format!("{path:?}: restored but not in the source"));
    }
    assert!(
        diffs.is_empty(),
        "restored tree differs from the source:\n{}",
        diffs.join("\n")
    );
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- artifact layout -----------------------------------------------------------------------

pub const FIXED_HEADER_LEN: usize = 40;
pub const RECORD_HEADER_LEN: usize = 5;
pub const FLAG_FINAL: u8 = 0b01;

/// One record: `flags(u8) len(u32 LE) ciphertext(len)` at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub offset: usize,
    pub flags: u8,
    pub len: usize,
}

impl Record {
    pub fn end(&self) -> usize {
        self.offset + RECORD_HEADER_LEN + self.len
    }
    /// The ciphertext byte range.
    pub fn body(&self) -> std::ops::Range<usize> {
        self.offset + RECORD_HEADER_LEN..self.end()
    }
}

/// The record layout of an artifact (see crates/backup-core/src/format/mod.rs).
#[derive(Debug, Clone)]
pub struct Layout {
    pub header_len: usize,
    pub records: Vec<Record>,
}

impl Layout {
    pub fn parse(bytes: &[u8]) -> Layout {
        assert!(
            bytes.len() >= FIXED_HEADER_LEN && &bytes[..8] == b"\x89BKPD\r\n\x1a",
            "not an artifact"
        );
        let header_len = FIXED_HEADER_LEN + bytes[11] as usize;
        let mut records = Vec::new();
        let mut pos = header_len;
        while pos < bytes.len() {
            let flags = bytes[pos];
            let len = u32::from_le_bytes(bytes[pos + 1..pos + 5].try_into().unwrap()) as usize;
            let r = Record {
                offset: pos,
                flags,
                len,
            };
            assert!(r.end() <= bytes.len(), "record at {pos} runs past the end");
            records.push(r);
            pos = r.end();
        }
        let last = records.last().expect("at least a trailer");
        assert!(
            last.flags & FLAG_FINAL != 0,
            "last record is not the trailer"
        );
        Layout {
            header_len,
            records,
        }
    }

    pub fn trailer(&self) -> Record {
        *self.records.last().unwrap()
    }

    /// The data (non-trailer) records.
    pub fn segments(&self) -> &[Record] {
        &self.records[..self.records.len() - 1]
    }
}
