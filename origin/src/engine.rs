//! The allocation engine: idempotent, all-or-nothing allocations with Postgres as the only
//! truth and the Valkey sorted set as a way to hand each request distinct card ids.
//!
//! Fast path (the cache hands over exactly the ids asked for): the request joins a batch
//! ([`crate::batch`]); one Valkey pipeline pops for every request waiting, and one statement
//! and one commit write every popped allocation waiting at that
//! moment, each still all-or-nothing and idempotent on its own. Without batching (or when a
//! batch fails as a whole) ONE autocommit statement per request inserts the allocation (which
//! carries the Idempotency-Key and the request's fingerprint), claims the ids with
//! `UPDATE … WHERE id = ANY($ids) AND status = 'active'` (each card records the allocation and
//! its position in it), and inserts the outbox event. A deferred constraint trigger requires
//! every allocation to have exactly `quantity` cards, so if any id was stale the statement rolls
//! back by itself.
//!
//! Slow path (cache cold, short, stale or down): one transaction that claims what the cache
//! gave, pops again for stale ids a bounded number of times, and takes the rest from Postgres
//! with `FOR UPDATE SKIP LOCKED`.
//!
//! A concurrent duplicate blocks on the live key's unique index until the first commits
//! and then replays it; a replay re-renders the stored allocation with the same renderer, so
//! it is byte for byte the first response. Popped ids that end up unallocated are put back on
//! every failure path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use allot_shared::{AllocatedCard, AllocationRequest, AllocationResponse, ApiError, Currency, ErrorCode};
use bytes::Bytes;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::Instrument;
use uuid::Uuid;

use crate::batch::{Batcher, Item, ItemOutcome};
use crate::cache::{CacheError, InventoryCache, Popped};
use crate::crypto::{CardSecret, KeyRing, card_aad};
use crate::db::Db;
use crate::error::AppError;
use crate::products::{Product, ProductDirectory};

/// How many times stale ids may send the engine back to the cache before it falls back.
const MAX_POP_ROUNDS: usize = 3;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The client the key belongs to.
    pub client_id: Uuid,
    /// The key's public id.
    pub key_id: String,
}

/// The result of an allocation request: a fresh response or a stored one.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Newly allocated; the `201` body.
    Created(Bytes),
    /// Replayed; the stored body, byte for byte.
    Replayed(Bytes),
}

/// How the cards of one allocation were found (for logs, traces and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PopStats {
    /// Ids from the cache that were claimed.
    pub hits: u32,
    /// Ids from the cache that were already gone in Postgres.
    pub stale: u32,
    /// Whether the cache was cold, empty or down, so Postgres was asked.
    pub fallback: bool,
    /// Cards claimed straight from Postgres.
    pub fallback_cards: u32,
    /// Whether Valkey failed.
    pub cache_error: bool,
}

/// The allocation engine.
#[derive(Clone)]
pub struct Engine {
    db: Db,
    cache: Option<InventoryCache>,
    keys: KeyRing,
    products: ProductDirectory,
    batcher: Option<Batcher>,
    last_cache_warning: Arc<AtomicU64>,
}

/// A card claimed for an allocation, still sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedCard {
    /// Card id.
    pub id: i64,
    /// Its place in the allocation (the order cards are listed in).
    pub position: i16,
    /// Sealed code (and PIN).
    pub code_ciphertext: Vec<u8>,
    /// Its nonce.
    pub code_nonce: Vec<u8>,
    /// The id of the key that sealed it.
    pub code_key_id: String,
    /// Expiry.
    pub expires_at: Option<OffsetDateTime>,
}

/// An allocation's fields, everything the renderer needs besides the cards.
struct AllocationHead<'a> {
    id: Uuid,
    product_id: &'a str,
    currency: Currency,
    denomination_minor: i64,
    quantity: u32,
    client_reference: Option<String>,
    created_at: OffsetDateTime,
}

/// The fast path: one statement, atomic on its own. `$9` holds exactly the ids wanted; if any
/// is stale the allocations_cards_complete trigger rolls everything back at commit. When the
/// key is already live nothing is written and no row comes back.
const FAST_ALLOCATION: &str = "
WITH a AS (
    INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, client_reference,
                             idempotency_key, request_fingerprint)
    VALUES ($4, $1, $5, $6, $7, $8, $2, $3)
    ON CONFLICT (client_id, idempotency_key) WHERE request_fingerprint IS NOT NULL DO NOTHING
    RETURNING created_at
), c AS (
    UPDATE inventories i
       SET status = 'allocated', allocation_id = $4, allocation_position = (u.ord - 1)::smallint,
           allocated_at = now(), updated_at = now()
      FROM unnest($9::bigint[]) WITH ORDINALITY AS u(id, ord)
     WHERE i.id = u.id AND i.status = 'active' AND i.product_id = $5 AND i.denomination_minor = $6
       AND EXISTS (SELECT 1 FROM a)
    RETURNING i.id, i.allocation_position, i.code_ciphertext, i.code_nonce, i.code_key_id, i.expires_at
), e AS (
    INSERT INTO outbox (topic, aggregate_id, payload, trace_context)
    SELECT 'allocation.created', $4::text, $10, $11 FROM a
)
SELECT a.created_at, c.id, c.allocation_position, c.code_ciphertext, c.code_nonce, c.code_key_id, c.expires_at
  FROM a CROSS JOIN c";

/// Claim the given ids (`$1`) that are still active; each takes the position `$5` + its index.
const CLAIM_BY_ID: &str = "
UPDATE inventories i
   SET status = 'allocated', allocation_id = $2, allocation_position = ($5 + u.ord - 1)::smallint,
       allocated_at = now(), updated_at = now()
  FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, ord)
 WHERE i.id = u.id AND i.status = 'active' AND i.product_id = $3 AND i.denomination_minor = $4
RETURNING i.id, i.allocation_position AS position, i.code_ciphertext, i.code_nonce, i.code_key_id, i.expires_at";

// A CTE with a locking clause runs exactly once. (As `WHERE id IN (subquery)` the planner may
// rescan the LIMIT … SKIP LOCKED subquery per outer row and find nothing under concurrency.)
const CLAIM_FROM_POSTGRES: &str = "
WITH picked AS (
    SELECT id FROM inventories
     WHERE product_id = $3 AND denomination_minor = $4 AND status = 'active'
     LIMIT $1
       FOR UPDATE SKIP LOCKED
), numbered AS (
    SELECT id, row_number() OVER () AS n FROM picked
)
UPDATE inventories i
   SET status = 'allocated', allocation_id = $2, allocation_position = ($5 + numbered.n - 1)::smallint,
       allocated_at = now(), updated_at = now()
  FROM numbered
 WHERE i.id = numbered.id
RETURNING i.id, i.allocation_position AS position, i.code_ciphertext, i.code_nonce, i.code_key_id, i.expires_at";

const BEGIN_ALLOCATION: &str = "
INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, client_reference,
                         idempotency_key, request_fingerprint)
VALUES ($4, $1, $5, $6, $7, $8, $2, $3)
ON CONFLICT (client_id, idempotency_key) WHERE request_fingerprint IS NOT NULL DO NOTHING
RETURNING created_at";

const ALLOCATION_EVENT: &str = "
INSERT INTO outbox (topic, aggregate_id, payload, trace_context)
VALUES ('allocation.created', $1::text, $2, $3)";

/// Format a timestamp the one way the API does (RFC 3339, UTC).
pub fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn is_constraint(e: &sqlx::Error, name: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint() == Some(name))
}

/// One request's validated inputs.
struct Attempt<'a> {
    caller: &'a Caller,
    key: &'a str,
    req: &'a AllocationRequest,
    product: &'a Product,
    denomination_minor: i64,
    fingerprint: [u8; 32],
    allocation_id: Uuid,
    trace_context: Option<String>,
}

impl Attempt<'_> {
    fn head(&self, created_at: OffsetDateTime) -> AllocationHead<'_> {
        AllocationHead {
            id: self.allocation_id,
            product_id: &self.product.id,
            currency: self.product.currency,
            denomination_minor: self.denomination_minor,
            quantity: self.req.quantity,
            client_reference: self.req.client_reference.clone(),
            created_at,
        }
    }

    /// This request's part of a batch (the batcher pops its ids and completes the event).
    fn batch_item(&self) -> Item {
        Item {
            client_id: self.caller.client_id,
            key: self.key.to_owned(),
            fingerprint: self.fingerprint.to_vec(),
            allocation_id: self.allocation_id,
            product_id: self.product.id.clone(),
            denomination_minor: self.denomination_minor,
            quantity: self.req.quantity as i32,
            client_reference: self.req.client_reference.clone(),
            event: self.event(&[]),
            trace_context: self.trace_context.clone(),
            span: tracing::Span::current(),
        }
    }

    /// The outbox event: ids only, never codes.
    fn event(&self, card_ids: &[i64]) -> serde_json::Value {
        serde_json::json!({
            "allocation_id": self.allocation_id,
            "client_id": self.caller.client_id,
            "product_id": self.product.id,
            "denomination": self.product.currency.format_minor(self.denomination_minor),
            "currency": self.product.currency,
            "quantity": self.req.quantity,
            "card_ids": card_ids,
        })
    }

    fn out_of_stock(&self, available: usize) -> AppError {
        let wanted = self.req.quantity;
        ApiError::new(
            ErrorCode::OutOfStock,
            format!("only {available} of the {wanted} cards asked for are available; nothing was allocated"),
        )
        .with_details(serde_json::json!({
            "product_id": self.product.id,
            "denomination": self.product.currency.format_minor(self.denomination_minor),
            "requested": wanted,
            "available": available,
        }))
        .into()
    }
}

/// How a fast-path write ended.
enum FastOutcome {
    /// Committed.
    Created(OffsetDateTime, Vec<ClaimedCard>),
    /// The key already existed; nothing was written.
    KeyExists,
    /// An id was stale; nothing was written.
    Stale,
}

/// Where the slow path starts: ids the cache already gave, and whether it has more.
struct Start {
    given: Vec<i64>,
    cache_exhausted: bool,
}

impl Engine {
    /// An engine over the given stores.
    pub fn new(db: Db, cache: Option<InventoryCache>, keys: KeyRing, products: ProductDirectory) -> Self {
        Self { db, cache, keys, products, batcher: None, last_cache_warning: Arc::new(AtomicU64::new(0)) }
    }

    /// Pop and write fast-path allocations in batches, with `workers` concurrent statements
    /// (only with a cache: without one every allocation takes the slow path).
    pub fn with_batching(mut self, workers: usize) -> Self {
        self.batcher = match &self.cache {
            Some(cache) if workers > 0 => Some(Batcher::start(self.db.primary.clone(), cache.clone(), workers)),
            _ => None,
        };
        self
    }

    /// The product directory.
    pub fn products(&self) -> &ProductDirectory {
        &self.products
    }

    /// The cache, when configured.
    pub fn cache(&self) -> Option<&InventoryCache> {
        self.cache.as_ref()
    }

    /// Allocate, or replay a stored allocation. Runs to completion in its own task, so a caller
    /// that goes away cannot leave popped ids stranded or a transaction half-done.
    pub async fn allocate(
        &self,
        caller: Caller,
        idempotency_key: String,
        request: AllocationRequest,
        trace_context: Option<String>,
    ) -> Result<Outcome, AppError> {
        let span = tracing::info_span!(
            "allocation.create",
            product_id = %request.product_id,
            denomination = %request.denomination,
            quantity = request.quantity,
            client_id = %caller.client_id,
            outcome = tracing::field::Empty,
            error_code = tracing::field::Empty,
        );
        let engine = self.clone();
        let started = std::time::Instant::now();
        let task = async move { engine.allocate_inner(&caller, &idempotency_key, &request, trace_context).await };
        let result = tokio::spawn(task.instrument(span.clone()))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("allocation task failed: {e}")))
            .and_then(|r| r);
        let (outcome, code) = match &result {
            Ok(Outcome::Created(_)) => ("created", "none"),
            Ok(Outcome::Replayed(_)) => ("replayed", "none"),
            Err(e) => ("rejected", e.to_api_error().code.as_str()),
        };
        span.record("outcome", outcome);
        if code != "none" {
            span.record("error_code", code);
        }
        metrics::counter!("allot_allocations_total", "outcome" => outcome, "code" => code).increment(1);
        metrics::histogram!("allot_allocation_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn allocate_inner(
        &self,
        caller: &Caller,
        key: &str,
        req: &AllocationRequest,
        trace_context: Option<String>,
    ) -> Result<Outcome, AppError> {
        let product = match self.products.get(&req.product_id).await? {
            Some(p) if p.active => p,
            _ => return Err(ApiError::validation("product_id", "no such product").into()),
        };
        let denomination_minor = req
            .denomination
            .to_minor(product.currency.exponent())
            .map_err(|e| ApiError::validation("denomination", e.to_string()))?;
        // Only a denomination the snapshot does not list needs a second look (an early reload).
        let product = if product.denominations.contains(&denomination_minor) {
            product
        } else {
            match self.products.get_offering(&product.id, Some(denomination_minor)).await? {
                Some(p) if p.active && p.denominations.contains(&denomination_minor) => p,
                _ => {
                    return Err(ApiError::validation(
                        "denomination",
                        format!(
                            "{} is not offered for this product",
                            product.currency.format_minor(denomination_minor)
                        ),
                    )
                    .into());
                }
            }
        };
        let attempt = Attempt {
            caller,
            key,
            req,
            product: &product,
            denomination_minor,
            fingerprint: req.fingerprint(),
            allocation_id: Uuid::now_v7(),
            // The outbox event carries this span's context, so the relay's span joins the trace.
            trace_context: crate::telemetry::current_traceparent().or(trace_context),
        };

        // Ids popped from the cache and not known to be gone from Postgres: on any failure
        // these go back, because nothing claimed them (or the claim was rolled back).
        let mut pending: Vec<i64> = Vec::new();
        let result = self.allocate_with(&attempt, &mut pending).await;
        if !pending.is_empty() {
            self.put_back(&product.id, denomination_minor, &pending).await;
        }
        result
    }

    async fn allocate_with(&self, a: &Attempt<'_>, pending: &mut Vec<i64>) -> Result<Outcome, AppError> {
        let wanted = a.req.quantity as usize;
        let start = match (&self.cache, &self.batcher) {
            (None, _) => Start { given: Vec::new(), cache_exhausted: true },
            // Pop and write together with whatever else is waiting.
            (Some(_), Some(batcher)) => match batcher.submit(a.batch_item()).await {
                ItemOutcome::Created(created_at, cards) => {
                    metrics::counter!("allot_cache_pops_total", "outcome" => "hit").increment(wanted as u64);
                    return Ok(Outcome::Created(self.render(&a.head(created_at), &cards)?));
                }
                ItemOutcome::KeyExists(ids) => {
                    pending.extend_from_slice(&ids);
                    return self.replay(a).await;
                }
                ItemOutcome::Stale(ids) => {
                    pending.extend_from_slice(&ids);
                    Start { given: ids, cache_exhausted: false }
                }
                ItemOutcome::BatchFailed(ids, why) => {
                    tracing::debug!(error = %why, "allocation batch failed; writing this allocation alone");
                    pending.extend_from_slice(&ids);
                    match self.write_alone(a, ids, pending).await {
                        Ok(done) => return done,
                        Err(start) => start,
                    }
                }
                ItemOutcome::NotPopped(popped) => self.short_start(popped, pending),
            },
            (Some(cache), None) => {
                let popped = cache.pop(&a.product.id, a.denomination_minor, wanted).await;
                match popped {
                    Ok(Popped::Ids(ids)) if ids.len() == wanted => {
                        pending.extend_from_slice(&ids);
                        match self.write_alone(a, ids, pending).await {
                            Ok(done) => return done,
                            Err(start) => start,
                        }
                    }
                    other => self.short_start(other, pending),
                }
            }
        };
        let span = tracing::info_span!("inventory.commit", path = "slow", cards = wanted);
        self.slow_path(a, start, pending).instrument(span).await
    }

    /// Where the slow path starts when the cache did not hand over exactly the ids wanted.
    fn short_start(&self, popped: Result<Popped, CacheError>, pending: &mut Vec<i64>) -> Start {
        match popped {
            Ok(Popped::Ids(ids)) => {
                pending.extend_from_slice(&ids);
                Start { given: ids, cache_exhausted: true }
            }
            Ok(Popped::Cold) => {
                metrics::counter!("allot_cache_pops_total", "outcome" => "miss").increment(1);
                Start { given: Vec::new(), cache_exhausted: true }
            }
            Err(e) => {
                metrics::counter!("allot_cache_pops_total", "outcome" => "miss").increment(1);
                self.warn_cache(&e);
                Start { given: Vec::new(), cache_exhausted: true }
            }
        }
    }

    /// Write exactly the ids the cache gave with one statement of this request's own: the
    /// finished outcome, or (some id was stale) where the slow path starts.
    async fn write_alone(
        &self,
        a: &Attempt<'_>,
        ids: Vec<i64>,
        pending: &mut Vec<i64>,
    ) -> Result<Result<Outcome, AppError>, Start> {
        let wanted = ids.len();
        let span = tracing::info_span!("inventory.commit", path = "fast", cards = wanted);
        match self.single_statement(a, &ids).instrument(span).await {
            Ok(FastOutcome::Created(created_at, cards)) => {
                // Committed: whatever happens next, these ids are spent.
                pending.clear();
                metrics::counter!("allot_cache_pops_total", "outcome" => "hit").increment(wanted as u64);
                Ok(self.render(&a.head(created_at), &cards).map(Outcome::Created))
            }
            // The key is live: nothing was written; the ids go back.
            Ok(FastOutcome::KeyExists) => Ok(self.replay(a).await),
            // Some id was stale; nothing was written. Sort it out in a transaction.
            Ok(FastOutcome::Stale) => Err(Start { given: ids, cache_exhausted: false }),
            Err(e) => Ok(Err(e.into())),
        }
    }

    /// A query over the eight parameters both paths start with (`$1`…`$8`): the key row and the
    /// allocation row.
    fn allocation_query<'q, O>(sql: &'static str, a: &'q Attempt<'q>) -> QueryAs<'q, Postgres, O, PgArguments>
    where
        O: for<'r> sqlx::FromRow<'r, PgRow>,
    {
        sqlx::query_as(sql)
            .bind(a.caller.client_id)
            .bind(a.key)
            .bind(&a.fingerprint[..])
            .bind(a.allocation_id)
            .bind(&a.product.id)
            .bind(a.denomination_minor)
            .bind(a.req.quantity as i32)
            .bind(&a.req.client_reference)
    }

    /// One statement: the commit time and the claimed cards in the order the cache gave them.
    async fn single_statement(&self, a: &Attempt<'_>, ids: &[i64]) -> Result<FastOutcome, sqlx::Error> {
        type Row = (OffsetDateTime, i64, i16, Vec<u8>, Vec<u8>, String, Option<OffsetDateTime>);
        let result: Result<Vec<Row>, sqlx::Error> = Self::allocation_query(FAST_ALLOCATION, a)
            .bind(ids)
            .bind(a.event(ids))
            .bind(&a.trace_context)
            .fetch_all(&self.db.primary)
            .await;
        let rows = match result {
            Ok(rows) => rows,
            Err(e) if is_constraint(&e, "allocations_cards_complete") => return Ok(FastOutcome::Stale),
            Err(e) => return Err(e),
        };
        let Some(created_at) = rows.first().map(|r| r.0) else { return Ok(FastOutcome::KeyExists) };
        let mut cards: Vec<ClaimedCard> = rows
            .into_iter()
            .map(|(_, id, position, code_ciphertext, code_nonce, code_key_id, expires_at)| ClaimedCard {
                id,
                position,
                code_ciphertext,
                code_nonce,
                code_key_id,
                expires_at,
            })
            .collect();
        cards.sort_by_key(|c| c.position);
        Ok(FastOutcome::Created(created_at, cards))
    }

    async fn slow_path(&self, a: &Attempt<'_>, start: Start, pending: &mut Vec<i64>) -> Result<Outcome, AppError> {
        let mut tx = self.db.primary.begin().await?;
        let created_at: Option<(OffsetDateTime,)> =
            Self::allocation_query(BEGIN_ALLOCATION, a).fetch_optional(&mut *tx).await?;
        let Some((created_at,)) = created_at else {
            tx.rollback().await?;
            return self.replay(a).await;
        };
        let wanted = a.req.quantity as usize;
        let (claimed, stats) = self.claim(&mut tx, a, start, pending).await?;
        tracing::debug!(
            product_id = %a.product.id, denomination_minor = a.denomination_minor, quantity = wanted,
            hits = stats.hits, stale = stats.stale, fallback_cards = stats.fallback_cards, "cards claimed"
        );
        metrics::counter!("allot_cache_pops_total", "outcome" => "hit").increment(u64::from(stats.hits));
        metrics::counter!("allot_cache_pops_total", "outcome" => "stale").increment(u64::from(stats.stale));
        metrics::counter!("allot_cache_pops_total", "outcome" => "fallback").increment(u64::from(stats.fallback_cards));
        if claimed.len() < wanted {
            tx.rollback().await?;
            return Err(a.out_of_stock(claimed.len()));
        }
        let card_ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        sqlx::query(ALLOCATION_EVENT)
            .bind(a.allocation_id)
            .bind(a.event(&card_ids))
            .bind(&a.trace_context)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        pending.clear();
        Ok(Outcome::Created(self.render(&a.head(created_at), &claimed)?))
    }

    /// Claim cards inside `tx`: the ids given, more from the cache for stale ones (bounded),
    /// then the rest from Postgres.
    async fn claim(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        a: &Attempt<'_>,
        start: Start,
        pending: &mut Vec<i64>,
    ) -> Result<(Vec<ClaimedCard>, PopStats), AppError> {
        let wanted = a.req.quantity as usize;
        let mut claimed: Vec<ClaimedCard> = Vec::with_capacity(wanted);
        let mut stats = PopStats::default();
        let mut batch = start.given;
        let mut exhausted = start.cache_exhausted;
        // Every id tried gets its own position, so positions stay unique with stale ids skipped.
        let mut tried: i32 = 0;
        for round in 0..=MAX_POP_ROUNDS {
            if !batch.is_empty() {
                let rows = Self::claim_query(CLAIM_BY_ID, &batch, a, tried).fetch_all(&mut **tx).await?;
                tried += batch.len() as i32;
                // Stale ids (allocated or voided meanwhile) are simply dropped from the cache.
                let live: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
                pending.retain(|id| !batch.contains(id) || live.contains(id));
                stats.hits += rows.len() as u32;
                stats.stale += (batch.len() - rows.len()) as u32;
                claimed.extend(rows);
            }
            let need = wanted - claimed.len();
            if need == 0 || exhausted || round == MAX_POP_ROUNDS {
                break;
            }
            let Some(cache) = &self.cache else { break };
            batch = match cache.pop(&a.product.id, a.denomination_minor, need).await {
                Ok(Popped::Ids(ids)) => {
                    exhausted = ids.len() < need;
                    pending.extend_from_slice(&ids);
                    ids
                }
                Ok(Popped::Cold) => break,
                Err(e) => {
                    stats.cache_error = true;
                    self.warn_cache(&e);
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
        }
        if claimed.len() < wanted {
            stats.fallback = true;
            let need = (wanted - claimed.len()) as i64;
            let rows = Self::claim_query(CLAIM_FROM_POSTGRES, need, a, tried).fetch_all(&mut **tx).await?;
            stats.fallback_cards = rows.len() as u32;
            claimed.extend(rows);
        }
        claimed.sort_by_key(|c| c.position);
        Ok((claimed, stats))
    }

    /// A claim statement: `$1` (the ids, or how many), then the allocation, the bucket, and the
    /// position the first claimed card takes.
    fn claim_query<'q, T>(
        sql: &'static str,
        first: T,
        a: &'q Attempt<'q>,
        tried: i32,
    ) -> QueryAs<'q, Postgres, ClaimedCard, PgArguments>
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    {
        sqlx::query_as(sql).bind(first).bind(a.allocation_id).bind(&a.product.id).bind(a.denomination_minor).bind(tried)
    }

    /// The key exists: same request → the stored allocation, re-rendered; else a mismatch.
    async fn replay(&self, a: &Attempt<'_>) -> Result<Outcome, AppError> {
        self.replay_inner(a).instrument(tracing::info_span!("allocation.replay")).await
    }

    async fn replay_inner(&self, a: &Attempt<'_>) -> Result<Outcome, AppError> {
        let row: Option<(Vec<u8>, Uuid)> = sqlx::query_as(
            "SELECT request_fingerprint, id FROM allocations
              WHERE client_id = $1 AND idempotency_key = $2 AND request_fingerprint IS NOT NULL",
        )
        .bind(a.caller.client_id)
        .bind(a.key)
        .fetch_optional(&self.db.primary)
        .await?;
        let Some((fingerprint, allocation_id)) = row else {
            return Err(AppError::api(
                ErrorCode::IdempotencyInProgress,
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ));
        };
        if fingerprint != a.fingerprint {
            return Err(AppError::api(
                ErrorCode::IdempotencyMismatch,
                "this Idempotency-Key was used with a different request body",
            ));
        }
        match self.read_allocation(&self.db.primary, a.caller, allocation_id).await? {
            Some(body) => Ok(Outcome::Replayed(body)),
            None => {
                Err(AppError::Internal(anyhow::anyhow!("allocation {allocation_id} vanished while being replayed")))
            }
        }
    }

    /// The one way an allocation becomes a response body (so replays are byte for byte).
    fn render(&self, head: &AllocationHead<'_>, claimed: &[ClaimedCard]) -> Result<Bytes, AppError> {
        let aad = card_aad(head.product_id, head.denomination_minor);
        let mut cards = Vec::with_capacity(claimed.len());
        for c in claimed {
            let plain = self
                .keys
                .open(&c.code_ciphertext, &c.code_nonce, &c.code_key_id, &aad)
                .map_err(|e| AppError::Internal(anyhow::anyhow!("card {}: {e}", c.id)))?;
            let secret: CardSecret = serde_json::from_slice(&plain)
                .map_err(|e| AppError::Internal(anyhow::anyhow!("card {} payload: {e}", c.id)))?;
            cards.push(AllocatedCard {
                card_id: c.id,
                code: secret.code,
                pin: secret.pin,
                expires_at: c.expires_at.map(format_time),
            });
        }
        let response = AllocationResponse {
            allocation_id: head.id.to_string(),
            product_id: head.product_id.to_owned(),
            denomination: head.currency.format_minor(head.denomination_minor),
            currency: head.currency,
            quantity: head.quantity,
            client_reference: head.client_reference.clone(),
            cards,
            created_at: format_time(head.created_at),
        };
        Ok(Bytes::from(serde_json::to_vec(&response).map_err(|e| AppError::Internal(e.into()))?))
    }

    /// Best effort: return ids to the cache; the reconciler heals whatever this misses.
    async fn put_back(&self, product_id: &str, denomination_minor: i64, ids: &[i64]) {
        if let Some(cache) = &self.cache
            && let Err(e) = cache.put_back(product_id, denomination_minor, ids).await
        {
            tracing::warn!(product_id, denomination_minor, count = ids.len(), error = %e,
                "could not put popped ids back; the reconciler will restore them");
        }
    }

    fn warn_cache(&self, e: &crate::cache::CacheError) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let last = self.last_cache_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self.last_cache_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(error = %e, "inventory cache unavailable; allocating from Postgres");
        }
    }

    /// An allocation as its owner sees it; `None` when it does not exist or is not theirs.
    pub async fn get_allocation(&self, caller: &Caller, id: Uuid) -> Result<Option<Bytes>, AppError> {
        // The replica may lag behind a just-made allocation: fall back to the primary.
        if let Some(body) = self.read_allocation(&self.db.replica, caller, id).await? {
            return Ok(Some(body));
        }
        if self.db.has_replica {
            return self.read_allocation(&self.db.primary, caller, id).await;
        }
        Ok(None)
    }

    async fn read_allocation(&self, pool: &sqlx::PgPool, caller: &Caller, id: Uuid) -> Result<Option<Bytes>, AppError> {
        type Head = (String, i64, i32, Option<String>, OffsetDateTime, String);
        let head: Option<Head> = sqlx::query_as(
            "SELECT a.product_id, a.denomination_minor, a.quantity, a.client_reference, a.created_at, p.currency
               FROM allocations a JOIN products p ON p.id = a.product_id
              WHERE a.id = $1 AND a.client_id = $2",
        )
        .bind(id)
        .bind(caller.client_id)
        .fetch_optional(pool)
        .await?;
        let Some((product_id, denomination_minor, quantity, client_reference, created_at, currency)) = head else {
            return Ok(None);
        };
        let currency = Currency::parse(&currency).map_err(|e| AppError::Internal(e.into()))?;
        let cards: Vec<ClaimedCard> = sqlx::query_as(
            "SELECT id, allocation_position AS position, code_ciphertext, code_nonce, code_key_id, expires_at
               FROM inventories WHERE allocation_id = $1 ORDER BY allocation_position",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        let head = AllocationHead {
            id,
            product_id: &product_id,
            currency,
            denomination_minor,
            quantity: quantity as u32,
            client_reference,
            created_at,
        };
        Ok(Some(self.render(&head, &cards)?))
    }
}
