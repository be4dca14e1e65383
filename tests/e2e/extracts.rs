//! Extracts for analytics (IF-09, IF-09b) through the running hub: records loaded through the
//! real REST inbound come out of `GET /api/v1/extracts/<entity>` as NDJSON and CSV in change
//! order; a re-pulled window is byte-identical after more changes; `limit` + `X-Next-Cursor`
//! paging covers every row once; formula cells are neutralised; the auth matrix; PostgreSQL
//! transactions committing out of seq order are never skipped; the nightly push against a real
//! sshd (manifest matches the file, cursor only after the manifest, a failed run caught up);
//! `synchub extract` through the real binary gives the API's bytes.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use synchub_adapter_sftp::testkit::SshdFixture;

use crate::helpers::*;

const ETL: &str = "demo-etl";

/// An extract response: status, `X-Next-Cursor`, content type, body bytes.
struct Pulled {
    status: u16,
    next: Option<i64>,
    content_type: String,
    body: Vec<u8>,
}

impl Pulled {
    fn rows(&self) -> Vec<Value> {
        String::from_utf8(self.body.clone())
            .expect("utf-8 body")
            .lines()
            .map(|l| serde_json::from_str(l).expect("NDJSON line"))
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

enum Cred<'a> {
    Key(&'a str),
    Bearer(&'a str),
    None,
}

async fn pull(hub: &TestHub, path_and_query: &str, cred: Cred<'_>) -> Pulled {
    let mut req = hub
        .client
        .get(format!("{}/api/v1/extracts/{path_and_query}", hub.base));
    req = match cred {
        Cred::Key(k) => req.header("X-Api-Key", k),
        Cred::Bearer(t) => req.bearer_auth(t),
        Cred::None => req,
    };
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let next = r
        .headers()
        .get("x-next-cursor")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.bytes().await.expect("body").to_vec();
    Pulled {
        status,
        next,
        content_type,
        body,
    }
}

fn customer(i: usize, name: &str) -> Value {
    json!({
        "source_ref": format!("EXT-{i:04}"),
        "dealer_code": "D0001",
        "name": name,
        "mobile": format!("1390000{i:04}"),
        "province": "广东",
        "city": "广州",
        "address": format!("天河区体育西路{i}号, 3楼"),
    })
}

/// A hub for extract tests. No DMS queue is bound: extracts read the CRM store, and the
/// customer events fanned out to the DMS (which then wait as unroutable) are not under test.
async fn spawn(backend: Backend, env: &[(&str, &str)]) -> TestHub {
    let mut env = env.to_vec();
    env.push((NO_DMS_QUEUES, "1"));
    TestHub::spawn_with(backend, TestConfig::shipped(), &env).await
}

/// Waits until the CRM store has applied everything accepted so far. Only the CRM store's
/// deliveries matter here: the customer events fanned out to the DMS may retry under load.
async fn settle_crm(hub: &TestHub) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE target = 'crm_store' AND status IN ('pending','in_flight')",
        )
        .fetch_one(hub.store.pool())
        .await
        .unwrap();
        if open == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} CRM store deliveries still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads customers `from..to` through the DMS REST inbound and waits until the CRM store has
/// them; returns their hub ids in order.
async fn load(hub: &TestHub, from: usize, to: usize) -> Vec<String> {
    let body: Vec<Value> = (from..to)
        .map(|i| customer(i, &format!("客户{i}")))
        .collect();
    let (s, r) = hub
        .post_records(
            "/api/v1/dms/customers",
            "demo-dms-D0001",
            &Value::Array(body),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["rejected"], json!([]), "{r}");
    settle_crm(hub).await;
    r["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn ndjson_and_csv_in_change_order(backend: Backend) {
    let hub = spawn(backend, &[]).await;
    let ids = load(&hub, 0, 3).await;
    let (s, r) = hub
        .post_records(
            "/api/v1/dms/customers",
            "demo-dms-D0001",
            &customer(3, "=HYPERLINK(\"http://evil\")"),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    settle_crm(&hub).await;
    let evil_id = r["accepted"][0]["id"].as_str().unwrap().to_owned();

    let first = pull(&hub, "customers?since=0", Cred::Key(ETL)).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.content_type, "application/x-ndjson; charset=utf-8");
    let rows = first.rows();
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let got_ids: Vec<&str> = rows
        .iter()
        .map(|r| r["customer_id"].as_str().unwrap())
        .collect();
    let mut want = ids.clone();
    want.push(evil_id.clone());
    assert_eq!(got_ids, want, "rows in the order the store took them");
    let seqs: Vec<i64> = rows.iter().map(|r| r["_seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(rows[0]["_op"], "upsert");
    assert_eq!(rows[0]["_version"], 1);
    assert_eq!(rows[0]["name"], "客户0");
    assert_eq!(rows[0]["mobile"], "13900000000");
    assert!(chrono::DateTime::parse_from_rfc3339(rows[0]["_changed_at"].as_str().unwrap()).is_ok());
    let cursor = first.next.expect("X-Next-Cursor");
    assert!(cursor >= *seqs.last().unwrap());

    // More changes: an update of the first customer becomes a new row at the end.
    let (s, r) = hub
        .put(
            &format!("/api/v1/customers/{}", ids[0]),
            ADMIN,
            json!({"city": "佛山"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    load(&hub, 10, 12).await;

    let again = pull(
        &hub,
        &format!("customers?since=0&until={cursor}"),
        Cred::Key(ETL),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.body, first.body,
        "a re-pulled window is byte-identical"
    );
    assert_eq!(again.next, Some(cursor));

    let later = pull(&hub, &format!("customers?since={cursor}"), Cred::Key(ETL)).await;
    let rows = later.rows();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert_eq!(rows[0]["customer_id"], ids[0].as_str());
    assert_eq!(rows[0]["_version"], 2);
    assert_eq!(rows[0]["city"], "佛山");
    assert!(rows[0]["_seq"].as_i64().unwrap() > cursor);

    // CSV: fixed header, quoted commas, the formula neutralised.
    let csv = pull(
        &hub,
        &format!("customers?since=0&until={cursor}&format=csv"),
        Cred::Bearer(ADMIN),
    )
    .await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    let text = String::from_utf8(csv.body.clone()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "_seq,_op,_changed_at,_version,customer_id,dealer_code,name,mobile,id_no,gender,birth_date,province,city,address,email,updated_at,merged_into"
    );
    assert_eq!(lines.len(), 6, "header, 4 rows, trailing empty: {text}");
    assert!(
        lines[1].starts_with(&format!("{},upsert,", seqs[0])),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains(&format!(
            ",1,{},D0001,客户0,13900000000,,,,广东,广州,\"天河区体育西路0号, 3楼\",,",
            ids[0]
        )),
        "{}",
        lines[1]
    );
    assert!(
        lines[4].contains(&format!(
            ",{evil_id},D0001,\"'=HYPERLINK(\"\"http://evil\"\")\","
        )),
        "formula neutralised: {}",
        lines[4]
    );

    // GB18030 for legacy consumers: the same text, another encoding.
    let gb = pull(
        &hub,
        &format!("customers?since=0&until={cursor}&format=csv&charset=gb18030"),
        Cred::Key(ETL),
    )
    .await;
    assert_eq!(gb.content_type, "text/csv; charset=gb18030");
    let (decoded, _, bad) = encoding_rs::GB18030.decode(&gb.body);
    assert!(!bad);
    assert_eq!(decoded, text);
    assert_ne!(gb.body, csv.body);

    // Dealers are extractable too: the three seeded demo dealers.
    let dealers = pull(&hub, "dealers", Cred::Key(ETL)).await.rows();
    let codes: Vec<&str> = dealers
        .iter()
        .map(|d| d["dealer_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["D0001", "D0002", "D0003"]);
    hub.stop().await;
}

#[tokio::test]
async fn ndjson_and_csv_in_change_order_sqlite() {
    ndjson_and_csv_in_change_order(Backend::Sqlite).await;
}

#[tokio::test]
async fn ndjson_and_csv_in_change_order_postgres() {
    ndjson_and_csv_in_change_order(Backend::Postgres).await;
}

async fn paging_covers_everything_once(backend: Backend) {
    let hub = spawn(backend, &[]).await;
    let mut ids = load(&hub, 0, 7).await;
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let p = pull(
            &hub,
            &format!("customers?since={cursor}&limit=3"),
            Cred::Key(ETL),
        )
        .await;
        assert_eq!(p.status, 200);
        let rows = p.rows();
        assert!(rows.len() <= 3);
        let next = p.next.expect("X-Next-Cursor");
        if let Some(last) = rows.last() {
            assert_eq!(last["_seq"].as_i64(), Some(next), "page ends at its cursor");
        }
        if rows.is_empty() {
            assert_eq!(next, cursor, "an empty page keeps the cursor");
            break;
        }
        seen.extend(
            rows.iter()
                .map(|r| r["customer_id"].as_str().unwrap().to_owned()),
        );
        cursor = next;
        pages += 1;
        if pages == 1 {
            // Writes between pages land after the cursor and are picked up.
            ids.extend(load(&hub, 20, 22).await);
        }
    }
    assert_eq!(pages, 3, "9 rows in pages of 3");
    assert_eq!(seen, ids, "every row exactly once, in order");
    hub.stop().await;
}

#[tokio::test]
async fn paging_covers_everything_once_sqlite() {
    paging_covers_everything_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn paging_covers_everything_once_postgres() {
    paging_covers_everything_once(Backend::Postgres).await;
}

#[tokio::test]
async fn only_the_etl_key_and_admins_may_pull() {
    let hub = spawn(Backend::Sqlite, &[]).await;
    for (cred, want) in [
        (Cred::None, 401),
        (Cred::Key("no-such-key"), 401),
        (Cred::Bearer("no-such-token"), 401),
        (Cred::Key("demo-callcenter"), 403),
        (Cred::Key("demo-dms-D0001"), 403),
        (Cred::Bearer(IT_D0001), 403),
        (Cred::Key(ETL), 200),
        (Cred::Bearer(ADMIN), 200),
    ] {
        let p = pull(&hub, "customers", cred).await;
        assert_eq!(p.status, want, "{}", String::from_utf8_lossy(&p.body));
        if want != 200 {
            assert!(p.json()["error"]["message"].is_string(), "{}", p.json());
        }
    }
    let p = pull(&hub, "customer", Cred::Key(ETL)).await;
    assert_eq!(p.status, 404);
    assert_eq!(p.json()["error"]["code"], "unknown_entity");
    assert_eq!(p.json()["error"]["details"].as_array().unwrap().len(), 7);
    assert!(
        p.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("campaign_results")
    );
    // Unauthenticated callers learn nothing about entities.
    assert_eq!(pull(&hub, "customer", Cred::None).await.status, 401);
    for (q, field) in [
        ("customers?since=abc", "since"),
        ("customers?since=-4", "since"),
        ("customers?since=5&until=2", "until"),
        ("customers?limit=0", "limit"),
        ("customers?format=xml", "format"),
        ("customers?charset=latin1&format=csv", "charset"),
        ("customers?charset=gb18030", "charset"),
    ] {
        let p = pull(&hub, q, Cred::Key(ETL)).await;
        assert_eq!(p.status, 400, "{q}");
        assert_eq!(
            p.json()["error"]["details"][0]["field"],
            field,
            "{q}: {}",
            p.json()
        );
    }
    hub.stop().await;
}

/// Two CRM writers on PostgreSQL: T1 takes the lower seq, T2 the higher and commits first. An
/// extract then must neither return T2's row ahead of T1's (a cursor past it would skip T1's
/// for good) nor lose T1's once it commits.
#[tokio::test]
async fn postgres_out_of_order_commits_are_never_skipped() {
    use sqlx::{Connection, Row};
    let hub = spawn(Backend::Postgres, &[]).await;
    let before = pull(&hub, "customers", Cred::Key(ETL)).await;
    assert_eq!(before.status, 200);
    let start = before.next.unwrap();

    let insert = "INSERT INTO crm_changes (entity, entity_id, version, op, data, changed_at) \
                  VALUES ('customer', $1, 1, 'upsert', $2, 0) RETURNING seq";
    let mut t1 = sqlx::PgConnection::connect(&hub.store_url).await.unwrap();
    let mut t2 = sqlx::PgConnection::connect(&hub.store_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut t1).await.unwrap();
    let seq1: i64 = sqlx::query(insert)
        .bind("C-T1")
        .bind(r#"{"name":"first"}"#)
        .fetch_one(&mut t1)
        .await
        .unwrap()
        .get(0);
    sqlx::query("BEGIN").execute(&mut t2).await.unwrap();
    let seq2: i64 = sqlx::query(insert)
        .bind("C-T2")
        .bind(r#"{"name":"second"}"#)
        .fetch_one(&mut t2)
        .await
        .unwrap()
        .get(0);
    assert!(seq1 < seq2);
    sqlx::query("COMMIT").execute(&mut t2).await.unwrap();

    // T1 stays open: the extract cannot yet know T1's fate and says so instead of guessing.
    let busy = pull(&hub, &format!("customers?since={start}"), Cred::Key(ETL)).await;
    assert_eq!(busy.status, 503, "{}", String::from_utf8_lossy(&busy.body));
    assert!(
        busy.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retry")
    );

    // T1 commits while an extract waits for it: both rows, in seq order.
    let q = format!("customers?since={start}");
    let pulling = pull(&hub, &q, Cred::Key(ETL));
    let commit = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sqlx::query("COMMIT").execute(&mut t1).await.unwrap();
    };
    let (p, ()) = tokio::join!(pulling, commit);
    assert_eq!(p.status, 200, "{}", String::from_utf8_lossy(&p.body));
    let rows = p.rows();
    let got: Vec<(i64, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["_seq"].as_i64().unwrap(),
                r["customer_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(seq1, "C-T1"), (seq2, "C-T2")]);
    assert_eq!(p.next, Some(seq2));
    hub.stop().await;
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn push_env(fx: &SshdFixture) -> Vec<(String, String)> {
    // Once a year: only the test's "push now" calls run.
    sftp_endpoint_env(
        fx,
        "etl_sftp_out",
        "in",
        &[("TIMEOUT_MS", "3000"), ("SCHEDULE", "0 0 1 1 *")],
    )
}

async fn push_now(hub: &TestHub) -> Value {
    let (s, r) = hub
        .post("/api/v1/extracts/push/etl_sftp_out", ADMIN, None)
        .await;
    assert_eq!(s, 200, "{r}");
    r
}

async fn cursors(hub: &TestHub) -> Value {
    let (s, r) = hub.get("/api/v1/extracts/push/etl_sftp_out", ADMIN).await;
    assert_eq!(s, 200, "{r}");
    r["cursors"].clone()
}

fn listing(fx: &SshdFixture) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fx.path("in"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

async fn nightly_push(backend: Backend) {
    let mut fx = SshdFixture::start();
    let env = push_env(&fx);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hub = spawn(backend, &refs).await;
    load(&hub, 0, 5).await;
    let date = chrono::Utc::now().format("%Y%m%d").to_string();

    // The server is down: the run fails, nothing is written and no cursor moves.
    fx.stop();
    let failed = push_now(&hub).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("connect"),
        "{failed}"
    );
    assert_eq!(cursors(&hub).await, json!([]));
    assert!(listing(&fx).is_empty());

    // More changes, then the server is back: the next run takes the whole window from 0.
    load(&hub, 5, 8).await;
    fx.restart();
    // What a run killed mid-upload leaves: a `.part`, and a data file renamed into place whose
    // manifest never followed. Neither is a good file: the next run replaces both.
    std::fs::write(fx.path(&format!("in/customers_{date}.csv.part")), "cut off").unwrap();
    std::fs::write(fx.path(&format!("in/dealers_{date}.csv")), "no manifest").unwrap();
    let ok = push_now(&hub).await;
    assert_eq!(ok["status"], "ok", "{ok}");
    let mut want: Vec<String> = [
        "campaign_results",
        "campaigns",
        "customers",
        "dealers",
        "lead_results",
        "leads",
        "vehicles",
    ]
    .iter()
    .flat_map(|e| {
        [
            format!("{e}_{date}.csv"),
            format!("{e}_{date}.manifest.json"),
        ]
    })
    .collect();
    want.sort();
    assert_eq!(
        listing(&fx),
        want,
        "no .part left, one file + manifest per entity"
    );

    let data = std::fs::read(fx.path(&format!("in/customers_{date}.csv"))).unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(fx.path(&format!("in/customers_{date}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["entity"], "customers");
    assert_eq!(manifest["rows"], 8);
    assert_eq!(manifest["sha256"], sha256_hex(&data));
    assert_eq!(manifest["from_cursor"], "0");
    let to = manifest["to_cursor"].as_str().unwrap().to_owned();
    let text = String::from_utf8(data.clone()).unwrap();
    assert_eq!(text.split("\r\n").filter(|l| !l.is_empty()).count(), 9);
    // The pushed file is the API's CSV of the same window.
    let api = pull(
        &hub,
        &format!("customers?since=0&until={to}&format=csv"),
        Cred::Key(ETL),
    )
    .await;
    assert_eq!(api.body, data);
    let dealers: Value = serde_json::from_slice(
        &std::fs::read(fx.path(&format!("in/dealers_{date}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(dealers["rows"], 3);
    let dealer_file = std::fs::read(fx.path(&format!("in/dealers_{date}.csv"))).unwrap();
    assert_eq!(dealers["sha256"], sha256_hex(&dealer_file));
    assert!(
        String::from_utf8(dealer_file)
            .unwrap()
            .starts_with("_seq,_op,")
    );
    let empty: Value = serde_json::from_slice(
        &std::fs::read(fx.path(&format!("in/leads_{date}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        empty["rows"], 0,
        "an entity without changes still gets its (empty) file"
    );

    let c = cursors(&hub).await;
    let customers = c
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["entity"] == "customers")
        .unwrap()
        .clone();
    assert_eq!(customers["cursor"], to.as_str());
    assert_eq!(customers["last_rows"], 8);

    // The same date again after more changes: the day's good file is never clobbered; the new
    // rows wait for the next date's file (the cursor stays).
    load(&hub, 8, 9).await;
    let again = push_now(&hub).await;
    assert_eq!(again["status"], "ok", "{again}");
    assert!(
        again["entities"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["outcome"] == "skipped"),
        "{again}"
    );
    assert_eq!(
        std::fs::read(fx.path(&format!("in/customers_{date}.csv"))).unwrap(),
        data
    );
    assert_eq!(cursors(&hub).await, c);

    // A run that died after writing the manifest but before recording the cursor: the next run
    // recognises its own manifest and catches the cursor up instead of skipping it.
    hub.store
        .write(|c| {
            Box::pin(async move {
                sqlx::query("DELETE FROM extract_cursors")
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
        .unwrap();
    let recovered = push_now(&hub).await;
    let rec = recovered["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == "customers")
        .unwrap()
        .clone();
    assert_eq!(rec["outcome"], "recovered", "{recovered}");
    let c2 = cursors(&hub).await;
    let customers2 = c2
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["entity"] == "customers")
        .unwrap()
        .clone();
    assert_eq!(customers2["cursor"], to.as_str());

    // The runs are on record for operators.
    let (_, status) = hub.get("/api/v1/extracts/push/etl_sftp_out", ADMIN).await;
    let runs: Vec<&str> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(runs, ["ok", "ok", "ok", "failed"]);
    let (s, _) = hub
        .post("/api/v1/extracts/push/etl_sftp_out", IT_D0001, None)
        .await;
    assert_eq!(s, 403);
    let (s, _) = hub.post("/api/v1/extracts/push/nowhere", ADMIN, None).await;
    assert_eq!(s, 404);
    hub.stop().await;
}

#[tokio::test]
async fn nightly_push_sqlite() {
    nightly_push(Backend::Sqlite).await;
}

#[tokio::test]
async fn nightly_push_postgres() {
    nightly_push(Backend::Postgres).await;
}

/// Two hubs on one database run a scheduled tick once: the first to record it runs it.
#[tokio::test]
async fn a_tick_runs_on_one_instance_only() {
    let hub = spawn(Backend::Postgres, &[]).await;
    let a = synchub::extract::push::claim_tick(&hub.store, "etl_sftp_out", 1_000, "hub-a");
    let b = synchub::extract::push::claim_tick(&hub.store, "etl_sftp_out", 1_000, "hub-b");
    let (a, b) = tokio::join!(a, b);
    assert_ne!(
        a.unwrap(),
        b.unwrap(),
        "exactly one instance takes the tick"
    );
    assert!(
        synchub::extract::push::claim_tick(&hub.store, "etl_sftp_out", 2_000, "hub-b")
            .await
            .unwrap()
    );
    hub.stop().await;
}

/// `synchub extract` by hand, through the real binary, beside a running hub: the file holds
/// exactly what the API returns for the same window.
#[tokio::test]
async fn extract_command_writes_the_api_window() {
    let hub = spawn(Backend::Sqlite, &[]).await;
    load(&hub, 0, 4).await;
    let api = pull(&hub, "customers?format=csv", Cred::Key(ETL)).await;
    let until = api.next.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("customers.csv");
    let run = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_synchub"))
            .arg("--config")
            .arg(hub.config_dir())
            .arg("extract")
            .args(args)
            .env("SYNCHUB__STORE__URL", &hub.store_url)
            .output()
            .unwrap()
    };
    let o = run(vec![
        "--entity".into(),
        "customers".into(),
        "--since".into(),
        "0".into(),
        "--until".into(),
        until.to_string(),
        "--format".into(),
        "csv".into(),
        "--out".into(),
        out.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("4 customers row(s)"), "{stdout}");
    assert!(stdout.contains(&format!("next cursor {until}")), "{stdout}");
    assert_eq!(std::fs::read(&out).unwrap(), api.body);
    assert!(!dir.path().join("customers.csv.part").exists());

    let o = run(vec![
        "--entity".into(),
        "people".into(),
        "--out".into(),
        out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("customers, vehicles"));
    hub.stop().await;
}

/// The schedule itself: with `* * * * *` the running hub pushes at the next minute on its own.
#[tokio::test]
async fn the_schedule_runs_the_push() {
    let fx = SshdFixture::start();
    let mut env = push_env(&fx);
    for (k, v) in &mut env {
        if k.ends_with("__SCHEDULE") {
            *v = "* * * * *".into();
        }
    }
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hub = spawn(Backend::Sqlite, &refs).await;
    load(&hub, 0, 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let runs = loop {
        let (s, status) = hub.get("/api/v1/extracts/push/etl_sftp_out", ADMIN).await;
        assert_eq!(s, 200, "{status}");
        let runs = status["runs"].as_array().cloned().unwrap_or_default();
        if runs.iter().any(|r| r["status"] == "ok") {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled push within 90 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let tick = chrono::DateTime::parse_from_rfc3339(runs[0]["tick"].as_str().unwrap()).unwrap();
    assert_eq!(tick.timestamp() % 60, 0, "runs on the minute: {tick}");
    let date = tick.format("%Y%m%d").to_string();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(fx.path(&format!("in/customers_{date}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["rows"], 2);
    hub.stop().await;
}

/// The connection to the analytics server is cut in the middle of an upload: no file appears
/// under its final name, no cursor moves, and the next run writes the complete file.
#[tokio::test]
async fn a_cut_during_upload_leaves_no_partial_file() {
    use synchub_adapter_sftp::testkit::TcpProxy;
    let fx = SshdFixture::start();
    let proxy = TcpProxy::start(fx.port).await;
    let mut env = push_env(&fx);
    for (k, v) in &mut env {
        if k.ends_with("__PORT") {
            *v = proxy.port.to_string();
        } else if k.ends_with("__KNOWN_HOSTS_FILE") {
            *v = fx.known_hosts_for(proxy.port).display().to_string();
        }
    }
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hub = spawn(Backend::Sqlite, &refs).await;
    // 5,000 customers through the CRM writer: a file of ~1.5 MB, many SFTP writes.
    hub.store
        .write(|c| {
            Box::pin(async move {
                let mut unit = synchub::crm::Unit::default();
                let src = synchub::crm::ChangeSource {
                    system: "test".into(),
                    message_id: None,
                    needs_approval: false,
                };
                for i in 0..5000 {
                    let rec = json!({"dealer_code": "D0001", "name": format!("客户{i}"),
                        "mobile": format!("139{i:08}"), "address": "天河区体育西路101号".repeat(8)});
                    unit.upsert(
                        c,
                        "customer",
                        &format!("C{i:09}"),
                        rec.as_object().unwrap(),
                        &synchub::crm::Columns::default(),
                        &src,
                    )
                    .await?;
                }
                unit.flush(c).await
            })
        })
        .await
        .unwrap();
    let date = chrono::Utc::now().format("%Y%m%d").to_string();
    let data_name = format!("customers_{date}.csv");
    let mut cut_mid_upload = None;
    for cut in (2000..60_000).step_by(400) {
        proxy.cut_next_after(cut);
        let r = push_now(&hub).await;
        let names = listing(&fx);
        if r["status"] == "ok" || names.contains(&format!("customers_{date}.manifest.json")) {
            break;
        }
        assert_eq!(r["status"], "failed", "{r}");
        assert!(!names.contains(&data_name), "cut at {cut}: {names:?}");
        assert_eq!(cursors(&hub).await, json!([]));
        if names.contains(&format!("{data_name}.part")) {
            cut_mid_upload = Some(cut);
            break;
        }
    }
    let cut = cut_mid_upload.expect("some cut point falls inside the customers upload");

    let ok = push_now(&hub).await;
    assert_eq!(ok["status"], "ok", "after the cut at {cut}: {ok}");
    let names = listing(&fx);
    assert!(!names.iter().any(|n| n.ends_with(".part")), "{names:?}");
    let data = std::fs::read(fx.path(&format!("in/{data_name}"))).unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(fx.path(&format!("in/customers_{date}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["rows"], 5000);
    assert_eq!(manifest["sha256"], sha256_hex(&data));
    assert!(data.len() > 1_000_000, "{} bytes", data.len());
    hub.stop().await;
}

/// A merged customer and an erased one leave the CRM store and appear in the extract as
/// tombstones (`_op` merge with `merged_into`, `_op` delete naming only the id); the merged
/// customer's vehicle moves to the survivor, which the vehicle extract shows.
async fn tombstones_for_merged_and_deleted_customers(backend: Backend) {
    let hub = spawn(backend, &[]).await;
    // OSM's sample vehicle creates its owner (mobile 13800138000) as a customer.
    let sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/samples/soap/SyncVehicles.request.xml"),
    )
    .unwrap();
    let r = hub
        .client
        .post(format!("{}/soap/osm/VehicleService", hub.base))
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(sample)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    settle_crm(&hub).await;
    let vin = "LHG0LVF20VB714970";
    let (_, v) = hub.get(&format!("/api/v1/vehicles/{vin}"), ADMIN).await;
    let dup = v["owner_customer_id"].as_str().expect("owner").to_string();
    let ids = load(&hub, 0, 2).await;
    let (keep, erase) = (ids[0].clone(), ids[1].clone());
    let cursor = pull(&hub, "customers", Cred::Key("demo-etl"))
        .await
        .next
        .expect("X-Next-Cursor");

    // Only headquarters; not into itself; both must exist.
    let merge = |into: &str| json!({"into": into});
    let (s, _) = hub
        .post(
            &format!("/api/v1/customers/{dup}/merge"),
            IT_D0001,
            Some(merge(&keep)),
        )
        .await;
    assert_eq!(s, 403);
    let (s, r) = hub
        .post(
            &format!("/api/v1/customers/{dup}/merge"),
            ADMIN,
            Some(merge(&dup)),
        )
        .await;
    assert_eq!(s, 409, "{r}");
    let (s, _) = hub
        .post(
            &format!("/api/v1/customers/{dup}/merge"),
            ADMIN,
            Some(merge("C999999999")),
        )
        .await;
    assert_eq!(s, 404);

    let (s, r) = hub
        .post(
            &format!("/api/v1/customers/{dup}/merge"),
            ADMIN,
            Some(merge(&keep)),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["vehicles_moved"], json!([vin]), "{r}");
    let (s, _) = hub.get(&format!("/api/v1/customers/{dup}"), ADMIN).await;
    assert_eq!(s, 404, "the merged customer is gone");
    let (_, v) = hub.get(&format!("/api/v1/vehicles/{vin}"), ADMIN).await;
    assert_eq!(v["owner_customer_id"], keep.as_str(), "{v}");

    // Erasing a customer who owns a vehicle is refused; one who owns none goes.
    let (s, r) = hub
        .delete(&format!("/api/v1/customers/{keep}"), ADMIN)
        .await;
    assert_eq!(s, 409, "{r}");
    let (s, r) = hub
        .delete(&format!("/api/v1/customers/{erase}"), ADMIN)
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, _) = hub.get(&format!("/api/v1/customers/{erase}"), ADMIN).await;
    assert_eq!(s, 404);

    let after = pull(
        &hub,
        &format!("customers?since={cursor}"),
        Cred::Key("demo-etl"),
    )
    .await;
    assert_eq!(after.status, 200);
    let rows = after.rows();
    let merged = rows
        .iter()
        .find(|r| r["customer_id"] == dup.as_str())
        .unwrap_or_else(|| panic!("no tombstone of {dup}: {rows:?}"));
    assert_eq!(merged["_op"], "merge", "{merged}");
    assert_eq!(merged["merged_into"], keep.as_str(), "{merged}");
    assert_eq!(
        merged["mobile"], "13800138000",
        "a merge tombstone is the record as last seen"
    );
    let deleted = rows
        .iter()
        .find(|r| r["customer_id"] == erase.as_str())
        .unwrap_or_else(|| panic!("no tombstone of {erase}: {rows:?}"));
    assert_eq!(deleted["_op"], "delete", "{deleted}");
    assert!(
        deleted.get("mobile").is_none(),
        "an erasure publishes no personal data: {deleted}"
    );
    let csv = pull(
        &hub,
        &format!("customers?since={cursor}&format=csv"),
        Cred::Key("demo-etl"),
    )
    .await;
    let text = String::from_utf8(csv.body).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains(",merge,") && l.ends_with(&keep)),
        "the CSV tombstone ends with merged_into: {text}"
    );
    let vehicles = pull(&hub, "vehicles", Cred::Key("demo-etl")).await.rows();
    let last = vehicles
        .iter()
        .rev()
        .find(|r| r["vin"] == vin)
        .expect("vehicle rows");
    assert_eq!(last["owner_customer_id"], keep.as_str(), "{last}");
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action IN ('merge_customer', 'delete_customer')",
    )
    .fetch_one(hub.store.pool())
    .await
    .unwrap();
    assert_eq!(audited, 2);
    hub.stop().await;
}

#[tokio::test]
async fn tombstones_for_merged_and_deleted_customers_sqlite() {
    tombstones_for_merged_and_deleted_customers(Backend::Sqlite).await;
}

#[tokio::test]
async fn tombstones_for_merged_and_deleted_customers_postgres() {
    tombstones_for_merged_and_deleted_customers(Backend::Postgres).await;
}

/// The change log's compaction (the purge job, `store.changes_retention_days`): superseded
/// versions past the retention go, the latest version of each record and every tombstone stay,
/// byte for byte; rows a nightly push has not written yet stay too.
async fn compaction_keeps_the_current_state_and_the_tombstones(backend: Backend) {
    let hub = spawn(backend, &[]).await;
    let ids = load(&hub, 0, 3).await;
    // Customer 0 moved house (a second version), customer 2 erased (its upsert and a tombstone).
    let mut moved = customer(0, "客户0");
    moved["source_ref"] = json!("EXT-0000-moved");
    moved["address"] = json!("越秀区中山五路1号");
    let (s, r) = hub
        .post_records("/api/v1/dms/customers", "demo-dms-D0001", &json!([moved]))
        .await;
    assert_eq!(s, 202, "{r}");
    settle_crm(&hub).await;
    let (s, r) = hub
        .delete(&format!("/api/v1/customers/{}", ids[2]), ADMIN)
        .await;
    assert_eq!(s, 200, "{r}");
    let rows_of = |rows: &[Value], id: &str| -> Vec<Value> {
        rows.iter()
            .filter(|r| r["customer_id"] == id)
            .cloned()
            .collect()
    };
    let before = pull(&hub, "customers", Cred::Key(ETL)).await.rows();
    assert_eq!(rows_of(&before, &ids[0]).len(), 2, "{before:?}");
    assert_eq!(rows_of(&before, &ids[2]).len(), 2, "{before:?}");
    let seq = |r: &Value| r["_seq"].as_i64().expect("_seq");
    let first_of_0 = seq(&rows_of(&before, &ids[0])[0]);

    // A nightly push that has written only the rows before customer 0's first version holds
    // that version back, however old it is.
    let now = chrono::Utc::now().timestamp_millis();
    let set_cursor = |cursor: i64| {
        hub.store.write(move |c| {
            Box::pin(async move {
                sqlx::query("DELETE FROM extract_cursors")
                    .execute(&mut *c)
                    .await?;
                sqlx::query(
                    "INSERT INTO extract_cursors (endpoint, entity, last_cursor, updated_at) \
                     VALUES ('etl_sftp_out', 'customers', $1, $2)",
                )
                .bind(cursor)
                .bind(now)
                .execute(&mut *c)
                .await?;
                Ok(())
            })
        })
    };
    set_cursor(first_of_0 - 1).await.unwrap();
    let future = now + 60_000;
    synchub::extract::changes::compact(&hub.store, future)
        .await
        .unwrap();
    let held = pull(&hub, "customers", Cred::Key(ETL)).await.rows();
    assert_eq!(held, before, "nothing past the push's cursor goes");

    set_cursor(seq(before.last().unwrap())).await.unwrap();
    let dropped = synchub::extract::changes::compact(&hub.store, future)
        .await
        .unwrap();
    assert_eq!(
        dropped, 2,
        "customer 0's first version and customer 2's upsert"
    );
    let after = pull(&hub, "customers", Cred::Key(ETL)).await.rows();
    assert_eq!(
        rows_of(&after, &ids[0]),
        vec![rows_of(&before, &ids[0])[1].clone()],
        "the latest version stays as it was"
    );
    assert_eq!(rows_of(&after, &ids[0])[0]["address"], "越秀区中山五路1号");
    assert_eq!(
        rows_of(&after, &ids[2]),
        vec![rows_of(&before, &ids[2])[1].clone()],
        "only the erasure's tombstone stays: no personal data of the erased customer"
    );
    assert_eq!(rows_of(&after, &ids[1]), rows_of(&before, &ids[1]));
    assert!(after.iter().all(|r| before.contains(r)), "no row changes");
    hub.stop().await;
}

#[tokio::test]
async fn compaction_keeps_the_current_state_and_the_tombstones_sqlite() {
    compaction_keeps_the_current_state_and_the_tombstones(Backend::Sqlite).await;
}

#[tokio::test]
async fn compaction_keeps_the_current_state_and_the_tombstones_postgres() {
    compaction_keeps_the_current_state_and_the_tombstones(Backend::Postgres).await;
}

/// One extract streamed over several internal pages while the hub keeps writing: it ends at
/// the horizon it started with, every row once and in order, and re-pulling its window later
/// gives the same bytes.
#[tokio::test]
async fn an_extract_streamed_while_writes_continue_is_its_window() {
    let hub = spawn(Backend::Sqlite, &[]).await;
    let mut ids = Vec::new();
    for from in (0..4_500).step_by(900) {
        ids.extend(load(&hub, from, from + 900).await);
    }
    let writes = async {
        for from in (5_000..6_000).step_by(200) {
            load(&hub, from, from + 200).await;
        }
    };
    let (during, ()) = tokio::join!(pull(&hub, "customers", Cred::Key(ETL)), writes);
    assert_eq!(during.status, 200);
    let until = during.next.expect("X-Next-Cursor");
    let rows = during.rows();
    let seqs: Vec<i64> = rows.iter().map(|r| r["_seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "change order, once each"
    );
    assert_eq!(seqs.last(), Some(&until), "the window ends at its cursor");
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["customer_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|id| got.contains(&id.as_str())),
        "every customer written before the extract began is in it"
    );
    let again = pull(
        &hub,
        &format!("customers?since=0&until={until}"),
        Cred::Key(ETL),
    )
    .await;
    assert_eq!(
        again.body, during.body,
        "the window re-pulled after the writes"
    );
    let all = pull(&hub, "customers", Cred::Key(ETL)).await.rows();
    assert_eq!(
        all.len(),
        4_500 + 1_000,
        "the later writes come after the window"
    );
    hub.stop().await;
}
