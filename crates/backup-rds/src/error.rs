//! The one error type of this crate.
//!
//! Every message says what failed, on which snapshot or database in which region, the AWS
//! error code and message where AWS gave one, and what the operator should do.
//! [`RdsError::kind`] tells retry layers whether trying again can help. No message carries a
//! credential: the SDK's errors hold none, and ours name only where secrets come from.

use std::error::Error as StdError;
use std::time::Duration;

use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use humantime::format_duration;

use crate::RdsResource;

/// Whether retrying the same operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying will fail the same way until something outside changes (configuration,
    /// permissions, quota, a missing snapshot, cancellation).
    Permanent,
    /// A transient condition (network, throttling, a resource busy for now); a retry may
    /// succeed.
    Temporary,
}

/// What went wrong with RDS.
#[derive(Debug, thiserror::Error)]
pub enum RdsError {
    #[error("the RDS settings are not usable: {problem}")]
    Config { problem: String },

    #[error(
        "snapshot {snapshot} not found in {region} ({code}: {message}); check the snapshot \
         identifier and the region: it may have been deleted already"
    )]
    SnapshotNotFound {
        snapshot: String,
        region: String,
        code: String,
        message: String,
    },

    #[error(
        "{resource} not found in {region} ({code}: {message}); check the source's \
         `db-instance` or `db-cluster` and `region` (and that the credentials belong to the \
         account that owns it)"
    )]
    ResourceNotFound {
        resource: RdsResource,
        region: String,
        code: String,
        message: String,
    },

    #[error(
        "{what} already exists in {region} ({code}: {message}); identifiers are unique per \
         region and account: pick another one, or delete the old one if it is a leftover"
    )]
    AlreadyExists {
        what: String,
        region: String,
        code: String,
        message: String,
    },

    #[error(
        "RDS refused a new snapshot in {region}: the account's manual snapshot quota is used \
         up ({code}: {message}); delete old manual snapshots (prune the source) or ask AWS \
         for a higher quota (Service Quotas: \"Manual DB instance snapshots\" or \"Manual DB \
         cluster snapshots\")"
    )]
    QuotaExceeded {
        region: String,
        code: String,
        message: String,
    },

    #[error(
        "{what} in {region} is in a state that does not allow {operation} ({code}: \
         {message}); wait until it is `available` (not stopped, starting, modifying, backing \
         up or being deleted) and try again"
    )]
    InvalidState {
        what: String,
        operation: &'static str,
        region: String,
        code: String,
        message: String,
    },

    #[error(
        "RDS cannot use the KMS key {key} in {region} ({code}: {message}); check that the key \
         exists in {region} and is enabled, and that backupd's credentials are allowed \
         kms:CreateGrant and kms:DescribeKey on it"
    )]
    KmsKeyNotAccessible {
        key: String,
        region: String,
        code: String,
        message: String,
    },

    #[error(
        "RDS denied {operation} in {region} ({code}: {message}); allow rds:{operation} to \
         backupd's credentials (the IAM policy is in docs/sources/rds.md)"
    )]
    AccessDenied {
        operation: &'static str,
        region: String,
        code: String,
        message: String,
    },

    #[error(
        "RDS rejected the credentials for {operation} in {region} ({code}: {message}); check \
         the source's access key id and secret access key, or the role backupd runs with"
    )]
    BadCredentials {
        operation: &'static str,
        region: String,
        code: String,
        message: String,
    },

    #[error(
        "cannot reach RDS at {endpoint} for {operation} in {region}: {detail}; check the \
         source's `endpoint` and `region`, and that this host can reach it (network, proxy, \
         firewall, VPC endpoint)"
    )]
    Unreachable {
        endpoint: String,
        operation: &'static str,
        region: String,
        detail: String,
    },

    #[error(
        "snapshot {snapshot} in {from_region} is encrypted (KMS key {source_key}), and KMS \
         keys do not leave their region: a copy to {to_region} needs a KMS key of \
         {to_region}; set `copy-kms-key-id` to a key there that backupd may use \
         (kms:CreateGrant, kms:DescribeKey)"
    )]
    EncryptedCopyNeedsKmsKey {
        snapshot: String,
        source_key: String,
        from_region: String,
        to_region: String,
    },

    #[error(
        "snapshot {snapshot} in {region} still {status} after {waited} (raise \
         `snapshot-timeout` if RDS needs longer); the snapshot is not deleted here",
        waited = format_duration(*.waited)
    )]
    SnapshotTimedOut {
        snapshot: String,
        region: String,
        status: String,
        waited: Duration,
    },

    #[error(
        "snapshot {snapshot} in {region} went to `{status}`: RDS could not complete it; see \
         the RDS events of the source, delete the snapshot and take a new one"
    )]
    SnapshotFailed {
        snapshot: String,
        region: String,
        status: String,
    },

    #[error(
        "restored {database} in {region} still {status} after {waited}; it is left in place: \
         follow it in the RDS console, or delete it and restore again with a longer timeout",
        waited = format_duration(*.waited)
    )]
    RestoreTimedOut {
        database: RdsResource,
        region: String,
        status: String,
        waited: Duration,
    },

    #[error(
        "restored {database} in {region} went to `{status}`; see its RDS events (instance \
         class, subnet group, parameter group, storage, KMS key), delete it and restore again"
    )]
    RestoreFailed {
        database: RdsResource,
        region: String,
        status: String,
    },

    #[error("{operation} in {region} was cancelled{left_behind}")]
    Cancelled {
        operation: &'static str,
        region: String,
        /// What the cancelled operation leaves in AWS, as "; ..." (or "").
        left_behind: String,
    },

    #[error("RDS {operation} in {region} failed ({code}: {message})")]
    Aws {
        operation: &'static str,
        region: String,
        code: String,
        message: String,
        temporary: bool,
    },

    #[error("unexpected answer from RDS to {operation} in {region}: {problem}")]
    Protocol {
        operation: &'static str,
        region: String,
        problem: String,
    },
}

impl RdsError {
    /// Permanent or temporary, for retry layers.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RdsError::Unreachable { .. }
            | RdsError::InvalidState { .. }
            | RdsError::SnapshotTimedOut { .. }
            | RdsError::RestoreTimedOut { .. } => ErrorKind::Temporary,
            RdsError::Aws { temporary, .. } if *temporary => ErrorKind::Temporary,
            _ => ErrorKind::Permanent,
        }
    }

    /// The AWS error code, where AWS answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RdsError::SnapshotNotFound { code, .. }
            | RdsError::ResourceNotFound { code, .. }
            | RdsError::AlreadyExists { code, .. }
            | RdsError::QuotaExceeded { code, .. }
            | RdsError::InvalidState { code, .. }
            | RdsError::KmsKeyNotAccessible { code, .. }
            | RdsError::AccessDenied { code, .. }
            | RdsError::BadCredentials { code, .. }
            | RdsError::Aws { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        matches!(self, RdsError::Cancelled { .. })
    }

    pub fn is_snapshot_not_found(&self) -> bool {
        matches!(self, RdsError::SnapshotNotFound { .. })
    }
}

/// What a failed request was about, so the error can name it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    /// A snapshot, by identifier or ARN.
    Snapshot(&'a str),
    /// The instance or cluster snapshotted or restored.
    Database(&'a RdsResource),
    /// A KMS key given with the request.
    KmsKey(&'a str),
}

/// Where the request went, for errors about reaching it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Called<'a> {
    pub operation: &'static str,
    pub region: &'a str,
    /// The configured endpoint URL, `None` = AWS's.
    pub endpoint: Option<&'a str>,
}

/// Error codes worth retrying later (after the SDK's own retries gave up).
const TEMPORARY_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestTimeout",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
];

/// Turns an SDK error into the [`RdsError`] that names what failed and what to do.
/// `subjects` are what the request was about, most specific first: the first of the right
/// kind is named when AWS says "not found" or "not accessible".
pub(crate) fn rds_error<E>(
    called: Called<'_>,
    subjects: &[Subject<'_>],
    error: SdkError<E>,
) -> RdsError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let Called {
        operation,
        region,
        endpoint,
    } = called;
    let region_owned = region.to_owned();
    match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            return RdsError::Unreachable {
                endpoint: endpoint.map_or_else(
                    || format!("https://rds.{region}.amazonaws.com"),
                    str::to_owned,
                ),
                operation,
                region: region_owned,
                detail: error_chain(&error),
            }
        }
        SdkError::ServiceError(_) => {}
        _ => {
            return RdsError::Protocol {
                operation,
                region: region_owned,
                problem: error_chain(&error),
            }
        }
    }
    // Some RDS-compatible APIs (moto's signature checks) nest the error one level deeper
    // (`<Errors><Error>`), which the SDK does not parse: read code and message from the body.
    let body = error
        .raw_response()
        .and_then(|r| r.body().bytes())
        .map(String::from_utf8_lossy);
    let from_body = |tag: &str| body.as_deref().and_then(|b| xml_text(b, tag));
    let code = error
        .code()
        .map(str::to_owned)
        .or_else(|| from_body("Code"))
        .unwrap_or_else(|| "unknown".to_owned());
    let message = error
        .message()
        .map(str::to_owned)
        .or_else(|| from_body("Message"))
        .unwrap_or_else(|| "no message".to_owned());
    let snapshot = subjects.iter().find_map(|s| match s {
        Subject::Snapshot(id) => Some(*id),
        _ => None,
    });
    let database = subjects.iter().find_map(|s| match s {
        Subject::Database(resource) => Some(*resource),
        _ => None,
    });
    let key = subjects.iter().find_map(|s| match s {
        Subject::KmsKey(key) => Some(*key),
        _ => None,
    });
    let what = snapshot
        .map(|id| format!("snapshot {id}"))
        .or_else(|| database.map(ToString::to_string))
        .unwrap_or_else(|| "the resource".to_owned());
    match code.as_str() {
        "DBSnapshotNotFound" | "DBSnapshotNotFoundFault" | "DBClusterSnapshotNotFoundFault" => {
            RdsError::SnapshotNotFound {
                snapshot: snapshot.unwrap_or("?").to_owned(),
                region: region_owned,
                code,
                message,
            }
        }
        "DBInstanceNotFound" | "DBInstanceNotFoundFault" | "DBClusterNotFoundFault" => {
            match database {
                Some(resource) => RdsError::ResourceNotFound {
                    resource: resource.clone(),
                    region: region_owned,
                    code,
                    message,
                },
                None => RdsError::Aws {
                    operation,
                    region: region_owned,
                    code,
                    message,
                    temporary: false,
                },
            }
        }
        "DBSnapshotAlreadyExists"
        | "DBSnapshotAlreadyExistsFault"
        | "DBClusterSnapshotAlreadyExistsFault"
        | "DBInstanceAlreadyExists"
        | "DBInstanceAlreadyExistsFault"
        | "DBClusterAlreadyExistsFault" => RdsError::AlreadyExists {
            what,
            region: region_owned,
            code,
            message,
        },
        "SnapshotQuotaExceeded" | "SnapshotQuotaExceededFault" => RdsError::QuotaExceeded {
            region: region_owned,
            code,
            message,
        },
        "InvalidDBInstanceState"
        | "InvalidDBInstanceStateFault"
        | "InvalidDBClusterStateFault"
        | "InvalidDBSnapshotState"
        | "InvalidDBSnapshotStateFault"
        | "InvalidDBClusterSnapshotStateFault" => RdsError::InvalidState {
            what,
            operation,
            region: region_owned,
            code,
            message,
        },
        "KMSKeyNotAccessibleFault" | "KMSKeyNotAccessible" => RdsError::KmsKeyNotAccessible {
            key: key.unwrap_or("of the snapshot").to_owned(),
            region: region_owned,
            code,
            message,
        },
        "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
            RdsError::AccessDenied {
                operation,
                region: region_owned,
                code,
                message,
            }
        }
        "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "AuthFailure"
        | "MissingAuthenticationToken" => RdsError::BadCredentials {
            operation,
            region: region_owned,
            code,
            message,
        },
        _ => {
            let status = error.raw_response().map(|r| r.status().as_u16());
            let temporary = TEMPORARY_CODES.contains(&code.as_str())
                || status.is_some_and(|s| s >= 500 || s == 429);
            RdsError::Aws {
                operation,
                region: region_owned,
                code,
                message,
                temporary,
            }
        }
    }
}

/// The text of the first `<tag>...</tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].to_owned())
}

/// "error: cause: cause of the cause", without the SDK's debug dumps.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their cause in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_rds::error::ErrorMetadata;
    use aws_sdk_rds::operation::create_db_snapshot::CreateDBSnapshotError;
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn service_error(status: u16, code: &str, message: &str) -> SdkError<CreateDBSnapshotError> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(
            CreateDBSnapshotError::generic(meta),
            HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty()),
        )
    }

    fn map(status: u16, code: &str) -> RdsError {
        let resource = RdsResource::Instance("orders".into());
        rds_error(
            Called {
                operation: "CreateDBSnapshot",
                region: "eu-west-1",
                endpoint: None,
            },
            &[
                Subject::Snapshot("snap-1"),
                Subject::Database(&resource),
                Subject::KmsKey("alias/backups"),
            ],
            service_error(status, code, "AWS says no"),
        )
    }

    #[test]
    fn codes_become_named_errors_with_advice() {
        let cases: &[(u16, &str, &str)] = &[
            (
                404,
                "DBSnapshotNotFound",
                "snapshot snap-1 not found in eu-west-1",
            ),
            (404, "DBInstanceNotFound", "DB instance orders not found"),
            (400, "SnapshotQuotaExceeded", "delete old manual snapshots"),
            (
                400,
                "InvalidDBInstanceState",
                "wait until it is `available`",
            ),
            (400, "KMSKeyNotAccessibleFault", "KMS key alias/backups"),
            (403, "AccessDenied", "allow rds:CreateDBSnapshot"),
            (
                403,
                "InvalidClientTokenId",
                "check the source's access key id",
            ),
            (400, "DBSnapshotAlreadyExists", "pick another one"),
        ];
        for (status, code, advice) in cases {
            let err = map(*status, code);
            let text = err.to_string();
            assert!(text.contains(code), "{code}: {text}");
            assert!(text.contains("AWS says no"), "{code}: {text}");
            assert!(text.contains(advice), "{code}: {text}");
            assert_eq!(err.code(), Some(*code));
        }
        assert!(matches!(
            map(400, "SnapshotQuotaExceeded"),
            RdsError::QuotaExceeded { .. }
        ));
        assert_eq!(
            map(400, "SnapshotQuotaExceeded").kind(),
            ErrorKind::Permanent
        );
        assert_eq!(
            map(400, "InvalidDBInstanceState").kind(),
            ErrorKind::Temporary
        );
    }

    #[test]
    fn unknown_codes_keep_code_and_say_whether_to_retry() {
        let err = map(400, "SomethingNew");
        assert!(matches!(err, RdsError::Aws { .. }), "{err:?}");
        assert!(
            err.to_string().contains("SomethingNew: AWS says no"),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(map(400, "Throttling").kind(), ErrorKind::Temporary);
        assert_eq!(map(503, "SomethingNew").kind(), ErrorKind::Temporary);
    }

    #[test]
    fn timeouts_say_how_long_in_human_units() {
        let err = RdsError::SnapshotTimedOut {
            snapshot: "snap-1".into(),
            region: "eu-west-1".into(),
            status: "creating".into(),
            waited: Duration::from_secs(30 * 60),
        };
        assert!(
            err.to_string()
                .starts_with("snapshot snap-1 in eu-west-1 still creating after 30m (raise "),
            "{err}"
        );
    }
}
