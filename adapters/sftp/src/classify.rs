//! The one place that turns an outbound failure into an `Outcome` (the README's table).
//!
//! Only what no retry can fix is a `Reject`: a body that is not JSON objects, or a different file
//! already sitting under the delivery's name. Everything else, including a changed host key or a
//! refused login, is a `Retry`: an operator can fix those, and the message must still be there
//! when they have (it parks after the route's max attempts and stays visible).

use synchub_adapter_sdk::Outcome;
use synchub_adapter_sdk::error::cause_chain;

use crate::error::SftpError;

/// Outcome for a failed upload.
pub fn classify(e: &SftpError) -> Outcome {
    let reason = e.to_string();
    let chain = cause_chain(e);
    match e {
        SftpError::Exists { .. } => Outcome::Reject {
            reason,
            cause_chain: chain,
        },
        _ => Outcome::Retry {
            reason,
            after: None,
            cause_chain: chain,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_an_existing_file_is_permanent() {
        let exists = SftpError::Exists {
            path: "/in/a.csv".into(),
        };
        assert_eq!(classify(&exists).label(), "reject");
        for e in [
            SftpError::Timeout {
                op: "write".into(),
                after: Duration::from_secs(1),
            },
            SftpError::Connect {
                host_port: "h".into(),
                reason: "refused".into(),
            },
            SftpError::HostKeyUnknown {
                host_port: "[h]:2".into(),
                algorithm: "ssh-ed25519".into(),
                fingerprint: "SHA256:x".into(),
                known_hosts: "kh".into(),
            },
            SftpError::AuthRefused {
                user: "u".into(),
                host_port: "h".into(),
                key_file: "k".into(),
            },
            SftpError::Io {
                op: "write".into(),
                source: std::io::Error::other("reset"),
            },
        ] {
            assert_eq!(classify(&e).label(), "retry", "{e}");
        }
    }
}
