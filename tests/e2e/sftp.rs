//! SFTP batch flows through the running hub against a real OpenSSH sshd (the adapter's
//! `SshdFixture`): the GB18030 dealer file lands in the CRM store, a 1,000-row vehicle file with
//! 3 bad VINs gives 997 vehicles and 3 rejections findable by line, identical re-uploads have no
//! second effect while new content under the same name is processed, a batch written again
//! after a crash changes nothing, a row never overtakes an earlier change of its VIN, two hubs
//! on one PostgreSQL database never take the same file, and only headquarters may "poll now".

use std::time::Duration;

use serde_json::Value;
use synchub::app::Application;
use synchub::settings::{Profile, Settings};
use synchub_adapter_sftp::testkit::SshdFixture;

use crate::helpers::*;

#[path = "../support/vin.rs"]
mod vin;
use vin::vin_check;

const DEALERS: &str = "osm_dealers_sftp_in";
const VEHICLES: &str = "osm_vehicles_sftp_in";
const CAMPAIGN_RESULTS: &str = "dms_campaign_results_sftp_in";

/// Overrides that enable endpoint `ep` and point it at the fixture's `dir_rel`. The schedule is
/// set to once a year, so only the test's own "poll now" calls poll and the assertions know
/// which poll did what.
fn enable(fx: &SshdFixture, ep: &str, dir_rel: &str) -> Vec<(String, String)> {
    sftp_endpoint_env(fx, ep, dir_rel, &POLLED_ON_REQUEST)
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A hub with the overrides; vehicle owners become CRM customers whose change events go to
/// the DMS queue the helper binds, so they deliver instead of waiting as unroutable.
async fn spawn(backend: Backend, env: &[(String, String)]) -> TestHub {
    TestHub::spawn_with(backend, TestConfig::shipped(), &refs(env)).await
}

fn sample_bytes(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samples/sftp")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("sample {}: {e}", p.display()))
}

fn listing(fx: &SshdFixture, rel: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fx.path(rel))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "archive" && n != "error")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn poll(hub: &TestHub, ep: &str) -> Value {
    let (s, r) = hub
        .post(&format!("/api/v1/endpoints/{ep}/poll"), ADMIN, None)
        .await;
    assert_eq!(s, 200, "poll {ep}: {r}");
    r
}

async fn endpoint(hub: &TestHub, id: &str) -> Value {
    let (s, eps) = hub.get("/api/v1/endpoints", ADMIN).await;
    assert_eq!(s, 200, "{eps}");
    eps["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("endpoint {id} not listed: {eps}"))
}

/// Counts the distinct rows (file, content hash, line) the journal finds among the messages of
/// `endpoint`: applied rows through their batch's line span, the others as records of their own.
async fn rows_found_by_source_ref(pool: &sqlx::AnyPool, endpoint: &str) -> i64 {
    lines_found(pool, &format!("m.endpoint = '{endpoint}'"))
        .await
        .0 as i64
}

async fn scalar(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// VIN number `n` of a test file; `valid = false` gives it a wrong check digit.
fn vin(file: u32, n: u32, valid: bool) -> String {
    let mut v: [u8; 17] = format!("LHGCV3CK0SA{file:01}{n:05}")
        .as_bytes()
        .try_into()
        .expect("17 characters");
    let good = vin_check(&v);
    v[8] = if valid {
        good
    } else if good == b'1' {
        b'2'
    } else {
        b'1'
    };
    String::from_utf8(v.to_vec()).expect("ascii")
}

const VEHICLE_HEADER: &str = "vin,brand,model,model_year,color,plate_no,engine_no,dealer_code,sales_date,owner_name,owner_mobile,owner_id_no";

/// A vehicle file of `rows` rows (file number `file` keeps VINs distinct between files); rows
/// whose index is in `bad` carry a wrong VIN check digit. Returns the text and the bad lines.
fn vehicle_file(file: u32, rows: u32, bad: &[u32]) -> (String, Vec<u64>) {
    let mut text = format!("{VEHICLE_HEADER}\n");
    let mut bad_lines = Vec::new();
    for i in 0..rows {
        let ok = !bad.contains(&i);
        if !ok {
            // Line 1 is the header.
            bad_lines.push(u64::from(i) + 2);
        }
        text.push_str(&format!(
            "{},Honda,雅阁 Accord,2026,珍珠白,粤A·{file}{i:04},L15B{i:06},D000{},2026-11-20,客户{i},139{file:02}{i:06},\n",
            vin(file, i, ok),
            i % 3 + 1,
        ));
    }
    (text, bad_lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn gb18030_dealer_file_lands_in_the_crm_store_and_only_headquarters_polls() {
    let fx = SshdFixture::start();
    let hub = spawn(Backend::Sqlite, &enable(&fx, DEALERS, "outbound/dealers")).await;
    let dir = "outbound/dealers";
    std::fs::write(
        fx.path(&format!("{dir}/DEALER_20261125.csv")),
        sample_bytes("DEALER_20261125.csv"),
    )
    .unwrap();
    std::fs::write(fx.path(&format!("{dir}/DEALER_20261125.csv.ok")), b"").unwrap();

    // Shipped endpoints that were not enabled show as disabled and cannot be polled.
    assert_eq!(endpoint(&hub, VEHICLES).await["state"], "disabled");
    assert_eq!(endpoint(&hub, "etl_sftp_out").await["state"], "disabled");
    let (s, r) = hub
        .post(&format!("/api/v1/endpoints/{VEHICLES}/poll"), ADMIN, None)
        .await;
    assert_eq!(s, 409, "{r}");
    let (s, r) = hub
        .post("/api/v1/endpoints/no_such_endpoint/poll", ADMIN, None)
        .await;
    assert_eq!(s, 404, "{r}");

    // Dealer IT may not move partner files.
    let (s, r) = hub
        .post(&format!("/api/v1/endpoints/{DEALERS}/poll"), IT_D0001, None)
        .await;
    assert_eq!(s, 403, "{r}");
    assert_eq!(
        listing(&fx, dir),
        ["DEALER_20261125.csv", "DEALER_20261125.csv.ok"],
        "a refused poll touches nothing"
    );

    let report = poll(&hub, DEALERS).await;
    assert_eq!(report["files_found"], 1, "{report}");
    assert_eq!(report["files_taken"], 1, "{report}");
    let file = &report["files"][0];
    assert_eq!(file["outcome"]["status"], "archived", "{report}");
    assert_eq!(
        (&file["read"], &file["accepted"], &file["rejected"]),
        (&3.into(), &3.into(), &0.into()),
        "{report}"
    );
    assert!(listing(&fx, dir).is_empty(), "file and marker moved out");
    assert!(
        fx.path(&format!("{dir}/archive/DEALER_20261125.csv"))
            .exists()
    );
    assert!(
        fx.path(&format!("{dir}/archive/DEALER_20261125.csv.ok"))
            .exists()
    );

    hub.settle(30).await;
    let (s, d) = hub.get("/api/v1/dealers/D0001", ADMIN).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["dealer_name"], "广州天河本田特约店", "{d}");
    assert_eq!(d["city"], "广州", "{d}");
    assert_eq!(d["province"], "广东", "{d}");
    assert_eq!(
        d["address"], "天河路123号",
        "full-width digits cleansed: {d}"
    );
    let (_, d3) = hub.get("/api/v1/dealers/D0003", ADMIN).await;
    assert_eq!(d3["status"], "suspended", "{d3}");
    assert_eq!(d3["dealer_name"], "北京朝阳本田特约店", "{d3}");

    // What the operator sees: state, last contact, the last poll and the ledger row.
    let ep = endpoint(&hub, DEALERS).await;
    assert_eq!(ep["kind"], "sftp in", "{ep}");
    assert_eq!(ep["state"], "up", "{ep}");
    assert!(!ep["last_contact"].is_null(), "{ep}");
    let last = &ep["last_poll"];
    assert_eq!(last["files_found"], 1, "{ep}");
    assert_eq!(last["files_taken"], 1, "{ep}");
    assert_eq!(last["errors"].as_array().map(Vec::len), Some(0), "{ep}");
    assert_eq!(last["files"][0]["accepted"], 3, "{ep}");
    let ledger = &last["ledger"][0];
    assert_eq!(ledger["name"], "DEALER_20261125.csv", "{ep}");
    assert_eq!(ledger["status"], "archived", "{ep}");
    assert_eq!(
        (&ledger["read"], &ledger["accepted"], &ledger["rejected"]),
        (&3.into(), &3.into(), &0.into()),
        "{ep}"
    );
    assert!(
        ledger["moved_to"]
            .as_str()
            .is_some_and(|p| p.ends_with("/archive/DEALER_20261125.csv")),
        "{ep}"
    );

    let metrics = hub
        .client
        .get(format!("{}/metrics", hub.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "hub_sftp_files_total{endpoint=\"osm_dealers_sftp_in\",outcome=\"archived\"}"
        ),
        "files metric missing"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_vehicles_with_three_bad_vins_give_997_vehicles_and_3_rejections_by_line() {
    thousand_vehicles_three_bad(true).await;
}

/// The same file with `direct_apply = false`: one record and one CRM delivery per row, applied
/// by the dispatcher, with the same result.
#[tokio::test(flavor = "multi_thread")]
async fn with_direct_apply_off_the_same_file_goes_row_by_row_through_the_dispatcher() {
    thousand_vehicles_three_bad(false).await;
}

async fn thousand_vehicles_three_bad(direct: bool) {
    let fx = SshdFixture::start();
    let dir = "outbound/vehicles";
    let mut env = enable(&fx, VEHICLES, dir);
    env.push((
        "SYNCHUB__ENDPOINTS__OSM_VEHICLES_SFTP_IN__DIRECT_APPLY".into(),
        direct.to_string(),
    ));
    let hub = spawn(Backend::Sqlite, &env).await;
    let (text, bad_lines) = vehicle_file(1, 1000, &[10, 500, 998]);
    std::fs::write(fx.path(&format!("{dir}/VEHICLE_20261125.csv")), &text).unwrap();

    let report = poll(&hub, VEHICLES).await;
    let file = &report["files"][0];
    assert_eq!(file["outcome"]["status"], "archived", "{report}");
    assert_eq!(
        (&file["read"], &file["accepted"], &file["rejected"]),
        (&1000.into(), &997.into(), &3.into()),
        "{report}"
    );
    assert!(listing(&fx, dir).is_empty());
    let archived: Vec<_> = std::fs::read_dir(fx.path(&format!("{dir}/archive")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(archived, ["VEHICLE_20261125.csv"], "archived once");

    hub.settle(120).await;
    let pool = hub.store.pool();
    assert_eq!(
        scalar(
            pool,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'vehicle'"
        )
        .await,
        997
    );
    // The owner columns arrived as the vehicle's owner.
    let good = vin(1, 11, true);
    let (s, v) = hub.get(&format!("/api/v1/vehicles/{good}"), ADMIN).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["owner"]["name"], "客户11", "{v}");
    assert_eq!(v["owner"]["mobile"], "13901000011", "{v}");
    assert_eq!(v["dealer_code"], "D0003", "{v}");
    let (s, _) = hub
        .get(&format!("/api/v1/vehicles/{}", vin(1, 10, false)), ADMIN)
        .await;
    assert_eq!(s, 404, "a bad VIN is not stored");

    // Searching a good VIN finds what carried it: the batch (its span of lines) when applied
    // straight through, the row's own record otherwise.
    let (_, found) = hub
        .get(&format!("/api/v1/messages?key={good}"), ADMIN)
        .await;
    let messages = found["messages"].as_array().unwrap();
    let carriers: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["source_ref"].as_str())
        .filter(|r| r.starts_with("VEHICLE_20261125.csv@"))
        .collect();
    assert!(!carriers.is_empty(), "{found}");
    let kinds: Vec<&str> = messages.iter().filter_map(|m| m["kind"].as_str()).collect();
    if direct {
        assert!(carriers.iter().any(|r| r.contains('-')), "{found}");
        assert!(!kinds.contains(&"record"), "applied, not queued: {found}");
        // A row's own source_ref finds the batch holding its line; a line past the batch does not.
        let span = carriers.iter().find(|r| r.contains('-')).unwrap();
        let (prefix, lines) = span.rsplit_once(':').unwrap();
        let last: u64 = lines.split_once('-').unwrap().1.parse().unwrap();
        let by_ref = |line: u64| {
            let hub = &hub;
            let key = format!("{prefix}:{line}");
            async move {
                let (s, v) = hub.get(&format!("/api/v1/messages?key={key}"), ADMIN).await;
                assert_eq!(s, 200, "{v}");
                v["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|m| m["source_ref"].as_str().map(str::to_owned))
                    .collect::<Vec<String>>()
            }
        };
        assert!(
            by_ref(11).await.iter().any(|r| r == span),
            "line 11 is in {span}"
        );
        assert!(
            by_ref(last).await.iter().any(|r| r == span),
            "the last line is in {span}"
        );
        assert!(
            !by_ref(last + 1).await.iter().any(|r| r == span),
            "past {span}"
        );
    } else {
        assert!(carriers.iter().any(|r| r.ends_with(":13")), "{found}");
        assert!(kinds.contains(&"record"), "{found}");
    }

    // The operator finds the three rejections, each with its line and the reason.
    let (s, r) = hub
        .get(
            &format!("/api/v1/messages?status=rejected&endpoint={VEHICLES}"),
            ADMIN,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let rejected = r["messages"].as_array().unwrap();
    assert_eq!(rejected.len(), 3, "{r}");
    let mut lines: Vec<u64> = rejected
        .iter()
        .map(|m| {
            let sref = m["source_ref"].as_str().unwrap_or_default();
            assert!(sref.starts_with("VEHICLE_20261125.csv@"), "{m}");
            assert!(m["reason"].to_string().contains("check digit"), "{m}");
            sref.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    lines.sort();
    assert_eq!(lines, bad_lines);
    // And by the source_ref itself, as a key.
    let sref = rejected[0]["source_ref"].as_str().unwrap();
    let (_, found) = hub
        .get(&format!("/api/v1/messages?key={sref}"), ADMIN)
        .await;
    assert!(
        found["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["status"] == "rejected")),
        "{found}"
    );
    hub.stop().await;
}

/// What the poller hands the hub for lines 2-4 of `T.csv`: two good vehicles with new owners,
/// and one with a wrong check digit. A new envelope each time, as a resumed poll builds.
fn three_rows() -> synchub_adapter_sdk::Submission {
    use synchub_adapter_sdk::{ContentType, Envelope, Principal, RecordIn, Submission};
    let mut envelope = Envelope::new(VEHICLES, ContentType::Csv, "vin,...".into());
    envelope.principal = Some(Principal {
        system: "osm".into(),
        dealer_code: None,
    });
    let records = [
        (2, vin(9, 1, true)),
        (3, vin(9, 2, false)),
        (4, vin(9, 3, true)),
    ]
    .into_iter()
    .map(|(line, v)| RecordIn {
        index: line,
        record_type: "vehicle".into(),
        source_ref: Some(format!("T.csv@abcdef12:{line}")),
        body: Ok(serde_json::json!({
            "vin": v, "brand": "Honda", "model": "Fit", "model_year": "2026",
            "dealer_code": "D0001", "sales_date": "2026-11-20",
            "owner_name": format!("车主{line}"), "owner_mobile": format!("1390900000{line}"),
        })),
    })
    .collect();
    Submission { envelope, records }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_written_again_after_a_crash_has_no_second_effect_and_reports_the_first_verdicts() {
    use synchub_adapter_sdk::{Inbox, RecordVerdict};
    let hub = spawn(Backend::Sqlite, &[]).await;
    let inbox = synchub::sftp::SftpInbox::new(hub.pipeline.clone(), vec!["owner_".into()])
        .with_direct(hub.pipeline.clone());
    let pool = hub.store.pool();
    let effects = async || {
        (
            scalar(pool, "SELECT COUNT(*) FROM crm_changes").await,
            scalar(pool, "SELECT COUNT(*) FROM messages").await,
            scalar(pool, "SELECT COUNT(*) FROM deliveries").await,
        )
    };

    let first = inbox.accept(three_rows()).await.expect("first copy");
    let after_first = effects().await;
    let [
        RecordVerdict::Accepted {
            message_id: unit,
            duplicate: false,
            ..
        },
        RecordVerdict::Rejected {
            message_id: bad,
            errors,
        },
        RecordVerdict::Accepted {
            duplicate: false, ..
        },
    ] = first.records.as_slice()
    else {
        panic!("{:?}", first.records);
    };
    assert_eq!(*unit, first.message_id, "applied rows are the batch's");
    assert!(
        errors.iter().any(|e| e.to_string().contains("check digit")),
        "{errors:?}"
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT COUNT(*) FROM crm_changes WHERE entity = 'vehicle'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT COUNT(*) FROM messages WHERE kind = 'event' AND record_type = 'customer_event'"
        )
        .await,
        2,
        "each new owner's customer.created is journaled for the dealer's DMS"
    );

    // The poller died between the commit and its ledger progress: the batch comes again.
    let second = inbox.accept(three_rows()).await.expect("second copy");
    assert_eq!(
        effects().await,
        after_first,
        "no second effect, nothing journaled"
    );
    assert_eq!(
        second.records,
        vec![
            RecordVerdict::Accepted {
                message_id: *unit,
                id: None,
                duplicate: true
            },
            RecordVerdict::Rejected {
                message_id: *bad,
                errors: errors.clone()
            },
            RecordVerdict::Accepted {
                message_id: *unit,
                id: None,
                duplicate: true
            },
        ],
        "the first copy's verdicts: counts in the file ledger stay right"
    );

    // The operator finds the batch by a vehicle's VIN.
    let (s, found) = hub
        .get(&format!("/api/v1/messages?key={}", vin(9, 3, true)), ADMIN)
        .await;
    assert_eq!(s, 200, "{found}");
    assert!(
        found["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == unit.to_string())),
        "{found}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_whose_vin_has_a_delivery_waiting_queues_behind_it_instead_of_overtaking() {
    use synchub_adapter_sdk::{Inbox, RecordVerdict};
    let hub = spawn(Backend::Sqlite, &[]).await;
    let waiting_vin = vin(9, 3, true);
    // An earlier change of the car, for a dealer OSM has not sent yet: it waits in its lane.
    let mut earlier = three_rows();
    earlier.records.retain(|r| r.index == 4);
    earlier.records[0].source_ref = Some("earlier.csv@00000000:4".into());
    if let Ok(Value::Object(b)) = &mut earlier.records[0].body {
        b.insert("dealer_code".into(), "D0999".into());
        b.insert(
            "owner".into(),
            serde_json::json!({"name": "车主4", "mobile": "13909000004"}),
        );
        b.remove("owner_name");
        b.remove("owner_mobile");
    }
    let r = hub.pipeline.accept(earlier).await.expect("earlier change");
    assert!(
        matches!(r.records[0], RecordVerdict::Accepted { .. }),
        "{r:?}"
    );

    let inbox = synchub::sftp::SftpInbox::new(hub.pipeline.clone(), vec!["owner_".into()])
        .with_direct(hub.pipeline.clone());
    let receipt = inbox.accept(three_rows()).await.expect("batch");
    let RecordVerdict::Accepted { message_id, .. } = &receipt.records[2] else {
        panic!("{:?}", receipt.records);
    };
    assert_ne!(
        *message_id, receipt.message_id,
        "journaled as a record of its own, not applied with the batch"
    );
    let pool = hub.store.pool();
    assert_eq!(
        scalar(
            pool,
            &format!(
                "SELECT COUNT(*) FROM deliveries WHERE lane = '{waiting_vin}' \
                 AND status IN ('pending', 'in_flight')"
            )
        )
        .await,
        2,
        "both changes of the car wait in its lane, in order"
    );
    assert_eq!(
        scalar(
            pool,
            &format!(
                "SELECT COUNT(*) FROM crm_records WHERE entity = 'vehicle' AND id = '{waiting_vin}'"
            )
        )
        .await,
        0,
        "the later change did not overtake the earlier one"
    );
    // The batch's other good row had no one ahead of it.
    assert_eq!(
        scalar(
            pool,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'vehicle'"
        )
        .await,
        1
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_reupload_has_no_effect_but_new_content_under_the_same_name_is_processed() {
    let fx = SshdFixture::start();
    let dir = "inbound/campaign-results";
    let hub = spawn(Backend::Sqlite, &enable(&fx, CAMPAIGN_RESULTS, dir)).await;
    crate::campaigns::create_campaign(&hub, "C2026-12-WINTERCARE", &["D0002"]).await;
    let name = "CAMPRES_D0002_20261206.csv";
    let original = sample_bytes(name);
    let path = fx.path(&format!("{dir}/{name}"));
    std::fs::write(&path, &original).unwrap();
    // Each row of a file becomes a campaign result of its own in the CRM store.
    let records = "SELECT COUNT(*) FROM crm_records WHERE entity = 'campaign_result'";

    let r = poll(&hub, CAMPAIGN_RESULTS).await;
    assert_eq!(r["files"][0]["outcome"]["status"], "archived", "{r}");
    assert_eq!(r["files"][0]["accepted"], 2, "{r}");
    hub.settle(30).await;
    assert_eq!(scalar(hub.store.pool(), records).await, 2);
    let (s, c) = hub
        .get("/api/v1/campaigns/C2026-12-WINTERCARE", ADMIN)
        .await;
    assert_eq!(s, 200, "{c}");
    assert!(c["results_by_dealer"]["D0002"].is_object(), "{c}");

    // The same bytes again: moved out without reading, no new messages.
    std::fs::write(&path, &original).unwrap();
    let r = poll(&hub, CAMPAIGN_RESULTS).await;
    assert_eq!(r["files"][0]["outcome"]["status"], "already_done", "{r}");
    assert!(!path.exists());
    hub.settle(30).await;
    assert_eq!(
        scalar(hub.store.pool(), records).await,
        2,
        "no second effect"
    );
    let archive = fx.path(&format!("{dir}/archive"));
    assert_eq!(
        std::fs::read_dir(&archive).unwrap().count(),
        2,
        "the re-upload sits beside the first, under a timestamp suffix"
    );

    // The next day's file under the same name, with a third row: processed.
    let mut next = original.clone();
    next.extend_from_slice(
        "C2026-12-WINTERCARE,D0002,13700000002,李四,purchased,2026-12-07,\n".as_bytes(),
    );
    std::fs::write(&path, &next).unwrap();
    let r = poll(&hub, CAMPAIGN_RESULTS).await;
    assert_eq!(r["files"][0]["outcome"]["status"], "archived", "{r}");
    assert_eq!(r["files"][0]["accepted"], 3, "{r}");
    hub.settle(30).await;
    assert_eq!(scalar(hub.store.pool(), records).await, 5);
    assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 3);
    let ep = endpoint(&hub, CAMPAIGN_RESULTS).await;
    assert_eq!(
        ep["last_poll"]["ledger"].as_array().map(Vec::len),
        Some(2),
        "{ep}"
    );
    hub.stop().await;
}

/// A hub on an existing database (the second instance of a scale-out pair).
struct Instance {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _config: TestConfig,
}

impl Instance {
    async fn start(store_url: &str, env: &[(String, String)]) -> Instance {
        let config = TestConfig::shipped();
        let mut vars: Vec<(String, String)> = vec![
            ("SYNCHUB__STORE__URL".into(), store_url.into()),
            ("SYNCHUB__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
            ("SYNCHUB__DISPATCH__IDLE_POLL_MS".into(), "50".into()),
        ];
        vars.extend(env.iter().cloned());
        let settings = Settings::load(&config.config_dir(), Profile::Local, &vars)
            .unwrap_or_else(|p| panic!("settings rejected: {p:#?}"));
        let app = Application::build(settings).await.expect("hub builds");
        let base = format!("http://{}", app.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = rx.await;
            })
            .await
            .expect("hub runs");
        });
        Instance {
            base,
            stop: Some(tx),
            task,
            _config: config,
        }
    }

    async fn poll(&self, ep: &str) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/endpoints/{ep}/poll", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        r.json().await.expect("json")
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hubs_on_one_postgres_database_never_take_the_same_file() {
    let fx = SshdFixture::start();
    let dir = "outbound/vehicles";
    let mut env = enable(&fx, VEHICLES, dir);
    env.push((
        "SYNCHUB__ENDPOINTS__OSM_VEHICLES_SFTP_IN__INSTANCE_ID".into(),
        "hub-a".into(),
    ));
    let a = spawn(Backend::Postgres, &env).await;
    env.pop();
    env.push((
        "SYNCHUB__ENDPOINTS__OSM_VEHICLES_SFTP_IN__INSTANCE_ID".into(),
        "hub-b".into(),
    ));
    // Same AMQP names (and queue expiry) as A: either hub may deliver the owners' customer events.
    for ep in ["DMS_AMQP_OUT", "DMS_AMQP_IN"] {
        env.push((
            format!("SYNCHUB__ENDPOINTS__{ep}__NAME_PREFIX"),
            a.amqp_prefix.clone(),
        ));
        env.push((
            format!("SYNCHUB__ENDPOINTS__{ep}__QUEUE_EXPIRES_MS"),
            "600000".into(),
        ));
    }
    let b = Instance::start(&a.store_url, &env).await;
    let files = 3u32;
    for f in 1..=files {
        let (text, _) = vehicle_file(f, 1000, &[]);
        std::fs::write(fx.path(&format!("{dir}/VEHICLE_2026112{f}.csv")), text).unwrap();
    }

    // Both poll the same directory at the same time.
    let (ra, rb) = tokio::join!(
        async {
            let (s, r) = a
                .post(&format!("/api/v1/endpoints/{VEHICLES}/poll"), ADMIN, None)
                .await;
            assert_eq!(s, 200, "{r}");
            r
        },
        b.poll(VEHICLES)
    );
    let archived_by = |r: &Value| -> Vec<String> {
        r["files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["outcome"]["status"] == "archived")
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut all: Vec<String> = archived_by(&ra);
    all.extend(archived_by(&rb));
    all.sort();
    assert_eq!(
        all,
        (1..=files)
            .map(|f| format!("VEHICLE_2026112{f}.csv"))
            .collect::<Vec<_>>(),
        "every file archived by exactly one hub:\nA: {ra}\nB: {rb}"
    );
    assert!(listing(&fx, dir).is_empty());
    assert_eq!(
        std::fs::read_dir(fx.path(&format!("{dir}/archive")))
            .unwrap()
            .count(),
        files as usize,
        "each file archived once"
    );

    a.settle(180).await;
    let pool = a.store.pool();
    let total = i64::from(files) * 1000;
    assert_eq!(
        rows_found_by_source_ref(pool, "osm_vehicles_sftp_in").await,
        total,
        "each row journaled once, findable by its file and line"
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'vehicle'"
        )
        .await,
        total
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT COUNT(*) FROM crm_changes WHERE entity = 'vehicle'"
        )
        .await,
        total,
        "each row applied to the CRM store once"
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT COUNT(*) FROM sftp_files WHERE endpoint = 'osm_vehicles_sftp_in' AND status = 'archived'"
        )
        .await,
        i64::from(files)
    );
    b.stop().await;
    a.stop().await;
    // Give the pool a moment to let go before the database is dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running hub process, killed (SIGKILL) and reaped when dropped, so a failing test leaves
/// no hub behind.
struct Running(std::process::Child);

impl Running {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real binary on `root`'s configuration and SQLite store, as an operator runs it.
fn start_binary(root: &std::path::Path, port: u16, env: &[(String, String)]) -> Running {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_synchub"))
        .args(["run", "--config"])
        .arg(root.join("config"))
        .env(
            "SYNCHUB__STORE__URL",
            format!("sqlite://{}/data/hub.db", root.display()),
        )
        .env("SYNCHUB__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start synchub");
    Running(child)
}

async fn wait_ready(base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/health/ready")).await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hub did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_killed_mid_file_resumes_after_restart_and_imports_every_row_once() {
    const ROWS: u32 = 20_000;
    let fx = SshdFixture::start();
    let dir = "outbound/vehicles";
    let config = TestConfig::shipped();
    let root = config.dir.path().to_path_buf();
    let mut env = enable(&fx, VEHICLES, dir);
    env.push((
        "SYNCHUB__ENDPOINTS__OSM_VEHICLES_SFTP_IN__BATCH_SIZE".into(),
        "100".into(),
    ));
    // A broker namespace of its own: the binary's consumers must not take other tests' messages.
    let prefix = amqp_prefix();
    for ep in ["DMS_AMQP_OUT", "DMS_AMQP_IN"] {
        env.push((
            format!("SYNCHUB__ENDPOINTS__{ep}__NAME_PREFIX"),
            prefix.clone(),
        ));
    }
    // Both links declare the whole topology, so both must agree on the queues' expiry.
    for ep in ["DMS_AMQP_OUT", "DMS_AMQP_IN"] {
        env.push((
            format!("SYNCHUB__ENDPOINTS__{ep}__QUEUE_EXPIRES_MS"),
            "600000".into(),
        ));
    }
    // Vehicles without owners: no customer events, only the rows under test.
    let mut text = format!("{VEHICLE_HEADER}\n");
    for i in 0..ROWS {
        text.push_str(&format!(
            "{},Honda,思域 Civic,2026,白,,,D0001,2026-11-20,,,\n",
            vin(7, i, true)
        ));
    }
    let name = "VEHICLE_20261130.csv";
    std::fs::write(fx.path(&format!("{dir}/{name}")), &text).unwrap();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_binary(&root, port, &env);
    wait_ready(&base).await;
    sqlx::any::install_default_drivers();
    let db = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}/data/hub.db?mode=ro", root.display()))
        .await
        .expect("open the hub's store read-only");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let poll_url = format!("{base}/api/v1/endpoints/{VEHICLES}/poll");
    let first = tokio::spawn({
        let (client, url) = (client.clone(), poll_url.clone());
        async move { client.post(url).bearer_auth(ADMIN).send().await }
    });

    // Kill it once a good part of the file is committed, well before the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let resumed_at = loop {
        let line: Option<i64> = sqlx::query_scalar(
            "SELECT resume_line FROM sftp_files WHERE endpoint = 'osm_vehicles_sftp_in'",
        )
        .fetch_optional(&db)
        .await
        .unwrap_or(None);
        if let Some(l) = line.filter(|l| *l >= 3_000) {
            child.kill();
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        first.await.unwrap().is_err(),
        "the first poll died with the hub"
    );
    assert!(
        resumed_at < i64::from(ROWS),
        "killed too late to test anything: line {resumed_at}"
    );
    assert_eq!(
        listing(&fx, dir),
        [name],
        "a half-imported file stays in place"
    );
    assert!(
        !fx.path(&format!("{dir}/archive")).exists()
            || std::fs::read_dir(fx.path(&format!("{dir}/archive")))
                .unwrap()
                .count()
                == 0
    );

    // Restarted on the same store (same host: it resumes its own claim at once).
    let mut child = start_binary(&root, port, &env);
    wait_ready(&base).await;
    let r: Value = client
        .post(&poll_url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("poll after restart")
        .json()
        .await
        .unwrap();
    let file = &r["files"][0];
    assert_eq!(file["outcome"]["status"], "archived", "{r}");
    assert_eq!(file["read"], ROWS, "counts continue from the ledger: {r}");
    assert_eq!(file["rejected"], 0, "{r}");
    assert!(listing(&fx, dir).is_empty());
    assert_eq!(
        std::fs::read_dir(fx.path(&format!("{dir}/archive")))
            .unwrap()
            .count(),
        1,
        "archived once"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'in_flight')",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} deliveries still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let count = |sql: &str| {
        let db = db.clone();
        let sql = sql.to_owned();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    let rows = i64::from(ROWS);
    assert_eq!(
        count("SELECT COUNT(*) FROM crm_records WHERE entity = 'vehicle'").await,
        rows
    );
    assert_eq!(
        rows_found_by_source_ref(&db, "osm_vehicles_sftp_in").await,
        rows,
        "every row journaled once, findable by its file and line"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM crm_changes WHERE entity = 'vehicle'").await,
        rows,
        "every row applied once: one version of each vehicle"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM sftp_files WHERE status = 'archived' AND rows_read = 20000")
            .await,
        1
    );
    db.close().await;
    child.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn etl_sftp_out_writes_each_delivery_as_a_csv_file_with_its_manifest() {
    let fx = SshdFixture::start();
    let dir = "in";
    let config = TestConfig::shipped();
    // A route that copies every lead to the analytics server as well.
    config.write(
        "routes/leads_to_etl.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\nto = [\"etl_sftp_out\"]\n",
    );
    let mut env = enable(&fx, "etl_sftp_out", dir);
    // Inbound-only settings do not apply to an `out` endpoint.
    env.retain(|(k, _)| !k.ends_with("__STABLE_SECS") && !k.ends_with("__SCHEDULE"));
    let hub = TestHub::spawn_with(Backend::Sqlite, config, &refs(&env)).await;
    assert_eq!(endpoint(&hub, "etl_sftp_out").await["kind"], "sftp out");

    let (s, r) = hub
        .post_records(
            "/api/v1/leads",
            "demo-callcenter",
            &sample("rest/lead.request.json"),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    hub.settle(30).await;
    let mut files = listing(&fx, dir);
    files.retain(|f| !f.ends_with(".part"));
    assert_eq!(files.len(), 2, "data file and manifest: {files:?}");
    let csv_name = files.iter().find(|f| f.ends_with(".csv")).unwrap();
    assert!(csv_name.starts_with("extract_"), "{files:?}");
    let csv = std::fs::read_to_string(fx.path(&format!("{dir}/{csv_name}"))).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("mobile") && header.contains("source_ref"),
        "{csv}"
    );
    assert_eq!(lines.count(), 1, "{csv}");
    let manifest_name = files
        .iter()
        .find(|f| f.ends_with(".manifest.json"))
        .unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(fx.path(&format!("{dir}/{manifest_name}"))).unwrap())
            .unwrap();
    assert_eq!(manifest["rows"], 1, "{manifest}");
    assert_eq!(
        manifest["sha256"].as_str().map(str::len),
        Some(64),
        "{manifest}"
    );
    hub.stop().await;
}
