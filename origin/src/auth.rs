//! API key authentication: the shared key format, a digest lookup in Postgres, and a short
//! in-process cache so revocation takes effect within its TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_shared::{ApiKey, ErrorCode, Region};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::allocation::Caller;
use crate::error::AppError;

/// Largest number of cached keys before the cache is cleared (bounds memory under junk).
const MAX_CACHED_KEYS: usize = 100_000;

#[derive(Debug, Clone)]
struct KeyRecord {
    client_id: Uuid,
    secret_digest: Vec<u8>,
    revoked: bool,
    client_active: bool,
    rate_limit_per_minute: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    client_id: Uuid,
    secret_digest: Vec<u8>,
    revoked: bool,
    status: String,
    rate_limit_per_minute: Option<i32>,
}

/// Cached lookups by key id: when looked up, and what was found (`None`: no such key).
type KeyCache = HashMap<String, (Instant, Option<KeyRecord>)>;

/// Verifies API keys.
#[derive(Clone)]
pub struct Authenticator {
    pool: PgPool,
    region: Region,
    ttl: Duration,
    cache: Arc<Mutex<KeyCache>>,
}

fn unauthorized(message: &str) -> AppError {
    AppError::api(ErrorCode::Unauthorized, message)
}

impl Authenticator {
    /// An authenticator for keys of `region`, caching lookups for `ttl`.
    pub fn new(pool: PgPool, region: Region, ttl: Duration) -> Self {
        Self { pool, region, ttl, cache: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Authenticate a well-formed key (format and checksum were checked by
    /// [`allot_shared::request_headers::api_key`]).
    pub async fn authenticate(&self, key: &ApiKey) -> Result<Caller, AppError> {
        if key.region() != &self.region {
            return Err(unauthorized(&format!("this API key belongs to region {}, not {}", key.region(), self.region)));
        }
        let record = self.lookup(key.key_id()).await?;
        let Some(record) = record else {
            return Err(unauthorized("the API key is not valid"));
        };
        let digest = key.secret_digest();
        if !bool::from(digest[..].ct_eq(&record.secret_digest[..])) {
            return Err(unauthorized("the API key is not valid"));
        }
        if record.revoked {
            return Err(unauthorized("the API key has been revoked"));
        }
        if !record.client_active {
            return Err(AppError::api(ErrorCode::Forbidden, "this client is suspended"));
        }
        Ok(Caller {
            client_id: record.client_id,
            key_id: key.key_id().to_owned(),
            rate_limit_per_minute: record.rate_limit_per_minute,
        })
    }

    async fn lookup(&self, key_id: &str) -> Result<Option<KeyRecord>, AppError> {
        if let Some((at, rec)) = self.cache.lock().await.get(key_id)
            && at.elapsed() < self.ttl
        {
            return Ok(rec.clone());
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT k.client_id, k.secret_digest, k.revoked_at IS NOT NULL AS revoked, c.status,
                    c.rate_limit_per_minute
               FROM api_keys k JOIN clients c ON c.id = k.client_id
              WHERE k.key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let rec = row.map(|r| KeyRecord {
            client_id: r.client_id,
            secret_digest: r.secret_digest,
            revoked: r.revoked,
            client_active: r.status == "active",
            rate_limit_per_minute: r.rate_limit_per_minute.and_then(|n| u32::try_from(n).ok()),
        });
        let mut cache = self.cache.lock().await;
        if cache.len() >= MAX_CACHED_KEYS {
            cache.clear();
        }
        cache.insert(key_id.to_owned(), (Instant::now(), rec.clone()));
        Ok(rec)
    }
}
