//! Maintenance paths: `synchub replay` from the command line beside the store, and the payload
//! purge that keeps metadata searchable while dropping old raw bodies.

use crate::helpers::{ADMIN, Backend, TestHub, sample};

#[tokio::test]
async fn cli_replay_queues_the_message_again() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let (s, body) = hub
        .post_records(
            "/api/v1/leads",
            "demo-website",
            &sample("rest/lead.request.json"),
        )
        .await;
    assert_eq!(s, 202);
    hub.settle(20).await;
    let transport = body["message_id"].as_str().unwrap().to_string();
    let count = |pool| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM deliveries")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let before = count(hub.store.pool()).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synchub"))
        .args(["replay", &transport, "--config"])
        .arg(hub.config_dir())
        .env("SYNCHUB__STORE__URL", &hub.store_url)
        .env("SYNCHUB__HTTP__LISTEN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 record(s) queued"));
    assert_eq!(count(hub.store.pool()).await, before + 1);
    hub.settle(20).await;
    hub.stop().await;
}

#[tokio::test]
async fn purge_drops_old_payloads_but_keeps_the_trail() {
    let hub = TestHub::spawn(Backend::Sqlite).await;
    let (s, body) = hub
        .post_records(
            "/api/v1/leads",
            "demo-website",
            &sample("rest/lead.request.json"),
        )
        .await;
    assert_eq!(s, 202);
    hub.settle(20).await;
    let job = synchub::app::PurgeJob::new(
        hub.store.clone(),
        synchub::settings::parse_cron("0 3 * * *").unwrap(),
        0,
    );
    let purged = job.purge_once().await.unwrap();
    assert!(purged >= 2, "transport and record payloads: {purged}");
    let id = body["message_id"].as_str().unwrap();
    let (s, detail) = hub.get(&format!("/api/v1/messages/{id}"), ADMIN).await;
    assert_eq!(s, 200);
    assert_eq!(detail["body"], "", "payload dropped: {detail}");
    let (_, found) = hub.get("/api/v1/messages?key=13760001234", ADMIN).await;
    assert!(
        found["count"].as_u64().unwrap() >= 1,
        "still searchable by key"
    );
    hub.stop().await;
}
