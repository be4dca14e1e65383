//! `synchub demo` as a newcomer runs it: within seconds every simulated partner has sent
//! traffic through the real interfaces, the CRM store fills, and the deliberately bad records
//! are journaled as rejected.

use std::process::Command;

use sqlx::Row;

#[tokio::test]
async fn the_demo_moves_every_inbound_flow_within_half_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("demo.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_synchub"))
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .args(["demo", "--duration", "25"])
        .env("SYNCHUB__HTTP__LISTEN", "127.0.0.1:0")
        .env("SYNCHUB__STORE__URL", &url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("/ui/"),
        "the banner names the dashboard: {stdout}"
    );
    assert!(stdout.contains("demo: sent"), "progress lines: {stdout}");

    let store = synchub::store::Store::open(&url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
                .try_get::<i64, _>(0)
                .unwrap()
        }
    };
    for (entity, at_least) in [("lead", 5), ("customer", 3), ("vehicle", 1)] {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM crm_records WHERE entity = $1")
            .bind(entity)
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert!(n >= at_least, "{n} {entity} records after the demo");
    }
    assert!(
        count("SELECT COUNT(DISTINCT endpoint) FROM messages WHERE kind = 'transport'").await >= 2,
        "REST and SOAP traffic"
    );
    let names: Vec<String> = sqlx::query("SELECT data FROM crm_records WHERE entity = 'customer'")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String, _>(0).unwrap())
        .collect();
    assert!(
        names
            .iter()
            .any(|d| d.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))),
        "Chinese names: {names:?}"
    );
    store.close().await;
}
