//! What the fault scenarios are made of: the real `synchub` binary as a child process that can
//! be SIGKILLed and restarted on the same store, a private RabbitMQ node and a private
//! PostgreSQL cluster (CRATES.md §6.2–6.3: the shared services are never crashed), and the
//! counting helpers the zero-loss, zero-duplicate assertions read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../support/amqp.rs"]
mod amqp;
pub(crate) use amqp::amqp_env;
#[path = "../support/lines.rs"]
mod lines;
#[path = "../support/sftp.rs"]
mod sftp_support;
#[path = "../support/tree.rs"]
mod tree;
pub(crate) use lines::lines_found;
pub(crate) use sftp_support::{POLLED_ON_REQUEST, sftp_endpoint_env};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// `SYNCHUB_SOAK=1` turns the scenarios into their long form (≥ 100,000 messages).
pub fn soak() -> bool {
    std::env::var("SYNCHUB_SOAK").is_ok_and(|v| v == "1")
}

/// A temp tree holding a copy of the shipped config/, routes/ and mappings/ plus the hub's data.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn shipped() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        tree::copy_shipped_config(&repo(), dir.path());
        Tree { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }

    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}/data/hub.db", self.path().display())
    }
}

/// One hub process. Dropping it kills the process.
pub struct Hub {
    pub name: String,
    pub base: String,
    pub port: u16,
    config: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    pub client: reqwest::Client,
}

impl Hub {
    /// A hub on `config` (a config folder) with `env` overrides; not started yet.
    pub fn new(name: &str, config: &Path, env: &[(String, String)]) -> Hub {
        let port = free_port();
        let log = config
            .parent()
            .expect("config has a parent")
            .join(format!("{name}.log"));
        Hub {
            name: name.to_owned(),
            base: format!("http://127.0.0.1:{port}"),
            port,
            config: config.to_owned(),
            env: env.to_vec(),
            child: None,
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("hub log file");
        let child = Command::new(env!("CARGO_BIN_EXE_synchub"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("SYNCHUB__HTTP__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("SYNCHUB__DISPATCH__IDLE_POLL_MS", "50")
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start synchub");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown hook, no flush, like a power cut of the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the hub");
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// The tail of the hub's stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Whether the hub's stderr so far contains `text`.
    pub fn log_contains(&self, text: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(text))
    }

    /// The status of `/health/ready`, or `None` when nothing answers.
    pub async fn readiness(&self) -> Option<u16> {
        self.client
            .get(format!("{}/health/ready", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub async fn wait_ready(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.readiness().await == Some(200) {
                return;
            }
            assert!(
                self.is_running(),
                "hub {} exited before it was ready:\n{}",
                self.name,
                self.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "hub {} not ready after {secs}s:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET with the demo admin token.
    pub async fn admin_get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth("demo-admin")
            .send()
            .await
            .expect("ops request")
            .json()
            .await
            .expect("ops answer is JSON")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A private RabbitMQ node on ports and data of its own (CRATES.md §6.2).
pub struct Rabbit {
    pub dir: tempfile::TempDir,
    pub port: u16,
    dist: u16,
    node: String,
    /// The `rabbitmq-server` scripts started, reaped after each kill.
    started: std::sync::Mutex<Vec<Child>>,
}

impl Rabbit {
    pub async fn start() -> Rabbit {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("mnesia")).unwrap();
        std::fs::create_dir_all(d.join("log")).unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(d.join("env.conf"), "").unwrap();
        let port = free_port();
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        let r = Rabbit {
            dir,
            port,
            dist: free_port(),
            node: format!("synchubfault{}@localhost", free_port()),
            started: std::sync::Mutex::default(),
        };
        r.up().await;
        r
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node on its data and waits until it answers AMQP.
    pub async fn up(&self) {
        let d = self.dir.path();
        assert!(
            Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
            "RabbitMQ (rabbitmq-server) is required for the broker fault tests"
        );
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("stdout.log"))
            .unwrap();
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", d.join("env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start a private RabbitMQ node");
        self.started.lock().expect("not poisoned").push(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ node did not come up: {}",
                std::fs::read_to_string(d.join("stdout.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("rabbit.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL of the broker: persistent messages in durable queues must survive it.
    pub fn kill9(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_file(self.dir.path().join("rabbit.pid"));
        for mut c in self.started.lock().expect("not poisoned").drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A private PostgreSQL cluster (CRATES.md §6.3), crashed with `pg_ctl -m immediate stop`.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries are required under /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("tempdir");
        run_ok(Command::new("chown").args(["postgres"]).arg(dir.path()));
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-A", "trust", "-U", "postgres"])
                .stdout(Stdio::null()),
        );
        let pg = Postgres {
            dir,
            port: free_port(),
            bin,
        };
        pg.up();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn up(&self) {
        let d = self.dir.path();
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(d.join("data"))
                .arg("-l")
                .arg(d.join("log"))
                .args(["-w", "-o"])
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1",
                    self.port,
                    d.display()
                ))
                .arg("start")
                .stdout(Stdio::null()),
        );
    }

    /// No checkpoint, no goodbye to clients: recovery comes from the WAL.
    pub fn crash(&self) {
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null()),
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` lead records as the website posts them, `source_ref` = `<tag>-<i>`.
pub fn leads(tag: &str, from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                serde_json::json!({
                    "source_ref": format!("{tag}-{i}"),
                    "name": "测试",
                    "mobile": format!("139{:08}", i % 100_000_000),
                    "city": "广州",
                })
            })
            .collect(),
    )
}

/// Posts `body` until it gets an answer other than a refusal to commit (503 / no answer), as a
/// partner that resends does; returns the 202 body. Any other status fails the test.
pub async fn post_until_accepted(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    body: &Value,
    give_up: Duration,
) -> Value {
    let refused = std::sync::atomic::AtomicUsize::new(0);
    post_until_accepted_counting(client, base, path, key, body, give_up, &refused).await
}

/// A fresh name prefix for a hub's AMQP exchanges and queues.
pub fn amqp_prefix() -> String {
    format!("f{}.", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// As [`post_until_accepted`], counting the refusals (503 or no answer) in `refused`.
pub async fn post_until_accepted_counting(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    body: &Value,
    give_up: Duration,
    refused: &std::sync::atomic::AtomicUsize,
) -> Value {
    let deadline = Instant::now() + give_up;
    loop {
        match client
            .post(format!("{base}{path}"))
            .header("X-Api-Key", key)
            .json(body)
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => return r.json().await.expect("202 body is JSON"),
            Ok(r) if r.status() == 503 => {}
            Ok(r) => {
                let s = r.status();
                panic!("unexpected {s}: {}", r.text().await.unwrap_or_default())
            }
            Err(_) => {}
        }
        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(Instant::now() < deadline, "no 202 for a resent batch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds `source_ref -> id` of every accepted record of a 202 answer; a resend that got another
/// id than the first answer would be a duplicate in the making.
pub async fn record_accepted(
    answer: &Value,
    accepted: &tokio::sync::Mutex<std::collections::HashMap<String, String>>,
) {
    let rejected = answer["rejected"].as_array().map_or(0, Vec::len);
    assert_eq!(rejected, 0, "good records were rejected: {answer}");
    let mut acc = accepted.lock().await;
    for a in answer["accepted"].as_array().expect("accepted list") {
        let sr = a["source_ref"].as_str().expect("source_ref").to_owned();
        let id = a["id"].as_str().expect("id").to_owned();
        if let Some(prev) = acc.insert(sr.clone(), id.clone()) {
            assert_eq!(prev, id, "a resent record got a different id: {sr}");
        }
    }
}

pub async fn any_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Waits until no delivery to the CRM store is pending or in flight.
pub async fn wait_crm_drained(pool: &sqlx::AnyPool, give_up: Duration) {
    let deadline = Instant::now() + give_up;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE target = 'crm_store' \
             AND status IN ('pending', 'in_flight')",
        )
        .fetch_one(pool)
        .await
        .expect("count open deliveries");
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} CRM deliveries still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lead ids in the CRM store by the source_ref they came with.
pub async fn leads_by_ref(pool: &sqlx::AnyPool) -> std::collections::HashMap<String, Vec<String>> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT id, data FROM crm_records WHERE entity = 'lead'")
        .fetch_all(pool)
        .await
        .expect("read leads");
    let mut by_ref: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in &rows {
        let id: String = r.get(0);
        let data: Value = serde_json::from_str(&r.get::<String, _>(1)).expect("lead data is JSON");
        by_ref
            .entry(data["source_ref"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(id);
    }
    by_ref
}

/// Every acknowledged record is in the store exactly once, under the id it was acknowledged
/// with.
pub fn assert_exactly_once(
    accepted: &std::collections::HashMap<String, String>,
    stored: &std::collections::HashMap<String, Vec<String>>,
) {
    let mut missing = Vec::new();
    let mut doubled = Vec::new();
    for (sr, id) in accepted {
        match stored.get(sr) {
            None => missing.push(sr.clone()),
            Some(ids) if ids != &vec![id.clone()] => doubled.push(format!("{sr}: {ids:?}")),
            Some(_) => {}
        }
    }
    missing.sort();
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "{} acknowledged records missing (first: {:?}), {} stored other than once (first: {:?})",
        missing.len(),
        missing.first(),
        doubled.len(),
        doubled.first()
    );
}

/// A fresh database on the machine's PostgreSQL server, dropped at the end (scenarios that do
/// not crash the database share the server, like every other test).
pub struct PgDb {
    pub url: String,
    name: String,
}

fn pg_admin_url() -> String {
    std::env::var("SYNCHUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl PgDb {
    pub async fn create() -> PgDb {
        use sqlx::Connection;
        let name = format!("synchub_fault_{}", uuid::Uuid::now_v7().simple());
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required on {admin}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let url = format!("{}/{name}", &admin[..admin.rfind('/').expect("a database")]);
        PgDb { url, name }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// Results per confirmed batch of [`publish_results`].
const RESULT_BATCH: usize = 50;

/// A DMS publishing lead results with confirms; a batch not confirmed (the broker died) is
/// published again once the broker is back, as a careful DMS does.
pub async fn publish_results(
    url: String,
    prefix: String,
    total: usize,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pace: Duration,
) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    use std::sync::atomic::Ordering;
    let exchange = format!("{prefix}synchub.inbound");
    let mut i = 0;
    let mut ch: Option<(Connection, lapin::Channel)> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while i < total {
        assert!(Instant::now() < deadline, "results could not be published");
        if ch.is_none() {
            match Connection::connect(&url, ConnectionProperties::default()).await {
                Ok(c) => {
                    if let Ok(channel) = c.create_channel().await {
                        channel
                            .confirm_select(ConfirmSelectOptions::default())
                            .await
                            .expect("confirm mode");
                        ch = Some((c, channel));
                    }
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some((_, channel)) = ch.as_ref() else {
            continue;
        };
        let n = RESULT_BATCH.min(total - i);
        let mut confirms = Vec::with_capacity(n);
        let mut failed = false;
        for k in i..i + n {
            let body = serde_json::json!({
                "source_ref": format!("FLT-R-{k}"),
                "lead_id": format!("L-FAULT-{k}"),
                "dealer_code": "D0001",
                "status": "contacted",
                "occurred_at": "2026-11-25T15:20:00+08:00",
            });
            match channel
                .basic_publish(
                    exchange.as_str().into(),
                    "dms.lead-result".into(),
                    // Mandatory: a result no queue is bound for comes back instead of vanishing
                    // behind a positive confirm, and is published again.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &serde_json::to_vec(&body).unwrap(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(format!("FLT-R-{k}").into())
                        .with_content_type("application/json".into())
                        .with_headers({
                            let mut h = FieldTable::default();
                            h.insert("dealer_code".into(), AMQPValue::LongString("D0001".into()));
                            h
                        }),
                )
                .await
            {
                Ok(c) => confirms.push(c),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        for c in confirms {
            match c.await {
                Ok(lapin::Confirmation::Ack(None)) => {}
                _ => failed = true,
            }
        }
        if failed {
            ch = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        i += n;
        done.store(i, Ordering::SeqCst);
        // Paced, so the crash lands while results are still flowing.
        tokio::time::sleep(pace).await;
    }
}

/// One scenario at a time: each loads both cores on its own, and two at once would measure the
/// machine rather than the hub (timeouts, not faults).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A test route: customers a DMS posts also go to that dealer's DMS queue (REST in → journal →
/// publish with confirms), the flow the broker and scale-out scenarios load.
pub const CUSTOMERS_TO_DMS_ROUTE: &str = "from = \"partners_rest_in\"\nrecord_type = \"dms_customer\"\n\
    validate = \"dms_customer\"\nto = [\"dms_amqp_out\"]\nlane_key = \"mobile\"\n\
    headers = { kind = \"customer\" }\n\
    [retry]\nmax_attempts = 1000\nbackoff_ms = 200\nmax_backoff_ms = 2000\n";

/// `n` customers of D0001 as its DMS posts them, `source_ref` = `<tag>-<i>`, mobiles
/// `<mobile_prefix><i:08>` (a prefix per batch of people keeps CRM counts exact).
pub fn dms_customers(tag: &str, mobile_prefix: u32, from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| {
                serde_json::json!({
                    "source_ref": format!("{tag}-{i}"),
                    "dealer_code": "D0001",
                    "name": "王小明",
                    "mobile": format!("{mobile_prefix}{i:08}"),
                })
            })
            .collect(),
    )
}

/// The machine's RabbitMQ (the scenarios that do not crash the broker share it).
pub fn shared_amqp_url() -> String {
    std::env::var("SYNCHUB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// D0001's DMS queue `<prefix>dms.D0001`, bound to the hub's dealer exchange: durable, so it
/// survives a broker crash.
pub async fn dms_queue(ch: &lapin::Channel, prefix: &str) -> String {
    amqp::dms_queue(ch, prefix, "dms.D0001", "dealer.D0001.#", true).await
}

/// Empties the DMS queue into `into` (message ids per source_ref); returns the copies taken.
pub async fn drain_dms(
    ch: &lapin::Channel,
    q: &str,
    into: &mut std::collections::HashMap<String, std::collections::HashSet<String>>,
) -> usize {
    use lapin::options::BasicGetOptions;
    let mut copies = 0;
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        copies += 1;
        let body: Value = serde_json::from_slice(&m.delivery.data).expect("JSON body");
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .expect("message_id set");
        into.entry(body["source_ref"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .insert(id);
    }
    copies
}
