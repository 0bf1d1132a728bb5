//! Idempotency: a key that is live gets its stored allocation back, re-rendered byte for byte,
//! when the request means the same; a different request under it is a mismatch.

use std::sync::Arc;

use allot_shared::ErrorCode;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use super::request::NewAllocation;
use super::{Outcome, render, sql};
use crate::coalescer::{BatchHandler, Coalescer};
use crate::crypto::KeyRing;
use crate::error::AppError;

/// The allocation live under a key, with the fingerprint it was made with.
pub type LiveKey = (Vec<u8>, Uuid);

/// The allocation live under the request's key, if any.
pub async fn live_key(pool: &PgPool, a: &NewAllocation) -> Result<Option<LiveKey>, AppError> {
    Ok(sqlx::query_as(sql::LIVE_KEY).bind(a.client_id).bind(&a.key).fetch_optional(pool).await?)
}

/// A key lookup that failed for the whole batch it was in.
pub type LookupFailed = String;

/// The coalesced key lookup.
pub type KeyLookup = Coalescer<Arc<NewAllocation>, Result<Option<LiveKey>, LookupFailed>>;

/// The same lookup for every request waiting, in one read-only statement: under a flash sale
/// every request after the sell-out asks, and one read per batch replaces one per request.
pub async fn live_key_coalesced(
    lookup: Option<&KeyLookup>,
    pool: &PgPool,
    a: &Arc<NewAllocation>,
) -> Result<Option<LiveKey>, AppError> {
    match lookup.map(|l| l.submit(a.clone())) {
        Some(answer) => match answer.await {
            Ok(Ok(live)) => Ok(live),
            // The batch failed as a whole: ask alone, so this request gets its own error.
            Ok(Err(_)) | Err(_) => live_key(pool, a).await,
        },
        None => live_key(pool, a).await,
    }
}

/// Looks up the keys of a batch of requests in one statement.
pub struct KeyLookupStage {
    pool: PgPool,
}

impl KeyLookupStage {
    /// A stage reading through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl BatchHandler<Arc<NewAllocation>, Result<Option<LiveKey>, LookupFailed>> for KeyLookupStage {
    async fn handle(&mut self, batch: Vec<Arc<NewAllocation>>) -> Vec<Result<Option<LiveKey>, LookupFailed>> {
        let rows: Result<Vec<(i64, Vec<u8>, Uuid)>, sqlx::Error> = sqlx::query_as(sql::LIVE_KEYS)
            .bind(batch.iter().map(|a| a.client_id).collect::<Vec<_>>())
            .bind(batch.iter().map(|a| a.key.as_str()).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await;
        match rows {
            Ok(rows) => {
                let mut live: Vec<Option<LiveKey>> = vec![None; batch.len()];
                for (ord, fingerprint, id) in rows {
                    live[(ord - 1) as usize] = Some((fingerprint, id));
                }
                live.into_iter().map(Ok).collect()
            }
            Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
        }
    }
}

/// The key was found live by a write: replay it (or say it is still in progress).
pub async fn replay(pool: &PgPool, keys: &KeyRing, a: &NewAllocation) -> Result<Outcome, AppError> {
    let Some(live) = live_key(pool, a).await? else {
        return Err(AppError::api(
            ErrorCode::IdempotencyInProgress,
            "a request with this Idempotency-Key is still being processed; retry shortly",
        ));
    };
    replay_live(pool, keys, a, live).await
}

/// The same request gets the stored allocation; another request is a mismatch.
pub async fn replay_live(pool: &PgPool, keys: &KeyRing, a: &NewAllocation, live: LiveKey) -> Result<Outcome, AppError> {
    let (fingerprint, id) = live;
    if fingerprint != a.fingerprint {
        return Err(AppError::api(
            ErrorCode::IdempotencyMismatch,
            "this Idempotency-Key was used with a different request body",
        ));
    }
    let span = tracing::info_span!("allocation.replay");
    match render::read_stored(pool, keys, a.client_id, id).instrument(span).await? {
        Some(body) => Ok(Outcome::Replayed(id, body)),
        None => Err(AppError::Internal(anyhow::anyhow!("allocation {id} vanished while being replayed"))),
    }
}
