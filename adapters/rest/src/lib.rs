//! REST adapter for synchub: partners push JSON records to four inbound paths (INTERFACES §1),
//! and the hub delivers mapped messages to REST partners, one classified attempt at a time.
//!
//! Crate map:
//! - [`config`]: `InboundConfig` (limits, hashed API keys) and `RestOutboundConfig` (URL,
//!   timeout, method, headers, bearer token), with `validate()`.
//! - [`inbound`]: [`router`], the axum `Router` for the four paths: authentication, content
//!   type, size, JSON, dealer binding, refusal journaling, and the 202 after `Inbox::accept`.
//! - [`outbound`]: [`RestOutbound`], the `Outbound` implementation (one request per attempt,
//!   reqwest with rustls, built once per endpoint) and its health check.
//! - [`classify`]: the pure mapping from an HTTP answer or transport failure to an `Outcome`.
//!
//! `README.md` in this crate documents the delivery semantics, headers and classification table.

pub mod classify;
pub mod config;
pub mod inbound;
pub mod outbound;

pub use config::{ApiKey, HttpMethod, InboundConfig, RestOutboundConfig, hash_key};
pub use inbound::router;
pub use outbound::RestOutbound;
