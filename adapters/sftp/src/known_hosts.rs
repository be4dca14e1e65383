//! Strict host key checking against an OpenSSH `known_hosts` file: the offered key must be
//! listed for exactly this host:port, otherwise the connection is refused with the fingerprint.
//!
//! Our own parser rather than russh's helper: that one treats a missing file as "no entries",
//! only calls a key changed when the algorithm matches, and ignores `@revoked`.

use std::path::Path;

use hmac::{Hmac, Mac};
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};

use crate::error::SftpError;
use crate::glob::glob_match;

/// The parsed file. Loaded once per connection, so an operator's edit applies to the next poll.
#[derive(Debug)]
pub struct KnownHosts {
    path: String,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    line: usize,
    revoked: bool,
    patterns: Vec<Pattern>,
    key: PublicKey,
}

#[derive(Debug)]
enum Pattern {
    /// A name or wildcard pattern; `negated` = `!pattern`.
    Plain { pattern: String, negated: bool },
    /// `|1|salt|hash`: HMAC-SHA1 of the host string keyed by the salt (`HashKnownHosts yes`).
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// How OpenSSH names a host in known_hosts: plain for port 22, `[host]:port` otherwise.
pub fn host_port_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

impl KnownHosts {
    pub fn load(path: &Path) -> Result<KnownHosts, SftpError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SftpError::Setup {
            what: format!("known_hosts file {shown}"),
            reason: format!("cannot be read ({e}); host keys are always checked"),
        })?;
        Ok(KnownHosts::parse(&shown, &text))
    }

    pub fn parse(path: &str, text: &str) -> KnownHosts {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let mut revoked = false;
            if first.starts_with('@') {
                match first {
                    "@revoked" => revoked = true,
                    // Certificate authorities: we do not accept host certificates, so a CA line
                    // can never vouch for a key here.
                    _ => continue,
                }
                first = fields.next().unwrap_or_default();
            }
            let (Some(_key_type), Some(b64)) = (fields.next(), fields.next()) else {
                tracing::debug!(path, line = i + 1, "Skipping malformed known_hosts line.");
                continue;
            };
            let Ok(key) = russh::keys::parse_public_key_base64(b64) else {
                tracing::debug!(
                    path,
                    line = i + 1,
                    "Skipping known_hosts line with an unreadable key."
                );
                continue;
            };
            let patterns = first.split(',').filter_map(parse_pattern).collect();
            entries.push(Entry {
                line: i + 1,
                revoked,
                patterns,
                key,
            });
        }
        KnownHosts {
            path: path.to_owned(),
            entries,
        }
    }

    fn entries_for<'a>(&'a self, host_port: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| entry_matches(e, host_port))
    }

    /// Host key algorithms listed for this host, to offer first in the key exchange: a server
    /// with several host keys then shows the one we know instead of a "changed" false alarm.
    pub fn algorithms_for(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let hp = host_port_name(host, port);
        let mut out: Vec<Algorithm> = Vec::new();
        for e in self.entries_for(&hp).filter(|e| !e.revoked) {
            let alg = e.key.algorithm();
            if alg.clone().is_rsa() {
                // An RSA host key is negotiated under its SHA-2 signature names.
                for a in [
                    Algorithm::Rsa {
                        hash: Some(russh::keys::ssh_key::HashAlg::Sha512),
                    },
                    Algorithm::Rsa {
                        hash: Some(russh::keys::ssh_key::HashAlg::Sha256),
                    },
                ] {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            } else if !out.contains(&alg) {
                out.push(alg);
            }
        }
        out
    }

    /// Ok when `offered` is listed for host:port and not revoked.
    pub fn check(&self, host: &str, port: u16, offered: &PublicKey) -> Result<(), SftpError> {
        let hp = host_port_name(host, port);
        let fingerprint = offered.fingerprint(HashAlg::Sha256).to_string();
        let algorithm = offered.algorithm().as_str().to_owned();
        let same = |k: &PublicKey| k.key_data() == offered.key_data();
        let mut first_other_line = None;
        for e in self.entries_for(&hp) {
            if e.revoked {
                if same(&e.key) {
                    return Err(SftpError::HostKeyRevoked {
                        host_port: hp.clone(),
                        algorithm,
                        fingerprint,
                        known_hosts: self.path.clone(),
                        line: e.line,
                    });
                }
                continue;
            }
            if same(&e.key) {
                return Ok(());
            }
            first_other_line.get_or_insert(e.line);
        }
        match first_other_line {
            Some(line) => Err(SftpError::HostKeyChanged {
                host_port: hp,
                algorithm,
                fingerprint,
                known_hosts: self.path.clone(),
                line,
            }),
            None => Err(SftpError::HostKeyUnknown {
                host_port: hp,
                algorithm,
                fingerprint,
                known_hosts: self.path.clone(),
            }),
        }
    }
}

fn parse_pattern(p: &str) -> Option<Pattern> {
    if let Some(rest) = p.strip_prefix("|1|") {
        let (salt, hash) = rest.split_once('|')?;
        return Some(Pattern::Hashed {
            salt: data_encoding::BASE64.decode(salt.as_bytes()).ok()?,
            hash: data_encoding::BASE64.decode(hash.as_bytes()).ok()?,
        });
    }
    let (pattern, negated) = match p.strip_prefix('!') {
        Some(rest) => (rest, true),
        None => (p, false),
    };
    (!pattern.is_empty()).then(|| Pattern::Plain {
        pattern: pattern.to_owned(),
        negated,
    })
}

/// OpenSSH semantics: some pattern matches and no negated pattern does.
fn entry_matches(e: &Entry, host_port: &str) -> bool {
    let mut hit = false;
    for p in &e.patterns {
        match p {
            Pattern::Plain { pattern, negated } => {
                if glob_match(pattern, host_port) {
                    if *negated {
                        return false;
                    }
                    hit = true;
                }
            }
            Pattern::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    continue;
                };
                mac.update(host_port.as_bytes());
                if mac.verify_slice(hash).is_ok() {
                    hit = true;
                }
            }
        }
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two throw-away ed25519 public keys (no private halves anywhere).
    const K1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJ6D7iB6Mus+bNV1uLRXPOF615Vo7I+rtSkYifXXtJJr";
    const K2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAd/mJL2Unp106Gh6NgaBLidZo50FODayOHW098dsn/Z";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    #[test]
    fn listed_key_for_bracketed_port_is_accepted() {
        let kh = KnownHosts::parse("kh", &format!("# c\n\n[127.0.0.1]:2222 ssh-ed25519 {K1}\n"));
        kh.check("127.0.0.1", 2222, &key(K1)).unwrap();
        // Port 22 uses the plain name, so the bracketed entry does not cover it.
        assert!(matches!(
            kh.check("127.0.0.1", 22, &key(K1)),
            Err(SftpError::HostKeyUnknown { .. })
        ));
    }

    #[test]
    fn plain_host_lines_and_lists_match_port_22() {
        let kh = KnownHosts::parse(
            "kh",
            &format!("sftp.osm.example,10.0.0.5 ssh-ed25519 {K1}\n"),
        );
        kh.check("10.0.0.5", 22, &key(K1)).unwrap();
        kh.check("sftp.osm.example", 22, &key(K1)).unwrap();
    }

    #[test]
    fn other_key_for_the_host_is_a_change_naming_fingerprint_and_line() {
        let kh = KnownHosts::parse(
            "/etc/kh",
            &format!("x ssh-ed25519 {K2}\n[h]:2222 ssh-ed25519 {K1}\n"),
        );
        let e = kh.check("h", 2222, &key(K2)).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, SftpError::HostKeyChanged { line: 2, .. }),
            "{msg}"
        );
        let fp = key(K2).fingerprint(HashAlg::Sha256).to_string();
        assert!(
            msg.contains("[h]:2222") && msg.contains(&fp) && msg.contains("/etc/kh"),
            "{msg}"
        );
        assert!(fp.starts_with("SHA256:"));
    }

    #[test]
    fn revoked_key_is_refused_even_when_also_listed() {
        let kh = KnownHosts::parse(
            "kh",
            &format!("@revoked * ssh-ed25519 {K1}\n[h]:2222 ssh-ed25519 {K1}\n"),
        );
        assert!(matches!(
            kh.check("h", 2222, &key(K1)),
            Err(SftpError::HostKeyRevoked { line: 1, .. })
        ));
    }

    #[test]
    fn hashed_and_negated_entries() {
        // `ssh-keygen -H` form of "[h]:2222" (HMAC-SHA1 keyed by the salt).
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"[h]:2222");
        let hash = mac.finalize().into_bytes();
        let line = format!(
            "|1|{}|{} ssh-ed25519 {K1}\n",
            data_encoding::BASE64.encode(salt),
            data_encoding::BASE64.encode(&hash)
        );
        let kh = KnownHosts::parse("kh", &line);
        kh.check("h", 2222, &key(K1)).unwrap();
        assert!(kh.check("g", 2222, &key(K1)).is_err());

        let kh = KnownHosts::parse("kh", &format!("*,!bad ssh-ed25519 {K1}\n"));
        kh.check("good", 22, &key(K1)).unwrap();
        assert!(matches!(
            kh.check("bad", 22, &key(K1)),
            Err(SftpError::HostKeyUnknown { .. })
        ));
    }

    #[test]
    fn missing_file_is_an_error_not_an_empty_list() {
        let e = KnownHosts::load(Path::new("/nonexistent/known_hosts")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/known_hosts"), "{e}");
    }
}
