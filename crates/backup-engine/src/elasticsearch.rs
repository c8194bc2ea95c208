//! The Elasticsearch source: backupd drives the cluster's own snapshots. The snapshot data
//! stays in the cluster's snapshot repository; each backup stores a record of its snapshot
//! (name, uuid, indices, shards, size, state) as its data artifact in the backupd repository,
//! and in the catalog. Retention deletes the snapshot with the backup; restore calls
//! `_restore`. See docs/sources/elasticsearch.md.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use backup_catalog::{redact_url, ElasticsearchSnapshotRecord};
use backup_core::BackupId;

use crate::error::{EngineError, Result};
use crate::mysql::DumpEvent;
use crate::restore::BackupSelector;
use crate::Engine;

/// The entry a backup's data artifact holds: the snapshot's record.
pub const RECORD_PATH: &str = "elasticsearch/snapshot.json";

/// `[[source]] kind = "elasticsearch"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ElasticsearchSourceConfig {
    /// `https://es.internal:9200` (no credentials in it).
    pub url: String,
    /// The snapshot repository in the cluster.
    pub snapshot_repository: String,
    /// Register the repository (`PUT _snapshot/{repo}`, verified by the cluster) with this
    /// type before each backup; without it the repository must already exist.
    #[serde(default)]
    pub repository_type: Option<String>,
    /// Its settings, e.g. `{ location = "/mnt/es-snapshots" }` or `{ bucket = "..." }`.
    #[serde(default)]
    pub repository_settings: Option<toml::Table>,
    /// Indices (names and wildcards) to snapshot; empty: all.
    #[serde(default)]
    pub indices: Vec<String>,
    #[serde(default)]
    pub include_global_state: bool,
    /// Snapshot names are this prefix followed by the backup id.
    #[serde(default = "default_prefix")]
    pub snapshot_prefix: String,
    /// Basic auth: the user, with the password in `password-env` or `password-file`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// API key (`id:key`, or the base64 "encoded" form Elasticsearch prints).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// How often a running snapshot's `_status` is polled.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A snapshot still running after this long is deleted and the backup fails.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_prefix() -> String {
    "backupd-".into()
}
fn default_poll() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}

impl ElasticsearchSourceConfig {
    /// Checked at config load: `(key, message)` on failure.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(("url".into(), "must be an http:// or https:// URL".into()));
        }
        if self
            .url
            .split("://")
            .nth(1)
            .is_some_and(|r| r.split('/').next().unwrap_or("").contains('@'))
        {
            return Err((
                "url".into(),
                "must not contain credentials: use username with password-env/-file, or api-key-env/-file".into(),
            ));
        }
        if self.snapshot_repository.is_empty() {
            return Err(("snapshot-repository".into(), "must not be empty".into()));
        }
        let prefix_ok = self
            .snapshot_prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
        if !prefix_ok {
            return Err((
                "snapshot-prefix".into(),
                "use lowercase letters, digits, '-', '_' or '.' (snapshot names are lowercase)"
                    .into(),
            ));
        }
        let password = self.password_env.is_some() as u8 + self.password_file.is_some() as u8;
        let key = self.api_key_env.is_some() as u8 + self.api_key_file.is_some() as u8;
        if password > 1
            || key > 1
            || (password == 1) != self.username.is_some()
            || (key == 1 && password == 1)
        {
            return Err((
                "username".into(),
                "give username with one of password-env / password-file, or one of api-key-env / api-key-file, or neither".into(),
            ));
        }
        if self.repository_settings.is_some() && self.repository_type.is_none() {
            return Err((
                "repository-settings".into(),
                "needs repository-type (e.g. \"fs\" or \"s3\")".into(),
            ));
        }
        if self.poll_interval.is_zero() || self.timeout < self.poll_interval {
            return Err((
                "poll-interval".into(),
                "must be above zero and below timeout".into(),
            ));
        }
        Ok(())
    }

    /// The snapshot name of backup `id`.
    pub fn snapshot_name(&self, id: BackupId) -> String {
        format!("{}{}", self.snapshot_prefix, id).to_lowercase()
    }
}

/// A client of one cluster, with its credentials.
pub struct EsClient {
    http: reqwest::Client,
    url: String,
    auth: Option<String>,
}

/// An Elasticsearch error: HTTP status, `error.type`, `error.reason`.
#[derive(Debug)]
struct EsFailure {
    status: u16,
    kind: String,
    reason: String,
}

impl std::fmt::Display for EsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.kind, self.reason)
    }
}

fn secret(env: Option<&str>, file: Option<&std::path::Path>, what: &str) -> Result<Option<String>> {
    crate::mysql::read_password(env, file).map_err(|e| EngineError::Usage(format!("{what}: {e}")))
}

impl EsClient {
    pub fn new(cfg: &ElasticsearchSourceConfig) -> Result<EsClient> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let auth = if let Some(user) = &cfg.username {
            let password = secret(
                cfg.password_env.as_deref(),
                cfg.password_file.as_deref(),
                "password",
            )?
            .unwrap_or_default();
            Some(format!(
                "Basic {}",
                b64.encode(format!("{user}:{password}"))
            ))
        } else if let Some(key) = secret(
            cfg.api_key_env.as_deref(),
            cfg.api_key_file.as_deref(),
            "api key",
        )? {
            let key = key.trim();
            Some(if key.contains(':') {
                format!("ApiKey {}", b64.encode(key))
            } else {
                format!("ApiKey {key}")
            })
        } else {
            None
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| EngineError::Failed(format!("building an HTTP client: {e}")))?;
        Ok(EsClient {
            http,
            url: cfg.url.trim_end_matches('/').to_owned(),
            auth,
        })
    }

    fn shown(&self) -> String {
        redact_url(&self.url)
    }

    /// Sends a request; the JSON body on 2xx, the cluster's error otherwise.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<std::result::Result<Value, EsFailure>> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(auth) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.map_err(|e| {
            EngineError::Failed(format!(
                "Elasticsearch at {}: cluster unreachable ({method} {path}: {}); check `url` and that the cluster runs",
                self.shown(),
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string())
            ))
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| {
            EngineError::Failed(format!(
                "Elasticsearch at {}: reading the answer to {method} {path}: {e}",
                self.shown()
            ))
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(Ok(value));
        }
        let kind = value
            .pointer("/error/type")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_owned();
        let reason = value
            .pointer("/error/reason")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string().chars().take(300).collect());
        let failure = EsFailure {
            status,
            kind,
            reason,
        };
        if status == 401 || (status != 403 && failure.kind == "security_exception") {
            return Err(EngineError::Failed(format!(
                "Elasticsearch at {}: authentication failed ({failure}); check username and \
                 password-env / password-file, or api-key-env / api-key-file",
                self.shown()
            )));
        }
        if status == 403 {
            return Err(EngineError::Failed(format!(
                "Elasticsearch at {}: permission denied for {method} {path} ({failure}); the user \
                 needs the cluster privileges in docs/sources/elasticsearch.md",
                self.shown()
            )));
        }
        Ok(Err(failure))
    }

    /// Like `call`, with every cluster error turned into a failure naming `what`.
    async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value> {
        self.call(method, path, body).await?.map_err(|f| {
            EngineError::Failed(format!("Elasticsearch at {}: {what}: {f}", self.shown()))
        })
    }

    fn missing_repository(&self, repo: &str, f: &EsFailure) -> EngineError {
        EngineError::Failed(format!(
            "Elasticsearch at {}: snapshot repository {repo} is missing ({f}); register it \
             (PUT _snapshot/{repo}) or set repository-type and repository-settings on the source",
            self.shown()
        ))
    }

    /// Registers (when configured), checks and verifies the snapshot repository.
    pub async fn prepare_repository(&self, cfg: &ElasticsearchSourceConfig) -> Result<()> {
        let repo = &cfg.snapshot_repository;
        let path = format!("/_snapshot/{repo}");
        if let Some(kind) = &cfg.repository_type {
            let settings =
                serde_json::to_value(cfg.repository_settings.clone().unwrap_or_default())
                    .map_err(|e| EngineError::Usage(format!("repository-settings: {e}")))?;
            if let Err(f) = self
                .call(
                    reqwest::Method::PUT,
                    &path,
                    Some(json!({ "type": kind, "settings": settings })),
                )
                .await?
            {
                return Err(self.repository_failure(repo, &f));
            }
        }
        let info = match self.call(reqwest::Method::GET, &path, None).await? {
            Ok(v) => v,
            Err(f) if f.kind == "repository_missing_exception" || f.status == 404 => {
                return Err(self.missing_repository(repo, &f))
            }
            Err(f) => return Err(self.repository_failure(repo, &f)),
        };
        let readonly = info.pointer(&format!("/{repo}/settings/readonly"));
        if matches!(readonly, Some(Value::Bool(true)))
            || readonly.and_then(Value::as_str) == Some("true")
        {
            return Err(EngineError::Failed(format!(
                "Elasticsearch at {}: snapshot repository {repo} is read-only (settings.readonly); \
                 snapshots cannot be written there; use a writable repository",
                self.shown()
            )));
        }
        match self
            .call(reqwest::Method::POST, &format!("{path}/_verify"), None)
            .await?
        {
            Ok(_) => Ok(()),
            Err(f) => Err(self.repository_failure(repo, &f)),
        }
    }

    fn repository_failure(&self, repo: &str, f: &EsFailure) -> EngineError {
        match f.kind.as_str() {
            "repository_missing_exception" => self.missing_repository(repo, f),
            "repository_verification_exception" => EngineError::Failed(format!(
                "Elasticsearch at {}: snapshot repository {repo} failed verification ({f}); the \
                 nodes cannot write to it (read-only or unshared location): fix its location or \
                 permissions",
                self.shown()
            )),
            "repository_exception" if f.reason.contains("readonly") => {
                EngineError::Failed(format!(
                    "Elasticsearch at {}: snapshot repository {repo} is read-only ({f}); use a \
                 writable repository",
                    self.shown()
                ))
            }
            _ => EngineError::Failed(format!(
                "Elasticsearch at {}: snapshot repository {repo}: {f}",
                self.shown()
            )),
        }
    }

    /// Deletes a snapshot; a missing one counts as deleted.
    /// Documents per index (`GET _cat/indices`).
    pub async fn doc_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let rows = self
            .call(
                reqwest::Method::GET,
                "/_cat/indices?format=json&h=index,docs.count&expand_wildcards=all",
                None,
            )
            .await?
            .map_err(|f| {
                EngineError::Failed(format!(
                    "Elasticsearch at {}: listing indices: {f}",
                    self.shown()
                ))
            })?;
        Ok(rows
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| {
                let index = row.get("index")?.as_str()?.to_owned();
                // `_cat` gives numbers as strings; a closed index has none.
                let docs = row.get("docs.count")?.as_str()?.parse().ok()?;
                Some((index, docs))
            })
            .collect())
    }

    /// Deletes `index` (by name: clusters refuse wildcard deletes by default); `Ok(false)`
    /// when it was gone.
    pub async fn delete_index(&self, index: &str) -> Result<bool> {
        match self
            .call(reqwest::Method::DELETE, &format!("/{index}"), None)
            .await?
        {
            Ok(_) => Ok(true),
            Err(f) if f.kind == "index_not_found_exception" => Ok(false),
            Err(f) => Err(EngineError::Failed(format!(
                "Elasticsearch at {}: deleting index {index}: {f}",
                self.shown()
            ))),
        }
    }

    pub async fn delete_snapshot(&self, repo: &str, snapshot: &str) -> Result<bool> {
        match self
            .call(
                reqwest::Method::DELETE,
                &format!("/_snapshot/{repo}/{snapshot}"),
                None,
            )
            .await?
        {
            Ok(_) => Ok(true),
            Err(f) if f.kind == "snapshot_missing_exception" => Ok(false),
            Err(f) => Err(self.repository_failure(repo, &f)),
        }
    }
}

/// What a backup records of its snapshot (the data artifact's one entry).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub cluster: String,
    pub es_repository: String,
    pub snapshot: String,
    pub uuid: String,
    pub state: String,
    pub indices: Vec<String>,
    pub shards_total: u64,
    pub shards_failed: u64,
    pub size_bytes: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Failed shards, `[index][shard]: reason` (empty for SUCCESS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// Documents per index just before the snapshot (only when the source's drills check
    /// counts).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub doc_counts: std::collections::BTreeMap<String, u64>,
}

impl SnapshotRecord {
    pub fn catalog_record(&self, backup_id: BackupId) -> ElasticsearchSnapshotRecord {
        ElasticsearchSnapshotRecord {
            backup_id,
            es_repository: self.es_repository.clone(),
            snapshot: self.snapshot.clone(),
            snapshot_uuid: self.uuid.clone(),
            state: self.state.clone(),
            indices: self.indices.clone(),
            shards_total: self.shards_total,
            shards_failed: self.shards_failed,
            size_bytes: self.size_bytes,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

fn millis(v: Option<&Value>) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(v?.as_i64()?).single()
}

/// Takes the snapshot of backup `backup_id`, waits for it, and sends its record into `tx`.
/// A snapshot that does not end SUCCESS is deleted and fails the backup, naming the shards.
pub async fn snapshot(
    cfg: &ElasticsearchSourceConfig,
    backup_id: BackupId,
    count_documents: bool,
    tx: mpsc::Sender<DumpEvent>,
    cancel: &CancellationToken,
) -> Result<SnapshotRecord> {
    let client = EsClient::new(cfg)?;
    client.prepare_repository(cfg).await?;
    // Just before the snapshot, which holds each index as it is when it starts.
    let counts = if count_documents {
        client.doc_counts().await?
    } else {
        Default::default()
    };
    let repo = &cfg.snapshot_repository;
    let name = cfg.snapshot_name(backup_id);
    let path = format!("/_snapshot/{repo}/{name}");
    let mut body = json!({
        "include_global_state": cfg.include_global_state,
        "metadata": { "taken_by": "backupd", "backup_id": backup_id.to_string() },
    });
    if !cfg.indices.is_empty() {
        body["indices"] = json!(cfg.indices.join(","));
    }
    let started = Utc::now();
    if let Err(f) = client
        .call(
            reqwest::Method::PUT,
            &format!("{path}?wait_for_completion=false"),
            Some(body),
        )
        .await?
    {
        return Err(match f.kind.as_str() {
            "repository_missing_exception"
            | "repository_verification_exception"
            | "repository_exception" => client.repository_failure(repo, &f),
            _ => EngineError::Failed(format!(
                "Elasticsearch at {}: creating snapshot {repo}:{name}: {f}",
                client.shown()
            )),
        });
    }
    let result = wait_for(&client, cfg, &name, started, cancel).await;
    let mut record = match result {
        Ok(record) if record.state == "SUCCESS" => record,
        Ok(record) => {
            let _ = client.delete_snapshot(repo, &name).await;
            return Err(record_failure(&client, &record));
        }
        Err(e) => {
            // Aborts a running snapshot, removes a failed one.
            let _ = client.delete_snapshot(repo, &name).await;
            return Err(e);
        }
    };
    record.doc_counts = counts
        .into_iter()
        .filter(|(index, _)| record.indices.contains(index))
        .collect();
    crate::mysql::send_record(&tx, RECORD_PATH, &record, "snapshot record").await?;
    Ok(record)
}

fn record_failure(client: &EsClient, r: &SnapshotRecord) -> EngineError {
    EngineError::Failed(format!(
        "Elasticsearch at {}: snapshot {}:{} ended {}: {} of {} shards failed{}; the backup is \
         not complete and the snapshot was deleted",
        client.shown(),
        r.es_repository,
        r.snapshot,
        r.state,
        r.shards_failed,
        r.shards_total,
        if r.failures.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.failures.join("; "))
        }
    ))
}

/// Polls `_status` until the snapshot has ended, then reads its final state from
/// `GET _snapshot/{repo}/{snap}` (`_status` says SUCCESS also for PARTIAL snapshots).
async fn wait_for(
    client: &EsClient,
    cfg: &ElasticsearchSourceConfig,
    name: &str,
    started: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<SnapshotRecord> {
    let repo = &cfg.snapshot_repository;
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let mut size = 0;
    loop {
        let status = client
            .ok(
                reqwest::Method::GET,
                &format!("/_snapshot/{repo}/{name}/_status"),
                None,
                &format!("polling snapshot {repo}:{name}"),
            )
            .await?;
        let snap = status
            .pointer("/snapshots/0")
            .cloned()
            .unwrap_or(Value::Null);
        size = snap
            .pointer("/stats/total/size_in_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(size);
        let state = snap.get("state").and_then(Value::as_str).unwrap_or("");
        if !matches!(
            state,
            "INIT" | "STARTED" | "IN_PROGRESS" | "WAITING" | "ABORTED" | ""
        ) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(EngineError::Failed(format!(
                "Elasticsearch at {}: snapshot {repo}:{name} still {state} after {}; it was \
                 deleted and the backup is not complete (raise `timeout`)",
                client.shown(),
                humantime::format_duration(cfg.timeout)
            )));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(EngineError::Failed("backup cancelled".into())),
            _ = tokio::time::sleep(cfg.poll_interval) => {}
        }
    }
    let info = client
        .ok(
            reqwest::Method::GET,
            &format!("/_snapshot/{repo}/{name}"),
            None,
            &format!("reading snapshot {repo}:{name}"),
        )
        .await?;
    let s = info.pointer("/snapshots/0").cloned().unwrap_or(Value::Null);
    let failures: Vec<String> = s
        .get("failures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|f| {
                    format!(
                        "[{}][{}]: {}",
                        f.get("index").and_then(Value::as_str).unwrap_or("?"),
                        f.get("shard_id").and_then(Value::as_u64).unwrap_or(0),
                        f.get("reason").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let state = s
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN")
        .to_owned();
    Ok(SnapshotRecord {
        cluster: redact_url(&cfg.url),
        es_repository: repo.clone(),
        snapshot: name.to_owned(),
        uuid: s
            .get("uuid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        indices: s
            .get("indices")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        shards_total: s
            .pointer("/shards/total")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        shards_failed: s
            .pointer("/shards/failed")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        size_bytes: size,
        started_at: millis(s.get("start_time_in_millis")).unwrap_or(started),
        finished_at: millis(s.get("end_time_in_millis")).unwrap_or_else(Utc::now),
        failures,
        state,
        doc_counts: Default::default(),
    })
}

/// `backupctl restore SOURCE --snapshot NAME`.
#[derive(Debug, Clone, Default)]
pub struct EsRestoreOptions {
    pub source: String,
    /// A snapshot name (as `backupctl list` / `show` print), or `None` with `latest`.
    pub snapshot: Option<String>,
    pub indices: Vec<String>,
    pub rename_pattern: Option<String>,
    pub rename_replacement: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EsRestoreOutcome {
    pub backup_id: BackupId,
    pub source: String,
    pub snapshot: String,
    pub es_repository: String,
    pub indices: Vec<String>,
    pub shards_total: u64,
    pub shards_failed: u64,
    pub seconds: f64,
}

/// Restores a snapshot that a complete backup of the source made.
pub async fn run_es_restore(
    engine: &Engine,
    options: &EsRestoreOptions,
) -> Result<EsRestoreOutcome> {
    let started = std::time::Instant::now();
    let (_, source) = engine.config.source(&options.source)?;
    let crate::config::SourceKindConfig::Elasticsearch(cfg) = &source.kind else {
        return Err(EngineError::Usage(format!(
            "source {} is a {} source; --snapshot restores elasticsearch sources",
            options.source,
            source.kind.kind_name()
        )));
    };
    let snapshots = engine
        .catalog
        .elasticsearch_snapshots(&options.source)
        .await?;
    let record = match &options.snapshot {
        Some(name) => snapshots.iter().find(|s| &s.snapshot == name),
        None => snapshots.last(),
    }
    .cloned()
    .ok_or_else(|| match &options.snapshot {
        Some(name) => EngineError::Usage(format!(
            "source {} has no complete backup with snapshot {name:?}; `backupctl list --source {}` shows them",
            options.source, options.source
        )),
        None => EngineError::Failed(format!(
            "source {} has no complete backup yet; run `backupctl backup {}`",
            options.source, options.source
        )),
    })?;
    crate::restore::select_backup(engine, &BackupSelector::Id(record.backup_id.to_string()))
        .await?;
    if options.rename_pattern.is_some() != options.rename_replacement.is_some() {
        return Err(EngineError::Usage(
            "give --rename-pattern and --rename-replacement together".into(),
        ));
    }
    let client = EsClient::new(cfg)?;
    let mut body = json!({ "include_global_state": false });
    if !options.indices.is_empty() {
        body["indices"] = json!(options.indices.join(","));
    }
    if let (Some(p), Some(r)) = (&options.rename_pattern, &options.rename_replacement) {
        body["rename_pattern"] = json!(p);
        body["rename_replacement"] = json!(r);
    }
    let path = format!(
        "/_snapshot/{}/{}/_restore?wait_for_completion=true",
        record.es_repository, record.snapshot
    );
    let answer = match client
        .call(reqwest::Method::POST, &path, Some(body))
        .await?
    {
        Ok(v) => v,
        Err(f) if f.kind == "snapshot_missing_exception" => {
            return Err(EngineError::Failed(format!(
                "Elasticsearch at {}: snapshot {}:{} of backup {} is missing from the cluster \
                 ({f}); it was deleted outside backupd; restore another backup",
                client.shown(),
                record.es_repository,
                record.snapshot,
                record.backup_id
            )))
        }
        Err(f) if f.kind == "repository_missing_exception" => {
            return Err(client.missing_repository(&record.es_repository, &f))
        }
        Err(f) => {
            return Err(EngineError::Failed(format!(
                "Elasticsearch at {}: restoring snapshot {}:{}: {f}",
                client.shown(),
                record.es_repository,
                record.snapshot
            )))
        }
    };
    let shards_total = answer
        .pointer("/snapshot/shards/total")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let shards_failed = answer
        .pointer("/snapshot/shards/failed")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let indices: Vec<String> = answer
        .pointer("/snapshot/indices")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if shards_failed > 0 {
        return Err(EngineError::Failed(format!(
            "Elasticsearch at {}: restoring snapshot {}: {shards_failed} of {shards_total} shards failed",
            client.shown(),
            record.snapshot
        )));
    }
    Ok(EsRestoreOutcome {
        backup_id: record.backup_id,
        source: options.source.clone(),
        snapshot: record.snapshot,
        es_repository: record.es_repository,
        indices,
        shards_total,
        shards_failed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Deletes the snapshot of an Elasticsearch backup (retention, failed backups). `Ok(false)`
/// when it was already gone, or the backup is not an Elasticsearch one.
pub async fn delete_backup_snapshot(
    engine: &Engine,
    source: &str,
    backup_id: BackupId,
) -> Result<bool> {
    let Ok((_, s)) = engine.config.source(source) else {
        return Ok(false);
    };
    let crate::config::SourceKindConfig::Elasticsearch(cfg) = &s.kind else {
        return Ok(false);
    };
    let (repo, name) = match engine.catalog.elasticsearch_snapshot(backup_id).await? {
        Some(r) => (r.es_repository, r.snapshot),
        None => (
            cfg.snapshot_repository.clone(),
            cfg.snapshot_name(backup_id),
        ),
    };
    EsClient::new(cfg)?.delete_snapshot(&repo, &name).await
}

/// `backupctl verify` of an Elasticsearch backup: the snapshot must still be in the cluster,
/// in state SUCCESS, with the recorded uuid. Its data is Elasticsearch's to check.
pub async fn check_snapshot(
    engine: &Engine,
    source: &str,
    record: &ElasticsearchSnapshotRecord,
) -> Result<String> {
    let (_, s) = engine.config.source(source)?;
    let crate::config::SourceKindConfig::Elasticsearch(cfg) = &s.kind else {
        return Err(EngineError::Usage(format!(
            "source {source} is no longer an elasticsearch source"
        )));
    };
    let client = EsClient::new(cfg)?;
    let (repo, name) = (&record.es_repository, &record.snapshot);
    let info = match client
        .call(
            reqwest::Method::GET,
            &format!("/_snapshot/{repo}/{name}"),
            None,
        )
        .await?
    {
        Ok(v) => v,
        Err(f)
            if f.kind == "snapshot_missing_exception"
                || f.kind == "repository_missing_exception" =>
        {
            return Err(EngineError::Integrity(format!(
                "backup {}: its snapshot {repo}:{name} is missing from the cluster at {} ({f}); \
                 the backup cannot be restored",
                record.backup_id,
                client.shown()
            )))
        }
        Err(f) => {
            return Err(EngineError::Failed(format!(
                "Elasticsearch at {}: reading snapshot {repo}:{name}: {f}",
                client.shown()
            )))
        }
    };
    let state = info
        .pointer("/snapshots/0/state")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let uuid = info
        .pointer("/snapshots/0/uuid")
        .and_then(Value::as_str)
        .unwrap_or("?");
    if state != "SUCCESS" || uuid != record.snapshot_uuid {
        return Err(EngineError::Integrity(format!(
            "backup {}: snapshot {repo}:{name} in the cluster is {state} with uuid {uuid}, the \
             backup recorded SUCCESS with uuid {}",
            record.backup_id, record.snapshot_uuid
        )));
    }
    Ok(format!(
        "snapshot {repo}:{name} is SUCCESS in the cluster ({} indices, {} shards); its data lives in \
         the cluster's snapshot repository and is checked by Elasticsearch, the artifacts above are \
         the backup's record of it",
        record.indices.len(),
        record.shards_total
    ))
}

/// `catalog rebuild`: records the snapshot of an imported Elasticsearch backup again, from the
/// record its data artifact holds.
pub async fn reimport_record(
    engine: &Engine,
    backup_id: BackupId,
    cancel: &CancellationToken,
) -> Result<()> {
    let record: SnapshotRecord = crate::restore::read_backup_record(
        engine,
        backup_id,
        RECORD_PATH,
        "snapshot record",
        cancel,
    )
    .await?;
    engine
        .catalog
        .record_elasticsearch_snapshot(&record.catalog_record(backup_id))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    fn config(source: &str) -> Result<crate::Config, String> {
        crate::config::parse_with_source("search", "elasticsearch", source)
    }

    #[test]
    fn config_parses_and_bad_settings_are_named() {
        let c = config(
            "url = \"https://es:9200\"\nsnapshot-repository = \"nightly\"\nrepository-type = \"fs\"\n\
             repository-settings = { location = \"/mnt/s\", compress = true }\nusername = \"b\"\n\
             password-file = \"/etc/pw\"\npoll-interval = \"500ms\"\n",
        )
        .unwrap();
        let crate::config::SourceKindConfig::Elasticsearch(e) = &c.sources[0].kind else {
            panic!("not elasticsearch");
        };
        assert_eq!(e.poll_interval, std::time::Duration::from_millis(500));
        assert_eq!(e.timeout, std::time::Duration::from_secs(6 * 3600));
        let settings = serde_json::to_value(e.repository_settings.clone().unwrap()).unwrap();
        assert_eq!(settings["compress"], true);
        let id: backup_core::BackupId = backup_core::BackupId::new();
        assert_eq!(e.snapshot_name(id), format!("backupd-{id}").to_lowercase());
        let base = "snapshot-repository = \"n\"\n";
        for (bad, needle) in [
            (
                "url = \"https://u:pw@es\"\n",
                "must not contain credentials",
            ),
            ("url = \"es:9200\"\n", "http:// or https://"),
            ("url = \"http://es\"\nusername = \"u\"\n", "username"),
            ("url = \"http://es\"\npassword-env = \"P\"\n", "username"),
            (
                "url = \"http://es\"\napi-key-env = \"K\"\napi-key-file = \"f\"\n",
                "username",
            ),
            (
                "url = \"http://es\"\nsnapshot-prefix = \"Daily \"\n",
                "snapshot-prefix",
            ),
            (
                "url = \"http://es\"\nrepository-settings = { location = \"/x\" }\n",
                "repository-type",
            ),
            (
                "url = \"http://es\"\npoll-interval = \"0s\"\n",
                "poll-interval",
            ),
        ] {
            let err = config(&format!("{base}{bad}")).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }
}
