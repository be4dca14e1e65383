//! Scheduled jobs run once per tick across hub instances sharing a store: whichever instance
//! records the tick first in `schedule_ticks` runs it, the others skip it.
//!
//! Instances on one PostgreSQL database all sleep until the same cron occurrence and wake
//! together; without this each would run the SFTP poll, the purge and the escalation pass.
//! The ledgers behind those jobs already keep a second run from doing harm (a file is claimed
//! once, an escalation is raised once), but a second run still lists the partner's directory,
//! takes locks and logs as if it worked, which confuses whoever reads the logs at 3 a.m.

use std::sync::OnceLock;

use crate::store::{Store, StoreError, now_ms};

/// This process among the instances: host, pid and a random part (a restarted process on the
/// same host is another owner).
pub fn owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "synchub".to_owned());
        format!(
            "{host}/{}/{}",
            std::process::id(),
            &uuid::Uuid::now_v7().simple().to_string()[24..]
        )
    })
}

/// Claims tick `tick_ms` of `job` for this instance; `false` when another instance has it.
pub async fn claim(store: &Store, job: &str, tick_ms: i64) -> Result<bool, StoreError> {
    let job = job.to_owned();
    store
        .write(move |c| {
            Box::pin(async move {
                let n = sqlx::query(
                    "INSERT INTO schedule_ticks (job, tick, owner, claimed_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (job, tick) DO NOTHING",
                )
                .bind(job)
                .bind(tick_ms)
                .bind(owner())
                .bind(now_ms())
                .execute(&mut *c)
                .await?
                .rows_affected();
                Ok(n == 1)
            })
        })
        .await
}

/// Drops tick records older than `cutoff_ms` (the purge job calls it; ticks are only compared
/// with the next one, so a week of them is plenty).
pub async fn forget_before(store: &Store, cutoff_ms: i64) -> Result<u64, StoreError> {
    store
        .write(move |c| {
            Box::pin(async move {
                Ok(sqlx::query("DELETE FROM schedule_ticks WHERE tick < $1")
                    .bind(cutoff_ms)
                    .execute(&mut *c)
                    .await?
                    .rows_affected())
            })
        })
        .await
}

/// Whether to run tick `tick_ms` of `job` here, logging why not.
pub async fn ours(store: &Store, job: &str, tick_ms: i64) -> bool {
    match claim(store, job, tick_ms).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::debug!(job, tick_ms, "Another instance runs this tick.");
            false
        }
        Err(e) => {
            tracing::warn!(job, error = %e, "Could not claim the schedule tick; skipping it.");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tick_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        assert!(claim(&store, "sftp_poll:x", 60_000).await.unwrap());
        assert!(!claim(&store, "sftp_poll:x", 60_000).await.unwrap());
        assert!(claim(&store, "sftp_poll:x", 120_000).await.unwrap());
        assert!(claim(&store, "purge", 60_000).await.unwrap());
        assert_eq!(forget_before(&store, 100_000).await.unwrap(), 2);
        assert!(claim(&store, "sftp_poll:x", 60_000).await.unwrap());
    }
}
