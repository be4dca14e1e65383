//! The `Inbox` every inbound adapter hands its submissions to: validates and maps each record
//! (pure CPU, done in the caller's task), then journals the transport unit, every record and
//! its deliveries in one store transaction, and only then returns the receipt the adapter acks with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use synchub_adapter_sdk::{AcceptError, Envelope, FieldError, Inbox, Receipt, Submission};
use synchub_transform::jq::Mappings;
use synchub_transform::validate::validate;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::crm::ChangeEvent;
use crate::routing::{Route, RouteTable};
use crate::settings::{EndpointConfig, Settings};
use crate::status::EndpointStates;
use crate::store::batch::{AcceptQueue, accept_queue};
use crate::store::journal::{self, IdRule, NewDelivery, NewMessage, PreparedRecord};
use crate::store::{Store, StoreError};
use crate::telemetry::metrics_names as m;

/// Record fields that are business keys, and the key kind each is searched by.
const KEY_FIELDS: &[(&str, &str)] = &[
    ("source_ref", "source_ref"),
    ("mobile", "mobile"),
    ("customer_mobile", "mobile"),
    ("id_no", "id_no"),
    ("vin", "vin"),
    ("lead_id", "lead_id"),
    ("customer_id", "customer_id"),
    ("dealer_code", "dealer_code"),
    ("campaign_code", "campaign_code"),
];

pub struct Pipeline {
    store: Store,
    routes: Arc<RouteTable>,
    mappings: Arc<Mappings>,
    /// CRM store endpoint id → its `key_field_approval` setting. Records routed to one of these
    /// get a hub id at accept.
    crm_approval: HashMap<String, bool>,
    /// Wakes the dispatcher when deliveries were journaled.
    wake: Arc<Notify>,
    status: Arc<EndpointStates>,
    /// Merges concurrent submissions into one write; started on first use, on the runtime
    /// that serves the partners.
    accepts: std::sync::OnceLock<AcceptQueue>,
}

/// A record after validation and routing, before it is journaled.
struct Routed {
    canonical: Value,
    routes: Vec<String>,
    deliveries: Vec<NewDelivery>,
    to_crm: bool,
}

impl Pipeline {
    pub fn new(
        store: Store,
        routes: Arc<RouteTable>,
        mappings: Arc<Mappings>,
        settings: &Settings,
        wake: Arc<Notify>,
        status: Arc<EndpointStates>,
    ) -> Pipeline {
        let crm_approval = settings
            .endpoints
            .iter()
            .filter_map(|(id, e)| match e {
                EndpointConfig::CrmStore(c) => Some((id.clone(), c.key_field_approval)),
                _ => None,
            })
            .collect();
        Pipeline {
            store,
            routes,
            mappings,
            crm_approval,
            wake,
            status,
            accepts: std::sync::OnceLock::new(),
        }
    }

    /// A CRM change event as a journaled message (kind `event`, caused by `parent`), routed by
    /// the routes listening to the CRM endpoint.
    pub(crate) fn prepare_event(
        &self,
        parent: Uuid,
        correlation_id: Option<String>,
        crm_endpoint: &str,
        ev: &ChangeEvent,
    ) -> PreparedRecord {
        let mut env = Envelope::new(
            crm_endpoint,
            synchub_adapter_sdk::ContentType::Json,
            Default::default(),
        );
        env.id = parent;
        // The change carries the correlation id of what caused it, through every later hop.
        env.correlation_id = correlation_id;
        let mut rec = self.prepare_record(
            &env,
            0,
            ev.record_type,
            None,
            &Ok(ev.body.clone()),
            "event",
            None,
        );
        rec.message.dealer_code = ev.dealer_code.clone();
        rec
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn mappings(&self) -> &Mappings {
        &self.mappings
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The route `record_type` records from `endpoint` can be applied straight to the CRM store
    /// by (see [`crate::direct`]): the only route taking them, to one CRM store endpoint, with
    /// no mapping and no `when`.
    pub(crate) fn direct_route(&self, endpoint: &str, record_type: &str) -> Option<&Route> {
        let routes = self.routes.candidates(endpoint, record_type);
        let [route] = routes.as_slice() else {
            return None;
        };
        match route.to.as_slice() {
            [to] if self.crm_approval.contains_key(to)
                && route.mapping.is_none()
                && route.when.is_none() =>
            {
                Some(route)
            }
            _ => None,
        }
    }

    /// Whether a DMS's key-field changes applied for CRM endpoint `target` wait for approval.
    pub(crate) fn key_field_approval(&self, target: &str) -> bool {
        self.crm_approval.get(target).copied().unwrap_or(true)
    }

    /// Journals and applies a batch straight to the CRM store (see [`crate::direct`]) when its
    /// records qualify; gives the submission back when they do not (the caller then uses
    /// [`Inbox::accept`]).
    pub async fn accept_direct(
        self: &Arc<Self>,
        submission: Submission,
    ) -> Result<Result<Receipt, AcceptError>, Submission> {
        let endpoint = submission.envelope.endpoint.clone();
        let record_type = match submission.records.first() {
            Some(r)
                if submission
                    .records
                    .iter()
                    .all(|o| o.record_type == r.record_type) =>
            {
                r.record_type.clone()
            }
            _ => return Err(submission),
        };
        let Some(route) = self.direct_route(&endpoint, &record_type) else {
            return Err(submission);
        };
        metrics::counter!(m::RECEIVED, "endpoint" => endpoint.clone()).increment(1);
        self.status.contact(&endpoint, None);
        let receipt = crate::direct::accept(self, route, submission)
            .await
            .map_err(|e| {
                tracing::warn!(endpoint = %endpoint, error = %e, "Batch not journaled; it is read again.");
                AcceptError::Unavailable(e.to_string())
            });
        if let Ok(r) = &receipt {
            count_verdicts(&endpoint, r);
        }
        Ok(receipt)
    }

    /// Tells the dispatcher deliveries were journaled.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Validates, routes and maps one record. `Err` carries the reasons it is rejected.
    /// `mapping_override` replays through a given mapping version.
    fn route_record(
        &self,
        endpoint: &str,
        record_type: &str,
        body: &Value,
        principal_system: Option<&str>,
        dealer_hint: Option<&str>,
        mapping_override: Option<u32>,
    ) -> Result<Routed, Vec<FieldError>> {
        let candidates = self.routes.candidates(endpoint, record_type);
        let canonical = Self::canonical(
            &candidates,
            record_type,
            body,
            principal_system,
            dealer_hint,
        )?;
        let mut routed = Routed {
            canonical,
            routes: Vec::new(),
            deliveries: Vec::new(),
            to_crm: false,
        };
        for route in candidates {
            if let Some(p) = &route.when {
                match p.test(&routed.canonical) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        return Err(vec![FieldError::new(
                            "",
                            format!("route {} predicate failed: {e}", route.id),
                        )]);
                    }
                }
            }
            self.add_deliveries(route, &mut routed, mapping_override)?;
        }
        Ok(routed)
    }

    /// The record validated by its routes' schema (the first that names one), with what the
    /// principal says about it filled in.
    pub(crate) fn canonical(
        candidates: &[&Route],
        record_type: &str,
        body: &Value,
        principal_system: Option<&str>,
        dealer_hint: Option<&str>,
    ) -> Result<Value, Vec<FieldError>> {
        let schema = candidates.iter().find_map(|r| r.validate);
        let mut canonical = match schema {
            Some(s) => Value::Object(validate(s, body)?),
            None => body.clone(),
        };
        if let Value::Object(map) = &mut canonical {
            // The partner's credential, not its payload, says who it is: leads take their source
            // from the key (INTERFACES §1), so a website cannot pose as the call centre.
            if let Some(system) = principal_system
                && record_type == "lead"
            {
                map.insert("source".into(), Value::String(system.to_string()));
            }
            if let Some(d) = dealer_hint
                && !map.contains_key("dealer_code")
                && record_type != "lead"
            {
                map.insert("dealer_code".into(), Value::String(d.to_string()));
            }
        }
        Ok(canonical)
    }

    fn add_deliveries(
        &self,
        route: &Route,
        routed: &mut Routed,
        mapping_override: Option<u32>,
    ) -> Result<(), Vec<FieldError>> {
        // The mapping runs when the delivery is attempted, not here: the accept path stays lean
        // (202 as soon as the validated record is durable), a mapping bug never turns valid
        // partner data away, and a fixed mapping applies to a replay of the kept record.
        let version = match (&route.mapping, mapping_override.or(route.mapping_version)) {
            (Some(id), Some(v)) => {
                if !self.mappings.versions(id).contains(&v) {
                    return Err(vec![FieldError::new(
                        "",
                        format!("mapping {id} has no version {v}"),
                    )]);
                }
                Some(i64::from(v))
            }
            _ => None,
        };
        let body_bytes = serde_json::to_vec(&routed.canonical).unwrap_or_default();
        let lane = route.lane(&routed.canonical);
        let dealer = routed
            .canonical
            .get("dealer_code")
            .and_then(Value::as_str)
            .map(str::to_string);
        for target in &route.to {
            if self.crm_approval.contains_key(target) {
                routed.to_crm = true;
            }
            let mut headers =
                json!({"record_type": route.record_type, "dealer_code": dealer, "route": route.id});
            for (k, v) in &route.headers {
                headers[k.as_str()] = Value::String(v.clone());
            }
            routed.deliveries.push(NewDelivery {
                route: route.id.clone(),
                target: target.clone(),
                lane: lane.clone(),
                dealer_code: dealer.clone(),
                max_attempts: route.retry.max_attempts as i64,
                backoff_ms: route.retry.backoff_ms as i64,
                max_backoff_ms: route.retry.max_backoff_ms as i64,
                mapping: route.mapping.clone(),
                mapping_version: version,
                content_type: "json",
                headers: headers.to_string(),
                body: body_bytes.clone(),
            });
        }
        routed.routes.push(route.id.clone());
        Ok(())
    }

    /// Prepares one record of a submission (or a replay, or a CRM change event) for the journal.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare_record(
        &self,
        parent: &Envelope,
        index: usize,
        record_type: &str,
        source_ref: Option<&str>,
        body: &Result<Value, Vec<FieldError>>,
        kind: &'static str,
        mapping_override: Option<u32>,
    ) -> PreparedRecord {
        let principal = parent.principal.as_ref();
        let raw = match body {
            Ok(v) => serde_json::to_vec(v).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let mut message = NewMessage {
            id: Uuid::now_v7(),
            parent_id: Some(parent.id),
            kind,
            endpoint: parent.endpoint.clone(),
            record_type: Some(record_type.to_string()),
            routes: Vec::new(),
            received_at: parent.received_at.timestamp_millis(),
            correlation_id: parent.correlation_id.clone(),
            partner: principal.map(|p| p.scope()),
            dealer_code: principal.and_then(|p| p.dealer_code.clone()),
            source_ref: source_ref.map(str::to_string),
            status: "accepted",
            reason: None,
            entity_id: None,
            content_type: "json",
            headers: json!({"index": index}).to_string(),
            body: raw,
        };
        let mut keys = Vec::new();
        // A rejected record is counted on the flows that would have taken it.
        let candidates: Vec<String> = self
            .routes
            .candidates(&parent.endpoint, record_type)
            .iter()
            .map(|r| r.id.clone())
            .collect();
        let rejected = |mut message: NewMessage, keys, errors: Vec<FieldError>| {
            message.status = "rejected";
            message.routes = candidates.clone();
            message.reason = Some(serde_json::to_string(&errors).unwrap_or_default());
            PreparedRecord {
                message,
                errors: Some(errors),
                keys,
                idempotency: None,
                id_rule: None,
                deliveries: Vec::new(),
            }
        };
        let value = match body {
            Ok(v) => v,
            Err(errors) => {
                // A record the adapter could not read still has its reference: findable by it.
                if let Some(r) = source_ref
                    .map(str::trim)
                    .filter(|r| !r.is_empty() && r.len() <= 128)
                {
                    keys.push(("source_ref", r.to_string()));
                }
                return rejected(message, keys, errors.clone());
            }
        };
        collect_keys(value, &mut keys);
        let routed = match self.route_record(
            &parent.endpoint,
            record_type,
            value,
            principal.map(|p| p.system.as_str()),
            principal.and_then(|p| p.dealer_code.as_deref()),
            mapping_override,
        ) {
            Ok(r) => r,
            Err(errors) => return rejected(message, keys, errors),
        };
        // Keys again from the cleansed record: a full-width or +86 mobile is found by its clean form.
        collect_keys(&routed.canonical, &mut keys);
        keys.sort();
        keys.dedup();
        if let Some(d) = routed.canonical.get("dealer_code").and_then(Value::as_str) {
            message.dealer_code = Some(d.to_string());
        }
        if routed.routes.is_empty() {
            message.status = "unrouted";
            message.reason = Some(format!(
                "no route takes {record_type} records from endpoint {}",
                parent.endpoint
            ));
        }
        message.routes = routed.routes;
        let scope = format!(
            "{}/{record_type}",
            principal
                .map(|p| p.scope())
                .unwrap_or_else(|| parent.endpoint.clone())
        );
        let idem_key = match source_ref {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => format!("sha256:{}", hex::encode(Sha256::digest(&message.body))),
        };
        let id_rule = routed
            .to_crm
            .then(|| {
                routed
                    .canonical
                    .as_object()
                    .and_then(|m| id_rule(record_type, m))
            })
            .flatten();
        PreparedRecord {
            message,
            errors: None,
            keys,
            idempotency: (kind == "record").then_some((scope, idem_key)),
            id_rule,
            deliveries: routed.deliveries,
        }
    }

    /// The transport unit's own journal row.
    pub(crate) fn transport_message(
        env: &Envelope,
        status: &'static str,
        reason: Option<String>,
    ) -> NewMessage {
        let mut headers: BTreeMap<String, Value> = env
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if let Some(p) = &env.principal {
            headers.insert("principal".into(), Value::String(p.scope()));
        }
        NewMessage {
            id: env.id,
            parent_id: None,
            kind: "transport",
            endpoint: env.endpoint.clone(),
            record_type: None,
            routes: Vec::new(),
            received_at: env.received_at.timestamp_millis(),
            correlation_id: env.correlation_id.clone(),
            partner: env.principal.as_ref().map(|p| p.scope()),
            dealer_code: env.principal.as_ref().and_then(|p| p.dealer_code.clone()),
            source_ref: None,
            status,
            reason,
            entity_id: None,
            content_type: env.content_type.as_str(),
            headers: serde_json::to_string(&headers).unwrap_or_default(),
            body: env.body.to_vec(),
        }
    }

    /// Re-runs a journaled record through today's routes (optionally a given mapping version)
    /// and queues fresh deliveries for it; the original attempts stay as history.
    pub async fn replay(
        &self,
        message_id: Uuid,
        mapping_version: Option<u32>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let prepared = self.prepare_replay(message_id, mapping_version).await?;
        let replayed = self
            .store
            .write(move |c| {
                Box::pin(async move {
                    let mut ids = Vec::new();
                    for (id, _entity, deliveries) in prepared {
                        for d in &deliveries {
                            journal::insert_delivery(c, id, d).await?;
                            crate::store::deliveries::supersede_by_latest(
                                c,
                                &id.to_string(),
                                &d.route,
                                &d.target,
                            )
                            .await?;
                        }
                        ids.push(id);
                    }
                    Ok(ids)
                })
            })
            .await?;
        self.wake.notify_one();
        Ok(replayed)
    }

    /// The deliveries a replay would queue, per replayed record, without journaling anything:
    /// shared by [`Pipeline::replay`] and the dashboard's replay preview.
    pub(crate) async fn prepare_replay(
        &self,
        message_id: Uuid,
        mapping_version: Option<u32>,
    ) -> Result<Vec<(Uuid, Option<String>, Vec<NewDelivery>)>, StoreError> {
        let records =
            crate::store::queries::replayable_records(self.store.pool(), message_id).await?;
        if records.is_empty() {
            return Err(StoreError::NotFound(format!(
                "message {message_id} has no replayable record"
            )));
        }
        let mut prepared = Vec::new();
        for r in records {
            let body: Result<Value, Vec<FieldError>> =
                serde_json::from_slice(&r.body).map_err(|e| {
                    vec![FieldError::new(
                        "",
                        format!("stored record is not JSON: {e}"),
                    )]
                });
            let mut env = Envelope::new(
                r.endpoint.clone(),
                synchub_adapter_sdk::ContentType::Json,
                Default::default(),
            );
            env.id = r.parent_id.unwrap_or(r.id);
            env.principal = r.principal();
            env.correlation_id = r.correlation_id.clone();
            let p = self.prepare_record(
                &env,
                0,
                &r.record_type,
                r.source_ref.as_deref(),
                &body,
                "record",
                mapping_version,
            );
            if let Some(errors) = p.errors {
                return Err(StoreError::Conflict(format!(
                    "message {} no longer passes validation: {}",
                    r.id,
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            prepared.push((r.id, r.entity_id.clone(), p.deliveries));
        }
        Ok(prepared)
    }

    /// Several submissions in one write: rows staged here, one `commit_staged` for all.
    async fn journal_many(&self, submissions: Vec<Submission>) -> Result<Vec<Receipt>, StoreError> {
        let mut parts = Vec::with_capacity(submissions.len());
        let mut shape = Vec::with_capacity(submissions.len());
        for submission in &submissions {
            let env = &submission.envelope;
            let prepared: Vec<PreparedRecord> = submission
                .records
                .iter()
                .map(|r| {
                    self.prepare_record(
                        env,
                        r.index,
                        &r.record_type,
                        r.source_ref.as_deref(),
                        &r.body,
                        "record",
                        None,
                    )
                })
                .collect();
            shape.push((env.id, prepared.len()));
            let transport = Self::transport_message(env, "received", None);
            parts.push(journal::stage(&transport, &[], prepared));
        }
        let staged = journal::Staged::merge(parts);
        let verdicts = self
            .accepts
            .get_or_init(|| accept_queue(self.store.clone(), self.wake.clone()))
            .submit(staged)
            .await?;
        let mut verdicts = verdicts.into_iter();
        Ok(shape
            .into_iter()
            .map(|(message_id, n)| Receipt {
                message_id,
                records: verdicts.by_ref().take(n).collect(),
            })
            .collect())
    }

    async fn journal(&self, submission: Submission) -> Result<Receipt, StoreError> {
        let mut receipts = self.journal_many(vec![submission]).await?;
        Ok(receipts.remove(0))
    }
}

/// How the CRM names a record of this type (see `IdRule`).
pub(crate) fn id_rule(record_type: &str, rec: &Map<String, Value>) -> Option<IdRule> {
    let s = |k: &str| rec.get(k).and_then(Value::as_str).map(str::to_string);
    Some(match record_type {
        "dms_customer" | "customer" => IdRule::Customer {
            mobile: s("mobile"),
            id_no: s("id_no"),
        },
        "lead" => IdRule::Lead,
        "lead_result" => IdRule::Counter("LR"),
        "campaign_result" => IdRule::Counter("CR"),
        "vehicle" => IdRule::Natural(s("vin")?),
        "dealer" => IdRule::Natural(s("dealer_code")?),
        "campaign" => IdRule::Natural(s("campaign_code")?),
        _ => return None,
    })
}

/// The texts of elements named `local` (any prefix) in an XML body, found by a plain scan:
/// refused bodies may be malformed, so no parser is trusted with them.
fn xml_element_texts<'a>(body: &'a [u8], local: &'a str) -> impl Iterator<Item = String> + 'a {
    let text = String::from_utf8_lossy(body).into_owned();
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        let Some(gt) = rest.find('>') else { break };
        let tag = &rest[..gt];
        let name = tag.split_whitespace().next().unwrap_or_default();
        let name = name.rsplit(':').next().unwrap_or_default();
        if name == local && !tag.starts_with('/') && !tag.ends_with('/') {
            let after = &rest[gt + 1..];
            let value = after[..after.find('<').unwrap_or(after.len())].trim();
            if !value.is_empty() && value.len() <= 64 {
                found.push(value.to_string());
            }
        }
        rest = &rest[gt + 1..];
    }
    found.into_iter()
}

/// Business keys found in a record (top level and one level down, e.g. `owner.mobile`).
pub(crate) fn collect_keys(v: &Value, out: &mut Vec<(&'static str, String)>) {
    match v {
        Value::Object(map) => collect_map_keys(map, out),
        Value::Array(items) => {
            for item in items.iter().take(1000) {
                if let Value::Object(map) = item {
                    collect_map_keys(map, out);
                }
            }
        }
        _ => {}
    }
}

/// [`collect_keys`] of one record.
pub(crate) fn collect_map_keys(map: &Map<String, Value>, out: &mut Vec<(&'static str, String)>) {
    fn walk(map: &Map<String, Value>, out: &mut Vec<(&'static str, String)>, depth: u8) {
        for (field, kind) in KEY_FIELDS {
            match map.get(*field) {
                Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 128 => {
                    out.push((kind, s.trim().to_string()))
                }
                Some(Value::Number(n)) => out.push((kind, n.to_string())),
                _ => {}
            }
        }
        if depth == 0 {
            for v in map.values() {
                if let Value::Object(inner) = v {
                    walk(inner, out, 1);
                }
            }
        }
    }
    walk(map, out, 0);
}

/// Records journaled per endpoint and outcome, for the metrics.
fn count_verdicts(endpoint: &str, receipt: &Receipt) {
    let (mut ok, mut bad, mut dup) = (0u64, 0u64, 0u64);
    for v in &receipt.records {
        match v {
            synchub_adapter_sdk::RecordVerdict::Accepted {
                duplicate: true, ..
            } => dup += 1,
            synchub_adapter_sdk::RecordVerdict::Accepted { .. } => ok += 1,
            synchub_adapter_sdk::RecordVerdict::Rejected { .. } => bad += 1,
        }
    }
    for (outcome, n) in [("accepted", ok), ("rejected", bad), ("duplicate", dup)] {
        if n > 0 {
            metrics::counter!(m::RECORDS, "endpoint" => endpoint.to_string(), "outcome" => outcome)
                .increment(n);
        }
    }
}

#[async_trait]
impl Inbox for Pipeline {
    async fn accept(&self, submission: Submission) -> Result<Receipt, AcceptError> {
        let endpoint = submission.envelope.endpoint.clone();
        metrics::counter!(m::RECEIVED, "endpoint" => endpoint.clone()).increment(1);
        self.status.contact(&endpoint, None);
        let receipt = self.journal(submission).await.map_err(|e| {
            tracing::warn!(endpoint = %endpoint, error = %e, "Submission not journaled; partner must resend.");
            AcceptError::Unavailable(e.to_string())
        })?;
        count_verdicts(&endpoint, &receipt);
        Ok(receipt)
    }

    async fn accept_many(&self, submissions: Vec<Submission>) -> Result<Vec<Receipt>, AcceptError> {
        let endpoints: Vec<String> = submissions
            .iter()
            .map(|s| s.envelope.endpoint.clone())
            .collect();
        for e in &endpoints {
            metrics::counter!(m::RECEIVED, "endpoint" => e.clone()).increment(1);
        }
        if let Some(e) = endpoints.first() {
            self.status.contact(e, None);
        }
        let receipts = self.journal_many(submissions).await.map_err(|e| {
            tracing::warn!(error = %e, "Submissions not journaled; the partner must resend.");
            AcceptError::Unavailable(e.to_string())
        })?;
        for (endpoint, receipt) in endpoints.iter().zip(&receipts) {
            count_verdicts(endpoint, receipt);
        }
        Ok(receipts)
    }

    async fn reject(
        &self,
        envelope: Envelope,
        code: &str,
        reason: &str,
    ) -> Result<Uuid, AcceptError> {
        metrics::counter!(m::RECEIVED, "endpoint" => envelope.endpoint.clone()).increment(1);
        self.status.contact(&envelope.endpoint, None);
        metrics::counter!(m::REFUSED, "endpoint" => envelope.endpoint.clone(), "code" => code.to_string()).increment(1);
        let mut keys = Vec::new();
        // Refused bodies are still findable by the keys inside them (a 403'd record by its
        // source_ref), as long as they parse and are small enough to look into cheaply.
        if envelope.body.len() <= 1 << 20 {
            if let Ok(v) = serde_json::from_slice::<Value>(&envelope.body) {
                collect_keys(&v, &mut keys);
            } else if envelope.content_type == synchub_adapter_sdk::ContentType::Xml {
                // A refused SOAP batch is found by the VINs in it (OSM asks "what became of
                // this car?" whatever the batch's problem was).
                for vin in xml_element_texts(&envelope.body, "vin").take(5000) {
                    keys.push(("vin", vin.to_ascii_uppercase()));
                }
            }
            keys.sort();
            keys.dedup();
        }
        let msg = Self::transport_message(
            &envelope,
            "rejected",
            Some(json!({"code": code, "message": reason}).to_string()),
        );
        let id = msg.id;
        self.store
            .write_exec(move |c| {
                Box::pin(async move {
                    journal::insert_message(c, &msg).await?;
                    journal::insert_keys(c, msg.id, &keys).await
                })
            })
            .await
            .map_err(|e| AcceptError::Unavailable(e.to_string()))?;
        Ok(id)
    }
}
