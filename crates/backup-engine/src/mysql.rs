//! The MariaDB/MySQL source: consistent logical backups through sqlx, and restore into a
//! target server. The dump format is `backup_sources::mysql` (docs/sources/mysql.md).
//!
//! Backup: one connection, `REPEATABLE READ` and `START TRANSACTION WITH CONSISTENT
//! SNAPSHOT, READ ONLY`; schema (`SHOW CREATE TABLE/VIEW/PROCEDURE/FUNCTION/TRIGGER`), then
//! every table's rows streamed row by row into the data artifact through a bounded channel,
//! then `CHECKSUM TABLE` inside the same snapshot. A table whose definition changes while the
//! dump runs fails the backup (the dump would not restore to one consistent state).
//!
//! Restore: the backup is restored (and every entry's BLAKE3 checked) into a private staging
//! directory, then loaded into the target server, and each table's row count and
//! `CHECKSUM TABLE` are compared with the values recorded at backup time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use serde::Deserialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlRow};
use sqlx::{ConnectOptions, Connection, Executor, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use backup_catalog::redact_url;
use backup_sources::mysql::{self as format, DumpSummary, TableSummary};

use crate::error::{EngineError, Result};
use crate::restore::BackupSelector;
use crate::{Engine, Progress};

/// Databases a dump never includes (the server's own).
pub const SYSTEM_DATABASES: [&str; 4] =
    ["information_schema", "performance_schema", "mysql", "sys"];
/// Bytes of encoded rows sent to the pipeline at once.
const CHUNK: usize = 256 << 10;
/// Rows per INSERT on restore are limited by these (and by 65535 placeholders).
const INSERT_BATCH_BYTES: usize = 4 << 20;
const INSERT_BATCH_ROWS: usize = 2000;

/// `[[source]] kind = "mysql"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MysqlSourceConfig {
    /// `mysql://user@host:port/`, without a password.
    pub url: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Databases to back up; empty: every database except the server's own.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Databases left out.
    #[serde(default)]
    pub exclude_databases: Vec<String>,
}

impl MysqlSourceConfig {
    /// Checked at config load: `(key, message)` on failure.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        if !(self.url.starts_with("mysql://") || self.url.starts_with("mariadb://")) {
            return Err(("url".into(), "must be a mysql:// URL".into()));
        }
        if crate::config::url_has_password(&self.url) {
            return Err((
                "url".into(),
                "must not contain a password: use password-env or password-file".into(),
            ));
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            return Err((
                "password-env".into(),
                "give password-env or password-file, not both".into(),
            ));
        }
        for db in self.databases.iter().chain(&self.exclude_databases) {
            if db.is_empty() || db.len() > 64 {
                return Err((
                    "databases".into(),
                    format!("{db:?} is not a database name (1-64 characters)"),
                ));
            }
        }
        if let Some(both) = self
            .databases
            .iter()
            .find(|d| self.exclude_databases.contains(d))
        {
            return Err((
                "exclude-databases".into(),
                format!("{both:?} is both included and excluded"),
            ));
        }
        Ok(())
    }

    pub(crate) fn password(&self) -> Result<Option<String>> {
        read_password(self.password_env.as_deref(), self.password_file.as_deref())
    }
}

/// Reads a password from an environment variable or a file.
pub fn read_password(env: Option<&str>, file: Option<&Path>) -> Result<Option<String>> {
    let value = match (env, file) {
        (Some(var), _) => std::env::var(var).map_err(|e| {
            EngineError::Usage(format!(
                "cannot read the password from the environment variable {var}: {e}"
            ))
        })?,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            EngineError::Usage(format!(
                "password-file: cannot read {}: {e}",
                path.display()
            ))
        })?,
        (None, None) => return Ok(None),
    };
    Ok(Some(value.trim_end_matches(['\n', '\r']).to_owned()))
}

/// Names what went wrong talking to a server, with what to do.
fn sql_error(url: &str, what: &str, e: sqlx::Error) -> EngineError {
    let server = redact_url(url);
    if let sqlx::Error::Database(db) = &e {
        let code = db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number());
        match code {
            Some(1045) | Some(1698) => {
                return EngineError::Failed(format!(
                    "MySQL at {server}: authentication failed ({}); check the user in `url` and \
                     the password in password-env / password-file",
                    db.message()
                ))
            }
            Some(1044) | Some(1142) | Some(1227) => {
                return EngineError::Failed(format!(
                    "MySQL at {server}: {what}: permission denied ({}); see the required \
                     privileges in docs/sources/mysql.md",
                    db.message()
                ))
            }
            Some(1412) => {
                return EngineError::Failed(format!(
                    "MySQL at {server}: {what}: a table was altered during the dump ({}); the \
                     backup is not complete; run it again when no DDL is running",
                    db.message()
                ))
            }
            _ => {}
        }
    }
    if matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
    ) {
        return EngineError::Failed(format!(
            "MySQL at {server}: server unreachable while {what} ({e}); check `url` and that \
             the server runs"
        ));
    }
    EngineError::Failed(format!("MySQL at {server}: {what}: {e}"))
}

/// Connects to `url` with `password`.
pub async fn connect(url: &str, password: Option<&str>) -> Result<MySqlConnection> {
    let mut options = MySqlConnectOptions::from_str(url)
        .map_err(|e| EngineError::Usage(format!("MySQL URL {}: {e}", redact_url(url))))?;
    if let Some(p) = password {
        options = options.password(p);
    }
    let connect = options.connect();
    match tokio::time::timeout(std::time::Duration::from_secs(30), connect).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(sql_error(url, "connecting", e)),
        Err(_) => Err(EngineError::Failed(format!(
            "MySQL at {}: server unreachable (no answer within 30 s); check `url` and that the \
             server runs",
            redact_url(url)
        ))),
    }
}

/// A column as text (the text protocol sends every value as bytes).
pub(crate) fn text(row: &MySqlRow, index: usize) -> Option<String> {
    row.try_get_unchecked::<Option<Vec<u8>>, _>(index)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn bytes(row: &MySqlRow, index: usize) -> Option<Vec<u8>> {
    row.try_get_unchecked::<Option<Vec<u8>>, _>(index)
        .ok()
        .flatten()
}

/// `name` quoted as a MySQL identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `value` as a MySQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// `SET SESSION sql_mode = 'mode'` (routines and triggers keep the mode they were made in).
fn set_sql_mode(mode: &str) -> String {
    format!("SET SESSION sql_mode = {}", literal(mode))
}

/// The restore session: UTC, utf8mb4, no key checks while loading, strict (a value the
/// target cannot store exactly is an error, not a warning), 0 kept in AUTO_INCREMENT columns.
const RESTORE_SESSION: &str = "SET time_zone = '+00:00'; SET NAMES utf8mb4; \
     SET FOREIGN_KEY_CHECKS = 0; SET UNIQUE_CHECKS = 0; \
     SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'";

/// What the dump task hands the pipeline: entries, each as a start, chunks and an end.
pub enum DumpEvent {
    Start(String),
    Chunk(Vec<u8>),
    End,
}

type Hook = Arc<dyn Fn(String, String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

static BEFORE_TABLE_DATA: Mutex<Option<Hook>> = Mutex::new(None);

/// Test hook: runs before each table's rows are read (database, table). Lets a test change a
/// table at exactly that point of a dump.
#[doc(hidden)]
pub fn set_before_table_data_hook(hook: Option<Hook>) {
    *BEFORE_TABLE_DATA.lock().unwrap_or_else(|p| p.into_inner()) = hook;
}

/// Dump events buffered between the dump task and the pipeline (each up to [`CHUNK`]).
pub const DUMP_QUEUE: usize = 8;
pub(crate) const PIPELINE_GONE: &str = "the backup pipeline stopped reading the MySQL dump";

/// Sends `record` as JSON into the pipeline as the single entry `path`: the data artifact of
/// sources whose data stays in the service (Elasticsearch, RDS, Azure SQL) is this record.
pub(crate) async fn send_record<T: serde::Serialize>(
    tx: &mpsc::Sender<DumpEvent>,
    path: &str,
    record: &T,
    what: &str,
) -> Result<()> {
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| EngineError::Failed(format!("encoding the {what}: {e}")))?;
    for event in [
        DumpEvent::Start(path.into()),
        DumpEvent::Chunk(json),
        DumpEvent::End,
    ] {
        tx.send(event)
            .await
            .map_err(|_| EngineError::Failed(PIPELINE_GONE.into()))?;
    }
    Ok(())
}

/// Whether a dump failed only because the pipeline stopped reading it (the pipeline's own
/// error is then the cause).
pub fn is_pipeline_gone(e: &EngineError) -> bool {
    matches!(e, EngineError::Failed(m) if m == PIPELINE_GONE)
}

/// The blocking half: writes the dump's entries into the data stream and the manifest.
/// The dump must end with the entry `last`.
pub fn write_dump<W: std::io::Write, R: backup_sources::files::EntryRecorder>(
    mut rx: mpsc::Receiver<DumpEvent>,
    last: &str,
    data: &mut W,
    recorder: &mut R,
    progress: &mut dyn FnMut(u64),
) -> Result<backup_sources::files::TreeStats> {
    let mut tree = backup_sources::files::TreeBackup::new(
        backup_sources::files::UnreadablePolicy::Fail,
        data,
        recorder,
        progress,
    );
    let mut complete = false;
    while let Some(event) = rx.blocking_recv() {
        match event {
            DumpEvent::Start(path) => {
                complete = path == last;
                tree.add_stream(&path, &mut EntryReader::new(&mut rx), 0o600)?;
            }
            DumpEvent::Chunk(_) | DumpEvent::End => {
                return Err(EngineError::Failed(
                    "the MySQL dump sent data outside an entry".into(),
                ))
            }
        }
    }
    if !complete {
        return Err(EngineError::Failed(
            "the dump ended before its last entry; the backup is not complete".into(),
        ));
    }
    Ok(tree.finish())
}

struct Emitter {
    tx: mpsc::Sender<DumpEvent>,
}

impl Emitter {
    async fn send(&self, event: DumpEvent) -> Result<()> {
        self.tx
            .send(event)
            .await
            .map_err(|_| EngineError::Failed(PIPELINE_GONE.into()))
    }

    async fn entry(&self, path: String, content: Vec<u8>) -> Result<()> {
        self.send(DumpEvent::Start(path)).await?;
        self.send(DumpEvent::Chunk(content)).await?;
        self.send(DumpEvent::End).await
    }
}

struct TableInfo {
    name: String,
    kind: String,
    engine: Option<String>,
}

/// Dumps the configured databases into `tx` and returns what was dumped.
pub async fn dump(
    cfg: &MysqlSourceConfig,
    tx: mpsc::Sender<DumpEvent>,
    cancel: &CancellationToken,
) -> Result<DumpSummary> {
    let url = cfg.url.as_str();
    let password = cfg.password()?;
    let mut conn = connect(url, password.as_deref()).await?;
    let out = Emitter { tx };
    let result = dump_on(&mut conn, cfg, &out, cancel).await;
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    let _ = conn.close().await;
    result
}

pub(crate) async fn exec(
    conn: &mut MySqlConnection,
    url: &str,
    sql: &str,
    what: &str,
) -> Result<()> {
    // Through the connection (not `raw_sql(..).execute(conn)`): that form's future is not
    // provably `Send`, and drills run restores on spawned tasks.
    conn.execute(sqlx::raw_sql(sql))
        .await
        .map(|_| ())
        .map_err(|e| sql_error(url, what, e))
}

pub(crate) async fn rows(
    conn: &mut MySqlConnection,
    url: &str,
    sql: &str,
    what: &str,
) -> Result<Vec<MySqlRow>> {
    conn.fetch_all(sqlx::raw_sql(sql))
        .await
        .map_err(|e| sql_error(url, what, e))
}

async fn show_create(
    conn: &mut MySqlConnection,
    url: &str,
    kind: &str,
    db: &str,
    name: &str,
    column: usize,
) -> Result<String> {
    let sql = format!("SHOW CREATE {kind} {}.{}", ident(db), ident(name));
    let what = format!("SHOW CREATE {kind} {db}.{name}");
    let row = rows(conn, url, &sql, &what).await?;
    row.first().and_then(|r| text(r, column)).ok_or_else(|| {
        EngineError::Failed(format!(
            "MySQL at {}: {what} returned no definition; the user needs SELECT on \
                 mysql.proc (or SHOW_ROUTINE) and TRIGGER privileges (docs/sources/mysql.md)",
            redact_url(url)
        ))
    })
}

async fn dump_on(
    conn: &mut MySqlConnection,
    cfg: &MysqlSourceConfig,
    out: &Emitter,
    cancel: &CancellationToken,
) -> Result<DumpSummary> {
    let url = cfg.url.as_str();
    // An empty sql_mode: no ANSI_QUOTES (SHOW CREATE output must use backquotes) and no
    // NO_BACKSLASH_ESCAPES (string literals below escape backslashes).
    exec(
        conn,
        url,
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; SET time_zone = '+00:00'; \
         SET NAMES utf8mb4; SET SESSION sql_mode = ''",
        "setting up the session",
    )
    .await?;
    exec(
        conn,
        url,
        "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
        "starting the snapshot transaction",
    )
    .await?;
    let version = rows(conn, url, "SELECT VERSION()", "reading the version").await?;
    let server_version = version.first().and_then(|r| text(r, 0)).unwrap_or_default();
    let gtid = match rows(conn, url, "SELECT @@gtid_current_pos", "gtid").await {
        Ok(r) => r.first().and_then(|r| text(r, 0)),
        Err(_) => rows(conn, url, "SELECT @@gtid_executed", "gtid")
            .await
            .ok()
            .and_then(|r| r.first().and_then(|r| text(r, 0))),
    }
    .filter(|g| !g.is_empty());

    let all: Vec<String> = rows(
        conn,
        url,
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
        "listing databases",
    )
    .await?
    .iter()
    .filter_map(|r| text(r, 0))
    .collect();
    for wanted in &cfg.databases {
        if !all.contains(wanted) {
            return Err(EngineError::Failed(format!(
                "MySQL at {}: database {wanted:?} (in `databases`) does not exist or the user \
                 cannot see it",
                redact_url(url)
            )));
        }
    }
    let databases: Vec<String> = all
        .into_iter()
        .filter(|d| {
            if cfg.databases.is_empty() {
                !SYSTEM_DATABASES.contains(&d.as_str())
            } else {
                cfg.databases.contains(d)
            }
        })
        .filter(|d| !cfg.exclude_databases.contains(d))
        .collect();
    if databases.is_empty() {
        return Err(EngineError::Failed(format!(
            "MySQL at {}: no database to back up (check `databases` and `exclude-databases`)",
            redact_url(url)
        )));
    }

    let mut summaries = Vec::new();
    for db in &databases {
        // The default database: SHOW CREATE VIEW then leaves the names of its own tables
        // unqualified, so a view restored under another database name uses that database.
        exec(
            conn,
            url,
            &format!("USE {}", ident(db)),
            &format!("selecting database {db}"),
        )
        .await?;
        let tables: Vec<TableInfo> = rows(
            conn,
            url,
            &format!(
                "SELECT TABLE_NAME, TABLE_TYPE, ENGINE FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = {} ORDER BY TABLE_NAME",
                literal(db)
            ),
            &format!("listing the tables of {db}"),
        )
        .await?
        .iter()
        .filter_map(|r| {
            Some(TableInfo {
                name: text(r, 0)?,
                kind: text(r, 1).unwrap_or_default(),
                engine: text(r, 2),
            })
        })
        .collect();
        let mut schema = Vec::new();
        let mut views = Vec::new();
        let mut created = Vec::new();
        for t in &tables {
            if t.kind == "VIEW" {
                let stmt = show_create(conn, url, "VIEW", db, &t.name, 1).await?;
                format::write_statement(&mut views, &stmt);
            } else if t.kind == "BASE TABLE" || t.kind == "SYSTEM VERSIONED" {
                let stmt = show_create(conn, url, "TABLE", db, &t.name, 1).await?;
                format::write_statement(&mut schema, &stmt);
                created.push((t, stmt));
            }
        }
        let mut routines = Vec::new();
        for r in rows(
            conn,
            url,
            &format!(
                "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES \
                 WHERE ROUTINE_SCHEMA = {} ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
                literal(db)
            ),
            &format!("listing the routines of {db}"),
        )
        .await?
        {
            let (Some(name), Some(kind)) = (text(&r, 0), text(&r, 1)) else {
                continue;
            };
            let stmt = show_create(conn, url, &kind, db, &name, 2).await?;
            let mode = show_create(conn, url, &kind, db, &name, 1).await?;
            // A routine runs with the sql_mode it was created with: restore recreates it so.
            format::write_statement(&mut routines, &set_sql_mode(&mode));
            format::write_statement(&mut routines, &stmt);
        }
        let mut triggers = Vec::new();
        for r in rows(
            conn,
            url,
            &format!(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
                 WHERE TRIGGER_SCHEMA = {} ORDER BY EVENT_OBJECT_TABLE, ACTION_ORDER",
                literal(db)
            ),
            &format!("listing the triggers of {db}"),
        )
        .await?
        {
            let Some(name) = text(&r, 0) else { continue };
            let stmt = show_create(conn, url, "TRIGGER", db, &name, 2).await?;
            let mode = show_create(conn, url, "TRIGGER", db, &name, 1).await?;
            format::write_statement(&mut triggers, &set_sql_mode(&mode));
            format::write_statement(&mut triggers, &stmt);
        }
        out.entry(format::sql_path(db, "schema"), schema).await?;

        for (t, definition) in created {
            if cancel.is_cancelled() {
                return Err(EngineError::Failed("backup cancelled".into()));
            }
            let hook = BEFORE_TABLE_DATA
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(db.clone(), t.name.clone()).await;
            }
            let altered = || {
                EngineError::Failed(format!(
                    "MySQL at {}: table {db}.{} was altered during the dump (its definition \
                     changed after the snapshot began); the backup is not complete; run it \
                     again when no DDL is running",
                    redact_url(url),
                    t.name
                ))
            };
            let dumped = dump_table(conn, url, db, &t.name, out).await;
            // Reading the table holds its metadata lock until the end of the transaction, so
            // a definition still equal now stays equal: the rows match the schema stored.
            let now = show_create(conn, url, "TABLE", db, &t.name, 1).await;
            let rows_dumped = match (dumped, now) {
                (Err(e), _) if is_pipeline_gone(&e) => return Err(e),
                (_, Ok(now)) if now != definition => return Err(altered()),
                (Err(e), Err(gone)) => {
                    return Err(if gone.to_string().contains("doesn't exist") {
                        altered()
                    } else {
                        e
                    })
                }
                (Err(e), Ok(_)) => return Err(e),
                (Ok(_), Err(e)) => return Err(e),
                (Ok(n), Ok(_)) => n,
            };
            let checksum = rows(
                conn,
                url,
                &format!("CHECKSUM TABLE {}.{}", ident(db), ident(&t.name)),
                &format!("CHECKSUM TABLE {db}.{}", t.name),
            )
            .await?
            .first()
            .and_then(|r| text(r, 1))
            .and_then(|c| c.parse().ok());
            summaries.push(TableSummary {
                database: db.clone(),
                table: t.name.clone(),
                rows: rows_dumped,
                checksum,
                engine: t.engine.clone(),
            });
        }
        out.entry(format::sql_path(db, "views"), views).await?;
        out.entry(format::sql_path(db, "routines"), routines)
            .await?;
        out.entry(format::sql_path(db, "triggers"), triggers)
            .await?;
    }
    exec(conn, url, "COMMIT", "ending the snapshot transaction").await?;
    let summary = DumpSummary {
        format: format::DUMP_FORMAT,
        server_version,
        gtid_position: gtid,
        databases,
        tables: summaries,
    };
    let json = serde_json::to_vec_pretty(&summary)
        .map_err(|e| EngineError::Failed(format!("encoding the dump summary: {e}")))?;
    out.entry(format::SUMMARY_PATH.to_owned(), json).await?;
    Ok(summary)
}

/// The columns a dump stores (generated ones are recomputed by the server).
async fn stored_columns(
    conn: &mut MySqlConnection,
    url: &str,
    db: &str,
    table: &str,
) -> Result<Vec<String>> {
    let cols: Vec<String> = rows(
        conn,
        url,
        &format!(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} AND \
             TABLE_NAME = {} AND EXTRA NOT LIKE '%VIRTUAL GENERATED%' AND \
             EXTRA NOT LIKE '%STORED GENERATED%' ORDER BY ORDINAL_POSITION",
            literal(db),
            literal(table)
        ),
        &format!("listing the columns of {db}.{table}"),
    )
    .await?
    .iter()
    .filter_map(|r| text(r, 0))
    .collect();
    Ok(cols)
}

async fn dump_table(
    conn: &mut MySqlConnection,
    url: &str,
    db: &str,
    table: &str,
    out: &Emitter,
) -> Result<u64> {
    let columns = stored_columns(conn, url, db, table).await?;
    if columns.is_empty() {
        return Err(EngineError::Failed(format!(
            "MySQL at {}: table {db}.{table} has no columns the user can read",
            redact_url(url)
        )));
    }
    let select = format!(
        "SELECT {} FROM {}.{}",
        columns
            .iter()
            .map(|c| format!("CAST({} AS BINARY)", ident(c)))
            .collect::<Vec<_>>()
            .join(", "),
        ident(db),
        ident(table)
    );
    let what = format!("reading the rows of {db}.{table}");
    out.send(DumpEvent::Start(format::rows_path(db, table)))
        .await?;
    let mut buf = format::rows_header(&columns);
    let mut count = 0u64;
    {
        let mut stream = sqlx::raw_sql(&select).fetch(&mut *conn);
        while let Some(row) = stream
            .try_next()
            .await
            .map_err(|e| sql_error(url, &what, e))?
        {
            let values: Vec<Option<Vec<u8>>> = (0..columns.len()).map(|i| bytes(&row, i)).collect();
            format::encode_row(&mut buf, values.iter().map(|v| v.as_deref()));
            count += 1;
            if buf.len() >= CHUNK {
                out.send(DumpEvent::Chunk(std::mem::take(&mut buf))).await?;
            }
        }
    }
    buf.extend_from_slice(&format::rows_trailer(count));
    out.send(DumpEvent::Chunk(buf)).await?;
    out.send(DumpEvent::End).await?;
    Ok(count)
}

/// Reads one dump entry's chunks from the dump task (the blocking side of the channel).
pub struct EntryReader<'a> {
    rx: &'a mut mpsc::Receiver<DumpEvent>,
    pending: Vec<u8>,
    at: usize,
    ended: bool,
}

impl<'a> EntryReader<'a> {
    pub fn new(rx: &'a mut mpsc::Receiver<DumpEvent>) -> Self {
        EntryReader {
            rx,
            pending: Vec::new(),
            at: 0,
            ended: false,
        }
    }
}

impl std::io::Read for EntryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.pending.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(DumpEvent::Chunk(c)) => {
                    self.pending = c;
                    self.at = 0;
                }
                Some(DumpEvent::End) => self.ended = true,
                Some(DumpEvent::Start(p)) => {
                    return Err(std::io::Error::other(format!(
                        "dump entry {p} started before the previous one ended"
                    )))
                }
                None => {
                    return Err(std::io::Error::other(
                        "the MySQL dump stopped in the middle of an entry",
                    ))
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `backupctl restore SOURCE --target-url URL`.
#[derive(Debug, Clone)]
pub struct MysqlRestoreOptions {
    /// The mysql source the backup must belong to.
    pub source: String,
    /// `mysql://user@host:port/` of the server to load into (no password).
    pub target_url: String,
    pub password: Option<String>,
    /// Restore a single-database backup under this name.
    pub database: Option<String>,
    /// Restore each database `db` as `{prefix}{db}` (a drill's scratch databases).
    pub database_prefix: Option<String>,
    /// Drop and recreate target databases that are not empty.
    pub drop: bool,
    pub restore: crate::restore::RestoreOptions,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MysqlRestoreOutcome {
    pub backup_id: backup_core::BackupId,
    pub source: String,
    pub repository: String,
    pub target: String,
    pub databases: Vec<String>,
    pub tables: Vec<TableSummary>,
    pub rows: u64,
    /// Bytes of the backup fetched and staged.
    pub bytes: u64,
    pub seconds: f64,
}

/// A private staging directory under `$TMPDIR`, removed on drop.
pub(crate) struct Staging(PathBuf);

impl Staging {
    /// Creates the directory, readable by this user only (it holds decrypted data).
    pub(crate) fn new(what: &str, backup_id: backup_core::BackupId) -> Result<Staging> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!(
            "backupd-{what}-{backup_id}-{:08x}",
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| {
                EngineError::Failed(format!(
                    "creating the staging directory {}: {e} (set TMPDIR to a writable directory)",
                    path.display()
                ))
            })?;
        Ok(Staging(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Restores a mysql backup into the target server.
pub async fn run_mysql_restore(
    engine: &Engine,
    selector: &BackupSelector,
    options: &MysqlRestoreOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<MysqlRestoreOutcome> {
    let started = std::time::Instant::now();
    if crate::config::url_has_password(&options.target_url) {
        return Err(EngineError::Usage(
            "--target-url must not contain a password: use --target-password-env".into(),
        ));
    }
    let (_, source) = engine.config.source(&options.source)?;
    if !matches!(source.kind, crate::config::SourceKindConfig::Mysql(_)) {
        return Err(EngineError::Usage(format!(
            "source {} is a {} source; --target-url restores mysql sources",
            options.source,
            source.kind.kind_name()
        )));
    }
    let record = crate::restore::select_backup(engine, selector).await?;
    if record.source != options.source {
        return Err(EngineError::Usage(format!(
            "backup {} belongs to source {}, not {}",
            record.id, record.source, options.source
        )));
    }
    let target = options.target_url.as_str();
    // Reachable and allowed before anything is fetched.
    let mut conn = connect(target, options.password.as_deref()).await?;
    let staging = Staging::new("mysql-restore", record.id)?;
    let fetched = crate::restore::run_restore(
        engine,
        &BackupSelector::Id(record.id.to_string()),
        &staging.0,
        &options.restore,
        progress,
        cancel,
    )
    .await?;
    let summary: DumpSummary = serde_json::from_slice(
        &std::fs::read(staging.0.join(format::SUMMARY_PATH)).map_err(|e| {
            EngineError::Integrity(format!(
                "backup {}: no dump summary ({e}); it is not a complete mysql backup",
                record.id
            ))
        })?,
    )
    .map_err(|e| EngineError::Integrity(format!("backup {}: dump summary: {e}", record.id)))?;
    let renames: Vec<(String, String)> = match &options.database {
        Some(name) if summary.databases.len() == 1 => {
            vec![(summary.databases[0].clone(), name.clone())]
        }
        Some(_) => {
            return Err(EngineError::Usage(format!(
                "backup {} holds {} databases ({:?}); --database renames a single-database \
                 backup only",
                record.id,
                summary.databases.len(),
                summary.databases
            )))
        }
        None => summary
            .databases
            .iter()
            .map(|d| {
                let to = match &options.database_prefix {
                    Some(prefix) => format!("{prefix}{d}"),
                    None => d.clone(),
                };
                (d.clone(), to)
            })
            .collect(),
    };
    // Refuse before changing anything.
    for (_, to) in &renames {
        let objects = rows(
            &mut conn,
            target,
            &format!(
                "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {0}) \
                 + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {0})",
                literal(to)
            ),
            "checking the target database",
        )
        .await?
        .first()
        .and_then(|r| text(r, 0))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
        if objects > 0 && !options.drop {
            return Err(EngineError::Usage(format!(
                "target database {to} on {} is not empty ({objects} tables and routines); \
                 restore into an empty or new database, or pass --drop to replace it",
                redact_url(target)
            )));
        }
    }
    exec(
        &mut conn,
        target,
        RESTORE_SESSION,
        "setting up the restore session",
    )
    .await?;
    let mut total_rows = 0;
    for (from, to) in &renames {
        if options.drop {
            exec(
                &mut conn,
                target,
                &format!("DROP DATABASE IF EXISTS {}", ident(to)),
                &format!("dropping database {to}"),
            )
            .await?;
        }
        exec(
            &mut conn,
            target,
            &format!(
                "CREATE DATABASE IF NOT EXISTS {}; USE {}",
                ident(to),
                ident(to)
            ),
            &format!("creating database {to}"),
        )
        .await?;
        let sql_of = |what: &str| -> Result<Vec<String>> {
            let path = staging.0.join(format::sql_path(from, what));
            let text = std::fs::read_to_string(&path).map_err(|e| {
                EngineError::Integrity(format!(
                    "backup {}: {what} of database {from}: {e}",
                    record.id
                ))
            })?;
            Ok(format::statements(&text))
        };
        for stmt in sql_of("schema")? {
            exec(
                &mut conn,
                target,
                &stmt,
                &format!("creating a table in {to}"),
            )
            .await?;
        }
        for t in summary.tables.iter().filter(|t| &t.database == from) {
            if cancel.is_cancelled() {
                return Err(EngineError::Failed("restore cancelled".into()));
            }
            let path = staging.0.join(format::rows_path(from, &t.table));
            total_rows += load_table(&mut conn, target, to, &t.table, &path).await?;
        }
        // Views may use other views: create what can be created until nothing changes.
        let mut views = sql_of("views")?;
        while !views.is_empty() {
            let mut left = Vec::new();
            let mut last_error = None;
            for stmt in views.iter() {
                if let Err(e) =
                    exec(&mut conn, target, stmt, &format!("creating a view in {to}")).await
                {
                    left.push(stmt.clone());
                    last_error = Some(e);
                }
            }
            if left.len() == views.len() {
                return Err(last_error.expect("a failed view has an error"));
            }
            views = left;
        }
        for stmt in sql_of("routines")? {
            exec(
                &mut conn,
                target,
                &stmt,
                &format!("creating a routine in {to}"),
            )
            .await?;
        }
        for stmt in sql_of("triggers")? {
            exec(
                &mut conn,
                target,
                &stmt,
                &format!("creating a trigger in {to}"),
            )
            .await?;
        }
        // The routines and triggers set their own sql_mode.
        exec(
            &mut conn,
            target,
            RESTORE_SESSION,
            "setting up the restore session",
        )
        .await?;
    }
    // The restored tables must hold what the snapshot held.
    let mut tables = Vec::new();
    for t in &summary.tables {
        let to = &renames
            .iter()
            .find(|(f, _)| f == &t.database)
            .expect("renamed")
            .1;
        let count = rows(
            &mut conn,
            target,
            &format!("SELECT COUNT(*) FROM {}.{}", ident(to), ident(&t.table)),
            "counting restored rows",
        )
        .await?
        .first()
        .and_then(|r| text(r, 0))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
        if count != t.rows {
            return Err(EngineError::Integrity(format!(
                "restored table {to}.{} has {count} rows, the backup recorded {}",
                t.table, t.rows
            )));
        }
        let checksum = rows(
            &mut conn,
            target,
            &format!("CHECKSUM TABLE {}.{}", ident(to), ident(&t.table)),
            "checksumming a restored table",
        )
        .await?
        .first()
        .and_then(|r| text(r, 1))
        .and_then(|c| c.parse::<u64>().ok());
        if let (Some(expected), Some(found)) = (t.checksum, checksum) {
            if expected != found {
                return Err(EngineError::Integrity(format!(
                    "restored table {to}.{}: CHECKSUM TABLE is {found}, the backup recorded \
                     {expected} (a server of another version or row format can checksum \
                     differently: compare with `backupctl show`)",
                    t.table
                )));
            }
        }
        tables.push(TableSummary {
            database: to.clone(),
            table: t.table.clone(),
            rows: count,
            checksum,
            engine: t.engine.clone(),
        });
    }
    let _ = conn.close().await;
    Ok(MysqlRestoreOutcome {
        backup_id: record.id,
        source: record.source.clone(),
        repository: fetched.repository,
        bytes: fetched.bytes,
        target: redact_url(target),
        databases: renames.into_iter().map(|(_, to)| to).collect(),
        tables,
        rows: total_rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Loads one `.rows` entry into `db.table` with multi-row INSERTs.
async fn load_table(
    conn: &mut MySqlConnection,
    url: &str,
    db: &str,
    table: &str,
    path: &Path,
) -> Result<u64> {
    let what = format!("table data {}", path.display());
    let file =
        std::fs::File::open(path).map_err(|e| EngineError::Integrity(format!("{what}: {e}")))?;
    let mut reader = format::RowReader::open(std::io::BufReader::new(file), &what)
        .map_err(|e| EngineError::Integrity(e.to_string()))?;
    let columns = reader.columns().to_vec();
    let max_rows = INSERT_BATCH_ROWS.min(65535 / columns.len()).max(1);
    let prefix = format!(
        "INSERT INTO {}.{} ({}) VALUES ",
        ident(db),
        ident(table),
        columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    let mut batch: Vec<format::Row> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut loaded = 0u64;
    loop {
        // Reading a local file: small blocking reads between inserts are fine here.
        let row = reader
            .next_row()
            .map_err(|e| EngineError::Integrity(e.to_string()))?;
        let end = row.is_none();
        if let Some(row) = row {
            batch_bytes += row
                .iter()
                .map(|v| v.as_ref().map_or(1, Vec::len))
                .sum::<usize>();
            batch.push(row);
        }
        if !batch.is_empty()
            && (end || batch.len() >= max_rows || batch_bytes >= INSERT_BATCH_BYTES)
        {
            let sql = format!("{prefix}{}", vec![one.as_str(); batch.len()].join(", "));
            let mut query = sqlx::query(&sql).persistent(batch.len() == max_rows);
            for row in batch.drain(..) {
                for value in row {
                    query = query.bind(value);
                }
            }
            let n = conn
                .execute(query)
                .await
                .map_err(|e| sql_error(url, &format!("loading rows into {db}.{table}"), e))?;
            loaded += n.rows_affected();
            batch_bytes = 0;
        }
        if end {
            break;
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(source: &str) -> std::result::Result<crate::Config, String> {
        crate::config::parse_with_source("shop", "mysql", source)
    }

    #[test]
    fn config_parses_and_bad_settings_are_named() {
        let c = config(
            "url = \"mysql://backup@db:3306/\"\npassword-env = \"P\"\ndatabases = [\"a\", \"b\"]\nexclude-databases = [\"c\"]\n",
        )
        .unwrap();
        let crate::config::SourceKindConfig::Mysql(m) = &c.sources[0].kind else {
            panic!("not mysql");
        };
        assert_eq!(m.databases, ["a", "b"]);
        assert_eq!(c.sources[0].kind.kind_name(), "mysql");
        for (bad, needle) in [
            (
                "url = \"mysql://backup:hunter2@db/\"\n",
                "password-env or password-file",
            ),
            ("url = \"postgres://db/\"\n", "mysql:// URL"),
            (
                "url = \"mysql://db/\"\npassword-env = \"P\"\npassword-file = \"f\"\n",
                "not both",
            ),
            (
                "url = \"mysql://db/\"\ndatabases = [\"a\"]\nexclude-databases = [\"a\"]\n",
                "both included and excluded",
            ),
            ("url = \"mysql://db/\"\ntables = [\"a\"]\n", "tables"),
        ] {
            let err = config(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal("it's \\ x"), "'it''s \\\\ x'");
    }

    #[test]
    fn entry_reader_reads_one_entry_and_notices_a_cut() {
        use std::io::Read;
        let (tx, mut rx) = mpsc::channel(8);
        for e in [
            DumpEvent::Chunk(b"ab".to_vec()),
            DumpEvent::Chunk(b"cd".to_vec()),
            DumpEvent::End,
            DumpEvent::Chunk(b"x".to_vec()),
        ] {
            tx.try_send(e).unwrap();
        }
        drop(tx);
        let mut out = String::new();
        EntryReader::new(&mut rx).read_to_string(&mut out).unwrap();
        assert_eq!(out, "abcd");
        let err = EntryReader::new(&mut rx)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("stopped in the middle"), "{err}");
    }
}
