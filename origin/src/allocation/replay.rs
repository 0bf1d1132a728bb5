//! Idempotency: a key that is live gets its stored allocation back, re-rendered byte for byte,
//! when the request means the same; a different request under it is a mismatch.

use allot_shared::ErrorCode;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use super::request::NewAllocation;
use super::{Outcome, render, sql};
use crate::crypto::KeyRing;
use crate::error::AppError;

/// The allocation live under a key, with the fingerprint it was made with.
pub type LiveKey = (Vec<u8>, Uuid);

/// The allocation live under the request's key, if any.
pub async fn live_key(pool: &PgPool, a: &NewAllocation) -> Result<Option<LiveKey>, AppError> {
    Ok(sqlx::query_as(sql::LIVE_KEY).bind(a.client_id).bind(&a.key).fetch_optional(pool).await?)
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
        Some(body) => Ok(Outcome::Replayed(body)),
        None => Err(AppError::Internal(anyhow::anyhow!("allocation {id} vanished while being replayed"))),
    }
}
