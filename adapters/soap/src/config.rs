//! Configuration of the SOAP adapter: the inbound OSM vehicle service (users, limits, public
//! address) and one outbound DCS target (URL, timeout, WS-Security credentials).

use serde::Deserialize;
use synchub_adapter_sdk::Principal;

/// Default body limit of the inbound service: 50 MiB (5,000 vehicles with every field set are
/// about 4 MiB; the margin is for toolkits that pretty-print generously).
pub const DEFAULT_MAX_BODY_BYTES: usize = 50 * 1024 * 1024;
/// Default element nesting limit. The deepest legitimate path is
/// Envelope/Body/SyncVehicles/vehicle/owner/name (6); Security headers reach 5.
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// Default and contract maximum of `vehicle` elements in one `SyncVehicles` (INTERFACES §2).
pub const DEFAULT_MAX_VEHICLES: usize = 5000;
/// Default outbound timeout for one whole attempt.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// One WS-Security account of the inbound service.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoapUser {
    /// `wsse:Username` as the partner sends it.
    pub username: String,
    /// The accepted password. Kept in clear because PasswordDigest can only be checked against
    /// the clear password; the runtime resolves it from a secret. `Debug` redacts it.
    pub password: String,
    /// Who this account is (e.g. system `osm`), set on accepted envelopes.
    pub principal: Principal,
}

impl std::fmt::Debug for SoapUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("principal", &self.principal)
            .finish()
    }
}

/// The inbound service `osm_vehicles_soap_in`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoapInboundConfig {
    /// The endpoint id written on every envelope.
    pub endpoint_id: String,
    /// Accounts that may call the service.
    #[serde(default)]
    pub users: Vec<SoapUser>,
    /// Also accept PasswordDigest tokens (with Nonce and Created). PasswordText is always accepted.
    #[serde(default = "yes")]
    pub accept_password_digest: bool,
    /// Largest accepted body in bytes; larger ones get a Client fault (HTTP 413).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Deepest accepted element nesting; deeper documents get a Client fault.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Most `vehicle` elements in one request.
    #[serde(default = "default_max_vehicles")]
    pub max_vehicles: usize,
    /// Base URL partners reach the hub at (`https://hub.example.com`), written into the WSDL's
    /// `soap:address`. Unset: taken from the request's `Host` header (plain `http`).
    #[serde(default)]
    pub public_url: Option<String>,
}

fn yes() -> bool {
    true
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_depth() -> usize {
    DEFAULT_MAX_DEPTH
}
fn default_max_vehicles() -> usize {
    DEFAULT_MAX_VEHICLES
}

impl SoapInboundConfig {
    /// Default limits, no users.
    pub fn new(endpoint_id: impl Into<String>) -> SoapInboundConfig {
        SoapInboundConfig {
            endpoint_id: endpoint_id.into(),
            users: Vec::new(),
            accept_password_digest: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_vehicles: DEFAULT_MAX_VEHICLES,
            public_url: None,
        }
    }

    /// Adds an account (tests, demo profile).
    pub fn with_user(mut self, username: &str, password: &str, principal: Principal) -> Self {
        self.users.push(SoapUser {
            username: username.into(),
            password: password.into(),
            principal,
        });
        self
    }

    /// Every problem with this config, one line each with the field path (pure, no I/O).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.endpoint_id.trim().is_empty() {
            problems.push("endpoint_id: must not be empty".to_owned());
        }
        for (field, v) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_depth", self.max_depth),
            ("max_vehicles", self.max_vehicles),
        ] {
            if v == 0 {
                problems.push(format!("{field}: must be greater than 0"));
            }
        }
        if self.max_depth < 8 {
            problems.push(
                "max_depth: must be at least 8 (a SOAP request with a security header needs 6)"
                    .to_owned(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.username.trim().is_empty() {
                problems.push(format!("users[{i}].username: must not be empty"));
            } else if !seen.insert(u.username.as_str()) {
                problems.push(format!(
                    "users[{i}].username: '{}' is configured twice",
                    u.username
                ));
            }
            if u.password.is_empty() {
                problems.push(format!("users[{i}].password: must not be empty"));
            }
            if u.principal.system.trim().is_empty() {
                problems.push(format!("users[{i}].principal.system: must not be empty"));
            }
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(format!(
                "public_url: must start with http:// or https://, got '{url}'"
            ));
        }
        problems
    }
}

/// One outbound DCS target (`dcs_tasks_soap_out`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoapOutboundConfig {
    /// The DCS service endpoint (`http://` or `https://`), as in the WSDL's `soap:address`.
    pub url: String,
    /// Time allowed for one whole attempt; when it passes, the attempt is a `Retry`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// WS-Security UsernameToken user name.
    pub username: String,
    /// WS-Security password, sent as PasswordText (use https). The runtime resolves it from a
    /// secret; `Debug` redacts it.
    pub password: String,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl SoapOutboundConfig {
    pub fn new(
        url: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        SoapOutboundConfig {
            url: url.into(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            username: username.into(),
            password: password.into(),
        }
    }

    /// Every problem with this config, one line each with the field path (pure, no I/O).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => problems.push(format!(
                "url: scheme must be http or https, got {}",
                u.scheme()
            )),
            Err(e) => problems.push(format!("url: {e}")),
        }
        if self.timeout_ms == 0 {
            problems.push("timeout_ms: must be greater than 0".to_owned());
        }
        if self.username.trim().is_empty() {
            problems.push("username: must not be empty".to_owned());
        }
        if self.password.is_empty() {
            problems.push("password: must not be empty".to_owned());
        }
        problems
    }
}

impl std::fmt::Debug for SoapOutboundConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapOutboundConfig")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_minimal_toml_gets_defaults() {
        let cfg: SoapInboundConfig =
            toml::from_str(r#"endpoint_id = "osm_vehicles_soap_in""#).unwrap();
        assert_eq!(cfg, SoapInboundConfig::new("osm_vehicles_soap_in"));
        assert_eq!(cfg.max_body_bytes, 50 * 1024 * 1024);
        assert_eq!(cfg.max_vehicles, 5000);
        assert!(cfg.accept_password_digest);
        assert!(cfg.validate().is_empty());
    }

    #[test]
    fn inbound_full_toml_and_redaction() {
        let cfg: SoapInboundConfig = toml::from_str(
            r#"
            endpoint_id = "osm_vehicles_soap_in"
            max_body_bytes = 1048576
            max_depth = 16
            max_vehicles = 10
            accept_password_digest = false
            public_url = "https://hub.example.com"
            [[users]]
            username = "osm"
            password = "demo-osm"
            principal = { system = "osm" }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.users[0].principal.system, "osm");
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        assert!(!format!("{cfg:?}").contains("demo-osm"));
        assert!(toml::from_str::<SoapInboundConfig>("endpoint_id = \"x\"\nmax_body = 1").is_err());
    }

    #[test]
    fn inbound_validate_lists_every_problem() {
        let p = Principal {
            system: String::new(),
            dealer_code: None,
        };
        let mut cfg = SoapInboundConfig::new("")
            .with_user("osm", "", p.clone())
            .with_user("osm", "x", p);
        cfg.max_vehicles = 0;
        cfg.public_url = Some("hub.example.com".into());
        let problems = cfg.validate();
        assert_eq!(problems.len(), 7, "{problems:?}");
    }

    #[test]
    fn outbound_toml_validation_and_redaction() {
        let cfg: SoapOutboundConfig = toml::from_str(
            r#"
            url = "https://dcs.example.com/ws/TaskService"
            username = "synchub"
            password = "s3cret"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(cfg.validate().is_empty());
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let mut bad = SoapOutboundConfig::new("ftp://x", "", "");
        bad.timeout_ms = 0;
        assert_eq!(bad.validate().len(), 4, "{:?}", bad.validate());
    }
}
