//! synchub: an integration hub that journals every message durably before acknowledging it,
//! routes and maps it by configuration, and delivers it with retries, lanes and parking.
//!
//! Crate map:
//! - `settings`: layered TOML + environment configuration, validated all at once.
//! - `check`: `synchub check`, every configuration problem reported with file and key path.
//! - `store`: the durable journal, CRM tables and dashboard sessions on SQLite (group commit) or
//!   PostgreSQL.
//! - `routing`: the route table compiled from `routes/*.toml`.
//! - `pipeline`: the `Inbox` adapters hand submissions to: validate, map, route, journal.
//! - `direct`: batches applied straight to the CRM store in the transaction that journals them.
//! - `demo`: `synchub demo`, the hub with built-in partner simulators.
//! - `disabled`: the stand-in adapter of an outbound endpoint with `enabled = false`.
//! - `dispatch`: claims due deliveries, calls outbound adapters, retries, parks.
//! - `crm`: the CRM store sink (upserts, history, matching, approvals, change events).
//! - `rules`: lead scoring and distribution rules from `config/rules/` (pure engines).
//! - `sftp`: SFTP endpoints: adapter configs, the store-backed file ledger, poll scheduling.
//! - `extract`: re-pullable extracts from the CRM change log: API, nightly SFTP push, CLI.
//! - `import`: `synchub import`, legacy CSV migration with cleansing rules and a report.
//! - `monitor`: flow gauges (backlog, age, parked, freshness) for Prometheus.
//! - `status`: live endpoint state (up, degraded, down; last contact and error).
//! - `http`: ops API, CRM read API, health and metrics.
//! - `ops`: operator actions (replay, retry, park, bulk, approvals) with their audit log.
//! - `ui`: the server-rendered dashboard at `/ui/`.
//! - `app`: builds and runs the whole hub (shared by `main` and the tests).
//! - `cli`: the command line.

pub mod app;
pub mod check;
pub mod cli;
pub mod crm;
pub mod demo;
pub mod direct;
pub mod disabled;
pub mod dispatch;
pub mod extract;
pub mod http;
pub mod import;
pub mod monitor;
pub mod ops;
pub mod pipeline;
pub mod routing;
pub mod rules;
pub mod schedule;
pub mod settings;
pub mod sftp;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod ui;
