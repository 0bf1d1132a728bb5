//! Request checks before forwarding: the body's deadline, its size and the allocation body,
//! with the shared crate so the edge answers exactly what the origin would.

use std::time::Duration;

use allot_shared::{AllocationRequest, ApiError, ErrorCode, Limits};
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use worker::{Delay, Request};

fn too_large(limits: &Limits) -> ApiError {
    // The origin's wording (AllocationRequest::parse and its body-limit layer).
    ApiError::new(ErrorCode::PayloadTooLarge, format!("the body must be at most {} bytes", limits.max_body_bytes))
}

/// `413` when a declared `Content-Length` is over the limit (checked before reading anything).
/// An unparsable value is left to the byte count.
pub fn check_declared_length(content_length: Option<&str>, limits: &Limits) -> Result<(), ApiError> {
    match content_length.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(n) if n > limits.max_body_bytes as u64 => Err(too_large(limits)),
        _ => Ok(()),
    }
}

/// `413` when the bytes actually received are over the limit.
pub fn check_body_len(len: usize, limits: &Limits) -> Result<(), ApiError> {
    if len > limits.max_body_bytes { Err(too_large(limits)) } else { Ok(()) }
}

/// Validate a `POST /v1/allocations` body exactly as the origin does.
pub fn check_allocation_body(body: &[u8], limits: &Limits) -> Result<(), ApiError> {
    AllocationRequest::parse(body, limits).map(|_| ())
}

/// `408 REQUEST_TIMEOUT` for a body that did not arrive in time (the origin's wording).
pub fn body_timed_out(timeout_ms: u32) -> ApiError {
    ApiError::new(ErrorCode::RequestTimeout, format!("the body did not arrive within {timeout_ms} ms"))
}

/// Read the request body, stopping with `413` as soon as it passes the limit (a chunked body
/// has no `Content-Length` to check up front), `408` when the whole body has not arrived within
/// `timeout_ms` (one deadline for the body, not per chunk: a trickle cannot hold the isolate),
/// and `400` when the stream breaks. A request without a body reads as empty.
pub async fn read_body(req: &mut Request, limits: &Limits, timeout_ms: u32) -> Result<Vec<u8>, ApiError> {
    let Ok(mut stream) = req.stream() else {
        return Ok(Vec::new());
    };
    let mut deadline = std::pin::pin!(Delay::from(Duration::from_millis(u64::from(timeout_ms))));
    let mut body = Vec::new();
    loop {
        let next = match select(stream.next(), deadline.as_mut()).await {
            Either::Left((next, _)) => next,
            Either::Right(_) => return Err(body_timed_out(timeout_ms)),
        };
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|_| ApiError::validation("body", "could not be read (the connection failed mid-body)"))?;
        body.extend_from_slice(&chunk);
        check_body_len(body.len(), limits)?;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_quantity: 20, max_body_bytes: 100 }
    }

    #[test]
    fn body_limits() {
        let l = limits();
        assert!(check_declared_length(None, &l).is_ok());
        assert!(check_declared_length(Some("100"), &l).is_ok());
        assert!(check_declared_length(Some("junk"), &l).is_ok());
        let err = check_declared_length(Some("101"), &l).unwrap_err();
        assert_eq!((err.code, err.http_status()), (ErrorCode::PayloadTooLarge, 413));
        assert!(check_declared_length(Some("99999999999999999999999"), &l).is_ok()); // overflow: bytes decide
        assert!(check_body_len(100, &l).is_ok());
        assert_eq!(check_body_len(101, &l).unwrap_err().code, ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn body_timeouts_use_the_shared_shape() {
        let err = body_timed_out(250);
        assert_eq!((err.code, err.http_status()), (ErrorCode::RequestTimeout, 408));
        assert_eq!(err.message, "the body did not arrive within 250 ms");
    }

    #[test]
    fn allocation_bodies_match_the_origin() {
        let l = limits();
        assert!(check_allocation_body(br#"{"product_id":"gift-usd","denomination":"25.00","quantity":1}"#, &l).is_ok());
        let err = check_allocation_body(br#"{"product_id":"gift-usd","denomination":"25.00","quantity":21}"#, &l)
            .unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "quantity");
        assert_eq!(check_allocation_body(b"[1]", &l).unwrap_err().code, ErrorCode::ValidationFailed);
        assert_eq!(check_allocation_body(b"", &l).unwrap_err().code, ErrorCode::ValidationFailed);
    }
}
