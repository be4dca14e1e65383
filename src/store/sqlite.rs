//! Embedded SQLite backend: one writer thread owns the only write connections and commits every
//! job waiting in its queue in one transaction (group commit: one fsync per batch instead of one
//! per accept is what makes thousands of durable accepts per second possible on one disk). The
//! hot jobs (accept, claim, outcome, CRM apply) run on the thread's own rusqlite connection; the
//! rest on sqlx's. A second thread checkpoints the WAL into the database file beside it.

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor};
use tokio::sync::{Mutex, mpsc, oneshot};

/// std Mutex for the sender: held only to clone or take it, never across an await.
type SenderSlot = std::sync::Mutex<Option<mpsc::Sender<Job>>>;

use super::exec::LiteConn;
use super::{Backend, Dialect, Job, JobDone, StoreError};
use crate::telemetry::metrics_names as m;

/// Most jobs committed in one transaction: bounds how long one commit holds the write lock and
/// how much work a failed commit has to report back.
const MAX_GROUP: usize = 512;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub struct SqliteBackend {
    pool: AnyPool,
    /// `None` once closed; jobs submitted after that are refused as unavailable.
    jobs: SenderSlot,
    /// Fires when the writer thread has committed its last job and closed its connection.
    writer: Mutex<Option<oneshot::Receiver<()>>>,
}

/// Pragmas for the writer's connections. `synchronous = FULL` in WAL mode: a commit is on disk
/// when it returns, so a 202 survives power loss, not only a process crash. 16 MiB of page cache
/// per writer connection: enough for the hot index pages; a bigger cache only grew the hub with
/// its data. The writer's own automatic checkpoint is only a backstop, at 4,096 WAL pages
/// (16 MiB) instead of SQLite's 1,000: normally the checkpoint thread ([`spawn_checkpointer`])
/// has copied most of the log by then. The backstop also keeps the log bounded: a passive
/// checkpoint beside a busy writer rarely finds the log whole, while the writer's own runs
/// between its commits, completes, and lets the next commit start the log over.
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; \
                       PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384; \
                       PRAGMA wal_autocheckpoint = 4096;";

impl SqliteBackend {
    pub async fn open(url: &str) -> Result<SqliteBackend, StoreError> {
        let url = ensure_create_mode(url);
        if let Some(path) = file_path(&url)
            && let Some(dir) = std::path::Path::new(&path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let opts = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let mut writer = AnyConnection::connect_with(&opts).await?;
        writer.execute(PRAGMAS).await?;
        MIGRATOR
            .run(&mut writer)
            .await
            .map_err(|e| StoreError::Query(format!("migrations failed: {e}")))?;

        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // 2 MiB of page cache per reader (up to 8 of them): a reader's cache fills
                    // with every page a scan touches (an extract, a count over a big table) and
                    // stays full, so reader caches grew the hub with the size of its data; the
                    // operating system's page cache holds the file anyway.
                    conn.execute("PRAGMA busy_timeout = 10000; PRAGMA query_only = ON; PRAGMA cache_size = -2048;")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;

        let (lite, checkpoints) = match file_path(&url) {
            Some(path) => (
                Some(LiteConn::open(&path, PRAGMAS)?),
                Some(spawn_checkpointer(path)?),
            ),
            None => (None, None),
        };

        let (tx, rx) = mpsc::channel::<Job>(8192);
        // The writer runs on a thread and runtime of its own. Every statement is a round trip to
        // SQLite's worker thread; on the shared runtime each return waited in the run queue
        // behind hundreds of ready HTTP tasks, and the single writer, not SQLite, was the limit.
        let (stopped_tx, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")))?;
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                runtime.block_on(writer_loop(Writer { any: writer, lite }, rx));
                // The checkpoint thread stops with the writer (its channel closes).
                if let Some((stop, thread)) = checkpoints {
                    drop(stop);
                    let _ = thread.join();
                }
                let _ = stopped_tx.send(());
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")))?;
        Ok(SqliteBackend {
            pool,
            jobs: std::sync::Mutex::new(Some(tx)),
            writer: Mutex::new(Some(stopped)),
        })
    }
}

/// Starts the thread that checkpoints the WAL beside the writer: copying committed pages into
/// the database file (and its fsync) was a tenth of the single writer's time, and here it runs
/// on the other core. Passive only: it never waits for or blocks the writer or a reader (a
/// RESTART checkpoint holds the write lock while a long extract reads). Stops when the
/// returned sender is dropped.
fn spawn_checkpointer(
    path: String,
) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>), StoreError> {
    let conn = rusqlite::Connection::open(&path)?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            let mut failing = false;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(Duration::from_millis(100))
            {
                // A failure (disk full) is logged once per run of failures: the backstop
                // still checkpoints, and the writer reports the disk to its callers.
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "WAL checkpoint failed.");
                    }
                    Err(_) => {}
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((tx, thread))
}

fn ensure_create_mode(url: &str) -> String {
    if url.contains(":memory:") || url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

fn file_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}

/// The writer's two connections to one file: sqlx's, for jobs written against sqlx, and its own
/// rusqlite one for [`Job::Exec`] jobs (absent for an in-memory database, where a second
/// connection would open a second database: those jobs then run on sqlx's).
struct Writer {
    any: AnyConnection,
    lite: Option<LiteConn>,
}

impl Writer {
    fn side(&self, job: &Job) -> Side {
        match job {
            Job::Exec(_) | Job::Background(_) if self.lite.is_some() => Side::Lite,
            _ => Side::Any,
        }
    }

    /// Transaction control on one side.
    async fn control(&mut self, side: Side, sql: &'static str) -> Result<(), StoreError> {
        match (side, self.lite.as_ref()) {
            (Side::Lite, Some(lite)) => lite.batch(sql),
            _ => self
                .any
                .execute(sql)
                .await
                .map(|_| ())
                .map_err(StoreError::from),
        }
    }

    async fn run(&mut self, job: Job) -> JobDone {
        match (job, self.lite.as_mut()) {
            (Job::Exec(job) | Job::Background(job), Some(lite)) => job(lite).await,
            (Job::Exec(job) | Job::Background(job), None) => job(&mut self.any).await,
            (Job::Any(job), _) => job(&mut self.any).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Any,
    Lite,
}

/// Jobs taken from the queue, split by whether a caller is waiting for them.
#[derive(Default)]
struct Waiting {
    /// Callers waiting (accepts, claims, outcomes, operators), in queue order.
    now: Vec<Job>,
    /// [`Job::Background`] work, in queue order.
    later: VecDeque<Job>,
}

impl Waiting {
    fn take(&mut self, job: Job) {
        match job {
            Job::Background(_) => self.later.push_back(job),
            job => self.now.push(job),
        }
    }

    /// Moves what is queued now into `self`, without waiting.
    fn fill(&mut self, rx: &mut mpsc::Receiver<Job>) {
        while self.now.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => self.take(job),
                Err(_) => break,
            }
        }
    }
}

/// Takes turns between the two kinds of job: a group of everything waiting callers queued,
/// then background work until a caller waits again (at least one job), and so on. Callers' jobs
/// are concurrent with the background ones (each submitter waits for its own), so running them
/// first reorders nothing anyone could observe; among themselves each kind keeps queue order.
async fn writer_loop(mut writer: Writer, mut rx: mpsc::Receiver<Job>) {
    let mut waiting = Waiting::default();
    let mut background_turn = false;
    loop {
        if waiting.now.is_empty() && waiting.later.is_empty() {
            match rx.recv().await {
                Some(job) => waiting.take(job),
                None => break,
            }
        }
        waiting.fill(&mut rx);
        let t0 = std::time::Instant::now();
        let jobs;
        if !waiting.later.is_empty() && (background_turn || waiting.now.is_empty()) {
            background_turn = false;
            jobs = run_background(&mut writer, &mut waiting, &mut rx).await;
        } else {
            background_turn = true;
            jobs = waiting.now.len() as u64;
            run_callers(&mut writer, &mut waiting.now).await;
        }
        metrics::counter!(m::STORE_JOBS).increment(jobs);
        metrics::counter!(m::STORE_BUSY).increment(t0.elapsed().as_micros() as u64);
    }
    drop(writer.lite.take());
    let _ = writer.any.close().await;
}

/// Commits `jobs` in queue order: consecutive jobs of one side share a transaction, and a
/// change of side commits (the two connections cannot share one transaction).
async fn run_callers(writer: &mut Writer, jobs: &mut Vec<Job>) {
    let mut run: Vec<Job> = Vec::with_capacity(jobs.len());
    let mut side = None;
    for job in jobs.drain(..) {
        let s = writer.side(&job);
        if side.is_some_and(|cur| cur != s) {
            run_group(writer, side.unwrap_or(s), &mut run, None).await;
            metrics::counter!(m::STORE_COMMITS).increment(1);
        }
        side = Some(s);
        run.push(job);
    }
    if let Some(s) = side {
        run_group(writer, s, &mut run, None).await;
        metrics::counter!(m::STORE_COMMITS).increment(1);
    }
}

/// Runs background jobs in one transaction, one after another, until none is left or a caller's
/// job has arrived: then it commits, so that caller waits for at most one background job.
async fn run_background(
    writer: &mut Writer,
    waiting: &mut Waiting,
    rx: &mut mpsc::Receiver<Job>,
) -> u64 {
    let Some(first) = waiting.later.pop_front() else {
        return 0;
    };
    let side = writer.side(&first);
    let mut n = 1u64;
    let mut run = vec![first];
    let mut more = || {
        waiting.fill(rx);
        if !waiting.now.is_empty() {
            return None;
        }
        let next = waiting.later.pop_front()?;
        n += 1;
        Some(next)
    };
    run_group(writer, side, &mut run, Some(&mut more)).await;
    metrics::counter!(m::STORE_COMMITS).increment(1);
    n
}

/// Runs `batch`, then the jobs `more` hands over, in one transaction, and tells each job's
/// caller after COMMIT. `more` is asked each time the jobs so far have run, so it sees jobs that
/// arrived meanwhile; pass `None` for a fixed group.
async fn run_group(
    w: &mut Writer,
    side: Side,
    batch: &mut Vec<Job>,
    mut more: Option<&mut dyn FnMut() -> Option<Job>>,
) {
    // A savepoint per job lets one failing accept roll back alone while its neighbours in the
    // same group commit go through. A single job needs none: the transaction is its own. The
    // transaction and savepoint statements between two jobs go as one: `RELEASE job; SAVEPOINT
    // job` (through sqlx, every statement is a round trip to SQLite's thread).
    let single = batch.len() == 1 && more.is_none();
    let begin = if single {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN IMMEDIATE; SAVEPOINT job"
    };
    if let Err(err) = w.control(side, begin).await {
        // A BEGIN that went through before its SAVEPOINT failed must not stay open.
        let _ = w.control(side, "ROLLBACK").await;
        for job in batch.drain(..) {
            fail_unrun(job, err.clone());
        }
        return;
    }
    let mut pending: VecDeque<Job> = batch.drain(..).collect();
    let mut finishes = Vec::with_capacity(pending.len());
    let mut savepoint_lost: Option<StoreError> = None;
    while let Some(job) = pending.pop_front() {
        if let Some(err) = savepoint_lost.clone() {
            fail_unrun(job, err);
            continue;
        }
        let done = w.run(job).await;
        if pending.is_empty()
            && let Some(more) = more.as_mut()
            && let Some(job) = more()
        {
            pending.push_back(job);
        }
        let last = pending.is_empty();
        if !single {
            let sql = match (done.ok, last) {
                (true, false) => "RELEASE job; SAVEPOINT job",
                (false, false) => "ROLLBACK TO job; RELEASE job; SAVEPOINT job",
                (true, true) => "RELEASE job",
                (false, true) => "ROLLBACK TO job; RELEASE job",
            };
            if let Err(e) = w.control(side, sql).await {
                // Without its savepoint the next job could not be rolled back alone; the jobs
                // not yet run are refused (their callers retry), the ones run are committed.
                tracing::error!(error = %e, "Savepoint handling failed.");
                savepoint_lost = Some(e);
            }
        }
        finishes.push((done.ok, done.finish));
    }
    let all_failed_single = single && finishes.first().is_some_and(|(ok, _)| !ok);
    let end = if all_failed_single {
        "ROLLBACK"
    } else {
        "COMMIT"
    };
    match w.control(side, end).await {
        Ok(()) => {
            for (_, finish) in finishes {
                finish(Ok(()));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, jobs = finishes.len(), "Group commit failed; every job in it is reported failed.");
            let _ = w.control(side, "ROLLBACK").await;
            for (_, finish) in finishes {
                finish(Err(err.clone()));
            }
        }
    }
}

/// Tells the caller of a job that never ran why: its oneshot is dropped inside the job closure,
/// so running it against nothing is impossible; dropping it reports "writer stopped", which we
/// improve on by logging the real cause here.
fn fail_unrun(job: Job, err: StoreError) {
    tracing::warn!(error = %err, "Write job not run.");
    drop(job);
}

#[async_trait]
impl Backend for SqliteBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        let tx = self.jobs.lock().map(|g| g.clone()).unwrap_or(None);
        match tx {
            Some(tx) => tx
                .send(job)
                .await
                .map_err(|_| StoreError::Unavailable("the store writer has stopped".into())),
            None => Err(StoreError::Unavailable("the store is shutting down".into())),
        }
    }

    async fn close(&self) {
        if let Ok(mut g) = self.jobs.lock() {
            g.take();
        }
        if let Some(handle) = self.writer.lock().await.take() {
            let _ = handle.await;
        }
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::rows::Arg;

    /// Writes well below every automatic checkpoint threshold (SQLite's 1,000 pages, the
    /// writer's 4,096) reach the database file only through the checkpoint thread.
    #[tokio::test]
    async fn the_checkpoint_thread_copies_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let store = Store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        // Let the checkpoint of the migrations' pages pass first.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let before = std::fs::metadata(&db).unwrap().len();
        store
            .write_exec(|c| {
                Box::pin(async move {
                    let rows = (0..400)
                        .map(|i| -> Vec<Arg> {
                            vec![
                                i64::from(i).into(),
                                "ops".into(),
                                "x".repeat(4000).into(),
                                "checkpoint".into(),
                            ]
                        })
                        .collect();
                    c.exec_each(
                        "INSERT INTO audit_log (at, username, action, target, channel) VALUES ($1, $2, $3, $4, 'api')",
                        rows,
                    )
                    .await
                })
            })
            .await
            .unwrap();
        let wal = dir.path().join("hub.db-wal");
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 1 << 20,
            "the rows are in the WAL"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut after = before;
        while std::time::Instant::now() < deadline {
            after = std::fs::metadata(&db).unwrap().len();
            if after >= before + (1 << 20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            after >= before + (1 << 20),
            "database file {before} → {after} bytes: the WAL was not checkpointed"
        );
        store.close().await;
    }
}
