//! Conformance checks of the Azure SQL backup records, part of
//! [`catalog_conformance`](super::catalog_conformance).

use backup_catalog::{AzureSqlBackupRecord, Catalog, CatalogError};
use chrono::TimeDelta;

use super::{at, complete_backup_of, stored_backup, unique};

pub async fn azure_sql_conformance(catalog: &Catalog) {
    azure_sql_backups_round_trip_and_go_with_their_backup(catalog).await;
}

pub async fn azure_sql_backups_round_trip_and_go_with_their_backup(catalog: &Catalog) {
    let source = unique("azsql");
    catalog.upsert_source(&source, "azure-sql").await.unwrap();
    let t0 = at("2025-09-01T00:00:00Z");
    let done = complete_backup_of(catalog, &source, t0).await;
    let (other, _) = stored_backup(catalog, &source, t0 + TimeDelta::hours(1)).await;
    let record = |id, exported: bool| {
        AzureSqlBackupRecord {
        backup_id: id,
        subscription_id: "00000000-1111-2222-3333-444444444444".into(),
        resource_group: "rg".into(),
        server: "srv".into(),
        database: "orders".into(),
        database_resource_id: "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Sql/servers/srv/databases/orders".into(),
        location: "westeurope".into(),
        restore_point: t0 + TimeDelta::milliseconds(1500),
        earliest_restore_date: Some(t0 - TimeDelta::days(7)),
        export_blob_url: exported
            .then(|| format!("https://acct.blob.core.windows.net/bacpacs/{source}.bacpac")),
        export_bytes: exported.then_some(u64::MAX >> 2),
        created_at: t0 + TimeDelta::seconds(2),
    }
    };
    let first = record(done.id, true);
    catalog.record_azure_sql_backup(&first).await.unwrap();
    // Recording again replaces.
    let replaced = AzureSqlBackupRecord {
        earliest_restore_date: None,
        ..first.clone()
    };
    catalog.record_azure_sql_backup(&replaced).await.unwrap();
    let second = record(other.id, false);
    catalog.record_azure_sql_backup(&second).await.unwrap();
    assert_eq!(
        catalog.azure_sql_backup(done.id).await.unwrap(),
        Some(replaced.clone())
    );
    assert_eq!(
        catalog.azure_sql_backup(other.id).await.unwrap(),
        Some(second.clone())
    );
    for bad in [
        AzureSqlBackupRecord {
            database_resource_id: String::new(),
            ..first.clone()
        },
        AzureSqlBackupRecord {
            export_blob_url: Some("https://a.blob.core.windows.net/c/x.bacpac?sv=1&sig=abc".into()),
            ..first.clone()
        },
    ] {
        assert!(matches!(
            catalog.record_azure_sql_backup(&bad).await,
            Err(CatalogError::InvalidValue { .. })
        ));
    }
    catalog.mark_deleting(done.id).await.unwrap();
    catalog.delete_backup(done.id).await.unwrap();
    assert_eq!(catalog.azure_sql_backup(done.id).await.unwrap(), None);
    assert_eq!(
        catalog.azure_sql_backup(other.id).await.unwrap(),
        Some(second)
    );
}
