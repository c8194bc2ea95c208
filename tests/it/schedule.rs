//! `backupctl schedule SOURCE` and `backupctl jobs`: what the scheduler will run and what it
//! has queued, read from the config and the catalog.

use backup_catalog::{Catalog, JobKind, NewJob};
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde_json::Value;

use crate::support::*;

fn scheduled_work() -> Work {
    let work = Work::new();
    let config = config_toml(&ConfigOpts::default()).replace(
        "repository = \"region-a\"\non-unreadable",
        "repository = \"region-a\"\ntimezone = \"Europe/Rome\"\n\
         schedule = [{ cron = \"0 */6 * * *\" }, { cron = \"30 3 * * SAT\", tag = \"weekly\" }]\n\
         on-unreadable",
    );
    assert!(config.contains("weekly"), "the schedule was added");
    work.write_config(&format!("{config}\n[scheduler]\njitter = \"1m\"\n"));
    work.init();
    work
}

/// Runs `f` against the work dir's catalog (what a backupd replica would write).
fn with_catalog<F, Fut, T>(work: &Work, f: F) -> T
where
    F: FnOnce(Catalog) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let url = format!("sqlite://{}", work.path("var/catalog.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let catalog = Catalog::connect(&url).await.unwrap();
            let out = f(catalog.clone()).await;
            catalog.close().await;
            out
        })
}

fn new_job(slot: Option<DateTime<Utc>>, due_at: DateTime<Utc>) -> NewJob {
    NewJob {
        source: "files".into(),
        repository: "region-a".into(),
        kind: JobKind::Backup,
        backup_type: "full".into(),
        tag: None,
        scheduled_for: slot,
        due_at,
        max_attempts: 3,
        created_at: due_at,
    }
}

#[test]
fn schedule_shows_entries_next_runs_and_jobs() {
    let work = scheduled_work();
    let report = work
        .ok(&["schedule", "files", "--count", "3", "--json"])
        .json();
    assert_eq!(report["source"], "files");
    assert_eq!(report["repository"], "region-a");
    assert_eq!(report["timezone"], "Europe/Rome");
    let entries = report["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["cron"], "0 */6 * * *");
    assert_eq!(entries[0]["type"], "full");
    assert_eq!(entries[0]["last_planned"], Value::Null);
    assert_eq!(entries[1]["tag"], "weekly");
    let now: DateTime<Utc> = report["now"].as_str().unwrap().parse().unwrap();
    for e in entries {
        let runs = e["next_runs"].as_array().unwrap();
        assert_eq!(runs.len(), 3, "{e}");
        let mut previous = now;
        for run in runs {
            let utc: DateTime<Utc> = run["utc"].as_str().unwrap().parse().unwrap();
            let local = DateTime::parse_from_rfc3339(run["local"].as_str().unwrap()).unwrap();
            assert_eq!(local, utc, "local and UTC are the same instant");
            assert!(utc > previous, "runs ascend: {runs:?}");
            previous = utc;
        }
    }
    assert_eq!(report["jobs"], Value::Array(vec![]));

    let text = work.ok(&["schedule", "files"]);
    text.expect_mentions(&[
        "0 */6 * * *",
        "30 3 * * SAT",
        "weekly",
        "never",
        "next runs",
    ]);
    assert!(
        text.stdout.contains("+01:00") || text.stdout.contains("+02:00"),
        "local times carry Rome's offset\n{}",
        text.dump()
    );

    // A replica planned a slot and queued a manual job; one of them is running.
    let t0 = (now - TimeDelta::hours(1)).trunc_subsecs(0);
    let key = entries[0]["key"].as_str().unwrap().to_owned();
    let (planned, manual) = with_catalog(&work, |catalog| async move {
        catalog.init_last_planned("files", &key, t0).await.unwrap();
        let slot = t0 + TimeDelta::minutes(30);
        let planned = catalog
            .plan_slot("files", &key, slot, &new_job(None, slot))
            .await
            .unwrap()
            .unwrap();
        let manual = catalog
            .enqueue_manual(&new_job(None, t0 + TimeDelta::minutes(40)))
            .await
            .unwrap();
        let claimed = catalog
            .claim_job(
                "replica-a",
                t0 + TimeDelta::minutes(45),
                std::time::Duration::from_secs(3600 * 24),
                &Default::default(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.id, planned);
        (planned.to_string(), manual.to_string())
    });

    let report = work.ok(&["schedule", "files", "--json"]).json();
    assert_eq!(
        report["entries"][0]["last_planned"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        t0 + TimeDelta::minutes(30)
    );
    let jobs: Vec<(&str, &str)> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["id"].as_str().unwrap(), j["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        jobs,
        vec![(planned.as_str(), "running"), (manual.as_str(), "queued")]
    );
    work.ok(&["schedule", "files"]).expect_mentions(&[
        &planned,
        &manual,
        "replica-a",
        "running",
        "queued",
    ]);

    // `jobs` lists them, newest first, with filters.
    let listed = work.ok(&["jobs", "--json"]).json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![manual.as_str(), planned.as_str()]);
    assert_eq!(listed[1]["lease_owner"], "replica-a");
    assert_eq!(listed[1]["attempts"], 0);
    let queued = work
        .ok(&["jobs", "--status", "queued", "--source", "files", "--json"])
        .json();
    assert_eq!(queued.as_array().unwrap().len(), 1);
    assert_eq!(queued[0]["id"], manual.as_str());
    assert_eq!(
        work.ok(&["jobs", "--limit", "1", "--json"]).json()[0]["id"],
        manual.as_str()
    );
    work.ok(&["jobs"])
        .expect_mentions(&["ID", "LEASE OWNER", &planned, &manual, "0/3"]);
}

#[test]
fn schedule_and_jobs_reject_unknown_names() {
    let work = scheduled_work();
    work.run(&["schedule", "nope"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["nope", "files"]);
    work.run(&["jobs", "--source", "nope"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["nope", "files"]);
    work.run(&["jobs", "--status", "finished"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["finished", "queued"]);
    // A source without a schedule says so.
    let plain = Work::new();
    plain.init();
    plain
        .ok(&["schedule", "files"])
        .expect_mentions(&["on demand only", "no queued or running jobs"]);
}
