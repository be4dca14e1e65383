//! The contract between synchub's runtime and its adapters: what an inbound adapter hands over,
//! what an outbound adapter answers, and a test kit every adapter runs (see `README.md`).
#![doc = include_str!("../README.md")]

pub mod envelope;
pub mod error;
#[cfg(feature = "http")]
pub mod http;
pub mod inbound;
pub mod outbound;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use envelope::{ContentType, Envelope, KeyKind, Principal};
pub use error::{AcceptError, AdapterError, FieldError};
pub use inbound::{Inbox, Receipt, RecordIn, RecordVerdict, Submission};
pub use outbound::{Delivery, Outbound, Outcome};
