//! Layered configuration (DESIGN §4): `config/synchub.toml`, then `config/synchub.<profile>.toml`,
//! then one file per endpoint under `config/endpoints/`, then `SYNCHUB__SECTION__KEY`
//! environment overrides, then one file per route under `routes/`.
//!
//! Loading never stops at the first mistake: every file, section, endpoint and route is
//! deserialized on its own, unknown fields are dropped and reported one by one, and each
//! problem carries the file it came from (or the environment variable that set it) and its key
//! path. `synchub check` and startup can therefore show an operator everything at once.
//!
//! The doc comments on the configuration structs are the user reference for the settings.
//!
//! Secrets never live in files: a `*_env` setting names the environment variable that holds
//! one, its value is read into a [`SecretString`] at load time, and nothing here prints it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use toml::{Table, Value};

pub use synchub_adapter_rest::HttpMethod;

/// Name of the environment variable that selects the profile.
pub const PROFILE_VAR: &str = "SYNCHUB_PROFILE";

/// Prefix of environment overrides: `SYNCHUB__HTTP__LISTEN` sets `http.listen`.
pub const ENV_PREFIX: &str = "SYNCHUB__";

/// Separator of path segments in an environment override name.
const ENV_SEPARATOR: &str = "__";

/// The public demo credentials of the `local` profile (INTERFACES §0). The `production`
/// profile refuses any API key or operator token whose hash is the hash of one of these.
pub const DEMO_CREDENTIALS: [&str; 9] = [
    "demo-osm",
    "demo-callcenter",
    "demo-website",
    "demo-etl",
    "demo-dms-D0001",
    "demo-dms-D0002",
    "demo-dms-D0003",
    "demo-admin",
    "demo-it-D0001",
];

/// Header names that carry credentials: they may not be configured as static headers,
/// because a file would then hold a secret.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

/// Give up on one section or file after this many unknown fields (a file of the wrong kind).
const MAX_UNKNOWN_FIELDS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Profile

/// The deployment profile: chooses `config/synchub.<profile>.toml` and production-only policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Profile {
    /// Development and demos: ships the public demo credentials.
    #[default]
    Local,
    /// Real deployments: JSON logs by default, demo credentials refused.
    Production,
}

impl Profile {
    /// Every profile, in the order the error message lists them.
    pub const ALL: [Profile; 2] = [Profile::Local, Profile::Production];

    /// The name used in `SYNCHUB_PROFILE` and in `synchub.<profile>.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Local => "local",
            Profile::Production => "production",
        }
    }

    /// The profile named by `SYNCHUB_PROFILE` in `env`; unset or empty means `local`.
    pub fn from_env(env: &[(String, String)]) -> Result<Profile, UnknownProfile> {
        match env_lookup(env, PROFILE_VAR) {
            None => Ok(Profile::Local),
            Some(value) if value.trim().is_empty() => Ok(Profile::Local),
            Some(value) => Profile::try_from(value.to_owned()),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is not one of [`Profile::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile {value:?}; valid values are: local, production")]
pub struct UnknownProfile {
    /// The name that was given.
    pub value: String,
}

impl TryFrom<String> for Profile {
    type Error = UnknownProfile;

    fn try_from(value: String) -> Result<Profile, UnknownProfile> {
        let wanted = value.trim();
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(wanted))
            .ok_or(UnknownProfile { value })
    }
}

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Profile, UnknownProfile> {
        Profile::try_from(s.to_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Problems

/// One configuration mistake: where it is (file, or `env:<VAR>` for an environment override)
/// and which key, so an operator can go straight to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file to edit, or `env:<VAR>` when an environment variable set the value.
    pub file: PathBuf,
    /// Dotted path of the setting, e.g. `http.listen`, `auth.api_keys[2].key_sha256`,
    /// `endpoints.crm_store.key_field_approval`, `routes.leads_to_crm.to[0]`; empty when the
    /// problem is the whole file (unreadable, TOML syntax).
    pub key_path: String,
    /// What is wrong. Never contains a secret value.
    pub message: String,
}

impl ConfigProblem {
    fn new(
        file: impl Into<PathBuf>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigProblem {
        ConfigProblem {
            file: file.into(),
            key_path: key_path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key_path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.key_path,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigProblem {}

// ---------------------------------------------------------------------------------------------
// Settings

/// The whole configuration of one hub instance.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The profile the settings were loaded for.
    pub profile: Profile,
    /// The configuration directory (`--config`, default `config/`).
    pub config_dir: PathBuf,
    /// `[http]`: the HTTP server of the inbound REST endpoints, ops API and health.
    pub http: HttpSettings,
    /// `[store]`: the durable journal and CRM tables.
    pub store: StoreSettings,
    /// `[dispatch]`: the delivery workers.
    pub dispatch: DispatchSettings,
    /// `[log]`: log format and level.
    pub log: LogSettings,
    /// `[paths]`: where routes and mappings live. Use [`Settings::routes_dir`] and
    /// [`Settings::mappings_dir`] for the resolved directories.
    pub paths: PathSettings,
    /// `[auth]`: partner API keys and operators.
    pub auth: AuthSettings,
    /// `[ui]`: the dashboard.
    pub ui: crate::ui::UiSettings,
    /// Endpoints by id, one file each: `config/endpoints/<id>.toml`.
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// Routes by id, one file each: `<routes_dir>/<id>.toml`.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Secret values read from the environment variables that `*_env` settings name.
    pub secrets: Secrets,
    /// Which file (or environment variable) each setting came from, for problem reports.
    pub origins: Origins,
    /// Lead scoring and distribution rules (`config/rules/lead_*.toml`); `None` when absent.
    pub lead_rules: Option<crate::rules::LeadRules>,
}

impl Default for Settings {
    /// Every default, no endpoints or routes, configuration directory `config`: a start for
    /// settings built in code (tests).
    fn default() -> Settings {
        Settings {
            profile: Profile::default(),
            config_dir: PathBuf::from("config"),
            http: HttpSettings::default(),
            store: StoreSettings::default(),
            dispatch: DispatchSettings::default(),
            log: LogSettings::default(),
            paths: PathSettings::default(),
            auth: AuthSettings::default(),
            ui: crate::ui::UiSettings::default(),
            endpoints: BTreeMap::new(),
            routes: BTreeMap::new(),
            secrets: Secrets::default(),
            origins: Origins::new(PathBuf::from("config/synchub.toml")),
            lead_rules: None,
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address the HTTP server listens on, `host:port`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest accepted request body in bytes; larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest accepted array of records in one request; longer arrays are refused.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Seconds between readings of the flow gauges `/metrics` shows (backlog, age, parked,
    /// freshness).
    #[serde(default = "default_metrics_refresh_secs")]
    pub metrics_refresh_secs: u64,
}

fn default_metrics_refresh_secs() -> u64 {
    10
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}

fn default_max_records() -> usize {
    1000
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_records: default_max_records(),
            metrics_refresh_secs: default_metrics_refresh_secs(),
        }
    }
}

/// `[store]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Database URL: `sqlite://<file>` (embedded, the default) or
    /// `postgres://user@host/db`. A password in the URL is redacted from every log line;
    /// prefer setting the URL from the environment (`SYNCHUB__STORE__URL`) in production.
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Days a delivered message keeps its raw payload before the purge job drops it (the
    /// journal row and its business keys stay).
    #[serde(default = "default_payload_retention_days")]
    pub payload_retention_days: u32,
    /// Days every written version of a CRM record stays in the extract change log; older
    /// versions a later change superseded are then compacted away by the purge job (the latest
    /// version and tombstones stay). `0` keeps every version for ever.
    #[serde(default = "default_changes_retention_days")]
    pub changes_retention_days: u32,
    /// When the purge job runs: a 5-field cron expression (minute hour day month weekday),
    /// evaluated in UTC.
    #[serde(default = "default_purge_schedule")]
    pub purge_schedule: String,
}

fn default_store_url() -> String {
    "sqlite://data/synchub.db".to_owned()
}

fn default_payload_retention_days() -> u32 {
    30
}

fn default_changes_retention_days() -> u32 {
    90
}

fn default_purge_schedule() -> String {
    "30 3 * * *".to_owned()
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            url: default_store_url(),
            payload_retention_days: default_payload_retention_days(),
            changes_retention_days: default_changes_retention_days(),
            purge_schedule: default_purge_schedule(),
        }
    }
}

impl fmt::Debug for StoreSettings {
    // Hand-written: a PostgreSQL URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &redact_url(&self.url))
            .field("payload_retention_days", &self.payload_retention_days)
            .field("changes_retention_days", &self.changes_retention_days)
            .field("purge_schedule", &self.purge_schedule)
            .finish()
    }
}

/// `[dispatch]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSettings {
    /// Whether this instance delivers at all. `false` makes an ingest-only instance (or pauses
    /// deliveries for a maintenance window): messages are still journaled and wait durably.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Deliveries in flight at once (each is one outbound attempt).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Due deliveries claimed per store round trip.
    #[serde(default = "default_claim_batch")]
    pub claim_batch: i64,
    /// Seconds a claim is held; a delivery whose worker died is claimable again after this.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Milliseconds to wait before polling again when nothing was due.
    #[serde(default = "default_idle_poll_ms")]
    pub idle_poll_ms: u64,
}

fn default_enabled() -> bool {
    true
}

fn default_workers() -> usize {
    128
}

fn default_claim_batch() -> i64 {
    256
}

fn default_lease_secs() -> u64 {
    60
}

fn default_idle_poll_ms() -> u64 {
    250
}

impl Default for DispatchSettings {
    fn default() -> DispatchSettings {
        DispatchSettings {
            enabled: default_enabled(),
            workers: default_workers(),
            claim_batch: default_claim_batch(),
            lease_secs: default_lease_secs(),
            idle_poll_ms: default_idle_poll_ms(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (the `local` default).
    #[default]
    Text,
    /// One JSON object per line (the `production` default).
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`. Default `text`; the `production` profile defaults to `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,synchub=debug`. `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".to_owned()
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// `[paths]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSettings {
    /// Folder of the route files. A relative path is taken from the folder that contains
    /// the configuration directory (the repository layout has `config/`, `routes/` and
    /// `mappings/` side by side).
    #[serde(default = "default_routes_dir")]
    pub routes_dir: PathBuf,
    /// Folder of the mappings (`<id>/v<N>.jq`), relative like `routes_dir`.
    #[serde(default = "default_mappings_dir")]
    pub mappings_dir: PathBuf,
}

fn default_routes_dir() -> PathBuf {
    PathBuf::from("routes")
}

fn default_mappings_dir() -> PathBuf {
    PathBuf::from("mappings")
}

impl Default for PathSettings {
    fn default() -> PathSettings {
        PathSettings {
            routes_dir: default_routes_dir(),
            mappings_dir: default_mappings_dir(),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Partner API keys (`X-Api-Key` on the inbound REST paths), one `[[auth.api_keys]]` each.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Operators of the ops API and dashboard, one `[[auth.operators]]` each.
    #[serde(default)]
    pub operators: Vec<OperatorConfig>,
    /// WS-Security UsernameToken accounts of the inbound SOAP services, one `[[auth.soap_users]]`
    /// each. The password is needed in clear (PasswordDigest is checked against it), so
    /// deployments name the variable holding it in `password_env`.
    #[serde(default)]
    pub soap_users: Vec<SoapUserConfig>,
}

/// One SOAP account.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoapUserConfig {
    /// `wsse:Username` as the partner sends it.
    pub username: String,
    /// The password written out: for the local profile's demo account only (the production
    /// profile refuses demo credentials).
    #[serde(default)]
    pub password: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The partner system this account is (`osm`).
    pub system: String,
}

/// One partner API key. Only its hash is configured, so a leaked file leaks no key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for the key, shown in logs and problems (never the key itself).
    pub name: String,
    /// Lower-case hex sha256 of the key (`printf %s "$KEY" | sha256sum`); the key itself is
    /// never stored.
    pub key_sha256: String,
    /// The partner system presenting the key (`osm`, `callcenter`, `website`, `etl`, `dms`);
    /// it becomes e.g. a lead's `source`.
    pub system: String,
    /// Binds the key to one dealer: it may only write that dealer's records. Required for
    /// system `dms`.
    #[serde(default)]
    pub dealer_code: Option<String>,
}

/// What an operator may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Headquarters: sees everything.
    Admin,
    /// A dealer's IT: sees only its dealer's messages and records.
    DealerIt,
}

/// One operator of the ops API (`Authorization: Bearer <token>`) and dashboard (user name and
/// token as password).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Login name.
    pub user: String,
    /// Lower-case hex sha256 of the operator's token; the token itself is never stored.
    pub token_sha256: String,
    /// `admin` or `dealer_it`.
    pub role: Role,
    /// The dealer a `dealer_it` operator belongs to (required for `dealer_it`, not allowed for
    /// `admin`).
    #[serde(default)]
    pub dealer_code: Option<String>,
}

/// Which way an endpoint carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Partners send to the hub.
    In,
    /// The hub delivers to a partner.
    Out,
}

/// One endpoint, from `config/endpoints/<id>.toml`; `type` chooses the kind.
///
/// A closed set: each new adapter kind (SOAP, AMQP, SFTP) adds a variant here, and the
/// compiler then points at every place that must handle it (loader, validation, secrets).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EndpointConfig {
    /// `type = "rest"`: inbound REST paths (INTERFACES §1) or an outbound REST partner.
    Rest(RestEndpoint),
    /// `type = "crm_store"`: the hub's own CRM tables, written in the delivery transaction.
    CrmStore(CrmStoreEndpoint),
    /// `type = "amqp"`: RabbitMQ; `out` publishes to the dealer exchange, `in` consumes the
    /// inbound queues (INTERFACES §3).
    Amqp(AmqpEndpoint),
    /// `type = "sftp"`: a partner's SFTP server; `in` polls a directory for CSV files, `out`
    /// writes files (INTERFACES §4). Boxed: it has many more settings than the other kinds.
    Sftp(Box<SftpEndpoint>),
    /// `type = "soap"`: `in` serves the OSM vehicle service (IF-01); `out` calls DCS
    /// `PublishCampaignTask` (IF-07).
    Soap(SoapEndpoint),
    /// `type = "import"`: legacy CSV files read by `synchub import`, with the cleansing rules
    /// of the migration (see `crate::import`).
    Import(crate::import::ImportEndpoint),
}

/// `type = "soap"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoapEndpoint {
    pub direction: Direction,
    /// `out`: a disabled endpoint is loaded and checked but never called; its deliveries wait
    /// (retrying, then parked) until it is enabled. Its secret need not be set.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `in`: largest request accepted, in bytes.
    #[serde(default = "default_soap_max_body")]
    pub max_body_bytes: usize,
    /// `in`: the address written into the served WSDL; unset, it comes from the request's Host.
    #[serde(default)]
    pub public_url: Option<String>,
    /// `out`: the partner's service URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `out`: time allowed for one attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `out`: WS-Security UsernameToken user.
    #[serde(default)]
    pub username: Option<String>,
    /// `out`: name of the environment variable holding that user's password.
    #[serde(default)]
    pub password_env: Option<String>,
}

fn default_soap_max_body() -> usize {
    50 << 20
}

/// `type = "sftp"`. The hub is the SFTP client; the fields map onto the adapter's `SftpConfig`
/// (`in`) and `SftpOutboundConfig` (`out`), see `src/sftp.rs` and `adapters/sftp/README.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpEndpoint {
    /// `in`: the hub polls `dir` for files; `out`: deliveries are written into `dir`.
    pub direction: Direction,
    /// A disabled endpoint is loaded and checked but never connected or polled; it shows as
    /// `disabled` in `GET /api/v1/endpoints`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub host: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub user: String,
    /// OpenSSH private key file (ed25519 or RSA).
    pub private_key_file: std::path::PathBuf,
    /// OpenSSH known_hosts file with the server's host key; an unknown or changed key refuses
    /// the connection.
    pub known_hosts_file: std::path::PathBuf,
    /// Name of the environment variable holding the private key's passphrase, if it has one.
    #[serde(default)]
    pub passphrase_env: Option<String>,
    /// Absolute remote directory.
    pub dir: String,
    /// Time allowed for each SFTP operation (connect, list, read, rename).
    #[serde(default = "default_sftp_timeout_ms")]
    pub timeout_ms: u64,
    /// `in`: the partner system the files come from (`osm`, `dms`); it scopes `source_ref`
    /// de-duplication and is recorded as the records' source.
    #[serde(default)]
    pub system: Option<String>,
    /// `in`: file name glob (`*`, `?`).
    #[serde(default)]
    pub pattern: Option<String>,
    /// `in`: poll schedule, 5-field cron in UTC (default every 5 minutes). `out`: when set, the
    /// nightly extract push runs on it (IF-09b, src/extract/push.rs).
    #[serde(default)]
    pub schedule: Option<String>,
    /// `in`: a file without marker is taken once size and mtime were unchanged this long.
    #[serde(default)]
    pub stable_secs: Option<u64>,
    /// `in`: marker suffix (default `.ok`).
    #[serde(default)]
    pub marker_suffix: Option<String>,
    /// `in`: take a file only when its marker exists.
    #[serde(default)]
    pub require_marker: Option<bool>,
    /// `in`: `utf-8` (default) or `gb18030`.
    #[serde(default)]
    pub charset: Option<synchub_adapter_sftp::Charset>,
    /// `in`: CSV delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// `in`: rows per journaled batch (default 500); the resume granularity after a crash.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// `in`: record type of every row; routes match on it.
    #[serde(default)]
    pub record_type: Option<String>,
    /// `in`: header columns a file must have, else it goes to `error/`.
    #[serde(default)]
    pub required_columns: Vec<String>,
    /// `in`: column prefixes folded into a nested object before validation:
    /// `owner_name`, `owner_mobile` with `["owner_"]` become `owner: {name, mobile}`.
    #[serde(default)]
    pub nest_prefixes: Vec<String>,
    /// `in`: apply each batch of rows to the CRM store in the transaction that journals it
    /// (default true), when the rows' only route takes them to a CRM store endpoint with no
    /// mapping and no `when`. The batch is one journaled message, found by every row's VIN,
    /// mobile and `source_ref`; rows that cannot apply yet are journaled one by one and wait like
    /// live traffic. `false` journals one record and one CRM delivery per row.
    #[serde(default)]
    pub direct_apply: Option<bool>,
    /// `in`: this hub's name in the file ledger (default: the host name). Set distinct values
    /// when several hub instances share one host and one database.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `out`: file name prefix (`<prefix>_<message_id>.csv`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// `out`: replace an existing file of the same name (default false).
    #[serde(default)]
    pub overwrite: Option<bool>,
    /// `out`: write `<prefix>_<message_id>.manifest.json` after each data file (default false).
    #[serde(default)]
    pub manifest: Option<bool>,
}

fn default_ssh_port() -> u16 {
    22
}

fn default_sftp_timeout_ms() -> u64 {
    10_000
}

/// `type = "amqp"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpEndpoint {
    /// `out`: the hub publishes deliveries; `in`: the hub consumes `queues`.
    pub direction: Direction,
    /// `amqp://user@host:port/vhost` (`amqps://` for TLS). A password may be in the URL for
    /// local use; deployments name the variable holding it in `password_env`.
    pub url: String,
    /// Name of the environment variable holding the broker password (replaces any in `url`).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Prepended to every exchange and queue name, so environments (or tests) can share a broker.
    #[serde(default)]
    pub name_prefix: String,
    /// `quorum` (default) or `classic` for the queues the hub declares.
    #[serde(default)]
    pub queue_type: AmqpQueueType,
    /// `in`: unacknowledged messages the broker hands over at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Declared queues are deleted by the broker after this long unused (`x-expires`);
    /// unset keeps them forever, which is what production wants.
    #[serde(default)]
    pub queue_expires_ms: Option<u64>,
    /// `out`: routing key template, `{name}` filled from the delivery's headers (the route's
    /// `headers` plus `dealer_code` and `record_type`). Default `dealer.{dealer_code}.{kind}`.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// `out`: how long to wait for the broker's publisher confirm.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// `in`: queues to declare, bind to the inbound exchange and consume. Default: the
    /// reference deployment's lead-result and campaign-result queues.
    #[serde(default)]
    pub queues: Option<Vec<AmqpQueue>>,
}

/// One inbound queue of an `amqp` `in` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpQueue {
    pub queue: String,
    /// Binding key on the inbound exchange.
    pub routing_key: String,
    /// Record type of the records its messages carry (routes match on it).
    pub record_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmqpQueueType {
    #[default]
    Quorum,
    Classic,
}

fn default_prefetch() -> u16 {
    256
}

fn default_confirm_timeout_ms() -> u64 {
    10_000
}

/// `type = "rest"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestEndpoint {
    /// `in`: partners call the hub's REST paths (authenticated by `[[auth.api_keys]]`);
    /// `out`: the hub delivers each message to `url`.
    pub direction: Direction,
    /// Target URL (`http://` or `https://`); required for `out`, not allowed for `in`.
    #[serde(default)]
    pub url: Option<String>,
    /// `out`: time allowed for one whole attempt in milliseconds; past it the attempt is
    /// retried.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `out`: HTTP method, `POST` (default), `PUT` or `PATCH`.
    #[serde(default)]
    pub method: HttpMethod,
    /// `out`: name of the environment variable holding the token sent as
    /// `Authorization: Bearer <token>`. The token never appears in a file or a log.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// `out`: extra headers sent with every delivery (e.g. a tenant id). Credential headers
    /// (`Authorization`, `X-Api-Key`, `Cookie`) are not allowed here: use
    /// `bearer_token_env`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// `type = "crm_store"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmStoreEndpoint {
    /// Changes of key fields (name, mobile, id_no) of a known customer coming from a DMS go to
    /// the approval queue instead of being applied.
    #[serde(default = "default_true")]
    pub key_field_approval: bool,
}

fn default_true() -> bool {
    true
}

impl Default for CrmStoreEndpoint {
    fn default() -> CrmStoreEndpoint {
        CrmStoreEndpoint {
            key_field_approval: true,
        }
    }
}

impl EndpointConfig {
    /// The `type` value of each kind, in variant order.
    pub const TYPES: [&'static str; 6] = ["rest", "crm_store", "amqp", "sftp", "soap", "import"];

    /// The `type` value of this endpoint.
    pub fn type_name(&self) -> &'static str {
        match self {
            EndpointConfig::Rest(_) => "rest",
            EndpointConfig::CrmStore(_) => "crm_store",
            EndpointConfig::Amqp(_) => "amqp",
            EndpointConfig::Sftp(_) => "sftp",
            EndpointConfig::Soap(_) => "soap",
            EndpointConfig::Import(_) => "import",
        }
    }

    /// Whether routes may take messages from this endpoint (`route.from`). The CRM store is a
    /// source too: its change events fan out to other systems.
    pub fn is_source(&self) -> bool {
        match self {
            EndpointConfig::Rest(rest) => rest.direction == Direction::In,
            EndpointConfig::Amqp(a) => a.direction == Direction::In,
            EndpointConfig::Sftp(s) => s.direction == Direction::In,
            EndpointConfig::Soap(x) => x.direction == Direction::In,
            EndpointConfig::CrmStore(_) | EndpointConfig::Import(_) => true,
        }
    }

    /// Whether routes may deliver to this endpoint (`route.to`).
    pub fn is_target(&self) -> bool {
        match self {
            EndpointConfig::Rest(rest) => rest.direction == Direction::Out,
            EndpointConfig::Amqp(a) => a.direction == Direction::Out,
            EndpointConfig::Sftp(s) => s.direction == Direction::Out,
            EndpointConfig::Soap(x) => x.direction == Direction::Out,
            EndpointConfig::CrmStore(_) => true,
            EndpointConfig::Import(_) => false,
        }
    }

    /// Every `*_env` setting of this endpoint that names a secret: (field, variable name).
    pub fn secret_env_vars(&self) -> Vec<(&'static str, &str)> {
        match self {
            EndpointConfig::Rest(rest) => rest
                .bearer_token_env
                .as_deref()
                .map(|var| ("bearer_token_env", var))
                .into_iter()
                .collect(),
            EndpointConfig::Amqp(a) => a
                .password_env
                .as_deref()
                .map(|var| ("password_env", var))
                .into_iter()
                .collect(),
            // A disabled endpoint never logs in, so its secret need not be set.
            EndpointConfig::Sftp(s) => s
                .passphrase_env
                .as_deref()
                .filter(|_| s.enabled)
                .map(|var| ("passphrase_env", var))
                .into_iter()
                .collect(),
            EndpointConfig::Soap(x) => x
                .password_env
                .as_deref()
                .filter(|_| x.enabled)
                .map(|var| ("password_env", var))
                .into_iter()
                .collect(),
            EndpointConfig::CrmStore(_) | EndpointConfig::Import(_) => Vec::new(),
        }
    }
}

/// One route, from `<routes_dir>/<id>.toml`: which records it takes, how it checks and maps
/// them, and where it delivers them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The endpoint id the records come from.
    pub from: String,
    /// The record type the inbound adapter or event gives (`dms_customer`, `lead`,
    /// `lead_result`, `campaign_result`, `customer_event`, ...).
    pub record_type: String,
    /// Optional jq predicate on the validated record; the route takes the record only when it
    /// yields `true`.
    #[serde(default)]
    pub when: Option<String>,
    /// Record schema that cleanses and validates the record first: `dms_customer`, `lead`,
    /// `lead_result`, `campaign_result`, `vehicle`, `dealer` or `campaign`.
    #[serde(default)]
    pub validate: Option<String>,
    /// Mapping id under `mappings/` applied to the validated record; none delivers it as is.
    #[serde(default)]
    pub mapping: Option<String>,
    /// Pins a mapping version; default the latest.
    #[serde(default)]
    pub mapping_version: Option<u32>,
    /// Target endpoint ids (at least one); each gets its own delivery.
    pub to: Vec<String>,
    /// Dotted path into the validated record (`mobile`, `customer.mobile`) whose value orders
    /// deliveries: records with the same value go to a target in order, and a failing value
    /// holds only its own lane.
    #[serde(default)]
    pub lane_key: Option<String>,
    /// Extra headers given to every delivery of this route, for the target adapter's addressing
    /// (an AMQP routing key's `{kind}`). `dealer_code`, `record_type` and `route` are set by the hub.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `[retry]`: how often and how patiently deliveries are retried before they are parked.
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// `[retry]` of a route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts before a delivery is parked (at least 1).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff in milliseconds; doubles per attempt, with jitter.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Upper bound of the backoff in milliseconds (a partner's `Retry-After` may exceed it).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_max_attempts() -> u32 {
    10
}

fn default_backoff_ms() -> u64 {
    1000
}

fn default_max_backoff_ms() -> u64 {
    300_000
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets and origins

/// Secret values read at load time from the environment variables named by `*_env` settings.
/// `Debug` lists the variable names only.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, SecretString>,
}

impl Secrets {
    /// The secret held by environment variable `var`, if it was set (and not empty).
    pub fn get(&self, var: &str) -> Option<&SecretString> {
        self.values.get(var)
    }

    /// Whether `var` was set (and not empty) when the settings were loaded.
    pub fn contains(&self, var: &str) -> bool {
        self.values.contains_key(var)
    }

    /// Adds a secret (tests, or settings built in code).
    pub fn insert(&mut self, var: impl Into<String>, value: impl Into<String>) {
        self.values
            .insert(var.into(), SecretString::from(value.into()));
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

/// Which file (or `env:<VAR>`) set each setting, so a problem found after merging the layers
/// still names the file to edit.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Where problems without a recorded origin point (the base file).
    base: PathBuf,
    /// Rendered key path (tables and leaves; arrays are leaves) -> file.
    by_key: BTreeMap<String, PathBuf>,
}

impl Origins {
    fn new(base: PathBuf) -> Origins {
        Origins {
            base,
            by_key: BTreeMap::new(),
        }
    }

    /// The file that set `key_path`, or the nearest enclosing table that was set; the base
    /// file when nothing was (a default).
    pub fn file_for(&self, key_path: &str) -> PathBuf {
        let mut path = key_path;
        loop {
            if let Some(file) = self.by_key.get(path) {
                return file.clone();
            }
            match parent_key(path) {
                Some(parent) => path = parent,
                None => return self.base.clone(),
            }
        }
    }

    /// Whether any file or variable set `key_path` (e.g. an endpoint that failed to load
    /// still "exists", so routes naming it get no second, misleading problem).
    pub fn is_defined(&self, key_path: &str) -> bool {
        self.by_key.contains_key(key_path)
    }

    fn set(&mut self, key_path: &str, file: &Path) {
        self.by_key.insert(key_path.to_owned(), file.to_path_buf());
    }

    /// Records `file` for `key_path` and every table below it, forgetting older origins
    /// there (the value was replaced as a whole).
    fn set_all(&mut self, key_path: &str, value: &Value, file: &Path) {
        let stale: Vec<String> = self
            .by_key
            .range::<str, _>((
                std::ops::Bound::Excluded(key_path),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(key_path))
            .filter(|k| is_below(k, key_path))
            .cloned()
            .collect();
        for k in stale {
            self.by_key.remove(&k);
        }
        self.set(key_path, file);
        if let Value::Table(table) = value {
            for (k, v) in table {
                self.set_all(&join_key(key_path, k), v, file);
            }
        }
    }
}

fn is_below(candidate: &str, ancestor: &str) -> bool {
    candidate
        .strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

// ---------------------------------------------------------------------------------------------
// Loading

impl Settings {
    /// Loads `config/synchub.toml`, then `config/synchub.<profile>.toml` (if present), then
    /// `config/endpoints/*.toml` (file stem = id, placed under `endpoints.<id>`), then
    /// environment overrides `SYNCHUB__SECTION__KEY` (double underscore separates path
    /// segments, segments lower-cased: `SYNCHUB__HTTP__LISTEN`, `SYNCHUB__STORE__URL`,
    /// `SYNCHUB__ENDPOINTS__<ENDPOINT_ID>__<FIELD>`), then routes from `routes_dir/*.toml`.
    ///
    /// Returns **all** problems: each file, section, endpoint and route is deserialized on its
    /// own, so one bad file does not hide the others' problems; unknown fields name their key
    /// path; TOML syntax errors name the file and line. Cross-references and policy are
    /// checked by [`Settings::validate`], which callers run next.
    pub fn load(
        config_dir: &Path,
        profile: Profile,
        env: &[(String, String)],
    ) -> Result<Settings, Vec<ConfigProblem>> {
        let (settings, problems) = Settings::load_partial(config_dir, profile, env);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }

    /// [`Settings::load`] with the profile from `SYNCHUB_PROFILE` and the process environment.
    pub fn load_from_env(config_dir: &Path) -> Result<Settings, Vec<ConfigProblem>> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let profile = Profile::from_env(&env).map_err(|e| {
            vec![ConfigProblem::new(
                format!("env:{PROFILE_VAR}"),
                "",
                e.to_string(),
            )]
        })?;
        Settings::load(config_dir, profile, &env)
    }

    /// Like [`Settings::load`], but always returns settings: whatever could not be loaded is
    /// left at its default (a section) or left out (an endpoint, a route), and unknown fields
    /// are dropped. `synchub check` uses it to run [`Settings::validate`] even when loading
    /// found problems, so everything is reported in one go.
    pub fn load_partial(
        config_dir: &Path,
        profile: Profile,
        env: &[(String, String)],
    ) -> (Settings, Vec<ConfigProblem>) {
        let mut problems = Vec::new();
        let base_file = config_dir.join("synchub.toml");
        let mut origins = Origins::new(base_file.clone());
        let mut tree = Table::new();

        if profile == Profile::Production {
            // Production reads logs with a collector: JSON unless a layer says otherwise.
            // Recorded under no file, so a problem here points at the base file.
            let mut log = Table::new();
            log.insert("format".to_owned(), Value::String("json".to_owned()));
            tree.insert("log".to_owned(), Value::Table(log));
        }

        if !config_dir.is_dir() {
            problems.push(ConfigProblem::new(
                config_dir,
                "",
                "configuration directory not found (choose one with --config)",
            ));
        }

        match read_toml(&base_file) {
            Ok(Some(layer)) => {
                merge_layer(&mut tree, layer, &base_file, &mut origins, &mut problems)
            }
            Ok(None) => {
                if config_dir.is_dir() {
                    problems.push(ConfigProblem::new(
                        &base_file,
                        "",
                        "file not found: the base configuration is required",
                    ));
                }
            }
            Err(problem) => problems.push(problem),
        }
        let profile_file = config_dir.join(format!("synchub.{}.toml", profile.as_str()));
        match read_toml(&profile_file) {
            Ok(Some(layer)) => {
                merge_layer(&mut tree, layer, &profile_file, &mut origins, &mut problems)
            }
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        }

        let endpoints_dir = config_dir.join("endpoints");
        let mut endpoint_tables = Table::new();
        for (id, file) in toml_files(&endpoints_dir, &mut problems) {
            let key_path = join_key("endpoints", &id);
            if !is_endpoint_id(&id) {
                problems.push(ConfigProblem::new(
                    &file,
                    &key_path,
                    "an endpoint id (the file name) must consist of lower-case ASCII letters, \
                     digits and '_', so that SYNCHUB__ENDPOINTS__<ID>__<FIELD> can address it",
                ));
            }
            match read_toml(&file) {
                Ok(Some(table)) => {
                    let value = Value::Table(table);
                    origins.set_all(&key_path, &value, &file);
                    endpoint_tables.insert(id, value);
                }
                Ok(None) => {}
                Err(problem) => {
                    // Still counts as defined: routes naming it get no second problem.
                    origins.set(&key_path, &file);
                    problems.push(problem);
                }
            }
        }
        if !endpoint_tables.is_empty() {
            tree.insert("endpoints".to_owned(), Value::Table(endpoint_tables));
        }

        apply_env_overrides(&mut tree, env, &mut origins, &mut problems);

        let mut settings = Settings {
            profile,
            config_dir: config_dir.to_path_buf(),
            ..Settings::default()
        };
        for (key, value) in tree {
            let (o, p) = (&origins, &mut problems);
            match key.as_str() {
                "http" => settings.http = section(value, &key, o, p),
                "store" => settings.store = section(value, &key, o, p),
                "dispatch" => settings.dispatch = section(value, &key, o, p),
                "log" => settings.log = section(value, &key, o, p),
                "paths" => settings.paths = section(value, &key, o, p),
                "auth" => settings.auth = section(value, &key, o, p),
                "ui" => settings.ui = section(value, &key, o, p),
                "endpoints" => {
                    settings.endpoints = load_endpoints(value, &origins, &mut problems);
                }
                _ => problems.push(ConfigProblem::new(
                    origins.file_for(&key),
                    &key,
                    format!(
                        "unknown field `{key}`, expected one of `http`, `store`, `dispatch`, \
                         `log`, `paths`, `auth`, `ui` (endpoints are files under endpoints/, routes \
                         files under the routes folder)"
                    ),
                )),
            }
        }
        normalise_hashes(&mut settings.auth);

        for var in settings
            .auth
            .soap_users
            .iter()
            .filter_map(|u| u.password_env.clone())
        {
            if let Some(value) = env_lookup(env, &var).filter(|v| !v.is_empty()) {
                settings.secrets.insert(var, value);
            }
        }
        for endpoint in settings.endpoints.values() {
            for (_, var) in endpoint.secret_env_vars() {
                if let Some(value) = env_lookup(env, var).filter(|v| !v.is_empty()) {
                    settings.secrets.insert(var, value);
                }
            }
        }

        let routes_dir = settings.routes_dir();
        if routes_dir.is_dir() {
            for (id, file) in toml_files(&routes_dir, &mut problems) {
                let key_path = join_key("routes", &id);
                origins.set(&key_path, &file);
                if !is_route_id(&id) {
                    problems.push(ConfigProblem::new(
                        &file,
                        &key_path,
                        "a route id (the file name) must consist of ASCII letters, digits, '_' \
                         or '-'",
                    ));
                }
                match read_toml(&file) {
                    Ok(Some(table)) => {
                        let route = deserialize_collecting(
                            Value::Table(table),
                            &key_path,
                            &origins,
                            &mut problems,
                        );
                        if let Some(route) = route {
                            settings.routes.insert(id, route);
                        }
                    }
                    Ok(None) => {}
                    Err(problem) => problems.push(problem),
                }
            }
        } else {
            problems.push(ConfigProblem::new(
                origins.file_for("paths.routes_dir"),
                "paths.routes_dir",
                format!("routes folder {} not found", routes_dir.display()),
            ));
        }

        let (lead_rules, rule_problems) = crate::rules::load(config_dir);
        settings.lead_rules = lead_rules;
        problems.extend(rule_problems);

        settings.origins = origins;
        (settings, problems)
    }

    /// The routes folder: `paths.routes_dir`, a relative path taken from the folder that holds
    /// the configuration directory.
    pub fn routes_dir(&self) -> PathBuf {
        self.resolve(&self.paths.routes_dir)
    }

    /// The mappings folder: `paths.mappings_dir`, resolved like [`Settings::routes_dir`].
    pub fn mappings_dir(&self) -> PathBuf {
        self.resolve(&self.paths.mappings_dir)
    }

    /// The file that defines route `id` (for problems found later, e.g. by the route table).
    pub fn route_file(&self, id: &str) -> PathBuf {
        self.origins.file_for(&join_key("routes", id))
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let root = match self.config_dir.file_name() {
            Some(_) => self
                .config_dir
                .parent()
                .unwrap_or(Path::new(""))
                .to_path_buf(),
            // `.`, `..` or `/`: no name to strip, so step up explicitly.
            None => self.config_dir.join(".."),
        };
        root.join(path)
    }
}

fn env_lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads and parses one TOML file; `Ok(None)` when it does not exist.
fn read_toml(path: &Path) -> Result<Option<Table>, ConfigProblem> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigProblem::new(path, "", format!("cannot read: {e}"))),
    };
    toml::from_str::<Table>(&text)
        .map(Some)
        .map_err(|e| ConfigProblem::new(path, "", syntax_message(&text, &e)))
}

fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!(
                "TOML syntax error at line {line}, column {column}: {}",
                error.message()
            )
        }
        None => format!("TOML syntax error: {}", error.message()),
    }
}

/// `*.toml` files of a folder as (stem, path), sorted; a missing folder has none.
fn toml_files(dir: &Path, problems: &mut Vec<ConfigProblem>) -> Vec<(String, PathBuf)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            problems.push(ConfigProblem::new(
                dir,
                "",
                format!("cannot read folder: {e}"),
            ));
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".toml") {
            files.push((stem.to_owned(), path));
        }
    }
    files.sort();
    files
}

fn is_endpoint_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_route_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Merges one `synchub*.toml` layer into the tree: tables merge key by key, anything else
/// (scalars, arrays such as `auth.api_keys`) replaces the earlier value as a whole.
fn merge_layer(
    tree: &mut Table,
    mut layer: Table,
    file: &Path,
    origins: &mut Origins,
    problems: &mut Vec<ConfigProblem>,
) {
    for (key, what) in [
        ("endpoints", "config/endpoints/<id>.toml"),
        ("routes", "<routes_dir>/<id>.toml"),
    ] {
        if layer.remove(key).is_some() {
            problems.push(ConfigProblem::new(
                file,
                key,
                format!("{key} are not configured here: each one is its own file, {what}"),
            ));
        }
    }
    merge_tables(tree, layer, "", file, origins);
}

fn merge_tables(dst: &mut Table, src: Table, prefix: &str, file: &Path, origins: &mut Origins) {
    for (key, value) in src {
        let key_path = join_key(prefix, &key);
        match (dst.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) => {
                origins.set(&key_path, file);
                merge_tables(existing, incoming, &key_path, file, origins);
            }
            (_, value) => {
                origins.set_all(&key_path, &value, file);
                dst.insert(key, value);
            }
        }
    }
}

/// Applies `SYNCHUB__A__B=value` as `a.b = value`, in variable-name order.
fn apply_env_overrides(
    tree: &mut Table,
    env: &[(String, String)],
    origins: &mut Origins,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut overrides: Vec<(&str, &str, &str)> = env
        .iter()
        .filter_map(|(name, value)| {
            name.strip_prefix(ENV_PREFIX)
                .map(|rest| (name.as_str(), rest, value.as_str()))
        })
        .collect();
    overrides.sort();
    'vars: for (name, rest, raw) in overrides {
        let origin = PathBuf::from(format!("env:{name}"));
        let segments: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if segments.iter().any(String::is_empty) {
            problems.push(ConfigProblem::new(
                &origin,
                "",
                "empty path segment: write SYNCHUB__SECTION__KEY with exactly two underscores \
                 between segments",
            ));
            continue;
        }
        if segments[0] == "routes" {
            problems.push(ConfigProblem::new(
                &origin,
                segments.join("."),
                "routes cannot be overridden from the environment: edit the route file",
            ));
            continue;
        }
        let (last, parents) = segments
            .split_last()
            .expect("split yields at least one segment");
        let mut table = &mut *tree;
        let mut key_path = String::new();
        for segment in parents {
            key_path = join_key(&key_path, segment);
            let entry = table.entry(segment.clone()).or_insert_with(|| {
                origins.set(&key_path, &origin);
                Value::Table(Table::new())
            });
            table = match entry {
                Value::Table(inner) => inner,
                other => {
                    problems.push(ConfigProblem::new(
                        &origin,
                        &key_path,
                        format!(
                            "cannot override a key inside `{key_path}`: it is a {}, not a table",
                            other.type_str()
                        ),
                    ));
                    continue 'vars;
                }
            };
        }
        key_path = join_key(&key_path, last);
        let value = env_value(table.get(last.as_str()), raw);
        origins.set_all(&key_path, &value, &origin);
        table.insert(last.clone(), value);
    }
}

/// An override keeps a string setting a string; any other existing setting is parsed as a
/// TOML value (`8080`, `true`, `["a"]`); a new setting becomes a number, boolean, array or
/// inline table when it reads as one, else a string.
fn env_value(existing: Option<&Value>, raw: &str) -> Value {
    let parsed = || -> Option<Value> {
        let mut table: Table = toml::from_str(&format!("v = {raw}")).ok()?;
        table.remove("v")
    };
    match existing {
        Some(Value::String(_)) => Value::String(raw.to_owned()),
        Some(_) => parsed().unwrap_or_else(|| Value::String(raw.to_owned())),
        // Arrays and inline tables too: `SYNCHUB__AUTH__API_KEYS='[{ name = "a", ... }]'`
        // where no file sets the key (no string setting reads as `[...]` or `{...}`).
        None => match parsed() {
            Some(
                v @ (Value::Integer(_)
                | Value::Float(_)
                | Value::Boolean(_)
                | Value::Array(_)
                | Value::Table(_)),
            ) => v,
            _ => Value::String(raw.to_owned()),
        },
    }
}

/// Key path segment as serde_path_to_error reports it.
enum Segment {
    Key(String),
    Index(usize),
}

/// One `[section]`; its defaults when it cannot be read (the problem is reported).
fn section<T: DeserializeOwned + Default>(
    value: Value,
    key: &str,
    origins: &Origins,
    problems: &mut Vec<ConfigProblem>,
) -> T {
    deserialize_collecting(value, key, origins, problems).unwrap_or_default()
}

/// Deserializes one section, endpoint body or route. An unknown field is reported, dropped
/// and the rest tried again, so every unknown field shows up at once; any other error is
/// reported and ends the attempt (`None`).
fn deserialize_collecting<T: DeserializeOwned>(
    mut value: Value,
    prefix: &str,
    origins: &Origins,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    for _ in 0..MAX_UNKNOWN_FIELDS {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(parsed) => return Some(parsed),
            Err(error) => error,
        };
        let segments: Vec<Segment> = error
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                _ => None,
            })
            .collect();
        let key_path = segments
            .iter()
            .fold(prefix.to_owned(), |path, segment| match segment {
                Segment::Key(key) => join_key(&path, key),
                Segment::Index(index) => format!("{path}[{index}]"),
            });
        let message = without_string_value(error.inner().message());
        let unknown = message.starts_with("unknown field");
        problems.push(ConfigProblem::new(
            origins.file_for(&key_path),
            key_path,
            message,
        ));
        if !(unknown && remove_at(&mut value, &segments)) {
            return None;
        }
    }
    None
}

/// serde quotes a wrongly typed string in its message; the string may be a secret that was
/// put under the wrong key, so the message keeps only the type.
fn without_string_value(message: &str) -> String {
    for lead in ["invalid type: string ", "invalid value: string "] {
        if let Some(rest) = message.strip_prefix(lead)
            && let Some(cut) = rest.rfind(", expected ")
        {
            return format!("{}{}", lead.trim_end(), &rest[cut..]);
        }
    }
    message.to_owned()
}

fn remove_at(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        let next = match (current, segment) {
            (Value::Table(table), Segment::Key(key)) => table.get_mut(key),
            (Value::Array(array), Segment::Index(index)) => array.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    match (current, last) {
        (Value::Table(table), Segment::Key(key)) => table.remove(key).is_some(),
        _ => false,
    }
}

fn load_endpoints(
    value: Value,
    origins: &Origins,
    problems: &mut Vec<ConfigProblem>,
) -> BTreeMap<String, EndpointConfig> {
    let Value::Table(tables) = value else {
        problems.push(ConfigProblem::new(
            origins.file_for("endpoints"),
            "endpoints",
            "must be a table of endpoints",
        ));
        return BTreeMap::new();
    };
    let mut endpoints = BTreeMap::new();
    for (id, value) in tables {
        let key_path = join_key("endpoints", &id);
        if let Some(endpoint) = load_endpoint(value, &key_path, origins, problems) {
            endpoints.insert(id, endpoint);
        }
    }
    endpoints
}

/// Dispatches on `type` by hand instead of through serde's internally tagged enum: serde
/// buffers the body first and then loses the key path of errors inside it.
fn load_endpoint(
    value: Value,
    key_path: &str,
    origins: &Origins,
    problems: &mut Vec<ConfigProblem>,
) -> Option<EndpointConfig> {
    let expected = EndpointConfig::TYPES.map(|t| format!("`{t}`")).join(", ");
    let mut problem = |path: &str, message: String| {
        problems.push(ConfigProblem::new(origins.file_for(path), path, message));
    };
    let Value::Table(mut table) = value else {
        problem(key_path, "an endpoint must be a table".to_owned());
        return None;
    };
    let type_path = join_key(key_path, "type");
    let kind = match table.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(other) => {
            problem(
                &type_path,
                format!(
                    "must be a string, one of {expected}; got a {}",
                    other.type_str()
                ),
            );
            return None;
        }
        None => {
            problem(key_path, format!("missing field `type`, one of {expected}"));
            return None;
        }
    };
    let body = Value::Table(table);
    match kind.as_str() {
        "rest" => {
            deserialize_collecting(body, key_path, origins, problems).map(EndpointConfig::Rest)
        }
        "crm_store" => {
            deserialize_collecting(body, key_path, origins, problems).map(EndpointConfig::CrmStore)
        }
        "amqp" => {
            deserialize_collecting(body, key_path, origins, problems).map(EndpointConfig::Amqp)
        }
        "soap" => {
            deserialize_collecting(body, key_path, origins, problems).map(EndpointConfig::Soap)
        }
        "sftp" => {
            deserialize_collecting(body, key_path, origins, problems).map(EndpointConfig::Sftp)
        }
        "import" => {
            deserialize_collecting(body, key_path, origins, problems).map(EndpointConfig::Import)
        }
        other => {
            problem(
                &type_path,
                format!("unknown endpoint type `{other}`, expected one of {expected}"),
            );
            None
        }
    }
}

/// Hashes are compared as lower-case hex; accept upper case in files.
fn normalise_hashes(auth: &mut AuthSettings) {
    for key in &mut auth.api_keys {
        key.key_sha256.make_ascii_lowercase();
    }
    for operator in &mut auth.operators {
        operator.token_sha256.make_ascii_lowercase();
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

impl Settings {
    /// Cross-reference and policy checks that need no I/O: routes name existing endpoints of
    /// the right direction, known schemas and sane retry policies; the purge schedule is a
    /// 5-field cron; dealer IT operators have a dealer code; key and token hashes are sha256
    /// hex; a REST `out` endpoint has a URL; every `*_env` secret variable named is set; and
    /// the `production` profile refuses the public demo credentials (naming the key or
    /// operator, never the secret).
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key_path: String, message: String| {
            problems.push(ConfigProblem::new(
                self.origins.file_for(&key_path),
                key_path,
                message,
            ));
        };

        if self.http.max_body_bytes == 0 {
            problem("http.max_body_bytes".into(), "must be at least 1".into());
        }
        if self.http.max_records == 0 {
            problem("http.max_records".into(), "must be at least 1".into());
        }
        if self.http.listen.trim().is_empty() {
            problem(
                "http.listen".into(),
                "must be host:port, e.g. 127.0.0.1:8080".into(),
            );
        }

        let url = self.store.url.as_str();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            // The URL itself is not repeated: it may hold a password.
            problem(
                "store.url".into(),
                "must start with sqlite: or postgres:// (postgresql://)".into(),
            );
        }
        if let Err(e) = parse_cron(&self.store.purge_schedule) {
            problem("store.purge_schedule".into(), e);
        }

        if self.dispatch.workers == 0 {
            problem("dispatch.workers".into(), "must be at least 1".into());
        }
        if self.dispatch.claim_batch < 1 {
            problem("dispatch.claim_batch".into(), "must be at least 1".into());
        }
        if self.dispatch.lease_secs == 0 {
            problem("dispatch.lease_secs".into(), "must be at least 1".into());
        }

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problem(
                "log.level".into(),
                format!("not a log filter such as `info` or `info,synchub=debug`: {e}"),
            );
        }

        self.validate_auth(&mut problem);
        for (id, endpoint) in &self.endpoints {
            self.validate_endpoint(id, endpoint, &mut problem);
        }
        for (id, route) in &self.routes {
            self.validate_route(id, route, &mut problem);
        }
        problems
    }

    fn validate_auth(&self, problem: &mut impl FnMut(String, String)) {
        let demo: BTreeMap<String, &str> = DEMO_CREDENTIALS
            .iter()
            .map(|credential| (sha256_hex(credential), *credential))
            .collect();
        let production = self.profile == Profile::Production;

        for (i, u) in self.auth.soap_users.iter().enumerate() {
            let at = format!("auth.soap_users[{i}]");
            match (&u.password, &u.password_env) {
                (Some(_), Some(_)) | (None, None) => problem(
                    format!("{at}.password_env"),
                    "set exactly one of password (local demo only) and password_env".into(),
                ),
                (Some(pw), None) if production && DEMO_CREDENTIALS.contains(&pw.as_str()) => {
                    problem(
                        format!("{at}.password"),
                        format!(
                            "SOAP user `{}` uses a public demo credential; the production profile \
                             refuses demo credentials",
                            u.username
                        ),
                    )
                }
                (Some(_), None) if production => problem(
                    format!("{at}.password"),
                    "passwords are not written in files in production: name the variable in \
                     password_env"
                        .into(),
                ),
                (None, Some(var)) if !self.secrets.contains(var) => problem(
                    format!("{at}.password_env"),
                    format!("missing secret: environment variable {var} is not set"),
                ),
                _ => {}
            }
        }

        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            let at = format!("auth.api_keys[{i}]");
            if key.name.trim().is_empty() {
                problem(format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(key.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("api key `{}` is configured twice", key.name),
                );
            }
            if !is_sha256_hex(&key.key_sha256) {
                problem(
                    format!("{at}.key_sha256"),
                    "must be the 64 hex digits of the key's sha256".into(),
                );
            } else if !hashes.insert(key.key_sha256.as_str()) {
                problem(
                    format!("{at}.key_sha256"),
                    format!("api key `{}` has the same key as an earlier one", key.name),
                );
            }
            if production && demo.contains_key(&key.key_sha256) {
                problem(
                    format!("{at}.key_sha256"),
                    format!(
                        "api key `{}` is a public demo credential; the production profile \
                         refuses demo credentials",
                        key.name
                    ),
                );
            }
            if key.system.trim().is_empty() {
                problem(format!("{at}.system"), "must not be empty".into());
            }
            match &key.dealer_code {
                Some(code) if code.trim().is_empty() => {
                    problem(format!("{at}.dealer_code"), "must not be empty".into());
                }
                None if key.system == "dms" => problem(
                    format!("{at}.dealer_code"),
                    format!(
                        "api key `{}` of system dms must be bound to its dealer with dealer_code",
                        key.name
                    ),
                ),
                _ => {}
            }
        }

        let mut users = BTreeSet::new();
        let mut tokens = BTreeSet::new();
        for (i, operator) in self.auth.operators.iter().enumerate() {
            let at = format!("auth.operators[{i}]");
            if operator.user.trim().is_empty() {
                problem(format!("{at}.user"), "must not be empty".into());
            } else if !users.insert(operator.user.as_str()) {
                problem(
                    format!("{at}.user"),
                    format!("operator `{}` is configured twice", operator.user),
                );
            }
            if !is_sha256_hex(&operator.token_sha256) {
                problem(
                    format!("{at}.token_sha256"),
                    "must be the 64 hex digits of the token's sha256".into(),
                );
            } else if !tokens.insert(operator.token_sha256.as_str()) {
                problem(
                    format!("{at}.token_sha256"),
                    format!(
                        "operator `{}` has the same token as an earlier operator",
                        operator.user
                    ),
                );
            }
            if production && demo.contains_key(&operator.token_sha256) {
                problem(
                    format!("{at}.token_sha256"),
                    format!(
                        "operator `{}` uses a public demo credential; the production profile \
                         refuses demo credentials",
                        operator.user
                    ),
                );
            }
            match (operator.role, &operator.dealer_code) {
                (Role::DealerIt, None) => problem(
                    format!("{at}.dealer_code"),
                    format!(
                        "operator `{}` has role dealer_it and needs the dealer_code it may see",
                        operator.user
                    ),
                ),
                (Role::DealerIt, Some(code)) if code.trim().is_empty() => {
                    problem(format!("{at}.dealer_code"), "must not be empty".into());
                }
                (Role::Admin, Some(_)) => problem(
                    format!("{at}.dealer_code"),
                    format!(
                        "operator `{}` has role admin, which sees all dealers; remove \
                         dealer_code or use role dealer_it",
                        operator.user
                    ),
                ),
                _ => {}
            }
        }
    }

    fn validate_endpoint(
        &self,
        id: &str,
        endpoint: &EndpointConfig,
        problem: &mut impl FnMut(String, String),
    ) {
        let at = join_key("endpoints", id);
        for (field, var) in endpoint.secret_env_vars() {
            if !is_env_var_name(var) {
                problem(
                    format!("{at}.{field}"),
                    "must name an environment variable (letters, digits and '_')".into(),
                );
            } else if !self.secrets.contains(var) {
                problem(
                    format!("{at}.{field}"),
                    format!("missing secret: environment variable {var} is not set"),
                );
            }
        }
        match endpoint {
            EndpointConfig::Rest(rest) => match rest.direction {
                Direction::Out => {
                    match rest.url.as_deref() {
                        None => problem(format!("{at}.url"), "required for direction out".into()),
                        Some(url) => {
                            if let Err(e) = check_http_url(url) {
                                problem(format!("{at}.url"), e);
                            }
                        }
                    }
                    if rest.timeout_ms == 0 {
                        problem(format!("{at}.timeout_ms"), "must be at least 1".into());
                    }
                    for (name, value) in &rest.headers {
                        let key = join_key(&format!("{at}.headers"), name);
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            problem(key, "not a valid header name".into());
                        } else if CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                            problem(
                                key,
                                "credentials never go in files: name the variable that holds the \
                                 token in bearer_token_env"
                                    .into(),
                            );
                        } else if http::HeaderValue::from_str(value).is_err() {
                            problem(key, "not a valid header value".into());
                        }
                    }
                }
                Direction::In => {
                    // Partners authenticate with [[auth.api_keys]]; outbound settings here
                    // would be silently ignored.
                    for (field, set) in [
                        ("url", rest.url.is_some()),
                        ("bearer_token_env", rest.bearer_token_env.is_some()),
                        ("headers", !rest.headers.is_empty()),
                    ] {
                        if set {
                            problem(
                                format!("{at}.{field}"),
                                "only applies to direction out".into(),
                            );
                        }
                    }
                }
            },
            EndpointConfig::CrmStore(_) => {}
            EndpointConfig::Import(i) => {
                for (field, message) in i.problems() {
                    problem(format!("{at}.{field}"), message);
                }
            }
            EndpointConfig::Amqp(a) => self.validate_amqp(&at, a, problem),
            EndpointConfig::Soap(x) => Self::validate_soap(&at, x, problem),
            EndpointConfig::Sftp(s) => {
                for (field, message) in crate::sftp::config_problems(id, s) {
                    problem(format!("{at}.{field}"), message);
                }
            }
        }
    }

    fn validate_soap(at: &str, x: &SoapEndpoint, problem: &mut impl FnMut(String, String)) {
        match x.direction {
            Direction::Out => {
                match x.url.as_deref() {
                    None => problem(format!("{at}.url"), "required for direction out".into()),
                    Some(url) => {
                        if let Err(e) = check_http_url(url) {
                            problem(format!("{at}.url"), e);
                        }
                    }
                }
                if x.timeout_ms == 0 {
                    problem(format!("{at}.timeout_ms"), "must be at least 1".into());
                }
                // DCS authenticates every call with a WS-Security UsernameToken.
                for (field, set) in [
                    ("username", x.username.is_some()),
                    ("password_env", x.password_env.is_some()),
                ] {
                    if !set {
                        problem(
                            format!("{at}.{field}"),
                            "required for direction out (WS-Security UsernameToken)".into(),
                        );
                    }
                }
            }
            Direction::In => {
                if x.max_body_bytes < 1024 {
                    problem(
                        format!("{at}.max_body_bytes"),
                        "must be at least 1024".into(),
                    );
                }
                for (field, set) in [
                    ("enabled", !x.enabled),
                    ("url", x.url.is_some()),
                    ("username", x.username.is_some()),
                    ("password_env", x.password_env.is_some()),
                ] {
                    if set {
                        problem(
                            format!("{at}.{field}"),
                            "only applies to direction out".into(),
                        );
                    }
                }
            }
        }
    }

    fn validate_amqp(&self, at: &str, a: &AmqpEndpoint, problem: &mut impl FnMut(String, String)) {
        if !(a.url.starts_with("amqp://") || a.url.starts_with("amqps://")) {
            problem(
                format!("{at}.url"),
                "must start with amqp:// or amqps://".into(),
            );
        }
        if self.profile == Profile::Production && a.url.contains("guest:guest@") {
            problem(
                format!("{at}.url"),
                "uses RabbitMQ's public guest/guest credential; the production profile refuses \
                 demo credentials (name the password's variable in password_env)"
                    .into(),
            );
        }
        if a.confirm_timeout_ms == 0 {
            problem(
                format!("{at}.confirm_timeout_ms"),
                "must be at least 1".into(),
            );
        }
        match a.direction {
            Direction::In => {
                if a.prefetch == 0 {
                    problem(format!("{at}.prefetch"), "must be at least 1".into());
                }
                if a.routing_key.is_some() {
                    problem(
                        format!("{at}.routing_key"),
                        "only applies to direction out".into(),
                    );
                }
                for (i, q) in a.queues.iter().flatten().enumerate() {
                    for (field, v) in [
                        ("queue", &q.queue),
                        ("routing_key", &q.routing_key),
                        ("record_type", &q.record_type),
                    ] {
                        if v.trim().is_empty() {
                            problem(
                                format!("{at}.queues[{i}].{field}"),
                                "must not be empty".into(),
                            );
                        }
                    }
                }
            }
            Direction::Out => {
                if a.queues.is_some() {
                    problem(
                        format!("{at}.queues"),
                        "only applies to direction in".into(),
                    );
                }
                if let Some(k) = &a.routing_key
                    && k.matches('{').count() != k.matches('}').count()
                {
                    problem(
                        format!("{at}.routing_key"),
                        "unbalanced `{` / `}` in the template".into(),
                    );
                }
            }
        }
    }

    fn validate_route(
        &self,
        id: &str,
        route: &RouteConfig,
        problem: &mut impl FnMut(String, String),
    ) {
        let at = join_key("routes", id);
        // An endpoint whose file failed to load was reported already; no second problem.
        let known = |endpoint: &str| self.origins.is_defined(&join_key("endpoints", endpoint));

        match self.endpoints.get(&route.from) {
            Some(endpoint) if !endpoint.is_source() => problem(
                format!("{at}.from"),
                format!(
                    "endpoint `{}` only delivers (direction out); a route takes records from an \
                     inbound endpoint",
                    route.from
                ),
            ),
            Some(_) => {}
            None if known(&route.from) => {}
            None => problem(
                format!("{at}.from"),
                format!("no endpoint `{}`{}", route.from, self.endpoint_hint()),
            ),
        }
        if route.record_type.trim().is_empty() {
            problem(format!("{at}.record_type"), "must not be empty".into());
        }
        if route.when.as_deref().is_some_and(|w| w.trim().is_empty()) {
            problem(
                format!("{at}.when"),
                "must not be empty (leave it out to take every record)".into(),
            );
        }
        if let Some(schema) = &route.validate
            && synchub_transform::validate::RecordSchema::from_name(schema).is_none()
        {
            let names: Vec<&str> = synchub_transform::validate::RecordSchema::ALL
                .iter()
                .map(|s| s.name())
                .collect();
            problem(
                format!("{at}.validate"),
                format!(
                    "unknown record schema `{schema}`, expected one of {}",
                    names.join(", ")
                ),
            );
        }
        if route
            .mapping
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            problem(format!("{at}.mapping"), "must not be empty".into());
        }
        match (route.mapping.is_some(), route.mapping_version) {
            (false, Some(_)) => problem(
                format!("{at}.mapping_version"),
                "pins a version but the route has no mapping".into(),
            ),
            (true, Some(0)) => problem(
                format!("{at}.mapping_version"),
                "mapping versions start at 1".into(),
            ),
            _ => {}
        }
        if route.to.is_empty() {
            problem(
                format!("{at}.to"),
                "a route needs at least one target endpoint".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, target) in route.to.iter().enumerate() {
            let key = format!("{at}.to[{i}]");
            if !seen.insert(target.as_str()) {
                problem(key, format!("endpoint `{target}` is listed twice"));
                continue;
            }
            if *target == route.from {
                problem(
                    key,
                    format!("endpoint `{target}` is the route's own source: it would loop"),
                );
                continue;
            }
            match self.endpoints.get(target) {
                Some(endpoint) if !endpoint.is_target() => problem(
                    key,
                    format!(
                        "endpoint `{target}` only receives (direction in); it cannot be a target"
                    ),
                ),
                Some(_) => {}
                None if known(target) => {}
                None => problem(
                    key,
                    format!("no endpoint `{target}`{}", self.endpoint_hint()),
                ),
            }
        }
        if let Some(lane_key) = &route.lane_key
            && (lane_key.is_empty() || lane_key.split('.').any(|s| s.trim().is_empty()))
        {
            problem(
                format!("{at}.lane_key"),
                "must be a dotted path into the record, e.g. `mobile` or `customer.mobile`".into(),
            );
        }
        let retry = &route.retry;
        if retry.max_attempts == 0 {
            problem(
                format!("{at}.retry.max_attempts"),
                "must be at least 1".into(),
            );
        }
        if retry.backoff_ms > retry.max_backoff_ms {
            problem(
                format!("{at}.retry.backoff_ms"),
                format!(
                    "{} is more than max_backoff_ms ({})",
                    retry.backoff_ms, retry.max_backoff_ms
                ),
            );
        }
    }

    fn endpoint_hint(&self) -> String {
        if self.endpoints.is_empty() {
            " (no endpoints are configured)".to_owned()
        } else {
            let ids: Vec<&str> = self.endpoints.keys().map(String::as_str).collect();
            format!(" (known: {})", ids.join(", "))
        }
    }
}

/// Parses a 5-field cron expression (minute hour day-of-month month day-of-week) the way the
/// hub's schedulers do, so `check` and the scheduler agree.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| {
            format!(
                "not a 5-field cron expression (minute hour day month weekday), e.g. \
                 \"30 3 * * *\": {e}"
            )
        })
}

/// Lower-case hex sha256 of `secret`: what `key_sha256` and `token_sha256` hold.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "must start with http:// or https://".to_owned())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("has no valid host".to_owned());
    }
    Ok(())
}

/// `scheme://user:password@host/...` with the password replaced, for `Debug`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:<redacted>@{host}{tail}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Key paths

/// `prefix.key`, quoting keys that are not bare TOML keys (so `.` inside stays readable).
fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// `a.b[2]` -> `a.b` -> `a` -> None.
fn parent_key(path: &str) -> Option<&str> {
    path.rfind(['.', '[']).map(|cut| &path[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A minimal valid layout: config/ with one endpoint each way, routes/ with one route.
    fn layout() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        write(
            dir,
            "config/synchub.toml",
            "[http]\nlisten = \"127.0.0.1:9000\"\n",
        );
        write(
            dir,
            "config/endpoints/rest_in.toml",
            "type = \"rest\"\ndirection = \"in\"\n",
        );
        write(dir, "config/endpoints/crm.toml", "type = \"crm_store\"\n");
        write(
            dir,
            "routes/r1.toml",
            "from = \"rest_in\"\nrecord_type = \"lead\"\nvalidate = \"lead\"\nto = [\"crm\"]\n",
        );
        fs::create_dir_all(dir.join("mappings")).unwrap();
        root
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn profile_parses_and_lists_valid_values() {
        assert_eq!(
            Profile::try_from("production".to_owned()),
            Ok(Profile::Production)
        );
        assert_eq!(Profile::try_from("Local".to_owned()), Ok(Profile::Local));
        let err = Profile::try_from("prod".to_owned()).unwrap_err();
        assert!(err.to_string().contains("local, production"), "{err}");
        assert_eq!(Profile::from_env(&[]), Ok(Profile::Local));
        assert_eq!(
            Profile::from_env(&env(&[("SYNCHUB_PROFILE", "production")])),
            Ok(Profile::Production)
        );
    }

    #[test]
    fn defaults_layers_and_paths() {
        let root = layout();
        let config = root.path().join("config");
        write(
            &config,
            "synchub.local.toml",
            "[store]\npayload_retention_days = 7\n",
        );
        let s = Settings::load(&config, Profile::Local, &[]).unwrap();
        assert_eq!(s.http.listen, "127.0.0.1:9000");
        assert_eq!(s.http.max_records, 1000);
        assert_eq!(s.store.payload_retention_days, 7);
        assert_eq!(s.store.purge_schedule, "30 3 * * *");
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(s.routes_dir(), root.path().join("routes"));
        assert_eq!(s.mappings_dir(), root.path().join("mappings"));
        assert_eq!(s.route_file("r1"), root.path().join("routes/r1.toml"));
        assert!(matches!(
            s.endpoints["crm"],
            EndpointConfig::CrmStore(CrmStoreEndpoint {
                key_field_approval: true
            })
        ));
        assert_eq!(s.routes["r1"].retry, RetryPolicy::default());
        assert!(s.validate().is_empty(), "{:?}", s.validate());

        let p = Settings::load(&config, Profile::Production, &[]).unwrap();
        assert_eq!(p.log.format, LogFormat::Json);
        assert_eq!(p.store.payload_retention_days, 30);
    }

    #[test]
    fn env_overrides_sections_and_endpoints() {
        let root = layout();
        let config = root.path().join("config");
        write(
            &config,
            "endpoints/partner_out.toml",
            "type = \"rest\"\ndirection = \"out\"\nurl = \"http://a\"\nbearer_token_env = \"PARTNER_TOKEN\"\n",
        );
        let vars = env(&[
            ("SYNCHUB__HTTP__LISTEN", "0.0.0.0:1234"),
            ("SYNCHUB__HTTP__MAX_RECORDS", "5"),
            ("SYNCHUB__STORE__URL", "postgres://u:pw@localhost/db"),
            ("SYNCHUB__ENDPOINTS__PARTNER_OUT__TIMEOUT_MS", "2500"),
            (
                "SYNCHUB__ENDPOINTS__PARTNER_OUT__URL",
                "https://partner.example/api",
            ),
            ("SYNCHUB__ENDPOINTS__CRM__KEY_FIELD_APPROVAL", "false"),
            ("PARTNER_TOKEN", "s3cret-token"),
        ]);
        let s = Settings::load(&config, Profile::Local, &vars).unwrap();
        assert_eq!(s.http.listen, "0.0.0.0:1234");
        assert_eq!(s.http.max_records, 5);
        assert_eq!(s.store.url, "postgres://u:pw@localhost/db");
        let EndpointConfig::Rest(rest) = &s.endpoints["partner_out"] else {
            panic!("rest expected")
        };
        assert_eq!(rest.timeout_ms, 2500);
        assert_eq!(rest.url.as_deref(), Some("https://partner.example/api"));
        assert_eq!(
            s.endpoints["crm"],
            EndpointConfig::CrmStore(CrmStoreEndpoint {
                key_field_approval: false
            })
        );
        assert!(s.secrets.contains("PARTNER_TOKEN"));
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        // Neither the token nor the database password is ever printed.
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret-token"), "{debug}");
        assert!(!debug.contains("pw@"), "{debug}");
        assert!(debug.contains("PARTNER_TOKEN"));
    }

    #[test]
    fn a_disabled_soap_outbound_needs_no_secret_until_enabled() {
        let root = layout();
        let config = root.path().join("config");
        write(
            &config,
            "endpoints/dcs.toml",
            "type = \"soap\"\ndirection = \"out\"\nenabled = false\nurl = \"http://127.0.0.1:8090/dcs\"\n\
             username = \"u\"\npassword_env = \"DCS_PW\"\n",
        );
        let s = Settings::load(&config, Profile::Production, &[]).unwrap();
        let EndpointConfig::Soap(x) = &s.endpoints["dcs"] else {
            panic!("soap expected")
        };
        assert!(!x.enabled);
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        let vars = env(&[("SYNCHUB__ENDPOINTS__DCS__ENABLED", "true")]);
        let problems = Settings::load(&config, Profile::Local, &vars)
            .unwrap()
            .validate();
        assert!(
            problems
                .iter()
                .any(|p| p.key_path == "endpoints.dcs.password_env"
                    && p.message.contains("DCS_PW is not set")),
            "{problems:?}"
        );
        let vars = env(&[
            ("SYNCHUB__ENDPOINTS__DCS__ENABLED", "true"),
            ("DCS_PW", "pw"),
        ]);
        let s = Settings::load(&config, Profile::Local, &vars).unwrap();
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        write(
            &config,
            "endpoints/dcs.toml",
            "type = \"soap\"\ndirection = \"in\"\nenabled = false\n",
        );
        let problems = Settings::load(&config, Profile::Local, &[])
            .unwrap()
            .validate();
        assert!(
            problems
                .iter()
                .any(|p| p.key_path == "endpoints.dcs.enabled"),
            "{problems:?}"
        );
    }

    #[test]
    fn env_override_problems_name_the_variable() {
        let root = layout();
        let config = root.path().join("config");
        let vars = env(&[
            ("SYNCHUB__HTTP__MAX_RECORDS", "many"),
            ("SYNCHUB__HTTP__BOGUS", "1"),
            ("SYNCHUB__ROUTES__R1__FROM", "x"),
        ]);
        let problems = Settings::load(&config, Profile::Local, &vars).unwrap_err();
        let has = |file: &str, key: &str| {
            problems
                .iter()
                .any(|p| p.file == Path::new(file) && p.key_path == key)
        };
        assert!(
            has("env:SYNCHUB__HTTP__MAX_RECORDS", "http.max_records"),
            "{problems:#?}"
        );
        assert!(
            has("env:SYNCHUB__HTTP__BOGUS", "http.bogus"),
            "{problems:#?}"
        );
        assert!(
            has("env:SYNCHUB__ROUTES__R1__FROM", "routes.r1.from"),
            "{problems:#?}"
        );
    }

    #[test]
    fn every_unknown_field_and_syntax_error_is_reported() {
        let root = layout();
        let config = root.path().join("config");
        write(
            &config,
            "synchub.toml",
            "[http]\nlistne = \"x\"\nmax_recods = 3\n[stor]\nurl = \"sqlite://x\"\n",
        );
        write(&config, "synchub.local.toml", "[log\nlevel = \"debug\"\n");
        write(
            &config,
            "endpoints/rest_in.toml",
            "type = \"rest\"\ndirection = \"in\"\ntimeout = 3\n",
        );
        write(&config, "endpoints/soap_in.toml", "type = \"smtp\"\n");
        write(
            root.path(),
            "routes/r2.toml",
            "from = \"rest_in\"\nrecord_type = \"lead\"\nto = [\"crm\"]\n[retry]\nmax_attempt = 3\n",
        );
        let problems = Settings::load(&config, Profile::Local, &[]).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let base = config.join("synchub.toml");
        let find = |key: &str| problems.iter().find(|p| p.key_path == key);
        assert_eq!(
            find("http.listne").map(|p| &p.file),
            Some(&base),
            "{shown:#?}"
        );
        assert_eq!(
            find("http.max_recods").map(|p| &p.file),
            Some(&base),
            "{shown:#?}"
        );
        assert_eq!(find("stor").map(|p| &p.file), Some(&base), "{shown:#?}");
        let syntax = problems
            .iter()
            .find(|p| p.file == config.join("synchub.local.toml"))
            .expect("syntax error reported");
        assert!(syntax.message.contains("line 1"), "{syntax}");
        assert_eq!(
            find("endpoints.rest_in.timeout").map(|p| &p.file),
            Some(&config.join("endpoints/rest_in.toml")),
            "{shown:#?}"
        );
        assert!(find("endpoints.soap_in.type").is_some(), "{shown:#?}");
        assert_eq!(
            find("routes.r2.retry.max_attempt").map(|p| &p.file),
            Some(&root.path().join("routes/r2.toml")),
            "{shown:#?}"
        );
    }

    #[test]
    fn partial_load_keeps_the_good_parts() {
        let root = layout();
        let config = root.path().join("config");
        write(
            &config,
            "synchub.toml",
            "[http]\nlistne = \"x\"\nmax_records = 7\n",
        );
        let (s, problems) = Settings::load_partial(&config, Profile::Local, &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(s.http.max_records, 7);
        assert!(s.routes.contains_key("r1"));
    }

    #[test]
    fn endpoint_dispatch_agrees_with_the_serde_enum() {
        let bodies = [
            "type = \"rest\"\ndirection = \"out\"\nurl = \"http://x\"\nheaders = { a = \"b\" }\nmethod = \"PUT\"\n",
            "type = \"crm_store\"\nkey_field_approval = false\n",
            "type = \"amqp\"\ndirection = \"in\"\nurl = \"amqp://h\"\nprefetch = 8\nqueues = [{ queue = \"q\", routing_key = \"k\", record_type = \"lead_result\" }]\n",
            "type = \"soap\"\ndirection = \"out\"\nurl = \"http://dcs\"\nusername = \"u\"\npassword_env = \"P\"\n",
            "type = \"sftp\"\ndirection = \"in\"\nhost = \"h\"\nuser = \"u\"\nprivate_key_file = \"k\"\nknown_hosts_file = \"kh\"\ndir = \"/d\"\npattern = \"*.csv\"\ncharset = \"gb18030\"\nnest_prefixes = [\"owner_\"]\n",
            "type = \"import\"\nbatch = 200\ncharset = \"gb18030\"\n[customers]\nrequire = [\"id_no\"]\nflag_same_mobile_different_name = false\n",
        ];
        let mut seen = BTreeSet::new();
        for body in bodies {
            let via_serde: EndpointConfig = toml::from_str(body).unwrap();
            let mut problems = Vec::new();
            let table: Table = toml::from_str(body).unwrap();
            let via_loader = load_endpoint(
                Value::Table(table),
                "endpoints.x",
                &Origins::default(),
                &mut problems,
            );
            assert_eq!(Some(&via_serde), via_loader.as_ref(), "{problems:?}");
            seen.insert(via_serde.type_name());
        }
        assert_eq!(
            seen.len(),
            EndpointConfig::TYPES.len(),
            "a body per endpoint type"
        );
    }

    #[test]
    fn validation_finds_cross_reference_and_policy_problems() {
        let root = layout();
        let config = root.path().join("config");
        write(
            &config,
            "synchub.toml",
            r#"
[store]
purge_schedule = "0 0 3 * * *"
url = "mysql://u:hunter2@db/x"

[[auth.api_keys]]
name = "dms1"
key_sha256 = "DC4903D5F722E347A591120DAEA50FE04ECE0488607B3A6E96144DA4233C9895"
system = "dms"

[[auth.operators]]
user = "it"
token_sha256 = "abc"
role = "dealer_it"
"#,
        );
        write(
            &config,
            "endpoints/out.toml",
            "type = \"rest\"\ndirection = \"out\"\nbearer_token_env = \"OUT_TOKEN\"\n[headers]\nAuthorization = \"Bearer x\"\n",
        );
        write(
            root.path(),
            "routes/r2.toml",
            r#"
from = "out"
record_type = "lead"
validate = "leed"
mapping_version = 2
to = ["crm", "nowhere", "rest_in"]
[retry]
max_attempts = 0
backoff_ms = 5000
max_backoff_ms = 10
"#,
        );
        let s = Settings::load(&config, Profile::Production, &[]).unwrap();
        assert_eq!(s.auth.api_keys[0].key_sha256, sha256_hex("demo-dms-D0001"));
        let problems = s.validate();
        let keys: BTreeSet<&str> = problems.iter().map(|p| p.key_path.as_str()).collect();
        for key in [
            "store.purge_schedule",
            "store.url",
            "auth.api_keys[0].dealer_code",
            "auth.api_keys[0].key_sha256",
            "auth.operators[0].token_sha256",
            "auth.operators[0].dealer_code",
            "endpoints.out.url",
            "endpoints.out.bearer_token_env",
            "endpoints.out.headers.Authorization",
            "routes.r2.from",
            "routes.r2.validate",
            "routes.r2.mapping_version",
            "routes.r2.to[1]",
            "routes.r2.to[2]",
            "routes.r2.retry.max_attempts",
            "routes.r2.retry.backoff_ms",
        ] {
            assert!(keys.contains(key), "{key} missing from {problems:#?}");
        }
        let shown = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("demo-dms"), "{shown}");
        assert!(shown.contains("OUT_TOKEN"), "{shown}");
        let demo = problems
            .iter()
            .find(|p| p.key_path == "auth.api_keys[0].key_sha256")
            .unwrap();
        assert!(demo.message.contains("dms1"), "{demo}");
        assert_eq!(demo.file, config.join("synchub.toml"));
    }

    #[test]
    fn wrongly_typed_strings_are_not_echoed() {
        assert_eq!(
            without_string_value("invalid type: string \"hunter2, x\", expected u32"),
            "invalid type: string, expected u32"
        );
        assert_eq!(
            without_string_value("missing field `a`"),
            "missing field `a`"
        );
    }

    #[test]
    fn redacts_database_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db?x=1"),
            "postgres://u:<redacted>@h:5432/db?x=1"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn cron_is_five_fields() {
        assert!(parse_cron("30 3 * * *").is_ok());
        assert!(parse_cron("0 30 3 * * *").is_err());
        assert!(parse_cron("61 3 * * *").is_err());
    }

    #[test]
    fn config_dir_parent_resolution() {
        let s = Settings {
            config_dir: PathBuf::from("config"),
            ..Settings::default()
        };
        assert_eq!(s.routes_dir(), PathBuf::from("routes"));
        let s = Settings {
            config_dir: PathBuf::from("."),
            ..Settings::default()
        };
        assert_eq!(s.routes_dir(), PathBuf::from("./../routes"));
    }
}
