//! What every gated `/v1` operation shares in the document: the errors of the gate
//! (credentials, suspension, the rate limit, the origin's failures) and the rate-limit headers.

use allot_shared::limits::DEFAULT_MAX_BODY_BYTES;
use allot_shared::{ApiError, ErrorCode, headers, request_headers};
use utoipa::openapi::ResponseBuilder;

use super::build::{Op, error_response_with, header};

/// The `RateLimit` and `RateLimit-Policy` headers.
pub fn rate_limit_headers() -> [(&'static str, utoipa::openapi::Header); 2] {
    [
        (
            headers::RATELIMIT,
            header("The current window's state: `\"<policy>\";r=<remaining>;t=<seconds to reset>` (IETF draft)."),
        ),
        (
            headers::RATELIMIT_POLICY,
            header("The quota policies applied: `\"<policy>\";q=<quota>;w=<window seconds>` (IETF draft)."),
        ),
    ]
}

/// The example of an error a real constructor makes.
pub fn real(result: Result<impl Sized, ApiError>) -> ApiError {
    match result {
        Err(e) => e,
        Ok(_) => unreachable!("the sample input is invalid by construction"),
    }
}

/// The errors every gated `/v1` operation can return: credentials, suspension, limits, and
/// the origin's own failures.
pub fn gate_errors(op: Op) -> Op {
    let missing_key = real(request_headers::api_key(None));
    let unknown_key = ApiError::new(ErrorCode::Unauthorized, "the API key is not valid");
    let rate_limited =
        ApiError::new(ErrorCode::RateLimited, "over this client's limit of 600 requests per minute; retry later");
    let mut op = op
        .error("The API key is missing, malformed, unknown or revoked.", &[missing_key, unknown_key])
        .error("The key's client is suspended.", &[ApiError::new(ErrorCode::Forbidden, "this client is suspended")]);
    let too_many =
        ResponseBuilder::new().description("Over the client's rate limit; retry after `Retry-After` seconds.");
    let too_many = error_response_with(too_many, &[rate_limited], &mut op.schemas);
    let too_many = rate_limit_headers().into_iter().fold(too_many, |r, (n, h)| r.header(n, h));
    op = op.response(429, too_many);
    op.shared_response(500, super::RESPONSE_INTERNAL).shared_response(503, super::RESPONSE_UNAVAILABLE)
}

/// `413` on a gated `GET`: a declared body over the limit is refused before anything else (a `GET`
/// needs no body).
pub fn declared_body_too_large(op: Op) -> Op {
    let too_large =
        ApiError::new(ErrorCode::PayloadTooLarge, format!("the body must be at most {DEFAULT_MAX_BODY_BYTES} bytes"));
    op.error("A `Content-Length` over the body limit (a `GET` needs no body).", &[too_large])
}
