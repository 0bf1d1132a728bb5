//! API key authentication: the shared key format, a digest lookup in Postgres, and a short
//! in-process cache so revocation, suspension and a changed expiry take effect within its TTL.
//! A key's last use is written in the background, at most once a minute per key and process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_shared::{ApiKey, ErrorCode, Region};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
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
    expires_at: Option<OffsetDateTime>,
    client_active: bool,
    rate_limit_per_minute: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    client_id: Uuid,
    secret_digest: Vec<u8>,
    revoked: bool,
    expires_at: Option<OffsetDateTime>,
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
    last_used: LastUsed,
}

fn unauthorized(message: &str) -> AppError {
    AppError::api(ErrorCode::Unauthorized, message)
}

impl Authenticator {
    /// An authenticator for keys of `region`, caching lookups for `ttl`.
    pub fn new(pool: PgPool, region: Region, ttl: Duration) -> Self {
        let last_used = LastUsed::new(pool.clone());
        Self { pool, region, ttl, cache: Arc::new(Mutex::new(HashMap::new())), last_used }
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
        // Checked against the clock on every request, so a rotated key stops at its time exactly.
        if record.expires_at.is_some_and(|t| t <= OffsetDateTime::now_utc()) {
            return Err(unauthorized("the API key has expired"));
        }
        if !record.client_active {
            return Err(AppError::api(ErrorCode::Forbidden, "this client is suspended"));
        }
        self.last_used.mark(key.key_id());
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
            "SELECT k.client_id, k.secret_digest, k.revoked_at IS NOT NULL AS revoked, k.expires_at, c.status,
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
            expires_at: r.expires_at,
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

/// How often a key's use is written at most, per process.
pub const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// How long a use waits before the background writer takes it (a batch forms meanwhile).
const LAST_USED_FLUSH: Duration = Duration::from_secs(1);

/// Keys used and not yet written, and when each was last queued.
#[derive(Default)]
struct LastUsedState {
    queued_at: HashMap<String, Instant>,
    pending: HashMap<String, OffsetDateTime>,
    writer_started: bool,
}

/// Records key use off the request's path: a request only touches a map; one background task
/// writes the queued uses every [`LAST_USED_FLUSH`] in one statement.
#[derive(Clone)]
struct LastUsed {
    pool: PgPool,
    state: Arc<std::sync::Mutex<LastUsedState>>,
}

impl LastUsed {
    fn new(pool: PgPool) -> Self {
        Self { pool, state: Arc::default() }
    }

    /// Queue a use of `key_id`, unless one was queued within [`LAST_USED_EVERY`].
    fn mark(&self, key_id: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.queued_at.get(key_id).is_some_and(|at| at.elapsed() < LAST_USED_EVERY) {
            return;
        }
        if st.queued_at.len() >= MAX_CACHED_KEYS {
            st.queued_at.clear();
        }
        st.queued_at.insert(key_id.to_owned(), Instant::now());
        st.pending.insert(key_id.to_owned(), OffsetDateTime::now_utc());
        if !st.writer_started && tokio::runtime::Handle::try_current().is_ok() {
            st.writer_started = true;
            tokio::spawn(self.clone().write_loop());
        }
    }

    /// Write queued uses until the pool closes.
    async fn write_loop(self) {
        let closed = self.pool.close_event();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                _ = &mut closed => return,
                _ = tokio::time::sleep(LAST_USED_FLUSH) => {}
            }
            let pending = std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).pending);
            if pending.is_empty() {
                continue;
            }
            let (ids, times): (Vec<String>, Vec<OffsetDateTime>) = pending.into_iter().unzip();
            // A later time only: several instances write the same key in any order.
            let written = sqlx::query(
                "UPDATE api_keys k SET last_used_at = u.at
                   FROM unnest($1::text[], $2::timestamptz[]) AS u(key_id, at)
                  WHERE k.key_id = u.key_id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
            )
            .bind(&ids)
            .bind(&times)
            .execute(&self.pool)
            .await;
            match written {
                Ok(_) => metrics::counter!("allot_api_key_last_used_writes_total").increment(ids.len() as u64),
                // Lost uses are written again on the key's next use after LAST_USED_EVERY.
                Err(e) => tracing::warn!(error = %e, keys = ids.len(), "writing API keys' last use failed"),
            }
        }
    }
}
