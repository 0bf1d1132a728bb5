//! Short-lived answers kept at the edge in the Cache API (`caches.default`, shared by every isolate
//! of a Cloudflare location): `/readyz` per region, `/v1/products` per region, API key and query,
//! and `/v1/openapi.json` (the default region's, the same for everyone).
//!
//! A reply is stored as a small JSON envelope under a synthetic URL on the request's own host, as
//! a `200` with `Cache-Control: max-age=<ttl>`, so any status (a `503` readiness too) can be kept
//! for exactly the TTL. Cache failures are misses: the cache never breaks a request.
//!
//! Not coalesced: concurrent misses for one key each reach the origin (workerd forbids sharing one
//! request's I/O with another), so a storm costs at most one origin call per isolate per
//! concurrent first wave, then none until the TTL ends.

use allot_shared::Region;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use worker::js_sys::{self, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{Headers, Response, web_sys};

use crate::reply::Reply;

/// Path prefix of cache keys; never routed, so callers cannot address entries.
const PREFIX: &str = "/__allot_edge_cache";

#[derive(Serialize, Deserialize)]
struct Stored {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn host_or_default(host: Option<&str>) -> &str {
    host.filter(|h| !h.is_empty()).unwrap_or("edge.invalid")
}

/// The key of a region's `/readyz`.
pub fn readyz_key(host: Option<&str>, region: &Region) -> String {
    format!("https://{}{PREFIX}/readyz/{region}", host_or_default(host))
}

/// The key of the callers' OpenAPI document, as `region`'s origin serves it.
pub fn openapi_key(host: Option<&str>, region: &Region) -> String {
    format!("https://{}{PREFIX}/v1/openapi.json/{region}", host_or_default(host))
}

/// The key of `/v1/products` for one API key. The key's digest is part of it because the edge
/// cannot authenticate (the checksum is public): an entry exists only after the origin accepted
/// exactly this key, so a made-up key never reads a cached catalogue, and nothing leaks across
/// regions (the region is in the key too). The digest is domain-separated from what the origin
/// stores, and the key itself never appears.
pub fn products_key(host: Option<&str>, region: &Region, api_key: &str, query: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(b"allot-edge-cache-v1\0");
    h.update(api_key.as_bytes());
    let digest = hex::encode(h.finalize());
    let query = query.filter(|q| !q.is_empty()).map(|q| format!("?{q}")).unwrap_or_default();
    format!("https://{}{PREFIX}/v1/products/{region}/{digest}{query}", host_or_default(host))
}

fn default_cache() -> Option<web_sys::Cache> {
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let caches = global.caches().ok()?;
    let cache = Reflect::get(&caches, &JsValue::from_str("default")).ok()?;
    cache.is_object().then(|| cache.unchecked_into())
}

/// The cached reply under `key`, if any and still fresh.
pub async fn get(key: &str) -> Option<Reply> {
    let cache = default_cache()?;
    let found = JsFuture::from(cache.match_with_str(key)).await.ok()?;
    if found.is_undefined() || found.is_null() {
        return None;
    }
    let mut response = Response::from(found.dyn_into::<web_sys::Response>().ok()?);
    let stored: Stored = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
    let mut reply = Reply::new(stored.status, stored.body.into_bytes());
    reply.headers = stored.headers;
    Some(reply)
}

/// Keep `reply` under `key` for `ttl_secs`. Only UTF-8 bodies are kept (JSON here).
pub async fn put(key: &str, reply: &Reply, ttl_secs: u32) -> Result<(), String> {
    let cache = default_cache().ok_or("no caches.default")?;
    let body = String::from_utf8(reply.body.clone()).map_err(|_| "body is not UTF-8")?;
    let stored = Stored { status: reply.status, headers: reply.headers.clone(), body };
    let json = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
    let headers = Headers::new();
    headers.set("content-type", "application/json").map_err(|e| e.to_string())?;
    headers.set("cache-control", &format!("max-age={ttl_secs}")).map_err(|e| e.to_string())?;
    let response: web_sys::Response =
        Response::from_bytes(json).map_err(|e| e.to_string())?.with_headers(headers).into();
    JsFuture::from(cache.put_with_str(key, &response)).await.map(|_| ()).map_err(|e| format!("cache put: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_regions_keys_and_queries() {
        let eu = Region::parse("eu").unwrap();
        let us = Region::parse("us").unwrap();
        let a = products_key(Some("edge.example"), &eu, "allot_eu_a", None);
        assert!(a.starts_with("https://edge.example/__allot_edge_cache/v1/products/eu/"));
        assert!(!a.contains("allot_eu_a"));
        assert_ne!(a, products_key(Some("edge.example"), &us, "allot_eu_a", None));
        assert_ne!(a, products_key(Some("edge.example"), &eu, "allot_eu_b", None));
        assert_ne!(a, products_key(Some("edge.example"), &eu, "allot_eu_a", Some("currency=USD")));
        assert_eq!(a, products_key(Some("edge.example"), &eu, "allot_eu_a", Some("")));
        assert_eq!(readyz_key(None, &eu), "https://edge.invalid/__allot_edge_cache/readyz/eu");
        assert_eq!(
            openapi_key(Some("edge.example"), &eu),
            "https://edge.example/__allot_edge_cache/v1/openapi.json/eu"
        );
        assert_ne!(openapi_key(None, &eu), openapi_key(None, &us));
    }
}
