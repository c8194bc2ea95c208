use super::*;

const GIB: u64 = 1 << 30;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A small table with round figures, so the expected values below can be checked by hand.
fn prices() -> Prices {
    let text = r#"{
        "effective": "2026-11-01", "currency": "USD", "sources": ["test"],
        "regions": {
            "us-east-1": {
                "inter-region-transfer-per-gb": 0.02,
                "classes": {
                    "STANDARD": { "storage-per-gb-month": 0.023, "put-per-1000": 0.005,
                                  "get-per-1000": 0.0004 },
                    "DEEP_ARCHIVE": { "storage-per-gb-month": 0.00099, "put-per-1000": 0.05,
                                      "get-per-1000": 0.0004,
                                      "restore-per-1000": { "standard": 0.10, "bulk": 0.025 },
                                      "restore-per-gb": { "standard": 0.02, "bulk": 0.0025 },
                                      "minimum-storage-days": 180 }
                }
            },
            "us-west-2": {
                "inter-region-transfer-per-gb": 0.02,
                "classes": {
                    "STANDARD": { "storage-per-gb-month": 0.023, "put-per-1000": 0.005,
                                  "get-per-1000": 0.0004 }
                }
            }
        }
    }"#;
    let p: Prices = serde_json::from_str(text).unwrap();
    p.validate().unwrap();
    p
}

fn object(
    repository: &str,
    origin: &str,
    class: &str,
    gib: u64,
    backup: &str,
    created: &str,
    deleted: Option<&str>,
) -> StoredObject {
    StoredObject {
        source: "pg".into(),
        repository: repository.into(),
        origin_repository: origin.into(),
        storage_class: class.into(),
        bytes: gib * GIB,
        put_requests: put_requests(gib * GIB, Some(16 << 20)),
        backup: Some(backup.into()),
        created_at: t(created),
        deleted_at: deleted.map(t),
    }
}

fn inputs() -> CostInputs {
    let regions = [
        ("region-a", "us-east-1"),
        ("archive", "us-east-1"),
        ("region-b", "us-west-2"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    CostInputs {
        objects: vec![
            // 1. Stored the whole month: 10 GB-month, its PUTs were in October.
            object(
                "region-a",
                "region-a",
                "STANDARD",
                10,
                "b1",
                "2026-10-01T00:00:00Z",
                None,
            ),
            // 2. Recorded on the 16th: 15 of 30 days -> 2 GB-month; 4 GiB / 16 MiB = 256
            //    parts + create + complete = 258 PUTs.
            object(
                "region-a",
                "region-a",
                "STANDARD",
                4,
                "b2",
                "2026-11-16T00:00:00Z",
                None,
            ),
            // 3. Its copy in us-west-2: 2 GB-month, 258 PUTs, 4 GB out of us-east-1.
            object(
                "region-b",
                "region-a",
                "STANDARD",
                4,
                "b2",
                "2026-11-16T00:00:00Z",
                None,
            ),
            // 4. Deep Archive in the same region (no transfer), stored Oct 2 - Nov 11 (40
            //    days): 10 days of November -> 1 GB-month; 140 of 180 days early ->
            //    3 x 140 / 30 = 14 GB-month early deletion.
            object(
                "archive",
                "region-a",
                "DEEP_ARCHIVE",
                3,
                "b0",
                "2026-10-02T00:00:00Z",
                Some("2026-11-11T00:00:00Z"),
            ),
            // Outside the month: ignored.
            object(
                "region-a",
                "region-a",
                "STANDARD",
                100,
                "b3",
                "2026-12-01T00:00:00Z",
                None,
            ),
            object(
                "region-a",
                "region-a",
                "STANDARD",
                100,
                "b4",
                "2026-09-01T00:00:00Z",
                Some("2026-10-31T23:59:59Z"),
            ),
        ],
        requests: vec![
            RequestRecord {
                source: "pg".into(),
                repository: "region-a".into(),
                storage_class: "STANDARD".into(),
                kind: RequestKind::Get,
                requests: 3,
                bytes: 2 * GIB,
                at: t("2026-11-20T10:00:00Z"),
            },
            RequestRecord {
                source: "pg".into(),
                repository: "archive".into(),
                storage_class: "DEEP_ARCHIVE".into(),
                kind: RequestKind::Restore {
                    tier: "standard".into(),
                },
                requests: 2,
                bytes: 3 * GIB,
                at: t("2026-11-05T10:00:00Z"),
            },
            // December: ignored.
            RequestRecord {
                source: "pg".into(),
                repository: "region-a".into(),
                storage_class: "STANDARD".into(),
                kind: RequestKind::Get,
                requests: 1000,
                bytes: 50 * GIB,
                at: t("2026-12-01T00:00:00Z"),
            },
        ],
        regions,
        max_backups: [(("pg".to_owned(), "region-a".to_owned()), 3)]
            .into_iter()
            .collect(),
    }
}

fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: {actual} != {expected} (hand-computed)"
    );
}

#[test]
fn hand_computed_month() {
    let report = cost_report(&inputs(), &prices(), "2026-11".parse().unwrap());
    assert_eq!(report.month.to_string(), "2026-11");
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let keys: Vec<_> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.repository.as_str(),
                r.region.as_str(),
                r.storage_class.as_str(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("archive", "us-east-1", "DEEP_ARCHIVE"),
            ("region-a", "us-east-1", "STANDARD"),
            ("region-b", "us-west-2", "STANDARD"),
        ]
    );

    // Deep Archive: 1 GB-month x 0.00099 = 0.00099; 2 restores x 0.10 / 1000 = 0.0002;
    // 3 GB thawed x 0.02 = 0.06; early deletion 14 GB-month x 0.00099 = 0.01386.
    let a = &report.rows[0];
    close(a.stored_gb_month, 1.0, "archive GB-month");
    assert_eq!(
        (a.put_requests, a.get_requests, a.restore_requests),
        (0, 0, 2)
    );
    close(a.retrieval_gb, 3.0, "archive retrieval GB");
    close(a.inter_region_transfer_gb, 0.0, "archive transfer");
    close(
        a.early_deletion_gb_month,
        14.0,
        "archive early deletion GB-month",
    );
    close(a.storage_cost, 0.00099, "archive storage");
    close(a.request_cost, 0.0002, "archive requests");
    close(a.retrieval_cost, 0.06, "archive retrieval");
    close(a.early_deletion_cost, 0.01386, "archive early deletion");
    close(a.total_cost, 0.07505, "archive total");

    // region-a: 10 + 2 = 12 GB-month x 0.023 = 0.276; 258 PUTs x 0.005 / 1000 = 0.00129;
    // 3 GETs x 0.0004 / 1000 = 0.0000012; 2 GB read, no retrieval fee for STANDARD.
    let b = &report.rows[1];
    close(b.stored_gb_month, 12.0, "region-a GB-month");
    assert_eq!(
        (b.put_requests, b.get_requests, b.restore_requests),
        (258, 3, 0)
    );
    close(b.retrieval_gb, 2.0, "region-a retrieval GB");
    close(b.storage_cost, 0.276, "region-a storage");
    close(b.request_cost, 0.0012912, "region-a requests");
    close(b.retrieval_cost, 0.0, "region-a retrieval");
    close(b.total_cost, 0.2772912, "region-a total");

    // region-b: 2 GB-month x 0.023 = 0.046; 258 PUTs = 0.00129; 4 GB from us-east-1 x 0.02
    // = 0.08.
    let c = &report.rows[2];
    close(c.stored_gb_month, 2.0, "region-b GB-month");
    assert_eq!(c.put_requests, 258);
    close(c.inter_region_transfer_gb, 4.0, "region-b transfer GB");
    close(c.transfer_cost, 0.08, "region-b transfer");
    close(c.total_cost, 0.12729, "region-b total");

    close(report.total_cost, 0.4796312, "month total");

    // Forecast. region-a ends November with 14 GiB in 2 backups, +4 GiB that month, and its
    // policy keeps at most 3 backups: cap 14 x 3 / 2 = 21. Mid-December 14 + 4 x 0.5 = 16,
    // January 20, February 24 -> 21. region-b: 6, 10, 14 (no cap). archive: shrinking -> 0.
    // Other costs repeat November's: 0.0602 + 0.0012912 + 0.08129 = 0.1427812.
    let f: Vec<_> = report
        .forecast
        .iter()
        .map(|m| (m.month.to_string(), m.stored_gb_month))
        .collect();
    assert_eq!(
        f,
        [
            ("2026-12".to_owned(), 22.0),
            ("2027-01".to_owned(), 30.0),
            ("2027-02".to_owned(), 35.0),
        ]
    );
    close(
        report.forecast[0].storage_cost,
        22.0 * 0.023,
        "December storage",
    );
    close(report.forecast[0].other_cost, 0.1427812, "December other");
    close(
        report.forecast[2].total_cost,
        35.0 * 0.023 + 0.1427812,
        "February total",
    );
}

#[test]
fn unpriced_rows_are_reported_not_guessed() {
    let mut inputs = inputs();
    inputs.regions.insert("region-b".into(), "mars-1".into());
    let report = cost_report(&inputs, &prices(), "2026-11".parse().unwrap());
    let mars = report.rows.iter().find(|r| r.region == "mars-1").unwrap();
    assert!(!mars.priced);
    assert_eq!(
        (mars.storage_cost, mars.request_cost, mars.retrieval_cost),
        (0.0, 0.0, 0.0)
    );
    // The transfer out of us-east-1 is still priced: it is billed there, at 0.02.
    close(
        mars.transfer_cost,
        0.08,
        "transfer into the unpriced region",
    );
    close(mars.total_cost, 0.08, "unpriced row total");
    assert!(
        report.notes.iter().any(|n| n.contains("mars-1")),
        "{:?}",
        report.notes
    );
}

#[test]
fn months_parse_and_step() {
    let m: Month = "2026-12".parse().unwrap();
    assert_eq!(m.next().to_string(), "2027-01");
    assert_eq!(m.seconds(), 31.0 * 86_400.0);
    let feb: Month = "2028-02".parse().unwrap();
    assert_eq!(feb.seconds(), 29.0 * 86_400.0);
    for bad in ["2026-13", "2026-1", "26-11", "2026/11", ""] {
        assert!(bad.parse::<Month>().is_err(), "{bad}");
    }
}

#[test]
fn multipart_put_counts() {
    assert_eq!(put_requests(0, Some(16 << 20)), 1);
    assert_eq!(put_requests(16 << 20, Some(16 << 20)), 1);
    assert_eq!(put_requests((16 << 20) + 1, Some(16 << 20)), 4);
    assert_eq!(put_requests(1 << 40, None), 1);
}

#[test]
fn the_shipped_price_table_is_valid_and_covers_the_seed_regions() {
    let prices = Prices::shipped();
    assert_eq!(prices.effective, "2026-11-01");
    assert!(!prices.sources.is_empty());
    for region in ["us-east-1", "us-west-2", "eu-west-1"] {
        let r = &prices.regions[region];
        for class in ["STANDARD", "STANDARD_IA", "DEEP_ARCHIVE"] {
            assert!(r.classes.contains_key(class), "{region} {class}");
        }
        assert_eq!(r.classes["DEEP_ARCHIVE"].minimum_storage_days, 180);
        assert_eq!(r.classes["STANDARD_IA"].minimum_storage_days, 30);
    }
}

#[test]
fn bad_price_tables_are_refused_with_the_key() {
    let e = Prices::parse_toml(
        "effective = \"2026-11-01\"\ncurrency = \"USD\"\n[regions.x]\n\
         inter-region-transfer-per-gb = -1\n[regions.x.classes]\n",
        "test.toml",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("inter-region-transfer-per-gb"),
        "{e}"
    );
    let e = Prices::parse_toml("effective = 1", "test.toml").unwrap_err();
    assert!(e.to_string().contains("test.toml"), "{e}");
}
