//! Alerts reach webhooks (JSON and Slack bodies), are not repeated within
//! `repeat-after`, and escalate when still firing after `escalate-after`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// (path, JSON body) of every request a webhook receiver got.
type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Records the JSON bodies POSTed to it, per path.
fn webhook_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            let mut len = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            sink.lock()
                .unwrap()
                .push((path, serde_json::from_slice(&body).unwrap()));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

#[test]
fn rpo_breach_is_alerted_once_then_escalated_and_job_failures_alert() {
    let (port, seen) = webhook_receiver();
    let alerts = format!(
        "[alerts]\nrepeat-after = \"1h\"\nescalate-after = \"3s\"\n\
         [[alerts.webhook]]\nurl = \"http://127.0.0.1:{port}/json\"\n\
         [[alerts.webhook]]\nurl = \"http://127.0.0.1:{port}/slack\"\nformat = \"slack\"\nevents = [\"job-failed\"]\n\
         [[alerts.webhook]]\nurl = \"http://127.0.0.1:{port}/pager\"\nescalation = true\n\
         {}",
        tokens_config()
    );
    // An RPO of 1s with no backup yet: breached from the first tick.
    let work = Work::new(&config(
        "sqlite://var/catalog.db",
        "rpo = \"1s\"",
        &format!("max-attempts = 1\n{alerts}"),
    ));
    std::fs::write(work.path("data/a.txt"), b"a").unwrap();
    work.init();
    let mut d = work.start(free_port(), "alerts");
    d.wait_healthy();

    wait_for("the escalation", Duration::from_secs(30), || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(path, _)| path == "/pager")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    {
        let seen = seen.lock().unwrap();
        let rpo: Vec<_> = seen
            .iter()
            .filter(|(p, b)| p == "/json" && b["event"] == "rpo-breach")
            .collect();
        assert_eq!(rpo.len(), 1, "de-duplicated within repeat-after: {seen:#?}");
        assert_eq!(rpo[0].1["source"], "files");
        let pages: Vec<_> = seen.iter().filter(|(p, _)| p == "/pager").collect();
        assert_eq!(pages.len(), 1, "{seen:#?}");
        assert_eq!(pages[0].1["escalation"], true);
        assert!(
            !seen.iter().any(|(p, _)| p == "/slack"),
            "slack hook only takes job-failed: {seen:#?}"
        );
    }

    // A backup that cannot succeed (its repository is gone) alerts once it gives up.
    std::fs::remove_dir_all(work.path("var/repo")).unwrap();
    let (status, _) = json(
        "POST",
        &d.url("/api/v1/sources/files/backup"),
        Some(OPERATE_TOKEN),
    );
    assert_eq!(status, 202);
    let slack = wait_for("the job-failed alert", Duration::from_secs(60), || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == "/slack")
            .map(|(_, b)| b.clone())
    });
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.contains("job-failed") && text.contains("files"),
        "{text}"
    );
    assert!(d.terminate().success());
}

#[test]
fn copies_are_made_by_the_daemon_and_a_lagging_destination_alerts() {
    let (port, seen) = webhook_receiver();
    let service = format!(
        "[alerts]\nreplication-lag = \"2s\"\n\
         [[alerts.webhook]]\nurl = \"http://127.0.0.1:{port}/json\"\nevents = [\"replication-lag\"]\n\
         {}",
        tokens_config()
    );
    // Copies go to "copy" and to "broken", whose directory disappears after init.
    let source_extra = "copy-to = [\"copy\", \"broken\"]\n\
        [[repository]]\nname = \"copy\"\nkind = \"local\"\npath = \"var/copy\"\n\
        [[repository]]\nname = \"broken\"\nkind = \"local\"\npath = \"var/broken\"\n";
    let work = Work::new(&config("sqlite://var/catalog.db", source_extra, &service));
    std::fs::write(work.path("data/a.txt"), b"a").unwrap();
    work.init();
    std::fs::remove_dir_all(work.path("var/broken")).unwrap();
    let mut d = work.start(free_port(), "replication");
    d.wait_healthy();
    let (status, _) = json(
        "POST",
        &d.url("/api/v1/sources/files/backup"),
        Some(OPERATE_TOKEN),
    );
    assert_eq!(status, 202);

    let metrics = wait_for("the copy to `copy`", Duration::from_secs(60), || {
        let (_, body) = http("GET", &d.url("/metrics"), None, None).unwrap();
        body.contains("backupd_copies_total{destination=\"copy\",outcome=\"succeeded\"} 1")
            .then_some(body)
    });
    assert!(
        metrics.contains("backupd_replication_pending{destination=\"copy\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("backupd_replication_pending{destination=\"broken\"} 1"),
        "{metrics}"
    );
    let alert = wait_for("the replication-lag alert", Duration::from_secs(60), || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(_, b)| b["event"] == "replication-lag")
            .map(|(_, b)| b.clone())
    });
    assert_eq!(alert["details"]["destination"], "broken", "{alert:#}");
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.contains("broken") && summary.contains("backupctl init"),
        "{summary}"
    );
    assert!(d.terminate().success());
}

/// Waits until job `job_id` is in `status`, failing early if it ends otherwise.
fn wait_job(d: &Daemon, job_id: &str, status: &str) -> serde_json::Value {
    wait_for(
        &format!("job {job_id} to be {status}"),
        Duration::from_secs(60),
        || {
            let (_, job) = json(
                "GET",
                &d.url(&format!("/api/v1/jobs/{job_id}")),
                Some(READ_TOKEN),
            );
            let now = job["status"].as_str().unwrap_or("").to_owned();
            if ["succeeded", "failed", "dead"].contains(&now.as_str()) {
                assert_eq!(now, status, "{job}");
            }
            (now == status).then_some(job)
        },
    )
}

#[test]
fn a_drill_of_a_damaged_backup_fails_alerts_and_shows_on_the_status_page() {
    let (port, seen) = webhook_receiver();
    let alerts = format!(
        "[alerts]\n[[alerts.webhook]]\nurl = \"http://127.0.0.1:{port}/json\"\nevents = [\"drill-failed\"]\n{}",
        tokens_config()
    );
    let work = Work::new(&config(
        "sqlite://var/catalog.db",
        "tier = \"premium\"\n[source.drill]\ntarget = \"./scratch\"",
        &alerts,
    ));
    std::fs::write(work.path("data/a.txt"), b"a drill restores this").unwrap();
    work.init();
    let mut d = work.start(free_port(), "drills");
    d.wait_healthy();

    let trigger = |what: &str| {
        let (status, body) = json(
            "POST",
            &d.url(&format!("/api/v1/sources/files/{what}")),
            Some(OPERATE_TOKEN),
        );
        assert_eq!(status, 202, "{body}");
        body["job_id"].as_str().unwrap().to_owned()
    };
    let backup = wait_job(&d, &trigger("backup"), "succeeded");
    let backup_id = backup["backup_id"].as_str().unwrap().to_owned();

    // A drill of the intact backup passes: no alert, recorded with its RTO.
    wait_job(&d, &trigger("drill"), "succeeded");
    let (_, drills) = json("GET", &d.url("/api/v1/drills"), Some(READ_TOKEN));
    assert_eq!(drills[0]["status"], "passed", "{drills}");
    assert_eq!(drills[0]["backup_id"], backup_id.as_str());

    // Damage it: the next drill fails, alerts drill-failed, and the page shows it.
    let dir = work.path(&format!("var/repo/backups/{backup_id}"));
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("data-") {
            let mut bytes = std::fs::read(entry.path()).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(entry.path(), bytes).unwrap();
        }
    }
    wait_job(&d, &trigger("drill"), "dead");
    let alert = wait_for("the drill-failed alert", Duration::from_secs(30), || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(_, b)| b["event"] == "drill-failed")
            .map(|(_, b)| b.clone())
    });
    assert_eq!(alert["source"], "files", "{alert}");
    assert!(
        alert["summary"].as_str().unwrap().contains("integrity"),
        "{alert}"
    );
    let (_, report) = json("GET", &d.url("/api/v1/report/recovery"), Some(READ_TOKEN));
    assert_eq!(report["sources"][0]["verdict"], "drill-failed", "{report}");
    let (status, page) = http("GET", &d.url("/"), None, None).unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("Recent restore drills"), "{page}");
    assert!(page.contains("failed") && page.contains("passed"), "{page}");
    assert!(d.terminate().success());
}
