//! A client's discount per product: off the face value, in basis points.

use allot_shared::{ApiError, ErrorCode};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Discount, client_exists};
use crate::error::AppError;
use crate::ops::audit::{self, Actor};

async fn product_exists(conn: &mut PgConnection, product: &str) -> Result<(), AppError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM products WHERE id = $1").bind(product).fetch_optional(conn).await?;
    found.map(|_| ()).ok_or_else(|| AppError::api(ErrorCode::NotFound, format!("no product {product:?}")))
}

/// Set `client`'s discount on `product` to `bps` basis points (0..=10000); audited as
/// `discount.set` with the previous value.
pub async fn set_discount(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    product: &str,
    bps: i64,
) -> Result<Discount, AppError> {
    if !(0..=10_000).contains(&bps) {
        return Err(ApiError::validation("discount_bps", "must be 0 to 10000 basis points (100 = 1 %)").into());
    }
    let bps = bps as i32;
    let mut tx = pool.begin().await?;
    client_exists(&mut tx, client).await?;
    product_exists(&mut tx, product).await?;
    let previous: Option<i32> = sqlx::query_scalar(
        "SELECT discount_bps FROM client_discounts WHERE client_id = $1 AND product_id = $2 FOR UPDATE",
    )
    .bind(client)
    .bind(product)
    .fetch_optional(&mut *tx)
    .await?;
    let discount: Discount = sqlx::query_as(
        "INSERT INTO client_discounts (client_id, product_id, discount_bps) VALUES ($1, $2, $3)
         ON CONFLICT (client_id, product_id) DO UPDATE SET discount_bps = EXCLUDED.discount_bps, updated_at = now()
         RETURNING client_id, product_id, discount_bps, updated_at",
    )
    .bind(client)
    .bind(product)
    .bind(bps)
    .fetch_one(&mut *tx)
    .await?;
    let change = serde_json::json!({ "product_id": product, "discount_bps": bps, "previous_bps": previous });
    audit::record(&mut tx, actor, "discount.set", &client.to_string(), change).await?;
    tx.commit().await?;
    Ok(discount)
}

/// Remove `client`'s discount on `product` (it pays face value); returns the discount it had,
/// `None` when it had none (nothing written, no audit row). Audited as `discount.clear`.
pub async fn clear_discount(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    product: &str,
) -> Result<Option<i32>, AppError> {
    let mut tx = pool.begin().await?;
    client_exists(&mut tx, client).await?;
    product_exists(&mut tx, product).await?;
    let removed: Option<i32> = sqlx::query_scalar(
        "DELETE FROM client_discounts WHERE client_id = $1 AND product_id = $2 RETURNING discount_bps",
    )
    .bind(client)
    .bind(product)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(bps) = removed {
        let change = serde_json::json!({ "product_id": product, "previous_bps": bps });
        audit::record(&mut tx, actor, "discount.clear", &client.to_string(), change).await?;
    }
    tx.commit().await?;
    Ok(removed)
}
