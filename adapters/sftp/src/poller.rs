//! The inbound poller: one `poll_once` lists the directory, takes the files that are complete
//! (marker or stable), claims each in the [`Ledger`], streams its rows into the journal in
//! batches, and moves it to `archive/` only after the last batch committed.
//!
//! Ack point: the move out of the polled directory. Everything before it can fail and the file
//! is simply taken again next poll, resuming after the last committed batch; rows sent twice
//! carry the same `source_ref` and the journal recognises them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use synchub_adapter_sdk::{
    ContentType, Envelope, FieldError, Inbox, RecordIn, RecordVerdict, Submission,
};
use tokio::io::AsyncReadExt;

use crate::config::SftpConfig;
use crate::csv::{Row, RowReader};
use crate::error::SftpError;
use crate::glob::glob_match;
use crate::ledger::{ClaimResult, FileCounts, FileFacts, FileOutcome, Ledger};
use crate::session::{Connection, RemoteEntry, timed};

/// Read buffer over the remote file: large reads keep russh-sftp's request pipeline full.
const READ_BUFFER: usize = 256 * 1024;
/// How much of an unreadable file is journaled with its refusal.
const REFUSAL_PREFIX: u64 = 64 * 1024;

/// Envelope header: the file name.
pub const HEADER_FILE: &str = "sftp.file";
/// Envelope header: the remote path the file was read from.
pub const HEADER_PATH: &str = "sftp.path";
/// Envelope header: `first-last` line numbers of the rows in this batch.
pub const HEADER_LINES: &str = "sftp.lines";
/// Envelope header: sha256 of the whole file.
pub const HEADER_SHA256: &str = "sftp.sha256";
/// Envelope header: the charset the file was decoded from (the body is UTF-8).
pub const HEADER_CHARSET: &str = "sftp.charset";
/// Envelope header on refusals: `true` when the body holds only the file's first 64 KiB.
pub const HEADER_TRUNCATED: &str = "sftp.truncated";

/// What one poll did.
#[derive(Debug, Clone, Serialize)]
pub struct PollReport {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Files matching the pattern (markers, `.part` files and hidden files excluded).
    pub files_found: usize,
    /// Files this poll worked on (every report in `files` except `Busy` ones).
    pub files_taken: usize,
    /// Matching files not yet complete (no marker, not yet stable).
    pub waiting: Vec<String>,
    /// One report per file that was ready, in processing (name) order.
    pub files: Vec<FileReport>,
    /// Every problem of this poll, one line each (file problems repeat their `FileReport::error`).
    pub errors: Vec<String>,
}

/// What became of one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub name: String,
    pub size: u64,
    /// sha256 of the content, once hashed.
    pub sha256: Option<String>,
    /// Rows read, accepted and rejected in total (including earlier attempts at this file).
    pub read: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub outcome: FileStatus,
    pub error: Option<String>,
}

/// Where a file ended up after this poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileStatus {
    /// Every row committed; moved to `to`.
    Archived { to: String },
    /// Identical content was archived before: moved to `to` without reading it.
    AlreadyDone { to: String },
    /// Could not be read at all: moved to `to`, with `<to>.reason.txt`.
    Failed { to: String },
    /// Another instance is processing it.
    Busy,
    /// Something failed on the way (see `error`); it stays and is taken again next poll.
    LeftInPlace,
}

/// When a file was last seen with this size and mtime.
struct Sighting {
    size: u64,
    mtime: u32,
    since: Instant,
}

/// Polls one configured directory. Cheap to keep for the life of the endpoint: it remembers
/// file sightings between polls, which the stable-time rule needs.
pub struct Poller {
    config: SftpConfig,
    inbox: Arc<dyn Inbox>,
    ledger: Arc<dyn Ledger>,
    // std Mutex: never held across an .await.
    sightings: Mutex<HashMap<String, Sighting>>,
    /// Serialises polls (cron tick and a manual "poll now" may meet); a tokio Mutex because the
    /// whole poll runs under it.
    running: tokio::sync::Mutex<()>,
}

/// Per-file context while ingesting.
struct FileJob<'a> {
    conn: &'a Connection,
    facts: FileFacts,
    path: String,
    counts: FileCounts,
    correlation_id: String,
}

/// Why ingesting a file stopped early.
enum Stop {
    /// The file cannot be read at all: to `error/`.
    Unreadable(String),
    /// Try again next poll.
    Retry(SftpError),
}

impl From<SftpError> for Stop {
    fn from(e: SftpError) -> Self {
        Stop::Retry(e)
    }
}

impl Poller {
    pub fn new(config: SftpConfig, inbox: Arc<dyn Inbox>, ledger: Arc<dyn Ledger>) -> Poller {
        Poller {
            config,
            inbox,
            ledger,
            sightings: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &SftpConfig {
        &self.config
    }

    /// One poll: connect, list, process every ready file, disconnect. `Err` only when the poll
    /// as a whole failed (connect, host key, listing); per-file problems are in the report.
    pub async fn poll_once(&self) -> Result<PollReport, SftpError> {
        let _one_at_a_time = self.running.lock().await;
        let started_at = Utc::now();
        let conn = Connection::open(&self.config.connection())
            .await
            .inspect_err(|e| self.log_poll_error(e))?;
        let result = self.poll_with(&conn, started_at).await;
        conn.close().await;
        if let Err(e) = &result {
            self.log_poll_error(e);
        }
        result
    }

    /// Connects (host key, login) and stats the polled directory; reads and moves nothing.
    pub async fn healthcheck(&self) -> Result<(), synchub_adapter_sdk::AdapterError> {
        let conn = Connection::open(&self.config.connection()).await?;
        let dir = conn.stat(&self.config.dir).await;
        conn.close().await;
        match dir? {
            Some(_) => Ok(()),
            None => Err(synchub_adapter_sdk::AdapterError::Config(format!(
                "dir: {} does not exist on {}:{}",
                self.config.dir, self.config.host, self.config.port
            ))),
        }
    }

    fn log_poll_error(&self, e: &SftpError) {
        if e.needs_operator() {
            tracing::error!(endpoint = %self.config.endpoint_id, error = %e, "SFTP poll refused, an operator must act.");
        } else {
            tracing::warn!(endpoint = %self.config.endpoint_id, error = %e, "SFTP poll failed, will retry next poll.");
        }
    }

    async fn poll_with(
        &self,
        conn: &Connection,
        started_at: DateTime<Utc>,
    ) -> Result<PollReport, SftpError> {
        let cfg = &self.config;
        let entries = conn.list(&cfg.dir).await?;
        let present: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut candidates: Vec<&RemoteEntry> = entries
            .iter()
            .filter(|e| e.is_file && self.is_candidate(&e.name))
            .collect();
        candidates.sort_by(|a, b| a.name.cmp(&b.name));

        let mut report = PollReport {
            started_at,
            finished_at: started_at,
            files_found: candidates.len(),
            files_taken: 0,
            waiting: Vec::new(),
            files: Vec::new(),
            errors: Vec::new(),
        };
        let mut ready: Vec<&RemoteEntry> = Vec::new();
        {
            let mut seen = self.lock_sightings();
            seen.retain(|name, _| present.contains(name.as_str()));
            let now = Instant::now();
            for e in candidates {
                let marker = format!("{}{}", e.name, cfg.marker_suffix);
                let has_marker = present.contains(marker.as_str());
                // Always record the sighting, so a marker-less file's stable clock is running.
                let stable = self.stable(&mut seen, e, now);
                if has_marker || (stable && !cfg.require_marker) {
                    ready.push(e);
                } else {
                    report.waiting.push(e.name.clone());
                }
            }
        }

        for entry in ready {
            if conn.is_closed() {
                report.errors.push(format!(
                    "connection to {} lost; remaining files are taken next poll",
                    conn.host_port()
                ));
                break;
            }
            let file = self.process(conn, entry).await;
            if let Some(e) = &file.error {
                report.errors.push(format!("{}: {e}", file.name));
            }
            if file.outcome != FileStatus::Busy {
                report.files_taken += 1;
            }
            if matches!(
                file.outcome,
                FileStatus::Archived { .. }
                    | FileStatus::AlreadyDone { .. }
                    | FileStatus::Failed { .. }
            ) {
                self.lock_sightings().remove(&file.name);
            }
            report.files.push(file);
        }
        report.finished_at = Utc::now();
        Ok(report)
    }

    fn lock_sightings(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sighting>> {
        self.sightings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Matches the pattern and is none of our own or a partner's by-products.
    fn is_candidate(&self, name: &str) -> bool {
        glob_match(&self.config.pattern, name)
            && !name.starts_with('.')
            && !name.ends_with(&self.config.marker_suffix)
            && !name.ends_with(".part")
            && !name.ends_with(".reason.txt")
    }

    /// Stable = same size and mtime as a sighting at least `stable_secs` ago. A first sighting
    /// is never stable (unless `stable_secs` is 0): a poll cannot tell a finished file from one
    /// still being written.
    fn stable(&self, seen: &mut HashMap<String, Sighting>, e: &RemoteEntry, now: Instant) -> bool {
        let wait = Duration::from_secs(self.config.stable_secs);
        match seen.get(&e.name) {
            Some(s) if s.size == e.size && s.mtime == e.mtime => {
                now.duration_since(s.since) >= wait
            }
            _ => {
                seen.insert(
                    e.name.clone(),
                    Sighting {
                        size: e.size,
                        mtime: e.mtime,
                        since: now,
                    },
                );
                wait.is_zero()
            }
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.config.dir.trim_end_matches('/'))
    }

    async fn process(&self, conn: &Connection, entry: &RemoteEntry) -> FileReport {
        let path = self.path(&entry.name);
        let mut report = FileReport {
            name: entry.name.clone(),
            size: entry.size,
            sha256: None,
            read: 0,
            accepted: 0,
            rejected: 0,
            outcome: FileStatus::LeftInPlace,
            error: None,
        };
        let (sha256, size) = match hash_remote(conn, &path).await {
            Ok(h) => h,
            Err(e) => return self.left_in_place(report, e),
        };
        report.sha256 = Some(sha256.clone());
        report.size = size;
        let facts = FileFacts {
            endpoint: self.config.endpoint_id.clone(),
            name: entry.name.clone(),
            size,
            mtime: entry.mtime,
            sha256,
        };
        let claim = match self.ledger.claim(&facts).await {
            Ok(c) => c,
            Err(e) => return self.left_in_place(report, e.into()),
        };
        match claim {
            ClaimResult::Busy => {
                tracing::info!(endpoint = %self.config.endpoint_id, file = %entry.name, "File is being processed by another instance.");
                report.outcome = FileStatus::Busy;
                report
            }
            ClaimResult::AlreadyDone => match self.move_out(conn, "archive", &entry.name).await {
                Ok(to) => {
                    tracing::info!(endpoint = %self.config.endpoint_id, file = %entry.name, to = %to, "Identical file was processed before, moved out without reading.");
                    report.outcome = FileStatus::AlreadyDone { to };
                    report
                }
                Err(e) => self.left_in_place(report, e),
            },
            ClaimResult::Take {
                resume_after_line,
                counts,
            } => {
                let mut job = FileJob {
                    conn,
                    facts,
                    path,
                    counts,
                    correlation_id: uuid::Uuid::now_v7().to_string(),
                };
                let result = self.ingest(&mut job, resume_after_line).await;
                report.read = job.counts.read;
                report.accepted = job.counts.accepted;
                report.rejected = job.counts.rejected;
                match result {
                    Ok(to) => {
                        tracing::info!(endpoint = %self.config.endpoint_id, file = %entry.name, to = %to, read = job.counts.read, accepted = job.counts.accepted, rejected = job.counts.rejected, "File archived.");
                        report.outcome = FileStatus::Archived { to };
                        report
                    }
                    Err(Stop::Retry(e)) => self.left_in_place(report, e),
                    Err(Stop::Unreadable(reason)) => match self.refuse(&mut job, &reason).await {
                        Ok(to) => {
                            tracing::warn!(endpoint = %self.config.endpoint_id, file = %entry.name, to = %to, reason = %reason, "Unreadable file moved to error/.");
                            report.outcome = FileStatus::Failed { to };
                            report.error = Some(reason);
                            report
                        }
                        Err(e) => self.left_in_place(report, e),
                    },
                }
            }
        }
    }

    fn left_in_place(&self, mut report: FileReport, e: SftpError) -> FileReport {
        tracing::warn!(endpoint = %self.config.endpoint_id, file = %report.name, error = %e, "File left in place, will retry next poll.");
        report.outcome = FileStatus::LeftInPlace;
        report.error = Some(e.to_string());
        report
    }

    /// Streams the rows into the journal; returns where the file was archived.
    async fn ingest(&self, job: &mut FileJob<'_>, resume_after: u64) -> Result<String, Stop> {
        let cfg = &self.config;
        let file = job.conn.open_read(&job.path).await?;
        let mut rows = RowReader::new(
            tokio::io::BufReader::with_capacity(READ_BUFFER, file),
            cfg.charset,
            cfg.delimiter,
            job.conn.timeout(),
            format!("read {}", job.path),
        );
        let header_row = rows
            .next_row()
            .await?
            .ok_or_else(|| Stop::Unreadable("the file is empty: no header line".to_owned()))?;
        let header = self.header(&header_row).map_err(Stop::Unreadable)?;
        let sha8 = job.facts.sha256[..8].to_owned();
        let shape = BatchShape {
            header: &header,
            record_type: &cfg.record_type,
            name: job.facts.name.clone(),
            sha8,
            resume_after,
            size: cfg.batch_size.max(1),
        };
        // The next batch is read and parsed from the server while the current one is written:
        // network, parsing and the store's writer then work at the same time. One batch at the
        // writer at a time keeps the file's rows in order.
        let mut batch = Batch::new(&header_row.text);
        let (read, mut eof) = shape.fill(&mut rows, &mut batch).await?;
        job.counts.read += read;
        while !batch.records.is_empty() {
            let mut next = Batch::new(&header_row.text);
            let (written, more) = tokio::join!(self.submit(job, batch), async {
                if eof {
                    Ok((0, true))
                } else {
                    shape.fill(&mut rows, &mut next).await
                }
            });
            written?;
            let (read, at_end) = more?;
            job.counts.read += read;
            eof = at_end;
            batch = next;
        }
        let (sha_now, _) = rows.digest();
        if sha_now != job.facts.sha256 {
            return Err(Stop::Retry(SftpError::ChangedWhileReading {
                name: job.facts.name.clone(),
                before: job.facts.sha256.clone(),
                after: sha_now,
            }));
        }
        let to = self.move_out(job.conn, "archive", &job.facts.name).await?;
        self.ledger
            .finish(
                &job.facts,
                &job.counts,
                &FileOutcome::Archived { to: to.clone() },
            )
            .await
            .map_err(SftpError::from)?;
        Ok(to)
    }

    /// Header names, or why the file is not a CSV file we can read.
    fn header(&self, row: &Row) -> Result<Vec<String>, String> {
        let fields = row.fields.as_ref().map_err(|p| format!("header: {p}"))?;
        if row.text.chars().any(|c| c.is_control() && c != '\t') {
            return Err("header: control characters; not a text CSV file".to_owned());
        }
        let names: Vec<String> = fields.iter().map(|f| f.trim().to_owned()).collect();
        let mut seen = HashSet::new();
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() {
                return Err(format!("header: column {} has no name", i + 1));
            }
            if !seen.insert(n.as_str()) {
                return Err(format!("header: column {n:?} appears twice"));
            }
        }
        let missing: Vec<&str> = self
            .config
            .required_columns
            .iter()
            .filter(|c| !seen.contains(c.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "header: required columns missing: {} (header is: {})",
                missing.join(", "),
                row.text
            ));
        }
        Ok(names)
    }

    /// Journals one batch (returns after commit), then records the progress in the ledger.
    async fn submit(&self, job: &mut FileJob<'_>, batch: Batch) -> Result<(), SftpError> {
        let cfg = &self.config;
        let first = batch.records.first().map_or(0, |r| r.index);
        let last = batch.records.last().map_or(0, |r| r.index);
        let mut envelope = Envelope::new(
            cfg.endpoint_id.clone(),
            ContentType::Csv,
            Bytes::from(batch.body),
        )
        .with_header(HEADER_FILE, job.facts.name.clone())
        .with_header(HEADER_PATH, job.path.clone())
        .with_header(HEADER_LINES, format!("{first}-{last}"))
        .with_header(HEADER_SHA256, job.facts.sha256.clone())
        .with_header(HEADER_CHARSET, cfg.charset.as_str());
        envelope.principal = cfg.principal.clone();
        envelope.correlation_id = Some(job.correlation_id.clone());
        let receipt = self
            .inbox
            .accept(Submission {
                envelope,
                records: batch.records,
            })
            .await?;
        for verdict in &receipt.records {
            match verdict {
                RecordVerdict::Accepted { .. } => job.counts.accepted += 1,
                RecordVerdict::Rejected { .. } => job.counts.rejected += 1,
            }
        }
        self.ledger
            .progress(&job.facts, last as u64, &job.counts)
            .await?;
        Ok(())
    }

    /// Journals the refusal, moves the file to `error/` with its reason beside it, and closes the
    /// ledger row. Any failure leaves the file for the next poll.
    async fn refuse(&self, job: &mut FileJob<'_>, reason: &str) -> Result<String, SftpError> {
        let conn = job.conn;
        let prefix = read_prefix(conn, &job.path, REFUSAL_PREFIX).await?;
        let mut envelope = Envelope::new(
            self.config.endpoint_id.clone(),
            ContentType::Bytes,
            Bytes::from(prefix),
        )
        .with_header(HEADER_FILE, job.facts.name.clone())
        .with_header(HEADER_PATH, job.path.clone())
        .with_header(HEADER_SHA256, job.facts.sha256.clone())
        .with_header(HEADER_CHARSET, self.config.charset.as_str());
        if job.facts.size > REFUSAL_PREFIX {
            envelope = envelope.with_header(HEADER_TRUNCATED, "true");
        }
        envelope.principal = self.config.principal.clone();
        envelope.correlation_id = Some(job.correlation_id.clone());
        self.inbox
            .reject(envelope, "unreadable_file", reason)
            .await?;
        let to = self.move_out(conn, "error", &job.facts.name).await?;
        let text = format!(
            "{}\nfile: {}\nsha256: {}\nsize: {}\nat: {}\n",
            reason,
            job.facts.name,
            job.facts.sha256,
            job.facts.size,
            Utc::now().to_rfc3339()
        );
        crate::writer::put_small(conn, &format!("{to}.reason.txt"), text.as_bytes()).await?;
        self.ledger
            .finish(
                &job.facts,
                &job.counts,
                &FileOutcome::Failed {
                    reason: reason.to_owned(),
                    to: to.clone(),
                },
            )
            .await?;
        Ok(to)
    }

    /// Moves `name` (and its marker, if any) into `<dir>/<sub>/`, adding `.<YYYYMMDDHHMMSS>` when
    /// that name is taken there. Returns the new path.
    async fn move_out(
        &self,
        conn: &Connection,
        sub: &str,
        name: &str,
    ) -> Result<String, SftpError> {
        let subdir = self.path(sub);
        conn.ensure_dir(&subdir).await?;
        let from = self.path(name);
        let mut to = format!("{subdir}/{name}");
        let stamp = Utc::now().format("%Y%m%d%H%M%S").to_string();
        let mut attempt = 0;
        loop {
            if conn.stat(&to).await?.is_none() {
                match conn.rename(&from, &to).await {
                    Ok(()) => break,
                    // Someone created the target between stat and rename: pick the next name.
                    Err(_) if attempt < 20 && conn.stat(&to).await?.is_some() => {}
                    Err(e) => return Err(e),
                }
            }
            attempt += 1;
            to = if attempt == 1 {
                format!("{subdir}/{name}.{stamp}")
            } else {
                format!("{subdir}/{name}.{stamp}-{attempt}")
            };
        }
        let marker = self.path(&format!("{name}{}", self.config.marker_suffix));
        if conn.stat(&marker).await?.is_some() {
            let moved = format!("{to}{}", self.config.marker_suffix);
            if conn.rename(&marker, &moved).await.is_err() {
                conn.remove(&marker).await?;
            }
        }
        Ok(to)
    }
}

/// How a file's rows become batches.
struct BatchShape<'a> {
    header: &'a [String],
    record_type: &'a str,
    name: String,
    /// The file's content hash, shortened: part of every row's `source_ref`.
    sha8: String,
    /// Lines up to here were journaled by an earlier attempt.
    resume_after: u64,
    size: usize,
}

impl BatchShape<'_> {
    /// Reads rows into `batch` until it is full or the file ends: (rows read, at the end).
    async fn fill<R: tokio::io::AsyncBufRead + Unpin>(
        &self,
        rows: &mut RowReader<R>,
        batch: &mut Batch,
    ) -> Result<(u64, bool), SftpError> {
        let mut read = 0;
        while batch.records.len() < self.size {
            let Some(row) = rows.next_row().await? else {
                return Ok((read, true));
            };
            if row.line <= self.resume_after {
                continue;
            }
            read += 1;
            let body = match &row.fields {
                Ok(fields) => record_body(self.header, fields, row.line),
                Err(problem) => Err(vec![FieldError::new("", problem.clone())]),
            };
            batch.push(
                RecordIn {
                    index: usize::try_from(row.line).unwrap_or(usize::MAX),
                    record_type: self.record_type.to_owned(),
                    source_ref: Some(format!("{}@{}:{}", self.name, self.sha8, row.line)),
                    body,
                },
                &row,
            );
        }
        Ok((read, false))
    }
}

/// Rows waiting to be journaled together, with the raw text of the batch.
struct Batch {
    records: Vec<RecordIn>,
    body: Vec<u8>,
}

impl Batch {
    fn new(header_text: &str) -> Batch {
        let mut body = Vec::with_capacity(64 * 1024);
        body.extend_from_slice(header_text.as_bytes());
        body.push(b'\n');
        Batch {
            records: Vec::new(),
            body,
        }
    }

    fn push(&mut self, record: RecordIn, row: &Row) {
        self.body.extend_from_slice(row.text.as_bytes());
        self.body.push(b'\n');
        self.records.push(record);
    }
}

/// A row as a JSON object keyed by the header names, in header order. Empty cells are left out
/// (absent, not `null`): the mapping then treats "not given" and "given empty" alike.
fn record_body(
    header: &[String],
    fields: &[String],
    line: u64,
) -> Result<serde_json::Value, Vec<FieldError>> {
    if fields.len() != header.len() {
        return Err(vec![FieldError::new(
            "",
            format!(
                "line {line}: expected {} fields, found {}",
                header.len(),
                fields.len()
            ),
        )]);
    }
    let mut obj = serde_json::Map::with_capacity(header.len());
    for (name, value) in header.iter().zip(fields) {
        if !value.is_empty() {
            obj.insert(name.clone(), serde_json::Value::String(value.clone()));
        }
    }
    Ok(serde_json::Value::Object(obj))
}

/// sha256 and length of a remote file, by one streaming pass.
async fn hash_remote(conn: &Connection, path: &str) -> Result<(String, u64), SftpError> {
    let mut f = conn.open_read(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut total = 0u64;
    loop {
        let n = timed(conn.timeout(), || format!("read {path}"), f.read(&mut buf))
            .await?
            .map_err(|source| SftpError::Io {
                op: format!("read {path}"),
                source,
            })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// The first `max` bytes of a remote file.
async fn read_prefix(conn: &Connection, path: &str, max: u64) -> Result<Vec<u8>, SftpError> {
    let f = conn.open_read(path).await?;
    let mut out = Vec::new();
    timed(
        conn.timeout(),
        || format!("read {path}"),
        f.take(max).read_to_end(&mut out),
    )
    .await?
    .map_err(|source| SftpError::Io {
        op: format!("read {path}"),
        source,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_keyed_by_header_and_leave_out_empty_cells() {
        let h = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let v = record_body(&h, &["1".into(), "".into(), "3".into()], 2).unwrap();
        assert_eq!(v.to_string(), r#"{"a":"1","c":"3"}"#);
        let e = record_body(&h, &["1".into()], 7).unwrap_err();
        assert_eq!(e[0].reason, "line 7: expected 3 fields, found 1");
    }
}
