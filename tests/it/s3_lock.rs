//! An S3 repository with `object-lock` (on moto): `backupctl init` refuses a bucket without
//! Object Lock, naming it and the fix; with a locked bucket, init and backup write every
//! object under the configured retention. Parts are large enough that every object goes up
//! in one PUT: moto ignores retention on multipart uploads (the sink's own tests check those
//! on SeaweedFS).

use std::time::{Duration, SystemTime};

use backup_testing::s3::create_bucket;
use backup_testing::servers::{skip_s3_tests, Moto};

use crate::roundtrip::build_varied_tree;
use crate::s3::{runtime, s3_config_toml, setup_sink, write_s3_keys};
use crate::support::*;

const UNLOCKED: &str = "backupd-unlocked";
const LOCKED: &str = "backupd-locked";
const DAYS: u64 = 7;

fn s3_config(endpoint: &str, bucket: &str) -> String {
    let object_lock = format!("object-lock = {{ mode = \"governance\", days = {DAYS} }}\n");
    s3_config_toml("vault", endpoint, bucket, 64, &object_lock)
}

#[test]
fn object_lock_repository_needs_a_locked_bucket_and_locks_what_it_writes() {
    if skip_s3_tests() {
        return;
    }
    let server = Moto::start();
    let endpoint = server.endpoint();
    let rt = runtime();
    let work = Work::new();
    write_s3_keys(&work, "testing", "testing");
    build_varied_tree(&work);
    let unlocked = setup_sink(&rt, &work, &endpoint, UNLOCKED, "");
    rt.block_on(create_bucket(&unlocked, false));
    let locked = setup_sink(&rt, &work, &endpoint, LOCKED, "");
    rt.block_on(create_bucket(&locked, true));

    // A bucket without Object Lock: init fails (a permanent repository error, exit 1),
    // naming the bucket and the fix, and writes nothing there.
    work.write_config(&s3_config(&endpoint, UNLOCKED));
    let out = work.run(&["init"]);
    out.expect_code(EXIT_FAILED).expect_mentions(&[
        &format!("\"{UNLOCKED}\""),
        "vault",
        "does not have Object Lock enabled",
        "--object-lock-enabled-for-bucket",
        "remove `object-lock`",
    ]);
    let cancel = tokio_util::sync::CancellationToken::new();
    let left = rt
        .block_on(backup_sinks::Sink::list(&unlocked, "", &cancel))
        .unwrap();
    assert!(
        left.is_empty(),
        "init wrote to the unlocked bucket: {left:?}"
    );

    // A locked bucket: init and backup work, and every object is retained for DAYS days.
    work.write_config(&s3_config(&endpoint, LOCKED));
    let before = SystemTime::now();
    work.init();
    let id = work.backup();
    let after = SystemTime::now();
    assert_eq!(work.status_of(&id), "complete");
    work.ok(&["verify", &id]);
    let show = work.show(&id);
    let data_key = show["artifacts"]
        .as_array()
        .expect("artifacts array")
        .iter()
        .find(|a| a["artifact"]["role"] == "data")
        .and_then(|a| a["copies"][0]["object_key"].as_str())
        .unwrap_or_else(|| panic!("backup {id} has no data object: {show:#}"))
        .to_owned();
    let objects = rt
        .block_on(backup_sinks::Sink::list(&locked, "repo/", &cancel))
        .unwrap();
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    assert!(
        keys.contains(&format!("repo/{data_key}").as_str()),
        "{data_key} not among {keys:?}"
    );
    let retention = Duration::from_secs(DAYS * 86_400);
    for key in keys {
        let head = rt
            .block_on(locked.client().head_object().bucket(LOCKED).key(key).send())
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE"),
            "{key}"
        );
        let until = head
            .object_lock_retain_until_date()
            .map(|d| SystemTime::try_from(*d).unwrap())
            .unwrap_or_else(|| panic!("{key} has no retain-until date"));
        // S3 keeps whole seconds.
        let slack = Duration::from_secs(2);
        assert!(
            until + slack >= before + retention && until <= after + retention + slack,
            "{key} is retained until {until:?}, not {DAYS} days after the backup"
        );
    }

    // `hold` puts an S3 legal hold on every object of the backup; `unhold` lifts it.
    work.ok(&["hold", &id]);
    let backup_keys: Vec<String> = rt
        .block_on(backup_sinks::Sink::list(
            &locked,
            &format!("repo/backups/{id}/"),
            &cancel,
        ))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(backup_keys.len(), 3, "{backup_keys:?}");
    for key in &backup_keys {
        assert!(
            rt.block_on(locked.legal_hold(key, &cancel)).unwrap(),
            "{key} not held"
        );
    }
    work.ok(&["unhold", &id]);
    for key in &backup_keys {
        assert!(
            !rt.block_on(locked.legal_hold(key, &cancel)).unwrap(),
            "{key} still held"
        );
    }

    // Retention keeps what Object Lock still protects, and says why.
    let second = work.backup();
    work.write_config(&format!(
        "{}keep = {{ last = 1 }}\n",
        s3_config(&endpoint, LOCKED)
    ));
    let plan = work.ok(&["prune", "--dry-run", "--json"]).json();
    let planned = plan["sources"][0]["backups"].as_array().unwrap();
    let first = planned
        .iter()
        .find(|b| b["backup_id"] == id.as_str())
        .unwrap();
    assert_eq!(first["action"], "keep", "{plan:#}");
    assert!(first["reasons"].to_string().contains("object"), "{plan:#}");
    let newest = planned
        .iter()
        .find(|b| b["backup_id"] == second.as_str())
        .unwrap();
    assert_eq!(newest["action"], "keep");
    work.ok(&["prune"]);
    assert_eq!(work.status_of(&id), "complete");
}
