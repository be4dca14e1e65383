//! The accept queue: concurrent submissions (REST requests, SOAP batches, AMQP bursts) staged by
//! their callers are merged into one `commit_staged` write, so 32 partners posting at once cost
//! the store one set of statements, not 32. What limits a single-writer store is statements per
//! commit, not rows per statement.

use std::sync::Arc;

use synchub_adapter_sdk::RecordVerdict;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use super::journal::{self, Staged};
use super::{Dialect, Store, StoreError};

/// Most records merged into one write: bounds how long one merged commit holds the writer (and
/// how long a CRM batch or a delivery outcome queued behind it waits).
const MAX_RECORDS: usize = 2_000;
/// Most submissions merged into one write.
const MAX_PARTS: usize = 256;

type Reply = oneshot::Sender<Result<Vec<RecordVerdict>, StoreError>>;

struct Item {
    staged: Staged,
    reply: Reply,
}

/// Hands staged submissions to the merging task; cheap to clone.
#[derive(Clone)]
pub struct AcceptQueue {
    tx: mpsc::Sender<Item>,
}

impl AcceptQueue {
    /// Starts the merging task on the current runtime. `wake` is notified after every commit
    /// (new deliveries for the dispatcher).
    pub fn start(store: Store, wake: Arc<Notify>) -> AcceptQueue {
        let (tx, rx) = mpsc::channel::<Item>(4096);
        tokio::spawn(run(store, wake, rx));
        AcceptQueue { tx }
    }

    /// Journals `staged` (merged with whatever else is waiting) and returns its verdicts after
    /// the commit.
    pub async fn accept(&self, staged: Staged) -> Result<Vec<RecordVerdict>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Item { staged, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the accept queue has stopped".into()))?;
        rx.await.map_err(|_| {
            StoreError::Unavailable("the accept queue stopped before the commit".into())
        })?
    }
}

async fn run(store: Store, wake: Arc<Notify>, mut rx: mpsc::Receiver<Item>) {
    // SQLite: the writer commits queued jobs together anyway, so two merged writes in flight
    // keep it busy while the next batch gathers. PostgreSQL runs each write on its own pooled
    // connection: more of them overlap.
    let in_flight = Arc::new(Semaphore::new(match store.dialect() {
        Dialect::Sqlite => 2,
        Dialect::Postgres => 8,
    }));
    let mut carry: Option<Item> = None;
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
        let mut records = first.staged.records();
        let mut batch = vec![first];
        while batch.len() < MAX_PARTS {
            match rx.try_recv() {
                Ok(item) if records + item.staged.records() > MAX_RECORDS => {
                    carry = Some(item);
                    break;
                }
                Ok(item) => {
                    records += item.staged.records();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        let wake = wake.clone();
        let (parts, replies): (Vec<Staged>, Vec<(usize, Reply)>) = batch
            .into_iter()
            .map(|i| {
                let n = i.staged.records();
                (i.staged, (n, i.reply))
            })
            .unzip();
        let spare = (parts.len() > 1).then(|| parts.clone());
        if store.dialect() == Dialect::Sqlite {
            // Queued here, in arrival order; only the wait for the commit runs apart.
            let queued = enqueue(&store, parts).await;
            tokio::spawn(async move {
                let result = match queued {
                    Ok(waiting) => waiting.await,
                    Err(e) => Err(e),
                };
                finish(&store, &wake, result, spare, replies).await;
                drop(permit);
            });
        } else {
            tokio::spawn(async move {
                let result = match enqueue(&store, parts).await {
                    Ok(waiting) => waiting.await,
                    Err(e) => Err(e),
                };
                finish(&store, &wake, result, spare, replies).await;
                drop(permit);
            });
        }
    }
}

type Waiting = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<RecordVerdict>, StoreError>> + Send>,
>;

async fn enqueue(store: &Store, parts: Vec<Staged>) -> Result<Waiting, StoreError> {
    let staged = Staged::merge(parts);
    let waiting = store
        .enqueue(move |c| Box::pin(async move { journal::commit_staged(c, staged).await }))
        .await?;
    Ok(Box::pin(waiting))
}

/// Hands every submission its verdicts. A merged write that failed for a reason other than the
/// store being unavailable (a record the database refuses) is split: each submission is written
/// on its own, so one bad submission cannot fail its neighbours.
async fn finish(
    store: &Store,
    wake: &Notify,
    result: Result<Vec<RecordVerdict>, StoreError>,
    spare: Option<Vec<Staged>>,
    replies: Vec<(usize, Reply)>,
) {
    match (result, spare) {
        (Ok(verdicts), _) => {
            wake.notify_one();
            // The parts' verdicts come back in part order (see `Staged::merge`).
            let mut verdicts = verdicts.into_iter();
            for (n, reply) in replies {
                let _ = reply.send(Ok(verdicts.by_ref().take(n).collect()));
            }
        }
        (Err(e), Some(parts)) if !matches!(e, StoreError::Unavailable(_)) => {
            tracing::warn!(error = %e, submissions = parts.len(), "A merged accept failed; journaling its submissions one by one.");
            for (part, (_, reply)) in parts.into_iter().zip(replies) {
                let one = match enqueue(store, vec![part]).await {
                    Ok(waiting) => waiting.await,
                    Err(e) => Err(e),
                };
                if one.is_ok() {
                    wake.notify_one();
                }
                let _ = reply.send(one);
            }
        }
        (Err(e), _) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
