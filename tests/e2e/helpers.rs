//! Test fixtures shared by the end-to-end tests: a private store per test (a temp SQLite file or
//! a fresh PostgreSQL database on the running server), a temp copy of the shipped configuration
//! that tests can extend, and `TestHub`, the real application served on port 0.

use std::path::PathBuf;

use serde_json::Value;

#[path = "../support/amqp.rs"]
mod amqp;
#[path = "../support/lines.rs"]
mod lines;
#[path = "../support/sftp.rs"]
mod sftp_support;
#[path = "../support/tree.rs"]
mod tree;
// The corpus tests include this file and use only part of it.
#[allow(unused_imports)]
pub(crate) use lines::lines_found;
#[allow(unused_imports)]
pub(crate) use sftp_support::{POLLED_ON_REQUEST, sftp_endpoint_env};
use synchub::app::Application;
use synchub::settings::{Profile, Settings};
use synchub::store::Store;

pub const ADMIN: &str = "demo-admin";
pub const IT_D0001: &str = "demo-it-D0001";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The PostgreSQL server the machine runs; tests fail loudly if it is missing.
pub fn pg_admin_url() -> String {
    std::env::var("SYNCHUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh PostgreSQL database, dropped when the guard goes.
pub struct PgDb {
    pub url: String,
    name: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        use sqlx::Connection;
        let name = format!("synchub_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&pg_admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is required on {} for this test and is not reachable: {e}",
                    pg_admin_url()
                )
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = pg_admin_url();
        let url = format!(
            "{}/{name}",
            &base[..base.rfind('/').expect("url has a database")]
        );
        PgDb { url, name }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside the test's runtime: use a short-lived one of our own.
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

/// Pass as an env key (any value) to `spawn_with` to start without the catch-all DMS queue.
pub const NO_DMS_QUEUES: &str = "TEST_NO_DMS_QUEUES";

/// A fresh name prefix for a hub's AMQP topology, unless the test fixed one.
pub fn amqp_prefix() -> String {
    format!("t{}.", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// The RabbitMQ the machine runs; tests fail loudly if it is missing.
pub fn amqp_url() -> String {
    std::env::var("SYNCHUB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A client connection to the broker, as a DMS has.
pub async fn amqp_client() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is required on {} for this test and is not reachable: {e}",
                amqp_url()
            )
        });
    let ch = conn.create_channel().await.expect("AMQP channel");
    (conn, ch)
}

/// A DMS queue `<prefix><name>` bound to the hub's dealer exchange with `key`.
pub async fn dms_queue(ch: &lapin::Channel, prefix: &str, name: &str, key: &str) -> String {
    amqp::dms_queue(ch, prefix, name, key, false).await
}

/// Which store a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A temp copy of config/, routes/ and mappings/ that a test may add files to.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
}

impl TestConfig {
    pub fn shipped() -> TestConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        tree::copy_shipped_config(&repo(), dir.path());
        TestConfig { dir }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Adds the REST outbound endpoint `partner_out` posting to `<uri>/leads`.
    pub fn with_partner(self, uri: &str) -> TestConfig {
        self.write(
            "config/endpoints/partner_out.toml",
            &format!(
                "type = \"rest\"\ndirection = \"out\"\nurl = \"{uri}/leads\"\ntimeout_ms = 2000\n"
            ),
        );
        self
    }

    /// Writes `rel` (e.g. `routes/x.toml`) under the temp tree.
    pub fn write(&self, rel: &str, content: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
}

/// The real hub, served on an ephemeral port, with its dispatcher running unless asked not to.
pub struct TestHub {
    pub base: String,
    pub store_url: String,
    pub client: reqwest::Client,
    pub store: Store,
    /// The hub's own inbox, for handing it submissions as an adapter would.
    pub pipeline: std::sync::Arc<synchub::pipeline::Pipeline>,
    /// Prefix of this hub's AMQP exchange and queue names.
    pub amqp_prefix: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The `spawn_with` overrides, for `restart`.
    env: Vec<(String, String)>,
    _pg: Option<PgDb>,
    /// Keeps the temp tree (config, SQLite file) alive for the hub's lifetime.
    _config: TestConfig,
}

impl TestHub {
    pub async fn spawn(backend: Backend) -> TestHub {
        TestHub::spawn_with(backend, TestConfig::shipped(), &[]).await
    }

    /// `env` adds overrides (`SYNCHUB__...`) on top of the private store and port 0.
    pub async fn spawn_with(backend: Backend, config: TestConfig, env: &[(&str, &str)]) -> TestHub {
        let (store_url, pg) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}/data/hub.db", config.dir.path().display()),
                None,
            ),
            Backend::Postgres => {
                let db = PgDb::create().await;
                (db.url.clone(), Some(db))
            }
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TestHub::start(store_url, pg, config, env).await
    }

    /// Stops this hub and starts a new one on the same store, configuration and overrides: a
    /// restart (the new hub has a new port in `base`).
    pub async fn restart(mut self) -> TestHub {
        self.shutdown().await;
        let (pg, config) = (self._pg.take(), self._config);
        TestHub::start(self.store_url, pg, config, self.env).await
    }

    /// A second instance on this hub's store with `config` (e.g. `TestConfig::shipped()`), as
    /// a scale-out deployment runs it; it has its own port and AMQP names.
    pub async fn spawn_beside(&self, config: TestConfig) -> TestHub {
        TestHub::start(self.store_url.clone(), None, config, self.env.clone()).await
    }

    async fn start(
        store_url: String,
        pg: Option<PgDb>,
        config: TestConfig,
        env: Vec<(String, String)>,
    ) -> TestHub {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        if std::env::var("TEST_LOG").is_ok() {
            synchub::telemetry::init_logging(synchub::settings::LogFormat::Text, "info");
        }
        let mut vars: Vec<(String, String)> = vec![
            ("SYNCHUB__STORE__URL".into(), store_url.clone()),
            ("SYNCHUB__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
            ("SYNCHUB__DISPATCH__IDLE_POLL_MS".into(), "50".into()),
        ];
        // Each hub gets its own exchanges and queues on the shared broker, so parallel tests
        // never consume each other's messages; the broker drops the queues when they idle.
        let prefix = amqp_prefix();
        vars.extend(amqp::amqp_env(&prefix, None));
        vars.extend(env.iter().cloned());
        // Every dealer's DMS is "online" unless the test says otherwise: customer change events
        // then deliver instead of retrying as unroutable.
        if !env.iter().any(|(k, _)| *k == NO_DMS_QUEUES) {
            let (_conn, ch) = amqp_client().await;
            dms_queue(&ch, &prefix, "dms.all", "dealer.#").await;
        }
        vars.retain(|(k, _)| k != NO_DMS_QUEUES);
        let settings = Settings::load(&config.config_dir(), Profile::Local, &vars)
            .unwrap_or_else(|p| panic!("test settings rejected: {p:#?}"));
        let app = Application::build(settings)
            .await
            .expect("application builds");
        let base = format!("http://{}", app.local_addr());
        let store = app.store().clone();
        let pipeline = app.pipeline();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = rx.await;
            })
            .await
            .expect("hub runs");
        });
        TestHub {
            base,
            store_url,
            client: reqwest::Client::new(),
            store,
            pipeline,
            amqp_prefix: prefix,
            stop: Some(tx),
            task: Some(task),
            env,
            _pg: pg,
            _config: config,
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self._config.config_dir()
    }

    pub async fn post_records(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("X-Api-Key", key)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends `method path` as operator `token`: the status and the JSON answer (Null if none).
    async fn call(&self, method: reqwest::Method, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, token).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .put(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until no delivery is due or in flight (the running dispatcher does the work),
    /// failing the test after `secs`.
    pub async fn settle(&self, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            // Deliveries held behind a parked head of their lane wait for an operator, not for time.
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM deliveries d WHERE d.status IN ('pending','in_flight') AND d.next_attempt_at <= $1 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.target = d.target AND p.lane = d.lane \
                 AND p.id < d.id AND p.status = 'parked')",
            )
                .bind(synchub::store::now_ms() + 60_000)
                .fetch_one(self.store.pool())
                .await
                .expect("count");
            if n == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} deliveries still open after {secs}s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        remove_topology(&self.amqp_prefix).await;
    }
}

/// Deletes what a stopped hub and `dms_queue` declared under `prefix` on the shared broker:
/// queues would expire on their own, exchanges never do. Best effort: a broker that went away
/// leaves nothing to clean.
async fn remove_topology(prefix: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in [
            "dms.all",
            "synchub.dms.lead-results",
            "synchub.dms.campaign-results",
            "synchub.dead-letter",
        ] {
            let _ = ch
                .queue_delete(
                    format!("{prefix}{q}").as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        for x in ["synchub.dealer", "synchub.inbound", "synchub.dead-letter"] {
            let _ = ch
                .exchange_delete(
                    format!("{prefix}{x}").as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
    }
    let _ = conn.close(200, "test topology removed".into()).await;
}

/// A sample file from the shared spec, parsed.
pub fn sample(rel: &str) -> Value {
    let p = repo().join("tests/fixtures/samples").join(rel);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("sample {}: {e}", p.display()));
    serde_json::from_str(&text).expect("sample is JSON")
}

/// The value of the first `/metrics` line starting with `name` (labels included), 0 if none.
pub async fn metric(hub: &TestHub, name: &str) -> f64 {
    let text = hub
        .client
        .get(format!("{}/metrics", hub.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
