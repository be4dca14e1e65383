//! The atomic writer against a real sshd: a reader watching the directory never sees a partial
//! file under the final name nor a manifest without its complete data file; overwrite refused
//! unless configured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use synchub_adapter_sftp::testkit::SshdFixture;
use synchub_adapter_sftp::{ManifestInfo, SftpError, SftpWriter};

async fn writer(fx: &SshdFixture, overwrite: bool) -> SftpWriter {
    let cfg = fx.outbound_config("in", "x");
    SftpWriter::connect(&cfg.connection(), cfg.dir, overwrite)
        .await
        .expect("connect")
}

/// What a watcher saw while polling the directory as fast as it can.
#[derive(Default, Debug)]
struct Seen {
    polls: usize,
    part_seen: bool,
    partial_final: Vec<u64>,
    manifest_without_data: usize,
}

fn watch(
    dir: std::path::PathBuf,
    data: &str,
    manifest: &str,
    full: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    let (data, manifest) = (data.to_owned(), manifest.to_owned());
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        while !stop.load(Ordering::SeqCst) {
            seen.polls += 1;
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if name.ends_with(".part") {
                    seen.part_seen = true;
                }
                if name == data && len != full {
                    seen.partial_final.push(len);
                }
                if name == manifest {
                    let data_len = std::fs::metadata(dir.join(&data)).map(|m| m.len()).ok();
                    if data_len != Some(full) {
                        seen.manifest_without_data += 1;
                    }
                }
            }
        }
        seen
    })
}

#[tokio::test]
async fn a_watcher_never_sees_a_partial_file_and_the_manifest_comes_last() {
    let fx = SshdFixture::start();
    let w = writer(&fx, false).await;
    let mut data = Vec::with_capacity(24 << 20);
    let mut i = 0u64;
    while data.len() < 24 << 20 {
        data.extend_from_slice(format!("LVGBE40K{i:09},Camry,Owner {i},137{i:08}\n").as_bytes());
        i += 1;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(
        fx.path("in"),
        "vehicles_20261125.csv",
        "vehicles_20261125.manifest.json",
        data.len() as u64,
        stop.clone(),
    );
    let info = ManifestInfo {
        entity: "vehicles".into(),
        rows: i,
        from_cursor: Some("2026-11-24T00:00:00Z".into()),
        to_cursor: Some("2026-11-25T00:00:00Z".into()),
    };
    let (written, manifest) = w
        .put_with_manifest("vehicles_20261125.csv", &data[..], &info)
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();

    assert!(
        seen.part_seen,
        "the watcher must have caught the upload in progress: {seen:?}"
    );
    assert!(
        seen.partial_final.is_empty(),
        "partial file under the final name: {seen:?}"
    );
    assert_eq!(
        seen.manifest_without_data, 0,
        "manifest before its data: {seen:?}"
    );

    let on_disk = std::fs::read(fx.path("in/vehicles_20261125.csv")).unwrap();
    assert_eq!(on_disk, data);
    let sha = hex::encode(Sha256::digest(&data));
    assert_eq!(written.sha256, sha);
    assert_eq!(written.path, fx.remote("in/vehicles_20261125.csv"));
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fx.path("in/vehicles_20261125.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        m,
        serde_json::json!({"entity": "vehicles", "rows": i, "sha256": sha,
            "from_cursor": "2026-11-24T00:00:00Z", "to_cursor": "2026-11-25T00:00:00Z"})
    );
    assert_eq!(
        manifest.path,
        fx.remote("in/vehicles_20261125.manifest.json")
    );
    let left: Vec<String> = std::fs::read_dir(fx.path("in"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn existing_files_are_not_overwritten_unless_configured() {
    let fx = SshdFixture::start();
    let w = writer(&fx, false).await;
    w.put_bytes("a.csv", b"first\n").await.unwrap();
    let e = w.put_bytes("a.csv", b"second\n").await.unwrap_err();
    assert!(
        matches!(&e, SftpError::Exists { path } if path.ends_with("/in/a.csv")),
        "{e}"
    );
    assert_eq!(std::fs::read(fx.path("in/a.csv")).unwrap(), b"first\n");
    assert!(!fx.path("in/a.csv.part").exists());

    // A manifest already there refuses the pair before any data is written.
    std::fs::write(fx.path("in/b.manifest.json"), b"{}").unwrap();
    let info = ManifestInfo {
        entity: "b".into(),
        rows: 1,
        from_cursor: None,
        to_cursor: None,
    };
    assert!(matches!(
        w.put_with_manifest("b.csv", &b"x\n"[..], &info).await,
        Err(SftpError::Exists { .. })
    ));
    assert!(!fx.path("in/b.csv").exists());

    let w = writer(&fx, true).await;
    w.put_bytes("a.csv", b"second\n").await.unwrap();
    assert_eq!(std::fs::read(fx.path("in/a.csv")).unwrap(), b"second\n");
}

#[tokio::test]
async fn a_leftover_part_file_from_a_crash_is_replaced() {
    let fx = SshdFixture::start();
    let w = writer(&fx, false).await;
    std::fs::write(fx.path("in/c.csv.part"), vec![b'x'; 10_000]).unwrap();
    w.put_bytes("c.csv", b"short\n").await.unwrap();
    assert_eq!(std::fs::read(fx.path("in/c.csv")).unwrap(), b"short\n");
    assert!(!fx.path("in/c.csv.part").exists());
}
