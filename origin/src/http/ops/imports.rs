//! `/ops/v1/imports`: upload a CSV of cards (streamed), and read imports and their progress.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::operators::parse_uuid;
use super::{OpsCaller, QueryOf, listing};
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::imports::{self, ImportContext, ImportTarget};

/// `POST /ops/v1/imports`'s query: where the cards go; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// The product.
    product_id: String,
    /// A denomination the product offers, as on the wire (`25.00`; `25` is the same).
    denomination: String,
    /// The id to give the import (pick one to poll `GET /ops/v1/imports/{id}` during the
    /// upload); a new one when absent. An id already used is refused.
    #[param(format = Uuid)]
    id: Option<String>,
}

/// Import the body (a CSV file, streamed) into one bucket: `201` with the import when it
/// committed, `400 VALIDATION_FAILED` with its problems when not.
pub async fn create(
    State(st): State<AppState>,
    caller: OpsCaller,
    QueryOf(q): QueryOf<ImportQuery>,
    req: Request,
) -> Result<Response, AppError> {
    let id = q.id.as_deref().map(|v| parse_uuid("id", v)).transpose()?;
    let expected_bytes = content_length(req.headers());
    let target = ImportTarget { product_id: q.product_id, denomination: q.denomination, id, expected_bytes };
    let ctx = import_context(&st);
    let body = req.into_body().into_data_stream();
    let import = imports::import(ctx, &caller.actor, &target, body).await?;
    let location =
        HeaderValue::from_str(&format!("/ops/v1/imports/{}", import.id)).map_err(|e| AppError::Internal(e.into()))?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(import)).into_response())
}

/// What an upload into this process imports with (the API's and the console's).
pub fn import_context(st: &AppState) -> ImportContext<'_> {
    ImportContext {
        pool: &st.db.primary,
        cache: st.engine.cache(),
        keys: &st.config.card_keys,
        max_bytes: st.config.import_max_bytes,
    }
}

/// The body's announced length, if it is announced and readable.
pub fn content_length(headers: &header::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// One import, with its progress.
pub async fn get_one(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    Ok(Json(imports::get(&st.db.primary, id).await?).into_response())
}

/// A page of the listing: cursor and limit only; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<u32>,
}

/// Imports, newest first.
pub async fn list(State(st): State<AppState>, QueryOf(q): QueryOf<ListQuery>) -> Result<Response, AppError> {
    let (items, next) = imports::list(&st.db.primary, q.cursor.as_deref(), q.limit).await?;
    Ok(listing(items, next))
}
