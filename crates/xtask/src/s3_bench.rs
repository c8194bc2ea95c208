//! `cargo xtask bench-s3`: backupd vs restic on the reference corpus with S3 repositories
//! (SeaweedFS), and the throughput of `backupctl replicate` between two S3 "regions" against
//! a plain SDK copy of the same objects.
//!
//! One run starts two SeaweedFS servers (regions A and B). Each round, in alternating
//! order: restic backs up and restores the corpus through a bucket on A; backupd does the
//! same (`backup --no-copy`, `restore`) through an `s3` repository on A whose source has
//! `copy-to = ["region-b"]`, then `backupctl replicate` copies the backup to B, and
//! [`raw_copy`] streams the same stored objects from A to B with the SDK as the reference.
//! The best figure of each column over the rounds goes into docs/benchmarks.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use backup_sinks::{S3Credentials, S3Options, S3Sink, SecretSource};
use backup_testing::servers::{SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY};
use bytes::{Bytes, BytesMut};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::{
    du_bytes, machine, reference_corpus, restic, row, sync, tempdir, timed, Measured, Row,
};

/// backupd's defaults for S3 repositories, written out in the config so the figures say
/// what they measured; the raw copy uses the same.
const PART_SIZE_MIB: usize = 16;
const CONCURRENCY: usize = 4;
/// Key prefix of the backupd repositories in their buckets.
const PREFIX: &str = "repo";
const REGION: &str = "us-east-1";
const RESTIC: &str = "restic 0.14";
const HEADING: &str = "## S3 repository (SeaweedFS): backupd vs restic, replication";

struct Options {
    scale: String,
    rounds: usize,
    corpus: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        scale: "1".into(),
        rounds: 2,
        corpus: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--scale" => options.scale = it.next().context("--scale needs a value")?.clone(),
            "--rounds" => {
                options.rounds = it.next().context("--rounds needs a value")?.parse()?;
                if options.rounds == 0 {
                    bail!("--rounds must be at least 1");
                }
            }
            "--corpus" => {
                options.corpus = Some(it.next().context("--corpus needs a directory")?.into())
            }
            other => bail!(
                "unknown bench-s3 option {other} (usage: bench-s3 [--scale S] [--rounds N] [--corpus DIR])"
            ),
        }
    }
    Ok(options)
}

/// One round's copy from region A to region B.
struct Transfer {
    mb_s: f64,
    /// `None` for the in-process raw copy.
    rss_mib: Option<f64>,
    bytes: u64,
    objects: usize,
}

pub fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let restic = restic()?;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_owned();
    let (corpus, corpus_bytes) = reference_corpus(options.corpus.clone(), &options.scale)?;
    let bin = crate::cargo_build_backupctl(true)?;
    let rounds = options.rounds;
    println!(
        "corpus {} ({:.2} GB), {rounds} rounds, load average {load}",
        corpus.display(),
        corpus_bytes as f64 / 1e9
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let scratch = tempdir("s3")?;
    let key_id = scratch.join("s3-key-id");
    let secret = scratch.join("s3-secret");
    fs::write(&key_id, SEAWEEDFS_ACCESS_KEY)?;
    fs::write(&secret, SEAWEEDFS_SECRET_KEY)?;
    println!("starting two SeaweedFS servers (regions A and B)");
    let (region_a, region_b) = (SeaweedFs::start(), SeaweedFs::start());
    let bench = Bench {
        rt: &rt,
        bin: &bin,
        restic,
        corpus: &corpus,
        corpus_bytes,
        a: rt.block_on(client(&region_a.endpoint(), &key_id, &secret))?,
        b: rt.block_on(client(&region_b.endpoint(), &key_id, &secret))?,
        endpoint_a: region_a.endpoint(),
        endpoint_b: region_b.endpoint(),
        key_id: &key_id,
        secret: &secret,
    };

    let (mut tools, mut replication, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Alternate which tool goes first, so neither always meets the fresher servers.
        let backupd_first = round % 2 == 0;
        let mut measured = Vec::new();
        for backupd in [backupd_first, !backupd_first] {
            if backupd {
                let (r, repl, plain) = bench.backupd_round(round)?;
                measured.push(r);
                replication.push(repl);
                raw.push(plain);
            } else {
                measured.push(bench.restic_round(round)?);
            }
        }
        println!(
            "round {round}: {} | replicate {} | raw copy {}",
            measured
                .iter()
                .map(crate::describe)
                .collect::<Vec<_>>()
                .join(" | "),
            describe_copy(replication.last().expect("pushed")),
            describe_copy(raw.last().expect("pushed")),
        );
        tools.extend(measured);
    }
    drop(bench);
    drop((region_a, region_b));
    fs::remove_dir_all(&scratch)?;

    let ours = best(&tools, "backupd");
    let peer = best(&tools, RESTIC);
    let (replicate, plain) = (best_copy(&replication), best_copy(&raw));
    let section = report(
        &corpus,
        corpus_bytes,
        rounds,
        &load,
        &ours,
        &peer,
        &replicate,
        &plain,
    );
    println!("\n{section}");
    crate::write_bench_section(HEADING, &section)
}

struct Bench<'a> {
    rt: &'a Runtime,
    bin: &'a Path,
    restic: &'a Path,
    corpus: &'a Path,
    corpus_bytes: u64,
    a: Client,
    b: Client,
    endpoint_a: String,
    endpoint_b: String,
    key_id: &'a Path,
    secret: &'a Path,
}

impl Bench<'_> {
    /// restic: init, backup and restore through a fresh bucket on region A, with the flags
    /// of the local-repository benchmark.
    fn restic_round(&self, round: usize) -> Result<Row> {
        let bucket = format!("restic-{round}");
        self.rt.block_on(create_bucket(&self.a, &bucket))?;
        let work = tempdir("s3-restic")?;
        let repository = format!("s3:{}/{bucket}", self.endpoint_a);
        let cache = work.join("cache");
        let env = [
            ("RESTIC_PASSWORD", "bench"),
            ("RESTIC_REPOSITORY", repository.as_str()),
            ("RESTIC_CACHE_DIR", cache.to_str().expect("utf-8 path")),
            ("AWS_ACCESS_KEY_ID", SEAWEEDFS_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SEAWEEDFS_SECRET_KEY),
        ];
        timed(&work, self.restic, &["init", "-q"], &env)?;
        sync();
        let backup = timed(
            &work,
            self.restic,
            &[
                "backup",
                "-q",
                "--compression",
                "auto",
                self.corpus.to_str().expect("utf-8 path"),
            ],
            &env,
        )?;
        sync();
        let restore = timed(
            &work,
            self.restic,
            &["restore", "-q", "latest", "--target", "out"],
            &env,
        )?;
        check_restored(&work.join("out"), self.corpus_bytes)?;
        let (_, stored) = self.rt.block_on(stored_objects(&self.a, &bucket, ""))?;
        fs::remove_dir_all(&work)?;
        Ok(row(RESTIC, self.corpus_bytes, &backup, &restore, stored))
    }

    /// backupd: init, `backup --no-copy`, restore from region A, `replicate` to region B,
    /// then the raw copy of the same objects from A to a third bucket on B.
    fn backupd_round(&self, round: usize) -> Result<(Row, Transfer, Transfer)> {
        let (bucket_a, bucket_b, bucket_raw) = (
            format!("backupd-a-{round}"),
            format!("backupd-b-{round}"),
            format!("raw-{round}"),
        );
        self.rt.block_on(async {
            create_bucket(&self.a, &bucket_a).await?;
            create_bucket(&self.b, &bucket_b).await?;
            create_bucket(&self.b, &bucket_raw).await
        })?;
        let work = tempdir("s3-backupd")?;
        let config = format!(
            "[catalog]\nurl = \"sqlite://var/catalog.db\"\n[encryption]\nkey-file = \"var/keys/repo.key\"\n\
             {}{}\
             [[source]]\nname = \"corpus\"\nkind = \"files\"\npaths = [\"{}\"]\nrepository = \"region-a\"\n\
             copy-to = [\"region-b\"]\n",
            self.repository("region-a", &self.endpoint_a, &bucket_a),
            self.repository("region-b", &self.endpoint_b, &bucket_b),
            self.corpus.display()
        );
        fs::write(work.join("bench.toml"), config)?;
        let cfg = ["--config", "bench.toml"];
        let ctl = |args: &[&str]| timed(&work, self.bin, &[&cfg[..], args].concat(), &[]);
        ctl(&["init"])?;
        sync();
        let backup = ctl(&["backup", "corpus", "--no-copy"])?;
        sync();
        let restore = ctl(&[
            "restore", "--source", "corpus", "--latest", "--from", "region-a", "--target", "out",
        ])?;
        check_restored(&work.join("out"), self.corpus_bytes)?;
        fs::remove_dir_all(work.join("out"))?;
        let (objects, stored) = self
            .rt
            .block_on(stored_objects(&self.a, &bucket_a, PREFIX))?;

        // Replication: what `replicate` writes to B (the data, manifest and envelope of the
        // backup; B's own init objects were there before).
        let (before_objects, before) = self
            .rt
            .block_on(stored_objects(&self.b, &bucket_b, PREFIX))?;
        sync();
        let replicated = ctl(&["replicate"])?;
        let (after_objects, after) = self
            .rt
            .block_on(stored_objects(&self.b, &bucket_b, PREFIX))?;
        if after.saturating_sub(before) < stored / 2 {
            bail!(
                "replicate wrote only {} bytes to region B of the {stored} stored in region A",
                after - before
            );
        }
        let replication = transfer(after - before, after_objects - before_objects, &replicated);

        // The reference: every object of the repository in A streamed to B by the SDK.
        let started = Instant::now();
        let (copied_objects, copied) =
            self.rt
                .block_on(raw_copy(&self.a, &bucket_a, &self.b, &bucket_raw, PREFIX))?;
        let seconds = started.elapsed().as_secs_f64();
        if (copied_objects, copied) != (objects, stored) {
            bail!("the raw copy moved {copied_objects} objects ({copied} bytes) of {objects} ({stored} bytes)");
        }
        let raw = Transfer {
            mb_s: copied as f64 / 1e6 / seconds,
            rss_mib: None,
            bytes: copied,
            objects: copied_objects,
        };
        fs::remove_dir_all(&work)?;
        Ok((
            row("backupd", self.corpus_bytes, &backup, &restore, stored),
            replication,
            raw,
        ))
    }

    fn repository(&self, name: &str, endpoint: &str, bucket: &str) -> String {
        format!(
            "[[repository]]\nname = \"{name}\"\nkind = \"s3\"\nbucket = \"{bucket}\"\nregion = \"{REGION}\"\n\
             prefix = \"{PREFIX}\"\nendpoint = \"{endpoint}\"\nforce-path-style = true\n\
             part-size-mib = {PART_SIZE_MIB}\nconcurrency = {CONCURRENCY}\n\
             access-key-id-file = \"{}\"\nsecret-access-key-file = \"{}\"\n",
            self.key_id.display(),
            self.secret.display()
        )
    }
}

fn transfer(bytes: u64, objects: usize, m: &Measured) -> Transfer {
    Transfer {
        mb_s: bytes as f64 / 1e6 / m.seconds,
        rss_mib: Some(m.peak_rss_kib as f64 / 1024.0),
        bytes,
        objects,
    }
}

/// Guards the figures: a restore that wrote much less than the corpus measured nothing.
fn check_restored(out: &Path, corpus_bytes: u64) -> Result<()> {
    let restored = du_bytes(out)?;
    if restored < corpus_bytes * 9 / 10 {
        bail!(
            "{} holds {restored} bytes after the restore, the corpus {corpus_bytes}",
            out.display()
        );
    }
    Ok(())
}

/// An SDK client for a SeaweedFS server, built the way backupd builds its own.
async fn client(endpoint: &str, key_id: &Path, secret: &Path) -> Result<Client> {
    let mut options = S3Options::new("bench", "bench-bucket", REGION);
    options.endpoint = Some(endpoint.to_owned());
    options.force_path_style = true;
    options.credentials = S3Credentials::Static {
        access_key_id: SecretSource::File(key_id.to_owned()),
        secret_access_key: SecretSource::File(secret.to_owned()),
    };
    let sink = S3Sink::new(options)
        .await
        .with_context(|| format!("building an S3 client for {endpoint}"))?;
    Ok(sink.client().clone())
}

/// Creates `bucket`, retrying for a while: a fresh server refuses until its volume server
/// has registered.
async fn create_bucket(client: &Client, bucket: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.create_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("create bucket {bucket}: {e:?}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("creating bucket {bucket}")),
        }
    }
}

/// `(key, size)` of every object under `prefix` ("" = the whole bucket).
async fn list(client: &Client, bucket: &str, prefix: &str) -> Result<Vec<(String, u64)>> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut objects = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("listing {bucket}/{prefix}"))?;
        for object in page.contents() {
            if let Some(key) = object.key() {
                objects.push((key.to_owned(), object.size().unwrap_or(0).max(0) as u64));
            }
        }
    }
    Ok(objects)
}

/// `(objects, bytes)` under `prefix`.
async fn stored_objects(client: &Client, bucket: &str, prefix: &str) -> Result<(usize, u64)> {
    let objects = list(client, bucket, prefix).await?;
    Ok((objects.len(), objects.iter().map(|(_, size)| size).sum()))
}

/// Copies every object under `prefix` from bucket `from_bucket` to `to_bucket` as a plain
/// SDK client would, one object at a time like `replicate`: the GetObject body streamed into
/// a single PutObject below the part size, else into a multipart upload of `PART_SIZE_MIB`
/// parts with at most `CONCURRENCY` in memory (and so in flight) at once. No checksum work
/// beyond the SDK's defaults. Returns `(objects, bytes)` copied.
async fn raw_copy(
    from: &Client,
    from_bucket: &str,
    to: &Client,
    to_bucket: &str,
    prefix: &str,
) -> Result<(usize, u64)> {
    let part_size = PART_SIZE_MIB << 20;
    let objects = list(from, from_bucket, prefix).await?;
    let mut total = 0;
    for (key, size) in &objects {
        let mut body = from
            .get_object()
            .bucket(from_bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("reading {from_bucket}/{key}"))?
            .body;
        if *size < part_size as u64 {
            let data = body
                .collect()
                .await
                .with_context(|| format!("reading {from_bucket}/{key}"))?
                .into_bytes();
            total += data.len() as u64;
            to.put_object()
                .bucket(to_bucket)
                .key(key)
                .body(ByteStream::from(data))
                .send()
                .await
                .with_context(|| format!("writing {to_bucket}/{key}"))?;
            continue;
        }
        let upload_id = to
            .create_multipart_upload()
            .bucket(to_bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("starting the upload of {to_bucket}/{key}"))?
            .upload_id
            .context("CreateMultipartUpload returned no upload id")?;
        let mut uploads: JoinSet<Result<CompletedPart>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut pending = BytesMut::new();
        let mut number = 0;
        loop {
            if uploads.len() >= CONCURRENCY {
                parts.push(uploads.join_next().await.expect("uploads in flight")??);
            }
            let Some(part) = next_part(&mut body, &mut pending, part_size).await? else {
                break;
            };
            total += part.len() as u64;
            number += 1;
            let request = to
                .upload_part()
                .bucket(to_bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(part));
            let part_key = key.clone();
            uploads.spawn(async move {
                let uploaded = request
                    .send()
                    .await
                    .with_context(|| format!("uploading part {number} of {part_key}"))?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag)
                    .build())
            });
        }
        while let Some(joined) = uploads.join_next().await {
            parts.push(joined??);
        }
        parts.sort_unstable_by_key(|p| p.part_number());
        to.complete_multipart_upload()
            .bucket(to_bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("completing the upload of {to_bucket}/{key}"))?;
    }
    Ok((objects.len(), total))
}

/// The next `part_size` bytes of `body` (fewer at its end), `None` once it is exhausted.
async fn next_part(
    body: &mut ByteStream,
    pending: &mut BytesMut,
    part_size: usize,
) -> Result<Option<Bytes>> {
    while pending.len() < part_size {
        match body.try_next().await.context("reading an object body")? {
            Some(chunk) => pending.extend_from_slice(&chunk),
            None => break,
        }
    }
    if pending.is_empty() {
        return Ok(None);
    }
    let n = pending.len().min(part_size);
    Ok(Some(pending.split_to(n).freeze()))
}

fn best(rows: &[Row], tool: &'static str) -> Row {
    let mine: Vec<&Row> = rows.iter().filter(|r| r.tool == tool).collect();
    Row {
        tool,
        backup_mb_s: mine.iter().map(|r| r.backup_mb_s).fold(0.0, f64::max),
        backup_rss_mib: mine.iter().map(|r| r.backup_rss_mib).fold(0.0, f64::max),
        restore_mb_s: mine.iter().map(|r| r.restore_mb_s).fold(0.0, f64::max),
        restore_rss_mib: mine.iter().map(|r| r.restore_rss_mib).fold(0.0, f64::max),
        stored: mine.iter().map(|r| r.stored).max().unwrap_or(0),
    }
}

/// Fastest round; the highest peak RSS of any round.
fn best_copy(copies: &[Transfer]) -> Transfer {
    Transfer {
        mb_s: copies.iter().map(|c| c.mb_s).fold(0.0, f64::max),
        rss_mib: copies.iter().filter_map(|c| c.rss_mib).reduce(f64::max),
        bytes: copies.iter().map(|c| c.bytes).max().unwrap_or(0),
        objects: copies.iter().map(|c| c.objects).max().unwrap_or(0),
    }
}

fn describe_copy(c: &Transfer) -> String {
    format!(
        "{:.0} MB/s{} ({} objects, {:.1} MB)",
        c.mb_s,
        c.rss_mib
            .map(|m| format!(" ({m:.0} MiB)"))
            .unwrap_or_default(),
        c.objects,
        c.bytes as f64 / 1e6
    )
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    corpus: &Path,
    corpus_bytes: u64,
    rounds: usize,
    load: &str,
    ours: &Row,
    peer: &Row,
    replicate: &Transfer,
    raw: &Transfer,
) -> String {
    let (cores, cpu) = machine();
    let (backup_ratio, restore_ratio) = (
        ours.backup_mb_s / peer.backup_mb_s,
        ours.restore_mb_s / peer.restore_mb_s,
    );
    let replication_ratio = replicate.mb_s / raw.mb_s;
    let replicate_rss = replicate.rss_mib.unwrap_or(0.0);
    let peak_rss = ours
        .backup_rss_mib
        .max(ours.restore_rss_mib)
        .max(replicate_rss);
    let tools = format!(
        "| tool | backup MB/s | backup peak RSS | restore MB/s | restore peak RSS | stored |\n\
         |---|---:|---:|---:|---:|---:|\n\
         | backupd | {:.0} | {:.0} MiB | {:.0} | {:.0} MiB | {:.1} MB |\n\
         | {RESTIC} (`--compression auto`) | {:.0} | {:.0} MiB | {:.0} | {:.0} MiB | {:.1} MB |\n\
         | **backupd / restic** | **{backup_ratio:.2}x** | {:.2}x | **{restore_ratio:.2}x** | {:.2}x | {:.2}x |\n",
        ours.backup_mb_s,
        ours.backup_rss_mib,
        ours.restore_mb_s,
        ours.restore_rss_mib,
        ours.stored as f64 / 1e6,
        peer.backup_mb_s,
        peer.backup_rss_mib,
        peer.restore_mb_s,
        peer.restore_rss_mib,
        peer.stored as f64 / 1e6,
        ours.backup_rss_mib / peer.backup_rss_mib,
        ours.restore_rss_mib / peer.restore_rss_mib,
        ours.stored as f64 / peer.stored as f64,
    );
    let copies = format!(
        "| copy region A -> region B | MB/s | peak RSS | copied |\n\
         |---|---:|---:|---:|\n\
         | `backupctl replicate` | {:.0} | {replicate_rss:.0} MiB | {} objects, {:.1} MB |\n\
         | raw SDK copy (GetObject -> Put/multipart, {PART_SIZE_MIB} MiB parts, {CONCURRENCY} in flight) | {:.0} | - | {} objects, {:.1} MB |\n\
         | **replicate / raw** | **{replication_ratio:.2}x** | | |\n",
        replicate.mb_s,
        replicate.objects,
        replicate.bytes as f64 / 1e6,
        raw.mb_s,
        raw.objects,
        raw.bytes as f64 / 1e6,
    );
    format!(
        "{HEADING} ({})\n\n\
         Corpus: `make-corpus.sh` at {} ({:.2} GB), warm page cache. Two SeaweedFS servers (`weed mini`, regions A \
         and B) on loopback; backupd writes an `s3` repository on A ({PART_SIZE_MIB} MiB parts, {CONCURRENCY} in \
         flight), restic (`s3:` repository, same flags as the local run) a bucket on A. MB/s = corpus bytes / wall \
         time for backup and restore, stored bytes copied / wall time for replication (`backup --no-copy`, then \
         `backupctl replicate` to B; the raw copy streams the same objects from A to B with the AWS SDK in \
         xtask). Best of {rounds} alternating rounds per tool, highest peak RSS of any round. Machine: {cores} \
         cores, {cpu}, load average {load} at the start; both servers run on this machine, so their CPU competes \
         with the client's. Generated by `cargo xtask bench-s3`.\n\n\
         {tools}\n{copies}\n\
         Targets: backupd / restic >= 1.5x for backup ({backup_ratio:.2}x, {}) and restore ({restore_ratio:.2}x, \
         {}); peak RSS < 200 MiB ({peak_rss:.0} MiB, {}); replication {:.0}% of the raw copy speed.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        corpus.display(),
        corpus_bytes as f64 / 1e9,
        verdict(backup_ratio >= 1.5),
        verdict(restore_ratio >= 1.5),
        verdict(peak_rss < 200.0),
        replication_ratio * 100.0,
    )
}
