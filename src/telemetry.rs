//! Logs and metrics: the tracing subscriber (text locally, JSON in production) and the
//! Prometheus recorder, plus the metric names, kept in one place so labels stay low-cardinality.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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
    /// Histogram of one delivery attempt's duration in seconds, by target and outcome.
    pub const ATTEMPT_SECONDS: &str = "hub_delivery_attempt_duration_seconds";
    /// Gauge per route: deliveries waiting (pending or in flight).
    pub const BACKLOG: &str = "hub_flow_backlog";
    /// Gauge per route: age in seconds of the oldest waiting delivery (0 when none waits).
    pub const BACKLOG_AGE: &str = "hub_flow_backlog_oldest_age_seconds";
    /// Gauge per route: deliveries that have failed and wait for their next try.
    pub const RETRYING: &str = "hub_flow_retrying";
    /// Gauge per route: parked deliveries (dead letters waiting for an operator).
    pub const PARKED: &str = "hub_flow_parked";
    /// Gauge per route: seconds since the route's last successful delivery; absent until the
    /// first success, so an alert on it never fires for a route that has never run.
    pub const FRESHNESS: &str = "hub_flow_freshness_seconds";
    /// New leads by distribution outcome dealer | fallback | duplicate.
    pub const LEADS: &str = "hub_leads_distributed_total";
    /// Escalations raised, by kind (lead).
    pub const ESCALATIONS: &str = "hub_escalations_total";
    /// Gauge: escalations open, by kind (set by each escalation run).
    pub const ESCALATIONS_OPEN: &str = "hub_escalations_open";
    /// Transactions the embedded store's single writer committed (or rolled back).
    pub const STORE_COMMITS: &str = "hub_store_commits_total";
    /// Write jobs (merged accepts, claims, outcome batches, ...) those transactions held: the
    /// ratio to commits is the group-commit factor.
    pub const STORE_JOBS: &str = "hub_store_write_jobs_total";
    /// Microseconds the embedded store's writer spent in transactions; its rate over 1e6 is the
    /// writer's utilisation, near 1 meaning writes queue behind one another.
    pub const STORE_BUSY: &str = "hub_store_writer_busy_microseconds_total";
}

/// Bucket bounds (seconds) of the attempt-duration histogram: from a CRM batch (sub-ms) to a
/// partner timing out (30 s).
const ATTEMPT_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process (tests build several apps in one process).
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(metrics_names::ATTEMPT_SECONDS.to_string()),
                    &ATTEMPT_BUCKETS,
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Initialises logging. `RUST_LOG` wins over the configured level. Safe to call twice.
/// Every line goes through [`mask_personal_data`] on its way to stderr.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| MaskingWriter(std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Writes log output with personal data masked. The fmt layer hands over one formatted event
/// per `write`, so a pattern never straddles two calls.
struct MaskingWriter<W>(W);

impl<W: std::io::Write> std::io::Write for MaskingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(mask_personal_data(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Fields whose values are personal data; masked wherever a log line names them
/// (`name=…`, `"name":"…"`, `name: "…"`).
static PERSONAL_FIELDS: OnceLock<regex::Regex> = OnceLock::new();

/// Masks personal data in one log line: the values of personal fields (names, mobiles, ID
/// numbers, addresses, e-mail), and any mainland mobile number or ID-card number appearing
/// anywhere (inside a rejection reason, say). Logs are for operators; the journal keeps the
/// real values behind the ops API's access control.
pub fn mask_personal_data(line: &str) -> String {
    let re = PERSONAL_FIELDS.get_or_init(|| {
        regex::Regex::new(
            r#"\b(name|customer_name|owner_name|address|mobile|customer_mobile|owner_mobile|id_no|owner_id_no|idNo|email)(\\?"?\s*[:=]\s*)(\\?"(?:[^"\\]|\\[^"])*\\?"|[^\s,}"\\]+)"#,
        )
        .expect("the personal-field pattern is valid")
    });
    let fields = re.replace_all(line, |c: &regex::Captures<'_>| {
        let value = &c[3];
        let quoted = value.ends_with('"');
        let open = if value.starts_with("\\\"") {
            "\\\""
        } else if value.starts_with('"') {
            "\""
        } else {
            ""
        };
        let close = if !quoted {
            ""
        } else if value.ends_with("\\\"") && value.len() > 2 {
            "\\\""
        } else {
            "\""
        };
        format!("{}{}{open}***{close}", &c[1], &c[2])
    });
    mask_numbers(&fields)
}

/// Masks digit runs that are mainland mobiles (11 digits from `1[3-9]`: middle four hidden) or
/// ID-card numbers (18 characters, the last may be `X`: the birth date and sequence hidden).
fn mask_numbers(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let mut end = i;
        if end - start == 17 && end < b.len() && (b[end] == b'X' || b[end] == b'x') {
            end += 1;
        }
        if end < b.len() && b[end].is_ascii_alphanumeric() {
            i = end;
            continue;
        }
        let run = &s[start..end];
        let masked = match run.len() {
            11 if run.starts_with('1') && (b'3'..=b'9').contains(&run.as_bytes()[1]) => {
                Some(format!("{}****{}", &run[..3], &run[7..]))
            }
            18 => Some(format!("{}********{}", &run[..6], &run[14..])),
            _ => None,
        };
        if let Some(m) = masked {
            out.push_str(&s[last..start]);
            out.push_str(&m);
            last = end;
        }
        i = end;
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::mask_personal_data;

    #[test]
    fn personal_fields_are_masked_in_text_and_json_lines() {
        let text = r#"INFO reason=rejected name=王小明 mobile="13912345678" file_name=a.csv"#;
        assert_eq!(
            mask_personal_data(text),
            r#"INFO reason=rejected name=*** mobile="***" file_name=a.csv"#
        );
        let json = r#"{"fields":{"name":"王小明","address":"天河区体育西路101号","vin":"LSVAU2180N2183294"}}"#;
        assert_eq!(
            mask_personal_data(json),
            r#"{"fields":{"name":"***","address":"***","vin":"LSVAU2180N2183294"}}"#
        );
        let escaped = r#"{"message":"body {\"name\":\"周杰\",\"x\":1}"}"#;
        assert_eq!(
            mask_personal_data(escaped),
            r#"{"message":"body {\"name\":\"***\",\"x\":1}"}"#
        );
    }

    #[test]
    fn mobiles_and_id_numbers_are_masked_anywhere() {
        assert_eq!(
            mask_personal_data("手机13912345678无效; 证件 44010419900715251X; lead L2026112500001"),
            "手机139****5678无效; 证件 440104********251X; lead L2026112500001"
        );
        // Other numbers stay: message counts, epoch millis, a VIN's digits.
        let keep = "rows=12345678901234 at=1764100000000 vin=LSVAU2180N2183294 phone=020-12345678";
        assert_eq!(mask_personal_data(keep), keep);
    }
}
