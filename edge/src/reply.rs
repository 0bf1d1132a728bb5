//! What the worker answers, as plain data: every route builds a [`Reply`]; only
//! [`Reply::into_response`] touches the runtime. Errors always use the shared error body.

use allot_shared::health::Health;
use allot_shared::{ApiError, ErrorCode, headers};
use worker::{Headers, Response};

/// Header saying whether `/readyz` or `/v1/products` came from the edge cache (`hit` / `miss`).
pub const EDGE_CACHE: &str = "allot-edge-cache";

/// A response before it becomes a runtime object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers, lower-case names; a later entry with the same name replaces an earlier one.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// The error code, when this is an error the edge produced (for the access log).
    pub error_code: Option<ErrorCode>,
}

impl Reply {
    /// A reply with a status and body and no headers.
    pub fn new(status: u16, body: Vec<u8>) -> Self {
        Self { status, headers: Vec::new(), body, error_code: None }
    }

    /// The shared error body for `err`, stamped with the request id.
    pub fn error(err: &ApiError, request_id: &str) -> Self {
        Self::new(err.http_status(), err.to_json(Some(request_id)).into_bytes())
            .with_header("content-type", "application/json")
            .with_header("cache-control", "no-store")
            .with_error_code(err.code)
    }

    /// An `application/health+json` document with the draft's status (200 pass/warn, 503 fail).
    pub fn health(doc: &Health) -> Self {
        let body = serde_json::to_vec(doc).unwrap_or_else(|_| br#"{"status":"fail"}"#.to_vec());
        Self::new(doc.status.http_status(), body)
            .with_header("content-type", headers::HEALTH_CONTENT_TYPE)
            .with_header("cache-control", "no-store")
    }

    /// Add or replace a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_header(name, value);
        self
    }

    /// Add or replace a header in place.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Record the error code for the access log.
    pub fn with_error_code(mut self, code: ErrorCode) -> Self {
        self.error_code = Some(code);
        self
    }

    /// Statuses that must not carry a body (the Fetch API throws otherwise).
    fn bodyless(&self) -> bool {
        matches!(self.status, 204 | 205 | 304)
    }

    fn try_into_response(self) -> worker::Result<Response> {
        let headers = Headers::new();
        for (name, value) in &self.headers {
            headers.set(name, value)?;
        }
        let status = self.status;
        let response = if self.bodyless() { Response::empty()? } else { Response::from_bytes(self.body)? };
        Ok(response.with_status(status).with_headers(headers))
    }

    /// The runtime response. If the runtime refuses this reply (it should not), the caller gets a
    /// bare `500 INTERNAL` in the shared error body; if even that fails, the error goes to the
    /// runtime, which answers 500 itself.
    pub fn into_response(self, request_id: &str) -> worker::Result<Response> {
        self.try_into_response().or_else(|_| {
            let err = ApiError::new(ErrorCode::Internal, "internal error");
            Reply::error(&err, request_id).with_header(headers::REQUEST_ID, request_id).try_into_response()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_shared::ErrorBody;

    #[test]
    fn errors_use_the_shared_body() {
        let r = Reply::error(&ApiError::new(ErrorCode::NotFound, "no route for GET /metrics"), "req-1");
        assert_eq!(r.status, 404);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.error_code, Some(ErrorCode::NotFound));
        let body: ErrorBody = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body.error.code, ErrorCode::NotFound);
        assert_eq!(body.error.request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn headers_replace() {
        let r = Reply::new(200, vec![]).with_header("X-A", "1").with_header("x-a", "2");
        assert_eq!(r.headers, vec![("x-a".to_owned(), "2".to_owned())]);
    }
}
