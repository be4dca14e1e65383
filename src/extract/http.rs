//! `GET /api/v1/extracts/<entity>` (IF-09): the ETL key or an admin token; the window is fixed
//! before the first byte (so `X-Next-Cursor` can be a header), then rows stream page by page.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::push::PushJob;
use super::{Charset, Format, Window};
use crate::http::auth::Operators;
use crate::http::error::ApiError;
use crate::settings::{Settings, sha256_hex};
use crate::store::Store;

/// The partner system whose API keys may pull extracts.
pub const ETL_SYSTEM: &str = "etl";

#[derive(Clone)]
pub struct ExtractState {
    store: Store,
    operators: Arc<Operators>,
    /// sha256 of every API key, and whether it is an ETL key.
    keys: Arc<Vec<(String, bool)>>,
    pushes: Arc<Vec<Arc<PushJob>>>,
}

impl ExtractState {
    pub fn new(store: Store, settings: &Settings, pushes: Vec<Arc<PushJob>>) -> ExtractState {
        ExtractState {
            pushes: Arc::new(pushes),
            store,
            operators: Arc::new(Operators::from_config(&settings.auth.operators)),
            keys: Arc::new(
                settings
                    .auth
                    .api_keys
                    .iter()
                    .map(|k| (k.key_sha256.to_ascii_lowercase(), k.system == ETL_SYSTEM))
                    .collect(),
            ),
        }
    }

    /// Who is asking: the ETL key or an admin passes; another valid key or operator is 403;
    /// nothing valid is 401.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            let hash = sha256_hex(key.trim());
            return match self.keys.iter().find(|(h, _)| *h == hash) {
                Some((_, true)) => Ok(()),
                Some((_, false)) => Err(ApiError::forbidden(
                    "extracts are for the ETL key (system etl) and headquarters administrators",
                )),
                None => Err(ApiError::unauthorized("unknown API key")),
            };
        }
        let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(ApiError::unauthorized(
                "missing credentials: X-Api-Key (ETL key) or Authorization: Bearer <admin token>",
            ));
        };
        let token = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?;
        match self.operators.by_token(token.trim()) {
            Some(op) if op.is_admin() => Ok(()),
            Some(_) => Err(ApiError::forbidden(
                "extracts span every dealer: only headquarters administrators may pull them",
            )),
            None => Err(ApiError::unauthorized("unknown operator token")),
        }
    }
}

pub fn router(state: ExtractState) -> Router {
    Router::new()
        .route("/api/v1/extracts/{entity}", get(extract))
        .route(
            "/api/v1/extracts/push/{endpoint}",
            get(push_status).post(push_now),
        )
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct Params {
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
    charset: Option<String>,
    limit: Option<String>,
}

/// The parsed request, or a 400 naming every bad parameter.
struct Request {
    since: i64,
    until: Option<i64>,
    limit: Option<u64>,
    format: Format,
    charset: Charset,
}

fn parse(p: &Params) -> Result<Request, ApiError> {
    let mut details = Vec::new();
    let mut bad = |field: &str, reason: String| {
        details.push(json!({"field": field, "reason": reason}));
    };
    let since = match p.since.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => super::parse_cursor("since", s).unwrap_or_else(|e| {
            bad("since", e);
            0
        }),
    };
    let until = p.until.as_deref().filter(|s| !s.is_empty()).and_then(|s| {
        super::parse_cursor("until", s)
            .map_err(|e| bad("until", e))
            .ok()
    });
    if let Some(u) = until
        && u < since
    {
        bad(
            "until",
            format!("until ({u}) must not be below since ({since})"),
        );
    }
    let limit = p.limit.as_deref().filter(|s| !s.is_empty()).and_then(|s| {
        s.parse::<u64>().ok().filter(|l| *l > 0).or_else(|| {
            bad(
                "limit",
                format!("limit must be a positive integer, not '{s}'"),
            );
            None
        })
    });
    let format = match p.format.as_deref().filter(|s| !s.is_empty()) {
        None => Format::Ndjson,
        Some(s) => Format::parse(s).unwrap_or_else(|e| {
            bad("format", e);
            Format::Ndjson
        }),
    };
    let charset = match p.charset.as_deref().filter(|s| !s.is_empty()) {
        None => Charset::Utf8,
        Some(s) => match Charset::parse(s) {
            Ok(Charset::Gb18030) if format != Format::Csv => {
                bad(
                    "charset",
                    "gb18030 is offered for format=csv only; NDJSON is always UTF-8".into(),
                );
                Charset::Utf8
            }
            Ok(c) => c,
            Err(e) => {
                bad("charset", e);
                Charset::Utf8
            }
        },
    };
    if !details.is_empty() {
        let message = details
            .iter()
            .filter_map(|d| d["reason"].as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::bad_request("invalid_parameter", message).with_details(details));
    }
    Ok(Request {
        since,
        until,
        limit,
        format,
        charset,
    })
}

async fn extract(
    State(st): State<ExtractState>,
    Path(name): Path<String>,
    Query(p): Query<Params>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    st.authorize(&headers)?;
    let Some(entity) = super::entity(&name) else {
        let names = super::entity_names();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_entity",
            format!(
                "no extract for '{name}'; entities are: {}",
                names.join(", ")
            ),
        )
        .with_details(names.iter().map(|n| json!({"entity": n})).collect()));
    };
    let req = parse(&p)?;
    let window = Window::resolve(&st.store, entity, req.since, req.until, req.limit)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Unavailable(m) if m.starts_with(super::changes::BUSY) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "extract_busy",
                    &m[super::changes::BUSY.len()..],
                );
                e.details = vec![json!({"retry_after_secs": 1})];
                e
            }
            other => other.into(),
        })?;
    let content_type = match req.format {
        Format::Ndjson => "application/x-ndjson; charset=utf-8".to_string(),
        Format::Csv => format!("text/csv; charset={}", req.charset.label()),
    };
    let next = window.end;
    let (rows, _) = super::stream(st.store.clone(), window, req.format, req.charset);
    let mut resp = Response::new(Body::from_stream(rows));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type).expect("ascii content type"),
    );
    h.insert("x-next-cursor", HeaderValue::from(next));
    h.insert("x-cursor-since", HeaderValue::from(req.since));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

impl ExtractState {
    fn job(&self, endpoint: &str) -> Result<&Arc<PushJob>, ApiError> {
        self.pushes
            .iter()
            .find(|j| j.endpoint() == endpoint)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "scheduled extract push '{endpoint}' (enabled outbound SFTP endpoints with a schedule: {})",
                    self.pushes
                        .iter()
                        .map(|j| j.endpoint())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

impl ExtractState {
    /// An admin Bearer token, else 401 (none or unknown) / 403 (not headquarters).
    fn admin_only(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <admin token>"))?;
        match self.operators.by_token(token.trim()) {
            Some(op) if op.is_admin() => Ok(()),
            Some(_) => Err(ApiError::forbidden(
                "only headquarters administrators run or inspect the ETL push",
            )),
            None => Err(ApiError::unauthorized("unknown operator token")),
        }
    }
}

/// `POST /api/v1/extracts/push/<endpoint>`: runs the push now (e.g. to catch up after a failed
/// night without waiting for the schedule) and answers with what it did.
async fn push_now(
    State(st): State<ExtractState>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    st.admin_only(&headers)?;
    let job = st.job(&endpoint)?;
    let report = job.push(chrono::Utc::now()).await;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// `GET /api/v1/extracts/push/<endpoint>`: each entity's cursor and the last runs.
async fn push_status(
    State(st): State<ExtractState>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    st.admin_only(&headers)?;
    st.job(&endpoint)?;
    let time = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339())
    };
    let cursors = sqlx::query(
        "SELECT entity, last_cursor, last_file, last_rows, updated_at FROM extract_cursors \
         WHERE endpoint = $1 ORDER BY entity",
    )
    .bind(&endpoint)
    .fetch_all(st.store.pool())
    .await
    .map_err(crate::store::StoreError::from)?
    .iter()
    .map(|r| {
        Ok(json!({
            "entity": r.try_get::<String, _>(0)?,
            "cursor": r.try_get::<i64, _>(1)?.to_string(),
            "last_file": r.try_get::<Option<String>, _>(2)?,
            "last_rows": r.try_get::<Option<i64>, _>(3)?,
            "updated_at": time(Some(r.try_get(4)?)),
        }))
    })
    .collect::<Result<Vec<Value>, sqlx::Error>>()
    .map_err(crate::store::StoreError::from)?;
    let runs = sqlx::query(
        "SELECT tick, owner, status, detail, started_at, finished_at FROM extract_runs \
         WHERE endpoint = $1 ORDER BY tick DESC LIMIT 10",
    )
    .bind(&endpoint)
    .fetch_all(st.store.pool())
    .await
    .map_err(crate::store::StoreError::from)?
    .iter()
    .map(|r| {
        let detail: Option<String> = r.try_get(3)?;
        Ok(json!({
            "tick": time(Some(r.try_get(0)?)),
            "owner": r.try_get::<String, _>(1)?,
            "status": r.try_get::<String, _>(2)?,
            "detail": detail.and_then(|d| serde_json::from_str::<Value>(&d).ok()),
            "started_at": time(Some(r.try_get(4)?)),
            "finished_at": time(r.try_get(5)?),
        }))
    })
    .collect::<Result<Vec<Value>, sqlx::Error>>()
    .map_err(crate::store::StoreError::from)?;
    Ok(Json(
        json!({"endpoint": endpoint, "cursors": cursors, "runs": runs}),
    ))
}
