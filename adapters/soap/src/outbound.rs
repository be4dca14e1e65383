//! Outbound SOAP `dcs_tasks_soap_out` (INTERFACES §5): one `PublishCampaignTask` call per
//! delivery attempt, with a WS-Security UsernameToken, classified by `classify.rs`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use http::{HeaderMap, HeaderValue, header};
use serde_json::Value;
use synchub_adapter_sdk::{AdapterError, Delivery, FieldError, Outbound, Outcome};

use crate::classify::{classify_error, classify_response};
use crate::config::SoapOutboundConfig;
use crate::soap::{SoapVersion, envelope};
use crate::wssec::security_header;
use crate::xml::escape;

/// Namespace of the DCS task service.
pub const NS_DCS: &str = "urn:synchub:dcs:task:v1";
/// `SOAPAction` sent with every call (as in `config/wsdl/dcs_tasks.wsdl`).
pub const SOAP_ACTION: &str = "urn:synchub:dcs:task:v1#PublishCampaignTask";
/// The shipped DCS WSDL (also at `config/wsdl/dcs_tasks.wsdl`).
pub const WSDL: &str = include_str!("../wsdl/dcs_tasks.wsdl");

/// Header carrying `Delivery::idempotency_key`, stable across attempts and replays.
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header carrying the correlation id from the inbound side.
pub const HEADER_CORRELATION_ID: &str = "x-correlation-id";
/// Header carrying the hub's message id of what is delivered.
pub const HEADER_MESSAGE_ID: &str = "x-synchub-message-id";

/// How much of an answer is read: a fault or a response is small; bounded so a partner
/// streaming garbage cannot exhaust memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One campaign task for one dealer, as the delivery body carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignTask {
    pub campaign_code: String,
    pub name: String,
    pub dealer_code: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub target_count: i64,
}

impl CampaignTask {
    /// Reads the delivery body JSON `{campaign_code, name, dealer_code, start_date, end_date,
    /// target_count}`; every problem is listed.
    pub fn from_json(body: &[u8]) -> Result<CampaignTask, Vec<FieldError>> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| vec![FieldError::new("", format!("body is not JSON: {e}"))])?;
        let mut errors = Vec::new();
        let text = |k: &str, errors: &mut Vec<FieldError>| -> String {
            match v.get(k) {
                Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
                Some(Value::String(_)) | None | Some(Value::Null) => {
                    errors.push(FieldError::new(k, "required"));
                    String::new()
                }
                Some(_) => {
                    errors.push(FieldError::new(k, "expected a string"));
                    String::new()
                }
            }
        };
        let campaign_code = text("campaign_code", &mut errors);
        let name = text("name", &mut errors);
        let dealer_code = text("dealer_code", &mut errors);
        let date = |k: &str, errors: &mut Vec<FieldError>| -> NaiveDate {
            let s = text(k, errors);
            if s.is_empty() {
                return NaiveDate::MIN;
            }
            NaiveDate::parse_from_str(&s, "%Y-%m-%d").unwrap_or_else(|_| {
                errors.push(FieldError::new(
                    k,
                    format!("expected YYYY-MM-DD, got '{s}'"),
                ));
                NaiveDate::MIN
            })
        };
        let start_date = date("start_date", &mut errors);
        let end_date = date("end_date", &mut errors);
        let target_count = match v.get("target_count") {
            Some(Value::Number(n)) => n.as_i64().filter(|n| *n >= 0 && *n <= i64::from(i32::MAX)),
            Some(Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0 && *n <= i64::from(i32::MAX)),
            _ => None,
        };
        let target_count = target_count.unwrap_or_else(|| {
            errors.push(FieldError::new(
                "target_count",
                "required: a whole number from 0 to 2147483647",
            ));
            0
        });
        if errors.is_empty() && end_date < start_date {
            errors.push(FieldError::new("end_date", "is before start_date"));
        }
        if errors.is_empty() {
            Ok(CampaignTask {
                campaign_code,
                name,
                dealer_code,
                start_date,
                end_date,
                target_count,
            })
        } else {
            Err(errors)
        }
    }

    /// The `PublishCampaignTask` element.
    pub fn to_xml(&self) -> String {
        format!(
            "<t:PublishCampaignTask xmlns:t=\"{NS_DCS}\"><t:campaignCode>{}</t:campaignCode><t:name>{}</t:name><t:dealerCode>{}</t:dealerCode><t:startDate>{}</t:startDate><t:endDate>{}</t:endDate><t:targetCount>{}</t:targetCount></t:PublishCampaignTask>",
            escape(&self.campaign_code),
            escape(&self.name),
            escape(&self.dealer_code),
            self.start_date.format("%Y-%m-%d"),
            self.end_date.format("%Y-%m-%d"),
            self.target_count
        )
    }
}

/// The configured DCS target. Cheap to share: `reqwest::Client` is a pooled handle.
pub struct SoapOutbound {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The serialised `wsse:Security` block, built once.
    security: String,
}

impl std::fmt::Debug for SoapOutbound {
    // Not derived: `security` holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut u = self.url.clone();
        let _ = u.set_password(None);
        f.debug_struct("SoapOutbound")
            .field("url", &u.as_str())
            .finish_non_exhaustive()
    }
}

impl SoapOutbound {
    /// Validates the config and builds the HTTP client (rustls). Fails with
    /// `AdapterError::Config` listing every problem.
    pub fn new(cfg: SoapOutboundConfig) -> Result<SoapOutbound, AdapterError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(AdapterError::Config(problems.join("; ")));
        }
        let url =
            reqwest::Url::parse(&cfg.url).map_err(|e| AdapterError::Config(format!("url: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            // A followed redirect would replay the POST as a GET; classify.rs rejects 3xx instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("synchub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdapterError::Io {
                context: "building the HTTP client".into(),
                source: Box::new(e),
            })?;
        Ok(SoapOutbound {
            client,
            url,
            security: security_header("soap", &cfg.username, &cfg.password),
        })
    }

    /// The complete request envelope for one task.
    pub fn request_xml(&self, task: &CampaignTask) -> String {
        envelope(SoapVersion::V11, &self.security, &task.to_xml())
    }

    fn headers_for(d: &Delivery) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        h.insert(
            "soapaction",
            HeaderValue::from_str(&format!("\"{SOAP_ACTION}\""))
                .expect("constant is a valid header"),
        );
        // Tracing aids: a value that is not a valid header is left out, never fails a delivery.
        if let Ok(v) = HeaderValue::from_str(&d.idempotency_key) {
            h.insert(HEADER_IDEMPOTENCY_KEY, v);
        }
        if let Some(Ok(v)) = d.correlation_id.as_deref().map(HeaderValue::from_str) {
            h.insert(HEADER_CORRELATION_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&d.message_id.to_string()) {
            h.insert(HEADER_MESSAGE_ID, v);
        }
        h
    }
}

#[async_trait]
impl Outbound for SoapOutbound {
    async fn deliver(&self, d: &Delivery) -> Outcome {
        let task = match CampaignTask::from_json(&d.body) {
            Ok(t) => t,
            Err(errors) => {
                let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
                return Outcome::Reject {
                    reason: format!(
                        "the delivery body is not a campaign task: {}",
                        listed.join("; ")
                    ),
                    cause_chain: listed,
                };
            }
        };
        let started = std::time::Instant::now();
        let sent = self
            .client
            .post(self.url.clone())
            .headers(Self::headers_for(d))
            .body(self.request_xml(&task))
            .send()
            .await;
        let outcome = match sent {
            Err(e) => classify_error(&e),
            Ok(mut resp) => {
                let status = resp.status();
                let headers = std::mem::take(resp.headers_mut());
                match read_bounded(&mut resp).await {
                    Ok(body) => classify_response(status, &headers, &body, Utc::now()),
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
            "SOAP delivery attempt finished."
        );
        outcome
    }

    /// `GET <url>?wsdl`: any HTTP answer means DCS is reachable (many services answer 404 or 405
    /// there); only transport failures count as down. Nothing is published.
    async fn healthcheck(&self) -> Result<(), AdapterError> {
        let mut url = self.url.clone();
        url.set_query(Some("wsdl"));
        self.client
            .get(url)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AdapterError::Io {
                context: format!(
                    "GET {}?wsdl",
                    self.url.as_str().split('?').next().unwrap_or("")
                ),
                source: Box::new(e),
            })
    }
}

/// Reads at most `MAX_ANSWER_BYTES` of the answer and drops the rest.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_json_is_read_and_every_problem_listed() {
        let t = CampaignTask::from_json(
            br#"{"campaign_code":"C1","name":"n","dealer_code":"D0002","start_date":"2026-12-01","end_date":"2026-12-31","target_count":"350"}"#,
        )
        .unwrap();
        assert_eq!(t.target_count, 350);
        let errs = CampaignTask::from_json(
            br#"{"campaign_code":"C1","name":"","start_date":"01/12/2026","end_date":"2026-12-31","target_count":-1}"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "dealer_code", "start_date", "target_count"]
        );
        let errs = CampaignTask::from_json(
            br#"{"campaign_code":"C1","name":"n","dealer_code":"D","start_date":"2026-12-31","end_date":"2026-12-01","target_count":1}"#,
        )
        .unwrap_err();
        assert_eq!(errs[0].field, "end_date");
        assert!(CampaignTask::from_json(b"not json").is_err());
    }
}
