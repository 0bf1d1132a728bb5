//! The reconciler: per product and denomination, compare Postgres's active count with the
//! cache's; rebuild the products that differ (missing ids back in, stale ids out), with a
//! structured warning carrying both counts for every divergence and a `cache_divergences` row
//! saying whether the rebuild healed it.

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

/// Every product's denominations (counts zero): what to read from the cache, cheaply.
async fn bucket_layout(pool: &sqlx::PgPool) -> anyhow::Result<Buckets> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT product_id, denomination_minor FROM product_denominations ORDER BY 1, 2")
            .fetch_all(pool)
            .await?;
    let mut out = Buckets::new();
    for (p, d) in rows {
        out.entry(p).or_default().push((d, 0));
    }
    Ok(out)
}

/// Each product's cache counts per denomination of `pg` (`None` for a missing set).
async fn cache_counts(cache: &InventoryCache, pg: &Buckets) -> anyhow::Result<BTreeMap<String, Option<Vec<u64>>>> {
    let mut out = BTreeMap::new();
    for (product, buckets) in pg {
        let denominations: Vec<i64> = buckets.iter().map(|(d, _)| *d).collect();
        out.insert(product.clone(), cache.counts(product, &denominations).await?);
    }
    Ok(out)
}

/// Whether a bucket's Postgres count disagrees with the cache's counts read just before and
/// just after it. Under load both fall while the counts are read (cards leave the cache when
/// popped and Postgres when committed), so a count read between two cache reads that lies
/// between them is in step; only a count outside that range is a divergence.
pub fn diverges(postgres: u64, cache_before: u64, cache_after: u64) -> bool {
    postgres < cache_before.min(cache_after) || postgres > cache_before.max(cache_after)
}

/// Products whose cache differs from Postgres, with (denomination, postgres, cache) per
/// differing bucket (`None` for the cache when the set is missing). The cache is read before
/// and after Postgres, so allocations in flight while the counts are taken are not divergences.
async fn differing(
    cache: &InventoryCache,
    pool: &sqlx::PgPool,
) -> anyhow::Result<(Buckets, BTreeMap<String, Vec<(i64, u64, Option<u64>)>>)> {
    let before = cache_counts(cache, &bucket_layout(pool).await?).await?;
    let pg = postgres_counts(pool).await?;
    let after = cache_counts(cache, &pg).await?;
    let mut out = BTreeMap::new();
    for (product, buckets) in &pg {
        let (b, a) = (before.get(product).cloned().flatten(), after.get(product).cloned().flatten());
        let diffs: Vec<(i64, u64, Option<u64>)> = match (b, a) {
            // Missing (or just rebuilt): a missing set is rebuilt even when the product is sold
            // out, so it answers "out of stock" without a Postgres transaction.
            (None, _) | (_, None) => buckets.iter().map(|(d, n)| (*d, *n, None)).collect(),
            (Some(b), Some(a)) if b.len() == buckets.len() && a.len() == buckets.len() => buckets
                .iter()
                .zip(b.iter().zip(&a))
                .filter(|((_, n), (b, a))| diverges(*n, **b, **a))
                .map(|((d, n), (_, a))| (*d, *n, Some(*a)))
                .collect(),
            // A denomination was added between the reads: look again next tick.
            _ => Vec::new(),
        };
        if !diffs.is_empty() {
            out.insert(product.clone(), diffs);
        }
    }
    Ok((pg, out))
}

/// Record a product's divergent buckets in `cache_divergences` (the cache's count `NULL` when
/// the set was missing), with whether the rebuild healed them.
async fn record_divergences(
    pool: &sqlx::PgPool,
    product: &str,
    diffs: &[(i64, u64, Option<u64>)],
    healed: bool,
) -> anyhow::Result<()> {
    let denominations: Vec<i64> = diffs.iter().map(|d| d.0).collect();
    let postgres: Vec<i64> = diffs.iter().map(|d| d.1 as i64).collect();
    let cached: Vec<Option<i64>> = diffs.iter().map(|d| d.2.map(|n| n as i64)).collect();
    sqlx::query(
        "INSERT INTO cache_divergences (product_id, denomination_minor, postgres_active, cache_active, healed)
         SELECT $1, d, p, c, $5 FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS u(d, p, c)",
    )
    .bind(product)
    .bind(&denominations)
    .bind(&postgres)
    .bind(&cached)
    .bind(healed)
    .execute(pool)
    .await?;
    Ok(())
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
            let (pg, mut suspects) = differing(cache, pool).await?;
            let buckets: usize = pg.values().map(Vec::len).sum();
            // Stock per bucket, from the truth: operators see a sell-out coming.
            for (product, counts) in &pg {
                for (denomination_minor, n) in counts {
                    metrics::gauge!("allot_inventory_active_cards", "product_id" => product.clone(),
                        "denomination_minor" => denomination_minor.to_string())
                    .set(*n as f64);
                }
            }
            if !suspects.is_empty() {
                tokio::time::sleep(CONFIRM_AFTER).await;
                let (_, again) = differing(cache, pool).await?;
                suspects.retain(|p, _| again.contains_key(p));
                for (p, diffs) in suspects.iter_mut() {
                    *diffs = again[p].clone();
                }
            }
            let mut divergent_buckets = 0u64;
            let mut failure: Option<anyhow::Error> = None;
            for (product, diffs) in &suspects {
                for (denomination_minor, postgres, cached) in diffs {
                    divergent_buckets += 1;
                    tracing::warn!(
                        product_id = %product, denomination_minor, postgres_active = postgres,
                        cache_active = ?cached, "inventory cache diverged from Postgres; rebuilding"
                    );
                }
                // One product's failed rebuild does not keep the others from healing; the run
                // fails at the end, and every divergence is on record either way.
                let healed = match ops::rebuild_product_cache(pool, cache, product).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(product_id = %product, error = %format!("{e:#}"), "rebuild failed");
                        failure.get_or_insert(e.context(format!("rebuilding {product}")));
                        false
                    }
                };
                record_divergences(pool, product, diffs, healed).await?;
                if healed {
                    metrics::counter!("allot_cache_divergences_healed_total").increment(diffs.len() as u64);
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            let mut counts = Counts::new();
            counts.insert("buckets".into(), (buckets as u64).into());
            counts.insert("divergent_buckets".into(), divergent_buckets.into());
            counts.insert("products_rebuilt".into(), (suspects.len() as u64).into());
            Ok(counts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::diverges;

    #[test]
    fn a_count_between_the_cache_reads_is_in_step() {
        // Under load: the cache fell from 100 to 90 while Postgres was counted at 95.
        assert!(!diverges(95, 100, 90));
        assert!(!diverges(100, 100, 90));
        assert!(!diverges(90, 100, 90));
        // At rest, any difference counts.
        assert!(diverges(101, 100, 100));
        assert!(diverges(99, 100, 100));
        // Outside the range the cache moved through: missing ids, or stale ones.
        assert!(diverges(120, 100, 90));
        assert!(diverges(80, 100, 90));
    }
}
