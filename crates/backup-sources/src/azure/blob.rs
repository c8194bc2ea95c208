//! Azure Blob Storage through its REST API (version [`API_VERSION`]): list, create and read
//! containers with their metadata, list blobs (with metadata, paged by `NextMarker`), read a
//! blob as a stream of chunks, and write one from a reader (a single Put Blob when it fits
//! in one block, else Put Block per block and Put Block List), both in bounded memory.
//!
//! Authentication is the account's Shared Key (the documented StringToSign of the Blob
//! service, HMAC-SHA256 with the base64 account key) or a SAS token appended to each URL.
//! The endpoint is configurable: `https://{account}.blob.core.windows.net` in Azure, a
//! path-style `http://127.0.0.1:10000/devstoreaccount1` for Azurite.
//!
//! Neither the key nor a SAS signature appears in an error, in `Debug` output or in a log.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::Deserialize;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{debug, instrument};

use super::{error_chain, redact_sas, Secret};

/// The REST API version every request asks for (Azurite 3.35 accepts it).
pub const API_VERSION: &str = "2021-08-06";
/// Block size of uploads that do not fit one Put Blob.
pub const DEFAULT_BLOCK_SIZE: usize = 8 << 20;
/// Azure's largest block (API 2019-12-12 and later).
pub const MAX_BLOCK_SIZE: usize = 4000 << 20;
/// Azure's limit of committed blocks per blob.
pub const MAX_BLOCKS: usize = 50_000;

/// User metadata (`x-ms-meta-*`): names are C# identifiers, values ASCII text.
pub type Metadata = BTreeMap<String, String>;

/// What went wrong talking to the Blob service.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid Blob Storage settings: {reason}")]
    Config { reason: String },
    #[error("cannot reach the Blob service at {endpoint}: {reason}; check `endpoint` (or `account`) and the network")]
    Unreachable { endpoint: String, reason: String },
    #[error("the storage account key was rejected by account {account} (HTTP {status} AuthenticationFailed: {message}); check account-key-env/account-key-file and `account`")]
    AccountKeyRejected {
        account: String,
        status: u16,
        message: String,
    },
    #[error("the SAS token was rejected by account {account} (HTTP {status} {code}: {message}); it may have expired, be for another account or service, or lack a permission; check sas-token-env/sas-token-file")]
    SasRejected {
        account: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("account {account} does not allow {operation} on {resource} (HTTP {status} {code}: {message}); a SAS token needs the permissions in docs/sources/azure-blob.md, an account key allows everything unless the storage firewall blocks this host")]
    Denied {
        account: String,
        operation: &'static str,
        resource: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{resource} does not exist (HTTP 404 {code}: {message})")]
    NotFound {
        resource: String,
        code: String,
        message: String,
    },
    #[error(
        "the Blob service answered {operation} on {resource} with HTTP {status} {code}: {message}"
    )]
    Api {
        operation: &'static str,
        resource: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the Blob service to {operation} on {resource}: {reason}")]
    Protocol {
        operation: &'static str,
        resource: String,
        reason: String,
    },
    #[error(
        "the download of {resource} was cut short after {received} of {expected} bytes: {reason}"
    )]
    Truncated {
        resource: String,
        received: u64,
        expected: u64,
        reason: String,
    },
    #[error("{resource} does not match its stored Content-MD5 (stored {stored}, received data hashes to {computed}): the blob or the transfer is corrupt")]
    Corrupt {
        resource: String,
        stored: String,
        computed: String,
    },
    #[error("cannot read the data to upload to {resource}: {source}")]
    Read {
        resource: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{resource} would need more than {MAX_BLOCKS} blocks of {block_size} bytes; raise the block size")]
    TooLarge { resource: String, block_size: usize },
    #[error("invalid metadata {name:?}: {reason}")]
    InvalidMetadata { name: String, reason: String },
}

impl BlobError {
    /// The HTTP status Azure answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            BlobError::AccountKeyRejected { status, .. }
            | BlobError::SasRejected { status, .. }
            | BlobError::Denied { status, .. }
            | BlobError::Api { status, .. } => Some(*status),
            BlobError::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// Azure's error code (`x-ms-error-code`, or `<Code>` of the XML body).
    pub fn code(&self) -> Option<&str> {
        match self {
            BlobError::AccountKeyRejected { .. } => Some("AuthenticationFailed"),
            BlobError::SasRejected { code, .. }
            | BlobError::Denied { code, .. }
            | BlobError::NotFound { code, .. }
            | BlobError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the same call may succeed later (network trouble, a busy or failing server,
    /// a cut download); everything else needs a change of settings or data first.
    pub fn is_transient(&self) -> bool {
        match self {
            BlobError::Unreachable { .. } | BlobError::Truncated { .. } => true,
            BlobError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// How requests are authorized.
#[derive(Debug, Clone)]
pub enum BlobCredential {
    /// The storage account key, base64 as the portal shows it.
    SharedKey(Secret),
    /// A SAS token (account or container SAS), with or without its leading `?`.
    Sas(Secret),
}

/// The decoded credential a client signs with.
enum Auth {
    SharedKey(Vec<u8>),
    Sas(String),
}

/// One container, as List Containers describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `container`, `blob`, or `None` (private).
    pub public_access: Option<String>,
    pub has_immutability_policy: bool,
    pub has_legal_hold: bool,
    pub metadata: Metadata,
}

/// One blob, as List Blobs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub name: String,
    pub size: u64,
    pub content_type: Option<String>,
    /// base64 MD5 of the whole blob, when the writer stored one.
    pub content_md5: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `BlockBlob`, `AppendBlob` or `PageBlob`.
    pub blob_type: Option<String>,
    /// `Hot`, `Cool`, `Cold` or `Archive` (an archived blob cannot be read until rehydrated).
    pub access_tier: Option<String>,
    pub metadata: Metadata,
}

/// The properties a read blob arrives with (its response headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProperties {
    pub size: u64,
    pub content_type: Option<String>,
    pub content_md5: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub blob_type: Option<String>,
    pub metadata: Metadata,
}

/// One page of a listing: `next_marker` is where the next page starts (`None`: last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_marker: Option<String>,
}

/// What a new blob gets besides its content.
#[derive(Debug, Clone, Default)]
pub struct PutBlobOptions {
    pub content_type: Option<String>,
    pub metadata: Metadata,
}

/// What an upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutBlobOutcome {
    pub size: u64,
    /// Committed blocks; 0 when the blob went up in one Put Blob.
    pub blocks: u32,
    /// base64 MD5 of the content, stored as the blob's Content-MD5.
    pub content_md5: String,
    /// Hex SHA-256 of the content (Azure keeps no SHA-256: ours to record).
    pub sha256: String,
    pub etag: Option<String>,
}

/// A blob being read: its properties, then its content in chunks as they arrive.
pub struct BlobDownload {
    pub properties: BlobProperties,
    response: reqwest::Response,
    resource: String,
    received: u64,
    md5: Md5,
}

impl fmt::Debug for BlobDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobDownload")
            .field("resource", &self.resource)
            .field("properties", &self.properties)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl BlobDownload {
    /// The next chunk of content; `None` once it all arrived. A connection lost before the
    /// last byte is [`BlobError::Truncated`]; content that does not hash to the blob's stored
    /// Content-MD5 is [`BlobError::Corrupt`].
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, BlobError> {
        let expected = self.properties.size;
        match self.response.chunk().await {
            Ok(Some(chunk)) => {
                self.received += chunk.len() as u64;
                self.md5.update(&chunk);
                Ok(Some(chunk))
            }
            Ok(None) if self.received < expected => Err(BlobError::Truncated {
                resource: self.resource.clone(),
                received: self.received,
                expected,
                reason: "the connection closed early".into(),
            }),
            Ok(None) => {
                if let Some(stored) = &self.properties.content_md5 {
                    let computed = BASE64.encode(self.md5.finalize_reset());
                    if &computed != stored {
                        return Err(BlobError::Corrupt {
                            resource: self.resource.clone(),
                            stored: stored.clone(),
                            computed,
                        });
                    }
                }
                Ok(None)
            }
            Err(e) => Err(BlobError::Truncated {
                resource: self.resource.clone(),
                received: self.received,
                expected,
                reason: error_chain(&e.without_url()),
            }),
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// A client for one storage account's Blob service.
pub struct BlobClient {
    http: reqwest::Client,
    /// Scheme, host and port, e.g. `https://acct.blob.core.windows.net`.
    origin: String,
    /// The endpoint's own path (`/devstoreaccount1` for Azurite), without a trailing `/`.
    base_path: String,
    account: String,
    auth: Auth,
    block_size: usize,
}

impl fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.auth {
            Auth::SharedKey(_) => "shared key",
            Auth::Sas(_) => "SAS token",
        };
        f.debug_struct("BlobClient")
            .field("endpoint", &self.endpoint())
            .field("account", &self.account)
            .field("auth", &auth)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

/// How long a call other than a blob's transfer may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a transfer may go without a byte moving.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries of answers that say "try again" (500, 503) and of lost connections.
const RETRIES: u32 = 3;

/// One request before it is signed.
struct Call<'a> {
    operation: &'static str,
    method: Method,
    /// Path below the endpoint, percent-encoded, starting with `/`.
    path: String,
    /// Unencoded query parameters (signed as they are, sent encoded).
    query: Vec<(&'a str, String)>,
    headers: Vec<(HeaderName, String)>,
    body: Option<Bytes>,
    /// What the call is on, for errors: `container x`, `blob x/y`, `account a`.
    resource: String,
    /// Whole-blob transfers get no overall timeout (the read timeout still applies).
    streaming: bool,
}

impl BlobClient {
    /// A client of `account` at `endpoint` (`https://{account}.blob.core.windows.net`, or
    /// Azurite's `http://127.0.0.1:PORT/devstoreaccount1`).
    pub fn new(
        endpoint: &str,
        account: &str,
        credential: BlobCredential,
    ) -> Result<BlobClient, BlobError> {
        let url = Url::parse(endpoint).map_err(|e| BlobError::Config {
            reason: format!("endpoint {:?} is not a URL: {e}", redact_sas(endpoint)),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(BlobError::Config {
                reason: format!(
                    "endpoint {:?} must be an http:// or https:// URL",
                    redact_sas(endpoint)
                ),
            });
        }
        if url.query().is_some() {
            return Err(BlobError::Config {
                reason: "the endpoint must not carry a query: give a SAS token as the SAS \
                         credential (sas-token-env/sas-token-file), not in the URL"
                    .into(),
            });
        }
        if account.is_empty() {
            return Err(BlobError::Config {
                reason: "the storage account name is empty".into(),
            });
        }
        let origin = url.origin().ascii_serialization();
        let base_path = url.path().trim_end_matches('/').to_owned();
        let auth = match credential {
            BlobCredential::SharedKey(key) => {
                let bytes = BASE64
                    .decode(key.expose().trim())
                    .map_err(|_| BlobError::Config {
                        reason: "the storage account key is not base64 (copy key1 or key2 \
                                 from the account's Access keys page)"
                            .into(),
                    })?;
                if bytes.is_empty() {
                    return Err(BlobError::Config {
                        reason: "the storage account key is empty".into(),
                    });
                }
                Auth::SharedKey(bytes)
            }
            BlobCredential::Sas(token) => {
                let token = token.expose().trim().trim_start_matches('?').to_owned();
                if !token.split('&').any(|p| p.starts_with("sig=")) {
                    return Err(BlobError::Config {
                        reason: "the SAS token has no `sig=` parameter (give the whole query \
                                 string the portal or `az storage ... generate-sas` printed)"
                            .into(),
                    });
                }
                Auth::Sas(token)
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("backupd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BlobError::Config {
                reason: format!("cannot set up the HTTP client: {}", error_chain(&e)),
            })?;
        Ok(BlobClient {
            http,
            origin,
            base_path,
            account: account.to_owned(),
            auth,
            block_size: DEFAULT_BLOCK_SIZE,
        })
    }

    /// A client of `account` in Azure's public cloud.
    pub fn for_account(account: &str, credential: BlobCredential) -> Result<BlobClient, BlobError> {
        BlobClient::new(
            &format!("https://{account}.blob.core.windows.net"),
            account,
            credential,
        )
    }

    /// Uses blocks of `bytes` for uploads (and Put Blob for content smaller than one block).
    pub fn with_block_size(mut self, bytes: usize) -> Result<BlobClient, BlobError> {
        if bytes == 0 || bytes > MAX_BLOCK_SIZE {
            return Err(BlobError::Config {
                reason: format!("block size {bytes} is outside 1..={MAX_BLOCK_SIZE} bytes"),
            });
        }
        self.block_size = bytes;
        Ok(self)
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The endpoint URL (never with a SAS token).
    pub fn endpoint(&self) -> String {
        format!("{}{}", self.origin, self.base_path)
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// One page of the account's containers whose names start with `prefix`, with their
    /// metadata. `marker` is the previous page's `next_marker`; `max_results` at most 5000.
    pub async fn list_containers_page(
        &self,
        prefix: Option<&str>,
        marker: Option<&str>,
        max_results: Option<u32>,
    ) -> Result<Page<ContainerInfo>, BlobError> {
        let mut query = vec![("comp", "list".to_owned()), ("include", "metadata".into())];
        push_listing_query(&mut query, prefix, marker, max_results);
        let resource = format!("account {}", self.account);
        let response = self
            .send(Call {
                operation: "List Containers",
                method: Method::GET,
                path: "/".into(),
                query,
                headers: Vec::new(),
                body: None,
                resource: resource.clone(),
                streaming: false,
            })
            .await?;
        let listing: ContainerListXml = read_xml(response, "List Containers", &resource).await?;
        Ok(Page {
            items: listing
                .containers
                .map(|c| c.container)
                .unwrap_or_default()
                .into_iter()
                .map(ContainerXml::into_info)
                .collect(),
            next_marker: listing.next_marker.filter(|m| !m.is_empty()),
        })
    }

    /// Every container whose name starts with `prefix`, all pages.
    pub async fn list_containers(
        &self,
        prefix: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, BlobError> {
        let mut all = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .list_containers_page(prefix, marker.as_deref(), None)
                .await?;
            all.extend(page.items);
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Creates a private container with `metadata`. `false` when it already existed (its
    /// metadata is then left as it was).
    #[instrument(skip_all, fields(container = name))]
    pub async fn create_container(
        &self,
        name: &str,
        metadata: &Metadata,
    ) -> Result<bool, BlobError> {
        let mut headers = Vec::new();
        push_metadata(&mut headers, metadata)?;
        let result = self
            .send(Call {
                operation: "Create Container",
                method: Method::PUT,
                path: format!("/{}", encode_path(name)),
                query: vec![("restype", "container".into())],
                headers,
                body: None,
                resource: format!("container {name}"),
                streaming: false,
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(BlobError::Api { code, .. }) if code == "ContainerAlreadyExists" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a container and every blob in it (Azure removes it in the background, and
    /// refuses a new container of that name for about 30 s); `false` when there was none.
    #[instrument(skip_all, fields(container = name))]
    pub async fn delete_container(&self, name: &str) -> Result<bool, BlobError> {
        let result = self
            .send(Call {
                operation: "Delete Container",
                method: Method::DELETE,
                path: format!("/{}", encode_path(name)),
                query: vec![("restype", "container".into())],
                headers: Vec::new(),
                body: None,
                resource: format!("container {name}"),
                streaming: false,
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A container's properties and metadata (Get Container Properties).
    pub async fn container_properties(&self, name: &str) -> Result<ContainerInfo, BlobError> {
        let response = self
            .send(Call {
                operation: "Get Container Properties",
                method: Method::GET,
                path: format!("/{}", encode_path(name)),
                query: vec![("restype", "container".into())],
                headers: Vec::new(),
                body: None,
                resource: format!("container {name}"),
                streaming: false,
            })
            .await?;
        let headers = response.headers();
        Ok(ContainerInfo {
            name: name.to_owned(),
            etag: header_text(headers, "etag"),
            last_modified: header_text(headers, "last-modified"),
            public_access: header_text(headers, "x-ms-blob-public-access"),
            has_immutability_policy: header_text(headers, "x-ms-has-immutability-policy")
                .is_some_and(|v| v == "true"),
            has_legal_hold: header_text(headers, "x-ms-has-legal-hold")
                .is_some_and(|v| v == "true"),
            metadata: metadata_of(headers),
        })
    }

    /// One page of the blobs in `container` whose names start with `prefix`, with metadata.
    pub async fn list_blobs_page(
        &self,
        container: &str,
        prefix: Option<&str>,
        marker: Option<&str>,
        max_results: Option<u32>,
    ) -> Result<Page<BlobInfo>, BlobError> {
        let mut query = vec![
            ("restype", "container".to_owned()),
            ("comp", "list".into()),
            ("include", "metadata".into()),
        ];
        push_listing_query(&mut query, prefix, marker, max_results);
        let resource = format!("container {container}");
        let response = self
            .send(Call {
                operation: "List Blobs",
                method: Method::GET,
                path: format!("/{}", encode_path(container)),
                query,
                headers: Vec::new(),
                body: None,
                resource: resource.clone(),
                streaming: false,
            })
            .await?;
        let listing: BlobListXml = read_xml(response, "List Blobs", &resource).await?;
        Ok(Page {
            items: listing
                .blobs
                .map(|b| b.blob)
                .unwrap_or_default()
                .into_iter()
                .map(BlobXml::into_info)
                .collect::<Result<_, _>>()
                .map_err(|reason| BlobError::Protocol {
                    operation: "List Blobs",
                    resource,
                    reason,
                })?,
            next_marker: listing.next_marker.filter(|m| !m.is_empty()),
        })
    }

    /// Every blob in `container` whose name starts with `prefix`, all pages.
    pub async fn list_blobs(
        &self,
        container: &str,
        prefix: Option<&str>,
    ) -> Result<Vec<BlobInfo>, BlobError> {
        let mut all = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .list_blobs_page(container, prefix, marker.as_deref(), None)
                .await?;
            all.extend(page.items);
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Starts reading a blob: its properties now, its content through
    /// [`BlobDownload::next_chunk`] (never all in memory).
    #[instrument(skip_all, fields(container, blob = name))]
    pub async fn get_blob(&self, container: &str, name: &str) -> Result<BlobDownload, BlobError> {
        let resource = format!("blob {container}/{name}");
        let response = self
            .send(Call {
                operation: "Get Blob",
                method: Method::GET,
                path: format!("/{}/{}", encode_path(container), encode_path(name)),
                query: Vec::new(),
                headers: Vec::new(),
                body: None,
                resource: resource.clone(),
                streaming: true,
            })
            .await?;
        let headers = response.headers();
        let size = header_text(headers, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| BlobError::Protocol {
                operation: "Get Blob",
                resource: resource.clone(),
                reason: "no Content-Length".into(),
            })?;
        let properties = BlobProperties {
            size,
            content_type: header_text(headers, "content-type"),
            content_md5: header_text(headers, "content-md5"),
            etag: header_text(headers, "etag"),
            last_modified: header_text(headers, "last-modified"),
            blob_type: header_text(headers, "x-ms-blob-type"),
            metadata: metadata_of(headers),
        };
        Ok(BlobDownload {
            properties,
            response,
            resource,
            received: 0,
            md5: Md5::new(),
        })
    }

    /// Writes blob `container/name` (replacing any blob of that name) from `reader`, holding
    /// at most one block in memory: content smaller than a block goes up in one Put Blob,
    /// larger content as blocks (each with its Content-MD5, which Azure checks) committed by
    /// one Put Block List. The blob's Content-MD5 is set to the whole content's MD5.
    #[instrument(skip_all, fields(container, blob = name))]
    pub async fn put_blob<R: AsyncRead + Unpin>(
        &self,
        container: &str,
        name: &str,
        mut reader: R,
        options: &PutBlobOptions,
    ) -> Result<PutBlobOutcome, BlobError> {
        let resource = format!("blob {container}/{name}");
        let path = format!("/{}/{}", encode_path(container), encode_path(name));
        let mut property_headers = Vec::new();
        push_metadata(&mut property_headers, &options.metadata)?;
        let content_type = options
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        let mut whole_md5 = Md5::new();
        let mut whole_sha256 = Sha256::new();
        let mut size = 0u64;

        let first = read_block(&mut reader, self.block_size, &resource).await?;
        if first.len() < self.block_size {
            whole_sha256.update(&first);
            let md5 = BASE64.encode(Md5::digest(&first));
            let mut headers = property_headers;
            headers.push((
                HeaderName::from_static("x-ms-blob-type"),
                "BlockBlob".into(),
            ));
            headers.push((
                HeaderName::from_static("x-ms-blob-content-type"),
                content_type,
            ));
            headers.push((HeaderName::from_static("content-md5"), md5.clone()));
            size += first.len() as u64;
            let response = self
                .send(Call {
                    operation: "Put Blob",
                    method: Method::PUT,
                    path,
                    query: Vec::new(),
                    headers,
                    body: Some(Bytes::from(first)),
                    resource,
                    streaming: true,
                })
                .await?;
            return Ok(PutBlobOutcome {
                size,
                blocks: 0,
                content_md5: md5,
                sha256: hex::encode(whole_sha256.finalize()),
                etag: header_text(response.headers(), "etag"),
            });
        }

        let mut block_ids = Vec::new();
        let mut block = first;
        while !block.is_empty() {
            if block_ids.len() == MAX_BLOCKS {
                return Err(BlobError::TooLarge {
                    resource,
                    block_size: self.block_size,
                });
            }
            // Every id of a blob has the same length, as Azure requires.
            let id = BASE64.encode(format!("backupd-block-{:06}", block_ids.len()));
            whole_md5.update(&block);
            whole_sha256.update(&block);
            size += block.len() as u64;
            let block_md5 = BASE64.encode(Md5::digest(&block));
            self.send(Call {
                operation: "Put Block",
                method: Method::PUT,
                path: path.clone(),
                query: vec![("comp", "block".into()), ("blockid", id.clone())],
                headers: vec![(HeaderName::from_static("content-md5"), block_md5)],
                body: Some(Bytes::from(block)),
                resource: resource.clone(),
                streaming: true,
            })
            .await?;
            debug!(block = block_ids.len(), size, "block uploaded");
            block_ids.push(id);
            block = read_block(&mut reader, self.block_size, &resource).await?;
        }
        let md5 = BASE64.encode(whole_md5.finalize());
        let mut list = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for id in &block_ids {
            list.push_str("<Latest>");
            list.push_str(id);
            list.push_str("</Latest>");
        }
        list.push_str("</BlockList>");
        let mut headers = property_headers;
        headers.push((
            HeaderName::from_static("x-ms-blob-content-type"),
            content_type,
        ));
        headers.push((
            HeaderName::from_static("x-ms-blob-content-md5"),
            md5.clone(),
        ));
        headers.push((
            HeaderName::from_static("content-type"),
            "application/xml".into(),
        ));
        let response = self
            .send(Call {
                operation: "Put Block List",
                method: Method::PUT,
                path,
                query: vec![("comp", "blocklist".into())],
                headers,
                body: Some(Bytes::from(list)),
                resource,
                streaming: false,
            })
            .await?;
        Ok(PutBlobOutcome {
            size,
            blocks: block_ids.len() as u32,
            content_md5: md5,
            sha256: hex::encode(whole_sha256.finalize()),
            etag: header_text(response.headers(), "etag"),
        })
    }

    /// Deletes a blob (and its snapshots); `false` when there was none.
    pub async fn delete_blob(&self, container: &str, name: &str) -> Result<bool, BlobError> {
        let result = self
            .send(Call {
                operation: "Delete Blob",
                method: Method::DELETE,
                path: format!("/{}/{}", encode_path(container), encode_path(name)),
                query: Vec::new(),
                headers: vec![(
                    HeaderName::from_static("x-ms-delete-snapshots"),
                    "include".into(),
                )],
                body: None,
                resource: format!("blob {container}/{name}"),
                streaming: false,
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Signs and sends one call, retrying lost connections and 500/503 answers; any other
    /// unsuccessful answer becomes the matching [`BlobError`].
    async fn send(&self, call: Call<'_>) -> Result<reqwest::Response, BlobError> {
        let path = format!("{}{}", self.base_path, call.path);
        let mut query_text = call
            .query
            .iter()
            .map(|(name, value)| format!("{name}={}", encode_query_value(value)))
            .collect::<Vec<_>>()
            .join("&");
        if let Auth::Sas(token) = &self.auth {
            if !query_text.is_empty() {
                query_text.push('&');
            }
            query_text.push_str(token);
        }
        let url = if query_text.is_empty() {
            format!("{}{path}", self.origin)
        } else {
            format!("{}{path}?{query_text}", self.origin)
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut headers = HeaderMap::new();
            let date = chrono::Utc::now()
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string();
            headers.insert("x-ms-date", header_value(&date)?);
            headers.insert("x-ms-version", HeaderValue::from_static(API_VERSION));
            for (name, value) in &call.headers {
                headers.insert(name.clone(), header_value(value)?);
            }
            let content_length = call.body.as_ref().map_or(0, Bytes::len);
            if call.method == Method::PUT || call.body.is_some() {
                headers.insert("content-length", HeaderValue::from(content_length));
            }
            if let Auth::SharedKey(key) = &self.auth {
                let to_sign =
                    string_to_sign(&call.method, &headers, &self.account, &path, &call.query);
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(to_sign.as_bytes());
                let signature = BASE64.encode(mac.finalize().into_bytes());
                headers.insert(
                    "authorization",
                    header_value(&format!("SharedKey {}:{signature}", self.account))?,
                );
            }
            let mut request = self
                .http
                .request(call.method.clone(), &url)
                .headers(headers);
            if !call.streaming {
                request = request.timeout(CALL_TIMEOUT);
            }
            if let Some(body) = &call.body {
                request = request.body(body.clone());
            }
            debug!(operation = call.operation, method = %call.method, path = %path, attempt, "Blob service call");
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if attempt <= RETRIES && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(BlobError::Unreachable {
                        endpoint: self.endpoint(),
                        reason: error_chain(&e.without_url()),
                    })
                }
            };
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if matches!(status.as_u16(), 500 | 503) && attempt <= RETRIES {
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            return Err(self.error_of(response, &call).await);
        }
    }

    async fn error_of(&self, response: reqwest::Response, call: &Call<'_>) -> BlobError {
        let status = response.status();
        let header_code = header_text(response.headers(), "x-ms-error-code");
        let body = response.text().await.unwrap_or_default();
        let parsed: Option<ErrorXml> = quick_xml::de::from_str(&body).ok();
        let code = header_code
            .or_else(|| parsed.as_ref().and_then(|p| p.code.clone()))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").replace(' ', ""));
        // Azure's message ends in "RequestId:...\nTime:..." lines: the first line says it.
        let message = parsed
            .and_then(|p| p.message)
            .and_then(|m| m.lines().next().map(str::to_owned))
            .map(|m| redact_sas(m.trim()))
            .unwrap_or_else(|| status.to_string());
        let status = status.as_u16();
        // Azure says AuthenticationFailed for a bad signature; Azurite says
        // AuthorizationFailure with the same "failed to authenticate" message.
        let not_authenticated = code == "AuthenticationFailed"
            || (code == "AuthorizationFailure" && message.contains("failed to authenticate"));
        let code = if not_authenticated {
            "AuthenticationFailed".to_owned()
        } else {
            code
        };
        match (status, code.as_str()) {
            (403, "AuthenticationFailed") if matches!(self.auth, Auth::SharedKey(_)) => {
                BlobError::AccountKeyRejected {
                    account: self.account.clone(),
                    status,
                    message,
                }
            }
            (403, "AuthenticationFailed") => BlobError::SasRejected {
                account: self.account.clone(),
                status,
                code,
                message,
            },
            (403, _) => BlobError::Denied {
                account: self.account.clone(),
                operation: call.operation,
                resource: call.resource.clone(),
                status,
                code,
                message,
            },
            (404, _) => BlobError::NotFound {
                resource: call.resource.clone(),
                code,
                message,
            },
            _ => BlobError::Api {
                operation: call.operation,
                resource: call.resource.clone(),
                status,
                code,
                message,
            },
        }
    }
}

/// The Shared Key StringToSign of the Blob service (API 2015-02-21 and later): the verb,
/// eleven standard headers (Content-Length empty when zero), the `x-ms-` headers lowercased
/// and sorted, then `/{account}{path}` and the query parameters sorted by name, each
/// `\nname:value` with its value unencoded.
fn string_to_sign(
    method: &Method,
    headers: &HeaderMap,
    account: &str,
    path: &str,
    query: &[(&str, String)],
) -> String {
    let standard = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let content_length = match standard("content-length").as_str() {
        "0" => String::new(),
        other => other.to_owned(),
    };
    let mut text = format!(
        "{method}\n{}\n{}\n{content_length}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        standard("content-encoding"),
        standard("content-language"),
        standard("content-md5"),
        standard("content-type"),
        standard("date"),
        standard("if-modified-since"),
        standard("if-match"),
        standard("if-none-match"),
        standard("if-unmodified-since"),
        standard("range"),
    );
    let mut ms_headers: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-ms-"))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("").trim().to_owned(),
            )
        })
        .collect();
    ms_headers.sort();
    for (name, value) in ms_headers {
        text.push_str(&name);
        text.push(':');
        text.push_str(&value);
        text.push('\n');
    }
    text.push('/');
    text.push_str(account);
    text.push_str(path);
    let mut params: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, value) in query {
        params
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value);
    }
    for (name, mut values) in params {
        values.sort_unstable();
        text.push('\n');
        text.push_str(&name);
        text.push(':');
        text.push_str(&values.join(","));
    }
    text
}

fn push_listing_query(
    query: &mut Vec<(&str, String)>,
    prefix: Option<&str>,
    marker: Option<&str>,
    max_results: Option<u32>,
) {
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        query.push(("prefix", prefix.to_owned()));
    }
    if let Some(marker) = marker {
        query.push(("marker", marker.to_owned()));
    }
    if let Some(max) = max_results {
        query.push(("maxresults", max.to_string()));
    }
}

fn push_metadata(
    headers: &mut Vec<(HeaderName, String)>,
    metadata: &Metadata,
) -> Result<(), BlobError> {
    for (name, value) in metadata {
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(BlobError::InvalidMetadata {
                name: name.clone(),
                reason: "a metadata name is a C# identifier: ASCII letters, digits and `_`, \
                         not starting with a digit"
                    .into(),
            });
        }
        if !value
            .chars()
            .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
        {
            return Err(BlobError::InvalidMetadata {
                name: name.clone(),
                reason: "a metadata value is ASCII text (encode other characters first)".into(),
            });
        }
        let header = HeaderName::try_from(format!("x-ms-meta-{}", name.to_ascii_lowercase()))
            .map_err(|_| BlobError::InvalidMetadata {
                name: name.clone(),
                reason: "not a header name".into(),
            })?;
        headers.push((header, value.trim().to_owned()));
    }
    Ok(())
}

/// Metadata from response headers (`x-ms-meta-NAME`; HTTP/1 header names arrive lowercase).
fn metadata_of(headers: &HeaderMap) -> Metadata {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("x-ms-meta-")?;
            Some((key.to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|v| !v.is_empty())
}

fn header_value(text: &str) -> Result<HeaderValue, BlobError> {
    HeaderValue::from_str(text).map_err(|_| BlobError::Config {
        reason: "a header value holds characters HTTP cannot carry".into(),
    })
}

/// Fills up to `size` bytes from `reader` (fewer only at the end of the data).
async fn read_block<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
    resource: &str,
) -> Result<Vec<u8>, BlobError> {
    let mut block = Vec::with_capacity(size);
    let mut limited = reader.take(size as u64);
    limited
        .read_to_end(&mut block)
        .await
        .map_err(|source| BlobError::Read {
            resource: resource.to_owned(),
            source,
        })?;
    Ok(block)
}

async fn read_xml<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    operation: &'static str,
    resource: &str,
) -> Result<T, BlobError> {
    let protocol = |reason: String| BlobError::Protocol {
        operation,
        resource: resource.to_owned(),
        reason,
    };
    let text = response
        .text()
        .await
        .map_err(|e| protocol(error_chain(&e.without_url())))?;
    quick_xml::de::from_str(&text).map_err(|e| protocol(format!("unreadable XML: {e}")))
}

/// Percent-encodes a container or blob name for a URL path, keeping `/` (blob "folders").
fn encode_path(name: &str) -> String {
    encode(name, b"-._~/")
}

fn encode_query_value(value: &str) -> String {
    encode(value, b"-._~")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5))
}

// The XML answers, as the Blob service documents them (unknown elements are ignored).

#[derive(Deserialize)]
struct ErrorXml {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ContainerListXml {
    #[serde(rename = "Containers")]
    containers: Option<ContainersXml>,
    #[serde(rename = "NextMarker")]
    next_marker: Option<String>,
}

#[derive(Deserialize)]
struct ContainersXml {
    #[serde(rename = "Container", default)]
    container: Vec<ContainerXml>,
}

#[derive(Deserialize)]
struct ContainerXml {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Properties")]
    properties: Option<ContainerPropertiesXml>,
    #[serde(rename = "Metadata", default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct ContainerPropertiesXml {
    #[serde(rename = "Last-Modified")]
    last_modified: Option<String>,
    #[serde(rename = "Etag")]
    etag: Option<String>,
    #[serde(rename = "PublicAccess")]
    public_access: Option<String>,
    #[serde(rename = "HasImmutabilityPolicy")]
    has_immutability_policy: Option<String>,
    #[serde(rename = "HasLegalHold")]
    has_legal_hold: Option<String>,
}

impl ContainerXml {
    fn into_info(self) -> ContainerInfo {
        let p = self.properties.unwrap_or_default();
        ContainerInfo {
            name: self.name,
            etag: non_empty(p.etag),
            last_modified: non_empty(p.last_modified),
            public_access: non_empty(p.public_access),
            has_immutability_policy: p.has_immutability_policy.is_some_and(|v| v == "true"),
            has_legal_hold: p.has_legal_hold.is_some_and(|v| v == "true"),
            metadata: self.metadata.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct BlobListXml {
    #[serde(rename = "Blobs")]
    blobs: Option<BlobsXml>,
    #[serde(rename = "NextMarker")]
    next_marker: Option<String>,
}

#[derive(Deserialize)]
struct BlobsXml {
    #[serde(rename = "Blob", default)]
    blob: Vec<BlobXml>,
}

#[derive(Deserialize)]
struct BlobXml {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Properties")]
    properties: Option<BlobPropertiesXml>,
    #[serde(rename = "Metadata", default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct BlobPropertiesXml {
    #[serde(rename = "Last-Modified")]
    last_modified: Option<String>,
    #[serde(rename = "Etag")]
    etag: Option<String>,
    #[serde(rename = "Content-Length")]
    content_length: Option<String>,
    #[serde(rename = "Content-Type")]
    content_type: Option<String>,
    #[serde(rename = "Content-MD5")]
    content_md5: Option<String>,
    #[serde(rename = "BlobType")]
    blob_type: Option<String>,
    #[serde(rename = "AccessTier")]
    access_tier: Option<String>,
}

impl BlobXml {
    fn into_info(self) -> Result<BlobInfo, String> {
        let p = self.properties.unwrap_or_default();
        let size = match non_empty(p.content_length) {
            Some(text) => text
                .parse()
                .map_err(|_| format!("blob {}: Content-Length {text:?}", self.name))?,
            None => 0,
        };
        Ok(BlobInfo {
            name: self.name,
            size,
            content_type: non_empty(p.content_type),
            content_md5: non_empty(p.content_md5),
            etag: non_empty(p.etag),
            last_modified: non_empty(p.last_modified),
            blob_type: non_empty(p.blob_type),
            access_tier: non_empty(p.access_tier),
            metadata: self.metadata.unwrap_or_default(),
        })
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_to_sign_follows_the_documented_layout() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-version", HeaderValue::from_static("2021-08-06"));
        headers.insert(
            "x-ms-date",
            HeaderValue::from_static("Fri, 26 Jun 2015 23:39:12 GMT"),
        );
        headers.insert("x-ms-meta-owner", HeaderValue::from_static(" ops "));
        headers.insert("content-length", HeaderValue::from_static("0"));
        let query = vec![
            ("restype", "container".to_owned()),
            ("comp", "list".to_owned()),
            ("include", "metadata".to_owned()),
        ];
        let text = string_to_sign(&Method::GET, &headers, "myaccount", "/mycontainer", &query);
        assert_eq!(
            text,
            "GET\n\n\n\n\n\n\n\n\n\n\n\n\
             x-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-meta-owner:ops\nx-ms-version:2021-08-06\n\
             /myaccount/mycontainer\ncomp:list\ninclude:metadata\nrestype:container"
        );
    }

    #[test]
    fn names_are_percent_encoded_but_keep_their_folders() {
        assert_eq!(encode_path("dir/a file+1.txt"), "dir/a%20file%2B1.txt");
        assert_eq!(encode_path("ünï"), "%C3%BCn%C3%AF");
        assert_eq!(encode_query_value("YmxvY2s=/+"), "YmxvY2s%3D%2F%2B");
    }

    #[test]
    fn listings_parse_with_metadata_and_markers() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="c">
  <Prefix/><MaxResults>2</MaxResults>
  <Blobs>
    <Blob><Name>a</Name><Properties><Content-Length>3</Content-Length><Content-Type>text/plain</Content-Type><Content-MD5/><BlobType>BlockBlob</BlobType></Properties><Metadata><owner>ops</owner><tier>gold</tier></Metadata></Blob>
    <Blob><Name>b</Name><Properties><Content-Length>0</Content-Length></Properties><Metadata/></Blob>
  </Blobs>
  <NextMarker>b-next</NextMarker>
</EnumerationResults>"#;
        let listing: BlobListXml = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(listing.next_marker.as_deref(), Some("b-next"));
        let blobs: Vec<BlobInfo> = listing
            .blobs
            .unwrap()
            .blob
            .into_iter()
            .map(|b| b.into_info().unwrap())
            .collect();
        assert_eq!(blobs[0].size, 3);
        assert_eq!(blobs[0].content_md5, None);
        assert_eq!(blobs[0].metadata["tier"], "gold");
        assert!(blobs[1].metadata.is_empty());

        let empty = r#"<EnumerationResults><Containers/><NextMarker/></EnumerationResults>"#;
        let listing: ContainerListXml = quick_xml::de::from_str(empty).unwrap();
        assert!(listing.containers.is_none_or(|c| c.container.is_empty()));
        assert!(listing.next_marker.filter(|m| !m.is_empty()).is_none());
    }

    #[test]
    fn keys_and_sas_signatures_do_not_print() {
        let client = BlobClient::new(
            "http://127.0.0.1:1/devstoreaccount1",
            "devstoreaccount1",
            BlobCredential::SharedKey(Secret::new("c2VjcmV0LWtleQ==")),
        )
        .unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("c2VjcmV0LWtleQ"), "{text}");
        let sas = BlobClient::new(
            "https://a.blob.core.windows.net",
            "a",
            BlobCredential::Sas(Secret::new("?sv=2021-08-06&ss=b&sig=TOPSECRET")),
        )
        .unwrap();
        assert!(!format!("{sas:?}").contains("TOPSECRET"));
        let bad = BlobClient::new(
            "https://a.blob.core.windows.net/?sv=1&sig=TOPSECRET",
            "a",
            BlobCredential::SharedKey(Secret::new("a2V5")),
        )
        .unwrap_err();
        assert!(!bad.to_string().contains("TOPSECRET"), "{bad}");
        let not_base64 = BlobClient::new(
            "https://a.blob.core.windows.net",
            "a",
            BlobCredential::SharedKey(Secret::new("not base64 at all!")),
        )
        .unwrap_err();
        assert!(!not_base64.to_string().contains("not base64 at all"));
    }

    #[test]
    fn metadata_names_must_be_identifiers() {
        let mut headers = Vec::new();
        let mut metadata = Metadata::new();
        metadata.insert("9lives".into(), "x".into());
        assert!(matches!(
            push_metadata(&mut headers, &metadata),
            Err(BlobError::InvalidMetadata { .. })
        ));
        metadata.clear();
        metadata.insert("Owner_1".into(), "ops team".into());
        push_metadata(&mut headers, &metadata).unwrap();
        assert_eq!(headers[0].0.as_str(), "x-ms-meta-owner_1");
    }
}
