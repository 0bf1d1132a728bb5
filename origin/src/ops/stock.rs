//! Stock per product and denomination: active cards in Postgres and in the cache, what was
//! allocated lately, days of cover, the low-stock threshold, and the state (ok, low, out).

use allot_shared::{ApiError, Currency, ErrorCode};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::audit::{self, Actor};
use crate::cache::InventoryCache;
use crate::error::AppError;

/// The largest low-stock threshold a bucket may have.
pub const MAX_THRESHOLD: i64 = 100_000_000;

/// A bucket's stock state: `out` (no active card), `low` (at or below its threshold), `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StockState {
    /// More active cards than the threshold.
    Ok,
    /// At or below the threshold, and not empty.
    Low,
    /// No active card.
    Out,
}

impl StockState {
    /// Every state, in gauge order.
    pub const ALL: [StockState; 3] = [StockState::Ok, StockState::Low, StockState::Out];

    /// The state's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            StockState::Ok => "ok",
            StockState::Low => "low",
            StockState::Out => "out",
        }
    }

    /// Parse a state name.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        StockState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ApiError::validation("state", "must be ok, low or out"))
    }

    /// The value of the `allot_stock_state` gauge: 0 ok, 1 low, 2 out.
    pub fn gauge(self) -> f64 {
        match self {
            StockState::Ok => 0.0,
            StockState::Low => 1.0,
            StockState::Out => 2.0,
        }
    }

    /// The state of a bucket with `active` cards and a low-stock `threshold`.
    pub fn of(active: i64, threshold: i64) -> Self {
        debug_assert!(active >= 0 && threshold >= 0);
        if active == 0 {
            StockState::Out
        } else if active <= threshold {
            StockState::Low
        } else {
            StockState::Ok
        }
    }

    /// The outbox topic of a transition into this state from `previous`, if it is one.
    pub fn transition_topic(self, previous: StockState) -> Option<&'static str> {
        match (previous, self) {
            (p, s) if p == s => None,
            (_, StockState::Out) => Some("stock.out"),
            (_, StockState::Low) => Some("stock.low"),
            (_, StockState::Ok) => Some("stock.restored"),
        }
    }
}

/// Where a bucket's low-stock threshold comes from: its own, or `ALLOT_STOCK_LOW_THRESHOLD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdSource {
    /// The bucket's own `low_stock_threshold`.
    Bucket,
    /// `ALLOT_STOCK_LOW_THRESHOLD`.
    Default,
}

/// One bucket's stock (a product at one denomination), as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = StockBucket)]
pub struct BucketStock {
    /// Product id.
    pub product_id: String,
    /// ISO 4217 currency of the product.
    pub currency: String,
    /// The denomination as on the wire (`"25.00"`).
    pub denomination: String,
    /// The denomination in minor units.
    pub denomination_minor: i64,
    /// Active cards in Postgres (the truth).
    pub active: i64,
    /// Members of the bucket in the cache; null when the product's set is missing or Valkey did
    /// not answer.
    #[schema(required = true)]
    pub cached: Option<i64>,
    /// Cards allocated in the last hour.
    pub allocated_1h: i64,
    /// Cards allocated in the last 24 hours.
    pub allocated_24h: i64,
    /// Cards allocated per hour, averaged over 24 hours (`allocated_24h / 24`).
    pub rate_per_hour: f64,
    /// Days until the active cards run out at the last day's rate; null when nothing was
    /// allocated in 24 hours.
    #[schema(required = true)]
    pub days_of_cover: Option<f64>,
    /// The low-stock threshold in effect, in cards.
    pub low_stock_threshold: i64,
    /// Whether the threshold is the bucket's own or the default.
    pub threshold_source: ThresholdSource,
    /// The state now, from `active` and the threshold.
    pub state: StockState,
    /// The state `stock-watch` last published (catches up within one tick).
    #[schema(value_type = StockState)]
    pub published_state: String,
    /// Since when the published state holds.
    #[serde(with = "time::serde::rfc3339")]
    pub published_state_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct BucketRow {
    product_id: String,
    currency: String,
    denomination_minor: i64,
    own_threshold: Option<i32>,
    stock_state: String,
    stock_state_at: OffsetDateTime,
    active: i64,
    allocated_1h: i64,
    allocated_24h: i64,
}

/// Every bucket's figures from Postgres (one statement; the counts use the partial index on
/// active cards and the BRIN index on allocations' time).
const BUCKETS: &str = "
SELECT d.product_id, p.currency, d.denomination_minor, d.low_stock_threshold AS own_threshold,
       d.stock_state, d.stock_state_at,
       coalesce(c.n, 0)::bigint AS active,
       coalesce(a.last_hour, 0)::bigint AS allocated_1h,
       coalesce(a.last_day, 0)::bigint AS allocated_24h
  FROM product_denominations d
  JOIN products p ON p.id = d.product_id
  LEFT JOIN (SELECT product_id, denomination_minor, count(*) AS n
               FROM inventories WHERE status = 'active' AND ($1::text IS NULL OR product_id = $1)
              GROUP BY 1, 2) c USING (product_id, denomination_minor)
  LEFT JOIN (SELECT product_id, denomination_minor,
                    sum(quantity) FILTER (WHERE created_at >= now() - interval '1 hour') AS last_hour,
                    sum(quantity) AS last_day
               FROM allocations
              WHERE created_at >= now() - interval '24 hours' AND ($1::text IS NULL OR product_id = $1)
              GROUP BY 1, 2) a USING (product_id, denomination_minor)
 WHERE ($1::text IS NULL OR d.product_id = $1)
 ORDER BY d.product_id, d.denomination_minor";

/// Which buckets to list.
#[derive(Debug, Clone, Default)]
pub struct StockFilter {
    /// Only this product.
    pub product_id: Option<String>,
    /// Only buckets in this state (now).
    pub state: Option<StockState>,
}

fn bucket(row: BucketRow, default_threshold: u32, cached: Option<i64>) -> BucketStock {
    let (low_stock_threshold, threshold_source) = match row.own_threshold {
        Some(t) => (i64::from(t), ThresholdSource::Bucket),
        None => (i64::from(default_threshold), ThresholdSource::Default),
    };
    let rate_per_hour = row.allocated_24h as f64 / 24.0;
    let days_of_cover = (row.allocated_24h > 0).then(|| row.active as f64 / row.allocated_24h as f64);
    let denomination = Currency::parse(&row.currency)
        .map(|c| c.format_minor(row.denomination_minor))
        .unwrap_or_else(|_| row.denomination_minor.to_string());
    BucketStock {
        state: StockState::of(row.active, low_stock_threshold),
        product_id: row.product_id,
        currency: row.currency,
        denomination,
        denomination_minor: row.denomination_minor,
        active: row.active,
        cached,
        allocated_1h: row.allocated_1h,
        allocated_24h: row.allocated_24h,
        rate_per_hour,
        days_of_cover,
        low_stock_threshold,
        threshold_source,
        published_state: row.stock_state,
        published_state_at: row.stock_state_at,
    }
}

/// A bucket's state as `stock-watch` reads it, without the figures it does not need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BucketState {
    /// Product.
    pub product_id: String,
    /// Denomination in minor units.
    pub denomination_minor: i64,
    /// The product's currency.
    pub currency: String,
    /// The threshold in effect (the bucket's own, or the default).
    pub threshold: i64,
    /// The state last published.
    pub stock_state: String,
    /// Active cards, counted only up to `threshold + 1`: enough to tell ok, low and out.
    pub active_up_to: i64,
}

impl BucketState {
    /// The state now.
    pub fn state(&self) -> StockState {
        StockState::of(self.active_up_to, self.threshold)
    }
}

// Each bucket's active cards are counted only up to its threshold + 1 on the partial index: a
// tick costs the same whether a bucket holds a hundred cards or millions (a full count every 15 s
// would read every active card, again after the reconciler's own count).
const BUCKET_STATES: &str = "
SELECT d.product_id, d.denomination_minor, p.currency,
       coalesce(d.low_stock_threshold, $1)::bigint AS threshold, d.stock_state,
       (SELECT count(*) FROM (SELECT 1 FROM inventories i
                               WHERE i.product_id = d.product_id AND i.denomination_minor = d.denomination_minor
                                 AND i.status = 'active'
                               LIMIT coalesce(d.low_stock_threshold, $1) + 1) up_to) AS active_up_to
  FROM product_denominations d
  JOIN products p ON p.id = d.product_id
 ORDER BY d.product_id, d.denomination_minor";

/// Every bucket's state, from Postgres alone: what `stock-watch` reads every tick.
pub async fn bucket_states(pool: &PgPool, default_threshold: u32) -> Result<Vec<BucketState>, AppError> {
    Ok(sqlx::query_as(BUCKET_STATES).bind(i64::from(default_threshold)).fetch_all(pool).await?)
}

/// One bucket's active cards, counted exactly (for the event of a transition).
pub async fn active_cards(
    conn: &mut sqlx::PgConnection,
    product_id: &str,
    denomination_minor: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM inventories WHERE product_id = $1 AND denomination_minor = $2 AND status = 'active'",
    )
    .bind(product_id)
    .bind(denomination_minor)
    .fetch_one(conn)
    .await
}

/// The cache's members per bucket of `rows`, product by product; after the first failure
/// (Valkey down or slow) the rest are unknown too, so a listing costs at most one timeout.
async fn cache_members(cache: Option<&InventoryCache>, rows: &[BucketRow]) -> Vec<Option<i64>> {
    let mut out = vec![None; rows.len()];
    let Some(cache) = cache else { return out };
    let mut start = 0;
    while start < rows.len() {
        let product = &rows[start].product_id;
        let end = start + rows[start..].iter().take_while(|r| &r.product_id == product).count();
        let denominations: Vec<i64> = rows[start..end].iter().map(|r| r.denomination_minor).collect();
        match cache.counts(product, &denominations).await {
            Ok(Some(counts)) => {
                for (slot, n) in out[start..end].iter_mut().zip(counts) {
                    *slot = Some(n as i64);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "stock listing: the cache did not answer; members are unknown");
                return out;
            }
        }
        start = end;
    }
    out
}

/// The stock listing: every bucket (filtered), with the cache's members where it answers.
pub async fn list(
    pool: &PgPool,
    cache: Option<&InventoryCache>,
    default_threshold: u32,
    filter: &StockFilter,
) -> Result<Vec<BucketStock>, AppError> {
    let rows: Vec<BucketRow> = sqlx::query_as(BUCKETS).bind(&filter.product_id).fetch_all(pool).await?;
    let cached = cache_members(cache, &rows).await;
    Ok(rows
        .into_iter()
        .zip(cached)
        .map(|(r, c)| bucket(r, default_threshold, c))
        .filter(|b| filter.state.is_none_or(|s| b.state == s))
        .collect())
}

/// Cards allocated in one bucket in each of the last 24 hours (`by_hour[23]` is the current hour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyAllocations {
    /// Product id.
    pub product_id: String,
    /// Denomination in minor units.
    pub denomination_minor: i64,
    /// Cards allocated per hour, oldest first.
    pub by_hour: [i64; 24],
}

/// Every bucket's cards allocated per hour over the last 24 hours (the hour now started
/// included); buckets with none are left out. Reads the allocations of one day (the BRIN index
/// on `created_at`).
pub async fn allocations_by_hour(pool: &PgPool) -> Result<Vec<HourlyAllocations>, AppError> {
    let rows: Vec<(String, i64, i32, i64)> = sqlx::query_as(
        "SELECT product_id, denomination_minor,
                23 - (extract(epoch FROM date_trunc('hour', now()) - date_trunc('hour', created_at)) / 3600)::int,
                sum(quantity)::bigint
           FROM allocations
          WHERE created_at >= date_trunc('hour', now()) - interval '23 hours'
          GROUP BY 1, 2, 3
          ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let mut out: Vec<HourlyAllocations> = Vec::new();
    for (product_id, denomination_minor, slot, cards) in rows {
        let Ok(slot) = usize::try_from(slot) else { continue };
        if slot >= 24 {
            continue; // a clock step: created "in the future"
        }
        if !out.last().is_some_and(|b| b.product_id == product_id && b.denomination_minor == denomination_minor) {
            out.push(HourlyAllocations { product_id, denomination_minor, by_hour: [0; 24] });
        }
        if let Some(bucket) = out.last_mut() {
            bucket.by_hour[slot] += cards;
        }
    }
    Ok(out)
}

/// A bucket named by the path (product id and denomination): `404` when it does not exist.
pub async fn resolve_bucket(pool: &PgPool, product_id: &str, denomination: &str) -> Result<i64, AppError> {
    let mut conn = pool.acquire().await?;
    super::cards::resolve_bucket(&mut conn, product_id, denomination).await.map_err(|e| e.as_resource(product_id))
}

/// Set a bucket's low-stock threshold (`None`: back to the default); audited `stock.threshold`.
/// `stock-watch` publishes any state change this causes on its next run.
pub async fn set_threshold(
    pool: &PgPool,
    actor: &Actor,
    product_id: &str,
    denomination_minor: i64,
    threshold: Option<i64>,
) -> Result<(), AppError> {
    if threshold.is_some_and(|t| !(0..=MAX_THRESHOLD).contains(&t)) {
        return Err(
            ApiError::validation("low_stock_threshold", format!("must be 0 to {MAX_THRESHOLD}, or null")).into()
        );
    }
    let mut tx = pool.begin().await?;
    let previous: Option<Option<i32>> = sqlx::query_scalar(
        "SELECT low_stock_threshold FROM product_denominations
          WHERE product_id = $1 AND denomination_minor = $2 FOR UPDATE",
    )
    .bind(product_id)
    .bind(denomination_minor)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(previous) = previous else {
        return Err(AppError::api(ErrorCode::NotFound, format!("no bucket {product_id}/{denomination_minor}")));
    };
    sqlx::query(
        "UPDATE product_denominations SET low_stock_threshold = $3 WHERE product_id = $1 AND denomination_minor = $2",
    )
    .bind(product_id)
    .bind(denomination_minor)
    .bind(threshold.map(|t| t as i32))
    .execute(&mut *tx)
    .await?;
    let change = serde_json::json!({
        "product_id": product_id,
        "denomination_minor": denomination_minor,
        "from": previous,
        "to": threshold,
    });
    audit::record(&mut tx, actor, "stock.threshold", &format!("{product_id}/{denomination_minor}"), change).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StockState::{self, Low, Ok, Out};

    #[test]
    fn the_state_follows_the_count_and_the_threshold() {
        assert_eq!(StockState::of(0, 10), Out);
        assert_eq!(StockState::of(0, 0), Out);
        assert_eq!(StockState::of(1, 10), Low);
        assert_eq!(StockState::of(10, 10), Low);
        assert_eq!(StockState::of(11, 10), Ok);
        assert_eq!(StockState::of(1, 0), Ok, "threshold 0: never low, only out");
    }

    #[test]
    fn each_change_of_state_has_one_topic() {
        assert_eq!(Out.transition_topic(Ok), Some("stock.out"));
        assert_eq!(Out.transition_topic(Low), Some("stock.out"));
        assert_eq!(Low.transition_topic(Ok), Some("stock.low"));
        assert_eq!(Low.transition_topic(Out), Some("stock.low"));
        assert_eq!(Ok.transition_topic(Low), Some("stock.restored"));
        assert_eq!(Ok.transition_topic(Out), Some("stock.restored"));
        for s in StockState::ALL {
            assert_eq!(s.transition_topic(s), None);
            assert_eq!(StockState::parse(s.as_str()).unwrap(), s);
        }
    }
}
