//! The inbound poller against a real OpenSSH sshd: readiness (stable time, marker), GB18030,
//! bad rows, a connection cut mid-file, re-uploads and archive collisions, host key refusal,
//! unreadable files, claims held by another instance, key types, and the SDK inbound suite.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use synchub_adapter_sdk::testkit::{self, FakeInbox, InboundHarness, PATIENCE, PartnerView};
use synchub_adapter_sdk::{Principal, Submission};
use synchub_adapter_sftp::testkit::{SshdFixture, TcpProxy};
use synchub_adapter_sftp::{
    Charset, ClaimResult, FileFacts, FileOutcome, FileStatus, Ledger, MemoryLedger, PollReport,
    Poller, SftpConfig, SftpError,
};

const DEALER_HEADER: &str = "dealer_code,dealer_name,region,province,city,address,phone,status";

struct Setup {
    fx: SshdFixture,
    inbox: Arc<FakeInbox>,
    ledger: MemoryLedger,
    poller: Arc<Poller>,
}

fn setup(tweak: impl FnOnce(&mut SftpConfig)) -> Setup {
    let fx = SshdFixture::start();
    let mut cfg = fx.config("outbound/dealers", "DEALER_*.csv");
    cfg.record_type = "osm_dealer".into();
    cfg.principal = Some(Principal {
        system: "osm".into(),
        dealer_code: None,
    });
    tweak(&mut cfg);
    let inbox = Arc::new(FakeInbox::new());
    let ledger = MemoryLedger::new();
    let poller = Arc::new(Poller::new(cfg, inbox.clone(), Arc::new(ledger.clone())));
    Setup {
        fx,
        inbox,
        ledger,
        poller,
    }
}

impl Setup {
    fn write(&self, name: &str, content: &[u8]) {
        std::fs::write(self.fx.path(&format!("outbound/dealers/{name}")), content).unwrap();
    }

    fn append(&self, name: &str, content: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.fx.path(&format!("outbound/dealers/{name}")))
            .unwrap();
        f.write_all(content.as_bytes()).unwrap();
    }

    fn exists(&self, rel: &str) -> bool {
        self.fx.path(&format!("outbound/dealers/{rel}")).exists()
    }

    fn listing(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(self.fx.path(&format!("outbound/dealers/{rel}")))
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
        v.sort();
        v
    }

    async fn poll(&self) -> PollReport {
        tokio::time::timeout(PATIENCE, self.poller.poll_once())
            .await
            .expect("poll did not finish")
            .expect("poll failed")
    }

    fn records(&self) -> Vec<synchub_adapter_sdk::RecordIn> {
        self.inbox
            .submissions()
            .into_iter()
            .flat_map(|s| s.records)
            .collect()
    }
}

fn dealer_rows(n: usize) -> String {
    let mut s = format!("{DEALER_HEADER}\n");
    for i in 0..n {
        s.push_str(&format!(
            "D{i:04},Dealer {i},South,Guangdong,Guangzhou,Road {i},1376000{i:04},active\n"
        ));
    }
    s
}

#[tokio::test]
async fn a_file_written_in_pieces_is_taken_only_once_stable() {
    let s = setup(|c| c.stable_secs = 1);
    s.write("DEALER_20261125.csv", dealer_rows(0).as_bytes());
    s.append(
        "DEALER_20261125.csv",
        "D0001,A,South,Guangdong,Guangzhou,R,1,active\n",
    );
    let r = s.poll().await;
    assert_eq!((r.files_found, r.files_taken), (1, 0));
    assert_eq!(
        r.waiting,
        ["DEALER_20261125.csv"],
        "first sighting is never stable"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Still growing: the size changed since the last sighting, so the clock starts again.
    s.append(
        "DEALER_20261125.csv",
        "D0002,B,South,Guangdong,Guangzhou,R,2,active\n",
    );
    let r = s.poll().await;
    assert_eq!(r.files_taken, 0, "{r:?}");
    s.append(
        "DEALER_20261125.csv",
        "D0003,C,South,Guangdong,Guangzhou,R,3,active\n",
    );
    assert_eq!(s.poll().await.files_taken, 0);
    assert_eq!(
        s.inbox.accept_calls(),
        0,
        "nothing may be read before the file is stable"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = s.poll().await;
    assert_eq!(r.files_taken, 1, "{r:?}");
    assert!(
        matches!(r.files[0].outcome, FileStatus::Archived { .. }),
        "{r:?}"
    );
    let codes: Vec<String> = s
        .records()
        .iter()
        .map(|r| {
            r.body.as_ref().unwrap()["dealer_code"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(codes, ["D0001", "D0002", "D0003"], "the whole file, once");
    assert!(!s.exists("DEALER_20261125.csv") && s.exists("archive/DEALER_20261125.csv"));
}

#[tokio::test]
async fn with_a_marker_configured_only_the_marker_makes_a_file_ready() {
    let s = setup(|c| {
        c.stable_secs = 3600;
        c.require_marker = true;
    });
    s.write("DEALER_20261125.csv", dealer_rows(2).as_bytes());
    for _ in 0..2 {
        let r = s.poll().await;
        assert_eq!(r.waiting, ["DEALER_20261125.csv"], "{r:?}");
    }
    s.write("DEALER_20261125.csv", dealer_rows(3).as_bytes());
    assert_eq!(s.poll().await.files_taken, 0);
    assert_eq!(s.inbox.accept_calls(), 0);

    s.write("DEALER_20261125.csv.ok", b"");
    let r = s.poll().await;
    assert_eq!(r.files_taken, 1, "{r:?}");
    assert_eq!(s.records().len(), 3);
    assert_eq!(s.listing(""), ["archive"], "file and marker both moved out");
    assert_eq!(
        s.listing("archive"),
        ["DEALER_20261125.csv", "DEALER_20261125.csv.ok"]
    );
}

#[tokio::test]
async fn gb18030_dealer_file_arrives_as_utf8_records() {
    let s = setup(|c| c.charset = Charset::Gb18030);
    let text = format!(
        "{DEALER_HEADER}\r\nD0001,广州一汽丰田,华南,广东,广州,\"天河区黄埔大道西100号, 1楼\",020-88886666,active\r\n\
         D0002,深圳宝安店,华南,广东,深圳,,0755-1234567,suspended\r\n"
    );
    let (gb, _, unmappable) = encoding_rs::GB18030.encode(&text);
    assert!(!unmappable);
    assert!(
        std::str::from_utf8(&gb).is_err(),
        "the test file must really be GB18030"
    );
    s.write("DEALER_20261125.csv", &gb);

    let r = s.poll().await;
    assert!(
        matches!(r.files[0].outcome, FileStatus::Archived { .. }),
        "{r:?}"
    );
    let recs = s.records();
    assert_eq!(recs.len(), 2);
    let d1 = recs[0].body.as_ref().unwrap();
    assert_eq!(d1["dealer_name"], "广州一汽丰田");
    assert_eq!(d1["province"], "广东");
    assert_eq!(d1["city"], "广州");
    assert_eq!(d1["address"], "天河区黄埔大道西100号, 1楼");
    let d2 = recs[1].body.as_ref().unwrap();
    assert_eq!(d2["city"], "深圳");
    assert!(
        d2.get("address").is_none(),
        "empty cells are left out: {d2}"
    );
    assert_eq!(recs[0].record_type, "osm_dealer");
    assert_eq!(recs[0].index, 2, "index is the line number");

    let sub: Submission = s.inbox.submissions().remove(0);
    let body = std::str::from_utf8(&sub.envelope.body).expect("batch body is UTF-8");
    assert!(
        body.starts_with(DEALER_HEADER) && body.contains("广州一汽丰田"),
        "{body}"
    );
    assert_eq!(sub.envelope.headers["sftp.charset"], "gb18030");
    assert_eq!(sub.envelope.headers["sftp.file"], "DEALER_20261125.csv");
    assert_eq!(sub.envelope.principal.as_ref().unwrap().system, "osm");
}

#[tokio::test]
async fn bad_rows_are_rejected_by_line_while_the_rest_goes_through() {
    let s = setup(|_| {});
    let mut text = format!("{DEALER_HEADER}\n");
    let bad_lines = [101u64, 502, 1000];
    for line in 2..=1001u64 {
        if bad_lines.contains(&line) {
            text.push_str(&format!("D{line},only,three\n"));
        } else {
            text.push_str(&format!("D{line},N,S,P,C,A,1,active\n"));
        }
    }
    s.write("DEALER_20261125.csv", text.as_bytes());
    let r = s.poll().await;
    let f = &r.files[0];
    assert!(matches!(f.outcome, FileStatus::Archived { .. }), "{r:?}");
    assert_eq!((f.read, f.accepted, f.rejected), (1000, 997, 3));

    let recs = s.records();
    assert_eq!(recs.len(), 1000);
    assert_eq!(recs.iter().filter(|r| r.body.is_ok()).count(), 997);
    let bad: Vec<(usize, String)> = recs
        .iter()
        .filter_map(|r| {
            r.body
                .as_ref()
                .err()
                .map(|e| (r.index, e[0].reason.clone()))
        })
        .collect();
    assert_eq!(bad.len(), 3);
    for ((index, reason), line) in bad.iter().zip(bad_lines) {
        assert_eq!(*index as u64, line);
        assert_eq!(reason, &format!("line {line}: expected 8 fields, found 3"));
    }
    let subs = s.inbox.submissions();
    let lines: Vec<&str> = subs
        .iter()
        .map(|s| s.envelope.headers["sftp.lines"].as_str())
        .collect();
    assert_eq!(lines, ["2-501", "502-1001"], "batches of 500");
    let sha = f.sha256.clone().unwrap();
    assert_eq!(subs[0].envelope.headers["sftp.sha256"], sha);
    assert_eq!(
        recs[0].source_ref.as_deref(),
        Some(format!("DEALER_20261125.csv@{}:2", &sha[..8]).as_str())
    );
    let row = s.ledger.row("test_sftp_in", &sha).unwrap();
    assert!(matches!(row.outcome, Some(FileOutcome::Archived { .. })));
    assert_eq!(row.counts.rejected, 3);
}

#[tokio::test]
async fn a_connection_cut_mid_file_leaves_it_in_place_and_the_next_poll_completes_it() {
    let fx = SshdFixture::start();
    let proxy = TcpProxy::start(fx.port).await;
    let mut cfg = fx.config("in", "VEHICLE_*.csv");
    cfg.port = proxy.port;
    cfg.known_hosts_file = fx.known_hosts_for(proxy.port);
    cfg.timeout_ms = 3000;
    let inbox = Arc::new(FakeInbox::new());
    let ledger = MemoryLedger::new();
    let poller = Poller::new(cfg, inbox.clone(), Arc::new(ledger.clone()));

    let rows = 40_000;
    let mut text = String::from("vin,model,owner_name,owner_mobile\n");
    for i in 0..rows {
        text.push_str(&format!(
            "LVGBE40K{i:09},Camry 2.5 Hybrid,Owner number {i},137{i:08}\n"
        ));
    }
    std::fs::write(fx.path("in/VEHICLE_20261125.csv"), &text).unwrap();
    // The hashing pass reads the whole file; the cut lands about halfway through the reading pass.
    proxy.cut_next_after(text.len() as u64 * 3 / 2);

    let first = poller.poll_once().await.expect("the poll itself succeeds");
    let f = &first.files[0];
    assert_eq!(f.outcome, FileStatus::LeftInPlace, "{first:?}");
    let error = f.error.clone().unwrap_or_default();
    assert!(
        error.contains("read ") && !error.contains("changed while"),
        "the report names the failed read: {first:?}"
    );
    assert!(!first.errors.is_empty(), "{first:?}");
    assert!(
        fx.path("in/VEHICLE_20261125.csv").exists(),
        "never archived half-imported"
    );
    assert!(!fx.path("in/archive/VEHICLE_20261125.csv").exists());
    let committed_first: usize = inbox.submissions().iter().map(|s| s.records.len()).sum();
    assert!(
        committed_first > 0 && committed_first < rows,
        "the cut must fall mid-file ({committed_first} rows committed)"
    );

    let second = poller.poll_once().await.unwrap();
    assert!(
        matches!(second.files[0].outcome, FileStatus::Archived { .. }),
        "{second:?}"
    );
    assert_eq!(
        second.files[0].read, rows as u64,
        "counts continue from the first attempt"
    );

    let refs: Vec<String> = inbox
        .submissions()
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.source_ref.clone().unwrap()))
        .collect();
    let distinct: HashSet<&String> = refs.iter().collect();
    assert_eq!(distinct.len(), rows, "every row by source_ref");
    assert_eq!(
        refs.len(),
        rows,
        "the second poll resumed after the last committed batch (no row sent twice)"
    );
    assert!(!fx.path("in/VEHICLE_20261125.csv").exists());
    assert_eq!(proxy.connections(), 2, "one connection per poll");
}

#[tokio::test]
async fn same_name_new_content_is_processed_and_identical_content_is_not() {
    let s = setup(|_| {});
    let a = dealer_rows(2);
    s.write("DEALER_DAILY.csv", a.as_bytes());
    s.poll().await;
    let b = dealer_rows(3);
    s.write("DEALER_DAILY.csv", b.as_bytes());
    let r = s.poll().await;
    let FileStatus::Archived { to } = &r.files[0].outcome else {
        panic!("{r:?}")
    };
    let suffix = to
        .rsplit_once("DEALER_DAILY.csv.")
        .map(|(_, s)| s)
        .unwrap_or_default();
    assert_eq!(
        suffix.len(),
        14,
        "collision gets a .YYYYMMDDHHMMSS suffix: {to}"
    );
    assert!(suffix.bytes().all(|c| c.is_ascii_digit()), "{to}");
    assert_eq!(
        s.records().len(),
        5,
        "new content under the old name is new"
    );
    let refs: HashSet<String> = s
        .records()
        .iter()
        .map(|r| r.source_ref.clone().unwrap())
        .collect();
    assert_eq!(
        refs.len(),
        5,
        "the sha prefix keeps the two files' rows apart"
    );

    s.write("DEALER_DAILY.csv", a.as_bytes());
    let r = s.poll().await;
    assert!(
        matches!(r.files[0].outcome, FileStatus::AlreadyDone { .. }),
        "{r:?}"
    );
    assert_eq!(
        s.inbox.accept_calls(),
        2,
        "identical content is not read again"
    );
    assert!(
        !s.exists("DEALER_DAILY.csv"),
        "but it leaves the inbox directory"
    );
    assert_eq!(s.listing("archive").len(), 3, "{:?}", s.listing("archive"));
    assert_eq!(
        std::fs::read_to_string(s.fx.path("outbound/dealers/archive/DEALER_DAILY.csv")).unwrap(),
        a
    );
}

#[tokio::test]
async fn unknown_or_changed_host_keys_are_refused_naming_host_and_fingerprint() {
    let s = setup(|_| {});
    s.write("DEALER_20261125.csv", dealer_rows(1).as_bytes());
    let fp = s.fx.host_fingerprint();
    assert!(fp.starts_with("SHA256:"));
    let host_port = format!("[127.0.0.1]:{}", s.fx.port);
    let other_key =
        std::fs::read_to_string(s.fx.add_client_key("ed25519", "").with_extension("pub")).unwrap();
    let other: Vec<&str> = other_key.split_whitespace().take(2).collect();

    let cases = [
        // Changed: the file lists another key for exactly this host:port.
        (format!("{host_port} {}\n", other.join(" ")), "CHANGED"),
        // Unknown: the real key, but for another port.
        (
            std::fs::read_to_string(s.fx.known_hosts_for(s.fx.port + 1)).unwrap(),
            "unknown",
        ),
    ];
    for (known_hosts, word) in cases {
        let kh = s.fx.path("kh_test");
        std::fs::write(&kh, known_hosts).unwrap();
        let mut cfg = s.poller.config().clone();
        cfg.known_hosts_file = kh;
        let ledger = MemoryLedger::new();
        let poller = Poller::new(cfg, s.inbox.clone(), Arc::new(ledger.clone()));
        let e = poller.poll_once().await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&host_port) && msg.contains(&fp) && msg.contains(word),
            "{msg}"
        );
        assert!(e.needs_operator());
        assert_eq!(ledger.claims_taken(), 0);
    }
    assert_eq!(s.inbox.accept_calls(), 0, "nothing read");
    assert!(s.exists("DEALER_20261125.csv"));
}

#[tokio::test]
async fn unreadable_files_go_to_error_with_their_reason_and_are_journaled() {
    let s = setup(|c| c.required_columns = vec!["dealer_code".into(), "status".into()]);
    s.write("DEALER_EMPTY.csv", b"");
    s.write("DEALER_WRONG.csv", b"code,name\nD1,x\n");
    s.write("DEALER_GOOD.csv", dealer_rows(1).as_bytes());
    let r = s.poll().await;
    let outcome = |name: &str| {
        r.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.outcome.clone())
            .unwrap()
    };
    assert!(
        matches!(outcome("DEALER_EMPTY.csv"), FileStatus::Failed { .. }),
        "{r:?}"
    );
    assert!(
        matches!(outcome("DEALER_WRONG.csv"), FileStatus::Failed { .. }),
        "{r:?}"
    );
    assert!(
        matches!(outcome("DEALER_GOOD.csv"), FileStatus::Archived { .. }),
        "{r:?}"
    );
    assert_eq!(
        s.listing("error"),
        [
            "DEALER_EMPTY.csv",
            "DEALER_EMPTY.csv.reason.txt",
            "DEALER_WRONG.csv",
            "DEALER_WRONG.csv.reason.txt"
        ]
    );
    let reason =
        std::fs::read_to_string(s.fx.path("outbound/dealers/error/DEALER_WRONG.csv.reason.txt"))
            .unwrap();
    assert!(
        reason.contains("required columns missing: dealer_code, status"),
        "{reason}"
    );
    let refusals = s.inbox.refusals();
    assert_eq!(refusals.len(), 2, "each refusal is journaled");
    assert!(refusals.iter().all(|f| f.code == "unreadable_file"));
    let wrong = refusals
        .iter()
        .find(|f| f.envelope.headers["sftp.file"] == "DEALER_WRONG.csv")
        .unwrap();
    assert_eq!(&wrong.envelope.body[..], b"code,name\nD1,x\n");
    assert!(wrong.reason.contains("required columns"));
}

#[tokio::test]
async fn a_file_claimed_by_another_instance_is_left_alone() {
    let s = setup(|_| {});
    let content = dealer_rows(1);
    s.write("DEALER_20261125.csv", content.as_bytes());
    let facts = FileFacts {
        endpoint: "test_sftp_in".into(),
        name: "DEALER_20261125.csv".into(),
        size: content.len() as u64,
        mtime: 0,
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content.as_bytes())),
    };
    let other = s.ledger.instance("hub-2");
    assert!(matches!(
        other.claim(&facts).await.unwrap(),
        ClaimResult::Take { .. }
    ));
    let r = s.poll().await;
    assert_eq!(r.files[0].outcome, FileStatus::Busy, "{r:?}");
    assert_eq!(r.files_taken, 0);
    assert_eq!(s.inbox.accept_calls(), 0);
    assert!(s.exists("DEALER_20261125.csv"));
}

#[tokio::test]
async fn rsa_and_passphrase_protected_keys_log_in() {
    let s = setup(|_| {});
    s.write("DEALER_20261125.csv", dealer_rows(1).as_bytes());
    let rsa = s.fx.add_client_key("rsa", "");
    let locked = s.fx.add_client_key("ed25519", "correct horse");

    let mut cfg = s.poller.config().clone();
    cfg.private_key_file = locked.clone();
    let e = Poller::new(cfg.clone(), s.inbox.clone(), Arc::new(MemoryLedger::new()))
        .poll_once()
        .await
        .unwrap_err();
    assert!(matches!(e, SftpError::Setup { .. }), "{e}");
    assert!(e.to_string().contains("no passphrase"), "{e}");

    cfg.passphrase = Some("correct horse".into());
    let r = Poller::new(cfg.clone(), s.inbox.clone(), Arc::new(MemoryLedger::new()))
        .poll_once()
        .await
        .unwrap();
    assert_eq!(r.files_taken, 1, "{r:?}");

    s.write("DEALER_20261126.csv", dealer_rows(2).as_bytes());
    cfg.private_key_file = rsa;
    cfg.passphrase = None;
    let r = Poller::new(cfg, s.inbox.clone(), Arc::new(MemoryLedger::new()))
        .poll_once()
        .await
        .unwrap();
    assert_eq!(r.files_taken, 1, "{r:?}");
    assert_eq!(s.records().len(), 3);
}

#[tokio::test]
async fn sshd_down_fails_the_poll_quickly_and_leaves_everything() {
    let mut s = setup(|c| c.timeout_ms = 1000);
    s.write("DEALER_20261125.csv", dealer_rows(1).as_bytes());
    s.poller.healthcheck().await.unwrap();
    s.fx.stop();
    assert!(matches!(
        s.poller.healthcheck().await,
        Err(synchub_adapter_sdk::AdapterError::NotConnected(_))
    ));
    let started = std::time::Instant::now();
    let e = s.poller.poll_once().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{}", s.fx.port))
            || e.to_string().contains("connect"),
        "{e}"
    );
    s.fx.restart();
    assert_eq!(s.poll().await.files_taken, 1);
}

// ------------------------------------------------------------------------------------------
// SDK inbound conformance: "acked" = archived, "try again" = left in place for the next poll.
// ------------------------------------------------------------------------------------------

struct PollHarness {
    s: Setup,
    n: usize,
}

struct Sent {
    name: String,
    task: Option<tokio::task::JoinHandle<Result<PollReport, SftpError>>>,
}

impl PollHarness {
    fn new() -> PollHarness {
        PollHarness {
            s: setup(|_| {}),
            n: 0,
        }
    }

    fn spawn(&self, name: &str) -> Sent {
        let poller = self.s.poller.clone();
        Sent {
            name: name.to_owned(),
            task: Some(tokio::spawn(async move { poller.poll_once().await })),
        }
    }

    fn view(&self, name: &str) -> PartnerView {
        let dir = self.s.fx.path("outbound/dealers");
        if dir.join("archive").join(name).exists() && !dir.join(name).exists() {
            PartnerView::Acked
        } else if dir.join(name).exists() {
            PartnerView::TryAgain
        } else {
            PartnerView::Refused(format!("{name} vanished: {:?}", self.s.listing("error")))
        }
    }
}

#[async_trait]
impl InboundHarness for PollHarness {
    type Sent = Sent;

    fn inbox(&self) -> &FakeInbox {
        &self.s.inbox
    }

    async fn send(&mut self, records: usize) -> Sent {
        self.n += 1;
        let name = format!("DEALER_CONF{}.csv", self.n);
        self.s.write(&name, dealer_rows(records).as_bytes());
        self.spawn(&name)
    }

    async fn peek(&mut self, sent: &mut Sent) -> PartnerView {
        match &sent.task {
            Some(t) if !t.is_finished() => {
                // Still polling: whatever state the file is in, the partner must not see it acked.
                match self.view(&sent.name) {
                    PartnerView::Acked => PartnerView::Acked,
                    _ => PartnerView::NoAnswerYet,
                }
            }
            _ => self.view(&sent.name),
        }
    }

    async fn outcome(&mut self, sent: &mut Sent) -> PartnerView {
        if let Some(t) = sent.task.take() {
            tokio::time::timeout(PATIENCE, t)
                .await
                .expect("poll did not finish")
                .unwrap()
                .expect("poll failed");
        }
        self.view(&sent.name)
    }

    async fn redeliver(&mut self, sent: &Sent) -> Sent {
        // The file stayed in place: the next poll takes it again by itself.
        self.spawn(&sent.name)
    }

    fn settle(&self) -> Duration {
        Duration::from_millis(300)
    }
}

#[tokio::test]
async fn conformance_acks_only_after_commit() {
    testkit::acks_only_after_commit(&mut PollHarness::new()).await;
}

#[tokio::test]
async fn conformance_redelivers_when_accept_fails() {
    let mut h = PollHarness::new();
    testkit::redelivers_when_accept_fails(&mut h).await;
    // The retried file was journaled once and archived once.
    assert_eq!(h.s.inbox.submissions().len(), 1);
    assert_eq!(h.s.listing("archive"), ["DEALER_CONF1.csv"]);
}
