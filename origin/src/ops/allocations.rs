//! Allocations as operators see them: looked up by id, client, client reference or card id,
//! with codes masked to their last characters and PINs never shown. Revealing the codes needs
//! its own call, whose audit row is committed before a code leaves.

use std::collections::HashMap;

use allot_shared::{ApiError, Currency, ErrorCode};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::{self, Actor};
use super::page;
use crate::allocation::format_time;
use crate::allocation::render::{ClaimedCard, open_card};
use crate::crypto::{KeyRing, card_aad};
use crate::error::AppError;

/// Allocations per page when the caller does not say (each holds up to 1000 cards).
pub const DEFAULT_LIMIT: u32 = 20;
/// What a masked code starts with, whatever the code's length (so the length does not show).
const MASK: &str = "••••••";

/// How to find allocations: exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationLookup {
    /// One allocation.
    Id(Uuid),
    /// A client's allocations, newest first.
    Client(Uuid),
    /// Allocations with this client reference, newest first.
    Reference(String),
    /// The allocation holding this card.
    Card(i64),
}

impl AllocationLookup {
    /// Exactly one selector from a query's fields.
    pub fn from_fields(
        id: Option<Uuid>,
        client_id: Option<Uuid>,
        client_reference: Option<String>,
        card_id: Option<i64>,
    ) -> Result<Self, ApiError> {
        match (id, client_id, client_reference, card_id) {
            (Some(id), None, None, None) => Ok(Self::Id(id)),
            (None, Some(c), None, None) => Ok(Self::Client(c)),
            (None, None, Some(r), None) if !r.is_empty() && r.len() <= 255 => Ok(Self::Reference(r)),
            (None, None, Some(_), None) => Err(ApiError::validation("client_reference", "must be 1-255 bytes")),
            (None, None, None, Some(c)) => Ok(Self::Card(c)),
            _ => Err(ApiError::validation("query", "give exactly one of id, client_id, client_reference, card_id")),
        }
    }
}

/// A page: allocations older than the cursor's (created_at, id), at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationPage {
    /// The last allocation of the previous page.
    pub before: Option<(OffsetDateTime, Uuid)>,
    /// Allocations wanted.
    pub limit: u32,
}

impl AllocationPage {
    /// Read a page from a query's `cursor` and `limit`.
    pub fn parse(cursor: Option<&str>, limit: Option<u32>) -> Result<Self, AppError> {
        let limit = page::limit(limit, DEFAULT_LIMIT)?;
        let before = cursor.map(|c| page::decode(CURSOR_TAG, c)).transpose()?;
        Ok(Self { before, limit })
    }
}

/// The tag of allocation lookup cursors (their key: creation time and id).
const CURSOR_TAG: &str = "a1";

/// Show at most the last 4 characters of a code, and no more than half of a short one.
pub fn mask_code(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let shown = (chars.len() / 2).min(4);
    let tail: String = chars[chars.len() - shown..].iter().collect();
    format!("{MASK}{tail}")
}

/// The client an allocation belongs to.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = AllocationClient)]
pub struct ClientRef {
    /// Client id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
}

/// One card of an allocation, as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = AllocationCard)]
pub struct CardView {
    /// Card id.
    pub card_id: i64,
    /// Its place in the allocation, from 0.
    pub position: i16,
    /// The code: masked (six bullets and at most its last 4 characters, at most half of a short
    /// one), in clear only from `reveal`.
    pub code: String,
    /// The PIN: only from `reveal`, and only for a card that has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub pin: Option<String>,
    /// `allocated`, or `void` after a void.
    #[schema(value_type = AllocatedCardStatus)]
    pub status: String,
    /// When the card expires; absent when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    pub expires_at: Option<String>,
    /// When it was voided; absent unless void.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    pub voided_at: Option<String>,
    /// Why it was voided; absent unless void.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub void_reason: Option<String>,
}

/// An allocation as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct AllocationView {
    /// Allocation id.
    pub id: Uuid,
    /// Its client.
    pub client: ClientRef,
    /// Product id.
    pub product_id: String,
    /// The face value, as on the wire (`"25.00"`).
    pub denomination: String,
    /// The product's currency.
    pub currency: Currency,
    /// Cards.
    pub quantity: i32,
    /// The client's reference; null when none was sent.
    #[schema(required = true)]
    pub client_reference: Option<String>,
    /// The `Idempotency-Key` it was made with.
    pub idempotency_key: String,
    /// Committed.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The cards, in their positions.
    pub cards: Vec<CardView>,
}

#[derive(sqlx::FromRow)]
struct HeadRow {
    id: Uuid,
    client_id: Uuid,
    client_name: String,
    product_id: String,
    currency: String,
    denomination_minor: i64,
    quantity: i32,
    client_reference: Option<String>,
    idempotency_key: String,
    created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct CardRow {
    allocation_id: Uuid,
    status: String,
    void_reason: Option<String>,
    #[sqlx(flatten)]
    card: ClaimedCard,
}

const HEAD: &str = "SELECT a.id, a.client_id, c.name AS client_name, a.product_id, p.currency, a.denomination_minor,
        a.quantity, a.client_reference, a.idempotency_key, a.created_at
   FROM allocations a JOIN clients c ON c.id = a.client_id JOIN products p ON p.id = a.product_id";

/// Newest first from the (client_id, created_at DESC, id DESC) index.
const BY_CLIENT: &str = "WHERE a.client_id = $1
    AND ($2::timestamptz IS NULL OR (a.created_at, a.id) < ($2, $3))
  ORDER BY a.created_at DESC, a.id DESC LIMIT $4";
/// Through the client_reference index; the few matches are sorted.
const BY_REFERENCE: &str = "WHERE a.client_reference = $1
    AND ($2::timestamptz IS NULL OR (a.created_at, a.id) < ($2, $3))
  ORDER BY a.created_at DESC, a.id DESC LIMIT $4";

/// Allocations found by `lookup`, one page, with masked codes; and the next page's cursor.
pub async fn find(
    pool: &PgPool,
    keys: &KeyRing,
    lookup: &AllocationLookup,
    page: AllocationPage,
) -> Result<(Vec<AllocationView>, Option<String>), AppError> {
    let (before_at, before_id) = page.before.unzip();
    let fetch = i64::from(page.limit) + 1;
    let mut heads: Vec<HeadRow> = match lookup {
        AllocationLookup::Id(id) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{HEAD} WHERE a.id = $1"))).bind(id).fetch_all(pool).await?
        }
        AllocationLookup::Card(card) => {
            let sql = format!("{HEAD} WHERE a.id = (SELECT allocation_id FROM inventories WHERE id = $1)");
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(card).fetch_all(pool).await?
        }
        AllocationLookup::Client(c) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{HEAD} {BY_CLIENT}")))
                .bind(c)
                .bind(before_at)
                .bind(before_id)
                .bind(fetch)
                .fetch_all(pool)
                .await?
        }
        AllocationLookup::Reference(r) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{HEAD} {BY_REFERENCE}")))
                .bind(r)
                .bind(before_at)
                .bind(before_id)
                .bind(fetch)
                .fetch_all(pool)
                .await?
        }
    };
    let next = page::next_cursor(&mut heads, page.limit, CURSOR_TAG, |h| (h.created_at, h.id));
    Ok((views(pool, keys, heads, false).await?, next))
}

/// One allocation with masked codes, or `404`.
pub async fn show(pool: &PgPool, keys: &KeyRing, id: Uuid) -> Result<AllocationView, AppError> {
    let page = AllocationPage { before: None, limit: 1 };
    let (mut found, _) = find(pool, keys, &AllocationLookup::Id(id), page).await?;
    found.pop().ok_or_else(|| no_allocation(id))
}

/// One allocation with its codes and PINs in clear. The `allocation.reveal` audit row is
/// committed before any code is decrypted.
pub async fn reveal(pool: &PgPool, keys: &KeyRing, actor: &Actor, id: Uuid) -> Result<AllocationView, AppError> {
    let mut tx = pool.begin().await?;
    let head: Option<HeadRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{HEAD} WHERE a.id = $1")))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let head = head.ok_or_else(|| no_allocation(id))?;
    let card_ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM inventories WHERE allocation_id = $1 ORDER BY allocation_position")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    let change = serde_json::json!({ "client_id": head.client_id, "card_ids": card_ids });
    audit::record(&mut tx, actor, "allocation.reveal", &id.to_string(), change).await?;
    tx.commit().await?;
    let mut revealed = views(pool, keys, vec![head], true).await?;
    revealed.pop().ok_or_else(|| no_allocation(id))
}

fn no_allocation(id: Uuid) -> AppError {
    AppError::api(ErrorCode::NotFound, format!("no allocation with id {id}"))
}

/// The allocations' cards, decrypted once each and masked unless `clear`.
async fn views(
    pool: &PgPool,
    keys: &KeyRing,
    heads: Vec<HeadRow>,
    clear: bool,
) -> Result<Vec<AllocationView>, AppError> {
    let ids: Vec<Uuid> = heads.iter().map(|h| h.id).collect();
    let rows: Vec<CardRow> = sqlx::query_as(
        "SELECT allocation_id, status, void_reason, id, allocation_position AS position, code_ciphertext, code_nonce,
                code_key_id, expires_at, voided_at
           FROM inventories WHERE allocation_id = ANY($1) ORDER BY allocation_id, allocation_position",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_allocation: HashMap<Uuid, Vec<CardRow>> = HashMap::with_capacity(heads.len());
    for r in rows {
        by_allocation.entry(r.allocation_id).or_default().push(r);
    }
    let mut out = Vec::with_capacity(heads.len());
    for h in heads {
        let currency = Currency::parse(&h.currency).map_err(|e| AppError::Internal(e.into()))?;
        let aad = card_aad(&h.product_id, h.denomination_minor);
        let mut cards = Vec::new();
        for r in by_allocation.remove(&h.id).unwrap_or_default() {
            let secret = open_card(keys, &aad, &r.card)?;
            cards.push(CardView {
                card_id: r.card.id,
                position: r.card.position,
                code: if clear { secret.code } else { mask_code(&secret.code) },
                pin: if clear { secret.pin } else { None },
                status: r.status,
                expires_at: r.card.expires_at.map(format_time),
                voided_at: r.card.voided_at.map(format_time),
                void_reason: r.void_reason,
            });
        }
        debug_assert_eq!(cards.len(), h.quantity as usize, "an allocation has exactly its quantity of cards");
        out.push(AllocationView {
            id: h.id,
            client: ClientRef { id: h.client_id, name: h.client_name },
            product_id: h.product_id,
            denomination: currency.format_minor(h.denomination_minor),
            currency,
            quantity: h.quantity,
            client_reference: h.client_reference,
            idempotency_key: h.idempotency_key,
            created_at: format_time(h.created_at),
            cards,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_show_at_most_four_and_at_most_half() {
        assert_eq!(mask_code("ABCD-EFGH-1234"), "••••••1234");
        assert_eq!(mask_code("12345678"), "••••••5678");
        assert_eq!(mask_code("ABCDEF"), "••••••DEF");
        assert_eq!(mask_code("ABC"), "••••••C");
        assert_eq!(mask_code("A"), "••••••");
        assert_eq!(mask_code("ÄÖÜßéè"), "••••••ßéè", "characters, not bytes");
    }

    #[test]
    fn cursors_round_trip_and_selectors_are_exclusive() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_000).unwrap();
        let id = Uuid::now_v7();
        let decode = |c: &str| page::decode::<(OffsetDateTime, Uuid)>(CURSOR_TAG, c);
        assert_eq!(decode(&page::encode(CURSOR_TAG, &(at, id))).unwrap(), (at, id));
        for bad in ["", "x", "YTE6", "YTE6eDp5"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert!(AllocationLookup::from_fields(None, None, None, None).is_err());
        assert!(AllocationLookup::from_fields(Some(id), Some(id), None, None).is_err());
        assert_eq!(AllocationLookup::from_fields(None, None, None, Some(7)).unwrap(), AllocationLookup::Card(7));
    }
}

// The values of a text column, named for the OpenAPI document (the column is read as text).
/// A card's status in an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AllocatedCardStatus {
    /// Handed out with the allocation.
    Allocated,
    /// Voided by an operator after it was handed out.
    Void,
}
