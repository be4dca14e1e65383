//! Many-row INSERTs and UPDATEs for the journal and the CRM store. Through sqlx (PostgreSQL) a
//! statement costs a round trip, so many rows go in one multi-row statement; on the SQLite
//! writer's own connection a statement costs no round trip, so each row runs the same cached
//! one-row statement (no statement per row count to prepare, no long binding lists).

use super::StoreError;
use super::exec::{Exec, Ty};

/// A value bound into a multi-row INSERT.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Blob(Vec<u8>),
}

/// PostgreSQL TEXT cannot hold U+0000 (the insert fails, and a refusal or a rejected record
/// whose source_ref, key or reason carries partner text with a NUL would turn into a 503 that the
/// partner retries forever). SQLite could store it; both stores keep U+FFFD instead, so they
/// agree. Record bodies are BLOBs and keep every byte.
fn no_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

impl From<&str> for Arg {
    fn from(s: &str) -> Arg {
        Arg::Text(Some(no_nul(s.to_string())))
    }
}

impl From<String> for Arg {
    fn from(s: String) -> Arg {
        Arg::Text(Some(no_nul(s)))
    }
}

impl From<Option<String>> for Arg {
    fn from(s: Option<String>) -> Arg {
        Arg::Text(s.map(no_nul))
    }
}

impl From<Option<&str>> for Arg {
    fn from(s: Option<&str>) -> Arg {
        Arg::Text(s.map(|s| no_nul(s.to_string())))
    }
}

impl From<&String> for Arg {
    fn from(s: &String) -> Arg {
        Arg::from(s.as_str())
    }
}

impl From<&Option<String>> for Arg {
    fn from(s: &Option<String>) -> Arg {
        Arg::from(s.as_deref())
    }
}

impl From<Vec<u8>> for Arg {
    fn from(b: Vec<u8>) -> Arg {
        Arg::Blob(b)
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        Arg::Int(v)
    }
}

/// Both engines allow 32,766+ bound values per statement; stay well below.
const MAX_BINDS: usize = 16_000;

/// Rows per statement: as many as the bind limit allows, or one where that is cheaper.
fn chunk_rows(conn: &dyn Exec, ncols: usize) -> usize {
    if conn.single_row_statements() {
        1
    } else {
        (MAX_BINDS / ncols).max(1)
    }
}

/// `rows` cut into statements of at most `per_chunk` rows each, with the statement's SQL built
/// once per row count: on SQLite's own connection every statement has one row, so one string
/// serves a whole batch instead of one `format!` per row.
struct Statements<F> {
    rows: std::iter::Peekable<std::vec::IntoIter<Vec<Arg>>>,
    per_chunk: usize,
    sql: F,
    shape: Option<(usize, String)>,
}

impl<F: Fn(usize) -> String> Statements<F> {
    fn new(rows: Vec<Vec<Arg>>, per_chunk: usize, sql: F) -> Self {
        Statements {
            rows: rows.into_iter().peekable(),
            per_chunk,
            sql,
            shape: None,
        }
    }

    /// The next statement's SQL and values.
    fn next(&mut self) -> Option<(&str, Vec<Arg>)> {
        self.rows.peek()?;
        let chunk: Vec<Vec<Arg>> = self.rows.by_ref().take(self.per_chunk).collect();
        let n = chunk.len();
        if self.shape.as_ref().is_none_or(|(rows, _)| *rows != n) {
            self.shape = Some((n, (self.sql)(n)));
        }
        let sql = self.shape.as_ref().map(|(_, sql)| sql.as_str())?;
        Some((sql, chunk.into_iter().flatten().collect()))
    }
}

/// `INSERT INTO <table> (<cols>) VALUES (...), (...) <suffix>` for all `rows`, chunked under the
/// bind limit. Returns the rows affected.
pub async fn insert_rows(
    conn: &mut dyn Exec,
    table: &str,
    cols: &[&str],
    rows: Vec<Vec<Arg>>,
    suffix: &str,
) -> Result<u64, StoreError> {
    // SQLite resolves each `$N` by scanning the statement's parameter names (quadratic in the
    // number of binds); anonymous `?` binds are positional. PostgreSQL needs `$N`.
    let positional = conn.is_sqlite();
    if conn.single_row_statements() {
        if rows.is_empty() {
            return Ok(0);
        }
        let sql = insert_sql(table, cols, 1, suffix, positional);
        return conn.exec_each(&sql, rows).await;
    }
    let mut statements = Statements::new(rows, chunk_rows(conn, cols.len()), |n| {
        insert_sql(table, cols, n, suffix, positional)
    });
    let mut affected = 0;
    while let Some((sql, args)) = statements.next() {
        affected += conn.exec(sql, args).await?;
    }
    Ok(affected)
}

/// Like [`insert_rows`] with a `RETURNING <one text column>` suffix: the returned values.
pub async fn insert_rows_returning(
    conn: &mut dyn Exec,
    table: &str,
    cols: &[&str],
    rows: Vec<Vec<Arg>>,
    suffix: &str,
) -> Result<Vec<String>, StoreError> {
    let positional = conn.is_sqlite();
    let mut statements = Statements::new(rows, chunk_rows(conn, cols.len()), |n| {
        insert_sql(table, cols, n, suffix, positional)
    });
    let mut out = Vec::new();
    while let Some((sql, args)) = statements.next() {
        for row in conn.rows(sql, args, &[Ty::Text]).await? {
            out.push(row.text(0)?);
        }
    }
    Ok(out)
}

pub fn insert_sql(
    table: &str,
    cols: &[&str],
    rows: usize,
    suffix: &str,
    positional: bool,
) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", cols.join(", "));
    sql.push_str(&placeholders(cols.len(), rows, positional));
    if !suffix.is_empty() {
        sql.push(' ');
        sql.push_str(suffix);
    }
    sql
}

/// Updates many rows from one VALUES list: `set` refers to the values as `v.column2`,
/// `v.column3`, ... and rows are matched on `<table>.<key> = v.column1` (both engines name
/// VALUES columns `column1..N`).
pub async fn update_from_values(
    conn: &mut dyn Exec,
    table: &str,
    set: &str,
    key: &str,
    ncols: usize,
    rows: Vec<Vec<Arg>>,
) -> Result<u64, StoreError> {
    let condition = format!("{table}.{key} = v.column1");
    Ok(
        update_values(conn, table, set, &condition, ncols, rows, false)
            .await?
            .0,
    )
}

/// Like [`update_from_values`], with the whole `WHERE` condition given (the VALUES are `v`) and
/// the ids of the rows it updated returned: for updates that must also check each row's state.
pub async fn update_from_values_returning_ids(
    conn: &mut dyn Exec,
    table: &str,
    set: &str,
    condition: &str,
    ncols: usize,
    rows: Vec<Vec<Arg>>,
) -> Result<Vec<i64>, StoreError> {
    Ok(
        update_values(conn, table, set, condition, ncols, rows, true)
            .await?
            .1,
    )
}

/// The two above: the rows updated, and with `returning` their ids.
async fn update_values(
    conn: &mut dyn Exec,
    table: &str,
    set: &str,
    condition: &str,
    ncols: usize,
    rows: Vec<Vec<Arg>>,
    returning: bool,
) -> Result<(u64, Vec<i64>), StoreError> {
    let positional = conn.is_sqlite();
    let mut statements = Statements::new(rows, chunk_rows(conn, ncols), |n| {
        let mut sql = format!(
            "UPDATE {table} SET {set} FROM (VALUES {}) AS v WHERE {condition}",
            placeholders(ncols, n, positional)
        );
        if returning {
            sql.push_str(&format!(" RETURNING {table}.id"));
        }
        sql
    });
    let (mut affected, mut ids) = (0, Vec::new());
    while let Some((sql, args)) = statements.next() {
        if returning {
            for row in conn.rows(sql, args, &[Ty::Int]).await? {
                ids.push(row.int(0)?);
                affected += 1;
            }
        } else {
            affected += conn.exec(sql, args).await?;
        }
    }
    Ok((affected, ids))
}

/// `(?,?),(?,?)` (SQLite) or `($1,$2),($3,$4)` (PostgreSQL).
fn placeholders(ncols: usize, rows: usize, positional: bool) -> String {
    let mut sql = String::with_capacity(rows * ncols * 4);
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..ncols {
            if c > 0 {
                sql.push(',');
            }
            n += 1;
            if positional {
                sql.push('?');
            } else {
                sql.push('$');
                sql.push_str(&n.to_string());
            }
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_numbered_placeholders_for_every_row() {
        assert_eq!(
            insert_sql("t", &["a", "b"], 2, "ON CONFLICT DO NOTHING", false),
            "INSERT INTO t (a, b) VALUES ($1,$2),($3,$4) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            insert_sql("t", &["a"], 2, "", true),
            "INSERT INTO t (a) VALUES (?),(?)"
        );
    }
}
