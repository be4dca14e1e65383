//! Configuration of the SFTP adapter: one polled inbound directory ([`SftpConfig`]) and one
//! outbound target directory ([`SftpOutboundConfig`]). Doc comments on the fields are the user reference.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use synchub_adapter_sdk::Principal;

/// Default time allowed for one SFTP operation (connect, list, one read, rename, ...).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default number of CSV rows per journaled submission.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Default marker suffix: `DEALER_20261125.csv.ok` says `DEALER_20261125.csv` is complete.
pub const DEFAULT_MARKER_SUFFIX: &str = ".ok";
/// Default poll schedule (INTERFACES §4: every 5 minutes).
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";
/// Default SSH port.
pub const DEFAULT_PORT: u16 = 22;

/// Character set of the polled files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Charset {
    /// UTF-8; a leading byte-order mark is dropped.
    #[default]
    #[serde(rename = "utf-8", alias = "utf8", alias = "UTF-8")]
    Utf8,
    /// GB18030 (a superset of GBK and GB2312), as the OSM dealer file uses.
    #[serde(rename = "gb18030", alias = "GB18030", alias = "gbk", alias = "GBK")]
    Gb18030,
}

impl Charset {
    /// The name written into the `sftp.charset` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Charset::Utf8 => "utf-8",
            Charset::Gb18030 => "gb18030",
        }
    }
}

/// Where and how to reach one SFTP server: shared by inbound and outbound endpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub private_key_file: PathBuf,
    pub passphrase: Option<String>,
    pub known_hosts_file: PathBuf,
    pub timeout: Duration,
}

impl ConnectionSettings {
    /// Settings with no passphrase and the default timeout.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        private_key_file: impl Into<PathBuf>,
        known_hosts_file: impl Into<PathBuf>,
    ) -> ConnectionSettings {
        ConnectionSettings {
            host: host.into(),
            port,
            user: user.into(),
            private_key_file: private_key_file.into(),
            passphrase: None,
            known_hosts_file: known_hosts_file.into(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        }
    }
}

impl std::fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("private_key_file", &self.private_key_file)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("known_hosts_file", &self.known_hosts_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One polled inbound directory (`osm_dealers_sftp_in`, `osm_vehicles_sftp_in`, ...).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    /// The endpoint id written on every envelope and ledger row.
    pub endpoint_id: String,
    /// SFTP server host name or address.
    pub host: String,
    /// SFTP server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Login user.
    pub user: String,
    /// OpenSSH private key (ed25519 or RSA) used to log in.
    pub private_key_file: PathBuf,
    /// Passphrase of the private key, when it has one. The runtime resolves it from a secret;
    /// it is never printed (`Debug` redacts it).
    #[serde(default)]
    pub passphrase: Option<String>,
    /// OpenSSH `known_hosts` file holding the server's host key (`[host]:port key-type base64`,
    /// or plain `host` for port 22). An unknown or changed key refuses the connection.
    pub known_hosts_file: PathBuf,
    /// Absolute remote directory to poll. `archive/` and `error/` are created below it.
    pub dir: String,
    /// File name glob (`*` and `?`), e.g. `DEALER_*.csv`.
    pub pattern: String,
    /// When to poll: 5-field cron expression (UTC). The runtime's scheduler reads it; a manual
    /// "poll now" ignores it.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// A file without marker is taken once its size and mtime were unchanged for this long,
    /// across polls. `0` takes files on first sight (only for servers that write atomically).
    #[serde(default)]
    pub stable_secs: u64,
    /// Suffix of the marker that says a file is complete (`<name>.ok`). A file with a marker is
    /// taken at once; the marker is moved to `archive/` with it.
    #[serde(default = "default_marker_suffix")]
    pub marker_suffix: String,
    /// Take files only when their marker exists (never by stability alone).
    #[serde(default)]
    pub require_marker: bool,
    /// Time allowed for each operation (connect, list, each read, rename); exceeded = error,
    /// the file stays in place for the next poll.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Character set of the files: `utf-8` (default) or `gb18030`.
    #[serde(default)]
    pub charset: Charset,
    /// CSV field delimiter (one ASCII character).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Rows per journaled submission: a restart resumes after the last committed batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `RecordIn::record_type` of every row (`osm_dealer`, `osm_vehicle`, `campaign_result`):
    /// routes match on it.
    pub record_type: String,
    /// Header columns a file must have; a file missing one goes to `error/` as unreadable.
    #[serde(default)]
    pub required_columns: Vec<String>,
    /// The partner the files come from. Its scope is the de-duplication scope of `source_ref`.
    #[serde(default)]
    pub principal: Option<Principal>,
}

impl std::fmt::Debug for SftpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpConfig")
            .field("endpoint_id", &self.endpoint_id)
            .field("connection", &self.connection())
            .field("dir", &self.dir)
            .field("pattern", &self.pattern)
            .field("schedule", &self.schedule)
            .field("stable_secs", &self.stable_secs)
            .field("marker_suffix", &self.marker_suffix)
            .field("require_marker", &self.require_marker)
            .field("charset", &self.charset)
            .field("delimiter", &self.delimiter)
            .field("batch_size", &self.batch_size)
            .field("record_type", &self.record_type)
            .field("required_columns", &self.required_columns)
            .field("principal", &self.principal)
            .finish()
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_schedule() -> String {
    DEFAULT_SCHEDULE.to_owned()
}
fn default_marker_suffix() -> String {
    DEFAULT_MARKER_SUFFIX.to_owned()
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_delimiter() -> char {
    ','
}

impl SftpConfig {
    /// A config with every other field at its default.
    pub fn new(
        endpoint_id: impl Into<String>,
        connection: ConnectionSettings,
        dir: impl Into<String>,
        pattern: impl Into<String>,
    ) -> SftpConfig {
        SftpConfig {
            endpoint_id: endpoint_id.into(),
            host: connection.host,
            port: connection.port,
            user: connection.user,
            private_key_file: connection.private_key_file,
            passphrase: connection.passphrase,
            known_hosts_file: connection.known_hosts_file,
            dir: dir.into(),
            pattern: pattern.into(),
            schedule: default_schedule(),
            stable_secs: 0,
            marker_suffix: default_marker_suffix(),
            require_marker: false,
            timeout_ms: u64::try_from(connection.timeout.as_millis()).unwrap_or(u64::MAX),
            charset: Charset::Utf8,
            delimiter: ',',
            batch_size: DEFAULT_BATCH_SIZE,
            record_type: "record".to_owned(),
            required_columns: Vec::new(),
            principal: None,
        }
    }

    /// The connection part of this config.
    pub fn connection(&self) -> ConnectionSettings {
        ConnectionSettings {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            private_key_file: self.private_key_file.clone(),
            passphrase: self.passphrase.clone(),
            known_hosts_file: self.known_hosts_file.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }

    /// The next time the schedule fires strictly after `after`; `None` when the expression is
    /// invalid (which `validate` reports).
    pub fn next_poll_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cron = parse_cron(&self.schedule).ok()?;
        cron.find_next_occurrence(&after, false).ok()
    }

    /// Every problem with this config, one line each with the field path (pure, no I/O).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        validate_connection(&self.connection(), self.timeout_ms, &mut problems);
        if self.endpoint_id.trim().is_empty() {
            problems.push("endpoint_id: must not be empty".to_owned());
        }
        validate_dir(&self.dir, &mut problems);
        if self.pattern.is_empty() || self.pattern.contains('/') {
            problems.push("pattern: must be a non-empty file name glob without '/'".to_owned());
        }
        if let Err(e) = parse_cron(&self.schedule) {
            problems.push(format!(
                "schedule: not a 5-field cron expression ({e}): {}",
                self.schedule
            ));
        }
        if self.marker_suffix.is_empty() || self.marker_suffix.contains('/') {
            problems.push("marker_suffix: must be non-empty and without '/'".to_owned());
        }
        if self.batch_size == 0 {
            problems.push("batch_size: must be greater than 0".to_owned());
        }
        if !self.delimiter.is_ascii() || matches!(self.delimiter, '"' | '\r' | '\n') {
            problems.push(
                "delimiter: must be one ASCII character other than a quote or newline".to_owned(),
            );
        }
        if self.record_type.trim().is_empty() {
            problems.push("record_type: must not be empty".to_owned());
        }
        problems
    }
}

/// One outbound target directory (`etl_sftp_out`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpOutboundConfig {
    /// The endpoint id (for logs).
    pub endpoint_id: String,
    /// SFTP server host name or address.
    pub host: String,
    /// SFTP server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Login user.
    pub user: String,
    /// OpenSSH private key (ed25519 or RSA) used to log in.
    pub private_key_file: PathBuf,
    /// Passphrase of the private key (resolved from a secret by the runtime; never printed).
    #[serde(default)]
    pub passphrase: Option<String>,
    /// OpenSSH `known_hosts` file holding the server's host key.
    pub known_hosts_file: PathBuf,
    /// Absolute remote directory the files are written to (e.g. `/in`).
    pub dir: String,
    /// File name prefix: each delivery becomes `<prefix>_<message_id>.csv`.
    pub prefix: String,
    /// Replace an existing file of the same name. Off by default: a different file already
    /// there is a `Reject`, an identical one counts as delivered.
    #[serde(default)]
    pub overwrite: bool,
    /// Also write `<prefix>_<message_id>.manifest.json` after the data file.
    #[serde(default)]
    pub manifest: bool,
    /// Time allowed for each operation; exceeded = `Retry`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for SftpOutboundConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpOutboundConfig")
            .field("endpoint_id", &self.endpoint_id)
            .field("connection", &self.connection())
            .field("dir", &self.dir)
            .field("prefix", &self.prefix)
            .field("overwrite", &self.overwrite)
            .field("manifest", &self.manifest)
            .finish()
    }
}

impl SftpOutboundConfig {
    /// The connection part of this config.
    pub fn connection(&self) -> ConnectionSettings {
        ConnectionSettings {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            private_key_file: self.private_key_file.clone(),
            passphrase: self.passphrase.clone(),
            known_hosts_file: self.known_hosts_file.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }

    /// Every problem with this config, one line each with the field path (pure, no I/O).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        validate_connection(&self.connection(), self.timeout_ms, &mut problems);
        if self.endpoint_id.trim().is_empty() {
            problems.push("endpoint_id: must not be empty".to_owned());
        }
        validate_dir(&self.dir, &mut problems);
        if self.prefix.is_empty() || self.prefix.contains('/') {
            problems.push("prefix: must be non-empty and without '/'".to_owned());
        }
        problems
    }
}

/// Five fields exactly (minute hour day month weekday), as the hub's other schedules.
fn parse_cron(expression: &str) -> Result<croner::Cron, croner::errors::CronError> {
    use croner::parser::{CronParser, Seconds, Year};
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
}

fn validate_connection(c: &ConnectionSettings, timeout_ms: u64, problems: &mut Vec<String>) {
    if c.host.trim().is_empty() {
        problems.push("host: must not be empty".to_owned());
    }
    if c.port == 0 {
        problems.push("port: must be 1..65535".to_owned());
    }
    if c.user.trim().is_empty() {
        problems.push("user: must not be empty".to_owned());
    }
    if c.private_key_file.as_os_str().is_empty() {
        problems.push("private_key_file: must not be empty".to_owned());
    }
    if c.known_hosts_file.as_os_str().is_empty() {
        problems
            .push("known_hosts_file: must not be empty (host keys are always checked)".to_owned());
    }
    if timeout_ms == 0 {
        problems.push("timeout_ms: must be greater than 0".to_owned());
    }
}

fn validate_dir(dir: &str, problems: &mut Vec<String>) {
    if !dir.starts_with('/') {
        problems.push(format!("dir: must be an absolute remote path, got {dir:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<SftpConfig, String> {
        // serde_json stands in for the runtime's TOML loader: the field names and defaults are
        // what this test checks.
        serde_json::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(
            r#"{"endpoint_id":"osm_dealers_sftp_in","host":"10.0.0.5","user":"hub",
                "private_key_file":"/etc/synchub/osm_key","known_hosts_file":"/etc/synchub/known_hosts",
                "dir":"/outbound/dealers","pattern":"DEALER_*.csv","record_type":"osm_dealer",
                "charset":"gb18030","stable_secs":60}"#,
        )
        .unwrap();
        assert_eq!(c.port, 22);
        assert_eq!(c.charset, Charset::Gb18030);
        assert_eq!(c.batch_size, 500);
        assert_eq!(c.marker_suffix, ".ok");
        assert_eq!(c.schedule, "*/5 * * * *");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = parse(
            r#"{"endpoint_id":"x","host":"h","user":"u","private_key_file":"k","known_hosts_file":"kh",
                "dir":"/d","pattern":"*","record_type":"r","stabel_secs":3}"#,
        )
        .unwrap_err();
        assert!(e.contains("stabel_secs"), "{e}");
    }

    #[test]
    fn validate_lists_every_problem() {
        let mut c = SftpConfig::new("", ConnectionSettings::new("", 0, "", "", ""), "rel", "a/b");
        c.schedule = "every day".into();
        c.batch_size = 0;
        c.delimiter = '"';
        let p = c.validate().join("\n");
        for field in [
            "endpoint_id",
            "host",
            "port",
            "user",
            "private_key_file",
            "known_hosts_file",
            "dir",
            "pattern",
            "schedule",
            "batch_size",
            "delimiter",
        ] {
            assert!(p.contains(&format!("{field}:")), "{field} missing in:\n{p}");
        }
    }

    #[test]
    fn schedule_gives_the_next_poll() {
        let c = SftpConfig::new(
            "e",
            ConnectionSettings::new("h", 22, "u", "k", "kh"),
            "/d",
            "*",
        );
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:02:30Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            c.next_poll_after(at).unwrap().to_rfc3339(),
            "2026-11-25T10:05:00+00:00"
        );
    }

    #[test]
    fn debug_redacts_the_passphrase() {
        let mut c = SftpConfig::new(
            "e",
            ConnectionSettings::new("h", 22, "u", "k", "kh"),
            "/d",
            "*",
        );
        c.passphrase = Some("hunter2".into());
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("<redacted>"), "{d}");
    }
}
