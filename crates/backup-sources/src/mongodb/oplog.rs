//! Replaying oplog entries through ordinary driver calls, idempotently (the way
//! `mongorestore --oplogReplay` does), so that documents copied at any moment after a
//! backup's start reach the state of the replay's end point:
//!
//! - `i` (insert) becomes a replace-with-upsert by `_id` (or the entry's `o2` key);
//! - `u` (update) applies a replacement document, a `$v: 2` diff (MongoDB's `u`/`i`/`d`/
//!   `s…` form, or the `updatedFields`/`removedFields`/`truncatedArrays` form some
//!   wire-compatible servers log) or a legacy `$set`/`$unset` update;
//! - `d` (delete) deletes by the entry's key;
//! - `c` (command): `create`, `drop`, `createIndexes`, `commitIndexBuild`, `dropIndexes`,
//!   `dropDatabase`, `renameCollection`, `collMod` and transactions' `applyOps`.
//!
//! [`RestoreTarget`] maps each namespace to where it is restored (a subset, a renamed
//! database); entries for namespaces outside it are skipped.

use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

use super::{is_namespace_not_found, server_code, MongoError, NamespaceFilter, Result};

/// Which namespaces a restore writes and under which database name.
#[derive(Debug, Clone, Default)]
pub struct RestoreTarget {
    /// Namespaces to restore (all that the backup holds when empty).
    pub only: NamespaceFilter,
    /// Restore every database under this name instead (with a one-database subset).
    pub rename_to: Option<String>,
    /// Restore each database `db` as `{prefix}{db}` (a drill's scratch databases).
    pub prefix: Option<String>,
}

impl RestoreTarget {
    /// Where `db.coll` is restored, or `None` if it is not.
    pub fn map(&self, db: &str, coll: &str) -> Option<(String, String)> {
        self.only.covers(db, coll).then(|| {
            (
                match (&self.rename_to, &self.prefix) {
                    (Some(name), _) => name.clone(),
                    (None, Some(prefix)) => format!("{prefix}{db}"),
                    (None, None) => db.to_owned(),
                },
                coll.to_owned(),
            )
        })
    }

    fn map_ns(&self, ns: &str) -> Option<(String, String)> {
        let (db, coll) = ns.split_once('.')?;
        self.map(db, coll)
    }
}

/// How an update entry changes its document.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The whole new document.
    Replace(Document),
    /// Update documents to apply in order (array truncations go first, on their own, so
    /// they never conflict with `$set`s inside the same array).
    Stages(Vec<Document>),
}

/// Turns an update entry's `o` into what the driver applies.
pub fn update_of(o: &Document) -> Result<Update> {
    let version = o.get("$v").and_then(bson_int);
    if version == Some(2) {
        let diff = o.get_document("diff").map_err(|_| {
            MongoError::Invalid("a `$v: 2` update entry has no `diff` document".into())
        })?;
        let mut set = Document::new();
        let mut unset = Document::new();
        let mut truncate = Document::new();
        if diff.contains_key("updatedFields")
            || diff.contains_key("removedFields")
            || diff.contains_key("truncatedArrays")
        {
            if let Ok(fields) = diff.get_document("updatedFields") {
                set.extend(fields.clone());
            }
            if let Ok(fields) = diff.get_array("removedFields") {
                for f in fields.iter().filter_map(Bson::as_str) {
                    unset.insert(f, "");
                }
            }
            if let Ok(arrays) = diff.get_array("truncatedArrays") {
                for a in arrays.iter().filter_map(Bson::as_document) {
                    let field = a.get_str("field").map_err(|_| {
                        MongoError::Invalid("a truncatedArrays item has no `field`".into())
                    })?;
                    let size = a.get("newSize").and_then(bson_int).unwrap_or(0);
                    truncate.insert(field, doc! { "$each": [], "$slice": size });
                }
            }
        } else {
            walk_diff(diff, "", &mut set, &mut unset, &mut truncate)?;
        }
        let mut stages = Vec::new();
        if !truncate.is_empty() {
            stages.push(doc! { "$push": truncate });
        }
        let mut main = Document::new();
        if !set.is_empty() {
            main.insert("$set", set);
        }
        if !unset.is_empty() {
            main.insert("$unset", unset);
        }
        if !main.is_empty() {
            stages.push(main);
        }
        return Ok(Update::Stages(stages));
    }
    if o.keys().any(|k| k.starts_with('$')) {
        let mut update = o.clone();
        update.remove("$v");
        return Ok(Update::Stages(if update.is_empty() {
            vec![]
        } else {
            vec![update]
        }));
    }
    Ok(Update::Replace(o.clone()))
}

/// MongoDB's `$v: 2` diff: `u` (updated) and `i` (inserted) fields, `d` (deleted) fields,
/// `s<field>` sub-diffs; arrays (`a: true`) have `l` (new length), `u<index>` and
/// `s<index>`.
fn walk_diff(
    diff: &Document,
    prefix: &str,
    set: &mut Document,
    unset: &mut Document,
    truncate: &mut Document,
) -> Result<()> {
    let path = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    if diff.get_bool("a") == Ok(true) {
        for (k, v) in diff {
            if k == "a" {
                continue;
            }
            if k == "l" {
                let size = bson_int(v).unwrap_or(0);
                truncate.insert(prefix, doc! { "$each": [], "$slice": size });
            } else if let Some(index) = k.strip_prefix('u') {
                set.insert(path(index), v.clone());
            } else if let Some(index) = k.strip_prefix('s') {
                walk_diff(sub(v)?, &path(index), set, unset, truncate)?;
            }
        }
        return Ok(());
    }
    for (k, v) in diff {
        match k.as_str() {
            "u" | "i" => {
                for (field, value) in sub(v)? {
                    set.insert(path(field), value.clone());
                }
            }
            "d" => {
                for (field, _) in sub(v)? {
                    unset.insert(path(field), "");
                }
            }
            other => {
                if let Some(field) = other.strip_prefix('s') {
                    walk_diff(sub(v)?, &path(field), set, unset, truncate)?;
                }
            }
        }
    }
    Ok(())
}

fn sub(v: &Bson) -> Result<&Document> {
    v.as_document()
        .ok_or_else(|| MongoError::Invalid("an oplog diff's sub-diff is not a document".into()))
}

fn bson_int(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

/// What replaying one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Outside the restore target, a no-op, or a command with no effect on data.
    Skipped,
}

/// Replays one oplog entry into `client` under `target`.
pub async fn apply_entry(
    client: &Client,
    entry: &Document,
    target: &RestoreTarget,
) -> Result<Applied> {
    let op = entry.get_str("op").unwrap_or_default();
    let ns = entry.get_str("ns").unwrap_or_default();
    let o = || {
        entry
            .get_document("o")
            .map_err(|_| MongoError::Invalid(format!("oplog entry {op} on {ns} has no `o`")))
    };
    let what = || format!("replaying a `{op}` oplog entry on {ns}");
    match op {
        "i" | "u" | "d" => {
            let Some((db, coll)) = target.map_ns(ns) else {
                return Ok(Applied::Skipped);
            };
            let collection = client.database(&db).collection::<Document>(&coll);
            let o = o()?;
            let key = match entry.get_document("o2") {
                Ok(o2) => o2.clone(),
                Err(_) => match o.get("_id") {
                    Some(id) => doc! { "_id": id.clone() },
                    None if op == "d" => o.clone(),
                    None => {
                        return Err(MongoError::Invalid(format!(
                            "{}: the entry names no document (_id)",
                            what()
                        )))
                    }
                },
            };
            match op {
                "i" => {
                    collection
                        .replace_one(key, o.clone())
                        .upsert(true)
                        .await
                        .map_err(MongoError::driver(what()))?;
                }
                "u" => match update_of(o)? {
                    Update::Replace(doc) => {
                        collection
                            .replace_one(key, doc)
                            .await
                            .map_err(MongoError::driver(what()))?;
                    }
                    Update::Stages(stages) => {
                        for stage in stages {
                            collection
                                .update_one(key.clone(), stage)
                                .await
                                .map_err(MongoError::driver(what()))?;
                        }
                    }
                },
                _ => {
                    collection
                        .delete_one(key)
                        .await
                        .map_err(MongoError::driver(what()))?;
                }
            }
            Ok(Applied::Applied)
        }
        "c" => {
            let db = ns.split_once('.').map_or(ns, |(db, _)| db);
            Box::pin(apply_command(client, db, o()?, target)).await
        }
        _ => Ok(Applied::Skipped),
    }
}

/// Error codes a replayed command may meet because its effect is already there: the
/// namespace is gone (26) or exists (48), the index is gone (27) or exists (68, 85, 86).
fn already_done(e: &mongodb::error::Error) -> bool {
    matches!(server_code(e), Some(26 | 27 | 48 | 68 | 85 | 86))
}

async fn apply_command(
    client: &Client,
    db: &str,
    o: &Document,
    target: &RestoreTarget,
) -> Result<Applied> {
    let Some((name, _)) = o.iter().next() else {
        return Ok(Applied::Skipped);
    };
    let what = format!("replaying the oplog command `{name}` on {db}");
    let run = |tdb: String, command: Document| {
        let what = what.clone();
        async move {
            match client.database(&tdb).run_command(command).await {
                Ok(_) => Ok(Applied::Applied),
                Err(e) if already_done(&e) => Ok(Applied::Applied),
                Err(e) => Err(MongoError::driver(what)(e)),
            }
        }
    };
    let coll_arg = |key: &str| o.get_str(key).ok().map(str::to_owned);
    match name.as_str() {
        "applyOps" => {
            let mut applied = Applied::Skipped;
            for inner in o.get_array("applyOps").map_err(|_| {
                MongoError::Invalid("an applyOps entry has no array of operations".into())
            })? {
                if let Some(inner) = inner.as_document() {
                    if apply_entry(client, inner, target).await? == Applied::Applied {
                        applied = Applied::Applied;
                    }
                }
            }
            Ok(applied)
        }
        "create" | "drop" | "createIndexes" | "commitIndexBuild" | "dropIndexes" | "collMod" => {
            let Some(coll) = coll_arg(name) else {
                return Ok(Applied::Skipped);
            };
            let Some((tdb, tcoll)) = target.map(db, &coll) else {
                return Ok(Applied::Skipped);
            };
            let mut command = doc! { name.as_str(): &tcoll };
            match name.as_str() {
                "create" => {
                    for (k, v) in o.iter().skip(1) {
                        if k != "idIndex" {
                            command.insert(k, v.clone());
                        }
                    }
                }
                "createIndexes" | "commitIndexBuild" => {
                    let indexes: Vec<Bson> = match o.get_array("indexes") {
                        Ok(list) => list
                            .iter()
                            .filter_map(Bson::as_document)
                            .map(|i| Bson::Document(clean_index(i)))
                            .collect(),
                        // The older form: the one index's spec is the rest of the command.
                        Err(_) => {
                            let mut spec = o.clone();
                            spec.remove(name);
                            vec![Bson::Document(clean_index(&spec))]
                        }
                    };
                    command = doc! { "createIndexes": &tcoll, "indexes": indexes };
                }
                "dropIndexes" => {
                    let index = o
                        .get("index")
                        .cloned()
                        .unwrap_or_else(|| Bson::String("*".into()));
                    command.insert("index", index);
                }
                "collMod" => {
                    for (k, v) in o.iter().skip(1) {
                        command.insert(k, v.clone());
                    }
                }
                _ => {}
            }
            run(tdb, command).await
        }
        "dropDatabase" => {
            if !target.only.covers_database(db) {
                return Ok(Applied::Skipped);
            }
            // Only the collections this restore covers go, even under a database-wide drop.
            let tdb = target.rename_to.clone().unwrap_or_else(|| db.to_owned());
            let names = client
                .database(&tdb)
                .list_collection_names()
                .await
                .map_err(MongoError::driver(what.clone()))?;
            for coll in names {
                if target.map(db, &coll).is_some() {
                    run(tdb.clone(), doc! { "drop": coll }).await?;
                }
            }
            Ok(Applied::Applied)
        }
        "renameCollection" => {
            let from = o.get_str("renameCollection").unwrap_or_default();
            let to = o.get_str("to").unwrap_or_default();
            let drop_target = o.get_bool("dropTarget").unwrap_or(false);
            match (target.map_ns(from), target.map_ns(to)) {
                (Some((fdb, fcoll)), Some((tdb, tcoll))) => {
                    run(
                        "admin".into(),
                        doc! {
                            "renameCollection": format!("{fdb}.{fcoll}"),
                            "to": format!("{tdb}.{tcoll}"),
                            "dropTarget": drop_target,
                        },
                    )
                    .await
                }
                // Renamed out of the restored subset: it is gone from it.
                (Some((fdb, fcoll)), None) => run(fdb, doc! { "drop": fcoll }).await,
                (None, Some((tdb, tcoll))) => {
                    tracing::warn!(from, to, "a collection outside the restored namespaces was renamed into them; its documents are not in this restore");
                    if drop_target {
                        run(tdb, doc! { "drop": tcoll }).await?;
                    }
                    Ok(Applied::Skipped)
                }
                (None, None) => Ok(Applied::Skipped),
            }
        }
        // Index builds are replayed at their commit; transactions' own markers carry no data.
        "startIndexBuild" | "abortIndexBuild" | "commitTransaction" | "abortTransaction" => {
            Ok(Applied::Skipped)
        }
        other => {
            tracing::warn!(command = other, db, "oplog command not replayed");
            Ok(Applied::Skipped)
        }
    }
}

/// An index spec as `createIndexes` takes it (without the fields servers add).
pub fn clean_index(index: &Document) -> Document {
    let mut index = index.clone();
    for field in ["ns", "entryFormat", "buildUUID"] {
        index.remove(field);
    }
    index
}

/// Whether the namespace exists in the server (for the non-empty target check).
pub async fn collection_exists(client: &Client, db: &str, coll: &str) -> Result<bool> {
    match client
        .database(db)
        .list_collection_names()
        .filter(doc! { "name": coll })
        .await
    {
        Ok(names) => Ok(!names.is_empty()),
        Err(e) if is_namespace_not_found(&e) => Ok(false),
        Err(e) => Err(MongoError::driver(format!(
            "listing the collections of {db}"
        ))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_become_updates() {
        // The `updatedFields` form.
        let o = doc! { "$v": 2, "diff": { "updatedFields": { "n": 100, "sub.x": 2 }, "removedFields": ["tags"], "truncatedArrays": [{ "field": "arr", "newSize": 1 }] } };
        assert_eq!(
            update_of(&o).unwrap(),
            Update::Stages(vec![
                doc! { "$push": { "arr": { "$each": [], "$slice": 1_i64 } } },
                doc! { "$set": { "n": 100, "sub.x": 2 }, "$unset": { "tags": "" } },
            ])
        );
        // MongoDB's own form, with a nested document and an array.
        let o = doc! { "$v": 2, "diff": { "u": { "n": 1 }, "i": { "new": true }, "d": { "gone": false }, "ssub": { "u": { "x": 3 } }, "stags": { "a": true, "l": 2, "u1": "z" } } };
        assert_eq!(
            update_of(&o).unwrap(),
            Update::Stages(vec![
                doc! { "$push": { "tags": { "$each": [], "$slice": 2_i64 } } },
                doc! { "$set": { "n": 1, "new": true, "sub.x": 3, "tags.1": "z" }, "$unset": { "gone": "" } },
            ])
        );
        // Legacy and replacement.
        let o = doc! { "$v": 1, "$set": { "a": 1 } };
        assert_eq!(
            update_of(&o).unwrap(),
            Update::Stages(vec![doc! { "$set": { "a": 1 } }])
        );
        let o = doc! { "_id": 3, "name": "u3" };
        assert_eq!(update_of(&o).unwrap(), Update::Replace(o));
        assert!(update_of(&doc! { "$v": 2 }).is_err());
    }

    #[test]
    fn targets_map_and_rename() {
        let t = RestoreTarget {
            only: NamespaceFilter {
                include: vec!["app.users".into()],
                exclude: vec![],
            },
            rename_to: Some("app2".into()),
            prefix: None,
        };
        assert_eq!(t.map("app", "users"), Some(("app2".into(), "users".into())));
        assert_eq!(t.map("app", "orders"), None);
        assert_eq!(t.map_ns("app.users"), Some(("app2".into(), "users".into())));
        let all = RestoreTarget::default();
        assert_eq!(all.map("crm", "x"), Some(("crm".into(), "x".into())));
        let drill = RestoreTarget {
            prefix: Some("drill_".into()),
            ..RestoreTarget::default()
        };
        assert_eq!(
            drill.map("crm", "x"),
            Some(("drill_crm".into(), "x".into()))
        );
        assert_eq!(
            drill.map_ns("app.users"),
            Some(("drill_app".into(), "users".into()))
        );
    }

    #[test]
    fn index_specs_lose_server_fields() {
        let i = doc! { "v": 2, "key": { "a": 1 }, "name": "a_1", "ns": "app.x", "entryFormat": 4 };
        assert_eq!(
            clean_index(&i),
            doc! { "v": 2, "key": { "a": 1 }, "name": "a_1" }
        );
    }
}
