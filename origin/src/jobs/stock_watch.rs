//! `stock-watch`: each bucket's stock state from Postgres; every change from the published state
//! is written with its outbox event (`stock.out`, `stock.low`, `stock.restored`) in one
//! transaction, so each transition goes out exactly once.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{Counts, Job, JobContext};
use crate::ops::stock::{self, BucketState, StockState};

/// Publishes stock transitions.
pub struct StockWatch;

/// Publish `bucket`'s move from its published state to its state now: the state is updated
/// only if it is still the one read (another run may have got there first), and the event is
/// inserted in the same transaction. Returns whether this call published it.
async fn publish(pool: &PgPool, bucket: &BucketState, previous: StockState) -> anyhow::Result<bool> {
    let state = bucket.state();
    let Some(topic) = state.transition_topic(previous) else { return Ok(false) };
    let mut tx = pool.begin().await?;
    let at: Option<time::OffsetDateTime> = sqlx::query_scalar(
        "UPDATE product_denominations SET stock_state = $3, stock_state_at = now()
          WHERE product_id = $1 AND denomination_minor = $2 AND stock_state = $4
         RETURNING stock_state_at",
    )
    .bind(&bucket.product_id)
    .bind(bucket.denomination_minor)
    .bind(state.as_str())
    .bind(previous.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(at) = at else { return Ok(false) };
    let active = stock::active_cards(&mut tx, &bucket.product_id, bucket.denomination_minor).await?;
    // Ids and counts only: never a card code.
    let payload = serde_json::json!({
        "product_id": bucket.product_id,
        "denomination_minor": bucket.denomination_minor,
        "currency": bucket.currency,
        "active": active,
        "threshold": bucket.threshold,
        "previous": previous.as_str(),
        "state": state.as_str(),
        "at": at.format(&time::format_description::well_known::Rfc3339)?,
    });
    sqlx::query("INSERT INTO outbox (topic, aggregate_id, payload) VALUES ($1, $2, $3)")
        .bind(topic)
        .bind(format!("{}/{}", bucket.product_id, bucket.denomination_minor))
        .bind(&payload)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::counter!("allot_stock_transitions_total", "state" => state.as_str()).increment(1);
    tracing::info!(
        product_id = %bucket.product_id, denomination_minor = bucket.denomination_minor, active,
        previous = previous.as_str(), state = state.as_str(), "{topic}"
    );
    Ok(true)
}

impl Job for StockWatch {
    fn name(&self) -> &'static str {
        "stock-watch"
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(15)
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>> {
        Box::pin(async move {
            let pool = &ctx.db.primary;
            let buckets = stock::bucket_states(pool, ctx.config.stock_low_threshold).await?;
            let mut transitions = 0u64;
            for bucket in &buckets {
                metrics::gauge!("allot_stock_state", "product_id" => bucket.product_id.clone(),
                    "denomination_minor" => bucket.denomination_minor.to_string())
                .set(bucket.state().gauge());
                let previous = StockState::parse(&bucket.stock_state)
                    .map_err(|e| anyhow::anyhow!("stored stock_state {:?}: {}", bucket.stock_state, e.message))?;
                if publish(pool, bucket, previous).await? {
                    transitions += 1;
                }
            }
            let mut counts = Counts::new();
            counts.insert("buckets".into(), (buckets.len() as u64).into());
            counts.insert("transitions".into(), transitions.into());
            Ok(counts)
        })
    }
}
