//! The one initialisation path every process (server, worker, cron, run-all) goes through.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cache::InventoryCache;
use crate::config::Config;
use crate::db::{self, Db};
use crate::jobs::JobContext;
use crate::relay::{EventStream, Relay};

/// Configuration and the stores built from it.
#[derive(Clone)]
pub struct Services {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Postgres pools (lazy: a process starts while Postgres is briefly down).
    pub db: Db,
    /// The inventory cache, when configured.
    pub cache: Option<InventoryCache>,
    /// The events stream, when there is a Valkey for it.
    pub events: Option<EventStream>,
}

impl Services {
    /// Build the stores from configuration (no network call has to succeed).
    pub fn init(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect_lazy(&config)?;
        let cache = match &config.valkey_url {
            Some(address) => {
                Some(InventoryCache::new(address, &config.valkey_prefix, config.valkey_timeout).context("VALKEY_URL")?)
            }
            None => None,
        };
        let events = match &config.events_url {
            Some(address) => Some(
                EventStream::new(address, &config.valkey_prefix, config.valkey_timeout).context("ALLOT_EVENTS_URL")?,
            ),
            None => None,
        };
        Ok(Self { config: Arc::new(config), db, cache, events })
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

    /// The outbox relay, when there is a Valkey to publish to (said loudly when it is the cache's).
    pub fn relay(&self) -> Option<Relay> {
        let stream = self.events.clone()?;
        if self.config.events_share_cache {
            tracing::warn!(
                stream = %stream.key(),
                "ALLOT_EVENTS_URL is not set: the events stream shares the cache's Valkey, which is disposable \
                 (a flush or restart without data loses entries, which the relay then publishes again from \
                 Postgres); point ALLOT_EVENTS_URL at a Valkey with appendonly on"
            );
        }
        Some(Relay::new(self.db.primary.clone(), stream))
    }
}
