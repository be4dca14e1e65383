//! Outbound REST: one HTTP request per delivery attempt, classified by `classify.rs`. The client
//! is built once per endpoint; no retries, no redirects followed, answers read up to a bound.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use synchub_adapter_sdk::{AdapterError, Delivery, Outbound, Outcome};

use crate::classify::{classify_error, classify_response};
use crate::config::RestOutboundConfig;

/// Header carrying `Delivery::idempotency_key`, stable across attempts and replays.
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header carrying the correlation id from the inbound side.
pub const HEADER_CORRELATION_ID: &str = "x-correlation-id";
/// Header carrying the hub's message id of what is delivered.
pub const HEADER_MESSAGE_ID: &str = "x-synchub-message-id";
/// Header carrying the attempt number (1 for the first try).
pub const HEADER_ATTEMPT: &str = "x-synchub-attempt";

/// How much of a partner's answer is read: enough for an `id` or an error text, bounded so a
/// partner streaming garbage cannot exhaust memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One configured REST target. Cheap to share: `reqwest::Client` is a pooled handle.
pub struct RestOutbound {
    client: reqwest::Client,
    url: reqwest::Url,
    method: http::Method,
    /// Configured extra headers plus `Authorization`, validated once at build time.
    base_headers: HeaderMap,
}

impl std::fmt::Debug for RestOutbound {
    // Not derived: `base_headers` holds the bearer token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestOutbound")
            .field("url", &redacted(&self.url))
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl RestOutbound {
    /// Validates the config and builds the HTTP client (rustls). Fails with
    /// `AdapterError::Config` listing every problem.
    pub fn new(cfg: RestOutboundConfig) -> Result<RestOutbound, AdapterError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(AdapterError::Config(problems.join("; ")));
        }
        let url =
            reqwest::Url::parse(&cfg.url).map_err(|e| AdapterError::Config(format!("url: {e}")))?;
        let mut base_headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            // validate() checked both; the map_err only guards against the two drifting apart.
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| AdapterError::Config(format!("headers.{k}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| AdapterError::Config(format!("headers.{k}: {e}")))?;
            base_headers.insert(name, value);
        }
        if let Some(token) = &cfg.bearer_token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                AdapterError::Config("bearer_token: not a valid header value".into())
            })?;
            value.set_sensitive(true);
            base_headers.insert(header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            // A followed 301/302/303 turns the POST into a body-less GET whose 200 would be
            // recorded as "delivered". classify.rs rejects 3xx instead, naming the new location.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("synchub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdapterError::Io {
                context: "building the HTTP client".into(),
                source: Box::new(e),
            })?;
        Ok(RestOutbound {
            client,
            url,
            method: cfg.method.as_http(),
            base_headers,
        })
    }

    /// The headers of one attempt: configured ones, then ours (ours win).
    fn headers_for(&self, d: &Delivery) -> Result<HeaderMap, Outcome> {
        let mut h = self.base_headers.clone();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(d.content_type.mime()),
        );
        let key = HeaderValue::from_str(&d.idempotency_key)
            .map_err(|_| Outcome::reject("idempotency key is not a valid HTTP header value"))?;
        h.insert(HEADER_IDEMPOTENCY_KEY, key);
        if let Some(c) = &d.correlation_id {
            // A correlation id is a tracing aid: a bad one is dropped, it never fails a delivery.
            match HeaderValue::from_str(c) {
                Ok(v) => {
                    h.insert(HEADER_CORRELATION_ID, v);
                }
                Err(_) => tracing::debug!(
                    delivery_id = d.delivery_id,
                    "Correlation id is not a valid header value, not sent."
                ),
            }
        }
        let message_id = HeaderValue::from_str(&d.message_id.to_string())
            .expect("a uuid is a valid header value");
        h.insert(HEADER_MESSAGE_ID, message_id);
        h.insert(HEADER_ATTEMPT, HeaderValue::from(d.attempt));
        Ok(h)
    }
}

#[async_trait]
impl Outbound for RestOutbound {
    async fn deliver(&self, d: &Delivery) -> Outcome {
        let headers = match self.headers_for(d) {
            Ok(h) => h,
            Err(outcome) => return outcome,
        };
        let started = std::time::Instant::now();
        let sent = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(headers)
            .body(d.body.clone())
            .send()
            .await;
        let outcome = match sent {
            Err(e) => classify_error(&e),
            Ok(mut resp) => {
                let status = resp.status();
                let headers = std::mem::take(resp.headers_mut());
                match read_bounded(&mut resp).await {
                    Ok(body) => classify_response(status, &headers, &body, Utc::now()),
                    // The status alone is not trusted when the answer broke off: the partner may
                    // not have finished. Retrying is safe, it carries the same Idempotency-Key.
                    Err(e) => classify_error(&e),
                }
            }
        };
        tracing::debug!(
            endpoint = %d.target,
            delivery_id = d.delivery_id,
            attempt = d.attempt,
            outcome = outcome.label(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "REST delivery attempt finished."
        );
        outcome
    }

    /// `HEAD` on the URL with the configured headers: any HTTP answer (even 404 or 405) means the
    /// partner is reachable; only transport failures count as down.
    async fn healthcheck(&self) -> Result<(), AdapterError> {
        self.client
            .head(self.url.clone())
            .headers(self.base_headers.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AdapterError::Io {
                context: format!("HEAD {}", redacted(&self.url)),
                source: Box::new(e),
            })
    }
}

/// Reads at most `MAX_ANSWER_BYTES` of the answer and drops the rest (the connection is then not
/// reused, which is fine for an answer that large).
async fn read_bounded(resp: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_ANSWER_BYTES - buf.len();
        if chunk.len() >= room {
            buf.extend_from_slice(&chunk[..room]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The URL without user info, for messages and logs.
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}
