//! Batched fast-path allocations: concurrent requests whose ids the cache handed over are
//! written by one statement and one commit, instead of one each.
//!
//! Batches form only under load: a worker takes the first waiting request and whatever else is
//! already queued (no waiting to fill a batch). Inside the statement each request stays
//! all-or-nothing and idempotent on its own: the wanted cards are locked, only requests whose
//! every card is still active go ahead, each allocation (with its key) is inserted with
//! `ON CONFLICT DO NOTHING` on the live key, and only the cards of the allocations actually inserted are claimed. Each request learns its own
//! outcome. If the statement fails as a whole (a deadlock between batches, say), every request
//! in it is told so and takes the single-request path: no caller fails for another's sake.

use std::sync::Arc;

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::engine::ClaimedCard;

/// Largest number of requests in one statement.
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
    /// Cards asked for (= `card_ids.len()`).
    pub quantity: i32,
    /// The caller's reference.
    pub client_reference: Option<String>,
    /// The outbox event's payload.
    pub event: serde_json::Value,
    /// The trace context for the outbox.
    pub trace_context: Option<String>,
    /// The ids the cache handed over, in order.
    pub card_ids: Vec<i64>,
}

/// How one request in a batch ended.
#[derive(Debug)]
pub enum ItemOutcome {
    /// Committed: the commit time and the cards in the order the cache gave them.
    Created(OffsetDateTime, Vec<ClaimedCard>),
    /// The key already existed; nothing was written for this request.
    KeyExists,
    /// Some id was no longer active; nothing was written for this request.
    Stale,
    /// The batch failed as a whole; nothing was written; take the single-request path.
    BatchFailed(String),
}

type Job = (Item, oneshot::Sender<ItemOutcome>);

/// Runs batch statements on a few workers.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Start `workers` batch workers on `pool`.
    pub fn start(pool: PgPool, workers: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            let (pool, rx) = (pool.clone(), rx.clone());
            tokio::spawn(async move {
                loop {
                    let mut jobs = Vec::new();
                    {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(j) => jobs.push(j),
                            None => return,
                        }
                        while jobs.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(j) => jobs.push(j),
                                Err(_) => break,
                            }
                        }
                    }
                    run(&pool, jobs).await;
                }
            });
        }
        Self { tx }
    }

    /// Submit one request and wait for its outcome.
    pub async fn submit(&self, item: Item) -> ItemOutcome {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((item, tx)).is_err() {
            return ItemOutcome::BatchFailed("the batcher has stopped".into());
        }
        rx.await.unwrap_or_else(|_| ItemOutcome::BatchFailed("the batch worker went away".into()))
    }
}

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

async fn run(pool: &PgPool, jobs: Vec<Job>) {
    let items: Vec<&Item> = jobs.iter().map(|(i, _)| i).collect();
    let mut want_alloc = Vec::new();
    let mut want_card = Vec::new();
    let mut want_pos = Vec::new();
    for it in &items {
        for (pos, id) in it.card_ids.iter().enumerate() {
            want_alloc.push(it.allocation_id);
            want_card.push(*id);
            want_pos.push(pos as i32);
        }
    }
    let result: Result<Vec<Row>, sqlx::Error> = sqlx::query_as(BATCH_ALLOCATION)
        .bind(items.iter().map(|i| i.client_id).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.key.clone()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.fingerprint.clone()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.allocation_id).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.product_id.clone()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.denomination_minor).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.quantity).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.client_reference.clone()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.event.clone()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.trace_context.clone()).collect::<Vec<_>>())
        .bind(&want_alloc)
        .bind(&want_card)
        .bind(&want_pos)
        .fetch_all(pool)
        .await;
    metrics::histogram!("allot_allocation_batch_size").record(jobs.len() as f64);
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            let msg = e.to_string();
            for (_, reply) in jobs {
                let _ = reply.send(ItemOutcome::BatchFailed(msg.clone()));
            }
            return;
        }
    };
    let mut by_allocation: std::collections::HashMap<Uuid, Vec<&Row>> = std::collections::HashMap::new();
    for r in &rows {
        by_allocation.entry(r.0).or_default().push(r);
    }
    for (item, reply) in jobs {
        let mine = by_allocation.remove(&item.allocation_id).unwrap_or_default();
        let complete = mine.first().is_some_and(|r| r.1);
        let created_at = mine.first().and_then(|r| r.2);
        let outcome = match (complete, created_at) {
            (false, _) => ItemOutcome::Stale,
            (true, None) => ItemOutcome::KeyExists,
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
