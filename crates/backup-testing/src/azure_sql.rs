//! An HTTP double of Microsoft Entra ID's token endpoint and of the Azure Resource Manager
//! calls of Azure SQL Database (`Microsoft.Sql`, api-version 2021-11-01), written from the
//! documented REST API (no Azure can run here):
//!
//! - `POST /{tenant}/oauth2/v2.0/token`: OAuth2 client credentials; a wrong secret gets
//!   Entra's `401 invalid_client` / `AADSTS7000215` body, an unknown client `400
//!   unauthorized_client` / `AADSTS700016`, an unknown tenant `400 invalid_request` /
//!   `AADSTS90002`;
//! - `GET|PUT|DELETE .../servers/{server}/databases/{db}`: a database (`properties.status`,
//!   `earliestRestoreDate`, `creationDate`, `currentServiceObjectiveName`, ...); PUT with
//!   `createMode: PointInTimeRestore`, `sourceDatabaseId` and `restorePointInTime` makes a
//!   new database (`202` + `Azure-AsyncOperation` + `Location`; `409` when the name is taken;
//!   `400` outside the restore window);
//! - `GET .../databases/{db}/restorePoints`: one `CONTINUOUS` point;
//! - `POST .../databases/{db}/export`: a bacpac export (`202` + `Azure-AsyncOperation` +
//!   `Location`), which writes the bacpac into the storage account it names (Shared Key or
//!   SAS, e.g. an Azurite) when it succeeds, and fails like Azure's Import/Export service when
//!   the SQL login is wrong, the storage refuses the write, or a test says so;
//! - operation status (`{status, error}`) and result URLs, `Retry-After` when asked;
//! - bearer tokens checked on every Resource Manager call (`401 InvalidAuthenticationToken`,
//!   `AuthenticationFailed`), `api-version` required, Resource Manager's error bodies
//!   (`ResourceNotFound`, `ParentResourceNotFound`, `ResourceGroupNotFound`,
//!   `SubscriptionNotFound`).
//!
//! Operations finish after [`AzureSqlState::polls_to_finish`] status polls (never while
//! [`AzureSqlState::stuck_operations`]). Runs on its own thread and runtime on a free
//! loopback port; stopped on drop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::http_double::{log_request, RequestLog, ServedRouter};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// The api-version the double answers (the one backupd's client sends).
pub const API_VERSION: &str = "2021-11-01";

/// One database the double holds.
#[derive(Debug, Clone)]
pub struct SqlDatabase {
    pub name: String,
    /// The database's GUID (`properties.databaseId`).
    pub database_id: String,
    pub status: String,
    pub creation_date: DateTime<Utc>,
    pub earliest_restore_date: DateTime<Utc>,
    pub sku: String,
    pub max_size_bytes: u64,
    /// For a restored database: what the restore request said.
    pub create_mode: Option<String>,
    pub source_database_id: Option<String>,
    pub restore_point_in_time: Option<String>,
}

/// What an export request said (without its secrets).
#[derive(Debug, Clone)]
pub struct ExportSeen {
    pub database: String,
    pub storage_uri: String,
    pub storage_key_type: String,
    pub administrator_login: String,
}

#[derive(Debug, Clone)]
enum Work {
    Restore {
        target: String,
    },
    Export {
        database: String,
        storage_uri: String,
        storage_key_type: String,
        storage_key: String,
        login_ok: bool,
    },
}

#[derive(Debug, Clone)]
struct Operation {
    work: Work,
    polls: u32,
    status: String,
    error: Option<(String, String)>,
    result: Option<Value>,
    started: DateTime<Utc>,
}

/// Everything the double holds; tests read and change it through [`AzureSqlDouble::state`].
#[derive(Debug, Default)]
pub struct AzureSqlState {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub server: String,
    pub location: String,
    /// The SQL login and password exports must give.
    pub administrator_login: String,
    pub administrator_password: String,
    pub databases: BTreeMap<String, SqlDatabase>,
    /// How far back point-in-time restores go (the database's backup retention).
    pub retention: TimeDelta,
    /// Polls of an operation's status before it finishes.
    pub polls_to_finish: u32,
    /// Operations never finish (stay `InProgress`).
    pub stuck_operations: bool,
    /// Every export ends `Failed` with this (code, message).
    pub export_failure: Option<(String, String)>,
    /// Sent as `Retry-After` (seconds) with accepted operations and their status.
    pub retry_after: Option<u64>,
    /// Size of the bacpacs exports write.
    pub bacpac_bytes: usize,
    /// Every export request.
    pub exports: Vec<ExportSeen>,
    /// Every request, as "METHOD /path?query" (never a body: secrets travel there).
    pub requests: Vec<String>,
    /// Tokens handed out.
    tokens: Vec<String>,
    operations: BTreeMap<String, Operation>,
    next_id: u64,
}

impl AzureSqlState {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!(
            "{:08x}-0000-4000-8000-{:012x}",
            0x5eed_0000u32, self.next_id
        )
    }

    fn database_path(&self, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Sql/servers/{}/databases/{name}",
            self.subscription_id, self.resource_group, self.server
        )
    }

    /// Adds database `name`, created `age` ago, its restore window starting 10 minutes after
    /// (or `retention` ago when it is older than that).
    pub fn add_database(&mut self, name: &str, age: TimeDelta) {
        let now = Utc::now();
        let created = now - age;
        let earliest = (created + TimeDelta::minutes(10)).max(now - self.retention);
        let database_id = self.new_id();
        self.databases.insert(
            name.to_owned(),
            SqlDatabase {
                name: name.to_owned(),
                database_id,
                status: "Online".into(),
                creation_date: created,
                earliest_restore_date: earliest,
                sku: "GP_S_Gen5_2".into(),
                max_size_bytes: 34_359_738_368,
                create_mode: None,
                source_database_id: None,
                restore_point_in_time: None,
            },
        );
    }
}

pub struct AzureSqlDouble {
    server: ServedRouter,
    state: Arc<Mutex<AzureSqlState>>,
}

impl AzureSqlDouble {
    /// Server `server` of resource group `resource_group` in subscription `subscription_id`,
    /// reached by the service principal `client_id` / `client_secret` of `tenant_id`, with
    /// no databases (see [`AzureSqlState::add_database`]). Exports log in as `sqladmin`
    /// with password `Adm1n-Passw0rd`.
    pub fn start(
        tenant_id: &str,
        client_id: &str,
        client_secret: &str,
        subscription_id: &str,
        resource_group: &str,
        server: &str,
    ) -> Self {
        let state = Arc::new(Mutex::new(AzureSqlState {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            subscription_id: subscription_id.into(),
            resource_group: resource_group.into(),
            server: server.into(),
            location: "westeurope".into(),
            administrator_login: "sqladmin".into(),
            administrator_password: "Adm1n-Passw0rd".into(),
            retention: TimeDelta::days(7),
            polls_to_finish: 2,
            bacpac_bytes: 64 * 1024,
            ..AzureSqlState::default()
        }));
        let shared = state.clone();
        let server = ServedRouter::start("azure-sql-double", move |addr| {
            router(shared, format!("http://{addr}"))
        });
        AzureSqlDouble { server, state }
    }

    /// The base URL: both `authority-url` and `management-url` of an azure-sql source.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn state(&self) -> MutexGuard<'_, AzureSqlState> {
        self.state.lock().expect("Azure SQL double state")
    }

    /// The resource id of database `name`.
    pub fn database_resource_id(&self, name: &str) -> String {
        self.state().database_path(name)
    }

    /// Database `name`, if it exists.
    pub fn database(&self, name: &str) -> Option<SqlDatabase> {
        self.state().databases.get(name).cloned()
    }

    pub fn database_names(&self) -> Vec<String> {
        self.state().databases.keys().cloned().collect()
    }
}

#[derive(Clone)]
struct App {
    state: Arc<Mutex<AzureSqlState>>,
    base: String,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, AzureSqlState> {
        self.state.lock().expect("state")
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

const DATABASE: &str = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Sql/servers/{server}/databases/{db}";

fn router(state: Arc<Mutex<AzureSqlState>>, base: String) -> Router {
    let app = App { state, base };
    let arm = Router::new()
        .route(
            DATABASE,
            get(get_database).put(put_database).delete(delete_database),
        )
        .route(&format!("{DATABASE}/restorePoints"), get(restore_points))
        .route(&format!("{DATABASE}/export"), post(export))
        .route(
            "/subscriptions/{sub}/providers/Microsoft.Sql/locations/{location}/{kind}/{id}",
            get(operation),
        )
        .layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .merge(arm)
        .layer(middleware::from_fn_with_state(
            app.clone(),
            log_request::<App>,
        ))
        .with_state(app)
}

/// Resource Manager's error body.
fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("x-ms-failure-cause", "gateway")],
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl RequestLog for App {
    fn record(&self, line: String) {
        self.lock().requests.push(line);
    }
}

/// The bearer token and `api-version` of every Resource Manager call.
async fn authenticate(State(app): State<App>, request: Request, next: Next) -> Response {
    let api_version = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("api-version="))
        .map(str::to_owned);
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(token) = token else {
        return arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        );
    };
    let valid = token
        .strip_prefix("Bearer ")
        .is_some_and(|t| app.lock().tokens.iter().any(|issued| issued == t));
    if !valid {
        let mut response = arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer authorization_uri=\"https://login.windows.net/\", error=\"invalid_token\", error_description=\"The access token is invalid.\""),
        );
        return response;
    }
    match api_version.as_deref() {
        None => arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ),
        Some(API_VERSION) => next.run(request).await,
        Some(other) => arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{other}' is invalid. The supported versions are '{API_VERSION}'."
            ),
        ),
    }
}

/// `application/x-www-form-urlencoded` pairs.
fn form(body: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| -> String {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) =
                    u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16)
                {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Entra ID's error body.
fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let now = Utc::now().format("%Y-%m-%d %H:%M:%SZ");
    let trace = "0a1b2c3d-0000-4000-8000-000000000001";
    let correlation = "0a1b2c3d-0000-4000-8000-000000000002";
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("{description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {now}"),
            "error_codes": [code],
            "timestamp": now.to_string(),
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        })),
    )
        .into_response()
}

async fn token(State(app): State<App>, Path(tenant): Path<String>, body: String) -> Response {
    let form = form(&body);
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let mut s = app.lock();
    if tenant != s.tenant_id {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    if get("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if get("client_id") != s.client_id {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("AADSTS700016: Application with identifier '{}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", get("client_id")),
        );
    }
    if get("client_secret") != s.client_secret {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.", s.client_id),
        );
    }
    if get("scope") != "https://management.azure.com/.default" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!("AADSTS1002012: The provided value for scope {} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", get("scope")),
        );
    }
    let id = s.new_id();
    let token = format!("eyJ0eXAiOiJKV1QifQ.{}", id.replace('-', ""));
    s.tokens.push(token.clone());
    Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": token,
    }))
    .into_response()
}

/// Resource Manager's answer when the subscription, group or server of the path is wrong.
fn scope_error(s: &AzureSqlState, sub: &str, rg: &str, server: &str) -> Option<Response> {
    if sub != s.subscription_id {
        return Some(arm_error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &format!("The subscription '{sub}' could not be found."),
        ));
    }
    if rg != s.resource_group {
        return Some(arm_error(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            &format!("Resource group '{rg}' could not be found."),
        ));
    }
    if server != s.server {
        return Some(arm_error(
            StatusCode::NOT_FOUND,
            "ParentResourceNotFound",
            &format!("Can not perform requested operation on nested resource. Parent resource '{server}' not found."),
        ));
    }
    None
}

fn not_found(s: &AzureSqlState, db: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.Sql/servers/{}/databases/{db}' under resource group '{}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            s.server, s.resource_group
        ),
    )
}

fn database_json(s: &AzureSqlState, d: &SqlDatabase) -> Value {
    let mut properties = json!({
        "collation": "SQL_Latin1_General_CP1_CI_AS",
        "maxSizeBytes": d.max_size_bytes,
        "status": d.status,
        "databaseId": d.database_id,
        "creationDate": time(d.creation_date),
        "currentServiceObjectiveName": d.sku,
        "requestedServiceObjectiveName": d.sku,
        "defaultSecondaryLocation": "northeurope",
        "catalogCollation": "SQL_Latin1_General_CP1_CI_AS",
        "zoneRedundant": false,
        "readScale": "Disabled",
        "currentSku": {"name": d.sku, "tier": "GeneralPurpose", "family": "Gen5", "capacity": 2},
        "currentBackupStorageRedundancy": "Geo",
        "requestedBackupStorageRedundancy": "Geo",
        "isLedgerOn": false,
    });
    if d.status == "Online" {
        properties["earliestRestoreDate"] = json!(time(d.earliest_restore_date));
    }
    json!({
        "sku": {"name": d.sku, "tier": "GeneralPurpose", "family": "Gen5", "capacity": 2},
        "kind": "v12.0,user,vcore,serverless",
        "properties": properties,
        "location": s.location,
        "id": s.database_path(&d.name),
        "name": d.name,
        "type": "Microsoft.Sql/servers/databases",
    })
}

type DbPath = Path<(String, String, String, String)>;

async fn get_database(State(app): State<App>, Path((sub, rg, server, db)): DbPath) -> Response {
    let s = app.lock();
    if let Some(e) = scope_error(&s, &sub, &rg, &server) {
        return e;
    }
    match s.databases.get(&db) {
        Some(d) => Json(database_json(&s, d)).into_response(),
        None => not_found(&s, &db),
    }
}

async fn restore_points(State(app): State<App>, Path((sub, rg, server, db)): DbPath) -> Response {
    let s = app.lock();
    if let Some(e) = scope_error(&s, &sub, &rg, &server) {
        return e;
    }
    let Some(d) = s.databases.get(&db) else {
        return not_found(&s, &db);
    };
    Json(json!({"value": [{
        "properties": {
            "restorePointType": "CONTINUOUS",
            "earliestRestoreDate": time(d.earliest_restore_date),
        },
        "id": format!("{}/restorePoints/ContinuousRestorePoint", s.database_path(&db)),
        "name": "ContinuousRestorePoint",
        "location": s.location,
        "type": "Microsoft.Sql/servers/databases/restorePoints",
    }]}))
    .into_response()
}

/// Answers an accepted long-running operation: 202 with where to poll it.
fn accepted(app: &App, s: &mut AzureSqlState, family: &str, work: Work) -> Response {
    let id = s.new_id();
    s.operations.insert(
        id.clone(),
        Operation {
            work,
            polls: 0,
            status: "InProgress".into(),
            error: None,
            result: None,
            started: Utc::now(),
        },
    );
    let prefix = format!(
        "{}/subscriptions/{}/providers/Microsoft.Sql/locations/{}",
        app.base, s.subscription_id, s.location
    );
    let (status_kind, result_kind) = match family {
        "export" => (
            "importExportAzureAsyncOperation",
            "importExportOperationResults",
        ),
        _ => ("databaseAzureAsyncOperation", "databaseOperationResults"),
    };
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"operation": family, "startTime": time(Utc::now())})),
    )
        .into_response();
    let headers = response.headers_mut();
    let value = |v: String| HeaderValue::from_str(&v).expect("header value");
    headers.insert(
        "azure-asyncoperation",
        value(format!(
            "{prefix}/{status_kind}/{id}?api-version={API_VERSION}"
        )),
    );
    headers.insert(
        header::LOCATION,
        value(format!(
            "{prefix}/{result_kind}/{id}?api-version={API_VERSION}"
        )),
    );
    if let Some(secs) = s.retry_after {
        headers.insert(header::RETRY_AFTER, value(secs.to_string()));
    }
    response
}

async fn put_database(
    State(app): State<App>,
    Path((sub, rg, server, db)): DbPath,
    Json(body): Json<Value>,
) -> Response {
    let mut s = app.lock();
    if let Some(e) = scope_error(&s, &sub, &rg, &server) {
        return e;
    }
    let p = &body["properties"];
    let mode = p["createMode"].as_str().unwrap_or("Default");
    if mode != "PointInTimeRestore" {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue",
            &format!(
                "The double only makes databases by PointInTimeRestore, not createMode '{mode}'."
            ),
        );
    }
    if s.databases.contains_key(&db) {
        return arm_error(
            StatusCode::CONFLICT,
            "DatabaseAlreadyExists",
            &format!("The database '{db}' already exists on server '{}'. Choose a different database name.", s.server),
        );
    }
    if body["location"].as_str().map(str::to_ascii_lowercase)
        != Some(s.location.to_ascii_lowercase())
    {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "LocationNotAvailableForResourceType",
            "A point-in-time restore is made in the location of its server.",
        );
    }
    let source_id = p["sourceDatabaseId"].as_str().unwrap_or("").to_owned();
    let Some(source) = s
        .databases
        .values()
        .find(|d| s.database_path(&d.name).eq_ignore_ascii_case(&source_id))
        .cloned()
    else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "SourceDatabaseNotFound",
            &format!("The source database '{source_id}' does not exist."),
        );
    };
    let point_text = p["restorePointInTime"].as_str().unwrap_or("").to_owned();
    let Ok(point) = DateTime::parse_from_rfc3339(&point_text).map(|t| t.with_timezone(&Utc)) else {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRestorePointInTime",
            &format!("The restore point in time '{point_text}' is not a valid ISO 8601 date."),
        );
    };
    let now = Utc::now();
    if point < source.earliest_restore_date || point > now {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidPointInTimeRestoreRequest",
            &format!(
                "The point in time '{point_text}' for restore of database '{}' is not valid. Specify a point in time between '{}' and '{}'.",
                source.name,
                time(source.earliest_restore_date),
                time(now)
            ),
        );
    }
    let database_id = s.new_id();
    s.databases.insert(
        db.clone(),
        SqlDatabase {
            name: db.clone(),
            database_id,
            status: "Creating".into(),
            creation_date: now,
            earliest_restore_date: now,
            sku: source.sku.clone(),
            max_size_bytes: source.max_size_bytes,
            create_mode: Some(mode.to_owned()),
            source_database_id: Some(source_id),
            restore_point_in_time: Some(point_text),
        },
    );
    accepted(&app, &mut s, "restore", Work::Restore { target: db })
}

async fn delete_database(State(app): State<App>, Path((sub, rg, server, db)): DbPath) -> Response {
    let mut s = app.lock();
    if let Some(e) = scope_error(&s, &sub, &rg, &server) {
        return e;
    }
    match s.databases.remove(&db) {
        Some(_) => StatusCode::OK.into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn export(
    State(app): State<App>,
    Path((sub, rg, server, db)): DbPath,
    Json(body): Json<Value>,
) -> Response {
    let mut s = app.lock();
    if let Some(e) = scope_error(&s, &sub, &rg, &server) {
        return e;
    }
    if !s.databases.contains_key(&db) {
        return not_found(&s, &db);
    }
    let text = |k: &str| body[k].as_str().unwrap_or("").to_owned();
    let storage_key_type = text("storageKeyType");
    if !matches!(
        storage_key_type.as_str(),
        "StorageAccessKey" | "SharedAccessKey"
    ) {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue",
            &format!("Invalid value '{storage_key_type}' for parameter storageKeyType."),
        );
    }
    for required in [
        "storageUri",
        "storageKey",
        "administratorLogin",
        "administratorLoginPassword",
    ] {
        if text(required).is_empty() {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "MissingParameter",
                &format!("The parameter {required} is required."),
            );
        }
    }
    let login_ok = text("administratorLogin") == s.administrator_login
        && text("administratorLoginPassword") == s.administrator_password;
    s.exports.push(ExportSeen {
        database: db.clone(),
        storage_uri: text("storageUri"),
        storage_key_type: storage_key_type.clone(),
        administrator_login: text("administratorLogin"),
    });
    let work = Work::Export {
        database: db,
        storage_uri: text("storageUri"),
        storage_key_type,
        storage_key: text("storageKey"),
        login_ok,
    };
    accepted(&app, &mut s, "export", work)
}

/// An operation's status (`...AzureAsyncOperation/{id}`) or result (`...Results/{id}`).
async fn operation(
    State(app): State<App>,
    Path((sub, location, kind, id)): Path<(String, String, String, String)>,
) -> Response {
    let (work, finishing) = {
        let mut s = app.lock();
        if sub != s.subscription_id || !location.eq_ignore_ascii_case(&s.location) {
            return arm_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "No such operation.",
            );
        }
        let polls_to_finish = s.polls_to_finish;
        let stuck = s.stuck_operations;
        let Some(op) = s.operations.get_mut(&id) else {
            return arm_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!("The operation '{id}' was not found."),
            );
        };
        if kind.ends_with("AzureAsyncOperation") && op.status == "InProgress" {
            op.polls += 1;
        }
        let finishing = op.status == "InProgress" && !stuck && op.polls >= polls_to_finish;
        (op.work.clone(), finishing)
    };
    if finishing {
        let outcome = finish(&app, &work).await;
        let mut s = app.lock();
        if let Some(op) = s.operations.get_mut(&id) {
            match outcome {
                Ok(result) => {
                    op.status = "Succeeded".into();
                    op.result = result;
                }
                Err((code, message)) => {
                    op.status = "Failed".into();
                    op.error = Some((code, message));
                }
            }
        }
    }
    let s = app.lock();
    let op = s.operations.get(&id).expect("operation").clone();
    let retry = |mut r: Response| {
        if let Some(secs) = s.retry_after {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs.to_string()).expect("value"),
            );
        }
        r
    };
    if kind.ends_with("AzureAsyncOperation") {
        let mut body = json!({"name": id, "status": op.status, "startTime": time(op.started)});
        if let Some((code, message)) = &op.error {
            body["error"] = json!({"code": code, "message": message});
        }
        return retry(Json(body).into_response());
    }
    match op.status.as_str() {
        "InProgress" => retry(StatusCode::ACCEPTED.into_response()),
        "Succeeded" => match op.result {
            Some(result) => Json(result).into_response(),
            None => StatusCode::OK.into_response(),
        },
        _ => {
            let (code, message) = op.error.unwrap_or_default();
            arm_error(StatusCode::BAD_REQUEST, &code, &message)
        }
    }
}

/// Does an operation's work; its result body, or Azure's (code, message) of its failure.
async fn finish(app: &App, work: &Work) -> Result<Option<Value>, (String, String)> {
    match work {
        Work::Restore { target } => {
            let mut s = app.lock();
            let now = Utc::now();
            let Some(d) = s.databases.get_mut(target) else {
                return Err((
                    "DatabaseDoesNotExist".into(),
                    format!("Database '{target}' was deleted while it was restored."),
                ));
            };
            d.status = "Online".into();
            d.earliest_restore_date = now;
            let d = d.clone();
            Ok(Some(database_json(&s, &d)))
        }
        Work::Export {
            database,
            storage_uri,
            storage_key_type,
            storage_key,
            login_ok,
        } => {
            let (failure, bytes, server, request_id) = {
                let mut s = app.lock();
                let id = s.new_id();
                (
                    s.export_failure.clone(),
                    s.bacpac_bytes,
                    s.server.clone(),
                    id,
                )
            };
            let failed = |why: String| {
                (
                    "ImportExportJobError".to_owned(),
                    format!("The ImportExport operation with Request Id '{request_id}' failed due to '{why}'."),
                )
            };
            if let Some(failure) = failure {
                return Err(failure);
            }
            if !login_ok {
                return Err(failed(
                    "Login failed for user 'the given administratorLogin'. (Microsoft SQL Server, Error: 18456)".into(),
                ));
            }
            let content = bacpac(database, bytes);
            write_blob(storage_uri, storage_key_type, storage_key, content)
                .await
                .map_err(|why| {
                    failed(format!(
                        "Could not write the bacpac to {storage_uri}: {why}"
                    ))
                })?;
            let now = time(Utc::now());
            Ok(Some(json!({
                "id": format!("/subscriptions/x/resourceGroups/x/providers/Microsoft.Sql/servers/{server}/databases/{database}/importExportOperationResults/{request_id}"),
                "name": request_id,
                "type": "Microsoft.Sql/servers/databases/importExportOperationResults",
                "properties": {
                    "requestId": request_id,
                    "requestType": "Export",
                    "queuedTime": now,
                    "lastModifiedTime": now,
                    "blobUri": storage_uri,
                    "serverName": server,
                    "databaseName": database,
                    "status": "Completed",
                    "errorMessage": null,
                }
            })))
        }
    }
}

/// A bacpac's content: a zip header and deterministic filler.
pub fn bacpac(database: &str, len: usize) -> Vec<u8> {
    let mut out = b"PK\x03\x04".to_vec();
    let seed = format!("bacpac of {database}\n");
    while out.len() < len {
        out.extend_from_slice(seed.as_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `content` as block blob `url` with the storage account key (Shared Key) or a SAS
/// token, the way the Import/Export service does.
async fn write_blob(url: &str, key_type: &str, key: &str, content: Vec<u8>) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("the storage URI is no URL: {e}"))?;
    let http = reqwest::Client::new();
    let date = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let version = "2021-08-06";
    let length = content.len();
    let request = if key_type == "SharedAccessKey" {
        let sas = key.trim_start_matches('?');
        http.put(format!("{url}?{sas}"))
    } else {
        // Host-style (ACCOUNT.blob...) or path-style (emulators: HOST:PORT/ACCOUNT/...).
        let host = parsed.host_str().unwrap_or("");
        let path_style = host.parse::<std::net::IpAddr>().is_ok() || host == "localhost";
        let account = if path_style {
            parsed
                .path()
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("")
                .to_owned()
        } else {
            host.split('.').next().unwrap_or("").to_owned()
        };
        let to_sign = format!(
            "PUT\n\n\n{length}\n\napplication/octet-stream\n\n\n\n\n\n\nx-ms-blob-type:BlockBlob\nx-ms-date:{date}\nx-ms-version:{version}\n/{account}{}",
            parsed.path()
        );
        let secret = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| "the storage account key is not base64".to_owned())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).map_err(|e| e.to_string())?;
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        http.put(url)
            .header("authorization", format!("SharedKey {account}:{signature}"))
    };
    let response = request
        .header("x-ms-date", &date)
        .header("x-ms-version", version)
        .header("x-ms-blob-type", "BlockBlob")
        .header("content-type", "application/octet-stream")
        .body(content)
        .send()
        .await
        .map_err(|e| format!("the storage account cannot be reached: {e}"))?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let code = text
        .split("<Code>")
        .nth(1)
        .and_then(|t| t.split("</Code>").next())
        .unwrap_or("")
        .to_owned();
    Err(format!("the storage account answered {status} {code}"))
}
