//! Products, card loads and cache rebuilds. Each writes Postgres first and the cache second;
//! the audit row is written in the transaction of the change.

use allot_shared::{ApiError, Currency, Denomination};
use sqlx::PgPool;
use time::OffsetDateTime;

use super::audit::{self, Actor};
use crate::cache::{CacheState, InventoryCache};
use crate::crypto::{CardSecret, KeyRing, card_aad};
use crate::error::AppError;

/// Rows per INSERT when loading cards.
const LOAD_BATCH: usize = 1000;

/// Create (or update) a product and the denominations it is offered in.
pub async fn upsert_product(
    pool: &PgPool,
    actor: &Actor,
    id: &str,
    name: &str,
    currency: Currency,
    denominations: &[Denomination],
) -> Result<Vec<i64>, AppError> {
    allot_shared::ident::validate_product_id(id).map_err(|e| ApiError::validation("product_id", e))?;
    let minors = denominations
        .iter()
        .map(|d| {
            d.to_minor(currency.exponent()).map_err(|e| ApiError::validation("denominations", format!("{d}: {e}")))
        })
        .collect::<Result<Vec<i64>, ApiError>>()?;
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
        let reason = format!("product {id} exists in {stored}; its currency cannot change");
        return Err(ApiError::validation("currency", reason).into());
    }
    sqlx::query(
        "INSERT INTO product_denominations (product_id, denomination_minor)
         SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(&minors)
    .execute(&mut *tx)
    .await?;
    let change = serde_json::json!({ "name": name, "currency": currency.code(), "denominations": minors });
    audit::record(&mut tx, actor, "product.upsert", id, change).await?;
    tx.commit().await?;
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

/// Whether `code` may be a card code: 1-512 characters, none of them control characters.
pub fn valid_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 512 && !code.chars().any(char::is_control)
}

/// Load cards of one denomination: encrypted, deduplicated by keyed digest, all or nothing.
/// Then, after the commit, add them to the product's cache set if it is built. (Files go
/// through imports, which stream; this is for cards already in memory: demo data, tests.)
pub async fn load_cards(
    pool: &PgPool,
    actor: &Actor,
    cache: Option<&InventoryCache>,
    keys: &KeyRing,
    product_id: &str,
    denomination_minor: i64,
    cards: &[NewCard],
) -> Result<Vec<i64>, AppError> {
    if cards.iter().any(|c| !valid_code(&c.code)) {
        return Err(
            ApiError::validation("code", "card codes must be 1-512 characters without control characters").into()
        );
    }
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
            let secret = serde_json::to_vec(&CardSecret { code: c.code.clone(), pin: c.pin.clone() })
                .map_err(|e| AppError::Internal(e.into()))?;
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
        .await?;
        ids.extend(batch_ids);
    }
    let change = serde_json::json!({ "denomination_minor": denomination_minor, "count": ids.len() });
    audit::record(&mut tx, actor, "inventory.load", product_id, change).await?;
    tx.commit().await?;
    refresh_planner_statistics(pool).await;
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
pub async fn add_to_cache(
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
pub async fn refresh_planner_statistics(pool: &PgPool) {
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

/// Why a bucket named by an operator (product id and denomination) does not resolve.
#[derive(Debug)]
pub enum BucketError {
    /// No product has this id.
    NoProduct,
    /// The product is not offered in this denomination (formatted in its currency).
    NotOffered(String),
    /// The denomination is malformed, or finer than the currency allows.
    BadDenomination(String),
    /// Postgres failed.
    Store(AppError),
}

impl BucketError {
    /// The answer when a body or query named the bucket: `400 VALIDATION_FAILED` naming the field.
    pub fn as_field(self, product_id: &str) -> AppError {
        match self {
            BucketError::NoProduct => ApiError::validation("product_id", format!("no product {product_id:?}")).into(),
            BucketError::NotOffered(d) => {
                ApiError::validation("denomination", format!("product {product_id:?} is not offered in {d}")).into()
            }
            BucketError::BadDenomination(reason) => ApiError::validation("denomination", reason).into(),
            BucketError::Store(e) => e,
        }
    }

    /// The answer when the path named the bucket: `404 NOT_FOUND` for a bucket that does not
    /// exist, `400` for a malformed denomination.
    pub fn as_resource(self, product_id: &str) -> AppError {
        use allot_shared::ErrorCode::NotFound;
        match self {
            BucketError::NoProduct => AppError::api(NotFound, format!("no product {product_id:?}")),
            BucketError::NotOffered(d) => {
                AppError::api(NotFound, format!("product {product_id:?} is not offered in {d}"))
            }
            other => other.as_field(product_id),
        }
    }
}

impl From<sqlx::Error> for BucketError {
    fn from(e: sqlx::Error) -> Self {
        BucketError::Store(e.into())
    }
}

/// A bucket as an operator names it (`"25"` and `"25.00"` are the same), read against the
/// product's currency: its denomination in minor units.
pub async fn resolve_bucket(
    conn: &mut sqlx::PgConnection,
    product_id: &str,
    denomination: &str,
) -> Result<i64, BucketError> {
    let currency: Option<String> = sqlx::query_scalar("SELECT currency FROM products WHERE id = $1")
        .bind(product_id)
        .fetch_optional(&mut *conn)
        .await?;
    let currency = currency.ok_or(BucketError::NoProduct)?;
    let currency = Currency::parse(&currency)
        .map_err(|e| BucketError::Store(AppError::Internal(anyhow::anyhow!("stored currency: {e}"))))?;
    let minor = Denomination::parse(denomination)
        .and_then(|d| d.to_minor(currency.exponent()))
        .map_err(|e| BucketError::BadDenomination(e.to_string()))?;
    let offered: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM product_denominations WHERE product_id = $1 AND denomination_minor = $2)",
    )
    .bind(product_id)
    .bind(minor)
    .fetch_one(&mut *conn)
    .await?;
    if !offered {
        return Err(BucketError::NotOffered(currency.format_minor(minor)));
    }
    Ok(minor)
}
