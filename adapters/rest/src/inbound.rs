//! Inbound REST (INTERFACES §1): the four partner paths as an axum `Router`. Authenticates the
//! API key, checks content type, size, JSON and dealer binding, journals every refusal, and
//! answers 202 only after `Inbox::accept` committed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use synchub_adapter_sdk::http::{BodyEnd, BodyRead, correlation_id, read_bounded};
use synchub_adapter_sdk::{
    ContentType, Envelope, FieldError, Inbox, Principal, RecordIn, RecordVerdict, Submission,
};

use crate::config::{InboundConfig, hash_key};

/// `POST`: DMS customer records (`record_type` `dms_customer`), dealer key required.
pub const PATH_DMS_CUSTOMERS: &str = "/api/v1/dms/customers";
/// `POST`: leads from any partner (`record_type` `lead`); the key's system becomes the source.
pub const PATH_LEADS: &str = "/api/v1/leads";
/// `POST`: DMS lead results (`record_type` `lead_result`), dealer key required.
pub const PATH_DMS_LEAD_RESULTS: &str = "/api/v1/dms/lead-results";
/// `POST`: DMS campaign results (`record_type` `campaign_result`), dealer key required.
pub const PATH_DMS_CAMPAIGN_RESULTS: &str = "/api/v1/dms/campaign-results";

/// Request header with the partner's API key.
pub const HEADER_API_KEY: &str = "x-api-key";
/// Request and response header with the correlation id.
pub const HEADER_CORRELATION_ID: &str = "x-correlation-id";

/// Envelope header: the request path.
pub const ENV_PATH: &str = "rest.path";
/// Envelope header: the request method.
pub const ENV_METHOD: &str = "rest.method";
/// Envelope header: the peer address, when the server was started with connect info.
pub const ENV_REMOTE_ADDR: &str = "rest.remote_addr";
/// Envelope header: the `Content-Type` as sent.
pub const ENV_CONTENT_TYPE: &str = "rest.content_type";
/// Envelope header on refusals: `"true"` when the body was cut at the size limit.
pub const ENV_TRUNCATED: &str = "rest.truncated";

/// At most this much of an unauthenticated request's body is read and journaled: enough for an
/// operator to see what arrived, without letting anyone on the network fill the journal.
pub const UNAUTHENTICATED_BODY_BYTES: usize = 64 * 1024;

/// What a path means: the record type it carries and whether it needs a dealer-bound key.
#[derive(Debug, Clone, Copy)]
struct PathKind {
    record_type: &'static str,
    dealer_bound: bool,
}

const PATHS: [(&str, PathKind); 4] = [
    (
        PATH_DMS_CUSTOMERS,
        PathKind {
            record_type: "dms_customer",
            dealer_bound: true,
        },
    ),
    (
        PATH_LEADS,
        PathKind {
            record_type: "lead",
            dealer_bound: false,
        },
    ),
    (
        PATH_DMS_LEAD_RESULTS,
        PathKind {
            record_type: "lead_result",
            dealer_bound: true,
        },
    ),
    (
        PATH_DMS_CAMPAIGN_RESULTS,
        PathKind {
            record_type: "campaign_result",
            dealer_bound: true,
        },
    ),
];

/// State shared by the handlers.
struct Shared {
    endpoint_id: String,
    max_body_bytes: usize,
    max_records: usize,
    /// sha256 hex (lower case) → principal. Keys are compared by hash, so the clear key is never
    /// stored, and a timing difference reveals nothing useful about it.
    keys: HashMap<String, Principal>,
    inbox: Arc<dyn Inbox>,
}

/// The four partner paths of INTERFACES §1, with absolute paths: `merge` it into the server's
/// router (do not `nest` it). For `rest.remote_addr`, serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`. The handlers read the body themselves
/// (bounded by `max_body_bytes`), so no outer body-limit layer smaller than that may wrap them.
pub fn router(cfg: InboundConfig, inbox: Arc<dyn Inbox>) -> Router {
    let shared = Arc::new(Shared {
        keys: cfg
            .api_keys
            .iter()
            .map(|k| (k.sha256.to_ascii_lowercase(), k.principal.clone()))
            .collect(),
        endpoint_id: cfg.endpoint_id,
        max_body_bytes: cfg.max_body_bytes,
        max_records: cfg.max_records,
        inbox,
    });
    let mut router = Router::new();
    for (path, kind) in PATHS {
        let shared = shared.clone();
        router = router.route(
            path,
            post(move |req: Request| {
                let shared = shared.clone();
                async move { handle(&shared, kind, req).await }
            }),
        );
    }
    router
}

/// Facts about the request that go on every envelope built from it.
struct RequestFacts {
    path: String,
    method: String,
    remote_addr: Option<String>,
    content_type: Option<String>,
    correlation_id: String,
    principal: Option<Principal>,
}

impl RequestFacts {
    fn envelope(&self, endpoint_id: &str, content_type: ContentType, body: Bytes) -> Envelope {
        let mut env = Envelope::new(endpoint_id, content_type, body)
            .with_header(ENV_PATH, self.path.clone())
            .with_header(ENV_METHOD, self.method.clone());
        if let Some(a) = &self.remote_addr {
            env = env.with_header(ENV_REMOTE_ADDR, a.clone());
        }
        if let Some(c) = &self.content_type {
            env = env.with_header(ENV_CONTENT_TYPE, c.clone());
        }
        env.correlation_id = Some(self.correlation_id.clone());
        env.principal = self.principal.clone();
        env
    }
}

/// A whole-request refusal: status, code and message for the partner and the journal.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<Value>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

async fn handle(s: &Shared, kind: PathKind, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let correlation_id = correlation_id(&parts.headers);
    let principal = parts
        .headers
        .get(HEADER_API_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|k| s.keys.get(&hash_key(k.trim())))
        .cloned();
    let facts = RequestFacts {
        path: parts.uri.path().to_owned(),
        method: parts.method.as_str().to_owned(),
        remote_addr: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.to_string()),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        correlation_id,
        principal,
    };

    let limit = if facts.principal.is_some() {
        s.max_body_bytes
    } else {
        s.max_body_bytes.min(UNAUTHENTICATED_BODY_BYTES)
    };
    let read = read_bounded(body, limit).await;

    let mut resp = match check(s, kind, &facts, &parts.headers, &read) {
        Err(refusal) => refuse(s, &facts, read, refusal).await,
        Ok(records) => accept(s, &facts, read.bytes, records).await,
    };
    if let Ok(v) = HeaderValue::from_str(&facts.correlation_id) {
        resp.headers_mut().insert(HEADER_CORRELATION_ID, v);
    }
    resp
}

/// Every check of §1, in order. `Ok` carries the records to submit.
fn check(
    s: &Shared,
    kind: PathKind,
    facts: &RequestFacts,
    headers: &HeaderMap,
    read: &BodyRead,
) -> Result<Vec<RecordIn>, Refusal> {
    let Some(principal) = &facts.principal else {
        let msg = if headers.contains_key(HEADER_API_KEY) {
            "unknown API key"
        } else {
            "missing X-Api-Key header"
        };
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", msg));
    };
    // Authorisation by credential comes right after authentication: a key that may not use this
    // path learns nothing about its body.
    if kind.dealer_bound && principal.dealer_code.is_none() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} requires a key bound to a dealer; this key of system {} is not",
                facts.path, principal.system
            ),
        ));
    }
    if !is_json_utf8(facts.content_type.as_deref()) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type must be application/json (UTF-8), got {}",
                facts
                    .content_type
                    .as_deref()
                    .map_or("none".to_owned(), |c| format!("'{c}'"))
            ),
        ));
    }
    match &read.end {
        BodyEnd::Complete => {}
        BodyEnd::TooLarge => {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body exceeds {} bytes", s.max_body_bytes),
            ));
        }
        BodyEnd::Broken(e) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "incomplete_body",
                format!("request body could not be read: {e}"),
            ));
        }
    }
    let value: Value = serde_json::from_slice(&read.bytes).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid JSON: {e}"),
        )
    })?;
    let items = match value {
        Value::Array(items) => items,
        single => vec![single],
    };
    if items.is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "no_records",
            "the array holds no records",
        ));
    }
    if items.len() > s.max_records {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "too_many_records",
            format!(
                "the array holds {} records; at most {} per request",
                items.len(),
                s.max_records
            ),
        ));
    }
    if kind.dealer_bound {
        check_dealer(principal, &items)?;
    }
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let source_ref = item
                .get("source_ref")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let body = if item.is_object() {
                Ok(item)
            } else {
                Err(vec![FieldError::new("", "record must be a JSON object")])
            };
            RecordIn {
                index,
                record_type: kind.record_type.to_owned(),
                source_ref,
                body,
            }
        })
        .collect())
}

/// A dealer key writes only its own dealer's records; one foreign record refuses the whole
/// request (a DMS sending another dealer's data is misconfigured, not partly right). Records
/// without a string `dealer_code` are left to record validation.
fn check_dealer(principal: &Principal, items: &[Value]) -> Result<(), Refusal> {
    let own = principal
        .dealer_code
        .as_deref()
        .map(normalise_dealer)
        .unwrap_or_default();
    let mut foreign: Vec<String> = Vec::new();
    let mut details = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if let Some(code) = item.get("dealer_code").and_then(Value::as_str) {
            let code = normalise_dealer(code);
            if code != own {
                details.push(json!({"index": index, "field": "dealer_code"}));
                if !foreign.contains(&code) {
                    foreign.push(code);
                }
            }
        }
    }
    if details.is_empty() {
        return Ok(());
    }
    Err(Refusal {
        status: StatusCode::FORBIDDEN,
        code: "dealer_mismatch",
        message: format!(
            "key for dealer {own} may not write records of dealer {}",
            foreign.join(", ")
        ),
        details,
    })
}

fn normalise_dealer(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// `application/json`, with no charset or a UTF-8 one (RFC 8259: JSON between systems is UTF-8).
fn is_json_utf8(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let mut parts = ct.split(';');
    if !parts
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return false;
    }
    parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    })
}

/// The dashboard pretty-prints by content type, so a refused XML or CSV body is labelled as such.
fn content_type_of(declared: Option<&str>) -> ContentType {
    let mime = declared
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match mime.as_str() {
        "application/json" => ContentType::Json,
        m if m.ends_with("/xml") || m.ends_with("+xml") => ContentType::Xml,
        "text/csv" => ContentType::Csv,
        m if m.starts_with("text/") => ContentType::Text,
        _ => ContentType::Bytes,
    }
}

async fn refuse(s: &Shared, facts: &RequestFacts, read: BodyRead, refusal: Refusal) -> Response {
    let mut env = facts.envelope(
        &s.endpoint_id,
        content_type_of(facts.content_type.as_deref()),
        read.bytes,
    );
    if matches!(read.end, BodyEnd::TooLarge) {
        env = env.with_header(ENV_TRUNCATED, "true");
    }
    let mut reason = refusal.message.clone();
    if !refusal.details.is_empty() {
        let idx: Vec<String> = refusal
            .details
            .iter()
            .filter_map(|d| d.get("index").map(Value::to_string))
            .collect();
        reason = format!("{reason} (records {})", idx.join(", "));
    }
    // Journal first: an operator must be able to find every request the partner saw refused.
    if let Err(e) = s.inbox.reject(env, refusal.code, &reason).await {
        tracing::warn!(endpoint = %s.endpoint_id, correlation_id = %facts.correlation_id, error = %e, "Could not journal a refused request, answering 503.");
        return unavailable();
    }
    tracing::info!(
        endpoint = %s.endpoint_id,
        path = %facts.path,
        code = refusal.code,
        correlation_id = %facts.correlation_id,
        "Request refused."
    );
    error_response(
        refusal.status,
        refusal.code,
        &refusal.message,
        refusal.details,
    )
}

async fn accept(s: &Shared, facts: &RequestFacts, body: Bytes, records: Vec<RecordIn>) -> Response {
    let echo: Vec<(usize, Option<String>)> = records
        .iter()
        .map(|r| (r.index, r.source_ref.clone()))
        .collect();
    let submission = Submission {
        envelope: facts.envelope(&s.endpoint_id, ContentType::Json, body),
        records,
    };
    // The ack point: nothing is answered until the journal has committed. If this future is
    // dropped (client gone), the Inbox guarantees all-or-nothing and a resend is idempotent.
    let receipt = match s.inbox.accept(submission).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(endpoint = %s.endpoint_id, correlation_id = %facts.correlation_id, error = %e, "Journal unavailable, answering 503.");
            return unavailable();
        }
    };
    if receipt.records.len() != echo.len() {
        tracing::error!(
            endpoint = %s.endpoint_id,
            submitted = echo.len(),
            verdicts = receipt.records.len(),
            "Inbox returned a different number of verdicts than records submitted."
        );
    }
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for ((index, source_ref), verdict) in echo.into_iter().zip(receipt.records) {
        match verdict {
            RecordVerdict::Accepted { id, .. } => {
                accepted.push(json!({"index": index, "source_ref": source_ref, "id": id}));
            }
            RecordVerdict::Rejected { errors, .. } => {
                rejected.push(json!({"index": index, "source_ref": source_ref, "errors": errors}));
            }
        }
    }
    let body = json!({
        "message_id": receipt.message_id.to_string(),
        "accepted": accepted,
        "rejected": rejected,
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn error_response(status: StatusCode, code: &str, message: &str, details: Vec<Value>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message, "details": details}})),
    )
        .into_response()
}

/// 503 with `Retry-After: 1`: the journal could not commit, nothing was acknowledged.
fn unavailable() -> Response {
    let mut resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the hub cannot store messages right now; nothing was accepted, send again",
        Vec::new(),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use proptest::prelude::*;
    use uuid::Uuid;

    #[test]
    fn json_content_types() {
        assert!(is_json_utf8(Some("application/json")));
        assert!(is_json_utf8(Some("Application/JSON; charset=UTF-8")));
        assert!(is_json_utf8(Some("application/json;charset=\"utf-8\"")));
        assert!(!is_json_utf8(Some("application/json; charset=gbk")));
        assert!(!is_json_utf8(Some("text/json")));
        assert!(!is_json_utf8(Some("application/jsonx")));
        assert!(!is_json_utf8(None));
    }

    #[test]
    fn dealer_codes_compare_trimmed_and_upper_cased() {
        let p = Principal {
            system: "dms".into(),
            dealer_code: Some("D0001".into()),
        };
        assert!(
            check_dealer(
                &p,
                &[json!({"dealer_code": " d0001 "}), json!({}), json!(3)]
            )
            .is_ok()
        );
        let r = check_dealer(
            &p,
            &[
                json!({"dealer_code": "D0002"}),
                json!({"dealer_code": "d0003"}),
                json!({"dealer_code": "D0002"}),
            ],
        )
        .err()
        .unwrap();
        assert_eq!(
            r.message,
            "key for dealer D0001 may not write records of dealer D0002, D0003"
        );
        assert_eq!(r.details.len(), 3);
    }

    #[test]
    fn correlation_id_is_taken_or_minted() {
        let mut h = HeaderMap::new();
        h.insert(HEADER_CORRELATION_ID, HeaderValue::from_static(" abc-1 "));
        assert_eq!(correlation_id(&h), "abc-1");
        h.insert(
            HEADER_CORRELATION_ID,
            HeaderValue::from_str(&"x".repeat(200)).unwrap(),
        );
        assert!(Uuid::parse_str(&correlation_id(&h)).is_ok());
        assert!(Uuid::parse_str(&correlation_id(&HeaderMap::new())).is_ok());
    }

    #[tokio::test]
    async fn read_bounded_keeps_the_first_part() {
        let r = read_bounded(Body::from("0123456789"), 4).await;
        assert!(matches!(r.end, BodyEnd::TooLarge));
        assert_eq!(&r.bytes[..], b"0123");
        let r = read_bounded(Body::from("0123"), 4).await;
        assert!(matches!(r.end, BodyEnd::Complete));
        assert_eq!(&r.bytes[..], b"0123");
    }

    fn shared() -> Shared {
        Shared {
            endpoint_id: "partners_rest_in".into(),
            max_body_bytes: 1 << 20,
            max_records: 1000,
            keys: HashMap::new(),
            inbox: Arc::new(synchub_adapter_sdk::testkit::FakeInbox::new()),
        }
    }

    fn facts(dealer: Option<&str>) -> RequestFacts {
        RequestFacts {
            path: PATH_DMS_CUSTOMERS.into(),
            method: "POST".into(),
            remote_addr: None,
            content_type: Some("application/json".into()),
            correlation_id: "c".into(),
            principal: Some(Principal {
                system: "dms".into(),
                dealer_code: dealer.map(str::to_owned),
            }),
        }
    }

    fn body(bytes: Vec<u8>) -> BodyRead {
        BodyRead {
            bytes: Bytes::from(bytes),
            end: BodyEnd::Complete,
        }
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
            prop::sample::select(vec!["D0001", " d0001 ", "D0002"]).prop_map(Value::from),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Whatever the bytes, the answer is a refusal or records, never a panic.
        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let kind = PATHS[0].1;
            let _ = check(&shared(), kind, &facts(Some("D0001")), &HeaderMap::new(), &body(bytes));
        }

        /// Every element of an array becomes one record with its index and source_ref, unless
        /// a record of another dealer refuses the whole request.
        #[test]
        fn records_are_echoed_in_order(items in proptest::collection::vec(
            proptest::collection::btree_map(
                proptest::sample::select(vec!["source_ref", "dealer_code", "name", "x"]).prop_map(str::to_owned),
                json_leaf(),
                0..4,
            ),
            1..20,
        )) {
            let values: Vec<Value> = items.into_iter().map(|m| Value::Object(m.into_iter().collect())).collect();
            let bytes = serde_json::to_vec(&values).unwrap();
            // As `normalise_dealer` compares: trimmed, ASCII case ignored.
            let foreign = values.iter().any(|v| {
                v.get("dealer_code")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().eq_ignore_ascii_case("D0001"))
            });
            match check(&shared(), PATHS[0].1, &facts(Some("D0001")), &HeaderMap::new(), &body(bytes)) {
                Ok(records) => {
                    prop_assert!(!foreign);
                    prop_assert_eq!(records.len(), values.len());
                    for (i, (r, v)) in records.iter().zip(&values).enumerate() {
                        prop_assert_eq!(r.index, i);
                        prop_assert_eq!(r.source_ref.as_deref(), v.get("source_ref").and_then(Value::as_str));
                        prop_assert_eq!(r.body.as_ref().ok(), Some(v));
                    }
                }
                Err(refusal) => {
                    prop_assert!(foreign);
                    prop_assert_eq!(refusal.code, "dealer_mismatch");
                }
            }
        }
    }

    #[test]
    fn refused_bodies_keep_their_content_type() {
        assert_eq!(
            content_type_of(Some("text/xml; charset=utf-8")),
            ContentType::Xml
        );
        assert_eq!(
            content_type_of(Some("application/soap+xml")),
            ContentType::Xml
        );
        assert_eq!(content_type_of(Some("text/plain")), ContentType::Text);
        assert_eq!(content_type_of(None), ContentType::Bytes);
    }
}
