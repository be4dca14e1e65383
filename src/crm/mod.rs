//! The CRM store sink: upserts canonical records with version and change history, matches
//! customers by mobile and ID number, holds key-field changes from dealers for approval, and
//! returns the change events routes fan out. Runs inside the dispatcher's transaction, so a
//! record is applied exactly once together with its delivery status.

pub mod campaigns;
pub mod escalation;
pub mod leads;
pub mod reads;
pub mod removal;
pub mod unit;

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

pub use self::unit::Unit;
use crate::args;
use crate::store::exec::{Exec, Ty};
use crate::store::journal::{Claimed, parse_uuid};
use crate::store::rows::Arg;
use crate::store::{StoreError, now_ms};

/// Customer fields whose change from a DMS needs headquarters' approval.
pub const KEY_FIELDS: [&str; 3] = ["name", "mobile", "id_no"];

/// Why a record could not be applied.
#[derive(Debug)]
pub enum CrmFailure {
    /// Something it depends on is missing now but may arrive (e.g. its lead): retry later.
    Retry(String),
    /// The record can never apply (unknown lead, wrong dealer, bad shape).
    Reject(String),
    Store(StoreError),
}

impl From<StoreError> for CrmFailure {
    fn from(e: StoreError) -> Self {
        CrmFailure::Store(e)
    }
}

impl From<sqlx::Error> for CrmFailure {
    fn from(e: sqlx::Error) -> Self {
        CrmFailure::Store(e.into())
    }
}

/// A change event for routes to fan out (record type `customer_event`, ...).
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub record_type: &'static str,
    pub body: Value,
    pub dealer_code: Option<String>,
}

/// What applying one record did, for the attempt's reason and the events it emits.
#[derive(Debug, Default)]
pub struct Applied {
    pub summary: String,
    pub events: Vec<ChangeEvent>,
}

/// Who made a change, recorded in history and used to avoid echoing a change back to its origin.
#[derive(Debug, Clone)]
pub struct ChangeSource {
    pub system: String,
    pub message_id: Option<Uuid>,
    /// Key-field changes from this source go to the approval queue.
    pub needs_approval: bool,
}

/// Result of one upsert.
#[derive(Debug, Default)]
pub struct Upserted {
    pub created: bool,
    pub stale: bool,
    pub version: i64,
    pub changed: Vec<String>,
    pub held: Vec<String>,
    pub data: Map<String, Value>,
}

/// Lookup columns of a CRM row.
#[derive(Debug, Default, Clone)]
pub struct Columns {
    pub dealer_code: Option<String>,
    pub mobile: Option<String>,
    pub id_no: Option<String>,
    pub reference: Option<String>,
    pub src_updated_at: Option<i64>,
    /// Fields set only when the record is created (a new lead's `status`), so replaying a
    /// record never resets what happened to it since.
    pub on_create: Vec<(&'static str, Value)>,
}

pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Upserts one record on its own (a unit of work of one); see [`Unit::upsert`].
pub async fn upsert(
    conn: &mut dyn Exec,
    entity: &str,
    id: &str,
    incoming: &Map<String, Value>,
    cols: &Columns,
    src: &ChangeSource,
) -> Result<Upserted, StoreError> {
    let mut unit = Unit::default();
    let up = unit.upsert(conn, entity, id, incoming, cols, src).await?;
    unit.flush(conn).await?;
    Ok(up)
}

/// The customer change event routes send to the serving dealer's DMS (INTERFACES §3 `customer`).
pub fn customer_event(id: &str, up: &Upserted, src: &ChangeSource) -> ChangeEvent {
    let mut customer = Map::new();
    customer.insert("customer_id".into(), Value::String(id.to_string()));
    for (k, v) in &up.data {
        if k != "source_ref" && k != "source_system" {
            customer.insert(k.clone(), v.clone());
        }
    }
    let dealer_code = up
        .data
        .get("dealer_code")
        .and_then(Value::as_str)
        .map(str::to_string);
    ChangeEvent {
        record_type: "customer_event",
        dealer_code: dealer_code.clone(),
        body: json!({
            "event": if up.created { "customer.created" } else { "customer.updated" },
            "customer_id": id,
            "version": up.version,
            "changed_fields": up.changed.iter().filter(|f| *f != "source_ref").collect::<Vec<_>>(),
            "source_system": src.system,
            // The serving dealer at top level: routes address the DMS by it and the journal
            // indexes the event under it.
            "dealer_code": dealer_code,
            "customer": customer,
        }),
    }
}

pub(crate) fn str_field(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_string)
}

/// One record to apply: from a claimed delivery, or straight from `synchub import`.
#[derive(Debug, Clone)]
pub struct Item {
    /// The message the change is recorded under (history, change events' parent).
    pub message_id: Uuid,
    /// The CRM endpoint it is applied for (vehicles held for a dealer wake on it).
    pub target: String,
    pub record_type: String,
    pub rec: Map<String, Value>,
    /// The hub id given at accept (customer id, VIN, dealer code, ...).
    pub entity_id: Option<String>,
    /// Who sent it (`dms:D0001`, `import`, ...): history and echo suppression.
    pub partner: Option<String>,
    pub received_at: Option<i64>,
    /// Key-field changes from a DMS go to headquarters' approval queue.
    pub key_field_approval: bool,
    /// Build the change events (the caller journals them); building a customer's event copies
    /// the whole record, a cost for a caller that drops it.
    pub events: bool,
    /// `entity_id` was minted for this record in this transaction: nothing is stored under it
    /// (nor, for a customer, under its mobile or ID number), so it is not looked up.
    pub new_id: bool,
}

fn parse(d: &Claimed, facts: Option<&MessageFacts>, approval: bool) -> Result<Item, CrmFailure> {
    let headers: Value = serde_json::from_str(&d.headers).unwrap_or(Value::Null);
    let record_type = headers
        .get("record_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let body: Value = serde_json::from_slice(d.payload())
        .map_err(|e| CrmFailure::Reject(format!("body is not JSON: {e}")))?;
    let Value::Object(rec) = body else {
        return Err(CrmFailure::Reject("body is not a JSON object".into()));
    };
    let facts = facts.cloned().unwrap_or_default();
    Ok(Item {
        message_id: d.message_id,
        target: d.target.clone(),
        record_type,
        rec,
        entity_id: facts.entity_id,
        partner: facts.partner,
        received_at: facts.received_at,
        key_field_approval: approval,
        events: true,
        new_id: false,
    })
}

/// Applies a batch of deliveries to the CRM store in the caller's transaction (see
/// [`apply_items`]). `key_field_approval` gives the setting of each delivery's target endpoint;
/// `lead_rules`, when configured, score and distribute each new lead.
pub async fn apply_batch(
    conn: &mut dyn Exec,
    batch: &[Claimed],
    key_field_approval: &(dyn Fn(&str) -> bool + Send + Sync),
    lead_rules: Option<&crate::rules::LeadRules>,
) -> Result<Vec<Result<Applied, CrmFailure>>, StoreError> {
    let messages = message_facts(conn, batch).await?;
    let items = batch
        .iter()
        .map(|d| {
            parse(
                d,
                messages.get(&d.message_id),
                key_field_approval(&d.target),
            )
        })
        .collect();
    apply_items(conn, items, lead_rules).await
}

/// Applies records to the CRM store in the caller's transaction: everything the batch needs is
/// read in a few bulk queries, changes accumulate in a [`Unit`], and are written in a few
/// multi-row statements. Per record: `Ok(Applied)`, or a `Reject`/`Retry` failure; a store error
/// fails the whole batch.
pub async fn apply_items(
    conn: &mut dyn Exec,
    items: Vec<Result<Item, CrmFailure>>,
    lead_rules: Option<&crate::rules::LeadRules>,
) -> Result<Vec<Result<Applied, CrmFailure>>, StoreError> {
    let mut lead_ctx = lead_rules.map(leads::LeadCtx::new);
    let mut unit = Unit::default();
    unit.lean = items.iter().flatten().all(|i| !i.events);
    let mut keys = Vec::new();
    let (mut mobiles, mut id_nos) = (Vec::new(), Vec::new());
    for p in items.iter().flatten() {
        let id = p.entity_id.clone().unwrap_or_default();
        let entity = entity_of(&p.record_type);
        if p.new_id {
            unit.know_absent(entity, &id);
        } else {
            keys.push((entity.to_string(), id));
        }
        match p.record_type.as_str() {
            // A customer id is minted only when no stored customer has the mobile or ID number.
            "dms_customer" | "customer" if p.new_id => unit.know_no_customer(
                p.rec.get("mobile").and_then(Value::as_str),
                p.rec.get("id_no").and_then(Value::as_str),
            ),
            "dms_customer" | "customer" => {
                mobiles.extend(str_field(&p.rec, "mobile"));
                id_nos.extend(str_field(&p.rec, "id_no"));
            }
            "lead" => mobiles.extend(
                p.rec
                    .get("customer")
                    .and_then(Value::as_object)
                    .and_then(|c| str_field(c, "mobile")),
            ),
            "lead_result" => keys.push((
                "lead".into(),
                str_field(&p.rec, "lead_id").unwrap_or_default(),
            )),
            "campaign_result" => {
                mobiles.extend(str_field(&p.rec, "customer_mobile"));
                keys.push((
                    "campaign".into(),
                    str_field(&p.rec, "campaign_code").unwrap_or_default(),
                ));
            }
            // A vehicle is held until its dealer is known: look the dealers up in bulk.
            "vehicle" => {
                keys.extend(str_field(&p.rec, "dealer_code").map(|d| ("dealer".to_string(), d)))
            }
            _ => {}
        }
    }
    unit.prefetch(conn, &keys).await?;
    unit.prefetch_customers(conn, &mobiles, &id_nos).await?;
    let mut out = Vec::with_capacity(items.len());
    for p in items {
        let result = match p {
            Ok(p) => match apply_one(conn, &mut unit, p, lead_ctx.as_mut()).await {
                Err(CrmFailure::Store(e)) => return Err(e),
                other => other,
            },
            Err(e) => Err(e),
        };
        out.push(result);
    }
    unit.flush(conn).await?;
    Ok(out)
}

/// The CRM entity a record type lands in.
fn entity_of(record_type: &str) -> &str {
    match record_type {
        "dms_customer" => "customer",
        other => other,
    }
}

/// What the sink needs from a delivery's message.
#[derive(Debug, Clone, Default)]
struct MessageFacts {
    entity_id: Option<String>,
    partner: Option<String>,
    received_at: Option<i64>,
}

/// The hub id, partner and receive time of each delivery's message, in one query.
async fn message_facts(
    conn: &mut dyn Exec,
    batch: &[Claimed],
) -> Result<HashMap<Uuid, MessageFacts>, StoreError> {
    let mut out = HashMap::new();
    for chunk in batch.chunks(500) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, entity_id, partner, received_at FROM messages WHERE id IN ({})",
            list.join(",")
        );
        let args = chunk
            .iter()
            .map(|d| Arg::from(d.message_id.to_string()))
            .collect();
        let types = [Ty::Text, Ty::Text, Ty::Text, Ty::Int];
        for row in conn.rows(&sql, args, &types).await? {
            out.insert(
                parse_uuid(&row.text(0)?)?,
                MessageFacts {
                    entity_id: row.opt_text(1)?,
                    partner: row.opt_text(2)?,
                    received_at: row.opt_int(3)?,
                },
            );
        }
    }
    Ok(out)
}

async fn apply_one(
    conn: &mut dyn Exec,
    unit: &mut Unit,
    item: Item,
    lead_ctx: Option<&mut leads::LeadCtx<'_>>,
) -> Result<Applied, CrmFailure> {
    let Item {
        message_id,
        target,
        record_type,
        mut rec,
        entity_id,
        partner,
        received_at,
        key_field_approval,
        events: want_events,
        new_id: _,
    } = item;
    let system = partner.unwrap_or_else(|| "hub".into());
    let from_dms = system.starts_with("dms");
    let src = ChangeSource {
        system: system.clone(),
        message_id: Some(message_id),
        needs_approval: from_dms && key_field_approval,
    };
    let need_id = || {
        entity_id
            .clone()
            .ok_or_else(|| CrmFailure::Reject("message has no hub id".into()))
    };
    match record_type.as_str() {
        "dms_customer" | "customer" => {
            let mobile = str_field(&rec, "mobile");
            let id_no = str_field(&rec, "id_no");
            // The id given at accept may have lost a race with another new record for the same
            // person; the existing customer wins so there is never a duplicate.
            let id = match unit
                .find_customer(conn, mobile.as_deref(), id_no.as_deref())
                .await?
            {
                Some(existing) => existing,
                None => need_id()?,
            };
            let src_updated_at = rec
                .get("updated_at")
                .and_then(Value::as_str)
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis());
            rec.remove("source_ref");
            let cols = Columns {
                dealer_code: str_field(&rec, "dealer_code"),
                mobile,
                id_no,
                src_updated_at,
                ..Default::default()
            };
            let up = unit
                .upsert(conn, "customer", &id, &rec, &cols, &src)
                .await?;
            let summary = if up.stale {
                format!("customer {id}: stale update ignored (a newer version is stored)")
            } else if up.created {
                format!("customer {id} created")
            } else {
                let held = if up.held.is_empty() {
                    String::new()
                } else {
                    format!(", held for approval {:?}", up.held)
                };
                format!(
                    "customer {id} v{}: changed {:?}{held}",
                    up.version, up.changed
                )
            };
            let events = if up.changed.is_empty() || !want_events {
                vec![]
            } else {
                vec![customer_event(&id, &up, &src)]
            };
            Ok(Applied { summary, events })
        }
        "lead" => {
            let id = need_id()?;
            let customer = rec
                .get("customer")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_else(|| rec.clone());
            let mobile = str_field(&customer, "mobile");
            if let Some(cid) = unit.find_customer(conn, mobile.as_deref(), None).await? {
                rec.insert("customer_id".into(), Value::String(cid));
            }
            rec.insert("lead_id".into(), Value::String(id.clone()));
            let cols = Columns {
                mobile,
                on_create: vec![("status", Value::String("new".into()))],
                ..Default::default()
            };
            let up = unit.upsert(conn, "lead", &id, &rec, &cols, &src).await?;
            // Scored and distributed once, when created: a replay updates the lead's fields
            // but never assigns it again.
            if up.created
                && let Some(ctx) = lead_ctx
            {
                let (summary, event) =
                    leads::on_created(conn, unit, ctx, &id, &rec, received_at, &src).await?;
                return Ok(Applied {
                    summary,
                    events: event.into_iter().collect(),
                });
            }
            Ok(Applied {
                summary: format!(
                    "lead {id} {}",
                    if up.created { "created" } else { "updated" }
                ),
                events: vec![],
            })
        }
        "lead_result" => {
            let id = need_id()?;
            let lead_id = str_field(&rec, "lead_id").unwrap_or_default();
            let Some(lead) = unit.get(conn, "lead", &lead_id).await?.cloned() else {
                return Err(CrmFailure::Reject(format!("unknown lead {lead_id}")));
            };
            let result_dealer = str_field(&rec, "dealer_code");
            if let Some(why) = leads::refuse_result(
                &lead_id,
                &lead,
                result_dealer.as_deref().unwrap_or_default(),
            ) {
                return Err(CrmFailure::Reject(why));
            }
            let cols = Columns {
                dealer_code: result_dealer.clone(),
                reference: Some(lead_id.clone()),
                ..Default::default()
            };
            unit.upsert(conn, "lead_result", &id, &rec, &cols, &src)
                .await?;
            let mut change = Map::new();
            if let Some(s) = rec.get("status") {
                change.insert("status".into(), s.clone());
            }
            unit.upsert(conn, "lead", &lead_id, &change, &Columns::default(), &src)
                .await?;
            let resolved = leads::on_result(
                conn,
                &lead_id,
                result_dealer.as_deref().unwrap_or_default(),
                str_field(&rec, "status").as_deref().unwrap_or_default(),
            )
            .await?;
            let resolved = if resolved > 0 {
                ", escalation resolved".to_string()
            } else {
                String::new()
            };
            Ok(Applied {
                summary: format!("result {id} recorded on lead {lead_id}{resolved}"),
                events: vec![],
            })
        }
        "campaign_result" => {
            let id = need_id()?;
            campaigns::check_result(conn, unit, &rec).await?;
            let mobile = str_field(&rec, "customer_mobile");
            if let Some(cid) = unit.find_customer(conn, mobile.as_deref(), None).await? {
                rec.insert("customer_id".into(), Value::String(cid));
            }
            let cols = Columns {
                dealer_code: str_field(&rec, "dealer_code"),
                mobile,
                reference: str_field(&rec, "campaign_code"),
                ..Default::default()
            };
            unit.upsert(conn, "campaign_result", &id, &rec, &cols, &src)
                .await?;
            let resolved = if campaigns::resolve_escalation(conn, &rec, &id).await? {
                ", escalation resolved"
            } else {
                ""
            };
            Ok(Applied {
                summary: format!("campaign result {id} recorded{resolved}"),
                events: vec![],
            })
        }
        "vehicle" => {
            let id = need_id()?;
            let mut events = Vec::new();
            let dealer = str_field(&rec, "dealer_code");
            // Not applied without its dealer, and not dropped: retried with the route's backoff
            // until OSM's dealer file brings the dealer, parked with this reason if it never does.
            if let Some(code) = &dealer
                && unit.get(conn, "dealer", code).await?.is_none()
            {
                return Err(CrmFailure::Retry(format!(
                    "dealer {code} unknown: the vehicle is held until the dealer arrives"
                )));
            }
            if let Some(owner) = rec.get("owner").and_then(Value::as_object).cloned() {
                let (customer_id, created) =
                    owner_customer(conn, unit, &owner, dealer.as_deref(), &src, want_events)
                        .await?;
                if let Some(ev) = created {
                    events.push(ev);
                }
                if let Some(cid) = customer_id {
                    rec.insert("owner_customer_id".into(), Value::String(cid));
                }
            }
            let cols = Columns {
                dealer_code: dealer,
                mobile: rec
                    .get("owner")
                    .and_then(Value::as_object)
                    .and_then(|o| str_field(o, "mobile")),
                // A customer's vehicles are found by `ref` (see `removal`).
                reference: str_field(&rec, "owner_customer_id"),
                ..Default::default()
            };
            let up = unit.upsert(conn, "vehicle", &id, &rec, &cols, &src).await?;
            Ok(Applied {
                summary: format!(
                    "vehicle {id} v{}{}",
                    up.version,
                    rec.get("owner_customer_id")
                        .and_then(Value::as_str)
                        .map(|c| format!(", owner {c}"))
                        .unwrap_or_default()
                ),
                events,
            })
        }
        "campaign" => campaigns::apply_campaign(conn, unit, &rec, &src).await,
        "dealer" => {
            let id = need_id()?;
            let cols = Columns {
                dealer_code: str_field(&rec, "dealer_code"),
                ..Default::default()
            };
            let up = unit
                .upsert(conn, &record_type, &id, &rec, &cols, &src)
                .await?;
            if up.created {
                campaigns::wake_held_for_dealer(conn, &target, &id).await?;
            }
            Ok(Applied {
                summary: format!("{record_type} {id} v{}", up.version),
                events: vec![],
            })
        }
        other => Err(CrmFailure::Reject(format!(
            "the CRM store does not take '{other}' records"
        ))),
    }
}

/// The CRM customer owning a vehicle: matched by mobile, else ID number; created from the
/// owner's name and contacts when new (its serving dealer is the selling dealer). Returns the
/// customer id (none for an owner with neither mobile nor ID number: nothing to match or reach
/// them by) and, for a new customer, its `customer.created` event if `event`.
async fn owner_customer(
    conn: &mut dyn Exec,
    unit: &mut Unit,
    owner: &Map<String, Value>,
    dealer: Option<&str>,
    src: &ChangeSource,
    event: bool,
) -> Result<(Option<String>, Option<ChangeEvent>), CrmFailure> {
    let mobile = str_field(owner, "mobile");
    let id_no = str_field(owner, "id_no");
    if mobile.is_none() && id_no.is_none() {
        return Ok((None, None));
    }
    if let Some(cid) = unit
        .find_customer(conn, mobile.as_deref(), id_no.as_deref())
        .await?
    {
        return Ok((Some(cid), None));
    }
    let n = crate::store::journal::reserve(conn, "customer", 1).await?;
    let cid = format!("C{n:09}");
    let mut fields = Map::new();
    for k in ["name", "mobile", "id_no"] {
        if let Some(v) = owner.get(k) {
            fields.insert(k.to_string(), v.clone());
        }
    }
    if let Some(d) = dealer {
        fields.insert("dealer_code".into(), Value::String(d.to_string()));
    }
    let cols = Columns {
        dealer_code: dealer.map(str::to_string),
        mobile: mobile.clone(),
        id_no: id_no.clone(),
        ..Default::default()
    };
    let up = unit
        .upsert(conn, "customer", &cid, &fields, &cols, src)
        .await?;
    unit.remember_customer(&cid, mobile.as_deref(), id_no.as_deref());
    let created = event.then(|| customer_event(&cid, &up, src));
    Ok((Some(cid), created))
}

/// Headquarters decides a pending key-field change. Approving applies it (history, version,
/// change event); rejecting only closes it. Returns the event to fan out, if any.
pub async fn decide_approval(
    conn: &mut AnyConnection,
    approval_id: i64,
    approve: bool,
    who: &str,
    comment: Option<&str>,
    dealer_scope: Option<&str>,
) -> Result<Option<ChangeEvent>, StoreError> {
    let row = sqlx::query(
        "SELECT customer_id, field, new_value, status, dealer_code FROM approvals WHERE id = $1",
    )
    .bind(approval_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("approval {approval_id}")))?;
    let customer_id: String = row.try_get(0)?;
    let field: String = row.try_get(1)?;
    let new_value: Option<String> = row.try_get(2)?;
    let status: String = row.try_get(3)?;
    let dealer: Option<String> = row.try_get(4)?;
    if let Some(scope) = dealer_scope
        && dealer.as_deref() != Some(scope)
    {
        return Err(StoreError::NotFound(format!("approval {approval_id}")));
    }
    if status != "pending" {
        return Err(StoreError::Conflict(format!(
            "approval {approval_id} is already {status}"
        )));
    }
    conn.exec("UPDATE approvals SET status = $1, decided_by = $2, comment = $3, decided_at = $4 WHERE id = $5", args![if approve { "approved" } else { "rejected" }, who, comment, now_ms(), approval_id]).await?;
    if !approve {
        return Ok(None);
    }
    let mut change = Map::new();
    change.insert(field, new_value.map(Value::String).unwrap_or(Value::Null));
    let src = ChangeSource {
        system: format!("crm:approval:{who}"),
        message_id: None,
        needs_approval: false,
    };
    let up = upsert(
        conn,
        "customer",
        &customer_id,
        &change,
        &Columns::default(),
        &src,
    )
    .await?;
    Ok((!up.changed.is_empty()).then(|| customer_event(&customer_id, &up, &src)))
}

/// Headquarters edits a customer directly (`PUT /api/v1/customers/<id>`).
pub async fn edit_customer(
    conn: &mut AnyConnection,
    id: &str,
    fields: &Map<String, Value>,
    who: &str,
) -> Result<(Upserted, Option<ChangeEvent>), StoreError> {
    let exists = sqlx::query("SELECT 1 FROM crm_records WHERE entity = 'customer' AND id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!("customer {id}")));
    }
    let src = ChangeSource {
        system: format!("crm:hq:{who}"),
        message_id: None,
        needs_approval: false,
    };
    let up = upsert(conn, "customer", id, fields, &Columns::default(), &src).await?;
    let ev = (!up.changed.is_empty()).then(|| customer_event(id, &up, &src));
    Ok((up, ev))
}

/// Key of the PostgreSQL advisory lock the demo-dealer seeding holds until its transaction ends.
const SEED_LOCK: i64 = 0x5359_4e43_5345_4544; // "SYNCSEED"

/// The demo dealers of the local profile (INTERFACES §0), created once if absent, so a newcomer's
/// first DMS records have dealers to belong to.
pub async fn seed_demo_dealers(conn: &mut AnyConnection) -> Result<u32, StoreError> {
    let demo = [
        ("D0001", "广州示范经销店", "华南", "广东", "广州"),
        ("D0002", "深圳示范经销店", "华南", "广东", "深圳"),
        ("D0003", "北京示范经销店", "华北", "北京", "北京"),
    ];
    let src = ChangeSource {
        system: "seed:local".into(),
        message_id: None,
        needs_approval: false,
    };
    // Instances of one deployment start together: without the lock two of them both find a
    // dealer missing and the second insert fails its start (seen in the scale-out test).
    crate::store::advisory_xact_lock(conn, SEED_LOCK).await?;
    let mut created = 0;
    for (code, name, region, province, city) in demo {
        let exists = sqlx::query("SELECT 1 FROM crm_records WHERE entity = 'dealer' AND id = $1")
            .bind(code)
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_some() {
            continue;
        }
        let data = json!({"dealer_code": code, "dealer_name": name, "region": region, "province": province,
                          "city": city, "status": "active"});
        let cols = Columns {
            dealer_code: Some(code.to_string()),
            ..Default::default()
        };
        upsert(
            conn,
            "dealer",
            code,
            data.as_object().expect("object literal"),
            &cols,
            &src,
        )
        .await?;
        created += 1;
    }
    Ok(created)
}
