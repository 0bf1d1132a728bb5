//! Postgres pools and the schema version check. Migrations never run implicitly.

use std::str::FromStr;

use anyhow::{Context, bail};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Config;
use crate::error::AppError;
use crate::read_routing::{self, REPLICA_ACQUIRE_TIMEOUT, ReadTarget, ReplicaRoute};

/// The migrations this build was compiled with.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The primary pool and, when configured, a replica pool for reads that may lag (which go
/// through [`Db::read`], routed by [`crate::read_routing`]).
#[derive(Clone)]
pub struct Db {
    /// Writes and reads that must see the latest commit.
    pub primary: PgPool,
    /// Reads that tolerate lag; the primary when no replica is configured.
    pub replica: PgPool,
    /// Whether `replica` is a separate server.
    pub has_replica: bool,
    /// Whether the replica serves reads now (its checks run with the server).
    pub route: std::sync::Arc<ReplicaRoute>,
}

fn connect_options(url: &str, cfg: &Config) -> anyhow::Result<PgConnectOptions> {
    let opts = PgConnectOptions::from_str(url).context("parsing the database URL")?;
    // lock_timeout bounds how long a duplicate request waits on the first one's key row.
    Ok(opts.application_name("allot").options([
        ("lock_timeout", cfg.idempotency_wait.as_millis().to_string()),
        ("statement_timeout", cfg.db_statement_timeout.as_millis().to_string()),
        ("idle_in_transaction_session_timeout", "60000".to_owned()),
    ]))
}

/// A connection idle longer than this is pinged before use.
const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

fn pool_options(size: u32, cfg: &Config) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(size)
        .min_connections(1.min(size))
        .acquire_timeout(cfg.db_acquire_timeout)
        // Pinging on every checkout costs a round trip per request; sqlx already pings on
        // release, which discards connections broken mid-use. Only connections that sat idle
        // (and may have been cut by a Postgres restart meanwhile) are pinged before use.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

impl Db {
    /// Open the pools lazily: the process starts even when Postgres is briefly down.
    pub fn connect_lazy(cfg: &Config) -> anyhow::Result<Self> {
        let primary = pool_options(cfg.db_pool_size, cfg).connect_lazy_with(connect_options(&cfg.database_url, cfg)?);
        let (replica, has_replica) = match &cfg.database_read_url {
            Some(url) => (
                pool_options(cfg.db_read_pool_size, cfg)
                    .acquire_timeout(cfg.db_acquire_timeout.min(REPLICA_ACQUIRE_TIMEOUT))
                    .connect_lazy_with(connect_options(url, cfg)?),
                true,
            ),
            None => (primary.clone(), false),
        };
        Ok(Self { primary, replica, has_replica, route: ReplicaRoute::new(cfg.replica_max_lag) })
    }
}

impl Db {
    /// Which server a read that may lag goes to now.
    pub fn read_target(&self) -> ReadTarget {
        if self.has_replica && self.route.is_serving() { ReadTarget::Replica } else { ReadTarget::Primary }
    }

    /// The pool for a read that may lag: the replica while it serves, the primary otherwise.
    pub fn reads(&self) -> &PgPool {
        match self.read_target() {
            ReadTarget::Replica => &self.replica,
            ReadTarget::Primary => &self.primary,
        }
    }

    /// Run a read that may lag on [`Db::reads`]; when it fails on the replica as if the replica
    /// were gone, the replica stops serving and the read is retried once on the primary.
    pub async fn read<T, F, Fut>(&self, read: F) -> Result<T, AppError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, AppError>>,
    {
        let target = self.read_target();
        count_read(target);
        let first = read(self.reads_pool(target).clone()).await;
        match first {
            Err(AppError::Database(e)) if target == ReadTarget::Replica && read_routing::replica_failure(&e) => {
                self.route.read_failed(&e);
                metrics::counter!("allot_db_replica_fallbacks_total").increment(1);
                count_read(ReadTarget::Primary);
                read(self.primary.clone()).await
            }
            other => other,
        }
    }

    fn reads_pool(&self, target: ReadTarget) -> &PgPool {
        match target {
            ReadTarget::Replica => &self.replica,
            ReadTarget::Primary => &self.primary,
        }
    }

    /// Check the replica in the background until `shutdown` (nothing to do without one); reads
    /// follow its verdicts (see [`crate::read_routing`]).
    pub fn spawn_replica_checks(&self, every: std::time::Duration, shutdown: tokio_util::sync::CancellationToken) {
        if self.has_replica {
            read_routing::spawn_checks(self.primary.clone(), self.replica.clone(), self.route.clone(), every, shutdown);
        }
    }
}

fn count_read(target: ReadTarget) {
    metrics::counter!("allot_db_reads_total", "target" => target.as_str()).increment(1);
}

/// Open a small pool for one-off commands (migrate, operator tools).
pub async fn connect_admin(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .with_context(|| "connecting to Postgres (is DATABASE_URL right and the server up?)")
}

/// One migration's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// Version number.
    pub version: i64,
    /// Description from the file name.
    pub description: String,
    /// Whether it is applied.
    pub applied: bool,
}

/// Versions applied in the database (none when the bookkeeping table does not exist yet).
pub async fn applied_versions(pool: &PgPool) -> anyhow::Result<Vec<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await?)
}

/// Every known migration with whether it is applied.
pub async fn migration_status(pool: &PgPool) -> anyhow::Result<Vec<MigrationState>> {
    let applied = applied_versions(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationState {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// Refuse to serve against a schema older than this build's migrations.
pub async fn check_schema(pool: &PgPool) -> anyhow::Result<()> {
    let status = migration_status(pool).await?;
    let missing: Vec<String> =
        status.iter().filter(|m| !m.applied).map(|m| format!("{} {}", m.version, m.description)).collect();
    if !missing.is_empty() {
        bail!(
            "the database schema is older than this build: {} migration(s) not applied ({}). Run `allot migrate up` first",
            missing.len(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// Apply every pending migration.
pub async fn migrate_up(pool: &PgPool) -> anyhow::Result<usize> {
    let before = applied_versions(pool).await?.len();
    MIGRATOR.run(pool).await.context("applying migrations")?;
    Ok(applied_versions(pool).await?.len() - before)
}

/// Revert the newest `steps` applied migrations.
pub async fn migrate_down(pool: &PgPool, steps: usize) -> anyhow::Result<usize> {
    let applied = applied_versions(pool).await?;
    if steps == 0 || applied.is_empty() {
        return Ok(0);
    }
    let keep = applied.len().saturating_sub(steps);
    let target = if keep == 0 { 0 } else { applied[keep - 1] };
    MIGRATOR.undo(pool, target).await.context("reverting migrations")?;
    Ok(applied.len() - applied_versions(pool).await?.len())
}
