//! Configuration of the backupd service itself: HTTP API access and alerts.

use std::time::Duration;

use serde::Deserialize;

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiConfig {
    /// Address for the HTTP API, health and metrics (the `--listen` flag overrides it).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer tokens allowed to call `/api/v1`. Only their SHA-256 is stored.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
    /// How long running jobs may take to finish after SIGTERM before their leases are released.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve the HTML status page at `/` (unauthenticated, like `/healthz` and `/metrics`);
    /// `false` makes `/` answer 404.
    #[serde(default = "default_status_page")]
    pub status_page: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tokens: Vec::new(),
            shutdown_grace: default_grace(),
            status_page: default_status_page(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_status_page() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenConfig {
    pub name: String,
    /// Lowercase hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
    #[serde(default)]
    pub scope: TokenScope,
}

/// `read` may query; `operate` may also trigger backups.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum TokenScope {
    #[default]
    Read,
    Operate,
}

/// `[alerts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AlertsConfig {
    /// The same alert is not sent again within this window.
    #[serde(default = "default_repeat", with = "humantime_serde")]
    pub repeat_after: Duration,
    /// An alert still firing this long after it started also goes to escalation webhooks.
    #[serde(default = "default_escalate", with = "humantime_serde")]
    pub escalate_after: Duration,
    /// `replication-lag` fires when a destination's oldest uncopied backup waited longer.
    #[serde(default = "default_replication_lag", with = "humantime_serde")]
    pub replication_lag: Duration,
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            repeat_after: default_repeat(),
            escalate_after: default_escalate(),
            replication_lag: default_replication_lag(),
            webhooks: Vec::new(),
        }
    }
}

fn default_replication_lag() -> Duration {
    Duration::from_secs(3600)
}

fn default_repeat() -> Duration {
    Duration::from_secs(3600)
}
fn default_escalate() -> Duration {
    Duration::from_secs(1800)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Which events; empty means all.
    #[serde(default)]
    pub events: Vec<AlertEvent>,
    /// Receives only escalations (alerts still firing after `escalate-after`).
    #[serde(default)]
    pub escalation: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookFormat {
    #[default]
    Json,
    /// A Slack-compatible `{"text": ...}` body.
    Slack,
}

#[derive(
    Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "kebab-case")]
pub enum AlertEvent {
    JobFailed,
    RpoBreach,
    ReplicationLag,
    VerifyFailed,
    /// A restore drill failed: its restore or one of its checks.
    DrillFailed,
}

impl AlertEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobFailed => "job-failed",
            Self::RpoBreach => "rpo-breach",
            Self::ReplicationLag => "replication-lag",
            Self::VerifyFailed => "verify-failed",
            Self::DrillFailed => "drill-failed",
        }
    }
}
