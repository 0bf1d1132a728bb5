//! The HTTP surface: the public API router and the operator router.

pub mod allocations;
pub mod console;
pub mod funding;
pub mod gate;
pub mod health;
pub mod listener;
pub mod middleware;
pub mod ops;
pub mod products;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

use crate::allocation::Engine;
use crate::auth::Authenticator;
use crate::catalogue::CatalogueService;
use crate::config::Config;
use crate::db::Db;
use crate::request_guard::RequestGuard;

/// Everything a handler may need, shared: axum clones the state for every request and every
/// middleware, and cloning this is one reference count.
pub type AppState = Arc<AppContext>;

/// The services behind the HTTP surface.
pub struct AppContext {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Postgres pools.
    pub db: Db,
    /// The allocation engine.
    pub engine: Engine,
    /// API key verification.
    pub auth: Authenticator,
    /// The catalogue.
    pub catalogue: CatalogueService,
    /// The replay guard and per-client rate limit (`None` without Valkey).
    pub guard: Option<RequestGuard>,
    /// The events stream, for health (`None` without an events Valkey).
    pub events: Option<crate::relay::EventStream>,
}

fn common_layers(router: Router<AppState>, state: &AppState) -> Router {
    router
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::not_found)
        .with_state(state.clone())
        .layer(axum::middleware::from_fn(middleware::error_shape))
        .layer(CompressionLayer::new())
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn(middleware::track_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(middleware::make_span)
                .on_response(middleware::on_response)
                // Our access line says it once, at the right level; tower-http's default would log
                // every expected 503 of an outage at ERROR.
                .on_failure(()),
        )
        .layer(axum::middleware::from_fn(middleware::request_id))
}

/// The public API: what the edge forwards to.
pub fn public_router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/allocations", post(allocations::create).get(allocations::list))
        .route("/v1/allocations/{id}", get(allocations::get_one))
        .route("/v1/products", get(products::list))
        .route("/v1/balance", get(funding::balance))
        .route("/v1/ledger", get(funding::ledger))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), gate::edge_and_key));
    let router = Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/v1/openapi.json", get(crate::openapi::serve_public))
        .merge(api)
        .route_layer(axum::middleware::from_fn_with_state(state.config.request_timeout, middleware::deadline));
    common_layers(router, &state)
}

/// The operator listener: health, metrics, the operator API and the console; never exposed
/// through the edge.
pub fn operator_router(state: AppState) -> Router {
    let router = Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        .merge(ops::router(&state))
        .merge(console::router(&state))
        .route_layer(axum::middleware::from_fn_with_state(state.config.request_timeout, middleware::deadline))
        // Added after the request limit: an import upload has its own.
        .merge(ops::upload_router(&state))
        .merge(console::upload_router(&state));
    common_layers(router, &state)
}
