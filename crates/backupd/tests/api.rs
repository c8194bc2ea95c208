//! The HTTP API: health, readiness, bearer-token auth with scopes, triggering
//! a backup, job status, and metrics that a Prometheus parser accepts.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn api_auth_trigger_jobs_and_metrics() {
    let work = Work::new(&config(
        "sqlite://var/catalog.db",
        "tier = \"premium\"\nverify-after-backup = \"full\"",
        &tokens_config(),
    ));
    std::fs::write(work.path("data/hello.txt"), b"hello").unwrap();
    work.init();
    let mut d = work.start(free_port(), "api");
    d.wait_healthy();
    wait_for("readiness", Duration::from_secs(20), || {
        (http("GET", &d.url("/readyz"), None, None).unwrap().0 == 200).then_some(())
    });

    // 401 without or with a wrong token, 403 with too small a scope.
    assert_eq!(json("GET", &d.url("/api/v1/backups"), None).0, 401);
    assert_eq!(
        json("GET", &d.url("/api/v1/backups"), Some("not-a-token")).0,
        401
    );
    let (status, body) = json(
        "POST",
        &d.url("/api/v1/sources/files/backup"),
        Some(READ_TOKEN),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        json(
            "POST",
            &d.url("/api/v1/sources/nope/backup"),
            Some(OPERATE_TOKEN)
        )
        .0,
        404
    );

    let (status, body) = json(
        "POST",
        &d.url("/api/v1/sources/files/backup"),
        Some(OPERATE_TOKEN),
    );
    assert_eq!(status, 202, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let job = wait_for(
        "the triggered job to succeed",
        Duration::from_secs(60),
        || {
            let (_, job) = json(
                "GET",
                &d.url(&format!("/api/v1/jobs/{job_id}")),
                Some(READ_TOKEN),
            );
            assert_ne!(job["status"], "dead", "{job}");
            (job["status"] == "succeeded").then_some(job)
        },
    );
    let backup_id = job["backup_id"]
        .as_str()
        .expect("job names its backup")
        .to_owned();
    let (_, backups) = json(
        "GET",
        &d.url("/api/v1/backups?status=complete"),
        Some(READ_TOKEN),
    );
    assert_eq!(backups[0]["id"], backup_id.as_str());
    assert_eq!(
        json(
            "GET",
            &d.url("/api/v1/backups?status=bogus"),
            Some(READ_TOKEN)
        )
        .0,
        400
    );

    let (_, sources) = json("GET", &d.url("/api/v1/sources"), Some(READ_TOKEN));
    assert_eq!(sources[0]["name"], "files");
    assert_eq!(sources[0]["rpo_breached"], false, "{sources}");

    let (status, text) = http("GET", &d.url("/metrics"), None, None).unwrap();
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("source") == Some("files"))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert_eq!(value("backupd_rpo_target_seconds"), 900.0);
    assert!(value("backupd_rpo_seconds") < 900.0);
    assert!(value("backupd_last_success_timestamp_seconds") > 1.7e9);
    assert!(value("backupd_bytes_read_total") >= 5.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "backupd_queue_depth"),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "backupd_job_duration_seconds_count"),
        "{text}"
    );

    assert!(
        d.terminate().success(),
        "clean exit on SIGTERM; log:\n{}",
        d.log_text()
    );
}
