//! Request ids, deadlines, panics, access logs, and the edge-signature + API-key gate.

use std::time::Duration;

use allot_shared::{ApiError, ErrorCode, headers, ident::is_valid_request_id};
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Span;

use crate::error::{ErrorMarker, error_response};

/// The request's id, from the edge (validated) or made here.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Adopt or create the request id, echo it, and stamp it into error bodies.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| is_valid_request_id(s))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Some(ErrorMarker(err)) = resp.extensions().get::<ErrorMarker>().cloned() {
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_ENCODING);
        resp = Response::from_parts(parts, Body::from(err.to_json(Some(&id))));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(headers::REQUEST_ID, v);
    }
    resp
}

/// Bound a request's time; past it the caller gets `503 ORIGIN_UNAVAILABLE`. Each router sets
/// its routes' limit (an import upload streams for minutes; everything else has the request
/// limit).
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error_response(&ApiError::new(ErrorCode::OriginUnavailable, "the request took too long; retry")),
    }
}

/// A panic becomes a `500 INTERNAL` in the shared error body; nothing internal leaks.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    error_response(&ApiError::new(ErrorCode::Internal, "internal error"))
}

/// The shared error shape for every error response, including the framework's own rejections
/// (path, query, JSON, extension, method, body read), which carry text bodies of their own.
/// A response from our error type is marked and passes as it is.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    // Our own errors are marked; health documents (`application/health+json`) carry their 503
    // on purpose. Everything else that fails came from the framework as plain text.
    let is_json = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| {
        // The console's pages say what went wrong in words, in HTML.
        t.starts_with("application/json") || t.starts_with(headers::HEALTH_CONTENT_TYPE) || t.starts_with("text/html")
    });
    if status < 400 || resp.extensions().get::<ErrorMarker>().is_some() || is_json {
        return resp;
    }
    let err = match status {
        401 => ApiError::new(ErrorCode::Unauthorized, "the request is not authenticated"),
        403 => ApiError::new(ErrorCode::Forbidden, "the request is not allowed"),
        404 | 405 => ApiError::new(ErrorCode::NotFound, "no such resource"),
        408 => ApiError::new(ErrorCode::RequestTimeout, "the request did not arrive in time"),
        413 => ApiError::new(ErrorCode::PayloadTooLarge, "the body is too large"),
        429 => ApiError::new(ErrorCode::RateLimited, "too many requests; retry later"),
        503 => ApiError::new(ErrorCode::OriginUnavailable, "the origin cannot serve right now; retry"),
        400..=499 => ApiError::new(ErrorCode::ValidationFailed, "the request is malformed"),
        _ => ApiError::new(ErrorCode::Internal, "internal error"),
    };
    tracing::debug!(status, code = %err.code, "framework error reshaped");
    error_response(&err)
}

/// Unknown routes and methods.
pub async fn not_found(req: Request) -> Response {
    error_response(&ApiError::new(ErrorCode::NotFound, format!("no route for {} {}", req.method(), req.uri().path())))
}

fn route_of(req: &Request) -> String {
    req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned())
}

/// The span every request runs in: it continues the caller's W3C trace and carries the ids
/// every log line inside it reports.
pub fn make_span(req: &Request) -> Span {
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.as_str()).unwrap_or("");
    let route = route_of(req);
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let traceparent = req.headers().get(headers::TRACEPARENT).and_then(|v| v.to_str().ok());
    crate::telemetry::continue_trace(&span, traceparent);
    span
}

/// One structured access-log line per request.
pub fn on_response(resp: &Response, latency: Duration, span: &Span) {
    let code = resp.extensions().get::<ErrorMarker>().map(|m| m.0.code.as_str());
    span.record("http.response.status_code", resp.status().as_u16());
    tracing::info!(
        status = resp.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        error_code = code,
        "request"
    );
}

/// Count every request by route, method and status, and time it by route.
pub async fn track_metrics(req: Request, next: Next) -> Response {
    let route = route_of(&req);
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("allot_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("allot_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
