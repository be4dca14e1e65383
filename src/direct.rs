//! Straight-through apply: a batch of validated records written to the CRM store in the very
//! transaction that journals them, instead of one journaled record and one CRM delivery per row.
//! Used where a route takes records to a CRM store and nothing else (no mapping, no `when`): a
//! batch file from OSM or a legacy migration. The batch stays a journaled message with its raw
//! text, findable by every business key of its rows; what cannot apply now (a vehicle whose
//! dealer is unknown, a row whose lane holds earlier deliveries) is journaled as a record with a
//! delivery and waits like live traffic; what the CRM store refuses is journaled as a rejected
//! record with the reason.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use synchub_adapter_sdk::{Envelope, FieldError, Receipt, RecordVerdict, Submission};
use uuid::Uuid;

use crate::crm;
use crate::pipeline::{Pipeline, id_rule};
use crate::routing::Route;
use crate::store::exec::{Exec, Ty};
use crate::store::journal::{self, PreparedRecord, parse_uuid};
use crate::store::rows::{Arg, insert_rows_returning};
use crate::store::stats::Tally;
use crate::store::{StoreError, now_ms};

/// One row to apply.
pub(crate) struct Row {
    /// Its position in the source (line number): the index of the record it becomes.
    pub index: usize,
    pub source_ref: Option<String>,
    /// The validated (canonical) record.
    pub rec: Map<String, Value>,
    /// Its lane on the route (ordering key), if the route has one.
    pub lane: Option<String>,
}

/// A batch for [`write`]: the transport unit, its rows, and what was already refused.
pub(crate) struct Batch {
    /// The transport unit: the batch's raw text and headers.
    pub env: Envelope,
    /// The route the rows travel (flow figures, history).
    pub route: String,
    pub target: String,
    pub record_type: String,
    /// Who sent them (`osm`, `import`): history and echo suppression.
    pub partner: Option<String>,
    pub key_field_approval: bool,
    /// Journal the CRM's change events (customer.created for the dealer's DMS, ...).
    pub events: bool,
    pub rows: Vec<Row>,
    /// Rows refused before the store (schema errors), prepared off the writer.
    pub not_taken: Vec<PreparedRecord>,
    /// Business keys of the whole batch, beyond those of its applied rows (the file's hash).
    pub unit_keys: Vec<(&'static str, String)>,
    /// (scope, key) under which the batch is written once: a second copy has no effect.
    pub idempotency: Option<(String, String)>,
    /// Header of the unit that records how many rows were applied.
    pub applied_header: Option<&'static str>,
}

/// What became of one row, in row order.
pub(crate) enum Outcome {
    /// In the CRM store under its hub id.
    Applied { id: Option<String> },
    /// Journaled as a record with a delivery to the CRM store: the dispatcher applies it.
    Queued {
        message_id: Uuid,
        id: Option<String>,
    },
    /// The CRM store refused it: journaled as a rejected record with the reason.
    Refused { message_id: Uuid, reason: String },
}

/// What [`write`] did.
pub(crate) enum Done {
    Written {
        outcomes: Vec<Outcome>,
        /// Deliveries were journaled (queued rows, change events): the dispatcher has work.
        queued: bool,
    },
    /// The same batch was written before, as unit `first`; `refused` gives the index, message
    /// and reason of each of its rows that was rejected then (schema or CRM store).
    Duplicate {
        first: Uuid,
        refused: HashMap<usize, (Uuid, String)>,
    },
}

/// Writes the batch in the caller's transaction; see the module comment.
pub(crate) async fn write(
    conn: &mut dyn Exec,
    pipeline: &Pipeline,
    b: Batch,
) -> Result<Done, StoreError> {
    let Batch {
        mut env,
        route,
        target,
        record_type,
        partner,
        key_field_approval,
        events,
        rows,
        not_taken,
        mut unit_keys,
        idempotency,
        applied_header,
    } = b;
    let now = now_ms();
    if let Some((scope, key)) = &idempotency {
        let taken = insert_rows_returning(
            conn,
            "idempotency",
            &["scope", "idem_key", "message_id", "entity_id", "created_at"],
            vec![vec![
                scope.as_str().into(),
                key.as_str().into(),
                env.id.to_string().into(),
                Arg::Text(None),
                now.into(),
            ]],
            "ON CONFLICT DO NOTHING RETURNING message_id",
        )
        .await?;
        if taken.is_empty() {
            let found = conn
                .rows(
                    "SELECT message_id FROM idempotency WHERE scope = $1 AND idem_key = $2",
                    vec![scope.as_str().into(), key.as_str().into()],
                    &[Ty::Text],
                )
                .await?;
            let first = parse_uuid(
                &found
                    .first()
                    .ok_or_else(|| {
                        StoreError::Query(format!("idempotency key {scope}/{key} vanished"))
                    })?
                    .text(0)?,
            )?;
            let refused = refused_rows(conn, first).await?;
            return Ok(Done::Duplicate { first, refused });
        }
    }
    let unit_ref = span_ref(
        rows.first().and_then(|r| r.source_ref.as_deref()),
        rows.last().and_then(|r| r.source_ref.as_deref()),
    );
    let blocked = open_lanes(conn, &target, &rows).await?;
    let rules: Vec<Option<journal::IdRule>> =
        rows.iter().map(|r| id_rule(&record_type, &r.rec)).collect();
    let rules: Vec<Option<&journal::IdRule>> = rules.iter().map(Option::as_ref).collect();
    let (ids, minted) = journal::assign_ids_noting_new(conn, &rules).await?;
    let received_at = env.received_at.timestamp_millis();
    // A row whose lane holds earlier deliveries waits behind them: it is not applied here.
    let (mut direct, mut behind) = (Vec::new(), Vec::new());
    for (pos, ((row, id), new_id)) in rows.into_iter().zip(ids).zip(minted).enumerate() {
        if row.lane.as_ref().is_some_and(|l| blocked.contains(l)) {
            behind.push((pos, row, id));
        } else {
            direct.push((pos, row, id, new_id));
        }
    }
    let items = direct
        .iter_mut()
        .map(|(_, r, id, new_id)| {
            Ok(crm::Item {
                message_id: env.id,
                target: target.clone(),
                record_type: record_type.clone(),
                // A vehicle may have to wait for its dealer and then needs its record again; the
                // other records give theirs up.
                rec: if record_type == "vehicle" {
                    r.rec.clone()
                } else {
                    std::mem::take(&mut r.rec)
                },
                entity_id: id.clone(),
                new_id: *new_id,
                partner: partner.clone(),
                received_at: Some(received_at),
                key_field_approval,
                events,
            })
        })
        .collect();
    let results = crm::apply_items(conn, items, None).await?;

    let mut later = not_taken;
    let mut tally = Tally::default();
    for r in &later {
        tally.message(
            [route.as_str()],
            r.message.dealer_code.as_deref(),
            received_at,
            true,
        );
    }
    let mut outcomes: Vec<(usize, Outcome)> = Vec::with_capacity(direct.len() + behind.len());
    let mut applied = 0u64;
    let queue = |later: &mut Vec<PreparedRecord>, pos: usize, r: Row, id: Option<String>| {
        let mut p = pipeline.prepare_record(
            &env,
            r.index,
            &record_type,
            r.source_ref.as_deref(),
            &Ok(Value::Object(r.rec)),
            "record",
            None,
        );
        p.message.entity_id = id.clone();
        let out = Outcome::Queued {
            message_id: p.message.id,
            id,
        };
        later.push(p);
        (pos, out)
    };
    let mut queued = 0usize;
    let mut applied_refs: Vec<String> = Vec::new();
    for ((pos, mut r, id, _), result) in direct.into_iter().zip(results) {
        let dealer = crm::str_field(&r.rec, "dealer_code");
        match result {
            Ok(a) => {
                applied += 1;
                tally.message([route.as_str()], dealer.as_deref(), received_at, false);
                tally.outcome(&route, dealer.as_deref(), received_at, "delivered");
                collect_row_keys(&r, &mut unit_keys);
                applied_refs.extend(r.source_ref.take());
                queued += a.events.len();
                later.extend(a.events.iter().map(|ev| {
                    pipeline.prepare_event(env.id, env.correlation_id.clone(), &target, ev)
                }));
                outcomes.push((pos, Outcome::Applied { id }));
            }
            Err(crm::CrmFailure::Retry(_)) if !r.rec.is_empty() => {
                queued += 1;
                tally.message([route.as_str()], dealer.as_deref(), received_at, false);
                outcomes.push(queue(&mut later, pos, r, id));
            }
            Err(crm::CrmFailure::Reject(reason) | crm::CrmFailure::Retry(reason)) => {
                tally.message([route.as_str()], dealer.as_deref(), received_at, true);
                let mut p = pipeline.prepare_record(
                    &env,
                    r.index,
                    &record_type,
                    r.source_ref.as_deref(),
                    &Err(vec![FieldError::new(
                        "",
                        format!("the CRM store refused it: {reason}"),
                    )]),
                    "record",
                    None,
                );
                // Still findable by the keys of what it held.
                crate::pipeline::collect_map_keys(&r.rec, &mut p.keys);
                p.keys.sort();
                p.keys.dedup();
                outcomes.push((
                    pos,
                    Outcome::Refused {
                        message_id: p.message.id,
                        reason,
                    },
                ));
                later.push(p);
            }
            Err(crm::CrmFailure::Store(e)) => return Err(e),
        }
    }
    for (pos, r, id) in behind {
        queued += 1;
        tally.message(
            [route.as_str()],
            crm::str_field(&r.rec, "dealer_code").as_deref(),
            received_at,
            false,
        );
        outcomes.push(queue(&mut later, pos, r, id));
    }
    outcomes.sort_unstable_by_key(|(pos, _)| *pos);
    journal::insert_prepared_many(conn, &later).await?;
    if let Some(h) = applied_header {
        env.headers.insert(h.into(), applied.to_string());
    }
    env.headers.insert("route".into(), route.clone());
    let mut unit = Pipeline::transport_message(&env, "accepted", None);
    unit.record_type = Some(record_type.clone());
    unit.routes = vec![route];
    unit.source_ref = unit_ref;
    journal::insert_message(conn, &unit).await?;
    ref_keys(applied_refs, &mut unit_keys);
    unit_keys.sort();
    unit_keys.dedup();
    journal::insert_keys_of(conn, &[(unit.id, &unit_keys[..])]).await?;
    tally.write(conn).await?;
    Ok(Done::Written {
        outcomes: outcomes.into_iter().map(|(_, o)| o).collect(),
        queued: queued > 0,
    })
}

/// The source reference of a batch from those of its first and last rows: `f.csv@ab12cd34:2-501`
/// when they share the part before the line (a file's rows), else `first..last`. Searching a
/// row's key finds the batch, and this says which file and lines it holds.
fn span_ref(first: Option<&str>, last: Option<&str>) -> Option<String> {
    let (first, last) = (first?, last.unwrap_or_default());
    if first == last || last.is_empty() {
        return Some(first.to_owned());
    }
    match (first.rsplit_once(':'), last.rsplit_once(':')) {
        (Some((a, from)), Some((b, to))) if a == b => Some(format!("{a}:{from}-{to}")),
        _ => Some(format!("{first}..{last}")),
    }
}

/// An applied row's business keys, which the unit is found by (VIN, owner's mobile, dealer).
fn collect_row_keys(r: &Row, out: &mut Vec<(&'static str, String)>) {
    // `rec` was given up to the CRM store for everything but vehicles. Such a row's id needs no
    // key: the record's change history names this unit, and a search by id reads the history.
    if !r.rec.is_empty() {
        let mut keys = Vec::new();
        crate::pipeline::collect_map_keys(&r.rec, &mut keys);
        // The row's own line is found through the batch's span (`ref_keys`).
        let own_line = |(kind, value): &(&str, String)| {
            *kind == "source_ref" && r.source_ref.as_deref() == Some(value.as_str())
        };
        out.extend(keys.into_iter().filter(|k| !own_line(k)));
    }
}

/// The applied rows' source references as keys: one line span when they are lines of one file
/// (`<prefix>:<line>`), else one key each.
fn ref_keys(refs: Vec<String>, out: &mut Vec<(&'static str, String)>) {
    let mut span: Option<(&str, u64, u64)> = None;
    let one_file = refs
        .iter()
        .all(|r| match (journal::line_ref(r), &mut span) {
            (Some((p, n)), None) => {
                span = Some((p, n, n));
                true
            }
            (Some((p, n)), Some((q, lo, hi))) if p == *q => {
                *lo = (*lo).min(n);
                *hi = (*hi).max(n);
                true
            }
            _ => false,
        });
    match span {
        Some((prefix, first, last)) if one_file && refs.len() > 1 => {
            let key = journal::span_key(prefix, first, last);
            out.push((journal::SPAN_KIND, key));
        }
        _ => out.extend(refs.into_iter().map(|r| ("source_ref", r))),
    }
}

/// The rows' lanes that hold open (pending, in flight or parked) deliveries to `target`.
async fn open_lanes(
    conn: &mut dyn Exec,
    target: &str,
    rows: &[Row],
) -> Result<HashSet<String>, StoreError> {
    let mut lanes: Vec<&str> = rows.iter().filter_map(|r| r.lane.as_deref()).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let mut open = HashSet::new();
    for chunk in lanes.chunks(400) {
        let list: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT DISTINCT lane FROM deliveries WHERE target = $1 AND lane IN ({}) \
             AND status IN ('pending','in_flight','parked')",
            list.join(",")
        );
        let mut args: Vec<Arg> = vec![target.into()];
        args.extend(chunk.iter().map(|l| Arg::from(*l)));
        for row in conn.rows(&sql, args, &[Ty::Text]).await? {
            open.extend(row.opt_text(0)?);
        }
    }
    Ok(open)
}

/// The rejected records of unit `first`, by index: what a second copy of the batch reports.
async fn refused_rows(
    conn: &mut dyn Exec,
    first: Uuid,
) -> Result<HashMap<usize, (Uuid, String)>, StoreError> {
    let rows = conn
        .rows(
            "SELECT id, headers, reason FROM messages WHERE parent_id = $1 AND status = 'rejected'",
            vec![first.to_string().into()],
            &[Ty::Text, Ty::Text, Ty::Text],
        )
        .await?;
    let mut out = HashMap::new();
    for row in rows {
        let headers: Value =
            serde_json::from_str(&row.opt_text(1)?.unwrap_or_default()).unwrap_or(Value::Null);
        let Some(index) = headers
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok())
        else {
            continue;
        };
        out.insert(
            index,
            (
                parse_uuid(&row.text(0)?)?,
                row.opt_text(2)?.unwrap_or_default(),
            ),
        );
    }
    Ok(out)
}

/// Where a submitted record went before the store: a row to apply, or refused by its schema.
enum Slot {
    Row(usize),
    NotTaken(usize),
}

/// Journals and applies a submission whose records all travel `route` (see
/// [`Pipeline::direct_route`]) in one store transaction; the receipt has one verdict per record.
/// A batch of records that all carry a `source_ref` is written once: a second copy (a file
/// resumed after a crash between commit and progress) reports what the first did.
pub(crate) async fn accept(
    pipeline: &Arc<Pipeline>,
    route: &Route,
    submission: Submission,
) -> Result<Receipt, StoreError> {
    let Submission {
        envelope: env,
        records,
    } = submission;
    let target = route.to.first().cloned().unwrap_or_default();
    let principal = env.principal.as_ref();
    let candidates = [route];
    let mut refs = Sha256::new();
    let mut all_refs = true;
    let (mut rows, mut not_taken, mut slots) = (Vec::new(), Vec::new(), Vec::new());
    for r in records {
        match &r.source_ref {
            Some(s) => {
                refs.update(s.as_bytes());
                refs.update(b"\n");
            }
            None => all_refs = false,
        }
        let canonical = r.body.as_ref().ok().map(|body| {
            Pipeline::canonical(
                &candidates,
                &route.record_type,
                body,
                principal.map(|p| p.system.as_str()),
                principal.and_then(|p| p.dealer_code.as_deref()),
            )
        });
        match canonical {
            Some(Ok(Value::Object(rec))) => {
                slots.push(Slot::Row(rows.len()));
                rows.push(Row {
                    index: r.index,
                    lane: route.lane_in(&rec),
                    source_ref: r.source_ref,
                    rec,
                });
            }
            // Not readable, or not what the schema asks for: the pipeline's own rejection, with
            // its reasons and the keys found in what was sent.
            other => {
                let not_object = Err(vec![FieldError::new("", "the record is not a JSON object")]);
                let body = match other {
                    Some(Ok(_)) => &not_object,
                    _ => &r.body,
                };
                slots.push(Slot::NotTaken(not_taken.len()));
                not_taken.push(pipeline.prepare_record(
                    &env,
                    r.index,
                    &route.record_type,
                    r.source_ref.as_deref(),
                    body,
                    "record",
                    None,
                ));
            }
        }
    }
    let refused_early: Vec<(Uuid, usize, Vec<FieldError>)> = not_taken
        .iter()
        .map(|p| {
            let index = serde_json::from_str::<Value>(&p.message.headers)
                .ok()
                .and_then(|h| h.get("index").and_then(Value::as_u64))
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or_default();
            (p.message.id, index, p.errors.clone().unwrap_or_default())
        })
        .collect();
    let indexes: Vec<usize> = rows.iter().map(|r| r.index).collect();
    let scope = format!(
        "{}/{}/batch",
        principal
            .map(|p| p.scope())
            .unwrap_or_else(|| env.endpoint.clone()),
        route.record_type
    );
    let idempotency = (all_refs && !slots.is_empty())
        .then(|| (scope, format!("refs:{}", hex::encode(refs.finalize()))));
    let unit_id = env.id;
    let batch = Batch {
        route: route.id.clone(),
        key_field_approval: pipeline.key_field_approval(&target),
        target,
        record_type: route.record_type.clone(),
        partner: principal.map(|p| p.scope()),
        events: true,
        rows,
        not_taken,
        unit_keys: Vec::new(),
        idempotency,
        applied_header: Some("applied"),
        env,
    };
    let p = pipeline.clone();
    let done = pipeline
        .store()
        .write_exec(move |conn| Box::pin(async move { write(conn, &p, batch).await }))
        .await?;
    let verdicts = match done {
        Done::Written { outcomes, queued } => {
            if queued {
                pipeline.wake();
            }
            let mut outcomes: Vec<Option<Outcome>> = outcomes.into_iter().map(Some).collect();
            slots
                .iter()
                .map(|slot| match slot {
                    Slot::Row(i) => match outcomes[*i].take() {
                        Some(Outcome::Applied { id }) => RecordVerdict::Accepted {
                            message_id: unit_id,
                            id,
                            duplicate: false,
                        },
                        Some(Outcome::Queued { message_id, id }) => RecordVerdict::Accepted {
                            message_id,
                            id,
                            duplicate: false,
                        },
                        Some(Outcome::Refused { message_id, reason }) => RecordVerdict::Rejected {
                            message_id,
                            errors: vec![FieldError::new(
                                "",
                                format!("the CRM store refused it: {reason}"),
                            )],
                        },
                        None => RecordVerdict::Rejected {
                            message_id: unit_id,
                            errors: vec![FieldError::new("", "no outcome for this record")],
                        },
                    },
                    Slot::NotTaken(i) => RecordVerdict::Rejected {
                        message_id: refused_early[*i].0,
                        errors: refused_early[*i].2.clone(),
                    },
                })
                .collect()
        }
        Done::Duplicate { first, refused } => slots
            .iter()
            .map(|slot| {
                let index = match slot {
                    Slot::Row(i) => indexes[*i],
                    Slot::NotTaken(i) => refused_early[*i].1,
                };
                match refused.get(&index) {
                    Some((message_id, reason)) => RecordVerdict::Rejected {
                        message_id: *message_id,
                        errors: serde_json::from_str(reason)
                            .unwrap_or_else(|_| vec![FieldError::new("", reason.clone())]),
                    },
                    None => RecordVerdict::Accepted {
                        message_id: first,
                        id: None,
                        duplicate: true,
                    },
                }
            })
            .collect(),
    };
    Ok(Receipt {
        message_id: unit_id,
        records: verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::{ref_keys, span_ref};

    #[test]
    fn a_batch_is_named_by_its_file_and_line_span() {
        assert_eq!(
            span_ref(Some("v.csv@ab12cd34:2"), Some("v.csv@ab12cd34:501")).as_deref(),
            Some("v.csv@ab12cd34:2-501")
        );
        assert_eq!(
            span_ref(Some("v.csv@ab12cd34:7"), Some("v.csv@ab12cd34:7")).as_deref(),
            Some("v.csv@ab12cd34:7")
        );
        assert_eq!(
            span_ref(Some("WEB-1"), Some("WEB-9")).as_deref(),
            Some("WEB-1..WEB-9")
        );
        assert_eq!(span_ref(None, Some("x")), None);
    }

    fn keys_of(refs: &[&str]) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        ref_keys(refs.iter().map(|r| r.to_string()).collect(), &mut out);
        out
    }

    #[test]
    fn the_lines_of_one_file_are_one_span_key_and_other_references_one_key_each() {
        assert_eq!(
            keys_of(&["v.csv@ab12cd34:9", "v.csv@ab12cd34:2", "v.csv@ab12cd34:501"]),
            vec![(
                "source_span",
                "v.csv@ab12cd34@lines:000000000002-000000000501".to_owned()
            )]
        );
        assert_eq!(
            keys_of(&["v.csv@ab12cd34:2"]),
            vec![("source_ref", "v.csv@ab12cd34:2".to_owned())],
            "a single line keeps its own key"
        );
        assert_eq!(
            keys_of(&["a.csv@00000000:2", "b.csv@11111111:3"]),
            vec![
                ("source_ref", "a.csv@00000000:2".to_owned()),
                ("source_ref", "b.csv@11111111:3".to_owned())
            ],
            "two files"
        );
        assert_eq!(keys_of(&["WEB-1", "WEB-2"]).len(), 2, "not lines of a file");
        assert_eq!(keys_of(&["x:1", "x:1a"]).len(), 2, "not a line number");
        assert!(keys_of(&[]).is_empty());
    }
}
