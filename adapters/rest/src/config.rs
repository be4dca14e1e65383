//! Configuration of the REST adapter: the inbound endpoint (limits, API keys) and one outbound
//! target (URL, timeout, credentials). Doc comments on the fields are the user reference.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use synchub_adapter_sdk::Principal;

/// Default body limit of the inbound endpoint (INTERFACES §1): 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Default maximum number of records in one inbound array (INTERFACES §1).
pub const DEFAULT_MAX_RECORDS: usize = 1000;
/// Default outbound timeout for one whole attempt (connect, send, read the answer).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// One partner API key. Only its hash is configured, so a leaked config file leaks no key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Lower-case hex of sha256 of the key as the partner sends it in `X-Api-Key`
    /// (see [`hash_key`]).
    pub sha256: String,
    /// Who presents this key: its `system` becomes e.g. a lead's `source`; a `dealer_code`
    /// binds the key to that dealer (required on the `/api/v1/dms/...` paths).
    pub principal: Principal,
}

/// The inbound endpoint (`partners_rest_in` in the reference deployment).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// The endpoint id written on every envelope.
    pub endpoint_id: String,
    /// Largest accepted body in bytes; larger bodies get 413 (and their first part is journaled).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest accepted array; longer arrays get 400 `too_many_records`.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Every key that may call the endpoint.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

fn default_max_records() -> usize {
    DEFAULT_MAX_RECORDS
}

impl InboundConfig {
    /// A config with the default limits and no keys.
    pub fn new(endpoint_id: impl Into<String>) -> InboundConfig {
        InboundConfig {
            endpoint_id: endpoint_id.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_records: DEFAULT_MAX_RECORDS,
            api_keys: Vec::new(),
        }
    }

    /// Adds a key given in clear text (tests, demo profile); only its hash is kept.
    pub fn with_key(mut self, key: &str, principal: Principal) -> InboundConfig {
        self.api_keys.push(ApiKey {
            sha256: hash_key(key),
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
        if self.max_body_bytes == 0 {
            problems.push("max_body_bytes: must be greater than 0".to_owned());
        }
        if self.max_records == 0 {
            problems.push("max_records: must be greater than 0".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            let h = k.sha256.to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!(
                    "api_keys[{i}].sha256: must be 64 hex digits (sha256 of the key)"
                ));
            } else if !seen.insert(h) {
                problems.push(format!(
                    "api_keys[{i}].sha256: the same key is configured twice"
                ));
            }
            if k.principal.system.trim().is_empty() {
                problems.push(format!("api_keys[{i}].principal.system: must not be empty"));
            }
        }
        problems
    }
}

/// Lower-case hex sha256 of an API key: what [`ApiKey::sha256`] holds.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The HTTP method used for outbound deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Post,
    Put,
    Patch,
}

impl HttpMethod {
    pub fn as_http(self) -> http::Method {
        match self {
            HttpMethod::Post => http::Method::POST,
            HttpMethod::Put => http::Method::PUT,
            HttpMethod::Patch => http::Method::PATCH,
        }
    }
}

/// One outbound REST target.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestOutboundConfig {
    /// Where each delivery's body is sent (`http://` or `https://`).
    pub url: String,
    /// Time allowed for one whole attempt; when it passes, the attempt is a `Retry`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `POST` (default), `PUT` or `PATCH`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra headers sent with every delivery (e.g. a partner's tenant id). The adapter's own
    /// headers (`Content-Type`, `Idempotency-Key`, `X-Correlation-Id`, `X-Synchub-*`) and
    /// `Authorization` from `bearer_token` take precedence.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer <token>`. The runtime resolves it from an env var or file;
    /// it is never printed (`Debug` redacts it).
    #[serde(default)]
    pub bearer_token: Option<String>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl RestOutboundConfig {
    /// A `POST` target with the default timeout and no extra headers or credentials.
    pub fn new(url: impl Into<String>) -> RestOutboundConfig {
        RestOutboundConfig {
            url: url.into(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            method: HttpMethod::Post,
            headers: BTreeMap::new(),
            bearer_token: None,
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
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                problems.push(format!("headers.{k}: not a valid header name"));
            }
            if http::HeaderValue::from_str(v).is_err() {
                problems.push(format!("headers.{k}: not a valid header value"));
            }
        }
        if let Some(t) = &self.bearer_token
            && http::HeaderValue::from_str(&format!("Bearer {t}")).is_err()
        {
            problems.push("bearer_token: contains characters not allowed in a header".to_owned());
        }
        problems
    }
}

impl std::fmt::Debug for RestOutboundConfig {
    // Hand-written so the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestOutboundConfig")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("method", &self.method)
            .field("headers", &self.headers)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_is_lowercase_hex_sha256() {
        // sha256("demo-osm"), computed independently with `printf demo-osm | sha256sum`.
        assert_eq!(
            hash_key("demo-osm"),
            "b69823beafb43fdc66be2fd5560c637b5b3f27eea31b0528a12b2ef51577da04"
        );
    }

    #[test]
    fn inbound_minimal_toml_gets_defaults() {
        let cfg: InboundConfig = toml::from_str(r#"endpoint_id = "partners_rest_in""#).unwrap();
        assert_eq!(cfg, InboundConfig::new("partners_rest_in"));
        assert!(cfg.validate().is_empty());
    }

    #[test]
    fn inbound_full_toml() {
        let cfg: InboundConfig = toml::from_str(
            r#"
            endpoint_id = "partners_rest_in"
            max_body_bytes = 1048576
            max_records = 10
            [[api_keys]]
            sha256 = "8a7a2b6bb3e0b5ac4d5c2bb7d8ab4f7fa0c49ff8c84f8d32fa8d40a6b6b6b6b6"
            principal = { system = "dms", dealer_code = "D0001" }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.max_records, 10);
        assert_eq!(
            cfg.api_keys[0].principal.dealer_code.as_deref(),
            Some("D0001")
        );
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    }

    #[test]
    fn inbound_unknown_field_is_an_error() {
        let err = toml::from_str::<InboundConfig>("endpoint_id = \"x\"\nmax_body = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn inbound_validate_lists_every_problem() {
        let mut cfg = InboundConfig::new("").with_key(
            "k",
            Principal {
                system: "osm".into(),
                dealer_code: None,
            },
        );
        cfg.max_records = 0;
        cfg.api_keys.push(cfg.api_keys[0].clone());
        cfg.api_keys.push(ApiKey {
            sha256: "nothex".into(),
            principal: Principal {
                system: String::new(),
                dealer_code: None,
            },
        });
        let p = cfg.validate();
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(
            p.iter()
                .any(|l| l.starts_with("api_keys[1].sha256: the same key"))
        );
    }

    #[test]
    fn outbound_minimal_and_full_toml() {
        let min: RestOutboundConfig =
            toml::from_str(r#"url = "https://partner.example/api""#).unwrap();
        assert_eq!(min, RestOutboundConfig::new("https://partner.example/api"));
        let full: RestOutboundConfig = toml::from_str(
            r#"
            url = "https://partner.example/api"
            timeout_ms = 2500
            method = "PUT"
            bearer_token = "s3cret"
            [headers]
            X-Tenant = "synchub"
            "#,
        )
        .unwrap();
        assert_eq!(full.method, HttpMethod::Put);
        assert_eq!(full.timeout_ms, 2500);
        assert_eq!(full.headers["X-Tenant"], "synchub");
        assert!(full.validate().is_empty());
        assert!(
            !format!("{full:?}").contains("s3cret"),
            "Debug must redact the token"
        );
    }

    #[test]
    fn outbound_rejects_unknown_fields_and_bad_values() {
        assert!(toml::from_str::<RestOutboundConfig>("url = \"http://x\"\ntimeout = 1").is_err());
        assert!(
            toml::from_str::<RestOutboundConfig>("url = \"http://x\"\nmethod = \"GET\"").is_err()
        );
        let mut cfg = RestOutboundConfig::new("ftp://x");
        cfg.timeout_ms = 0;
        cfg.headers.insert("bad header".into(), "v".into());
        cfg.bearer_token = Some("a\nb".into());
        assert_eq!(cfg.validate().len(), 4, "{:?}", cfg.validate());
        assert_eq!(RestOutboundConfig::new("not a url").validate().len(), 1);
    }
}
