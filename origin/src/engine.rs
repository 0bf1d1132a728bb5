//! The allocation engine: idempotent, all-or-nothing allocations with Postgres as the only
//! truth and the Valkey sorted set as a way to hand each request distinct card ids.
//!
//! One transaction per allocation:
//! 1. insert the idempotency row and the allocation row (a concurrent duplicate blocks on the
//!    key's unique index, then replays what the first committed);
//! 2. pop ids from the cache and claim them with a conditional `UPDATE … AND status='active'`;
//!    stale ids are skipped and more are popped, a bounded number of times;
//! 3. whatever is still missing comes from Postgres with `FOR UPDATE SKIP LOCKED`;
//! 4. insert the items, the outbox event and the (encrypted) stored response; commit.
//!
//! Popped ids that end up unallocated are put back on every failure path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use allot_shared::{AllocatedCard, AllocationRequest, AllocationResponse, ApiError, ErrorCode};
use bytes::Bytes;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::cache::{InventoryCache, Popped};
use crate::crypto::{CardSecret, KeyRing, card_aad, response_aad};
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
    last_cache_warning: Arc<AtomicU64>,
}

#[derive(sqlx::FromRow)]
struct ClaimedCard {
    id: i64,
    code_ciphertext: Vec<u8>,
    code_nonce: Vec<u8>,
    code_key_id: String,
    expires_at: Option<OffsetDateTime>,
}

const CLAIM_BY_ID: &str = "
UPDATE inventories
   SET status = 'allocated', allocation_id = $2, allocated_at = now(), updated_at = now()
 WHERE id = ANY($1) AND status = 'active' AND product_id = $3 AND denomination_minor = $4
RETURNING id, code_ciphertext, code_nonce, code_key_id, expires_at";

// A CTE with a locking clause runs exactly once. (As `WHERE id IN (subquery)` the planner may
// rescan the LIMIT … SKIP LOCKED subquery per outer row and find nothing under concurrency.)
const CLAIM_FROM_POSTGRES: &str = "
WITH picked AS (
    SELECT id FROM inventories
     WHERE product_id = $3 AND denomination_minor = $4 AND status = 'active'
     ORDER BY id
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE inventories i
   SET status = 'allocated', allocation_id = $2, allocated_at = now(), updated_at = now()
  FROM picked
 WHERE i.id = picked.id
RETURNING i.id, i.code_ciphertext, i.code_nonce, i.code_key_id, i.expires_at";

const BEGIN_ALLOCATION: &str = "
WITH k AS (
    INSERT INTO idempotency_keys (client_id, key, request_fingerprint)
    VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, client_reference, idempotency_key)
SELECT $4, $1, $5, $6, $7, $8, $2 FROM k
RETURNING created_at";

const FINISH_ALLOCATION: &str = "
WITH items AS (
    INSERT INTO allocation_items (allocation_id, position, card_id)
    SELECT $1, (t.ord - 1)::smallint, t.id FROM unnest($2::bigint[]) WITH ORDINALITY AS t(id, ord)
), event AS (
    INSERT INTO outbox (topic, aggregate_id, payload, trace_context)
    VALUES ('allocation.created', $1::text, $3, $4)
)
UPDATE idempotency_keys
   SET allocation_id = $1, response_status = 201,
       response_ciphertext = $5, response_nonce = $6, response_key_id = $7
 WHERE client_id = $8 AND key = $9";

/// Format a timestamp the one way the API does (RFC 3339, UTC, microseconds at most).
pub fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl Engine {
    /// An engine over the given stores.
    pub fn new(db: Db, cache: Option<InventoryCache>, keys: KeyRing, products: ProductDirectory) -> Self {
        Self { db, cache, keys, products, last_cache_warning: Arc::new(AtomicU64::new(0)) }
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
        let engine = self.clone();
        tokio::spawn(async move { engine.allocate_inner(&caller, &idempotency_key, &request, trace_context).await })
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("allocation task failed: {e}")))?
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
        let product = match self.products.get_offering(&product.id, Some(denomination_minor)).await? {
            Some(p) if p.denominations.contains(&denomination_minor) => p,
            _ => {
                return Err(ApiError::validation(
                    "denomination",
                    format!("{} is not offered for this product", product.currency.format_minor(denomination_minor)),
                )
                .into());
            }
        };
        let fingerprint = req.fingerprint();
        let allocation_id = Uuid::now_v7();

        let mut tx = self.db.primary.begin().await?;
        let created_at: Option<OffsetDateTime> = sqlx::query_scalar(BEGIN_ALLOCATION)
            .bind(caller.client_id)
            .bind(key)
            .bind(&fingerprint[..])
            .bind(allocation_id)
            .bind(&product.id)
            .bind(denomination_minor)
            .bind(req.quantity as i32)
            .bind(&req.client_reference)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(created_at) = created_at else {
            let outcome = self.replay(&mut tx, caller, key, &fingerprint).await;
            tx.rollback().await.ok();
            return outcome;
        };

        // Ids popped from the cache and not known to be gone from Postgres: on any failure
        // these go back, because after a rollback they are active again.
        let mut pending: Vec<i64> = Vec::new();
        let result = self
            .claim_and_commit(
                tx,
                caller,
                key,
                req,
                &product,
                denomination_minor,
                allocation_id,
                created_at,
                trace_context,
                &mut pending,
            )
            .await;
        if result.is_err() && !pending.is_empty() {
            self.put_back(&product.id, denomination_minor, &pending).await;
        }
        result
    }

    async fn replay(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        caller: &Caller,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<Outcome, AppError> {
        type Stored = (Vec<u8>, Option<i16>, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);
        let row: Option<Stored> = sqlx::query_as(
            "SELECT request_fingerprint, response_status, response_ciphertext, response_nonce, response_key_id
               FROM idempotency_keys WHERE client_id = $1 AND key = $2",
        )
        .bind(caller.client_id)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((stored_fingerprint, _status, Some(ct), Some(nonce), Some(key_id))) = row else {
            return Err(AppError::api(
                ErrorCode::IdempotencyInProgress,
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ));
        };
        if stored_fingerprint != fingerprint {
            return Err(AppError::api(
                ErrorCode::IdempotencyMismatch,
                "this Idempotency-Key was used with a different request body",
            ));
        }
        let body = self
            .keys
            .open(&ct, &nonce, &key_id, &response_aad(&caller.client_id, key))
            .map_err(|e| AppError::Internal(anyhow::anyhow!("stored response: {e}")))?;
        Ok(Outcome::Replayed(Bytes::from(body)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn claim_and_commit(
        &self,
        mut tx: Transaction<'_, Postgres>,
        caller: &Caller,
        key: &str,
        req: &AllocationRequest,
        product: &Product,
        denomination_minor: i64,
        allocation_id: Uuid,
        created_at: OffsetDateTime,
        trace_context: Option<String>,
        pending: &mut Vec<i64>,
    ) -> Result<Outcome, AppError> {
        let wanted = req.quantity as usize;
        let (claimed, stats) =
            self.claim(&mut tx, &product.id, denomination_minor, wanted, allocation_id, pending).await?;
        tracing::debug!(
            product_id = %product.id, denomination_minor, quantity = wanted,
            hits = stats.hits, stale = stats.stale, fallback = stats.fallback,
            fallback_cards = stats.fallback_cards, "cards claimed"
        );
        if claimed.len() < wanted {
            tx.rollback().await?;
            return Err(ApiError::new(
                ErrorCode::OutOfStock,
                format!("only {} of the {wanted} cards asked for are available; nothing was allocated", claimed.len()),
            )
            .with_details(serde_json::json!({
                "product_id": product.id,
                "denomination": product.currency.format_minor(denomination_minor),
                "requested": wanted,
                "available": claimed.len(),
            }))
            .into());
        }

        let aad = card_aad(&product.id, denomination_minor);
        let mut cards = Vec::with_capacity(claimed.len());
        for c in &claimed {
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
            allocation_id: allocation_id.to_string(),
            product_id: product.id.clone(),
            denomination: product.currency.format_minor(denomination_minor),
            currency: product.currency,
            quantity: req.quantity,
            client_reference: req.client_reference.clone(),
            cards,
            created_at: format_time(created_at),
        };
        let body = serde_json::to_vec(&response).map_err(|e| AppError::Internal(e.into()))?;
        let sealed = self.keys.seal(&body, &response_aad(&caller.client_id, key));
        let card_ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        let event = serde_json::json!({
            "allocation_id": allocation_id,
            "client_id": caller.client_id,
            "product_id": product.id,
            "denomination": response.denomination,
            "currency": product.currency,
            "quantity": req.quantity,
            "card_ids": card_ids,
            "created_at": response.created_at,
        });
        sqlx::query(FINISH_ALLOCATION)
            .bind(allocation_id)
            .bind(&card_ids)
            .bind(event)
            .bind(trace_context)
            .bind(&sealed.ciphertext)
            .bind(&sealed.nonce)
            .bind(&sealed.key_id)
            .bind(caller.client_id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        pending.clear();
        Ok(Outcome::Created(Bytes::from(body)))
    }

    /// Claim up to `wanted` cards: from the cache first, then from Postgres.
    async fn claim(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        product_id: &str,
        denomination_minor: i64,
        wanted: usize,
        allocation_id: Uuid,
        pending: &mut Vec<i64>,
    ) -> Result<(Vec<ClaimedCard>, PopStats), AppError> {
        let mut claimed: Vec<ClaimedCard> = Vec::with_capacity(wanted);
        let mut stats = PopStats::default();
        if let Some(cache) = &self.cache {
            for _ in 0..MAX_POP_ROUNDS {
                let need = wanted - claimed.len();
                let ids = match cache.pop(product_id, denomination_minor, need).await {
                    Ok(Popped::Ids(ids)) => ids,
                    Ok(Popped::Cold) => break,
                    Err(e) => {
                        stats.cache_error = true;
                        self.warn_cache(&e);
                        break;
                    }
                };
                if ids.is_empty() {
                    break;
                }
                pending.extend_from_slice(&ids);
                let rows: Vec<ClaimedCard> = sqlx::query_as(CLAIM_BY_ID)
                    .bind(&ids)
                    .bind(allocation_id)
                    .bind(product_id)
                    .bind(denomination_minor)
                    .fetch_all(&mut **tx)
                    .await?;
                let popped = ids.len();
                // Stale ids (allocated or voided meanwhile) are simply dropped from the cache.
                let live: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
                pending.retain(|id| !ids.contains(id) || live.contains(id));
                stats.hits += rows.len() as u32;
                stats.stale += (popped - rows.len()) as u32;
                claimed.extend(rows);
                if claimed.len() == wanted || popped < need {
                    break;
                }
            }
        }
        if claimed.len() < wanted {
            stats.fallback = true;
            let need = (wanted - claimed.len()) as i64;
            let rows: Vec<ClaimedCard> = sqlx::query_as(CLAIM_FROM_POSTGRES)
                .bind(need)
                .bind(allocation_id)
                .bind(product_id)
                .bind(denomination_minor)
                .fetch_all(&mut **tx)
                .await?;
            stats.fallback_cards = rows.len() as u32;
            claimed.extend(rows);
        }
        Ok((claimed, stats))
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
        let currency = allot_shared::Currency::parse(&currency).map_err(|e| AppError::Internal(e.into()))?;
        let rows: Vec<ClaimedCard> = sqlx::query_as(
            "SELECT inv.id, inv.code_ciphertext, inv.code_nonce, inv.code_key_id, inv.expires_at
               FROM allocation_items i JOIN inventories inv ON inv.id = i.card_id
              WHERE i.allocation_id = $1 ORDER BY i.position",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        let aad = card_aad(&product_id, denomination_minor);
        let mut cards = Vec::with_capacity(rows.len());
        for c in rows {
            let plain = self
                .keys
                .open(&c.code_ciphertext, &c.code_nonce, &c.code_key_id, &aad)
                .map_err(|e| AppError::Internal(anyhow::anyhow!("card {}: {e}", c.id)))?;
            let secret: CardSecret = serde_json::from_slice(&plain).map_err(|e| AppError::Internal(e.into()))?;
            cards.push(AllocatedCard {
                card_id: c.id,
                code: secret.code,
                pin: secret.pin,
                expires_at: c.expires_at.map(format_time),
            });
        }
        let response = AllocationResponse {
            allocation_id: id.to_string(),
            denomination: currency.format_minor(denomination_minor),
            product_id,
            currency,
            quantity: quantity as u32,
            client_reference,
            cards,
            created_at: format_time(created_at),
        };
        Ok(Some(Bytes::from(serde_json::to_vec(&response).map_err(|e| AppError::Internal(e.into()))?)))
    }
}
