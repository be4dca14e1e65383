//! The adapter's error type: what failed talking to an SFTP server, named so that an operator
//! can act on it (which host, which key fingerprint, which file, which operation).

use std::time::Duration;

use synchub_adapter_sdk::AcceptError;

use crate::ledger::LedgerError;

/// Everything that can go wrong in the SFTP adapter.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    /// The server offered a host key that `known_hosts` does not list for this host:port.
    #[error(
        "host key of {host_port} is unknown: the server offered {algorithm} {fingerprint}, which \
         {known_hosts} does not list for {host_port}; connection refused"
    )]
    HostKeyUnknown {
        host_port: String,
        algorithm: String,
        fingerprint: String,
        known_hosts: String,
    },
    /// `known_hosts` lists other keys for this host:port: possible man-in-the-middle or a
    /// re-installed server. An operator must check and update `known_hosts`.
    #[error(
        "host key of {host_port} CHANGED: the server offered {algorithm} {fingerprint}, but \
         {known_hosts} lists another key for {host_port} (line {line}); connection refused"
    )]
    HostKeyChanged {
        host_port: String,
        algorithm: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    /// The offered key is marked `@revoked` in `known_hosts`.
    #[error(
        "host key of {host_port} is REVOKED: the server offered {algorithm} {fingerprint}, marked \
         @revoked in {known_hosts} (line {line}); connection refused"
    )]
    HostKeyRevoked {
        host_port: String,
        algorithm: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    /// The known_hosts file or the private key file cannot be used.
    #[error("{what}: {reason}")]
    Setup { what: String, reason: String },
    /// The server refused our key.
    #[error("authentication as {user} on {host_port} refused (key {key_file})")]
    AuthRefused {
        user: String,
        host_port: String,
        key_file: String,
    },
    /// TCP or SSH failed (refused, reset, protocol error).
    #[error("connection to {host_port} failed: {reason}")]
    Connect { host_port: String, reason: String },
    /// An operation did not finish in time.
    #[error("{op} timed out after {after:?}")]
    Timeout { op: String, after: Duration },
    /// The server answered an SFTP request with an error, or the session broke during it.
    #[error("{op} failed: {source}")]
    Sftp {
        op: String,
        #[source]
        source: russh_sftp::client::error::Error,
    },
    /// Reading or writing a remote file's bytes failed (connection dropped mid-file).
    #[error("{op} failed: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// The file changed between the hashing pass and the reading pass.
    #[error("{name} changed while it was being read (sha256 {before} then {after}); left in place")]
    ChangedWhileReading {
        name: String,
        before: String,
        after: String,
    },
    /// The target file exists and must not be overwritten.
    #[error("{path} already exists and overwrite is off")]
    Exists { path: String },
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("journal: {0}")]
    Accept(#[from] AcceptError),
}

impl SftpError {
    /// True when retrying cannot help until an operator acts (host key, authentication, key
    /// or known_hosts file): logged at ERROR, everything else at WARN.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            SftpError::HostKeyUnknown { .. }
                | SftpError::HostKeyChanged { .. }
                | SftpError::HostKeyRevoked { .. }
                | SftpError::Setup { .. }
                | SftpError::AuthRefused { .. }
        )
    }

    /// The NoSuchFile status, used to tell "absent" from "cannot tell".
    pub(crate) fn is_no_such_file(&self) -> bool {
        matches!(
            self,
            SftpError::Sftp {
                source: russh_sftp::client::error::Error::Status(s),
                ..
            } if s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile
        )
    }
}

/// For the runtime's supervision and health reporting: problems an operator must fix are
/// configuration errors; the rest are connection trouble.
impl From<SftpError> for synchub_adapter_sdk::AdapterError {
    fn from(e: SftpError) -> Self {
        if e.needs_operator() {
            synchub_adapter_sdk::AdapterError::Config(e.to_string())
        } else {
            synchub_adapter_sdk::AdapterError::NotConnected(e.to_string())
        }
    }
}
