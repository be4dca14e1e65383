//! Dashboard sessions kept in the store: they survive a restart, are valid on every instance
//! sharing a PostgreSQL database and end on all of them at logout, store only the id's hash,
//! follow operator changes in the configuration, and renew their idle timeout without a write
//! per page; a login POST needs the login form's CSRF token.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::helpers::{ADMIN, Backend, IT_D0001, TestConfig, TestHub};
use crate::ui::{UiClient, csrf_of};

/// The raw session id, i.e. the cookie value.
fn session_id(c: &UiClient) -> String {
    c.cookie
        .as_deref()
        .and_then(|c| c.strip_prefix("synchub_session="))
        .expect("signed in")
        .to_string()
}

type Row = (String, String, String, String, i64, i64);

async fn rows(hub: &TestHub) -> Vec<Row> {
    sqlx::query_as(
        "SELECT id_hash, operator, credential, csrf, created_at, expires_at FROM ui_sessions \
         ORDER BY created_at",
    )
    .fetch_all(hub.store.pool())
    .await
    .expect("ui_sessions rows")
}

async fn audit_count(hub: &TestHub, token: &str, action: &str) -> usize {
    let (s, a) = hub
        .get(&format!("/api/v1/audit?action={action}"), token)
        .await;
    assert_eq!(s, 200, "{a}");
    a["entries"].as_array().map_or(0, Vec::len)
}

/// Waits until the wall clock (the hub's time unit) reaches `at_ms`.
async fn sleep_until_ms(at_ms: i64) {
    let wait = at_ms - synchub::store::now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

#[tokio::test]
async fn a_session_survives_a_restart_and_is_stored_hashed_sqlite() {
    survives_a_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_session_survives_a_restart_and_is_stored_hashed_postgres() {
    survives_a_restart(Backend::Postgres).await;
}

async fn survives_a_restart(backend: Backend) {
    let hub = TestHub::spawn(backend).await;
    let mut admin = UiClient::login(&hub, "admin", ADMIN).await;
    let id = session_id(&admin);

    // The row holds the id's SHA-256, never the id: a copy of the table opens nothing.
    let stored = rows(&hub).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (id_hash, operator, credential, csrf, created_at, expires_at) = &stored[0];
    assert_eq!(*id_hash, hex::encode(Sha256::digest(id.as_bytes())));
    assert_eq!(operator, "admin");
    assert_eq!(*csrf, admin.csrf);
    for column in [id_hash, operator, credential, csrf] {
        assert!(!column.contains(&id), "raw session id stored: {stored:?}");
    }
    assert_eq!(expires_at - created_at, 8 * 3600 * 1000, "the default TTL");
    let mut hashed_cookie = UiClient::anonymous(&hub);
    hashed_cookie.cookie = Some(format!("synchub_session={id_hash}"));
    assert_eq!(
        hashed_cookie.get("/ui/").await.status,
        303,
        "the stored hash is not a cookie"
    );

    let hub = hub.restart().await;
    admin.base = hub.base.clone();
    let home = admin.get("/ui/").await;
    assert_eq!(
        home.status, 200,
        "signed in after the restart: {}",
        home.body
    );
    assert_eq!(
        csrf_of(&home.body),
        admin.csrf,
        "the session keeps its CSRF token"
    );
    let out = admin.post("/ui/logout", &[]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(rows(&hub).await.is_empty(), "logout deletes the row");
    assert_eq!(admin.get("/ui/").await.status, 303);
    hub.stop().await;
}

#[tokio::test]
async fn a_session_is_valid_on_every_instance_and_logout_ends_it_everywhere_postgres() {
    let a = TestHub::spawn(Backend::Postgres).await;
    let b = a.spawn_beside(TestConfig::shipped()).await;
    let it_on_a = UiClient::login(&a, "it-D0001", IT_D0001).await;
    let admin_on_a = UiClient::login(&a, "admin", ADMIN).await;

    // The same cookie on the second instance: same operator, same scope, same CSRF token.
    let mut it_on_b = UiClient::anonymous(&b);
    it_on_b.cookie = it_on_a.cookie.clone();
    let own = it_on_b.get("/ui/dealers/D0001").await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(it_on_b.get("/ui/dealers/D0002").await.status, 404);
    it_on_b.csrf = csrf_of(&own.body);
    assert_eq!(it_on_b.csrf, it_on_a.csrf);

    // Signing out on B ends the session on A too, and only that session.
    let out = it_on_b.post("/ui/logout", &[]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    for (name, c) in [("instance A", &it_on_a), ("instance B", &it_on_b)] {
        let p = c.get("/ui/").await;
        assert_eq!(p.status, 303, "{name} still accepts the cookie");
        assert!(p.location.starts_with("/ui/login"), "{}", p.location);
    }
    assert_eq!(admin_on_a.get("/ui/").await.status, 200);
    let mut admin_on_b = UiClient::anonymous(&b);
    admin_on_b.cookie = admin_on_a.cookie.clone();
    assert_eq!(admin_on_b.get("/ui/audit").await.status, 200);
    assert_eq!(rows(&a).await.len(), 1);
    b.stop().await;
    a.stop().await;
}

/// The login form of admin with its right token as password, and `csrf` if given.
fn login_fields(csrf: Option<&str>) -> Vec<(&str, &str)> {
    let mut f = vec![("username", "admin"), ("password", ADMIN), ("next", "/ui/")];
    if let Some(t) = csrf {
        f.push(("csrf", t));
    }
    f
}

#[tokio::test]
async fn a_login_without_its_form_token_is_refused() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let mut c = UiClient::anonymous(&hub);
    c.login_form().await;
    let cookie = c
        .login_cookie
        .clone()
        .expect("the login page sets a pre-session cookie");
    let token = c.login_token.clone();
    assert_eq!(cookie, format!("synchub_login={token}"));
    assert_eq!(token.len(), 64);
    // A second look at the page (another tab) keeps the same token.
    c.login_form().await;
    assert_eq!(c.login_token, token);

    let other = "0".repeat(64);
    let cases = [
        ("no token and no cookie", login_fields(None), None),
        (
            "no token in the form",
            login_fields(None),
            Some(cookie.as_str()),
        ),
        (
            "the token without its cookie",
            login_fields(Some(&token)),
            None,
        ),
        (
            "a token not matching the cookie",
            login_fields(Some(&other)),
            Some(cookie.as_str()),
        ),
        (
            "an empty token",
            login_fields(Some("")),
            Some(cookie.as_str()),
        ),
    ];
    for (what, form, cookie) in cases {
        let p = c.post_login(&form, cookie).await;
        assert_eq!(p.status, 403, "{what}: {}", p.body);
        assert!(p.body.contains("CSRF"), "{what}: {}", p.body);
        assert!(
            p.body.contains("name=\"password\""),
            "{what}: the login page again"
        );
        assert!(c.cookie.is_none(), "{what}: a session cookie was set");
        assert!(rows(&hub).await.is_empty(), "{what}: a session was stored");
    }
    assert_eq!(audit_count(&hub, ADMIN, "login").await, 0);
    assert_eq!(
        audit_count(&hub, ADMIN, "login_failed").await,
        0,
        "a forged form is not a failed sign-in"
    );

    // The refusal page carries a fresh token and cookie: signing in from it works.
    let refused = c.post_login(&login_fields(None), None).await;
    let fresh = csrf_of(&refused.body);
    assert_ne!(fresh, token, "a refused token is not handed back");
    assert_eq!(
        c.login_cookie.as_deref(),
        Some(format!("synchub_login={fresh}").as_str())
    );
    let login_cookie = c.login_cookie.clone();
    let ok = c
        .post_login(&login_fields(Some(&fresh)), login_cookie.as_deref())
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.location, "/ui/");
    assert!(c.cookie.is_some());
    assert!(
        c.login_cookie.is_none(),
        "the pre-session cookie is cleared at sign-in"
    );
    assert_eq!(rows(&hub).await.len(), 1);
    assert_eq!(c.get("/ui/").await.status, 200);
    hub.stop().await;
}

#[tokio::test]
async fn a_restart_applies_operator_changes_to_open_sessions() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let mut admin = UiClient::login(&hub, "admin", ADMIN).await;
    let mut it = UiClient::login(&hub, "it-D0001", IT_D0001).await;
    assert_eq!(it.get("/ui/dealers/D0002").await.status, 404);

    // Headquarters rotates admin's token and moves it-D0001 to dealer D0002.
    let local = hub.config_dir().join("synchub.local.toml");
    let text = std::fs::read_to_string(&local).expect("local profile");
    let admin_hash = hex::encode(Sha256::digest(ADMIN.as_bytes()));
    let it_block = format!(
        "user = \"it-D0001\"\ntoken_sha256 = \"{}\"\nrole = \"dealer_it\"\ndealer_code = \"D0001\"\n",
        hex::encode(Sha256::digest(IT_D0001.as_bytes()))
    );
    assert!(
        text.contains(&admin_hash) && text.contains(&it_block),
        "{text}"
    );
    let changed = text
        .replace(
            &admin_hash,
            &hex::encode(Sha256::digest(b"rotated-admin-token")),
        )
        .replace(
            &it_block,
            &it_block.replace("dealer_code = \"D0001\"", "dealer_code = \"D0002\""),
        );
    std::fs::write(&local, &changed).expect("write local profile");
    let hub = hub.restart().await;
    admin.base = hub.base.clone();
    it.base = hub.base.clone();

    let p = admin.get("/ui/").await;
    assert_eq!(p.status, 303, "a session of a rotated token ends");
    UiClient::login(&hub, "admin", "rotated-admin-token").await;
    assert_eq!(
        it.get("/ui/dealers/D0002").await.status,
        200,
        "the new scope applies"
    );
    assert_eq!(it.get("/ui/dealers/D0001").await.status, 404);

    // it-D0001 removed from the configuration: its session is no longer valid.
    let without_it = remove_operator(&changed, "it-D0001");
    std::fs::write(&local, without_it).expect("write local profile");
    let hub = hub.restart().await;
    it.base = hub.base.clone();
    assert_eq!(it.get("/ui/").await.status, 303);
    hub.stop().await;
}

/// `text` without the `[[auth.operators]]` table of `user`.
fn remove_operator(text: &str, user: &str) -> String {
    let mut out = Vec::new();
    let mut tables = text.split("[[auth.operators]]");
    out.push(tables.next().unwrap_or_default().to_string());
    for t in tables {
        if !t.contains(&format!("user = \"{user}\"")) {
            out.push(t.to_string());
        }
    }
    out.join("[[auth.operators]]")
}

#[tokio::test]
async fn the_idle_timeout_is_renewed_without_a_write_per_page() {
    let hub = TestHub::spawn_with(
        Backend::Sqlite,
        TestConfig::shipped(),
        &[("SYNCHUB__UI__SESSION_TTL_SECS", "4")],
    )
    .await;
    let c = UiClient::login(&hub, "admin", ADMIN).await;
    let expires = || async { rows(&hub).await[0].5 };
    let first = expires().await;
    for _ in 0..5 {
        assert_eq!(c.get("/ui/").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        expires().await,
        first,
        "pages soon after the last renewal write nothing"
    );

    // Half the TTL after the sign-in, a page moves the expiry forward.
    let renewed = |after: i64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let e = expires().await;
            if e > after {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the session's expiry was not renewed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    sleep_until_ms(first - 4000 + 2100).await;
    assert_eq!(c.get("/ui/").await.status, 200);
    let second = renewed(first).await;
    // Past the first expiry, the renewed session is still open.
    sleep_until_ms(first + 300).await;
    assert_eq!(c.get("/ui/").await.status, 200, "kept alive by the renewal");
    let third = renewed(second).await;
    // Idle for longer than the TTL: the session ends.
    sleep_until_ms(third + 300).await;
    let p = c.get("/ui/").await;
    assert_eq!(p.status, 303);
    assert!(p.location.starts_with("/ui/login"), "{}", p.location);
    hub.stop().await;
}
