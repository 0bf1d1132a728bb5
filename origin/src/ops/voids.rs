//! Voiding cards: by id list, by import, or by product and denomination, with a reason. One
//! transaction locks the cards in id order, marks them void, writes one `card.voided` event per
//! card and the audit row; after the commit the ids leave the cache at once.
//!
//! Voiding an allocated card credits its price back to its client, in the same transaction, when
//! the allocation was charged and the client's account credits voids ([`crate::funding`]).
//!
//! A void card never becomes active again (the `inventories_void_is_final` trigger), and the
//! allocation engine claims only `status = 'active'` cards, so an id that an allocation popped
//! before the void is found stale and dropped, never handed out.

use std::collections::BTreeMap;

use allot_shared::{ApiError, Denomination, ErrorCode};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::audit::{self, Actor};
use crate::cache::InventoryCache;
use crate::error::AppError;

/// Most card ids one request may name.
pub const MAX_CARD_IDS: usize = 10_000;
/// Most cards one void may change (an import or bucket above this is refused whole).
pub const MAX_VOID_CARDS: i64 = 100_000;
/// Audit rows and responses list the voided ids up to this many.
const LIST_IDS_UP_TO: usize = 100;
/// Attempts when the transaction deadlocks with another.
const ATTEMPTS: usize = 3;

/// Which cards to void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoidSelector {
    /// These cards, whatever their status.
    Cards(Vec<i64>),
    /// The cards of one import.
    Import(Uuid),
    /// The cards of one product and denomination.
    Bucket {
        /// Product.
        product_id: String,
        /// Denomination as given ("25.00").
        denomination: Denomination,
    },
}

impl VoidSelector {
    /// Exactly one selector from the fields a caller sent.
    pub fn from_fields(
        card_ids: Option<Vec<i64>>,
        import_id: Option<Uuid>,
        product_id: Option<String>,
        denomination: Option<&str>,
    ) -> Result<Self, ApiError> {
        let one = "give exactly one of card_ids, import_id, or product_id with denomination";
        match (card_ids, import_id, product_id, denomination) {
            (Some(mut ids), None, None, None) => {
                if ids.is_empty() || ids.len() > MAX_CARD_IDS {
                    return Err(ApiError::validation("card_ids", format!("must hold 1 to {MAX_CARD_IDS} ids")));
                }
                ids.sort_unstable();
                ids.dedup();
                Ok(Self::Cards(ids))
            }
            (None, Some(id), None, None) => Ok(Self::Import(id)),
            (None, None, Some(product_id), Some(d)) => {
                let denomination =
                    Denomination::parse(d).map_err(|e| ApiError::validation("denomination", e.to_string()))?;
                Ok(Self::Bucket { product_id, denomination })
            }
            (None, None, Some(_), None) => Err(ApiError::validation("denomination", "is required with product_id")),
            (None, None, None, Some(_)) => Err(ApiError::validation("product_id", "is required with denomination")),
            _ => Err(ApiError::validation("body", one)),
        }
    }

    /// The audit target: `cards`, `import:<id>` or `bucket:<product>/<denomination>`.
    fn target(&self) -> String {
        match self {
            Self::Cards(_) => "cards".to_owned(),
            Self::Import(id) => format!("import:{id}"),
            Self::Bucket { product_id, denomination } => format!("bucket:{product_id}/{denomination}"),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Cards(ids) => serde_json::json!({ "card_ids": ids.len() }),
            Self::Import(id) => serde_json::json!({ "import_id": id }),
            Self::Bucket { product_id, denomination } => {
                serde_json::json!({ "product_id": product_id, "denomination": denomination.to_string() })
            }
        }
    }
}

/// A void to do.
#[derive(Debug, Clone)]
pub struct VoidRequest {
    /// Which cards.
    pub selector: VoidSelector,
    /// Why (1-500 characters), stored on each card and in its event.
    pub reason: String,
    /// For an import or bucket: void allocated cards too (card ids void any status).
    pub include_allocated: bool,
}

/// `200` of `POST /ops/v1/voids`: what the void did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct VoidOutcome {
    /// Cards the selector matched.
    pub matched: i64,
    /// Cards voided now.
    pub voided: i64,
    /// Of those, cards that were allocated (their allocations show them voided).
    pub voided_allocated: i64,
    /// Cards that were void already (counted, not an error).
    pub already_void: i64,
    /// Allocated cards left alone (an import or bucket without `include_allocated`).
    pub skipped_allocated: i64,
    /// Of the allocated cards voided, how many had their price credited back to their client's
    /// balance (charged allocations of accounts that credit voids).
    pub credited: i64,
    /// The ids voided now; present only when at most 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub card_ids: Option<Vec<i64>>,
}

/// The statuses of the cards a selector matches: (active, allocated, void).
type StatusCounts = (i64, i64, i64);

const COUNT_CARDS: &str =
    "SELECT count(*) FILTER (WHERE status = 'active'), count(*) FILTER (WHERE status = 'allocated'),
        count(*) FILTER (WHERE status = 'void') FROM inventories WHERE id = ANY($1)";
const COUNT_IMPORT: &str =
    "SELECT count(*) FILTER (WHERE status = 'active'), count(*) FILTER (WHERE status = 'allocated'),
        count(*) FILTER (WHERE status = 'void') FROM inventories WHERE import_id = $1";
const COUNT_BUCKET: &str =
    "SELECT count(*) FILTER (WHERE status = 'active'), count(*) FILTER (WHERE status = 'allocated'),
        count(*) FILTER (WHERE status = 'void') FROM inventories WHERE product_id = $1 AND denomination_minor = $2";

// Each lock takes its rows in id order (LockRows over the sort): allocations lock cards too,
// and one order for everyone avoids deadlocks between voids.
const LOCK_CARDS: &str = "SELECT id FROM inventories WHERE id = ANY($1) AND status <> 'void' ORDER BY id FOR UPDATE";
const LOCK_IMPORT: &str = "SELECT id FROM inventories WHERE import_id = $1 AND status = ANY($2) ORDER BY id FOR UPDATE";
const LOCK_BUCKET_ACTIVE: &str = "SELECT id FROM inventories
  WHERE product_id = $1 AND denomination_minor = $2 AND status = 'active' ORDER BY id FOR UPDATE";
const LOCK_BUCKET_ALL: &str = "SELECT id FROM inventories
  WHERE product_id = $1 AND denomination_minor = $2 AND status IN ('active', 'allocated') ORDER BY id FOR UPDATE";

/// Void the locked ids `$1` with reason `$2`, one `card.voided` event each (ids, never codes);
/// returns each card's id, product and whether it was allocated.
const VOID_LOCKED: &str = "
WITH voided AS (
    UPDATE inventories i
       SET status = 'void', voided_at = now(), void_reason = $2, updated_at = now()
     WHERE i.id = ANY($1) AND i.status <> 'void'
    RETURNING i.id, i.product_id, i.denomination_minor, i.allocation_id, i.voided_at
), events AS (
    INSERT INTO outbox (topic, aggregate_id, payload)
    SELECT 'card.voided', v.id::text, jsonb_strip_nulls(jsonb_build_object(
               'card_id', v.id, 'product_id', v.product_id, 'denomination_minor', v.denomination_minor,
               'allocation_id', v.allocation_id, 'client_id', a.client_id, 'reason', $2::text,
               'voided_at', v.voided_at))
      FROM voided v LEFT JOIN allocations a ON a.id = v.allocation_id
)
SELECT id, product_id, allocation_id IS NOT NULL FROM voided ORDER BY id";

fn is_deadlock(e: &AppError) -> bool {
    matches!(e, AppError::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("40P01"))
}

fn is_lock_timeout(e: &AppError) -> bool {
    matches!(e, AppError::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03"))
}

/// Void cards; then remove them from the cache at once (a cache error is logged: the
/// reconciler heals). Nothing is written when the request is refused.
pub async fn void_cards(
    pool: &PgPool,
    cache: Option<&InventoryCache>,
    actor: &Actor,
    req: &VoidRequest,
) -> Result<VoidOutcome, AppError> {
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::validation("reason", "must be 1-500 characters").into());
    }
    if req.include_allocated && matches!(req.selector, VoidSelector::Cards(_)) {
        let why = "applies to import_id and product_id selectors; card ids are voided whatever their status";
        return Err(ApiError::validation("include_allocated", why).into());
    }
    let mut attempt = 1;
    let (outcome, by_product) = loop {
        match void_once(pool, actor, req, reason).await {
            Err(e) if is_deadlock(&e) && attempt < ATTEMPTS => attempt += 1,
            Err(e) if is_lock_timeout(&e) => {
                let message = "some cards stayed locked by allocations in progress; nothing was voided, retry";
                return Err(AppError::api(ErrorCode::OriginUnavailable, message));
            }
            other => break other?,
        }
    };
    if let Some(cache) = cache {
        for (product_id, ids) in &by_product {
            if let Err(e) = cache.remove(product_id, ids).await {
                tracing::warn!(error = %e, product_id, cards = ids.len(), "voided cards not removed from the cache; \
                    the reconciler will rebuild the set");
            }
        }
    }
    metrics::counter!("allot_cards_voided_total").increment(outcome.voided as u64);
    Ok(outcome)
}

/// One attempt in one transaction: the outcome and the voided ids by product.
async fn void_once(
    pool: &PgPool,
    actor: &Actor,
    req: &VoidRequest,
    reason: &str,
) -> Result<(VoidOutcome, BTreeMap<String, Vec<i64>>), AppError> {
    let mut tx = pool.begin().await?;
    // Up to MAX_VOID_CARDS rows and as many events: more than the default statement timeout.
    sqlx::query("SET LOCAL statement_timeout = '120s'").execute(&mut *tx).await?;
    let (counts, ids) = lock_selected(&mut tx, &req.selector, req.include_allocated).await?;
    let (active, allocated, void) = counts;
    let rows: Vec<(i64, String, bool)> =
        sqlx::query_as(VOID_LOCKED).bind(&ids).bind(reason).fetch_all(&mut *tx).await?;
    debug_assert_eq!(rows.len(), ids.len(), "every locked card is voided");
    let mut outcome = VoidOutcome {
        matched: active + allocated + void,
        voided: rows.len() as i64,
        voided_allocated: rows.iter().filter(|r| r.2).count() as i64,
        already_void: void,
        skipped_allocated: 0,
        credited: 0,
        card_ids: (rows.len() <= LIST_IDS_UP_TO).then(|| rows.iter().map(|r| r.0).collect()),
    };
    let allocated: Vec<i64> = rows.iter().filter(|r| r.2).map(|r| r.0).collect();
    if !allocated.is_empty() {
        outcome.credited = sqlx::query_scalar(crate::funding::REVERSE_VOIDED)
            .bind(&allocated)
            .bind(reason)
            .bind(actor.name())
            .fetch_one(&mut *tx)
            .await?;
    }
    // Counted before the lock; a card allocated meanwhile is voided or skipped by its status then.
    outcome.skipped_allocated = (outcome.matched - outcome.already_void - outcome.voided).max(0);
    let change = serde_json::json!({
        "selector": req.selector.to_json(),
        "reason": reason,
        "include_allocated": req.include_allocated,
        "outcome": outcome,
    });
    audit::record(&mut tx, actor, "card.void", &req.selector.target(), change).await?;
    tx.commit().await?;
    let mut by_product: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, product_id, _) in rows {
        by_product.entry(product_id).or_default().push(id);
    }
    Ok((outcome, by_product))
}

/// Check the selector, count its cards by status, refuse too many, and lock the ones to void
/// in id order.
async fn lock_selected(
    tx: &mut PgConnection,
    selector: &VoidSelector,
    include_allocated: bool,
) -> Result<(StatusCounts, Vec<i64>), AppError> {
    let statuses: &[&str] = if include_allocated { &["active", "allocated"] } else { &["active"] };
    let (counts, to_void) = match selector {
        VoidSelector::Cards(ids) => {
            let unknown: Vec<i64> = sqlx::query_scalar(
                "SELECT u.id FROM unnest($1::bigint[]) AS u(id)
                  WHERE NOT EXISTS (SELECT 1 FROM inventories i WHERE i.id = u.id) ORDER BY u.id",
            )
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?;
            if !unknown.is_empty() {
                return Err(unknown_cards(&unknown));
            }
            let counts: StatusCounts = sqlx::query_as(COUNT_CARDS).bind(ids).fetch_one(&mut *tx).await?;
            (counts, counts.0 + counts.1)
        }
        VoidSelector::Import(id) => {
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM imports WHERE id = $1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            if !exists {
                return Err(AppError::api(ErrorCode::NotFound, format!("no import with id {id}")));
            }
            let counts: StatusCounts = sqlx::query_as(COUNT_IMPORT).bind(id).fetch_one(&mut *tx).await?;
            (counts, counts.0 + if include_allocated { counts.1 } else { 0 })
        }
        VoidSelector::Bucket { product_id, denomination } => {
            let minor = bucket_minor(tx, product_id, denomination).await?;
            let counts: StatusCounts =
                sqlx::query_as(COUNT_BUCKET).bind(product_id).bind(minor).fetch_one(&mut *tx).await?;
            (counts, counts.0 + if include_allocated { counts.1 } else { 0 })
        }
    };
    if to_void > MAX_VOID_CARDS {
        let why = format!("selects {to_void} cards to void; at most {MAX_VOID_CARDS} per request");
        return Err(ApiError::validation("body", why).into());
    }
    let ids: Vec<i64> = match selector {
        VoidSelector::Cards(ids) => sqlx::query_scalar(LOCK_CARDS).bind(ids).fetch_all(&mut *tx).await?,
        VoidSelector::Import(id) => sqlx::query_scalar(LOCK_IMPORT).bind(id).bind(statuses).fetch_all(&mut *tx).await?,
        VoidSelector::Bucket { product_id, denomination } => {
            let minor = bucket_minor(tx, product_id, denomination).await?;
            let sql = if include_allocated { LOCK_BUCKET_ALL } else { LOCK_BUCKET_ACTIVE };
            sqlx::query_scalar(sql).bind(product_id).bind(minor).fetch_all(&mut *tx).await?
        }
    };
    debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "locked in id order");
    Ok((counts, ids))
}

/// The denomination in minor units of a product that offers it, or `400` naming the field.
async fn bucket_minor(tx: &mut PgConnection, product_id: &str, denomination: &Denomination) -> Result<i64, AppError> {
    super::cards::resolve_bucket(tx, product_id, &denomination.to_string()).await.map_err(|e| e.as_field(product_id))
}

/// `404` naming the unknown ids (the first 20 in the message, up to 100 in the details).
fn unknown_cards(unknown: &[i64]) -> AppError {
    let shown: Vec<String> = unknown.iter().take(20).map(i64::to_string).collect();
    let more = if unknown.len() > 20 { format!(" and {} more", unknown.len() - 20) } else { String::new() };
    let message = format!("no card with id {}{more}; nothing was voided", shown.join(", "));
    let listed: Vec<i64> = unknown.iter().take(100).copied().collect();
    ApiError::new(ErrorCode::NotFound, message)
        .with_details(serde_json::json!({ "unknown_card_ids": listed, "unknown": unknown.len() }))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_selector() {
        let cards = VoidSelector::from_fields(Some(vec![3, 1, 3]), None, None, None).unwrap();
        assert_eq!(cards, VoidSelector::Cards(vec![1, 3]), "sorted, duplicates once");
        let bucket = VoidSelector::from_fields(None, None, Some("p".into()), Some("25.00")).unwrap();
        assert_eq!(bucket.target(), "bucket:p/25.00");
        for (ids, import, product, denomination) in [
            (None, None, None, None),
            (Some(vec![1]), Some(Uuid::nil()), None, None),
            (Some(vec![]), None, None, None),
            (None, None, Some("p".to_owned()), None),
            (None, None, None, Some("25")),
            (None, Some(Uuid::nil()), Some("p".to_owned()), Some("25")),
            (None, None, Some("p".to_owned()), Some("-1")),
        ] {
            assert!(VoidSelector::from_fields(ids, import, product, denomination).is_err());
        }
        assert!(VoidSelector::from_fields(Some(vec![1; MAX_CARD_IDS + 1]), None, None, None).is_err());
    }
}
