//! Logs and metrics: the tracing subscriber (text locally, JSON in production) and the
//! Prometheus recorder, plus the metric names, kept in one place so labels stay low-cardinality.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Metric names (`hub_<noun>_<unit>_total`). Labels are endpoint, route, target, outcome or code:
/// never a VIN, mobile or id — those belong in the searchable key index.
pub mod metrics_names {
    /// Transport units received (HTTP requests, messages, files), accepted or refused.
    pub const RECEIVED: &str = "hub_messages_received_total";
    /// Records journaled, by outcome accepted | rejected | duplicate.
    pub const RECORDS: &str = "hub_records_total";
    /// Whole transport units refused (401, 403, 413, 415, 400), by error code.
    pub const REFUSED: &str = "hub_messages_refused_total";
    /// Delivery attempts by target and outcome delivered | retry | rejected | parked.
    pub const ATTEMPTS: &str = "hub_delivery_attempts_total";
    /// Deliveries that reached a final state, by outcome delivered | rejected | parked.
    pub const DELIVERIES: &str = "hub_deliveries_total";
    /// Retries scheduled.
    pub const RETRIED: &str = "hub_deliveries_retried_total";
    /// Gauge per endpoint: 0 when it is down (transient failures in a row), 1 otherwise.
    pub const ENDPOINT_UP: &str = "hub_endpoint_up";
    /// Connections of connection-oriented endpoints (AMQP) lost, by endpoint.
    pub const DISCONNECTS: &str = "hub_endpoint_disconnects_total";
    /// SFTP polls run (scheduled and manual), by endpoint.
    pub const SFTP_POLLS: &str = "hub_sftp_polls_total";
    /// Files an SFTP poll worked on, by endpoint and outcome archived | already_done | failed |
    /// busy | left_in_place.
    pub const SFTP_FILES: &str = "hub_sftp_files_total";
    /// Rows of archived SFTP files, by endpoint and outcome accepted | rejected.
    pub const SFTP_ROWS: &str = "hub_sftp_rows_total";
    /// SFTP polls that failed as a whole plus per-file problems, by endpoint.
    pub const SFTP_POLL_ERRORS: &str = "hub_sftp_poll_errors_total";
    /// New leads by distribution outcome dealer | fallback | duplicate.
    pub const LEADS: &str = "hub_leads_distributed_total";
    /// Escalations raised, by kind (lead).
    pub const ESCALATIONS: &str = "hub_escalations_total";
    /// Gauge: escalations open, by kind (set by each escalation run).
    pub const ESCALATIONS_OPEN: &str = "hub_escalations_open";
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process (tests build several apps in one process).
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Initialises logging. `RUST_LOG` wins over the configured level. Safe to call twice.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
