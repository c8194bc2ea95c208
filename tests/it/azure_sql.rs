//! azure-sql sources against an HTTP double of Entra ID and Resource Manager
//! (backup_testing::azure_sql) and, for bacpac exports, a real Azurite: backups recorded
//! with the database's resource id, restore window and bacpac, verified, restored to a point
//! into a new database (refused outside the window and into a taken name), pruned with their
//! bacpac, drilled into a scratch database that is deleted again, and rebuilt from the
//! repository alone; and the faults (a wrong client secret, an unreachable management
//! endpoint, a missing database, an export Azure fails, an export stuck past its timeout)
//! failing by name with nothing marked complete.

use backup_sources::azure::blob::{BlobClient, BlobCredential};
use backup_sources::Secret;
use backup_testing::azure_sql::AzureSqlDouble;
use backup_testing::servers::{
    free_ports, skip_azure_tests, Azurite, AZURITE_ACCOUNT, AZURITE_KEY,
};
use chrono::TimeDelta;

use crate::support::*;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "0a6f1c1e-5b1f-4b53-9a4f-6c1d2e3f4a5b";
const SECRET: &str = "Qx8~azsql.Client_Secret-42";
const SUBSCRIPTION: &str = "00000000-1111-2222-3333-444444444444";
const SQL_PASSWORD: &str = "Adm1n-Passw0rd";

fn double() -> AzureSqlDouble {
    let double = AzureSqlDouble::start(TENANT, CLIENT, SECRET, SUBSCRIPTION, "rg-prod", "sql-prod");
    double.state().add_database("ledger", TimeDelta::days(3));
    double
}

/// The config of source `ledger` (database `ledger`) against `double_url` (authority) and
/// `management` (Resource Manager), secrets from files; `extra` follows the source's keys.
fn sql_config(
    work: &Work,
    double_url: &str,
    management: &str,
    secret: &str,
    extra: &str,
) -> String {
    std::fs::write(work.path("client-secret"), format!("{secret}\n")).unwrap();
    std::fs::write(work.path("sql-password"), format!("{SQL_PASSWORD}\n")).unwrap();
    std::fs::write(work.path("storage-key"), format!("{AZURITE_KEY}\n")).unwrap();
    format!(
        r#"{CONFIG_HEAD}
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[source]]
name = "ledger"
kind = "azure-sql"
tenant-id = "{TENANT}"
client-id = "{CLIENT}"
client-secret-file = "client-secret"
subscription-id = "{SUBSCRIPTION}"
resource-group = "rg-prod"
server = "sql-prod"
database = "ledger"
authority-url = "{double_url}"
management-url = "{management}"
poll-interval = "50ms"
repository = "region-a"
{extra}"#
    )
}

/// `[source.export]` into container `bacpacs` at `storage` (a Blob endpoint).
fn export_section(storage: &str, timeout: &str) -> String {
    format!(
        "[source.export]\nstorage-uri = \"{storage}/bacpacs\"\nstorage-key-file = \"storage-key\"\n\
         administrator-login = \"sqladmin\"\nadministrator-login-password-file = \"sql-password\"\n\
         prefix = \"backupd/\"\ntimeout = \"{timeout}\"\n"
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn azurite_client(azurite: &Azurite) -> BlobClient {
    BlobClient::new(
        &azurite.endpoint(),
        AZURITE_ACCOUNT,
        BlobCredential::SharedKey(Secret::new(AZURITE_KEY)),
    )
    .unwrap()
}

fn bacpacs(azurite: &Azurite) -> Vec<(String, u64)> {
    let client = azurite_client(azurite);
    rt().block_on(async {
        client
            .list_blobs("bacpacs", None)
            .await
            .unwrap()
            .into_iter()
            .map(|b| (b.name, b.size))
            .collect()
    })
}

#[test]
fn azure_sql_backups_are_recorded_verified_restored_pruned_drilled_and_rebuilt() {
    if skip_azure_tests() {
        return;
    }
    let azure = double();
    let azurite = Azurite::start();
    rt().block_on(async {
        azurite_client(&azurite)
            .create_container("bacpacs", &Default::default())
            .await
            .unwrap();
    });
    let work = Work::new();
    work.write_config(&sql_config(
        &work,
        &azure.url(),
        &azure.url(),
        SECRET,
        &format!(
            "keep = {{ last = 1 }}\n[source.drill]\ntarget = \"./scratch\"\n{}",
            export_section(&azurite.endpoint(), "1m")
        ),
    ));
    work.init();

    let first = work.backup_of("ledger");
    assert_eq!(work.status_of(&first), "complete");
    let shown = work.ok(&["show", &first, "--json"]).json();
    let record = &shown["azure_sql"];
    assert_eq!(
        record["database_resource_id"],
        azure.database_resource_id("ledger"),
        "{shown:#}"
    );
    assert_eq!(record["server"], "sql-prod");
    assert_eq!(record["location"], "westeurope");
    let ledger = azure.database("ledger").unwrap();
    let earliest: chrono::DateTime<chrono::Utc> = record["earliest_restore_date"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        earliest.timestamp_millis(),
        ledger.earliest_restore_date.timestamp_millis()
    );
    let point: chrono::DateTime<chrono::Utc> =
        record["restore_point"].as_str().unwrap().parse().unwrap();
    assert!(point > earliest && point <= chrono::Utc::now(), "{shown:#}");
    let first_blob = format!("backupd/ledger-{first}.bacpac");
    assert_eq!(
        record["export_blob_url"],
        format!("{}/bacpacs/{first_blob}", azurite.endpoint())
    );
    assert_eq!(record["export_bytes"], 64 * 1024);
    assert_eq!(bacpacs(&azurite), [(first_blob.clone(), 64 * 1024)]);
    {
        let s = azure.state();
        assert_eq!(s.exports.len(), 1);
        assert_eq!(s.exports[0].storage_key_type, "StorageAccessKey");
        assert!(
            s.requests
                .iter()
                .all(|r| !r.contains(SECRET) && !r.contains(SQL_PASSWORD)),
            "a secret in a URL: {:?}",
            s.requests
        );
    }
    let text = work.ok(&["show", &first]).text();
    assert!(
        text.contains("restorable as of") && text.contains("bacpac"),
        "{text}"
    );
    assert!(!text.contains(SECRET) && !text.contains(SQL_PASSWORD));

    // verify: the database is there, the point inside its window, the bacpac present.
    work.ok(&["verify", &first]).expect_mentions(&[
        "inside the restore window of database ledger",
        "65536 bytes",
    ]);

    // Restore the backup's point into a new database.
    let restored = work
        .ok(&[
            "restore",
            "ledger",
            "--backup",
            &first,
            "--target-database",
            "ledger-restored",
            "--json",
        ])
        .json();
    assert_eq!(restored["status"], "Online", "{restored:#}");
    assert_eq!(restored["waited"], true);
    let made = azure
        .database("ledger-restored")
        .expect("restored database");
    assert_eq!(made.status, "Online");
    assert_eq!(made.create_mode.as_deref(), Some("PointInTimeRestore"));
    assert_eq!(
        made.source_database_id.as_deref(),
        Some(azure.database_resource_id("ledger").as_str())
    );
    let requested: chrono::DateTime<chrono::Utc> =
        made.restore_point_in_time.unwrap().parse().unwrap();
    assert_eq!(requested, point, "the restore went to another point");
    // The name is taken now; a time outside the window is refused naming the window.
    work.run(&[
        "restore",
        "ledger",
        "--latest",
        "--target-database",
        "ledger-restored",
    ])
    .expect_code(EXIT_FAILED)
    .expect_mentions(&["database ledger-restored already exists on server sql-prod"]);
    let too_old = (earliest - TimeDelta::hours(1)).to_rfc3339();
    work.run(&[
        "restore",
        "ledger",
        "--point-in-time",
        &too_old,
        "--target-database",
        "ledger-old",
    ])
    .expect_code(EXIT_USAGE)
    .expect_mentions(&[
        "outside the restorable range of database ledger",
        &earliest.format("%Y-%m-%dT%H:%M").to_string(),
    ]);
    assert!(azure.database("ledger-old").is_none());
    // Any point inside the window works, and --no-wait returns once Azure accepted it.
    let inside = (chrono::Utc::now() - TimeDelta::hours(2)).to_rfc3339();
    let accepted = work
        .ok(&[
            "restore",
            "ledger",
            "--point-in-time",
            &inside,
            "--target-database",
            "ledger-2h",
            "--no-wait",
            "--json",
        ])
        .json();
    assert_eq!(accepted["waited"], false, "{accepted:#}");
    assert!(accepted["operation_url"]
        .as_str()
        .unwrap()
        .contains("databaseAzureAsyncOperation"));
    assert_eq!(azure.database("ledger-2h").unwrap().status, "Creating");

    // Retention deletes the older backup with its bacpac; Azure's databases stay.
    let second = work.backup_of("ledger");
    let second_blob = format!("backupd/ledger-{second}.bacpac");
    assert_eq!(bacpacs(&azurite).len(), 2);
    work.ok(&["prune", "--source", "ledger"]);
    assert_eq!(bacpacs(&azurite), [(second_blob.clone(), 64 * 1024)]);
    assert!(work.listed(&first).is_none(), "pruned backup still listed");
    assert!(azure.database("ledger").is_some());

    // A held backup is not pruned, nor is its bacpac.
    work.ok(&["hold", &second]);
    let third = work.backup_of("ledger");
    work.ok(&["prune", "--source", "ledger"]);
    assert!(work.listed(&second).is_some());
    assert_eq!(bacpacs(&azurite).len(), 2);
    work.ok(&["unhold", &second]);
    work.ok(&["prune", "--source", "ledger"]);
    assert_eq!(
        bacpacs(&azurite),
        [(format!("backupd/ledger-{third}.bacpac"), 64 * 1024)]
    );

    // A drill restores into a scratch database, checks it is Online, measures the RTO and
    // deletes it.
    let drill = work.ok(&["drill", "ledger", "--now", "--json"]).json();
    assert_eq!(drill["status"], "passed", "{drill:#}");
    assert!(drill["rto_millis"].is_u64(), "{drill:#}");
    let checks = drill["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "online" && c["passed"] == true),
        "{drill:#}"
    );
    assert!(
        azure
            .database_names()
            .iter()
            .all(|n| !n.starts_with("backupd-drill-")),
        "the drill's scratch database was kept: {:?}",
        azure.database_names()
    );
    assert!(
        azure
            .state()
            .requests
            .iter()
            .any(|r| r.starts_with("DELETE ") && r.contains("/databases/backupd-drill-")),
        "no scratch database was deleted"
    );

    // The catalog comes back from the repository alone, records included.
    std::fs::remove_file(work.path("var/catalog.db")).unwrap();
    work.ok(&["catalog", "rebuild"]);
    let shown = work.ok(&["show", &third, "--json"]).json();
    assert_eq!(
        shown["azure_sql"]["export_blob_url"],
        format!(
            "{}/bacpacs/backupd/ledger-{third}.bacpac",
            azurite.endpoint()
        ),
        "{shown:#}"
    );
    work.ok(&["verify", &third]).expect_mentions(&["bacpac"]);

    // A point that has aged out of Azure's window: verify says so.
    azure
        .state()
        .databases
        .get_mut("ledger")
        .unwrap()
        .earliest_restore_date = chrono::Utc::now();
    work.run(&["verify", &third])
        .expect_code(EXIT_INTEGRITY)
        .expect_mentions(&["has aged out of Azure's point-in-time restore window"]);
    work.run(&[
        "restore",
        "ledger",
        "--latest",
        "--target-database",
        "too-late",
    ])
    .expect_code(EXIT_FAILED)
    .expect_mentions(&["has aged out"]);
    // A bacpac deleted behind backupd's back: verify says so.
    azure
        .state()
        .databases
        .get_mut("ledger")
        .unwrap()
        .earliest_restore_date = chrono::Utc::now() - TimeDelta::days(3);
    rt().block_on(async {
        azurite_client(&azurite)
            .delete_blob("bacpacs", &format!("backupd/ledger-{third}.bacpac"))
            .await
            .unwrap();
    });
    work.run(&["verify", &third])
        .expect_code(EXIT_INTEGRITY)
        .expect_mentions(&["bacpac", "is missing", "deleted outside backupd"]);
}

/// Runs a backup of `ledger` that must fail; checks the message, that no secret is in it,
/// and that nothing is complete.
#[track_caller]
fn expect_failed_backup(work: &Work, secrets: &[&str], needles: &[&str]) {
    let out = work.run(&["backup", "ledger"]);
    out.expect_code(EXIT_FAILED).expect_mentions(needles);
    for secret in secrets.iter().chain([&SECRET, &SQL_PASSWORD]) {
        assert!(
            !out.text().contains(secret),
            "secret leaked: {}",
            out.dump()
        );
    }
    let listed = work.list();
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|b| b["status"] == "failed"),
        "a failed backup left a backup that is not failed: {listed:?}"
    );
}

#[test]
fn azure_sql_faults_fail_by_name_and_nothing_is_complete() {
    let azure = double();
    let dead = format!("http://127.0.0.1:{}", free_ports(1)[0]);

    // A wrong client secret: Entra's AADSTS7000215, the secret never printed.
    let wrong = "Wr0ng~secret.value";
    let work = Work::new();
    work.write_config(&sql_config(&work, &azure.url(), &azure.url(), wrong, ""));
    work.init();
    expect_failed_backup(
        &work,
        &[wrong],
        &[
            "Azure SQL source ledger",
            "Microsoft Entra ID refused a token",
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided",
            "the backup is not complete",
        ],
    );

    // An unreachable management endpoint.
    let work = Work::new();
    work.write_config(&sql_config(&work, &azure.url(), &dead, SECRET, ""));
    work.init();
    expect_failed_backup(
        &work,
        &[],
        &["cannot reach Azure Resource Manager at", &dead],
    );

    // A missing database (and a missing server).
    let work = Work::new();
    let config = sql_config(&work, &azure.url(), &azure.url(), SECRET, "")
        .replace("database = \"ledger\"", "database = \"nosuch\"");
    work.write_config(&config);
    work.init();
    expect_failed_backup(
        &work,
        &[],
        &[
            "reading database nosuch of server sql-prod: not found",
            "ResourceNotFound",
        ],
    );
    let work = Work::new();
    let config = sql_config(&work, &azure.url(), &azure.url(), SECRET, "")
        .replace("server = \"sql-prod\"", "server = \"sql-gone\"");
    work.write_config(&config);
    work.init();
    expect_failed_backup(&work, &[], &["ParentResourceNotFound", "sql-gone"]);

    // An export Azure fails (the SQL login is refused): Azure's code and message.
    let work = Work::new();
    work.write_config(&sql_config(
        &work,
        &azure.url(),
        &azure.url(),
        SECRET,
        &export_section(&format!("{dead}/{AZURITE_ACCOUNT}"), "1m"),
    ));
    std::fs::write(work.path("sql-password"), "not-the-password\n").unwrap();
    work.init();
    expect_failed_backup(
        &work,
        &["not-the-password"],
        &[
            "the export of database ledger to",
            "failed in Azure (ImportExportJobError",
            "Login failed for user",
        ],
    );
    // One Azure says failed for a reason of its own.
    azure.state().export_failure = Some((
        "DatabaseExportFailed".into(),
        "The export of the database failed: the database has too many objects.".into(),
    ));
    std::fs::write(work.path("sql-password"), format!("{SQL_PASSWORD}\n")).unwrap();
    expect_failed_backup(&work, &[], &["DatabaseExportFailed", "too many objects"]);
    azure.state().export_failure = None;

    // An export stuck past its timeout.
    azure.state().stuck_operations = true;
    let work = Work::new();
    work.write_config(&sql_config(
        &work,
        &azure.url(),
        &azure.url(),
        SECRET,
        &export_section(&format!("{dead}/{AZURITE_ACCOUNT}"), "1s"),
    ));
    work.init();
    let started = std::time::Instant::now();
    expect_failed_backup(
        &work,
        &[],
        &[
            "the export of database ledger",
            "did not finish within",
            "last status InProgress",
        ],
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    azure.state().stuck_operations = false;

    // Without an export the same source backs up; a time in the future is refused.
    let work = Work::new();
    work.write_config(&sql_config(&work, &azure.url(), &azure.url(), SECRET, ""));
    work.init();
    let id = work.backup_of("ledger");
    assert_eq!(work.status_of(&id), "complete");
    let future = (chrono::Utc::now() + TimeDelta::hours(1)).to_rfc3339();
    work.run(&[
        "restore",
        "ledger",
        "--point-in-time",
        &future,
        "--target-database",
        "ledger-future",
    ])
    .expect_code(EXIT_USAGE)
    .expect_mentions(&["outside the restorable range"]);
    // A restore stuck past restore-timeout fails by name.
    azure.state().stuck_operations = true;
    let config = sql_config(
        &work,
        &azure.url(),
        &azure.url(),
        SECRET,
        "restore-timeout = \"1s\"\n",
    );
    work.write_config(&config);
    work.run(&[
        "restore",
        "ledger",
        "--latest",
        "--target-database",
        "ledger-slow",
    ])
    .expect_code(EXIT_FAILED)
    .expect_mentions(&["did not finish within", "ledger-slow may be left half made"]);
}

#[test]
fn azure_sql_config_mistakes_are_named_at_load() {
    let work = Work::new();
    let config = sql_config(
        &work,
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        SECRET,
        "client-secret = \"x\"\n",
    );
    work.write_config(&config);
    work.run(&["list"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["unknown field", "client-secret"]);
    let config = sql_config(
        &work,
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        SECRET,
        "",
    )
    .replace(
        "server = \"sql-prod\"",
        "server = \"sql-prod.database.windows.net\"",
    );
    work.write_config(&config);
    work.run(&["list"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["server", "without `.database.windows.net`"]);
}
