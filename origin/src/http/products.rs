//! `GET /v1/products`: the catalogue, with `Cache-Control` and `ETag`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::AppError;

/// How long callers and the edge may reuse a catalogue.
const MAX_AGE: &str = "max-age=5";

/// The catalogue; `304` when the caller's `If-None-Match` still matches.
pub async fn list(State(st): State<AppState>, headers_in: HeaderMap) -> Result<Response, AppError> {
    let rendered = st.catalogue.current().await?;
    let etag = HeaderValue::from_str(&rendered.etag).map_err(|e| AppError::Internal(e.into()))?;
    let matches = headers_in
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == rendered.etag || t.trim() == "*"));
    let cache = [(header::CACHE_CONTROL, HeaderValue::from_static(MAX_AGE)), (header::ETAG, etag)];
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    Ok((StatusCode::OK, cache, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], rendered.body)
        .into_response())
}
