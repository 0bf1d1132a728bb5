//! The reconciler: per product and denomination, compare Postgres's active count with the
//! cache's; rebuild the products that differ (missing ids back in, stale ids out), with a
//! structured warning carrying both counts for every divergence.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Counts, Job, JobContext};
use crate::cache::InventoryCache;
use crate::ops;

/// Compares and heals the cache.
pub struct Reconciler;

/// Allocations in flight hold popped ids for milliseconds: a difference is confirmed after
/// this pause before it counts as a divergence.
const CONFIRM_AFTER: Duration = Duration::from_millis(250);

type Buckets = BTreeMap<String, Vec<(i64, u64)>>;

async fn postgres_counts(pool: &sqlx::PgPool) -> anyhow::Result<Buckets> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT d.product_id, d.denomination_minor, coalesce(c.n, 0)
           FROM product_denominations d
           LEFT JOIN (SELECT product_id, denomination_minor, count(*) AS n
                        FROM inventories WHERE status = 'active'
                       GROUP BY product_id, denomination_minor) c
             USING (product_id, denomination_minor)
          ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Buckets::new();
    for (p, d, n) in rows {
        out.entry(p).or_default().push((d, n as u64));
    }
    Ok(out)
}

/// Products whose cache differs from Postgres, with (denomination, postgres, cache) per
/// differing bucket (`None` for the cache when the set is missing).
async fn differing(
    cache: &InventoryCache,
    pg: &Buckets,
) -> anyhow::Result<BTreeMap<String, Vec<(i64, u64, Option<u64>)>>> {
    let mut out = BTreeMap::new();
    for (product, buckets) in pg {
        let denominations: Vec<i64> = buckets.iter().map(|(d, _)| *d).collect();
        let cached = cache.counts(product, &denominations).await?;
        let diffs: Vec<(i64, u64, Option<u64>)> = match cached {
            // A missing set is rebuilt even when the product is sold out: built and empty, it
            // answers "out of stock" without a Postgres transaction.
            None => buckets.iter().map(|(d, n)| (*d, *n, None)).collect(),
            Some(c) => {
                buckets.iter().zip(c).filter(|((_, n), c)| n != c).map(|((d, n), c)| (*d, *n, Some(c))).collect()
            }
        };
        if !diffs.is_empty() {
            out.insert(product.clone(), diffs);
        }
    }
    Ok(out)
}

impl Job for Reconciler {
    fn name(&self) -> &'static str {
        "reconcile"
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>> {
        Box::pin(async move {
            let cache = ctx.cache.as_ref().ok_or_else(|| anyhow::anyhow!("no cache configured"))?;
            let pool = &ctx.db.primary;
            let pg = postgres_counts(pool).await?;
            let buckets: usize = pg.values().map(Vec::len).sum();
            // Stock per bucket, from the truth: operators see a sell-out coming.
            for (product, counts) in &pg {
                for (denomination_minor, n) in counts {
                    metrics::gauge!("allot_inventory_active_cards", "product_id" => product.clone(),
                        "denomination_minor" => denomination_minor.to_string())
                    .set(*n as f64);
                }
            }
            let mut suspects = differing(cache, &pg).await?;
            if !suspects.is_empty() {
                tokio::time::sleep(CONFIRM_AFTER).await;
                let pg = postgres_counts(pool).await?;
                let again = differing(cache, &pg).await?;
                suspects.retain(|p, _| again.contains_key(p));
                for (p, diffs) in suspects.iter_mut() {
                    *diffs = again[p].clone();
                }
            }
            let mut divergent_buckets = 0u64;
            for (product, diffs) in &suspects {
                for (denomination_minor, postgres, cached) in diffs {
                    divergent_buckets += 1;
                    tracing::warn!(
                        product_id = %product, denomination_minor, postgres_active = postgres,
                        cache_active = ?cached, "inventory cache diverged from Postgres; rebuilding"
                    );
                }
                ops::rebuild_product_cache(pool, cache, product).await?;
                metrics::counter!("allot_cache_divergences_healed_total").increment(diffs.len() as u64);
            }
            let mut counts = Counts::new();
            counts.insert("buckets".into(), (buckets as u64).into());
            counts.insert("divergent_buckets".into(), divergent_buckets.into());
            counts.insert("products_rebuilt".into(), (suspects.len() as u64).into());
            Ok(counts)
        })
    }
}
