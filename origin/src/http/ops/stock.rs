//! `/ops/v1/stock`: stock per bucket, and each bucket's low-stock threshold.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{JsonBody, OpsCaller, QueryOf, listing};
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::stock::{self, StockFilter, StockState};

/// `GET /ops/v1/stock`'s query: every filter narrows; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StockQuery {
    /// Exactly this product.
    product_id: Option<String>,
    /// Only buckets in this state now.
    #[param(value_type = Option<StockState>, inline)]
    state: Option<String>,
}

/// Every bucket's stock (the listing answers even when Valkey does not: `cached` is null). Read
/// from the replica while it serves, so it may be a moment behind.
pub async fn list(State(st): State<AppState>, QueryOf(q): QueryOf<StockQuery>) -> Result<Response, AppError> {
    let state = q.state.as_deref().map(StockState::parse).transpose()?;
    let filter = StockFilter { product_id: q.product_id, state };
    let (cache, threshold, filter) = (st.engine.cache(), st.config.stock_low_threshold, &filter);
    let rows = st.db.read(|pool| async move { stock::list(&pool, cache, threshold, filter).await }).await?;
    Ok(listing(rows, None))
}

/// `PUT /ops/v1/stock/{product_id}/{denomination}/threshold`: the new threshold.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ThresholdChange)]
pub struct ThresholdBody {
    /// Cards, 0-100,000,000 (0: never `low`, only `ok` or `out`); null for the default. The field
    /// is required.
    #[schema(required = true, minimum = 0, maximum = 100_000_000)]
    #[serde(deserialize_with = "super::nullable")]
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
