//! Alert delivery to webhooks (generic JSON or Slack-compatible), with
//! de-duplication (the same alert is not repeated within `repeat-after`) and
//! escalation (an alert still firing after `escalate-after` also goes to the
//! escalation webhooks). State is per process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use backup_engine::service::{AlertEvent, AlertsConfig, WebhookConfig, WebhookFormat};

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub event: AlertEvent,
    /// What makes two alerts "the same", e.g. `rpo-breach:files`.
    pub key: String,
    pub source: Option<String>,
    pub summary: String,
    pub details: serde_json::Value,
}

struct Firing {
    first_seen: DateTime<Utc>,
    last_sent: DateTime<Utc>,
    escalated: bool,
}

pub struct Alerter {
    config: AlertsConfig,
    client: reqwest::Client,
    firing: Mutex<HashMap<String, Firing>>,
}

/// What `fire` decided to do, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    pub sent: usize,
    pub escalated: usize,
    pub suppressed: bool,
}

impl Alerter {
    pub fn new(config: AlertsConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        Self {
            config,
            client,
            firing: Mutex::new(HashMap::new()),
        }
    }

    /// Reports a firing condition; sends, repeats or escalates as configured.
    pub async fn fire(&self, alert: &Alert, now: DateTime<Utc>) -> Delivery {
        let (send, escalate) = {
            let mut firing = self.firing.lock().expect("alert state");
            let repeat = chrono::Duration::from_std(self.config.repeat_after)
                .unwrap_or(chrono::Duration::MAX);
            let escalate_after = chrono::Duration::from_std(self.config.escalate_after)
                .unwrap_or(chrono::Duration::MAX);
            match firing.get_mut(&alert.key) {
                None => {
                    firing.insert(
                        alert.key.clone(),
                        Firing {
                            first_seen: now,
                            last_sent: now,
                            escalated: false,
                        },
                    );
                    (true, false)
                }
                Some(f) => {
                    let send = now - f.last_sent >= repeat;
                    if send {
                        f.last_sent = now;
                    }
                    let escalate = !f.escalated && now - f.first_seen >= escalate_after;
                    if escalate {
                        f.escalated = true;
                    }
                    (send, escalate)
                }
            }
        };
        let mut delivery = Delivery {
            suppressed: !send && !escalate,
            ..Delivery::default()
        };
        for hook in self
            .config
            .webhooks
            .iter()
            .filter(|h| h.events.is_empty() || h.events.contains(&alert.event))
        {
            let wanted = if hook.escalation { escalate } else { send };
            if wanted && self.deliver(hook, alert, hook.escalation, now).await {
                if hook.escalation {
                    delivery.escalated += 1;
                } else {
                    delivery.sent += 1;
                }
            }
        }
        delivery
    }

    /// The condition cleared: the next `fire` of this key is a new alert.
    pub fn resolve(&self, key: &str) {
        self.firing.lock().expect("alert state").remove(key);
    }

    async fn deliver(
        &self,
        hook: &WebhookConfig,
        alert: &Alert,
        escalation: bool,
        now: DateTime<Utc>,
    ) -> bool {
        let body = match hook.format {
            WebhookFormat::Json => serde_json::json!({
                "service": "backupd",
                "event": alert.event.as_str(),
                "key": alert.key,
                "source": alert.source,
                "summary": alert.summary,
                "details": alert.details,
                "escalation": escalation,
                "at": now,
            }),
            WebhookFormat::Slack => serde_json::json!({
                "text": format!("{}[backupd] {}: {}", if escalation { ":rotating_light: ESCALATION " } else { "" }, alert.event.as_str(), alert.summary),
            }),
        };
        match self.client.post(&hook.url).json(&body).send().await {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::warn!(url = %redact(&hook.url), status = %r.status(), "alert webhook refused the alert");
                false
            }
            Err(e) => {
                tracing::warn!(url = %redact(&hook.url), error = %e.without_url(), "alert webhook unreachable");
                false
            }
        }
    }
}

/// Webhook URLs often carry secrets in their path (Slack): log only scheme and host.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}/***", rest.split('/').next().unwrap_or("")),
        None => "***".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_redacted() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/SECRET"),
            "https://hooks.slack.com/***"
        );
    }
}
