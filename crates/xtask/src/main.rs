//! Developer automation: `cargo xtask quickstart`, `cargo xtask bench`, `bench-s3`,
//! `bench-pg`, `bench-mongo`, `bench-scheduler`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

mod mongo_bench;
mod pg_bench;
mod s3_bench;
mod scheduler_bench;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("quickstart") => quickstart(args.iter().any(|a| a == "--no-daemon")),
        Some("bench") => bench(&args[1..]),
        Some("bench-scheduler") => scheduler_bench::run(&args[1..]),
        Some("bench-s3") => s3_bench::run(&args[1..]),
        Some("bench-pg") => pg_bench::run(&args[1..]),
        Some("bench-mongo") => mongo_bench::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask quickstart [--no-daemon] | bench [--scale S] [--rounds N] | bench-s3 [--scale S] [--rounds N] [--corpus DIR] | bench-pg [--scale S | --corpus DIR | --pgbench-scale N] [--rounds N] [--segments N] [--load-seconds S] [--clients N] [--no-docs] | bench-mongo [--mb N] [--rounds N] [--rate DOCS_PER_S] [--load-seconds S] [--no-docs] [--lag-only] | bench-scheduler [--postgres URL]"
            );
            std::process::exit(2);
        }
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/xtask is two levels deep")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo_build_backupctl(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "backupctl"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p backupctl failed");
    }
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("backupctl"))
}

/// Runs `bin args` in `dir`, echoing the command, failing on a non-zero exit.
fn run(dir: &Path, bin: &Path, args: &[&str]) -> Result<String> {
    println!("$ backupctl {}", args.join(" "));
    let out = Command::new(bin)
        .current_dir(dir)
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    if !out.status.success() {
        bail!("backupctl {} exited with {}", args.join(" "), out.status);
    }
    Ok(stdout)
}

/// A real round trip on the embedded quickstart config: init, backup, list,
/// verify, restore, and a byte-for-byte comparison of the restored tree; then
/// (unless `--no-daemon`) backupd runs the demo policy on the same catalog.
fn quickstart(no_daemon: bool) -> Result<()> {
    let bin = cargo_build_backupctl(false)?;
    let work = workspace_root().join("var/quickstart");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    // Sample data: this repository's docs, config and source code.
    let data = work.join("data");
    for dir in ["docs", "config", "crates"] {
        copy_tree(&workspace_root().join(dir), &data.join(dir))?;
    }
    println!(
        "quickstart work directory: {} (data: {})",
        work.display(),
        data.display()
    );
    run(&work, &bin, &["init"])?;
    let id = run(&work, &bin, &["backup", "files"])?.trim().to_owned();
    run(&work, &bin, &["list"])?;
    run(&work, &bin, &["verify", &id])?;
    run(&work, &bin, &["verify", "--all", "--quick"])?;
    run(&work, &bin, &["restore", &id, "--target", "restored"])?;
    let status = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&data)
        .arg(work.join("restored/data"))
        .status()?;
    if !status.success() {
        bail!("restored tree differs from the original");
    }
    println!(
        "quickstart OK: backup {id} verified and restored byte for byte into {}",
        work.join("restored").display()
    );
    if no_daemon {
        return Ok(());
    }
    let backupd = bin.with_file_name("backupd");
    println!(
        "\nstarting backupd on the same catalog (Ctrl-C to stop): the demo policy backs up {} every minute and keeps 10.\n\
         health: http://127.0.0.1:8080/healthz   metrics: http://127.0.0.1:8080/metrics\n\
         in another terminal: cd {} && {} list",
        data.display(),
        work.display(),
        bin.display()
    );
    let status = Command::new(backupd)
        .current_dir(&work)
        .status()
        .context("starting backupd")?;
    if !status.success() {
        bail!("backupd exited with {status}");
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if ft.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if ft.is_file() {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

struct Measured {
    seconds: f64,
    peak_rss_kib: u64,
    /// User plus system CPU time of the command and its children.
    cpu_seconds: f64,
}

/// Runs a command under /usr/bin/time to get its peak RSS.
fn timed(dir: &Path, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<Measured> {
    let rss_file = dir.join(".rss");
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .current_dir(dir)
        .arg("-f")
        .arg("%M %U %S")
        .arg("-o")
        .arg(&rss_file)
        .arg(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running /usr/bin/time (apt-get install time)")?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The last line: earlier ones are /usr/bin/time's notes (a signal, an exit status).
    let report = fs::read_to_string(&rss_file)?;
    let fields: Vec<&str> = report
        .trim()
        .lines()
        .last()
        .unwrap_or("0 0 0")
        .split_whitespace()
        .collect();
    let number = |i: usize| fields.get(i).copied().unwrap_or("0");
    let peak_rss_kib = number(0).parse()?;
    let cpu_seconds = number(1).parse::<f64>()? + number(2).parse::<f64>()?;
    Ok(Measured {
        seconds,
        peak_rss_kib,
        cpu_seconds,
    })
}

fn du_bytes(path: &Path) -> Result<u64> {
    let out = Command::new("du").arg("-sb").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()?)
}

fn sync() {
    let _ = Command::new("sync").status();
}

struct Row {
    tool: &'static str,
    backup_mb_s: f64,
    backup_rss_mib: f64,
    restore_mb_s: f64,
    restore_rss_mib: f64,
    stored: u64,
}

fn bench(args: &[String]) -> Result<()> {
    let mut scale = "1".to_string();
    let mut rounds = 2usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--scale" => scale = it.next().context("--scale needs a value")?.clone(),
            "--rounds" => rounds = it.next().context("--rounds needs a value")?.parse()?,
            other => bail!("unknown bench option {other}"),
        }
    }
    let restic = restic()?;
    let (corpus, corpus_bytes) = reference_corpus(None, &scale)?;
    let bin = cargo_build_backupctl(true)?;
    println!(
        "corpus {} ({:.2} GB), {rounds} rounds",
        corpus.display(),
        corpus_bytes as f64 / 1e9
    );

    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=rounds {
        // restic, as the reference script runs it (same flags), measured the same way as ours.
        let work = tempdir("restic")?;
        let repo = work.join("repo");
        let env = [
            ("RESTIC_PASSWORD", "bench"),
            ("RESTIC_REPOSITORY", repo.to_str().expect("utf-8 path")),
        ];
        timed(&work, restic, &["init", "-q"], &env)?;
        sync();
        let b = timed(
            &work,
            restic,
            &[
                "backup",
                "-q",
                "--compression",
                "auto",
                corpus.to_str().expect("utf-8"),
            ],
            &env,
        )?;
        let r = timed(
            &work,
            restic,
            &["restore", "-q", "latest", "--target", "out"],
            &env,
        )?;
        rows.push(row("restic 0.14", corpus_bytes, &b, &r, du_bytes(&repo)?));
        fs::remove_dir_all(&work)?;

        let work = tempdir("backupd")?;
        fs::write(
            work.join("bench.toml"),
            format!(
                "[catalog]\nurl = \"sqlite://var/catalog.db\"\n[encryption]\nkey-file = \"var/keys/repo.key\"\n\
                 [[repository]]\nname = \"bench\"\nkind = \"local\"\npath = \"var/repo\"\n\
                 [[source]]\nname = \"corpus\"\nkind = \"files\"\npaths = [\"{}\"]\nrepository = \"bench\"\n",
                corpus.display()
            ),
        )?;
        let cfg = ["--config", "bench.toml"];
        timed(&work, &bin, &[&cfg[..], &["init"]].concat(), &[])?;
        sync();
        let b = timed(
            &work,
            &bin,
            &[&cfg[..], &["backup", "corpus"]].concat(),
            &[],
        )?;
        let r = timed(
            &work,
            &bin,
            &[
                &cfg[..],
                &[
                    "restore", "--source", "corpus", "--latest", "--target", "out",
                ],
            ]
            .concat(),
            &[],
        )?;
        rows.push(row(
            "backupd",
            corpus_bytes,
            &b,
            &r,
            du_bytes(&work.join("var/repo"))?,
        ));
        fs::remove_dir_all(&work)?;
        println!(
            "round {round}: {}",
            rows.iter()
                .rev()
                .take(2)
                .map(describe)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let best = |tool: &str| -> Row {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.tool == tool).collect();
        Row {
            tool: mine[0].tool,
            backup_mb_s: mine.iter().map(|r| r.backup_mb_s).fold(0.0, f64::max),
            backup_rss_mib: mine.iter().map(|r| r.backup_rss_mib).fold(0.0, f64::max),
            restore_mb_s: mine.iter().map(|r| r.restore_mb_s).fold(0.0, f64::max),
            restore_rss_mib: mine.iter().map(|r| r.restore_rss_mib).fold(0.0, f64::max),
            stored: mine.iter().map(|r| r.stored).max().unwrap_or(0),
        }
    };
    let (ours, peer) = (best("backupd"), best("restic 0.14"));
    write_report(&corpus, corpus_bytes, rounds, &ours, &peer)?;
    Ok(())
}

/// restic 0.14 from the distribution, the peer of every comparison.
pub(crate) fn restic() -> Result<&'static Path> {
    let restic = Path::new("/usr/bin/restic");
    if !restic.exists() {
        bail!("restic is not installed: apt-get install -y restic");
    }
    Ok(restic)
}

/// The reference corpus (`make-corpus.sh DIR SCALE`, a no-op when DIR is complete) in `dir`,
/// by default `~/.cache/backupd/corpus-SCALE`: its canonical path and size in bytes.
pub(crate) fn reference_corpus(dir: Option<PathBuf>, scale: &str) -> Result<(PathBuf, u64)> {
    let corpus = dir.unwrap_or_else(|| {
        let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
        home.join(format!(".cache/backupd/corpus-{scale}"))
    });
    let script = workspace_root().join("../shared/bench/make-corpus.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&corpus)
        .arg(scale)
        .status()
        .context("running make-corpus.sh")?;
    if !status.success() {
        bail!("make-corpus.sh failed");
    }
    // Measure and back up the real directory, not a symlink to it.
    let corpus = fs::canonicalize(&corpus)?;
    let corpus_bytes = du_bytes(&corpus)?;
    Ok((corpus, corpus_bytes))
}

/// `(cores, CPU model)` for the machine note of a report.
pub(crate) fn machine() -> (usize, String) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (cores, cpu)
}

fn tempdir(label: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("backupd-bench-{label}-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn row(tool: &'static str, bytes: u64, b: &Measured, r: &Measured, stored: u64) -> Row {
    Row {
        tool,
        backup_mb_s: bytes as f64 / 1e6 / b.seconds,
        backup_rss_mib: b.peak_rss_kib as f64 / 1024.0,
        restore_mb_s: bytes as f64 / 1e6 / r.seconds,
        restore_rss_mib: r.peak_rss_kib as f64 / 1024.0,
        stored,
    }
}

fn describe(r: &Row) -> String {
    format!(
        "{} backup {:.0} MB/s ({:.0} MiB) restore {:.0} MB/s ({:.0} MiB) stored {:.1} MB",
        r.tool,
        r.backup_mb_s,
        r.backup_rss_mib,
        r.restore_mb_s,
        r.restore_rss_mib,
        r.stored as f64 / 1e6
    )
}

fn write_report(
    corpus: &Path,
    corpus_bytes: u64,
    rounds: usize,
    ours: &Row,
    peer: &Row,
) -> Result<()> {
    let (cores, cpu) = machine();
    let table = format!(
        "| tool | backup MB/s | backup peak RSS | restore MB/s | restore peak RSS | stored | ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|\n\
         | backupd | {:.0} | {:.0} MiB | {:.0} | {:.0} MiB | {:.1} MB | {:.2} |\n\
         | restic 0.14 (`--compression auto`) | {:.0} | {:.0} MiB | {:.0} | {:.0} MiB | {:.1} MB | {:.2} |\n\
         | **backupd / restic** | **{:.2}x** | {:.2}x | **{:.2}x** | {:.2}x | {:.2}x | |\n",
        ours.backup_mb_s, ours.backup_rss_mib, ours.restore_mb_s, ours.restore_rss_mib, ours.stored as f64 / 1e6,
        corpus_bytes as f64 / ours.stored as f64,
        peer.backup_mb_s, peer.backup_rss_mib, peer.restore_mb_s, peer.restore_rss_mib, peer.stored as f64 / 1e6,
        corpus_bytes as f64 / peer.stored as f64,
        ours.backup_mb_s / peer.backup_mb_s, ours.backup_rss_mib / peer.backup_rss_mib,
        ours.restore_mb_s / peer.restore_mb_s, ours.restore_rss_mib / peer.restore_rss_mib,
        ours.stored as f64 / peer.stored as f64,
    );
    let section = format!(
        "## Files: reference corpus, backupd vs restic ({})\n\n\
         Corpus: `make-corpus.sh` at {} ({:.2} GB: Postgres data directory, logs, incompressible blobs), warm page cache, \
         local repository on the same disk, best of {rounds} alternating rounds per tool. Machine: {cores} cores, {cpu}. \
         MB/s = corpus bytes / wall time. Generated by `cargo xtask bench`.\n\n{table}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        corpus.display(),
        corpus_bytes as f64 / 1e9,
    );
    println!("\n{section}");
    write_bench_section("## Files: reference corpus", &section)
}

/// Replaces the section of docs/benchmarks.md that starts with `heading` (or appends it),
/// keeping the other sections.
pub(crate) fn write_bench_section(heading: &str, section: &str) -> Result<()> {
    let path = workspace_root().join("docs/benchmarks.md");
    let header = "# Benchmarks\n\nMeasured with `cargo xtask bench`; peers run in the same session and ratios matter more than absolute \
                  figures (shared machines vary by 30% or more between runs).\n\n";
    let mut text = fs::read_to_string(&path).unwrap_or_else(|_| header.to_string());
    if let Some(start) = text.find(heading) {
        let end = text[start + 3..]
            .find("\n## ")
            .map(|i| start + 3 + i + 1)
            .unwrap_or(text.len());
        text.replace_range(start..end, "");
    }
    if !text.ends_with("\n\n") {
        text.push('\n');
    }
    text.push_str(section);
    fs::write(&path, text)?;
    println!("wrote {}", path.display());
    Ok(())
}
