//! The write stage: every popped request waiting is written by one statement
//! ([`sql::WRITE_POPPED`]) and one commit; a lone request is a batch of one.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use time::OffsetDateTime;
use uuid::Uuid;

use super::render::ClaimedCard;
use super::request::NewAllocation;
use super::sql;
use crate::coalescer::{BatchHandler, Coalescer};
use crate::funding::Shortfall;

/// One request's write: its allocation and exactly the ids popped for it.
pub struct WriteAsk {
    /// The allocation to make.
    pub allocation: Arc<NewAllocation>,
    /// The popped ids, in the order the cards are listed.
    pub ids: Vec<i64>,
    /// The request's span (the commit span is its child).
    pub span: tracing::Span,
}

/// How one request's write ended. Nothing is written for a request unless `Created`.
#[derive(Debug)]
pub enum Written {
    /// Committed: the commit time and the cards in their positions.
    Created(OffsetDateTime, Vec<ClaimedCard>),
    /// The key was already live.
    KeyExists,
    /// Some id was no longer active.
    Stale,
    /// The client's funds do not cover the price (nothing written; the key may still be live).
    Unfunded(Shortfall),
}

/// The batch statement failed as a whole (the same error for every request in it).
pub type BatchFailed = String;

/// The coalesced write stage.
pub type Writer = Coalescer<WriteAsk, Result<Written, BatchFailed>>;

/// One row of [`sql::WRITE_POPPED`]: the request, whether it was complete, its commit time, one
/// claimed card, and what was available and required when its funds fell short.
type Row = (
    Uuid,
    bool,
    Option<OffsetDateTime>,
    Option<i64>,
    Option<i16>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
    Option<OffsetDateTime>,
    Option<i64>,
    Option<i64>,
);

/// Write `asks` in one statement on `conn`; one outcome per ask, in order.
pub async fn write_popped(conn: &mut PgConnection, asks: &[WriteAsk]) -> Result<Vec<Written>, sqlx::Error> {
    let (mut want_alloc, mut want_card, mut want_pos) = (Vec::new(), Vec::new(), Vec::new());
    for ask in asks {
        debug_assert_eq!(ask.ids.len(), ask.allocation.quantity as usize, "the fast write has every card");
        for (pos, id) in ask.ids.iter().enumerate() {
            want_alloc.push(ask.allocation.id);
            want_card.push(*id);
            want_pos.push(pos as i32);
        }
    }
    let all: Vec<&NewAllocation> = asks.iter().map(|a| a.allocation.as_ref()).collect();
    let rows: Vec<Row> = sqlx::query_as(sql::WRITE_POPPED)
        .bind(all.iter().map(|a| a.client_id).collect::<Vec<_>>())
        .bind(all.iter().map(|a| a.key.as_str()).collect::<Vec<_>>())
        .bind(all.iter().map(|a| &a.fingerprint[..]).collect::<Vec<_>>())
        .bind(all.iter().map(|a| a.id).collect::<Vec<_>>())
        .bind(all.iter().map(|a| a.product_id.as_str()).collect::<Vec<_>>())
        .bind(all.iter().map(|a| a.denomination_minor).collect::<Vec<_>>())
        .bind(all.iter().map(|a| a.quantity as i32).collect::<Vec<_>>())
        .bind(all.iter().map(|a| a.client_reference.as_deref()).collect::<Vec<_>>())
        .bind(asks.iter().map(|a| a.allocation.event(&a.ids)).collect::<Vec<_>>())
        .bind(all.iter().map(|a| a.trace_context.as_deref()).collect::<Vec<_>>())
        .bind(all.iter().map(|a| a.currency.code()).collect::<Vec<_>>())
        .bind(&want_alloc)
        .bind(&want_card)
        .bind(&want_pos)
        .fetch_all(&mut *conn)
        .await?;
    let mut by_allocation: HashMap<Uuid, Vec<Row>> = HashMap::with_capacity(asks.len());
    for row in rows {
        by_allocation.entry(row.0).or_default().push(row);
    }
    Ok(asks.iter().map(|ask| outcome(by_allocation.remove(&ask.allocation.id).unwrap_or_default())).collect())
}

fn outcome(rows: Vec<Row>) -> Written {
    let complete = rows.first().is_some_and(|r| r.1);
    let shortfall = rows.first().and_then(|r| Some(Shortfall { available_minor: r.9?, required_minor: r.10? }));
    match (complete, rows.first().and_then(|r| r.2)) {
        (false, _) => Written::Stale,
        (true, None) => shortfall.map_or(Written::KeyExists, Written::Unfunded),
        (true, Some(created_at)) => {
            let mut cards: Vec<ClaimedCard> = rows
                .into_iter()
                .filter_map(|r| {
                    Some(ClaimedCard {
                        id: r.3?,
                        position: r.4?,
                        code_ciphertext: r.5?,
                        code_nonce: r.6?,
                        code_key_id: r.7?,
                        expires_at: r.8,
                        voided_at: None,
                    })
                })
                .collect();
            cards.sort_by_key(|c| c.position);
            Written::Created(created_at, cards)
        }
    }
}

/// Writes batches on one connection it keeps (one warm backend); a connection whose statement
/// failed is dropped, so the pool replaces it.
pub struct WriteStage {
    pool: PgPool,
    conn: Option<PoolConnection<Postgres>>,
}

impl WriteStage {
    /// A stage writing through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, conn: None }
    }
}

impl BatchHandler<WriteAsk, Result<Written, BatchFailed>> for WriteStage {
    async fn handle(&mut self, batch: Vec<WriteAsk>) -> Vec<Result<Written, BatchFailed>> {
        let spans: Vec<tracing::Span> = batch
            .iter()
            .map(|ask| {
                tracing::info_span!(parent: &ask.span, "inventory.commit", path = "fast", cards = ask.ids.len(),
                    batch = batch.len())
            })
            .collect();
        metrics::histogram!("allot_allocation_batch_size").record(batch.len() as f64);
        let conn = match self.conn.take() {
            Some(c) => Ok(c),
            None => self.pool.acquire().await,
        };
        let result = match conn {
            Err(e) => Err(e),
            Ok(mut c) => {
                let written = write_popped(&mut c, &batch).await;
                if written.is_ok() {
                    self.conn = Some(c);
                }
                written
            }
        };
        drop(spans);
        match result {
            Ok(written) => written.into_iter().map(Ok).collect(),
            Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
        }
    }
}
