//! The statement layer of the hot write paths (accept, claim, outcome, flow figures): one
//! `Exec` trait run either by sqlx (PostgreSQL, and any job on SQLite's sqlx connection) or by
//! the SQLite writer's own rusqlite connection, on the writer's thread, with cached statements.
//! Through sqlx every SQLite statement is a round trip to the connection's worker thread and a
//! pass through the `Any` layer; on a single-writer store those, not SQLite, were the limit.

use async_trait::async_trait;
use sqlx::{AnyConnection, Row as _};

use super::StoreError;
use super::rows::Arg;

/// How a result column is read (every column may be NULL).
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Int,
    Text,
    Blob,
}

/// One value of a result row.
#[derive(Debug, Clone)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A result row, read by position.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Val>);

impl Row {
    fn at(&self, i: usize) -> Result<&Val, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Query(format!("result row has no column {i}")))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v)),
            other => Err(StoreError::Query(format!(
                "column {i}: expected an integer, found {other:?}"
            ))),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| StoreError::Query(format!("column {i} is NULL")))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Text(v) => Ok(Some(v.clone())),
            Val::Int(v) => Ok(Some(v.to_string())),
            Val::Blob(b) => String::from_utf8(b.clone())
                .map(Some)
                .map_err(|e| StoreError::Query(format!("column {i} is not UTF-8: {e}"))),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError::Query(format!("column {i} is NULL")))
    }

    pub fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        match self.at(i)? {
            Val::Null => Ok(Vec::new()),
            Val::Blob(b) => Ok(b.clone()),
            Val::Text(t) => Ok(t.clone().into_bytes()),
            Val::Int(v) => Err(StoreError::Query(format!(
                "column {i}: expected bytes, found integer {v}"
            ))),
        }
    }
}

/// Runs statements inside the transaction of the job it was handed to. Placeholders are `$N`
/// (PostgreSQL and SQLite) or, on SQLite, anonymous `?` (see `positional`).
#[async_trait]
pub trait Exec: Send {
    /// Whether the database is SQLite (anonymous `?` placeholders bind fastest there).
    fn is_sqlite(&self) -> bool;
    /// Whether many rows are best written one statement per row: true where a statement costs
    /// no round trip and a one-row statement is prepared once and reused; elsewhere one
    /// multi-row statement is cheaper.
    fn single_row_statements(&self) -> bool {
        false
    }
    /// Runs `sql` and returns the rows it changed.
    async fn exec(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64, StoreError>;
    /// Runs `sql` once per row of values; the rows changed in all.
    async fn exec_each(&mut self, sql: &str, rows: Vec<Vec<Arg>>) -> Result<u64, StoreError> {
        let mut changed = 0;
        for args in rows {
            changed += self.exec(sql, args).await?;
        }
        Ok(changed)
    }
    /// Runs `sql` and returns its rows, each column read as `types` says.
    async fn rows(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
        types: &[Ty],
    ) -> Result<Vec<Row>, StoreError>;

    /// The first row of `sql`, if any.
    async fn opt_row(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
        types: &[Ty],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, args, types).await?.into_iter().next())
    }

    /// The integer that `sql` (a COUNT or a RETURNING of one value) returns.
    async fn one_int(&mut self, sql: &str, args: Vec<Arg>) -> Result<i64, StoreError> {
        self.opt_row(sql, args, &[Ty::Int])
            .await?
            .ok_or_else(|| StoreError::Query(format!("no row from {sql}")))?
            .int(0)
    }
}

/// The values of a statement, each turned into an [`Arg`].
#[macro_export]
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        vec![$($crate::store::rows::Arg::from($v)),*]
    };
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind_all(mut q: AnyQuery<'_>, args: Vec<Arg>) -> AnyQuery<'_> {
    for arg in args {
        q = match arg {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Blob(v) => q.bind(v),
        };
    }
    q
}

#[async_trait]
impl Exec for AnyConnection {
    fn is_sqlite(&self) -> bool {
        self.backend_name().eq_ignore_ascii_case("sqlite")
    }

    async fn exec(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64, StoreError> {
        let q = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql.to_string())), args);
        Ok(q.execute(&mut *self).await?.rows_affected())
    }

    async fn rows(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
        types: &[Ty],
    ) -> Result<Vec<Row>, StoreError> {
        let q = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql.to_string())), args);
        let mut out = Vec::new();
        for r in q.fetch_all(&mut *self).await? {
            let mut vals = Vec::with_capacity(types.len());
            for (i, ty) in types.iter().enumerate() {
                vals.push(match ty {
                    Ty::Int => r.try_get::<Option<i64>, _>(i)?.map_or(Val::Null, Val::Int),
                    Ty::Text => r
                        .try_get::<Option<String>, _>(i)?
                        .map_or(Val::Null, Val::Text),
                    Ty::Blob => r
                        .try_get::<Option<Vec<u8>>, _>(i)?
                        .map_or(Val::Null, Val::Blob),
                });
            }
            out.push(Row(vals));
        }
        Ok(out)
    }
}

/// The SQLite writer's own connection: statements run on the calling (writer) thread, prepared
/// once and kept (the multi-row statements have a shape per row count; the cache holds them).
pub struct LiteConn {
    conn: rusqlite::Connection,
    /// Per statement text: the value each parameter binds. Kept because SQLite finds a
    /// parameter's name by walking its list of names, so asking for every name of a statement
    /// with hundreds of `$N` (the bulk IN lookups) costs their square on every run.
    slots: rustc_hash::FxHashMap<String, Vec<usize>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            // Disk full, read-only, locked or failing databases clear up on their own: transient,
            // so partners get 503 and resend instead of a permanent error.
            Some(
                C::DiskFull
                | C::ReadOnly
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::SystemIoFailure
                | C::CannotOpen
                | C::OutOfMemory,
            ) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Query(e.to_string()),
        }
    }
}

impl LiteConn {
    /// Opens `path` read-write with the same pragmas as the sqlx writer.
    pub fn open(path: &str, pragmas: &str) -> Result<LiteConn, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(pragmas)?;
        conn.set_prepared_statement_cache_capacity(512);
        Ok(LiteConn {
            conn,
            slots: rustc_hash::FxHashMap::default(),
        })
    }

    /// Statements without parameters or results (transaction control).
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch(sql)?)
    }

    fn prepare(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<rusqlite::CachedStatement<'_>, StoreError> {
        let LiteConn { conn, slots } = self;
        let mut stmt = conn.prepare_cached(sql)?;
        let slots = slots_of(slots, &stmt, sql)?;
        bind(&mut stmt, slots, args)?;
        Ok(stmt)
    }
}

/// The value each parameter of `stmt` binds, worked out once per statement text.
fn slots_of<'s>(
    slots: &'s mut rustc_hash::FxHashMap<String, Vec<usize>>,
    stmt: &rusqlite::Statement<'_>,
    sql: &str,
) -> Result<&'s [usize], StoreError> {
    if !slots.contains_key(sql) {
        // `$N` binds the N-th value wherever it appears (SQLite gives a repeated name one
        // index); anonymous `?` binds the values in order.
        let mut these = Vec::with_capacity(stmt.parameter_count());
        for i in 1..=stmt.parameter_count() {
            these.push(match stmt.parameter_name(i) {
                Some(name) => name
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        StoreError::Query(format!("unsupported placeholder {name} in {sql}"))
                    })?,
                None => i,
            });
        }
        // Bounded like the statement cache: statement shapes are few, but a caller building
        // one per value count could otherwise grow this without end.
        if slots.len() >= 4096 {
            slots.clear();
        }
        slots.insert(sql.to_owned(), these);
    }
    Ok(&slots[sql])
}

fn bind(
    stmt: &mut rusqlite::Statement<'_>,
    slots: &[usize],
    args: &[Arg],
) -> Result<(), StoreError> {
    for (i, &slot) in (1..).zip(slots) {
        let arg = args
            .get(slot - 1)
            .ok_or_else(|| StoreError::Query(format!("no value for placeholder {slot}")))?;
        match arg {
            Arg::Text(Some(s)) => stmt.raw_bind_parameter(i, s.as_str())?,
            Arg::Int(Some(v)) => stmt.raw_bind_parameter(i, *v)?,
            Arg::Blob(b) => stmt.raw_bind_parameter(i, b.as_slice())?,
            Arg::Text(None) | Arg::Int(None) => {
                stmt.raw_bind_parameter(i, rusqlite::types::Null)?
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Exec for LiteConn {
    fn is_sqlite(&self) -> bool {
        true
    }

    fn single_row_statements(&self) -> bool {
        true
    }

    async fn exec(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64, StoreError> {
        let mut stmt = self.prepare(sql, &args)?;
        Ok(stmt.raw_execute()? as u64)
    }

    async fn exec_each(&mut self, sql: &str, rows: Vec<Vec<Arg>>) -> Result<u64, StoreError> {
        // One statement taken from the cache for all the rows: a cache lookup hashes the SQL
        // text twice (take and put back), a cost per row that a bulk write notices.
        let LiteConn { conn, slots } = self;
        let mut stmt = conn.prepare_cached(sql)?;
        let slots = slots_of(slots, &stmt, sql)?;
        let mut changed = 0;
        for args in &rows {
            bind(&mut stmt, slots, args)?;
            changed += stmt.raw_execute()? as u64;
        }
        Ok(changed)
    }

    async fn rows(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
        types: &[Ty],
    ) -> Result<Vec<Row>, StoreError> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.prepare(sql, &args)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(types.len());
            for i in 0..types.len() {
                vals.push(match r.get_ref(i)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) => Val::Int(v),
                    ValueRef::Real(v) => {
                        return Err(StoreError::Query(format!(
                            "column {i}: unexpected real {v}"
                        )));
                    }
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::Blob(b.to_vec()),
                });
            }
            out.push(Row(vals));
        }
        Ok(out)
    }
}
