//! Events read back from Postgres, in the relay's order: how a consumer catches up after missing
//! part of the stream (`GET /ops/v1/events`, `allot events`).
//!
//! Only events the relay has placed are listed, by place (`seq`), the stream's order. Places are
//! given in commit order and never change, and pruning only removes the start of the order, so a
//! consumer that pages with `after` = the last id it processed never misses an event.

use std::time::Duration;

use allot_shared::ApiError;
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::error::AppError;

/// Events per page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most events one page holds.
pub const MAX_LIMIT: u32 = 1_000;

/// One event as the outbox keeps it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    /// Outbox id: the idempotency field (`outbox_id` in the stream), and what `after` takes.
    pub id: i64,
    /// Its place in the order; its stream entry id is `<seq>-0`.
    pub seq: i64,
    /// `allocation.created`, `card.voided`, `stock.low`, `stock.out` or `stock.restored`.
    pub topic: String,
    /// The allocation, card or bucket the event is about.
    pub aggregate_id: String,
    /// The event's body: ids and counts, never a card code.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// When the transaction that wrote it began.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When its batch was first appended to the stream; null while it waits for the stream.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub published_at: Option<OffsetDateTime>,
}

/// A page of events.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsPage {
    /// Events in order.
    pub items: Vec<EventRecord>,
    /// What to pass as `after` next: the last item's id, or the `after` given when there is no
    /// item (null when neither).
    #[schema(required = true)]
    pub next_after: Option<i64>,
    /// Whether more events are there already (otherwise: caught up, for now).
    pub has_more: bool,
}

/// The first `limit` events after event `after` (from the start when `None` or 0).
pub async fn list(
    pool: &PgPool,
    after: Option<i64>,
    limit: Option<u32>,
    retention: Duration,
) -> Result<EventsPage, AppError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_limit().into());
    }
    let after = after.filter(|a| *a != 0);
    if after.is_some_and(|a| a < 0) {
        return Err(bad_after().into());
    }
    // One snapshot: the place of `after` and the page after it agree even while pruning runs.
    let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let from = match after {
        None => 0,
        Some(id) => start_after(&mut tx, id, retention).await?,
    };
    let mut items: Vec<EventRecord> = sqlx::query_as(
        "SELECT o.id, o.seq, o.topic, o.aggregate_id, o.payload, o.created_at,
                CASE WHEN o.seq <= s.published_seq THEN
                     (SELECT p.at FROM outbox_publications p
                       WHERE p.through_seq >= o.seq ORDER BY p.through_seq LIMIT 1)
                END AS published_at
           FROM outbox o CROSS JOIN outbox_sequence s
          WHERE o.seq > $1
          ORDER BY o.seq LIMIT $2",
    )
    .bind(from)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    debug_assert!(items.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
    let next_after = items.last().map(|e| e.id).or(after);
    Ok(EventsPage { items, next_after, has_more })
}

/// The place of event `id`, or why a page cannot start after it.
async fn start_after(tx: &mut sqlx::PgConnection, id: i64, retention: Duration) -> Result<i64, AppError> {
    let row: Option<Option<i64>> =
        sqlx::query_scalar("SELECT seq FROM outbox WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
    match row {
        Some(Some(seq)) => Ok(seq),
        Some(None) => Err(not_placed(id).into()),
        None => {
            let oldest: Option<i64> =
                sqlx::query_scalar("SELECT id FROM outbox WHERE seq IS NOT NULL ORDER BY seq LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            Err(not_kept(id, oldest, retention).into())
        }
    }
}

/// `400`: the page size is out of range.
pub fn bad_limit() -> ApiError {
    ApiError::validation("limit", format!("must be 1 to {MAX_LIMIT}"))
}

/// `400`: `after` is negative.
pub fn bad_after() -> ApiError {
    ApiError::validation("after", "must be an event id (0 or more)")
}

/// `400`: event `id` exists but the relay has not placed it (an id no reader was given).
pub fn not_placed(id: i64) -> ApiError {
    ApiError::validation(
        "after",
        format!("event {id} has no place in the order yet; page with ids this API or the stream gave"),
    )
}

/// `400`: event `id` is not kept (pruned after the retention, or never written); `oldest` is the
/// first event kept, if any.
pub fn not_kept(id: i64, oldest: Option<i64>, retention: Duration) -> ApiError {
    let days = retention.as_secs() / 86_400;
    let kept = match oldest {
        Some(o) => format!("the oldest event kept is {o}"),
        None => "no event is kept now".to_owned(),
    };
    ApiError::validation(
        "after",
        format!(
            "event {id} is no longer kept (published events are kept {days} days) or never existed; {kept}: \
             leave `after` out to read from the oldest"
        ),
    )
}
