//! The one error shape edge and origin both return.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every error code the API can return; each maps to exactly one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request is malformed or breaks a validation rule.
    ValidationFailed,
    /// The API key or edge signature is missing, malformed, unknown or revoked.
    Unauthorized,
    /// The caller is known but may not do this.
    Forbidden,
    /// No such resource (or not the caller's).
    NotFound,
    /// A POST arrived without an `Idempotency-Key`.
    IdempotencyKeyRequired,
    /// A request with the same key is still being processed.
    IdempotencyInProgress,
    /// Fewer cards are available than were asked for; nothing was allocated.
    OutOfStock,
    /// The client's balance (with its credit limit) does not cover the price; nothing was
    /// allocated. `details.available` and `details.required` say by how much.
    InsufficientFunds,
    /// The idempotency key was used before with a different body.
    IdempotencyMismatch,
    /// The body is larger than allowed.
    PayloadTooLarge,
    /// The request's headers or body did not arrive in time.
    RequestTimeout,
    /// Too many requests; see `Retry-After`.
    RateLimited,
    /// The origin cannot serve right now; retry later.
    OriginUnavailable,
    /// An unexpected failure; no internals are disclosed.
    Internal,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and documentation.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::ValidationFailed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::IdempotencyKeyRequired,
        ErrorCode::IdempotencyInProgress,
        ErrorCode::OutOfStock,
        ErrorCode::InsufficientFunds,
        ErrorCode::IdempotencyMismatch,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::RateLimited,
        ErrorCode::OriginUnavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status this code is always returned with.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::ValidationFailed | ErrorCode::IdempotencyKeyRequired => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::InsufficientFunds => 402,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::IdempotencyInProgress | ErrorCode::OutOfStock => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::IdempotencyMismatch => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::OriginUnavailable => 503,
        }
    }

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::IdempotencyKeyRequired => "IDEMPOTENCY_KEY_REQUIRED",
            ErrorCode::IdempotencyInProgress => "IDEMPOTENCY_IN_PROGRESS",
            ErrorCode::OutOfStock => "OUT_OF_STOCK",
            ErrorCode::InsufficientFunds => "INSUFFICIENT_FUNDS",
            ErrorCode::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::OriginUnavailable => "ORIGIN_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API error before it is given a request id and serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// What went wrong, as a code.
    pub code: ErrorCode,
    /// A human-readable sentence for the caller.
    pub message: String,
    /// Structured detail (which field, what is available), if any.
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with a code and message and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: None }
    }

    /// A `VALIDATION_FAILED` error naming the offending field.
    pub fn validation(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self {
            code: ErrorCode::ValidationFailed,
            message: format!("{field}: {reason}"),
            details: Some(serde_json::json!({ "field": field, "reason": reason })),
        }
    }

    /// Attach structured details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// The wire body for this error.
    pub fn to_body(&self, request_id: Option<&str>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                request_id: request_id.map(str::to_owned),
                details: self.details.clone(),
            },
        }
    }

    /// The serialised wire body for this error.
    pub fn to_json(&self, request_id: Option<&str>) -> String {
        serde_json::to_string(&self.to_body(request_id))
            .unwrap_or_else(|_| r#"{"error":{"code":"INTERNAL","message":"internal error"}}"#.into())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The top-level error document: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inside of an error document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A human-readable message.
    pub message: String,
    /// The request id, for support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Structured details, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_architecture() {
        let expected = [
            ("VALIDATION_FAILED", 400),
            ("UNAUTHORIZED", 401),
            ("FORBIDDEN", 403),
            ("NOT_FOUND", 404),
            ("IDEMPOTENCY_KEY_REQUIRED", 400),
            ("IDEMPOTENCY_IN_PROGRESS", 409),
            ("OUT_OF_STOCK", 409),
            ("INSUFFICIENT_FUNDS", 402),
            ("IDEMPOTENCY_MISMATCH", 422),
            ("PAYLOAD_TOO_LARGE", 413),
            ("REQUEST_TIMEOUT", 408),
            ("RATE_LIMITED", 429),
            ("ORIGIN_UNAVAILABLE", 503),
            ("INTERNAL", 500),
        ];
        for (code, (name, status)) in ErrorCode::ALL.iter().zip(expected) {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.http_status(), status);
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{name}\""));
        }
    }

    #[test]
    fn body_round_trips_and_omits_empty_fields() {
        let err = ApiError::validation("quantity", "must be between 1 and 20");
        let json = err.to_json(Some("req-1"));
        let body: ErrorBody = serde_json::from_str(&json).unwrap();
        assert_eq!(body.error.code, ErrorCode::ValidationFailed);
        assert_eq!(body.error.request_id.as_deref(), Some("req-1"));
        assert_eq!(body.error.details.unwrap()["field"], "quantity");
        let bare = ApiError::new(ErrorCode::NotFound, "no such allocation").to_json(None);
        assert_eq!(bare, r#"{"error":{"code":"NOT_FOUND","message":"no such allocation"}}"#);
    }
}
