//! RDS sources against moto (two regions on one moto server, KMS keys created on moto):
//! encrypted instance snapshots taken and copied to another region with a key of that
//! region, recorded, verified, pruned in both regions, restored from the copy, drilled and
//! rebuilt from the repository alone; and the faults (an unreachable endpoint, rejected
//! credentials, a snapshot stuck in `creating`, an encrypted copy without a key) failing by
//! name with nothing marked complete and the failed backup's snapshots removed.

use backup_testing::rds::StuckSnapshotProxy;
use backup_testing::servers::{free_ports, Moto};

use crate::support::*;

const SOURCE_REGION: &str = "eu-west-1";
const COPY_REGION: &str = "us-east-1";
const SECRET: &str = "wJalrXUtnFEMI-rds-Secret-42";

/// The config of source `orders` (DB instance `orders`) at `endpoint`, credentials from files.
fn rds_config(work: &Work, endpoint: &str, extra: &str) -> String {
    std::fs::write(work.path("rds-key-id"), "AKIAIOSFODNN7EXAMPLE\n").unwrap();
    std::fs::write(work.path("rds-secret"), format!("{SECRET}\n")).unwrap();
    format!(
        r#"{CONFIG_HEAD}
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[source]]
name = "orders"
kind = "rds"
region = "{SOURCE_REGION}"
db-instance = "orders"
endpoint = "{endpoint}"
access-key-id-file = "rds-key-id"
secret-access-key-file = "rds-secret"
poll-interval = "50ms"
max-attempts = 1
repository = "region-a"
{extra}"#
    )
}

fn backupd_snapshots(moto: &Moto, region: &str) -> Vec<String> {
    moto.db_snapshot_ids(region)
        .into_iter()
        .filter(|s| s.starts_with("backupd-"))
        .collect()
}

#[test]
fn rds_snapshots_are_copied_recorded_verified_pruned_restored_and_rebuilt() {
    let moto = Moto::start();
    let source_key = moto.create_kms_key(SOURCE_REGION);
    let copy_key = moto.create_kms_key(COPY_REGION);
    moto.create_db_instance(SOURCE_REGION, "orders", Some(&source_key));
    let work = Work::new();
    work.write_config(&rds_config(
        &work,
        &moto.endpoint(),
        &format!(
            "copy-region = \"{COPY_REGION}\"\ncopy-kms-key-id = \"{copy_key}\"\n\
             keep = {{ last = 1 }}\n[source.drill]\ntarget = \"./scratch\"\n"
        ),
    ));
    work.init();

    let first = work.backup_of("orders");
    assert_eq!(work.status_of(&first), "complete");
    let identifier = format!("backupd-{first}").to_lowercase();
    assert_eq!(
        backupd_snapshots(&moto, SOURCE_REGION),
        [identifier.as_str()]
    );
    assert_eq!(backupd_snapshots(&moto, COPY_REGION), [identifier.as_str()]);
    let shown = work.ok(&["show", &first, "--json"]).json();
    let snapshots = shown["rds_snapshots"].as_array().unwrap().clone();
    assert_eq!(snapshots.len(), 2, "{shown:#}");
    assert_eq!(snapshots[0]["role"], "source");
    assert_eq!(snapshots[0]["region"], SOURCE_REGION);
    assert_eq!(
        snapshots[0]["arn"],
        format!("arn:aws:rds:{SOURCE_REGION}:123456789012:snapshot:{identifier}")
    );
    assert_eq!(snapshots[0]["encrypted"], true);
    assert_eq!(snapshots[1]["role"], "copy");
    assert_eq!(snapshots[1]["region"], COPY_REGION);
    assert_eq!(
        snapshots[1]["arn"],
        format!("arn:aws:rds:{COPY_REGION}:123456789012:snapshot:{identifier}")
    );
    assert_eq!(snapshots[1]["kms_key_id"], copy_key.as_str());
    let text = work.ok(&["show", &first]).text();
    assert!(
        text.contains(&format!("arn:aws:rds:{COPY_REGION}:")),
        "{text}"
    );
    assert!(!text.contains(SECRET));

    // verify covers the record and both snapshots in RDS.
    work.ok(&["verify", &first]).expect_mentions(&["available"]);

    // Retention deletes the older backup with its snapshots in both regions.
    let second = work.backup_of("orders");
    let second_id = format!("backupd-{second}").to_lowercase();
    assert_eq!(backupd_snapshots(&moto, COPY_REGION).len(), 2);
    work.ok(&["prune", "--source", "orders"]);
    assert_eq!(
        backupd_snapshots(&moto, SOURCE_REGION),
        [second_id.as_str()]
    );
    assert_eq!(backupd_snapshots(&moto, COPY_REGION), [second_id.as_str()]);
    assert!(work.listed(&first).is_none(), "pruned backup still listed");

    // Restore the copy into a new instance in the copy region.
    let restored = work
        .ok(&[
            "restore",
            "orders",
            "--backup",
            &second,
            "--target-instance",
            "orders-restored",
            "--from-region",
            "copy",
            "--json",
        ])
        .json();
    assert_eq!(restored["region"], COPY_REGION, "{restored:#}");
    assert_eq!(restored["identifier"], "orders-restored");
    assert_eq!(
        restored["snapshot_arn"],
        format!("arn:aws:rds:{COPY_REGION}:123456789012:snapshot:{second_id}")
    );
    assert_eq!(moto.db_instance_ids(COPY_REGION), ["orders-restored"]);
    // The name is taken now: RDS's refusal is named.
    work.run(&[
        "restore",
        "orders",
        "--latest",
        "--target-instance",
        "orders-restored",
        "--from-region",
        "copy",
    ])
    .expect_code(EXIT_FAILED)
    .expect_mentions(&["already exists in us-east-1"]);

    // A drill restores into a scratch instance, measures the RTO and deletes it.
    let drill = work.ok(&["drill", "orders", "--now", "--json"]).json();
    assert_eq!(drill["status"], "passed", "{drill:#}");
    assert!(drill["rto_millis"].is_u64(), "{drill:#}");
    assert_eq!(moto.db_instance_ids(SOURCE_REGION), ["orders"]);

    // The catalog comes back from the repository alone, snapshot records included.
    std::fs::remove_file(work.path("var/catalog.db")).unwrap();
    work.ok(&["catalog", "rebuild"]);
    let shown = work.ok(&["show", &second, "--json"]).json();
    assert_eq!(
        shown["rds_snapshots"].as_array().unwrap().len(),
        2,
        "{shown:#}"
    );

    // A snapshot deleted behind backupd's back: verify says so (integrity failure).
    moto.rds(
        COPY_REGION,
        "DeleteDBSnapshot",
        &[("DBSnapshotIdentifier", &second_id)],
    );
    work.run(&["verify", &second])
        .expect_code(EXIT_INTEGRITY)
        .expect_mentions(&["missing from us-east-1", "deleted outside backupd"]);
}

/// Runs a backup of `orders` that must fail; checks the message, that the secret is not in
/// it, and that nothing is complete.
#[track_caller]
fn expect_failed_backup(work: &Work, needles: &[&str]) {
    let out = work.run(&["backup", "orders"]);
    out.expect_code(EXIT_FAILED).expect_mentions(needles);
    assert!(
        !out.text().contains(SECRET),
        "secret leaked: {}",
        out.dump()
    );
    let listed = work.list();
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|b| b["status"] == "failed"),
        "a failed backup left a backup that is not failed: {listed:?}"
    );
}

#[test]
fn rds_faults_fail_by_name_and_nothing_is_complete() {
    // Unreachable: nothing listens on the port.
    let dead = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let work = Work::new();
    work.write_config(&rds_config(&work, &dead, ""));
    work.init();
    expect_failed_backup(
        &work,
        &[
            "RDS source orders: cannot reach RDS at",
            &dead,
            "for CreateDBSnapshot in eu-west-1",
        ],
    );

    // Rejected credentials: this moto checks every access key.
    let strict = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let work = Work::new();
    work.write_config(&rds_config(&work, &strict.endpoint(), ""));
    work.init();
    expect_failed_backup(
        &work,
        &["RDS rejected the credentials", "InvalidClientTokenId"],
    );

    // A snapshot stuck in `creating` past snapshot-timeout; it is deleted with its backup.
    let moto = Moto::start();
    moto.create_db_instance(SOURCE_REGION, "orders", None);
    let proxy = StuckSnapshotProxy::start(&moto.endpoint());
    let work = Work::new();
    work.write_config(&rds_config(
        &work,
        &proxy.endpoint(),
        "snapshot-timeout = \"1s\"\n",
    ));
    work.init();
    expect_failed_backup(&work, &["snapshot backupd-", "still creating after 1s"]);
    assert!(
        backupd_snapshots(&moto, SOURCE_REGION).is_empty(),
        "the failed backup's snapshot was kept"
    );
    // Once RDS reports it available, the same source backs up.
    proxy.set_stuck(false);
    let id = work.backup_of("orders");
    assert_eq!(work.status_of(&id), "complete");

    // An encrypted snapshot, a copy region, no key there: named before anything is copied,
    // and the source region's snapshot goes with the failed backup.
    let key = moto.create_kms_key(SOURCE_REGION);
    moto.create_db_instance(SOURCE_REGION, "billing", Some(&key));
    let work = Work::new();
    let config = rds_config(
        &work,
        &moto.endpoint(),
        &format!("copy-region = \"{COPY_REGION}\"\n"),
    )
    .replace("db-instance = \"orders\"", "db-instance = \"billing\"");
    work.write_config(&config);
    work.init();
    let before = backupd_snapshots(&moto, SOURCE_REGION);
    expect_failed_backup(&work, &["is encrypted", "set `copy-kms-key-id`"]);
    assert_eq!(backupd_snapshots(&moto, SOURCE_REGION), before);
    assert!(backupd_snapshots(&moto, COPY_REGION).is_empty());

    // A missing instance.
    let work = Work::new();
    let config = rds_config(&work, &moto.endpoint(), "")
        .replace("db-instance = \"orders\"", "db-instance = \"nosuch\"");
    work.write_config(&config);
    work.init();
    expect_failed_backup(&work, &["DB instance nosuch not found in eu-west-1"]);
}

#[test]
fn rds_config_mistakes_are_named_at_load() {
    let work = Work::new();
    let config = rds_config(&work, "http://127.0.0.1:1", "copy-region = \"eu-west-1\"\n");
    work.write_config(&config);
    work.run(&["list"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["copy-region", "the source's own region"]);
    let config = rds_config(&work, "http://127.0.0.1:1", "secret-access-key = \"x\"\n");
    work.write_config(&config);
    work.run(&["list"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["unknown field"]);
}

#[test]
fn rds_cluster_snapshots_restore_into_a_new_cluster_with_a_writer() {
    let moto = Moto::start();
    moto.create_db_cluster(SOURCE_REGION, "ledger");
    let work = Work::new();
    let config = rds_config(&work, &moto.endpoint(), "")
        .replace("db-instance = \"orders\"", "db-cluster = \"ledger\"");
    work.write_config(&config);
    work.init();
    let id = work.backup_of("orders");
    let shown = work.ok(&["show", &id, "--json"]).json();
    let snapshots = shown["rds_snapshots"].as_array().unwrap().clone();
    assert_eq!(snapshots.len(), 1, "{shown:#}");
    assert_eq!(snapshots[0]["resource_kind"], "cluster");
    assert_eq!(snapshots[0]["resource"], "ledger");
    assert!(
        snapshots[0]["arn"]
            .as_str()
            .unwrap()
            .contains(":cluster-snapshot:backupd-"),
        "{shown:#}"
    );
    work.ok(&["verify", &id]).expect_mentions(&["available"]);

    let restored = work
        .ok(&[
            "restore",
            "orders",
            "--latest",
            "--target-instance",
            "ledger-restored",
            "--instance-class",
            "db.r6g.large",
            "--json",
        ])
        .json();
    assert_eq!(restored["kind"], "cluster", "{restored:#}");
    assert_eq!(restored["identifier"], "ledger-restored");
    assert_eq!(restored["writer_instance"], "ledger-restored-1");
    assert!(moto
        .db_instance_ids(SOURCE_REGION)
        .contains(&"ledger-restored-1".to_owned()));
    // This source makes no copies: asking for one is named.
    work.run(&[
        "restore",
        "orders",
        "--backup",
        &id,
        "--target-instance",
        "ledger-again",
        "--from-region",
        "copy",
    ])
    .expect_code(EXIT_USAGE)
    .expect_mentions(&["has no copy in another region"]);
}
