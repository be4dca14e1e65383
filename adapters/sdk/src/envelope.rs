//! The envelope: the original bytes of one transport unit (HTTP request, SOAP call, AMQP message,
//! file) plus the facts about them that the journal keeps. Never mutated after it is built, so a
//! message can always be re-mapped and replayed from what the partner really sent.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who sent a message, as established by the adapter's authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The partner system (`osm`, `callcenter`, `website`, `etl`, `dms`).
    pub system: String,
    /// Set when the credential is bound to one dealer: the partner may only write that dealer's records.
    pub dealer_code: Option<String>,
}

impl Principal {
    /// The idempotency scope of this partner: records with the same `source_ref` from the same
    /// scope are the same record.
    pub fn scope(&self) -> String {
        match &self.dealer_code {
            Some(d) => format!("{}:{d}", self.system),
            None => self.system.clone(),
        }
    }
}

/// The wire format of a body, so the dashboard can pretty-print it and mappings know what they get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    Json,
    Xml,
    Csv,
    Text,
    Bytes,
}

impl ContentType {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => "json",
            ContentType::Xml => "xml",
            ContentType::Csv => "csv",
            ContentType::Text => "text",
            ContentType::Bytes => "bytes",
        }
    }

    pub fn parse(s: &str) -> ContentType {
        match s {
            "json" => ContentType::Json,
            "xml" => ContentType::Xml,
            "csv" => ContentType::Csv,
            "text" => ContentType::Text,
            _ => ContentType::Bytes,
        }
    }

    /// The MIME type for outbound protocol headers.
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Xml => "text/xml; charset=utf-8",
            ContentType::Csv => "text/csv; charset=utf-8",
            ContentType::Text => "text/plain; charset=utf-8",
            ContentType::Bytes => "application/octet-stream",
        }
    }
}

/// The kinds of business key a message can be found by. Stored as their `as_str` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Vin,
    Mobile,
    IdNo,
    LeadId,
    CustomerId,
    DealerCode,
    CampaignCode,
    SourceRef,
}

impl KeyKind {
    pub const ALL: [KeyKind; 8] = [
        KeyKind::Vin,
        KeyKind::Mobile,
        KeyKind::IdNo,
        KeyKind::LeadId,
        KeyKind::CustomerId,
        KeyKind::DealerCode,
        KeyKind::CampaignCode,
        KeyKind::SourceRef,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Vin => "vin",
            KeyKind::Mobile => "mobile",
            KeyKind::IdNo => "id_no",
            KeyKind::LeadId => "lead_id",
            KeyKind::CustomerId => "customer_id",
            KeyKind::DealerCode => "dealer_code",
            KeyKind::CampaignCode => "campaign_code",
            KeyKind::SourceRef => "source_ref",
        }
    }
}

/// One transport unit as it arrived.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// uuid v7, minted by the adapter when it builds the envelope; time-ordered.
    pub id: Uuid,
    /// The endpoint id it entered through (`partners_rest_in`).
    pub endpoint: String,
    pub received_at: DateTime<Utc>,
    /// Carried from inbound through every hop into outbound headers.
    pub correlation_id: Option<String>,
    /// Authenticated sender; `None` when authentication failed (the envelope is then journaled as rejected).
    pub principal: Option<Principal>,
    /// Protocol facts, namespaced by adapter: `rest.path`, `rest.remote_addr`, `amqp.routing_key`.
    pub headers: BTreeMap<String, String>,
    pub content_type: ContentType,
    /// Exactly the bytes the partner sent (possibly truncated to the adapter's size limit for
    /// refused oversize bodies; the header `*.truncated` then says so).
    pub body: Bytes,
}

impl Envelope {
    pub fn new(endpoint: impl Into<String>, content_type: ContentType, body: Bytes) -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            endpoint: endpoint.into(),
            received_at: Utc::now(),
            correlation_id: None,
            principal: None,
            headers: BTreeMap::new(),
            content_type,
            body,
        }
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Envelope {
        self.headers.insert(key.into(), value.into());
        self
    }
}
