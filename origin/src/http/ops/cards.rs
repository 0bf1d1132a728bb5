//! `/ops/v1/voids` and `/ops/v1/allocations`: voiding cards, looking allocations up with masked
//! codes, and revealing them (admin, audited, never cached).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::operators::parse_uuid;
use super::{JsonBody, OpsCaller, QueryOf, listing};
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::allocations::{self, AllocationLookup, AllocationPage};
use crate::ops::voids::{self, VoidRequest, VoidSelector};

/// `POST /ops/v1/voids`: exactly one selector (`card_ids`, `import_id`, or `product_id` with
/// `denomination`), a reason, and whether an import or bucket includes allocated cards.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    /// 1-10,000 card ids (a repeat counts once), voided whatever their status.
    #[schema(min_items = 1, max_items = 10_000)]
    card_ids: Option<Vec<i64>>,
    /// The cards of one import.
    import_id: Option<Uuid>,
    /// With `denomination`: the cards of one bucket.
    product_id: Option<String>,
    /// With `product_id`: a denomination the product offers (`25` and `25.00` are the same).
    denomination: Option<String>,
    /// Why, 1-500 characters: stored on each card and in each `card.voided` event.
    // Optional here only so that its absence gets its own message; the document says required.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 500)]
    reason: Option<String>,
    /// For `import_id` and the bucket only: also void allocated cards (left alone and counted in
    /// `skipped_allocated` when false).
    #[serde(default)]
    #[schema(default = false)]
    include_allocated: bool,
}

/// Void cards.
pub async fn void(
    State(st): State<AppState>,
    caller: OpsCaller,
    JsonBody(body): JsonBody<VoidBody>,
) -> Result<Response, AppError> {
    let selector =
        VoidSelector::from_fields(body.card_ids, body.import_id, body.product_id, body.denomination.as_deref())?;
    let Some(reason) = body.reason else {
        return Err(allot_shared::ApiError::validation("reason", "is required (1-500 characters)").into());
    };
    let req = VoidRequest { selector, reason, include_allocated: body.include_allocated };
    let outcome = voids::void_cards(&st.db.primary, st.engine.cache(), &caller.actor, &req).await?;
    Ok(Json(outcome).into_response())
}

/// `GET /ops/v1/allocations`'s query: exactly one of `id`, `client_id`, `client_reference`,
/// `card_id`; a page for `client_id` and `client_reference`. Unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AllocationQuery {
    /// One allocation.
    #[param(format = Uuid)]
    id: Option<String>,
    /// A client's allocations, newest first.
    #[param(format = Uuid)]
    client_id: Option<String>,
    /// Allocations with this client reference (1-255 bytes), newest first.
    client_reference: Option<String>,
    /// The allocation holding this card (none when it is not allocated).
    card_id: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Allocations per page, 1-100 (20 when absent; each holds up to 1000 cards).
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<u32>,
}

/// Allocations by id, client, client reference or card, newest first, codes masked.
pub async fn find(State(st): State<AppState>, QueryOf(q): QueryOf<AllocationQuery>) -> Result<Response, AppError> {
    let id = q.id.as_deref().map(|v| parse_uuid("id", v)).transpose()?;
    let client_id = q.client_id.as_deref().map(|v| parse_uuid("client_id", v)).transpose()?;
    let lookup = AllocationLookup::from_fields(id, client_id, q.client_reference, q.card_id)?;
    let page = AllocationPage::parse(q.cursor.as_deref(), q.limit)?;
    let (rows, next) = allocations::find(&st.db.primary, &st.config.card_keys, &lookup, page).await?;
    Ok(listing(rows, next))
}

/// One allocation, codes masked.
pub async fn show(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    Ok(Json(allocations::show(&st.db.primary, &st.config.card_keys, id).await?).into_response())
}

/// One allocation's codes and PINs in clear: audited first, never cached.
pub async fn reveal(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let view = allocations::reveal(&st.db.primary, &st.config.card_keys, &caller.actor, id).await?;
    let mut resp = Json(view).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
