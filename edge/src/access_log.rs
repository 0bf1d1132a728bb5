//! One structured JSON line per request. Ids, route, status, timing and location only: never the
//! API key's secret, a body, a card code, or the raw path (allocation ids stay out).

use serde::Serialize;

use crate::context::RequestContext;
use crate::reply::Reply;
use crate::route::Route;

/// The log line's fields.
#[derive(Debug, Serialize)]
pub struct AccessLog<'a> {
    /// Always `info`.
    pub level: &'static str,
    /// Always `request`.
    pub msg: &'static str,
    /// When the request arrived (ms since the epoch).
    pub ts: u64,
    /// The request id.
    pub request_id: &'a str,
    /// The trace id (32 hex).
    pub trace_id: String,
    /// The method as sent.
    pub method: &'a str,
    /// The route's name (`GET /v1/allocations/{id}`), or `not found`.
    pub route: &'static str,
    /// The status returned.
    pub status: u16,
    /// The error code when the edge or origin refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// Wall time from arrival to reply, in ms (the Workers clock moves only across I/O).
    pub duration_ms: u64,
    /// The region served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<&'a str>,
    /// The Cloudflare location.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo: Option<&'a str>,
    /// The caller's country.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<&'a str>,
    /// The API key id (public).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    /// `hit` or `miss` on edge-cached routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// Origin attempts made (0 when none).
    pub origin_attempts: u8,
    /// How the last origin attempt went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_outcome: Option<&'static str>,
    /// The instance the last origin attempt went to: `<region>/<place in ORIGINS from 1>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_instance: Option<&'a str>,
}

impl<'a> AccessLog<'a> {
    /// The line for a finished request.
    pub fn new(cx: &'a RequestContext, route: Route, reply: &Reply, now_ms: u64) -> Self {
        Self {
            level: "info",
            msg: "request",
            ts: cx.started_ms,
            request_id: &cx.request_id,
            trace_id: cx.trace.trace_id(),
            method: &cx.method,
            route: route.name(),
            status: reply.status,
            error_code: reply.error_code.map(|c| c.as_str()),
            duration_ms: now_ms.saturating_sub(cx.started_ms),
            region: cx.region.as_deref(),
            colo: cx.colo.as_deref(),
            country: cx.country.as_deref(),
            key_id: cx.key_id.as_deref(),
            cache: cx.cache,
            origin_attempts: cx.origin_attempts,
            origin_outcome: cx.origin_outcome,
            origin_instance: cx.origin_instance.as_deref(),
        }
    }

    /// The JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"level":"error","msg":"access log failed"}"#.to_owned())
    }
}
