//! An HTTP double of the MongoDB Atlas Admin API v2 cloud backup resources, written from
//! the documented API (no Atlas can run here):
//!
//! - `POST/GET .../groups/{groupId}/clusters/{clusterName}/backup/snapshots` (paged with
//!   `pageNum`, `itemsPerPage`, answering `{results, totalCount}`), `GET/DELETE
//!   .../snapshots/{snapshotId}`;
//! - `POST/GET .../backup/restoreJobs`, `GET .../restoreJobs/{jobId}` with the `automated`,
//!   `download` (a `deliveryUrl` appears after a poll; the link serves the snapshot's bytes)
//!   and `pointInTime` delivery types;
//! - HTTP Digest authentication (RFC 7616, MD5, `qop=auth`) of a programmatic API key, the
//!   versioned media type `application/vnd.atlas.2023-01-01+json`, and Atlas's error bodies
//!   `{detail, error, errorCode, parameters, reason}` (`GROUP_NOT_FOUND`,
//!   `CLUSTER_NOT_FOUND`, `USER_UNAUTHORIZED`, `INVALID_MEDIA_TYPE`, ...).
//!
//! Snapshots go `queued` -> `inProgress` -> `completed` (or `failed`) one step per poll.
//! Runs on its own thread and runtime on a free loopback port; stopped on drop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::http_double::{log_request, RequestLog, ServedRouter};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use md5::{Digest as _, Md5};
use serde_json::{json, Value};

const MEDIA_TYPE: &str = "application/vnd.atlas.2023-01-01+json";
const REALM: &str = "MMS Public API";

/// One snapshot the double holds.
#[derive(Debug, Clone)]
pub struct AtlasSnapshot {
    pub id: String,
    pub status: String,
    pub description: String,
    pub snapshot_type: String,
    pub created_at: String,
    pub retention_days: u32,
    pub storage_size_bytes: u64,
    /// Whether this snapshot ends `failed` instead of `completed`.
    pub will_fail: bool,
}

/// One restore job the double holds.
#[derive(Debug, Clone)]
pub struct AtlasRestoreJob {
    pub id: String,
    pub delivery_type: String,
    pub snapshot_id: Option<String>,
    pub target_cluster: Option<String>,
    pub target_group: Option<String>,
    pub point_in_time: Option<i64>,
    pub polls: u32,
    pub finished: bool,
}

/// Everything the double holds; tests read and change it through [`AtlasDouble::state`].
#[derive(Debug, Default)]
pub struct AtlasState {
    pub project_id: String,
    pub cluster: String,
    /// Other clusters of the project (restore targets).
    pub other_clusters: Vec<String>,
    pub public_key: String,
    pub private_key: String,
    pub snapshots: BTreeMap<String, AtlasSnapshot>,
    pub restore_jobs: BTreeMap<String, AtlasRestoreJob>,
    /// Every new snapshot ends `failed`.
    pub fail_snapshots: bool,
    /// New snapshots stay `queued` forever (a stuck backup).
    pub stuck_snapshots: bool,
    /// Download links answer 403 (an expired link).
    pub expired_links: bool,
    /// Size of a downloaded snapshot file.
    pub download_bytes: usize,
    /// Every request, as "METHOD /path?query".
    pub requests: Vec<String>,
    nonce: u64,
    next_id: u64,
}

pub struct AtlasDouble {
    server: ServedRouter,
    state: Arc<Mutex<AtlasState>>,
}

impl AtlasDouble {
    /// A project `project_id` with cluster `cluster` (and a `scratch` cluster to restore
    /// into), accepting the API key `public_key` / `private_key`.
    pub fn start(project_id: &str, cluster: &str, public_key: &str, private_key: &str) -> Self {
        let state = Arc::new(Mutex::new(AtlasState {
            project_id: project_id.into(),
            cluster: cluster.into(),
            other_clusters: vec!["scratch".into()],
            public_key: public_key.into(),
            private_key: private_key.into(),
            download_bytes: 300 * 1024,
            ..AtlasState::default()
        }));
        let shared = state.clone();
        let server = ServedRouter::start("atlas-double", move |_| router(shared));
        AtlasDouble { server, state }
    }

    /// The base URL (`base-url` of an atlas source).
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn state(&self) -> MutexGuard<'_, AtlasState> {
        self.state.lock().expect("Atlas double state")
    }

    /// Adds a snapshot Atlas's own schedule took (not ours).
    pub fn add_scheduled_snapshot(&self) -> String {
        let mut s = self.state();
        let id = s.new_id();
        s.snapshots.insert(
            id.clone(),
            AtlasSnapshot {
                id: id.clone(),
                status: "completed".into(),
                description: String::new(),
                snapshot_type: "scheduled".into(),
                created_at: now(),
                retention_days: 7,
                storage_size_bytes: 1 << 30,
                will_fail: false,
            },
        );
        id
    }
}

impl AtlasState {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        // Atlas ids are 24 hex digits (ObjectIds).
        format!("6{:023x}", 0x5f00_0000_0000u64 + self.next_id)
    }
}

/// The content a downloaded snapshot file has: deterministic, so tests can check it.
pub fn download_content(snapshot_id: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut counter = 0u64;
    while out.len() < len {
        let block = Md5::digest(format!("{snapshot_id}:{counter}").as_bytes());
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(len);
    out
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

type Shared = Arc<Mutex<AtlasState>>;

fn router(state: Shared) -> Router {
    let api = Router::new()
        .route(
            "/api/atlas/v2/groups/{group}/clusters/{cluster}/backup/snapshots",
            get(list_snapshots).post(take_snapshot),
        )
        .route(
            "/api/atlas/v2/groups/{group}/clusters/{cluster}/backup/snapshots/{id}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route(
            "/api/atlas/v2/groups/{group}/clusters/{cluster}/backup/restoreJobs",
            get(list_restore_jobs).post(create_restore_job),
        )
        .route(
            "/api/atlas/v2/groups/{group}/clusters/{cluster}/backup/restoreJobs/{id}",
            get(get_restore_job),
        )
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/download/{job}/{file}", get(download))
        .merge(api)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            log_request::<Shared>,
        ))
        .with_state(state)
}

/// Atlas's error body.
fn error(status: StatusCode, code: &str, detail: &str, parameters: Vec<Value>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Json(json!({
            "detail": detail,
            "error": status.as_u16(),
            "errorCode": code,
            "parameters": parameters,
            "reason": status.canonical_reason().unwrap_or(""),
        })),
    )
        .into_response()
}

fn ok(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

impl RequestLog for Shared {
    fn record(&self, line: String) {
        self.lock().expect("state").requests.push(line);
    }
}

/// Digest authentication of the API key and the versioned media type.
async fn authenticate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !accept.contains("application/vnd.atlas.") {
        return error(
            StatusCode::NOT_ACCEPTABLE,
            "INVALID_MEDIA_TYPE",
            "Invalid accept header or version date.",
            vec![],
        );
    }
    let uri = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let verdict = verify_digest(&state, request.method(), &uri, request.headers());
    match verdict {
        Ok(()) => next.run(request).await,
        Err(nonce) => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "USER_UNAUTHORIZED",
                "You are not authorized for this resource.",
                vec![],
            );
            let challenge = format!(
                "Digest realm=\"{REALM}\", domain=\"\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\", stale=false"
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                challenge.parse().expect("header value"),
            );
            response
        }
    }
}

fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

/// Ok when the request carries a valid Digest answer; otherwise a fresh nonce to send.
fn verify_digest(
    state: &Shared,
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
) -> Result<(), String> {
    let mut s = state.lock().expect("state");
    s.nonce += 1;
    let fresh = md5_hex(&format!("nonce-{}-{}", s.nonce, s.private_key));
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Digest "))
    else {
        return Err(fresh);
    };
    let params: BTreeMap<String, String> = split_params(value).into_iter().collect();
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if get("username") != s.public_key || get("realm") != REALM || get("uri") != uri {
        return Err(fresh);
    }
    let ha1 = md5_hex(&format!("{}:{REALM}:{}", s.public_key, s.private_key));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let expected = md5_hex(&format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        get("nonce"),
        get("nc"),
        get("cnonce")
    ));
    if get("qop") != "auth" || get("response") != expected {
        return Err(fresh);
    }
    Ok(())
}

/// `name=value` / `name="value"` pairs, comma-separated (an independent reading of RFC 7616).
fn split_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                value.push(c);
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    out
}

/// Atlas's answer when the project or cluster named in the path does not exist.
fn cluster_error(s: &AtlasState, group: &str, cluster: &str) -> Option<Response> {
    if group != s.project_id {
        return Some(error(
            StatusCode::NOT_FOUND,
            "GROUP_NOT_FOUND",
            &format!("No group with ID {group} exists."),
            vec![json!(group)],
        ));
    }
    if cluster != s.cluster {
        return Some(error(
            StatusCode::NOT_FOUND,
            "CLUSTER_NOT_FOUND",
            &format!("No cluster named {cluster} exists in group {group}."),
            vec![json!(cluster), json!(group)],
        ));
    }
    None
}

fn snapshot_json(s: &AtlasSnapshot) -> Value {
    let mut v = json!({
        "id": s.id,
        "status": s.status,
        "createdAt": s.created_at,
        "description": s.description,
        "snapshotType": s.snapshot_type,
        "type": "replicaSet",
        "replicaSetName": "atlas-abc123-shard-0",
        "mongodVersion": "8.0.4",
        "frequencyType": "ondemand",
        "links": [],
    });
    if s.status == "completed" {
        v["storageSizeBytes"] = json!(s.storage_size_bytes);
        v["expiresAt"] = json!(s.created_at);
    }
    v
}

async fn take_snapshot(
    State(state): State<Shared>,
    Path((group, cluster)): Path<(String, String)>,
    body: String,
) -> Response {
    let mut s = state.lock().expect("state");
    if let Some(r) = cluster_error(&s, &group, &cluster) {
        return r;
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            "Received JSON is malformed.",
            vec![],
        );
    };
    let retention = body.get("retentionInDays").and_then(Value::as_u64);
    let Some(retention) = retention.filter(|r| *r >= 1) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ATTRIBUTE",
            "Invalid attribute retentionInDays specified.",
            vec![json!("retentionInDays")],
        );
    };
    if s.snapshots.values().any(|x| {
        x.snapshot_type == "onDemand" && (x.status == "queued" || x.status == "inProgress")
    }) {
        return error(
            StatusCode::CONFLICT,
            "CANNOT_TAKE_SNAPSHOT_IN_PROGRESS",
            "An on-demand snapshot is already queued or in progress for this cluster.",
            vec![],
        );
    }
    let id = s.new_id();
    let snapshot = AtlasSnapshot {
        id: id.clone(),
        status: "queued".into(),
        description: body
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
        snapshot_type: "onDemand".into(),
        created_at: now(),
        retention_days: retention as u32,
        storage_size_bytes: 2_147_483_648,
        will_fail: s.fail_snapshots,
    };
    let answer = snapshot_json(&snapshot);
    s.snapshots.insert(id, snapshot);
    ok(StatusCode::OK, answer)
}

async fn get_snapshot(
    State(state): State<Shared>,
    Path((group, cluster, id)): Path<(String, String, String)>,
) -> Response {
    let mut s = state.lock().expect("state");
    if let Some(r) = cluster_error(&s, &group, &cluster) {
        return r;
    }
    let stuck = s.stuck_snapshots;
    let Some(snapshot) = s.snapshots.get_mut(&id) else {
        return snapshot_not_found(&id);
    };
    let answer = snapshot_json(snapshot);
    // One step per poll.
    if !stuck {
        snapshot.status = match snapshot.status.as_str() {
            "queued" => "inProgress".into(),
            "inProgress" if snapshot.will_fail => "failed".into(),
            "inProgress" => "completed".into(),
            other => other.into(),
        };
    }
    ok(StatusCode::OK, answer)
}

fn snapshot_not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "SNAPSHOT_NOT_FOUND",
        &format!("No snapshot with ID {id} exists."),
        vec![json!(id)],
    )
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Paging {
    page_num: Option<usize>,
    items_per_page: Option<usize>,
}

async fn list_snapshots(
    State(state): State<Shared>,
    Path((group, cluster)): Path<(String, String)>,
    Query(paging): Query<Paging>,
) -> Response {
    let s = state.lock().expect("state");
    if let Some(r) = cluster_error(&s, &group, &cluster) {
        return r;
    }
    let all: Vec<Value> = s.snapshots.values().map(snapshot_json).collect();
    page(all, &paging)
}

fn page(all: Vec<Value>, paging: &Paging) -> Response {
    let per = paging.items_per_page.unwrap_or(100).clamp(1, 500);
    let num = paging.page_num.unwrap_or(1).max(1);
    let total = all.len();
    let results: Vec<Value> = all.into_iter().skip((num - 1) * per).take(per).collect();
    ok(
        StatusCode::OK,
        json!({ "results": results, "totalCount": total, "links": [] }),
    )
}

async fn delete_snapshot(
    State(state): State<Shared>,
    Path((group, cluster, id)): Path<(String, String, String)>,
) -> Response {
    let mut s = state.lock().expect("state");
    if let Some(r) = cluster_error(&s, &group, &cluster) {
        return r;
    }
    match s.snapshots.remove(&id) {
        Some(_) => ok(StatusCode::OK, json!({})),
        None => snapshot_not_found(&id),
    }
}

fn job_json(base: &str, j: &AtlasRestoreJob, s: &AtlasState) -> Value {
    let mut v = json!({
        "id": j.id,
        "deliveryType": j.delivery_type,
        "snapshotId": j.snapshot_id,
        "cancelled": false,
        "expired": false,
        "failed": false,
        "timestamp": now(),
        "links": [],
    });
    if let Some(t) = &j.target_cluster {
        v["targetClusterName"] = json!(t);
        v["targetGroupId"] = json!(j.target_group);
    }
    if let Some(at) = j.point_in_time {
        v["pointInTimeUTCSeconds"] = json!(at);
    }
    if j.finished {
        v["finishedAt"] = json!(now());
    }
    if j.delivery_type == "download" && j.polls >= 1 {
        let snapshot = j.snapshot_id.clone().unwrap_or_default();
        v["deliveryUrl"] = json!([format!(
            "{base}/download/{}/{snapshot}.tar.gz?signature={}",
            j.id,
            md5_hex(&format!("{}:{}", j.id, s.private_key))
        )]);
    }
    v
}

async fn create_restore_job(
    State(state): State<Shared>,
    Path((group, cluster)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = state.lock().expect("state");
    if let Some(r) = cluster_error(&s, &group, &cluster) {
        return r;
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            "Received JSON is malformed.",
            vec![],
        );
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let delivery = text("deliveryType").unwrap_or_default();
    let snapshot_id = text("snapshotId");
    let target_cluster = text("targetClusterName");
    let target_group = text("targetGroupId");
    let point_in_time = body.get("pointInTimeUTCSeconds").and_then(Value::as_i64);
    match delivery.as_str() {
        "download" | "automated" => {
            let Some(id) = &snapshot_id else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MISSING_ATTRIBUTE",
                    "The required attribute snapshotId was not specified.",
                    vec![json!("snapshotId")],
                );
            };
            match s.snapshots.get(id) {
                None => return snapshot_not_found(id),
                Some(snap) if snap.status != "completed" => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "SNAPSHOT_NOT_COMPLETE",
                        &format!("Snapshot {id} is not complete."),
                        vec![json!(id)],
                    )
                }
                Some(_) => {}
            }
        }
        "pointInTime" => {
            if point_in_time.is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MISSING_ATTRIBUTE",
                    "The required attribute pointInTimeUTCSeconds was not specified.",
                    vec![json!("pointInTimeUTCSeconds")],
                );
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_ENUM_VALUE",
                &format!("An invalid enumeration value {delivery} was specified."),
                vec![json!(delivery), json!("deliveryType")],
            )
        }
    }
    if delivery != "download" {
        let group_ok = target_group.as_deref() == Some(s.project_id.as_str());
        let known = target_cluster
            .as_deref()
            .is_some_and(|t| t == s.cluster || s.other_clusters.iter().any(|o| o == t));
        if !group_ok || !known {
            let name = target_cluster.clone().unwrap_or_default();
            return error(
                StatusCode::NOT_FOUND,
                "CLUSTER_NOT_FOUND",
                &format!(
                    "No cluster named {name} exists in group {}.",
                    target_group.clone().unwrap_or_default()
                ),
                vec![json!(name)],
            );
        }
    }
    let id = s.new_id();
    let job = AtlasRestoreJob {
        id: id.clone(),
        delivery_type: delivery,
        snapshot_id,
        target_cluster,
        target_group,
        point_in_time,
        polls: 0,
        finished: false,
    };
    let base = base_url(&headers);
    let answer = job_json(&base, &job, &s);
    s.restore_jobs.insert(id, job);
    ok(StatusCode::OK, answer)
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

async fn get_restore_job(
    State(state): State<Shared>,
    Path((group, cluster, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("state");
    if let Some(r) = cluster_error(&s, &group, &cluster) {
        return r;
    }
    let Some(job) = s.restore_jobs.get_mut(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "RESTORE_JOB_NOT_FOUND",
            &format!("No restore job with ID {id} exists."),
            vec![json!(id)],
        );
    };
    job.polls += 1;
    if job.delivery_type != "download" && job.polls >= 2 {
        job.finished = true;
    }
    let job = job.clone();
    ok(StatusCode::OK, job_json(&base_url(&headers), &job, &s))
}

async fn list_restore_jobs(
    State(state): State<Shared>,
    Path((group, cluster)): Path<(String, String)>,
    Query(paging): Query<Paging>,
    headers: HeaderMap,
) -> Response {
    let s = state.lock().expect("state");
    if let Some(r) = cluster_error(&s, &group, &cluster) {
        return r;
    }
    let base = base_url(&headers);
    let all: Vec<Value> = s
        .restore_jobs
        .values()
        .map(|j| job_json(&base, j, &s))
        .collect();
    page(all, &paging)
}

/// A download link: the snapshot's bytes (no API key: the signature is the credential).
async fn download(
    State(state): State<Shared>,
    Path((job, file)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let s = state.lock().expect("state");
    let Some(j) = s.restore_jobs.get(&job) else {
        return (StatusCode::NOT_FOUND, "no such download").into_response();
    };
    let signature = md5_hex(&format!("{}:{}", j.id, s.private_key));
    if s.expired_links || query.get("signature") != Some(&signature) {
        return (StatusCode::FORBIDDEN, "link expired or signature invalid").into_response();
    }
    let snapshot = j.snapshot_id.clone().unwrap_or_default();
    if file != format!("{snapshot}.tar.gz") {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    }
    let content = download_content(&snapshot, s.download_bytes);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/gzip")],
        Body::from(content),
    )
        .into_response()
}
