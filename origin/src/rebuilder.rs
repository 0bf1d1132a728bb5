//! Single-flight rebuilds of cold cache sets: when the allocation path finds a product's set
//! missing (a flush, a restart, a new product), it asks for a rebuild and goes on to Postgres.
//! One rebuild per product runs at a time in this process (an in-process set) and across
//! instances (a Valkey lock with an expiry), so a flushed cache under load costs one read of
//! each product's active cards, not one per request.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::cache::{CacheState, InventoryCache};
use crate::ops;

/// How long a rebuild lock lives if its holder dies mid-rebuild.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// Starts rebuilds of cold sets, one per product at a time.
#[derive(Clone)]
pub struct CacheRebuilder {
    pool: PgPool,
    cache: InventoryCache,
    in_flight: Arc<Mutex<HashSet<String>>>,
    completed: Arc<AtomicU64>,
}

/// Removes a product from the in-process set however its rebuild ends.
struct InFlight {
    product_id: String,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.product_id);
    }
}

impl CacheRebuilder {
    /// A rebuilder reading active cards from `pool` into `cache`.
    pub fn new(pool: PgPool, cache: InventoryCache) -> Self {
        Self { pool, cache, in_flight: Arc::default(), completed: Arc::default() }
    }

    /// Rebuilds this instance has completed (the others held the lock or found none needed).
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Ask for a rebuild of `product_id`'s set; returns at once. Does nothing when this
    /// process already rebuilds it; across instances the Valkey lock decides.
    pub fn request(&self, product_id: &str) {
        {
            let mut set = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if !set.insert(product_id.to_owned()) {
                return;
            }
        }
        let guard = InFlight { product_id: product_id.to_owned(), in_flight: self.in_flight.clone() };
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.rebuild(&guard.product_id).await {
                tracing::warn!(product_id = %guard.product_id, error = %e, "cache rebuild failed; the reconciler will retry");
            }
            drop(guard);
        });
    }

    async fn rebuild(&self, product_id: &str) -> anyhow::Result<()> {
        let Some(token) = self.cache.lock_rebuild(product_id, LOCK_TTL).await? else {
            return Ok(());
        };
        // Another instance may have finished a rebuild just before this one took the lock.
        if self.cache.state(product_id).await? == CacheState::Warm {
            self.cache.unlock_rebuild(product_id, &token).await?;
            return Ok(());
        }
        let started = Instant::now();
        let result = ops::rebuild_product_cache(&self.pool, &self.cache, product_id).await;
        if let Err(e) = self.cache.unlock_rebuild(product_id, &token).await {
            tracing::debug!(product_id, error = %e, "rebuild lock not released; it expires by itself");
        }
        let cards = result?;
        self.completed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("allot_cache_rebuilds_total", "trigger" => "cold").increment(1);
        tracing::info!(
            product_id,
            cards,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt a cold cache set"
        );
        Ok(())
    }
}
