//! Several backupd replicas on one PostgreSQL catalog: a job runs once at a
//! time, and when the replica running it is killed with SIGKILL another takes
//! it over after the lease expires: one complete backup, no duplicate, no orphan.
//! With an SQLite catalog a second instance is refused.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn a_killed_replicas_job_is_taken_over_and_completes_once() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let work = Work::new(&config(&db.url(), "", &tokens_config()));
    // Big enough that the first attempt is still running when it is killed.
    write_data(&work.path("data"), 24, 16);
    work.init();
    let mut replicas: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|r| work.start(free_port(), r))
        .collect();
    for r in &mut replicas {
        r.wait_healthy();
    }

    let (status, body) = json(
        "POST",
        &replicas[0].url("/api/v1/sources/files/backup"),
        Some(OPERATE_TOKEN),
    );
    assert_eq!(status, 202, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let job_url = replicas[1].url(&format!("/api/v1/jobs/{job_id}"));

    // Wait until some replica runs it and has started its backup, then kill that replica.
    let (owner, first_backup) = wait_for("the job to start", Duration::from_secs(60), || {
        let (_, job) = json("GET", &job_url, Some(READ_TOKEN));
        match (
            job["status"].as_str(),
            job["lease_owner"].as_str(),
            job["backup_id"].as_str(),
        ) {
            (Some("running"), Some(owner), Some(backup)) => {
                Some((owner.to_owned(), backup.to_owned()))
            }
            _ => None,
        }
    });
    let victim = ["a", "b", "c"]
        .iter()
        .position(|r| *r == owner)
        .expect("owner is one of ours");
    // Let it write some data first.
    wait_for(
        "the first attempt to write data",
        Duration::from_secs(30),
        || {
            let dir = work.path(&format!("var/repo/backups/{first_backup}"));
            std::fs::read_dir(dir)
                .ok()
                .map(|d| d.count())
                .filter(|n| *n > 0)
        },
    );
    replicas[victim].kill9();
    let survivor = &replicas[(victim + 1) % 3];

    // Only one attempt may run at a time: never two running backups of the source.
    let job = wait_for(
        "the job to be taken over and succeed",
        Duration::from_secs(120),
        || {
            let (_, backups) = json(
                "GET",
                &survivor.url("/api/v1/backups?source=files&status=running"),
                Some(READ_TOKEN),
            );
            assert!(
                backups.as_array().map(|a| a.len() <= 1).unwrap_or(true),
                "two attempts at once: {backups}"
            );
            let (_, job) = json(
                "GET",
                &survivor.url(&format!("/api/v1/jobs/{job_id}")),
                Some(READ_TOKEN),
            );
            (job["status"] == "succeeded").then_some(job)
        },
    );
    assert_ne!(job["lease_owner"].as_str(), Some(owner.as_str()), "{job}");

    let (_, backups) = json(
        "GET",
        &survivor.url("/api/v1/backups?source=files"),
        Some(READ_TOKEN),
    );
    let backups = backups.as_array().unwrap().clone();
    let complete: Vec<_> = backups
        .iter()
        .filter(|b| b["status"] == "complete")
        .collect();
    assert_eq!(
        complete.len(),
        1,
        "exactly one complete backup: {backups:#?}"
    );
    let failed = backups
        .iter()
        .find(|b| b["id"] == first_backup.as_str())
        .expect("the killed attempt is recorded");
    assert_eq!(failed["status"], "failed", "{failed}");
    // No orphan: the killed attempt's folder is gone; only the complete backup remains.
    let mut folders: Vec<String> = std::fs::read_dir(work.path("var/repo/backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(
        folders,
        vec![complete[0]["id"].as_str().unwrap().to_owned()]
    );
    // One job, not two.
    let (_, jobs) = json(
        "GET",
        &survivor.url("/api/v1/jobs?source=files"),
        Some(READ_TOKEN),
    );
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs:#}");

    for r in replicas.iter_mut().filter(|r| r.child.is_some()) {
        assert!(
            r.terminate().success(),
            "clean exit on SIGTERM; log:\n{}",
            r.log_text()
        );
    }
}

#[test]
fn a_second_instance_on_an_sqlite_catalog_is_refused() {
    let work = Work::new(&config("sqlite://var/catalog.db", "", ""));
    work.init();
    let mut first = work.start(free_port(), "first");
    first.wait_healthy();
    let mut second = work.start(free_port(), "second");
    let status = second.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = second.log_text();
    assert!(
        log.contains("already running") && log.contains("PostgreSQL"),
        "{log}"
    );
    assert!(first.terminate().success());
}
