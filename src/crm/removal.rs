//! Headquarters removes a customer from the CRM store: merged into the customer it duplicates
//! (its vehicles move to that customer) or erased. Either way the record leaves `crm_records` and
//! a tombstone row (op `merge` or `delete`) goes to the extract change log in the same
//! transaction, so the analytics side learns which id is gone and, for a merge, where it went.

use serde_json::{Map, Value, json};
use sqlx::{AnyConnection, Row};

use super::{ChangeSource, Columns, str_field, upsert};
use crate::extract::changes::{self, Change, Op};
use crate::store::rows::insert_rows;
use crate::store::{StoreError, now_ms};

/// What a merge did.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Vehicles whose owner is now the surviving customer.
    pub vehicles: Vec<String>,
    /// The merged customer as it was.
    pub before: Map<String, Value>,
}

/// The customer `id` (data and version), or NotFound.
async fn customer(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<(Map<String, Value>, i64), StoreError> {
    let row =
        sqlx::query("SELECT data, version FROM crm_records WHERE entity = 'customer' AND id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("customer {id}")))?;
    let data: String = row.try_get(0)?;
    let map = serde_json::from_str::<Map<String, Value>>(&data).unwrap_or_default();
    Ok((map, row.try_get(1)?))
}

/// VINs of the vehicles whose owner is `customer`: by `ref` (the owner id, indexed), and for
/// vehicles stored before `ref` carried it, by the owner's mobile, checked against the owner id.
async fn vehicles_of(
    conn: &mut AnyConnection,
    customer: &str,
    mobile: Option<String>,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, data FROM crm_records WHERE entity = 'vehicle' AND ref = $1 \
         UNION SELECT id, data FROM crm_records WHERE entity = 'vehicle' AND mobile = $2 ORDER BY 1",
    )
    .bind(customer)
    .bind(mobile.unwrap_or_default())
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let data: String = r.try_get(1)?;
        let owned = serde_json::from_str::<Value>(&data)
            .ok()
            .is_some_and(|v| v["owner_customer_id"] == customer);
        if owned {
            out.push(r.try_get::<String, _>(0)?);
        }
    }
    Ok(out)
}

/// Drops the record and appends its tombstone and a history row naming what happened.
async fn remove(
    conn: &mut AnyConnection,
    id: &str,
    version: i64,
    op: Op,
    tombstone: Map<String, Value>,
    history: (&str, String),
    who: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query("DELETE FROM crm_records WHERE entity = 'customer' AND id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    insert_rows(
        conn,
        "change_history",
        super::unit::HISTORY_COLS,
        vec![vec![
            "customer".into(),
            id.into(),
            history.0.into(),
            Option::<String>::None.into(),
            history.1.into(),
            format!("crm:hq:{who}").into(),
            Option::<String>::None.into(),
            now.into(),
        ]],
        "",
    )
    .await?;
    changes::append(
        conn,
        vec![Change {
            entity: "customer".into(),
            entity_id: id.into(),
            version: version + 1,
            op,
            data: Value::Object(tombstone).to_string(),
            changed_at: now,
        }],
    )
    .await
}

/// Merges customer `from` into `into`: `from`'s vehicles get `into` as their owner (through the
/// CRM upsert, so they get a version, history and a change-log row each), then `from` is removed
/// with a `merge` tombstone carrying its last data and `merged_into`.
pub async fn merge_customer(
    conn: &mut AnyConnection,
    from: &str,
    into: &str,
    who: &str,
) -> Result<Merged, StoreError> {
    if from == into {
        return Err(StoreError::Conflict(format!(
            "customer {from} cannot be merged into itself"
        )));
    }
    let (before, version) = customer(conn, from).await?;
    customer(conn, into).await?;
    let vehicles = vehicles_of(conn, from, str_field(&before, "mobile")).await?;
    let src = ChangeSource {
        system: format!("crm:hq:{who}"),
        message_id: None,
        needs_approval: false,
    };
    let mut owner = Map::new();
    owner.insert("owner_customer_id".into(), json!(into));
    let cols = Columns {
        reference: Some(into.to_string()),
        ..Default::default()
    };
    for vin in &vehicles {
        upsert(conn, "vehicle", vin, &owner, &cols, &src).await?;
    }
    let mut tombstone = before.clone();
    tombstone.insert("merged_into".into(), json!(into));
    remove(
        conn,
        from,
        version,
        Op::Merge,
        tombstone,
        ("(merged)", into.to_string()),
        who,
    )
    .await?;
    Ok(Merged { vehicles, before })
}

/// Erases customer `id`. Its tombstone names only the id: an erasure must not publish the
/// personal data it removes to the analytics side once more. Refused while vehicles name it as
/// their owner (merge it, or let OSM change the owner, first).
pub async fn erase_customer(
    conn: &mut AnyConnection,
    id: &str,
    who: &str,
) -> Result<Map<String, Value>, StoreError> {
    let (before, version) = customer(conn, id).await?;
    let owned = vehicles_of(conn, id, str_field(&before, "mobile")).await?;
    if !owned.is_empty() {
        return Err(StoreError::Conflict(format!(
            "customer {id} owns {} vehicle(s) ({}); merge the customer into another or change the owner first",
            owned.len(),
            owned.join(", ")
        )));
    }
    let mut tombstone = Map::new();
    tombstone.insert("customer_id".into(), json!(id));
    tombstone.insert("deleted".into(), json!(true));
    remove(
        conn,
        id,
        version,
        Op::Delete,
        tombstone,
        ("(deleted)", String::new()),
        who,
    )
    .await?;
    Ok(before)
}
