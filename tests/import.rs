//! `synchub import` as an operator runs it, through the real binary on a private SQLite store:
//! a dirty GB18030 customer file gives the expected report row for row (dry run first, then
//! the import, then a rerun with no second effect), vehicles with bad VINs, and an import
//! killed with SIGKILL that resumes without duplicates.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sqlx::Row;
use synchub::store::Store;

#[path = "support/tree.rs"]
mod tree;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A private configuration tree and store.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        tree::copy_shipped_config(&repo(), dir.path());
        Site { dir }
    }

    fn store_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("store.db").display())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_synchub"));
        c.arg("--config")
            .arg(self.dir.path().join("config"))
            .args(args)
            .env("SYNCHUB__STORE__URL", self.store_url())
            // A killed import's claimed deliveries come back after the lease: keep that short.
            .env("SYNCHUB__DISPATCH__LEASE_SECS", "3")
            .env("RUST_LOG", "warn")
            .env_remove("SYNCHUB_PROFILE");
        c
    }

    fn import(&self, args: &[&str]) -> Output {
        self.command(&[&["import"], args].concat())
            .output()
            .unwrap()
    }

    fn report(&self, name: &str, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name).join(file)).unwrap()
    }

    fn report_dir(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn store(&self) -> Store {
        Store::open(&self.store_url()).await.unwrap()
    }
}

fn fixture(name: &str) -> String {
    repo()
        .join("tests/fixtures/import")
        .join(name)
        .display()
        .to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn scalar(store: &Store, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

fn assert_has(md: &str, needle: &str) {
    assert!(md.contains(needle), "report lacks {needle}:\n{md}");
}

/// `rejected.csv` / `flagged.csv` as (line, rule, reason) without the raw row.
fn listed(csv: &str) -> Vec<(u64, String, String)> {
    csv.lines()
        .skip(1)
        .map(|l| {
            let mut parts = l.splitn(3, ',');
            let line = parts.next().unwrap().parse().unwrap();
            let rule = parts.next().unwrap().to_owned();
            let rest = parts.next().unwrap();
            // reason: up to the next comma outside quotes
            let reason = if let Some(q) = rest.strip_prefix('"') {
                q.split("\",").next().unwrap().replace("\"\"", "\"")
            } else {
                rest.split(',').next().unwrap().to_owned()
            };
            (line, rule, reason)
        })
        .collect()
}

#[tokio::test]
async fn a_dirty_gb18030_customer_file_is_reported_row_for_row_and_imported_once() {
    let site = Site::new();
    let file = fixture("customers_dirty.gb18030.csv");
    let dry = site.report_dir("dry");
    let out = site.import(&[
        "--entity",
        "customers",
        &file,
        "--charset",
        "gb18030",
        "--dry-run",
        "--report-dir",
        &dry,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("10 rows: 3 imported, 2 merged, 3 rejected, 2 flagged"),
        "{}",
        text(&out)
    );
    let store = site.store().await;
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'customer'"
        )
        .await,
        0,
        "a dry run writes nothing"
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM messages WHERE endpoint = 'legacy_import'"
        )
        .await,
        0
    );

    let out = site.import(&[
        "--entity",
        "customers",
        &file,
        "--charset",
        "gb18030",
        "--report-dir",
        &site.report_dir("run1"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let md = site.report("run1", "report.md");
    for needle in [
        "| source rows | 10 |",
        "| imported (new) | 3 |",
        "| merged | 2 |",
        "| rejected | 3 |",
        "| flagged for review (not imported) | 2 |",
        "10 = 3 + 2 + 3 + 2: **reconciled**",
        "| `fix.full_width` | 2 |",
        "| `fix.mobile` | 1 |",
        "| `fix.date_format` | 1 |",
        "| `fix.trim` | 1 |",
        "| `merge.same_mobile_same_name` | 2 |",
        "| `flag.same_mobile_different_name` | 1 |",
        "| `flag.same_id_no_different_mobile` | 1 |",
        "| `reject.incomplete` | 1 |",
        "| `reject.invalid.mobile` | 1 |",
        "| `reject.invalid.id_no` | 1 |",
        "| before | 0 |",
        "| after | 3 |",
        "| applied: delivered | 5 |",
        "**go-live check: PASS**",
    ] {
        assert_has(&md, needle);
    }
    assert!(
        site.report("run1", "report.html").contains("王小明"),
        "the HTML report is UTF-8 with the Chinese names"
    );
    let rejected = listed(&site.report("run1", "rejected.csv"));
    assert_eq!(
        rejected
            .iter()
            .map(|r| (r.0, r.1.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (5, "reject.invalid.mobile"),
            (6, "reject.incomplete"),
            (10, "reject.invalid.id_no")
        ]
    );
    assert!(
        rejected[1].2.contains("dealer_code: required"),
        "{rejected:?}"
    );
    let flagged = listed(&site.report("run1", "flagged.csv"));
    assert_eq!(
        flagged
            .iter()
            .map(|r| (r.0, r.1.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (4, "flag.same_mobile_different_name"),
            (7, "flag.same_id_no_different_mobile")
        ]
    );
    assert!(
        flagged[0].2.contains("王小明") && flagged[0].2.contains("李四"),
        "{flagged:?}"
    );

    // The CRM store: three customers, the merged rows applied onto the first, cleansed.
    let rows = sqlx::query(
        "SELECT mobile, data, source_system FROM crm_records WHERE entity = 'customer' ORDER BY mobile",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mobiles: Vec<String> = rows.iter().map(|r| r.try_get(0).unwrap()).collect();
    assert_eq!(mobiles, ["13600003333", "13760001234", "13912345678"]);
    let wang: serde_json::Value =
        serde_json::from_str(&rows[2].try_get::<String, _>(1).unwrap()).unwrap();
    assert_eq!(wang["name"], "王小明");
    assert_eq!(wang["id_no"], "440104199007152511");
    assert_eq!(wang["birth_date"], "1990-07-15");
    assert_eq!(wang["address"], "天河区体育西路101号", "{wang}");
    let wu: serde_json::Value =
        serde_json::from_str(&rows[0].try_get::<String, _>(1).unwrap()).unwrap();
    assert_eq!(wu["name"], "吴九", "trimmed");
    assert_eq!(rows[0].try_get::<String, _>(2).unwrap(), "import");
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM approvals").await,
        0,
        "the migration is headquarters' own: no approvals"
    );
    // The customer's history names the import batch it came from, and that batch's journaled
    // transport unit holds the raw rows: the imported one and the two merged onto it.
    let wang_id: String = sqlx::query(
        "SELECT id FROM crm_records WHERE entity = 'customer' AND mobile = '13912345678'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
    .try_get(0)
    .unwrap();
    let unit_body: Vec<u8> = sqlx::query(
        "SELECT m.body FROM change_history h JOIN messages m ON m.id = h.message_id \
         WHERE h.entity = 'customer' AND h.entity_id = $1 AND h.field = '(created)' \
         AND m.endpoint = 'legacy_import' AND m.kind = 'transport'",
    )
    .bind(&wang_id)
    .fetch_one(store.pool())
    .await
    .unwrap()
    .try_get(0)
    .unwrap();
    let unit_body = String::from_utf8(unit_body).unwrap();
    for line in [
        "D0001,王小明,+86 139 1234 5678,440104199007152511",
        "D0001,王小明,13912345678,,M,,广东,广州,天河区体育西路101号",
        "D0001,王小明,13912345678,440104199007152511,M,1990-07-15",
    ] {
        assert!(unit_body.contains(line), "{line} not in {unit_body}");
    }
    // The operator's search finds that batch by the customer's id (through its history) and by
    // the source_ref of any line the batch holds (through the batch's line span).
    let search = |key: String| {
        let store = store.clone();
        async move {
            let s = synchub::store::queries::Search {
                key: Some(key),
                limit: 50,
                ..Default::default()
            };
            synchub::store::queries::search_messages(store.pool(), &s)
                .await
                .unwrap()
        }
    };
    let found = search(wang_id.clone()).await;
    let unit = found
        .iter()
        .find(|m| m["endpoint"] == "legacy_import" && m["kind"] == "transport")
        .unwrap_or_else(|| panic!("{wang_id} finds no import batch: {found:?}"));
    let span = unit["source_ref"].as_str().unwrap().to_owned();
    let (prefix, lines) = span.rsplit_once(':').unwrap();
    let (first, last) = lines.split_once('-').unwrap();
    for line in [first, last] {
        let found = search(format!("{prefix}:{line}")).await;
        assert!(
            found.iter().any(|m| m["id"] == unit["id"]),
            "line {line} of {span}: {found:?}"
        );
    }
    let past: u64 = last.parse::<u64>().unwrap() + 1;
    assert!(
        !search(format!("{prefix}:{past}"))
            .await
            .iter()
            .any(|m| m["id"] == unit["id"]),
        "line {past} is not in {span}"
    );
    let rejected_journaled = "SELECT COUNT(*) FROM messages WHERE endpoint = 'legacy_import' AND kind = 'record' AND status = 'rejected'";
    assert_eq!(
        scalar(&store, rejected_journaled).await,
        5,
        "rejected and flagged rows are journaled with their reasons"
    );
    let flagged_reason: String = sqlx::query(
        "SELECT m.reason FROM messages m JOIN message_keys k ON k.message_id = m.id \
         WHERE k.kind = 'source_ref' AND k.value LIKE 'legacy:%:4'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
    .try_get(0)
    .unwrap();
    assert!(
        flagged_reason.contains("flagged for review"),
        "{flagged_reason}"
    );

    // The same file again: nothing new happens, and the report says why.
    let out = site.import(&[
        "--entity",
        "customers",
        &file,
        "--charset",
        "gb18030",
        "--report-dir",
        &site.report_dir("run2"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let md2 = site.report("run2", "report.md");
    assert!(md2.contains("| imported (new) | 3 |"), "{md2}");
    assert!(
        md2.contains("5 of the imported and merged rows were applied by an earlier"),
        "{md2}"
    );
    assert!(md2.contains("| after | 3 |"), "{md2}");
    assert_eq!(
        scalar(&store, rejected_journaled).await,
        5,
        "a rerun journals no rejected row twice"
    );
    store.close().await;
}

#[tokio::test]
async fn vehicles_with_bad_vins_are_rejected_and_the_rest_linked_to_owners() {
    let site = Site::new();
    let dir = site.report_dir("veh");
    let out = site.import(&[
        "--entity",
        "vehicles",
        &fixture("vehicles_dirty.csv"),
        "--report-dir",
        &dir,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let md = site.report("veh", "report.md");
    for needle in [
        "4 = 2 + 1 + 1 + 0: **reconciled**",
        "| `fix.vin_upper` | 1 |",
        "| `fix.date_format` | 1 |",
        "| `merge.same_key_in_file` | 1 |",
        "| `reject.invalid.vin` | 1 |",
        "**go-live check: PASS**",
    ] {
        assert_has(&md, needle);
    }
    let rejected = listed(&site.report("veh", "rejected.csv"));
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0, 3);
    assert!(rejected[0].2.contains("check digit"), "{rejected:?}");
    let store = site.store().await;
    let rows = sqlx::query("SELECT id, data FROM crm_records WHERE entity = 'vehicle' ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let vins: Vec<String> = rows.iter().map(|r| r.try_get(0).unwrap()).collect();
    assert_eq!(vins, ["LHGCV3CK9VA118682", "LHGLVCWJ2RA215148"]);
    let first: serde_json::Value =
        serde_json::from_str(&rows[0].try_get::<String, _>(1).unwrap()).unwrap();
    assert_eq!(
        first["color"], "星月白",
        "the later row of the same VIN wins"
    );
    assert!(first["owner_customer_id"].is_string(), "{first}");
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'customer'"
        )
        .await,
        2,
        "owners created once each"
    );
    store.close().await;
}

fn big_file(dir: &Path, rows: usize) -> String {
    let mut s = String::from("dealer_code,name,mobile,city\n");
    for i in 0..rows {
        s.push_str(&format!("D000{},客户{i},13{:09},广州\n", 1 + i % 3, i));
    }
    let path = dir.join("customers_big.csv");
    std::fs::write(&path, s).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn an_import_killed_mid_file_resumes_without_duplicates() {
    let site = Site::new();
    let rows = 50_000;
    let file = big_file(site.dir.path(), rows);
    let customers = "SELECT COUNT(*) FROM crm_records WHERE entity = 'customer'";
    // Migrated first: the test reads the store while the import runs.
    let migrated = site.command(&["migrate"]).output().unwrap();
    assert!(migrated.status.success(), "{}", text(&migrated));
    let mut child = site
        .command(&[
            "import",
            "--entity",
            "customers",
            &file,
            "--report-dir",
            &site.report_dir("killed"),
        ])
        // Small batches, so the kill lands between commits many batches in.
        .env("SYNCHUB__ENDPOINTS__LEGACY_IMPORT__BATCH", "500")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = site.store().await;
    let t0 = Instant::now();
    loop {
        let n = scalar(&store, customers).await;
        if n >= 2_000 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the import never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed: make the file bigger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let applied = scalar(&store, customers).await;
    assert!(applied < rows as i64, "killed mid-file: {applied}");

    let out = site.import(&[
        "--entity",
        "customers",
        &file,
        "--report-dir",
        &site.report_dir("resumed"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let md = site.report("resumed", "report.md");
    assert!(md.contains(&format!("| imported (new) | {rows} |")), "{md}");
    assert!(
        md.contains(&format!(
            "{applied} of the imported and merged rows were applied by an earlier"
        )),
        "{md}"
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'customer'"
        )
        .await,
        rows as i64,
        "every customer exactly once"
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM change_history WHERE entity = 'customer' AND field = '(created)'"
        )
        .await,
        rows as i64,
        "every customer created once: no row applied twice"
    );
    assert!(
        md.contains(&format!("| applied: delivered | {rows} |")),
        "{md}"
    );
    store.close().await;
}

#[tokio::test]
async fn a_vehicle_of_an_unknown_dealer_waits_in_the_journal_and_fails_the_go_live_check() {
    let site = Site::new();
    let file = site.dir.path().join("vehicles_new_dealer.csv");
    std::fs::write(
        &file,
        "vin,brand,model,dealer_code,owner_name,owner_mobile\n\
         LHGCV3CK9VA118682,Honda,雅阁 Accord,D0001,客户0,13900000000\n\
         LHGLVCWJ2RA215148,Honda,雅阁 Accord,D0099,客户1,13900000001\n",
    )
    .unwrap();
    let out = site.import(&[
        "--entity",
        "vehicles",
        &file.display().to_string(),
        "--report-dir",
        &site.report_dir("veh"),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let md = site.report("veh", "report.md");
    for needle in [
        "| imported (new) | 2 |",
        "| applied: delivered | 1 |",
        "| applied: waiting | 1 |",
        "**go-live check: FAIL**",
    ] {
        assert_has(&md, needle);
    }
    let store = site.store().await;
    // Held as live traffic would be: a journaled record whose delivery retries until D0099
    // arrives, with the reason on its last attempt.
    let row = sqlx::query(
        "SELECT d.status, a.reason FROM messages m JOIN deliveries d ON d.message_id = m.id \
         JOIN attempts a ON a.delivery_id = d.id \
         WHERE m.endpoint = 'legacy_import' AND m.kind = 'record' AND m.entity_id = 'LHGLVCWJ2RA215148'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(row.try_get::<String, _>(0).unwrap(), "pending");
    let reason: String = row.try_get(1).unwrap();
    assert!(reason.contains("dealer D0099 unknown"), "{reason}");
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM crm_records WHERE entity = 'vehicle'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM messages WHERE kind = 'event'").await,
        0,
        "the migration tells no DMS unless notify_dealers is set"
    );
    store.close().await;
}

#[tokio::test]
async fn with_notify_dealers_each_new_customer_is_journaled_for_its_dealers_dms() {
    let site = Site::new();
    let file = big_file(site.dir.path(), 30);
    let out = site
        .command(&[
            "import",
            "--entity",
            "customers",
            &file,
            "--report-dir",
            &site.report_dir("notify"),
        ])
        .env("SYNCHUB__ENDPOINTS__LEGACY_IMPORT__NOTIFY_DEALERS", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let store = site.store().await;
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM messages WHERE kind = 'event' AND record_type = 'customer_event' \
             AND dealer_code IS NOT NULL"
        )
        .await,
        30
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT COUNT(*) FROM deliveries WHERE target = 'dms_amqp_out' AND route = 'crm_customers_to_dms'"
        )
        .await,
        30,
        "one customer.created per customer for its serving dealer's DMS"
    );
    store.close().await;
}

#[tokio::test]
async fn an_import_route_that_maps_or_filters_is_refused_with_its_name() {
    let site = Site::new();
    let route = site.dir.path().join("routes/legacy_customers_to_crm.toml");
    let toml = std::fs::read_to_string(&route).unwrap();
    std::fs::write(
        &route,
        toml.replace(
            "validate = \"dms_customer\"",
            "validate = \"dms_customer\"\nwhen = '.dealer_code == \"D0001\"'",
        ),
    )
    .unwrap();
    let out = site.import(&[
        "--entity",
        "customers",
        &fixture("customers_dirty.gb18030.csv"),
        "--charset",
        "gb18030",
        "--report-dir",
        &site.report_dir("refused"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("route legacy_customers_to_crm must send dms_customer records to one CRM store endpoint without a mapping or `when`"),
        "{}",
        text(&out)
    );
    let store = site.store().await;
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM messages").await,
        0,
        "nothing written"
    );
    store.close().await;
}
