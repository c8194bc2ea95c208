//! An HTTP double of Elasticsearch's snapshot API, written from the documented REST API
//! (no Elasticsearch can run here): repositories (`PUT/GET/DELETE _snapshot/{repo}`,
//! `POST _snapshot/{repo}/_verify`), snapshots (`PUT/GET/DELETE _snapshot/{repo}/{snap}`,
//! `GET .../_status`, `POST .../_restore`), `GET _cat/indices`, `PUT` and `DELETE /{index}`, with the
//! error bodies Elasticsearch 8 returns (`repository_missing_exception`,
//! `repository_verification_exception`, `repository_exception` for read-only repositories,
//! `snapshot_missing_exception`, `invalid_snapshot_name_exception`,
//! `snapshot_restore_exception`, `index_not_found_exception`, 401 `security_exception`) and the
//! snapshot life cycle: `IN_PROGRESS` for a configurable number of polls, then `SUCCESS`,
//! `PARTIAL` (some shards failed) or `FAILED` (all failed). `_status` reports `STARTED`
//! while running and, as Elasticsearch does, `SUCCESS` for both SUCCESS and PARTIAL
//! snapshots (only `GET _snapshot/{repo}/{snap}` tells PARTIAL apart).
//!
//! Runs on its own thread and runtime on a free loopback port; stopped on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::http_double::ServedRouter;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

/// Credentials the double accepts (none: every request is allowed).
#[derive(Debug, Clone, Default)]
pub struct EsAuth {
    pub basic: Option<(String, String)>,
    /// `(id, key)`: sent as `Authorization: ApiKey base64(id:key)`.
    pub api_key: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct IndexState {
    pub uuid: String,
    pub shards: u32,
    pub docs: u64,
    pub size_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct RepoState {
    pub kind: String,
    pub settings: Value,
}

impl RepoState {
    fn readonly(&self) -> bool {
        matches!(self.settings.get("readonly"), Some(Value::Bool(true)))
            || self.settings.get("readonly").and_then(Value::as_str) == Some("true")
    }
    fn location(&self) -> String {
        self.settings
            .get("location")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotState {
    pub name: String,
    pub uuid: String,
    /// IN_PROGRESS, SUCCESS, PARTIAL or FAILED.
    pub state: String,
    pub indices: BTreeMap<String, IndexState>,
    /// (index, shard, reason) of failed shards.
    pub failures: Vec<(String, u32, String)>,
    pub polls_left: u32,
    pub start_millis: i64,
    pub include_global_state: bool,
}

impl SnapshotState {
    fn shards_total(&self) -> u32 {
        self.indices.values().map(|i| i.shards).sum()
    }
    fn size(&self) -> u64 {
        self.indices.values().map(|i| i.size_bytes).sum()
    }
}

/// Everything the double holds; tests read and change it through [`EsDouble::state`].
#[derive(Debug, Default)]
pub struct EsState {
    pub auth: EsAuth,
    pub indices: BTreeMap<String, IndexState>,
    /// Closed indices (a restore may replace them).
    pub closed: BTreeSet<String>,
    pub repositories: BTreeMap<String, RepoState>,
    pub snapshots: BTreeMap<String, BTreeMap<String, SnapshotState>>,
    /// Repository locations the "nodes" cannot write: verification fails there.
    pub unwritable_locations: BTreeSet<String>,
    /// Shards of these indices fail in new snapshots, with this reason.
    pub failing_indices: BTreeMap<String, String>,
    /// Polls (`GET` or `_status`) a new snapshot stays IN_PROGRESS for.
    pub polls_in_progress: u32,
    /// Every request, as "METHOD /path?query".
    pub requests: Vec<String>,
}

pub struct EsDouble {
    server: ServedRouter,
    state: Arc<Mutex<EsState>>,
}

impl EsDouble {
    /// Starts the double with no indices, repositories or credentials.
    pub fn start() -> EsDouble {
        Self::start_with(EsState {
            polls_in_progress: 2,
            ..EsState::default()
        })
    }

    pub fn start_with(state: EsState) -> EsDouble {
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let server = ServedRouter::start("es-double", move |_| router(shared));
        EsDouble { server, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn state(&self) -> MutexGuard<'_, EsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an open index with `docs` documents in `shards` shards.
    pub fn add_index(&self, name: &str, shards: u32, docs: u64) {
        self.state().indices.insert(
            name.to_owned(),
            IndexState {
                uuid: uuid::Uuid::new_v4().simple().to_string(),
                shards,
                docs,
                size_bytes: docs * 1000 + 4096,
            },
        );
    }

    /// Registers a repository as `PUT _snapshot/{name}` would.
    pub fn add_repository(&self, name: &str, settings: Value) {
        self.state().repositories.insert(
            name.to_owned(),
            RepoState {
                kind: "fs".into(),
                settings,
            },
        );
    }

    /// Names of the snapshots in `repo`.
    pub fn snapshot_names(&self, repo: &str) -> Vec<String> {
        self.state()
            .snapshots
            .get(repo)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }
}

type Shared = Arc<Mutex<EsState>>;

fn lock(s: &Shared) -> MutexGuard<'_, EsState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// An Elasticsearch error response: `{"error":{"root_cause":[..],"type","reason"},"status"}`.
fn es_error(status: StatusCode, kind: &str, reason: &str) -> Response {
    let cause = json!({ "type": kind, "reason": reason });
    (
        status,
        Json(json!({
            "error": { "root_cause": [cause.clone()], "type": kind, "reason": reason },
            "status": status.as_u16()
        })),
    )
        .into_response()
}

fn repository_missing(repo: &str) -> Response {
    es_error(
        StatusCode::NOT_FOUND,
        "repository_missing_exception",
        &format!("[{repo}] missing"),
    )
}

fn snapshot_missing(repo: &str, snap: &str) -> Response {
    es_error(
        StatusCode::NOT_FOUND,
        "snapshot_missing_exception",
        &format!("[{repo}:{snap}] is missing"),
    )
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/_cat/indices", get(cat_indices))
        .route(
            "/_snapshot/{repo}",
            put(put_repository)
                .post(put_repository)
                .get(get_repository)
                .delete(delete_repository),
        )
        .route("/_snapshot/{repo}/_verify", post(verify_repository))
        .route(
            "/_snapshot/{repo}/{snap}",
            put(create_snapshot)
                .post(create_snapshot)
                .get(get_snapshot)
                .delete(delete_snapshot),
        )
        .route("/_snapshot/{repo}/{snap}/_status", get(snapshot_status))
        .route("/_snapshot/{repo}/{snap}/_restore", post(restore_snapshot))
        .route("/{index}", put(create_index).delete(delete_index))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn authenticate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let auth = {
        let mut s = lock(&state);
        s.requests.push(line);
        s.auth.clone()
    };
    if auth.basic.is_none() && auth.api_key.is_none() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let b64 = base64::engine::general_purpose::STANDARD;
    let decoded = |s: &str| {
        b64.decode(s.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let mut user = String::new();
    let ok = if let Some(rest) = given.strip_prefix("Basic ") {
        let pair = decoded(rest).unwrap_or_default();
        user = pair.split(':').next().unwrap_or_default().to_owned();
        auth.basic
            .as_ref()
            .is_some_and(|(u, p)| pair == format!("{u}:{p}"))
    } else if let Some(rest) = given.strip_prefix("ApiKey ") {
        let pair = decoded(rest).unwrap_or_default();
        auth.api_key
            .as_ref()
            .is_some_and(|(id, key)| pair == format!("{id}:{key}"))
    } else {
        false
    };
    if ok {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let reason = if given.is_empty() {
        format!("missing authentication credentials for REST request [{path}]")
    } else if given.starts_with("ApiKey ") {
        "unable to authenticate with provided credentials and anonymous access is not allowed for this request".to_owned()
    } else {
        format!("unable to authenticate user [{user}] for REST request [{path}]")
    };
    let header_value =
        json!({ "WWW-Authenticate": ["Basic realm=\"security\" charset=\"UTF-8\"", "ApiKey"] });
    let cause = json!({ "type": "security_exception", "reason": reason, "header": header_value });
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "error": { "root_cause": [cause], "type": "security_exception", "reason": reason, "header": header_value },
            "status": 401
        })),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"security\" charset=\"UTF-8\""),
    );
    response
}

async fn root() -> Json<Value> {
    Json(json!({
        "name": "es-double",
        "cluster_name": "backupd-test",
        "version": { "number": "8.15.0", "build_flavor": "default" },
        "tagline": "You Know, for Search"
    }))
}

async fn cat_indices(State(state): State<Shared>) -> Json<Value> {
    let s = lock(&state);
    let rows: Vec<Value> = s
        .indices
        .iter()
        .map(|(name, i)| {
            json!({
                "health": "green",
                "status": if s.closed.contains(name) { "close" } else { "open" },
                "index": name,
                "uuid": i.uuid,
                "pri": i.shards.to_string(),
                "rep": "0",
                "docs.count": i.docs.to_string(),
                "store.size": format!("{}b", i.size_bytes),
            })
        })
        .collect();
    Json(Value::Array(rows))
}

async fn create_index(
    State(state): State<Shared>,
    Path(index): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let mut s = lock(&state);
    if s.indices.contains_key(&index) {
        let uuid = s.indices[&index].uuid.clone();
        return es_error(
            StatusCode::BAD_REQUEST,
            "resource_already_exists_exception",
            &format!("index [{index}/{uuid}] already exists"),
        );
    }
    let body = body.map(|b| b.0).unwrap_or(Value::Null);
    let shards = body
        .pointer("/settings/number_of_shards")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .unwrap_or(1) as u32;
    s.indices.insert(
        index.clone(),
        IndexState {
            uuid: uuid::Uuid::new_v4().simple().to_string(),
            shards,
            docs: 0,
            size_bytes: 4096,
        },
    );
    Json(json!({ "acknowledged": true, "shards_acknowledged": true, "index": index }))
        .into_response()
}

/// `DELETE /{index}` by name (wildcards are refused, as `action.destructive_requires_name`
/// makes Elasticsearch 8 do by default).
async fn delete_index(State(state): State<Shared>, Path(index): Path<String>) -> Response {
    if index.contains('*') || index == "_all" {
        return es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "Wildcard expressions or all indices are not allowed",
        );
    }
    let mut s = lock(&state);
    if s.indices.remove(&index).is_none() {
        return es_error(
            StatusCode::NOT_FOUND,
            "index_not_found_exception",
            &format!("no such index [{index}]"),
        );
    }
    s.closed.remove(&index);
    Json(json!({ "acknowledged": true })).into_response()
}

fn verification_failure(repo: &str, location: &str) -> Response {
    es_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "repository_verification_exception",
        &format!(
            "[{repo}] [[es-double-node, 'org.elasticsearch.repositories.RepositoryVerificationException: [{repo}] store location [{location}] is not accessible on the node [{{es-double-node}}]']]"
        ),
    )
}

async fn put_repository(
    State(state): State<Shared>,
    Path(repo): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let Some(kind) = body.get("type").and_then(Value::as_str) else {
        return es_error(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "Validation Failed: 1: type is missing;",
        );
    };
    let repo_state = RepoState {
        kind: kind.to_owned(),
        settings: body.get("settings").cloned().unwrap_or(json!({})),
    };
    let mut s = lock(&state);
    let location = repo_state.location();
    let readonly = repo_state.readonly();
    s.repositories.insert(repo.clone(), repo_state);
    let verify = query.get("verify").map(String::as_str) != Some("false");
    if verify && !readonly && s.unwritable_locations.contains(&location) {
        return verification_failure(&repo, &location);
    }
    Json(json!({ "acknowledged": true })).into_response()
}

async fn get_repository(State(state): State<Shared>, Path(repo): Path<String>) -> Response {
    let s = lock(&state);
    match s.repositories.get(&repo) {
        Some(r) => {
            let mut answer = serde_json::Map::new();
            answer.insert(
                repo.clone(),
                json!({ "type": r.kind, "settings": r.settings }),
            );
            Json(Value::Object(answer)).into_response()
        }
        None => repository_missing(&repo),
    }
}

async fn delete_repository(State(state): State<Shared>, Path(repo): Path<String>) -> Response {
    let mut s = lock(&state);
    match s.repositories.remove(&repo) {
        Some(_) => Json(json!({ "acknowledged": true })).into_response(),
        None => repository_missing(&repo),
    }
}

async fn verify_repository(State(state): State<Shared>, Path(repo): Path<String>) -> Response {
    let s = lock(&state);
    let Some(r) = s.repositories.get(&repo) else {
        return repository_missing(&repo);
    };
    // Read-only repositories are only read, which works (as in Elasticsearch).
    if !r.readonly() && s.unwritable_locations.contains(&r.location()) {
        return verification_failure(&repo, &r.location());
    }
    Json(json!({ "nodes": { "es-double-node-id": { "name": "es-double-node" } } })).into_response()
}

/// Index names matching a comma-separated list of names and `*` wildcards.
fn matching<'a>(names: impl Iterator<Item = &'a String>, patterns: &[String]) -> Vec<String> {
    names
        .filter(|n| patterns.is_empty() || patterns.iter().any(|p| p == "_all" || wildcard(p, n)))
        .cloned()
        .collect()
}

fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            if !name.starts_with(head) {
                return false;
            }
            let tail = &name[head.len()..];
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && wildcard(rest, &tail[i..]))
        }
    }
}

fn index_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

async fn create_snapshot(
    State(state): State<Shared>,
    Path((repo, snap)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Option<Json<Value>>,
) -> Response {
    let body = body.map(|b| b.0).unwrap_or(json!({}));
    let mut s = lock(&state);
    let Some(r) = s.repositories.get(&repo) else {
        return repository_missing(&repo);
    };
    if r.readonly() {
        return es_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "repository_exception",
            &format!("[{repo}] cannot create snapshot in a readonly repository"),
        );
    }
    if s.unwritable_locations.contains(&r.location()) {
        return verification_failure(&repo, &r.location());
    }
    if snap != snap.to_lowercase()
        || snap.contains([' ', ',', '#', '/', '\\', '*', '?', '"', '<', '>', '|'])
    {
        return es_error(
            StatusCode::BAD_REQUEST,
            "invalid_snapshot_name_exception",
            &format!("[{repo}:{snap}] Invalid snapshot name [{snap}], must be lowercase and must not contain whitespace, ',', '#', '/', '\\', '*', '?', '\"', '<', '>', '|'"),
        );
    }
    if s.snapshots
        .get(&repo)
        .is_some_and(|m| m.contains_key(&snap))
    {
        return es_error(
            StatusCode::BAD_REQUEST,
            "invalid_snapshot_name_exception",
            &format!("[{repo}:{snap}] Invalid snapshot name [{snap}], snapshot with the same name already exists"),
        );
    }
    let patterns = index_list(body.get("indices"));
    let names = matching(s.indices.keys(), &patterns);
    for p in &patterns {
        if !p.contains('*') && p != "_all" && !s.indices.contains_key(p) {
            return es_error(
                StatusCode::NOT_FOUND,
                "index_not_found_exception",
                &format!("no such index [{p}]"),
            );
        }
    }
    let indices: BTreeMap<String, IndexState> = names
        .iter()
        .map(|n| (n.clone(), s.indices[n].clone()))
        .collect();
    let mut failures = Vec::new();
    for (name, index) in &indices {
        if let Some(reason) = s.failing_indices.get(name) {
            for shard in 0..index.shards {
                failures.push((name.clone(), shard, reason.clone()));
            }
        }
    }
    let mut snapshot = SnapshotState {
        name: snap.clone(),
        uuid: uuid::Uuid::new_v4().simple().to_string(),
        state: "IN_PROGRESS".into(),
        indices,
        failures,
        polls_left: s.polls_in_progress,
        start_millis: now_millis(),
        include_global_state: body
            .get("include_global_state")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    let wait = query.get("wait_for_completion").map(String::as_str) == Some("true");
    if wait {
        snapshot.polls_left = 0;
        finish(&mut snapshot);
    }
    let info = snapshot_info(&repo, &snapshot);
    s.snapshots.entry(repo).or_default().insert(snap, snapshot);
    if wait {
        Json(json!({ "snapshot": info })).into_response()
    } else {
        Json(json!({ "accepted": true })).into_response()
    }
}

fn finish(s: &mut SnapshotState) {
    if s.state != "IN_PROGRESS" {
        return;
    }
    let failed = s.failures.len() as u32;
    s.state = if failed == 0 {
        "SUCCESS"
    } else if failed >= s.shards_total() {
        "FAILED"
    } else {
        "PARTIAL"
    }
    .into();
}

/// One poll of a snapshot: an IN_PROGRESS one moves towards its end.
fn poll(s: &mut SnapshotState) {
    if s.state == "IN_PROGRESS" {
        if s.polls_left == 0 {
            finish(s);
        } else {
            s.polls_left -= 1;
        }
    }
}

fn snapshot_info(repo: &str, s: &SnapshotState) -> Value {
    let total = s.shards_total();
    let failed = if s.state == "IN_PROGRESS" {
        0
    } else {
        s.failures.len() as u32
    };
    let done = s.state != "IN_PROGRESS";
    let mut info = json!({
        "snapshot": s.name,
        "uuid": s.uuid,
        "repository": repo,
        "version_id": 8_150_099,
        "version": "8.15.0",
        "indices": s.indices.keys().collect::<Vec<_>>(),
        "data_streams": [],
        "include_global_state": s.include_global_state,
        "state": s.state,
        "start_time_in_millis": s.start_millis,
        "failures": s.failures.iter().filter(|_| done).map(|(index, shard, reason)| json!({
            "index": index,
            "index_uuid": s.indices.get(index).map(|i| i.uuid.clone()).unwrap_or_default(),
            "shard_id": shard,
            "reason": reason,
            "node_id": "es-double-node-id",
            "status": "INTERNAL_SERVER_ERROR"
        })).collect::<Vec<_>>(),
        "shards": { "total": if done { total } else { 0 }, "failed": failed, "successful": if done { total - failed } else { 0 } },
        "feature_states": []
    });
    if done {
        info["end_time_in_millis"] = json!(now_millis());
        info["duration_in_millis"] = json!((now_millis() - s.start_millis).max(1));
    }
    info
}

async fn get_snapshot(
    State(state): State<Shared>,
    Path((repo, snap)): Path<(String, String)>,
) -> Response {
    let mut s = lock(&state);
    if !s.repositories.contains_key(&repo) {
        return repository_missing(&repo);
    }
    let snaps = s.snapshots.entry(repo.clone()).or_default();
    let infos: Vec<Value> = if snap == "_all" || snap == "*" {
        snaps
            .values_mut()
            .map(|x| {
                poll(x);
                snapshot_info(&repo, x)
            })
            .collect()
    } else {
        let mut out = Vec::new();
        for name in snap.split(',') {
            match snaps.get_mut(name) {
                Some(x) => {
                    poll(x);
                    out.push(snapshot_info(&repo, x));
                }
                None => return snapshot_missing(&repo, name),
            }
        }
        out
    };
    let total = infos.len();
    Json(json!({ "snapshots": infos, "total": total, "remaining": 0 })).into_response()
}

async fn snapshot_status(
    State(state): State<Shared>,
    Path((repo, snap)): Path<(String, String)>,
) -> Response {
    let mut s = lock(&state);
    if !s.repositories.contains_key(&repo) {
        return repository_missing(&repo);
    }
    let Some(x) = s.snapshots.get_mut(&repo).and_then(|m| m.get_mut(&snap)) else {
        return snapshot_missing(&repo, &snap);
    };
    poll(x);
    let total = x.shards_total();
    let (status, done, failed) = match x.state.as_str() {
        "IN_PROGRESS" => ("STARTED", total / 2, 0),
        "FAILED" => ("FAILED", 0, x.failures.len() as u32),
        // Completed snapshots report SUCCESS here, also PARTIAL ones.
        _ => (
            "SUCCESS",
            total - x.failures.len() as u32,
            x.failures.len() as u32,
        ),
    };
    let size = x.size();
    Json(json!({ "snapshots": [{
        "snapshot": x.name,
        "repository": repo,
        "uuid": x.uuid,
        "state": status,
        "include_global_state": x.include_global_state,
        "shards_stats": { "initializing": 0, "started": total - done - failed, "finalizing": 0, "done": done, "failed": failed, "total": total },
        "stats": {
            "incremental": { "file_count": x.indices.len() * 4, "size_in_bytes": size },
            "total": { "file_count": x.indices.len() * 4, "size_in_bytes": size },
            "start_time_in_millis": x.start_millis,
            "time_in_millis": (now_millis() - x.start_millis).max(1)
        },
        "indices": x.indices.keys().map(|k| (k.clone(), json!({}))).collect::<serde_json::Map<_, _>>()
    }]}))
    .into_response()
}

async fn delete_snapshot(
    State(state): State<Shared>,
    Path((repo, snap)): Path<(String, String)>,
) -> Response {
    let mut s = lock(&state);
    if !s.repositories.contains_key(&repo) {
        return repository_missing(&repo);
    }
    if s.repositories[&repo].readonly() {
        return es_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "repository_exception",
            &format!("[{repo}] cannot delete snapshot from a readonly repository"),
        );
    }
    match s.snapshots.get_mut(&repo).and_then(|m| m.remove(&snap)) {
        Some(_) => Json(json!({ "acknowledged": true })).into_response(),
        None => snapshot_missing(&repo, &snap),
    }
}

/// Elasticsearch's rename: every match of the pattern (a Java regex; here `(.+)`-style
/// patterns and literals) replaced, `$1` standing for the first group.
fn rename(name: &str, pattern: &str, replacement: &str) -> String {
    match regex_lite(pattern) {
        Some((prefix, suffix))
            if name.starts_with(&prefix)
                && name.ends_with(&suffix)
                && name.len() >= prefix.len() + suffix.len() =>
        {
            let group = &name[prefix.len()..name.len() - suffix.len()];
            replacement.replace("$1", group)
        }
        Some(_) => name.to_owned(),
        None => name.replace(pattern, replacement),
    }
}

/// `prefix(.+)suffix` as (prefix, suffix); `None` for a literal pattern.
fn regex_lite(pattern: &str) -> Option<(String, String)> {
    let (prefix, rest) = pattern.split_once("(.+)")?;
    Some((prefix.to_owned(), rest.to_owned()))
}

async fn restore_snapshot(
    State(state): State<Shared>,
    Path((repo, snap)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    _headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let body = body.map(|b| b.0).unwrap_or(json!({}));
    let mut s = lock(&state);
    if !s.repositories.contains_key(&repo) {
        return repository_missing(&repo);
    }
    let Some(x) = s.snapshots.get(&repo).and_then(|m| m.get(&snap)).cloned() else {
        return snapshot_missing(&repo, &snap);
    };
    if x.state == "IN_PROGRESS" {
        return es_error(
            StatusCode::BAD_REQUEST,
            "snapshot_restore_exception",
            &format!(
                "[{repo}:{snap}/{}] cannot restore a snapshot that is in progress",
                x.uuid
            ),
        );
    }
    let patterns = index_list(body.get("indices"));
    for p in &patterns {
        if !p.contains('*') && !x.indices.contains_key(p) {
            return es_error(
                StatusCode::NOT_FOUND,
                "index_not_found_exception",
                &format!("no such index [{p}]"),
            );
        }
    }
    let chosen = matching(x.indices.keys(), &patterns);
    let pattern = body.get("rename_pattern").and_then(Value::as_str);
    let replacement = body
        .get("rename_replacement")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut restored = Vec::new();
    for index in &chosen {
        if x.failures.iter().any(|(i, _, _)| i == index) {
            return es_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "snapshot_restore_exception",
                &format!(
                    "[{repo}:{snap}/{}] index [{index}] wasn't fully snapshotted - cannot restore",
                    x.uuid
                ),
            );
        }
        let target = match pattern {
            Some(p) => rename(index, p, replacement),
            None => index.clone(),
        };
        if s.indices.contains_key(&target) && !s.closed.contains(&target) {
            return es_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "snapshot_restore_exception",
                &format!("[{repo}:{snap}/{}] cannot restore index [{target}] because an open index with same name already exists in the cluster. Either close or delete the existing index or restore the index under a different name by providing a rename pattern and replacement name", x.uuid),
            );
        }
        restored.push((target, x.indices[index].clone()));
    }
    let mut shards = 0;
    let mut names = Vec::new();
    for (target, mut index) in restored {
        shards += index.shards;
        index.uuid = uuid::Uuid::new_v4().simple().to_string();
        s.closed.remove(&target);
        s.indices.insert(target.clone(), index);
        names.push(target);
    }
    if query.get("wait_for_completion").map(String::as_str) == Some("true") {
        Json(json!({ "snapshot": {
            "snapshot": snap,
            "indices": names,
            "shards": { "total": shards, "failed": 0, "successful": shards }
        }}))
        .into_response()
    } else {
        Json(json!({ "accepted": true })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_renames() {
        assert!(wildcard("logs-*", "logs-2026"));
        assert!(wildcard("*-2026", "logs-2026"));
        assert!(!wildcard("logs-*", "metrics"));
        assert_eq!(rename("logs-1", "(.+)", "restored-$1"), "restored-logs-1");
        assert_eq!(rename("logs-1", "logs-(.+)", "old-$1"), "old-1");
        assert_eq!(rename("metrics", "logs-(.+)", "old-$1"), "metrics");
    }
}
