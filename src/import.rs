//! `synchub import`: one-off migration of legacy customers, vehicles and dealers from CSV into
//! the CRM store, through the same validation, routes and CRM rules as live traffic, with the
//! migration's cleansing rules and a validation report that decides go-live.
//!
//! Every row gets exactly one verdict, so the report reconciles: source rows = imported +
//! merged + rejected + flagged.
//! - **fixed** (counted per rule, not a verdict): what cleansing repaired on the way in —
//!   full-width characters, stray spaces, mobile spellings, date formats, lower-case VINs;
//! - **rejected**: fails the live schema, or misses a field the migration requires;
//! - **flagged**: ambiguous, held back for a person to decide — the same mobile with a different
//!   name, the same ID number with a different mobile (within the file or against the store);
//! - **merged**: the same person (vehicle, dealer) as an earlier row or a stored record: applied
//!   onto it by the CRM's matching, never a duplicate;
//! - **imported**: a new record.
//!
//! Rows are written in batches, one transaction each: the batch's transport unit (its rows' raw
//! text, found by the file's sha256, naming the last line it covers), its rejected and flagged
//! rows as rejected records with their reasons, and its imported and merged rows applied
//! straight to the CRM store by the CRM's own matching and history (no delivery per row: a
//! migration of millions of rows would otherwise write the journal twice over). An interrupted
//! import run again with the same file resumes after the last committed batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use synchub_adapter_sdk::{ContentType, Envelope, FieldError, Principal};
use synchub_adapter_sftp::Charset;
use synchub_adapter_sftp::csv::RowReader;
use synchub_transform::cleanse;
use synchub_transform::validate::{RecordSchema, validate};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::sync::watch;

use crate::app::Assembled;
use crate::direct;
use crate::pipeline::Pipeline;
use crate::store::journal::PreparedRecord;
use crate::store::{Store, StoreError};

/// The principal system of imported records (history, idempotency scope, search).
pub const SYSTEM: &str = "import";

/// `type = "import"` endpoint settings: the migration's cleansing rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportEndpoint {
    /// Rows per write transaction.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Charset of the files unless `--charset` says otherwise.
    #[serde(default)]
    pub charset: Charset,
    #[serde(default)]
    pub customers: CustomerRules,
    #[serde(default)]
    pub vehicles: EntityRules,
    #[serde(default)]
    pub dealers: EntityRules,
    /// Journal the CRM's change events of imported records (customer.created to the serving
    /// dealer's DMS, ...), as live changes are. Off by default: a migration loads what the
    /// dealers' systems already hold, and a million customer.created messages on go-live day
    /// would be noise, not news.
    #[serde(default)]
    pub notify_dealers: bool,
}

fn default_batch() -> usize {
    2000
}

fn default_true() -> bool {
    true
}

impl Default for ImportEndpoint {
    fn default() -> ImportEndpoint {
        ImportEndpoint {
            batch: default_batch(),
            charset: Charset::default(),
            customers: CustomerRules::default(),
            vehicles: EntityRules::default(),
            dealers: EntityRules::default(),
            notify_dealers: false,
        }
    }
}

/// Rules for every entity: fields required beyond the live schema (legacy data is often
/// thinner than live traffic; the migration decides what it insists on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityRules {
    #[serde(default)]
    pub require: Vec<String>,
}

/// Customer matching and ambiguity rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerRules {
    #[serde(default)]
    pub require: Vec<String>,
    /// Same mobile, different name: held back for review instead of merged.
    #[serde(default = "default_true")]
    pub flag_same_mobile_different_name: bool,
    /// Same ID number, different mobile: held back for review instead of merged.
    #[serde(default = "default_true")]
    pub flag_same_id_no_different_mobile: bool,
}

impl Default for CustomerRules {
    fn default() -> CustomerRules {
        CustomerRules {
            require: Vec::new(),
            flag_same_mobile_different_name: true,
            flag_same_id_no_different_mobile: true,
        }
    }
}

impl ImportEndpoint {
    /// Problems for `synchub check`: (field, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.batch == 0 || self.batch > MAX_BATCH {
            out.push(("batch".into(), format!("must be between 1 and {MAX_BATCH}")));
        }
        for entity in ImportEntity::ALL {
            for field in self.rules(entity) {
                if !entity.columns().contains(&field.as_str()) {
                    out.push((
                        format!("{}.require", entity.name()),
                        format!(
                            "`{field}` is not a {} column; columns: {}",
                            entity.name(),
                            entity.columns().join(", ")
                        ),
                    ));
                }
            }
        }
        out
    }

    fn rules(&self, entity: ImportEntity) -> &[String] {
        match entity {
            ImportEntity::Customers => &self.customers.require,
            ImportEntity::Vehicles => &self.vehicles.require,
            ImportEntity::Dealers => &self.dealers.require,
        }
    }
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportEntity {
    Customers,
    Vehicles,
    Dealers,
}

impl ImportEntity {
    const ALL: [ImportEntity; 3] = [
        ImportEntity::Customers,
        ImportEntity::Vehicles,
        ImportEntity::Dealers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ImportEntity::Customers => "customers",
            ImportEntity::Vehicles => "vehicles",
            ImportEntity::Dealers => "dealers",
        }
    }

    /// The record type routes match on, and whose live schema validates the row.
    fn schema(self) -> RecordSchema {
        match self {
            ImportEntity::Customers => RecordSchema::DmsCustomer,
            ImportEntity::Vehicles => RecordSchema::Vehicle,
            ImportEntity::Dealers => RecordSchema::Dealer,
        }
    }

    /// The CRM entity rows land in (before/after totals).
    fn crm_entity(self) -> &'static str {
        match self {
            ImportEntity::Customers => "customer",
            ImportEntity::Vehicles => "vehicle",
            ImportEntity::Dealers => "dealer",
        }
    }

    /// Columns a file may have (vehicles: IF-02b's flattened owner columns).
    fn columns(self) -> &'static [&'static str] {
        match self {
            ImportEntity::Customers => &[
                "source_ref",
                "dealer_code",
                "name",
                "mobile",
                "id_no",
                "gender",
                "birth_date",
                "province",
                "city",
                "address",
                "email",
                "updated_at",
            ],
            ImportEntity::Vehicles => &[
                "source_ref",
                "vin",
                "brand",
                "model",
                "model_year",
                "color",
                "plate_no",
                "engine_no",
                "dealer_code",
                "sales_date",
                "owner_name",
                "owner_mobile",
                "owner_id_no",
            ],
            ImportEntity::Dealers => &[
                "dealer_code",
                "dealer_name",
                "region",
                "province",
                "city",
                "address",
                "phone",
                "status",
            ],
        }
    }
}

/// `synchub import` arguments.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The `type = "import"` endpoint whose rules apply.
    pub endpoint: String,
    pub entity: ImportEntity,
    pub file: PathBuf,
    pub charset: Option<Charset>,
    /// Analyse and report; write nothing to the store.
    pub dry_run: bool,
    pub report_dir: PathBuf,
    /// Longest wait for the CRM store to apply what was journaled.
    pub apply_timeout: Duration,
}

/// A row's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Imported,
    /// Merged onto an earlier row of the file (its line) or a stored record (its id).
    Merged(String),
    Rejected(Vec<FieldError>),
    Flagged(String),
}

/// One row of the rejected or flagged list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub line: u64,
    pub rule: String,
    pub reason: String,
    pub row: String,
}

/// Everything the report shows.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub entity: String,
    pub file: String,
    pub sha256: String,
    pub dry_run: bool,
    pub source_rows: u64,
    pub imported: u64,
    pub merged: u64,
    pub rejected: u64,
    pub flagged: u64,
    /// Rows applied by an earlier, interrupted run of the same file (no second effect).
    pub resumed: u64,
    /// Counts per rule (`fix.*`, `reject.*`, `flag.*`, `merge.*`).
    pub rules: BTreeMap<String, u64>,
    pub rejected_rows: Vec<Listed>,
    pub flagged_rows: Vec<Listed>,
    pub before: i64,
    pub after: i64,
    /// What the CRM store did with the rows sent to it: delivered (applied, directly or by the
    /// dispatcher), and for rows it could not apply at once and that went the journal's way:
    /// rejected, parked, waiting (still retrying, e.g. a vehicle whose dealer is not known yet).
    pub applied: BTreeMap<String, i64>,
    pub seconds: f64,
}

impl Report {
    /// source rows = imported + merged + rejected + flagged.
    pub fn reconciles(&self) -> bool {
        self.source_rows == self.imported + self.merged + self.rejected + self.flagged
    }

    /// Go-live: the file reconciles and the CRM store took every row that was sent.
    pub fn go_live(&self) -> bool {
        self.reconciles()
            && self.applied.get("rejected").copied().unwrap_or(0) == 0
            && self.applied.get("parked").copied().unwrap_or(0) == 0
            && self.applied.get("waiting").copied().unwrap_or(0) == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Pure row analysis

/// The row as a JSON record: empty cells are absent, vehicle owner columns fold into `owner`.
pub fn row_record(
    entity: ImportEntity,
    header: &[String],
    fields: &[String],
) -> Map<String, Value> {
    let mut rec = Map::new();
    let mut owner = Map::new();
    for (name, value) in header.iter().zip(fields) {
        if value.trim().is_empty() {
            continue;
        }
        match name.strip_prefix("owner_") {
            Some(k) if entity == ImportEntity::Vehicles => {
                owner.insert(k.to_owned(), Value::String(value.clone()));
            }
            _ => {
                rec.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    if !owner.is_empty() {
        rec.insert("owner".into(), Value::Object(owner));
    }
    rec
}

/// Which cleansing fixes a raw value needs, by the kind of field it is.
fn fixes_of(field: &str, raw: &str, out: &mut Vec<&'static str>) {
    if raw.trim() != raw {
        out.push("fix.trim");
    }
    let half = cleanse::half_width(raw);
    if half != raw {
        out.push("fix.full_width");
    }
    let t = half.trim();
    match field {
        "mobile" | "owner.mobile" if cleanse::normalize_mobile(t).is_ok_and(|m| m != t) => {
            out.push("fix.mobile")
        }
        "birth_date" | "sales_date"
            if cleanse::parse_date(t).is_ok_and(|d| d.format("%Y-%m-%d").to_string() != t) =>
        {
            out.push("fix.date_format")
        }
        "vin" if t.to_uppercase() != t => out.push("fix.vin_upper"),
        "id_no" | "owner.id_no" if t.contains('x') => out.push("fix.id_no_upper"),
        _ => {}
    }
}

/// Every fix rule the record fires (a rule counts once per row).
pub fn fixes(rec: &Map<String, Value>) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (k, v) in rec {
        match v {
            Value::String(s) => fixes_of(k, s, &mut out),
            Value::Object(inner) => {
                for (ik, iv) in inner {
                    if let Value::String(s) = iv {
                        fixes_of(&format!("{k}.{ik}"), s, &mut out);
                    }
                }
            }
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Validates a row as live traffic would, then the migration's required fields.
pub fn check(
    entity: ImportEntity,
    rules: &ImportEndpoint,
    rec: &Map<String, Value>,
) -> Result<Map<String, Value>, Vec<FieldError>> {
    let canonical = validate(entity.schema(), &Value::Object(rec.clone()))?;
    let missing: Vec<FieldError> = rules
        .rules(entity)
        .iter()
        .filter(|f| {
            let (obj, key) = match f.strip_prefix("owner_") {
                Some(k) if entity == ImportEntity::Vehicles => {
                    (canonical.get("owner").and_then(Value::as_object), k)
                }
                _ => (Some(&canonical), f.as_str()),
            };
            obj.and_then(|o| o.get(key)).is_none()
        })
        .map(|f| FieldError::new(f.as_str(), "required for the migration"))
        .collect();
    if missing.is_empty() {
        Ok(canonical)
    } else {
        Err(missing)
    }
}

/// A person already seen: in the file (line) or the store (customer id).
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    mobile: Option<String>,
    at: String,
}

/// The in-file memory of what was taken, for merging and ambiguity. Only rows that were
/// imported or merged are remembered: a rejected row is not evidence of anything.
#[derive(Default)]
struct Matcher {
    by_mobile: HashMap<String, Seen>,
    by_id_no: HashMap<String, Seen>,
    natural: HashMap<String, u64>,
}

fn s(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned)
}

impl Matcher {
    /// The verdict of a valid customer row, given what the store knows (`stored`, for mobile and
    /// ID number) unless the row is a resumed one (its own earlier import is in the store).
    fn customer(
        &mut self,
        rules: &CustomerRules,
        line: u64,
        c: &Map<String, Value>,
        stored: &dyn Fn(&str, &str) -> Option<Seen>,
    ) -> (Verdict, &'static str) {
        let name = s(c, "name").unwrap_or_default();
        let mobile = s(c, "mobile");
        let id_no = s(c, "id_no");
        let by_mobile = mobile.as_deref().and_then(|m| {
            self.by_mobile
                .get(m)
                .cloned()
                .or_else(|| stored("mobile", m))
        });
        let by_id = id_no
            .as_deref()
            .and_then(|n| self.by_id_no.get(n).cloned().or_else(|| stored("id_no", n)));
        if let (Some(prev), Some(m)) = (&by_mobile, &mobile)
            && prev.name != name
            && rules.flag_same_mobile_different_name
        {
            return (
                Verdict::Flagged(format!(
                    "mobile {m} belongs to '{}' ({}), this row says '{name}'",
                    prev.name, prev.at
                )),
                "flag.same_mobile_different_name",
            );
        }
        if let (Some(prev), Some(n)) = (&by_id, &id_no)
            && prev.mobile.is_some()
            && prev.mobile != mobile
            && rules.flag_same_id_no_different_mobile
        {
            return (
                Verdict::Flagged(format!(
                    "ID number {n} has mobile {} ({}), this row says {}",
                    prev.mobile.as_deref().unwrap_or("-"),
                    prev.at,
                    mobile.as_deref().unwrap_or("-")
                )),
                "flag.same_id_no_different_mobile",
            );
        }
        let seen = Seen {
            name: name.clone(),
            mobile: mobile.clone(),
            at: format!("line {line}"),
        };
        let verdict = match (by_mobile, by_id) {
            (Some(prev), _) => (Verdict::Merged(prev.at), "merge.same_mobile_same_name"),
            (None, Some(prev)) => (Verdict::Merged(prev.at), "merge.same_id_no"),
            (None, None) => (Verdict::Imported, ""),
        };
        if let Some(m) = mobile {
            self.by_mobile.entry(m).or_insert_with(|| seen.clone());
        }
        if let Some(n) = id_no {
            self.by_id_no.entry(n).or_insert(seen);
        }
        verdict
    }

    /// Vehicles by VIN, dealers by code: a later row updates the earlier one.
    fn natural(&mut self, line: u64, key: &str, stored: bool) -> (Verdict, &'static str) {
        if let Some(prev) = self.natural.get(key) {
            return (
                Verdict::Merged(format!("line {prev}")),
                "merge.same_key_in_file",
            );
        }
        self.natural.insert(key.to_owned(), line);
        if stored {
            (Verdict::Merged(key.to_owned()), "merge.same_key_in_store")
        } else {
            (Verdict::Imported, "")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// A row waiting for its batch's store lookups.
struct Pending {
    line: u64,
    text: String,
    canonical: Map<String, Value>,
    source_ref: String,
    /// Its verdict was `Merged` (else `Imported`): a row the CRM store refuses is then taken
    /// back from the right count.
    merged: bool,
    /// Applied by an earlier run of the file (its line is at or before the resume point).
    resumed: bool,
}

/// A row not taken (rejected or flagged), journaled as a rejected record so the dashboard shows
/// it with its reason.
struct Bad {
    line: u64,
    text: String,
    source_ref: String,
    /// The row as read when it fails the live schema: the pipeline then rejects it with the
    /// same reasons and indexes its keys (mobile, VIN). `Err` for rows the live schema takes
    /// but the migration does not (incomplete for the migration, flagged for review).
    body: Result<Value, Vec<FieldError>>,
}

/// Progress on a terminal (bar with rows/s and ETA) or as plain lines (logs, CI).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}",
                )
                .expect("the progress template is valid"),
            );
            bar
        });
        Progress {
            bar,
            total,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn set(&mut self, done: u64, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(msg.to_owned());
            }
            None if self.last_line.elapsed() >= Duration::from_secs(2) || done == self.total => {
                self.last_line = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(0.001);
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 {
                    (self.total.saturating_sub(done)) as f64 / rate
                } else {
                    0.0
                };
                eprintln!(
                    "import: {done}/{} rows ({:.0}%), {rate:.0} rows/s, ETA {eta:.0}s {msg}",
                    self.total,
                    100.0 * done as f64 / self.total.max(1) as f64
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// Hash and line count of the file (the hash names its rows; the count sizes the progress).
async fn scan(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut lines = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok((hex::encode(h.finalize()), lines))
}

/// Runs an import. Without `--dry-run` the dispatcher runs alongside, so the CRM store has
/// applied every journaled row (or is retrying it) when this returns.
pub async fn run(
    a: &Assembled,
    rules: &ImportEndpoint,
    opts: &ImportOptions,
) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    let (sha256, lines) = scan(&opts.file).await?;
    let file_name = opts
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let store = a.store.clone();
    let before = crate::crm::reads::count(store.pool(), opts.entity.crm_entity()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = (!opts.dry_run).then(|| tokio::spawn(a.dispatcher.clone().run(stop_rx)));

    let mut report = Report {
        entity: opts.entity.name().into(),
        file: file_name.clone(),
        sha256: sha256.clone(),
        dry_run: opts.dry_run,
        before,
        ..Default::default()
    };
    let file = tokio::fs::File::open(&opts.file).await?;
    let mut reader = RowReader::new(
        BufReader::with_capacity(1 << 16, file),
        opts.charset.unwrap_or(rules.charset),
        ',',
        Duration::from_secs(60),
        format!("read {file_name}"),
    );
    let header: Vec<String> = match reader.next_row().await? {
        Some(row) => row
            .fields
            .map_err(|e| anyhow!("{file_name}: the header line cannot be read: {e}"))?
            .into_iter()
            .map(|h| h.trim().to_lowercase())
            .collect(),
        None => return Err(anyhow!("{file_name} is empty: a header line is expected")),
    };
    let allowed = opts.entity.columns();
    let unknown: Vec<&String> = header
        .iter()
        .filter(|h| !allowed.contains(&h.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(anyhow!(
            "{file_name}: unknown column(s) {unknown:?} for {}; expected some of: {}",
            opts.entity.name(),
            allowed.join(", ")
        ));
    }
    let ref_prefix = format!("legacy:{}", &sha256[..12]);
    let mut matcher = Matcher::default();
    let mut progress = Progress::new(lines.saturating_sub(1));
    let mut pending: Vec<Pending> = Vec::new();
    let mut bad: Vec<Bad> = Vec::new();
    let batch = rules.batch.clamp(1, MAX_BATCH);
    let writer = BatchWriter {
        pipeline: a.pipeline.clone(),
        endpoint: opts.endpoint.clone(),
        target: crm_target(a, &opts.endpoint, opts.entity)?,
        record_type: opts.entity.schema().name(),
        file: file_name.clone(),
        sha256: sha256.clone(),
        header: header.join(","),
        notify: rules.notify_dealers,
    };
    // Lines up to here were applied by an earlier run of this file (its batches' units say so).
    let (committed, _) = file_units(&store, &sha256).await?;
    // One batch at the writer while the next is read and judged: the two cores both work.
    let mut in_flight: Option<Written> = None;
    loop {
        let row = reader.next_row().await?;
        let done = row.is_none();
        if let Some(row) = row {
            report.source_rows += 1;
            let line_ref = format!("{ref_prefix}:{}", row.line);
            let fields = match row.fields {
                Ok(f) => f,
                Err(e) => {
                    let errors = vec![FieldError::new("", e)];
                    bad.push(Bad {
                        line: row.line,
                        text: row.text.clone(),
                        source_ref: line_ref,
                        body: Err(errors.clone()),
                    });
                    reject(&mut report, row.line, &row.text, errors);
                    continue;
                }
            };
            if fields.len() != header.len() {
                let e = format!("{} fields, the header has {}", fields.len(), header.len());
                let errors = vec![FieldError::new("", e)];
                bad.push(Bad {
                    line: row.line,
                    text: row.text.clone(),
                    source_ref: line_ref,
                    body: Err(errors.clone()),
                });
                reject(&mut report, row.line, &row.text, errors);
                continue;
            }
            let mut rec = row_record(opts.entity, &header, &fields);
            let source_ref = s(&rec, "source_ref").unwrap_or(line_ref);
            rec.insert("source_ref".into(), Value::String(source_ref.clone()));
            for f in fixes(&rec) {
                *report.rules.entry(f.into()).or_default() += 1;
            }
            match check(opts.entity, rules, &rec) {
                Ok(canonical) => pending.push(Pending {
                    line: row.line,
                    text: row.text,
                    canonical,
                    source_ref,
                    merged: false,
                    resumed: row.line <= committed,
                }),
                Err(errors) => {
                    let live = validate(opts.entity.schema(), &Value::Object(rec.clone())).is_err();
                    bad.push(Bad {
                        line: row.line,
                        text: row.text.clone(),
                        source_ref,
                        body: if live {
                            Ok(Value::Object(rec))
                        } else {
                            Err(errors.clone())
                        },
                    });
                    reject(&mut report, row.line, &row.text, errors);
                }
            }
        }
        if pending.len() + bad.len() >= batch || (done && !(pending.is_empty() && bad.is_empty())) {
            let rows = std::mem::take(&mut pending);
            let take = decide(
                &store,
                opts.entity,
                rules,
                &mut matcher,
                &mut report,
                &mut bad,
                rows,
            )
            .await?;
            let not_taken = std::mem::take(&mut bad);
            if !opts.dry_run {
                // What an earlier run applied is not written again.
                let take: Vec<Pending> = take.into_iter().filter(|r| !r.resumed).collect();
                let not_taken: Vec<Bad> = not_taken
                    .into_iter()
                    .filter(|b| b.line > committed)
                    .collect();
                if !(take.is_empty() && not_taken.is_empty()) {
                    let next = writer.enqueue(&store, take, not_taken).await?;
                    if let Some(prev) = in_flight.replace(next) {
                        prev.finish(&mut report).await?;
                    }
                }
            }
            progress.set(report.source_rows, "");
        }
        if done {
            break;
        }
    }
    if let Some(last) = in_flight.take() {
        last.finish(&mut report).await?;
    }
    if let Some(d) = dispatcher {
        let routes: Vec<String> = a
            .pipeline
            .routes()
            .routes()
            .iter()
            .filter(|r| r.from == opts.endpoint)
            .map(|r| r.id.clone())
            .collect();
        let mut waited = Instant::now();
        let deadline = Instant::now() + opts.apply_timeout;
        // The checks read the store beside the dispatcher's writes: cheap ones, not too often.
        while unapplied(&store, &routes).await? && Instant::now() < deadline {
            if waited.elapsed() >= Duration::from_secs(5) {
                waited = Instant::now();
                let left = waiting(&store, &routes).await?;
                progress.set(
                    report.source_rows,
                    &format!("CRM store applying: {left} left"),
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = stop_tx.send(true);
        let _ = d.await;
        report.applied = outcomes(&store, &sha256).await?;
        let (_, direct) = file_units(&store, &sha256).await?;
        *report.applied.entry("delivered".into()).or_default() += direct as i64;
    }
    progress.finish();
    report.after = crate::crm::reads::count(store.pool(), opts.entity.crm_entity()).await?;
    report.seconds = t0.elapsed().as_secs_f64();
    write_report(&report, &opts.report_dir)?;
    Ok(report)
}

fn reject(report: &mut Report, line: u64, text: &str, errors: Vec<FieldError>) {
    report.rejected += 1;
    let rule = if errors
        .iter()
        .all(|e| e.reason == "required" || e.reason == "required for the migration")
    {
        "reject.incomplete".to_owned()
    } else {
        format!(
            "reject.invalid.{}",
            errors
                .first()
                .map(|e| e.field.as_str())
                .filter(|f| !f.is_empty())
                .unwrap_or("row")
        )
    };
    *report.rules.entry(rule.clone()).or_default() += 1;
    report.rejected_rows.push(Listed {
        line,
        rule,
        reason: errors
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.reason.clone()
                } else {
                    format!("{}: {}", e.field, e.reason)
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        row: text.to_owned(),
    });
}

/// Decides the verdict of a batch of valid rows (store lookups in bulk) and returns the rows to
/// apply (imported and merged). Rows applied by an earlier run of the file are judged without
/// the store (which holds their own earlier import).
async fn decide(
    store: &Store,
    entity: ImportEntity,
    rules: &ImportEndpoint,
    matcher: &mut Matcher,
    report: &mut Report,
    bad: &mut Vec<Bad>,
    rows: Vec<Pending>,
) -> anyhow::Result<Vec<Pending>> {
    let mut take = Vec::new();
    match entity {
        ImportEntity::Customers => {
            let mobiles: Vec<String> = rows
                .iter()
                .filter_map(|r| s(&r.canonical, "mobile"))
                .collect();
            let id_nos: Vec<String> = rows
                .iter()
                .filter_map(|r| s(&r.canonical, "id_no"))
                .collect();
            let by_mobile = stored_customers(store, "mobile", &mobiles).await?;
            let by_id_no = stored_customers(store, "id_no", &id_nos).await?;
            for r in rows {
                let own = r.resumed;
                let lookup = |col: &str, v: &str| -> Option<Seen> {
                    if own {
                        return None;
                    }
                    if col == "mobile" {
                        by_mobile.get(v)
                    } else {
                        by_id_no.get(v)
                    }
                    .cloned()
                };
                let (verdict, rule) =
                    matcher.customer(&rules.customers, r.line, &r.canonical, &lookup);
                tally(report, bad, r, verdict, rule, &mut take);
            }
        }
        ImportEntity::Vehicles | ImportEntity::Dealers => {
            let key_field = if entity == ImportEntity::Vehicles {
                "vin"
            } else {
                "dealer_code"
            };
            let keys: Vec<String> = rows
                .iter()
                .filter_map(|r| s(&r.canonical, key_field))
                .collect();
            let stored = stored_ids(store, entity.crm_entity(), &keys).await?;
            for r in rows {
                let own = r.resumed;
                let key = s(&r.canonical, key_field).unwrap_or_default();
                let (verdict, rule) = matcher.natural(r.line, &key, !own && stored.contains(&key));
                tally(report, bad, r, verdict, rule, &mut take);
            }
        }
    }
    Ok(take)
}

fn tally(
    report: &mut Report,
    bad: &mut Vec<Bad>,
    r: Pending,
    verdict: Verdict,
    rule: &'static str,
    take: &mut Vec<Pending>,
) {
    if !rule.is_empty() {
        *report.rules.entry(rule.into()).or_default() += 1;
    }
    let merged = matches!(verdict, Verdict::Merged(_));
    match verdict {
        Verdict::Imported => report.imported += 1,
        Verdict::Merged(_) => report.merged += 1,
        Verdict::Flagged(reason) => {
            report.flagged += 1;
            bad.push(Bad {
                line: r.line,
                text: r.text.clone(),
                source_ref: r.source_ref.clone(),
                body: Err(vec![FieldError::new(
                    "",
                    format!("flagged for review: {reason}"),
                )]),
            });
            report.flagged_rows.push(Listed {
                line: r.line,
                rule: rule.into(),
                reason,
                row: r.text,
            });
            return;
        }
        Verdict::Rejected(errors) => {
            bad.push(Bad {
                line: r.line,
                text: r.text.clone(),
                source_ref: r.source_ref.clone(),
                body: Err(errors.clone()),
            });
            reject(report, r.line, &r.text, errors);
            return;
        }
    }
    if r.resumed {
        report.resumed += 1;
    }
    take.push(Pending { merged, ..r });
}

/// Largest `batch`: rows per write transaction.
const MAX_BATCH: usize = 5000;

/// Key kind under which each batch's transport unit is found by the file's sha256.
const FILE_KEY: &str = "import_file";

/// The CRM endpoint an import's rows are applied for. The rows go straight to the CRM store,
/// so the import's route must do nothing a direct apply would skip: validation only, one CRM
/// store target, no mapping, no condition.
fn crm_target(a: &Assembled, endpoint: &str, entity: ImportEntity) -> anyhow::Result<String> {
    let record_type = entity.schema().name();
    if let Some(to) = a
        .pipeline
        .direct_route(endpoint, record_type)
        .and_then(|r| r.to.first())
    {
        return Ok(to.clone());
    }
    let routes = a.pipeline.routes().candidates(endpoint, record_type);
    let [route] = routes.as_slice() else {
        return Err(anyhow!(
            "{} routes take {record_type} records from {endpoint} ({}); the import needs exactly one, to the CRM store",
            routes.len(),
            routes
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    Err(anyhow!(
        "route {} must send {record_type} records to one CRM store endpoint without a mapping or `when`: \
         `synchub import` applies rows straight to the CRM store",
        route.id
    ))
}

/// The transport units of a file's batches: the last line they cover (0 if none) and how many
/// rows they applied to the CRM store.
async fn file_units(store: &Store, sha256: &str) -> anyhow::Result<(u64, u64)> {
    let rows = sqlx::query(
        "SELECT m.headers FROM message_keys k JOIN messages m ON m.id = k.message_id \
         WHERE k.value = $1 AND k.kind = $2",
    )
    .bind(sha256)
    .bind(FILE_KEY)
    .fetch_all(store.pool())
    .await?;
    let (mut last, mut applied) = (0u64, 0u64);
    for row in rows {
        let h: Value = serde_json::from_str(&row.try_get::<String, _>(0)?).unwrap_or_default();
        let num = |k: &str| {
            h.get(k)
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        last = last.max(num("import.last_line"));
        applied += num("import.applied");
    }
    Ok((last, applied))
}

/// Writes a batch of rows in one transaction: its transport unit (the rows' raw text, found by
/// the file's hash, with the last line it covers: the resume point), the rows not taken as
/// rejected records (reason, keys), and the taken rows applied straight to the CRM store
/// through the CRM's own matching and history, as the dispatcher would apply them. A row the
/// CRM store cannot apply yet (a vehicle whose dealer is unknown) is journaled as a record
/// with a delivery instead, so the dispatcher retries it like live traffic.
struct BatchWriter {
    pipeline: Arc<Pipeline>,
    endpoint: String,
    target: String,
    record_type: &'static str,
    file: String,
    sha256: String,
    header: String,
    notify: bool,
}

/// What a batch's transaction did.
#[derive(Default)]
struct BatchDone {
    /// Rows the CRM store refused: (line, text, merged, reason).
    refused: Vec<(u64, String, bool, String)>,
}

/// A batch at the writer.
struct Written {
    done: std::pin::Pin<Box<dyn Future<Output = Result<BatchDone, StoreError>> + Send>>,
    first_line: u64,
}

impl Written {
    /// Waits for the batch's commit and reports the rows the CRM store refused.
    async fn finish(self, report: &mut Report) -> anyhow::Result<()> {
        let done = self.done.await.map_err(|e| {
            anyhow!(
                "the store refused the batch from line {}: {e}; rows before it are applied, \
                 and running the same import again resumes there",
                self.first_line
            )
        })?;
        for (line, text, merged, reason) in done.refused {
            if merged {
                report.merged = report.merged.saturating_sub(1);
            } else {
                report.imported = report.imported.saturating_sub(1);
            }
            reject(
                report,
                line,
                &text,
                vec![FieldError::new(
                    "",
                    format!("the CRM store refused it: {reason}"),
                )],
            );
        }
        Ok(())
    }
}

impl BatchWriter {
    async fn enqueue(
        &self,
        store: &Store,
        take: Vec<Pending>,
        not_taken: Vec<Bad>,
    ) -> anyhow::Result<Written> {
        let mut texts: Vec<(u64, &str)> = take
            .iter()
            .map(|r| (r.line, r.text.as_str()))
            .chain(not_taken.iter().map(|b| (b.line, b.text.as_str())))
            .collect();
        texts.sort_unstable_by_key(|t| t.0);
        let first_line = texts.first().map(|t| t.0).unwrap_or(0);
        let last_line = texts.last().map(|t| t.0).unwrap_or(0);
        let mut body = self.header.clone();
        for (_, t) in texts {
            body.push('\n');
            body.push_str(t);
        }
        let mut env = Envelope::new(&self.endpoint, ContentType::Csv, Bytes::from(body))
            .with_header("import.file", self.file.clone())
            .with_header("import.sha256", self.sha256.clone())
            .with_header("import.first_line", first_line.to_string())
            .with_header("import.last_line", last_line.to_string());
        env.principal = Some(Principal {
            system: SYSTEM.into(),
            dealer_code: None,
        });
        // Validation and routing of the rows not taken is CPU work: done here, off the writer.
        let refused: Vec<PreparedRecord> = not_taken
            .iter()
            .map(|b| {
                self.pipeline.prepare_record(
                    &env,
                    b.line as usize,
                    self.record_type,
                    Some(&b.source_ref),
                    &b.body,
                    "record",
                    None,
                )
            })
            .collect();
        let route = self
            .pipeline
            .direct_route(&self.endpoint, self.record_type)
            .ok_or_else(|| {
                anyhow!(
                    "no route applies {} rows straight to the CRM store",
                    self.record_type
                )
            })?;
        let mut texts = Vec::with_capacity(take.len());
        let rows: Vec<direct::Row> = take
            .into_iter()
            .map(|r| {
                texts.push((r.line, r.text, r.merged));
                direct::Row {
                    index: usize::try_from(r.line).unwrap_or(usize::MAX),
                    lane: route.lane_in(&r.canonical),
                    source_ref: Some(r.source_ref),
                    rec: r.canonical,
                }
            })
            .collect();
        let batch = direct::Batch {
            env,
            route: route.id.clone(),
            target: self.target.clone(),
            record_type: self.record_type.to_owned(),
            partner: Some(SYSTEM.to_owned()),
            // The migration is headquarters' own.
            key_field_approval: false,
            events: self.notify,
            rows,
            not_taken: refused,
            unit_keys: vec![(FILE_KEY, self.sha256.clone())],
            idempotency: None,
            applied_header: Some("import.applied"),
        };
        let pipeline = self.pipeline.clone();
        let done = store
            .enqueue_exec(move |conn| {
                Box::pin(async move {
                    let mut out = BatchDone::default();
                    let direct::Done::Written { outcomes, .. } =
                        direct::write(conn, &pipeline, batch).await?
                    else {
                        return Ok(out);
                    };
                    for ((line, text, merged), outcome) in texts.into_iter().zip(outcomes) {
                        if let direct::Outcome::Refused { reason, .. } = outcome {
                            out.refused.push((line, text, merged, reason));
                        }
                    }
                    Ok(out)
                })
            })
            .await?;
        Ok(Written {
            done: Box::pin(done),
            first_line,
        })
    }
}

/// Stored customers by mobile or ID number: their name and mobile, for merge and ambiguity.
async fn stored_customers(
    store: &Store,
    col: &str,
    values: &[String],
) -> anyhow::Result<HashMap<String, Seen>> {
    let mut out = HashMap::new();
    for chunk in values.chunks(500) {
        let sql = format!(
            "SELECT {col}, id, data, mobile FROM crm_records WHERE entity = 'customer' AND {col} IN ({})",
            placeholders(0, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in chunk {
            q = q.bind(v.as_str());
        }
        for row in q.fetch_all(store.pool()).await? {
            let data: Value =
                serde_json::from_str(&row.try_get::<String, _>(2)?).unwrap_or_default();
            out.insert(
                row.try_get::<String, _>(0)?,
                Seen {
                    name: data
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    mobile: row.try_get(3)?,
                    at: format!("customer {}", row.try_get::<String, _>(1)?),
                },
            );
        }
    }
    Ok(out)
}

async fn stored_ids(
    store: &Store,
    entity: &str,
    ids: &[String],
) -> anyhow::Result<HashSet<String>> {
    strings_in(
        store,
        "SELECT id FROM crm_records WHERE entity = $1 AND id IN",
        &[entity],
        ids,
    )
    .await
}

/// The first column of `sql (…values…)`, in chunks of 500 values; `fixed` binds `$1…` first.
async fn strings_in(
    store: &Store,
    sql: &str,
    fixed: &[&str],
    values: &[String],
) -> anyhow::Result<HashSet<String>> {
    let mut out = HashSet::new();
    for chunk in values.chunks(500) {
        let sql = format!("{sql} ({})", placeholders(fixed.len(), chunk.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for f in fixed {
            q = q.bind(*f);
        }
        for v in chunk {
            q = q.bind(v.as_str());
        }
        for row in q.fetch_all(store.pool()).await? {
            out.insert(row.try_get::<String, _>(0)?);
        }
    }
    Ok(out)
}

/// Whether a delivery of the import routes is still to be applied for the first time
/// (retries excluded: a vehicle waiting for its dealer must not hold the import open). Includes
/// rows an interrupted run journaled but did not apply; those it was applying when killed come
/// back when their lease (`dispatch.lease_secs`) expires. It stops at the first
/// such row, so it costs nothing while the backlog is long.
async fn unapplied(store: &Store, routes: &[String]) -> anyhow::Result<bool> {
    if routes.is_empty() {
        return Ok(false);
    }
    let sql = format!(
        "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE route IN ({}) \
         AND (status = 'in_flight' OR (status = 'pending' AND attempts = 0)) LIMIT 1) AS x",
        placeholders(0, routes.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for r in routes {
        q = q.bind(r.as_str());
    }
    Ok(q.fetch_one(store.pool()).await?.try_get::<i64, _>(0)? > 0)
}

/// Deliveries of the import routes still waiting, for the progress line (an index-only count).
async fn waiting(store: &Store, routes: &[String]) -> anyhow::Result<i64> {
    if routes.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "SELECT COUNT(*) FROM deliveries WHERE route IN ({}) AND status IN ('pending','in_flight')",
        placeholders(0, routes.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for r in routes {
        q = q.bind(r.as_str());
    }
    Ok(q.fetch_one(store.pool()).await?.try_get(0)?)
}

/// `$after+1, …, $after+n`.
fn placeholders(after: usize, n: usize) -> String {
    (after + 1..=after + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Delivery outcomes of the file's rows that went the journal's way, whichever run journaled
/// them: from the file's batch units (found by their key, not by scanning the journal), to
/// their records (not the change events a batch caused, which go to the dealers).
async fn outcomes(store: &Store, sha256: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows = sqlx::query(
        "SELECT CASE WHEN d.status IN ('pending','in_flight') THEN 'waiting' ELSE d.status END AS s, COUNT(*) \
         FROM message_keys k JOIN messages m ON m.parent_id = k.message_id \
         JOIN deliveries d ON d.message_id = m.id \
         WHERE k.value = $1 AND k.kind = $2 AND m.kind = 'record' GROUP BY s",
    )
    .bind(sha256)
    .bind(FILE_KEY)
    .fetch_all(store.pool())
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The report

fn listed_csv(rows: &[Listed]) -> String {
    let mut out = String::from("line,rule,reason,row\n");
    for r in rows {
        // Partner data opened in spreadsheets: the extract's cell writer neutralises formulas.
        let _ = write!(out, "{},", r.line);
        for (i, cell) in [&r.rule, &r.reason, &r.row].into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            crate::extract::csv_cell(cell, &mut out);
        }
        out.push('\n');
    }
    out
}

/// The report as Markdown (the HTML report renders the same lines).
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Import report: {} from {}", r.entity, r.file);
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "- file sha256: `{}`\n- mode: {}\n- duration: {:.1} s ({:.0} rows/s)",
        r.sha256,
        if r.dry_run {
            "dry run (nothing written)"
        } else {
            "import"
        },
        r.seconds,
        r.source_rows as f64 / r.seconds.max(0.001)
    );
    let _ = writeln!(
        md,
        "- **go-live check: {}**",
        if r.go_live() { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(md, "\n## Reconciliation\n");
    let _ = writeln!(md, "| | rows |\n|---|---:|");
    for (k, v) in [
        ("source rows", r.source_rows),
        ("imported (new)", r.imported),
        ("merged", r.merged),
        ("rejected", r.rejected),
        ("flagged for review (not imported)", r.flagged),
    ] {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\n{} = {} + {} + {} + {}: **{}**",
        r.source_rows,
        r.imported,
        r.merged,
        r.rejected,
        r.flagged,
        if r.reconciles() {
            "reconciled"
        } else {
            "DOES NOT RECONCILE"
        }
    );
    if r.resumed > 0 {
        let _ = writeln!(
            md,
            "\n{} of the imported and merged rows were applied by an earlier, interrupted run of this file and had no second effect.",
            r.resumed
        );
    }
    let _ = writeln!(md, "\n## Rules\n\n| rule | rows |\n|---|---:|");
    for (k, v) in &r.rules {
        let _ = writeln!(md, "| `{k}` | {v} |");
    }
    let _ = writeln!(
        md,
        "\n## CRM store ({})\n\n| | count |\n|---|---:|\n| before | {} |\n| after | {} |",
        r.entity, r.before, r.after
    );
    for (k, v) in &r.applied {
        let _ = writeln!(md, "| applied: {k} | {v} |");
    }
    for (title, rows) in [
        ("Rejected rows", &r.rejected_rows),
        ("Flagged rows", &r.flagged_rows),
    ] {
        let _ = writeln!(md, "\n## {title} ({})\n", rows.len());
        if rows.is_empty() {
            let _ = writeln!(md, "None.");
            continue;
        }
        let _ = writeln!(md, "| line | rule | reason |\n|---:|---|---|");
        for l in rows.iter().take(200) {
            let _ = writeln!(
                md,
                "| {} | `{}` | {} |",
                l.line,
                l.rule,
                l.reason.replace('|', "\\|")
            );
        }
        if rows.len() > 200 {
            let _ = writeln!(md, "\n… and {} more: see the CSV file.", rows.len() - 200);
        }
    }
    md
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(r: &Report) -> String {
    format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>Import report: {} from {}</title>\
         <style>body{{font-family:system-ui,\"PingFang SC\",\"Noto Sans CJK SC\",\"Microsoft YaHei\",sans-serif;margin:2rem}}\
         pre{{white-space:pre-wrap}}</style></head><body><pre>{}</pre></body></html>\n",
        html_escape(&r.entity),
        html_escape(&r.file),
        html_escape(&markdown(r))
    )
}

/// Writes `report.md`, `report.html`, `rejected.csv` and `flagged.csv` into `dir`.
pub fn write_report(r: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [
        ("report.md", markdown(r)),
        ("report.html", html(r)),
        ("rejected.csv", listed_csv(&r.rejected_rows)),
        ("flagged.csv", listed_csv(&r.flagged_rows)),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The import endpoint to use: the one named, or the only one configured.
pub fn endpoint<'a>(
    settings: &'a crate::settings::Settings,
    name: Option<&str>,
) -> anyhow::Result<(String, &'a ImportEndpoint)> {
    let imports: Vec<(&String, &ImportEndpoint)> = settings
        .endpoints
        .iter()
        .filter_map(|(id, e)| match e {
            crate::settings::EndpointConfig::Import(i) => Some((id, i)),
            _ => None,
        })
        .collect();
    match (name, imports.as_slice()) {
        (Some(n), _) => imports
            .iter()
            .find(|(id, _)| id.as_str() == n)
            .map(|(id, i)| ((*id).clone(), *i))
            .ok_or_else(|| anyhow!("no endpoint '{n}' of type import")),
        (None, [(id, i)]) => Ok(((*id).clone(), *i)),
        (None, []) => Err(anyhow!(
            "no endpoint of type import is configured (config/endpoints/legacy_import.toml)"
        )),
        (None, _) => Err(anyhow!(
            "several import endpoints: choose one with --endpoint"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect()
    }

    #[test]
    fn fixes_name_each_cleansing_rule_once_per_row() {
        let r = rec(&[
            ("name", " 王小明"),
            ("mobile", "+86 139-1234-5678"),
            ("birth_date", "1990/7/15"),
            ("address", "天河路１２３号"),
        ]);
        assert_eq!(
            fixes(&r),
            vec![
                "fix.date_format",
                "fix.full_width",
                "fix.mobile",
                "fix.trim"
            ]
        );
        let mut v = rec(&[("vin", "lsvau2180n2183294")]);
        v.insert(
            "owner".into(),
            Value::Object(rec(&[("id_no", "44010419900715251x")])),
        );
        assert_eq!(fixes(&v), vec!["fix.id_no_upper", "fix.vin_upper"]);
        assert!(
            fixes(&rec(&[
                ("mobile", "13912345678"),
                ("birth_date", "1990-07-15")
            ]))
            .is_empty()
        );
    }

    #[test]
    fn customers_merge_by_matching_rules_and_ambiguity_is_flagged() {
        let rules = CustomerRules::default();
        let mut m = Matcher::default();
        let none = |_: &str, _: &str| None;
        let c = |name: &str, mobile: &str, id_no: Option<&str>| {
            let mut r = rec(&[("name", name), ("mobile", mobile)]);
            if let Some(n) = id_no {
                r.insert("id_no".into(), Value::String(n.into()));
            }
            r
        };
        assert_eq!(
            m.customer(
                &rules,
                2,
                &c("王小明", "13912345678", Some("440104199007152511")),
                &none
            )
            .0,
            Verdict::Imported
        );
        assert_eq!(
            m.customer(&rules, 3, &c("王小明", "13912345678", None), &none),
            (
                Verdict::Merged("line 2".into()),
                "merge.same_mobile_same_name"
            )
        );
        let (v, rule) = m.customer(&rules, 4, &c("李四", "13912345678", None), &none);
        assert_eq!(rule, "flag.same_mobile_different_name");
        assert!(
            matches!(v, Verdict::Flagged(ref r) if r.contains("王小明") && r.contains("line 2")),
            "{v:?}"
        );
        let (_, rule) = m.customer(
            &rules,
            5,
            &c("王小明", "13800000000", Some("440104199007152511")),
            &none,
        );
        assert_eq!(rule, "flag.same_id_no_different_mobile");
        // A stored customer counts like an earlier row.
        let stored = |col: &str, v: &str| {
            (col == "mobile" && v == "13700000000").then(|| Seen {
                name: "周杰".into(),
                mobile: Some("13700000000".into()),
                at: "customer C000000007".into(),
            })
        };
        assert_eq!(
            m.customer(&rules, 6, &c("周杰", "13700000000", None), &stored)
                .0,
            Verdict::Merged("customer C000000007".into())
        );
        // With the flag rule off, the same mobile merges whatever the name.
        let lax = CustomerRules {
            flag_same_mobile_different_name: false,
            ..CustomerRules::default()
        };
        assert!(matches!(
            m.customer(&lax, 7, &c("张三", "13912345678", None), &none)
                .0,
            Verdict::Merged(_)
        ));
    }

    #[test]
    fn vehicle_rows_fold_owner_columns_and_drop_empty_cells() {
        let header: Vec<String> = [
            "vin",
            "dealer_code",
            "owner_name",
            "owner_mobile",
            "owner_id_no",
        ]
        .map(String::from)
        .to_vec();
        let fields: Vec<String> = ["LSVAU2180N2183294", "D0001", "张三", "13900000000", ""]
            .map(String::from)
            .to_vec();
        let r = row_record(ImportEntity::Vehicles, &header, &fields);
        assert_eq!(
            Value::Object(r),
            serde_json::json!({"vin": "LSVAU2180N2183294", "dealer_code": "D0001",
                               "owner": {"name": "张三", "mobile": "13900000000"}})
        );
    }

    /// Raw cells as legacy exports write them: padded, full-width, `+86`-prefixed, dates in
    /// every accepted format, lower-case VINs and ID numbers, or plain noise.
    fn messy_cell(column: &'static str) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let full = |s: String| -> String {
            s.chars()
                .map(|c| char::from_u32(c as u32 + 0xFEE0).unwrap_or(c))
                .collect()
        };
        let pad = |s: String, p: &str| format!("{p}{s}{p}");
        let clean: BoxedStrategy<String> = match column {
            "mobile" | "owner_mobile" => ("1[3-9][0-9]{9}", 0..3usize)
                .prop_map(|(m, st)| match st {
                    0 => m,
                    1 => format!("+86 {m}"),
                    _ => format!("{}-{}", &m[..3], &m[3..]),
                })
                .boxed(),
            "birth_date" | "sales_date" => (1950i32..2025, 1u32..=12, 1u32..=28, 0..4usize)
                .prop_map(|(y, m, d, st)| match st {
                    0 => format!("{y}-{m:02}-{d:02}"),
                    1 => format!("{y}/{m}/{d}"),
                    2 => format!("{y}{m:02}{d:02}"),
                    _ => format!("{y}年{m}月{d}日"),
                })
                .boxed(),
            "vin" => prop::sample::select(vec!["LHGCV3CK9VA118682", "lhglvcwj2ra215148"])
                .prop_map(str::to_owned)
                .boxed(),
            "id_no" | "owner_id_no" => Just("440104199007152511".to_owned()).boxed(),
            _ => "[a-zA-Z0-9\u{4E00}-\u{4E20} ]{0,10}".boxed(),
        };
        (
            clean,
            0..3usize,
            prop_oneof![".{0,6}".boxed(), Just(String::new()).boxed()],
        )
            .prop_map(move |(v, st, noise)| match st {
                0 => v,
                1 => pad(full(v), "\u{3000}"),
                _ if column == "name" || column == "owner_name" => format!("{v}{noise}"),
                _ => pad(v, " "),
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// Cleansing is complete and idempotent: what a valid row cleanses to fires no fix rule
        /// and validates to itself (normalise(normalise(x)) == normalise(x)).
        #[test]
        fn cleansed_rows_need_no_further_fixes(
            entity in proptest::sample::select(vec![ImportEntity::Customers, ImportEntity::Vehicles]),
            cells in (
                messy_cell("name"), messy_cell("mobile"), messy_cell("birth_date"), messy_cell("id_no"),
                messy_cell("vin"), messy_cell("sales_date"), messy_cell("owner_name"), messy_cell("owner_mobile"),
            ),
        ) {
            let (name, mobile, birth, id_no, vin, sales, owner_name, owner_mobile) = cells;
            let (header, fields): (Vec<&str>, Vec<String>) = match entity {
                ImportEntity::Customers => (
                    vec!["source_ref", "dealer_code", "name", "mobile", "birth_date", "id_no"],
                    vec!["R1".into(), "d0001".into(), name, mobile, birth, id_no],
                ),
                _ => (
                    vec!["vin", "dealer_code", "sales_date", "owner_name", "owner_mobile"],
                    vec![vin, "d0001".into(), sales, owner_name, owner_mobile],
                ),
            };
            let header: Vec<String> = header.into_iter().map(String::from).collect();
            let rec = row_record(entity, &header, &fields);
            let _ = fixes(&rec);
            if let Ok(canonical) = validate(entity.schema(), &Value::Object(rec)) {
                proptest::prop_assert_eq!(fixes(&canonical), Vec::<&str>::new(), "{:?}", canonical);
                proptest::prop_assert_eq!(
                    validate(entity.schema(), &Value::Object(canonical.clone())),
                    Ok(canonical)
                );
            }
        }

        /// Any cells, any header: a record of the header's columns, never a panic.
        #[test]
        fn any_row_becomes_a_record_of_its_header(
            cells in proptest::collection::vec((
                proptest::sample::select(vec!["name", "mobile", "vin", "owner_name", "owner_mobile", "x"]),
                ".{0,8}",
            ), 0..8),
        ) {
            let (header, fields): (Vec<String>, Vec<String>) =
                cells.into_iter().map(|(h, v)| (h.to_owned(), v)).unzip();
            for entity in ImportEntity::ALL {
                let rec = row_record(entity, &header, &fields);
                let _ = fixes(&rec);
                for k in rec.keys() {
                    proptest::prop_assert!(header.contains(k) || k == "owner", "{k}");
                }
            }
        }
    }
}
