//! The product directory: a short-lived in-process copy of the (small) products table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_shared::Currency;
use sqlx::PgPool;
use tokio::sync::RwLock;

/// What the allocation path needs to know about a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Product id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Currency of its denominations.
    pub currency: Currency,
    /// Whether it can be allocated from.
    pub active: bool,
    /// Denominations it is offered in, in minor units, ascending.
    pub denominations: Vec<i64>,
}

struct Snapshot {
    loaded_at: Instant,
    products: HashMap<String, Product>,
}

/// Products by id, reloaded when older than its TTL or when an unknown id is asked for
/// (at most once per second, so junk ids cannot hammer Postgres).
#[derive(Clone)]
pub struct ProductDirectory {
    pool: PgPool,
    ttl: Duration,
    snapshot: Arc<RwLock<Option<Snapshot>>>,
}

impl ProductDirectory {
    /// A directory reading from `pool`.
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, ttl, snapshot: Arc::new(RwLock::new(None)) }
    }

    /// Look a product up.
    pub async fn get(&self, id: &str) -> Result<Option<Product>, sqlx::Error> {
        self.get_offering(id, None).await
    }

    /// Look a product up, reloading early (at most once a second) when it is unknown or does
    /// not list `denomination_minor`, so a newly added product or denomination is seen at once.
    pub async fn get_offering(
        &self,
        id: &str,
        denomination_minor: Option<i64>,
    ) -> Result<Option<Product>, sqlx::Error> {
        {
            let snap = self.snapshot.read().await;
            if let Some(s) = snap.as_ref() {
                let age = s.loaded_at.elapsed();
                let recent = age < Duration::from_secs(1).min(self.ttl);
                match s.products.get(id) {
                    Some(p) if age < self.ttl && denomination_minor.is_none_or(|d| p.denominations.contains(&d)) => {
                        return Ok(Some(p.clone()));
                    }
                    Some(p) if recent => return Ok(Some(p.clone())),
                    None if recent => return Ok(None),
                    _ => {}
                }
            }
        }
        let products = load(&self.pool).await?;
        let found = products.get(id).cloned();
        *self.snapshot.write().await = Some(Snapshot { loaded_at: Instant::now(), products });
        Ok(found)
    }
}

async fn load(pool: &PgPool) -> Result<HashMap<String, Product>, sqlx::Error> {
    let rows: Vec<(String, String, String, String, Vec<i64>)> = sqlx::query_as(
        "SELECT p.id, p.name, p.currency, p.status,
                coalesce(array_agg(d.denomination_minor ORDER BY d.denomination_minor)
                         FILTER (WHERE d.denomination_minor IS NOT NULL), '{}')
           FROM products p LEFT JOIN product_denominations d ON d.product_id = p.id
          GROUP BY p.id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, name, currency, status, denominations)| {
            // The schema checks the shape; an unknown code would be an operator error, skip it.
            let currency = Currency::parse(&currency).ok()?;
            Some((id.clone(), Product { id, name, currency, active: status == "active", denominations }))
        })
        .collect())
}
