//! Operator actions: clients, keys, products, card loads and cache rebuilds. Each writes
//! Postgres first and the cache second, and records itself in the audit log.

use allot_shared::{ApiKey, Currency, Denomination, Region, api_key::base62_from_random};
use anyhow::{Context, bail};
use rand::RngCore;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cache::{CacheState, InventoryCache};
use crate::crypto::{CardSecret, KeyRing, card_aad};

/// Rows per INSERT when loading cards.
const LOAD_BATCH: usize = 1000;

async fn audit(
    pool: &PgPool,
    actor: &str,
    action: &str,
    subject: &str,
    details: serde_json::Value,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO audit_log (actor, action, subject, details) VALUES ($1, $2, $3, $4)")
        .bind(actor)
        .bind(action)
        .bind(subject)
        .bind(details)
        .execute(pool)
        .await?;
    Ok(())
}

/// Create a client in a region; returns its id.
pub async fn create_client(pool: &PgPool, name: &str, region: &Region, id: Option<Uuid>) -> anyhow::Result<Uuid> {
    let id = id.unwrap_or_else(Uuid::now_v7);
    sqlx::query("INSERT INTO clients (id, name, region) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .bind(name)
        .bind(region.as_str())
        .execute(pool)
        .await?;
    audit(pool, "operator", "client.create", &id.to_string(), serde_json::json!({ "name": name })).await?;
    Ok(id)
}

/// Set a client's requests-per-minute limit at the origin (`None`: the configured default).
pub async fn set_client_rate_limit(pool: &PgPool, client_id: Uuid, per_minute: Option<u32>) -> anyhow::Result<()> {
    if per_minute == Some(0) {
        bail!("the limit must be at least 1 request per minute");
    }
    let limit = per_minute.map(i32::try_from).transpose().context("the limit is too large")?;
    let updated = sqlx::query("UPDATE clients SET rate_limit_per_minute = $2 WHERE id = $1")
        .bind(client_id)
        .bind(limit)
        .execute(pool)
        .await?
        .rows_affected();
    if updated == 0 {
        bail!("no client with id {client_id}");
    }
    let change = serde_json::json!({ "rate_limit_per_minute": per_minute });
    audit(pool, "operator", "client.rate_limit", &client_id.to_string(), change).await?;
    Ok(())
}

/// Issue a new API key for a client; the returned key is shown once and never stored.
pub async fn issue_key(pool: &PgPool, client_id: Uuid, label: Option<&str>) -> anyhow::Result<ApiKey> {
    let region: Option<String> =
        sqlx::query_scalar("SELECT region FROM clients WHERE id = $1").bind(client_id).fetch_optional(pool).await?;
    let Some(region) = region else { bail!("no client with id {client_id}") };
    let region = Region::parse(&region).map_err(anyhow::Error::msg)?;
    let mut random = [0u8; 128];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let key_id =
        base62_from_random(&random[..40], allot_shared::api_key::KEY_ID_LEN).context("not enough randomness")?;
    let secret =
        base62_from_random(&random[40..], allot_shared::api_key::SECRET_LEN).context("not enough randomness")?;
    let key = ApiKey::new(region, &key_id, &secret).map_err(anyhow::Error::msg)?;
    sqlx::query("INSERT INTO api_keys (key_id, client_id, secret_digest, label) VALUES ($1, $2, $3, $4)")
        .bind(key.key_id())
        .bind(client_id)
        .bind(&key.secret_digest()[..])
        .bind(label)
        .execute(pool)
        .await?;
    audit(pool, "operator", "key.issue", key.key_id(), serde_json::json!({ "client_id": client_id })).await?;
    Ok(key)
}

/// Revoke a key; effective everywhere within the key cache's TTL.
pub async fn revoke_key(pool: &PgPool, key_id: &str) -> anyhow::Result<()> {
    let n = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL")
        .bind(key_id)
        .execute(pool)
        .await?
        .rows_affected();
    if n == 0 {
        bail!("no active key with id {key_id}");
    }
    audit(pool, "operator", "key.revoke", key_id, serde_json::json!({})).await
}

/// Create (or update) a product and the denominations it is offered in.
pub async fn upsert_product(
    pool: &PgPool,
    id: &str,
    name: &str,
    currency: Currency,
    denominations: &[Denomination],
) -> anyhow::Result<Vec<i64>> {
    allot_shared::ident::validate_product_id(id).map_err(|e| anyhow::anyhow!("product id: {e}"))?;
    let minors = denominations
        .iter()
        .map(|d| d.to_minor(currency.exponent()).map_err(|e| anyhow::anyhow!("denomination {d}: {e}")))
        .collect::<anyhow::Result<Vec<i64>>>()?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO products (id, name, currency) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name
         WHERE products.currency = EXCLUDED.currency",
    )
    .bind(id)
    .bind(name)
    .bind(currency.code())
    .execute(&mut *tx)
    .await?;
    let stored: String =
        sqlx::query_scalar("SELECT currency FROM products WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
    if stored != currency.code() {
        bail!("product {id} exists in {stored}; its currency cannot change");
    }
    sqlx::query(
        "INSERT INTO product_denominations (product_id, denomination_minor)
         SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(&minors)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    audit(pool, "operator", "product.upsert", id, serde_json::json!({ "denominations": minors })).await?;
    Ok(minors)
}

/// One card to load.
#[derive(Debug, Clone)]
pub struct NewCard {
    /// The redemption code.
    pub code: String,
    /// The PIN, if the card has one.
    pub pin: Option<String>,
    /// When it expires.
    pub expires_at: Option<OffsetDateTime>,
}

/// Load cards of one denomination: encrypted, deduplicated by keyed digest, all or nothing.
/// Then, after the commit, add them to the product's cache set if it is built.
pub async fn load_cards(
    pool: &PgPool,
    cache: Option<&InventoryCache>,
    keys: &KeyRing,
    product_id: &str,
    denomination_minor: i64,
    cards: &[NewCard],
) -> anyhow::Result<Vec<i64>> {
    let aad = card_aad(product_id, denomination_minor);
    let mut ids = Vec::with_capacity(cards.len());
    let mut tx = pool.begin().await?;
    for batch in cards.chunks(LOAD_BATCH) {
        let mut ct = Vec::with_capacity(batch.len());
        let mut nonces = Vec::with_capacity(batch.len());
        let mut key_ids = Vec::with_capacity(batch.len());
        let mut digests = Vec::with_capacity(batch.len());
        let mut expires = Vec::with_capacity(batch.len());
        for c in batch {
            if c.code.is_empty() || c.code.len() > 512 || c.code.chars().any(char::is_control) {
                bail!("card codes must be 1-512 characters without control characters");
            }
            let secret = serde_json::to_vec(&CardSecret { code: c.code.clone(), pin: c.pin.clone() })?;
            let sealed = keys.seal(&secret, &aad);
            ct.push(sealed.ciphertext);
            nonces.push(sealed.nonce);
            key_ids.push(sealed.key_id);
            digests.push(keys.code_digest(&c.code).to_vec());
            expires.push(c.expires_at);
        }
        let batch_ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO inventories (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id, code_digest, expires_at)
             SELECT $1, $2, t.ct, t.nonce, t.key_id, t.digest, t.expires
               FROM unnest($3::bytea[], $4::bytea[], $5::text[], $6::bytea[], $7::timestamptz[])
                    AS t(ct, nonce, key_id, digest, expires)
             RETURNING id",
        )
        .bind(product_id)
        .bind(denomination_minor)
        .bind(&ct)
        .bind(&nonces)
        .bind(&key_ids)
        .bind(&digests)
        .bind(&expires)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint() == Some("inventories_code_digest_unique") => {
                anyhow::anyhow!("a card with one of these codes is already loaded; nothing was loaded")
            }
            sqlx::Error::Database(db) if db.constraint() == Some("inventories_denomination_offered") => {
                anyhow::anyhow!("product {product_id} is not offered in this denomination; add it first; nothing was loaded")
            }
            _ => anyhow::Error::new(e),
        })?;
        ids.extend(batch_ids);
    }
    tx.commit().await?;
    refresh_planner_statistics(pool).await;
    audit(
        pool,
        "operator",
        "inventory.load",
        product_id,
        serde_json::json!({ "denomination_minor": denomination_minor, "count": ids.len() }),
    )
    .await?;
    if let Some(cache) = cache
        && let Err(e) = add_to_cache(pool, cache, product_id, denomination_minor, &ids).await
    {
        tracing::warn!(error = %e, "loaded cards not added to the cache; the reconciler will add them");
    }
    Ok(ids)
}

/// Newly loaded ids into the product's set: a built set takes them; a cold one (a new product,
/// say) is built now, so the first requests after an import are served from the cache rather
/// than from Postgres while a rebuild of the whole import runs.
async fn add_to_cache(
    pool: &PgPool,
    cache: &InventoryCache,
    product_id: &str,
    denomination_minor: i64,
    ids: &[i64],
) -> anyhow::Result<()> {
    let added = cache.put_back(product_id, denomination_minor, ids).await?;
    if added == 0 && !ids.is_empty() && cache.state(product_id).await? == CacheState::Cold {
        rebuild_product_cache(pool, cache, product_id).await?;
    }
    Ok(())
}

/// After a bulk load the planner's statistics are stale (on a new region, absent) until
/// autoanalyze runs, tens of seconds later; meanwhile it may plan the allocation statements
/// as if the table were empty, and allocations crawl. So a load ends with ANALYZE of the table
/// it changed. (Only that one: analyzing a still-empty `allocations` pins its estimate at zero
/// rows, and allocations ran a third slower until autoanalyze caught up.)
async fn refresh_planner_statistics(pool: &PgPool) {
    if let Err(e) = sqlx::query("ANALYZE inventories").execute(pool).await {
        tracing::warn!(error = %e, "ANALYZE after the load failed; autoanalyze will catch up");
    }
}

/// Rebuild one product's cache set from Postgres's active cards; returns how many.
pub async fn rebuild_product_cache(pool: &PgPool, cache: &InventoryCache, product_id: &str) -> anyhow::Result<usize> {
    let members: Vec<(i64, i64)> =
        sqlx::query_as("SELECT denomination_minor, id FROM inventories WHERE product_id = $1 AND status = 'active'")
            .bind(product_id)
            .fetch_all(pool)
            .await?;
    cache.replace(product_id, &members).await?;
    Ok(members.len())
}

/// Rebuild every product's cache set; returns (products, cards).
pub async fn rebuild_all_caches(pool: &PgPool, cache: &InventoryCache) -> anyhow::Result<(usize, usize)> {
    let products: Vec<String> = sqlx::query_scalar("SELECT id FROM products ORDER BY id").fetch_all(pool).await?;
    let mut cards = 0;
    for p in &products {
        cards += rebuild_product_cache(pool, cache, p).await?;
    }
    Ok((products.len(), cards))
}
