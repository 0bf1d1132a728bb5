//! `GET /v1/openapi.json`: the callers' OpenAPI document, as the default region's origin serves it,
//! kept in the edge cache for [`OPENAPI_TTL_SECS`], so a location asks its origin at most once per
//! TTL (per concurrent first wave, see [`crate::edge_cache`]). No API key: the document is public.
//! `If-None-Match` is answered at the edge with `304`.

use allot_shared::headers;
use worker::{Method, Request};

use crate::api::not_modified;
use crate::config::Config;
use crate::context::RequestContext;
use crate::reply::{EDGE_CACHE, Reply};
use crate::upstream::{self, Outbound};
use crate::{edge_cache, platform};

/// How long the document is reused at the edge (the origin says `max-age=300` too).
pub const OPENAPI_TTL_SECS: u32 = 300;
/// The path on the origin (the same as the edge's).
const PATH: &str = "/v1/openapi.json";

/// Serve the document: from the cache, else one origin call whose `200` is cached.
pub async fn serve(req: &Request, config: &Config, cx: &mut RequestContext) -> Reply {
    let if_none_match = platform::header(req, "if-none-match");
    let reply = cached_or_fetched(config, cx).await;
    not_modified(if_none_match.as_deref(), &reply).unwrap_or(reply)
}

async fn cached_or_fetched(config: &Config, cx: &mut RequestContext) -> Reply {
    let region = config.default_region.clone();
    cx.region = Some(region.to_string());
    let key = edge_cache::openapi_key(cx.host.as_deref(), &region);
    if let Some(hit) = edge_cache::get(&key).await {
        cx.cache = Some("hit");
        return hit.with_header(EDGE_CACHE, "hit");
    }
    cx.cache = Some("miss");
    let Some(instances) = config.origin_for(&region) else {
        // Config::from_lookup guarantees the default region has an origin.
        return upstream::unavailable(region.as_str(), &cx.request_id);
    };
    // Signed like everything else that reaches an origin, though the document needs no key.
    let out = Outbound {
        method: Method::Get,
        path_and_query: PATH.to_owned(),
        key_id: String::new(),
        headers: cx.origin_headers(),
        body: Vec::new(),
    };
    let forwarded = upstream::forward(&out, instances, &config.signing_secret, config.origin_timeout_ms).await;
    cx.note_forwarded(&forwarded, instances.label(region.as_str(), &forwarded.origin));
    let reply = upstream::reply_for(&forwarded, region.as_str(), &cx.request_id);
    if reply.status == 200 {
        let mut stored = reply.clone();
        stored.headers.retain(|(n, _)| n != headers::REQUEST_ID);
        if let Err(e) = edge_cache::put(&key, &stored, OPENAPI_TTL_SECS).await {
            let line = serde_json::json!({ "level": "warn", "msg": "openapi document not cached", "error": e });
            platform::log_line(&line.to_string());
        }
    }
    reply.with_header(EDGE_CACHE, "miss")
}
