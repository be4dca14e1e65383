//! SOAP adapter for synchub: the OSM vehicle service in (IF-01: WSDL, WS-Security, Faults,
//! hardened streaming parse) and DCS campaign tasks out (IF-07), one classified call per attempt.
//!
//! Crate map:
//! - [`config`]: `SoapInboundConfig` (users, limits, public address) and `SoapOutboundConfig`
//!   (URL, timeout, WS-Security credentials), with `validate()`.
//! - [`xml`]: the streaming cursor over quick-xml's `NsReader`: names by namespace URI, depth
//!   limit, DOCTYPE/entities refused, line and column in errors; escaping for output.
//! - [`soap`]: the envelope layer: SOAP 1.1/1.2 versions and media types, Header/Body reading,
//!   Fault writing and reading.
//! - [`wssec`]: WS-Security UsernameToken (PasswordText, PasswordDigest, Created window, nonce
//!   replay cache) and the header our outbound calls carry.
//! - [`vehicles`]: `SyncVehicles` request → one `RecordIn` per vehicle; the response writer.
//! - [`inbound`]: [`router`], the axum `Router` serving `POST`/`GET ?wsdl` on
//!   `/soap/osm/VehicleService`, journaling refusals and answering after `Inbox::accept`.
//! - [`outbound`]: [`SoapOutbound`], `PublishCampaignTask` to DCS.
//! - [`classify`]: the pure mapping from a DCS answer or transport failure to an `Outcome`.
//!
//! `README.md` documents the checks, envelope headers and the classification table.

pub mod classify;
pub mod config;
pub mod inbound;
pub mod outbound;
pub mod soap;
pub mod vehicles;
pub mod wssec;
pub mod xml;

pub use config::{SoapInboundConfig, SoapOutboundConfig, SoapUser};
pub use inbound::router;
pub use outbound::{CampaignTask, SoapOutbound};
