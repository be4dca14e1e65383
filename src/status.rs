//! Live endpoint status for the ops API and metrics: state (`up`, `degraded`, `down`), last
//! contact and last error, updated by the pipeline (inbound traffic), the dispatcher (each
//! attempt) and periodic health checks of outbound endpoints.

use std::collections::HashMap;

use crate::store::now_ms;

/// After this many transient failures in a row an endpoint is `down`, before that `degraded`.
const DOWN_AFTER: u32 = 3;

#[derive(Debug, Clone, Default)]
pub struct EndpointState {
    pub state: &'static str,
    pub last_contact_ms: Option<i64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// Last real traffic (a delivery or an inbound message), which outranks health checks.
    pub last_traffic_ms: Option<i64>,
}

#[derive(Default)]
pub struct EndpointStates {
    // std Mutex: held for a map lookup or insert only, never across an await.
    inner: std::sync::Mutex<HashMap<String, EndpointState>>,
}

impl EndpointStates {
    fn update(&self, id: &str, f: impl FnOnce(&mut EndpointState)) {
        if let Ok(mut g) = self.inner.lock() {
            let st = g.entry(id.to_string()).or_insert_with(|| EndpointState {
                state: "up",
                ..Default::default()
            });
            f(st);
            metrics::gauge!(crate::telemetry::metrics_names::ENDPOINT_UP, "endpoint" => id.to_string())
                .set(if st.state == "down" { 0.0 } else { 1.0 });
        }
    }

    /// The partner answered (delivered, or refused a message: it is reachable either way).
    pub fn contact(&self, id: &str, error: Option<String>) {
        self.update(id, |st| {
            st.last_traffic_ms = Some(now_ms());
            st.state = "up";
            st.last_contact_ms = Some(now_ms());
            st.consecutive_failures = 0;
            if error.is_some() {
                st.last_error = error;
            }
        });
    }

    /// A transient failure talking to the partner (timeout, 5xx, connection refused).
    pub fn failure(&self, id: &str, error: String) {
        self.update(id, |st| {
            st.last_traffic_ms = Some(now_ms());
            st.consecutive_failures += 1;
            st.state = if st.consecutive_failures >= DOWN_AFTER {
                "down"
            } else {
                "degraded"
            };
            st.last_error = Some(error);
        });
    }

    /// A health check's verdict, applied only to an endpoint without recent traffic: a HEAD
    /// that answers says nothing against deliveries failing right now.
    pub fn health(&self, id: &str, result: Result<(), String>, quiet_ms: i64) {
        let recent = self
            .get(id)
            .and_then(|st| st.last_traffic_ms)
            .is_some_and(|t| now_ms() - t < quiet_ms);
        if recent {
            return;
        }
        self.update(id, |st| match result {
            Ok(()) => {
                st.state = "up";
                st.last_contact_ms = Some(now_ms());
                st.consecutive_failures = 0;
            }
            Err(e) => {
                st.consecutive_failures += 1;
                st.state = if st.consecutive_failures >= DOWN_AFTER {
                    "down"
                } else {
                    "degraded"
                };
                st.last_error = Some(e);
            }
        });
    }

    /// A connection-oriented adapter (AMQP) reports its link: up, or down with the reason. This
    /// is the endpoint's real state, whatever single deliveries see.
    pub fn connection(&self, id: &str, result: Result<(), String>) {
        self.update(id, |st| match result {
            Ok(()) => {
                st.state = "up";
                st.last_contact_ms = Some(now_ms());
                st.consecutive_failures = 0;
            }
            Err(e) => {
                if st.state != "down" {
                    metrics::counter!(crate::telemetry::metrics_names::DISCONNECTS, "endpoint" => id.to_string())
                        .increment(1);
                }
                st.state = "down";
                st.consecutive_failures += 1;
                st.last_error = Some(e);
            }
        });
    }

    /// A delivery failed for a reason of its own (an unroutable message) while the partner is
    /// connected: the error is shown, the state is left to the connection's reports.
    pub fn note_error(&self, id: &str, error: String) {
        self.update(id, |st| {
            st.last_traffic_ms = Some(now_ms());
            st.last_error = Some(error);
        });
    }

    pub fn get(&self, id: &str) -> Option<EndpointState> {
        self.inner.lock().ok().and_then(|g| g.get(id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_degrade_then_down_and_contact_recovers() {
        let s = EndpointStates::default();
        assert!(s.get("x").is_none());
        s.failure("x", "timeout".into());
        assert_eq!(s.get("x").unwrap().state, "degraded");
        s.failure("x", "timeout".into());
        s.failure("x", "connection refused".into());
        let st = s.get("x").unwrap();
        assert_eq!(st.state, "down");
        assert_eq!(st.last_error.as_deref(), Some("connection refused"));
        s.contact("x", None);
        let st = s.get("x").unwrap();
        assert_eq!(st.state, "up");
        assert!(st.last_contact_ms.is_some());
        assert_eq!(
            st.last_error.as_deref(),
            Some("connection refused"),
            "the last error stays visible"
        );
    }

    #[test]
    fn health_checks_do_not_override_recent_traffic() {
        let s = EndpointStates::default();
        for _ in 0..3 {
            s.failure("x", "503".into());
        }
        s.health("x", Ok(()), 30_000);
        assert_eq!(
            s.get("x").unwrap().state,
            "down",
            "deliveries failing now outrank a HEAD that answers"
        );
        s.health("idle", Err("connection refused".into()), 30_000);
        assert_eq!(s.get("idle").unwrap().state, "degraded");
        s.health("idle", Ok(()), 30_000);
        assert_eq!(s.get("idle").unwrap().state, "up");
    }
}
