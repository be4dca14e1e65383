//! One conformance suite for both store backends (SQLite with group commit, PostgreSQL with
//! SKIP LOCKED): the same scenarios must give the same results on each.

use std::collections::HashSet;

use synchub::store::journal::{self, AttemptRecord, NewDelivery, NewMessage, PreparedRecord};
use synchub::store::ui_sessions::{self, SessionRow};
use synchub::store::{Store, StoreError, now_ms};
use synchub_adapter_sdk::RecordVerdict;
use uuid::Uuid;

use crate::helpers::PgDb;

fn message(kind: &'static str, parent: Option<Uuid>) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        parent_id: parent,
        kind,
        endpoint: "test_in".into(),
        record_type: Some("lead".into()),
        routes: vec!["r".into()],
        received_at: now_ms(),
        correlation_id: None,
        partner: Some("website".into()),
        dealer_code: None,
        source_ref: None,
        status: "accepted",
        reason: None,
        entity_id: None,
        content_type: "json",
        headers: "{}".into(),
        body: b"{}".to_vec(),
    }
}

fn delivery(lane: &str) -> NewDelivery {
    NewDelivery {
        route: "r".into(),
        target: "t".into(),
        lane: Some(lane.into()),
        dealer_code: None,
        max_attempts: 3,
        backoff_ms: 10,
        max_backoff_ms: 100,
        mapping: None,
        mapping_version: None,
        content_type: "json",
        headers: "{}".into(),
        body: b"{}".to_vec(),
    }
}

fn record(parent: Uuid, source_ref: &str, lanes: &[&str]) -> PreparedRecord {
    PreparedRecord {
        message: message("record", Some(parent)),
        errors: None,
        keys: vec![("source_ref", source_ref.to_string())],
        idempotency: Some(("website/lead".into(), source_ref.into())),
        id_rule: Some(journal::IdRule::Lead),
        deliveries: lanes.iter().map(|l| delivery(l)).collect(),
    }
}

async fn accept(store: &Store, recs: Vec<PreparedRecord>) -> Vec<RecordVerdict> {
    let t = message("transport", None);
    store
        .write(move |c| Box::pin(async move { journal::accept(c, &t, &[], recs).await }))
        .await
        .expect("accept commits")
}

async fn claim(store: &Store, limit: i64, lease_ms: i64) -> Vec<journal::Claimed> {
    let d = store.dialect();
    store
        .write(move |c| {
            Box::pin(
                async move { journal::claim(c, d, limit, lease_ms, &journal::Targets::All).await },
            )
        })
        .await
        .expect("claim")
}

fn done(status: &'static str) -> AttemptRecord {
    AttemptRecord {
        started_at: now_ms(),
        duration_ms: 1,
        outcome: if status == "delivered" {
            "delivered"
        } else {
            "retry"
        },
        reason: None,
        cause_chain: vec![],
        remote_ref: None,
        status,
        next_attempt_at: now_ms(),
    }
}

async fn complete(store: &Store, c: &journal::Claimed, status: &'static str) -> bool {
    let c = c.clone();
    store
        .write(move |conn| {
            Box::pin(async move { journal::complete(conn, &c, &done(status)).await })
        })
        .await
        .expect("complete")
}

/// Runs every scenario against `open()`, which yields handles on ONE shared database.
async fn conformance<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Store>,
{
    let store = open().await;

    // Idempotency: the same source_ref from the same partner scope is one record.
    let parent = Uuid::now_v7();
    let v = accept(
        &store,
        vec![
            record(parent, "S-1", &["lane-a"]),
            record(parent, "S-1", &["lane-a"]),
        ],
    )
    .await;
    let (first_id, dup_id) = match (&v[0], &v[1]) {
        (
            RecordVerdict::Accepted {
                id: a,
                duplicate: false,
                ..
            },
            RecordVerdict::Accepted {
                id: b,
                duplicate: true,
                ..
            },
        ) => (a.clone(), b.clone()),
        other => panic!("unexpected verdicts {other:?}"),
    };
    assert_eq!(first_id, dup_id, "a duplicate gets the first record's id");
    assert!(first_id.unwrap().starts_with('L'));

    // Lanes: the second delivery of lane-a waits for the first; lane-b goes at once.
    accept(
        &store,
        vec![
            record(parent, "S-2", &["lane-a"]),
            record(parent, "S-3", &["lane-b"]),
        ],
    )
    .await;
    let c1 = claim(&store, 10, 60_000).await;
    let lanes: Vec<_> = c1.iter().map(|c| c.lane.clone().unwrap()).collect();
    assert_eq!(lanes, ["lane-a", "lane-b"], "one head per lane");
    assert!(
        claim(&store, 10, 60_000).await.is_empty(),
        "lane-a's second waits while its head is in flight"
    );
    // A retry keeps the head in line: still nothing else from lane-a.
    assert!(complete(&store, &c1[0], "pending").await);
    let again = claim(&store, 10, 60_000).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].id, c1[0].id,
        "the failed head is retried before its successor"
    );
    assert!(complete(&store, &again[0], "delivered").await);
    let next = claim(&store, 10, 60_000).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].lane.as_deref(), Some("lane-a"));
    assert!(next[0].id > c1[0].id);
    assert!(complete(&store, &next[0], "delivered").await);
    assert!(complete(&store, &c1[1], "delivered").await);

    // Leases: an expired lease is released and a stale completion is refused.
    accept(&store, vec![record(parent, "S-4", &["lane-c"])]).await;
    let short = claim(&store, 10, 1).await;
    assert_eq!(short.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let released = store
        .write(|c| Box::pin(journal::release_expired_leases(c)))
        .await
        .unwrap();
    assert_eq!(released, 1);
    let retaken = claim(&store, 10, 60_000).await;
    assert_eq!(retaken.len(), 1);
    assert!(
        !complete(&store, &short[0], "delivered").await,
        "the old lease holder may not complete it"
    );
    assert!(complete(&store, &retaken[0], "delivered").await);

    // Group commit: many concurrent writers, one failing job does not fail the others.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let fail = i == 100;
            s.write(move |c| {
                Box::pin(async move {
                    journal::insert_message(c, &message("transport", None)).await?;
                    if fail {
                        return Err(StoreError::Conflict("deliberate".into()));
                    }
                    Ok(())
                })
            })
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 199);

    // Two instances claiming concurrently never get the same delivery.
    let other = open().await;
    let lanes: Vec<String> = (0..300).map(|i| format!("multi-{i}")).collect();
    let recs: Vec<PreparedRecord> = lanes
        .iter()
        .enumerate()
        .map(|(i, l)| record(parent, &format!("M-{i}"), &[l.as_str()]))
        .collect();
    accept(&store, recs).await;
    let (a, b) = tokio::join!(
        async {
            let mut got = Vec::new();
            loop {
                let c = claim(&store, 7, 60_000).await;
                if c.is_empty() {
                    break got;
                }
                got.extend(c.into_iter().map(|c| c.id));
            }
        },
        async {
            let mut got = Vec::new();
            loop {
                let c = claim(&other, 5, 60_000).await;
                if c.is_empty() {
                    break got;
                }
                got.extend(c.into_iter().map(|c| c.id));
            }
        }
    );
    let all: HashSet<i64> = a.iter().chain(b.iter()).copied().collect();
    assert_eq!(all.len(), a.len() + b.len(), "a delivery was claimed twice");
    assert_eq!(all.len(), 300);

    sessions(&store, &other).await;
    other.close().await;
    store.close().await;
}

/// Dashboard sessions: written through one handle, seen through the other; a renewal never
/// shortens a session nor revives an expired one; a sign-in purges expired sessions.
async fn sessions(store: &Store, other: &Store) {
    async fn put(store: &Store, row: SessionRow, now: i64) -> u64 {
        store
            .write(move |c| Box::pin(async move { ui_sessions::insert(c, &row, now).await }))
            .await
            .expect("insert session")
    }
    async fn extend(store: &Store, key: &'static str, to: i64, now: i64) -> bool {
        store
            .write(move |c| Box::pin(async move { ui_sessions::extend(c, key, to, now).await }))
            .await
            .expect("extend session")
    }
    async fn delete(store: &Store, key: &'static str) -> bool {
        store
            .write(move |c| Box::pin(async move { ui_sessions::delete(c, key).await }))
            .await
            .expect("delete session")
    }
    let now = now_ms();
    let row = |key: &str, expires_at: i64| SessionRow {
        id_hash: key.into(),
        operator: "admin".into(),
        credential: "cred".into(),
        csrf: "csrf".into(),
        created_at: now,
        expires_at,
    };
    assert_eq!(put(store, row("old", now - 1), now - 10).await, 0);
    assert_eq!(
        put(other, row("live", now + 1_000), now).await,
        1,
        "expired purged"
    );
    let found = ui_sessions::find(store.pool(), "live").await.unwrap();
    assert_eq!(found, Some(row("live", now + 1_000)));
    assert!(
        ui_sessions::find(other.pool(), "old")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !extend(store, "live", now + 500, now).await,
        "never shortened"
    );
    assert!(extend(other, "live", now + 5_000, now).await);
    let e = ui_sessions::find(store.pool(), "live")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.expires_at, now + 5_000);
    assert!(
        !extend(store, "live", now + 9_000, now + 6_000).await,
        "an expired session is not revived"
    );
    assert!(delete(other, "live").await);
    assert!(!delete(store, "live").await);
    assert!(
        ui_sessions::find(store.pool(), "live")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn sqlite_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", dir.path().display());
    conformance(|| {
        let url = url.clone();
        async move { Store::open(&url).await.expect("open sqlite") }
    })
    .await;
}

#[tokio::test]
async fn postgres_store_conformance() {
    let db = PgDb::create().await;
    let url = db.url.clone();
    conformance(|| {
        let url = url.clone();
        async move { Store::open(&url).await.expect("open postgres") }
    })
    .await;
}
