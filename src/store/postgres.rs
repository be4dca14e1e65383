//! PostgreSQL backend for scale-out: several hub instances share one database. Each write job
//! runs in its own transaction from the pool (PostgreSQL does its own group commit across
//! sessions); delivery claims use `FOR UPDATE SKIP LOCKED` so instances never take the same row.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::AnyPool;
use sqlx::ConnectOptions;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use super::{Backend, Dialect, Job, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

pub struct PgBackend {
    pool: AnyPool,
}

impl PgBackend {
    pub async fn connect(url: &str) -> Result<PgBackend, StoreError> {
        let opts = AnyConnectOptions::from_str(url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(24)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        // Migrations take an advisory lock in sqlx, so instances starting together do not race.
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Query(format!("migrations failed: {e}")))?;
        Ok(PgBackend { pool })
    }
}

#[async_trait]
impl Backend for PgBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = match job {
            Job::Any(job) => job(&mut tx).await,
            Job::Exec(job) | Job::Background(job) => job(&mut *tx).await,
        };
        if done.ok {
            let committed = tx.commit().await.map_err(StoreError::from);
            (done.finish)(committed);
        } else {
            let _ = tx.rollback().await;
            (done.finish)(Ok(()));
        }
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
