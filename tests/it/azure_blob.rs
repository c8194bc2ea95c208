//! azure-blob sources against a real Azurite: containers and blobs (names, metadata, content
//! types, content) backed up, verified, restored into another container or their own (refused
//! when not empty unless --overwrite/--drop), drilled into a scratch container; and faults (a
//! wrong account key, an unreachable endpoint, a missing container) failing by name with
//! nothing marked complete.

use backup_sources::azure::blob::{BlobClient, BlobCredential, Metadata, PutBlobOptions};
use backup_sources::Secret;
use backup_testing::servers::{skip_azure_tests, Azurite, AZURITE_ACCOUNT, AZURITE_KEY};

use crate::support::*;

fn blob_config(endpoint: &str, extra: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[source]]
name = "blobs"
kind = "azure-blob"
account = "{AZURITE_ACCOUNT}"
endpoint = "{endpoint}"
account-key-env = "AZURE_KEY"
repository = "region-a"
{extra}"#
    )
}

fn run_with_key(work: &Work, key: &str, args: &[&str]) -> Out {
    let mut cmd = work.command(args);
    cmd.env("AZURE_KEY", key);
    let output = cmd.output().expect("run backupctl");
    Out {
        args: args.join(" "),
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(azurite: &Azurite) -> BlobClient {
    BlobClient::new(
        &azurite.endpoint(),
        AZURITE_ACCOUNT,
        BlobCredential::SharedKey(Secret::new(AZURITE_KEY)),
    )
    .unwrap()
}

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (name, content, content type, metadata) of every blob in the test account.
type Blob = (String, Vec<u8>, Option<String>, Metadata);

fn put(c: &BlobClient, container: &str, blobs: &[Blob]) {
    rt().block_on(async {
        c.create_container(container, &meta(&[("owner", container)]))
            .await
            .unwrap();
        for (name, content, content_type, metadata) in blobs {
            let options = PutBlobOptions {
                content_type: content_type.clone(),
                metadata: metadata.clone(),
            };
            c.put_blob(container, name, &content[..], &options)
                .await
                .unwrap();
        }
    });
}

/// Every blob of `container` under `prefix` (prefix stripped), with content and properties.
fn read(c: &BlobClient, container: &str, prefix: &str) -> Vec<Blob> {
    rt().block_on(async {
        let mut out = Vec::new();
        for info in c.list_blobs(container, Some(prefix)).await.unwrap() {
            let mut download = c.get_blob(container, &info.name).await.unwrap();
            let mut content = Vec::new();
            while let Some(chunk) = download.next_chunk().await.unwrap() {
                content.extend_from_slice(&chunk);
            }
            out.push((
                info.name[prefix.len()..].to_owned(),
                content,
                download.properties.content_type.clone(),
                download.properties.metadata.clone(),
            ));
        }
        out
    })
}

fn sample() -> (Vec<Blob>, Vec<Blob>) {
    let invoices = vec![
        (
            "2026/11/big invoice.pdf".to_owned(),
            mixed_bytes(3 << 20, 7),
            Some("application/pdf".to_owned()),
            meta(&[("customer", "acme"), ("year", "2026")]),
        ),
        (
            "empty".to_owned(),
            Vec::new(),
            Some("application/octet-stream".to_owned()),
            Metadata::new(),
        ),
        (
            "notes/ünïcode name.txt".to_owned(),
            b"hello".to_vec(),
            Some("text/plain; charset=utf-8".to_owned()),
            meta(&[("lang", "en")]),
        ),
    ];
    let images = vec![(
        "logo.png".to_owned(),
        random_bytes(200_000, 3),
        Some("image/png".to_owned()),
        Metadata::new(),
    )];
    (invoices, images)
}

#[test]
fn azure_blob_containers_are_backed_up_verified_and_restored() {
    if skip_azure_tests() {
        return;
    }
    let azurite = Azurite::start();
    let c = client(&azurite);
    let (invoices, images) = sample();
    put(&c, "invoices", &invoices);
    put(&c, "images", &images);
    let work = Work::new();
    work.write_config(&blob_config(&azurite.endpoint(), ""));
    work.init();

    let backup = run_with_key(&work, AZURITE_KEY, &["backup", "blobs"]);
    backup.expect_code(EXIT_OK);
    let id = backup.stdout.trim().to_owned();
    assert_eq!(work.status_of(&id), "complete");
    assert!(!backup.text().contains(AZURITE_KEY));
    run_with_key(&work, AZURITE_KEY, &["verify", &id]).expect_code(EXIT_OK);

    // Into another container: every blob with its content, content type and metadata.
    let restored = run_with_key(
        &work,
        AZURITE_KEY,
        &[
            "restore",
            "blobs",
            "--latest",
            "--target-container",
            "restored",
            "--container",
            "invoices",
            "--json",
        ],
    );
    restored.expect_code(EXIT_OK);
    let outcome = restored.json();
    assert_eq!(outcome["blobs"], 3, "{}", restored.dump());
    assert_eq!(outcome["bytes"], (3 << 20) + 5, "{}", restored.dump());
    assert_eq!(read(&c, "restored", ""), invoices);

    // Several containers into one keep apart under `{container}/`, below --target-prefix.
    run_with_key(
        &work,
        AZURITE_KEY,
        &[
            "restore",
            "blobs",
            "--backup",
            &id,
            "--target-container",
            "everything",
            "--target-prefix",
            "r1/",
        ],
    )
    .expect_code(EXIT_OK);
    assert_eq!(read(&c, "everything", "r1/images/"), images);
    assert_eq!(read(&c, "everything", "r1/invoices/"), invoices);

    // Back into their own containers: refused while they hold blobs...
    rt().block_on(c.delete_blob("invoices", "empty")).unwrap();
    let mut changed = invoices.clone();
    changed[2].1 = b"changed since".to_vec();
    put(&c, "invoices", &changed[2..]);
    run_with_key(
        &work,
        AZURITE_KEY,
        &["restore", "blobs", "--latest", "--original-containers"],
    )
    .expect_code(EXIT_USAGE)
    .expect_mentions(&["is not empty", "--overwrite", "--drop"]);
    assert_eq!(
        read(&c, "invoices", "").len(),
        2,
        "the refused restore wrote"
    );
    // ...and with --overwrite, each blob is back as it was backed up.
    run_with_key(
        &work,
        AZURITE_KEY,
        &[
            "restore",
            "blobs",
            "--latest",
            "--original-containers",
            "--overwrite",
        ],
    )
    .expect_code(EXIT_OK);
    assert_eq!(read(&c, "invoices", ""), invoices);
    assert_eq!(read(&c, "images", ""), images);

    // --drop deletes what is under the target first: an extra blob does not survive.
    put(&c, "restored", &images);
    run_with_key(
        &work,
        AZURITE_KEY,
        &[
            "restore",
            "blobs",
            "--latest",
            "--target-container",
            "restored",
            "--container",
            "invoices",
            "--drop",
        ],
    )
    .expect_code(EXIT_OK);
    assert_eq!(read(&c, "restored", ""), invoices);

    // From the repository alone: the rebuilt catalog has the backup, and it restores.
    for e in std::fs::read_dir(work.path("var")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("catalog.db") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    work.ok(&["catalog", "rebuild"]);
    assert_eq!(work.status_of(&id), "complete");
    run_with_key(
        &work,
        AZURITE_KEY,
        &[
            "restore",
            "blobs",
            "--backup",
            &id,
            "--target-container",
            "rebuilt",
            "--container",
            "images",
        ],
    )
    .expect_code(EXIT_OK);
    assert_eq!(read(&c, "rebuilt", ""), images);

    // A restore into a file tree still works (the raw entries and the index).
    let out = work.path("raw");
    work.ok(&["restore", &id, "--target", out.to_str().unwrap()]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("azure-blob/index.json")).unwrap()).unwrap();
    assert_eq!(index["containers"].as_array().unwrap().len(), 2);
    assert_eq!(index["containers"][1]["metadata"]["owner"], "invoices");

    // Retention applies as to any source: with keep.last = 1 the older backup goes.
    work.write_config(&blob_config(&azurite.endpoint(), "keep = { last = 1 }\n"));
    let second = run_with_key(&work, AZURITE_KEY, &["backup", "blobs"]);
    second.expect_code(EXIT_OK);
    work.ok(&["prune", "--source", "blobs"]);
    assert!(
        work.listed(&id).is_none(),
        "the pruned backup is still listed"
    );
    assert_eq!(work.status_of(second.stdout.trim()), "complete");
}

#[test]
fn azure_blob_drill_restores_into_a_scratch_container_and_deletes_it() {
    if skip_azure_tests() {
        return;
    }
    let azurite = Azurite::start();
    let c = client(&azurite);
    let (invoices, images) = sample();
    put(&c, "invoices", &invoices);
    put(&c, "images", &images);
    let work = Work::new();
    work.write_config(&blob_config(
        &azurite.endpoint(),
        "[source.drill]\ntarget = \"./scratch\"\nchecks = [\"integrity\", \"counts\"]\n",
    ));
    work.init();
    let id = run_with_key(&work, AZURITE_KEY, &["backup", "blobs"]);
    id.expect_code(EXIT_OK);
    let out = run_with_key(&work, AZURITE_KEY, &["drill", "blobs", "--now", "--json"]);
    out.expect_code(EXIT_OK);
    let drill = out.json();
    assert_eq!(drill["status"], "passed", "{}", out.dump());
    let counts = drill["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "counts")
        .unwrap_or_else(|| panic!("no counts check: {drill:#}"));
    assert_eq!(counts["passed"], true, "{drill:#}");
    assert!(
        counts["detail"].as_str().unwrap().contains("4 blobs"),
        "{drill:#}"
    );
    let containers: Vec<String> = rt()
        .block_on(c.list_containers(None))
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(containers, ["images", "invoices"], "scratch container left");
}

#[test]
fn azure_blob_faults_fail_by_name_and_leave_nothing_complete() {
    if skip_azure_tests() {
        return;
    }
    let azurite = Azurite::start();
    let c = client(&azurite);
    let (invoices, _) = sample();
    put(&c, "invoices", &invoices);
    let work = Work::new();
    work.write_config(&blob_config(&azurite.endpoint(), ""));
    work.init();

    // A wrong account key: named, never printed.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";
    let out = run_with_key(&work, wrong, &["backup", "blobs"]);
    out.expect_code(EXIT_FAILED)
        .expect_mentions(&["account key was rejected", AZURITE_ACCOUNT]);
    assert!(!out.text().contains(wrong), "{}", out.dump());
    // A key that is not base64 at all is a configuration error.
    run_with_key(&work, "not base64!", &["backup", "blobs"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["not base64"]);

    // A container named in the config that does not exist.
    work.write_config(&blob_config(
        &azurite.endpoint(),
        "containers = [\"invoices\", \"missing\"]\n",
    ));
    run_with_key(&work, AZURITE_KEY, &["backup", "blobs"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["container missing does not exist"]);

    // Nothing listening at the endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    work.write_config(&blob_config(
        &format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
        "",
    ));
    run_with_key(&work, AZURITE_KEY, &["backup", "blobs"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["cannot reach the Blob service", &port.to_string()]);

    // Each attempt is recorded as a failed backup, with its cause.
    let backups = work.list();
    assert_eq!(backups.len(), 4, "{backups:#?}");
    assert!(
        backups.iter().all(|b| b["status"] == "failed"),
        "{backups:#?}"
    );
}
