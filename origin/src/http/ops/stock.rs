//! `/ops/v1/stock`: stock per bucket, and each bucket's low-stock threshold.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::jobs::nullable;
use super::{JsonBody, OpsCaller, QueryOf, listing};
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::stock::{self, StockFilter, StockState};

/// The stock query's filters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockQuery {
    product_id: Option<String>,
    state: Option<String>,
}

/// Every bucket's stock (the listing answers even when Valkey does not: `cached` is null).
pub async fn list(State(st): State<AppState>, QueryOf(q): QueryOf<StockQuery>) -> Result<Response, AppError> {
    let state = q.state.as_deref().map(StockState::parse).transpose()?;
    let filter = StockFilter { product_id: q.product_id, state };
    let rows = stock::list(&st.db.primary, st.engine.cache(), st.config.stock_low_threshold, &filter).await?;
    Ok(listing(rows, None))
}

/// A new threshold: a number of cards, or null for the default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdBody {
    #[serde(deserialize_with = "nullable")]
    low_stock_threshold: Option<i64>,
}

/// Set a bucket's low-stock threshold.
pub async fn set_threshold(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path((product_id, denomination)): Path<(String, String)>,
    JsonBody(body): JsonBody<ThresholdBody>,
) -> Result<Response, AppError> {
    let pool = &st.db.primary;
    let minor = stock::resolve_bucket(pool, &product_id, &denomination).await?;
    stock::set_threshold(pool, &caller.actor, &product_id, minor, body.low_stock_threshold).await?;
    let filter = StockFilter { product_id: Some(product_id.clone()), state: None };
    let bucket = stock::list(pool, st.engine.cache(), st.config.stock_low_threshold, &filter)
        .await?
        .into_iter()
        .find(|b| b.denomination_minor == minor)
        // The bucket was just resolved and changed, and buckets are never deleted.
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("bucket {product_id}/{minor} changed but is not listed")))?;
    Ok(Json(bucket).into_response())
}
