//! Clients and their API keys. Key secrets are shown once and stored only as digests.

use allot_shared::{ApiError, ApiKey, ErrorCode, Region, api_key::base62_from_random};
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

use super::audit::{self, Actor};
use crate::error::AppError;

fn no_client(id: Uuid) -> AppError {
    AppError::api(ErrorCode::NotFound, format!("no client with id {id}"))
}

/// Create a client in a region; returns its id. With an `id` that exists, nothing changes.
pub async fn create_client(
    pool: &PgPool,
    actor: &Actor,
    name: &str,
    region: &Region,
    id: Option<Uuid>,
) -> Result<Uuid, AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation("name", "must be 1-200 characters").into());
    }
    let id = id.unwrap_or_else(Uuid::now_v7);
    let mut tx = pool.begin().await?;
    let created = sqlx::query("INSERT INTO clients (id, name, region) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .bind(name)
        .bind(region.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if created == 1 {
        let change = serde_json::json!({ "name": name, "region": region.as_str() });
        audit::record(&mut tx, actor, "client.create", &id.to_string(), change).await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Set a client's requests-per-minute limit at the origin (`None`: the configured default).
pub async fn set_client_rate_limit(
    pool: &PgPool,
    actor: &Actor,
    client_id: Uuid,
    per_minute: Option<u32>,
) -> Result<(), AppError> {
    let limit = match per_minute {
        Some(0) => return Err(ApiError::validation("per_minute", "must be at least 1 request per minute").into()),
        Some(n) => Some(i32::try_from(n).map_err(|_| ApiError::validation("per_minute", "is too large"))?),
        None => None,
    };
    let mut tx = pool.begin().await?;
    let updated = sqlx::query("UPDATE clients SET rate_limit_per_minute = $2 WHERE id = $1")
        .bind(client_id)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if updated == 0 {
        return Err(no_client(client_id));
    }
    let change = serde_json::json!({ "rate_limit_per_minute": per_minute });
    audit::record(&mut tx, actor, "client.rate_limit", &client_id.to_string(), change).await?;
    tx.commit().await?;
    Ok(())
}

/// A fresh key for a client of `region` (not stored).
fn new_key(region: Region) -> Result<ApiKey, AppError> {
    let mut random = [0u8; 128];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let key_id = base62_from_random(&random[..40], allot_shared::api_key::KEY_ID_LEN);
    let secret = base62_from_random(&random[40..], allot_shared::api_key::SECRET_LEN);
    let (Some(key_id), Some(secret)) = (key_id, secret) else {
        return Err(AppError::Internal(anyhow::anyhow!("not enough randomness for a key")));
    };
    ApiKey::new(region, &key_id, &secret).map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))
}

/// Issue a new API key for a client; the returned key is shown once and never stored.
pub async fn issue_key(pool: &PgPool, actor: &Actor, client_id: Uuid, label: Option<&str>) -> Result<ApiKey, AppError> {
    let mut tx = pool.begin().await?;
    let key = insert_key(&mut tx, client_id, label).await?;
    let change = serde_json::json!({ "client_id": client_id, "label": label });
    audit::record(&mut tx, actor, "key.issue", key.key_id(), change).await?;
    tx.commit().await?;
    Ok(key)
}

/// Insert a new key of `client_id` in the caller's transaction.
pub(super) async fn insert_key(
    tx: &mut sqlx::PgConnection,
    client_id: Uuid,
    label: Option<&str>,
) -> Result<ApiKey, AppError> {
    if label.is_some_and(|l| l.chars().count() > 200) {
        return Err(ApiError::validation("label", "must be at most 200 characters").into());
    }
    let region: Option<String> =
        sqlx::query_scalar("SELECT region FROM clients WHERE id = $1").bind(client_id).fetch_optional(&mut *tx).await?;
    let region = region.ok_or_else(|| no_client(client_id))?;
    let region = Region::parse(&region).map_err(|e| AppError::Internal(anyhow::anyhow!("stored region: {e}")))?;
    let key = new_key(region)?;
    sqlx::query("INSERT INTO api_keys (key_id, client_id, secret_digest, label) VALUES ($1, $2, $3, $4)")
        .bind(key.key_id())
        .bind(client_id)
        .bind(&key.secret_digest()[..])
        .bind(label)
        .execute(&mut *tx)
        .await?;
    Ok(key)
}

/// Revoke a key; effective everywhere within the key cache's TTL.
pub async fn revoke_key(pool: &PgPool, actor: &Actor, key_id: &str) -> Result<(), AppError> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL")
        .bind(key_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(AppError::api(ErrorCode::NotFound, format!("no active key with id {key_id}")));
    }
    audit::record(&mut tx, actor, "key.revoke", key_id, serde_json::json!({})).await?;
    tx.commit().await?;
    Ok(())
}
