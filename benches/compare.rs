//! Side-by-side benchmark (issue 10 part 4): the same flow — REST POST of a dealer customer →
//! durable SQLite store → RabbitMQ publish with confirms to `dealer.<code>.customer` — run by the
//! release `synchub` binary and by Node-RED, both as child processes driven by this one load
//! generator on loopback. Prints throughput, p50/p99, peak RSS and CPU per message for both, the
//! SIGKILL result for both (acknowledged to the client but never published), and the ratio.
//!
//! Started by `bench/compare/run`, which installs Node-RED, builds the binary and passes the
//! paths in `BENCH_*` variables; `-- --smoke` runs a few seconds per phase.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

const DEALER: &str = "D0001";
const API_KEY: &str = "demo-dms-D0001";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the benchmark with bench/compare/run")
        }),
    )
}

/// A port nobody listens on now; the child binds it a moment later (loopback only).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name; USER_HZ is
    // 100 on every Linux ABI.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set (VmHWM) in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Synchub,
    NodeRed,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Synchub => "synchub",
            System::NodeRed => "Node-RED",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            System::Synchub => "S",
            System::NodeRed => "N",
        }
    }
}

/// Everything needed to start (and restart, on the same store) one system under test.
struct Target {
    system: System,
    work: PathBuf,
    port: u16,
    prefix: String,
    amqp_url: String,
}

impl Target {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ready_url(&self) -> String {
        match self.system {
            System::Synchub => format!("{}/health/ready", self.base()),
            System::NodeRed => format!("{}/bench/ready", self.base()),
        }
    }

    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("process.log"))
            .expect("log file");
        let mut cmd = match self.system {
            System::Synchub => {
                let mut c = Command::new(env_path("BENCH_SYNCHUB_BIN"));
                c.arg("--config")
                    .arg(env_path("BENCH_SYNCHUB_CONFIG"))
                    .arg("run")
                    .env(
                        "SYNCHUB__STORE__URL",
                        format!("sqlite://{}/synchub.db", self.work.display()),
                    )
                    .env("SYNCHUB__HTTP__LISTEN", format!("127.0.0.1:{}", self.port))
                    .env("SYNCHUB__ENDPOINTS__DMS_AMQP_OUT__URL", &self.amqp_url)
                    .env(
                        "SYNCHUB__ENDPOINTS__DMS_AMQP_OUT__NAME_PREFIX",
                        &self.prefix,
                    )
                    .env(
                        "SYNCHUB__ENDPOINTS__DMS_AMQP_OUT__QUEUE_EXPIRES_MS",
                        "120000",
                    );
                c
            }
            System::NodeRed => {
                let nr = env_path("BENCH_NODERED_DIR");
                let mut c = Command::new("node");
                c.arg(nr.join("node_modules/node-red/red.js"))
                    .arg("--userDir")
                    .arg(self.work.join("userdir"))
                    .arg("--settings")
                    .arg(self.work.join("userdir/settings.js"))
                    .env("BENCH_PORT", self.port.to_string())
                    .env("BENCH_AMQP_URL", &self.amqp_url)
                    .env("BENCH_EXCHANGE", format!("{}synchub.dealer", self.prefix))
                    .env("BENCH_SQLITE", self.work.join("nodered.db"))
                    .env("BENCH_API_KEY", API_KEY)
                    .env("BENCH_DEALER", DEALER)
                    .env("NODE_PATH", nr.join("node_modules"));
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.system.name()))
    }

    /// A fresh store: a new work directory (Node-RED also gets its userDir and flow).
    fn prepare(&self) {
        let _ = std::fs::remove_dir_all(&self.work);
        std::fs::create_dir_all(&self.work).expect("work dir");
        if self.system == System::NodeRed {
            let flow = env_path("BENCH_NODERED_FLOW_DIR");
            let user = self.work.join("userdir");
            std::fs::create_dir_all(&user).expect("userDir");
            for f in ["flows.json", "settings.js"] {
                std::fs::copy(flow.join(f), user.join(f)).expect("copy the Node-RED flow");
            }
            // settings.js requires amqplib; Node resolves it from the install's node_modules.
            let link = user.join("node_modules");
            let _ = std::os::unix::fs::symlink(
                env_path("BENCH_NODERED_DIR").join("node_modules"),
                link,
            );
        }
    }

    async fn wait_ready(&self, child: &mut Child) {
        let client = reqwest::Client::new();
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} exited during startup ({status}); see {}",
                    self.system.name(),
                    self.work.join("process.log").display()
                );
            }
            if let Ok(r) = client.get(self.ready_url()).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{} not ready after 60 s; see {}",
                self.system.name(),
                self.work.join("process.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn start(&self) -> Proc {
        let mut child = Proc(self.spawn());
        self.wait_ready(&mut child.0).await;
        child
    }
}

/// A system under test; killed when dropped, so a failing phase leaves no hub or Node-RED
/// behind holding its port and broker connection.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Graceful stop (SIGTERM), SIGKILL (by the drop) after 20 s.
fn stop(mut child: Proc) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One customer record, written as text: the generator shares the two cores with the system
/// under test, so it must cost as little as a partner's pre-serialised request.
fn body(id: &str, n: usize) -> String {
    format!(
        r#"[{{"source_ref":"{id}","dealer_code":"{DEALER}","name":"王小明","mobile":"139{:08}","id_no":"440104199007152511","gender":"M","birth_date":"1990-07-15","province":"广东","city":"广州","address":"天河区体育西路101号","email":"wxm@example.com","updated_at":"2026-11-25T09:30:00+08:00"}}]"#,
        n % 100_000_000
    )
}

/// What the closed loop saw: acknowledged ids and their latencies, and the failures.
#[derive(Default)]
struct LoadResult {
    acked: Vec<String>,
    latencies_ms: Vec<f64>,
    failed: usize,
    secs: f64,
}

/// `clients` closed-loop clients post one record per request until `secs` pass. Only a 2xx
/// whose body names the record as accepted counts as acknowledged.
async fn closed_loop(base: &str, phase: &str, clients: usize, secs: f64) -> LoadResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let seq = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/api/v1/dms/customers");
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, seq, url, phase) =
                (client.clone(), seq.clone(), url.clone(), phase.to_string());
            tokio::spawn(async move {
                let mut out = LoadResult::default();
                while Instant::now() < deadline {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let id = format!("{phase}-{n}");
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("X-Api-Key", API_KEY)
                        .header("Content-Type", "application/json")
                        .body(body(&id, n))
                        .send()
                        .await;
                    let ok = match r {
                        Ok(r) if r.status().is_success() => {
                            let text = r.text().await.unwrap_or_default();
                            text.contains(&format!("\"source_ref\":\"{id}\""))
                                && text.contains("\"rejected\":[]")
                        }
                        Ok(r) => {
                            let _ = r.bytes().await;
                            false
                        }
                        Err(_) => {
                            // The process is down (SIGKILL phase): do not spin on refusals.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            false
                        }
                    };
                    if ok {
                        out.latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                        out.acked.push(id);
                    } else {
                        out.failed += 1;
                    }
                }
                out
            })
        })
        .collect();
    let mut all = LoadResult::default();
    for t in tasks {
        let r = t.await.unwrap();
        all.acked.extend(r.acked);
        all.latencies_ms.extend(r.latencies_ms);
        all.failed += r.failed;
    }
    all.secs = start.elapsed().as_secs_f64();
    all.latencies_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Ids seen on the test queue, with how often each arrived.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

/// The id a published body carries: both systems publish the record, and its `source_ref` is
/// the bench's id. Searching the bytes keeps the drain cheap whatever the body's shape.
fn id_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let after = &text[text.find("\"source_ref\"")? + "\"source_ref\"".len()..];
    let value = after
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(value[..value.find('"')?].to_string())
}

/// Waits until every acknowledged id was published, or `timeout` passes; returns the seconds
/// waited and the ids still missing.
async fn wait_published(seen: &Seen, acked: &[String], timeout: Duration) -> (f64, Vec<String>) {
    let t = Instant::now();
    loop {
        let missing: Vec<String> = {
            let s = seen.lock().unwrap();
            acked
                .iter()
                .filter(|id| !s.contains_key(*id))
                .cloned()
                .collect()
        };
        if missing.is_empty() || t.elapsed() >= timeout {
            return (t.elapsed().as_secs_f64(), missing);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Throughput {
    acked: usize,
    failed: usize,
    ack_rate: f64,
    e2e_rate: f64,
    p50: f64,
    p99: f64,
    rss_mib: f64,
    cpu_ms_per_msg: f64,
    lag_secs: f64,
    missing: usize,
}

async fn throughput(t: &Target, seen: &Seen, clients: usize, secs: f64) -> Throughput {
    t.prepare();
    let child = t.start().await;
    let pid = child.0.id();
    // Warm-up: connections, JIT (Node-RED), SQLite pages; not counted.
    let warm = closed_loop(
        &t.base(),
        &format!("{}W", t.system.tag()),
        clients,
        secs.min(3.0),
    )
    .await;
    let _ = wait_published(seen, &warm.acked, Duration::from_secs(60)).await;
    let cpu0 = cpu_secs(pid);
    let r = closed_loop(&t.base(), &format!("{}T", t.system.tag()), clients, secs).await;
    let (lag, missing) = wait_published(seen, &r.acked, Duration::from_secs(120)).await;
    let cpu = cpu_secs(pid) - cpu0;
    let rss = peak_rss_mib(pid);
    stop(child);
    let n = r.acked.len();
    Throughput {
        acked: n,
        failed: r.failed,
        ack_rate: n as f64 / r.secs,
        e2e_rate: n as f64 / (r.secs + lag),
        p50: percentile(&r.latencies_ms, 0.50),
        p99: percentile(&r.latencies_ms, 0.99),
        rss_mib: rss,
        cpu_ms_per_msg: cpu * 1000.0 / n.max(1) as f64,
        lag_secs: lag,
        missing: missing.len(),
    }
}

struct KillResult {
    acked: usize,
    failed: usize,
    lost: usize,
    duplicates: usize,
    down_secs: f64,
    drain_secs: f64,
}

/// Load for `secs`, SIGKILL at `kill_at`, restart on the same store at once, keep loading,
/// then let the restarted process drain and count what was acknowledged but never published.
async fn sigkill(t: &Target, seen: &Seen, clients: usize, secs: f64, kill_at: f64) -> KillResult {
    t.prepare();
    let child = t.start().await;
    let phase = format!("{}K", t.system.tag());
    let base = t.base();
    let load = tokio::spawn({
        let phase = phase.clone();
        async move { closed_loop(&base, &phase, clients, secs).await }
    });
    tokio::time::sleep(Duration::from_secs_f64(kill_at)).await;
    let mut child = child;
    let _ = child.0.kill(); // SIGKILL
    let _ = child.0.wait();
    let down = Instant::now();
    let child = t.start().await;
    let down_secs = down.elapsed().as_secs_f64();
    let r = load.await.unwrap();
    // The restarted hub re-claims what the killed one held once its lease (dispatch.lease_secs in
    // the bench config) runs out.
    let (drain_secs, missing) = wait_published(seen, &r.acked, Duration::from_secs(90)).await;
    stop(child);
    let duplicates = {
        let s = seen.lock().unwrap();
        s.iter()
            .filter(|(id, n)| id.starts_with(&format!("{phase}-")) && **n > 1)
            .count()
    };
    KillResult {
        acked: r.acked.len(),
        failed: r.failed,
        lost: missing.len(),
        duplicates,
        down_secs,
        drain_secs,
    }
}

/// The test queue the harness drains, standing in for the dealer's DMS queue, and the
/// exchange both systems publish to.
struct Broker {
    conn: Connection,
    ch: Channel,
    prefix: String,
    queue: String,
}

impl Broker {
    async fn setup(url: &str, prefix: &str) -> Broker {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {url} is required: {e}"));
        let ch = conn.create_channel().await.expect("channel");
        let exchange = format!("{prefix}synchub.dealer");
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the dealer exchange");
        let queue = format!("{prefix}dms.{DEALER}.customer");
        let mut args = FieldTable::default();
        // Quorum, as the hub declares its own queues; gone 2 minutes after the harness, even
        // if it dies before its clean-up.
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare the test queue");
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            format!("dealer.{DEALER}.customer").as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the test queue");
        Broker {
            conn,
            ch,
            prefix: prefix.to_string(),
            queue,
        }
    }

    /// Counts every id arriving on the test queue until the connection closes.
    async fn drain(&self, seen: Seen) -> tokio::task::JoinHandle<()> {
        let mut consumer = self
            .ch
            .basic_consume(
                self.queue.as_str().into(),
                "bench-compare".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the test queue");
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                if let Some(id) = id_of(&d.data) {
                    *seen.lock().unwrap().entry(id).or_default() += 1;
                }
            }
        })
    }

    /// Deletes the test queue and what the hub declared under the bench's prefix. Each on a
    /// channel of its own: deleting something already gone (an expired queue) closes the
    /// channel, and must not leave the rest behind.
    async fn cleanup(self) {
        let dlq = format!("{}synchub.dead-letter", self.prefix);
        for q in [self.queue.as_str(), dlq.as_str()] {
            if let Ok(ch) = self.conn.create_channel().await {
                let _ = ch
                    .queue_delete(q.into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        for x in ["synchub.dealer", "synchub.inbound", "synchub.dead-letter"] {
            let name = format!("{}{x}", self.prefix);
            if let Ok(ch) = self.conn.create_channel().await {
                let _ = ch
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = self.ch.close(200, "bench done".into()).await;
        let _ = self.conn.close(200, "bench done".into()).await;
    }
}

fn fmt_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let clients: usize = env_or("BENCH_CLIENTS", "32")
        .parse()
        .expect("BENCH_CLIENTS");
    let secs: f64 = env_or("BENCH_SECS", if smoke { "3" } else { "20" })
        .parse()
        .expect("BENCH_SECS");
    let kill_secs: f64 = env_or("BENCH_KILL_SECS", if smoke { "4" } else { "12" })
        .parse()
        .expect("BENCH_KILL_SECS");
    let amqp_url = env_or("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let work = env_path("BENCH_WORK");
    let prefix = format!(
        "benchcmp{}.",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );

    let broker = Broker::setup(&amqp_url, &prefix).await;
    let seen: Seen = Arc::default();
    let drainer = broker.drain(seen.clone()).await;

    // BENCH_ONLY=synchub|nodered runs one side (profiling); the ratio needs both.
    let only = env_or("BENCH_ONLY", "");
    let targets: Vec<Target> = [System::Synchub, System::NodeRed]
        .into_iter()
        .filter(|s| only.is_empty() || s.name().to_lowercase().replace('-', "") == only)
        .map(|system| Target {
            system,
            work: work.join(system.tag()),
            port: free_port(),
            prefix: prefix.clone(),
            amqp_url: amqp_url.clone(),
        })
        .collect();

    println!(
        "bench/compare: {clients} closed-loop clients, {secs:.0} s per system, 1 customer record per request, quorum test queue (prefix {prefix})"
    );
    // The phases run in a task of their own so that a failing one still lets the broker be
    // cleaned up before the panic is passed on.
    let phases = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut results = Vec::new();
            for t in &targets {
                eprintln!("[compare] {}: throughput phase", t.system.name());
                let thr = throughput(t, &seen, clients, secs).await;
                eprintln!("[compare] {}: SIGKILL phase", t.system.name());
                let kill = sigkill(t, &seen, clients, kill_secs, kill_secs / 3.0).await;
                results.push((t.system, thr, kill));
            }
            results
        }
    })
    .await;
    drainer.abort();
    broker.cleanup().await;
    let results = phases.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    println!();
    println!(
        "| system | acked msgs | ack rate (msg/s) | end-to-end rate (msg/s) | p50 ms | p99 ms | peak RSS MiB | CPU ms/msg | publish lag after load (s) | acked not published |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, r, _) in &results {
        println!(
            "| {} | {} | {:.0} | {:.0} | {} | {} | {:.0} | {:.3} | {:.2} | {} |",
            s.name(),
            r.acked,
            r.ack_rate,
            r.e2e_rate,
            fmt_ms(r.p50),
            fmt_ms(r.p99),
            r.rss_mib,
            r.cpu_ms_per_msg,
            r.lag_secs,
            r.missing
        );
        if r.failed > 0 {
            println!(
                "  ({} requests of {} failed or were refused)",
                r.failed,
                s.name()
            );
        }
    }
    println!();
    println!(
        "| SIGKILL mid-run | acked | refused while down | down (s) | drain after load (s) | acked but never published | published twice |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (s, _, k) in &results {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {} | {} |",
            s.name(),
            k.acked,
            k.failed,
            k.down_secs,
            k.drain_secs,
            k.lost,
            k.duplicates
        );
    }
    if let [(_, sh, shk), (_, nr, nrk)] = &results[..] {
        println!();
        println!(
            "ratio synchub / Node-RED: ack rate {:.2}x, end-to-end rate {:.2}x (target >= 10x); p99 {} ms vs {} ms (target lower); acknowledged-but-lost {} vs {} (target 0)",
            sh.ack_rate / nr.ack_rate,
            sh.e2e_rate / nr.e2e_rate,
            fmt_ms(sh.p99),
            fmt_ms(nr.p99),
            shk.lost,
            nrk.lost
        );
    }
}
