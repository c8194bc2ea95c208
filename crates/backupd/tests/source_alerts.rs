//! Database sources that fail under backupd alert: a MySQL source whose server is unreachable,
//! an Elasticsearch source whose snapshot ends PARTIAL, an RDS and an Azure Blob source whose
//! endpoints are unreachable, and an Azure SQL source whose client secret Entra ID refuses each
//! give a `job-failed` alert naming the cause, and leave no complete backup.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_testing::azure_sql::AzureSqlDouble;
use backup_testing::elasticsearch::EsDouble;
use support::*;

/// The JSON bodies POSTed to a webhook receiver.
type Received = Arc<Mutex<Vec<serde_json::Value>>>;

fn webhook_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            if let Ok(value) = serde_json::from_slice(&body) {
                sink.lock().unwrap().push(value);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

#[test]
fn failing_mysql_elasticsearch_rds_azure_blob_and_azure_sql_backups_alert_with_their_cause() {
    let (hook, seen) = webhook_receiver();
    let es = EsDouble::start();
    es.add_index("logs-1", 2, 10);
    es.add_index("logs-2", 1, 10);
    es.add_repository(
        "nightly",
        serde_json::json!({ "location": "/mnt/snapshots" }),
    );
    es.state().failing_indices.insert(
        "logs-2".into(),
        "IndexShardSnapshotFailedException[disk full]".into(),
    );
    let dead_port = free_port();
    let dead_rds = free_port();
    let dead_blob_port = free_port();
    let keys = tempfile::tempdir().unwrap();
    let blob_key = keys.path().join("azure.key");
    std::fs::write(&blob_key, "ZmFrZS1rZXk=").unwrap();
    let azure_sql =
        AzureSqlDouble::start("tenant", "client", "the-real-secret", "sub", "rg", "srv");
    azure_sql
        .state()
        .add_database("ledger", chrono::TimeDelta::days(1));
    let sql_secret = keys.path().join("sql.secret");
    std::fs::write(&sql_secret, "an-expired-secret").unwrap();
    let sources = format!(
        r#"[[source]]
name = "shop"
kind = "mysql"
url = "mysql://root@127.0.0.1:{dead_port}/"
repository = "local"
[[source]]
name = "search"
kind = "elasticsearch"
url = "{}"
snapshot-repository = "nightly"
poll-interval = "20ms"
repository = "local"
[[source]]
name = "orders"
kind = "rds"
region = "eu-west-1"
db-instance = "orders"
endpoint = "http://127.0.0.1:{dead_rds}"
access-key-id-file = "rds-key-id"
secret-access-key-file = "rds-secret"
max-attempts = 1
repository = "local"

[[source]]
name = "blobs"
kind = "azure-blob"
account = "devstoreaccount1"
endpoint = "http://127.0.0.1:{dead_blob_port}/devstoreaccount1"
account-key-file = "{}"
repository = "local"

[[source]]
name = "ledger"
kind = "azure-sql"
tenant-id = "tenant"
client-id = "client"
client-secret-file = "{}"
subscription-id = "sub"
resource-group = "rg"
server = "srv"
database = "ledger"
authority-url = "{}"
management-url = "{}"
repository = "local"
"#,
        es.url(),
        blob_key.display(),
        sql_secret.display(),
        azure_sql.url(),
        azure_sql.url(),
    );
    let service = format!(
        "max-attempts = 1\n[alerts]\n[[alerts.webhook]]\nurl = \"http://127.0.0.1:{hook}/json\"\n{}",
        tokens_config()
    );
    let work = Work::new(&format!(
        "{}{sources}",
        config("sqlite://var/catalog.db", "", &service)
    ));
    std::fs::write(work.path("data/a.txt"), b"a").unwrap();
    // Static keys: the default AWS chain would look for an instance role off the machine.
    std::fs::write(work.path("rds-key-id"), "AKIAIOSFODNN7EXAMPLE").unwrap();
    std::fs::write(work.path("rds-secret"), "not-a-real-secret").unwrap();
    work.init();
    let mut d = work.start(free_port(), "alerts");
    d.wait_healthy();
    for source in ["shop", "search", "orders", "blobs", "ledger"] {
        let (status, body) = json(
            "POST",
            &d.url(&format!("/api/v1/sources/{source}/backup")),
            Some(OPERATE_TOKEN),
        );
        assert_eq!(status, 202, "{body}");
    }
    let alert_of = |source: &'static str| {
        wait_for(
            &format!("the job-failed alert of {source}"),
            Duration::from_secs(60),
            || {
                seen.lock()
                    .unwrap()
                    .iter()
                    .find(|b| b["event"] == "job-failed" && b["source"] == source)
                    .cloned()
            },
        )
    };
    let shop = alert_of("shop");
    let summary = shop["summary"].as_str().unwrap();
    assert!(
        summary.contains("server unreachable") && summary.contains(&dead_port.to_string()),
        "{shop:#}"
    );
    let search = alert_of("search");
    let summary = search["summary"].as_str().unwrap();
    assert!(
        summary.contains("ended PARTIAL")
            && summary.contains("[logs-2][0]: IndexShardSnapshotFailedException[disk full]"),
        "{search:#}"
    );
    let orders = alert_of("orders");
    let summary = orders["summary"].as_str().unwrap();
    assert!(
        summary.contains("RDS source orders: cannot reach RDS at")
            && summary.contains(&dead_rds.to_string()),
        "{orders:#}"
    );
    let blobs = alert_of("blobs");
    let summary = blobs["summary"].as_str().unwrap();
    assert!(
        summary.contains("cannot reach the Blob service")
            && summary.contains(&dead_blob_port.to_string()),
        "{blobs:#}"
    );
    let ledger = alert_of("ledger");
    let summary = ledger["summary"].as_str().unwrap();
    assert!(
        summary.contains("Azure SQL source ledger")
            && summary.contains("AADSTS7000215: Invalid client secret provided")
            && !summary.contains("an-expired-secret"),
        "{ledger:#}"
    );
    let (status, backups) = json("GET", &d.url("/api/v1/backups"), Some(READ_TOKEN));
    assert_eq!(status, 200);
    let backups = backups
        .as_array()
        .or_else(|| backups["backups"].as_array())
        .cloned()
        .unwrap_or_default();
    assert!(
        backups.iter().all(|b| b["status"] != "complete"),
        "a failed source left a complete backup: {backups:#?}"
    );
    assert!(
        es.snapshot_names("nightly").is_empty(),
        "the PARTIAL snapshot was kept"
    );
    assert!(d.terminate().success());
}
