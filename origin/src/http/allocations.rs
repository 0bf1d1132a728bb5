//! `POST /v1/allocations` and `GET /v1/allocations/{id}`.

use allot_shared::{AllocationRequest, ErrorCode, headers, request_headers, trace::TraceParent};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::gate::joined;
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

    match st.engine.allocate(caller, key.to_owned(), request, trace).await? {
        Outcome::Created(body) => Ok(json(StatusCode::CREATED, body)),
        Outcome::Replayed(body) => {
            let mut resp = json(StatusCode::CREATED, body);
            resp.headers_mut().insert(headers::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(resp)
        }
    }
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
