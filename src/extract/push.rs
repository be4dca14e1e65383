//! The nightly ETL push (IF-09b): on the `schedule` of an outbound SFTP endpoint (the shipped
//! `etl_sftp_out`), write each entity's changes since its last successful push as
//! `<dir>/<entity>_<YYYYMMDD>.csv` plus `<entity>_<YYYYMMDD>.manifest.json`, through the SFTP
//! writer (`.part`, checked close, rename).
//!
//! Rules, per entity:
//! - The window is `(last_cursor, horizon]`; `last_cursor` (table `extract_cursors`) advances to
//!   the window's end only after the manifest is on the server. A failed night therefore leaves
//!   the cursor where it was and the next run's window covers both nights.
//! - A date that already has a manifest for the entity is never overwritten: if that manifest
//!   starts at our cursor, it is ours from a run that died before recording it, and the cursor
//!   moves to its `to_cursor`; otherwise the day's file is done and the new rows wait for the
//!   next date. A data file without a manifest is our own unfinished upload and is replaced.
//! - `YYYYMMDD` is the UTC date of the schedule tick (the schedule is UTC too).
//! - With several hubs on one database, the instance that inserts the tick's `extract_runs` row
//!   runs it; the others skip that tick.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;
use synchub_adapter_sftp::writer::{manifest_json, manifest_name};
use synchub_adapter_sftp::{ManifestInfo, SftpOutboundConfig, SftpWriter};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{Mutex, watch};

use super::{Charset, ENTITIES, Entity, Format, Window};
use crate::settings::{Direction, EndpointConfig, Settings};
use crate::store::{Store, StoreError, now_ms};

/// Largest manifest read back (they are a few hundred bytes).
const MAX_MANIFEST: u64 = 64 * 1024;

/// What one entity's push did.
#[derive(Debug, Clone, Serialize)]
pub struct EntityPush {
    pub entity: String,
    /// `written`, `recovered` (the manifest was there, the cursor caught up) or `skipped`.
    pub outcome: String,
    pub file: Option<String>,
    pub rows: u64,
    pub from_cursor: i64,
    pub to_cursor: i64,
    pub sha256: Option<String>,
    pub note: Option<String>,
}

/// What one run did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub endpoint: String,
    pub tick: String,
    /// `ok`, `failed`, or `not_ours` (another instance ran this tick).
    pub status: String,
    pub error: Option<String>,
    pub entities: Vec<EntityPush>,
}

/// The push of one outbound SFTP endpoint with a schedule.
pub struct PushJob {
    endpoint: String,
    config: SftpOutboundConfig,
    schedule: croner::Cron,
    store: Store,
    owner: String,
    /// A manual run and a scheduled one never overlap on one instance.
    running: Mutex<()>,
}

/// The push job of every outbound SFTP endpoint that has a `schedule` and is enabled.
pub fn from_settings(settings: &Settings, store: &Store) -> Vec<Arc<PushJob>> {
    let mut out = Vec::new();
    for (id, ep) in &settings.endpoints {
        let EndpointConfig::Sftp(s) = ep else {
            continue;
        };
        if s.direction != Direction::Out || !s.enabled {
            continue;
        }
        let Some(schedule) = s
            .schedule
            .as_deref()
            .and_then(|c| crate::settings::parse_cron(c).ok())
        else {
            continue;
        };
        let passphrase = s
            .passphrase_env
            .as_deref()
            .and_then(|var| settings.secrets.get(var))
            .map(|p| p.expose_secret().to_owned());
        let instance = s
            .instance_id
            .clone()
            .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "synchub".to_owned()));
        out.push(Arc::new(PushJob {
            endpoint: id.clone(),
            config: crate::sftp::outbound_config(id, s, passphrase),
            schedule,
            store: store.clone(),
            owner: format!("{instance}/{}/{}", std::process::id(), uuid::Uuid::now_v7()),
            running: Mutex::new(()),
        }));
    }
    out
}

impl PushJob {
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Pushes at every schedule tick until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = Utc::now();
            let Ok(next) = self.schedule.find_next_occurrence(&now, false) else {
                tracing::error!(endpoint = %self.endpoint, "The push schedule has no next occurrence; the push is off.");
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                r = self.push(next) => log_report(&r),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Runs the push for `tick` now (a scheduled occurrence, or "now" for a manual run).
    pub async fn push(&self, tick: DateTime<Utc>) -> PushReport {
        let _one = self.running.lock().await;
        let mut report = PushReport {
            endpoint: self.endpoint.clone(),
            tick: tick.to_rfc3339(),
            status: "ok".into(),
            error: None,
            entities: Vec::new(),
        };
        match claim_tick(
            &self.store,
            &self.endpoint,
            tick.timestamp_millis(),
            &self.owner,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                report.status = "not_ours".into();
                return report;
            }
            Err(e) => {
                report.status = "failed".into();
                report.error = Some(format!("cannot record the run: {e}"));
                return report;
            }
        }
        if let Err(e) = self.push_all(tick, &mut report).await {
            report.status = "failed".into();
            report.error = Some(e);
        }
        let detail = serde_json::to_string(&report.entities).unwrap_or_default();
        let status = report.status.clone();
        let (endpoint, tick_ms, error) = (
            self.endpoint.clone(),
            tick.timestamp_millis(),
            report.error.clone(),
        );
        let recorded = self
            .store
            .write(move |c| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE extract_runs SET status = $1, detail = $2, finished_at = $3 \
                         WHERE endpoint = $4 AND tick = $5",
                    )
                    .bind(status)
                    .bind(match error {
                        Some(e) => json!({"error": e, "entities": serde_json::from_str::<Value>(&detail).unwrap_or_default()}).to_string(),
                        None => detail,
                    })
                    .bind(now_ms())
                    .bind(endpoint)
                    .bind(tick_ms)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(endpoint = %self.endpoint, error = %e, "Could not record the push run's outcome.");
        }
        report
    }

    async fn push_all(&self, tick: DateTime<Utc>, report: &mut PushReport) -> Result<(), String> {
        let date = tick.format("%Y%m%d").to_string();
        let writer = SftpWriter::connect(&self.config.connection(), self.config.dir.clone(), false)
            .await
            .map_err(|e| {
                format!(
                    "cannot connect to {}:{}: {e}",
                    self.config.host, self.config.port
                )
            })?;
        let mut result = Ok(());
        for entity in &ENTITIES {
            match self.push_entity(&writer, entity, &date).await {
                Ok(p) => report.entities.push(p),
                Err(e) => {
                    // The next entities would fail the same way (server gone); their cursors
                    // stay, and the next run covers them.
                    result = Err(format!("{}: {e}", entity.name));
                    break;
                }
            }
        }
        writer.close().await;
        result
    }

    async fn push_entity(
        &self,
        w: &SftpWriter,
        entity: &'static Entity,
        date: &str,
    ) -> Result<EntityPush, String> {
        let cursor = load_cursor(&self.store, &self.endpoint, entity.name)
            .await
            .map_err(|e| e.to_string())?;
        let name = format!("{}_{date}.csv", entity.name);
        let manifest = manifest_name(&name);
        let mut out = EntityPush {
            entity: entity.name.into(),
            outcome: "skipped".into(),
            file: None,
            rows: 0,
            from_cursor: cursor,
            to_cursor: cursor,
            sha256: None,
            note: None,
        };
        let conn = w.connection();
        let manifest_path = w.path(&manifest);
        if conn
            .stat(&manifest_path)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            let there = conn
                .read_small(&manifest_path, MAX_MANIFEST)
                .await
                .map_err(|e| e.to_string())?;
            let doc: Value = serde_json::from_slice(&there).unwrap_or_default();
            let field = |k: &str| doc[k].as_str().and_then(|s| s.parse::<i64>().ok());
            if field("from_cursor") == Some(cursor)
                && let Some(to) = field("to_cursor")
            {
                // Ours, from a run that ended between the manifest and the cursor update.
                save_cursor(
                    &self.store,
                    &self.endpoint,
                    entity.name,
                    to,
                    &name,
                    doc["rows"].as_u64().unwrap_or(0),
                )
                .await
                .map_err(|e| e.to_string())?;
                out.outcome = "recovered".into();
                out.to_cursor = to;
                out.rows = doc["rows"].as_u64().unwrap_or(0);
                out.file = Some(w.path(&name));
                return Ok(out);
            }
            out.note = Some(format!(
                "{manifest_path} already exists: today's file is not replaced; the rows since cursor {cursor} go into the next date's file"
            ));
            return Ok(out);
        }
        let data_path = w.path(&name);
        if conn
            .stat(&data_path)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            // No manifest: an upload of ours that never completed.
            conn.remove(&data_path).await.map_err(|e| e.to_string())?;
        }
        let window = Window::resolve(&self.store, entity, cursor, None, None)
            .await
            .map_err(|e| e.to_string())?;
        let end = window.end;
        let (rows, count) = super::stream(self.store.clone(), window, Format::Csv, Charset::Utf8);
        let written = w
            .put_stream(&name, StreamRead::new(rows))
            .await
            .map_err(|e| e.to_string())?;
        let info = ManifestInfo {
            entity: entity.name.into(),
            rows: count.get(),
            from_cursor: Some(cursor.to_string()),
            to_cursor: Some(end.to_string()),
        };
        w.put_bytes(&manifest, &manifest_json(&written, &info))
            .await
            .map_err(|e| e.to_string())?;
        save_cursor(
            &self.store,
            &self.endpoint,
            entity.name,
            end,
            &name,
            count.get(),
        )
        .await
        .map_err(|e| e.to_string())?;
        out.outcome = "written".into();
        out.file = Some(written.path);
        out.rows = count.get();
        out.to_cursor = end;
        out.sha256 = Some(written.sha256);
        Ok(out)
    }
}

fn log_report(r: &PushReport) {
    match r.status.as_str() {
        "ok" => {
            tracing::info!(endpoint = %r.endpoint, tick = %r.tick, entities = ?r.entities.iter().map(|e| (&e.entity, &e.outcome, e.rows)).collect::<Vec<_>>(), "ETL push done.")
        }
        "not_ours" => {
            tracing::info!(endpoint = %r.endpoint, tick = %r.tick, "ETL push tick taken by another instance.")
        }
        _ => {
            tracing::warn!(endpoint = %r.endpoint, tick = %r.tick, error = ?r.error, "ETL push failed; the next run catches up.")
        }
    }
}

/// Inserts the tick's run row; `true` when this instance inserted it (and so runs the tick).
pub async fn claim_tick(
    store: &Store,
    endpoint: &str,
    tick_ms: i64,
    owner: &str,
) -> Result<bool, StoreError> {
    let (endpoint, owner) = (endpoint.to_owned(), owner.to_owned());
    store
        .write(move |c| {
            Box::pin(async move {
                let n = sqlx::query(
                    "INSERT INTO extract_runs (endpoint, tick, owner, status, started_at) \
                     VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (endpoint, tick) DO NOTHING",
                )
                .bind(endpoint)
                .bind(tick_ms)
                .bind(owner)
                .bind(now_ms())
                .execute(&mut *c)
                .await?
                .rows_affected();
                Ok(n == 1)
            })
        })
        .await
}

/// The entity's last pushed cursor (0 before the first push).
pub async fn load_cursor(store: &Store, endpoint: &str, entity: &str) -> Result<i64, StoreError> {
    let row =
        sqlx::query("SELECT last_cursor FROM extract_cursors WHERE endpoint = $1 AND entity = $2")
            .bind(endpoint)
            .bind(entity)
            .fetch_optional(store.pool())
            .await?;
    Ok(match row {
        Some(r) => r.try_get(0)?,
        None => 0,
    })
}

async fn save_cursor(
    store: &Store,
    endpoint: &str,
    entity: &str,
    cursor: i64,
    file: &str,
    rows: u64,
) -> Result<(), StoreError> {
    let (endpoint, entity, file) = (endpoint.to_owned(), entity.to_owned(), file.to_owned());
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    store
        .write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO extract_cursors (endpoint, entity, last_cursor, last_file, last_rows, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (endpoint, entity) DO UPDATE SET \
                     last_cursor = excluded.last_cursor, last_file = excluded.last_file, \
                     last_rows = excluded.last_rows, updated_at = excluded.updated_at",
                )
                .bind(endpoint)
                .bind(entity)
                .bind(cursor)
                .bind(file)
                .bind(rows)
                .bind(now_ms())
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
        .await
}

/// An extract stream as an `AsyncRead` for the SFTP writer. A store error becomes a read error,
/// so the writer abandons the `.part` instead of renaming a cut-off file into place.
pub struct StreamRead {
    rows: BoxStream<'static, Result<Bytes, StoreError>>,
    buf: Bytes,
}

impl StreamRead {
    pub fn new(rows: BoxStream<'static, Result<Bytes, StoreError>>) -> StreamRead {
        StreamRead {
            rows,
            buf: Bytes::new(),
        }
    }
}

impl AsyncRead for StreamRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = out.remaining().min(self.buf.len());
                out.put_slice(&self.buf[..n]);
                self.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rows.poll_next_unpin(cx)) {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}
