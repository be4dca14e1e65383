//! A partner REST endpoint that misbehaves in every way a real one does: it hangs past the
//! timeout, resets the connection, answers 500, and throttles with 429 + `Retry-After`. Every
//! lead still arrives, each under one Idempotency-Key (so the partner applies it once), and no
//! retry comes before the partner's `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fixture::{self, Hub, Tree};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Hang,
    Reset,
    Error500,
    Throttle,
    Ok,
}

/// What the partner saw of one Idempotency-Key: arrivals with what it answered.
#[derive(Default, Debug)]
struct Seen {
    source_ref: String,
    arrivals: Vec<(Instant, Act)>,
}

type Ledger = Arc<Mutex<HashMap<String, Seen>>>;

/// The faults a lead meets before it gets through, chosen by its number so every kind occurs.
fn script(n: usize) -> [Act; 2] {
    const F: [Act; 4] = [Act::Hang, Act::Reset, Act::Error500, Act::Throttle];
    [F[n % 4], F[(n / 4) % 4]]
}

async fn read_request(s: &mut TcpStream) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((headers, buf[head_end..head_end + len].to_vec()))
}

async fn serve(listener: TcpListener, ledger: Ledger) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let Some((headers, body)) = read_request(&mut s).await else {
                return;
            };
            // The hub's reachability probe carries no lead: answer it and move on.
            let Some(key) = headers.get("idempotency-key").cloned() else {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            };
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let sr = body["source_ref"].as_str().unwrap_or_default().to_owned();
            let n: usize = sr
                .rsplit('-')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            let act = {
                let mut l = ledger.lock().unwrap();
                let seen = l.entry(key).or_default();
                seen.source_ref = sr;
                let act = script(n)
                    .get(seen.arrivals.len())
                    .copied()
                    .unwrap_or(Act::Ok);
                seen.arrivals.push((Instant::now(), act));
                act
            };
            let answer = |status: &str, extra: &str| {
                format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            };
            match act {
                Act::Hang => {
                    // Longer than the hub's timeout: the hub gives up first.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Act::Reset => {
                    // Zero linger turns the close into a RST, which is the fault wanted here;
                    // with zero there is nothing to block on at drop.
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                    drop(s);
                }
                Act::Error500 => {
                    let _ = s
                        .write_all(answer("500 Internal Server Error", "").as_bytes())
                        .await;
                }
                Act::Throttle => {
                    let _ = s
                        .write_all(answer("429 Too Many Requests", "Retry-After: 2\r\n").as_bytes())
                        .await;
                }
                Act::Ok => {
                    let _ = s.write_all(answer("201 Created", "").as_bytes()).await;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_partner_gets_every_lead_once() {
    let _serial = fixture::serial().await;
    const LEADS: usize = 160;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let partner = format!("http://{}", listener.local_addr().unwrap());
    let ledger: Ledger = Arc::default();
    tokio::spawn(serve(listener, ledger.clone()));

    let tree = Tree::shipped();
    tree.write(
        "config/endpoints/partner_out.toml",
        &format!(
            "type = \"rest\"\ndirection = \"out\"\nurl = \"{partner}/leads\"\ntimeout_ms = 1000\n"
        ),
    );
    tree.write(
        "routes/leads_to_partner.toml",
        "from = \"partners_rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\n\
         mapping = \"rest_lead_to_crm\"\nmapping_version = 1\nto = [\"partner_out\"]\n\
         lane_key = \"mobile\"\n[retry]\nmax_attempts = 10\nbackoff_ms = 100\nmax_backoff_ms = 400\n",
    );
    let mut env = vec![("SYNCHUB__STORE__URL".to_owned(), tree.sqlite_url())];
    env.extend(fixture::amqp_env(&fixture::amqp_prefix(), None));
    let mut hub = Hub::new("hub", &tree.path().join("config"), &env);
    hub.start();
    hub.wait_ready(120).await;
    let v = fixture::post_until_accepted(
        &hub.client,
        &hub.base,
        "/api/v1/leads",
        "demo-website",
        &fixture::leads("PARTNER", 0, LEADS),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(v["accepted"].as_array().map(Vec::len), Some(LEADS), "{v}");

    let pool = fixture::any_pool(&tree.sqlite_url()).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE target = 'partner_out' \
             AND status IN ('pending', 'in_flight')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} partner deliveries still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries WHERE target = 'partner_out' AND status = 'delivered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(delivered as usize, LEADS, "every lead delivered in the end");

    let ledger = ledger.lock().unwrap();
    // One key per lead: the partner can apply each lead exactly once.
    let mut keys_per_ref: HashMap<&str, usize> = HashMap::new();
    for seen in ledger.values() {
        *keys_per_ref.entry(seen.source_ref.as_str()).or_default() += 1;
        let oks = seen.arrivals.iter().filter(|(_, a)| *a == Act::Ok).count();
        assert_eq!(oks, 1, "{}: answered OK {oks} times", seen.source_ref);
        // Each fault was met in turn and retried, the throttle no sooner than Retry-After.
        for w in seen.arrivals.windows(2) {
            if w[0].1 == Act::Throttle {
                let gap = w[1].0 - w[0].0;
                assert!(
                    gap >= Duration::from_millis(1900),
                    "{} retried {gap:?} after a 429 asking for 2 s",
                    seen.source_ref
                );
            }
        }
        assert_eq!(
            seen.arrivals.len(),
            3,
            "{}: {:?}",
            seen.source_ref,
            seen.arrivals.iter().map(|a| a.1).collect::<Vec<_>>()
        );
    }
    assert_eq!(keys_per_ref.len(), LEADS, "every lead reached the partner");
    assert!(
        keys_per_ref.values().all(|&n| n == 1),
        "a lead was sent under two idempotency keys"
    );
    assert!(hub.is_running());
}
