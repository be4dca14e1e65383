//! Dashboard sessions: login with operator name + token (checked like the API's bearer tokens)
//! behind a login-form CSRF token, a random session id in an HttpOnly SameSite=Strict cookie
//! whose SHA-256 keys a row in the store (so sessions survive restarts and work on every
//! instance), a per-session CSRF token on every state-changing request, and a per-user lockout
//! after repeated failed logins, counted in each instance's memory.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::{UiError, UiState};
use crate::http::auth::{Operator, Operators};
use crate::store::ui_sessions::{self, SessionRow};
use crate::store::{Store, StoreError, now_ms};

pub const COOKIE: &str = "synchub_session";
/// The pre-session cookie of the login form (double-submit CSRF token).
pub const LOGIN_COOKIE: &str = "synchub_login";
/// How long a login form stays usable: long enough to type a token, short enough that a token
/// copied out of an old page is soon worthless.
pub const LOGIN_TTL_SECS: u64 = 900;
/// Header htmx sends on every request (set once on `<body hx-headers>`).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Longest gap between two renewals of a session's idle timeout. A renewal is a write: with it,
/// a session costs at most one write a minute however many pages it opens, and the idle timeout
/// is still kept to within a minute.
const RENEW_EVERY_MS: i64 = 60_000;

/// A live session as a request sees it. `id` is the cookie value; only its hash is stored.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub operator: Operator,
    pub csrf: String,
}

/// Failed logins of one user name inside the lockout window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first_ms: i64,
}

/// Sessions are rows of `ui_sessions` in the store, so a restart keeps operators signed in and
/// any instance sharing the store serves any session (no sticky sessions needed).
///
/// The failed-login lockout stays in this instance's memory: it is a brake on guessing, and
/// operator tokens are long random secrets, so N instances behind a balancer allowing N times
/// `max_failed_logins` per window (and a restart clearing the count) does not make guessing
/// feasible, while a shared counter would add a write to the store for every failed attempt
/// an attacker sends.
pub struct Sessions {
    store: Store,
    // std Mutex: held for a map lookup or insert only, never across an await.
    failures: Mutex<HashMap<String, Failures>>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

fn is_token(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The store key of a session: its id's hash, so a leaked table gives no cookie.
fn id_hash(id: &str) -> String {
    sha256_hex(&[id])
}

/// Ties a session to the token its operator has now: rotating the token in the configuration
/// ends the sessions opened with the old one. Hashed with the session id, which the store does
/// not have, so the column cannot be used to test guesses of a weak token.
fn credential(id: &str, token_sha256: &str) -> String {
    sha256_hex(&[id, ":", token_sha256])
}

/// Constant-time comparison, so a CSRF token cannot be guessed byte by byte from timings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The new `expires_at` of a session whose idle timeout was last set to `expires_at`, or `None`
/// while the last renewal is recent enough (under a minute, or half the TTL if that is shorter).
fn renewal(expires_at: i64, now: i64, ttl_ms: i64) -> Option<i64> {
    let renewed_at = expires_at - ttl_ms;
    let every = (ttl_ms / 2).min(RENEW_EVERY_MS);
    (now - renewed_at >= every).then_some(now + ttl_ms)
}

impl Sessions {
    pub fn new(store: Store) -> Sessions {
        Sessions {
            store,
            failures: Mutex::default(),
        }
    }

    /// Opens a session for `operator`, whose configured token hash is `token_sha256`, and returns
    /// it once it is committed (so the next request, on any instance, finds it).
    pub async fn create(
        &self,
        operator: Operator,
        token_sha256: &str,
        ttl_secs: u64,
    ) -> Result<Session, StoreError> {
        let id = random_token();
        let now = now_ms();
        let row = SessionRow {
            id_hash: id_hash(&id),
            operator: operator.user.clone(),
            credential: credential(&id, token_sha256),
            csrf: random_token(),
            created_at: now,
            expires_at: now + ttl_ms(ttl_secs),
        };
        let csrf = row.csrf.clone();
        let purged = self
            .store
            .write(move |c| Box::pin(async move { ui_sessions::insert(c, &row, now).await }))
            .await?;
        if purged > 0 {
            tracing::debug!(purged, "Expired dashboard sessions deleted.");
        }
        Ok(Session { id, operator, csrf })
    }

    /// The live session of cookie value `id`, with its operator as configured now: `None` when
    /// there is no such session, it has expired, its operator is no longer configured, or the
    /// operator's token changed since the sign-in. Renews the idle timeout when it is due,
    /// without making the request wait for that write.
    pub async fn get(
        &self,
        id: &str,
        operators: &Operators,
        ttl_secs: u64,
    ) -> Result<Option<Session>, StoreError> {
        // Not a token we could have issued: no need to ask the store.
        if !is_token(id) {
            return Ok(None);
        }
        let key = id_hash(id);
        let Some(row) = ui_sessions::find(self.store.pool(), &key).await? else {
            return Ok(None);
        };
        let now = now_ms();
        if row.expires_at <= now {
            return Ok(None);
        }
        let Some((operator, token_sha256)) = operators.by_user(&row.operator) else {
            tracing::info!(operator = %row.operator, "Dashboard session refused: its operator is no longer configured.");
            return Ok(None);
        };
        if !same(&row.credential, &credential(id, token_sha256)) {
            tracing::info!(operator = %row.operator, "Dashboard session refused: the operator's token changed since the sign-in.");
            return Ok(None);
        }
        if let Some(expires_at) = renewal(row.expires_at, now, ttl_ms(ttl_secs)) {
            let store = self.store.clone();
            tokio::spawn(async move {
                let r = store
                    .write(move |c| {
                        Box::pin(async move { ui_sessions::extend(c, &key, expires_at, now).await })
                    })
                    .await;
                if let Err(e) = r {
                    // The session still ends at its old time; the next request tries again.
                    tracing::warn!(error = %e, "Could not renew a dashboard session's idle timeout.");
                }
            });
        }
        Ok(Some(Session {
            id: id.to_string(),
            operator: operator.clone(),
            csrf: row.csrf,
        }))
    }

    /// Ends the session of cookie value `id` on every instance, once committed.
    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        let key = id_hash(id);
        self.store
            .write(move |c| Box::pin(async move { ui_sessions::delete(c, &key).await }))
            .await?;
        Ok(())
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

fn ttl_ms(ttl_secs: u64) -> i64 {
    i64::try_from(ttl_secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

/// The value of cookie `name` in the request.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
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

/// The login form's CSRF token: the one of the request's pre-session cookie while that is
/// still there (several open login tabs then share one token), else a new one.
pub fn login_token(headers: &HeaderMap) -> String {
    cookie_value(headers, LOGIN_COOKIE)
        .filter(|t| is_token(t))
        .unwrap_or_else(new_login_token)
}

/// A login form token that owes nothing to the request.
pub fn new_login_token() -> String {
    random_token()
}

/// `Set-Cookie` for the login form's pre-session cookie holding `token` (or, with `None`, one
/// that clears it after a sign-in).
pub fn set_login_cookie(token: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match token {
        Some(t) => format!(
            "{LOGIN_COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={LOGIN_TTL_SECS}{secure}"
        ),
        None => format!("{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0{secure}"),
    }
}

/// Double-submit check of a login POST: the form field must equal the pre-session cookie the
/// login page set. A cross-site form can send the field but cannot read or set our cookie, so it
/// cannot sign a victim's browser in to the attacker's account.
pub fn login_csrf_ok(headers: &HeaderMap, form: Option<&str>) -> bool {
    match (cookie_value(headers, LOGIN_COOKIE), form) {
        (Some(cookie), Some(field)) => is_token(&cookie) && same(&cookie, field),
        _ => false,
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
        if let Some(id) = cookie_value(&parts.headers, COOKIE) {
            // A store that does not answer is an outage to show, not a reason to sign out.
            match st.sessions.get(&id, &st.app.operators, ttl).await {
                Ok(Some(s)) => return Ok(UiUser(s)),
                Ok(None) => {}
                Err(e) => return Err(UiError::from(e).into_response()),
            }
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
    use crate::settings::{OperatorConfig, Role};

    fn token_hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn operators(role: Role, token: &str) -> Operators {
        Operators::from_config(&[OperatorConfig {
            user: "admin".into(),
            token_sha256: token_hash(token),
            role,
            dealer_code: (role == Role::DealerIt).then(|| "D0001".to_string()),
        }])
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sessions_are_stored_hashed_expire_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let ops = operators(Role::Admin, "t1");
        let (op, hash) = ops.by_user("admin").unwrap();
        let s = Sessions::new(store.clone());
        let a = s.create(op.clone(), hash, 60).await.unwrap();
        assert_eq!(a.id.len(), 64);
        assert_ne!(a.id, a.csrf);
        let got = s.get(&a.id, &ops, 60).await.unwrap().expect("live");
        assert_eq!(got.csrf, a.csrf);
        assert!(
            ui_sessions::find(store.pool(), &a.id)
                .await
                .unwrap()
                .is_none(),
            "the raw id is not a key"
        );
        // Another Sessions on the same store (another instance, or after a restart) sees it.
        let other = Sessions::new(store.clone());
        assert!(other.get(&a.id, &ops, 60).await.unwrap().is_some());
        other.remove(&a.id).await.unwrap();
        assert!(s.get(&a.id, &ops, 60).await.unwrap().is_none());
        let b = s.create(op.clone(), hash, 0).await.unwrap();
        assert!(
            s.get(&b.id, &ops, 0).await.unwrap().is_none(),
            "a session past its ttl is gone"
        );
        // The next sign-in purges it.
        s.create(op.clone(), hash, 60).await.unwrap();
        assert!(
            ui_sessions::find(store.pool(), &id_hash(&b.id))
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.get("not-a-token", &ops, 60).await.unwrap().is_none());
        store.close().await;
    }

    #[tokio::test]
    async fn a_session_follows_its_operator_in_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let ops = operators(Role::Admin, "t1");
        let (op, hash) = ops.by_user("admin").unwrap();
        let s = Sessions::new(store.clone());
        let a = s.create(op.clone(), hash, 60).await.unwrap();
        // Role changed: the session carries the new role.
        let demoted = operators(Role::DealerIt, "t1");
        let got = s.get(&a.id, &demoted, 60).await.unwrap().unwrap();
        assert_eq!(got.operator.role, Role::DealerIt);
        assert_eq!(got.operator.dealer_scope(), Some("D0001"));
        // Token rotated or operator removed: the session is no longer valid.
        let rotated = operators(Role::Admin, "t2");
        assert!(s.get(&a.id, &rotated, 60).await.unwrap().is_none());
        assert!(
            s.get(&a.id, &Operators::default(), 60)
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.get(&a.id, &ops, 60).await.unwrap().is_some());
        store.close().await;
    }

    #[test]
    fn renewal_is_due_once_a_minute_or_half_the_ttl() {
        let hour = 3_600_000;
        // Just renewed (expires_at = now + ttl): nothing to write.
        assert_eq!(renewal(1_000 + hour, 1_000, hour), None);
        assert_eq!(renewal(1_000 + hour, 60_999, hour), None);
        assert_eq!(renewal(1_000 + hour, 61_000, hour), Some(61_000 + hour));
        // A short TTL renews after half of it.
        assert_eq!(renewal(1_000 + 10_000, 5_999, 10_000), None);
        assert_eq!(renewal(1_000 + 10_000, 6_000, 10_000), Some(16_000));
    }

    #[tokio::test]
    async fn lockout_after_max_failures_and_reset_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sessions::new(store(&dir).await);
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
    fn cookies_are_http_only_strict_and_scoped_to_ui() {
        let s = Session {
            id: random_token(),
            operator: Operator {
                user: "admin".into(),
                role: Role::Admin,
                dealer_code: None,
            },
            csrf: random_token(),
        };
        let c = set_cookie(Some(&s), true, 60);
        assert!(c.starts_with(&format!("{COOKIE}={}", s.id)));
        let login = set_login_cookie(Some(&s.csrf), true);
        assert!(login.starts_with(&format!("{LOGIN_COOKIE}={}", s.csrf)));
        for c in [&c, &login] {
            for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Secure"] {
                assert!(c.contains(part), "{c}");
            }
        }
        assert!(c.contains("Max-Age=60"));
        assert!(login.contains(&format!("Max-Age={LOGIN_TTL_SECS}")));
        assert!(!set_cookie(Some(&s), false, 60).contains("Secure"));
        assert!(set_login_cookie(None, false).contains("Max-Age=0"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={}; {LOGIN_COOKIE}={}", s.id, s.csrf)
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie_value(&h, COOKIE).as_deref(), Some(s.id.as_str()));
        assert_eq!(
            login_token(&h),
            s.csrf,
            "an open login form's token is kept"
        );
        assert!(login_csrf_ok(&h, Some(&s.csrf)));
        assert!(!login_csrf_ok(&h, Some(&s.id)));
        assert!(!login_csrf_ok(&h, None));
        assert!(!login_csrf_ok(&HeaderMap::new(), Some(&s.csrf)));
        assert!(is_token(&login_token(&HeaderMap::new())));
    }
}
