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

/// A void: exactly one selector, a reason, and whether an import or bucket includes
/// allocated cards.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    card_ids: Option<Vec<i64>>,
    import_id: Option<Uuid>,
    product_id: Option<String>,
    denomination: Option<String>,
    reason: Option<String>,
    #[serde(default)]
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

/// The allocation lookup: exactly one selector, and a page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationQuery {
    id: Option<String>,
    client_id: Option<String>,
    client_reference: Option<String>,
    card_id: Option<i64>,
    cursor: Option<String>,
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
