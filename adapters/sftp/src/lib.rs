//! SFTP batch adapter for synchub: polls partner directories for complete files, streams their
//! CSV rows into the journal in batches, and writes outbound files atomically (INTERFACES §4).
//!
//! Crate map:
//! - [`config`]: [`SftpConfig`] (one polled directory) and [`SftpOutboundConfig`], with `validate()`.
//! - [`session`]: [`Connection`], one SSH+SFTP session: key login, strict known_hosts check,
//!   aes256-gcm first, a timeout on every operation.
//! - [`known_hosts`]: the OpenSSH known_hosts parser and check (plain, `[host]:port`, hashed,
//!   `@revoked`).
//! - [`poller`]: [`Poller::poll_once`]: readiness (marker or stable), claim, stream, batch,
//!   archive; [`PollReport`] for the dashboard.
//! - [`ledger`]: the [`Ledger`] trait the runtime implements on its store, and [`MemoryLedger`].
//! - [`csv`]: streaming rows with per-line decoding (UTF-8, GB18030) and per-row problems.
//! - [`writer`]: [`SftpWriter`], `.part` + checked close + rename, and manifests.
//! - [`outbound`]: [`SftpOutbound`], the SDK `Outbound` writing one CSV file per delivery.
//! - [`classify`]: outbound failure → `Outcome` (the README's table).
//! - [`glob`]: the file name pattern matcher.
//! - `testkit` (feature `testkit`): a real sshd on loopback and a fault-injecting TCP proxy.
//!
//! `README.md` in this crate documents the semantics, headers and classification table.

pub mod classify;
pub mod config;
pub mod csv;
pub mod error;
pub mod glob;
pub mod known_hosts;
pub mod ledger;
pub mod outbound;
pub mod poller;
pub mod session;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod writer;

pub use config::{Charset, ConnectionSettings, SftpConfig, SftpOutboundConfig};
pub use error::SftpError;
pub use ledger::{
    ClaimResult, FileCounts, FileFacts, FileOutcome, Ledger, LedgerError, LedgerRow, MemoryLedger,
};
pub use outbound::SftpOutbound;
pub use poller::{FileReport, FileStatus, PollReport, Poller};
pub use session::{Connection, RemoteEntry};
pub use writer::{ManifestInfo, SftpWriter, Written};
