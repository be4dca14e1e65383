//! Dashboard sessions in the store (migration 0010), keyed by the SHA-256 of the session id so the
//! table never holds a usable cookie; every hub instance on the store sees the same sessions.

use sqlx::{AnyConnection, AnyPool, Row};

use super::StoreError;

/// One session row. `id_hash` is the hex SHA-256 of the cookie value, never the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id_hash: String,
    pub operator: String,
    /// Binds the row to the operator's configured token (see `ui::session`).
    pub credential: String,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Inserts `row` after deleting the sessions that expired before `now`: sign-ins are rare, so
/// purging there keeps the table at the live sessions without a job of its own.
pub async fn insert(
    conn: &mut AnyConnection,
    row: &SessionRow,
    now: i64,
) -> Result<u64, StoreError> {
    let purged = sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(
        "INSERT INTO ui_sessions (id_hash, operator, credential, csrf, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(row.id_hash.as_str())
    .bind(row.operator.as_str())
    .bind(row.credential.as_str())
    .bind(row.csrf.as_str())
    .bind(row.created_at)
    .bind(row.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(purged)
}

/// The session stored under `id_hash`, expired or not (the caller decides).
pub async fn find(pool: &AnyPool, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
    let row = sqlx::query(
        "SELECT id_hash, operator, credential, csrf, created_at, expires_at FROM ui_sessions \
         WHERE id_hash = $1",
    )
    .bind(id_hash)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(SessionRow {
            id_hash: r.try_get(0)?,
            operator: r.try_get(1)?,
            credential: r.try_get(2)?,
            csrf: r.try_get(3)?,
            created_at: r.try_get(4)?,
            expires_at: r.try_get(5)?,
        })
    })
    .transpose()
}

/// Moves the idle timeout of a live session to `expires_at`. Never shortens it (two instances
/// renewing at once keep the later time) and never revives a session that has already expired
/// at `now`, so a renewal racing a logout or the expiry does not bring it back. Whether a row
/// changed.
pub async fn extend(
    conn: &mut AnyConnection,
    id_hash: &str,
    expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE ui_sessions SET expires_at = $2 WHERE id_hash = $1 AND expires_at < $2 AND expires_at > $3",
    )
    .bind(id_hash)
    .bind(expires_at)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Ends a session (logout). Whether there was one.
pub async fn delete(conn: &mut AnyConnection, id_hash: &str) -> Result<bool, StoreError> {
    let n = sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(n > 0)
}
