//! The cost model behind `backupctl report cost`: what a month of storing, writing, reading,
//! thawing and copying backups cost, per source x repository x region x storage class, from
//! facts the catalog recorded and a price table. Pure: the caller gathers the inputs.
//!
//! How each figure is derived (docs/operations.md#cost-report repeats this for operators):
//!
//! * **Stored GB-month**: every object (artifact copy, archived WAL file or WAL copy) counts
//!   `size / 2^30 x seconds it existed within the month / seconds in the month` (providers bill
//!   binary gigabytes by the hour over the calendar month). An object exists from when the
//!   catalog recorded it until its recorded deletion (or forever while it is still there).
//! * **PUT requests**: the caller says how many PUT-class requests wrote each object (one, or
//!   for a multipart upload its parts plus the create and complete calls); they are charged in
//!   the month the object was recorded.
//! * **GET / RESTORE requests and retrieval GB**: recorded reads (restore, WAL fetch) and
//!   archive restore requests, each with its bytes, in the month they happened. Retrieval GB is
//!   the bytes read plus the bytes thawed; GET bytes are priced at the class's
//!   `retrieval-per-gb`, thawed bytes at its `restore-per-gb` for the tier.
//! * **Inter-region transfer GB**: an object whose data came from a repository in another
//!   region (a `copy-to` copy), in the month it was recorded, priced at the *origin* region's
//!   rate (transfer is billed where the data leaves) but shown on the copy's row.
//! * **Early deletion**: an object deleted before its class's minimum storage duration is
//!   charged the storage of the remaining days, in the month of the deletion, as
//!   `size / 2^30 x remaining days / 30` GB-months (the 30-day month of the retention
//!   planner's estimate, so prune's warning and this report agree).
//! * **Forecast** (the next three months): the storage of each row carried forward at the
//!   report month's net growth (bytes recorded minus bytes deleted), floored at zero and, when
//!   the retention policy bounds the number of backups kept, capped at the row's bytes scaled
//!   to that number; requests, retrieval and transfer repeat the report month's run rate.
//!   Early-deletion charges are not forecast (they depend on manual prunes).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Bytes per GB in prices (providers bill binary gigabytes).
pub const BYTES_PER_GB: f64 = (1u64 << 30) as f64;
/// Early-deletion charges count remaining days against a 30-day month.
const EARLY_DELETION_MONTH_DAYS: f64 = 30.0;
/// Months the forecast covers.
pub const FORECAST_MONTHS: u32 = 3;

/// A price table: `config/prices-YYYY-MM.toml`, or the one named by `[cost] prices-file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Prices {
    /// The date the figures were read from their sources (YYYY-MM-DD).
    pub effective: String,
    pub currency: String,
    /// Where the figures come from.
    #[serde(default)]
    pub sources: Vec<String>,
    pub regions: BTreeMap<String, RegionPrices>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegionPrices {
    /// Data transfer out of this region to another region, per GB.
    pub inter_region_transfer_per_gb: f64,
    /// By storage class name as S3 spells it (`STANDARD`, `STANDARD_IA`, `DEEP_ARCHIVE`).
    pub classes: BTreeMap<String, ClassPrices>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClassPrices {
    pub storage_per_gb_month: f64,
    /// PUT, COPY, POST, LIST requests, per 1,000.
    pub put_per_1000: f64,
    /// GET, SELECT and other requests, per 1,000.
    pub get_per_1000: f64,
    /// Per GB read by GET (e.g. STANDARD_IA's retrieval fee).
    #[serde(default)]
    pub retrieval_per_gb: f64,
    /// Archive restore requests per 1,000, by retrieval tier (`bulk`, `standard`, `expedited`).
    #[serde(default)]
    pub restore_per_1000: BTreeMap<String, f64>,
    /// Per GB restored from the archive, by retrieval tier.
    #[serde(default)]
    pub restore_per_gb: BTreeMap<String, f64>,
    /// Deleting earlier is charged as if stored this long.
    #[serde(default)]
    pub minimum_storage_days: u32,
}

/// The shipped price table (see its header for where each figure comes from).
pub const DEFAULT_PRICES_TOML: &str = include_str!("../../../config/prices-2026-11.toml");

impl Prices {
    /// [`DEFAULT_PRICES_TOML`], parsed (a test checks it parses and validates).
    pub fn shipped() -> Prices {
        Prices::parse_toml(DEFAULT_PRICES_TOML, "config/prices-2026-11.toml")
            .expect("the shipped price table is valid")
    }

    /// Parses and validates a price table; `origin` names the file in errors.
    pub fn parse_toml(text: &str, origin: &str) -> Result<Prices, CostError> {
        let prices: Prices =
            toml::from_str(text).map_err(|e| CostError::InvalidPrices(format!("{origin}: {e}")))?;
        prices.validate().map_err(|e| match e {
            CostError::InvalidPrices(m) => CostError::InvalidPrices(format!("{origin}: {m}")),
            other => other,
        })?;
        Ok(prices)
    }

    /// Parsed and checked: no negative or non-finite figure, tiers named by their S3 names.
    pub fn validate(&self) -> Result<(), CostError> {
        NaiveDate::parse_from_str(&self.effective, "%Y-%m-%d").map_err(|_| {
            CostError::InvalidPrices(format!(
                "effective = {:?} is not a date like 2026-11-01",
                self.effective
            ))
        })?;
        for (region, r) in &self.regions {
            let check = |what: &str, value: f64| {
                if value.is_finite() && value >= 0.0 {
                    Ok(())
                } else {
                    Err(CostError::InvalidPrices(format!(
                        "regions.{region}.{what} = {value} is not a non-negative number"
                    )))
                }
            };
            check(
                "inter-region-transfer-per-gb",
                r.inter_region_transfer_per_gb,
            )?;
            for (class, c) in &r.classes {
                check(
                    &format!("{class}.storage-per-gb-month"),
                    c.storage_per_gb_month,
                )?;
                check(&format!("{class}.put-per-1000"), c.put_per_1000)?;
                check(&format!("{class}.get-per-1000"), c.get_per_1000)?;
                check(&format!("{class}.retrieval-per-gb"), c.retrieval_per_gb)?;
                for (tier, v) in c.restore_per_1000.iter().chain(&c.restore_per_gb) {
                    if !["bulk", "standard", "expedited"].contains(&tier.as_str()) {
                        return Err(CostError::InvalidPrices(format!(
                            "regions.{region}.classes.{class}: unknown retrieval tier {tier:?} \
                             (use bulk, standard or expedited)"
                        )));
                    }
                    check(&format!("{class}.restore.{tier}"), *v)?;
                }
            }
        }
        Ok(())
    }

    fn class(&self, region: &str, class: &str) -> Option<(&RegionPrices, &ClassPrices)> {
        let r = self.regions.get(region)?;
        Some((r, r.classes.get(class)?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    #[error("invalid price table: {0}")]
    InvalidPrices(String),
    #[error("invalid month {0:?}: use YYYY-MM, e.g. 2026-11")]
    InvalidMonth(String),
}

/// A calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .expect("the first of a month at midnight UTC exists")
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    pub fn seconds(self) -> f64 {
        (self.end() - self.start()).num_seconds() as f64
    }

    pub fn contains(self, t: DateTime<Utc>) -> bool {
        self.start() <= t && t < self.end()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = CostError;

    fn from_str(s: &str) -> Result<Month, CostError> {
        let bad = || CostError::InvalidMonth(s.to_owned());
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }
}

impl Serialize for Month {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One stored object as the catalog recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub source: String,
    pub repository: String,
    /// The repository the data was copied from (itself for an original write).
    pub origin_repository: String,
    pub storage_class: String,
    pub bytes: u64,
    /// PUT-class requests that wrote it.
    pub put_requests: u64,
    /// The backup it belongs to (`None` for WAL files), for the retention cap of the forecast.
    pub backup: Option<String>,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Objects read (GET).
    Get,
    /// Archive restore requests (RestoreObject) in a retrieval tier.
    Restore { tier: String },
}

/// Recorded reads or restore requests.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub source: String,
    pub repository: String,
    pub storage_class: String,
    pub kind: RequestKind,
    pub requests: u64,
    pub bytes: u64,
    pub at: DateTime<Utc>,
}

/// Everything the report is computed from.
#[derive(Debug, Clone, Default)]
pub struct CostInputs {
    pub objects: Vec<StoredObject>,
    pub requests: Vec<RequestRecord>,
    /// Repository name -> region.
    pub regions: BTreeMap<String, String>,
    /// (source, repository) -> the most backups its retention keeps (absent: unbounded).
    pub max_backups: BTreeMap<(String, String), u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CostRow {
    pub source: String,
    pub repository: String,
    pub region: String,
    pub storage_class: String,
    pub stored_gb_month: f64,
    pub put_requests: u64,
    pub get_requests: u64,
    pub restore_requests: u64,
    pub retrieval_gb: f64,
    pub inter_region_transfer_gb: f64,
    pub early_deletion_gb_month: f64,
    pub storage_cost: f64,
    pub request_cost: f64,
    pub retrieval_cost: f64,
    pub transfer_cost: f64,
    pub early_deletion_cost: f64,
    pub total_cost: f64,
    /// False when the price table has no price for this region and class: its storage,
    /// request, retrieval and early-deletion costs are 0 (transfer into it is priced by the
    /// origin region).
    pub priced: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForecastMonth {
    pub month: Month,
    pub stored_gb_month: f64,
    pub storage_cost: f64,
    /// Requests, retrieval and transfer at the report month's run rate.
    pub other_cost: f64,
    pub total_cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    pub month: Month,
    pub currency: String,
    pub prices_effective: String,
    pub rows: Vec<CostRow>,
    pub total_cost: f64,
    pub forecast: Vec<ForecastMonth>,
    /// What could not be priced, and why.
    pub notes: Vec<String>,
}

type RowKey = (String, String, String, String);

/// Per-row state beyond the report figures, for the forecast.
#[derive(Default)]
struct RowExtra {
    bytes_at_end: u64,
    bytes_added: u64,
    bytes_deleted: u64,
    backups_at_end: std::collections::BTreeSet<String>,
}

fn overlap_seconds(from: DateTime<Utc>, to: Option<DateTime<Utc>>, month: Month) -> f64 {
    let start = from.max(month.start());
    let end = to.unwrap_or(month.end()).min(month.end());
    if end <= start {
        0.0
    } else {
        (end - start).num_milliseconds() as f64 / 1000.0
    }
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / BYTES_PER_GB
}

/// The report for `month`.
pub fn cost_report(inputs: &CostInputs, prices: &Prices, month: Month) -> CostReport {
    let mut rows: BTreeMap<RowKey, CostRow> = BTreeMap::new();
    let mut extra: BTreeMap<RowKey, RowExtra> = BTreeMap::new();
    let mut notes = std::collections::BTreeSet::new();
    let region_of = |repo: &str| {
        inputs
            .regions
            .get(repo)
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let row = |rows: &mut BTreeMap<RowKey, CostRow>, source: &str, repo: &str, class: &str| {
        let region = region_of(repo);
        let key = (
            source.to_owned(),
            repo.to_owned(),
            region.clone(),
            class.to_owned(),
        );
        rows.entry(key.clone()).or_insert_with(|| CostRow {
            source: source.to_owned(),
            repository: repo.to_owned(),
            region,
            storage_class: class.to_owned(),
            priced: true,
            ..CostRow::default()
        });
        key
    };
    let month_secs = month.seconds();
    for o in &inputs.objects {
        if o.created_at >= month.end() || o.deleted_at.is_some_and(|d| d < month.start()) {
            continue;
        }
        let key = row(&mut rows, &o.source, &o.repository, &o.storage_class);
        let r = rows.get_mut(&key).expect("just inserted");
        let x = extra.entry(key.clone()).or_default();
        let size = gb(o.bytes);
        r.stored_gb_month += size * overlap_seconds(o.created_at, o.deleted_at, month) / month_secs;
        if month.contains(o.created_at) {
            r.put_requests += o.put_requests;
            x.bytes_added += o.bytes;
            let origin_region = region_of(&o.origin_repository);
            if o.origin_repository != o.repository && origin_region != r.region {
                r.inter_region_transfer_gb += size;
                match prices.regions.get(&origin_region) {
                    Some(p) => r.transfer_cost += size * p.inter_region_transfer_per_gb,
                    None => {
                        notes.insert(format!(
                            "no transfer price for region {origin_region} (repository {})",
                            o.origin_repository
                        ));
                    }
                }
            }
        }
        match o.deleted_at {
            Some(deleted) if month.contains(deleted) => {
                x.bytes_deleted += o.bytes;
                if let Some((_, c)) = prices.class(&r.region, &o.storage_class) {
                    let minimum = f64::from(c.minimum_storage_days) * 86_400.0;
                    let stored = (deleted - o.created_at).num_milliseconds() as f64 / 1000.0;
                    if stored < minimum {
                        r.early_deletion_gb_month +=
                            size * (minimum - stored) / 86_400.0 / EARLY_DELETION_MONTH_DAYS;
                    }
                }
            }
            Some(_) => {}
            None => {
                x.bytes_at_end += o.bytes;
                if let Some(b) = &o.backup {
                    x.backups_at_end.insert(b.clone());
                }
            }
        }
    }
    for q in inputs.requests.iter().filter(|q| month.contains(q.at)) {
        let key = row(&mut rows, &q.source, &q.repository, &q.storage_class);
        let r = rows.get_mut(&key).expect("just inserted");
        r.retrieval_gb += gb(q.bytes);
        let prices = prices.class(&r.region, &q.storage_class).map(|(_, c)| c);
        match &q.kind {
            RequestKind::Get => {
                r.get_requests += q.requests;
                if let Some(c) = prices {
                    r.request_cost += q.requests as f64 / 1000.0 * c.get_per_1000;
                    r.retrieval_cost += gb(q.bytes) * c.retrieval_per_gb;
                }
            }
            RequestKind::Restore { tier } => {
                r.restore_requests += q.requests;
                if let Some(c) = prices {
                    match (c.restore_per_1000.get(tier), c.restore_per_gb.get(tier)) {
                        (Some(per_1000), Some(per_gb)) => {
                            r.request_cost += q.requests as f64 / 1000.0 * per_1000;
                            r.retrieval_cost += gb(q.bytes) * per_gb;
                        }
                        _ => {
                            notes.insert(format!(
                                "no {tier} restore price for {} in {}",
                                q.storage_class, r.region
                            ));
                        }
                    }
                }
            }
        }
    }
    let mut forecast_rows: Vec<(f64, f64, f64)> = Vec::new(); // (gb now, gb growth, gb cap)
    let mut other_run_rate = 0.0;
    let mut forecast_prices = Vec::new();
    for (key, r) in rows.iter_mut() {
        match prices.class(&r.region, &r.storage_class) {
            Some((_, c)) => {
                r.storage_cost = r.stored_gb_month * c.storage_per_gb_month;
                r.request_cost += r.put_requests as f64 / 1000.0 * c.put_per_1000;
                r.early_deletion_cost = r.early_deletion_gb_month * c.storage_per_gb_month;
                forecast_prices.push(c.storage_per_gb_month);
            }
            None => {
                r.priced = false;
                notes.insert(format!(
                    "no price for {} in region {} (repository {}): its storage, request and \
                     retrieval costs count as 0; add it to the price table",
                    r.storage_class, r.region, r.repository
                ));
                forecast_prices.push(0.0);
            }
        }
        r.total_cost = r.storage_cost
            + r.request_cost
            + r.retrieval_cost
            + r.transfer_cost
            + r.early_deletion_cost;
        other_run_rate += r.request_cost + r.retrieval_cost + r.transfer_cost;
        let x = extra.remove(key).unwrap_or_default();
        let now = gb(x.bytes_at_end);
        let growth = gb(x.bytes_added) - gb(x.bytes_deleted);
        let cap = match (
            inputs
                .max_backups
                .get(&(r.source.clone(), r.repository.clone())),
            x.backups_at_end.len() as u64,
        ) {
            (Some(&max), kept) if kept > 0 => now * max as f64 / kept as f64,
            _ => f64::INFINITY,
        };
        forecast_rows.push((now, growth, cap));
    }
    let mut forecast = Vec::new();
    let mut m = month;
    for k in 1..=FORECAST_MONTHS {
        m = m.next();
        let (mut stored, mut storage_cost) = (0.0, 0.0);
        for ((now, growth, cap), price) in forecast_rows.iter().zip(&forecast_prices) {
            // Mid-month of month k: the carried-forward growth of k - 1/2 months.
            let at = (now + growth * (f64::from(k) - 0.5)).min(*cap).max(0.0);
            stored += at;
            storage_cost += at * price;
        }
        forecast.push(ForecastMonth {
            month: m,
            stored_gb_month: stored,
            storage_cost,
            other_cost: other_run_rate,
            total_cost: storage_cost + other_run_rate,
        });
    }
    let rows: Vec<CostRow> = rows.into_values().collect();
    CostReport {
        month,
        currency: prices.currency.clone(),
        prices_effective: prices.effective.clone(),
        total_cost: rows.iter().map(|r| r.total_cost).sum(),
        rows,
        forecast,
        notes: notes.into_iter().collect(),
    }
}

/// PUT-class requests that write an object of `bytes` with `part_size`-byte multipart parts:
/// one PUT up to the part size, else CreateMultipartUpload, one UploadPart per part and
/// CompleteMultipartUpload.
pub fn put_requests(bytes: u64, part_size: Option<u64>) -> u64 {
    match part_size {
        Some(part) if part > 0 && bytes > part => bytes.div_ceil(part) + 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests;
