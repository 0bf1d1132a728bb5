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
        Self {
            pool,
            ttl,
            snapshot: Arc::new(RwLock::new(None)),
        }
    }

    /// Look a product up.
    pub async fn get(&self, id: &str) -> Result<Option<Product>, sqlx::Error> {
        {
            let snap = self.snapshot.read().await;
            if let Some(s) = snap.as_ref() {
                let age = s.loaded_at.elapsed();
                match s.products.get(id) {
                    Some(p) if age < self.ttl => return Ok(Some(p.clone())),
                    None if age < Duration::from_secs(1).min(self.ttl) => return Ok(None),
                    _ => {}
                }
            }
        }
        let products = load(&self.pool).await?;
        let found = products.get(id).cloned();
        *self.snapshot.write().await = Some(Snapshot {
            loaded_at: Instant::now(),
            products,
        });
        Ok(found)
    }
}

async fn load(pool: &PgPool) -> Result<HashMap<String, Product>, sqlx::Error> {
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT id, name, currency, status FROM products")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, name, currency, status)| {
            // The schema checks the shape; an unknown code would be an operator error, skip it.
            let currency = Currency::parse(&currency).ok()?;
            Some((
                id.clone(),
                Product {
                    id,
                    name,
                    currency,
                    active: status == "active",
                },
            ))
        })
        .collect())
}
