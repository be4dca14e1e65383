//! Flow gauges for Prometheus: backlog size and age, retrying, parked and freshness per route,
//! read from the journal on a timer so `/metrics` answers instantly and alerts (see
//! `config/monitoring/`) see the same figures as the dashboard.

use std::collections::HashMap;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::{AnyPool, Row};
use tokio::sync::watch;

use crate::store::{Store, StoreError, now_ms};
use crate::telemetry::metrics_names as m;

/// What the gauges show for one route.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlowGauge {
    pub backlog: i64,
    pub oldest_waiting_ms: Option<i64>,
    pub retrying: i64,
    pub parked: i64,
    pub last_success_ms: Option<i64>,
}

/// The gauges of every route, in two grouped queries plus one indexed `MAX` per route
/// (`deliveries_route_status` serves all three).
pub async fn flow_gauges(
    pool: &AnyPool,
    routes: &[String],
) -> Result<HashMap<String, FlowGauge>, StoreError> {
    let mut out: HashMap<String, FlowGauge> = routes
        .iter()
        .map(|r| (r.clone(), FlowGauge::default()))
        .collect();
    let rows = sqlx::query(
        "SELECT route, status, COUNT(*), MIN(created_at), SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) \
         FROM deliveries WHERE status IN ('pending','in_flight','parked') GROUP BY route, status",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        let route: String = r.try_get(0)?;
        let status: String = r.try_get(1)?;
        let n: i64 = r.try_get(2)?;
        let oldest: Option<i64> = r.try_get(3)?;
        let tried: Option<i64> = r.try_get(4)?;
        let g = out.entry(route).or_default();
        if status == "parked" {
            g.parked += n;
        } else {
            g.backlog += n;
            // A pending delivery that has been tried is waiting for its retry.
            if status == "pending" {
                g.retrying += tried.unwrap_or(0);
            }
            g.oldest_waiting_ms = match (g.oldest_waiting_ms, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    for (route, g) in out.iter_mut() {
        g.last_success_ms = sqlx::query(
            "SELECT MAX(updated_at) FROM deliveries WHERE route = $1 AND status = 'delivered'",
        )
        .bind(route.as_str())
        .fetch_one(pool)
        .await?
        .try_get::<Option<i64>, _>(0)?;
    }
    Ok(out)
}

/// Sets the gauges from one reading.
pub fn publish(gauges: &HashMap<String, FlowGauge>, now: i64) {
    for (route, g) in gauges {
        metrics::gauge!(m::BACKLOG, "route" => route.clone()).set(g.backlog as f64);
        metrics::gauge!(m::RETRYING, "route" => route.clone()).set(g.retrying as f64);
        metrics::gauge!(m::PARKED, "route" => route.clone()).set(g.parked as f64);
        let age = g
            .oldest_waiting_ms
            .map(|o| (now - o).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(m::BACKLOG_AGE, "route" => route.clone()).set(age);
        if let Some(t) = g.last_success_ms {
            metrics::gauge!(m::FRESHNESS, "route" => route.clone())
                .set((now - t).max(0) as f64 / 1000.0);
        }
    }
}

/// Refreshes the gauges until shutdown. Also drains the histogram buffers
/// (`run_upkeep`), which the exporter otherwise only does on a scrape: an instance nobody
/// scrapes must not grow.
/// Scrapes are typically every 15–60 s; a read of a few indexed aggregates every
/// `refresh` (default 10 s) costs the store nothing noticeable.
pub async fn run(
    store: Store,
    refresh: Duration,
    routes: Vec<String>,
    prometheus: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match flow_gauges(store.pool(), &routes).await {
            Ok(g) => publish(&g, now_ms()),
            Err(e) => {
                tracing::debug!(error = %e, "Flow gauges not refreshed; the store is unavailable.")
            }
        }
        prometheus.run_upkeep();
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = shutdown.changed() => return,
        }
    }
}
