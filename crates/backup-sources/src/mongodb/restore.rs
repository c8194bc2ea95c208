//! Writing a backup's collections into a server: create each collection with its options,
//! insert its documents in batches (read from the restored `.bson` file on a blocking
//! thread, at most a few batches in memory), build its indexes, then replay the oplog.

use std::path::PathBuf;

use mongodb::bson::{doc, Bson, RawDocumentBuf};
use mongodb::Client;
use tokio::sync::mpsc;

use super::backup::BsonFileReader;
use super::oplog::{clean_index, collection_exists};
use super::{server_code, CollectionSpec, MongoError, Result};

/// Documents per insert.
const BATCH_DOCUMENTS: usize = 1000;
/// Bytes per insert (the server takes at most 48 MB in one message).
const BATCH_BYTES: usize = 8 << 20;

/// The documents `db.coll` holds now (a drill's counts check).
pub async fn count_documents(client: &Client, db: &str, coll: &str) -> Result<u64> {
    client
        .database(db)
        .collection::<mongodb::bson::Document>(coll)
        .count_documents(doc! {})
        .await
        .map_err(MongoError::driver(format!(
            "counting the documents of {db}.{coll}"
        )))
}

/// Drops database `db` (a drill's scratch database); dropping one that is gone is no error.
pub async fn drop_database(client: &Client, db: &str) -> Result<()> {
    client
        .database(db)
        .drop()
        .await
        .map_err(MongoError::driver(format!("dropping database {db}")))
}

/// Refuses a target namespace that holds documents (or is a view) unless `drop`, which
/// drops every target namespace that exists instead. Checks every namespace before changing any.
pub async fn prepare_targets(
    client: &Client,
    targets: &[(String, String)],
    drop: bool,
) -> Result<()> {
    let mut occupied = Vec::new();
    for (db, coll) in targets {
        if !collection_exists(client, db, coll).await? {
            continue;
        }
        let count = client
            .database(db)
            .collection::<mongodb::bson::Document>(coll)
            .estimated_document_count()
            .await
            .unwrap_or(1);
        if count > 0 {
            occupied.push(format!("{db}.{coll} ({count} documents)"));
        }
    }
    if occupied.is_empty() {
        return Ok(());
    }
    if !drop {
        return Err(MongoError::Invalid(format!(
            "the target already has {}: restore into empty namespaces, pick others with \
             --rename-to, or pass --drop to replace them",
            occupied.join(", ")
        )));
    }
    for (db, coll) in targets {
        match client
            .database(db)
            .collection::<mongodb::bson::Document>(coll)
            .drop()
            .await
        {
            Ok(()) => {}
            Err(e) if server_code(&e) == Some(26) => {}
            Err(e) => return Err(MongoError::driver(format!("dropping {db}.{coll}"))(e)),
        }
    }
    Ok(())
}

/// Creates `db.coll` like `spec` (options; views with their pipeline).
pub async fn create_collection(
    client: &Client,
    spec: &CollectionSpec,
    db: &str,
    coll: &str,
) -> Result<()> {
    let mut command = doc! { "create": coll };
    for (k, v) in &spec.options {
        command.insert(k, v.clone());
    }
    match client.database(db).run_command(command).await {
        Ok(_) => Ok(()),
        // Already there (an empty one, or created by an earlier namespace's view).
        Err(e) if server_code(&e) == Some(48) => Ok(()),
        Err(e) => Err(MongoError::driver(format!("creating {db}.{coll}"))(e)),
    }
}

/// Inserts the documents of the BSON file at `path` into `db.coll`; returns how many.
pub async fn insert_file(client: &Client, path: PathBuf, db: &str, coll: &str) -> Result<u64> {
    let (tx, mut rx) = mpsc::channel::<Result<Vec<RawDocumentBuf>>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(MongoError::Io(e)));
                return;
            }
        };
        let mut input = BsonFileReader::new(std::io::BufReader::with_capacity(1 << 20, file));
        let mut batch = Vec::new();
        let mut bytes = 0;
        loop {
            match input.next_raw() {
                Ok(Some(doc)) => {
                    bytes += doc.as_bytes().len();
                    batch.push(doc);
                    if batch.len() >= BATCH_DOCUMENTS || bytes >= BATCH_BYTES {
                        bytes = 0;
                        if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
    });
    let collection = client.database(db).collection::<RawDocumentBuf>(coll);
    let mut count = 0;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        count += batch.len() as u64;
        collection
            .insert_many(batch)
            .await
            .map_err(MongoError::driver(format!("inserting into {db}.{coll}")))?;
    }
    reader
        .await
        .map_err(|e| MongoError::Invalid(format!("reading documents crashed: {e}")))?;
    Ok(count)
}

/// Builds `spec`'s indexes (all but `_id_`, which every collection has) on `db.coll`.
pub async fn create_indexes(
    client: &Client,
    spec: &CollectionSpec,
    db: &str,
    coll: &str,
) -> Result<()> {
    let indexes: Vec<Bson> = spec
        .indexes
        .iter()
        .filter(|i| i.get_str("name") != Ok("_id_"))
        .map(|i| Bson::Document(clean_index(i)))
        .collect();
    if indexes.is_empty() || spec.kind == "view" {
        return Ok(());
    }
    client
        .database(db)
        .run_command(doc! { "createIndexes": coll, "indexes": indexes })
        .await
        .map_err(MongoError::driver(format!(
            "building the indexes of {db}.{coll}"
        )))?;
    Ok(())
}
