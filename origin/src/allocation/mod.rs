//! The allocation engine: idempotent, all-or-nothing allocations, with Postgres as the only
//! truth and the Valkey sorted set as the way to hand each request distinct card ids.
//!
//! One request, read in order ([`Engine::allocate`]):
//! 1. **validate** against the catalogue ([`request::prepare`]);
//! 2. **pop** exactly the ids wanted from the product's set, in one pipeline with every
//!    request waiting ([`pop`]). A built set that is short answers `409 OUT_OF_STOCK` at once,
//!    after checking only that the key is not one to replay. A cold set starts a single-flight
//!    rebuild ([`crate::rebuilder`]) and the request goes to Postgres;
//! 3. **write** the popped ids with every request waiting, in one statement and one commit
//!    ([`write`]), each all-or-nothing and idempotent on its own (a live key replays);
//! 4. or **claim** in one transaction when the cache could not serve exactly (stale ids, cold,
//!    Valkey down): cache ids first, then Postgres with `SKIP LOCKED` ([`claim`]);
//!    either way a funded client is charged in the same transaction, or refused with `402`
//!    ([`crate::funding`]);
//! 5. **render** the body ([`render`]), the same way for replays;
//! 6. **put back** whatever was popped and not allocated ([`popped::PoppedIds`]).
//!
//! Reads: one allocation ([`Engine::get_allocation`]) and a client's listing ([`listing`]).

mod claim;
pub mod listing;
pub mod pop;
pub mod popped;
pub mod render;
mod replay;
pub mod request;
pub mod sql;
pub mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use allot_shared::AllocationRequest;
use bytes::Bytes;
use tracing::Instrument;
use uuid::Uuid;

use self::claim::Claimed;
use self::pop::{PopAsk, PopStage, Popper};
use self::popped::PoppedIds;
pub use self::render::{ClaimedCard, format_time};
use self::replay::{KeyLookup, KeyLookupStage};
use self::request::NewAllocation;
use self::write::{WriteAsk, WriteStage, Writer, Written};
use crate::cache::{CacheError, InventoryCache, Popped};
use crate::coalescer::{BatchHandler, Coalescer};
use crate::crypto::KeyRing;
use crate::db::Db;
use crate::error::AppError;
use crate::funding::Shortfall;
use crate::products::ProductDirectory;
use crate::rebuilder::CacheRebuilder;

/// Largest number of requests in one pipeline or statement.
const MAX_BATCH: usize = 64;

/// A stage of the path, batching under load; it stops when the primary pool closes.
fn coalesced<I: Send + 'static, O: Send + 'static>(db: &Db, stage: impl BatchHandler<I, O>) -> Coalescer<I, O> {
    Coalescer::start(MAX_BATCH, db.primary.close_event(), stage)
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The client the key belongs to.
    pub client_id: Uuid,
    /// The key's public id.
    pub key_id: String,
    /// The client's own requests-per-minute limit; `None`: the configured default.
    pub rate_limit_per_minute: Option<u32>,
}

/// The result of an allocation request: a fresh response or a stored one, with the allocation's
/// id (for `Location`).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Newly allocated; the `201` body.
    Created(Uuid, Bytes),
    /// Replayed; the stored body, byte for byte.
    Replayed(Uuid, Bytes),
}

impl Outcome {
    /// The allocation's id.
    pub fn allocation_id(&self) -> Uuid {
        match self {
            Outcome::Created(id, _) | Outcome::Replayed(id, _) => *id,
        }
    }
}

/// The allocation engine.
#[derive(Clone)]
pub struct Engine {
    db: Db,
    cache: Option<InventoryCache>,
    keys: KeyRing,
    products: ProductDirectory,
    rebuilder: Option<CacheRebuilder>,
    popper: Option<Popper>,
    writers: Arc<[Writer]>,
    key_lookup: Option<KeyLookup>,
    next_writer: Arc<AtomicUsize>,
}

impl Engine {
    /// An engine over the given stores; with a cache, pops and writes are coalesced by one
    /// popper and `writers` statement writers (0: each request pops and writes alone).
    pub fn new(
        db: Db,
        cache: Option<InventoryCache>,
        keys: KeyRing,
        products: ProductDirectory,
        writers: usize,
    ) -> Self {
        let coalesce = cache.is_some() && writers > 0;
        let popper = cache.clone().filter(|_| coalesce).map(|c| coalesced(&db, PopStage::new(c)));
        let writers: Arc<[_]> = (0..if coalesce { writers } else { 0 })
            .map(|_| coalesced(&db, WriteStage::new(db.primary.clone())))
            .collect();
        let key_lookup = coalesce.then(|| coalesced(&db, KeyLookupStage::new(db.primary.clone())));
        let rebuilder = cache.clone().map(|c| CacheRebuilder::new(db.primary.clone(), c));
        Self { db, cache, keys, products, rebuilder, popper, writers, key_lookup, next_writer: Arc::default() }
    }

    /// The cache, when configured.
    pub fn cache(&self) -> Option<&InventoryCache> {
        self.cache.as_ref()
    }

    /// The rebuilder of cold sets, when there is a cache.
    pub fn rebuilder(&self) -> Option<&CacheRebuilder> {
        self.rebuilder.as_ref()
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
        let started = Instant::now();
        let task = async move { engine.allocate_inner(caller, idempotency_key, request, trace_context).await };
        let result = tokio::spawn(task.instrument(span.clone()))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("allocation task failed: {e}")))
            .and_then(|r| r);
        let (outcome, code) = match &result {
            Ok(Outcome::Created(..)) => ("created", "none"),
            Ok(Outcome::Replayed(..)) => ("replayed", "none"),
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
        caller: Caller,
        key: String,
        req: AllocationRequest,
        trace_context: Option<String>,
    ) -> Result<Outcome, AppError> {
        let a = Arc::new(request::prepare(&self.products, &caller, key, &req, trace_context).await?);
        let mut popped = PoppedIds::new(self.cache.clone(), &a.product_id, a.denomination_minor);
        let result = self.allocate_popped(&a, &mut popped).await;
        popped.settle().await;
        result
    }

    /// Pop, then write (fast) or claim (slow); `popped` owns every id taken from the cache.
    async fn allocate_popped(&self, a: &Arc<NewAllocation>, popped: &mut PoppedIds) -> Result<Outcome, AppError> {
        // The cache to pop more from on the slow path: only one that answered with ids.
        let mut cache_for_claim = None;
        match self.pop(a).await {
            Some(Ok(Popped::Ids(ids))) => {
                popped.hold(&ids);
                match self.write(a, &ids).await? {
                    Written::Created(created_at, cards) => {
                        popped.spend(&ids);
                        metrics::counter!("allot_cache_pops_total", "outcome" => "hit").increment(ids.len() as u64);
                        return Ok(Outcome::Created(a.id, render::render(&self.keys, &a.head(created_at), &cards)?));
                    }
                    Written::KeyExists => return self.replay(a).await,
                    Written::Unfunded(shortfall) => return self.unfunded_unless_replay(a, shortfall).await,
                    Written::Stale => cache_for_claim = self.cache.as_ref(),
                }
            }
            Some(Ok(Popped::Short { available })) => return self.out_of_stock_unless_replay(a, available).await,
            // A duplicate holds ids: Postgres decides (the key's insert waits for it).
            Some(Ok(Popped::KeyHeld)) => {}
            Some(Ok(Popped::Cold)) => {
                metrics::counter!("allot_cache_pops_total", "outcome" => "cold").increment(1);
                if let Some(r) = &self.rebuilder {
                    r.request(&a.product_id);
                }
            }
            Some(Err(e)) => self.warn_cache(&e),
            None => {}
        }
        let span = tracing::info_span!("inventory.commit", path = "slow", cards = a.quantity);
        let claimed = claim::claim(&self.db.primary, cache_for_claim, a, popped).instrument(span).await?;
        match claimed {
            Claimed::Created(created_at, cards) => {
                Ok(Outcome::Created(a.id, render::render(&self.keys, &a.head(created_at), &cards)?))
            }
            Claimed::KeyExists => self.replay(a).await,
            Claimed::Short(available) => Err(a.out_of_stock(available)),
            Claimed::Unfunded(shortfall) => Err(a.insufficient_funds(shortfall)),
        }
    }

    /// Exactly the ids wanted, or why not; `None` without a cache.
    async fn pop(&self, a: &Arc<NewAllocation>) -> Option<Result<Popped, CacheError>> {
        let cache = self.cache.as_ref()?;
        Some(match &self.popper {
            Some(popper) => {
                let ask = PopAsk { allocation: a.clone(), span: tracing::Span::current() };
                popper.submit(ask).await.unwrap_or_else(|e| Err(CacheError::new(e.to_string())))
            }
            None => cache.pop_many(&[a.pop_args()]).await.map(|mut answers| answers.remove(0)),
        })
    }

    /// Write exactly the popped ids; with a batch writer if there is one, else alone.
    async fn write(&self, a: &Arc<NewAllocation>, ids: &[i64]) -> Result<Written, AppError> {
        let ask = || WriteAsk { allocation: a.clone(), ids: ids.to_vec(), span: tracing::Span::current() };
        if self.writers.is_empty() {
            return Ok(self.write_alone(ask()).await?);
        }
        let writer = &self.writers[self.next_writer.fetch_add(1, Ordering::Relaxed) % self.writers.len()];
        match writer.submit(ask()).await {
            // The batch failed as a whole (a deadlock between batches, say): no caller fails for
            // another's sake, so this one is written alone, and its own error is the answer.
            Ok(Err(why)) => {
                tracing::debug!(error = %why, "allocation batch failed; writing this allocation alone");
                Ok(self.write_alone(ask()).await?)
            }
            Ok(Ok(written)) => Ok(written),
            // The writer stops only when the pool closes (shutdown).
            Err(_stopped) => Err(sqlx::Error::PoolClosed.into()),
        }
    }

    /// A batch of one on a connection of its own.
    async fn write_alone(&self, ask: WriteAsk) -> Result<Written, sqlx::Error> {
        let span = tracing::info_span!("inventory.commit", path = "fast", cards = ask.ids.len(), batch = 1);
        let written = async {
            let mut conn = self.db.primary.acquire().await?;
            write::write_popped(&mut conn, std::slice::from_ref(&ask)).await
        };
        let mut outcomes = written.instrument(span).await?;
        debug_assert_eq!(outcomes.len(), 1, "one outcome for one request");
        Ok(outcomes.pop().unwrap_or(Written::Stale))
    }

    /// The set is built and short: `409` with nothing written, unless the key is live.
    async fn out_of_stock_unless_replay(&self, a: &Arc<NewAllocation>, available: u64) -> Result<Outcome, AppError> {
        metrics::counter!("allot_cache_pops_total", "outcome" => "short").increment(1);
        match replay::live_key_coalesced(self.key_lookup.as_ref(), &self.db.primary, a).await? {
            Some(live) => replay::replay_live(&self.db.primary, &self.keys, a, live).await,
            None => Err(a.out_of_stock(available)),
        }
    }

    /// The funds fell short: `402` with nothing written, unless the key is live (a replay never
    /// pays twice, and is answered even when the balance has run out since).
    async fn unfunded_unless_replay(&self, a: &Arc<NewAllocation>, shortfall: Shortfall) -> Result<Outcome, AppError> {
        match replay::live_key_coalesced(self.key_lookup.as_ref(), &self.db.primary, a).await? {
            Some(live) => replay::replay_live(&self.db.primary, &self.keys, a, live).await,
            None => Err(a.insufficient_funds(shortfall)),
        }
    }

    async fn replay(&self, a: &NewAllocation) -> Result<Outcome, AppError> {
        replay::replay(&self.db.primary, &self.keys, a).await
    }

    /// Count the failure; the outage is logged once (see [`crate::outage`]).
    fn warn_cache(&self, e: &CacheError) {
        metrics::counter!("allot_cache_pops_total", "outcome" => "error").increment(1);
        crate::outage::VALKEY.failed("inventory cache pop; allocating from Postgres", e);
    }

    /// An allocation as its owner sees it; `None` when it does not exist or is not theirs.
    pub async fn get_allocation(&self, caller: &Caller, id: Uuid) -> Result<Option<Bytes>, AppError> {
        render::read_for_owner(&self.db, &self.keys, caller.client_id, id).await
    }

    /// One page of the caller's allocations, newest first, as the response body. Read from the
    /// replica while it serves (see [`crate::read_routing`]): the newest allocation may show a
    /// moment later there.
    pub async fn list_allocations(&self, caller: &Caller, listing: &listing::Listing) -> Result<Bytes, AppError> {
        debug_assert_eq!(caller.client_id, listing.client_id, "a caller lists only its own allocations");
        let keys = &self.keys;
        self.db.read(|pool| async move { listing::read_body(&pool, keys, listing).await }).await
    }
}
