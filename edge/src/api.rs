//! The forwarded API: `POST /v1/allocations`, `GET /v1/allocations` (the caller's listing, its
//! query forwarded and signed as received, never cached), `GET /v1/allocations/{id}`,
//! `GET /v1/products`, and the caller's funding, `GET /v1/balance` and `GET /v1/ledger` (its
//! query forwarded as received; both never cached).
//!
//! Checks run cheapest first and in the origin's order, so a request with several problems gets
//! the same error from either: client IP blocked for failed authentications (429), declared size
//! (413), API key (401), key rate limit (429), a region this edge serves (403), the body's
//! arrival within `BODY_TIMEOUT_MS` (408) and actual size (413), `Idempotency-Key` (400), body
//! (400). Only then is anything sent to an origin.
//!
//! `RateLimit-Policy` lists the edge's quota first and then the origin's, when the origin sent one;
//! the origin's `RateLimit` state is passed back as it came.

use allot_shared::{ApiError, ApiKey, ErrorCode, Region, headers, request_headers};
use worker::{Env, Method, Request};

use crate::config::{self, Config};
use crate::context::RequestContext;
use crate::origins::Instances;
use crate::reply::{EDGE_CACHE, Reply};
use crate::route::Route;
use crate::upstream::{self, Outbound};
use crate::{admission, edge_cache, platform, quota};

/// How long a catalogue is reused at the edge (the origin says `max-age=5` too).
pub const PRODUCTS_TTL_SECS: u32 = 5;

fn warn(msg: &str, detail: &str) {
    platform::log_line(&serde_json::json!({ "level": "warn", "msg": msg, "error": detail }).to_string());
}

/// Serve one API request. Every refusal is a [`Reply`] in the shared error body.
pub async fn serve(req: &mut Request, env: &Env, cx: &mut RequestContext, route: Route) -> Reply {
    match Config::load(env) {
        Ok(config) => match admit_and_forward(req, env, &config, cx, route).await {
            Ok(reply) | Err(reply) => reply,
        },
        Err(e) => {
            // Details go to the log only; the caller learns nothing about the configuration.
            crate::misconfigured(&e);
            Reply::error(&ApiError::new(ErrorCode::Internal, "internal error"), &cx.request_id)
        }
    }
}

/// The region's origin instances. A key whose region has no origin here gets `403 FORBIDDEN`:
/// the key is well-formed and may be valid, but this deployment does not serve its region. Not
/// 401 (the credential is not the problem), not 404 (the route exists), not 503 (retrying cannot
/// help).
fn origin_for<'c>(config: &'c Config, region: &Region, request_id: &str) -> Result<&'c Instances, Reply> {
    config.origin_for(region).ok_or_else(|| {
        Reply::error(&ApiError::new(ErrorCode::Forbidden, format!("no origin serves region {region}")), request_id)
    })
}

async fn check_key(
    req: &Request,
    env: &Env,
    config: &Config,
    cx: &mut RequestContext,
    now_ms: u64,
) -> Result<ApiKey, Reply> {
    match request_headers::api_key(platform::header(req, "authorization").as_deref()) {
        Ok(key) => Ok(key),
        Err(e) => {
            if let Some(wait) = quota::record_auth_failure(env, &config.auth_fail_policy, cx.ip_key(), now_ms).await {
                return Err(quota::too_many(&config.auth_fail_policy, wait, &cx.request_id));
            }
            Err(Reply::error(&e, &cx.request_id))
        }
    }
}

async fn admit_and_forward(
    req: &mut Request,
    env: &Env,
    config: &Config,
    cx: &mut RequestContext,
    route: Route,
) -> Result<Reply, Reply> {
    let rid = cx.request_id.clone();
    let refuse = |e: ApiError| Reply::error(&e, &rid);
    let now_ms = platform::now_ms();

    if let Some(wait) = quota::ip_blocked_for(cx.ip_key(), now_ms) {
        return Err(quota::too_many(&config.auth_fail_policy, wait, &rid));
    }
    admission::check_declared_length(platform::header(req, "content-length").as_deref(), &config.limits)
        .map_err(refuse)?;

    let key = check_key(req, env, config, cx, now_ms).await?;
    cx.key_id = Some(key.key_id().to_owned());
    cx.region = Some(key.region().to_string());

    match quota::allow(env, config::RL_KEY_BINDING, key.key_id()).await {
        Ok(true) => {}
        Ok(false) => {
            let policy = &config.key_policy;
            return Err(quota::too_many(policy, policy.seconds_to_reset(now_ms / 1000), &rid));
        }
        Err(e) => warn("rate limit not checked (failing open)", &e),
    }

    let instances = origin_for(config, key.region(), &rid)?;
    let mut headers = cx.origin_headers();
    headers.push(("authorization", format!("Bearer {}", key.expose())));
    let (method, body) = if route == Route::CreateAllocation {
        let body = admission::read_body(req, &config.limits, config.body_timeout_ms).await.map_err(refuse)?;
        let idempotency_key = platform::header(req, headers::IDEMPOTENCY_KEY);
        let idempotency_key = request_headers::idempotency_key(idempotency_key.as_deref()).map_err(refuse)?;
        admission::check_allocation_body(&body, &config.limits).map_err(refuse)?;
        headers.push((headers::IDEMPOTENCY_KEY, idempotency_key.to_owned()));
        headers.push(("content-type", "application/json".to_owned()));
        (Method::Post, body)
    } else {
        (Method::Get, Vec::new())
    };
    let out = Outbound { method, path_and_query: cx.path_and_query(), key_id: key.key_id().to_owned(), headers, body };

    let mut reply = if route == Route::ListProducts {
        let if_none_match = platform::header(req, "if-none-match");
        let reply = products(&out, instances, config, cx, &key).await;
        not_modified(if_none_match.as_deref(), &reply).unwrap_or(reply)
    } else {
        forward(&out, instances, config, cx).await
    };

    // An origin 401 is a failed authentication too (a well-formed key that does not exist):
    // it counts against the client IP, which is what stops someone trying made-up keys.
    if reply.status == 401 {
        quota::record_auth_failure(env, &config.auth_fail_policy, cx.ip_key(), now_ms).await;
    }
    let policy = upstream::policies(&config.key_policy.policy_header(), reply.header(headers::RATELIMIT_POLICY));
    reply.set_header(headers::RATELIMIT_POLICY, policy);
    Ok(reply)
}

async fn forward(out: &Outbound, instances: &Instances, config: &Config, cx: &mut RequestContext) -> Reply {
    let forwarded = upstream::forward(out, instances, &config.signing_secret, config.origin_timeout_ms).await;
    let region = cx.region.clone().unwrap_or_default();
    cx.note_forwarded(&forwarded, instances.label(&region, &forwarded.origin));
    let mut reply = upstream::reply_for(&forwarded, &region, &cx.request_id);
    if reply.header("cache-control").is_none() {
        // Allocations carry card codes, balances and ledgers a client's money: no shared cache may keep them.
        reply.set_header("cache-control", "no-store");
    }
    reply
}

/// `GET /v1/products` through the edge cache (only `200`s are kept).
async fn products(
    out: &Outbound,
    instances: &Instances,
    config: &Config,
    cx: &mut RequestContext,
    key: &ApiKey,
) -> Reply {
    let cache_key = edge_cache::products_key(cx.host.as_deref(), key.region(), &key.expose(), cx.query.as_deref());
    if let Some(hit) = edge_cache::get(&cache_key).await {
        cx.cache = Some("hit");
        return hit.with_header(EDGE_CACHE, "hit").with_header(headers::REQUEST_ID, cx.request_id.clone());
    }
    cx.cache = Some("miss");
    let reply = forward(out, instances, config, cx).await;
    if reply.status == 200 {
        let mut stored = reply.clone();
        // A hit does not reach the origin, so the origin's quota fields would be stale there.
        stored
            .headers
            .retain(|(n, _)| n != headers::REQUEST_ID && n != headers::RATELIMIT && n != headers::RATELIMIT_POLICY);
        if let Err(e) = edge_cache::put(&cache_key, &stored, PRODUCTS_TTL_SECS).await {
            warn("products not cached", &e);
        }
    }
    reply.with_header(EDGE_CACHE, "miss")
}

/// `304 Not Modified` when the caller's `If-None-Match` names the reply's `ETag`.
pub fn not_modified(if_none_match: Option<&str>, reply: &Reply) -> Option<Reply> {
    let etag = reply.header("etag")?;
    let wanted = if_none_match?;
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let matches = reply.status == 200 && wanted.split(',').any(|t| t.trim() == "*" || strip(t) == strip(etag));
    matches.then(|| {
        let mut r = Reply::new(304, Vec::new());
        r.headers = reply.headers.iter().filter(|(n, _)| n != "content-type").cloned().collect();
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_products() {
        let r = Reply::new(200, b"[]".to_vec())
            .with_header("etag", "\"v1\"")
            .with_header("content-type", "application/json")
            .with_header("cache-control", "max-age=5");
        let nm = not_modified(Some("\"v0\", W/\"v1\""), &r).unwrap();
        assert_eq!(nm.status, 304);
        assert!(nm.body.is_empty());
        assert_eq!(nm.header("etag"), Some("\"v1\""));
        assert_eq!(nm.header("content-type"), None);
        assert!(not_modified(Some("*"), &r).is_some());
        assert!(not_modified(Some("\"v2\""), &r).is_none());
        assert!(not_modified(None, &r).is_none());
        assert!(not_modified(Some("\"v1\""), &Reply::new(500, vec![]).with_header("etag", "\"v1\"")).is_none());
    }
}
