//! The catalogue: products, their denominations and availability (Valkey counts when the
//! product's set is built, Postgres counts otherwise), cached briefly in process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_shared::Currency;
use allot_shared::catalogue::{Catalogue, CatalogueEntry, DenominationStock};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::cache::InventoryCache;
use crate::db::Db;
use crate::error::AppError;

/// A rendered catalogue and its entity tag.
#[derive(Clone)]
pub struct RenderedCatalogue {
    /// The JSON body.
    pub body: Bytes,
    /// A strong ETag of the body.
    pub etag: String,
}

/// Builds the catalogue and keeps the last rendering for `ttl`.
#[derive(Clone)]
pub struct CatalogueService {
    db: Db,
    cache: Option<InventoryCache>,
    ttl: Duration,
    last: Arc<Mutex<Option<(Instant, RenderedCatalogue)>>>,
}

impl CatalogueService {
    /// A catalogue service.
    pub fn new(db: Db, cache: Option<InventoryCache>, ttl: Duration) -> Self {
        Self { db, cache, ttl, last: Arc::new(Mutex::new(None)) }
    }

    /// The current catalogue (at most `ttl` old).
    pub async fn current(&self) -> Result<RenderedCatalogue, AppError> {
        // Holding the lock while building makes concurrent callers share one build.
        let mut last = self.last.lock().await;
        if let Some((at, r)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(r.clone());
        }
        let catalogue = self.build().await?;
        let body = Bytes::from(serde_json::to_vec(&catalogue).map_err(|e| AppError::Internal(e.into()))?);
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
        let rendered = RenderedCatalogue { body, etag };
        *last = Some((Instant::now(), rendered.clone()));
        Ok(rendered)
    }

    async fn build(&self) -> Result<Catalogue, AppError> {
        let rows: Vec<(String, String, String, Vec<i64>)> = self
            .db
            .read(|pool| async move {
                Ok(sqlx::query_as(
                    "SELECT p.id, p.name, p.currency,
                            coalesce(array_agg(d.denomination_minor ORDER BY d.denomination_minor)
                                     FILTER (WHERE d.denomination_minor IS NOT NULL), '{}')
                       FROM products p LEFT JOIN product_denominations d ON d.product_id = p.id
                      WHERE p.status = 'active'
                      GROUP BY p.id ORDER BY p.id",
                )
                .fetch_all(&pool)
                .await?)
            })
            .await?;
        let mut products = Vec::with_capacity(rows.len());
        for (id, name, currency, denominations) in rows {
            let Ok(currency) = Currency::parse(&currency) else {
                continue;
            };
            let counts = self.counts(&id, &denominations).await?;
            products.push(CatalogueEntry {
                product_id: id,
                name,
                currency,
                denominations: denominations
                    .iter()
                    .zip(counts)
                    .map(|(d, available)| DenominationStock { denomination: currency.format_minor(*d), available })
                    .collect(),
            });
        }
        Ok(Catalogue { products })
    }

    async fn counts(&self, product_id: &str, denominations: &[i64]) -> Result<Vec<u64>, AppError> {
        if let Some(cache) = &self.cache
            && let Ok(Some(counts)) = cache.counts(product_id, denominations).await
        {
            return Ok(counts);
        }
        let rows: Vec<(i64, i64)> = self
            .db
            .read(|pool| async move {
                Ok(sqlx::query_as(
                    "SELECT denomination_minor, count(*) FROM inventories
                      WHERE product_id = $1 AND status = 'active' GROUP BY denomination_minor",
                )
                .bind(product_id)
                .fetch_all(&pool)
                .await?)
            })
            .await?;
        Ok(denominations.iter().map(|d| rows.iter().find(|(x, _)| x == d).map_or(0, |(_, n)| *n as u64)).collect())
    }
}
