//! The one way an allocation becomes a response body: a fresh allocation, a replay and a read
//! all go through [`render`], so a replay is byte for byte the first response — unless an
//! operator voided one of its cards since, which the body then shows (`voided_at`).

use allot_shared::{AllocatedCard, AllocationResponse, Currency};
use bytes::Bytes;
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::sql;
use crate::crypto::{CardSecret, KeyRing, card_aad};
use crate::db::Db;
use crate::error::AppError;

/// A card claimed for an allocation, still sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedCard {
    /// Card id.
    pub id: i64,
    /// Its place in the allocation (the order cards are listed in).
    pub position: i16,
    /// Sealed code (and PIN).
    pub code_ciphertext: Vec<u8>,
    /// Its nonce.
    pub code_nonce: Vec<u8>,
    /// The id of the key that sealed it.
    pub code_key_id: String,
    /// Expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// When an operator voided it; never set for a card just claimed (only active cards are).
    #[sqlx(default)]
    pub voided_at: Option<OffsetDateTime>,
}

/// An allocation's fields, everything the body holds besides the cards.
#[derive(Debug, Clone)]
pub struct AllocationHead {
    /// Allocation id.
    pub id: Uuid,
    /// Product.
    pub product_id: String,
    /// The product's currency.
    pub currency: Currency,
    /// Denomination in minor units.
    pub denomination_minor: i64,
    /// Cards allocated.
    pub quantity: u32,
    /// The caller's reference.
    pub client_reference: Option<String>,
    /// Commit time.
    pub created_at: OffsetDateTime,
}

/// Format a timestamp the one way the API does (RFC 3339, UTC).
pub fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The response body of an allocation; `cards` must be in their positions.
pub fn render(keys: &KeyRing, head: &AllocationHead, cards: &[ClaimedCard]) -> Result<Bytes, AppError> {
    let response = response(keys, head, cards)?;
    Ok(Bytes::from(serde_json::to_vec(&response).map_err(|e| AppError::Internal(e.into()))?))
}

/// The allocation document, codes opened; `cards` must be in their positions.
pub fn response(keys: &KeyRing, head: &AllocationHead, cards: &[ClaimedCard]) -> Result<AllocationResponse, AppError> {
    debug_assert_eq!(cards.len(), head.quantity as usize, "an allocation has exactly its quantity of cards");
    debug_assert!(cards.windows(2).all(|w| w[0].position < w[1].position), "positions are unique and ordered");
    let aad = card_aad(&head.product_id, head.denomination_minor);
    let mut out = Vec::with_capacity(cards.len());
    for c in cards {
        let secret = open_card(keys, &aad, c)?;
        out.push(AllocatedCard {
            card_id: c.id,
            code: secret.code,
            pin: secret.pin,
            expires_at: c.expires_at.map(format_time),
            voided_at: c.voided_at.map(format_time),
        });
    }
    Ok(AllocationResponse {
        allocation_id: head.id.to_string(),
        product_id: head.product_id.clone(),
        denomination: head.currency.format_minor(head.denomination_minor),
        currency: head.currency,
        quantity: head.quantity,
        client_reference: head.client_reference.clone(),
        cards: out,
        created_at: format_time(head.created_at),
    })
}

/// Decrypt one card's code and PIN; `aad` is [`card_aad`] of the card's bucket.
pub fn open_card(keys: &KeyRing, aad: &[u8], c: &ClaimedCard) -> Result<CardSecret, AppError> {
    let plain = keys
        .open(&c.code_ciphertext, &c.code_nonce, &c.code_key_id, aad)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("card {}: {e}", c.id)))?;
    serde_json::from_slice(&plain).map_err(|e| AppError::Internal(anyhow::anyhow!("card {} payload: {e}", c.id)))
}

/// A stored allocation rendered for its owner; `None` when it does not exist or is not theirs.
pub async fn read_stored(pool: &PgPool, keys: &KeyRing, client_id: Uuid, id: Uuid) -> Result<Option<Bytes>, AppError> {
    type Head = (String, i64, i32, Option<String>, OffsetDateTime, String);
    let head: Option<Head> = sqlx::query_as(sql::ALLOCATION_HEAD).bind(id).bind(client_id).fetch_optional(pool).await?;
    let Some((product_id, denomination_minor, quantity, client_reference, created_at, currency)) = head else {
        return Ok(None);
    };
    let currency = Currency::parse(&currency).map_err(|e| AppError::Internal(e.into()))?;
    let cards: Vec<ClaimedCard> = sqlx::query_as(sql::ALLOCATION_CARDS).bind(id).fetch_all(pool).await?;
    let head = AllocationHead {
        id,
        product_id,
        currency,
        denomination_minor,
        quantity: quantity as u32,
        client_reference,
        created_at,
    };
    Ok(Some(render(keys, &head, &cards)?))
}

/// A stored allocation for its owner, from the replica while it serves; the replica may lag
/// behind a just-made allocation, so a miss is asked of the primary (read your writes).
pub async fn read_for_owner(db: &Db, keys: &KeyRing, client_id: Uuid, id: Uuid) -> Result<Option<Bytes>, AppError> {
    if let Some(body) = db.read(|pool| async move { read_stored(&pool, keys, client_id, id).await }).await? {
        return Ok(Some(body));
    }
    if db.has_replica {
        return read_stored(&db.primary, keys, client_id, id).await;
    }
    Ok(None)
}
