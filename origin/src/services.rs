//! The one initialisation path every process (server, worker, cron, run-all) goes through.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cache::InventoryCache;
use crate::config::Config;
use crate::db::{self, Db};
use crate::jobs::JobContext;
use crate::relay::Relay;

/// Configuration and the stores built from it.
#[derive(Clone)]
pub struct Services {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Postgres pools (lazy: a process starts while Postgres is briefly down).
    pub db: Db,
    /// The inventory cache, when configured.
    pub cache: Option<InventoryCache>,
}

impl Services {
    /// Build the stores from configuration (no network call has to succeed).
    pub fn init(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect_lazy(&config)?;
        let cache = match &config.valkey_url {
            Some(url) => {
                Some(InventoryCache::new(url, &config.valkey_prefix, config.valkey_timeout).context("VALKEY_URL")?)
            }
            None => None,
        };
        Ok(Self { config: Arc::new(config), db, cache })
    }

    /// Refuse to run against a schema older than this build.
    pub async fn check_schema(&self) -> anyhow::Result<()> {
        db::check_schema(&self.db.primary).await
    }

    /// The context scheduled jobs run with.
    pub fn job_context(&self, shutdown: CancellationToken) -> JobContext {
        JobContext { config: self.config.clone(), db: self.db.clone(), cache: self.cache.clone(), shutdown }
    }

    /// The webhook dispatcher.
    pub fn webhook_dispatcher(&self) -> anyhow::Result<crate::webhooks::Dispatcher> {
        crate::webhooks::Dispatcher::new(self.db.primary.clone(), self.config.card_keys.clone(), self.config.webhooks)
    }

    /// The outbox relay, when there is a Valkey to publish to.
    pub fn relay(&self) -> anyhow::Result<Option<Relay>> {
        match &self.config.valkey_url {
            Some(url) => Ok(Some(Relay::new(
                self.db.primary.clone(),
                url,
                &self.config.valkey_prefix,
                self.config.valkey_timeout,
            )?)),
            None => Ok(None),
        }
    }
}
