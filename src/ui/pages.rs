//! Dashboard page and action handlers. Reads use the ops API's store queries with the signed-in
//! operator's dealer scope; actions go through `crate::ops` (scope check + audit), after a CSRF
//! check, and answer with a redirect back to the page they came from.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Value;

use super::session::{self, UiUser};
use super::views::{self, age, opt, s, text};
use super::{UiError, UiState, render};
use crate::http::error::ApiError;
use crate::ops::{self, Channel};
use crate::store::deliveries::{self, DeliveryFilter};
use crate::store::{audit, queries};

type PageResult = Result<Response, UiError>;

/// The header bar every page shares.
pub(super) struct Nav {
    pub user: String,
    pub is_admin: bool,
    pub dealer: Option<String>,
    pub csrf: String,
    pub q: String,
    pub active: &'static str,
    pub flash: Option<String>,
}

fn nav(u: &UiUser, active: &'static str, q: &str, flash: Option<String>) -> Nav {
    let op = u.op();
    Nav {
        user: op.user.clone(),
        is_admin: op.is_admin(),
        dealer: op.dealer_scope().map(str::to_string),
        csrf: u.0.csrf.clone(),
        q: q.to_string(),
        active,
        flash: flash.filter(|f| !f.is_empty()),
    }
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct Flash {
    done: Option<String>,
}

// ---------- login ----------

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    error: Option<String>,
    username: String,
    next: String,
    /// The login form's CSRF token, also in the pre-session cookie.
    csrf: String,
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct NextQuery {
    next: Option<String>,
}

/// Only dashboard paths are followed after login, so the form cannot bounce a user elsewhere.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") => n.to_string(),
        _ => "/ui/".into(),
    }
}

/// The login page with its CSRF token in the form and in the pre-session cookie it sets.
fn login_page(status: StatusCode, page: LoginPage, secure_cookie: bool) -> Response {
    let cookie = session::set_login_cookie(Some(&page.csrf), secure_cookie);
    let mut r = render(&page);
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

pub(super) async fn login_form(
    State(st): State<UiState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    login_page(
        StatusCode::OK,
        LoginPage {
            error: None,
            username: String::new(),
            next: safe_next(q.next.as_deref()),
            csrf: session::login_token(&headers),
        },
        st.app.ui.secure_cookie,
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
    csrf: Option<String>,
}

pub(super) async fn login(
    State(st): State<UiState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let ui = &st.app.ui;
    let user = f.username.trim().to_string();
    let next = safe_next(f.next.as_deref());
    if !session::login_csrf_ok(&headers, f.csrf.as_deref()) {
        // Checked before the credentials: a forged form learns nothing and counts for nothing.
        tracing::warn!(user = %user, "Dashboard login refused: missing or wrong login form token (CSRF).");
        return login_page(
            StatusCode::FORBIDDEN,
            LoginPage {
                error: Some(
                    "This sign-in form has expired or did not come from the dashboard (CSRF token \
                     missing or wrong). Sign in again on this page."
                        .into(),
                ),
                username: user,
                next,
                // A fresh token: the refused one may be an attacker's.
                csrf: session::new_login_token(),
            },
            ui.secure_cookie,
        );
    }
    let token = session::login_token(&headers);
    let refuse = |status: StatusCode, msg: &str| {
        login_page(
            status,
            LoginPage {
                error: Some(msg.to_string()),
                username: user.clone(),
                next: next.clone(),
                csrf: token.clone(),
            },
            ui.secure_cookie,
        )
    };
    if st
        .sessions
        .locked(&user, ui.max_failed_logins, ui.lockout_secs)
    {
        tracing::warn!(user = %user, "Dashboard login refused: user locked out after failed logins.");
        ops::audit_session(
            &st.app,
            &user,
            None,
            "login_failed",
            Some("locked out".into()),
        )
        .await;
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many failed sign-ins for this user; try again in {}.",
                age(ui.lockout_secs as i64)
            ),
        );
    }
    let signed_in = st
        .app
        .operators
        .login(&user, f.password.trim())
        .and_then(|op| st.app.operators.by_user(&op.user))
        .map(|(op, hash)| (op.clone(), hash.to_string()));
    let Some((op, token_sha256)) = signed_in else {
        st.sessions.failed(&user, ui.lockout_secs);
        tracing::warn!(user = %user, "Dashboard login failed: wrong user name or token.");
        ops::audit_session(
            &st.app,
            &user,
            None,
            "login_failed",
            Some("wrong user name or password".into()),
        )
        .await;
        return refuse(StatusCode::UNAUTHORIZED, "Wrong user name or password.");
    };
    let session = match st
        .sessions
        .create(op.clone(), &token_sha256, ui.session_ttl_secs)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(operator = %op.user, error = %e, "Dashboard login failed: the session could not be stored.");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in could not be recorded in the store (see the hub's log); try again shortly.",
            );
        }
    };
    st.sessions.succeeded(&user);
    tracing::info!(operator = %op.user, "Dashboard login.");
    ops::audit_session(
        &st.app,
        &op.user,
        op.dealer_scope().map(str::to_string),
        "login",
        None,
    )
    .await;
    (
        StatusCode::SEE_OTHER,
        AppendHeaders([
            (
                header::SET_COOKIE,
                session::set_cookie(Some(&session), ui.secure_cookie, ui.session_ttl_secs),
            ),
            // The form's token has done its job; a new login page gets a new one.
            (
                header::SET_COOKIE,
                session::set_login_cookie(None, ui.secure_cookie),
            ),
            (header::LOCATION, next),
        ]),
    )
        .into_response()
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct CsrfForm {
    csrf: Option<String>,
}

pub(super) async fn logout(
    u: UiUser,
    State(st): State<UiState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = u.check_csrf(&headers, f.csrf.as_deref()) {
        return r.into_response();
    }
    // Committed before answering: the cookie is then dead on every instance.
    if let Err(e) = st.sessions.remove(&u.0.id).await {
        tracing::error!(operator = %u.op().user, error = %e, "Dashboard logout failed: the session could not be deleted.");
        return UiError::from(e).into_response();
    }
    ops::audit_session(
        &st.app,
        &u.op().user,
        u.op().dealer_scope().map(str::to_string),
        "logout",
        None,
    )
    .await;
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::set_cookie(None, st.app.ui.secure_cookie, 0),
            ),
            (header::LOCATION, "/ui/login".to_string()),
        ],
    )
        .into_response()
}

// ---------- overview ----------

pub(super) struct DealerFresh {
    code: String,
    age: String,
    class: &'static str,
}

pub(super) struct FlowRow {
    route: String,
    status: String,
    received_hour: i64,
    received_day: i64,
    delivered_hour: i64,
    delivered_day: i64,
    rejected_hour: i64,
    rejected_day: i64,
    retrying: i64,
    parked: i64,
    backlog: i64,
    oldest_backlog: String,
    last_success: String,
    freshness: String,
    freshness_class: &'static str,
    dealers: Vec<DealerFresh>,
}

pub(super) struct EndpointRow {
    id: String,
    kind: String,
    state: String,
    last_contact: String,
    last_error: String,
}

pub(super) struct OverviewData {
    generated_at: String,
    freshness_warn: String,
    flows: Vec<FlowRow>,
    endpoints: Vec<EndpointRow>,
}

fn freshness_class(age_secs: Option<i64>, warn: u64) -> &'static str {
    match age_secs {
        None => "none",
        Some(a) if a <= warn as i64 => "ok",
        Some(a) if a <= 3 * warn as i64 => "warn",
        Some(_) => "stale",
    }
}

fn n(v: &Value, a: &str, b: &str) -> i64 {
    v[a][b].as_i64().unwrap_or(0)
}

async fn flow_rows(st: &UiState, scope: Option<&str>) -> Result<Vec<FlowRow>, UiError> {
    let warn = st.app.ui.freshness_warn_secs;
    let flows = queries::flows(st.app.store.pool(), &st.app.route_ids, scope).await?;
    let per_dealer = crate::store::stats::freshness_by_dealer(st.app.store.pool(), scope).await?;
    let now = crate::store::now_ms();
    Ok(flows
        .iter()
        .map(|f| {
            let route = s(f, "route");
            let last = s(f, "last_success");
            let age_secs = views::secs_since(&last);
            // Rejected counts both refused records and deliveries the partner refused.
            let rejected = |w: &str| n(f, w, "rejected") + n(f, w, "rejected_records");
            FlowRow {
                status: s(f, "status"),
                received_hour: n(f, "last_hour", "received"),
                received_day: n(f, "last_day", "received"),
                delivered_hour: n(f, "last_hour", "delivered"),
                delivered_day: n(f, "last_day", "delivered"),
                rejected_hour: rejected("last_hour"),
                rejected_day: rejected("last_day"),
                retrying: f["retrying"].as_i64().unwrap_or(0),
                parked: f["parked"].as_i64().unwrap_or(0),
                backlog: f["backlog"].as_i64().unwrap_or(0),
                oldest_backlog: f["oldest_backlog_age_secs"]
                    .as_i64()
                    .map(age)
                    .unwrap_or_else(|| "—".into()),
                freshness: age_secs
                    .map(|a| format!("{} ago", age(a)))
                    .unwrap_or_else(|| "never".into()),
                freshness_class: freshness_class(age_secs, warn),
                last_success: views::time(&last),
                dealers: per_dealer
                    .iter()
                    .filter(|(r, _, _)| *r == route)
                    .map(|(_, d, ms)| {
                        let a = (now - ms) / 1000;
                        DealerFresh {
                            code: d.clone(),
                            age: format!("{} ago", age(a)),
                            class: freshness_class(Some(a), warn),
                        }
                    })
                    .collect(),
                route,
            }
        })
        .collect())
}

async fn overview_data(st: &UiState, u: &UiUser) -> Result<OverviewData, UiError> {
    let flows = flow_rows(st, u.op().dealer_scope()).await?;
    let endpoints = crate::http::endpoint_views(&st.app)
        .await?
        .iter()
        .map(|e| EndpointRow {
            id: s(e, "id"),
            kind: s(e, "kind"),
            state: s(e, "state"),
            last_contact: opt(e, "last_contact")
                .map(|t| views::time(&t))
                .unwrap_or_else(|| "—".into()),
            last_error: s(e, "last_error"),
        })
        .collect();
    Ok(OverviewData {
        generated_at: views::ms_time(crate::store::now_ms()),
        freshness_warn: age(st.app.ui.freshness_warn_secs as i64),
        flows,
        endpoints,
    })
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct OverviewPage {
    nav: Nav,
    frag: OverviewData,
}

#[derive(Template)]
#[template(path = "ui/overview_fragment.html")]
struct OverviewFragment {
    frag: OverviewData,
}

pub(super) async fn overview(
    u: UiUser,
    State(st): State<UiState>,
    Query(fl): Query<Flash>,
) -> PageResult {
    let frag = overview_data(&st, &u).await?;
    Ok(render(&OverviewPage {
        nav: nav(&u, "overview", "", fl.done),
        frag,
    }))
}

pub(super) async fn overview_fragment(u: UiUser, State(st): State<UiState>) -> PageResult {
    Ok(render(&OverviewFragment {
        frag: overview_data(&st, &u).await?,
    }))
}

// ---------- search ----------

pub(super) struct MessageRow {
    id: String,
    short_id: String,
    received_at: String,
    status: String,
    kind: String,
    endpoint: String,
    record_type: String,
    routes: String,
    dealer_code: String,
    source_ref: String,
    entity_id: String,
    reason: String,
}

fn reason_text(v: &Value) -> String {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match (i.get("field"), i.get("reason")) {
                (Some(f), Some(r)) if !text(f).is_empty() => format!("{}: {}", text(f), text(r)),
                (_, Some(r)) => text(r),
                _ => text(i),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => text(other),
    }
}

fn message_row(m: &Value) -> MessageRow {
    let id = s(m, "id");
    MessageRow {
        short_id: id
            .chars()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect(),
        received_at: views::time(&s(m, "received_at")),
        status: s(m, "status"),
        kind: s(m, "kind"),
        endpoint: s(m, "endpoint"),
        record_type: s(m, "record_type"),
        routes: m["routes"]
            .as_array()
            .map(|r| r.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        dealer_code: s(m, "dealer_code"),
        source_ref: s(m, "source_ref"),
        entity_id: s(m, "entity_id"),
        reason: reason_text(&m["reason"]),
        id,
    }
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct SearchQuery {
    q: Option<String>,
    status: Option<String>,
    route: Option<String>,
    endpoint: Option<String>,
    since: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/search.html")]
struct SearchPage {
    nav: Nav,
    statuses: Vec<String>,
    status: String,
    routes: Vec<String>,
    route: String,
    endpoints: Vec<String>,
    endpoint: String,
    since: String,
    error: Option<String>,
    rows: Vec<MessageRow>,
    limit: usize,
}

const SEARCH_LIMIT: usize = 200;

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub(super) async fn search(
    u: UiUser,
    State(st): State<UiState>,
    Query(p): Query<SearchQuery>,
) -> PageResult {
    let q = nonempty(&p.q).unwrap_or_default();
    let (since_ms, error) = match views::parse_since(p.since.as_deref().unwrap_or("")) {
        Ok(v) => (v, None),
        Err(e) => (None, Some(e)),
    };
    let rows = if error.is_some() {
        Vec::new()
    } else {
        let search = queries::Search {
            key: Some(q.clone()).filter(|k| !k.is_empty()),
            status: nonempty(&p.status),
            endpoint: nonempty(&p.endpoint),
            route: nonempty(&p.route),
            since_ms,
            limit: SEARCH_LIMIT as i64,
            dealer: u.op().dealer_scope().map(str::to_string),
        };
        queries::search_messages(st.app.store.pool(), &search)
            .await?
            .iter()
            .map(message_row)
            .collect()
    };
    Ok(render(&SearchPage {
        nav: nav(&u, "search", &q, None),
        statuses: ["received", "accepted", "rejected", "duplicate", "unrouted"]
            .map(String::from)
            .to_vec(),
        status: p.status.unwrap_or_default(),
        routes: st.app.route_ids.to_vec(),
        route: p.route.unwrap_or_default(),
        endpoints: st.app.endpoints.iter().map(|(id, _)| id.clone()).collect(),
        endpoint: p.endpoint.unwrap_or_default(),
        since: p.since.unwrap_or_default(),
        error,
        rows,
        limit: SEARCH_LIMIT,
    }))
}

// ---------- message detail ----------

pub(super) struct ChainRow {
    id: String,
    depth: usize,
    kind: String,
    endpoint: String,
    record_type: String,
    status: String,
    dealer_code: String,
    received_at: String,
}

fn chain_row(depth: usize, n: &deliveries::ChainNode) -> ChainRow {
    ChainRow {
        id: n.0.clone(),
        depth,
        kind: n.2.clone(),
        endpoint: n.3.clone(),
        record_type: n.4.clone().unwrap_or_default(),
        status: n.5.clone(),
        dealer_code: n.6.clone().unwrap_or_default(),
        received_at: views::ms_time(n.7),
    }
}

pub(super) struct AttemptRow {
    n: i64,
    started_at: String,
    duration_ms: i64,
    outcome: String,
    mapping_version: String,
    reason: String,
    causes: Vec<String>,
}

pub(super) struct DeliveryView {
    id: i64,
    route: String,
    target: String,
    status: String,
    attempts: i64,
    max_attempts: i64,
    mapping: String,
    mapping_version: String,
    next_attempt_at: String,
    remote_ref: String,
    last_reason: String,
    mapped: String,
    body: String,
    can_retry: bool,
    can_park: bool,
    log: Vec<AttemptRow>,
}

fn delivery_view(d: &Value) -> DeliveryView {
    let status = s(d, "status");
    DeliveryView {
        id: d["id"].as_i64().unwrap_or(0),
        route: s(d, "route"),
        target: s(d, "target"),
        can_retry: matches!(status.as_str(), "parked" | "rejected" | "pending"),
        can_park: matches!(status.as_str(), "pending" | "in_flight"),
        status,
        attempts: d["attempts"].as_i64().unwrap_or(0),
        max_attempts: d["max_attempts"].as_i64().unwrap_or(0),
        mapping: s(d, "mapping"),
        mapping_version: s(d, "mapping_version"),
        next_attempt_at: opt(d, "next_attempt_at")
            .map(|t| views::time(&t))
            .unwrap_or_default(),
        remote_ref: s(d, "remote_ref"),
        last_reason: s(d, "last_reason"),
        mapped: views::pretty(&d["mapped"]),
        body: views::pretty(&d["body"]),
        log: d["attempt_log"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|a| AttemptRow {
                        n: a["attempt"].as_i64().unwrap_or(0),
                        started_at: views::time(&s(a, "started_at")),
                        duration_ms: a["duration_ms"].as_i64().unwrap_or(0),
                        outcome: s(a, "outcome"),
                        mapping_version: s(a, "mapping_version"),
                        reason: s(a, "reason"),
                        causes: a["cause_chain"]
                            .as_array()
                            .map(|c| c.iter().map(text).collect())
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "ui/message.html")]
struct MessagePage {
    nav: Nav,
    m: MessageRow,
    partner: String,
    correlation_id: String,
    content_type: String,
    keys: Vec<(String, String)>,
    ancestors: Vec<ChainRow>,
    descendants: Vec<ChainRow>,
    chain_max: usize,
    body: String,
    csv: Option<(Vec<String>, Vec<Vec<String>>)>,
    headers: String,
    deliveries: Vec<DeliveryView>,
    replayable: bool,
    versions: Vec<u32>,
}

const CHAIN_MAX: usize = 200;

pub(super) async fn message(
    u: UiUser,
    State(st): State<UiState>,
    Path(id): Path<String>,
    Query(fl): Query<Flash>,
) -> PageResult {
    let pool = st.app.store.pool();
    let scope = u.op().dealer_scope();
    let d = queries::message_detail(pool, &id, scope)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("message {id}")))?;
    let op = u.op().clone();
    let visible = |n: &deliveries::ChainNode| op.may_see(n.6.as_deref());
    let ancestors = deliveries::ancestors(pool, &id, 10)
        .await?
        .iter()
        .filter(|n| visible(n))
        .map(|n| chain_row(0, n))
        .collect();
    let descendants = deliveries::descendants(pool, &id, 5, CHAIN_MAX)
        .await?
        .iter()
        .filter(|(_, n)| visible(n))
        .map(|(depth, n)| chain_row(*depth, n))
        .collect();
    let content_type = s(&d, "content_type");
    let csv = match &d["body"] {
        Value::String(t) if content_type.contains("csv") => views::csv_table(t, 500),
        _ => None,
    };
    let deliveries: Vec<DeliveryView> = d["deliveries"]
        .as_array()
        .map(|a| a.iter().map(delivery_view).collect())
        .unwrap_or_default();
    let mut versions: Vec<u32> = deliveries
        .iter()
        .filter(|d| !d.mapping.is_empty())
        .flat_map(|d| st.app.pipeline.mappings().versions(&d.mapping))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    let kind = s(&d, "kind");
    let replayable = matches!(kind.as_str(), "record" | "event" | "transport")
        && (s(&d, "status") == "accepted"
            || d["children"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["status"] == "accepted")));
    Ok(render(&MessagePage {
        nav: nav(&u, "search", "", fl.done),
        m: message_row(&d),
        partner: s(&d, "partner"),
        correlation_id: s(&d, "correlation_id"),
        content_type,
        keys: d["keys"]
            .as_array()
            .map(|k| k.iter().map(|k| (s(k, "kind"), s(k, "value"))).collect())
            .unwrap_or_default(),
        ancestors,
        descendants,
        chain_max: CHAIN_MAX,
        body: views::pretty(&d["body"]),
        csv,
        headers: views::pretty(&d["headers"]),
        deliveries,
        replayable,
        versions,
    }))
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct ReplayForm {
    csrf: Option<String>,
    mapping_version: Option<String>,
}

fn parse_version(v: Option<&str>) -> Result<Option<u32>, ApiError> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.trim_start_matches('v').parse().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_mapping_version",
                format!("mapping version '{v}' is not a number"),
            )
        }),
    }
}

pub(super) struct PreviewRow {
    record_id: String,
    route: String,
    target: String,
    mapping: String,
    mapping_version: String,
    mapped: String,
    error: String,
}

#[derive(Template)]
#[template(path = "ui/preview.html")]
struct PreviewFragment {
    version: Option<u32>,
    error: Option<String>,
    items: Vec<PreviewRow>,
}

pub(super) async fn preview(
    u: UiUser,
    State(st): State<UiState>,
    Path(id): Path<String>,
    Query(f): Query<ReplayForm>,
) -> PageResult {
    let version = parse_version(f.mapping_version.as_deref())?;
    let (items, error) = match ops::preview_replay(&st.app, u.op(), &id, version).await {
        Ok(items) => (items, None),
        // Scope failures stay 404s; anything else is shown in the preview box.
        Err(e) if e.status == StatusCode::NOT_FOUND && e.message.starts_with("message") => {
            return Err(e.into());
        }
        Err(e) => (Vec::new(), Some(e.message)),
    };
    Ok(render(&PreviewFragment {
        version,
        error,
        items: items
            .iter()
            .map(|p| PreviewRow {
                record_id: s(p, "record_id"),
                route: s(p, "route"),
                target: s(p, "target"),
                mapping: s(p, "mapping"),
                mapping_version: s(p, "mapping_version"),
                mapped: views::pretty(&p["mapped"]),
                error: s(p, "error"),
            })
            .collect(),
    }))
}

fn back_to(path: &str, done: &str) -> Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}done={}", views::urlencode(done))).into_response()
}

pub(super) async fn replay(
    u: UiUser,
    State(st): State<UiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<ReplayForm>,
) -> PageResult {
    if let Err(r) = u.check_csrf(&headers, f.csrf.as_deref()) {
        return Ok(r.into_response());
    }
    let version = parse_version(f.mapping_version.as_deref())?;
    let replayed = ops::replay(&st.app, u.op(), Channel::Ui, &id, version).await?;
    let how = version
        .map(|v| format!(" through mapping v{v}"))
        .unwrap_or_default();
    Ok(back_to(
        &format!("/ui/messages/{id}"),
        &format!("Replayed {} record(s){how}.", replayed.len()),
    ))
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct ActionForm {
    csrf: Option<String>,
    back: Option<String>,
}

fn back_path(back: Option<&str>) -> String {
    safe_next(back)
}

pub(super) async fn retry(
    u: UiUser,
    State(st): State<UiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> PageResult {
    if let Err(r) = u.check_csrf(&headers, f.csrf.as_deref()) {
        return Ok(r.into_response());
    }
    ops::retry(&st.app, u.op(), Channel::Ui, id).await?;
    Ok(back_to(
        &back_path(f.back.as_deref()),
        &format!("Delivery #{id} is queued again."),
    ))
}

pub(super) async fn park(
    u: UiUser,
    State(st): State<UiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> PageResult {
    if let Err(r) = u.check_csrf(&headers, f.csrf.as_deref()) {
        return Ok(r.into_response());
    }
    ops::park(&st.app, u.op(), Channel::Ui, id).await?;
    Ok(back_to(
        &back_path(f.back.as_deref()),
        &format!("Delivery #{id} is parked."),
    ))
}

// ---------- parked / rejected ----------

#[derive(Debug, Deserialize, Default)]
pub(super) struct QueueQuery {
    route: Option<String>,
    target: Option<String>,
    dealer: Option<String>,
    since: Option<String>,
    done: Option<String>,
}

pub(super) struct QueueRow {
    id: i64,
    message_id: String,
    updated_at: String,
    route: String,
    target: String,
    dealer_code: String,
    status: String,
    record_type: String,
    source_ref: String,
    attempts: i64,
    mapping: String,
    last_reason: String,
}

#[derive(Template)]
#[template(path = "ui/queue.html")]
struct QueuePage {
    nav: Nav,
    title: &'static str,
    status: &'static str,
    routes: Vec<String>,
    route: String,
    endpoints: Vec<String>,
    target: String,
    dealer: String,
    since: String,
    error: Option<String>,
    rows: Vec<QueueRow>,
    records: Vec<MessageRow>,
    limit: usize,
}

const QUEUE_LIMIT: i64 = 500;

async fn queue(u: UiUser, st: UiState, q: QueueQuery, status: &'static str) -> PageResult {
    let scope = u.op().dealer_scope().map(str::to_string);
    let dealer = nonempty(&q.dealer).map(|d| d.to_ascii_uppercase());
    if let (Some(s), Some(d)) = (&scope, &dealer)
        && s != d
    {
        return Err(ApiError::not_found(format!("dealer {d}")).into());
    }
    let (since_ms, error) = match views::parse_since(q.since.as_deref().unwrap_or("")) {
        Ok(v) => (v, None),
        Err(e) => (None, Some(e)),
    };
    let filter = DeliveryFilter {
        status: Some(status.to_string()),
        route: nonempty(&q.route),
        target: nonempty(&q.target),
        dealer: dealer.clone(),
        since_ms,
        scope: scope.clone(),
        limit: QUEUE_LIMIT,
    };
    let pool = st.app.store.pool();
    let rows = if error.is_some() {
        Vec::new()
    } else {
        deliveries::list(pool, &filter).await?
    };
    let records = if status == "rejected" && error.is_none() {
        let search = queries::Search {
            status: Some("rejected".into()),
            route: filter.route.clone(),
            since_ms,
            limit: 200,
            dealer: dealer.clone().or(scope),
            ..Default::default()
        };
        queries::search_messages(pool, &search)
            .await?
            .iter()
            .map(message_row)
            .collect()
    } else {
        Vec::new()
    };
    Ok(render(&QueuePage {
        nav: nav(&u, status, "", q.done),
        title: if status == "parked" {
            "Parked deliveries"
        } else {
            "Rejected"
        },
        status,
        routes: st.app.route_ids.to_vec(),
        route: q.route.unwrap_or_default(),
        endpoints: st.app.endpoints.iter().map(|(id, _)| id.clone()).collect(),
        target: q.target.unwrap_or_default(),
        dealer: dealer.unwrap_or_default(),
        since: q.since.unwrap_or_default(),
        error,
        rows: rows
            .iter()
            .map(|d| QueueRow {
                id: d["id"].as_i64().unwrap_or(0),
                message_id: s(d, "message_id"),
                updated_at: views::time(&s(d, "updated_at")),
                route: s(d, "route"),
                target: s(d, "target"),
                dealer_code: s(d, "dealer_code"),
                status: s(d, "status"),
                record_type: s(d, "record_type"),
                source_ref: s(d, "source_ref"),
                attempts: d["attempts"].as_i64().unwrap_or(0),
                mapping: match (opt(d, "mapping"), opt(d, "mapping_version")) {
                    (Some(m), Some(v)) => format!("{m} v{v}"),
                    (Some(m), None) => m,
                    _ => String::new(),
                },
                last_reason: s(d, "last_reason"),
            })
            .collect(),
        records,
        limit: QUEUE_LIMIT as usize,
    }))
}

pub(super) async fn parked(
    u: UiUser,
    State(st): State<UiState>,
    Query(q): Query<QueueQuery>,
) -> PageResult {
    queue(u, st, q, "parked").await
}

pub(super) async fn rejected(
    u: UiUser,
    State(st): State<UiState>,
    Query(q): Query<QueueQuery>,
) -> PageResult {
    queue(u, st, q, "rejected").await
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct BulkForm {
    csrf: Option<String>,
    action: Option<String>,
    status: Option<String>,
    route: Option<String>,
    target: Option<String>,
    dealer: Option<String>,
    since: Option<String>,
    mapping_version: Option<String>,
}

pub(super) async fn bulk(
    u: UiUser,
    State(st): State<UiState>,
    headers: HeaderMap,
    Form(f): Form<BulkForm>,
) -> PageResult {
    if let Err(r) = u.check_csrf(&headers, f.csrf.as_deref()) {
        return Ok(r.into_response());
    }
    let since_ms = views::parse_since(f.since.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request("invalid_since", e))?;
    let filter = DeliveryFilter {
        status: nonempty(&f.status),
        route: nonempty(&f.route),
        target: nonempty(&f.target),
        dealer: nonempty(&f.dealer).map(|d| d.to_ascii_uppercase()),
        since_ms,
        scope: None,
        limit: deliveries::BULK_MAX,
    };
    let status = filter.status.clone().unwrap_or_default();
    let back = match status.as_str() {
        "rejected" => "/ui/rejected",
        _ => "/ui/parked",
    };
    let done = match f.action.as_deref() {
        Some("retry") => {
            let ids = ops::bulk_retry(&st.app, u.op(), Channel::Ui, filter).await?;
            format!("{} deliveries queued again.", ids.len())
        }
        Some("replay") => {
            let version = parse_version(f.mapping_version.as_deref())?;
            let r = ops::bulk_replay(&st.app, u.op(), Channel::Ui, filter, version).await?;
            format!(
                "{} message(s) replayed ({} record(s)); {} could not be replayed.",
                r["messages"],
                r["replayed_records"].as_array().map_or(0, Vec::len),
                r["failed"].as_array().map_or(0, Vec::len)
            )
        }
        other => {
            return Err(ApiError::bad_request(
                "invalid_action",
                format!("bulk action must be retry or replay, not {other:?}"),
            )
            .into());
        }
    };
    Ok(back_to(back, &done))
}

// ---------- approvals ----------

pub(super) struct ApprovalRow {
    id: i64,
    created_at: String,
    customer_id: String,
    dealer_code: String,
    field: String,
    old: String,
    new: String,
    source_system: String,
    message_id: String,
}

#[derive(Template)]
#[template(path = "ui/approvals.html")]
struct ApprovalsPage {
    nav: Nav,
    items: Vec<ApprovalRow>,
}

pub(super) async fn approvals(
    u: UiUser,
    State(st): State<UiState>,
    Query(fl): Query<Flash>,
) -> PageResult {
    let items =
        crate::crm::reads::approvals(st.app.store.pool(), "pending", u.op().dealer_scope()).await?;
    Ok(render(&ApprovalsPage {
        nav: nav(&u, "approvals", "", fl.done),
        items: items
            .iter()
            .map(|a| ApprovalRow {
                id: a["id"].as_i64().unwrap_or(0),
                created_at: views::time(&s(a, "created_at")),
                customer_id: s(a, "customer_id"),
                dealer_code: s(a, "dealer_code"),
                field: s(a, "field"),
                old: s(a, "old"),
                new: s(a, "new"),
                source_system: s(a, "source_system"),
                message_id: s(a, "message_id"),
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct DecisionForm {
    csrf: Option<String>,
    decision: Option<String>,
    comment: Option<String>,
}

pub(super) async fn decide(
    u: UiUser,
    State(st): State<UiState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(f): Form<DecisionForm>,
) -> PageResult {
    if let Err(r) = u.check_csrf(&headers, f.csrf.as_deref()) {
        return Ok(r.into_response());
    }
    let approve = match f.decision.as_deref() {
        Some("approve") => true,
        Some("reject") => false,
        other => {
            return Err(ApiError::bad_request(
                "invalid_decision",
                format!("decision must be approve or reject, not {other:?}"),
            )
            .into());
        }
    };
    let comment = nonempty(&f.comment);
    ops::decide_approval(&st.app, u.op(), Channel::Ui, id, approve, comment).await?;
    Ok(back_to(
        "/ui/approvals",
        &format!(
            "Approval #{id} {}.",
            if approve { "approved" } else { "rejected" }
        ),
    ))
}

// ---------- dealer ----------

#[derive(Template)]
#[template(path = "ui/dealer.html")]
struct DealerPage {
    nav: Nav,
    code: String,
    name: String,
    fields: Vec<(String, String)>,
    flows: Vec<FlowRow>,
    rows: Vec<MessageRow>,
}

pub(super) async fn dealer(
    u: UiUser,
    State(st): State<UiState>,
    Path(code): Path<String>,
) -> PageResult {
    let code = code.to_ascii_uppercase();
    if !u.op().may_see(Some(&code)) {
        return Err(ApiError::not_found(format!("dealer {code}")).into());
    }
    let pool = st.app.store.pool();
    let record = crate::crm::reads::get(pool, "dealer", &code, u.op().dealer_scope()).await?;
    let rows: Vec<MessageRow> = queries::search_messages(
        pool,
        &queries::Search {
            limit: 50,
            dealer: Some(code.clone()),
            ..Default::default()
        },
    )
    .await?
    .iter()
    .map(message_row)
    .collect();
    if record.is_none() && rows.is_empty() {
        return Err(ApiError::not_found(format!("dealer {code}")).into());
    }
    let flows = flow_rows(&st, Some(&code))
        .await?
        .into_iter()
        .filter(|f| f.received_day > 0 || f.backlog > 0 || f.parked > 0 || f.delivered_day > 0)
        .collect();
    let record = record.unwrap_or(Value::Null);
    Ok(render(&DealerPage {
        nav: nav(&u, "dealer", "", None),
        name: s(&record, "dealer_name"),
        fields: record
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "dealer_code" | "dealer_name"))
                    .map(|(k, v)| (k.clone(), text(v)))
                    .collect()
            })
            .unwrap_or_default(),
        code,
        flows,
        rows,
    }))
}

// ---------- audit ----------

pub(super) struct AuditRow {
    at: String,
    user: String,
    dealer_code: String,
    action: String,
    target: String,
    before: String,
    after: String,
    detail: String,
    channel: String,
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditPage {
    nav: Nav,
    user: String,
    action: String,
    target: String,
    rows: Vec<AuditRow>,
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct AuditFilter {
    user: Option<String>,
    action: Option<String>,
    target: Option<String>,
}

pub(super) async fn audit(
    u: UiUser,
    State(st): State<UiState>,
    Query(q): Query<AuditFilter>,
) -> PageResult {
    if !u.op().is_admin() {
        return Err(ApiError::not_found("page /ui/audit").into());
    }
    let rows = audit::list(
        st.app.store.pool(),
        &audit::AuditQuery {
            user: nonempty(&q.user),
            action: nonempty(&q.action),
            target: nonempty(&q.target),
            since_ms: None,
            limit: 500,
        },
    )
    .await?;
    Ok(render(&AuditPage {
        nav: nav(&u, "audit", "", None),
        user: q.user.unwrap_or_default(),
        action: q.action.unwrap_or_default(),
        target: q.target.unwrap_or_default(),
        rows: rows
            .iter()
            .map(|e| AuditRow {
                at: views::time(&s(e, "at")),
                user: s(e, "user"),
                dealer_code: s(e, "dealer_code"),
                action: s(e, "action"),
                target: s(e, "target"),
                before: s(e, "before"),
                after: s(e, "after"),
                detail: s(e, "detail"),
                channel: s(e, "channel"),
            })
            .collect(),
    }))
}
