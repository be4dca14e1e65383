//! The operations dashboard at `/ui/`: server-rendered askama pages with htmx (vendored, embedded
//! like the stylesheet), signed in with an operator's name and token. Every page reads through
//! the same store queries as the ops API and acts through `crate::ops`, with the same dealer scope.

pub mod api;
mod pages;
pub mod session;
pub mod views;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use self::session::Sessions;
use crate::http::AppState;
use crate::http::error::ApiError;

/// `[ui]`: the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiSettings {
    /// A flow whose last successful delivery is older than this shows amber; three times older
    /// shows red.
    #[serde(default = "default_freshness_warn_secs")]
    pub freshness_warn_secs: u64,
    /// Idle seconds after which a dashboard session ends. Kept to within a minute: the stored
    /// expiry is moved forward at most once a minute, not on every page.
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// Mark the session cookie `Secure` (set when the dashboard is served over HTTPS, e.g.
    /// behind a TLS-terminating proxy).
    #[serde(default)]
    pub secure_cookie: bool,
    /// Failed logins of one user name after which it is locked out for `lockout_secs`.
    #[serde(default = "default_max_failed_logins")]
    pub max_failed_logins: u32,
    #[serde(default = "default_lockout_secs")]
    pub lockout_secs: u64,
}

fn default_freshness_warn_secs() -> u64 {
    3600
}

fn default_session_ttl_secs() -> u64 {
    8 * 3600
}

fn default_max_failed_logins() -> u32 {
    5
}

fn default_lockout_secs() -> u64 {
    300
}

impl Default for UiSettings {
    fn default() -> UiSettings {
        UiSettings {
            freshness_warn_secs: default_freshness_warn_secs(),
            session_ttl_secs: default_session_ttl_secs(),
            secure_cookie: false,
            max_failed_logins: default_max_failed_logins(),
            lockout_secs: default_lockout_secs(),
        }
    }
}

/// What dashboard handlers reach: the API's state plus the sessions.
#[derive(Clone)]
pub struct UiState {
    pub app: AppState,
    pub sessions: Arc<Sessions>,
}

const HTMX: &str = include_str!("../../assets/htmx.min.js");
const CSS: &str = include_str!("../../assets/app.css");

pub fn router(app: AppState) -> Router {
    let st = UiState {
        sessions: Arc::new(Sessions::new(app.store.clone())),
        app,
    };
    Router::new()
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::to("/ui/") }),
        )
        .route("/ui/", get(pages::overview))
        .route("/ui/fragments/overview", get(pages::overview_fragment))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/search", get(pages::search))
        .route("/ui/messages/{id}", get(pages::message))
        .route("/ui/messages/{id}/preview", get(pages::preview))
        .route("/ui/messages/{id}/replay", post(pages::replay))
        .route("/ui/deliveries/{id}/retry", post(pages::retry))
        .route("/ui/deliveries/{id}/park", post(pages::park))
        .route("/ui/deliveries/bulk", post(pages::bulk))
        .route("/ui/parked", get(pages::parked))
        .route("/ui/rejected", get(pages::rejected))
        .route("/ui/approvals", get(pages::approvals))
        .route("/ui/approvals/{id}", post(pages::decide))
        .route("/ui/dealers/{code}", get(pages::dealer))
        .route("/ui/audit", get(pages::audit))
        .route(
            "/ui/assets/htmx.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", HTMX) }),
        )
        .route(
            "/ui/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .with_state(st)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

/// An error as a page (the dashboard's counterpart of the API's JSON error body).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        message,
    };
    let mut resp = render(&page);
    *resp.status_mut() = status;
    resp
}

/// Renders a template; a template failure is an internal error, logged, never shown raw.
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Dashboard template failed to render.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "template error; see the hub's log",
            )
                .into_response()
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        error_page(self.0.status, &self.0.message)
    }
}

/// An API error shown as a dashboard page with the same status and message.
pub struct UiError(pub ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e)
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> Self {
        UiError(ApiError::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ui_settings_default_and_refuse_unknown_keys() {
        let s: UiSettings = toml::from_str("freshness_warn_secs = 60").unwrap();
        assert_eq!(s.freshness_warn_secs, 60);
        assert_eq!(s.session_ttl_secs, 8 * 3600);
        assert!(!s.secure_cookie);
        let e = toml::from_str::<UiSettings>("freshnes_warn_secs = 60").unwrap_err();
        assert!(e.to_string().contains("freshnes_warn_secs"), "{e}");
    }

    #[test]
    fn the_shipped_config_documents_every_ui_default() {
        let text = include_str!("../../config/synchub.toml");
        let table: toml::Table = toml::from_str(text).unwrap();
        let shipped: UiSettings = table["ui"].clone().try_into().unwrap();
        assert_eq!(shipped, UiSettings::default());
    }
}
