//! The durable store: one `Backend` trait with two implementations (embedded SQLite with a
//! group-committing writer task, and PostgreSQL for scale-out) and the `Store` handle the rest of
//! the runtime uses. All SQL is shared between the two (epoch-millisecond BIGINTs, TEXT, BLOB)
//! and runs through sqlx's `Any` driver; the few dialect differences are named where they occur.

pub mod audit;
pub mod batch;
pub mod deliveries;
pub mod exec;
pub mod journal;
pub mod postgres;
pub mod queries;
pub mod rows;
pub mod sqlite;
pub mod stats;
pub mod ui_sessions;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::AnyConnection;
use sqlx::AnyPool;
use tokio::sync::oneshot;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors of the store. Cloneable, because one failed group commit fails every job in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot take writes right now (down, disk full, writer stopped): transient.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A query failed for a reason that retrying will not fix.
    #[error("store query failed: {0}")]
    Query(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A caller-level conflict (e.g. an approval already decided).
    #[error("conflict: {0}")]
    Conflict(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => {
                let msg = db.message().to_ascii_lowercase();
                // Disk full, read-only or locked databases clear up on their own: report them as
                // transient so partners get 503 and resend instead of a permanent error.
                if msg.contains("full")
                    || msg.contains("readonly")
                    || msg.contains("locked")
                    || msg.contains("i/o")
                    || db
                        .code()
                        .is_some_and(|c| c.starts_with("08") || c.starts_with("57"))
                {
                    StoreError::Unavailable(e.to_string())
                } else {
                    StoreError::Query(e.to_string())
                }
            }
            _ => StoreError::Query(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What a write job hands back to the backend: whether it succeeded (so its savepoint is kept) and
/// how to tell its caller once the enclosing transaction's fate is known.
pub struct JobDone {
    pub ok: bool,
    pub finish: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// A unit of write work run inside a transaction the backend owns.
pub enum Job {
    /// Work written against sqlx (the CRM store, operator actions, schedules).
    Any(AnyJob),
    /// Work written against [`exec::Exec`] only (accept, claim, outcome): on SQLite it runs on
    /// the writer's own connection, without a round trip per statement.
    Exec(ExecJob),
    /// [`Job::Exec`] work no client is waiting on (the dispatcher's CRM batches, tens of
    /// milliseconds each): the SQLite writer commits the jobs of waiting callers (a 202) before
    /// it, in a transaction of their own, and takes turns between the two kinds so neither
    /// starves.
    Background(ExecJob),
}

pub type AnyJob = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, JobDone> + Send>;
pub type ExecJob = Box<dyn for<'c> FnOnce(&'c mut dyn exec::Exec) -> BoxFuture<'c, JobDone> + Send>;

/// What a job's result becomes: kept (and its value sent after COMMIT) or rolled back.
fn job_done<T: Send + 'static>(
    result: Result<T, StoreError>,
    tx: oneshot::Sender<Result<T, StoreError>>,
) -> JobDone {
    match result {
        Ok(v) => JobDone {
            ok: true,
            finish: Box::new(move |committed| {
                let _ = tx.send(committed.map(|()| v));
            }),
        },
        Err(e) => JobDone {
            ok: false,
            finish: Box::new(move |_| {
                let _ = tx.send(Err(e));
            }),
        },
    }
}

/// The wait for a queued job's commit.
async fn committed<T>(rx: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    rx.await.map_err(|_| {
        StoreError::Unavailable(
            "the write was not committed: the store writer failed to run it (see the log)".into(),
        )
    })?
}

/// The two storage engines. They differ only in how write jobs reach the database.
#[async_trait]
pub trait Backend: Send + Sync {
    fn dialect(&self) -> Dialect;
    /// Pool for reads (SQLite: WAL readers beside the single writer).
    fn pool(&self) -> &AnyPool;
    /// Runs `job` in a transaction; the job's `finish` is called after COMMIT (or with the error).
    async fn submit(&self, job: Job) -> Result<(), StoreError>;
    /// Stops accepting jobs and waits until the queued ones are committed.
    async fn close(&self);
}

/// The store handle: cheap to clone, shared by inbound adapters, the dispatcher and the HTTP API.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens the store named by `url` (`sqlite://...` or `postgres://...`) and runs migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend: Arc<dyn Backend> =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                Arc::new(postgres::PgBackend::connect(url).await?)
            } else if url.starts_with("sqlite:") {
                Arc::new(sqlite::SqliteBackend::open(url).await?)
            } else {
                return Err(StoreError::Query(format!(
                    "unsupported store url '{url}': expected sqlite://<file> or postgres://..."
                )));
            };
        Ok(Store { backend })
    }

    pub fn dialect(&self) -> Dialect {
        self.backend.dialect()
    }

    pub fn pool(&self) -> &AnyPool {
        self.backend.pool()
    }

    /// Runs `f` inside a write transaction and returns its value only after COMMIT. On SQLite,
    /// concurrent callers share one transaction (group commit); each job is isolated by a
    /// savepoint, so one failing job does not fail the others.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.enqueue(f).await?.await
    }

    /// Queues `f` for the writer and returns at once with what waits for its commit, so a caller
    /// that queues several writes decides their order (the writer runs them in queue order)
    /// without waiting for each commit in turn.
    pub async fn enqueue<T, F>(
        &self,
        f: F,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: AnyJob = Box::new(move |conn: &mut AnyConnection| {
            Box::pin(async move { job_done(f(conn).await, tx) })
        });
        self.backend.submit(Job::Any(job)).await?;
        Ok(committed(rx))
    }

    /// [`Store::write`] for work written against [`exec::Exec`] alone: on SQLite it runs on
    /// the writer's own connection, statement by statement on the writer's thread.
    pub async fn write_exec<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn exec::Exec) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.enqueue_exec(f).await?.await
    }

    /// [`Store::write_exec`] for long work no client waits on (see [`Job::Background`]).
    pub async fn write_background<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn exec::Exec) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: ExecJob = Box::new(move |conn: &mut dyn exec::Exec| {
            Box::pin(async move { job_done(f(conn).await, tx) })
        });
        self.backend.submit(Job::Background(job)).await?;
        committed(rx).await
    }

    /// [`Store::enqueue`] for [`exec::Exec`] work.
    pub async fn enqueue_exec<T, F>(
        &self,
        f: F,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn exec::Exec) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: ExecJob = Box::new(move |conn: &mut dyn exec::Exec| {
            Box::pin(async move { job_done(f(conn).await, tx) })
        });
        self.backend.submit(Job::Exec(job)).await?;
        Ok(committed(rx))
    }

    /// Ready = reachable and migrated (migrations run in `open`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.backend.close().await;
    }
}

/// Takes PostgreSQL advisory lock `key` until the transaction ends (a no-op on SQLite, whose
/// single writer already serialises), for read-decide-write steps that instances sharing one
/// database must not interleave.
pub async fn advisory_xact_lock(conn: &mut dyn exec::Exec, key: i64) -> Result<(), StoreError> {
    if !conn.is_sqlite() {
        // Wrapped in a SELECT of a constant: the Any driver cannot decode `void`.
        conn.exec(
            "SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l",
            vec![key.into()],
        )
        .await?;
    }
    Ok(())
}

/// Current time in epoch milliseconds, the store's time unit.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
