//! Test kit (feature `testkit`): a real OpenSSH `sshd` on a free loopback port with its own host
//! key, client keys and sftp root ([`SshdFixture`], CRATES §6.1), and a TCP proxy that can drop
//! or cut connections ([`TcpProxy`]) for fault tests. Used by this crate's tests and the hub's.
//!
//! A missing sshd fails loudly: tests must never skip silently.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{ConnectionSettings, SftpConfig, SftpOutboundConfig};

/// Where Debian's openssh-server puts the daemon; sshd must run by absolute path (it re-execs).
pub const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd serving SFTP on `127.0.0.1:<port>`. Stopped (with every session) on drop.
pub struct SshdFixture {
    dir: tempfile::TempDir,
    /// The listening port.
    pub port: u16,
    /// Login user (`root`: the fixture runs where tests run, as root).
    pub user: String,
    /// Client ed25519 private key, listed in the fixture's `authorized_keys`.
    pub client_key: PathBuf,
    /// known_hosts holding the fixture's host key for `[127.0.0.1]:<port>`.
    pub known_hosts: PathBuf,
    child: Option<Child>,
}

fn keygen(args: &[&str]) {
    let out = Command::new("ssh-keygen")
        .args(args)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Processes with a TCP socket whose local port is `port` (IPv4 or IPv6), found through
/// /proc/net/tcp* inodes and /proc/<pid>/fd links.
fn pids_with_local_port(port: u16) -> Vec<u32> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && let Some(inode) = f.get(9)
                && *inode != "0"
            {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| inodes.contains(l.to_string_lossy().as_ref()))
        }) {
            pids.push(pid);
        }
    }
    pids
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl SshdFixture {
    /// Generates keys and config in a temp dir and starts sshd; returns once the port accepts.
    pub fn start() -> SshdFixture {
        assert!(
            Path::new(SSHD).exists(),
            "openssh-server is not installed (apt-get install -y openssh-server)"
        );
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd")
            .unwrap_or_else(|e| panic!("cannot create /run/sshd (run tests as root): {e}"));
        let dir = tempfile::Builder::new()
            .prefix("synchub-sshd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("root")).expect("root dir");
        let host_key = d.join("host_ed25519");
        let client_key = d.join("client_ed25519");
        keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            &host_key.to_string_lossy(),
        ]);
        keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            &client_key.to_string_lossy(),
        ]);
        std::fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let mut fx = SshdFixture {
            port: free_port(),
            user: "root".to_owned(),
            client_key,
            known_hosts: d.join("known_hosts"),
            child: None,
            dir,
        };
        let kh = fx.known_hosts_for(fx.port);
        std::fs::rename(kh, &fx.known_hosts).expect("known_hosts");
        fx.spawn();
        fx
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nAllowUsers root\n\
                 MaxStartups 100\nMaxSessions 100\nSubsystem sftp internal-sftp\n",
                port = self.port,
                d = d.display()
            ),
        )
        .expect("sshd_config");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(d.join("sshd.log"))
            .expect("sshd.log");
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                // Own process group: stopping the fixture also ends every session sshd forked,
                // which is what a crashed server looks like to a client mid-download.
                .process_group(0)
                .spawn()
                .expect("spawn sshd")
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sshd exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not accept on port {} within 10 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The sftp root: a directory in the temp dir. With internal-sftp and no chroot, remote
    /// paths are local absolute paths, so [`SshdFixture::remote`] and this agree.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Local path of `rel` inside the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Remote (absolute) path of `rel` inside the root.
    pub fn remote(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    /// A known_hosts file with this server's host key listed for `[127.0.0.1]:<port>`, e.g. for
    /// a [`TcpProxy`] in front of the server.
    pub fn known_hosts_for(&self, port: u16) -> PathBuf {
        let host_pub =
            std::fs::read_to_string(self.dir.path().join("host_ed25519.pub")).expect("host key");
        let key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let path = self.dir.path().join(format!("known_hosts_{port}"));
        std::fs::write(&path, format!("[127.0.0.1]:{port} {}\n", key.join(" ")))
            .expect("known_hosts");
        path
    }

    /// SHA256 fingerprint of the host key, as `SHA256:...`.
    pub fn host_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.path().join("host_ed25519.pub"))
            .output()
            .expect("ssh-keygen -l");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    /// Generates another client key (`rsa` / `ed25519`, optionally with a passphrase) and
    /// authorises it; returns its private key path.
    pub fn add_client_key(&self, kind: &str, passphrase: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("client_{kind}_{}", passphrase.len()));
        let mut args = vec!["-q", "-t", kind, "-N", passphrase];
        if kind == "rsa" {
            args.extend(["-b", "2048"]);
        }
        let p = path.to_string_lossy().into_owned();
        args.extend(["-f", &p]);
        keygen(&args);
        let public = std::fs::read_to_string(format!("{p}.pub")).expect("public key");
        let mut auth = std::fs::read_to_string(self.dir.path().join("authorized_keys"))
            .expect("authorized_keys");
        auth.push_str(&public);
        std::fs::write(self.dir.path().join("authorized_keys"), auth).expect("authorized_keys");
        path
    }

    /// An inbound config polling `dir_rel` (created) for `pattern`: stable_secs 0, 5 s timeout.
    pub fn config(&self, dir_rel: &str, pattern: &str) -> SftpConfig {
        std::fs::create_dir_all(self.path(dir_rel)).expect("dir");
        let mut conn = ConnectionSettings::new(
            "127.0.0.1",
            self.port,
            self.user.clone(),
            self.client_key.clone(),
            self.known_hosts.clone(),
        );
        conn.timeout = Duration::from_secs(5);
        SftpConfig::new("test_sftp_in", conn, self.remote(dir_rel), pattern)
    }

    /// An outbound config writing into `dir_rel` (created).
    pub fn outbound_config(&self, dir_rel: &str, prefix: &str) -> SftpOutboundConfig {
        std::fs::create_dir_all(self.path(dir_rel)).expect("dir");
        SftpOutboundConfig {
            endpoint_id: "test_sftp_out".to_owned(),
            host: "127.0.0.1".to_owned(),
            port: self.port,
            user: self.user.clone(),
            private_key_file: self.client_key.clone(),
            passphrase: None,
            known_hosts_file: self.known_hosts.clone(),
            dir: self.remote(dir_rel),
            prefix: prefix.to_owned(),
            overwrite: false,
            manifest: false,
            timeout_ms: 5_000,
        }
    }

    /// Stops sshd and every session it forked (a server crash, as clients see it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        // Each session's sshd calls setsid(), so the group kill above misses it: find the
        // processes holding a TCP socket on our port and kill those too.
        for pid in pids_with_local_port(self.port) {
            if pid != std::process::id() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }

    /// Starts sshd again on the same port, keys and root.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for SshdFixture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a [`TcpProxy`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Forward,
    /// Accept, then close at once (a server that is unreachable or crashing).
    Drop,
}

/// A loopback TCP proxy in front of a server, counting connections, that can drop new ones and
/// cut established ones after a number of server→client bytes.
pub struct TcpProxy {
    /// The port clients connect to.
    pub port: u16,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    mode: std::sync::Mutex<ProxyMode>,
    connections: AtomicUsize,
    /// Server→client bytes after which the *next* forwarded connection is cut (0 = never).
    cut_next_after: AtomicU64,
}

impl TcpProxy {
    /// Starts a proxy to `127.0.0.1:<target_port>`, in `Forward` mode.
    pub async fn start(target_port: u16) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ProxyState {
            mode: std::sync::Mutex::new(ProxyMode::Forward),
            connections: AtomicUsize::new(0),
            cut_next_after: AtomicU64::new(0),
        });
        let st = state.clone();
        let target: SocketAddr = ([127, 0, 0, 1], target_port).into();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                st.connections.fetch_add(1, Ordering::SeqCst);
                let mode = *st.mode.lock().unwrap_or_else(|p| p.into_inner());
                if mode == ProxyMode::Drop {
                    drop(client);
                    continue;
                }
                let cut = st.cut_next_after.swap(0, Ordering::SeqCst);
                tokio::spawn(forward(client, target, cut));
            }
        });
        TcpProxy { port, state, task }
    }

    /// Changes what happens to new connections.
    pub fn set_mode(&self, mode: ProxyMode) {
        *self.state.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// The next forwarded connection is cut after `bytes` server→client bytes.
    pub fn cut_next_after(&self, bytes: u64) {
        self.state.cut_next_after.store(bytes, Ordering::SeqCst);
    }

    /// Connections accepted so far (dropped ones included).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: tokio::net::TcpStream, target: SocketAddr, cut_after: u64) {
    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = if cut_after > 0 {
                let left = cut_after.saturating_sub(sent);
                if left == 0 {
                    break;
                }
                n.min(usize::try_from(left).unwrap_or(n))
            } else {
                n
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n as u64;
        }
    };
    // Whichever direction ends first ends the connection: a cut drops both halves.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}
