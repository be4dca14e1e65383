//! Journal writes: accepting submissions (messages, keys, idempotency, deliveries in one
//! transaction), claiming due deliveries, recording attempts, and the operator actions
//! replay / retry / park. Every function takes the connection of a transaction the backend owns.

use std::collections::HashMap;

use serde_json::json;
use synchub_adapter_sdk::{FieldError, RecordVerdict};
use uuid::Uuid;

use super::exec::{Exec, Ty};
use super::rows::{
    Arg, insert_rows, insert_rows_returning, update_from_values, update_from_values_returning_ids,
};
use super::stats::Tally;
use super::{Dialect, StoreError, now_ms};

/// The transport unit as journaled.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub kind: &'static str,
    pub endpoint: String,
    pub record_type: Option<String>,
    pub routes: Vec<String>,
    pub received_at: i64,
    pub correlation_id: Option<String>,
    pub partner: Option<String>,
    pub dealer_code: Option<String>,
    pub source_ref: Option<String>,
    pub status: &'static str,
    pub reason: Option<String>,
    pub entity_id: Option<String>,
    pub content_type: &'static str,
    pub headers: String,
    pub body: Vec<u8>,
}

/// How the hub names the business record a message creates, decided in the accept transaction
/// so the partner gets the id in its 202.
#[derive(Debug, Clone)]
pub enum IdRule {
    /// Match an existing customer by mobile, then ID number; otherwise mint `C000000001`.
    Customer {
        mobile: Option<String>,
        id_no: Option<String>,
    },
    /// `L<yyyymmdd><5 digits>`, counted per day.
    Lead,
    /// A prefix and a global counter (`LR`, `CR`).
    Counter(&'static str),
    /// The record carries its own identity (VIN, dealer code, campaign code).
    Natural(String),
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub route: String,
    pub target: String,
    pub lane: Option<String>,
    pub dealer_code: Option<String>,
    pub max_attempts: i64,
    pub backoff_ms: i64,
    pub max_backoff_ms: i64,
    pub mapping: Option<String>,
    pub mapping_version: Option<i64>,
    pub content_type: &'static str,
    pub headers: String,
    pub body: Vec<u8>,
}

/// One record, validated and mapped outside the transaction (pure CPU work stays off the writer).
#[derive(Debug, Clone)]
pub struct PreparedRecord {
    pub message: NewMessage,
    /// Rejected records carry their errors and nothing below is used.
    pub errors: Option<Vec<FieldError>>,
    pub keys: Vec<(&'static str, String)>,
    pub idempotency: Option<(String, String)>,
    pub id_rule: Option<IdRule>,
    pub deliveries: Vec<NewDelivery>,
}

const MESSAGE_COLS: &[&str] = &[
    "id",
    "parent_id",
    "kind",
    "endpoint",
    "record_type",
    "routes",
    "received_at",
    "correlation_id",
    "partner",
    "dealer_code",
    "source_ref",
    "status",
    "reason",
    "entity_id",
    "content_type",
    "headers",
    "body",
];

fn message_row(m: &NewMessage) -> Vec<Arg> {
    vec![
        m.id.to_string().into(),
        m.parent_id.map(|p| p.to_string()).into(),
        m.kind.into(),
        m.endpoint.clone().into(),
        m.record_type.clone().into(),
        (!m.routes.is_empty()).then(|| m.routes.join(",")).into(),
        m.received_at.into(),
        m.correlation_id.clone().into(),
        m.partner.clone().into(),
        m.dealer_code.clone().into(),
        m.source_ref.clone().into(),
        m.status.into(),
        m.reason.clone().into(),
        m.entity_id.clone().into(),
        m.content_type.into(),
        m.headers.clone().into(),
        Arg::Blob(m.body.clone()),
    ]
}

pub async fn insert_messages(conn: &mut dyn Exec, ms: &[&NewMessage]) -> Result<(), StoreError> {
    let mut tally = Tally::default();
    for m in ms {
        tally.message(
            m.routes.iter().map(String::as_str),
            m.dealer_code.as_deref(),
            m.received_at,
            m.status == "rejected",
        );
    }
    insert_rows(
        conn,
        "messages",
        MESSAGE_COLS,
        ms.iter().map(|m| message_row(m)).collect(),
        "",
    )
    .await?;
    tally.write(conn).await
}

pub async fn insert_message(conn: &mut dyn Exec, m: &NewMessage) -> Result<(), StoreError> {
    insert_messages(conn, &[m]).await
}

/// Business keys of many messages in one statement.
pub async fn insert_keys_of(
    conn: &mut dyn Exec,
    keys: &[(Uuid, &[(&'static str, String)])],
) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    for (id, ks) in keys {
        key_rows(*id, ks, &mut rows);
    }
    insert_rows(
        conn,
        "message_keys",
        &["value", "kind", "message_id"],
        rows,
        "ON CONFLICT DO NOTHING",
    )
    .await?;
    Ok(())
}

pub async fn insert_keys(
    conn: &mut dyn Exec,
    message_id: Uuid,
    keys: &[(&'static str, String)],
) -> Result<(), StoreError> {
    insert_keys_of(conn, &[(message_id, keys)]).await
}

const DELIVERY_COLS: &[&str] = &[
    "message_id",
    "route",
    "target",
    "lane",
    "dealer_code",
    "status",
    "attempts",
    "max_attempts",
    "backoff_ms",
    "max_backoff_ms",
    "next_attempt_at",
    "mapping",
    "mapping_version",
    "content_type",
    "headers",
    "body",
    "created_at",
    "updated_at",
];

/// Deliveries of many messages in one statement; ids (and so lane order) follow slice order.
pub async fn insert_deliveries(
    conn: &mut dyn Exec,
    ds: &[(Uuid, &NewDelivery)],
) -> Result<(), StoreError> {
    let now = now_ms();
    let rows = ds
        .iter()
        .map(|(mid, d)| delivery_row(*mid, d, now))
        .collect();
    insert_rows(conn, "deliveries", DELIVERY_COLS, rows, "").await?;
    Ok(())
}

pub async fn insert_delivery(
    conn: &mut dyn Exec,
    message_id: Uuid,
    d: &NewDelivery,
) -> Result<(), StoreError> {
    insert_deliveries(conn, &[(message_id, d)]).await
}

/// Reserves `n` consecutive values of a named counter and returns the first.
pub(crate) async fn reserve(conn: &mut dyn Exec, name: &str, n: i64) -> Result<i64, StoreError> {
    let rows = conn
        .rows(
            "INSERT INTO counters (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = counters.value + $2 RETURNING value",
            vec![name.into(), n.into()],
            &[Ty::Int],
        )
        .await?;
    let value = rows
        .first()
        .ok_or_else(|| StoreError::Query(format!("counter {name} returned no value")))?
        .int(0)?;
    Ok(value - n + 1)
}

fn china_day() -> String {
    chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"))
        .format("%Y%m%d")
        .to_string()
}

/// Existing customers by mobile and by ID number, for many records at once.
async fn customers_by(
    conn: &mut dyn Exec,
    col: &str,
    values: &[String],
) -> Result<HashMap<String, String>, StoreError> {
    let mut found = HashMap::new();
    for chunk in values.chunks(500) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {col}, id FROM crm_records WHERE entity = 'customer' AND {col} IN ({}) ORDER BY created_at",
            list.join(",")
        );
        let args = chunk.iter().map(|v| v.as_str().into()).collect();
        for row in conn.rows(&sql, args, &[Ty::Text, Ty::Text]).await? {
            found.entry(row.text(0)?).or_insert(row.text(1)?);
        }
    }
    Ok(found)
}

/// Gives every rule its business id: counters reserved in blocks, customers matched by mobile
/// then ID number (two new records of one person in the same batch share one new id).
pub async fn assign_ids(
    conn: &mut dyn Exec,
    rules: &[Option<&IdRule>],
) -> Result<Vec<Option<String>>, StoreError> {
    Ok(assign_ids_noting_new(conn, rules).await?.0)
}

/// [`assign_ids`], also saying which ids were minted here (customers not matched): no record
/// is stored under those yet.
pub async fn assign_ids_noting_new(
    conn: &mut dyn Exec,
    rules: &[Option<&IdRule>],
) -> Result<(Vec<Option<String>>, Vec<bool>), StoreError> {
    let mut out: Vec<Option<String>> = vec![None; rules.len()];
    let mut new_ids = vec![false; rules.len()];
    let mut mobiles = Vec::new();
    let mut id_nos = Vec::new();
    let (mut leads, mut counters): (i64, HashMap<&'static str, i64>) = (0, HashMap::new());
    for rule in rules.iter().flatten() {
        match rule {
            IdRule::Customer { mobile, id_no } => {
                mobiles.extend(mobile.clone());
                id_nos.extend(id_no.clone());
            }
            IdRule::Lead => leads += 1,
            IdRule::Counter(p) => *counters.entry(p).or_default() += 1,
            IdRule::Natural(_) => {}
        }
    }
    let by_mobile = if mobiles.is_empty() {
        HashMap::new()
    } else {
        customers_by(conn, "mobile", &mobiles).await?
    };
    let by_id_no = if id_nos.is_empty() {
        HashMap::new()
    } else {
        customers_by(conn, "id_no", &id_nos).await?
    };
    let day = china_day();
    let mut next_lead = if leads > 0 {
        reserve(conn, &format!("lead:{day}"), leads).await?
    } else {
        0
    };
    let mut next_counter = HashMap::new();
    for (p, n) in &counters {
        next_counter.insert(*p, reserve(conn, p, *n).await?);
    }
    let mut new_customers: Vec<usize> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        out[i] = match rule {
            None => None,
            Some(IdRule::Natural(id)) => Some(id.clone()),
            Some(IdRule::Lead) => {
                let id = format!("L{day}{next_lead:05}");
                next_lead += 1;
                Some(id)
            }
            Some(IdRule::Counter(p)) => {
                let n = next_counter.get_mut(p).expect("reserved above");
                let id = format!("{p}{:010}", *n);
                *n += 1;
                Some(id)
            }
            Some(IdRule::Customer { mobile, id_no }) => {
                let known = mobile
                    .as_ref()
                    .and_then(|m| by_mobile.get(m))
                    .or_else(|| id_no.as_ref().and_then(|n| by_id_no.get(n)));
                match known {
                    Some(id) => Some(id.clone()),
                    None => {
                        new_customers.push(i);
                        None
                    }
                }
            }
        };
    }
    if !new_customers.is_empty() {
        let mut next = reserve(conn, "customer", new_customers.len() as i64).await?;
        let mut minted: HashMap<String, String> = HashMap::new();
        for i in new_customers {
            let Some(IdRule::Customer { mobile, id_no }) = rules[i] else {
                continue;
            };
            let same_person = mobile
                .as_ref()
                .map(|m| format!("m:{m}"))
                .and_then(|k| minted.get(&k).cloned())
                .or_else(|| {
                    id_no
                        .as_ref()
                        .map(|n| format!("i:{n}"))
                        .and_then(|k| minted.get(&k).cloned())
                });
            let id = same_person.unwrap_or_else(|| {
                let id = format!("C{next:09}");
                next += 1;
                id
            });
            for k in [
                mobile.as_ref().map(|m| format!("m:{m}")),
                id_no.as_ref().map(|n| format!("i:{n}")),
            ]
            .into_iter()
            .flatten()
            {
                minted.entry(k).or_insert_with(|| id.clone());
            }
            out[i] = Some(id);
            new_ids[i] = true;
        }
    }
    Ok((out, new_ids))
}

/// Journals a prepared event or replayed record (message, keys, deliveries) without the
/// idempotency ledger: events are minted by the hub itself.
pub async fn insert_prepared(conn: &mut dyn Exec, rec: &PreparedRecord) -> Result<(), StoreError> {
    insert_prepared_many(conn, std::slice::from_ref(rec)).await
}

/// [`insert_prepared`] for many (the change events of a CRM batch): the same three multi-row
/// statements whatever their number.
pub async fn insert_prepared_many(
    conn: &mut dyn Exec,
    recs: &[PreparedRecord],
) -> Result<(), StoreError> {
    if recs.is_empty() {
        return Ok(());
    }
    let messages: Vec<&NewMessage> = recs.iter().map(|r| &r.message).collect();
    insert_messages(conn, &messages).await?;
    let keys: Vec<(Uuid, &[(&'static str, String)])> = recs
        .iter()
        .map(|r| (r.message.id, r.keys.as_slice()))
        .collect();
    insert_keys_of(conn, &keys).await?;
    let ds: Vec<(Uuid, &NewDelivery)> = recs
        .iter()
        .flat_map(|r| r.deliveries.iter().map(|d| (r.message.id, d)))
        .collect();
    insert_deliveries(conn, &ds).await
}

/// Column positions in a message row that the accept transaction may still change.
const MSG_ROUTES: usize = 5;
const MSG_RECEIVED: usize = 6;
const MSG_DEALER: usize = 9;
const MSG_STATUS: usize = 11;
const MSG_REASON: usize = 12;
const MSG_ENTITY: usize = 13;

/// A submission turned into SQL rows before it reaches the store's writer, so the serial part
/// of an accept (the single SQLite writer) only decides ids and duplicates and binds rows.
#[derive(Clone)]
pub struct Staged {
    /// The transport units' rows first (`transports` of them), then one per record.
    messages: Vec<Vec<Arg>>,
    transports: usize,
    keys: Vec<Vec<Arg>>,
    /// Per record: its delivery rows.
    deliveries: Vec<Vec<Vec<Arg>>>,
    records: Vec<StagedRecord>,
}

#[derive(Clone)]
struct StagedRecord {
    message_id: Uuid,
    record_type: Option<String>,
    errors: Option<Vec<FieldError>>,
    idempotency: Option<(String, String)>,
    id_rule: Option<IdRule>,
}

fn key_rows(message_id: Uuid, keys: &[(&'static str, String)], out: &mut Vec<Vec<Arg>>) {
    let id = message_id.to_string();
    for (kind, value) in keys.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(vec![
            value.clone().into(),
            (*kind).into(),
            id.clone().into(),
        ]);
    }
}

fn delivery_row(message_id: Uuid, d: &NewDelivery, now: i64) -> Vec<Arg> {
    vec![
        message_id.to_string().into(),
        d.route.clone().into(),
        d.target.clone().into(),
        d.lane.clone().into(),
        d.dealer_code.clone().into(),
        "pending".into(),
        0i64.into(),
        d.max_attempts.into(),
        d.backoff_ms.into(),
        d.max_backoff_ms.into(),
        now.into(),
        d.mapping.clone().into(),
        d.mapping_version.into(),
        d.content_type.into(),
        d.headers.clone().into(),
        Arg::Blob(d.body.clone()),
        now.into(),
        now.into(),
    ]
}

/// Builds every row of a submission (pure; runs in the caller's task).
pub fn stage(
    transport: &NewMessage,
    transport_keys: &[(&'static str, String)],
    records: Vec<PreparedRecord>,
) -> Staged {
    let now = now_ms();
    let mut messages = Vec::with_capacity(records.len() + 1);
    let mut keys = Vec::new();
    messages.push(message_row(transport));
    key_rows(transport.id, transport_keys, &mut keys);
    let mut deliveries = Vec::with_capacity(records.len());
    let mut staged = Vec::with_capacity(records.len());
    for r in records {
        messages.push(message_row(&r.message));
        key_rows(r.message.id, &r.keys, &mut keys);
        deliveries.push(if r.errors.is_none() {
            r.deliveries
                .iter()
                .map(|d| delivery_row(r.message.id, d, now))
                .collect()
        } else {
            Vec::new()
        });
        staged.push(StagedRecord {
            message_id: r.message.id,
            record_type: r.message.record_type,
            errors: r.errors,
            idempotency: r.idempotency,
            id_rule: r.id_rule,
        });
    }
    Staged {
        messages,
        transports: 1,
        keys,
        deliveries,
        records: staged,
    }
}

/// Journals one transport unit and its records; the heart of "accept = durable". A constant
/// number of statements per submission, whatever its size: ids, idempotency, messages, keys
/// and deliveries each go in one multi-row statement.
pub async fn accept(
    conn: &mut dyn Exec,
    transport: &NewMessage,
    transport_keys: &[(&'static str, String)],
    records: Vec<PreparedRecord>,
) -> Result<Vec<RecordVerdict>, StoreError> {
    commit_staged(conn, stage(transport, transport_keys, records)).await
}

impl Staged {
    /// How many records (and so verdicts) it holds.
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// Several transport units staged as one, committed by one `commit_staged`; its verdicts
    /// are those of the parts' records in order.
    pub fn merge(parts: Vec<Staged>) -> Staged {
        let mut transports = Vec::new();
        let mut records_rows = Vec::new();
        let mut out = Staged {
            messages: Vec::new(),
            transports: 0,
            keys: Vec::new(),
            deliveries: Vec::new(),
            records: Vec::new(),
        };
        for mut p in parts {
            let recs = p.messages.split_off(p.transports);
            out.transports += p.transports;
            transports.append(&mut p.messages);
            records_rows.extend(recs);
            out.keys.append(&mut p.keys);
            out.deliveries.append(&mut p.deliveries);
            out.records.append(&mut p.records);
        }
        transports.append(&mut records_rows);
        out.messages = transports;
        out
    }
}

/// The transactional half of `accept`: ids, duplicates, then the prepared rows.
pub async fn commit_staged(
    conn: &mut dyn Exec,
    mut st: Staged,
) -> Result<Vec<RecordVerdict>, StoreError> {
    let rules: Vec<Option<&IdRule>> = st
        .records
        .iter()
        .map(|r| {
            if r.errors.is_none() {
                r.id_rule.as_ref()
            } else {
                None
            }
        })
        .collect();
    let ids = assign_ids(conn, &rules).await?;

    // Idempotency: the ledger row is inserted first; a key already there (now or earlier in this
    // batch) makes the record a duplicate of the message that holds it.
    let ledger: Vec<(usize, String, String)> = st
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.errors.is_none())
        .filter_map(|(i, r)| r.idempotency.clone().map(|(s, k)| (i, s, k)))
        .collect();
    let now = now_ms();
    let rows = ledger
        .iter()
        .map(|(i, scope, key)| {
            vec![
                scope.clone().into(),
                key.clone().into(),
                st.records[*i].message_id.to_string().into(),
                ids[*i].clone().into(),
                now.into(),
            ]
        })
        .collect::<Vec<_>>();
    let mut duplicate_of: HashMap<usize, (String, Option<String>)> = HashMap::new();
    if !rows.is_empty() {
        // RETURNING names the keys this statement took; only the others (duplicates: rare) need
        // a second look to find the message that holds them.
        let taken = insert_rows_returning(
            conn,
            "idempotency",
            &["scope", "idem_key", "message_id", "entity_id", "created_at"],
            rows,
            "ON CONFLICT DO NOTHING RETURNING message_id",
        )
        .await?;
        let taken: std::collections::HashSet<String> = taken.into_iter().collect();
        let others: Vec<&(usize, String, String)> = ledger
            .iter()
            .filter(|(i, _, _)| !taken.contains(&st.records[*i].message_id.to_string()))
            .collect();
        for (i, scope, key) in others {
            let rows = conn
                .rows(
                    "SELECT message_id, entity_id FROM idempotency WHERE scope = $1 AND idem_key = $2",
                    vec![scope.as_str().into(), key.as_str().into()],
                    &[Ty::Text, Ty::Text],
                )
                .await?;
            let row = rows.first().ok_or_else(|| {
                StoreError::Query(format!("idempotency key {scope}/{key} vanished"))
            })?;
            duplicate_of.insert(*i, (row.text(0)?, row.opt_text(1)?));
        }
    }

    let mut verdicts = Vec::with_capacity(st.records.len());
    let mut delivery_rows = Vec::new();
    for (i, rec) in st.records.iter().enumerate() {
        let row = &mut st.messages[st.transports + i];
        if let Some(errors) = rec.errors.clone() {
            verdicts.push(RecordVerdict::Rejected {
                message_id: rec.message_id,
                errors,
            });
        } else if let Some((first, entity)) = duplicate_of.get(&i) {
            row[MSG_STATUS] = "duplicate".into();
            row[MSG_REASON] = format!("duplicate of message {first}: no second effect").into();
            row[MSG_ENTITY] = entity.clone().into();
            row[MSG_ROUTES] = Arg::Text(None);
            // Found by the id it duplicates, like the first copy: search reads only the keys.
            if let Some(id) = entity {
                key_rows(
                    rec.message_id,
                    &[(entity_key_kind(rec.record_type.as_deref()), id.clone())],
                    &mut st.keys,
                );
            }
            verdicts.push(RecordVerdict::Accepted {
                message_id: rec.message_id,
                id: entity.clone(),
                duplicate: true,
            });
        } else {
            row[MSG_ENTITY] = ids[i].clone().into();
            if let Some(id) = &ids[i] {
                key_rows(
                    rec.message_id,
                    &[(entity_key_kind(rec.record_type.as_deref()), id.clone())],
                    &mut st.keys,
                );
            }
            delivery_rows.append(&mut st.deliveries[i]);
            verdicts.push(RecordVerdict::Accepted {
                message_id: rec.message_id,
                id: ids[i].clone(),
                duplicate: false,
            });
        }
    }
    let mut tally = Tally::default();
    for row in &st.messages {
        let text = |i: usize| match &row[i] {
            Arg::Text(t) => t.as_deref(),
            _ => None,
        };
        let received_at = match row[MSG_RECEIVED] {
            Arg::Int(Some(t)) => t,
            _ => now,
        };
        if let Some(routes) = text(MSG_ROUTES) {
            tally.message(
                routes.split(','),
                text(MSG_DEALER),
                received_at,
                text(MSG_STATUS) == Some("rejected"),
            );
        }
    }
    insert_rows(conn, "messages", MESSAGE_COLS, st.messages, "").await?;
    insert_rows(
        conn,
        "message_keys",
        &["value", "kind", "message_id"],
        st.keys,
        "ON CONFLICT DO NOTHING",
    )
    .await?;
    insert_rows(conn, "deliveries", DELIVERY_COLS, delivery_rows, "").await?;
    tally.write(conn).await?;
    Ok(verdicts)
}

/// Key kind of a batch's line span: one key for the rows of a file applied in one transaction,
/// instead of one `source_ref` key per row (the per-row keys were the largest share of a bulk
/// batch's writes, and their unpadded line numbers landed all over the key index).
pub(crate) const SPAN_KIND: &str = "source_span";

/// The span key of lines `first..=last` of the rows whose source references are
/// `<prefix>:<line>`. Zero-padded so that spans sort by their first line, and kept out of the
/// per-row references' range (`@lines:`), so a search seeks one span without scanning rows.
pub(crate) fn span_key(prefix: &str, first: u64, last: u64) -> String {
    format!("{}{first:012}-{last:012}", span_base(prefix))
}

/// What every span key of the lines of `prefix` starts with.
pub(crate) fn span_base(prefix: &str) -> String {
    format!("{prefix}@lines:")
}

/// A row's source reference `<prefix>:<line>` split; `None` for references of another shape.
pub(crate) fn line_ref(source_ref: &str) -> Option<(&str, u64)> {
    let (prefix, line) = source_ref.rsplit_once(':')?;
    if prefix.is_empty()
        || line.is_empty()
        || line.len() > 12
        || !line.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((prefix, line.parse().ok()?))
}

/// Which business-key kind the hub-assigned id of a record type is searched by.
pub(crate) fn entity_key_kind(record_type: Option<&str>) -> &'static str {
    match record_type {
        Some("lead") => "lead_id",
        Some("dms_customer") | Some("customer") => "customer_id",
        Some("vehicle") => "vin",
        Some("dealer") => "dealer_code",
        Some("campaign") => "campaign_code",
        _ => "record_id",
    }
}

/// A delivery claimed by this instance until `lease_until`.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub message_id: Uuid,
    pub route: String,
    pub target: String,
    pub lane: Option<String>,
    pub dealer_code: Option<String>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub backoff_ms: i64,
    pub max_backoff_ms: i64,
    /// The route's mapping, run by the dispatcher at each attempt.
    pub mapping: Option<String>,
    /// The pinned mapping version (route or replay), or after mapping the version used.
    pub mapping_version: Option<i64>,
    pub content_type: String,
    pub headers: String,
    /// The validated record.
    pub body: Vec<u8>,
    /// What the mapping made of `body` for this attempt (set by the dispatcher); what is sent.
    pub mapped_body: Option<Vec<u8>>,
    pub correlation_id: Option<String>,
    pub lease_until: i64,
}

impl Claimed {
    /// The bytes this attempt sends: the mapped body, or the record itself without a mapping.
    pub fn payload(&self) -> &[u8] {
        self.mapped_body.as_deref().unwrap_or(&self.body)
    }
}

/// Which targets a claim takes: the dispatcher claims CRM-store deliveries (applied in batches
/// inside the writer) apart from partner deliveries (one worker each).
#[derive(Debug, Clone)]
pub enum Targets {
    All,
    Only(Vec<String>),
    Except(Vec<String>),
}

/// Claims up to `limit` due deliveries whose lane is free (no earlier unfinished delivery with
/// the same lane key to the same target). On PostgreSQL, `SKIP LOCKED` lets several instances
/// claim concurrently without ever taking the same row.
///
/// `Targets::Only` claims target by target, each through the `(target, next_attempt_at)` index
/// of due deliveries: the cost stays proportional to what is claimed, however long another
/// target's backlog is (a million CRM rows waiting must not slow the claim of partner rows).
/// The order of the targets rotates so none starves the others.
pub async fn claim(
    conn: &mut dyn Exec,
    dialect: Dialect,
    limit: i64,
    lease_ms: i64,
    targets: &Targets,
) -> Result<Vec<Claimed>, StoreError> {
    let Targets::Only(list) = targets else {
        return claim_where(conn, dialect, limit, lease_ms, targets).await;
    };
    if list.len() <= 1 {
        return claim_where(conn, dialect, limit, lease_ms, targets).await;
    }
    static ROTATE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let start = ROTATE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % list.len();
    let mut out = Vec::new();
    for i in 0..list.len() {
        let remaining = limit - out.len() as i64;
        if remaining <= 0 {
            break;
        }
        let one = Targets::Only(vec![list[(start + i) % list.len()].clone()]);
        out.extend(claim_where(conn, dialect, remaining, lease_ms, &one).await?);
    }
    out.sort_by_key(|c| c.id);
    Ok(out)
}

async fn claim_where(
    conn: &mut dyn Exec,
    dialect: Dialect,
    limit: i64,
    lease_ms: i64,
    targets: &Targets,
) -> Result<Vec<Claimed>, StoreError> {
    let now = now_ms();
    let lease_until = now + lease_ms;
    let lock = match dialect {
        Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let (filter, names) = match targets {
        Targets::All => (String::new(), &[][..]),
        Targets::Only(t) | Targets::Except(t) if t.is_empty() => match targets {
            Targets::Only(_) => return Ok(Vec::new()),
            _ => (String::new(), &[][..]),
        },
        Targets::Only(t) | Targets::Except(t) => {
            let list: Vec<String> = (0..t.len()).map(|i| format!("${}", i + 4)).collect();
            let not = if matches!(targets, Targets::Except(_)) {
                "NOT "
            } else {
                ""
            };
            (
                format!("AND d.target {not}IN ({})", list.join(",")),
                t.as_slice(),
            )
        }
    };
    let sql = format!(
        "UPDATE deliveries SET status = 'in_flight', lease_until = $1, attempts = attempts + 1, updated_at = $2 \
         WHERE id IN (SELECT d.id FROM deliveries d WHERE d.status = 'pending' AND d.next_attempt_at <= $2 \
           AND (d.lane IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.target = d.target AND p.lane = d.lane \
                AND p.id < d.id AND p.status IN ('pending','in_flight','parked'))) \
           {filter} ORDER BY d.next_attempt_at, d.id LIMIT $3 {lock}) \
         RETURNING id, message_id, route, target, lane, dealer_code, attempts, max_attempts, backoff_ms, \
           max_backoff_ms, mapping_version, content_type, headers, body, \
           (SELECT correlation_id FROM messages m WHERE m.id = deliveries.message_id), mapping"
    );
    let mut args: Vec<Arg> = vec![lease_until.into(), now.into(), limit.into()];
    args.extend(names.iter().map(|t| t.as_str().into()));
    use Ty::{Blob, Int, Text};
    let types = [
        Int, Text, Text, Text, Text, Text, Int, Int, Int, Int, Int, Text, Text, Blob, Text, Text,
    ];
    let rows = conn.rows(&sql, args, &types).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Claimed {
            id: r.int(0)?,
            message_id: parse_uuid(&r.text(1)?)?,
            route: r.text(2)?,
            target: r.text(3)?,
            lane: r.opt_text(4)?,
            dealer_code: r.opt_text(5)?,
            attempts: r.int(6)?,
            max_attempts: r.int(7)?,
            backoff_ms: r.int(8)?,
            max_backoff_ms: r.int(9)?,
            mapping_version: r.opt_int(10)?,
            content_type: r.text(11)?,
            headers: r.text(12)?,
            body: r.blob(13)?,
            correlation_id: r.opt_text(14)?,
            mapping: r.opt_text(15)?,
            mapped_body: None,
            lease_until,
        });
    }
    out.sort_by_key(|c| c.id);
    Ok(out)
}

/// Puts deliveries whose lease ran out (their instance died mid-attempt) back in line.
pub async fn release_expired_leases(conn: &mut dyn Exec) -> Result<u64, StoreError> {
    let now = now_ms();
    conn.exec(
        "UPDATE deliveries SET status = 'pending', lease_until = NULL, next_attempt_at = $1, updated_at = $1, \
         last_reason = 'lease expired: the instance working on it stopped' \
         WHERE status = 'in_flight' AND lease_until < $1",
        vec![now.into()],
    )
    .await
}

/// The result of one attempt, ready to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: i64,
    pub duration_ms: i64,
    /// delivered | retry | reject | parked
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub cause_chain: Vec<String>,
    pub remote_ref: Option<String>,
    /// New delivery status: delivered | pending | rejected | parked
    pub status: &'static str,
    pub next_attempt_at: i64,
}

/// Records the attempt and moves the delivery on, if this instance still holds its lease.
/// Returns false when the lease was lost (another instance took over): the caller's transaction
/// must then roll back any side effects.
pub async fn complete(
    conn: &mut dyn Exec,
    c: &Claimed,
    a: &AttemptRecord,
) -> Result<bool, StoreError> {
    let held = complete_each(conn, &[(c.clone(), a.clone())]).await?;
    Ok(held.first().copied().unwrap_or(false))
}

/// Records many attempts of one claim at once (see [`complete_each`]). Fails (so the caller's
/// transaction rolls back) if any lease was lost.
pub async fn complete_many(
    conn: &mut dyn Exec,
    items: &[(Claimed, AttemptRecord)],
) -> Result<(), StoreError> {
    let held = complete_each(conn, items).await?;
    if let Some(((c, _), _)) = items.iter().zip(&held).find(|(_, held)| !**held) {
        return Err(StoreError::Conflict(format!(
            "lease on delivery {} lost",
            c.id
        )));
    }
    Ok(())
}

/// Records the attempts of many claimed deliveries (of any claims) at once: one UPDATE for
/// every status, one for the mapped bodies, one INSERT of the attempt rows. Returns, per item,
/// whether this instance still held the lease; an item whose lease was lost is left alone (no
/// attempt row), the others are recorded.
pub async fn complete_each(
    conn: &mut dyn Exec,
    items: &[(Claimed, AttemptRecord)],
) -> Result<Vec<bool>, StoreError> {
    let now = now_ms();
    let rows: Vec<Vec<Arg>> = items
        .iter()
        .map(|(c, a)| {
            vec![
                c.id.into(),
                c.lease_until.into(),
                a.status.into(),
                a.next_attempt_at.into(),
                // A delivered delivery has no last error; the attempt row keeps its summary.
                (a.status != "delivered")
                    .then(|| a.reason.clone())
                    .flatten()
                    .into(),
                a.remote_ref.clone().into(),
                c.mapping_version.into(),
                now.into(),
            ]
        })
        .collect();
    let updated: std::collections::HashSet<i64> = update_from_values_returning_ids(
        conn,
        "deliveries",
        "status = v.column3, next_attempt_at = v.column4, lease_until = NULL, last_reason = v.column5, \
         remote_ref = COALESCE(v.column6, deliveries.remote_ref), \
         mapping_version = COALESCE(v.column7, deliveries.mapping_version), updated_at = v.column8",
        "deliveries.id = v.column1 AND deliveries.status = 'in_flight' AND deliveries.lease_until = v.column2",
        8,
        rows,
    )
    .await?
    .into_iter()
    .collect();
    let held: Vec<bool> = items.iter().map(|(c, _)| updated.contains(&c.id)).collect();
    let mapped: Vec<Vec<Arg>> = items
        .iter()
        .zip(&held)
        .filter(|((c, _), held)| **held && c.mapped_body.is_some())
        .map(|((c, _), _)| {
            vec![
                c.id.into(),
                Arg::Blob(c.mapped_body.clone().unwrap_or_default()),
            ]
        })
        .collect();
    if !mapped.is_empty() {
        update_from_values(
            conn,
            "deliveries",
            "mapped_body = v.column2",
            "id",
            2,
            mapped,
        )
        .await?;
    }
    let recorded: Vec<(&Claimed, &AttemptRecord)> = items
        .iter()
        .zip(&held)
        .filter(|(_, held)| **held)
        .map(|((c, a), _)| (c, a))
        .collect();
    if !recorded.is_empty() {
        insert_attempts(conn, &recorded).await?;
        let mut tally = Tally::default();
        for (c, a) in &recorded {
            tally.outcome(&c.route, c.dealer_code.as_deref(), now, a.status);
        }
        tally.write(conn).await?;
    }
    Ok(held)
}

async fn insert_attempts(
    conn: &mut dyn Exec,
    items: &[(&Claimed, &AttemptRecord)],
) -> Result<(), StoreError> {
    let rows = items
        .iter()
        .map(|(c, a)| {
            vec![
                c.id.into(),
                c.attempts.into(),
                a.started_at.into(),
                a.duration_ms.into(),
                a.outcome.into(),
                a.reason.clone().into(),
                json!(a.cause_chain).to_string().into(),
                c.mapping_version.into(),
                a.remote_ref.clone().into(),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "attempts",
        &[
            "delivery_id",
            "attempt_no",
            "started_at",
            "duration_ms",
            "outcome",
            "reason",
            "cause_chain",
            "mapping_version",
            "remote_ref",
        ],
        rows,
        "",
    )
    .await?;
    Ok(())
}

/// Operator action: put a parked (or rejected, or pending) delivery back in line now.
pub async fn retry_delivery(conn: &mut dyn Exec, id: i64, who: &str) -> Result<(), StoreError> {
    let now = now_ms();
    let n = conn
        .exec(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, updated_at = $1, \
             max_attempts = CASE WHEN attempts >= max_attempts THEN attempts + max_attempts ELSE max_attempts END, \
             last_reason = $2 WHERE id = $3 AND status IN ('parked','rejected','pending')",
            vec![now.into(), format!("retry requested by {who}").into(), id.into()],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "delivery {id} is not parked, rejected or pending (in flight or already delivered)"
        )));
    }
    Ok(())
}

/// Operator action: stop a delivery from being attempted; it holds its lane until retried.
pub async fn park_delivery(conn: &mut dyn Exec, id: i64, who: &str) -> Result<(), StoreError> {
    let now = now_ms();
    let n = conn
        .exec(
            "UPDATE deliveries SET status = 'parked', updated_at = $1, last_reason = $2 \
             WHERE id = $3 AND status IN ('pending','in_flight')",
            vec![now.into(), format!("parked by {who}").into(), id.into()],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "delivery {id} is not pending or in flight (already delivered, rejected or parked)"
        )));
    }
    Ok(())
}

pub fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Query(format!("bad uuid '{s}' in store: {e}")))
}
