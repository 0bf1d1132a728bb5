//! [`PoppedIds`]: the ids a request took out of the cache, owned until each is accounted for.
//!
//! A popped id is in one of three ends: spent (its card was allocated and committed), gone
//! (Postgres says the card is no longer active, so it must not go back), or put back. Whatever
//! is neither spent nor gone when the request settles goes back to the set; if a request is
//! dropped without settling (a panic), `Drop` puts its ids back in the background.

use std::collections::HashSet;

use crate::cache::InventoryCache;

/// Ids popped for one request, and where each ended.
pub struct PoppedIds {
    cache: Option<InventoryCache>,
    product_id: String,
    denomination_minor: i64,
    held: Vec<i64>,
    popped: usize,
    spent: usize,
    gone: usize,
}

impl PoppedIds {
    /// Nothing popped yet, for one bucket.
    pub fn new(cache: Option<InventoryCache>, product_id: &str, denomination_minor: i64) -> Self {
        Self {
            cache,
            product_id: product_id.to_owned(),
            denomination_minor,
            held: Vec::new(),
            popped: 0,
            spent: 0,
            gone: 0,
        }
    }

    /// Take ownership of more popped ids.
    pub fn hold(&mut self, ids: &[i64]) {
        self.held.extend_from_slice(ids);
        self.popped += ids.len();
    }

    /// How many ids were popped in all (each took a position in the allocation, in order).
    pub fn popped_count(&self) -> usize {
        self.popped
    }

    /// The ids held now.
    pub fn held(&self) -> &[i64] {
        &self.held
    }

    /// These ids' cards were allocated and committed.
    pub fn spend(&mut self, ids: &[i64]) {
        self.forget(ids, true);
    }

    /// These ids' cards are no longer active in Postgres: they must not go back.
    pub fn drop_gone(&mut self, ids: &[i64]) {
        self.forget(ids, false);
    }

    fn forget(&mut self, ids: &[i64], spent: bool) {
        let ids: HashSet<i64> = ids.iter().copied().collect();
        let before = self.held.len();
        self.held.retain(|id| !ids.contains(id));
        let n = before - self.held.len();
        debug_assert_eq!(n, ids.len(), "only held ids are spent or dropped");
        if spent {
            self.spent += n;
        } else {
            self.gone += n;
        }
    }

    /// Put back every id still held. Best effort: the reconciler heals what this misses.
    pub async fn settle(mut self) {
        let ids = std::mem::take(&mut self.held);
        debug_assert_eq!(self.popped, self.spent + self.gone + ids.len(), "every popped id is accounted for");
        if ids.is_empty() {
            return;
        }
        if let Some(cache) = &self.cache {
            put_back(cache, &self.product_id, self.denomination_minor, &ids).await;
        }
    }
}

impl Drop for PoppedIds {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let (Some(cache), Ok(runtime)) = (self.cache.clone(), tokio::runtime::Handle::try_current()) else { return };
        let (product_id, denomination_minor, ids) =
            (self.product_id.clone(), self.denomination_minor, std::mem::take(&mut self.held));
        runtime.spawn(async move { put_back(&cache, &product_id, denomination_minor, &ids).await });
    }
}

async fn put_back(cache: &InventoryCache, product_id: &str, denomination_minor: i64, ids: &[i64]) {
    if let Err(e) = cache.put_back(product_id, denomination_minor, ids).await {
        metrics::counter!("allot_cache_put_back_lost_total").increment(ids.len() as u64);
        crate::outage::VALKEY.failed("putting popped ids back; the reconciler will restore them", &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spent_and_gone_ids_are_not_held() {
        let mut p = PoppedIds::new(None, "p", 1000);
        p.hold(&[1, 2, 3, 4]);
        p.spend(&[2]);
        p.drop_gone(&[4]);
        assert_eq!(p.held(), &[1, 3]);
        assert_eq!((p.popped, p.spent, p.gone), (4, 1, 1));
    }
}
