//! The MongoDB source, through the driver alone (no mongodump): collections' documents as
//! BSON, their options and index definitions, and the oplog (`local.oplog.rs`) between two
//! positions so that a restore replays to one consistent point in time.
//!
//! The model, in MongoDB's terms:
//!
//! - An oplog position is a BSON [`Timestamp`] (seconds, increment), strictly increasing
//!   on a replica set; [`OpTime`] is its text form `SECONDS.INCREMENT`.
//! - A logical backup takes a position before it copies anything (`start`: the primary's
//!   majority-committed write, see [`backup_start`]), copies every collection with reads
//!   that wait until their server has applied `start`, then reads the oplog entries after
//!   `start` up to the newest one (`end`, or `start` itself when nothing was written) and
//!   stores them. A change stream opened before `start` ([`watch::WriteWatch`]) proves
//!   most write-free copies so, and their oplog read is skipped. The copied documents are each somewhere between `start` and `end`;
//!   replaying those entries (they are idempotent by design) brings every collection to its
//!   state at `end`, or at any time between.
//! - [`oplog::apply_entry`] replays one entry through ordinary driver calls (inserts become
//!   upserts, updates `$v: 2` diffs become `$set`/`$unset`, commands become their commands),
//!   so it needs no `applyOps` privilege or support.

pub mod backup;
pub mod oplog;
pub mod restore;
pub mod tail;
pub mod watch;

use std::fmt;
use std::str::FromStr;

pub use mongodb;
pub use mongodb::bson;
use mongodb::bson::{doc, Document, Timestamp};
use mongodb::options::{ClientOptions, ReadPreference, SelectionCriteria};
use mongodb::Client;

/// What went wrong talking to MongoDB or with what it holds.
#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    /// A driver call failed. The driver's message names the server, never the URI's password.
    #[error("MongoDB: {what}: {source}")]
    Driver {
        what: String,
        #[source]
        source: mongodb::error::Error,
    },
    /// The oplog no longer holds the position a backup or an archive must continue from.
    #[error("the oplog has rolled past {position}: its oldest entry is now {oldest}, so the entries in between are lost; take a new full backup (`backupctl backup SOURCE`) and archiving continues from it")]
    OplogRolledOver { position: OpTime, oldest: OpTime },
    #[error("MongoDB: {0}")]
    Invalid(String),
    #[error("reading or writing backup data: {0}")]
    Io(#[from] std::io::Error),
}

impl MongoError {
    /// Wraps a driver error with what was being done.
    pub fn driver(what: impl Into<String>) -> impl FnOnce(mongodb::error::Error) -> Self {
        let what = what.into();
        move |source| MongoError::Driver { what, source }
    }

    /// Whether a retry may succeed (network errors, a server that is restarting).
    pub fn is_temporary(&self) -> bool {
        match self {
            MongoError::Driver { source, .. } => {
                use mongodb::error::ErrorKind;
                matches!(
                    *source.kind,
                    ErrorKind::Io(_)
                        | ErrorKind::ConnectionPoolCleared { .. }
                        | ErrorKind::ServerSelection { .. }
                ) || matches!(
                    server_code(source),
                    // HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress,
                    // PrimarySteppedDown, NotWritablePrimary, InterruptedAtShutdown,
                    // InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk, SocketException;
                    // a server restart kills cursors: CursorNotFound, CappedPositionLost,
                    // QueryPlanKilled, CursorKilled (a caller that resumes re-checks the oplog)
                    Some(
                        6 | 7
                            | 89
                            | 91
                            | 189
                            | 10107
                            | 11600
                            | 11602
                            | 13435
                            | 9001
                            | 43
                            | 136
                            | 175
                            | 237
                    )
                ) || source.contains_label("RetryableWriteError")
                    || source.contains_label("ResumableChangeStreamError")
            }
            MongoError::Io(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = MongoError> = std::result::Result<T, E>;

/// An oplog position: a BSON timestamp, written `SECONDS.INCREMENT` (`1796160775.5`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpTime(pub Timestamp);

impl OpTime {
    pub const ZERO: OpTime = OpTime(Timestamp {
        time: 0,
        increment: 0,
    });

    pub fn new(time: u32, increment: u32) -> Self {
        OpTime(Timestamp { time, increment })
    }

    /// The wall-clock second of the position (the oplog's `ts` seconds are Unix time).
    pub fn seconds(&self) -> u32 {
        self.0.time
    }

    /// The largest position within second `seconds` (for "up to this time").
    pub fn end_of_second(seconds: u32) -> Self {
        OpTime::new(seconds, u32::MAX)
    }

    fn key(&self) -> (u32, u32) {
        (self.0.time, self.0.increment)
    }
}

impl PartialOrd for OpTime {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OpTime {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for OpTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0.time, self.0.increment)
    }
}

impl fmt::Debug for OpTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpTime({self})")
    }
}

impl FromStr for OpTime {
    type Err = MongoError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            MongoError::Invalid(format!(
                "{s:?} is not an oplog position: expected SECONDS.INCREMENT, like 1796160775.5"
            ))
        };
        let (t, i) = s.split_once('.').ok_or_else(bad)?;
        Ok(OpTime::new(
            t.parse().map_err(|_| bad())?,
            i.parse().map_err(|_| bad())?,
        ))
    }
}

impl serde::Serialize for OpTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OpTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which namespaces a source covers: `include` patterns (all user databases when empty)
/// minus `exclude` patterns. A pattern is `db`, `db.*` (a whole database) or `db.coll`;
/// `*` alone matches everything. The `admin`, `local` and `config` databases and
/// `system.*` collections are never backed up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// Databases that hold server state, not application data.
pub const INTERNAL_DATABASES: [&str; 3] = ["admin", "local", "config"];

impl NamespaceFilter {
    /// Checks the patterns' shape; the error names the bad one.
    pub fn check(&self) -> Result<(), String> {
        for p in self.include.iter().chain(&self.exclude) {
            let (db, coll) = split_pattern(p);
            if db.is_empty()
                || db.contains(['/', '\\', ' ', '"', '$'])
                || coll.is_some_and(str::is_empty)
            {
                return Err(format!(
                    "{p:?} is not a namespace pattern: use `db`, `db.*` or `db.collection`"
                ));
            }
        }
        Ok(())
    }

    /// Whether any collection of database `db` may be covered.
    pub fn covers_database(&self, db: &str) -> bool {
        if INTERNAL_DATABASES.contains(&db) {
            return false;
        }
        let excluded_whole = self.exclude.iter().any(|p| {
            let (pdb, coll) = split_pattern(p);
            (pdb == "*" || pdb == db) && coll.is_none_or(|c| c == "*")
        });
        !excluded_whole
            && (self.include.is_empty()
                || self
                    .include
                    .iter()
                    .any(|p| split_pattern(p).0 == db || p == "*"))
    }

    /// Whether collection `coll` of database `db` is covered.
    pub fn covers(&self, db: &str, coll: &str) -> bool {
        if INTERNAL_DATABASES.contains(&db) || coll.starts_with("system.") {
            return false;
        }
        let matches = |p: &String| {
            let (pdb, pcoll) = split_pattern(p);
            (pdb == "*" || pdb == db) && pcoll.is_none_or(|c| c == "*" || c == coll)
        };
        (self.include.is_empty() || self.include.iter().any(matches))
            && !self.exclude.iter().any(matches)
    }
}

fn split_pattern(p: &str) -> (&str, Option<&str>) {
    match p.split_once('.') {
        Some((db, coll)) => (db, Some(coll)),
        None => (p, None),
    }
}

/// `read-preference` of a source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadPreferenceMode {
    Primary,
    PrimaryPreferred,
    /// Only secondaries: fails on a set with no reachable secondary.
    Secondary,
    /// Secondaries when there are any (the default: a one-member set still works).
    #[default]
    SecondaryPreferred,
    Nearest,
}

impl ReadPreferenceMode {
    fn to_driver(self) -> ReadPreference {
        match self {
            Self::Primary => ReadPreference::Primary,
            Self::PrimaryPreferred => ReadPreference::PrimaryPreferred { options: None },
            Self::Secondary => ReadPreference::Secondary { options: None },
            Self::SecondaryPreferred => ReadPreference::SecondaryPreferred { options: None },
            Self::Nearest => ReadPreference::Nearest { options: None },
        }
    }
}

/// Connects with `uri` (a secret: it is never put in an error or a log), reading with
/// `read_preference`. The first command checks that the server answers and is a replica
/// set member (a standalone server has no oplog).
pub async fn connect(uri: &str, read_preference: ReadPreferenceMode) -> Result<Client> {
    connect_with(uri, read_preference, true).await
}

/// Connects to a restore target: any server (a standalone one too, it needs no oplog).
pub async fn connect_target(uri: &str) -> Result<Client> {
    connect_with(uri, ReadPreferenceMode::Primary, false).await
}

async fn connect_with(
    uri: &str,
    read_preference: ReadPreferenceMode,
    need_oplog: bool,
) -> Result<Client> {
    let mut options = ClientOptions::parse(uri).await.map_err(|e| {
        // The parse error can quote the URI: say only what kind of error it is.
        MongoError::Invalid(format!(
            "the MongoDB URI is not valid ({}); check the source's `uri-env` / `uri-file`",
            match *e.kind {
                mongodb::error::ErrorKind::InvalidArgument { .. } => "invalid argument",
                mongodb::error::ErrorKind::DnsResolve { .. } => "DNS resolution failed",
                _ => "cannot be used",
            }
        ))
    })?;
    options.app_name.get_or_insert_with(|| "backupd".into());
    options.selection_criteria = Some(SelectionCriteria::ReadPreference(
        read_preference.to_driver(),
    ));
    options.server_selection_timeout = Some(
        options
            .server_selection_timeout
            .unwrap_or(std::time::Duration::from_secs(15)),
    );
    let client = Client::with_options(options).map_err(MongoError::driver("creating a client"))?;
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(MongoError::driver(
            "cannot reach the server (check the URI and that it runs)",
        ))?;
    if need_oplog && hello.get_str("setName").is_err() {
        return Err(MongoError::Invalid(
            "the server is not a replica set member, so it has no oplog: a consistent backup \
             and point-in-time restore need a replica set (a one-member set will do)"
                .into(),
        ));
    }
    Ok(client)
}

/// The oplog collection.
pub fn oplog(client: &Client) -> mongodb::Collection<Document> {
    client.database("local").collection("oplog.rs")
}

/// Where a logical backup starts: the primary's majority-committed write from `hello`
/// (`lastWrite.majorityOpTime`), without reading the oplog, which some servers answer with
/// a scan of all of it. Nothing at or before it can still become visible later (the
/// majority point has no oplog holes behind it); replaying the few entries between it and
/// the newest write again is harmless, as every replay is idempotent. A majority point
/// stalled far behind (a set whose secondaries are down) is not followed back further than
/// [`MAJORITY_LAG_LIMIT_SECS`] before the last write. Servers whose `hello` has no
/// `lastWrite` get the newest oplog entry.
pub async fn backup_start(client: &Client) -> Result<OpTime> {
    let hello = primary_hello(client).await?;
    match last_write(&hello) {
        Some(ts) => Ok(ts),
        None => oplog_last(client).await,
    }
}

/// The primary's answer to `hello` (its last write is in `lastWrite`).
pub(crate) async fn primary_hello(client: &Client) -> Result<Document> {
    client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        .await
        .map_err(MongoError::driver("asking the primary for its last write"))
}

/// How far before the last write a backup starts at most when the majority point lags.
pub const MAJORITY_LAG_LIMIT_SECS: u32 = 60;

/// The times a `hello` answer's `lastWrite` reports: the primary's newest write
/// (`opTime`) and its majority-committed point (`majorityOpTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastWrite {
    pub newest: Option<Timestamp>,
    pub majority: Option<Timestamp>,
}

impl LastWrite {
    pub(crate) fn of(hello: &Document) -> LastWrite {
        let last = hello.get_document("lastWrite").ok();
        let ts = |k: &str| last?.get_document(k).ok()?.get_timestamp("ts").ok();
        LastWrite {
            newest: ts("opTime"),
            majority: ts("majorityOpTime"),
        }
    }
}

/// The primary's newest write as its `hello` reports it (`None` from servers whose `hello`
/// has no `lastWrite`).
pub async fn newest_write(client: &Client) -> Result<Option<OpTime>> {
    let hello = primary_hello(client).await?;
    Ok(LastWrite::of(&hello)
        .newest
        .filter(|ts| ts.time > 0)
        .map(OpTime))
}

/// The start position a `hello` answer gives (see [`backup_start`]).
fn last_write(hello: &Document) -> Option<OpTime> {
    let LastWrite { newest, majority } = LastWrite::of(hello);
    let (newest, majority) = (
        newest.filter(|ts| ts.time > 0),
        majority.filter(|ts| ts.time > 0),
    );
    let start = match (newest, majority) {
        (Some(newest), Some(majority)) => {
            let floor = Timestamp {
                time: newest.time.saturating_sub(MAJORITY_LAG_LIMIT_SECS),
                increment: 0,
            };
            majority.max(floor).min(newest)
        }
        (newest, majority) => majority.or(newest)?,
    };
    Some(OpTime(start))
}

/// The position of the newest oplog entry.
pub async fn oplog_last(client: &Client) -> Result<OpTime> {
    oplog_edge(client, -1).await
}

/// The position of the oldest oplog entry still held.
pub async fn oplog_first(client: &Client) -> Result<OpTime> {
    oplog_edge(client, 1).await
}

/// Fails with [`MongoError::OplogRolledOver`] when the oplog's oldest entry is newer than
/// `position`: the entries after it may be gone.
pub async fn check_not_rolled_past(client: &Client, position: OpTime) -> Result<()> {
    let oldest = oplog_first(client).await?;
    if oldest > position {
        return Err(MongoError::OplogRolledOver { position, oldest });
    }
    Ok(())
}

async fn oplog_edge(client: &Client, direction: i32) -> Result<OpTime> {
    let entry = oplog(client)
        .find_one(doc! {})
        .sort(doc! { "$natural": direction })
        .projection(doc! { "ts": 1 })
        .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        .await
        .map_err(MongoError::driver("reading local.oplog.rs"))?
        .ok_or_else(|| MongoError::Invalid("local.oplog.rs is empty".into()))?;
    entry_ts(&entry)
}

/// The `ts` of an oplog entry.
pub fn entry_ts(entry: &Document) -> Result<OpTime> {
    entry
        .get_timestamp("ts")
        .map(OpTime)
        .map_err(|_| MongoError::Invalid("an oplog entry has no `ts` timestamp".into()))
}

/// One collection (or view) to back up: where it is and how to recreate it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionSpec {
    pub db: String,
    pub name: String,
    /// `collection`, `view` or `timeseries`.
    pub kind: String,
    /// `listCollections`' `options` (capped, validator, collation, viewOn, pipeline, ...).
    pub options: Document,
    /// `listIndexes`' index definitions, `_id_` included.
    pub indexes: Vec<Document>,
}

impl CollectionSpec {
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.db, self.name)
    }

    /// The metadata stored next to the documents: canonical extended JSON, so every BSON
    /// type survives.
    pub fn metadata_json(&self) -> Vec<u8> {
        let doc = doc! {
            "db": &self.db,
            "name": &self.name,
            "type": &self.kind,
            "options": self.options.clone(),
            "indexes": self.indexes.clone(),
        };
        let mut json =
            serde_json::to_vec_pretty(&bson::Bson::Document(doc).into_canonical_extjson())
                .expect("JSON values serialise");
        json.push(b'\n');
        json
    }

    pub fn from_metadata_json(bytes: &[u8]) -> Result<Self> {
        let bad = |why: String| MongoError::Invalid(format!("collection metadata: {why}"));
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let bson::Bson::Document(doc) =
            bson::Bson::try_from(value).map_err(|e| bad(e.to_string()))?
        else {
            return Err(bad("not a document".into()));
        };
        let text = |k: &str| {
            doc.get_str(k)
                .map(str::to_owned)
                .map_err(|_| bad(format!("no `{k}`")))
        };
        Ok(CollectionSpec {
            db: text("db")?,
            name: text("name")?,
            kind: text("type")?,
            options: doc.get_document("options").cloned().unwrap_or_default(),
            indexes: doc
                .get_array("indexes")
                .map(|a| a.iter().filter_map(|i| i.as_document().cloned()).collect())
                .unwrap_or_default(),
        })
    }
}

/// Every collection and view the filter covers, with options and indexes, sorted by
/// namespace.
pub async fn list_collections(
    client: &Client,
    filter: &NamespaceFilter,
) -> Result<Vec<CollectionSpec>> {
    let mut out = Vec::new();
    let databases = client
        .list_database_names()
        .await
        .map_err(MongoError::driver("listing databases"))?;
    for db_name in databases {
        if !filter.covers_database(&db_name) {
            continue;
        }
        let db = client.database(&db_name);
        let mut cursor = db
            .list_collections()
            .await
            .map_err(MongoError::driver(format!(
                "listing the collections of {db_name}"
            )))?
            .with_type::<Document>();
        let mut specs = Vec::new();
        while cursor.advance().await.map_err(MongoError::driver(format!(
            "listing the collections of {db_name}"
        )))? {
            let info = cursor
                .deserialize_current()
                .map_err(MongoError::driver(format!(
                    "listing the collections of {db_name}"
                )))?;
            let name = info.get_str("name").unwrap_or_default().to_owned();
            if name.is_empty() || !filter.covers(&db_name, &name) {
                continue;
            }
            specs.push((
                name,
                info.get_str("type").unwrap_or("collection").to_owned(),
                info.get_document("options").cloned().unwrap_or_default(),
            ));
        }
        for (name, kind, options) in specs {
            let indexes = if kind == "view" {
                Vec::new()
            } else {
                list_indexes(&db, &name).await?
            };
            out.push(CollectionSpec {
                db: db_name.clone(),
                name,
                kind,
                options,
                indexes,
            });
        }
    }
    out.sort_by_key(CollectionSpec::namespace);
    Ok(out)
}

async fn list_indexes(db: &mongodb::Database, coll: &str) -> Result<Vec<Document>> {
    let what = || format!("listing the indexes of {}.{coll}", db.name());
    let mut cursor = match db.collection::<Document>(coll).list_indexes().await {
        Ok(c) => c.with_type::<Document>(),
        // Dropped between listing and now: the oplog replays the drop.
        Err(e) if is_namespace_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(MongoError::driver(what())(e)),
    };
    let mut out = Vec::new();
    while cursor.advance().await.map_err(MongoError::driver(what()))? {
        let mut index = cursor
            .deserialize_current()
            .map_err(MongoError::driver(what()))?;
        index.remove("ns");
        out.push(index);
    }
    Ok(out)
}

/// Server error code 26: the collection or database does not exist.
pub fn is_namespace_not_found(e: &mongodb::error::Error) -> bool {
    server_code(e) == Some(26)
}

/// The server's error code, if the server answered with one.
pub fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::ErrorKind;
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::InsertMany(i) => i
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code),
        _ => None,
    }
}

/// The name a collection's files get in a backup: `/` and `%` percent-encoded (database
/// names cannot hold either; collection names may hold `/`).
pub fn file_stem(coll: &str) -> String {
    coll.replace('%', "%25").replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_start_at_the_majority_write_of_hello() {
        let ts = |time, increment| Timestamp { time, increment };
        let hello = doc! { "lastWrite": {
            "opTime": { "ts": ts(20, 2), "t": 1_i64 },
            "majorityOpTime": { "ts": ts(20, 1), "t": 1_i64 },
        } };
        assert_eq!(last_write(&hello), Some(OpTime::new(20, 1)));
        // A stalled majority point is followed back a minute at most.
        let hello = doc! { "lastWrite": {
            "opTime": { "ts": ts(5000, 2), "t": 1_i64 },
            "majorityOpTime": { "ts": ts(100, 1), "t": 1_i64 },
        } };
        assert_eq!(last_write(&hello), Some(OpTime::new(4940, 0)));
        let hello = doc! { "lastWrite": { "opTime": { "ts": ts(21, 3), "t": 1_i64 } } };
        assert_eq!(last_write(&hello), Some(OpTime::new(21, 3)));
        assert_eq!(last_write(&doc! { "isWritablePrimary": true }), None);
        let empty = doc! { "lastWrite": { "majorityOpTime": { "ts": ts(0, 0) } } };
        assert_eq!(last_write(&empty), None);
    }

    #[test]
    fn optimes_order_print_and_parse() {
        let a = OpTime::new(10, 5);
        let b = OpTime::new(11, 0);
        assert!(a < b && OpTime::ZERO < a && b < OpTime::end_of_second(11));
        assert_eq!(a.to_string(), "10.5");
        assert_eq!("10.5".parse::<OpTime>().unwrap(), a);
        for bad in ["10", "x.1", "1.-1", ""] {
            assert!(bad.parse::<OpTime>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"10.5\"");
        assert_eq!(serde_json::from_str::<OpTime>(&json).unwrap(), a);
    }

    #[test]
    fn namespace_filters() {
        let all = NamespaceFilter::default();
        assert!(all.covers("app", "users"));
        assert!(!all.covers("admin", "users") && !all.covers("local", "oplog.rs"));
        assert!(!all.covers("app", "system.views"));
        assert!(!all.covers_database("config"));

        let f = NamespaceFilter {
            include: vec!["app".into(), "crm.contacts".into()],
            exclude: vec!["app.cache".into(), "tmp.*".into()],
        };
        assert!(f.check().is_ok());
        assert!(f.covers("app", "users") && !f.covers("app", "cache"));
        assert!(f.covers("crm", "contacts") && !f.covers("crm", "leads"));
        assert!(f.covers_database("crm") && !f.covers_database("billing"));
        let g = NamespaceFilter {
            include: vec![],
            exclude: vec!["tmp.*".into()],
        };
        assert!(!g.covers_database("tmp") && !g.covers("tmp", "x") && g.covers("app", "x"));

        for bad in ["", "a.", "a b.c", "$x"] {
            let f = NamespaceFilter {
                include: vec![bad.into()],
                exclude: vec![],
            };
            assert!(f.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_stems_escape_slashes() {
        assert_eq!(file_stem("a/b%c"), "a%2Fb%25c");
        assert_eq!(file_stem("users"), "users");
    }

    #[test]
    fn metadata_round_trips_every_type() {
        let spec = CollectionSpec {
            db: "app".into(),
            name: "events".into(),
            kind: "collection".into(),
            options: doc! { "capped": true, "size": 4096_i64, "max": 10_i32, "validator": { "n": { "$gte": 1.5 } } },
            indexes: vec![
                doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
                doc! { "v": 2, "key": { "at": -1_i64 }, "name": "at_-1", "expireAfterSeconds": 60 },
            ],
        };
        let back = CollectionSpec::from_metadata_json(&spec.metadata_json()).unwrap();
        assert_eq!(back, spec);
    }
}
