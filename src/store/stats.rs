//! Flow figures per minute, route and dealer (received, refused records, delivered, refused
//! deliveries) and the last successful delivery per route and dealer, counted in the same
//! transaction as the messages and outcomes they count. The overview reads at most a day of these
//! small rows; counting the journal itself took seconds once it held a million messages.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::{Value, json};
use sqlx::{AnyConnection, AnyPool, Row};

use super::StoreError;
use super::exec::Exec;
use super::rows::{Arg, insert_rows};

const RECEIVED: usize = 0;
const REJECTED_RECORDS: usize = 1;
const DELIVERED: usize = 2;
const REJECTED: usize = 3;

/// Concurrent PostgreSQL transactions spread their increments over this many rows per minute,
/// so they do not queue on one row lock; readers sum them. SQLite has one writer: shard 0.
const PG_SHARDS: i64 = 8;

/// Counts gathered while a transaction writes; [`Tally::write`] adds them in two statements.
/// Keys are sorted, so two transactions lock shared rows in the same order (no deadlock).
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<(String, i64, String), [i64; 4]>,
    fresh: BTreeMap<(String, String), i64>,
}

impl Tally {
    /// A journaled message on each of its routes.
    pub fn message<'r>(
        &mut self,
        routes: impl IntoIterator<Item = &'r str>,
        dealer: Option<&str>,
        at_ms: i64,
        rejected: bool,
    ) {
        for route in routes.into_iter().filter(|r| !r.is_empty()) {
            let c = self.slot(route, dealer, at_ms);
            c[RECEIVED] += 1;
            if rejected {
                c[REJECTED_RECORDS] += 1;
            }
        }
    }

    /// A delivery that reached `status` (only final outcomes count).
    pub fn outcome(&mut self, route: &str, dealer: Option<&str>, at_ms: i64, status: &str) {
        let i = match status {
            "delivered" => DELIVERED,
            "rejected" => REJECTED,
            _ => return,
        };
        self.slot(route, dealer, at_ms)[i] += 1;
        if i == DELIVERED
            && let Some(d) = dealer
        {
            let last = self
                .fresh
                .entry((route.to_string(), d.to_string()))
                .or_insert(at_ms);
            *last = (*last).max(at_ms);
        }
    }

    fn slot(&mut self, route: &str, dealer: Option<&str>, at_ms: i64) -> &mut [i64; 4] {
        self.counts
            .entry((
                route.to_string(),
                at_ms.div_euclid(60_000),
                dealer.unwrap_or_default().to_string(),
            ))
            .or_default()
    }

    /// Adds the counts to the store (nothing to do costs no statement).
    pub async fn write(self, conn: &mut dyn Exec) -> Result<(), StoreError> {
        let shard = if conn.is_sqlite() {
            0
        } else {
            rand::rng().random_range(0..PG_SHARDS)
        };
        if !self.counts.is_empty() {
            let rows = self
                .counts
                .into_iter()
                .map(|((route, minute, dealer), c)| {
                    vec![
                        route.into(),
                        minute.into(),
                        dealer.into(),
                        shard.into(),
                        c[RECEIVED].into(),
                        c[REJECTED_RECORDS].into(),
                        c[DELIVERED].into(),
                        c[REJECTED].into(),
                    ]
                })
                .collect::<Vec<Vec<Arg>>>();
            insert_rows(
                conn,
                "flow_stats",
                &[
                    "route",
                    "minute",
                    "dealer_code",
                    "shard",
                    "received",
                    "rejected_records",
                    "delivered",
                    "rejected",
                ],
                rows,
                "ON CONFLICT (route, minute, dealer_code, shard) DO UPDATE SET \
                 received = flow_stats.received + excluded.received, \
                 rejected_records = flow_stats.rejected_records + excluded.rejected_records, \
                 delivered = flow_stats.delivered + excluded.delivered, \
                 rejected = flow_stats.rejected + excluded.rejected",
            )
            .await?;
        }
        if !self.fresh.is_empty() {
            let rows = self
                .fresh
                .into_iter()
                .map(|((route, dealer), at)| {
                    vec![route.into(), dealer.into(), shard.into(), at.into()]
                })
                .collect::<Vec<Vec<Arg>>>();
            insert_rows(
                conn,
                "flow_freshness",
                &["route", "dealer_code", "shard", "last_success"],
                rows,
                "ON CONFLICT (route, dealer_code, shard) DO UPDATE SET last_success = \
                 CASE WHEN excluded.last_success > flow_freshness.last_success \
                 THEN excluded.last_success ELSE flow_freshness.last_success END",
            )
            .await?;
        }
        Ok(())
    }
}

/// Received, refused records, delivered and refused deliveries per route since `since_ms`
/// (minute resolution), for one dealer when `dealer` is given: `{route: {received, …}}`.
pub async fn figures_since(
    pool: &AnyPool,
    since_ms: i64,
    dealer: Option<&str>,
) -> Result<BTreeMap<String, Value>, StoreError> {
    let rows = sqlx::query(
        // PostgreSQL sums BIGINTs as NUMERIC, which the Any driver does not read as i64.
        "SELECT route, CAST(SUM(received) AS BIGINT), CAST(SUM(rejected_records) AS BIGINT), \
         CAST(SUM(delivered) AS BIGINT), CAST(SUM(rejected) AS BIGINT) FROM flow_stats WHERE minute >= $1 AND ($2 = '' OR dealer_code = $2) GROUP BY route",
    )
    .bind(since_ms.div_euclid(60_000))
    .bind(dealer.unwrap_or(""))
    .fetch_all(pool)
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let n = |i: usize| -> Result<i64, StoreError> {
            Ok(r.try_get::<Option<i64>, _>(i)?.unwrap_or(0))
        };
        out.insert(
            r.try_get::<String, _>(0)?,
            json!({"received": n(1)?, "rejected_records": n(2)?, "delivered": n(3)?, "rejected": n(4)?}),
        );
    }
    Ok(out)
}

/// Last successful delivery per (route, dealer), limited to `scope` when given.
pub async fn freshness_by_dealer(
    pool: &AnyPool,
    scope: Option<&str>,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT route, dealer_code, MAX(last_success) FROM flow_freshness \
         WHERE ($1 = '' OR dealer_code = $1) GROUP BY route, dealer_code ORDER BY route, dealer_code",
    )
    .bind(scope.unwrap_or(""))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// Drops minutes older than `before_ms` (the overview looks back one day).
pub async fn purge(conn: &mut AnyConnection, before_ms: i64) -> Result<u64, StoreError> {
    let r = sqlx::query("DELETE FROM flow_stats WHERE minute < $1")
        .bind(before_ms.div_euclid(60_000))
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_count_on_each_route_and_outcomes_only_when_final() {
        let mut t = Tally::default();
        t.message(["a", "b"], Some("D1"), 120_000, false);
        t.message(["a"], Some("D1"), 150_000, true);
        t.message([], None, 150_000, true);
        t.outcome("a", Some("D1"), 170_000, "delivered");
        t.outcome("a", Some("D1"), 175_000, "pending");
        t.outcome("a", None, 60_000, "rejected");
        assert_eq!(t.counts[&("a".into(), 2, "D1".into())], [2, 1, 1, 0]);
        assert_eq!(t.counts[&("b".into(), 2, "D1".into())], [1, 0, 0, 0]);
        assert_eq!(t.counts[&("a".into(), 1, String::new())], [0, 0, 0, 1]);
        assert_eq!(t.counts.len(), 3);
        assert_eq!(t.fresh[&("a".into(), "D1".into())], 170_000);
    }
}
