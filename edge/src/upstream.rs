//! Forwarding to an origin: sign, send with a bounded timeout, fail over to the region's next
//! instance when that is safe, and hand back the origin's answer (status, body, the headers that
//! matter).
//!
//! Retry rule: a connect failure or a 502/503/504 is tried again on the next instance of the
//! region (each instance at most once; a region with one instance retries it once, see
//! [`crate::origins`]), because every forwarded request is safe to repeat: GETs by definition, and
//! a POST only reaches this point with a validated `Idempotency-Key` (the origin replays instead
//! of allocating twice). A timeout is not retried: the origin is slow, not gone, and the request
//! may still be running there. Another attempt would add its load to an origin (and a Postgres)
//! that is already behind, a POST would most likely meet its own first attempt still holding the
//! key (`409 IDEMPOTENCY_IN_PROGRESS`), and the caller's wait would grow by a whole timeout per
//! instance. The caller, who knows its own deadline, retries with the same key instead.

use std::future::Future;
use std::time::Duration;

use allot_shared::{ApiError, ErrorBody, ErrorCode, headers, signature};
use worker::js_sys::Uint8Array;
use worker::{AbortSignal, Delay, Fetch, Headers, Method, Request, RequestInit, RequestRedirect};

use crate::origins::{self, Instances};
use crate::platform;
use crate::reply::Reply;

/// Pause between attempts (an instance restarting, a load balancer re-routing).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// `Retry-After` on `503 ORIGIN_UNAVAILABLE`, in seconds.
pub const UNAVAILABLE_RETRY_AFTER: u32 = 2;

/// Origin response headers passed back to the caller (the body and status always are).
/// `RateLimit-Policy` is passed back only to be merged with the edge's own (see [`policies`]).
const PASSED_BACK: [&str; 8] = [
    "content-type",
    headers::IDEMPOTENT_REPLAYED,
    "etag",
    "cache-control",
    headers::RETRY_AFTER,
    "location",
    headers::RATELIMIT,
    headers::RATELIMIT_POLICY,
];

/// One request to an origin, before signing.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// `GET` or `POST`.
    pub method: Method,
    /// Path and query exactly as the origin will see them (and as signed).
    pub path_and_query: String,
    /// The caller's API key id (signed, so a request cannot be resent under another key).
    pub key_id: String,
    /// Headers besides the signature.
    pub headers: Vec<(&'static str, String)>,
    /// The body, byte for byte as the caller sent it.
    pub body: Vec<u8>,
}

impl Outbound {
    /// A header set for the origin.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An origin's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// All response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The origin answered (any status).
    Answered(Answer),
    /// No answer: connection refused or reset, DNS, TLS.
    Unreachable,
    /// No complete answer within the timeout.
    TimedOut,
}

impl Attempt {
    /// Whether another attempt may help: no connection, or a gateway-class status.
    pub fn is_retryable(&self) -> bool {
        match self {
            Attempt::Unreachable => true,
            Attempt::Answered(a) => matches!(a.status, 502..=504),
            Attempt::TimedOut => false,
        }
    }

    /// A short word for logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Attempt::Answered(_) => "answered",
            Attempt::Unreachable => "unreachable",
            Attempt::TimedOut => "timeout",
        }
    }
}

/// The last attempt, the instance it went to, and how many were made.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The final attempt.
    pub last: Attempt,
    /// The base URL of the instance the final attempt went to.
    pub origin: String,
    /// From 1 to the region's instances (2 for a region with one).
    pub attempts: u8,
}

/// The method as the signature and the wire spell it.
fn method_str(m: &Method) -> &'static str {
    match m {
        Method::Post => "POST",
        _ => "GET",
    }
}

/// Send `out`, signed with `secret`, to the region's instances in this request's order until an
/// attempt is not retryable (see the module's retry rule).
pub async fn forward(out: &Outbound, instances: &Instances, secret: &[u8], timeout_ms: u32) -> Forwarded {
    let order = instances.attempt_order(origins::next_turn());
    try_in_order(&order, |base| send_once(out, base, secret, timeout_ms), || Delay::from(RETRY_PAUSE)).await
}

/// Try `send` on each base URL of `order` in turn, stopping at the first attempt that is not
/// retryable, with `pause` between attempts (never after the last).
pub async fn try_in_order<'o, S, SF, P, PF>(order: &[&'o str], mut send: S, mut pause: P) -> Forwarded
where
    S: FnMut(&'o str) -> SF,
    SF: Future<Output = Attempt>,
    P: FnMut() -> PF,
    PF: Future<Output = ()>,
{
    debug_assert!(!order.is_empty(), "a region has at least one instance");
    let mut last = Forwarded { last: Attempt::Unreachable, origin: String::new(), attempts: 0 };
    for &base in order {
        if last.attempts > 0 {
            pause().await;
        }
        let attempt = send(base).await;
        last = Forwarded { last: attempt, origin: base.to_owned(), attempts: last.attempts.saturating_add(1) };
        if !last.last.is_retryable() {
            break;
        }
    }
    last
}

/// One signed attempt; the timeout covers connecting, the headers and the whole body.
pub async fn send_once(out: &Outbound, base: &str, secret: &[u8], timeout_ms: u32) -> Attempt {
    // A fresh timestamp and nonce per attempt: a retry is signed again, with a MAC of its own,
    // so the origin's replay guard does not take the edge's retry for a replay.
    let ts = i64::try_from(platform::now_ms() / 1000).unwrap_or(0);
    let nonce = hex::encode(platform::random::<16>());
    let idempotency_key = out.header(headers::IDEMPOTENCY_KEY).unwrap_or("");
    let signed = signature::Signed {
        method: method_str(&out.method),
        path_and_query: &out.path_and_query,
        key_id: &out.key_id,
        idempotency_key,
        body: &out.body,
    };
    let sig = signature::sign(secret, ts, &nonce, &signed);
    let signal = AbortSignal::from(worker::web_sys::AbortSignal::timeout_with_u32(timeout_ms));
    let request = match build_request(out, base, &sig) {
        Ok(r) => r,
        // Header values come from validated input; a refusal here is a bug, not an outage.
        Err(_) => return Attempt::Unreachable,
    };
    let mut response = match Fetch::Request(request).send_with_signal(&signal).await {
        Ok(r) => r,
        Err(_) if signal.aborted() => return Attempt::TimedOut,
        Err(_) => return Attempt::Unreachable,
    };
    let status = response.status_code();
    let headers = response.headers().entries().collect();
    match response.bytes().await {
        Ok(body) => Attempt::Answered(Answer { status, headers, body }),
        Err(_) if signal.aborted() => Attempt::TimedOut,
        Err(_) => Attempt::Unreachable,
    }
}

fn build_request(out: &Outbound, base: &str, sig: &str) -> worker::Result<Request> {
    let h = Headers::new();
    for (name, value) in &out.headers {
        h.set(name, value)?;
    }
    h.set(headers::SIGNATURE, sig)?;
    let mut init = RequestInit::new();
    init.with_method(out.method.clone()).with_headers(h).with_redirect(RequestRedirect::Manual);
    if out.method == Method::Post {
        init.with_body(Some(Uint8Array::from(out.body.as_slice()).into()));
    }
    Request::new_with_init(&format!("{base}{}", out.path_and_query), &init)
}

/// The caller's reply for a forwarded request: the origin's answer, or `503 ORIGIN_UNAVAILABLE`.
pub fn reply_for(forwarded: &Forwarded, region: &str, request_id: &str) -> Reply {
    match &forwarded.last {
        Attempt::Answered(a) if !forwarded.last.is_retryable() => pass_back(a, request_id),
        _ => unavailable(region, request_id),
    }
}

/// The origin's status, body and relevant headers, with the edge's request id. An origin error's
/// code is noted for the access log (only error bodies are looked at: success bodies hold codes).
pub fn pass_back(a: &Answer, request_id: &str) -> Reply {
    let mut reply = Reply::new(a.status, a.body.clone());
    if a.status >= 400 {
        reply.error_code = serde_json::from_slice::<ErrorBody>(&a.body).ok().map(|b| b.error.code);
    }
    for name in PASSED_BACK {
        if let Some(v) = a.header(name) {
            reply.set_header(name, v);
        }
    }
    reply.with_header(headers::REQUEST_ID, request_id)
}

/// The `RateLimit-Policy` the caller gets: the edge's policy, then the origin's when it sent one,
/// as one structured-field list (draft-ietf-httpapi-ratelimit-headers: each layer names its own
/// quota, and `RateLimit` refers to one of them by name).
pub fn policies(edge: &str, origin: Option<&str>) -> String {
    match origin.map(str::trim).filter(|o| !o.is_empty()) {
        Some(o) => format!("{edge}, {o}"),
        None => edge.to_owned(),
    }
}

/// `503 ORIGIN_UNAVAILABLE` with `Retry-After`.
pub fn unavailable(region: &str, request_id: &str) -> Reply {
    let err =
        ApiError::new(ErrorCode::OriginUnavailable, format!("the origin for region {region} is unavailable; retry"));
    Reply::error(&err, request_id).with_header(headers::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Attempt {
        Attempt::Answered(Answer {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("idempotent-replayed".into(), "true".into()),
                ("set-cookie".into(), "x=1".into()),
                ("x-request-id".into(), "origin-made".into()),
            ],
            body: b"{}".to_vec(),
        })
    }

    #[test]
    fn retries_only_what_may_succeed_next_time() {
        assert!(Attempt::Unreachable.is_retryable());
        assert!(!Attempt::TimedOut.is_retryable());
        for s in [502, 503, 504] {
            assert!(answer(s).is_retryable(), "{s}");
        }
        for s in [200, 201, 400, 401, 409, 500] {
            assert!(!answer(s).is_retryable(), "{s}");
        }
    }

    /// Runs `try_in_order` with answers scripted per instance; returns it and the calls made.
    fn failover(order: &[&str], script: &[(&str, Attempt)]) -> (Forwarded, Vec<String>) {
        use futures_util::FutureExt;
        let calls = std::cell::RefCell::new(Vec::new());
        let send = |base: &str| {
            calls.borrow_mut().push(base.to_owned());
            let attempt = script.iter().find(|(b, _)| *b == base).map(|(_, a)| a.clone()).unwrap();
            std::future::ready(attempt)
        };
        let pause = || {
            calls.borrow_mut().push("pause".to_owned());
            std::future::ready(())
        };
        let forwarded = try_in_order(order, send, pause).now_or_never().expect("ready futures");
        (forwarded, calls.into_inner())
    }

    #[test]
    fn fails_over_to_each_instance_once() {
        let (f, calls) =
            failover(&["a", "b", "c"], &[("a", Attempt::Unreachable), ("b", answer(503)), ("c", answer(201))]);
        assert_eq!(calls, ["a", "pause", "b", "pause", "c"]);
        assert_eq!((f.attempts, f.origin.as_str()), (3, "c"));
        assert_eq!(f.last, answer(201));

        let (f, calls) = failover(&["b", "a"], &[("a", answer(201)), ("b", answer(201))]);
        assert_eq!(calls, ["b"], "the first answer ends it, no pause");
        assert_eq!((f.attempts, f.origin.as_str()), (1, "b"));

        let (f, calls) = failover(&["a", "b"], &[("a", answer(502)), ("b", answer(504))]);
        assert_eq!(calls, ["a", "pause", "b"], "bounded by the list");
        assert_eq!((f.attempts, f.origin.as_str()), (2, "b"));
        assert_eq!(reply_for(&f, "eu", "r").status, 503);

        // One instance: its one retry, as before lists.
        let (f, calls) = failover(&["a", "a"], &[("a", Attempt::Unreachable)]);
        assert_eq!(calls, ["a", "pause", "a"]);
        assert_eq!(f.attempts, 2);
    }

    #[test]
    fn neither_a_timeout_nor_an_answer_fails_over() {
        for stop in [Attempt::TimedOut, answer(500), answer(409), answer(401)] {
            let (f, calls) = failover(&["a", "b"], &[("a", stop.clone()), ("b", answer(201))]);
            assert_eq!(calls, ["a"], "{stop:?}");
            assert_eq!((f.attempts, f.last), (1, stop));
        }
    }

    #[test]
    fn passes_back_answers_and_hides_outages() {
        let ok = Forwarded { last: answer(201), origin: "http://a".into(), attempts: 1 };
        let r = reply_for(&ok, "eu", "req-1");
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"{}");
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
        assert_eq!(r.header("x-request-id"), Some("req-1"));
        assert_eq!(r.header("set-cookie"), None);
        assert_eq!(r.header("ratelimit"), None);
        for last in [answer(503), Attempt::Unreachable, Attempt::TimedOut] {
            let r = reply_for(&Forwarded { last, origin: "http://a".into(), attempts: 2 }, "eu", "req-1");
            assert_eq!(r.status, 503);
            assert_eq!(r.header("retry-after"), Some("2"));
            assert_eq!(r.error_code, Some(ErrorCode::OriginUnavailable));
        }
    }

    #[test]
    fn passes_back_the_origins_rate_limit_fields() {
        let limited = Attempt::Answered(Answer {
            status: 429,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("ratelimit-policy".into(), "\"client\";q=50;w=60".into()),
                ("ratelimit".into(), "\"client\";r=0;t=17".into()),
                ("retry-after".into(), "17".into()),
            ],
            body: br#"{"error":{"code":"RATE_LIMITED","message":"slow down"}}"#.to_vec(),
        });
        let r = reply_for(&Forwarded { last: limited, origin: "http://a".into(), attempts: 1 }, "eu", "req-1");
        assert_eq!(r.status, 429);
        assert_eq!(r.error_code, Some(ErrorCode::RateLimited));
        assert_eq!(r.header("ratelimit"), Some("\"client\";r=0;t=17"));
        assert_eq!(r.header("ratelimit-policy"), Some("\"client\";q=50;w=60"));
        assert_eq!(r.header("retry-after"), Some("17"));
    }

    #[test]
    fn lists_the_edge_policy_first_then_the_origins() {
        let edge = "\"default\";q=100;w=60";
        assert_eq!(policies(edge, None), edge);
        assert_eq!(policies(edge, Some("  ")), edge);
        assert_eq!(policies(edge, Some("\"client\";q=50;w=60")), "\"default\";q=100;w=60, \"client\";q=50;w=60");
    }
}
