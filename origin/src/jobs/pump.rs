//! The inventory pump: rebuild every product's sorted set from Postgres (temporary key, then
//! `RENAME` over the live one, so readers never see an empty set).

use std::time::Duration;

use futures::future::BoxFuture;

use super::{Counts, Job, JobContext};
use crate::ops;

/// Rebuilds every product's cache set.
pub struct InventoryPump;

impl Job for InventoryPump {
    fn name(&self) -> &'static str {
        "inventory-pump"
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(6 * 3600)
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>> {
        Box::pin(async move {
            let cache = ctx.cache.as_ref().ok_or_else(|| anyhow::anyhow!("no cache configured"))?;
            let products: Vec<String> =
                sqlx::query_scalar("SELECT id FROM products ORDER BY id").fetch_all(&ctx.db.primary).await?;
            let (mut done, mut cards) = (0u64, 0u64);
            for p in &products {
                // Stop between products on shutdown; the next run does the rest.
                if ctx.shutdown.is_cancelled() {
                    break;
                }
                cards += ops::rebuild_product_cache(&ctx.db.primary, cache, p).await? as u64;
                done += 1;
            }
            let mut counts = Counts::new();
            counts.insert("products".into(), done.into());
            counts.insert("cards".into(), cards.into());
            counts.insert("interrupted".into(), (done < products.len() as u64).into());
            Ok(counts)
        })
    }
}
