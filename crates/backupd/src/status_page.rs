//! `GET /`: a status page for people, plain server-rendered HTML with inline CSS (no
//! JavaScript): sources and their last backups, replication lag, and the RPO/RTO verdicts.
//!
//! Unauthenticated like `/healthz` and `/metrics`, so it shows names, times, sizes and
//! verdicts only, never a URI or credential from the config; error texts it shows are passed
//! through [`redact`]. `[api] status-page = false` turns it off (404).
//!
//! Each section is one function returning [`Html`]; [`render`] lists them in page order, so a
//! section is added by writing its function and adding it there. Every string reaches the
//! page through [`Html::text`] (escaped), so a section cannot forget to escape.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use backup_catalog::{BackupFilter, BackupRecord, BackupStatus};
use backup_core::recovery::Verdict;
use backup_engine::{human_bytes, Engine, EngineError};

use crate::api::AppState;

/// Seconds between the page's automatic reloads.
const REFRESH_SECONDS: u32 = 30;
/// Characters of a backup id shown (the full id is in the cell's tooltip). Ids are UUIDv7:
/// the first 12 hex digits are the millisecond, the next group a per-process counter.
const ID_PREFIX: usize = 18;

/// `GET /` (only routed when `[api] status-page` is on).
pub async fn page(State(state): State<AppState>) -> Response {
    let now = Utc::now();
    match render(&state.engine, now).await {
        Ok(page) => html_response(StatusCode::OK, page),
        Err(EngineError::Catalog(e)) => {
            tracing::warn!(error = %e, "status page: the catalog is unreachable");
            html_response(
                StatusCode::SERVICE_UNAVAILABLE,
                unavailable_page(now, "The catalog is unreachable", &e.to_string()),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "status page failed");
            html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                unavailable_page(now, "The status could not be read", &e.to_string()),
            )
        }
    }
}

fn html_response(status: StatusCode, page: Html) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page.0,
    )
        .into_response()
}

/// The whole page at `now`.
pub async fn render(engine: &Engine, now: DateTime<Utc>) -> backup_engine::Result<Html> {
    let sections = [
        sources_section(engine, now).await?,
        replication_section(engine).await?,
        recovery_section(engine, now).await?,
        drills_section(engine).await?,
    ];
    Ok(document(now, Html::concat(sections)))
}

// ---- sections ------------------------------------------------------------------------------

/// Each configured source: what it is, its schedule, its newest backup, and why that failed.
async fn sources_section(engine: &Engine, now: DateTime<Utc>) -> backup_engine::Result<Html> {
    let mut rows = Vec::new();
    for s in &engine.config.sources {
        // Newest first.
        let backups = engine
            .catalog
            .list_backups(&BackupFilter {
                source: Some(s.name.clone()),
                status: None,
            })
            .await?;
        let newest = backups.first();
        let mut row = vec![
            Html::text(&s.name).wrap("strong"),
            Html::text(s.kind.kind_name()),
            Html::text(
                s.tier
                    .map(|t| format!("{t:?}").to_lowercase())
                    .as_deref()
                    .unwrap_or("-"),
            ),
            schedule_cell(s),
        ];
        match newest {
            None => {
                row.push(badge(Tone::Warn, "no backup yet"));
                row.extend([dash(), dash(), dash(), dash(), dash()]);
            }
            Some(b) => {
                row.push(backup_status_badge(b.status));
                row.push(backup_id_cell(b));
                row.push(b.finished_at.map(time_cell).unwrap_or_else(|| {
                    Html::text(&format!("started {}", time_text(b.started_at)))
                }));
                row.push(Html::text(&age_text(
                    b.finished_at.unwrap_or(b.started_at),
                    now,
                )));
                row.push(size_cell(b));
                row.push(failure_cell(b, &backups));
            }
        }
        rows.push(row);
    }
    let body = if rows.is_empty() {
        note("No sources are configured.")
    } else {
        table(
            &[
                "Source",
                "Kind",
                "Tier",
                "Schedule",
                "Last backup",
                "Id",
                "Finished (UTC)",
                "Age",
                "Size",
                "Last failure",
            ],
            rows,
        )
    };
    Ok(section("sources", "Sources", body))
}

/// Backup copies per `copy-to` destination, WAL copies per postgres source and destination,
/// and the copies that keep failing.
async fn replication_section(engine: &Engine) -> backup_engine::Result<Html> {
    let status = backup_engine::replicate::replication_status(engine).await?;
    let limit = engine.config.alerts.replication_lag.as_secs();
    let mut body = Vec::new();

    if status.destinations.is_empty() {
        body.push(note(
            "No source copies its backups to another repository (copy-to).",
        ));
    } else {
        let rows = status
            .destinations
            .iter()
            .map(|d| {
                let sources: Vec<&str> = engine
                    .config
                    .sources
                    .iter()
                    .filter(|s| s.copy_to.iter().any(|r| r.to == d.lag.destination))
                    .map(|s| s.name.as_str())
                    .collect();
                vec![
                    Html::text(&d.lag.destination).wrap("strong"),
                    Html::text(&if sources.is_empty() {
                        "-".into()
                    } else {
                        sources.join(", ")
                    }),
                    lag_badge(d.lag_seconds, d.lag.pending, d.lag.failing, limit),
                    Html::text(&duration_text(d.lag_seconds)),
                    Html::text(&d.lag.pending.to_string()),
                    Html::text(&human_bytes(d.lag.pending_bytes)),
                    Html::text(&d.lag.failing.to_string()),
                    Html::text(&d.lag.done.to_string()),
                    d.lag.last_copied_at.map(time_cell).unwrap_or_else(dash),
                ]
            })
            .collect();
        body.push(Html::raw("<h3>Backup copies</h3>"));
        body.push(table(
            &[
                "Destination",
                "Sources",
                "State",
                "Lag",
                "Pending",
                "Pending size",
                "Failing",
                "Copied",
                "Last copy (UTC)",
            ],
            rows,
        ));
    }

    if !status.wal.is_empty() {
        let rows = status
            .wal
            .iter()
            .map(|w| {
                vec![
                    Html::text(&w.lag.source).wrap("strong"),
                    Html::text(&w.lag.destination),
                    lag_badge(w.lag_seconds, w.lag.pending, 0, limit),
                    Html::text(&duration_text(w.lag_seconds)),
                    Html::text(&w.lag.pending.to_string()),
                    Html::text(&human_bytes(w.lag.pending_bytes)),
                    Html::text(&w.lag.done.to_string()),
                    w.lag.last_copied_at.map(time_cell).unwrap_or_else(dash),
                ]
            })
            .collect();
        body.push(Html::raw("<h3>WAL copies</h3>"));
        body.push(table(
            &[
                "Source",
                "Destination",
                "State",
                "Lag",
                "Pending files",
                "Pending size",
                "Copied",
                "Last copy (UTC)",
            ],
            rows,
        ));
    }

    if !status.failing.is_empty() {
        let rows = status
            .failing
            .iter()
            .map(|t| {
                vec![
                    Html::text(&short_id(&t.backup_id.to_string())).wrap("code"),
                    Html::text(&t.destination),
                    Html::text(&t.attempts.to_string()),
                    time_cell(t.next_attempt_at),
                    error_text(t.error.as_deref().unwrap_or("-")),
                ]
            })
            .collect();
        body.push(Html::raw("<h3>Failing copies</h3>"));
        body.push(table(
            &[
                "Backup",
                "Destination",
                "Attempts",
                "Next attempt (UTC)",
                "Last error",
            ],
            rows,
        ));
    }
    Ok(section("replication", "Replication", Html::concat(body)))
}

/// The RPO/RTO report (`/api/v1/report/recovery`) as a table.
async fn recovery_section(engine: &Engine, now: DateTime<Utc>) -> backup_engine::Result<Html> {
    let report = backup_engine::report::recovery_report(engine, now).await?;
    let secs = |s: Option<u64>| s.map(duration_text).unwrap_or_else(|| "-".into());
    let rows: Vec<_> = report
        .sources
        .iter()
        .map(|r| {
            let rto = match r.last_drill_rto_seconds {
                Some(s) => format!("{} ({})", duration_text(s), r.rto_status),
                None => r.rto_status.clone(),
            };
            let reasons =
                Html::concat(r.reasons.iter().map(|reason| error_text(reason).wrap("li")));
            vec![
                Html::text(&r.source).wrap("strong"),
                Html::text(r.tier.as_deref().unwrap_or("-")),
                Html::text(&secs(r.target_rpo_seconds)),
                Html::text(&secs(r.target_rto_seconds)),
                Html::text(&secs(r.achieved_rpo_seconds)),
                r.restorable_point.map(time_cell).unwrap_or_else(dash),
                Html::text(&rto),
                verdict_badge(r.verdict),
                if r.reasons.is_empty() {
                    dash()
                } else {
                    reasons.wrap("ul")
                },
            ]
        })
        .collect();
    let body = if rows.is_empty() {
        note("No sources are configured.")
    } else {
        table(
            &[
                "Source",
                "Tier",
                "Target RPO",
                "Target RTO",
                "Achieved RPO",
                "Restorable to (UTC)",
                "RTO",
                "Verdict",
                "Why",
            ],
            rows,
        )
    };
    Ok(section("recovery", "Recovery objectives", body))
}

/// The newest restore drills of every source: outcome, measured RTO, and what failed.
async fn drills_section(engine: &Engine) -> backup_engine::Result<Html> {
    use backup_catalog::DrillStatus;
    let drills = engine.catalog.list_drills(None, 20).await?;
    let rows: Vec<_> = drills
        .iter()
        .map(|d| {
            let status = match d.status {
                DrillStatus::Passed => badge(Tone::Ok, "passed"),
                DrillStatus::Failed => badge(Tone::Bad, "failed"),
                DrillStatus::Running => badge(Tone::Neutral, "running"),
            };
            let failures: Vec<Html> = d
                .error
                .iter()
                .cloned()
                .chain(
                    d.checks
                        .iter()
                        .filter(|c| !c.passed)
                        .map(|c| format!("{}: {}", c.name, c.detail)),
                )
                .map(|f| error_text(&f).wrap("li"))
                .collect();
            vec![
                Html::text(&d.source).wrap("strong"),
                time_cell(d.started_at),
                Html::text(d.trigger.as_str()),
                d.backup_id
                    .map(|b| Html::text(&short_id(&b.to_string())).wrap("code"))
                    .unwrap_or_else(dash),
                status,
                d.rto_millis
                    .map(|ms| Html::text(&duration_text(ms.div_ceil(1000))))
                    .unwrap_or_else(dash),
                Html::text(&format!(
                    "{}/{} passed",
                    d.checks.iter().filter(|c| c.passed).count(),
                    d.checks.len()
                )),
                if failures.is_empty() {
                    dash()
                } else {
                    Html::concat(failures).wrap("ul")
                },
            ]
        })
        .collect();
    let body = if rows.is_empty() {
        note("No restore drill has run yet: `backupctl drill SOURCE --now`, or a source's drill.cron.")
    } else {
        table(
            &[
                "Source",
                "Started (UTC)",
                "Trigger",
                "Backup",
                "Outcome",
                "RTO",
                "Checks",
                "What failed",
            ],
            rows,
        )
    };
    Ok(section("drills", "Recent restore drills", body))
}

// ---- cells ---------------------------------------------------------------------------------

fn schedule_cell(s: &backup_engine::config::SourceConfig) -> Html {
    if s.schedule.is_empty() {
        return Html::text("on demand");
    }
    let entries = s.schedule.iter().map(|e| {
        let mut t = format!("{} ({:?}", e.cron, e.backup_type).to_lowercase();
        if let Some(tag) = &e.tag {
            let _ = write!(t, ", {tag}");
        }
        t.push(')');
        Html::text(&t).wrap("code")
    });
    let mut cell = Html::join(entries, "<br>");
    cell.push(Html::raw("<br>"));
    cell.push(Html::text(&s.timezone).wrap("small"));
    cell
}

fn backup_status_badge(status: BackupStatus) -> Html {
    let tone = match status {
        BackupStatus::Complete => Tone::Ok,
        BackupStatus::Running | BackupStatus::Deleting => Tone::Neutral,
        BackupStatus::Failed | BackupStatus::Abandoned => Tone::Bad,
    };
    badge(tone, status.as_str())
}

fn backup_id_cell(b: &BackupRecord) -> Html {
    let id = b.id.to_string();
    Html(format!(
        "<code title=\"{}\">{}</code>",
        Html::text(&id).0,
        Html::text(&short_id(&id)).0
    ))
}

fn short_id(id: &str) -> String {
    id.chars().take(ID_PREFIX).collect()
}

fn size_cell(b: &BackupRecord) -> Html {
    if b.status != BackupStatus::Complete && b.stored_bytes == 0 {
        return dash();
    }
    Html(format!(
        "<span title=\"{} files, {} before compression\">{}</span>",
        b.file_count,
        Html::text(&human_bytes(b.plaintext_bytes)).0,
        Html::text(&human_bytes(b.stored_bytes)).0
    ))
}

/// When the newest backup did not succeed: its error, and the newest one that did.
fn failure_cell(newest: &BackupRecord, backups: &[BackupRecord]) -> Html {
    if !matches!(
        newest.status,
        BackupStatus::Failed | BackupStatus::Abandoned
    ) {
        return dash();
    }
    let mut cell = error_text(newest.error.as_deref().unwrap_or("no error recorded"));
    let last_good = backups.iter().find(|b| b.status == BackupStatus::Complete);
    cell.push(Html::raw("<br>"));
    cell.push(
        Html::text(&match last_good {
            Some(b) => format!(
                "last complete: {} at {}",
                short_id(&b.id.to_string()),
                time_text(b.finished_at.unwrap_or(b.started_at))
            ),
            None => "no complete backup".into(),
        })
        .wrap("small"),
    );
    cell
}

fn lag_badge(lag_seconds: u64, pending: u64, failing: u64, limit: u64) -> Html {
    if failing > 0 {
        badge(Tone::Bad, "failing")
    } else if lag_seconds > limit {
        badge(Tone::Bad, "lagging")
    } else if pending > 0 {
        badge(Tone::Warn, "copying")
    } else {
        badge(Tone::Ok, "caught up")
    }
}

fn verdict_badge(v: Verdict) -> Html {
    let tone = match v {
        Verdict::NoRestorablePoint
        | Verdict::RpoBreached
        | Verdict::DrillFailed
        | Verdict::RtoBreached => Tone::Bad,
        Verdict::Untested => Tone::Warn,
        Verdict::Ok => Tone::Ok,
        Verdict::NoTargets => Tone::Neutral,
    };
    badge(tone, v.as_str())
}

fn error_text(text: &str) -> Html {
    Html::text(&redact(text))
}

fn time_cell(t: DateTime<Utc>) -> Html {
    Html(format!(
        "<time datetime=\"{}\">{}</time>",
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        Html::text(&time_text(t)).0
    ))
}

fn time_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn age_text(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ago",
        duration_text((now - t).num_seconds().max(0) as u64)
    )
}

/// The two largest units: "45s", "12m 3s", "3h 5m", "2d 4h".
pub fn duration_text(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

// ---- HTML ----------------------------------------------------------------------------------

/// A piece of HTML that is safe to put on the page: built from escaped text, or from markup
/// written here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Html(String);

impl Html {
    /// `text`, escaped.
    pub fn text(text: &str) -> Html {
        Html(escape(text))
    }

    /// Markup written in this module (never data).
    fn raw(markup: &'static str) -> Html {
        Html(markup.to_owned())
    }

    fn concat(parts: impl IntoIterator<Item = Html>) -> Html {
        Html(parts.into_iter().map(|h| h.0).collect())
    }

    fn join(parts: impl IntoIterator<Item = Html>, separator: &'static str) -> Html {
        Html(
            parts
                .into_iter()
                .map(|h| h.0)
                .collect::<Vec<_>>()
                .join(separator),
        )
    }

    fn push(&mut self, other: Html) {
        self.0.push_str(&other.0);
    }

    /// `<tag>self</tag>`.
    fn wrap(self, tag: &'static str) -> Html {
        Html(format!("<{tag}>{}</{tag}>", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Escapes `&`, `<`, `>`, `"` and `'`, for text and for quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Hides credentials an error text might carry: the user info and query string of URLs
/// (`scheme://user:pw@host/path?X-Amz-Signature=...`) and `password=...` parameters.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let url_end = tail
            .find(|c: char| matches!(c, '"' | '\'' | '<' | '>') || c.is_whitespace())
            .unwrap_or(tail.len());
        let url = &tail[..url_end];
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, path) = url.split_at(authority_end);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        match path.split_once('?') {
            Some((path, _query)) => {
                out.push_str(path);
                out.push_str("?***");
            }
            None => out.push_str(path),
        }
        rest = &tail[url_end..];
    }
    out.push_str(rest);
    redact_password_params(&out)
}

fn redact_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        let (head, tail) = rest.split_at(i + "password=".len());
        out.push_str(head);
        let end = tail
            .find(|c: char| matches!(c, '&' | ';' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    Ok,
    Warn,
    Bad,
    Neutral,
}

/// A coloured label; the label says it in words too (colour is never the only signal).
fn badge(tone: Tone, label: &str) -> Html {
    let (class, mark) = match tone {
        Tone::Ok => ("ok", "\u{2714}"),
        Tone::Warn => ("warn", "!"),
        Tone::Bad => ("bad", "\u{2716}"),
        Tone::Neutral => ("neutral", "\u{2022}"),
    };
    Html(format!(
        "<span class=\"badge {class}\"><span aria-hidden=\"true\">{mark}</span> {}</span>",
        escape(label)
    ))
}

fn dash() -> Html {
    Html::raw("<span class=\"none\">-</span>")
}

fn note(text: &str) -> Html {
    Html(format!("<p class=\"note\">{}</p>", escape(text)))
}

fn table(head: &[&str], rows: Vec<Vec<Html>>) -> Html {
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for h in head {
        let _ = write!(out, "<th scope=\"col\">{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", cell.0);
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    Html(out)
}

fn section(id: &'static str, title: &str, body: Html) -> Html {
    Html(format!(
        "<section id=\"{id}\"><h2>{}</h2>{}</section>",
        escape(title),
        body.0
    ))
}

const STYLE: &str = "\
:root{color-scheme:light;--fg:#1d2330;--muted:#5c6578;--line:#d8dce4;--bg:#f6f7f9}\
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}\
header{background:#1d2330;color:#fff;padding:14px 24px}\
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9cfdb;font-size:13px}\
header a{color:#9cc3ff}\
main{padding:8px 24px 32px}\
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:4px 16px 12px;margin:16px 0}\
h2{font-size:18px;margin:12px 0 8px}h3{font-size:15px;margin:14px 0 6px;color:var(--muted)}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:14px}\
th,td{text-align:left;vertical-align:top;padding:6px 10px;border-bottom:1px solid var(--line)}\
th{background:#eef0f4;font-weight:600;white-space:nowrap}\
td ul{margin:0;padding-left:18px}\
code{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
small,.none,.note{color:var(--muted)}\
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:13px;white-space:nowrap;border:1px solid}\
.badge.ok{background:#e3f5e6;color:#14642a;border-color:#9ad3a8}\
.badge.warn{background:#fff4d6;color:#7a5200;border-color:#f0c75e}\
.badge.bad{background:#fde4e4;color:#a01515;border-color:#ef9a9a}\
.badge.neutral{background:#eef0f4;color:#3f4757;border-color:#c4c9d4}\
";

fn document(now: DateTime<Utc>, body: Html) -> Html {
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>backupd status</title><style>{STYLE}</style></head>\
         <body><header><h1>backupd status</h1>\
         <p>As of {} UTC &middot; refreshes every {REFRESH_SECONDS}s &middot; \
         <a href=\"/metrics\">metrics</a> &middot; <a href=\"/readyz\">readiness</a></p></header>\
         <main>{}</main></body></html>\n",
        escape(&time_text(now)),
        body.0
    ))
}

/// The page shown instead when the status cannot be read.
fn unavailable_page(now: DateTime<Utc>, headline: &str, detail: &str) -> Html {
    let body = Html(format!(
        "<section id=\"unavailable\"><h2>{}</h2><p>{}</p><p>{}</p></section>",
        badge(Tone::Bad, headline).0,
        error_text(detail).wrap("code").0,
        escape("backupd keeps running; this page shows the status again once it can be read.")
    ));
    document(now, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_page_escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        );
        assert_eq!(
            escape("a \"b\" & <b>c</b>"),
            "a &quot;b&quot; &amp; &lt;b&gt;c&lt;/b&gt;"
        );
        assert_eq!(escape("plain-name_1.2"), "plain-name_1.2");
        assert_eq!(escape("ü ✔"), "ü ✔");
        // Cells built from text are escaped, even inside markup.
        let cell = Html::text("<img src=x onerror=alert(1)>").wrap("strong");
        assert_eq!(
            cell.as_str(),
            "<strong>&lt;img src=x onerror=alert(1)&gt;</strong>"
        );
        let b = badge(Tone::Bad, "\"><script>");
        assert!(!b.as_str().contains("<script>"), "{}", b.as_str());
    }

    #[test]
    fn status_page_redacts_credentials_in_error_texts() {
        assert_eq!(
            redact("connecting to postgres://backup:s3cret@db:5432/catalog failed"),
            "connecting to postgres://***@db:5432/catalog failed"
        );
        assert_eq!(
            redact("host=db user=u password=hunter2 dbname=x"),
            "host=db user=u password=*** dbname=x"
        );
        assert_eq!(
            redact("s3://bucket/key: access denied"),
            "s3://bucket/key: access denied"
        );
        assert_eq!(
            redact("GET https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&x=1 failed"),
            "GET https://b.s3.amazonaws.com/k?*** failed"
        );
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("trailing://"), "trailing://");
    }

    #[test]
    fn status_page_durations_show_two_units() {
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(45), "45s");
        assert_eq!(duration_text(120), "2m");
        assert_eq!(duration_text(723), "12m 3s");
        assert_eq!(duration_text(3600), "1h");
        assert_eq!(duration_text(3 * 3600 + 5 * 60 + 9), "3h 5m");
        assert_eq!(duration_text(2 * 86_400 + 4 * 3600 + 7), "2d 4h");
        assert_eq!(duration_text(86_400 + 60), "1d");
    }

    #[test]
    fn status_page_unavailable_page_escapes_and_redacts_the_error() {
        let page = unavailable_page(
            Utc::now(),
            "The catalog is unreachable",
            "postgres://u:pw@db/<x>: connection refused",
        );
        let html = page.as_str();
        assert!(html.contains("The catalog is unreachable"), "{html}");
        assert!(
            html.contains("postgres://***@db/&lt;x&gt;: connection refused"),
            "{html}"
        );
        assert!(!html.contains("pw@"), "{html}");
    }
}
