//! The slow path: one transaction that claims the ids the cache gave, pops again for stale
//! ones a bounded number of times, and takes whatever is still missing from Postgres with
//! `FOR UPDATE SKIP LOCKED`. It serves a cold cache, a Valkey outage and a diverged cache.

use std::collections::HashSet;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;

use super::popped::PoppedIds;
use super::render::ClaimedCard;
use super::request::NewAllocation;
use super::sql;
use crate::cache::{InventoryCache, Popped};
use crate::error::AppError;
use crate::funding::{self, Shortfall};

/// How many times stale ids may send the slow path back to the cache before Postgres.
const MAX_POP_ROUNDS: usize = 3;

/// How the slow path ended. Nothing is written unless `Created`.
pub enum Claimed {
    /// Committed: the commit time and the cards in their positions.
    Created(OffsetDateTime, Vec<ClaimedCard>),
    /// The key was already live.
    KeyExists,
    /// Only this many cards could be had.
    Short(u64),
    /// The client's funds do not cover the price.
    Unfunded(Shortfall),
}

/// A statement over the allocation row's parameters (`$1`…`$9`).
fn allocation_query<'q, O>(a: &'q NewAllocation, unit_price_minor: Option<i64>) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql::INSERT_ALLOCATION)
        .bind(a.client_id)
        .bind(&a.key)
        .bind(&a.fingerprint[..])
        .bind(a.id)
        .bind(&a.product_id)
        .bind(a.denomination_minor)
        .bind(a.quantity as i32)
        .bind(&a.client_reference)
        .bind(unit_price_minor)
}

/// A claim statement: `first` (the ids, or how many), then the allocation, the bucket, and
/// the position the first claimed card takes.
fn claim_query<'q, T>(
    claim_sql: &'static str,
    first: T,
    a: &'q NewAllocation,
    tried: i32,
) -> QueryAs<'q, Postgres, ClaimedCard, PgArguments>
where
    T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
{
    sqlx::query_as(claim_sql).bind(first).bind(a.id).bind(&a.product_id).bind(a.denomination_minor).bind(tried)
}

/// Allocate `a` in one transaction, starting from the ids `popped` holds.
pub async fn claim(
    pool: &PgPool,
    cache: Option<&InventoryCache>,
    a: &NewAllocation,
    popped: &mut PoppedIds,
) -> Result<Claimed, AppError> {
    let mut tx = pool.begin().await?;
    let price =
        funding::price_one(&mut tx, a.client_id, &a.product_id, a.denomination_minor, a.currency.code()).await?;
    let unit_price = price.funded.then_some(price.unit_price_minor);
    let Some((created_at,)) = allocation_query::<(OffsetDateTime,)>(a, unit_price).fetch_optional(&mut *tx).await?
    else {
        tx.rollback().await?;
        return Ok(Claimed::KeyExists);
    };
    // Charged before any card is locked: a refused allocation holds no card meanwhile.
    if let Some(unit_price) = unit_price {
        let amount = unit_price * i64::from(a.quantity);
        if let Err(shortfall) = funding::debit_one(&mut tx, a.client_id, a.currency.code(), amount, a.id).await? {
            tx.rollback().await?;
            return Ok(Claimed::Unfunded(shortfall));
        }
    }
    let mut cards = claim_from_cache(&mut tx, cache, a, popped).await?;
    let from_cache = cards.len() as u32;
    let wanted = a.quantity as usize;
    if cards.len() < wanted {
        let need = (wanted - cards.len()) as i64;
        // Every popped id took a position, so positions stay unique with stale ids skipped.
        let first = popped.popped_count() as i32;
        cards.extend(claim_query(sql::CLAIM_FROM_POSTGRES, need, a, first).fetch_all(&mut *tx).await?);
    }
    metrics::counter!("allot_cache_pops_total", "outcome" => "fallback")
        .increment(u64::from(cards.len() as u32 - from_cache));
    if cards.len() < wanted {
        tx.rollback().await?;
        return Ok(Claimed::Short(cards.len() as u64));
    }
    cards.sort_by_key(|c| c.position);
    let card_ids: Vec<i64> = cards.iter().map(|c| c.id).collect();
    sqlx::query(sql::INSERT_EVENT).bind(a.id).bind(a.event(&card_ids)).bind(&a.trace_context).execute(&mut *tx).await?;
    tx.commit().await?;
    let spent: Vec<i64> = popped.held().iter().copied().filter(|id| card_ids.contains(id)).collect();
    popped.spend(&spent);
    Ok(Claimed::Created(created_at, cards))
}

/// Claim the held ids that are still active, popping again (bounded) for the stale ones.
async fn claim_from_cache(
    tx: &mut Transaction<'_, Postgres>,
    cache: Option<&InventoryCache>,
    a: &NewAllocation,
    popped: &mut PoppedIds,
) -> Result<Vec<ClaimedCard>, AppError> {
    let wanted = a.quantity as usize;
    let mut cards: Vec<ClaimedCard> = Vec::with_capacity(wanted);
    let mut batch: Vec<i64> = popped.held().to_vec();
    for round in 0..=MAX_POP_ROUNDS {
        if !batch.is_empty() {
            // The batch is the last popped: its first id's position is the count before it.
            let first = (popped.popped_count() - batch.len()) as i32;
            let rows = claim_query(sql::CLAIM_BY_ID, &batch, a, first).fetch_all(&mut **tx).await?;
            let live: HashSet<i64> = rows.iter().map(|r| r.id).collect();
            let gone: Vec<i64> = batch.iter().copied().filter(|id| !live.contains(id)).collect();
            metrics::counter!("allot_cache_pops_total", "outcome" => "stale").increment(gone.len() as u64);
            metrics::counter!("allot_cache_pops_total", "outcome" => "hit").increment(rows.len() as u64);
            popped.drop_gone(&gone);
            cards.extend(rows);
        }
        let need = wanted - cards.len();
        let Some(cache) = cache else { break };
        if need == 0 || round == MAX_POP_ROUNDS {
            break;
        }
        // Cold, short or down: Postgres has the rest.
        batch = match cache.pop(&a.product_id, a.denomination_minor, need).await {
            Ok(Popped::Ids(ids)) => ids,
            _ => break,
        };
        popped.hold(&batch);
    }
    Ok(cards)
}
