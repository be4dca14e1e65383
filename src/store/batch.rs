//! Merged writes: items handed in by many tasks at once (accepted submissions, delivery outcomes)
//! are written by one store job for all that are waiting, so 32 partners posting at once cost
//! the store one set of statements, not 32. What limits a single-writer store is statements per
//! commit, not rows per statement.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use synchub_adapter_sdk::RecordVerdict;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use super::exec::Exec;
use super::journal::{self, Staged};
use super::{BoxFuture, Dialect, Store, StoreError};

/// Writes a batch of items in one transaction: one output per item, in item order.
pub type BatchWrite<I, O> =
    for<'c> fn(&'c mut dyn Exec, Vec<I>) -> BoxFuture<'c, Result<Vec<O>, StoreError>>;

/// How much one batch may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub items: usize,
    /// Sum of the items' weights (e.g. records of submissions).
    pub weight: usize,
}

type Reply<O> = oneshot::Sender<Result<O, StoreError>>;
type Waiting<O> = Pin<Box<dyn Future<Output = Result<Vec<O>, StoreError>> + Send>>;

/// Hands items to the merging task; cheap to clone.
pub struct WriteQueue<I, O> {
    tx: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> Clone for WriteQueue<I, O> {
    fn clone(&self) -> Self {
        WriteQueue {
            tx: self.tx.clone(),
        }
    }
}

struct Batcher<I, O> {
    store: Store,
    write: BatchWrite<I, O>,
    weight: fn(&I) -> usize,
    /// Notified after every commit (new deliveries for the dispatcher).
    committed: Option<Arc<Notify>>,
}

impl<I: Clone + Send + 'static, O: Send + 'static> WriteQueue<I, O> {
    /// Starts the merging task on the current runtime.
    pub fn start(
        store: Store,
        limits: Limits,
        weight: fn(&I) -> usize,
        write: BatchWrite<I, O>,
        committed: Option<Arc<Notify>>,
    ) -> WriteQueue<I, O> {
        let (tx, rx) = mpsc::channel(4096);
        let batcher = Arc::new(Batcher {
            store,
            write,
            weight,
            committed,
        });
        tokio::spawn(batcher.run(limits, rx));
        WriteQueue { tx }
    }

    /// Writes `item` (merged with whatever else is waiting) and returns its output after the
    /// commit.
    pub async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the write queue has stopped".into()))?;
        rx.await.map_err(|_| {
            StoreError::Unavailable("the write queue stopped before the commit".into())
        })?
    }
}

impl<I: Clone + Send + 'static, O: Send + 'static> Batcher<I, O> {
    async fn run(self: Arc<Self>, limits: Limits, mut rx: mpsc::Receiver<(I, Reply<O>)>) {
        // SQLite: the writer commits queued jobs together anyway, so two merged writes in flight
        // keep it busy while the next batch gathers. PostgreSQL runs each write on its own pooled
        // connection: more of them overlap.
        let sqlite = self.store.dialect() == Dialect::Sqlite;
        let in_flight = Arc::new(Semaphore::new(if sqlite { 2 } else { 8 }));
        let mut carry = None;
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let first = match carry.take() {
                Some(item) => item,
                None => match rx.recv().await {
                    Some(item) => item,
                    None => return,
                },
            };
            let mut weight = (self.weight)(&first.0);
            let mut batch = vec![first];
            while batch.len() < limits.items {
                match rx.try_recv() {
                    Ok(item) if weight + (self.weight)(&item.0) > limits.weight => {
                        carry = Some(item);
                        break;
                    }
                    Ok(item) => {
                        weight += (self.weight)(&item.0);
                        batch.push(item);
                    }
                    Err(_) => break,
                }
            }
            let (items, replies): (Vec<I>, Vec<Reply<O>>) = batch.into_iter().unzip();
            let spare = (items.len() > 1).then(|| items.clone());
            // On SQLite the write is queued here, in arrival order, and only the wait for its
            // commit runs apart; on PostgreSQL queueing is running the transaction.
            let pending: BoxFuture<'static, Result<Waiting<O>, StoreError>> = if sqlite {
                let queued = self.enqueue(items).await;
                Box::pin(async move { queued })
            } else {
                let me = self.clone();
                Box::pin(async move { me.enqueue(items).await })
            };
            let me = self.clone();
            tokio::spawn(async move {
                let result = match pending.await {
                    Ok(waiting) => waiting.await,
                    Err(e) => Err(e),
                };
                me.finish(result, spare, replies).await;
                drop(permit);
            });
        }
    }

    async fn enqueue(&self, items: Vec<I>) -> Result<Waiting<O>, StoreError> {
        let write = self.write;
        let waiting = self.store.enqueue_exec(move |c| write(c, items)).await?;
        Ok(Box::pin(waiting))
    }

    /// Hands every item its output. A merged write that failed for a reason other than the store
    /// being unavailable (a row the database refuses) is split: each item is written on its own,
    /// so one bad item cannot fail its neighbours.
    async fn finish(
        &self,
        result: Result<Vec<O>, StoreError>,
        spare: Option<Vec<I>>,
        replies: Vec<Reply<O>>,
    ) {
        match (result, spare) {
            (Ok(outs), _) => {
                self.notify();
                for (out, reply) in outs.into_iter().zip(replies) {
                    let _ = reply.send(Ok(out));
                }
            }
            (Err(e), Some(items)) if !matches!(e, StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, items = items.len(), "A merged write failed; writing its items one by one.");
                for (item, reply) in items.into_iter().zip(replies) {
                    let one = match self.enqueue(vec![item]).await {
                        Ok(waiting) => waiting.await,
                        Err(e) => Err(e),
                    };
                    if one.is_ok() {
                        self.notify();
                    }
                    let _ = reply.send(one.and_then(|outs| {
                        outs.into_iter().next().ok_or_else(|| {
                            StoreError::Query("a batch write returned no output".into())
                        })
                    }));
                }
            }
            (Err(e), _) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn notify(&self) {
        if let Some(n) = &self.committed {
            n.notify_one();
        }
    }
}

/// Staged submissions merged into one `commit_staged`; each gets its own records' verdicts.
pub type AcceptQueue = WriteQueue<Staged, Vec<RecordVerdict>>;

/// Most submissions, and records, merged into one write: bounds how long one merged commit holds
/// the writer (and how long a CRM batch or a delivery outcome queued behind it waits).
const ACCEPT_LIMITS: Limits = Limits {
    items: 256,
    weight: 2_000,
};

/// Starts the accept queue; `wake` is notified after every commit.
pub fn accept_queue(store: Store, wake: Arc<Notify>) -> AcceptQueue {
    WriteQueue::start(
        store,
        ACCEPT_LIMITS,
        Staged::records,
        commit_parts,
        Some(wake),
    )
}

fn commit_parts(
    conn: &mut dyn Exec,
    parts: Vec<Staged>,
) -> BoxFuture<'_, Result<Vec<Vec<RecordVerdict>>, StoreError>> {
    Box::pin(async move {
        let sizes: Vec<usize> = parts.iter().map(Staged::records).collect();
        // The parts' verdicts come back in part order (see `Staged::merge`).
        let mut verdicts = journal::commit_staged(conn, Staged::merge(parts))
            .await?
            .into_iter();
        Ok(sizes
            .into_iter()
            .map(|n| verdicts.by_ref().take(n).collect())
            .collect())
    })
}
