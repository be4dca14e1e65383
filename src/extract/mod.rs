//! Extracts for analytics (IF-09): the CRM change log read as windows `(since, until]` of its
//! `seq` cursor, rendered as NDJSON or CSV and streamed page by page (constant memory for any
//! size). The HTTP API (`http`), the nightly SFTP push (`push`) and `synchub extract` share
//! [`Window`] and [`stream`], so all three give the same bytes for the same window.

pub mod changes;
pub mod cli;
pub mod http;
pub mod push;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{Map, Value};
use sqlx::Row;

use crate::store::{Store, StoreError};

/// Rows fetched per query while streaming: big enough to amortise the round trip, small enough
/// that a page is a few MB at most.
pub const PAGE: i64 = 2000;

/// One extractable entity: its API name, its CRM store name, the field holding its id, and the
/// fixed CSV columns (header, dotted path into the record).
#[derive(Debug)]
pub struct Entity {
    pub name: &'static str,
    pub store: &'static str,
    pub id_field: &'static str,
    pub columns: &'static [(&'static str, &'static str)],
}

/// Every entity of IF-09, in push order.
pub static ENTITIES: [Entity; 7] = [
    Entity {
        name: "customers",
        store: "customer",
        id_field: "customer_id",
        columns: &[
            ("customer_id", "customer_id"),
            ("dealer_code", "dealer_code"),
            ("name", "name"),
            ("mobile", "mobile"),
            ("id_no", "id_no"),
            ("gender", "gender"),
            ("birth_date", "birth_date"),
            ("province", "province"),
            ("city", "city"),
            ("address", "address"),
            ("email", "email"),
            ("updated_at", "updated_at"),
            // Set on the tombstone of a merged customer: the id that lives on.
            ("merged_into", "merged_into"),
        ],
    },
    Entity {
        name: "vehicles",
        store: "vehicle",
        id_field: "vin",
        columns: &[
            ("vin", "vin"),
            ("brand", "brand"),
            ("model", "model"),
            ("model_year", "model_year"),
            ("color", "color"),
            ("plate_no", "plate_no"),
            ("engine_no", "engine_no"),
            ("dealer_code", "dealer_code"),
            ("sales_date", "sales_date"),
            ("owner_customer_id", "owner_customer_id"),
            ("owner_name", "owner.name"),
            ("owner_mobile", "owner.mobile"),
            ("owner_id_no", "owner.id_no"),
        ],
    },
    Entity {
        name: "dealers",
        store: "dealer",
        id_field: "dealer_code",
        columns: &[
            ("dealer_code", "dealer_code"),
            ("dealer_name", "dealer_name"),
            ("region", "region"),
            ("province", "province"),
            ("city", "city"),
            ("address", "address"),
            ("phone", "phone"),
            ("status", "status"),
        ],
    },
    Entity {
        name: "leads",
        store: "lead",
        id_field: "lead_id",
        columns: &[
            ("lead_id", "lead_id"),
            ("source", "source"),
            ("source_ref", "source_ref"),
            ("status", "status"),
            ("level", "level"),
            ("score", "score"),
            ("dealer_code", "dealer_code"),
            ("customer_id", "customer_id"),
            ("customer_name", "customer.name"),
            ("customer_mobile", "customer.mobile"),
            ("province", "customer.province"),
            ("city", "customer.city"),
            ("interested_model", "interested_model"),
            ("campaign_code", "campaign_code"),
            ("remark", "remark"),
        ],
    },
    Entity {
        name: "lead_results",
        store: "lead_result",
        id_field: "result_id",
        columns: &[
            ("result_id", "result_id"),
            ("lead_id", "lead_id"),
            ("dealer_code", "dealer_code"),
            ("status", "status"),
            ("reason", "reason"),
            ("occurred_at", "occurred_at"),
            ("source_ref", "source_ref"),
        ],
    },
    Entity {
        name: "campaigns",
        store: "campaign",
        id_field: "campaign_code",
        columns: &[
            ("campaign_code", "campaign_code"),
            ("name", "name"),
            ("start_date", "start_date"),
            ("end_date", "end_date"),
            ("dealer_codes", "dealer_codes"),
            ("target_customers", "target_customers"),
        ],
    },
    Entity {
        name: "campaign_results",
        store: "campaign_result",
        id_field: "result_id",
        columns: &[
            ("result_id", "result_id"),
            ("campaign_code", "campaign_code"),
            ("dealer_code", "dealer_code"),
            ("customer_id", "customer_id"),
            ("customer_mobile", "customer_mobile"),
            ("customer_name", "customer_name"),
            ("result", "result"),
            ("result_date", "result_date"),
            ("remark", "remark"),
            ("source_ref", "source_ref"),
        ],
    },
];

/// The metadata columns every row starts with.
pub const META: [&str; 4] = ["_seq", "_op", "_changed_at", "_version"];

/// The entity of an API name (`customers`), if it is one.
pub fn entity(name: &str) -> Option<&'static Entity> {
    ENTITIES.iter().find(|e| e.name == name)
}

/// The API names of every entity, for "unknown entity" errors.
pub fn entity_names() -> Vec<&'static str> {
    ENTITIES.iter().map(|e| e.name).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            other => Err(format!("format must be ndjson or csv, not '{other}'")),
        }
    }
}

/// Text encoding of the output. GB18030 exists for legacy CSV consumers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Gb18030,
}

impl Charset {
    pub fn parse(s: &str) -> Result<Charset, String> {
        match s.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Ok(Charset::Utf8),
            "gb18030" => Ok(Charset::Gb18030),
            other => Err(format!("charset must be utf-8 or gb18030, not '{other}'")),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Charset::Utf8 => "utf-8",
            Charset::Gb18030 => "gb18030",
        }
    }
}

/// Parses a cursor: a change-log seq, a non-negative integer.
pub fn parse_cursor(what: &str, s: &str) -> Result<i64, String> {
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            format!(
                "{what} must be a cursor (a non-negative integer from X-Next-Cursor), not '{s}'"
            )
        })
}

/// A fixed window of one entity's changes: rows with `since < seq <= end`. Fixed means final:
/// `end` is never above the horizon, so the window's rows never change afterwards.
#[derive(Debug, Clone)]
pub struct Window {
    pub entity: &'static Entity,
    pub since: i64,
    pub end: i64,
}

impl Window {
    /// Resolves a request to a fixed window: `end` = min(until, horizon), lowered to the seq of
    /// the `limit`-th row when there are more. The end is known before a byte is sent, so it can
    /// go out as `X-Next-Cursor` ahead of the rows.
    pub async fn resolve(
        store: &Store,
        entity: &'static Entity,
        since: i64,
        until: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Window, StoreError> {
        let horizon = changes::horizon(store.pool(), store.dialect()).await?;
        let mut end = until.map_or(horizon, |u| u.min(horizon)).max(since);
        if let Some(limit) = limit.filter(|l| *l > 0) {
            let offset = i64::try_from(limit - 1).unwrap_or(i64::MAX);
            let nth: Option<i64> = sqlx::query(
                "SELECT seq FROM crm_changes WHERE entity = $1 AND seq > $2 AND seq <= $3 \
                 ORDER BY seq LIMIT 1 OFFSET $4",
            )
            .bind(entity.store)
            .bind(since)
            .bind(end)
            .bind(offset)
            .fetch_optional(store.pool())
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            if let Some(nth) = nth {
                end = nth;
            }
        }
        Ok(Window { entity, since, end })
    }
}

/// Rows rendered so far by a [`stream`] (for manifests and logs).
#[derive(Debug, Clone, Default)]
pub struct RowCount(Arc<AtomicU64>);

impl RowCount {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Cursor {
    store: Store,
    /// One connection for the whole stream: on SQLite each reader connection keeps its own page
    /// cache, so hopping between pooled connections would fill several caches for one extract.
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    window: Window,
    format: Format,
    charset: Charset,
    after: i64,
    header_done: bool,
    finished: bool,
    rows: RowCount,
}

/// The window's rows as encoded chunks (one per page, the CSV header first), in seq order.
/// A store error ends the stream with that error, so a consumer never mistakes a cut-off
/// extract for a complete one.
pub fn stream(
    store: Store,
    window: Window,
    format: Format,
    charset: Charset,
) -> (BoxStream<'static, Result<Bytes, StoreError>>, RowCount) {
    let rows = RowCount::default();
    let cursor = Cursor {
        store,
        conn: None,
        after: window.since,
        window,
        format,
        charset,
        header_done: false,
        finished: false,
        rows: rows.clone(),
    };
    let s = stream::try_unfold(cursor, |mut c| async move {
        if c.finished {
            return Ok(None);
        }
        let mut out = String::new();
        if !c.header_done {
            c.header_done = true;
            if c.format == Format::Csv {
                csv_header(c.window.entity, &mut out);
            }
        }
        if c.after < c.window.end {
            if c.conn.is_none() {
                c.conn = Some(c.store.pool().acquire().await?);
            }
            let conn = c.conn.as_mut().expect("acquired above");
            let page = sqlx::query(
                "SELECT seq, entity_id, version, op, data, changed_at FROM crm_changes \
                 WHERE entity = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
            )
            .bind(c.window.entity.store)
            .bind(c.after)
            .bind(c.window.end)
            .bind(PAGE)
            .fetch_all(&mut **conn)
            .await?;
            if (page.len() as i64) < PAGE {
                c.finished = true;
            }
            for row in &page {
                let r = ChangeRow {
                    seq: row.try_get(0)?,
                    entity_id: row.try_get(1)?,
                    version: row.try_get(2)?,
                    op: row.try_get(3)?,
                    data: row.try_get(4)?,
                    changed_at: row.try_get(5)?,
                };
                c.after = r.seq;
                render(c.window.entity, c.format, &r, &mut out);
            }
            c.rows.0.fetch_add(page.len() as u64, Ordering::Relaxed);
        } else {
            c.finished = true;
        }
        if out.is_empty() {
            return Ok(None);
        }
        let bytes = encode(c.charset, out);
        Ok(Some((bytes, c)))
    });
    (s.boxed(), rows)
}

fn encode(charset: Charset, text: String) -> Bytes {
    match charset {
        Charset::Utf8 => Bytes::from(text),
        Charset::Gb18030 => {
            // GB18030 covers all of Unicode, so nothing is replaced.
            let (bytes, _, _) = encoding_rs::GB18030.encode(&text);
            Bytes::from(bytes.into_owned())
        }
    }
}

/// One change-log row as read.
#[derive(Clone)]
pub struct ChangeRow {
    pub seq: i64,
    pub entity_id: String,
    pub version: i64,
    pub op: String,
    pub data: String,
    pub changed_at: i64,
}

fn changed_at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Appends one row (with its line end) in `format`.
pub fn render(entity: &Entity, format: Format, r: &ChangeRow, out: &mut String) {
    match format {
        Format::Ndjson => {
            if !splice_ndjson(entity, r, out) {
                parsed_ndjson(entity, r, out);
            }
        }
        Format::Csv => {
            let data: Map<String, Value> = serde_json::from_str(&r.data).unwrap_or_default();
            let meta = [
                r.seq.to_string(),
                r.op.clone(),
                changed_at(r.changed_at),
                r.version.to_string(),
            ];
            let mut first = true;
            let mut sep = |out: &mut String| {
                if !first {
                    out.push(',');
                }
                first = false;
            };
            for m in &meta {
                sep(out);
                csv_cell(m, out);
            }
            for (header, path) in entity.columns {
                sep(out);
                if *header == entity.id_field {
                    csv_cell(&r.entity_id, out);
                    continue;
                }
                match lookup(&data, path) {
                    // A JSON number is ours to write: its text is a number (`-5`, `1e-3`) and
                    // stays one, so numeric columns load as numbers. Only text can be a formula.
                    Some(Value::Number(n)) => out.push_str(&n.to_string()),
                    v => csv_cell(&v.map(cell_text).unwrap_or_default(), out),
                }
            }
            out.push_str("\r\n");
        }
    }
}

/// The NDJSON line of any row: its data parsed, written again after the metadata and the id.
fn parsed_ndjson(entity: &Entity, r: &ChangeRow, out: &mut String) {
    let data: Map<String, Value> = serde_json::from_str(&r.data).unwrap_or_default();
    let mut o = Map::with_capacity(data.len() + 5);
    o.insert("_seq".into(), r.seq.into());
    o.insert("_op".into(), r.op.clone().into());
    o.insert("_changed_at".into(), changed_at(r.changed_at).into());
    o.insert("_version".into(), r.version.into());
    o.insert(entity.id_field.into(), r.entity_id.clone().into());
    for (k, v) in data {
        if k != entity.id_field {
            o.insert(k, v);
        }
    }
    out.push_str(&Value::Object(o).to_string());
    out.push('\n');
}

/// The NDJSON line of a row whose stored data is a compact JSON object without the id field:
/// the metadata and id written, then the stored members as they are. The store wrote the data
/// with serde_json, so these are the bytes parsing and re-serialising would give (same member
/// order, same text), at a fraction of the cost: parsing every row was most of an extract's
/// work. `false` (nothing written) for any other data; `render` then takes the general path.
fn splice_ndjson(entity: &Entity, r: &ChangeRow, out: &mut String) -> bool {
    let d = r.data.as_str();
    let id = entity.id_field;
    // The id field as a member name anywhere (nested too): the general path decides then.
    let names_id = d
        .match_indices(id)
        .any(|(i, _)| d[..i].ends_with('"') && d[i + id.len()..].starts_with('"'));
    if !(d.starts_with('{') && d.ends_with('}')) || names_id {
        return false;
    }
    use std::fmt::Write;
    let _ = write!(
        out,
        "{{\"_seq\":{},\"_op\":{},\"_changed_at\":\"{}\",\"_version\":{},\"{id}\":{}",
        r.seq,
        Value::String(r.op.clone()),
        changed_at(r.changed_at),
        r.version,
        Value::String(r.entity_id.clone()),
    );
    if d[1..d.len() - 1].trim().is_empty() {
        out.push('}');
    } else {
        out.push(',');
        out.push_str(&d[1..]);
    }
    out.push('\n');
    true
}

fn csv_header(entity: &Entity, out: &mut String) {
    let names: Vec<&str> = META
        .iter()
        .copied()
        .chain(entity.columns.iter().map(|(h, _)| *h))
        .collect();
    out.push_str(&names.join(","));
    out.push_str("\r\n");
}

fn lookup<'a>(data: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = data.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    Some(v)
}

/// A CSV cell's text: strings as they are, arrays of scalars joined by `;`, other values as JSON.
fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|i| !i.is_array() && !i.is_object()) => {
            items.iter().map(cell_text).collect::<Vec<_>>().join(";")
        }
        other => other.to_string(),
    }
}

/// Writes one CSV cell (RFC 4180 quoting). A cell a spreadsheet would run as a formula (starting
/// with `=`, `+`, `-`, `@`, tab or CR) gets a leading `'`, so opening an extract in Excel never
/// executes partner-supplied text.
pub fn csv_cell(s: &str, out: &mut String) {
    let risky = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = risky || s.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if risky {
        out.push('\'');
    }
    if s.contains('"') {
        out.push_str(&s.replace('"', "\"\""));
    } else {
        out.push_str(s);
    }
    if quote {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cell(s: &str) -> String {
        let mut out = String::new();
        csv_cell(s, &mut out);
        out
    }

    #[test]
    fn csv_cells_are_quoted_and_formulas_neutralised() {
        let cases = [
            ("plain", "plain"),
            ("广州", "广州"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("line\nbreak", "\"line\nbreak\""),
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("+86 139", "\"'+86 139\""),
            ("-1", "\"'-1\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\tx", "\"'\tx\""),
            ("\rx", "\"'\rx\""),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(cell(input), want, "cell {input:?}");
        }
    }

    #[test]
    fn rows_render_with_meta_and_fixed_columns() {
        let e = entity("vehicles").unwrap();
        let r = ChangeRow {
            seq: 7,
            entity_id: "LHGCV3CK9VA118682".into(),
            version: 2,
            op: "upsert".into(),
            data: r#"{"vin":"LHGCV3CK9VA118682","brand":"Honda","owner":{"name":"张三","mobile":"13900000000"},"extra":1}"#.into(),
            changed_at: 1_764_547_200_000,
        };
        let mut csv = String::new();
        csv_header(e, &mut csv);
        render(e, Format::Csv, &r, &mut csv);
        assert_eq!(
            csv,
            "_seq,_op,_changed_at,_version,vin,brand,model,model_year,color,plate_no,engine_no,dealer_code,sales_date,owner_customer_id,owner_name,owner_mobile,owner_id_no\r\n\
             7,upsert,2025-12-01T00:00:00.000Z,2,LHGCV3CK9VA118682,Honda,,,,,,,,,张三,13900000000,\r\n"
        );
        // Text that looks like a negative number is still text from a partner: neutralised;
        // a JSON number is written as the number it is.
        let neg = ChangeRow {
            data: r#"{"vin":"V","model":"-5","model_year":-5,"owner":{"name":"=1+1"}}"#.into(),
            ..r.clone()
        };
        let mut line = String::new();
        render(e, Format::Csv, &neg, &mut line);
        assert!(line.contains(",\"'-5\",-5,"), "{line}");
        assert!(line.contains(",\"'=1+1\","), "{line}");
        let mut nd = String::new();
        render(e, Format::Ndjson, &r, &mut nd);
        assert_eq!(
            nd,
            "{\"_seq\":7,\"_op\":\"upsert\",\"_changed_at\":\"2025-12-01T00:00:00.000Z\",\"_version\":2,\"vin\":\"LHGCV3CK9VA118682\",\"brand\":\"Honda\",\"owner\":{\"name\":\"张三\",\"mobile\":\"13900000000\"},\"extra\":1}\n"
        );
    }

    #[test]
    fn a_spliced_ndjson_line_is_the_line_parsing_would_give() {
        let e = entity("customers").unwrap();
        let general = |r: &ChangeRow| {
            let mut line = String::new();
            parsed_ndjson(e, r, &mut line);
            line
        };
        let base = ChangeRow {
            seq: 9,
            entity_id: "C000000042".into(),
            version: 3,
            op: "upsert".into(),
            data: String::new(),
            changed_at: 1_764_547_200_123,
        };
        for (i, data) in [
            json!({"name": "王\"小明\"", "mobile": "13912345678", "tags": ["a", {"b": 1.5}], "n": null}),
            json!({}),
            json!({"customer_id": "C000000042", "name": "x"}),
            json!({"owner": {"customer_id": "C1"}, "address": "天河区\n体育西路"}),
        ]
        .into_iter()
        .enumerate()
        {
            let r = ChangeRow {
                data: data.to_string(),
                ..base.clone()
            };
            if i < 2 {
                assert!(splice_ndjson(e, &r, &mut String::new()), "{data} is spliced");
            }
            let mut line = String::new();
            render(e, Format::Ndjson, &r, &mut line);
            assert_eq!(line, general(&r), "data {data}");
        }
        let tombstone = ChangeRow {
            op: "delete".into(),
            data: json!({"customer_id": "C000000042", "deleted": true}).to_string(),
            ..base
        };
        let mut line = String::new();
        render(e, Format::Ndjson, &tombstone, &mut line);
        assert_eq!(line, general(&tombstone));
    }

    #[test]
    fn cursors_and_options_parse_or_say_what_is_wrong() {
        assert_eq!(parse_cursor("since", "42"), Ok(42));
        assert!(parse_cursor("since", "-1").unwrap_err().contains("since"));
        assert!(parse_cursor("until", "abc").unwrap_err().contains("'abc'"));
        assert_eq!(Format::parse("csv"), Ok(Format::Csv));
        assert!(Format::parse("xml").is_err());
        assert_eq!(Charset::parse("GB18030"), Ok(Charset::Gb18030));
        assert_eq!(
            encode(Charset::Gb18030, "广州".into()).as_ref(),
            [0xb9, 0xe3, 0xd6, 0xdd]
        );
        assert!(entity("customer").is_none());
        assert_eq!(entity_names().len(), 7);
    }
}
