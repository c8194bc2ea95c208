//! MongoDB Atlas through its Admin API v2 (`/api/atlas/v2`): on-demand cloud backup
//! snapshots of one cluster, the project's snapshot list, restore jobs (automated into a
//! cluster, point in time, or a download link of the snapshot's files) and snapshot deletion.
//!
//! Authentication is a programmatic API key: HTTP Digest (RFC 7616, MD5, `qop=auth`) with
//! the public key as user name and the private key as password, which is how Atlas takes API
//! keys. The private key is kept in a [`Secret`] and never appears in errors or `Debug`.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use md5::{Digest as _, Md5};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

/// The API version every call asks for (Atlas versions its resources by date).
pub const API_VERSION: &str = "application/vnd.atlas.2023-01-01+json";

/// What went wrong talking to Atlas.
#[derive(Debug, thiserror::Error)]
pub enum AtlasError {
    #[error(
        "cannot reach the Atlas Admin API at {url}: {reason}; check `base-url` and the network"
    )]
    Unreachable { url: String, reason: String },
    #[error("Atlas refused the API key {public_key} (HTTP {status}{detail}): check `public-key` and the private key, that the key has the Project Backup Manager role on the project, and that this host's address is on the key's access list")]
    Unauthorized {
        public_key: String,
        status: u16,
        detail: String,
    },
    #[error("Atlas answered {method} {path} with HTTP {status} {error_code}: {detail}")]
    Api {
        method: String,
        path: String,
        status: u16,
        error_code: String,
        detail: String,
    },
    #[error("unexpected answer from Atlas to {what}: {reason}")]
    Protocol { what: String, reason: String },
}

impl AtlasError {
    /// The `errorCode` Atlas gave, if it gave one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            AtlasError::Api { error_code, .. } => Some(error_code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            AtlasError::Api { status, .. } | AtlasError::Unauthorized { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// The private key's type (shared with the other clients of this crate).
pub use crate::secret::Secret;

/// One cloud backup snapshot (`DiskBackupReplicaSet`), as Atlas describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub id: String,
    /// `queued`, `inProgress`, `completed` or `failed`.
    pub status: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `onDemand`, `scheduled` (Atlas's own policy) or `fallback`.
    #[serde(default)]
    pub snapshot_type: Option<String>,
    #[serde(default)]
    pub storage_size_bytes: Option<u64>,
    #[serde(default)]
    pub mongod_version: Option<String>,
    #[serde(default)]
    pub replica_set_name: Option<String>,
}

impl Snapshot {
    pub fn is_done(&self) -> bool {
        self.status == "completed"
    }

    pub fn has_failed(&self) -> bool {
        self.status == "failed"
    }
}

/// A restore job (`DiskBackupSnapshotRestoreJob`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreJob {
    pub id: String,
    /// `automated`, `download` or `pointInTime`.
    pub delivery_type: String,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Download jobs: the links to the snapshot's files, once they are ready.
    #[serde(default)]
    pub delivery_url: Vec<String>,
    #[serde(default)]
    pub expired: bool,
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub cancelled: bool,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub target_cluster_name: Option<String>,
    #[serde(default)]
    pub target_group_id: Option<String>,
    #[serde(default, rename = "pointInTimeUTCSeconds")]
    pub point_in_time_utc_seconds: Option<i64>,
}

/// What a restore job restores and where.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRequest {
    pub delivery_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_cluster_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_group_id: Option<String>,
    #[serde(
        rename = "pointInTimeUTCSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub point_in_time_utc_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    #[serde(default = "Vec::new")]
    results: Vec<T>,
    #[serde(default)]
    total_count: Option<u64>,
}

/// Atlas's error body: `{"detail", "error", "errorCode", "parameters", "reason"}`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ApiErrorBody {
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A Digest challenge from `WWW-Authenticate`, reused (with a growing nonce count) until
/// Atlas sends a new one.
#[derive(Debug, Clone)]
struct Challenge {
    realm: String,
    nonce: String,
    opaque: Option<String>,
    qop_auth: bool,
    count: u32,
}

impl Challenge {
    fn parse(header: &str) -> Option<Challenge> {
        let rest = header.trim().strip_prefix("Digest")?.trim();
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut qop_auth = false;
        for (name, value) in parse_params(rest) {
            match name.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "opaque" => opaque = Some(value),
                "qop" => qop_auth = value.split(',').any(|q| q.trim() == "auth"),
                "algorithm" if !value.eq_ignore_ascii_case("MD5") => return None,
                _ => {}
            }
        }
        Some(Challenge {
            realm: realm?,
            nonce: nonce?,
            opaque,
            qop_auth,
            count: 0,
        })
    }

    /// The `Authorization` value for one request.
    fn authorize(&mut self, method: &str, uri: &str, user: &str, password: &str) -> String {
        self.count += 1;
        let nc = format!("{:08x}", self.count);
        let cnonce = hex::encode(rand::random::<[u8; 8]>());
        let ha1 = md5_hex(&format!("{user}:{}:{password}", self.realm));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let response = if self.qop_auth {
            md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            md5_hex(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let mut value = format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
             algorithm=MD5, response=\"{response}\"",
            self.realm, self.nonce
        );
        if self.qop_auth {
            value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        }
        if let Some(opaque) = &self.opaque {
            value.push_str(&format!(", opaque=\"{opaque}\""));
        }
        value
    }
}

/// `name=value` and `name="quoted, value"` pairs of an auth header, comma-separated.
pub fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            value = quoted[..end].to_owned();
            rest = quoted.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.push((name, value));
    }
    out
}

pub fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

/// A client for one cluster of one project.
pub struct AtlasClient {
    http: reqwest::Client,
    base_url: String,
    project_id: String,
    cluster: String,
    public_key: String,
    private_key: Secret,
    challenge: Mutex<Option<Challenge>>,
}

impl fmt::Debug for AtlasClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtlasClient")
            .field("base_url", &self.base_url)
            .field("project_id", &self.project_id)
            .field("cluster", &self.cluster)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// How long one HTTP call may take before it counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of answers that say "try again" (429, 502, 503, 504) and of lost connections.
const RETRIES: u32 = 3;

impl AtlasClient {
    pub fn new(
        base_url: &str,
        project_id: &str,
        cluster: &str,
        public_key: &str,
        private_key: Secret,
    ) -> Result<AtlasClient, AtlasError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("backupd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AtlasError::Unreachable {
                url: base_url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(AtlasClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            project_id: project_id.to_owned(),
            cluster: cluster.to_owned(),
            public_key: public_key.to_owned(),
            private_key,
            challenge: Mutex::new(None),
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    fn snapshots_path(&self) -> String {
        format!(
            "/api/atlas/v2/groups/{}/clusters/{}/backup/snapshots",
            self.project_id, self.cluster
        )
    }

    fn restore_jobs_path(&self) -> String {
        format!(
            "/api/atlas/v2/groups/{}/clusters/{}/backup/restoreJobs",
            self.project_id, self.cluster
        )
    }

    /// Takes an on-demand snapshot that Atlas itself keeps `retention_days` at most.
    pub async fn take_snapshot(
        &self,
        description: &str,
        retention_days: u32,
    ) -> Result<Snapshot, AtlasError> {
        let body = serde_json::json!({
            "description": description,
            "retentionInDays": retention_days,
        });
        self.call(Method::POST, &self.snapshots_path(), Some(body))
            .await
    }

    pub async fn snapshot(&self, id: &str) -> Result<Snapshot, AtlasError> {
        self.call(
            Method::GET,
            &format!("{}/{id}", self.snapshots_path()),
            None,
        )
        .await
    }

    /// Every snapshot of the cluster, all pages.
    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>, AtlasError> {
        let mut all = Vec::new();
        for page in 1.. {
            let path = format!(
                "{}?pageNum={page}&itemsPerPage=100&includeCount=true",
                self.snapshots_path()
            );
            let got: Page<Snapshot> = self.call(Method::GET, &path, None).await?;
            let n = got.results.len();
            all.extend(got.results);
            let total = got.total_count.unwrap_or(all.len() as u64);
            if n == 0 || all.len() as u64 >= total {
                break;
            }
        }
        Ok(all)
    }

    /// Deletes a snapshot; `false` when Atlas no longer has it (already expired or deleted).
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool, AtlasError> {
        let path = format!("{}/{id}", self.snapshots_path());
        match self
            .call::<serde_json::Value>(Method::DELETE, &path, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn create_restore_job(
        &self,
        request: &RestoreRequest,
    ) -> Result<RestoreJob, AtlasError> {
        let body = serde_json::to_value(request).expect("restore requests serialise");
        self.call(Method::POST, &self.restore_jobs_path(), Some(body))
            .await
    }

    pub async fn restore_job(&self, id: &str) -> Result<RestoreJob, AtlasError> {
        self.call(
            Method::GET,
            &format!("{}/{id}", self.restore_jobs_path()),
            None,
        )
        .await
    }

    /// Starts downloading a snapshot's file from a restore job's delivery URL (a signed
    /// link: no API key is sent with it).
    pub async fn download(&self, url: &str) -> Result<reqwest::Response, AtlasError> {
        let response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|e| AtlasError::Unreachable {
                url: redact_query(url),
                reason: e.without_url().to_string(),
            })?;
        if !response.status().is_success() {
            return Err(AtlasError::Api {
                method: "GET".into(),
                path: redact_query(url),
                status: response.status().as_u16(),
                error_code: String::new(),
                detail: "the snapshot's download link did not answer with its content (it \
                         may have expired: download links last a few hours)"
                    .into(),
            });
        }
        Ok(response)
    }

    /// One API call, with Digest authentication and retries of transient failures.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, AtlasError> {
        let url = format!("{}{path}", self.base_url);
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header(ACCEPT, API_VERSION);
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, API_VERSION)
                    .body(body.to_string());
            }
            let authorization = self
                .challenge
                .lock()
                .expect("challenge lock")
                .as_mut()
                .map(|c| {
                    c.authorize(
                        method.as_str(),
                        path,
                        &self.public_key,
                        self.private_key.expose(),
                    )
                });
            if let Some(value) = authorization {
                let value = HeaderValue::from_str(&value).map_err(|_| AtlasError::Protocol {
                    what: "the API key".into(),
                    reason: "the public key holds characters a header cannot".into(),
                })?;
                request = request.header(AUTHORIZATION, value);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if attempt <= RETRIES && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(AtlasError::Unreachable {
                        url: self.base_url.clone(),
                        reason: e.without_url().to_string(),
                    })
                }
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                let fresh = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .and_then(Challenge::parse);
                // A first request (no challenge yet) or a stale nonce: answer the challenge once.
                if let Some(fresh) = fresh {
                    if !challenged {
                        challenged = true;
                        *self.challenge.lock().expect("challenge lock") = Some(fresh);
                        continue;
                    }
                }
                let error = read_error(response).await;
                return Err(AtlasError::Unauthorized {
                    public_key: self.public_key.clone(),
                    status: 401,
                    detail: error.detail.map(|d| format!(": {d}")).unwrap_or_default(),
                });
            }
            if matches!(status.as_u16(), 429 | 502 | 503 | 504) && attempt <= RETRIES {
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            if status == StatusCode::FORBIDDEN {
                let error = read_error(response).await;
                return Err(AtlasError::Unauthorized {
                    public_key: self.public_key.clone(),
                    status: 403,
                    detail: format!(
                        ": {}",
                        error
                            .detail
                            .unwrap_or_else(|| "the key may not do this".into())
                    ),
                });
            }
            if !status.is_success() {
                let error = read_error(response).await;
                return Err(AtlasError::Api {
                    method: method.to_string(),
                    path: path.to_owned(),
                    status: status.as_u16(),
                    error_code: error.error_code.unwrap_or_default(),
                    detail: error
                        .detail
                        .or(error.reason)
                        .unwrap_or_else(|| status.to_string()),
                });
            }
            let text = response.text().await.map_err(|e| AtlasError::Protocol {
                what: format!("{method} {path}"),
                reason: e.without_url().to_string(),
            })?;
            // DELETE answers 204 or `{}`.
            let text = if text.trim().is_empty() { "{}" } else { &text };
            return serde_json::from_str(text).map_err(|e| AtlasError::Protocol {
                what: format!("{method} {path}"),
                reason: e.to_string(),
            });
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5))
}

async fn read_error(response: reqwest::Response) -> ApiErrorBody {
    response
        .text()
        .await
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// A URL without its query (a signed download link's signature is a credential).
pub fn redact_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?..."),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_challenges_parse_and_answers_follow_rfc_2617() {
        let header = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let mut c = Challenge::parse(header).unwrap();
        assert_eq!(c.realm, "testrealm@host.com");
        assert!(c.qop_auth);
        let value = c.authorize("GET", "/dir/index.html", "Mufasa", "Circle Of Life");
        let params: std::collections::HashMap<_, _> =
            parse_params(value.strip_prefix("Digest ").unwrap())
                .into_iter()
                .collect();
        // RFC 2617 section 3.5 with this request's cnonce.
        let ha1 = md5_hex("Mufasa:testrealm@host.com:Circle Of Life");
        assert_eq!(ha1, "939e7578ed9e3c518a452acee763bce9");
        let ha2 = md5_hex("GET:/dir/index.html");
        let expected = md5_hex(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:{}:auth:{ha2}",
            params["cnonce"]
        ));
        assert_eq!(params["response"], expected);
        assert_eq!(params["nc"], "00000001");
        assert_eq!(params["opaque"], "5ccc069c403ebaf9f0171e9517f40e41");
        c.authorize("GET", "/", "u", "p");
        assert_eq!(c.count, 2, "the nonce count grows per request");
        assert!(Challenge::parse("Basic realm=\"x\"").is_none());
        assert!(Challenge::parse("Digest realm=\"x\", nonce=\"n\", algorithm=SHA-256").is_none());
    }

    #[test]
    fn secrets_and_signed_links_do_not_print() {
        let client = AtlasClient::new(
            "https://cloud.example",
            "p",
            "c",
            "pub",
            Secret::new("s3cret"),
        )
        .unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
        assert_eq!(
            redact_query("https://dl.example/x.tar.gz?X-Amz-Signature=abc"),
            "https://dl.example/x.tar.gz?..."
        );
    }
}
