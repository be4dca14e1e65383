//! Dashboard sessions: login with operator name + token (checked like the API's bearer tokens),
//! a random session id in an HttpOnly SameSite=Strict cookie, a per-session CSRF token required
//! on every state-changing request, and a per-user lockout after repeated failed logins.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use rand::Rng;

use super::UiState;
use crate::http::auth::Operator;
use crate::store::now_ms;

pub const COOKIE: &str = "synchub_session";
/// Header htmx sends on every request (set once on `<body hx-headers>`).
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub operator: Operator,
    pub csrf: String,
    expires_ms: i64,
}

/// Failed logins of one user name inside the lockout window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first_ms: i64,
}

/// Sessions live in memory: a restart signs everyone out, which is acceptable for an operator
/// console and keeps session ids out of the database. With several hub instances behind a load
/// balancer, use sticky sessions for `/ui`.
#[derive(Default)]
pub struct Sessions {
    // std Mutex: held for a map lookup or insert only, never across an await.
    by_id: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// Constant-time comparison, so a CSRF token cannot be guessed byte by byte from timings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    pub fn create(&self, operator: Operator, ttl_secs: u64) -> Session {
        let s = Session {
            id: random_token(),
            operator,
            csrf: random_token(),
            expires_ms: now_ms() + (ttl_secs as i64) * 1000,
        };
        if let Ok(mut g) = self.by_id.lock() {
            let now = now_ms();
            g.retain(|_, v| v.expires_ms > now);
            g.insert(s.id.clone(), s.clone());
        }
        s
    }

    /// The live session of `id`, its idle timeout renewed.
    pub fn get(&self, id: &str, ttl_secs: u64) -> Option<Session> {
        let mut g = self.by_id.lock().ok()?;
        let now = now_ms();
        match g.get_mut(id) {
            Some(s) if s.expires_ms > now => {
                s.expires_ms = now + (ttl_secs as i64) * 1000;
                Some(s.clone())
            }
            Some(_) => {
                g.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut g) = self.by_id.lock() {
            g.remove(id);
        }
    }

    /// Whether `user` is locked out after too many failed logins in the window.
    pub fn locked(&self, user: &str, max: u32, window_secs: u64) -> bool {
        let Ok(g) = self.failures.lock() else {
            return false;
        };
        g.get(user)
            .is_some_and(|f| f.count >= max && now_ms() - f.first_ms < window_secs as i64 * 1000)
    }

    pub fn failed(&self, user: &str, window_secs: u64) {
        if let Ok(mut g) = self.failures.lock() {
            let now = now_ms();
            let f = g.entry(user.to_string()).or_insert(Failures {
                count: 0,
                first_ms: now,
            });
            if now - f.first_ms >= window_secs as i64 * 1000 {
                *f = Failures {
                    count: 0,
                    first_ms: now,
                };
            }
            f.count += 1;
        }
    }

    pub fn succeeded(&self, user: &str) {
        if let Ok(mut g) = self.failures.lock() {
            g.remove(user);
        }
    }
}

pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// `Set-Cookie` for a new session (or, with `None`, one that clears it).
pub fn set_cookie(session: Option<&Session>, secure: bool, ttl_secs: u64) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match session {
        Some(s) => format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={ttl_secs}{secure}",
            s.id
        ),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0{secure}"),
    }
}

/// A signed-in operator on a dashboard page. Without a session, pages redirect to the login
/// form (htmx requests get `HX-Redirect`, so a fragment poll does not render the login page
/// inside the overview).
#[derive(Debug, Clone)]
pub struct UiUser(pub Session);

impl UiUser {
    pub fn op(&self) -> &Operator {
        &self.0.operator
    }

    /// Refuses a state-changing request whose CSRF token (form field or htmx header) is not
    /// this session's.
    pub fn check_csrf(&self, headers: &HeaderMap, form: Option<&str>) -> Result<(), CsrfRefused> {
        let header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let ok = [header, form]
            .into_iter()
            .flatten()
            .any(|t| same(t, &self.0.csrf));
        if ok {
            Ok(())
        } else {
            tracing::warn!(operator = %self.0.operator.user, "Dashboard request refused: missing or wrong CSRF token.");
            Err(CsrfRefused)
        }
    }
}

/// A state-changing request without this session's CSRF token: 403 with an explaining page.
#[derive(Debug)]
pub struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        super::error_page(
            axum::http::StatusCode::FORBIDDEN,
            "This form has expired or did not come from the dashboard (CSRF token missing or wrong). Reload the page and try again.",
        )
    }
}

impl FromRequestParts<UiState> for UiUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &UiState) -> Result<Self, Self::Rejection> {
        let ttl = st.app.ui.session_ttl_secs;
        if let Some(s) = cookie_value(&parts.headers).and_then(|id| st.sessions.get(&id, ttl)) {
            return Ok(UiUser(s));
        }
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/ui/".into());
        let to = format!("/ui/login?next={}", super::views::urlencode(&next));
        if parts.headers.contains_key("hx-request") {
            return Err((
                axum::http::StatusCode::UNAUTHORIZED,
                [("HX-Redirect", to)],
                "session expired",
            )
                .into_response());
        }
        Err(Redirect::to(&to).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Role;

    fn op() -> Operator {
        Operator {
            user: "admin".into(),
            role: Role::Admin,
            dealer_code: None,
        }
    }

    #[test]
    fn sessions_expire_and_can_be_removed() {
        let s = Sessions::default();
        let a = s.create(op(), 60);
        assert_eq!(a.id.len(), 64);
        assert_ne!(a.id, a.csrf);
        assert!(s.get(&a.id, 60).is_some());
        s.remove(&a.id);
        assert!(s.get(&a.id, 60).is_none());
        let b = s.create(op(), 0);
        assert!(s.get(&b.id, 0).is_none(), "a session past its ttl is gone");
    }

    #[test]
    fn lockout_after_max_failures_and_reset_on_success() {
        let s = Sessions::default();
        for _ in 0..4 {
            s.failed("admin", 300);
        }
        assert!(!s.locked("admin", 5, 300));
        s.failed("admin", 300);
        assert!(s.locked("admin", 5, 300));
        assert!(!s.locked("it-D0001", 5, 300), "per user name");
        s.succeeded("admin");
        assert!(!s.locked("admin", 5, 300));
    }

    #[test]
    fn cookie_is_http_only_strict_and_scoped_to_ui() {
        let s = Sessions::default().create(op(), 60);
        let c = set_cookie(Some(&s), true, 60);
        assert!(c.starts_with(&format!("{COOKIE}={}", s.id)));
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/ui",
            "Secure",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!set_cookie(Some(&s), false, 60).contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={}", s.id).parse().unwrap(),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some(s.id.as_str()));
    }
}
