//! The origin's one error type, mapped to an HTTP response in exactly one place.

use allot_shared::{ApiError, ErrorCode};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A failure the caller can act on (bad input, out of stock, …).
    #[error("{0}")]
    Api(ApiError),
    /// Postgres failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Anything else unexpected.
    #[error("internal: {0}")]
    Internal(#[from] anyhow::Error),
}

impl From<ApiError> for AppError {
    fn from(e: ApiError) -> Self {
        AppError::Api(e)
    }
}

impl AppError {
    /// Shorthand for an API error.
    pub fn api(code: ErrorCode, message: impl Into<String>) -> Self {
        AppError::Api(ApiError::new(code, message))
    }

    /// The caller-facing error this becomes; internals are logged, never returned.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            AppError::Api(e) => e.clone(),
            AppError::Database(e) => database_error(e),
            AppError::Internal(_) => ApiError::new(ErrorCode::Internal, "internal error"),
        }
    }
}

/// Whether a database error means "Postgres is unreachable or overloaded" (retryable).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
            // connection_exception family, query_canceled (statement timeout), read-only after failover
            Some(
                "57P01"
                    | "57P02"
                    | "57P03"
                    | "53300"
                    | "08000"
                    | "08003"
                    | "08006"
                    | "08001"
                    | "08004"
                    | "57014"
                    | "25006"
            )
        ),
        _ => false,
    }
}

fn database_error(e: &sqlx::Error) -> ApiError {
    if is_unavailable(e) {
        return ApiError::new(ErrorCode::OriginUnavailable, "the database is unavailable; retry shortly");
    }
    if let sqlx::Error::Database(db) = e {
        // Constraint names are the contract between the schema and the API.
        match (db.code().as_deref(), db.constraint()) {
            (Some("55P03"), _) => {
                return ApiError::new(
                    ErrorCode::IdempotencyInProgress,
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                );
            }
            (Some("40001" | "40P01"), _) => {
                return ApiError::new(ErrorCode::OriginUnavailable, "the request conflicted with another; retry");
            }
            (_, Some("inventories_denomination_offered")) => {
                return ApiError::validation("denomination", "is not offered for this product");
            }
            (_, Some("inventories_code_digest_unique")) => {
                return ApiError::validation("code", "a card with this code is already loaded");
            }
            (_, Some("funding_accounts_within_credit")) => {
                return ApiError::validation(
                    "balance",
                    "the account would owe more than its credit limit allows; nothing was changed",
                );
            }
            (_, Some("product_denominations_product_id_fkey" | "inventories_product_id_fkey")) => {
                return ApiError::validation("product_id", "no such product");
            }
            _ => {}
        }
    }
    ApiError::new(ErrorCode::Internal, "internal error")
}

/// Marks a response as an error so the request-id layer can stamp the id into its body.
#[derive(Clone, Debug)]
pub struct ErrorMarker(pub ApiError);

/// The response for an API error (without request id; the request-id layer adds it).
pub fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], e.to_json(None)).into_response();
    if matches!(e.code, ErrorCode::OriginUnavailable | ErrorCode::RateLimited | ErrorCode::IdempotencyInProgress) {
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp.extensions_mut().insert(ErrorMarker(e.clone()));
    resp
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let api = self.to_api_error();
        match &self {
            AppError::Api(_) => {}
            AppError::Database(e) if is_unavailable(e) => crate::outage::POSTGRES.failed("request", e),
            other => tracing::error!(error = %other, "request failed"),
        }
        error_response(&api)
    }
}
