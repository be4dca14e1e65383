//! Which lines of the hub's input files the journal finds: the per-row `source_ref` keys of
//! records and the line spans (`source_span`) of batches applied straight to the CRM store, for
//! the SFTP tests' "every row once" checks.

use std::collections::HashSet;

use sqlx::Row;

/// Lines found among the keys of the messages `filter` (SQL over `m`, the messages) selects:
/// (distinct lines, lines counted over every key). Equal when no line is journaled twice.
pub(crate) async fn lines_found(pool: &sqlx::AnyPool, filter: &str) -> (usize, usize) {
    let sql = format!(
        "SELECT k.kind, k.value FROM message_keys k JOIN messages m ON m.id = k.message_id \
         WHERE k.kind IN ('source_ref', 'source_span') AND {filter}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let (mut seen, mut total) = (HashSet::new(), 0);
    for r in rows {
        let (kind, value): (String, String) = (r.get(0), r.get(1));
        if kind == "source_ref" {
            total += 1;
            seen.insert(value);
            continue;
        }
        let (prefix, span) = value
            .rsplit_once("@lines:")
            .unwrap_or_else(|| panic!("span key {value} names no lines"));
        let (first, last) = span
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .unwrap_or_else(|| panic!("span key {value}: lines are not first-last"));
        for line in first..=last {
            total += 1;
            seen.insert(format!("{prefix}:{line}"));
        }
    }
    (seen.len(), total)
}
