//! `allot server`: build the state, check the schema, serve both listeners, shut down gracefully.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::allocation::Engine;
use crate::auth::Authenticator;
use crate::catalogue::CatalogueService;
use crate::config::{Config, SignatureMode};
use crate::db;
use crate::http::{AppContext, AppState, listener, operator_router, public_router};
use crate::products::ProductDirectory;
use crate::request_guard::RequestGuard;
use crate::services::Services;

/// Build the shared state from configuration (no network calls are required to succeed).
pub fn build_state(cfg: Config) -> anyhow::Result<AppState> {
    Ok(state_from(&Services::init(cfg)?))
}

/// The HTTP state over already-built services.
pub fn state_from(services: &Services) -> AppState {
    let Services { config, db, cache, events } = services.clone();
    let products = ProductDirectory::new(db.primary.clone(), Duration::from_secs(30));
    let engine = Engine::new(db.clone(), cache.clone(), config.card_keys.clone(), products, config.batch_workers);
    let auth = Authenticator::new(db.primary.clone(), config.region.clone(), config.key_cache_ttl);
    let catalogue = CatalogueService::new(db.clone(), cache.clone(), Duration::from_secs(2));
    // A signature is fresh for the skew window either side of now: remember it for both.
    let replay_ttl = Duration::from_secs(2 * config.signature_max_skew_secs.unsigned_abs() + 1);
    let guard = cache.map(|c| RequestGuard::new(c, replay_ttl, config.client_rate_limit_per_minute));
    Arc::new(AppContext { config, db, engine, auth, catalogue, guard, events })
}

/// Listeners bound and ready to serve.
pub struct BoundServer {
    /// The public API's address.
    pub public_addr: std::net::SocketAddr,
    /// The operator listener's address.
    pub operator_addr: std::net::SocketAddr,
    public: TcpListener,
    operator: TcpListener,
    state: AppState,
}

/// Check the schema and bind both listeners.
pub async fn bind(state: AppState) -> anyhow::Result<BoundServer> {
    // Install the metrics recorder before the first request records anything.
    let _ = crate::telemetry::metrics();
    db::check_schema(&state.db.primary).await?;
    if state.config.signature_mode == SignatureMode::Off {
        tracing::warn!(
            "EDGE SIGNATURE CHECK IS OFF (ALLOT_EDGE_SIGNATURE=off): anyone who can reach this listener can call the API \
             without going through the edge. Never run like this in production."
        );
    }
    let public =
        TcpListener::bind(state.config.listen).await.with_context(|| format!("binding {}", state.config.listen))?;
    let operator = TcpListener::bind(state.config.operator_listen)
        .await
        .with_context(|| format!("binding {}", state.config.operator_listen))?;
    Ok(BoundServer {
        public_addr: public.local_addr()?,
        operator_addr: operator.local_addr()?,
        public,
        operator,
        state,
    })
}

impl BoundServer {
    /// Serve until `shutdown` is cancelled, then finish in-flight requests.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(public = %self.public_addr, operator = %self.operator_addr, region = %self.state.config.region, "serving");
        crate::outage::spawn_watch(shutdown.clone());
        self.state.db.spawn_replica_checks(self.state.config.replica_check_interval, shutdown.clone());
        let (limits, drain) = (self.state.config.connections, self.state.config.shutdown_timeout);
        let public = listener::serve(self.public, public_router(self.state.clone()), limits, shutdown.clone(), drain);
        let operator =
            listener::serve(self.operator, operator_router(self.state.clone()), limits, shutdown.clone(), drain);
        let (a, b) = tokio::join!(public, operator);
        a.context("public listener")?;
        b.context("operator listener")?;
        self.state.db.primary.close().await;
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Serve only the operator listener (health, metrics) until `shutdown`: for worker and cron.
pub async fn serve_operator(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = crate::telemetry::metrics();
    let listener = TcpListener::bind(state.config.operator_listen)
        .await
        .with_context(|| format!("binding {}", state.config.operator_listen))?;
    tracing::info!(operator = %listener.local_addr()?, "serving health and metrics");
    state.db.spawn_replica_checks(state.config.replica_check_interval, shutdown.clone());
    let (limits, drain) = (state.config.connections, state.config.shutdown_timeout);
    listener::serve(listener, operator_router(state), limits, shutdown, drain).await?;
    Ok(())
}

/// Cancel `token` on the first SIGTERM or SIGINT; exit at once on the second.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; finishing in-flight work (a second signal exits at once)");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
