//! `POST /v1/allocations`, `GET /v1/allocations` and `GET /v1/allocations/{id}`.

use allot_shared::{AllocationRequest, ErrorCode, headers, request_headers, trace::TraceParent};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use serde::Deserialize;

use super::AppState;
use super::gate::joined;
use super::ops::QueryOf;
use crate::allocation::listing::{Listing, ListingQuery};
use crate::allocation::{Caller, Outcome};
use crate::error::AppError;

fn json(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Allocate cards (or replay the allocation made earlier with the same key).
pub async fn create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers_in: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let key = joined(&headers_in, headers::IDEMPOTENCY_KEY);
    let key = request_headers::idempotency_key(key.as_deref())?;
    let request = AllocationRequest::parse(&body, &st.config.limits)?;
    let trace = headers_in
        .get(headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map(|t| t.to_string());

    let outcome = st.engine.allocate(caller, key.to_owned(), request, trace).await?;
    let location =
        HeaderValue::try_from(location(outcome.allocation_id())).map_err(|e| AppError::Internal(e.into()))?;
    let mut resp = match outcome {
        Outcome::Created(_, body) => json(StatusCode::CREATED, body),
        Outcome::Replayed(_, body) => {
            let mut resp = json(StatusCode::CREATED, body);
            resp.headers_mut().insert(headers::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            resp
        }
    };
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

/// Where an allocation can be read back: the `Location` of its `201`, relative to the API's root
/// (the edge and the origin serve it at the same path).
pub fn location(id: uuid::Uuid) -> String {
    format!("/v1/allocations/{id}")
}

/// One allocation, to its owner only; anyone else gets 404, not 403.
pub async fn get_one(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, AppError> {
    let not_found = || AppError::api(ErrorCode::NotFound, "no such allocation");
    // The raw last segment, not axum's `Path`: an id with percent-encoded junk (`%FF`) is simply
    // not an allocation (404, as at the edge), not a malformed URL.
    let raw = uri.path().rsplit('/').next().unwrap_or("");
    let id = uuid::Uuid::parse_str(raw).map_err(|_| not_found())?;
    match st.engine.get_allocation(&caller, id).await? {
        Some(body) => Ok(json(StatusCode::OK, body)),
        None => Err(not_found()),
    }
}

/// `GET /v1/allocations`'s query. Unknown parameters are refused (`400`), so a misspelt filter
/// never silently lists everything.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `next_cursor` of the previous page; send the same filters with it.
    cursor: Option<String>,
    /// Allocations per page, 1-100 (20 when absent).
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<u32>,
    /// Only allocations created strictly after this time (RFC 3339; encode `+` as `%2B`).
    #[param(format = DateTime, example = "2026-11-27T00:00:00Z")]
    created_after: Option<String>,
    /// Only allocations created strictly before this time (RFC 3339; encode `+` as `%2B`).
    #[param(format = DateTime, example = "2026-11-28T00:00:00Z")]
    created_before: Option<String>,
    /// Only allocations of this product.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", example = "gift-usd")]
    product_id: Option<String>,
    /// Only allocations made with this `client_reference` (1-128 characters, no control characters).
    #[param(min_length = 1, max_length = 128, example = "order-1042")]
    client_reference: Option<String>,
}

impl From<ListQuery> for ListingQuery {
    fn from(q: ListQuery) -> Self {
        ListingQuery {
            cursor: q.cursor,
            limit: q.limit,
            created_after: q.created_after,
            created_before: q.created_before,
            product_id: q.product_id,
            client_reference: q.client_reference,
        }
    }
}

/// The caller's own allocations, newest first, a page at a time.
pub async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryOf(query): QueryOf<ListQuery>,
) -> Result<Response, AppError> {
    let listing = Listing::parse(caller.client_id, &query.into())?;
    let body = st.engine.list_allocations(&caller, &listing).await?;
    Ok(json(StatusCode::OK, body))
}
