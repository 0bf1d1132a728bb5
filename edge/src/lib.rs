//! allot's edge worker (Rust → WASM on Cloudflare Workers).
//!
//! Every request: read its context (request id, trace, colo, country, IP), find its route, answer
//! it, log one line. The modules, in the order a request meets them:
//!
//! - [`context`]    the request's ids and origin, and the facts for the log ([`ids`]: request id, trace)
//! - [`route`]      which route it is; anything else is 404 and never forwarded
//! - [`config`]     the vars and the signing secret, validated
//! - [`health`]     `/healthz` in the isolate, `/readyz` from the origin through the edge cache
//! - [`openapi`]    `/v1/openapi.json`: the callers' document from the origin through the edge cache
//! - [`api`]        the forwarded routes: the checks in order, then forwarding
//!   - [`quota`]      rate limits per API key and per client IP on failed authentications
//!   - API key format and checksum, and `Idempotency-Key`: `allot_shared::request_headers`, the
//!     origin's own rules
//!   - [`admission`]  body deadline, body size and body validation (the shared crate's rules)
//!   - [`upstream`]   signing, timeouts, failover, passing the origin's answer back
//!   - [`origins`]    a region's origin instances: the spread and the failover order
//!   - [`edge_cache`] the Cache API for `/readyz`, `/v1/products` and `/v1/openapi.json`
//! - [`reply`]      responses as data, errors in the shared error body
//! - [`access_log`] one JSON line per request
//! - [`platform`]   clock, randomness, `request.cf`, headers and vars, read without panicking

pub mod access_log;
pub mod admission;
pub mod api;
pub mod config;
pub mod context;
pub mod edge_cache;
pub mod health;
pub mod ids;
pub mod openapi;
pub mod origins;
pub mod platform;
pub mod quota;
pub mod reply;
pub mod route;
pub mod upstream;

use allot_shared::{ApiError, ErrorCode, headers};
use config::ConfigError;
use worker::{Context, Env, Request, Response, event};

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::context::RequestContext;
use crate::reply::Reply;
use crate::route::Route;

/// Entry point for every request the worker receives.
#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let mut cx = RequestContext::from_request(&req);
    let route = Route::of(&cx.method, &cx.path);
    let mut reply = match route {
        Route::Healthz => {
            let config = Config::load(&env);
            if let Err(e) = &config {
                misconfigured(e);
            }
            cx.region = config.as_ref().ok().map(|c| c.default_region.to_string());
            Reply::health(&health::healthz(cx.colo.as_deref(), config.as_deref()))
        }
        Route::Readyz => match Config::load(&env) {
            Ok(config) => health::readyz(&config, &mut cx).await,
            Err(e) => {
                misconfigured(&e);
                Reply::health(&health::healthz(cx.colo.as_deref(), Err(&e)))
            }
        },
        Route::NotFound => {
            let path: String = cx.path.chars().take(200).collect();
            let err = ApiError::new(ErrorCode::NotFound, format!("no route for {} {path}", cx.method));
            Reply::error(&err, &cx.request_id)
        }
        Route::OpenApi => match Config::load(&env) {
            Ok(config) => openapi::serve(&req, &config, &mut cx).await,
            Err(e) => {
                misconfigured(&e);
                Reply::error(&ApiError::new(ErrorCode::Internal, "internal error"), &cx.request_id)
            }
        },
        Route::CreateAllocation
        | Route::ListAllocations
        | Route::GetAllocation
        | Route::ListProducts
        | Route::GetBalance
        | Route::ListLedger => api::serve(&mut req, &env, &mut cx, route).await,
    };
    reply.set_header(headers::REQUEST_ID, cx.request_id.clone());
    platform::log_line(&AccessLog::new(&cx, route, &reply, platform::now_ms()).to_line());
    reply.into_response(&cx.request_id)
}

/// Log a configuration error (the details are for operators, never for callers).
pub(crate) fn misconfigured(e: &ConfigError) {
    let line = serde_json::json!({ "level": "error", "msg": "the edge is misconfigured", "error": e.0 });
    platform::log_line(&line.to_string());
}
