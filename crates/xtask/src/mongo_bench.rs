//! `cargo xtask bench-mongo`: backupd's MongoDB source against a plain driver-level export
//! and import (this file's `plain_export` / `plain_import`: every collection read with one
//! cursor and written as concatenated BSON, then inserted back in batches of 1000; the floor
//! backupd must not fall below), on SecantusDB servers started here, in one run.
//!
//! Measures backup and restore MB/s (BSON bytes / wall time) and documents/s of a collection
//! set of `--mb` MB (default 1024) in 4 collections, and the oplog archiving lag under a
//! steady insert load: `backupctl oplog-archive` with `oplog-interval = 1s` while inserts run
//! at `--rate` documents/s for `--load-seconds`, sampling the age of the newest archived
//! entry every second.

use std::fs;
use std::future::IntoFuture;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backup_sources::mongodb::backup::BsonFileReader;
use backup_testing::servers::SecantusDb;
use mongodb::bson::{doc, Binary, Document, RawDocumentBuf};
use mongodb::Client;

use crate::{machine, timed, Measured};

const HEADING: &str = "## MongoDB: backupd vs a plain driver export";
const COLLECTIONS: [&str; 4] = ["orders", "events", "users", "audit"];

struct Options {
    mb: u64,
    rounds: u64,
    rate: u64,
    load_seconds: u64,
    write_docs: bool,
    /// Only the oplog lag run (after one backup to start from); nothing is written.
    lag_only: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        mb: 1024,
        rounds: 2,
        rate: 1000,
        load_seconds: 20,
        write_docs: true,
        lag_only: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || -> Result<u64> {
            Ok(it
                .next()
                .with_context(|| format!("{a} needs a value"))?
                .parse()?)
        };
        match a.as_str() {
            "--mb" => o.mb = value()?,
            "--rounds" => o.rounds = value()?.max(1),
            "--rate" => o.rate = value()?,
            "--load-seconds" => o.load_seconds = value()?,
            "--no-docs" => o.write_docs = false,
            "--lag-only" => o.lag_only = true,
            other => bail!(
                "unknown option {other}; usage: bench-mongo [--mb N] [--rounds N] \
                 [--rate DOCS_PER_S] [--load-seconds S] [--no-docs] [--lag-only]"
            ),
        }
    }
    Ok(o)
}

/// One document of about 1 KiB: scalar fields, a nested array, 600 bytes of text (it
/// compresses, like real data) and 200 random bytes (they do not).
fn document(i: u64, coll: usize) -> Document {
    let words = [
        "alpha", "beta", "gamma", "delta", "order", "shipped", "paid", "eu-west",
    ];
    let text: String = (0..100)
        .map(|k| words[((i * 7 + k * 13 + coll as u64) % 8) as usize])
        .collect::<Vec<_>>()
        .join(" ");
    let mut noise = vec![0u8; 200];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ coll as u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    doc! {
        "_id": i as i64,
        "customer": format!("c{}", i % 5000),
        "total": (i % 10_000) as f64 / 7.0,
        "at": mongodb::bson::DateTime::from_millis(1_700_000_000_000 + i as i64),
        "lines": (0..3).map(|l| doc! { "sku": format!("s{}", (i + l) % 977), "qty": l as i32 + 1 }).collect::<Vec<_>>(),
        "note": text,
        "blob": Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: noise },
    }
}

async fn load(client: &Client, mb: u64) -> Result<(u64, u64)> {
    let per_collection = mb * 1024 * 1024 / COLLECTIONS.len() as u64;
    let (mut docs, mut bytes) = (0u64, 0u64);
    for (c, name) in COLLECTIONS.iter().enumerate() {
        let coll = client.database("bench").collection::<Document>(name);
        let mut written = 0u64;
        let mut i = 0u64;
        while written < per_collection {
            let batch: Vec<Document> = (i..i + 1000).map(|k| document(k, c)).collect();
            for d in &batch {
                written += mongodb::bson::to_vec(d)?.len() as u64;
            }
            coll.insert_many(batch).await?;
            i += 1000;
        }
        docs += i;
        bytes += written;
    }
    Ok((docs, bytes))
}

/// Every collection of `bench` to `DIR/NAME.bson`; returns (documents, bytes).
async fn plain_export(client: &Client, dir: &Path) -> Result<(u64, u64)> {
    fs::create_dir_all(dir)?;
    let (mut docs, mut bytes) = (0, 0);
    for name in COLLECTIONS {
        let mut out =
            BufWriter::with_capacity(1 << 20, fs::File::create(dir.join(format!("{name}.bson")))?);
        let mut cursor = client
            .database("bench")
            .collection::<RawDocumentBuf>(name)
            .find(doc! {})
            .batch_size(1000)
            .await?;
        while cursor.advance().await? {
            let raw = cursor.current().as_bytes();
            out.write_all(raw)?;
            bytes += raw.len() as u64;
            docs += 1;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    Ok((docs, bytes))
}

/// CPU seconds (user + system) the SecantusDB listening on `port` has used so far.
fn server_cpu_seconds(port: u16) -> Result<f64> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("secantusd-py .*--port {port} ")])
        .output()?;
    let pid = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("finding the SecantusDB process")?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let after_name = &stat[stat.rfind(')').context("a /proc stat line")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// How long the archiver may take to store its first slice before the lag run gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// What the oplog lag run measured.
struct Lag {
    catch_up: String,
    inserted: u64,
    load_s: f64,
    samples: usize,
    p50: f64,
    max: f64,
}

/// Oplog lag under a steady insert load. The archiver starts from the end of the last
/// backup, minutes back: it first catches up (timed on its own), then its lag is sampled
/// every second for `load_seconds` while the load goes on. Its stderr is kept in
/// `archiver.log` and shown when it stores nothing.
fn oplog_lag(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    work: &Path,
    src: &Client,
    o: &Options,
) -> Result<Lag> {
    let cfg = ["--config", "bench.toml"];
    let archived_to = || -> Result<Option<String>> {
        let out = Command::new(bin)
            .current_dir(work)
            .args(cfg)
            .args(["oplog-status", "mongo", "--json"])
            .output()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // One range per backup: the slices continue the newest one, whose range ends last
        // (RFC 3339 times in UTC compare as strings).
        Ok(status
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|range| range["to_time"].as_str())
            .max()
            .map(str::to_owned))
    };
    let backup_end = archived_to()?;
    let mut archiver = Command::new(bin)
        .current_dir(work)
        .args(cfg)
        .args(["oplog-archive", "mongo"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("archiver.log"))?)
        .spawn()?;
    let rate = o.rate;
    let load_seconds = o.load_seconds;
    let lags = rt.block_on(async {
        let coll = src.database("bench").collection::<Document>("live");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inserter = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut i = 0u64;
                let tick = Duration::from_millis(100);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = (rate / 10).max(1);
                    let batch: Vec<Document> = (i..i + n).map(|k| document(k, 9)).collect();
                    coll.insert_many(batch).await?;
                    i += n;
                    tokio::time::sleep(tick).await;
                }
                Ok::<u64, mongodb::error::Error>(i)
            }
        });
        let started = Instant::now();
        let mut catch_up = None;
        while started.elapsed() < CATCH_UP_LIMIT {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if archived_to()? != backup_end {
                catch_up = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        let mut lags = Vec::new();
        let sample_until = Instant::now() + Duration::from_secs(load_seconds);
        while catch_up.is_some() && Instant::now() < sample_until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(to) = archived_to()? {
                let to = chrono::DateTime::parse_from_rfc3339(&to)?;
                lags.push(
                    (chrono::Utc::now() - to.with_timezone(&chrono::Utc)).num_milliseconds() as f64
                        / 1000.0,
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let inserted = inserter.await??;
        let load_s = started.elapsed().as_secs_f64();
        Ok::<_, anyhow::Error>((lags, inserted, catch_up, load_s))
    })?;
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(archiver.id().to_string())
        .status();
    let _ = archiver.wait();
    let (mut lags, inserted, catch_up, load_s) = lags;
    if catch_up.is_none() {
        let log = fs::read_to_string(work.join("archiver.log")).unwrap_or_default();
        eprintln!("the archiver stored no slice; its stderr:\n{log}");
    }
    let catch_up = catch_up.map_or_else(
        || format!("none within {} s", CATCH_UP_LIMIT.as_secs()),
        |s| format!("{s:.1} s"),
    );
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Lag {
        catch_up,
        inserted,
        load_s,
        samples: lags.len(),
        p50: pct(0.5),
        max: lags.last().copied().unwrap_or(f64::NAN),
    })
}

/// The files of [`plain_export`] inserted back in batches of 1000.
async fn plain_import(client: &Client, dir: &Path) -> Result<u64> {
    let mut docs = 0;
    for name in COLLECTIONS {
        let file = fs::File::open(dir.join(format!("{name}.bson")))?;
        let mut reader = BsonFileReader::new(std::io::BufReader::with_capacity(1 << 20, file));
        let coll = client.database("bench").collection::<RawDocumentBuf>(name);
        let mut batch = Vec::with_capacity(1000);
        loop {
            let next = reader.next_raw()?;
            let done = next.is_none();
            if let Some(d) = next {
                batch.push(d);
            }
            if batch.len() == 1000 || (done && !batch.is_empty()) {
                docs += batch.len() as u64;
                coll.insert_many(std::mem::take(&mut batch)).await?;
            }
            if done {
                break;
            }
        }
    }
    Ok(docs)
}

async fn count_bench(client: &Client) -> Result<u64> {
    let mut n = 0;
    for name in COLLECTIONS {
        n += client
            .database("bench")
            .collection::<Document>(name)
            .count_documents(doc! {})
            .await?;
    }
    Ok(n)
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let bin = crate::cargo_build_backupctl(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let work = crate::tempdir("bench-mongo")?;
    let source = SecantusDb::start();
    let src = rt.block_on(Client::with_uri_str(source.uri()))?;
    println!("loading {} MB into SecantusDB", o.mb);
    let started = Instant::now();
    let (docs, bytes) = rt.block_on(load(&src, o.mb))?;
    println!(
        "loaded {docs} documents, {bytes} bytes in {:.0}s",
        started.elapsed().as_secs_f64()
    );

    fs::write(work.join("uri"), format!("{}\n", source.uri()))?;
    fs::write(
        work.join("bench.toml"),
        "[catalog]\nurl = \"sqlite://var/catalog.db\"\n[encryption]\nkey-file = \"var/keys/repo.key\"\n\
         [[repository]]\nname = \"bench\"\nkind = \"local\"\npath = \"var/repo\"\n\
         [[source]]\nname = \"mongo\"\nkind = \"mongodb\"\nuri-file = \"uri\"\nrepository = \"bench\"\n\
         oplog-interval = \"1s\"\n",
    )?;
    let cfg = ["--config", "bench.toml"];
    crate::run(&work, &bin, &[&cfg[..], &["init"]].concat())?;
    if o.lag_only {
        crate::run(&work, &bin, &[&cfg[..], &["backup", "mongo"]].concat())?;
        let lag = oplog_lag(&rt, &bin, &work, &src, &o)?;
        println!(
            "oplog lag: first slice after {}; lag p50 {:.1} s, max {:.1} s ({} samples); \
             {} documents inserted in {:.0} s",
            lag.catch_up, lag.p50, lag.max, lag.samples, lag.inserted, lag.load_s
        );
        let _ = fs::remove_dir_all(&work);
        return Ok(());
    }

    // Plain export and backupd's backup of the same data, then plain import and backupd's
    // restore, in rounds that alternate which goes first (the server's caches and the
    // machine drift between runs); each side keeps its fastest run.
    let (mut plain_export_s, mut plain_import_s) = (f64::MAX, f64::MAX);
    // The source server's CPU time during the fastest run of each side.
    let (mut plain_export_server_cpu, mut backup_server_cpu) = (0.0, 0.0);
    let (mut backup, mut restore): (Option<Measured>, Option<Measured>) = (None, None);
    let (mut plain_docs, mut plain_bytes, mut stored) = (0, 0, 0);
    let keep_fastest = |best: &mut Option<Measured>, run: Measured| {
        if best.as_ref().is_none_or(|b| run.seconds < b.seconds) {
            *best = Some(run);
        }
    };
    for round in 0..o.rounds {
        for plain_first in [round % 2 == 0, round % 2 != 0] {
            let server_cpu = server_cpu_seconds(source.port())?;
            if plain_first {
                let t = Instant::now();
                (plain_docs, plain_bytes) = rt.block_on(plain_export(&src, &work.join("plain")))?;
                let seconds = t.elapsed().as_secs_f64();
                let server_cpu = server_cpu_seconds(source.port())? - server_cpu;
                println!("plain export: {seconds:.1} s, server CPU {server_cpu:.1} s");
                if seconds < plain_export_s {
                    (plain_export_s, plain_export_server_cpu) = (seconds, server_cpu);
                }
            } else {
                crate::sync();
                let run = timed(&work, &bin, &[&cfg[..], &["backup", "mongo"]].concat(), &[])?;
                let server_cpu = server_cpu_seconds(source.port())? - server_cpu;
                println!(
                    "backupd backup: {:.1} s, server CPU {server_cpu:.1} s, backupctl CPU {:.1} s",
                    run.seconds, run.cpu_seconds
                );
                if stored == 0 {
                    stored = crate::du_bytes(&work.join("var/repo"))?;
                }
                if backup.as_ref().is_none_or(|b| run.seconds < b.seconds) {
                    backup_server_cpu = server_cpu;
                }
                keep_fastest(&mut backup, run);
            }
            crate::sync();
        }
    }
    let backup = backup.expect("at least one round");
    for round in 0..o.rounds {
        for plain_first in [round % 2 == 0, round % 2 != 0] {
            // Each load goes into a server of its own, started empty: a server that held
            // and dropped a gigabyte inserts about 15% slower than a new one, which would
            // favour whichever tool ran first.
            let target = SecantusDb::start();
            let dst = rt.block_on(Client::with_uri_str(target.uri()))?;
            fs::write(work.join("target-uri"), format!("{}\n", target.uri()))?;
            if plain_first {
                let t = Instant::now();
                let imported = rt.block_on(plain_import(&dst, &work.join("plain")))?;
                let seconds = t.elapsed().as_secs_f64();
                println!("plain import: {seconds:.1} s");
                plain_import_s = plain_import_s.min(seconds);
                if imported != plain_docs {
                    bail!("imported {imported} documents of {plain_docs}");
                }
            } else {
                let run = timed(
                    &work,
                    &bin,
                    &[
                        &cfg[..],
                        &[
                            "restore",
                            "mongo",
                            "--latest",
                            "--target-uri-file",
                            "target-uri",
                            "--drop",
                        ],
                    ]
                    .concat(),
                    &[],
                )?;
                println!(
                    "backupd restore: {:.1} s, backupctl CPU {:.1} s",
                    run.seconds, run.cpu_seconds
                );
                let restored = rt.block_on(count_bench(&dst))?;
                if restored != plain_docs {
                    bail!("restored {restored} documents of {plain_docs}");
                }
                keep_fastest(&mut restore, run);
            }
        }
    }
    let restore = restore.expect("at least one round");
    // What one oplog read costs on this server (a backup needs one, for its end position).
    let t = Instant::now();
    rt.block_on(
        src.database("local")
            .collection::<Document>("oplog.rs")
            .find_one(doc! {})
            .sort(doc! { "$natural": -1 })
            .into_future(),
    )?;
    let oplog_read_s = t.elapsed().as_secs_f64();

    let lag = oplog_lag(&rt, &bin, &work, &src, &o)?;
    let Lag {
        catch_up,
        inserted,
        load_s,
        samples,
        p50,
        max,
    } = lag;

    let mb = plain_bytes as f64 / 1e6;
    let ratio = |a: f64, b: f64| format!("{:.2}x", a / b);
    let (cores, cpu) = machine();
    let section = format!(
        "{HEADING} ({})\n\n\
         Data: {plain_docs} documents of about 1 KiB (scalars, a nested array, 600 bytes of text, \
         200 random bytes) in 4 collections, {mb:.0} MB of BSON, on SecantusDB 0.7.0b3 (a MongoDB \
         wire-protocol server; the same one serves both tools). Plain driver: this benchmark's own \
         `plain_export` (one cursor per collection, concatenated BSON to a file, fsync) and \
         `plain_import` (insert_many of 1000); backupd: `backupctl backup mongo` (zstd-3, \
         AES-256-GCM, local repository, oplog range included) and `backupctl restore mongo --latest \
         --target-uri-file F --drop` (staging, indexes, oplog replay), release build; each \
         import and restore goes into a new, empty SecantusDB. MB/s = BSON \
         bytes / wall time. Oplog lag: `backupctl oplog-archive` (oplog-interval 1s) while {} \
         documents/s were inserted; it starts at the end of the last backup and first catches \
         up (its first slice, timed), then lag = now minus the time of the newest archived \
         entry, sampled every second for {} s ({} samples). Each side's fastest of {} rounds that \
         alternate which goes first. Machine: {cores} cores, {cpu}. Generated by \
         `cargo xtask bench-mongo --mb {} --rounds {}`.\n\n\
         | measure | backupd | plain driver | backupd / plain |\n|---|---:|---:|---:|\n\
         | backup, MB/s | {:.1} | {:.1} | **{}** |\n\
         | backup, documents/s | {:.0} | {:.0} | {} |\n\
         | backup peak RSS | {:.0} MiB | | |\n\
         | backup: source server CPU / tool CPU | {:.1} s / {:.1} s | {:.1} s / | |\n\
         | one oplog read (the newest entry) | {:.1} s | | |\n\
         | stored | {:.1} MB | {:.1} MB (uncompressed BSON) | {} |\n\
         | restore, MB/s | {:.1} | {:.1} | **{}** |\n\
         | restore, documents/s | {:.0} | {:.0} | {} |\n\
         | restore peak RSS | {:.0} MiB | | |\n\
         | oplog archiving: first slice after start (catching up) | {catch_up} | | |\n\
         | oplog archiving lag, p50 / max | {:.1} s / {:.1} s | | |\n\
         | documents inserted during the lag run | {inserted} in {load_s:.0} s | | |\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        o.rate,
        o.load_seconds,
        samples,
        o.rounds,
        o.mb,
        o.rounds,
        mb / backup.seconds,
        mb / plain_export_s,
        ratio(plain_export_s, backup.seconds),
        plain_docs as f64 / backup.seconds,
        plain_docs as f64 / plain_export_s,
        ratio(plain_export_s, backup.seconds),
        backup.peak_rss_kib as f64 / 1024.0,
        backup_server_cpu,
        backup.cpu_seconds,
        plain_export_server_cpu,
        oplog_read_s,
        stored as f64 / 1e6,
        plain_bytes as f64 / 1e6,
        ratio(stored as f64, plain_bytes as f64),
        mb / restore.seconds,
        mb / plain_import_s,
        ratio(plain_import_s, restore.seconds),
        plain_docs as f64 / restore.seconds,
        plain_docs as f64 / plain_import_s,
        ratio(plain_import_s, restore.seconds),
        restore.peak_rss_kib as f64 / 1024.0,
        p50,
        max,
    );
    println!("{section}");
    if o.write_docs {
        crate::write_bench_section(HEADING, &section)?;
    }
    let _ = fs::remove_dir_all(&work);
    Ok(())
}
