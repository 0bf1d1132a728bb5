//! A client's statement in one currency as CSV, streamed a page of entries at a time, each with
//! the balance after it.

use allot_shared::{ApiError, Currency};
use bytes::Bytes;
use futures::Stream;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::{client_exists, no_account};
use crate::error::AppError;

/// Ledger entries a statement reads per query while it streams.
pub const STATEMENT_PAGE: i64 = 1000;
/// The statement's header row (a CSV line, with its line end).
pub const STATEMENT_HEADER: &str = "entry_id,created_at,kind,amount,balance_after,allocation_id,card_id,memo,actor\r\n";

/// One field of a CSV line: quoted when it holds a comma, a quote or a line break (quotes
/// doubled), and a text that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab)
/// is prefixed with `'`.
pub fn csv_field(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() };
    if guarded.contains([',', '"', '\n', '\r']) { format!("\"{}\"", guarded.replace('"', "\"\"")) } else { guarded }
}

/// One statement row as read.
#[derive(Debug, sqlx::FromRow)]
struct StatementRow {
    id: i64,
    created_at: OffsetDateTime,
    kind: String,
    signed_minor: i64,
    allocation_id: Option<Uuid>,
    card_id: Option<i64>,
    memo: Option<String>,
    actor: Option<String>,
}

/// The period of a statement: entries created at or after `from` and before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// At or after; `None`: from the account's first entry.
    pub from: Option<OffsetDateTime>,
    /// Before; `None`: now.
    pub to: Option<OffsetDateTime>,
}

/// A statement ready to stream: its file name and its CSV lines.
pub struct Statement {
    /// `statement-<client>-<currency>.csv`.
    pub file_name: String,
    /// The header row, then one row per entry, each line ending in CRLF. An error ends the
    /// stream early (the file is then cut short, and the transfer fails).
    pub lines: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, AppError>> + Send>>,
}

/// Streaming state: the snapshot's transaction, the last entry written, the running balance.
struct Cursor {
    tx: Transaction<'static, Postgres>,
    client: Uuid,
    currency: Currency,
    period: Period,
    after_id: i64,
    balance: i64,
    header: bool,
    done: bool,
}

/// The ledger entries of `client` in `currency` in `period`, oldest first (by entry id), as
/// CSV with a running balance that starts from the balance at `from` (the sum of the entries
/// before it). Streamed a page of [`STATEMENT_PAGE`] entries at a time from one repeatable-read
/// snapshot, so any length is one consistent statement. A missing account is `404` before
/// anything streams.
pub async fn statement(pool: &PgPool, client: Uuid, currency: Currency, period: Period) -> Result<Statement, AppError> {
    if let (Some(from), Some(to)) = (period.from, period.to)
        && from >= to
    {
        return Err(ApiError::validation("to", "must be after from").into());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    client_exists(&mut tx, client).await?;
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM funding_accounts WHERE client_id = $1 AND currency = $2")
            .bind(client)
            .bind(currency.code())
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(no_account(client, currency));
    }
    let opening: i64 = match period.from {
        None => 0,
        Some(from) => sqlx::query_scalar(
            "SELECT COALESCE(sum(CASE WHEN credit_account = 'client' THEN amount_minor ELSE -amount_minor END), 0)::bigint
               FROM ledger_entries WHERE client_id = $1 AND currency = $2 AND created_at < $3",
        )
        .bind(client)
        .bind(currency.code())
        .bind(from)
        .fetch_one(&mut *tx)
        .await?,
    };
    let cursor = Cursor { tx, client, currency, period, after_id: 0, balance: opening, header: true, done: false };
    let lines = futures::stream::try_unfold(cursor, next_lines);
    Ok(Statement { file_name: format!("statement-{client}-{currency}.csv"), lines: Box::pin(lines) })
}

/// The next chunk of a statement: the header, then a page of rows; `None` once all are out.
async fn next_lines(mut c: Cursor) -> Result<Option<(Bytes, Cursor)>, AppError> {
    if c.header {
        c.header = false;
        return Ok(Some((Bytes::from_static(STATEMENT_HEADER.as_bytes()), c)));
    }
    if c.done {
        return Ok(None);
    }
    let rows: Vec<StatementRow> = sqlx::query_as(
        "SELECT id, created_at, kind,
                CASE WHEN credit_account = 'client' THEN amount_minor ELSE -amount_minor END AS signed_minor,
                allocation_id, card_id, memo, actor
           FROM ledger_entries
          WHERE client_id = $1 AND currency = $2 AND id > $3
            AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5)
          ORDER BY id LIMIT $6",
    )
    .bind(c.client)
    .bind(c.currency.code())
    .bind(c.after_id)
    .bind(c.period.from)
    .bind(c.period.to)
    .bind(STATEMENT_PAGE)
    .fetch_all(&mut *c.tx)
    .await?;
    if rows.len() < STATEMENT_PAGE as usize {
        c.done = true;
    }
    if rows.is_empty() {
        // Ends the snapshot's read-only transaction (dropping it would roll back just the same).
        return Ok(None);
    }
    let mut out = String::with_capacity(rows.len() * 128);
    for r in &rows {
        c.balance = c.balance.checked_add(r.signed_minor).ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!("the running balance of client {} overflows", c.client))
        })?;
        debug_assert!(r.id > c.after_id, "entries come in id order");
        c.after_id = r.id;
        let at = r.created_at.to_offset(time::UtcOffset::UTC).format(&Rfc3339).map_err(anyhow::Error::from)?;
        let fields = [
            r.id.to_string(),
            at,
            r.kind.clone(),
            c.currency.format_minor(r.signed_minor),
            c.currency.format_minor(c.balance),
            r.allocation_id.map(|a| a.to_string()).unwrap_or_default(),
            r.card_id.map(|a| a.to_string()).unwrap_or_default(),
            csv_field(r.memo.as_deref().unwrap_or("")),
            csv_field(r.actor.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    Ok(Some((Bytes::from(out), c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formula_safe() {
        assert_eq!(csv_field("plain memo"), "plain memo");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("-1,5"), "\"'-1,5\"");
        assert_eq!(csv_field("@x"), "'@x");
    }
}
