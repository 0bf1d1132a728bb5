//! What the edge knows about one request: its ids, where it came from, and the facts the access
//! log reports at the end.

use allot_shared::headers;
use worker::Request;

use crate::ids::{self, Trace};
use crate::platform;

/// Longest `tracestate` passed on (the W3C limit is 512 characters).
const MAX_TRACESTATE_LEN: usize = 512;

/// One request's context.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Sent to the origin and returned on every response.
    pub request_id: String,
    /// The trace context.
    pub trace: Trace,
    /// The caller's `tracestate`, kept only when its `traceparent` was valid.
    pub tracestate: Option<String>,
    /// When the edge got the request (ms since the epoch).
    pub started_ms: u64,
    /// The request method as sent.
    pub method: String,
    /// The URL path (without the query).
    pub path: String,
    /// The URL query (without `?`), if any.
    pub query: Option<String>,
    /// The host the caller addressed.
    pub host: Option<String>,
    /// Cloudflare location that took the request.
    pub colo: Option<String>,
    /// The caller's country (ISO 3166-1 alpha-2, or Cloudflare's `XX`/`T1`).
    pub country: Option<String>,
    /// The caller's IP (`cf-connecting-ip`).
    pub client_ip: Option<String>,
    /// For the log: the region served.
    pub region: Option<String>,
    /// For the log: the API key id (public; never the secret).
    pub key_id: Option<String>,
    /// For the log: `hit` or `miss` on edge-cached routes.
    pub cache: Option<&'static str>,
    /// For the log: origin attempts made.
    pub origin_attempts: u8,
    /// For the log: how the last origin attempt went.
    pub origin_outcome: Option<&'static str>,
    /// For the log: the instance the last origin attempt went to (`eu/2`: its place in `ORIGINS`).
    pub origin_instance: Option<String>,
}

impl RequestContext {
    /// Read the context from the incoming request (never fails; missing parts are `None`).
    pub fn from_request(req: &Request) -> Self {
        let url = req.url().ok();
        // One call for all the randomness a request needs: 24 bytes for the trace, 16 for the id.
        let random: [u8; 40] = platform::random();
        let mut trace_bytes = [0u8; 24];
        trace_bytes.copy_from_slice(&random[..24]);
        let mut id_bytes = [0u8; 16];
        id_bytes.copy_from_slice(&random[24..]);
        let trace = Trace::continue_or_start(platform::header(req, headers::TRACEPARENT).as_deref(), trace_bytes);
        let tracestate = trace
            .incoming
            .and(platform::header(req, headers::TRACESTATE))
            .filter(|s| s.len() <= MAX_TRACESTATE_LEN && !s.trim().is_empty());
        Self {
            request_id: ids::request_id(platform::header(req, "cf-ray").as_deref(), id_bytes),
            trace,
            tracestate,
            started_ms: platform::now_ms(),
            method: req.inner().method(),
            path: url.as_ref().map(|u| u.path().to_owned()).unwrap_or_else(|| "/".to_owned()),
            query: url.as_ref().and_then(|u| u.query().map(str::to_owned)),
            host: url.as_ref().and_then(|u| u.host_str().map(str::to_owned)),
            colo: platform::cf_string(req, "colo"),
            country: platform::cf_string(req, "country"),
            client_ip: platform::header(req, "cf-connecting-ip").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
            region: None,
            key_id: None,
            cache: None,
            origin_attempts: 0,
            origin_outcome: None,
            origin_instance: None,
        }
    }

    /// Note for the log how forwarding went and which instance (`label`) the last attempt reached.
    pub fn note_forwarded(&mut self, forwarded: &crate::upstream::Forwarded, label: String) {
        self.origin_attempts = forwarded.attempts;
        self.origin_outcome = Some(forwarded.last.outcome());
        self.origin_instance = Some(label);
    }

    /// Path and query as received (what is forwarded and signed).
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The client IP the failed-auth limit counts by. Without `cf-connecting-ip` (only outside
    /// Cloudflare) all such callers share one bucket.
    pub fn ip_key(&self) -> &str {
        self.client_ip.as_deref().unwrap_or("unknown")
    }

    /// Headers every origin request carries: request id, trace context, country and colo.
    pub fn origin_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (headers::REQUEST_ID, self.request_id.clone()),
            (headers::TRACEPARENT, self.trace.outgoing.to_string()),
            ("user-agent", "allot-edge".to_owned()),
        ];
        if let Some(ts) = &self.tracestate {
            h.push((headers::TRACESTATE, ts.clone()));
        }
        if let Some(c) = &self.country {
            h.push((headers::CLIENT_COUNTRY, c.clone()));
        }
        if let Some(c) = &self.colo {
            h.push((headers::EDGE_COLO, c.clone()));
        }
        h
    }
}
