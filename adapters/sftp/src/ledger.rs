//! The file ledger: which files (by content hash) were claimed, how far they got, and how they
//! ended. The runtime implements [`Ledger`] on its store; [`MemoryLedger`] is the in-process one
//! for tests and single-instance tools.
//!
//! The ledger is what makes two hub instances never process the same file at once, an identical
//! re-upload have no second effect, and a restart resume after the last committed batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

/// What the poller knows about a file when it claims it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FileFacts {
    /// The endpoint id (`osm_dealers_sftp_in`).
    pub endpoint: String,
    /// File name inside the polled directory.
    pub name: String,
    /// Bytes hashed (the size of the content the sha256 is of).
    pub size: u64,
    /// Remote mtime, seconds since the epoch.
    pub mtime: u32,
    /// Lower-case hex sha256 of the whole content.
    pub sha256: String,
}

/// Rows of one file so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileCounts {
    /// Data rows read (excluding the header).
    pub read: u64,
    /// Rows the journal accepted (including ones it recognised as duplicates).
    pub accepted: u64,
    /// Rows rejected: unreadable rows and rows the journal refused.
    pub rejected: u64,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    /// Process it. Rows up to and including `resume_after_line` were committed by an earlier
    /// attempt (0 = start at the top); `counts` are that attempt's totals to continue from.
    Take {
        resume_after_line: u64,
        counts: FileCounts,
    },
    /// This endpoint already archived a file with this sha256: move it out, do not read it.
    AlreadyDone,
    /// Another instance holds a live claim: leave the file alone this poll.
    Busy,
}

/// How a file ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FileOutcome {
    /// Every row committed; the file was moved to `to`.
    Archived { to: String },
    /// The file could not be read at all; it was moved to `to` with a `.reason.txt` beside it.
    Failed { reason: String, to: String },
}

/// Why the ledger could not answer (store down). The poller leaves the file in place.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ledger unavailable: {0}")]
pub struct LedgerError(pub String);

/// The ledger as the poller uses it. Every method returns after the store committed.
///
/// Claims are per `(endpoint, sha256)`: a claim is *live* while its holder keeps calling
/// `progress`; an implementation expires a claim not renewed for its lease time (minutes), so a
/// crashed instance's file is taken over. A claim held by the same instance is handed back with
/// its resume point (`Take`), which is how a poll after a failure resumes.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Claims the file for this instance, or says why not. Only `Archived` files count as done;
    /// a `Failed` one is taken again if it reappears unchanged (it fails again, visibly).
    async fn claim(&self, facts: &FileFacts) -> Result<ClaimResult, LedgerError>;

    /// Records that every row up to and including `line` is committed in the journal, with the
    /// totals so far, and renews the claim.
    async fn progress(
        &self,
        facts: &FileFacts,
        line: u64,
        counts: &FileCounts,
    ) -> Result<(), LedgerError>;

    /// Records the end of the file and releases the claim. `Archived` makes the content done for
    /// this endpoint for good.
    async fn finish(
        &self,
        facts: &FileFacts,
        counts: &FileCounts,
        outcome: &FileOutcome,
    ) -> Result<(), LedgerError>;
}

/// One row of the in-memory ledger, as the dashboard would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub facts: FileFacts,
    pub holder: String,
    pub last_line: u64,
    pub counts: FileCounts,
    pub outcome: Option<FileOutcome>,
}

#[derive(Default)]
struct MemoryState {
    /// (endpoint, sha256) → row and when its claim was last renewed.
    rows: HashMap<(String, String), (LedgerRow, Instant)>,
    claims: usize,
}

/// In-memory [`Ledger`]. Clones share the state; [`MemoryLedger::instance`] gives a handle that
/// claims as another hub instance, to test "two instances, one file".
#[derive(Clone)]
pub struct MemoryLedger {
    // std Mutex: never held across an .await.
    state: Arc<Mutex<MemoryState>>,
    holder: String,
    lease: Duration,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        MemoryLedger::new()
    }
}

impl MemoryLedger {
    /// An empty ledger held by instance `"local"`, with a 10 minute lease.
    pub fn new() -> MemoryLedger {
        MemoryLedger {
            state: Arc::default(),
            holder: "local".to_owned(),
            lease: Duration::from_secs(600),
        }
    }

    /// A handle on the same ledger that claims as instance `holder`.
    pub fn instance(&self, holder: impl Into<String>) -> MemoryLedger {
        MemoryLedger {
            state: self.state.clone(),
            holder: holder.into(),
            lease: self.lease,
        }
    }

    /// The same ledger with another lease time (tests of claim expiry).
    pub fn with_lease(mut self, lease: Duration) -> MemoryLedger {
        self.lease = lease;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every row, in no particular order.
    pub fn rows(&self) -> Vec<LedgerRow> {
        self.lock().rows.values().map(|(r, _)| r.clone()).collect()
    }

    /// The row of the file with this content on this endpoint.
    pub fn row(&self, endpoint: &str, sha256: &str) -> Option<LedgerRow> {
        self.lock()
            .rows
            .get(&(endpoint.to_owned(), sha256.to_owned()))
            .map(|(r, _)| r.clone())
    }

    /// How many claims were answered `Take` so far.
    pub fn claims_taken(&self) -> usize {
        self.lock().claims
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn claim(&self, facts: &FileFacts) -> Result<ClaimResult, LedgerError> {
        let mut st = self.lock();
        let key = (facts.endpoint.clone(), facts.sha256.clone());
        let now = Instant::now();
        if let Some((row, renewed)) = st.rows.get_mut(&key) {
            match &row.outcome {
                Some(FileOutcome::Archived { .. }) => return Ok(ClaimResult::AlreadyDone),
                Some(FileOutcome::Failed { .. }) => {
                    row.outcome = None;
                    row.last_line = 0;
                    row.counts = FileCounts::default();
                }
                None if row.holder != self.holder && now.duration_since(*renewed) < self.lease => {
                    return Ok(ClaimResult::Busy);
                }
                None => {}
            }
            row.holder = self.holder.clone();
            row.facts = facts.clone();
            *renewed = now;
            let answer = ClaimResult::Take {
                resume_after_line: row.last_line,
                counts: row.counts,
            };
            st.claims += 1;
            return Ok(answer);
        }
        st.rows.insert(
            key,
            (
                LedgerRow {
                    facts: facts.clone(),
                    holder: self.holder.clone(),
                    last_line: 0,
                    counts: FileCounts::default(),
                    outcome: None,
                },
                now,
            ),
        );
        st.claims += 1;
        Ok(ClaimResult::Take {
            resume_after_line: 0,
            counts: FileCounts::default(),
        })
    }

    async fn progress(
        &self,
        facts: &FileFacts,
        line: u64,
        counts: &FileCounts,
    ) -> Result<(), LedgerError> {
        let mut st = self.lock();
        let (row, renewed) = st
            .rows
            .get_mut(&(facts.endpoint.clone(), facts.sha256.clone()))
            .ok_or_else(|| LedgerError(format!("no claim for {}", facts.name)))?;
        row.last_line = line;
        row.counts = *counts;
        *renewed = Instant::now();
        Ok(())
    }

    async fn finish(
        &self,
        facts: &FileFacts,
        counts: &FileCounts,
        outcome: &FileOutcome,
    ) -> Result<(), LedgerError> {
        let mut st = self.lock();
        let (row, _) = st
            .rows
            .get_mut(&(facts.endpoint.clone(), facts.sha256.clone()))
            .ok_or_else(|| LedgerError(format!("no claim for {}", facts.name)))?;
        row.counts = *counts;
        row.outcome = Some(outcome.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sha: &str) -> FileFacts {
        FileFacts {
            endpoint: "ep".into(),
            name: "A.csv".into(),
            size: 10,
            mtime: 1,
            sha256: sha.into(),
        }
    }

    #[tokio::test]
    async fn resume_point_done_and_busy() {
        let a = MemoryLedger::new();
        let b = a.instance("other");
        let f = facts("aa");
        assert!(matches!(
            a.claim(&f).await.unwrap(),
            ClaimResult::Take {
                resume_after_line: 0,
                ..
            }
        ));
        let counts = FileCounts {
            read: 3,
            accepted: 2,
            rejected: 1,
        };
        a.progress(&f, 4, &counts).await.unwrap();
        assert_eq!(b.claim(&f).await.unwrap(), ClaimResult::Busy);
        assert_eq!(
            a.claim(&f).await.unwrap(),
            ClaimResult::Take {
                resume_after_line: 4,
                counts
            }
        );
        a.finish(&f, &counts, &FileOutcome::Archived { to: "x".into() })
            .await
            .unwrap();
        assert_eq!(b.claim(&f).await.unwrap(), ClaimResult::AlreadyDone);
        // Other content under the same name is a new file.
        assert!(matches!(
            b.claim(&facts("bb")).await.unwrap(),
            ClaimResult::Take { .. }
        ));
    }

    #[tokio::test]
    async fn expired_claim_is_taken_over_and_failed_is_retaken() {
        let a = MemoryLedger::new().with_lease(Duration::from_millis(10));
        let b = a.instance("other");
        let f = facts("aa");
        a.claim(&f).await.unwrap();
        a.progress(&f, 7, &FileCounts::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            b.claim(&f).await.unwrap(),
            ClaimResult::Take {
                resume_after_line: 7,
                ..
            }
        ));
        b.finish(
            &f,
            &FileCounts::default(),
            &FileOutcome::Failed {
                reason: "r".into(),
                to: "e".into(),
            },
        )
        .await
        .unwrap();
        assert!(matches!(
            a.claim(&f).await.unwrap(),
            ClaimResult::Take {
                resume_after_line: 0,
                ..
            }
        ));
    }
}
