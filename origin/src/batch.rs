//! Batched fast-path allocations: concurrent requests share one Valkey round trip for their
//! pops and one Postgres statement and commit for their writes, instead of one each.
//!
//! Two stages, each taking whatever is queued when it becomes free (no waiting to fill a
//! batch), so batches form only under load:
//! - the popper pops ids for every waiting request in one pipeline (each pop atomic on its
//!   own). A request the cache cannot serve exactly (cold, short, Valkey down) is handed back
//!   at once with what was popped, for the engine's slow path;
//! - the writer writes every popped request in one statement. Inside it each request stays
//!   all-or-nothing and idempotent on its own: the wanted cards are locked, only requests whose
//!   every card is still active go ahead, each allocation (with its key) is inserted with
//!   `ON CONFLICT DO NOTHING` on the live key, and only the cards of the allocations actually
//!   inserted are claimed. If the statement fails as a whole (a deadlock between batches, say),
//!   every request in it is told so, with its ids, and is written alone: no caller fails for
//!   another's sake.
//!
//! The popper runs while the writer's statement does, so a request's pop overlaps the write
//! of the batch before it. Every outcome carries the ids popped for it, so the engine can put
//! back whatever ends up unallocated.

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgPool, Postgres};
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::cache::{CacheError, InventoryCache, Popped};
use crate::engine::ClaimedCard;

/// Largest number of requests in one pipeline or statement.
const MAX_BATCH: usize = 64;

const BATCH_ALLOCATION: &str = "
WITH req AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[], $5::text[], $6::bigint[], $7::int[],
                         $8::text[], $9::jsonb[], $10::text[])
        AS r(client_id, key, fingerprint, allocation_id, product_id, denomination_minor, quantity,
             client_reference, event, trace_context)
), want AS (
    SELECT * FROM unnest($11::uuid[], $12::bigint[], $13::int[]) AS w(allocation_id, card_id, position)
), live AS (
    SELECT w.allocation_id, i.id
      FROM want w
      JOIN req r ON r.allocation_id = w.allocation_id
      JOIN inventories i ON i.id = w.card_id
     WHERE i.status = 'active' AND i.product_id = r.product_id AND i.denomination_minor = r.denomination_minor
       FOR UPDATE OF i
), complete AS (
    SELECT r.* FROM req r
     WHERE r.quantity = (SELECT count(*) FROM live l WHERE l.allocation_id = r.allocation_id)
), a AS (
    INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, client_reference,
                             idempotency_key, request_fingerprint)
    SELECT allocation_id, client_id, product_id, denomination_minor, quantity, client_reference, key, fingerprint
      FROM complete
    ON CONFLICT (client_id, idempotency_key) WHERE request_fingerprint IS NOT NULL DO NOTHING
    RETURNING id, created_at
), claimed AS (
    UPDATE inventories i
       SET status = 'allocated', allocation_id = w.allocation_id, allocation_position = w.position::smallint,
           allocated_at = now(), updated_at = now()
      FROM want w JOIN a ON a.id = w.allocation_id
     WHERE i.id = w.card_id
    RETURNING i.id, i.allocation_id, i.allocation_position, i.code_ciphertext, i.code_nonce, i.code_key_id,
              i.expires_at
), events AS (
    INSERT INTO outbox (topic, aggregate_id, payload, trace_context)
    SELECT 'allocation.created', c.allocation_id::text, c.event, c.trace_context
      FROM complete c JOIN a ON a.id = c.allocation_id
)
SELECT r.allocation_id,
       EXISTS (SELECT 1 FROM complete c WHERE c.allocation_id = r.allocation_id) AS complete,
       a.created_at, cl.id, cl.allocation_position, cl.code_ciphertext, cl.code_nonce, cl.code_key_id, cl.expires_at
  FROM req r
  LEFT JOIN a ON a.id = r.allocation_id
  LEFT JOIN claimed cl ON cl.allocation_id = r.allocation_id";

/// One request's part of a batch.
pub struct Item {
    /// The caller.
    pub client_id: Uuid,
    /// The Idempotency-Key.
    pub key: String,
    /// The request's fingerprint.
    pub fingerprint: Vec<u8>,
    /// The new allocation's id.
    pub allocation_id: Uuid,
    /// Product.
    pub product_id: String,
    /// Denomination in minor units.
    pub denomination_minor: i64,
    /// Cards asked for.
    pub quantity: i32,
    /// The caller's reference.
    pub client_reference: Option<String>,
    /// The outbox event's payload; the batcher adds `card_ids`.
    pub event: serde_json::Value,
    /// The trace context for the outbox.
    pub trace_context: Option<String>,
    /// The request's span: the batch's pop and commit spans are its children.
    pub span: tracing::Span,
}

/// How one request in a batch ended. Every variant but `Created` and `NotPopped` carries the
/// ids popped for the request, none of them allocated.
#[derive(Debug)]
pub enum ItemOutcome {
    /// Committed: the commit time and the cards in the order the cache gave them.
    Created(OffsetDateTime, Vec<ClaimedCard>),
    /// The key was already live; nothing was written for this request.
    KeyExists(Vec<i64>),
    /// Some id was no longer active; nothing was written for this request.
    Stale(Vec<i64>),
    /// The statement failed as a whole; nothing was written; write this request alone.
    BatchFailed(Vec<i64>, String),
    /// The cache did not hand over exactly the ids wanted (cold, short, or down); what it did
    /// hand over is in `Popped::Ids`.
    NotPopped(Result<Popped, CacheError>),
}

type Reply = oneshot::Sender<ItemOutcome>;
type Job = (Item, Reply);
type PoppedJob = (Item, Vec<i64>, Reply);

/// The two stages: one popper, and `writers` statement writers.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

/// Take the first waiting entry (waiting for one) and whatever else is queued, up to a batch.
async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    Some(batch)
}

impl Batcher {
    /// Start the popper on `cache` and `writers` writers on `pool`.
    pub fn start(pool: PgPool, cache: InventoryCache, writers: usize) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (popped_tx, popped_rx) = mpsc::unbounded_channel::<PoppedJob>();
        tokio::spawn(async move {
            while let Some(jobs) = next_batch(&mut rx).await {
                pop(&cache, jobs, &popped_tx).await;
            }
        });
        let popped_rx = Arc::new(Mutex::new(popped_rx));
        for _ in 0..writers.max(1) {
            let (pool, popped_rx) = (pool.clone(), popped_rx.clone());
            tokio::spawn(async move {
                // A writer keeps one connection (one warm backend), and gives it back when the
                // pool closes so shutdown is not kept waiting.
                let mut conn: Option<PoolConnection<Postgres>> = None;
                loop {
                    let jobs = {
                        let mut rx = popped_rx.lock().await;
                        tokio::select! {
                            jobs = next_batch(&mut rx) => jobs,
                            _ = pool.close_event() => None,
                        }
                    };
                    let Some(jobs) = jobs else { return };
                    write(&pool, &mut conn, jobs).await;
                }
            });
        }
        Self { tx }
    }

    /// Submit one request and wait for its outcome.
    pub async fn submit(&self, item: Item) -> ItemOutcome {
        let stopped = || ItemOutcome::NotPopped(Err(CacheError::new("the batcher has stopped".into())));
        let (tx, rx) = oneshot::channel();
        if self.tx.send((item, tx)).is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }
}

/// Pop for every job in one round trip; pass on the ones served exactly, answer the rest.
async fn pop(cache: &InventoryCache, jobs: Vec<Job>, popped_tx: &mpsc::UnboundedSender<PoppedJob>) {
    let spans: Vec<tracing::Span> = jobs
        .iter()
        .map(|(item, _)| {
            tracing::info_span!(parent: &item.span, "inventory.pop", popped = tracing::field::Empty,
                cold = tracing::field::Empty, batch = jobs.len())
        })
        .collect();
    let asks: Vec<(&str, i64, usize)> =
        jobs.iter().map(|(i, _)| (i.product_id.as_str(), i.denomination_minor, i.quantity as usize)).collect();
    let answers: Vec<Result<Popped, CacheError>> = match cache.pop_many(&asks).await {
        Ok(popped) => popped.into_iter().map(Ok).collect(),
        Err(e) => jobs.iter().map(|_| Err(e.clone())).collect(),
    };
    for (((item, reply), answer), span) in jobs.into_iter().zip(answers).zip(spans) {
        span.record("cold", matches!(answer, Ok(Popped::Cold)));
        span.record("popped", if let Ok(Popped::Ids(ids)) = &answer { ids.len() } else { 0 });
        match answer {
            Ok(Popped::Ids(ids)) if ids.len() == item.quantity as usize => {
                if let Err(mpsc::error::SendError((_, ids, reply))) = popped_tx.send((item, ids, reply)) {
                    let _ = reply.send(ItemOutcome::BatchFailed(ids, "the batch writer has stopped".into()));
                }
            }
            other => {
                let _ = reply.send(ItemOutcome::NotPopped(other));
            }
        }
    }
}

/// One row of the batch statement: the request, whether it was complete, its commit time, and
/// one claimed card.
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
);

/// The batch statement over these requests and their wanted cards.
fn statement<'q>(
    items: &'q [&'q Item],
    want_alloc: &'q [Uuid],
    want_card: &'q [i64],
    want_pos: &'q [i32],
) -> QueryAs<'q, Postgres, Row, PgArguments> {
    sqlx::query_as(BATCH_ALLOCATION)
        .bind(items.iter().map(|i| i.client_id).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.fingerprint.as_slice()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.allocation_id).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.product_id.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.denomination_minor).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.quantity).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.client_reference.as_deref()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| &i.event).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.trace_context.as_deref()).collect::<Vec<_>>())
        .bind(want_alloc)
        .bind(want_card)
        .bind(want_pos)
}

/// Write every popped job in one statement and tell each how it ended.
async fn write(pool: &PgPool, conn: &mut Option<PoolConnection<Postgres>>, mut jobs: Vec<PoppedJob>) {
    let spans: Vec<tracing::Span> = jobs
        .iter()
        .map(|(item, ids, _)| {
            tracing::info_span!(parent: &item.span, "inventory.commit", path = "batch", cards = ids.len(),
                batch = jobs.len())
        })
        .collect();
    let mut want_alloc = Vec::new();
    let mut want_card = Vec::new();
    let mut want_pos = Vec::new();
    for (item, ids, _) in &mut jobs {
        for (pos, id) in ids.iter().enumerate() {
            want_alloc.push(item.allocation_id);
            want_card.push(*id);
            want_pos.push(pos as i32);
        }
        item.event["card_ids"] = serde_json::json!(ids);
    }
    let items: Vec<&Item> = jobs.iter().map(|(i, _, _)| i).collect();
    let connection = match conn.take() {
        Some(c) => Ok(c),
        None => pool.acquire().await,
    };
    let result: Result<Vec<Row>, sqlx::Error> = match connection {
        Err(e) => Err(e),
        Ok(mut c) => {
            let rows = statement(&items, &want_alloc, &want_card, &want_pos).fetch_all(&mut *c).await;
            // Keep the connection unless it failed (it may be broken); the pool replaces it.
            if rows.is_ok() {
                *conn = Some(c);
            }
            rows
        }
    };
    metrics::histogram!("allot_allocation_batch_size").record(jobs.len() as f64);
    drop(spans);
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            let msg = e.to_string();
            for (_, ids, reply) in jobs {
                let _ = reply.send(ItemOutcome::BatchFailed(ids, msg.clone()));
            }
            return;
        }
    };
    let mut by_allocation: std::collections::HashMap<Uuid, Vec<&Row>> = std::collections::HashMap::new();
    for r in &rows {
        by_allocation.entry(r.0).or_default().push(r);
    }
    for (item, ids, reply) in jobs {
        let mine = by_allocation.remove(&item.allocation_id).unwrap_or_default();
        let complete = mine.first().is_some_and(|r| r.1);
        let created_at = mine.first().and_then(|r| r.2);
        let outcome = match (complete, created_at) {
            (false, _) => ItemOutcome::Stale(ids),
            (true, None) => ItemOutcome::KeyExists(ids),
            (true, Some(created_at)) => {
                let mut cards: Vec<ClaimedCard> = mine
                    .iter()
                    .filter_map(|r| {
                        Some(ClaimedCard {
                            id: r.3?,
                            position: r.4?,
                            code_ciphertext: r.5.clone()?,
                            code_nonce: r.6.clone()?,
                            code_key_id: r.7.clone()?,
                            expires_at: r.8,
                        })
                    })
                    .collect();
                cards.sort_by_key(|c| c.position);
                ItemOutcome::Created(created_at, cards)
            }
        };
        let _ = reply.send(outcome);
    }
}
