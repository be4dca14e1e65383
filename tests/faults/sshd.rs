//! The partner's sshd killed mid-file (with every session it forked) while the hub imports a
//! vehicle file: the poll fails, the file stays where it is, and after sshd is back the next
//! poll resumes after the last committed batch and archives it; every row lands once.

use std::time::{Duration, Instant};

use serde_json::Value;
use synchub_adapter_sftp::testkit::SshdFixture;

use crate::fixture::{self, Hub, Tree};
use crate::sigkill::{VEHICLE_HEADER, sftp_env, vin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_killed_mid_file_resumes_and_imports_every_row_once() {
    let _serial = fixture::serial().await;
    let rows = if fixture::soak() { 100_000 } else { 15_000 };
    let mut fx = SshdFixture::start();
    let dir = "outbound/vehicles";
    let tree = Tree::shipped();
    let mut env = vec![("SYNCHUB__STORE__URL".to_owned(), tree.sqlite_url())];
    env.extend(fixture::amqp_env(&fixture::amqp_prefix(), None));
    env.extend(sftp_env(&fx, dir));
    let mut text = format!("{VEHICLE_HEADER}\n");
    for i in 0..rows {
        text.push_str(&format!(
            "{},Honda,思域 Civic,2026,白,,,D0001,2026-11-20,,,\n",
            vin('K', i)
        ));
    }
    let name = "VEHICLE_20261202.csv";
    std::fs::write(fx.path(&format!("{dir}/{name}")), &text).unwrap();
    let mut hub = Hub::new("hub", &tree.path().join("config"), &env);
    hub.start();
    hub.wait_ready(120).await;
    let pool = fixture::any_pool(&tree.sqlite_url()).await;
    let poll = {
        let (client, url) = (
            hub.client.clone(),
            format!("{}/api/v1/endpoints/osm_vehicles_sftp_in/poll", hub.base),
        );
        move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .post(url)
                    .bearer_auth("demo-admin")
                    .timeout(Duration::from_secs(600))
                    .send()
                    .await
                    .expect("poll now answers")
                    .json::<Value>()
                    .await
                    .expect("poll report")
            }
        }
    };
    let first = tokio::spawn(poll());
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_at = loop {
        let line: Option<i64> = sqlx::query_scalar(
            "SELECT resume_line FROM sftp_files WHERE endpoint = 'osm_vehicles_sftp_in'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap_or(None);
        if let Some(l) = line.filter(|l| *l >= 2_000) {
            fx.stop();
            break l;
        }
        assert!(Instant::now() < deadline, "the file never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let report = first.await.expect("first poll");
    assert!(
        (killed_at as usize) < rows,
        "sshd was killed after the whole file"
    );
    let outcome = &report["files"][0]["outcome"]["status"];
    assert_ne!(outcome, "archived", "a cut file is not archived: {report}");
    assert!(
        fx.path(&format!("{dir}/{name}")).exists(),
        "the cut file stays in place"
    );
    assert!(hub.is_running());

    fx.restart();
    let report = poll().await;
    let file = &report["files"][0];
    assert_eq!(file["outcome"]["status"], "archived", "{report}");
    assert_eq!(
        file["read"], rows,
        "counts continue from the ledger: {report}"
    );
    fixture::wait_crm_drained(&pool, Duration::from_secs(300)).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM crm_records WHERE entity = 'vehicle'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored as usize, rows, "every row once");
    // Rows applied straight through are found by their batch's line span, the others as records
    // of their own: either way, each line once among what was not a duplicate.
    let (journaled, records) = fixture::lines_found(
        &pool,
        "m.endpoint = 'osm_vehicles_sftp_in' AND m.status <> 'duplicate' \
         AND m.kind IN ('transport', 'record')",
    )
    .await;
    assert_eq!(
        (journaled, records),
        (rows, rows),
        "each row journaled once, the resumed part not again"
    );
}
