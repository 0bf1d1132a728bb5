//! Header names on the wire (lowercase, as HTTP/2 sends them).

/// Carries the caller's API key as `Bearer <key>`.
pub const AUTHORIZATION: &str = "authorization";
/// The caller's idempotency key for a POST.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set to `true` on a response that replays a stored one.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The request id, set by the edge (from cf-ray) and echoed back.
pub const REQUEST_ID: &str = "x-request-id";
/// The edge's HMAC signature over the forwarded request.
pub const SIGNATURE: &str = "allot-signature";
/// The caller's country as the edge saw it.
pub const CLIENT_COUNTRY: &str = "allot-client-country";
/// The edge location (colo) that forwarded the request.
pub const EDGE_COLO: &str = "allot-edge-colo";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";
/// Seconds to wait before retrying.
pub const RETRY_AFTER: &str = "retry-after";
/// IETF rate-limit state of the current window.
pub const RATELIMIT: &str = "ratelimit";
/// IETF rate-limit policy.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// The content type of health responses.
pub const HEALTH_CONTENT_TYPE: &str = "application/health+json";
