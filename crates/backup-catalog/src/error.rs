//! The catalog's one error type. Every message says what failed, on which object, and what
//! to do; URLs are shown with their password replaced by `***`.

use std::path::PathBuf;

use backup_core::{ArtifactId, BackupId};

use crate::model::BackupStatus;

/// Whether retrying the same call can succeed. Retry layers read this instead of matching
/// on variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying will fail the same way (bad input, missing row, wrong state, schema problem).
    Permanent,
    /// The database was busy, unreachable or restarted; retrying later may succeed.
    Temporary,
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error(
        "unsupported catalog URL {url}: use sqlite://PATH (e.g. sqlite://var/catalog.db), \
         sqlite::memory:, or postgres://USER@HOST:PORT/DATABASE"
    )]
    UnsupportedUrl { url: String },

    #[error("invalid catalog URL {url}: {source}; check the URL syntax")]
    InvalidUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "could not create directory {} for the SQLite catalog {url}: {source}; \
         check permissions or choose another path",
        path.display()
    )]
    CreateDir {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "could not open the catalog at {url}: {source}; check that the database exists, is \
         running and accepts these credentials"
    )]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "could not migrate the catalog schema at {url}: {source}; if this catalog was written by \
         a newer backupd, upgrade this binary; never edit an applied migration"
    )]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    #[error("catalog query failed while {action}: {source}")]
    Query {
        action: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("invalid {field} {value:?}: {reason}")]
    InvalidValue {
        field: &'static str,
        value: String,
        reason: String,
    },

    #[error("source {name:?} is not registered in the catalog; register it (upsert_source) before starting a backup")]
    UnknownSource { name: String },

    #[error("backup {id} already exists in the catalog; use a new BackupId for each run")]
    BackupExists { id: BackupId },

    #[error("backup {id} not found in the catalog; list backups to find its id")]
    BackupNotFound { id: BackupId },

    #[error("no backup id starts with {prefix:?}; list backups to find its id")]
    PrefixNotFound { prefix: String },

    #[error(
        "backup id prefix {prefix:?} is ambiguous: it matches {}; type more characters",
        candidates.join(", ")
    )]
    AmbiguousPrefix {
        prefix: String,
        candidates: Vec<String>,
    },

    #[error("cannot {action} backup {id}: it is {status}, not running{}", not_running_hint(*status))]
    BackupNotRunning {
        id: BackupId,
        status: BackupStatus,
        action: &'static str,
    },

    #[error(
        "backup {id} is still running; wait for it to finish, or for it to be abandoned once \
         its heartbeat stops, before deleting it"
    )]
    BackupRunning { id: BackupId },

    #[error(
        "backup {id} is under legal hold, so it cannot be deleted; release the hold first \
         (`backupctl unhold {id}`) if it is no longer needed"
    )]
    LegalHold { id: BackupId },

    #[error(
        "WAL file {file_name} of source {source_name} is archived already with different \
         content (SHA-256 {archived_sha256}, now {new_sha256}); PostgreSQL never rewrites a WAL \
         file, so two clusters may be archiving to the same source: check archive_command on \
         every server"
    )]
    WalConflict {
        source_name: String,
        file_name: String,
        archived_sha256: String,
        new_sha256: String,
    },

    #[error(
        "backup {id} is being deleted (status deleting); it cannot be restored, verified, held \
         or imported; `backupctl prune` or `backupctl gc` finishes the deletion"
    )]
    BackupDeleting { id: BackupId },

    #[error("cannot complete backup {id}: {reason}")]
    Incomplete { id: BackupId, reason: String },

    #[error("artifact {id} not found in the catalog; record the artifact before its copies")]
    ArtifactNotFound { id: ArtifactId },

    #[error(
        "artifact {id} is already recorded with different values ({detail}); artifact ids must \
         not be reused"
    )]
    ArtifactConflict { id: ArtifactId, detail: String },

    #[error("no copy of artifact {artifact_id} in repository {repository:?} is recorded; record the copy first")]
    CopyNotFound {
        artifact_id: ArtifactId,
        repository: String,
    },

    #[error(
        "the catalog holds an invalid {field} {value:?}; it was not written by this version of \
         backupd or was edited by hand; run `catalog rebuild` if it cannot be repaired"
    )]
    Corrupt { field: &'static str, value: String },
}

fn not_running_hint(status: BackupStatus) -> &'static str {
    match status {
        BackupStatus::Abandoned => {
            " (it was marked abandoned because its heartbeat stopped); start a new backup"
        }
        BackupStatus::Running => "",
        BackupStatus::Complete | BackupStatus::Failed => {
            "; a finished backup cannot change, start a new backup"
        }
        BackupStatus::Deleting => "; it is being deleted by retention, start a new backup",
    }
}

impl CatalogError {
    /// Permanent vs Temporary, so retry layers know whether to try again.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CatalogError::Connect { source, .. } | CatalogError::Query { source, .. } => {
                sqlx_kind(source)
            }
            CatalogError::Migrate {
                source:
                    sqlx::migrate::MigrateError::Execute(e)
                    | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
                ..
            } => sqlx_kind(e),
            CatalogError::CreateDir { source, .. } => match source.kind() {
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut => {
                    ErrorKind::Temporary
                }
                _ => ErrorKind::Permanent,
            },
            _ => ErrorKind::Permanent,
        }
    }

    pub(crate) fn query(action: impl Into<String>, source: sqlx::Error) -> Self {
        CatalogError::Query {
            action: action.into(),
            source,
        }
    }
}

/// `map_err` helper: `.map_err(db("recording artifact ..."))`.
pub(crate) fn db(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CatalogError {
    let action = action.into();
    move |source| CatalogError::Query { action, source }
}

/// Busy/locked SQLite databases, lost connections, serialization failures and Postgres
/// restarts are worth retrying; everything else is not.
fn sqlx_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => {
            ErrorKind::Temporary
        }
        sqlx::Error::Database(db) => {
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // The code is SQLite's extended result code; the low byte is the primary code.
                let primary = db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|c| c & 0xff);
                return match primary {
                    Some(5 /* SQLITE_BUSY */ | 6 /* SQLITE_LOCKED */) => ErrorKind::Temporary,
                    _ => ErrorKind::Permanent,
                };
            }
            match db.code().as_deref() {
                // serialization_failure, deadlock_detected, lock_not_available,
                // insufficient_resources, too_many_connections, admin/crash shutdown,
                // cannot_connect_now, and the whole connection_exception class.
                Some(
                    "40001" | "40P01" | "55P03" | "53000" | "53300" | "57P01" | "57P02" | "57P03",
                ) => ErrorKind::Temporary,
                Some(code) if code.starts_with("08") => ErrorKind::Temporary,
                _ => ErrorKind::Permanent,
            }
        }
        _ => ErrorKind::Permanent,
    }
}

/// The URL with any password (in the user-info part or a `password=` query parameter)
/// replaced by `***`, so it can be logged and shown in errors.
pub fn redact_url(url: &str) -> String {
    let (before_query, query) = match url.find('?') {
        Some(q) => (&url[..q], Some(&url[q + 1..])),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match before_query.find("://") {
        Some(scheme_end) => {
            let rest_start = scheme_end + 3;
            let rest = &before_query[rest_start..];
            out.push_str(&before_query[..rest_start]);
            // The last '@' before the query ends the user info, even if an unencoded
            // password contains '/' or '@'.
            match rest.rfind('@') {
                Some(at) => {
                    let userinfo = &rest[..at];
                    match userinfo.find(':') {
                        Some(colon) => {
                            out.push_str(&userinfo[..colon]);
                            out.push_str(":***");
                        }
                        None => out.push_str(userinfo),
                    }
                    out.push_str(&rest[at..]);
                }
                None => out.push_str(rest),
            }
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _))
                    if key.eq_ignore_ascii_case("password")
                        || key.eq_ignore_ascii_case("sslpassword") =>
                {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        let cases = [
            (
                "postgres://bob:hunter2@db:5432/catalog",
                "postgres://bob:***@db:5432/catalog",
            ),
            ("postgres://bob@db/catalog", "postgres://bob@db/catalog"),
            ("postgres://b:p/w@d@db/c", "postgres://b:***@db/c"),
            (
                "postgresql://db/c?user=bob&password=hunter2&sslmode=require",
                "postgresql://db/c?user=bob&password=***&sslmode=require",
            ),
            ("sqlite://var/catalog.db", "sqlite://var/catalog.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("mysql://root:hunter2@h/db", "mysql://root:***@h/db"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "redacting {input}");
        }
    }
}
