//! A unit of work over the CRM tables: records are read once (in bulk, before a batch is
//! applied), changed in memory, and written back in a handful of multi-row statements at
//! `flush`. A batch of deliveries then costs a constant number of statements instead of several
//! per record, and a later delivery in the same batch sees what an earlier one did.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use serde_json::{Map, Value};

use super::{ChangeSource, Columns, KEY_FIELDS, Upserted, str_field, text};
use crate::args;
use crate::store::exec::{Exec, Ty};
use crate::store::rows::{Arg, insert_rows};
use crate::store::{StoreError, now_ms};

type Key = (String, String);

/// The `field` of the history row that records a record's creation (its `new` is the record).
pub const CREATED: &str = "(created)";

#[derive(Debug, Clone)]
struct Rec {
    data: Map<String, Value>,
    version: i64,
    src_updated_at: Option<i64>,
    dealer_code: Option<String>,
    mobile: Option<String>,
    id_no: Option<String>,
    reference: Option<String>,
    source_system: Option<String>,
    /// Not in the table yet: inserted at flush.
    new: bool,
    /// In the table and changed: updated at flush.
    dirty: bool,
    /// When it was last changed in this unit (a counter): the change log gets the batch's
    /// records in the order they were applied.
    touched: u64,
    /// Created in this unit and not changed since: the position of its creation's history row,
    /// whose record text is filled in at flush with the text the record is inserted with
    /// (serialised once for both).
    created_row: Option<usize>,
}

/// The columns of a `change_history` row, in the order its rows are built.
pub(crate) const HISTORY_COLS: &[&str] = &[
    "entity",
    "entity_id",
    "field",
    "old_value",
    "new_value",
    "source_system",
    "message_id",
    "changed_at",
];

/// Position of `new_value` in [`HISTORY_COLS`].
const HISTORY_NEW: usize = 4;

/// What the unit knows and what it will write. Its maps use a fast hasher: they are keyed by
/// ids and mobiles the store has already validated, several lookups per record on the writer.
#[derive(Default)]
pub struct Unit {
    recs: HashMap<Key, Rec>,
    /// Keys whose presence or absence is known (absent keys are in here but not in `recs`).
    known: HashSet<Key>,
    by_mobile: HashMap<String, String>,
    mobiles_known: HashSet<String>,
    by_id_no: HashMap<String, String>,
    id_nos_known: HashSet<String>,
    history: Vec<Vec<Arg>>,
    clock: u64,
    /// The caller never reads [`Upserted::data`] (it builds no change events): the record is
    /// not copied into it.
    pub lean: bool,
}

const CHUNK: usize = 400;

impl Unit {
    /// Loads the given records in one query per chunk; keys not found are known to be absent.
    pub async fn prefetch(
        &mut self,
        conn: &mut dyn Exec,
        keys: &[(String, String)],
    ) -> Result<(), StoreError> {
        let wanted: Vec<&Key> = keys.iter().filter(|k| !self.known.contains(*k)).collect();
        for chunk in wanted.chunks(CHUNK) {
            let cond: Vec<String> = (0..chunk.len())
                .map(|i| format!("(entity = ${} AND id = ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "SELECT entity, id, data, version, src_updated_at, dealer_code, mobile, id_no, ref, source_system \
                 FROM crm_records WHERE {}",
                cond.join(" OR ")
            );
            let args = chunk
                .iter()
                .flat_map(|(e, id)| [Arg::from(e.as_str()), Arg::from(id.as_str())])
                .collect();
            use Ty::{Int, Text};
            let types = [Text, Text, Text, Int, Int, Text, Text, Text, Text, Text];
            for row in conn.rows(&sql, args, &types).await? {
                let key: Key = (row.text(0)?, row.text(1)?);
                let data = row.text(2)?;
                self.recs.insert(
                    key,
                    Rec {
                        data: serde_json::from_str(&data).unwrap_or_default(),
                        version: row.int(3)?,
                        src_updated_at: row.opt_int(4)?,
                        dealer_code: row.opt_text(5)?,
                        mobile: row.opt_text(6)?,
                        id_no: row.opt_text(7)?,
                        reference: row.opt_text(8)?,
                        source_system: row.opt_text(9)?,
                        new: false,
                        dirty: false,
                        touched: 0,
                        created_row: None,
                    },
                );
            }
            for k in chunk {
                self.known.insert((*k).clone());
            }
        }
        Ok(())
    }

    /// Records that nothing is stored under `entity/id` (an id just minted), so it is not read.
    pub fn know_absent(&mut self, entity: &str, id: &str) {
        self.known.insert((entity.to_string(), id.to_string()));
    }

    /// Records that no stored customer has this mobile or ID number, so they are not read.
    pub fn know_no_customer(&mut self, mobile: Option<&str>, id_no: Option<&str>) {
        if let Some(m) = mobile {
            self.mobiles_known.insert(m.to_string());
        }
        if let Some(n) = id_no {
            self.id_nos_known.insert(n.to_string());
        }
    }

    /// Loads the customers having any of these mobiles or ID numbers (oldest first wins).
    pub async fn prefetch_customers(
        &mut self,
        conn: &mut dyn Exec,
        mobiles: &[String],
        id_nos: &[String],
    ) -> Result<(), StoreError> {
        for (col, values) in [("mobile", mobiles), ("id_no", id_nos)] {
            let known = if col == "mobile" {
                &self.mobiles_known
            } else {
                &self.id_nos_known
            };
            let wanted: Vec<&String> = values.iter().filter(|v| !known.contains(*v)).collect();
            for chunk in wanted.chunks(CHUNK) {
                let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT {col}, id FROM crm_records WHERE entity = 'customer' AND {col} IN ({}) ORDER BY created_at DESC",
                    list.join(",")
                );
                let args = chunk.iter().map(|v| Arg::from(v.as_str())).collect();
                let rows = conn.rows(&sql, args, &[Ty::Text, Ty::Text]).await?;
                let (map, known) = if col == "mobile" {
                    (&mut self.by_mobile, &mut self.mobiles_known)
                } else {
                    (&mut self.by_id_no, &mut self.id_nos_known)
                };
                // Newest first in the query, so the oldest customer is inserted last and wins.
                for row in rows {
                    map.insert(row.text(0)?, row.text(1)?);
                }
                known.extend(chunk.iter().map(|v| (*v).clone()));
            }
        }
        Ok(())
    }

    /// The existing customer with this mobile, else with this ID number.
    pub async fn find_customer(
        &mut self,
        conn: &mut dyn Exec,
        mobile: Option<&str>,
        id_no: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        // Already known (prefetched for the batch, or minted here): no lookup to prepare.
        let mobiles: Vec<String> = mobile
            .filter(|m| !self.mobiles_known.contains(*m))
            .map(str::to_string)
            .into_iter()
            .collect();
        let id_nos: Vec<String> = id_no
            .filter(|n| !self.id_nos_known.contains(*n))
            .map(str::to_string)
            .into_iter()
            .collect();
        if !(mobiles.is_empty() && id_nos.is_empty()) {
            self.prefetch_customers(conn, &mobiles, &id_nos).await?;
        }
        Ok(mobile
            .and_then(|m| self.by_mobile.get(m))
            .or_else(|| id_no.and_then(|n| self.by_id_no.get(n)))
            .cloned())
    }

    /// Makes a customer created in this unit findable by its mobile and ID number, so a second
    /// vehicle of the same new owner in the same batch links to it instead of creating another.
    pub fn remember_customer(&mut self, id: &str, mobile: Option<&str>, id_no: Option<&str>) {
        if let Some(m) = mobile {
            self.by_mobile.insert(m.to_string(), id.to_string());
        }
        if let Some(n) = id_no {
            self.by_id_no.insert(n.to_string(), id.to_string());
        }
    }

    /// The current data of a record, loading it if needed.
    pub async fn get(
        &mut self,
        conn: &mut dyn Exec,
        entity: &str,
        id: &str,
    ) -> Result<Option<&Map<String, Value>>, StoreError> {
        let key = (entity.to_string(), id.to_string());
        self.prefetch(conn, std::slice::from_ref(&key)).await?;
        Ok(self.recs.get(&key).map(|r| &r.data))
    }

    /// Inserts or updates `entity/id` with `incoming` fields, recording history for each changed
    /// field. Key fields from a source that needs approval are queued instead of applied. An
    /// update older (by the source's `updated_at`) than what is stored changes nothing.
    pub async fn upsert(
        &mut self,
        conn: &mut dyn Exec,
        entity: &str,
        id: &str,
        incoming: &Map<String, Value>,
        cols: &Columns,
        src: &ChangeSource,
    ) -> Result<Upserted, StoreError> {
        let key = (entity.to_string(), id.to_string());
        self.prefetch(conn, std::slice::from_ref(&key)).await?;
        let now = now_ms();
        let msg_id = src.message_id.map(|m| m.to_string());
        let Some(rec) = self.recs.get_mut(&key) else {
            let mut data = incoming.clone();
            for (k, v) in &cols.on_create {
                data.entry(k.to_string()).or_insert_with(|| v.clone());
            }
            // A creation is one history row holding the whole record: the same facts as a row per
            // field, at a fraction of the writes (history is the CRM's hottest table).
            let created_row = Some(self.history.len());
            self.history.push(history_row(
                entity,
                id,
                CREATED,
                None,
                None,
                src,
                msg_id.as_deref(),
                now,
            ));
            let rec = Rec {
                mobile: str_field(&data, "mobile").or(cols.mobile.clone()),
                id_no: str_field(&data, "id_no").or(cols.id_no.clone()),
                dealer_code: cols.dealer_code.clone(),
                reference: cols.reference.clone(),
                source_system: Some(src.system.clone()),
                src_updated_at: cols.src_updated_at,
                version: 1,
                data: if self.lean { Map::new() } else { data.clone() },
                new: true,
                dirty: false,
                touched: self.clock,
                created_row,
            };
            self.clock += 1;
            if entity == "customer" {
                self.index_customer(id, &rec);
            }
            let changed = data.keys().cloned().collect();
            let data = if self.lean {
                let mut rec = rec;
                rec.data = data;
                self.recs.insert(key, rec);
                Map::new()
            } else {
                self.recs.insert(key, rec);
                data
            };
            return Ok(Upserted {
                created: true,
                version: 1,
                changed,
                data,
                ..Default::default()
            });
        };
        if let (Some(stored), Some(new)) = (rec.src_updated_at, cols.src_updated_at)
            && new < stored
        {
            return Ok(Upserted {
                stale: true,
                version: rec.version,
                data: rec.data.clone(),
                ..Default::default()
            });
        }
        let mut out = Upserted {
            version: rec.version,
            ..Default::default()
        };
        // The creation's history row holds the record as created, not as changed below.
        if let Some(row) = rec.created_row.take() {
            self.history[row][HISTORY_NEW] = Value::Object(rec.data.clone()).to_string().into();
        }
        let mut held = Vec::new();
        for (field, value) in incoming {
            let old = rec.data.get(field);
            if old == Some(value) {
                continue;
            }
            if src.needs_approval && entity == "customer" && KEY_FIELDS.contains(&field.as_str()) {
                held.push((field.clone(), old.and_then(text), text(value)));
                continue;
            }
            self.history.push(history_row(
                entity,
                id,
                field,
                old.and_then(text),
                text(value),
                src,
                msg_id.as_deref(),
                now,
            ));
            rec.data.insert(field.clone(), value.clone());
            out.changed.push(field.clone());
        }
        if !out.changed.is_empty() {
            rec.version += 1;
            out.version = rec.version;
            rec.mobile = str_field(&rec.data, "mobile").or(rec.mobile.take());
            rec.id_no = str_field(&rec.data, "id_no").or(rec.id_no.take());
            if cols.dealer_code.is_some() {
                rec.dealer_code = cols.dealer_code.clone();
            }
            if cols.reference.is_some() {
                rec.reference = cols.reference.clone();
            }
            if cols.src_updated_at.is_some() {
                rec.src_updated_at = cols.src_updated_at;
            }
            rec.source_system = Some(src.system.clone());
            rec.dirty |= !rec.new;
            rec.touched = self.clock;
            self.clock += 1;
        }
        if !self.lean {
            out.data = rec.data.clone();
        }
        let dealer = cols
            .dealer_code
            .clone()
            .or_else(|| str_field(&rec.data, "dealer_code"));
        if entity == "customer" {
            let snapshot = rec.clone();
            self.index_customer(id, &snapshot);
        }
        for (field, old, new) in held {
            queue_approval(
                conn,
                id,
                dealer.as_deref(),
                &field,
                old,
                new,
                src,
                msg_id.as_deref(),
                now,
            )
            .await?;
            out.held.push(field);
        }
        Ok(out)
    }

    fn index_customer(&mut self, id: &str, rec: &Rec) {
        if let Some(m) = &rec.mobile {
            self.by_mobile
                .entry(m.clone())
                .or_insert_with(|| id.to_string());
            self.mobiles_known.insert(m.clone());
        }
        if let Some(n) = &rec.id_no {
            self.by_id_no
                .entry(n.clone())
                .or_insert_with(|| id.to_string());
            self.id_nos_known.insert(n.clone());
        }
    }

    /// Writes everything: new records in one INSERT, changed ones one UPDATE each, all history
    /// in one INSERT.
    pub async fn flush(self, conn: &mut dyn Exec) -> Result<(), StoreError> {
        let now = now_ms();
        let mut inserts = Vec::new();
        let mut changes = Vec::new();
        let mut recs: Vec<(Key, Rec)> = self
            .recs
            .into_iter()
            .filter(|(_, r)| r.new || r.dirty)
            .collect();
        recs.sort_unstable_by_key(|(_, r)| r.touched);
        let mut history = self.history;
        for ((entity, id), r) in recs {
            // Serialised once for the record, its change-log row and its creation's history row.
            let data = Value::Object(r.data).to_string();
            if let Some(row) = r.created_row {
                history[row][HISTORY_NEW] = data.clone().into();
            }
            changes.push(crate::extract::changes::Change {
                entity: entity.clone(),
                entity_id: id.clone(),
                version: r.version,
                op: crate::extract::changes::Op::Upsert,
                data: data.clone(),
                changed_at: now,
            });
            if r.new {
                inserts.push(vec![
                    entity.into(),
                    id.into(),
                    data.into(),
                    r.version.into(),
                    r.dealer_code.into(),
                    r.mobile.into(),
                    r.id_no.into(),
                    r.reference.into(),
                    r.source_system.into(),
                    r.src_updated_at.into(),
                    now.into(),
                    now.into(),
                ]);
            } else if r.dirty {
                conn.exec("UPDATE crm_records SET data = $1, version = $2, dealer_code = $3, mobile = $4, id_no = $5, \
                     ref = $6, source_system = $7, src_updated_at = $8, updated_at = $9 WHERE entity = $10 AND id = $11", args![data, r.version, r.dealer_code, r.mobile, r.id_no, r.reference, r.source_system, r.src_updated_at, now, entity, id]).await?;
            }
        }
        insert_rows(
            conn,
            "crm_records",
            &[
                "entity",
                "id",
                "data",
                "version",
                "dealer_code",
                "mobile",
                "id_no",
                "ref",
                "source_system",
                "src_updated_at",
                "created_at",
                "updated_at",
            ],
            inserts,
            "",
        )
        .await?;
        insert_rows(conn, "change_history", HISTORY_COLS, history, "").await?;
        // After the record writes, in the same transaction: the extract change log.
        crate::extract::changes::append(conn, changes).await?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn history_row(
    entity: &str,
    id: &str,
    field: &str,
    old: Option<String>,
    new: Option<String>,
    src: &ChangeSource,
    message_id: Option<&str>,
    now: i64,
) -> Vec<Arg> {
    vec![
        entity.into(),
        id.into(),
        field.into(),
        old.into(),
        new.into(),
        src.system.as_str().into(),
        message_id.into(),
        now.into(),
    ]
}

/// Queues a key-field change for headquarters, once per (customer, field, new value).
#[allow(clippy::too_many_arguments)]
async fn queue_approval(
    conn: &mut dyn Exec,
    customer_id: &str,
    dealer: Option<&str>,
    field: &str,
    old: Option<String>,
    new: Option<String>,
    src: &ChangeSource,
    message_id: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let pending = conn
        .one_int(
            "SELECT COUNT(*) FROM approvals WHERE customer_id = $1 AND field = $2 AND new_value = $3 AND status = 'pending'",
            args![customer_id, field, new.as_deref()],
        )
        .await?;
    if pending == 0 {
        conn.exec("INSERT INTO approvals (customer_id, dealer_code, field, old_value, new_value, source_system, \
             message_id, status, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,'pending',$8)", args![customer_id, dealer, field, old, new, src.system.as_str(), message_id, now]).await?;
    }
    Ok(())
}
