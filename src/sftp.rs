//! SFTP endpoints in the running hub: `type = "sftp"` settings turned into the adapter's
//! configs, the store-backed file ledger, the per-endpoint poll scheduler with its last report,
//! and the inbox wrapper that shapes CSV rows for the record schemas.
//!
//! The adapter (`adapters/sftp`) does the file work; this module decides when to poll, where
//! claims live (table `sftp_files`, shared by every instance on one database) and what operators
//! see (`GET /api/v1/endpoints` → `last_poll`, `POST /api/v1/endpoints/{id}/poll`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use sqlx::Row;
use synchub_adapter_sdk::{AcceptError, Envelope, Inbox, Outbound, Principal, Receipt, Submission};
use synchub_adapter_sftp::{
    ClaimResult, ConnectionSettings, FileCounts, FileFacts, FileOutcome, FileStatus, Ledger,
    LedgerError, PollReport, Poller, SftpConfig, SftpError, SftpOutbound, SftpOutboundConfig,
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::pipeline::Pipeline;
use crate::settings::{Direction, Settings, SftpEndpoint};
use crate::status::EndpointStates;
use crate::store::{Store, StoreError, now_ms};
use crate::telemetry::metrics_names as m;

/// How long a claim stays live without progress. Progress renews it every batch (seconds apart),
/// so only a dead instance's claim runs out; another instance then takes the file over.
const LEASE_MS: i64 = 10 * 60 * 1000;

/// Ledger rows shown per endpoint in `GET /api/v1/endpoints`.
const RECENT_FILES: i64 = 10;

// ---------------------------------------------------------------------------------------------
// Settings → adapter configs

/// The ops API's kind label.
pub fn kind(s: &SftpEndpoint) -> &'static str {
    match s.direction {
        Direction::In => "sftp in",
        Direction::Out => "sftp out",
    }
}

fn connection(s: &SftpEndpoint) -> ConnectionSettings {
    ConnectionSettings::new(
        s.host.clone(),
        s.port,
        s.user.clone(),
        s.private_key_file.clone(),
        s.known_hosts_file.clone(),
    )
}

/// The adapter's inbound config; unset fields keep the adapter's defaults.
pub fn inbound_config(id: &str, s: &SftpEndpoint, passphrase: Option<String>) -> SftpConfig {
    let mut c = SftpConfig::new(
        id,
        connection(s),
        s.dir.clone(),
        s.pattern.clone().unwrap_or_default(),
    );
    c.passphrase = passphrase;
    c.timeout_ms = s.timeout_ms;
    if let Some(v) = &s.schedule {
        c.schedule = v.clone();
    }
    if let Some(v) = s.stable_secs {
        c.stable_secs = v;
    }
    if let Some(v) = &s.marker_suffix {
        c.marker_suffix = v.clone();
    }
    if let Some(v) = s.require_marker {
        c.require_marker = v;
    }
    if let Some(v) = s.charset {
        c.charset = v;
    }
    if let Some(v) = s.delimiter {
        c.delimiter = v;
    }
    if let Some(v) = s.batch_size {
        c.batch_size = v;
    }
    c.record_type = s.record_type.clone().unwrap_or_default();
    c.required_columns = s.required_columns.clone();
    c.principal = s.system.clone().map(|system| Principal {
        system,
        dealer_code: None,
    });
    c
}

/// The adapter's outbound config.
pub fn outbound_config(
    id: &str,
    s: &SftpEndpoint,
    passphrase: Option<String>,
) -> SftpOutboundConfig {
    SftpOutboundConfig {
        endpoint_id: id.to_owned(),
        host: s.host.clone(),
        port: s.port,
        user: s.user.clone(),
        private_key_file: s.private_key_file.clone(),
        passphrase,
        known_hosts_file: s.known_hosts_file.clone(),
        dir: s.dir.clone(),
        prefix: s.prefix.clone().unwrap_or_default(),
        overwrite: s.overwrite.unwrap_or(false),
        manifest: s.manifest.unwrap_or(false),
        timeout_ms: s.timeout_ms,
    }
}

/// Every problem of one `sftp` endpoint as (field, message), using the adapter's own checks so
/// the hub and the adapter never disagree about what is valid.
pub fn config_problems(id: &str, s: &SftpEndpoint) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let in_only: [(&str, bool); 13] = [
        ("system", s.system.is_some()),
        ("pattern", s.pattern.is_some()),
        ("stable_secs", s.stable_secs.is_some()),
        ("marker_suffix", s.marker_suffix.is_some()),
        ("require_marker", s.require_marker.is_some()),
        ("charset", s.charset.is_some()),
        ("delimiter", s.delimiter.is_some()),
        ("batch_size", s.batch_size.is_some()),
        ("record_type", s.record_type.is_some()),
        ("required_columns", !s.required_columns.is_empty()),
        ("nest_prefixes", !s.nest_prefixes.is_empty()),
        ("direct_apply", s.direct_apply.is_some()),
        ("instance_id", s.instance_id.is_some()),
    ];
    let out_only = [
        ("prefix", s.prefix.is_some()),
        ("overwrite", s.overwrite.is_some()),
        ("manifest", s.manifest.is_some()),
    ];
    let adapter_problems = match s.direction {
        Direction::In => {
            for (field, set) in out_only {
                if set {
                    out.push((field.to_owned(), "only applies to direction out".to_owned()));
                }
            }
            for field in ["pattern", "record_type", "system"] {
                let missing = match field {
                    "pattern" => s.pattern.is_none(),
                    "record_type" => s.record_type.is_none(),
                    _ => s.system.as_deref().is_none_or(|v| v.trim().is_empty()),
                };
                if missing {
                    out.push((field.to_owned(), "required for direction in".to_owned()));
                }
            }
            for (i, p) in s.nest_prefixes.iter().enumerate() {
                if p.trim_end_matches('_').is_empty() {
                    out.push((
                        format!("nest_prefixes[{i}]"),
                        "must name a column prefix such as \"owner_\"".to_owned(),
                    ));
                }
            }
            if s.instance_id
                .as_deref()
                .is_some_and(|v| v.trim().is_empty())
            {
                out.push(("instance_id".to_owned(), "must not be empty".to_owned()));
            }
            inbound_config(id, s, None).validate()
        }
        Direction::Out => {
            for (field, set) in in_only {
                if set {
                    out.push((field.to_owned(), "only applies to direction in".to_owned()));
                }
            }
            if s.prefix.is_none() {
                out.push(("prefix".to_owned(), "required for direction out".to_owned()));
            }
            // `out` with a schedule: the nightly extract push (src/extract/push.rs).
            if let Some(Err(e)) = s.schedule.as_deref().map(crate::settings::parse_cron) {
                out.push(("schedule".to_owned(), e));
            }
            outbound_config(id, s, None).validate()
        }
    };
    for p in adapter_problems {
        let (field, message) = p.split_once(": ").unwrap_or(("", p.as_str()));
        // Missing required fields were named above; the adapter's echo would say it twice.
        if out.iter().any(|(f, _)| f == field) {
            continue;
        }
        out.push((field.to_owned(), message.to_owned()));
    }
    out
}

/// This instance's name in the ledger: the configured `instance_id`, else the host name, so a
/// restarted hub picks up its own claims at once instead of waiting out the lease.
fn owner(id: &str, s: &SftpEndpoint) -> String {
    let instance = s.instance_id.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "synchub".to_owned())
    });
    format!("{instance}/{id}")
}

// ---------------------------------------------------------------------------------------------
// Ledger on the store

/// The adapter's [`Ledger`] on table `sftp_files`. Every call is one store write, committed
/// before it returns; on PostgreSQL the claim's conditional UPDATE runs under the row lock, so
/// two instances never both take one file.
pub struct StoreLedger {
    store: Store,
    owner: String,
    lease_ms: i64,
}

impl StoreLedger {
    pub fn new(store: Store, owner: impl Into<String>) -> StoreLedger {
        StoreLedger {
            store,
            owner: owner.into(),
            lease_ms: LEASE_MS,
        }
    }
}

fn ledger_err(e: StoreError) -> LedgerError {
    LedgerError(e.to_string())
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uncount(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[async_trait]
impl Ledger for StoreLedger {
    async fn claim(&self, facts: &FileFacts) -> Result<ClaimResult, LedgerError> {
        let f = facts.clone();
        let owner = self.owner.clone();
        let lease_ms = self.lease_ms;
        self.store
            .write(move |c| {
                Box::pin(async move {
                    let now = now_ms();
                    sqlx::query(
                        "INSERT INTO sftp_files (endpoint, sha256, name, size, mtime, status, owner, lease_until, claimed_at) \
                         VALUES ($1, $2, $3, $4, $5, 'claimed', $6, $7, $8) ON CONFLICT (endpoint, sha256) DO NOTHING",
                    )
                    .bind(&f.endpoint)
                    .bind(&f.sha256)
                    .bind(&f.name)
                    .bind(count(f.size))
                    .bind(i64::from(f.mtime))
                    .bind(&owner)
                    .bind(now + lease_ms)
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                    // Take it when it failed before (read again from the top), when we hold it
                    // (resume), or when its holder stopped renewing. SET sees the old row.
                    let taken = sqlx::query(
                        "UPDATE sftp_files SET name = $1, size = $2, mtime = $3, owner = $4, lease_until = $5, claimed_at = $6, \
                         resume_line = CASE WHEN status = 'failed' THEN 0 ELSE resume_line END, \
                         rows_read = CASE WHEN status = 'failed' THEN 0 ELSE rows_read END, \
                         rows_accepted = CASE WHEN status = 'failed' THEN 0 ELSE rows_accepted END, \
                         rows_rejected = CASE WHEN status = 'failed' THEN 0 ELSE rows_rejected END, \
                         finished_at = NULL, archived_to = NULL, reason = NULL, status = 'claimed' \
                         WHERE endpoint = $7 AND sha256 = $8 \
                         AND (status = 'failed' OR (status = 'claimed' AND (owner = $4 OR lease_until < $9)))",
                    )
                    .bind(&f.name)
                    .bind(count(f.size))
                    .bind(i64::from(f.mtime))
                    .bind(&owner)
                    .bind(now + lease_ms)
                    .bind(now)
                    .bind(&f.endpoint)
                    .bind(&f.sha256)
                    .bind(now)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    let row = sqlx::query(
                        "SELECT status, resume_line, rows_read, rows_accepted, rows_rejected FROM sftp_files \
                         WHERE endpoint = $1 AND sha256 = $2",
                    )
                    .bind(&f.endpoint)
                    .bind(&f.sha256)
                    .fetch_one(&mut *c)
                    .await?;
                    let status: String = row.try_get(0)?;
                    Ok(if taken == 1 {
                        ClaimResult::Take {
                            resume_after_line: uncount(row.try_get(1)?),
                            counts: FileCounts {
                                read: uncount(row.try_get(2)?),
                                accepted: uncount(row.try_get(3)?),
                                rejected: uncount(row.try_get(4)?),
                            },
                        }
                    } else if status == "archived" {
                        ClaimResult::AlreadyDone
                    } else {
                        ClaimResult::Busy
                    })
                })
            })
            .await
            .map_err(ledger_err)
    }

    async fn progress(
        &self,
        facts: &FileFacts,
        line: u64,
        counts: &FileCounts,
    ) -> Result<(), LedgerError> {
        let f = facts.clone();
        let counts = *counts;
        let owner = self.owner.clone();
        let lease_ms = self.lease_ms;
        let renewed = self
            .store
            .write(move |c| {
                Box::pin(async move {
                    let n = sqlx::query(
                        "UPDATE sftp_files SET resume_line = $1, rows_read = $2, rows_accepted = $3, rows_rejected = $4, \
                         lease_until = $5 WHERE endpoint = $6 AND sha256 = $7 AND owner = $8 AND status = 'claimed'",
                    )
                    .bind(count(line))
                    .bind(count(counts.read))
                    .bind(count(counts.accepted))
                    .bind(count(counts.rejected))
                    .bind(now_ms() + lease_ms)
                    .bind(&f.endpoint)
                    .bind(&f.sha256)
                    .bind(&owner)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    Ok(n)
                })
            })
            .await
            .map_err(ledger_err)?;
        if renewed == 0 {
            // Our lease ran out and another instance took the file: stop, it carries on.
            return Err(LedgerError(format!(
                "claim on {} is no longer held by {}",
                facts.name, self.owner
            )));
        }
        Ok(())
    }

    async fn finish(
        &self,
        facts: &FileFacts,
        counts: &FileCounts,
        outcome: &FileOutcome,
    ) -> Result<(), LedgerError> {
        let f = facts.clone();
        let counts = *counts;
        let (status, to, reason) = match outcome {
            FileOutcome::Archived { to } => ("archived", to.clone(), None),
            FileOutcome::Failed { reason, to } => ("failed", to.clone(), Some(reason.clone())),
        };
        self.store
            .write(move |c| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE sftp_files SET status = $1, rows_read = $2, rows_accepted = $3, rows_rejected = $4, \
                         finished_at = $5, lease_until = NULL, archived_to = $6, reason = $7 \
                         WHERE endpoint = $8 AND sha256 = $9",
                    )
                    .bind(status)
                    .bind(count(counts.read))
                    .bind(count(counts.accepted))
                    .bind(count(counts.rejected))
                    .bind(now_ms())
                    .bind(to)
                    .bind(reason)
                    .bind(&f.endpoint)
                    .bind(&f.sha256)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            })
            .await
            .map_err(ledger_err)
    }
}

/// The newest ledger rows of one endpoint, for the endpoints view.
pub async fn recent_files(store: &Store, endpoint: &str) -> Result<Vec<Value>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, sha256, size, status, rows_read, rows_accepted, rows_rejected, claimed_at, finished_at, \
         archived_to, reason, owner FROM sftp_files WHERE endpoint = $1 ORDER BY claimed_at DESC LIMIT $2",
    )
    .bind(endpoint)
    .bind(RECENT_FILES)
    .fetch_all(store.pool())
    .await?;
    let time = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339())
    };
    rows.iter()
        .map(|r| {
            Ok(json!({
                "name": r.try_get::<String, _>(0)?,
                "sha256": r.try_get::<String, _>(1)?,
                "size": r.try_get::<i64, _>(2)?,
                "status": r.try_get::<String, _>(3)?,
                "read": r.try_get::<i64, _>(4)?,
                "accepted": r.try_get::<i64, _>(5)?,
                "rejected": r.try_get::<i64, _>(6)?,
                "claimed_at": time(Some(r.try_get(7)?)),
                "finished_at": time(r.try_get(8)?),
                "moved_to": r.try_get::<Option<String>, _>(9)?,
                "reason": r.try_get::<Option<String>, _>(10)?,
                "owner": r.try_get::<String, _>(11)?,
            }))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shaping rows for the schemas

/// Sits between the poller and the pipeline. CSV is flat, the record schemas are not: columns
/// named by `nest_prefixes` fold into an object (`owner_mobile` → `owner.mobile`). Each row's
/// `source_ref` (file, content hash, line) also goes into the body when the file has no such
/// column, because schemas such as `campaign_result` require it and it makes the row findable.
pub struct SftpInbox {
    inner: Arc<dyn Inbox>,
    nest_prefixes: Vec<String>,
    /// Batches whose route qualifies are applied straight to the CRM store through this.
    direct: Option<Arc<Pipeline>>,
}

impl SftpInbox {
    pub fn new(inner: Arc<dyn Inbox>, nest_prefixes: Vec<String>) -> SftpInbox {
        SftpInbox {
            inner,
            nest_prefixes,
            direct: None,
        }
    }

    /// Applies batches straight to the CRM store where their route allows (`direct_apply`).
    pub fn with_direct(mut self, pipeline: Arc<Pipeline>) -> SftpInbox {
        self.direct = Some(pipeline);
        self
    }

    fn shape(&self, body: &mut Map<String, Value>, source_ref: Option<&str>) {
        for prefix in &self.nest_prefixes {
            let object = prefix.trim_end_matches('_');
            if body.get(object).is_some_and(|v| !v.is_object()) {
                continue;
            }
            let keys: Vec<String> = body
                .keys()
                .filter(|k| k.len() > prefix.len() && k.starts_with(prefix.as_str()))
                .cloned()
                .collect();
            if keys.is_empty() {
                continue;
            }
            let mut nested = match body.remove(object) {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            for k in keys {
                if let Some(v) = body.remove(&k) {
                    nested.insert(k[prefix.len()..].to_owned(), v);
                }
            }
            body.insert(object.to_owned(), Value::Object(nested));
        }
        if let Some(r) = source_ref
            && !body.contains_key("source_ref")
        {
            body.insert("source_ref".into(), Value::String(r.to_owned()));
        }
    }
}

#[async_trait]
impl Inbox for SftpInbox {
    async fn accept(&self, mut submission: Submission) -> Result<Receipt, AcceptError> {
        for r in &mut submission.records {
            if let Ok(Value::Object(body)) = &mut r.body {
                self.shape(body, r.source_ref.as_deref());
            }
        }
        if let Some(pipeline) = &self.direct {
            submission = match pipeline.accept_direct(submission).await {
                Ok(done) => return done,
                Err(not_direct) => not_direct,
            };
        }
        self.inner.accept(submission).await
    }

    async fn reject(
        &self,
        envelope: Envelope,
        code: &str,
        reason: &str,
    ) -> Result<Uuid, AcceptError> {
        self.inner.reject(envelope, code, reason).await
    }
}

// ---------------------------------------------------------------------------------------------
// Scheduler and "poll now"

/// What the last poll of an endpoint gave (kept in memory; the ledger keeps the files).
#[derive(Clone)]
struct LastPoll {
    at: chrono::DateTime<chrono::Utc>,
    result: Result<PollReport, String>,
}

/// One enabled inbound SFTP endpoint: its poller, schedule loop and last report.
pub struct InboundSftp {
    id: String,
    poller: Poller,
    /// Where scheduled ticks are claimed, so instances sharing the store poll once per tick.
    ticks: Option<Store>,
    status: Arc<EndpointStates>,
    // std Mutex: held only to swap the report in or clone it out.
    last: std::sync::Mutex<Option<LastPoll>>,
}

impl InboundSftp {
    pub fn new(
        id: String,
        config: SftpConfig,
        inbox: Arc<dyn Inbox>,
        ledger: Arc<dyn Ledger>,
        status: Arc<EndpointStates>,
    ) -> InboundSftp {
        InboundSftp {
            id,
            poller: Poller::new(config, inbox, ledger),
            ticks: None,
            status,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Polls now (a scheduled tick and a manual poll never overlap: the poller serialises them),
    /// records the outcome for the endpoints view, the endpoint state and the metrics.
    pub async fn poll_now(&self) -> Result<PollReport, SftpError> {
        let result = self.poller.poll_once().await;
        let id = self.id.clone();
        metrics::counter!(m::SFTP_POLLS, "endpoint" => id.clone()).increment(1);
        match &result {
            Ok(report) => {
                // The server answered and listed the directory: it is up, whatever single
                // files did (their problems stay visible as the last error).
                self.status.contact(&id, report.errors.first().cloned());
                for f in &report.files {
                    let outcome = match &f.outcome {
                        FileStatus::Archived { .. } => "archived",
                        FileStatus::AlreadyDone { .. } => "already_done",
                        FileStatus::Failed { .. } => "failed",
                        FileStatus::Busy => "busy",
                        FileStatus::LeftInPlace => "left_in_place",
                    };
                    metrics::counter!(m::SFTP_FILES, "endpoint" => id.clone(), "outcome" => outcome)
                        .increment(1);
                    if matches!(f.outcome, FileStatus::Archived { .. }) {
                        for (outcome, n) in [("accepted", f.accepted), ("rejected", f.rejected)] {
                            metrics::counter!(m::SFTP_ROWS, "endpoint" => id.clone(), "outcome" => outcome)
                                .increment(n);
                        }
                    }
                }
                if !report.errors.is_empty() {
                    metrics::counter!(m::SFTP_POLL_ERRORS, "endpoint" => id.clone())
                        .increment(report.errors.len() as u64);
                }
            }
            Err(e) => {
                self.status.failure(&id, e.to_string());
                metrics::counter!(m::SFTP_POLL_ERRORS, "endpoint" => id.clone()).increment(1);
            }
        }
        let last = LastPoll {
            at: chrono::Utc::now(),
            result: result
                .as_ref()
                .map(Clone::clone)
                .map_err(ToString::to_string),
        };
        if let Ok(mut g) = self.last.lock() {
            *g = Some(last);
        }
        result
    }

    /// Polls at every schedule tick until shutdown. A poll cut short by shutdown is safe: the
    /// file stays in place and the next start resumes after the last committed batch.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = chrono::Utc::now();
            let Some(next) = self.poller.config().next_poll_after(now) else {
                tracing::error!(endpoint = %self.id, "The SFTP schedule has no next occurrence; polling is off.");
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if let Some(store) = &self.ticks {
                let job = format!("sftp_poll:{}", self.id);
                if !crate::schedule::ours(store, &job, next.timestamp_millis()).await {
                    continue;
                }
            }
            tokio::select! {
                _ = self.poll_now() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// `last_poll` of the endpoints view.
    pub fn last_poll_json(&self) -> Value {
        let last = self.last.lock().ok().and_then(|g| g.clone());
        let next = self
            .poller
            .config()
            .next_poll_after(chrono::Utc::now())
            .map(|t| t.to_rfc3339());
        match last {
            None => json!({"time": null, "next": next}),
            Some(LastPoll { at, result: Ok(r) }) => json!({
                "time": r.finished_at.to_rfc3339(),
                "started_at": r.started_at.to_rfc3339(),
                "next": next,
                "ok": true,
                "files_found": r.files_found,
                "files_taken": r.files_taken,
                "waiting": r.waiting,
                "errors": r.errors,
                "files": r.files,
                "recorded_at": at.to_rfc3339(),
            }),
            Some(LastPoll { at, result: Err(e) }) => json!({
                "time": at.to_rfc3339(),
                "next": next,
                "ok": false,
                "files_found": 0,
                "files_taken": 0,
                "errors": [e],
                "files": [],
            }),
        }
    }
}

/// Every SFTP endpoint of the hub: enabled inbound ones with their pollers, and which are
/// disabled (shown as such, never connected).
#[derive(Default)]
pub struct SftpEndpoints {
    inbound: BTreeMap<String, Arc<InboundSftp>>,
    disabled: BTreeSet<String>,
}

impl SftpEndpoints {
    /// Builds endpoint `id`: an inbound one is kept here, an outbound one is returned for the
    /// dispatcher's outbounds. A disabled endpoint is only remembered as disabled.
    pub fn add(
        &mut self,
        id: &str,
        s: &SftpEndpoint,
        settings: &Settings,
        pipeline: Arc<Pipeline>,
        store: &Store,
        status: Arc<EndpointStates>,
    ) -> Option<Arc<dyn Outbound>> {
        if !s.enabled {
            self.disabled.insert(id.to_owned());
            return None;
        }
        let passphrase = s
            .passphrase_env
            .as_deref()
            .and_then(|var| settings.secrets.get(var))
            .map(|p| p.expose_secret().to_owned());
        match s.direction {
            Direction::Out => Some(Arc::new(SftpOutbound::new(outbound_config(
                id, s, passphrase,
            )))),
            Direction::In => {
                let mut inbox = SftpInbox::new(pipeline.clone(), s.nest_prefixes.clone());
                if s.direct_apply.unwrap_or(true) {
                    inbox = inbox.with_direct(pipeline);
                }
                let inbox: Arc<dyn Inbox> = Arc::new(inbox);
                let ledger: Arc<dyn Ledger> =
                    Arc::new(StoreLedger::new(store.clone(), owner(id, s)));
                let mut ep = InboundSftp::new(
                    id.to_owned(),
                    inbound_config(id, s, passphrase),
                    inbox,
                    ledger,
                    status,
                );
                ep.ticks = Some(store.clone());
                self.inbound.insert(id.to_owned(), Arc::new(ep));
                None
            }
        }
    }

    /// Shows another kind of endpoint (a disabled SOAP outbound) as disabled too.
    pub fn mark_disabled(&mut self, id: &str) {
        self.disabled.insert(id.to_owned());
    }

    pub fn is_disabled(&self, id: &str) -> bool {
        self.disabled.contains(id)
    }

    pub fn inbound(&self, id: &str) -> Option<&Arc<InboundSftp>> {
        self.inbound.get(id)
    }

    /// Starts one schedule loop per enabled inbound endpoint.
    pub fn spawn(&self, shutdown: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        self.inbound
            .values()
            .map(|ep| tokio::spawn(ep.clone().run(shutdown.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synchub_adapter_sdk::RecordIn;

    struct Echo(std::sync::Mutex<Vec<Value>>);

    #[async_trait]
    impl Inbox for Echo {
        async fn accept(&self, s: Submission) -> Result<Receipt, AcceptError> {
            let mut g = self.0.lock().unwrap();
            for r in s.records {
                g.push(r.body.unwrap());
            }
            Ok(Receipt {
                message_id: s.envelope.id,
                records: Vec::new(),
            })
        }
        async fn reject(&self, e: Envelope, _: &str, _: &str) -> Result<Uuid, AcceptError> {
            Ok(e.id)
        }
    }

    #[test]
    fn problems_name_file_and_key_path_with_the_adapters_messages() {
        use crate::settings::{Profile, Settings};
        let root = tempfile::tempdir().unwrap();
        let config = root.path().join("config");
        std::fs::create_dir_all(config.join("endpoints")).unwrap();
        std::fs::create_dir_all(root.path().join("routes")).unwrap();
        std::fs::write(config.join("synchub.toml"), "").unwrap();
        let file = config.join("endpoints/osm_x_in.toml");
        std::fs::write(
            &file,
            "type = \"sftp\"\ndirection = \"in\"\nhost = \"h\"\nuser = \"u\"\n\
             private_key_file = \"k\"\nknown_hosts_file = \"kh\"\ndir = \"relative\"\n\
             pattern = \"*.csv\"\nschedule = \"every day\"\nrecord_type = \"dealer\"\n\
             prefix = \"x\"\npassphrase_env = \"SFTP_TEST_PASSPHRASE_UNSET\"\n",
        )
        .unwrap();
        let settings = Settings::load(&config, Profile::Local, &[]).unwrap();
        let problems = settings.validate();
        let at = |key: &str| {
            problems
                .iter()
                .find(|p| p.key_path == key)
                .unwrap_or_else(|| panic!("no problem at {key}: {problems:#?}"))
        };
        assert!(at("endpoints.osm_x_in.schedule").message.contains("cron"));
        assert_eq!(at("endpoints.osm_x_in.schedule").file, file);
        assert!(at("endpoints.osm_x_in.dir").message.contains("absolute"));
        assert!(at("endpoints.osm_x_in.system").message.contains("required"));
        assert!(
            at("endpoints.osm_x_in.prefix")
                .message
                .contains("direction out")
        );
        assert!(
            at("endpoints.osm_x_in.passphrase_env")
                .message
                .contains("not set")
        );

        // Disabled: still checked for shape, but its secret need not be set.
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, format!("{text}enabled = false\n")).unwrap();
        let problems = Settings::load(&config, Profile::Local, &[])
            .unwrap()
            .validate();
        assert!(
            problems
                .iter()
                .any(|p| p.key_path == "endpoints.osm_x_in.schedule")
        );
        assert!(
            !problems
                .iter()
                .any(|p| p.key_path == "endpoints.osm_x_in.passphrase_env")
        );
    }

    #[tokio::test]
    async fn owner_columns_nest_and_source_ref_is_added() {
        let echo = Arc::new(Echo(Default::default()));
        let inbox = SftpInbox::new(echo.clone(), vec!["owner_".into()]);
        let body = json!({"vin": "V", "owner_name": "张三", "owner_mobile": "139"});
        let bare = json!({"vin": "W", "source_ref": "own"});
        let records = [body, bare]
            .into_iter()
            .enumerate()
            .map(|(i, b)| RecordIn {
                index: i + 2,
                record_type: "vehicle".into(),
                source_ref: Some(format!("F.csv@abcd:{}", i + 2)),
                body: Ok(b),
            })
            .collect();
        let env = Envelope::new(
            "e",
            synchub_adapter_sdk::ContentType::Csv,
            Default::default(),
        );
        inbox
            .accept(Submission {
                envelope: env,
                records,
            })
            .await
            .unwrap();
        let got = echo.0.lock().unwrap().clone();
        assert_eq!(
            got[0],
            json!({"vin": "V", "owner": {"name": "张三", "mobile": "139"}, "source_ref": "F.csv@abcd:2"})
        );
        assert_eq!(
            got[1],
            json!({"vin": "W", "source_ref": "own"}),
            "no owner columns: no owner; a source_ref column wins"
        );
    }
}
