//! CRM store reads for the API: records by id or mobile, change history, approvals, campaign
//! result counts. A dealer scope hides other dealers' records (the API answers 404 for them).

use serde_json::{Map, Value, json};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::StoreError;

fn ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn record(r: &AnyRow, id_field: &str) -> Result<Value, StoreError> {
    let data: String = r.try_get(1)?;
    let mut out = Map::new();
    out.insert(id_field.into(), Value::String(r.try_get(0)?));
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&data) {
        for (k, v) in m {
            out.entry(k).or_insert(v);
        }
    }
    // The record's own fields (a DMS's `updated_at`) win; the store's bookkeeping has its own names.
    out.insert("version".into(), json!(r.try_get::<i64, _>(2)?));
    out.insert("crm_created_at".into(), json!(ms(r.try_get(4)?)));
    out.insert("crm_updated_at".into(), json!(ms(r.try_get(5)?)));
    Ok(Value::Object(out))
}

/// The name of an entity's id field in API answers.
pub fn id_field(entity: &str) -> &'static str {
    match entity {
        "customer" => "customer_id",
        "vehicle" => "vin",
        "dealer" => "dealer_code",
        "lead" => "lead_id",
        "campaign" => "campaign_code",
        _ => "id",
    }
}

/// One record, or `None` if absent or of another dealer than `dealer_scope`.
pub async fn get(
    pool: &AnyPool,
    entity: &str,
    id: &str,
    dealer_scope: Option<&str>,
) -> Result<Option<Value>, StoreError> {
    let r = sqlx::query(
        "SELECT id, data, version, dealer_code, created_at, updated_at FROM crm_records WHERE entity = $1 AND id = $2",
    )
    .bind(entity)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = r else { return Ok(None) };
    if let Some(scope) = dealer_scope {
        let dealer: Option<String> = r.try_get(3)?;
        let own = match entity {
            "dealer" => id == scope,
            _ => dealer.as_deref() == Some(scope),
        };
        if !own {
            return Ok(None);
        }
    }
    Ok(Some(record(&r, id_field(entity))?))
}

pub async fn customers_by_mobile(
    pool: &AnyPool,
    mobile: &str,
    dealer_scope: Option<&str>,
) -> Result<Vec<Value>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, data, version, dealer_code, created_at, updated_at FROM crm_records \
         WHERE entity = 'customer' AND mobile = $1 AND ($2 = '' OR dealer_code = $2) ORDER BY id",
    )
    .bind(mobile)
    .bind(dealer_scope.unwrap_or(""))
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| record(r, "customer_id")).collect()
}

pub async fn history(pool: &AnyPool, entity: &str, id: &str) -> Result<Vec<Value>, StoreError> {
    let rows = sqlx::query(
        "SELECT field, old_value, new_value, source_system, message_id, changed_at FROM change_history \
         WHERE entity = $1 AND entity_id = $2 ORDER BY id",
    )
    .bind(entity)
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "field": r.try_get::<String, _>(0)?,
                "old": r.try_get::<Option<String>, _>(1)?,
                "new": r.try_get::<Option<String>, _>(2)?,
                "source_system": r.try_get::<Option<String>, _>(3)?,
                "message_id": r.try_get::<Option<String>, _>(4)?,
                "changed_at": ms(r.try_get(5)?),
            }))
        })
        .collect()
}

pub async fn approvals(
    pool: &AnyPool,
    status: &str,
    dealer_scope: Option<&str>,
) -> Result<Vec<Value>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, customer_id, dealer_code, field, old_value, new_value, source_system, message_id, status, comment, \
         decided_by, created_at FROM approvals WHERE ($1 = '' OR status = $1) AND ($2 = '' OR dealer_code = $2) \
         ORDER BY id LIMIT 1000",
    )
    .bind(status)
    .bind(dealer_scope.unwrap_or(""))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "id": r.try_get::<i64, _>(0)?,
                "customer_id": r.try_get::<String, _>(1)?,
                "dealer_code": r.try_get::<Option<String>, _>(2)?,
                "field": r.try_get::<String, _>(3)?,
                "old": r.try_get::<Option<String>, _>(4)?,
                "new": r.try_get::<Option<String>, _>(5)?,
                "source_system": r.try_get::<Option<String>, _>(6)?,
                "message_id": r.try_get::<Option<String>, _>(7)?,
                "status": r.try_get::<String, _>(8)?,
                "comment": r.try_get::<Option<String>, _>(9)?,
                "decided_by": r.try_get::<Option<String>, _>(10)?,
                "created_at": ms(r.try_get(11)?),
            }))
        })
        .collect()
}

/// Per-dealer result counts of a campaign: `{dealer: {result: n}}`.
pub async fn campaign_results(
    pool: &AnyPool,
    code: &str,
    dealer_scope: Option<&str>,
) -> Result<Value, StoreError> {
    let rows = sqlx::query(
        "SELECT dealer_code, data FROM crm_records WHERE entity = 'campaign_result' AND ref = $1 \
         AND ($2 = '' OR dealer_code = $2)",
    )
    .bind(code)
    .bind(dealer_scope.unwrap_or(""))
    .fetch_all(pool)
    .await?;
    let mut per: Map<String, Value> = Map::new();
    for r in rows {
        let dealer: Option<String> = r.try_get(0)?;
        let data: Value = serde_json::from_str(&r.try_get::<String, _>(1)?).unwrap_or(Value::Null);
        let result = data
            .get("result")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let entry = per
            .entry(dealer.unwrap_or_default())
            .or_insert_with(|| json!({}));
        let n = entry.get(&result).and_then(Value::as_i64).unwrap_or(0);
        entry[result.as_str()] = json!(n + 1);
    }
    Ok(Value::Object(per))
}

/// How many records of an entity the store holds (tests and the dashboard use it).
pub async fn count(pool: &AnyPool, entity: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("SELECT COUNT(*) FROM crm_records WHERE entity = $1")
            .bind(entity)
            .fetch_one(pool)
            .await?
            .try_get(0)?,
    )
}
