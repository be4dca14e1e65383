//! The real hub started in-process for the benchmarks: the configuration under `root/config`
//! (a copy of the shipped one), an SQLite store under `root/data`, served on a free loopback port
//! until `shutdown`.

use std::path::Path;

use synchub::app::Application;
use synchub::settings::{Profile, Settings};
use synchub::store::Store;

pub(crate) struct BenchHub {
    pub(crate) base: String,
    pub(crate) store: Store,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The store URL and listen address every benchmark hub uses, then `extra`, then the bench
/// process's own `SYNCHUB__*` variables (later wins), so a setting can be tried without an edit:
/// `SYNCHUB__ENDPOINTS__OSM_VEHICLES_SFTP_IN__BATCH_SIZE=2000 cargo bench --bench sftp`.
pub(crate) fn hub_env(root: &Path, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "SYNCHUB__STORE__URL".to_string(),
            format!("sqlite://{}/data/hub.db", root.display()),
        ),
        (
            "SYNCHUB__HTTP__LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
    ];
    env.extend(extra.iter().cloned());
    env.extend(std::env::vars().filter(|(k, _)| k.starts_with("SYNCHUB__")));
    env
}

impl BenchHub {
    /// Starts the hub on `root` with the overrides `extra` (see [`hub_env`]).
    pub(crate) async fn start(root: &Path, extra: &[(String, String)]) -> BenchHub {
        let env = hub_env(root, extra);
        let settings =
            Settings::load(&root.join("config"), Profile::Local, &env).expect("settings");
        let app = Application::build(settings).await.expect("app");
        let base = format!("http://{}", app.local_addr());
        let store = app.store().clone();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        BenchHub {
            base,
            store,
            stop,
            server,
        }
    }

    /// Stops serving and waits until the hub has shut down (store closed).
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}
