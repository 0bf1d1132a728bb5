//! The API gate: everything a request must pass before a handler runs, cheapest check first.
//!
//! 1. declared size (`413`) and the signature header's presence, format and freshness (`401`),
//!    and the API key's format (`401`): headers only, before a byte of body is read;
//! 2. the body, within its size (`413`) and its read timeout (`408`); a broken body is `400`;
//! 3. the signature's MAC over method, path, key id, Idempotency-Key and body (`401`);
//! 4. the API key in Postgres (`401`/`403`);
//! 5. one Valkey round trip: the replay guard (a MAC seen before is `401`) and the client's
//!    exact rate limit (`429`).

use std::time::{SystemTime, UNIX_EPOCH};

use allot_shared::signature::{Presented, Signed};
use allot_shared::{ApiError, ApiKey, ErrorCode, headers, request_headers};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::config::SignatureMode;
use crate::error::{AppError, error_response};
use crate::request_guard::{RateState, Verdict};

fn unauthorized(message: String) -> AppError {
    AppError::Api(ApiError::new(ErrorCode::Unauthorized, message))
}

/// A field's values read and joined as the edge's fetch `Headers` reads them: each byte one
/// character (Latin-1), values joined by `", "`; so both sides refuse, and sign, the same thing.
pub fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> =
        headers.get_all(name).iter().map(|v| v.as_bytes().iter().map(|&b| char::from(b)).collect()).collect();
    request_headers::join(values.iter().map(String::as_str))
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Gate for the API (see the module docs). The caller is attached to the request for handlers.
pub async fn edge_and_key(State(st): State<AppState>, req: Request, next: Next) -> Result<Response, AppError> {
    let (parts, body) = req.into_parts();
    let (signature, key) = check_headers(&st, &parts)?;
    let bytes = read_body(body, st.config.limits.max_body_bytes, st.config.connections.body_read_timeout).await?;
    if let Some(presented) = &signature {
        verify_signature(&st, &parts, presented, &key, &bytes)?;
    }
    let caller = st.auth.authenticate(&key).await?;
    let tag = signature.as_ref().map(Presented::tag_hex);
    let verdict = match &st.guard {
        Some(guard) => guard.check(tag.as_deref(), caller.client_id, caller.rate_limit_per_minute).await,
        None => Verdict::Unchecked,
    };
    let rate = match verdict {
        Verdict::Replayed => {
            metrics::counter!("allot_signature_replays_total").increment(1);
            return Err(unauthorized("this edge signature was already used: a replayed request".to_owned()));
        }
        Verdict::Limited(state) => return Ok(rate_limited(&state)),
        Verdict::Pass(state) => Some(state),
        Verdict::Unchecked => None,
    };
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(caller);
    let mut resp = next.run(req).await;
    if let Some(state) = rate {
        set_rate_headers(&mut resp, &state);
    }
    Ok(resp)
}

/// The checks that need only the headers: declared size, the signature's presence, format and
/// freshness, and the API key's format and checksum.
fn check_headers(st: &AppState, parts: &Parts) -> Result<(Option<Presented>, ApiKey), AppError> {
    let limit = st.config.limits.max_body_bytes;
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let signature = match st.config.signature_mode {
        SignatureMode::Required => {
            let value = joined(&parts.headers, headers::SIGNATURE);
            let presented = Presented::parse(value.as_deref()).map_err(|e| unauthorized(e.to_string()))?;
            presented
                .check_fresh(unix_now(), st.config.signature_max_skew_secs)
                .map_err(|e| unauthorized(e.to_string()))?;
            Some(presented)
        }
        SignatureMode::Off => None,
    };
    let key = request_headers::api_key(joined(&parts.headers, headers::AUTHORIZATION).as_deref())?;
    Ok((signature, key))
}

/// The MAC over what the request asks for, under any configured secret.
fn verify_signature(
    st: &AppState,
    parts: &Parts,
    presented: &Presented,
    key: &ApiKey,
    body: &[u8],
) -> Result<(), AppError> {
    let idempotency_key = joined(&parts.headers, headers::IDEMPOTENCY_KEY).unwrap_or_default();
    let signed = Signed {
        method: parts.method.as_str(),
        path_and_query: parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        key_id: key.key_id(),
        idempotency_key: &idempotency_key,
        body,
    };
    let secrets: Vec<&[u8]> = st.config.edge_secrets.iter().map(Vec::as_slice).collect();
    presented.verify(&secrets, &signed, st.config.signature_accept_v1).map_err(|e| unauthorized(e.to_string()))
}

/// `429` over the client's own limit, with its rate-limit fields.
fn rate_limited(state: &RateState) -> Response {
    metrics::counter!("allot_rate_limited_total").increment(1);
    let err = ApiError::new(
        ErrorCode::RateLimited,
        format!("over this client's limit of {} requests per minute; retry later", state.policy.limit),
    );
    let mut resp = error_response(&err);
    set_rate_headers(&mut resp, state);
    resp
}

/// The IETF `RateLimit-Policy` and `RateLimit` fields, and `Retry-After` when refused.
fn set_rate_headers(resp: &mut Response, state: &RateState) {
    let remaining = state.remaining;
    let reset = u32::try_from(state.reset_secs).unwrap_or(u32::MAX);
    let fields = [
        (headers::RATELIMIT_POLICY, state.policy.policy_header()),
        (headers::RATELIMIT, state.policy.state_header(remaining, reset)),
    ];
    for (name, value) in fields {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    if state.retry_after_secs > 0 {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(state.retry_after_secs));
    }
}

/// `413`, in the edge's words (`AllocationRequest::parse` says the same).
fn too_large(limit: usize) -> AppError {
    AppError::api(ErrorCode::PayloadTooLarge, format!("the body must be at most {limit} bytes"))
}

/// The whole body within `limit` bytes and `timeout`.
async fn read_body(body: Body, limit: usize, timeout: std::time::Duration) -> Result<axum::body::Bytes, AppError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(AppError::Api(ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large(limit)),
        // A body that ends early (a lying Content-Length) or broken chunked framing.
        Ok(Err(_)) => Err(ApiError::validation("body", "could not be read (the connection failed mid-body)").into()),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}
