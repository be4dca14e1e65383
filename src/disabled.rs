//! The stand-in adapter of an outbound endpoint configured with `enabled = false`: it never
//! calls the partner, and every attempt is a retry naming the setting, so what is routed there
//! waits durably (and is parked by the route's retry policy) instead of being dropped or
//! rejected. Enabling the endpoint and restarting delivers what is still pending.

use async_trait::async_trait;
use synchub_adapter_sdk::{Delivery, Outbound, Outcome};

pub struct DisabledOutbound {
    endpoint: String,
}

impl DisabledOutbound {
    pub fn new(endpoint: impl Into<String>) -> DisabledOutbound {
        DisabledOutbound {
            endpoint: endpoint.into(),
        }
    }
}

#[async_trait]
impl Outbound for DisabledOutbound {
    async fn deliver(&self, _delivery: &Delivery) -> Outcome {
        Outcome::retry(format!(
            "endpoint {} is disabled (enabled = false): the delivery waits until it is enabled",
            self.endpoint
        ))
    }

    /// Reported as not connected, so health checks leave it alone and its retries do not mark
    /// a partner down that was never contacted; the endpoints view shows it `disabled`.
    fn is_connected(&self) -> Option<bool> {
        Some(false)
    }
}
