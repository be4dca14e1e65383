//! The CRM change log (`crm_changes`): rows appended in the CRM writer's own transaction, and the
//! horizon up to which a reader may hand them out without ever skipping one that commits later.
//!
//! Why a horizon at all: extracts are cursored by `seq`, and an ETL job resumes "after seq N".
//! That is only correct if, once a reader has seen seq N, no row with a lower seq can still
//! appear.
//!
//! - SQLite: one writer task commits everything, so every uncommitted seq is above every
//!   committed one. The horizon is simply the highest visible seq.
//! - PostgreSQL: a sequence hands out numbers in call order, but transactions commit in any
//!   order: T1 takes seq 10, T2 takes seq 11 and commits first; a reader then sees 11 but not 10.
//!   We keep `seq` as the cursor and compute a safe horizon instead:
//!   1. `M` = the highest visible seq. Every seq below `M` was allocated before `M` was, hence
//!      before this read, by a transaction that at that moment already held its
//!      `RowExclusiveLock` on `crm_changes` (taken when its INSERT started, before `nextval`).
//!   2. `V` = the virtual transaction ids holding `RowExclusiveLock` on `crm_changes` now (after
//!      step 1). A transaction that owns a seq `<= M` and has not finished is in `V`; one that
//!      finished already is visible to any later statement (or rolled back: its seqs never
//!      appear).
//!   3. Wait until every transaction of `V` has ended (they are short CRM batches; writers that
//!      start later only take seqs above `M`, so this never starves under load). Then every seq
//!      `<= M` is final and `M` is the horizon.
//!
//!   If a writer stays open longer than [`WAIT`], the extract answers "busy, retry" rather than
//!   guess. Compared with stamping transaction ids and filtering on
//!   `pg_snapshot_xmin(pg_current_snapshot())`, this keeps one integer cursor that is also the
//!   order of the rows, and waits only for writers of this table in this database (the snapshot
//!   xmin also waits for every unrelated long transaction on the whole server).

use std::time::Duration;

use sqlx::{AnyPool, Row};

use crate::store::exec::Exec;
use crate::store::rows::{Arg, insert_rows};
use crate::store::{Dialect, StoreError};

/// How long a reader waits for open CRM writers before answering busy.
pub const WAIT: Duration = Duration::from_secs(3);

/// Starts the message of the "writers still open" error, so the API can answer it as busy.
pub const BUSY: &str = "extract busy: ";

/// What happened to a record in one change-log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    /// A customer headquarters erased (`crm::removal`): a tombstone naming only the id.
    Delete,
    /// A duplicate customer merged into another: a tombstone, the record as last seen plus
    /// `merged_into`.
    Merge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
            Op::Merge => "merge",
        }
    }
}

/// One change to append.
#[derive(Debug, Clone)]
pub struct Change {
    pub entity: String,
    pub entity_id: String,
    pub version: i64,
    pub op: Op,
    /// The record's data as JSON text.
    pub data: String,
    pub changed_at: i64,
}

/// Appends `changes` in the caller's transaction, in as few multi-row INSERTs as the bind limit
/// allows (the CRM apply path is benchmarked: one statement per batch, not per record).
pub async fn append(conn: &mut dyn Exec, changes: Vec<Change>) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<Arg>> = changes
        .into_iter()
        .map(|c| {
            vec![
                c.entity.into(),
                c.entity_id.into(),
                c.version.into(),
                c.op.as_str().into(),
                c.data.into(),
                c.changed_at.into(),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "crm_changes",
        &["entity", "entity_id", "version", "op", "data", "changed_at"],
        rows,
        "",
    )
    .await?;
    Ok(())
}

/// The highest seq every reader may hand out now: every change at or below it is committed (or
/// rolled back for good). See the module comment for the PostgreSQL reasoning.
pub async fn horizon(pool: &AnyPool, dialect: Dialect) -> Result<i64, StoreError> {
    horizon_waiting(pool, dialect, WAIT).await
}

pub async fn horizon_waiting(
    pool: &AnyPool,
    dialect: Dialect,
    wait: Duration,
) -> Result<i64, StoreError> {
    let max: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM crm_changes")
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    if dialect == Dialect::Sqlite {
        return Ok(max);
    }
    // Must run after the MAX above (see step 2 of the module comment).
    let open: Vec<String> = sqlx::query(
        "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND relation = 'crm_changes'::regclass AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid()",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>(0))
    .collect::<Result<_, _>>()?;
    if open.is_empty() {
        return Ok(max);
    }
    let list: Vec<String> = (1..=open.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'relation' AND relation = 'crm_changes'::regclass \
         AND virtualtransaction IN ({})",
        list.join(",")
    );
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
        for v in &open {
            q = q.bind(v.as_str());
        }
        let still: i64 = q.fetch_one(pool).await?.try_get(0)?;
        if still == 0 {
            return Ok(max);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Unavailable(format!(
                "{BUSY}{still} CRM write transaction(s) have been open for more than {} s; the extract \
                 cannot yet tell which changes are final, retry shortly",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows of the log compacted per write transaction: short enough that live traffic and the
/// extracts' horizon never wait long behind the compaction.
const COMPACT_CHUNK: i64 = 5_000;

/// Compacts the log: drops the upserts older than `before_ms` that a later change of the same
/// record superseded (a newer version, or a tombstone), except rows a nightly push has not
/// written yet. The latest version of every record and every tombstone stay, so an extract from
/// cursor 0 still yields the whole current state; a window re-pulled from before `before_ms`
/// may lack the intermediate versions. Returns the rows dropped.
pub async fn compact(store: &crate::store::Store, before_ms: i64) -> Result<u64, StoreError> {
    // Where each entity's slowest nightly push stands, read once: a push that advances meanwhile
    // only makes more rows eligible, so the older figure is the safe one.
    let pushed =
        sqlx::query("SELECT entity, MIN(last_cursor) FROM extract_cursors GROUP BY entity")
            .fetch_all(store.pool())
            .await?;
    let mut unpushed = Vec::new();
    for r in pushed {
        let (name, cursor): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        if let Some(e) = super::ENTITIES.iter().find(|e| e.name == name) {
            unpushed.push(format!("(entity = '{}' AND seq > {cursor})", e.store));
        }
    }
    let unpushed = if unpushed.is_empty() {
        String::new()
    } else {
        format!(" AND NOT ({})", unpushed.join(" OR "))
    };
    let (mut after, mut dropped) = (0i64, 0u64);
    loop {
        let unpushed = unpushed.clone();
        let (last, n) = store
            .write(move |c| {
                Box::pin(async move {
                    let last: Option<i64> = sqlx::query(
                        "SELECT MAX(seq) FROM (SELECT seq FROM crm_changes WHERE seq > $1 \
                         AND changed_at < $2 ORDER BY seq LIMIT $3) AS s",
                    )
                    .bind(after)
                    .bind(before_ms)
                    .bind(COMPACT_CHUNK)
                    .fetch_one(&mut *c)
                    .await?
                    .try_get(0)?;
                    let Some(last) = last else {
                        return Ok((None, 0));
                    };
                    let n = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM crm_changes WHERE seq > $1 AND seq <= $2 AND changed_at < $3 \
                         AND op = 'upsert' \
                         AND NOT EXISTS (SELECT 1 FROM crm_records r WHERE r.entity = crm_changes.entity \
                           AND r.id = crm_changes.entity_id AND r.version <= crm_changes.version){unpushed}"
                    )))
                    .bind(after)
                    .bind(last)
                    .bind(before_ms)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    Ok((Some(last), n))
                })
            })
            .await?;
        dropped += n;
        match last {
            Some(l) => after = l,
            None => return Ok(dropped),
        }
    }
}
