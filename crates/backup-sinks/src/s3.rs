//! A repository in an S3 bucket (AWS or any S3-compatible store), under an optional prefix.
//!
//! Object `<key>` is stored as `<prefix>/<key>`. A put streams the body into memory one part
//! at a time: an object smaller than the part size goes up with one `PutObject`, a larger one
//! as a multipart upload with up to `concurrency` parts in flight (and in memory) at once.
//! Every request carries the SHA-256 of its bytes (`x-amz-checksum-sha256`), which S3
//! verifies, and the sink hashes the whole stream itself for the [`PutReceipt`]; single-part
//! objects also keep that hash as metadata (`x-amz-meta-sha256`).
//!
//! Objects are never overwritten: a put first looks for the key, and creates it with
//! `If-None-Match: *` so that of two concurrent puts only one can win. Putting identical
//! bytes again succeeds without uploading them (compared by size and the stored hash; objects
//! without one, i.e. multipart ones, are read back and hashed). A failed, cancelled or
//! dropped put aborts its multipart upload; [`Sink::sweep_incomplete`] aborts uploads whose
//! writer died before it could.
//!
//! With [`S3Options::object_lock`] every new object carries an Object Lock retention (WORM):
//! nobody, the sink included, can delete or overwrite that version before the date passes
//! (in governance mode, only principals allowed to bypass it). [`S3Sink::set_legal_hold`]
//! adds an open-ended hold. Objects in GLACIER or DEEP_ARCHIVE must be thawed with
//! [`S3Sink::request_restore`] before `get` can read them; [`S3Sink::thaw_state`] says how far
//! that is.
//!
//! Requests are retried by the SDK (standard mode, 5 attempts) on throttling, 5xx and
//! connection errors; what still fails becomes [`SinkError::Remote`], whose `kind()` says
//! whether a later retry can help.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::{ByteStream as S3Body, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, GlacierJobParameters,
    ObjectLockEnabled, ObjectLockLegalHold, ObjectLockLegalHoldStatus, RestoreRequest,
    StorageClass, Tier,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stream::{recv_or_cancel, CHANNEL_CAPACITY};
use crate::{
    validate_key, validate_prefix, ByteStream, Capabilities, IoOp, ObjectInfo, PutReceipt, Sink,
    SinkError,
};

/// Default size of a multipart-upload part.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// S3's smallest part size (all parts but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's largest part size.
pub const MAX_PART_SIZE: usize = 5 << 30;
/// Default number of parts uploaded (and held in memory) at once per put.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// S3 allows at most this many parts per upload.
const MAX_PARTS: i32 = 10_000;
/// The part size doubles after every this many parts, so one upload can hold
/// `part_size * 62_000` bytes (about 1 TB with the default part size) instead of
/// `part_size * 10_000`, without configuration; memory use grows along with it.
const PARTS_PER_SIZE_STEP: i32 = 2_000;
/// User metadata holding the hex SHA-256 of the whole object (`x-amz-meta-sha256`).
const SHA256_METADATA: &str = "sha256";
/// Request attempts (the first one included) for throttling, 5xx and connection errors.
const MAX_ATTEMPTS: u32 = 5;
/// How long aborting an upload may take on error paths before we give up (sweep catches it).
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks of a download smaller than this are merged before going into the stream.
const MIN_GET_CHUNK: usize = 256 << 10;

/// Where a secret comes from. Secrets are read once, by [`S3Sink::new`], and never logged;
/// there is deliberately no way to put one in the configuration itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the backupd process.
    Env(String),
    /// A file holding only the secret (surrounding whitespace is ignored).
    File(PathBuf),
}

/// How the sink authenticates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum S3Credentials {
    /// The standard AWS chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, the shared
    /// config and credentials files (`AWS_PROFILE`), web identity (EKS), ECS and EC2
    /// instance roles.
    #[default]
    Default,
    /// A fixed access key, read from the named sources.
    Static {
        access_key_id: SecretSource,
        secret_access_key: SecretSource,
    },
}

/// Object Lock retention given to every object the sink writes (`object-lock = { mode =
/// "governance", days = 30 }` in a repository's config). The bucket must have Object Lock
/// enabled; [`S3Sink::verify`] checks that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ObjectLock {
    pub mode: ObjectLockMode,
    /// Each object is retained until this many days after it was written (1 to
    /// [`MAX_LOCK_DAYS`]).
    pub days: u32,
}

/// Longest retention accepted: 100 years, S3's limit for a bucket's default retention.
pub const MAX_LOCK_DAYS: u32 = 36_500;

/// How strictly S3 enforces an object's retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectLockMode {
    /// Principals with `s3:BypassGovernanceRetention` may still delete or shorten it.
    #[serde(alias = "GOVERNANCE")]
    Governance,
    /// Nobody, not even the account's root user, can delete the version before the date.
    #[serde(alias = "COMPLIANCE")]
    Compliance,
}

impl ObjectLockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectLockMode::Governance => "governance",
            ObjectLockMode::Compliance => "compliance",
        }
    }

    fn to_s3(self) -> aws_sdk_s3::types::ObjectLockMode {
        match self {
            ObjectLockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
            ObjectLockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
        }
    }
}

impl fmt::Display for ObjectLockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How fast (and how expensively) S3 thaws an archived object. Glacier Flexible Retrieval
/// takes minutes (expedited), 3-5 hours (standard) or 5-12 hours (bulk); Deep Archive has no
/// expedited tier and takes up to 12 (standard) or 48 hours (bulk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreTier {
    Bulk,
    #[default]
    Standard,
    Expedited,
}

impl RestoreTier {
    pub const ALL: [RestoreTier; 3] = [
        RestoreTier::Bulk,
        RestoreTier::Standard,
        RestoreTier::Expedited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestoreTier::Bulk => "bulk",
            RestoreTier::Standard => "standard",
            RestoreTier::Expedited => "expedited",
        }
    }

    fn to_s3(self) -> Tier {
        match self {
            RestoreTier::Bulk => Tier::Bulk,
            RestoreTier::Standard => Tier::Standard,
            RestoreTier::Expedited => Tier::Expedited,
        }
    }
}

impl fmt::Display for RestoreTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A restore tier name that is not one of [`RestoreTier::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown restore tier {0:?}: use bulk, standard or expedited")]
pub struct UnknownRestoreTier(pub String);

impl std::str::FromStr for RestoreTier {
    type Err = UnknownRestoreTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RestoreTier::ALL
            .into_iter()
            .find(|tier| tier.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownRestoreTier(s.to_owned()))
    }
}

/// What [`S3Sink::request_restore`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreRequested {
    /// S3 accepted the request; the object is readable once [`S3Sink::thaw_state`] says
    /// [`ThawState::Restored`].
    Started,
    /// An earlier request is still being processed.
    AlreadyInProgress,
    /// A restored copy exists already (S3 moved its expiry to `days` from now).
    AlreadyAvailable,
    /// The object is not in an archive storage class: `get` reads it directly.
    NotArchived,
}

/// Whether an object can be read, from its storage class and `x-amz-restore` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThawState {
    /// Not in GLACIER or DEEP_ARCHIVE: readable at any time.
    NotArchived,
    /// Archived and not restored: `get` fails until a restore finishes.
    Frozen,
    /// A restore was requested and has not finished.
    InProgress,
    /// A temporary copy is readable until `expires` (as S3 gives it, an HTTP date such as
    /// "Fri, 21 Dec 2012 00:00:00 GMT").
    Restored { expires: Option<String> },
}

/// Settings of an [`S3Sink`]; [`S3Options::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Repository name, used in errors and logs.
    pub name: String,
    pub bucket: String,
    /// Signing region, e.g. `eu-west-1` (any value for most S3-compatible stores).
    pub region: String,
    /// Keys are stored under `<prefix>/`; "" stores them at the bucket's root.
    pub prefix: String,
    /// Endpoint URL of an S3-compatible store (e.g. `http://127.0.0.1:8333`); `None` = AWS.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint` (most
    /// S3-compatible stores need this).
    pub force_path_style: bool,
    /// Size of multipart-upload parts: at least [`MIN_PART_SIZE`], at most
    /// [`MAX_PART_SIZE`]. Objects smaller than this go up in a single request.
    pub part_size: usize,
    /// Parts uploaded at once per put; a put holds at most this many parts in memory.
    pub concurrency: usize,
    /// Storage class of new objects (`STANDARD_IA`, `GLACIER_IR`, ...); `None` = the
    /// bucket's default.
    pub storage_class: Option<String>,
    pub credentials: S3Credentials,
    /// Object Lock retention for every object written; `None` = none (or the bucket's
    /// default retention, if it has one).
    pub object_lock: Option<ObjectLock>,
}

impl S3Options {
    pub fn new(
        name: impl Into<String>,
        bucket: impl Into<String>,
        region: impl Into<String>,
    ) -> Self {
        S3Options {
            name: name.into(),
            bucket: bucket.into(),
            region: region.into(),
            prefix: String::new(),
            endpoint: None,
            force_path_style: false,
            part_size: DEFAULT_PART_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            storage_class: None,
            credentials: S3Credentials::Default,
            object_lock: None,
        }
    }
}

/// A repository in an S3 bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct S3Sink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    bucket: String,
    /// "" or "<prefix>/".
    prefix: String,
    client: Client,
    part_size: usize,
    concurrency: usize,
    storage_class: Option<StorageClass>,
    object_lock: Option<ObjectLock>,
}

impl S3Sink {
    /// Checks the options, reads the credentials and builds the client. Makes no request:
    /// call [`S3Sink::verify`] to check the bucket is reachable and the credentials work.
    pub async fn new(options: S3Options) -> Result<S3Sink, SinkError> {
        let S3Options {
            name,
            bucket,
            region,
            prefix,
            endpoint,
            force_path_style,
            part_size,
            concurrency,
            storage_class,
            credentials,
            object_lock,
        } = options;
        let prefix = prefix.trim_matches('/').to_owned();
        let location = PathBuf::from(format!("s3://{bucket}/{prefix}"));
        let unusable = |problem: String| SinkError::Unusable {
            repository: name.clone(),
            path: location.clone(),
            problem,
        };
        if name.is_empty() {
            return Err(unusable("the repository name is empty".into()));
        }
        if !(3..=63).contains(&bucket.len()) || bucket.contains('/') {
            return Err(unusable(format!(
                "{bucket:?} is not a bucket name (3 to 63 characters, no '/')"
            )));
        }
        if region.is_empty() {
            return Err(unusable(
                "no region is configured: set the bucket's region (e.g. \"eu-west-1\"; any \
                 value such as \"us-east-1\" for most S3-compatible stores)"
                    .into(),
            ));
        }
        if !prefix.is_empty() {
            validate_key(&prefix)
                .map_err(|e| unusable(format!("the prefix {prefix:?} is not usable: {e}")))?;
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(unusable(format!(
                "the part size {part_size} is outside S3's limits ({MIN_PART_SIZE} to \
                 {MAX_PART_SIZE} bytes)"
            )));
        }
        if concurrency == 0 {
            return Err(unusable("the upload concurrency must be at least 1".into()));
        }
        if let Some(lock) = object_lock {
            if !(1..=MAX_LOCK_DAYS).contains(&lock.days) {
                return Err(unusable(format!(
                    "the object-lock retention of {} days is outside 1 to {MAX_LOCK_DAYS} days",
                    lock.days
                )));
            }
        }
        let storage_class = match storage_class {
            None => None,
            Some(class) if StorageClass::values().contains(&class.as_str()) => {
                Some(StorageClass::from(class.as_str()))
            }
            Some(class) => {
                return Err(unusable(format!(
                    "unknown storage class {class:?}; S3 knows {}",
                    StorageClass::values().join(", ")
                )))
            }
        };

        // HTTPS with rustls on ring (no aws-lc, no legacy hyper); plain HTTP works too.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(region))
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .build(),
            );
        if let S3Credentials::Static {
            access_key_id,
            secret_access_key,
        } = &credentials
        {
            let id =
                read_secret(access_key_id).map_err(|p| unusable(format!("access key id: {p}")))?;
            let secret = read_secret(secret_access_key)
                .map_err(|p| unusable(format!("secret access key: {p}")))?;
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "backupd-config",
            ));
        }
        let sdk_config = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&sdk_config).force_path_style(force_path_style);
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint);
        }
        let client = Client::from_conf(config.build());
        let prefix = if prefix.is_empty() {
            prefix
        } else {
            format!("{prefix}/")
        };
        Ok(S3Sink {
            inner: Arc::new(Inner {
                name,
                bucket,
                prefix,
                client,
                part_size,
                concurrency,
                storage_class,
                object_lock,
            }),
        })
    }

    /// Checks that the bucket exists and the credentials may list it, and, with
    /// `object_lock` configured, that the bucket has Object Lock enabled (S3 refuses locked
    /// writes otherwise), so misconfiguration shows at startup rather than in the middle of
    /// a backup.
    pub async fn verify(&self, cancel: &CancellationToken) -> Result<(), SinkError> {
        let inner = &self.inner;
        let request = inner
            .client
            .list_objects_v2()
            .bucket(&inner.bucket)
            .prefix(&inner.prefix)
            .max_keys(1)
            .send();
        or_cancel(cancel, request)
            .await?
            .map_err(|e| inner.error(IoOp::List, &inner.prefix, e))?;
        if let Some(lock) = inner.object_lock {
            inner.verify_object_lock(lock, cancel).await?;
        }
        Ok(())
    }

    /// The retention every written object gets, if configured.
    pub fn object_lock(&self) -> Option<&ObjectLock> {
        self.inner.object_lock.as_ref()
    }

    /// Places (`on`) or removes a legal hold on the current version of `key`: while held,
    /// the version cannot be deleted, whatever its retention. The bucket must have Object
    /// Lock enabled.
    pub async fn set_legal_hold(
        &self,
        key: &str,
        on: bool,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        validate_key(key)?;
        let inner = &self.inner;
        let full_key = inner.full_key(key);
        // Some stores (SeaweedFS, moto) answer a hold on a missing key with a 500, which the
        // SDK would retry for seconds.
        if inner.head_object(key, cancel).await?.is_none() {
            return Err(SinkError::not_found(&inner.name, key));
        }
        let status = if on {
            ObjectLockLegalHoldStatus::On
        } else {
            ObjectLockLegalHoldStatus::Off
        };
        let request = inner
            .client
            .put_object_legal_hold()
            .bucket(&inner.bucket)
            .key(&full_key)
            .legal_hold(ObjectLockLegalHold::builder().status(status).build())
            .send();
        match or_cancel(cancel, request).await? {
            Ok(_) => {
                tracing::info!(
                    repository = %inner.name,
                    bucket = %inner.bucket,
                    key = %full_key,
                    on,
                    "set legal hold"
                );
                Ok(())
            }
            Err(e) if is_missing_object(&e) => Err(SinkError::not_found(&inner.name, key)),
            Err(e) => Err(inner.request_error(IoOp::Write, "PutObjectLegalHold", &full_key, e)),
        }
    }

    /// Whether the current version of `key` is under a legal hold (never having had one
    /// counts as not).
    pub async fn legal_hold(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<bool, SinkError> {
        validate_key(key)?;
        let inner = &self.inner;
        let full_key = inner.full_key(key);
        let request = inner
            .client
            .get_object_legal_hold()
            .bucket(&inner.bucket)
            .key(&full_key)
            .send();
        match or_cancel(cancel, request).await? {
            Ok(output) => Ok(output
                .legal_hold()
                .and_then(ObjectLockLegalHold::status)
                .is_some_and(|status| *status == ObjectLockLegalHoldStatus::On)),
            // An object that never had a hold gets a 404 whose code varies by store
            // (NoSuchObjectLockConfiguration, NoSuchObjectLegalHold): ask whether it exists.
            Err(e) if is_missing_object(&e) && e.code() != Some("NoSuchKey") => {
                match inner.head_object(key, cancel).await? {
                    Some(_) => Ok(false),
                    None => Err(SinkError::not_found(&inner.name, key)),
                }
            }
            Err(e) if is_missing_object(&e) => Err(SinkError::not_found(&inner.name, key)),
            Err(e) => Err(inner.request_error(IoOp::Stat, "GetObjectLegalHold", &full_key, e)),
        }
    }

    /// Asks S3 to thaw an archived object for `days` days (at least 1), at `tier` speed.
    /// Objects not in GLACIER or DEEP_ARCHIVE need nothing and are left alone; a restored
    /// copy has its expiry moved to `days` from now. Deep Archive has no expedited tier:
    /// asking for it is refused before any request is sent.
    pub async fn request_restore(
        &self,
        key: &str,
        days: u32,
        tier: RestoreTier,
        cancel: &CancellationToken,
    ) -> Result<RestoreRequested, SinkError> {
        validate_key(key)?;
        let inner = &self.inner;
        let full_key = inner.full_key(key);
        let refuse = |message: String| SinkError::Remote {
            repository: inner.name.clone(),
            bucket: inner.bucket.clone(),
            key: full_key.clone(),
            op: IoOp::Read,
            code: None,
            message,
            temporary: false,
        };
        let days = match i32::try_from(days) {
            Ok(days) if days >= 1 => days,
            _ => {
                return Err(refuse(format!(
                    "cannot restore for {days} days: ask for at least 1 day"
                )))
            }
        };
        let Some(head) = inner.head_object(key, cancel).await? else {
            return Err(SinkError::not_found(&inner.name, key));
        };
        let before = inner.thaw_state_of(&full_key, &head)?;
        if before == ThawState::NotArchived {
            return Ok(RestoreRequested::NotArchived);
        }
        if tier == RestoreTier::Expedited
            && head.storage_class() == Some(&StorageClass::DeepArchive)
        {
            return Err(refuse(
                "DEEP_ARCHIVE objects cannot be restored with the expedited tier: use the \
                 standard (up to 12 hours) or bulk (up to 48 hours) tier"
                    .to_owned(),
            ));
        }
        let job = GlacierJobParameters::builder()
            .tier(tier.to_s3())
            .build()
            .expect("the tier, the only required field, is set");
        let request = inner
            .client
            .restore_object()
            .bucket(&inner.bucket)
            .key(&full_key)
            .restore_request(
                RestoreRequest::builder()
                    .days(days)
                    .glacier_job_parameters(job)
                    .build(),
            )
            .send();
        let requested = match or_cancel(cancel, request).await? {
            Ok(_) => match before {
                ThawState::InProgress => RestoreRequested::AlreadyInProgress,
                ThawState::Restored { .. } => RestoreRequested::AlreadyAvailable,
                ThawState::Frozen | ThawState::NotArchived => RestoreRequested::Started,
            },
            Err(e) if e.code() == Some("RestoreAlreadyInProgress") => {
                RestoreRequested::AlreadyInProgress
            }
            // Moved out of the archive since our HEAD (e.g. by a lifecycle rule).
            Err(e) if e.code() == Some("ObjectAlreadyInActiveTierError") => {
                RestoreRequested::NotArchived
            }
            Err(e) if is_missing_object(&e) => return Err(SinkError::not_found(&inner.name, key)),
            Err(e) => return Err(inner.request_error(IoOp::Read, "RestoreObject", &full_key, e)),
        };
        tracing::info!(
            repository = %inner.name,
            bucket = %inner.bucket,
            key = %full_key,
            days,
            tier = %tier,
            outcome = ?requested,
            "requested the restore of an archived object"
        );
        Ok(requested)
    }

    /// Whether `key` is archived and how far its restore is; [`SinkError::NotFound`] if it
    /// does not exist.
    pub async fn thaw_state(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<ThawState, SinkError> {
        validate_key(key)?;
        let inner = &self.inner;
        let Some(head) = inner.head_object(key, cancel).await? else {
            return Err(SinkError::not_found(&inner.name, key));
        };
        inner.thaw_state_of(&inner.full_key(key), &head)
    }

    /// The underlying client, e.g. for tests that set up buckets.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// "" or the configured prefix followed by '/'.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }
}

fn read_secret(source: &SecretSource) -> Result<String, String> {
    let value = match source {
        SecretSource::Env(var) => std::env::var(var)
            .map_err(|e| format!("cannot read the environment variable {var}: {e}"))?,
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("the {source} is empty"));
    }
    Ok(value.to_owned())
}

impl Sink for S3Sink {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_restore_before_read: matches!(
                self.inner.storage_class,
                Some(StorageClass::Glacier | StorageClass::DeepArchive)
            ),
            atomic_put: true,
            server_side_checksum: true,
        }
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        validate_key(key)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        let inner = &self.inner;
        let mut body = PartReader::new(body);
        // A retried put of an existing object: compare instead of uploading again.
        if let Some(existing) = inner.head_object(key, cancel).await? {
            let receipt = inner.hash_stream(key, &mut body, cancel).await?;
            if inner.same_content(key, &existing, &receipt, cancel).await? {
                return Ok(receipt);
            }
            return Err(SinkError::already_exists(&inner.name, key));
        }
        // Held from here on: the first part counts against the memory bound too.
        let parts = Arc::new(Semaphore::new(inner.concurrency));
        let permit = parts
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let first = body
            .next_part(inner.part_size_of(1), &inner.name, key, cancel)
            .await?
            .unwrap_or_default();
        let receipt = if body.is_finished(&inner.name, key, cancel).await? {
            drop(permit);
            inner.put_single(key, first, cancel).await?
        } else {
            inner
                .put_multipart(key, first, permit, parts, body, cancel)
                .await?
        };
        tracing::debug!(repository = %inner.name, key, size = receipt.size, "stored object");
        Ok(receipt)
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<ByteStream, SinkError> {
        validate_key(key)?;
        let inner = &self.inner;
        let full_key = inner.full_key(key);
        let request = inner
            .client
            .get_object()
            .bucket(&inner.bucket)
            .key(&full_key)
            // Lets the SDK check the stored checksum of single-part objects while reading.
            .checksum_mode(ChecksumMode::Enabled)
            .send();
        let output = or_cancel(cancel, request).await?.map_err(|e| {
            if is_missing_object(&e) {
                SinkError::not_found(&inner.name, key)
            } else {
                inner.error(IoOp::Read, &full_key, e)
            }
        })?;
        let size = output.content_length().map(|n| n.max(0) as u64);
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY + 1);
        let inner = self.inner.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            inner
                .stream_body(&full_key, output.body, size, tx, &cancel)
                .await
        });
        Ok(rx)
    }

    async fn head(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<ObjectInfo>, SinkError> {
        validate_key(key)?;
        let info = self.inner.head_object(key, cancel).await?;
        Ok(info.map(|head| ObjectInfo {
            key: key.to_owned(),
            size: head.content_length().unwrap_or(0).max(0) as u64,
            modified: system_time(head.last_modified()),
            storage_class: Some(
                head.storage_class()
                    .map_or("STANDARD", |class| class.as_str())
                    .to_owned(),
            ),
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, SinkError> {
        validate_prefix(prefix)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        let inner = &self.inner;
        let full_prefix = inner.full_key(prefix);
        let mut pages = inner
            .client
            .list_objects_v2()
            .bucket(&inner.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = or_cancel(cancel, pages.next()).await? {
            let page = page.map_err(|e| inner.error(IoOp::List, &full_prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&inner.prefix)) else {
                    continue;
                };
                // Folder markers ("a/b/") and foreign names are not objects of ours.
                if validate_key(key).is_err() {
                    continue;
                }
                objects.push(ObjectInfo {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: system_time(object.last_modified()),
                    storage_class: Some(
                        object
                            .storage_class()
                            .map_or("STANDARD", |class| class.as_str())
                            .to_owned(),
                    ),
                });
            }
        }
        objects.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// In a versioned bucket (every bucket with Object Lock is one) this only adds a delete
    /// marker: the locked version stays, and keeps costing storage, until its retention
    /// ends and a lifecycle rule or an operator removes it by version id.
    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), SinkError> {
        validate_key(key)?;
        let inner = &self.inner;
        let full_key = inner.full_key(key);
        let request = inner
            .client
            .delete_object()
            .bucket(&inner.bucket)
            .key(&full_key)
            .send();
        match or_cancel(cancel, request).await? {
            Ok(_) => Ok(()),
            Err(e) if is_missing_object(&e) => Ok(()),
            Err(e) => Err(inner.error(IoOp::Delete, &full_key, e)),
        }
    }

    async fn sweep_incomplete(
        &self,
        prefix: &str,
        older_than: Duration,
        cancel: &CancellationToken,
    ) -> Result<u64, SinkError> {
        validate_prefix(prefix)?;
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        let Some(cutoff) = SystemTime::now().checked_sub(older_than) else {
            return Ok(0);
        };
        let inner = &self.inner;
        let full_prefix = inner.full_key(prefix);
        let mut removed = 0;
        let mut markers: Option<(Option<String>, Option<String>)> = None;
        loop {
            let mut request = inner
                .client
                .list_multipart_uploads()
                .bucket(&inner.bucket)
                .prefix(&full_prefix);
            if let Some((key_marker, upload_id_marker)) = markers.take() {
                request = request
                    .set_key_marker(key_marker)
                    .set_upload_id_marker(upload_id_marker);
            }
            let page = or_cancel(cancel, request.send())
                .await?
                .map_err(|e| inner.error(IoOp::Sweep, &full_prefix, e))?;
            for upload in page.uploads() {
                let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                // Unknown age: leave it; a later sweep with a known age will take it.
                let Some(initiated) = upload.initiated() else {
                    continue;
                };
                if system_time(Some(initiated)) > cutoff {
                    continue;
                }
                if inner.abort_upload(key, upload_id, cancel).await? {
                    removed += 1;
                    tracing::info!(
                        repository = %inner.name,
                        bucket = %inner.bucket,
                        key,
                        upload_id,
                        "aborted the incomplete multipart upload of an interrupted put"
                    );
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            let next = (
                page.next_key_marker().map(str::to_owned),
                page.next_upload_id_marker().map(str::to_owned),
            );
            if next.0.is_none() && next.1.is_none() {
                break;
            }
            markers = Some(next);
        }
        Ok(removed)
    }
}

impl Inner {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn lock_mode(&self) -> Option<aws_sdk_s3::types::ObjectLockMode> {
        self.object_lock.map(|lock| lock.mode.to_s3())
    }

    /// `days` from now, for an object written now.
    fn retain_until(&self) -> Option<DateTime> {
        self.object_lock.map(|lock| {
            DateTime::from(SystemTime::now() + Duration::from_secs(u64::from(lock.days) * 86_400))
        })
    }

    async fn verify_object_lock(
        &self,
        lock: ObjectLock,
        cancel: &CancellationToken,
    ) -> Result<(), SinkError> {
        let request = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send();
        let enabled = match or_cancel(cancel, request).await? {
            Ok(output) => output
                .object_lock_configuration()
                .and_then(|config| config.object_lock_enabled())
                .is_some_and(|enabled| *enabled == ObjectLockEnabled::Enabled),
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => false,
            Err(e) => {
                return Err(self.request_error(
                    IoOp::Stat,
                    "GetObjectLockConfiguration",
                    &self.prefix,
                    e,
                ))
            }
        };
        if enabled {
            return Ok(());
        }
        let bucket = &self.bucket;
        Err(SinkError::Unusable {
            repository: self.name.clone(),
            path: PathBuf::from(format!("s3://{bucket}/{}", self.prefix)),
            problem: format!(
                "the repository is configured with object-lock ({} mode, {} days), but bucket \
                 {bucket:?} does not have Object Lock enabled: create the bucket with Object Lock \
                 enabled (`aws s3api create-bucket --bucket {bucket} \
                 --object-lock-enabled-for-bucket`), enable it on the existing versioned bucket \
                 (`aws s3api put-object-lock-configuration --bucket {bucket} \
                 --object-lock-configuration ObjectLockEnabled=Enabled`), or remove \
                 `object-lock` from repository {:?}",
                lock.mode, lock.days, self.name
            ),
        })
    }

    /// Archived or not, and how far a restore is, from a HEAD answer.
    fn thaw_state_of(
        &self,
        full_key: &str,
        head: &HeadObjectOutput,
    ) -> Result<ThawState, SinkError> {
        thaw_state_of(head.storage_class(), head.restore())
            .map_err(|problem| self.protocol_error(IoOp::Stat, full_key, &problem))
    }

    fn part_size_of(&self, number: i32) -> usize {
        part_size_of(self.part_size, number)
    }

    async fn head_object(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<HeadObjectOutput>, SinkError> {
        let full_key = self.full_key(key);
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .send();
        match or_cancel(cancel, request).await? {
            Ok(head) => Ok(Some(head)),
            // A missing bucket looks the same here (HEAD answers have no body).
            Err(e) if is_missing_object(&e) => Ok(None),
            Err(e) => Err(self.error(IoOp::Stat, &full_key, e)),
        }
    }

    /// Does the stored object hold exactly the bytes described by `receipt`?
    async fn same_content(
        self: &Arc<Self>,
        key: &str,
        existing: &HeadObjectOutput,
        receipt: &PutReceipt,
        cancel: &CancellationToken,
    ) -> Result<bool, SinkError> {
        if existing.content_length() != Some(receipt.size as i64) {
            return Ok(false);
        }
        if let Some(sha256) = existing
            .metadata()
            .and_then(|metadata| metadata.get(SHA256_METADATA))
        {
            return Ok(sha256.eq_ignore_ascii_case(&receipt.sha256_hex()));
        }
        // Multipart and foreign objects carry no hash of the whole: read it back.
        let sink = S3Sink {
            inner: self.clone(),
        };
        match crate::sha256_of_object(&sink, key, cancel).await {
            Ok((size, sha256)) => Ok(size == receipt.size && sha256 == receipt.sha256),
            Err(SinkError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads and hashes the rest of a stream without storing it.
    async fn hash_stream(
        &self,
        key: &str,
        body: &mut PartReader,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(part) = body
            .next_part(self.part_size, &self.name, key, cancel)
            .await?
        {
            size += part.len() as u64;
            (hasher, _) = hash_part(hasher, part, cancel).await?;
        }
        Ok(PutReceipt {
            size,
            sha256: hasher.finalize().into(),
        })
    }

    async fn put_single(
        self: &Arc<Self>,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        let full_key = self.full_key(key);
        let size = data.len() as u64;
        let (hasher, part_sha256) = hash_part(Sha256::new(), data.clone(), cancel).await?;
        let sha256: [u8; 32] = hasher.finalize().into();
        debug_assert_eq!(sha256, part_sha256);
        let receipt = PutReceipt { size, sha256 };
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .content_length(size as i64)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(BASE64.encode(sha256))
            .metadata(SHA256_METADATA, receipt.sha256_hex())
            .set_storage_class(self.storage_class.clone())
            .set_object_lock_mode(self.lock_mode())
            .set_object_lock_retain_until_date(self.retain_until())
            .if_none_match("*")
            .body(S3Body::from(data))
            .send();
        // Dropping the request on cancellation drops the connection; S3 then stores nothing.
        match or_cancel(cancel, request).await? {
            Ok(_) => Ok(receipt),
            Err(e) if is_precondition_failed(&e) => {
                self.settle_conflict(key, &receipt, cancel).await
            }
            Err(e) => Err(self.error(IoOp::Write, &full_key, e)),
        }
    }

    /// Another put created `key` while ours ran: fine if it holds the same bytes.
    async fn settle_conflict(
        self: &Arc<Self>,
        key: &str,
        receipt: &PutReceipt,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        match self.head_object(key, cancel).await? {
            Some(existing) if self.same_content(key, &existing, receipt, cancel).await? => {
                Ok(*receipt)
            }
            Some(_) => Err(SinkError::already_exists(&self.name, key)),
            // Created and deleted again meanwhile: nothing is stored, the caller may retry.
            None => Err(SinkError::Remote {
                repository: self.name.clone(),
                bucket: self.bucket.clone(),
                key: self.full_key(key),
                op: IoOp::Write,
                code: None,
                message: "a concurrent put and delete of the same key interfered; try again".into(),
                temporary: true,
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_multipart(
        self: &Arc<Self>,
        key: &str,
        first: Bytes,
        first_permit: OwnedSemaphorePermit,
        parts_in_memory: Arc<Semaphore>,
        mut body: PartReader,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        let full_key = self.full_key(key);
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full_key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_storage_class(self.storage_class.clone())
            .set_object_lock_mode(self.lock_mode())
            .set_object_lock_retain_until_date(self.retain_until())
            .send();
        let created = or_cancel(cancel, request)
            .await?
            .map_err(|e| self.error(IoOp::Write, &full_key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        if upload_id.is_empty() {
            return Err(self.protocol_error(
                IoOp::Write,
                &full_key,
                "CreateMultipartUpload returned no upload id",
            ));
        }
        // Aborts the upload if this future is dropped before it finishes.
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full_key.clone(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let uploaded = self
            .upload_parts(
                key,
                &full_key,
                &upload_id,
                first,
                first_permit,
                parts_in_memory,
                &mut body,
                cancel,
            )
            .await;
        let result = match uploaded {
            Ok((receipt, parts)) => {
                self.complete(key, &full_key, &upload_id, receipt, parts, cancel)
                    .await
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => guard.armed = false,
            // Return promptly; the guard aborts the upload in the background.
            Err(SinkError::Cancelled) => {}
            Err(_) => {
                self.abort_bounded(&full_key, &upload_id).await;
                guard.armed = false;
            }
        }
        result
    }

    /// Aborts an upload on an error path: best effort and bounded in time, since whatever
    /// is left, sweep_incomplete removes later.
    async fn abort_bounded(&self, full_key: &str, upload_id: &str) {
        let uncancelled = CancellationToken::new();
        let abort = self.abort_upload(full_key, upload_id, &uncancelled);
        match tokio::time::timeout(ABORT_TIMEOUT, abort).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not abort a failed upload"),
            Err(_) => tracing::warn!(
                repository = %self.name,
                key = %full_key,
                "aborting a failed upload timed out; sweep_incomplete will retry"
            ),
        }
    }

    /// Uploads `first` and the rest of `body` as parts, at most `concurrency` at a time.
    #[allow(clippy::too_many_arguments)]
    async fn upload_parts(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        first: Bytes,
        first_permit: OwnedSemaphorePermit,
        parts_in_memory: Arc<Semaphore>,
        body: &mut PartReader,
        cancel: &CancellationToken,
    ) -> Result<(PutReceipt, Vec<CompletedPart>), SinkError> {
        // Dropping the set (on error or when the put is dropped) stops the uploads.
        let mut uploads: JoinSet<Result<CompletedPart, SinkError>> = JoinSet::new();
        let mut done = Vec::new();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut number = 1;
        let mut data = first;
        let mut permit = first_permit;
        loop {
            size += data.len() as u64;
            let part_sha256;
            (hasher, part_sha256) = hash_part(hasher, data.clone(), cancel).await?;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(data.len() as i64)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(BASE64.encode(part_sha256))
                .body(S3Body::from(data));
            let repository = self.name.clone();
            let bucket = self.bucket.clone();
            let part_key = full_key.to_owned();
            uploads.spawn(async move {
                let _in_memory = permit;
                let uploaded = request
                    .send()
                    .await
                    .map_err(|e| s3_error(&repository, &bucket, IoOp::Write, &part_key, e))?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .checksum_sha256(BASE64.encode(part_sha256))
                    .build())
            });
            number += 1;
            permit = loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                    Some(joined) = uploads.join_next() => done.push(joined_part(joined)?),
                    permit = parts_in_memory.clone().acquire_owned() => {
                        break permit.expect("the semaphore is never closed");
                    }
                }
            };
            match body
                .next_part(self.part_size_of(number), &self.name, key, cancel)
                .await?
            {
                Some(next) if number > MAX_PARTS => {
                    drop(next);
                    return Err(self.protocol_error(
                        IoOp::Write,
                        full_key,
                        "the object is too large for one S3 upload (10,000 parts); raise \
                         the part size",
                    ));
                }
                Some(next) => data = next,
                None => break,
            }
        }
        drop(permit);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(SinkError::Cancelled),
                joined = uploads.join_next() => match joined {
                    Some(joined) => done.push(joined_part(joined)?),
                    None => break,
                },
            }
        }
        done.sort_unstable_by_key(|part| part.part_number());
        let receipt = PutReceipt {
            size,
            sha256: hasher.finalize().into(),
        };
        Ok((receipt, done))
    }

    /// Completes the upload; on success it is gone, on `Err` the caller aborts it.
    async fn complete(
        self: &Arc<Self>,
        key: &str,
        full_key: &str,
        upload_id: &str,
        receipt: PutReceipt,
        parts: Vec<CompletedPart>,
        cancel: &CancellationToken,
    ) -> Result<PutReceipt, SinkError> {
        if cancel.is_cancelled() {
            return Err(SinkError::Cancelled);
        }
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .if_none_match("*")
            .send();
        // Not raced against `cancel`: once completion is sent, we want to know its outcome.
        let completed = match request.await {
            Ok(completed) => completed,
            Err(e) if is_precondition_failed(&e) => {
                // Another put won the key: our parts are not needed either way.
                self.abort_bounded(full_key, upload_id).await;
                return self.settle_conflict(key, &receipt, cancel).await;
            }
            Err(e) => return Err(self.error(IoOp::Publish, full_key, e)),
        };
        let head = self.head_object(key, &CancellationToken::new()).await?;
        let etag = |etag: Option<&str>| etag.map(|e| e.trim_matches('"').to_owned());
        let ours = etag(completed.e_tag());
        if ours.is_some() && head.as_ref().is_some_and(|h| etag(h.e_tag()) != ours) {
            // Another put completed after ours: a store that ignores `If-None-Match` on
            // completion (AWS and SeaweedFS honour it). Only identical content is fine.
            return self.settle_conflict(key, &receipt, cancel).await;
        }
        let stored = head.and_then(|head| head.content_length());
        if stored != Some(receipt.size as i64) {
            return Err(self.protocol_error(
                IoOp::Publish,
                full_key,
                &format!(
                    "the completed object has {} bytes, {} were uploaded; delete it and run \
                     the backup again",
                    stored.map_or_else(|| "no".to_owned(), |n| n.to_string()),
                    receipt.size
                ),
            ));
        }
        Ok(receipt)
    }

    /// Returns whether an upload was aborted (false: it was gone already).
    async fn abort_upload(
        &self,
        full_key: &str,
        upload_id: &str,
        cancel: &CancellationToken,
    ) -> Result<bool, SinkError> {
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .send();
        match or_cancel(cancel, request).await? {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("NoSuchUpload") || status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.error(IoOp::Sweep, full_key, e)),
        }
    }

    /// Feeds a download into the bounded channel; see [`Sink::get`].
    async fn stream_body(
        &self,
        full_key: &str,
        mut body: S3Body,
        size: Option<u64>,
        tx: mpsc::Sender<io::Result<Bytes>>,
        cancel: &CancellationToken,
    ) {
        // A slot kept for the final error, so one can always be delivered.
        let Ok(spare) = tx.clone().reserve_owned().await else {
            return;
        };
        let mut pending = BytesMut::new();
        let mut received = 0u64;
        loop {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => return fail(spare, SinkError::Cancelled),
                item = body.next() => item,
            };
            let chunk = match item {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    let error = io::Error::other(error_chain(&e));
                    return fail(spare, self.read_error(full_key, error));
                }
                None => break,
            };
            received += chunk.len() as u64;
            let out = if pending.is_empty() && chunk.len() >= MIN_GET_CHUNK {
                chunk
            } else {
                pending.extend_from_slice(&chunk);
                if pending.len() < MIN_GET_CHUNK {
                    continue;
                }
                pending.split().freeze()
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return fail(spare, SinkError::Cancelled),
                permit = tx.reserve() => match permit {
                    Ok(permit) => permit.send(Ok(out)),
                    Err(_) => return, // the reader went away
                },
            }
        }
        if let Some(size) = size.filter(|&size| size != received) {
            let error = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the download ended after {received} of {size} bytes"),
            );
            return fail(spare, self.read_error(full_key, error));
        }
        if !pending.is_empty() {
            // The spare slot carries the last chunk: no waiting needed.
            spare.send(Ok(pending.freeze()));
        }
    }

    fn read_error(&self, full_key: &str, error: io::Error) -> SinkError {
        SinkError::Remote {
            repository: self.name.clone(),
            bucket: self.bucket.clone(),
            key: full_key.to_owned(),
            op: IoOp::Read,
            code: None,
            message: error.to_string(),
            temporary: true,
        }
    }

    fn error<E>(&self, op: IoOp, full_key: &str, error: SdkError<E, HttpResponse>) -> SinkError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        s3_error(&self.name, &self.bucket, op, full_key, error)
    }

    /// [`Inner::error`] for requests other than plain reads and writes: the message names
    /// the S3 request, and a refusal names the permission it needs.
    fn request_error<E>(
        &self,
        op: IoOp,
        request: &str,
        full_key: &str,
        error: SdkError<E, HttpResponse>,
    ) -> SinkError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let mut error = self.error(op, full_key, error);
        if let SinkError::Remote { code, message, .. } = &mut error {
            let hint = match code.as_deref() {
                Some("AccessDenied") => {
                    format!(" (this request needs s3:{})", permission_of(request))
                }
                // What S3 answers when the bucket has no Object Lock.
                Some("InvalidRequest") if request.contains("LegalHold") => format!(
                    "; legal holds need a bucket with Object Lock enabled, which bucket {:?} \
                     may not have",
                    self.bucket
                ),
                _ => String::new(),
            };
            *message = format!("{request}: {message}{hint}");
        }
        error
    }

    fn protocol_error(&self, op: IoOp, full_key: &str, message: &str) -> SinkError {
        SinkError::Remote {
            repository: self.name.clone(),
            bucket: self.bucket.clone(),
            key: full_key.to_owned(),
            op,
            code: None,
            message: message.to_owned(),
            temporary: false,
        }
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// The IAM action that allows an S3 request.
fn permission_of(request: &str) -> &str {
    match request {
        "GetObjectLockConfiguration" => "GetBucketObjectLockConfiguration",
        "PutObjectLegalHold" => "PutObjectLegalHold",
        "GetObjectLegalHold" => "GetObjectLegalHold",
        "RestoreObject" => "RestoreObject",
        other => other,
    }
}

/// Thaw state from an object's storage class and `x-amz-restore` header; `Err` says what
/// is wrong with a header we cannot read.
fn thaw_state_of(
    storage_class: Option<&StorageClass>,
    restore: Option<&str>,
) -> Result<ThawState, String> {
    if !matches!(
        storage_class,
        Some(StorageClass::Glacier | StorageClass::DeepArchive)
    ) {
        return Ok(ThawState::NotArchived);
    }
    let Some(header) = restore.filter(|h| !h.trim().is_empty()) else {
        return Ok(ThawState::Frozen);
    };
    let fields = restore_header_fields(header)
        .ok_or_else(|| format!("cannot read the x-amz-restore header {header:?}"))?;
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    match field("ongoing-request")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("true") => Ok(ThawState::InProgress),
        Some("false") => Ok(ThawState::Restored {
            expires: field("expiry-date").map(str::to_owned),
        }),
        _ => Err(format!(
            "the x-amz-restore header {header:?} has no ongoing-request=\"true\" or \"false\""
        )),
    }
}

/// The `name="value"` pairs of an `x-amz-restore` header such as
/// `ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"`. Values may be
/// unquoted; quoted ones may hold commas. `None` if the text is not such a list.
fn restore_header_fields(header: &str) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim();
        if name.is_empty() || name.contains([',', '"']) {
            return None;
        }
        let after = after.trim_start();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let (value, after) = quoted.split_once('"')?;
                (value, after)
            }
            None => after.split_at(after.find(',').unwrap_or(after.len())),
        };
        fields.push((name.to_owned(), value.trim().to_owned()));
        let after = after.trim_start();
        rest = match after.strip_prefix(',') {
            Some(next) => next.trim_start(),
            None if after.is_empty() => after,
            None => return None,
        };
    }
    Some(fields)
}

/// Part `number` (from 1) is this big; see [`PARTS_PER_SIZE_STEP`].
fn part_size_of(base: usize, number: i32) -> usize {
    let doublings = ((number - 1).max(0) / PARTS_PER_SIZE_STEP) as u32;
    base.saturating_mul(1 << doublings).min(MAX_PART_SIZE)
}

/// Ends a download stream with `error`, in the slot kept for it.
fn fail(spare: mpsc::OwnedPermit<io::Result<Bytes>>, error: SinkError) {
    spare.send(Err(error.into_io()));
}

/// Hashes a part on the blocking pool (never on the executor): updates the object's running
/// hash and returns the part's own SHA-256.
async fn hash_part(
    mut hasher: Sha256,
    data: Bytes,
    cancel: &CancellationToken,
) -> Result<(Sha256, [u8; 32]), SinkError> {
    let work = tokio::task::spawn_blocking(move || {
        hasher.update(&data);
        (hasher, Sha256::digest(&data).into())
    });
    match or_cancel(cancel, work).await? {
        Ok(hashed) => Ok(hashed),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(SinkError::Cancelled),
        },
    }
}

fn joined_part(
    joined: Result<Result<CompletedPart, SinkError>, tokio::task::JoinError>,
) -> Result<CompletedPart, SinkError> {
    match joined {
        Ok(part) => part,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(SinkError::Cancelled),
        },
    }
}

/// Runs `future` unless `cancel` fires first.
async fn or_cancel<T>(
    cancel: &CancellationToken,
    future: impl std::future::Future<Output = T>,
) -> Result<T, SinkError> {
    if cancel.is_cancelled() {
        return Err(SinkError::Cancelled);
    }
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(SinkError::Cancelled),
        output = future => Ok(output),
    }
}

/// A put's body, cut into parts of the requested sizes.
struct PartReader {
    body: ByteStream,
    /// Received but not yet part of a part.
    leftover: Bytes,
    finished: bool,
}

impl PartReader {
    fn new(body: ByteStream) -> Self {
        PartReader {
            body,
            leftover: Bytes::new(),
            finished: false,
        }
    }

    /// The next `limit` bytes (fewer at the end); `None` once everything was returned.
    async fn next_part(
        &mut self,
        limit: usize,
        repository: &str,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Bytes>, SinkError> {
        // Reserved, not touched: the kernel commits only the pages we fill, so a small
        // object costs what it holds.
        let mut part = BytesMut::with_capacity(limit);
        loop {
            if !self.leftover.is_empty() {
                let n = self.leftover.len().min(limit - part.len());
                part.extend_from_slice(&self.leftover.split_to(n));
            }
            if part.len() == limit || !self.fill(repository, key, cancel).await? {
                break;
            }
        }
        Ok((!part.is_empty()).then(|| part.freeze()))
    }

    /// Whether the stream has ended with nothing left over; may receive one chunk to tell.
    async fn is_finished(
        &mut self,
        repository: &str,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<bool, SinkError> {
        Ok(self.leftover.is_empty() && !self.fill(repository, key, cancel).await?)
    }

    /// Receives into `leftover` (which must be empty); false at the end of the stream.
    async fn fill(
        &mut self,
        repository: &str,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<bool, SinkError> {
        while !self.finished {
            match recv_or_cancel(&mut self.body, cancel).await? {
                None => self.finished = true,
                Some(Err(e)) => return Err(SinkError::body(repository, key, e)),
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    self.leftover = chunk;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Aborts a multipart upload from `Drop`, for puts whose future is dropped midway.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the runtime is going away; sweep_incomplete cleans up
        };
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send();
        let key = self.key.clone();
        runtime.spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(ABORT_TIMEOUT, request).await {
                tracing::warn!(key, error = %DisplayErrorContext(&e), "could not abort the upload of a dropped put");
            }
        });
    }
}

fn system_time(time: Option<&DateTime>) -> SystemTime {
    time.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn status_of<E>(error: &SdkError<E, HttpResponse>) -> Option<u16> {
    error.raw_response().map(|r| r.status().as_u16())
}

/// The object (not the bucket) does not exist.
fn is_missing_object<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    match error.code() {
        Some("NoSuchKey") => true,
        Some("NoSuchBucket") => false,
        _ => status_of(error) == Some(404),
    }
}

fn is_precondition_failed<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    status_of(error) == Some(412) || error.code() == Some("PreconditionFailed")
}

/// Error codes worth retrying later (after the SDK's own retries gave up).
const TEMPORARY_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "ConditionalRequestConflict",
];

/// Turns an SDK error into a [`SinkError::Remote`] that names the repository, bucket and
/// key, says whether retrying can help, and what to do.
fn s3_error<E>(
    repository: &str,
    bucket: &str,
    op: IoOp,
    full_key: &str,
    error: SdkError<E, HttpResponse>,
) -> SinkError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let status = status_of(&error);
    let code = error.code().map(str::to_owned);
    let (temporary, what) = match &error {
        SdkError::TimeoutError(_) => (true, "the request timed out".to_owned()),
        SdkError::DispatchFailure(failure) => (
            !failure.is_user(),
            format!(
                "could not send the request (check the endpoint and the network): {}",
                error_chain(&error)
            ),
        ),
        SdkError::ResponseError(_) => (
            true,
            format!("the response could not be read: {}", error_chain(&error)),
        ),
        SdkError::ServiceError(_) => {
            let temporary = code
                .as_deref()
                .is_some_and(|code| TEMPORARY_CODES.contains(&code))
                || status.is_some_and(|s| s >= 500 || s == 429 || s == 408);
            let detail = match (code.as_deref(), error.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                (None, Some(message)) => message.to_owned(),
                (None, None) => format!(
                    "HTTP status {}",
                    status.map_or_else(|| "unknown".to_owned(), |s| s.to_string())
                ),
            };
            (temporary, detail)
        }
        _ => (false, error_chain(&error)),
    };
    let hint = hint(code.as_deref(), status, bucket);
    SinkError::Remote {
        repository: repository.to_owned(),
        bucket: bucket.to_owned(),
        key: full_key.to_owned(),
        op,
        code,
        message: format!("{what}{hint}"),
        temporary,
    }
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

/// What to do about common S3 errors, appended to the message.
fn hint(code: Option<&str>, status: Option<u16>, bucket: &str) -> String {
    match (code, status) {
        (Some("NoSuchBucket"), _) => format!(
            "; create the bucket {bucket:?}, or fix the repository's bucket name, region or \
             endpoint"
        ),
        (Some("AccessDenied" | "AllAccessDisabled"), _) | (None, Some(403)) => format!(
            "; the credentials are not allowed to do this: grant s3:ListBucket, s3:GetObject, \
             s3:PutObject, s3:DeleteObject, s3:ListBucketMultipartUploads and \
             s3:AbortMultipartUpload on bucket {bucket:?} (and its objects) to them"
        ),
        (Some("InvalidAccessKeyId"), _) => {
            "; the access key id is unknown to the store: check the repository's credentials"
                .to_owned()
        }
        (Some("SignatureDoesNotMatch"), _) => {
            "; the secret access key does not match the access key id: check the repository's \
             credentials"
                .to_owned()
        }
        (Some("InvalidObjectState"), _) => {
            "; the object is archived (e.g. GLACIER or DEEP_ARCHIVE): restore it first \
             (RestoreObject) and read it once the restore has finished"
                .to_owned()
        }
        (
            Some(
                "PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException",
            ),
            _,
        )
        | (None, Some(301)) => {
            format!("; the bucket {bucket:?} is in another region: fix the repository's region")
        }
        (Some("GlacierExpeditedRetrievalNotAvailable"), _) => {
            "; S3 has no expedited retrieval capacity free right now: retry later, use the \
             standard tier, or buy provisioned retrieval capacity"
                .to_owned()
        }
        (Some("SlowDown" | "Throttling" | "ThrottlingException"), _) | (None, Some(503)) => {
            "; the store is throttling requests: lower the upload concurrency or retry later"
                .to_owned()
        }
        _ => String::new(),
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "environment variable {var}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_grow_so_large_objects_fit() {
        assert_eq!(part_size_of(MIN_PART_SIZE, 1), MIN_PART_SIZE);
        assert_eq!(part_size_of(MIN_PART_SIZE, 2000), MIN_PART_SIZE);
        assert_eq!(part_size_of(MIN_PART_SIZE, 2001), 2 * MIN_PART_SIZE);
        assert_eq!(part_size_of(MIN_PART_SIZE, 10_000), 16 * MIN_PART_SIZE);
        assert_eq!(part_size_of(MAX_PART_SIZE, 9_000), MAX_PART_SIZE);
        let total: u64 = (1..=MAX_PARTS)
            .map(|n| part_size_of(DEFAULT_PART_SIZE, n) as u64)
            .sum();
        assert_eq!(total, 62_000 * DEFAULT_PART_SIZE as u64);
    }

    #[tokio::test]
    async fn part_reader_cuts_uneven_chunks_into_parts() {
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let stream = crate::byte_stream_from(data.clone(), 333);
        let mut reader = PartReader::new(stream);
        let cancel = CancellationToken::new();
        let mut parts = Vec::new();
        while let Some(part) = reader.next_part(1000, "r", "k", &cancel).await.unwrap() {
            parts.push(part);
        }
        let sizes: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(parts.concat(), data);
        assert!(reader.is_finished("r", "k", &cancel).await.unwrap());
    }

    #[tokio::test]
    async fn part_reader_tells_whether_more_follows() {
        let cancel = CancellationToken::new();
        let mut exact = PartReader::new(crate::byte_stream_from(vec![1u8; 100], 10));
        assert_eq!(
            exact
                .next_part(100, "r", "k", &cancel)
                .await
                .unwrap()
                .unwrap()
                .len(),
            100
        );
        assert!(exact.is_finished("r", "k", &cancel).await.unwrap());
        let mut more = PartReader::new(crate::byte_stream_from(vec![1u8; 101], 10));
        more.next_part(100, "r", "k", &cancel).await.unwrap();
        assert!(!more.is_finished("r", "k", &cancel).await.unwrap());
        let mut empty = PartReader::new(crate::byte_stream_from(Vec::new(), 10));
        assert!(empty
            .next_part(100, "r", "k", &cancel)
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn secrets_come_from_files_and_env_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        assert_eq!(
            read_secret(&SecretSource::File(file.clone())).unwrap(),
            "s3cr3t"
        );
        std::fs::write(&file, "  \n").unwrap();
        let err = read_secret(&SecretSource::File(file)).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let err = read_secret(&SecretSource::Env("BACKUPD_TEST_NO_SUCH_VAR".into())).unwrap_err();
        assert!(err.contains("BACKUPD_TEST_NO_SUCH_VAR"), "{err}");
    }

    #[test]
    fn restore_headers_are_read_robustly() {
        let deep = Some(&StorageClass::DeepArchive);
        let restored = |expires: &str| ThawState::Restored {
            expires: Some(expires.to_owned()),
        };
        for (header, expected) in [
            (None, ThawState::Frozen),
            (Some(""), ThawState::Frozen),
            (Some("ongoing-request=\"true\""), ThawState::InProgress),
            (Some(" Ongoing-Request = \"TRUE\" "), ThawState::InProgress),
            (
                Some("ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\""),
                restored("Fri, 21 Dec 2012 00:00:00 GMT"),
            ),
            (
                Some("expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\",ongoing-request=false"),
                restored("Fri, 21 Dec 2012 00:00:00 GMT"),
            ),
            (
                Some("ongoing-request=\"false\""),
                ThawState::Restored { expires: None },
            ),
            // Fields S3 may add later are ignored.
            (
                Some("ongoing-request=\"false\", expiry-date=\"Sat, 22 Dec 2012 00:00:00 GMT\", tier=\"Bulk\""),
                restored("Sat, 22 Dec 2012 00:00:00 GMT"),
            ),
        ] {
            assert_eq!(thaw_state_of(deep, header).unwrap(), expected, "{header:?}");
        }
        for bad in [
            "garbage",
            "ongoing-request=\"maybe\"",
            "expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\"",
            "ongoing-request=\"false",
            "ongoing-request=\"false\" expiry-date=\"x\"",
            "=\"false\"",
        ] {
            let err = thaw_state_of(deep, Some(bad)).unwrap_err();
            assert!(err.contains("x-amz-restore"), "{bad:?}: {err}");
        }
        // Only GLACIER and DEEP_ARCHIVE need thawing; a stray header changes nothing.
        for class in [
            None,
            Some(&StorageClass::Standard),
            Some(&StorageClass::GlacierIr),
        ] {
            assert_eq!(
                thaw_state_of(class, Some("ongoing-request=\"true\"")).unwrap(),
                ThawState::NotArchived
            );
        }
        assert_eq!(
            thaw_state_of(Some(&StorageClass::Glacier), None).unwrap(),
            ThawState::Frozen
        );
    }

    #[test]
    fn restore_tiers_parse_and_deserialize() {
        use serde::de::value::{Error as ValueError, StrDeserializer};
        use serde::de::IntoDeserializer;
        use serde::Deserialize;
        for tier in RestoreTier::ALL {
            assert_eq!(tier.as_str().parse::<RestoreTier>().unwrap(), tier);
            let de: StrDeserializer<ValueError> = tier.as_str().into_deserializer();
            assert_eq!(RestoreTier::deserialize(de).unwrap(), tier);
        }
        assert_eq!(
            "Expedited".parse::<RestoreTier>().unwrap(),
            RestoreTier::Expedited
        );
        assert_eq!(RestoreTier::default(), RestoreTier::Standard);
        let err = "fast".parse::<RestoreTier>().unwrap_err().to_string();
        assert!(
            err.contains("\"fast\"") && err.contains("bulk, standard or expedited"),
            "{err}"
        );
        for (text, mode) in [
            ("governance", ObjectLockMode::Governance),
            ("compliance", ObjectLockMode::Compliance),
            ("COMPLIANCE", ObjectLockMode::Compliance),
        ] {
            let de: StrDeserializer<ValueError> = text.into_deserializer();
            assert_eq!(ObjectLockMode::deserialize(de).unwrap(), mode);
        }
        let de: StrDeserializer<ValueError> = "legal".into_deserializer();
        assert!(ObjectLockMode::deserialize(de).is_err());
    }

    #[tokio::test]
    async fn options_are_checked() {
        let base = S3Options::new("repo", "bucket", "us-east-1");
        for (change, expect) in [
            (
                Box::new(|o: &mut S3Options| o.part_size = 1 << 20) as Box<dyn Fn(&mut S3Options)>,
                "part size",
            ),
            (
                Box::new(|o: &mut S3Options| o.bucket = "b".into()),
                "bucket name",
            ),
            (
                Box::new(|o: &mut S3Options| o.region = String::new()),
                "region",
            ),
            (
                Box::new(|o: &mut S3Options| o.concurrency = 0),
                "concurrency",
            ),
            (
                Box::new(|o: &mut S3Options| o.storage_class = Some("COLD".into())),
                "storage class",
            ),
            (
                Box::new(|o: &mut S3Options| o.prefix = "a/../b".into()),
                "prefix",
            ),
            (
                Box::new(|o: &mut S3Options| {
                    o.object_lock = Some(ObjectLock {
                        mode: ObjectLockMode::Governance,
                        days: 0,
                    })
                }),
                "object-lock",
            ),
            (
                Box::new(|o: &mut S3Options| {
                    o.credentials = S3Credentials::Static {
                        access_key_id: SecretSource::Env("BACKUPD_TEST_NO_SUCH_VAR".into()),
                        secret_access_key: SecretSource::Env("BACKUPD_TEST_NO_SUCH_VAR".into()),
                    }
                }),
                "BACKUPD_TEST_NO_SUCH_VAR",
            ),
        ] {
            let mut options = base.clone();
            change(&mut options);
            let err = S3Sink::new(options).await.unwrap_err();
            assert!(matches!(err, SinkError::Unusable { .. }), "{err:?}");
            assert!(err.to_string().contains(expect), "{err}");
        }
        let mut options = base;
        options.prefix = "/team/repo/".into();
        options.storage_class = Some("STANDARD_IA".into());
        let lock = ObjectLock {
            mode: ObjectLockMode::Compliance,
            days: MAX_LOCK_DAYS,
        };
        options.object_lock = Some(lock);
        let sink = S3Sink::new(options).await.unwrap();
        assert_eq!(sink.object_lock(), Some(&lock));
        assert_eq!(sink.prefix(), "team/repo/");
        assert!(!sink.capabilities().needs_restore_before_read);
    }
}
