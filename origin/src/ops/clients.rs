//! Clients and their API keys. Key secrets are shown once and stored only as digests; a
//! rotated key keeps working until its `expires_at`, while its successor is live at once.

use allot_shared::{ApiError, ApiKey, ErrorCode, Region, api_key::base62_from_random};
use rand::RngCore;
use serde::Serialize;
use sqlx::PgPool;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::audit::{self, Actor};
use super::page;
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

/// A client as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = ClientEntry)]
pub struct ClientSummary {
    /// Client id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Home region (the origin that created it).
    pub region: String,
    /// Plan.
    pub plan: String,
    /// Whether its keys work.
    #[schema(value_type = ClientStatus)]
    pub status: String,
    /// Its own requests-per-minute limit; null for the configured default.
    #[schema(required = true, minimum = 1)]
    pub rate_limit_per_minute: Option<i32>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Keys that authenticate now (live or expiring).
    pub usable_keys: i64,
    /// The latest use of any of its keys (written at most about a minute late); null if never.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub last_used_at: Option<OffsetDateTime>,
}

/// One API key as operators see it: never its secret.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = KeyEntry)]
pub struct KeyRecord {
    /// The key's public id (the part after `allot_<region>_`).
    pub key_id: String,
    /// Its label; null when none.
    #[schema(required = true)]
    pub label: Option<String>,
    /// Issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last authenticated request (written at most about a minute late); null if never.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it stops working (set by a rotation); null when it does not.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub expires_at: Option<OffsetDateTime>,
    /// When it was revoked; null while not.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub revoked_at: Option<OffsetDateTime>,
    /// Its state now.
    #[schema(value_type = KeyState)]
    pub state: String,
}

/// A client with every one of its keys, newest first. Its schema is [`ClientSummary`]'s with
/// `keys` added (see `openapi::ops::clients`): a derived one would be an `allOf`, which cannot
/// say that no other field comes.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDetail {
    /// The client.
    #[serde(flatten)]
    pub client: ClientSummary,
    /// Its keys, newest first.
    pub keys: Vec<KeyRecord>,
}

/// The columns of a [`ClientSummary`], over `clients c`.
const CLIENT_COLUMNS: &str = "c.id, c.name, c.region, c.plan, c.status, c.rate_limit_per_minute, c.created_at,
        (SELECT count(*) FROM api_keys k WHERE k.client_id = c.id AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > now())) AS usable_keys,
        (SELECT max(k.last_used_at) FROM api_keys k WHERE k.client_id = c.id) AS last_used_at";

/// Which clients to list: a status, and a page by id.
#[derive(Debug, Clone, Default)]
pub struct ClientFilter {
    /// Only `active` or only `suspended` clients.
    pub status: Option<String>,
    /// Only clients with an id above this (the cursor).
    pub after: Option<Uuid>,
    /// At most this many (1-[`super::page::MAX_LIMIT`]).
    pub limit: u32,
}

/// The tag of client listing cursors (their key: the last id of the previous page).
const CURSOR_TAG: &str = "c1";

/// Read a client listing's cursor (opaque to callers).
pub fn parse_client_cursor(cursor: &str) -> Result<Uuid, AppError> {
    page::decode(CURSOR_TAG, cursor)
}

/// One page of clients in id order, and the cursor of the next.
pub async fn list_clients(
    pool: &PgPool,
    filter: &ClientFilter,
) -> Result<(Vec<ClientSummary>, Option<String>), AppError> {
    if let Some(s) = &filter.status
        && s != "active"
        && s != "suspended"
    {
        return Err(ApiError::validation("status", "must be active or suspended").into());
    }
    let limit = page::limit(Some(filter.limit), page::DEFAULT_LIMIT)?;
    let sql = format!(
        "SELECT {CLIENT_COLUMNS} FROM clients c
          WHERE ($1::text IS NULL OR c.status = $1) AND ($2::uuid IS NULL OR c.id > $2)
          ORDER BY c.id LIMIT $3"
    );
    let mut rows: Vec<ClientSummary> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&filter.status)
        .bind(filter.after)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await?;
    let next = page::next_cursor(&mut rows, limit, CURSOR_TAG, |c| c.id);
    Ok((rows, next))
}

/// A client and all its keys.
pub async fn show_client(pool: &PgPool, id: Uuid) -> Result<ClientDetail, AppError> {
    let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients c WHERE c.id = $1");
    let client: Option<ClientSummary> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
    let client = client.ok_or_else(|| no_client(id))?;
    let keys: Vec<KeyRecord> = sqlx::query_as(
        "SELECT key_id, label, created_at, last_used_at, expires_at, revoked_at,
                CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                     WHEN expires_at IS NULL THEN 'live'
                     WHEN expires_at > now() THEN 'expiring'
                     ELSE 'expired' END AS state
           FROM api_keys WHERE client_id = $1 ORDER BY created_at DESC, key_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(ClientDetail { client, keys })
}

/// Suspend (`active = false`) or resume a client; its keys get `403` while it is suspended,
/// within the key cache's TTL. Returns whether the status changed (only a change is audited).
pub async fn set_client_active(pool: &PgPool, actor: &Actor, id: Uuid, active: bool) -> Result<bool, AppError> {
    let (from, to, action) =
        if active { ("suspended", "active", "client.resume") } else { ("active", "suspended", "client.suspend") };
    let mut tx = pool.begin().await?;
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM clients WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let status = status.ok_or_else(|| no_client(id))?;
    if status != from {
        debug_assert_eq!(status, to, "a client is active or suspended");
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query("UPDATE clients SET status = $2 WHERE id = $1").bind(id).bind(to).execute(&mut *tx).await?;
    audit::record(&mut tx, actor, action, &id.to_string(), serde_json::json!({ "from": from, "to": to })).await?;
    tx.commit().await?;
    Ok(true)
}

/// The longest a rotated-out key may keep working.
pub const MAX_ROTATION_OVERLAP: Duration = Duration::days(30);

/// When a rotated-out key stops: `overlap_secs` from now, or at `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationEnd {
    /// This many seconds from now (0 to [`MAX_ROTATION_OVERLAP`]).
    OverlapSecs(u64),
    /// At this time (now to now + [`MAX_ROTATION_OVERLAP`]).
    Until(OffsetDateTime),
}

impl RotationEnd {
    /// The old key's expiry, checked against the bounds.
    fn expires_at(self, now: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
        let max = MAX_ROTATION_OVERLAP.whole_seconds();
        match self {
            RotationEnd::OverlapSecs(s) if s <= max as u64 => Ok(now + Duration::seconds(s as i64)),
            RotationEnd::OverlapSecs(_) => Err(ApiError::validation("overlap_secs", format!("must be 0 to {max}"))),
            RotationEnd::Until(t) if t < now => Err(ApiError::validation("until", "must not be in the past")),
            RotationEnd::Until(t) if t > now + MAX_ROTATION_OVERLAP => {
                Err(ApiError::validation("until", "must be within 30 days"))
            }
            RotationEnd::Until(t) => Ok(t),
        }
    }
}

/// A rotation's result: the new key (shown once) and when the old one stops.
pub struct Rotated {
    /// The client both keys belong to.
    pub client_id: Uuid,
    /// The new key, live at once.
    pub key: ApiKey,
    /// The label both share.
    pub label: Option<String>,
    /// The old key's id.
    pub old_key_id: String,
    /// When the old key stops working.
    pub old_expires_at: OffsetDateTime,
}

/// Rotate a key: a new key for the same client and label, live at once; the old one works
/// until `end`. Only a live key (not revoked, not already rotated out) can be rotated.
pub async fn rotate_key(pool: &PgPool, actor: &Actor, key_id: &str, end: RotationEnd) -> Result<Rotated, AppError> {
    let mut tx = pool.begin().await?;
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
    let old_expires_at = end.expires_at(now)?;
    let old: Option<(Uuid, Option<String>, bool, Option<OffsetDateTime>)> = sqlx::query_as(
        "SELECT client_id, label, revoked_at IS NOT NULL, expires_at FROM api_keys WHERE key_id = $1 FOR UPDATE",
    )
    .bind(key_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((client_id, label, revoked, expires_at)) = old else {
        return Err(AppError::api(ErrorCode::NotFound, format!("no key with id {key_id}")));
    };
    if revoked {
        return Err(ApiError::validation("key_id", "the key is revoked; issue a new key instead").into());
    }
    if let Some(t) = expires_at {
        let t = crate::allocation::format_time(t);
        let reason = format!("the key is already rotated out (it expires at {t}); rotate its successor instead");
        return Err(ApiError::validation("key_id", reason).into());
    }
    let key = insert_key(&mut tx, client_id, label.as_deref()).await?;
    sqlx::query("UPDATE api_keys SET expires_at = $2 WHERE key_id = $1")
        .bind(key_id)
        .bind(old_expires_at)
        .execute(&mut *tx)
        .await?;
    let change = serde_json::json!({
        "client_id": client_id,
        "new_key_id": key.key_id(),
        "old_expires_at": old_expires_at.format(&Rfc3339).unwrap_or_default(),
    });
    audit::record(&mut tx, actor, "key.rotate", key_id, change).await?;
    tx.commit().await?;
    Ok(Rotated { client_id, key, label, old_key_id: key_id.to_owned(), old_expires_at })
}

// The values of a text column, named for the OpenAPI document (the column is read as text).
/// Whether a client's keys work: `suspended` keys get `403` on the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientStatus {
    /// Its keys work.
    Active,
    /// Its keys get `403 FORBIDDEN` (within the key cache's TTL).
    Suspended,
}

// The values of a text column, named for the OpenAPI document (the column is read as text).
/// A key's state: `live` (no expiry), `expiring` (works until `expires_at`), `expired`,
/// `revoked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Works, with no expiry.
    Live,
    /// Rotated out: works until `expires_at`.
    Expiring,
    /// Past its `expires_at`.
    Expired,
    /// Revoked.
    Revoked,
}
