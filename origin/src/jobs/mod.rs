//! Scheduled jobs: the contract, the registry, and the scheduler behind `allot cron`.
//!
//! Every job runs as a singleton across processes and machines: a Postgres advisory lock keeps
//! runs from overlapping, and the `job_runs_one_per_slot` constraint lets exactly one process
//! claim each tick (slots are aligned to the epoch, so every scheduler agrees on them). Every
//! run, skip and failure is recorded in `job_runs`. `scheduled_jobs` rows override the
//! schedule (re-read every 30 s) or pause a job without a deploy (read by each tick's claim, so
//! a pause holds from the next tick).

pub mod housekeeping;
pub mod ledger_check;
pub mod outbox_prune;
pub mod pump;
pub mod reconcile;
pub mod stock_watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::InventoryCache;
use crate::config::Config;
use crate::db::Db;
use crate::ops::Actor;

/// Named numbers a run reports (`{"buckets": 100, "divergent": 0}`).
pub type Counts = serde_json::Map<String, serde_json::Value>;

/// What every job can use.
#[derive(Clone)]
pub struct JobContext {
    /// Configuration.
    pub config: Arc<Config>,
    /// Postgres.
    pub db: Db,
    /// The inventory cache, when configured.
    pub cache: Option<InventoryCache>,
    /// Cancelled on shutdown: long jobs stop between steps.
    pub shutdown: CancellationToken,
}

/// A scheduled job.
pub trait Job: Send + Sync + 'static {
    /// Stable identifier (also the `scheduled_jobs` / `job_runs` name).
    fn name(&self) -> &'static str;
    /// The schedule in code; `scheduled_jobs.interval_secs` overrides it.
    fn default_interval(&self) -> Duration;
    /// Runs before [`Job::run`]; an error fails the run.
    fn pre<'a>(&'a self, _ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// The work itself.
    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>>;
    /// Runs after a successful run.
    fn post<'a>(&'a self, _ctx: &'a JobContext, counts: &'a Counts) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            tracing::info!(job = self.name(), counts = %serde_json::Value::Object(counts.clone()), "job succeeded")
        })
    }
    /// Runs after a failed run.
    fn on_failure<'a>(&'a self, _ctx: &'a JobContext, error: &'a anyhow::Error) -> BoxFuture<'a, ()> {
        Box::pin(async move { tracing::error!(job = self.name(), error = %format!("{error:#}"), "job failed") })
    }
}

/// The jobs that exist with the given features and stores.
pub fn registry(cfg: &Config, has_cache: bool) -> Vec<Arc<dyn Job>> {
    let mut jobs: Vec<Arc<dyn Job>> = Vec::new();
    if cfg.features.inventory_cache && has_cache {
        jobs.push(Arc::new(pump::InventoryPump));
        jobs.push(Arc::new(reconcile::Reconciler));
    }
    if cfg.features.housekeeping {
        jobs.push(Arc::new(housekeeping::IdempotencyExpiry));
        jobs.push(Arc::new(housekeeping::JobHistoryPrune));
        jobs.push(Arc::new(housekeeping::AuditPrune));
        // Postgres alone: a region without a cache still hears about stock.
        jobs.push(Arc::new(stock_watch::StockWatch));
        jobs.push(Arc::new(outbox_prune::OutboxPrune));
        // Postgres alone: funding balances against their ledger.
        jobs.push(Arc::new(ledger_check::LedgerCheck));
    }
    jobs
}

/// How one attempt to run a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// It ran and succeeded.
    Succeeded(Counts),
    /// It ran and failed.
    Failed(String),
    /// Another process is running it right now; recorded as skipped.
    SkippedOverlap,
    /// Another process already claimed this tick.
    AlreadyClaimed,
    /// The job is paused: the tick was not claimed (nothing recorded).
    Paused,
}

impl RunOutcome {
    /// The outcome's label in `allot_job_runs_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RunOutcome::Succeeded(_) => "succeeded",
            RunOutcome::Failed(_) => "failed",
            RunOutcome::SkippedOverlap => "skipped",
            RunOutcome::AlreadyClaimed => "already_claimed",
            RunOutcome::Paused => "paused",
        }
    }
}

fn lock_key(name: &str) -> i64 {
    let d = Sha256::digest(format!("allot-job:{name}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// This process's name in `job_runs`.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into());
    format!("{host}:{}", std::process::id())
}

/// A run claimed in `job_runs` (outcome `running`), on the connection that will hold its lock.
pub struct Claimed {
    run_id: i64,
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
}

impl Claimed {
    /// The run's id in `job_runs`.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }
}

/// Why a run was not claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotClaimed {
    /// Another process already claimed this tick.
    AlreadyClaimed,
    /// The job is paused (`scheduled_jobs.enabled = false`); only scheduled ticks are refused.
    Paused,
}

/// Claim a run of `job`: for tick `slot`, or by hand when `slot` is `None`. A scheduled tick is
/// claimed once across processes, and not at all while the job is paused: the pause is read in
/// the claiming statement itself, so it holds from the next tick on at no extra cost. A run by
/// hand ignores the pause. With `audit`, the claim is audited `job.run` in its transaction.
pub async fn claim(
    job: &dyn Job,
    ctx: &JobContext,
    slot: Option<OffsetDateTime>,
    instance: &str,
    audit: Option<&Actor>,
) -> anyhow::Result<Result<Claimed, NotClaimed>> {
    let name = job.name();
    let mut conn = ctx.db.primary.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let (run_id, paused): (Option<i64>, bool) = sqlx::query_as(
        "WITH paused AS (
             SELECT $3::timestamptz IS NOT NULL
                    AND EXISTS (SELECT 1 FROM scheduled_jobs WHERE name = $1 AND NOT enabled) AS yes
         ), claimed AS (
             INSERT INTO job_runs (job_name, instance, slot, outcome, backend_pid, backend_start)
             SELECT $1, $2, $3, 'running', pg_backend_pid(),
                    (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
               FROM paused WHERE NOT paused.yes
             ON CONFLICT (job_name, slot) DO NOTHING RETURNING id
         )
         SELECT (SELECT id FROM claimed), (SELECT yes FROM paused)",
    )
    .bind(name)
    .bind(instance)
    .bind(slot)
    .fetch_one(&mut *tx)
    .await?;
    let Some(run_id) = run_id else {
        let (why, label) =
            if paused { (NotClaimed::Paused, "paused") } else { (NotClaimed::AlreadyClaimed, "already_claimed") };
        metrics::counter!("allot_job_runs_total", "job_name" => name, "outcome" => label).increment(1);
        return Ok(Err(why));
    };
    if let Some(actor) = audit {
        let change = serde_json::json!({ "run_id": run_id, "instance": instance });
        crate::ops::audit::record(&mut tx, actor, "job.run", name, change).await.map_err(anyhow::Error::new)?;
    }
    tx.commit().await?;
    Ok(Ok(Claimed { run_id, conn }))
}

/// Run a claimed run as a singleton: take the job's advisory lock, or, if a run from an earlier
/// tick (or by hand) still holds it, record this one as skipped.
pub async fn run_claimed(job: &dyn Job, ctx: &JobContext, claimed: Claimed) -> anyhow::Result<RunOutcome> {
    let name = job.name();
    let Claimed { run_id, mut conn } = claimed;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(lock_key(name)).fetch_one(&mut *conn).await?;
    if !locked {
        sqlx::query(
            "UPDATE job_runs SET outcome = 'skipped', finished_at = now(),
                    error = 'a previous run is still in progress' WHERE id = $1",
        )
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
        tracing::info!(job = name, "skipped: a previous run is still in progress");
        metrics::counter!("allot_job_runs_total", "job_name" => name, "outcome" => "skipped").increment(1);
        return Ok(RunOutcome::SkippedOverlap);
    }
    close_abandoned(&mut conn, name, run_id).await?;
    let span =
        tracing::info_span!("job", otel.name = %format!("job.{name}"), job = name, outcome = tracing::field::Empty);
    let result = run_locked(job, ctx, run_id, &mut conn).instrument(span.clone()).await;
    if let Ok(outcome) = &result {
        let label = outcome.label();
        span.record("outcome", label);
        metrics::counter!("allot_job_runs_total", "job_name" => name, "outcome" => label).increment(1);
    }
    // A session lock must not go back to the pool: unlock, or close the connection.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(lock_key(name)).execute(&mut *conn).await;
    if unlocked.is_err() {
        let _ = conn.close().await;
    }
    result
}

/// What a run whose process ended mid-run is closed with.
pub const ABANDONED: &str = "abandoned: the process running it ended mid-run";

/// Close `job`'s other `running` rows whose Postgres session has ended (their process died
/// mid-run) as failed. Called holding the job's lock: no live run of the job can be among them,
/// and a run claimed but not yet locked still has its session.
async fn close_abandoned(conn: &mut sqlx::PgConnection, job: &str, run_id: i64) -> anyhow::Result<()> {
    let closed: Vec<(i64, String)> = sqlx::query_as(
        "UPDATE job_runs r SET outcome = 'failed', finished_at = now(), error = $3
          WHERE r.job_name = $1 AND r.outcome = 'running' AND r.id <> $2 AND r.backend_pid IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                             WHERE a.pid = r.backend_pid AND a.backend_start = r.backend_start)
         RETURNING r.id, r.instance",
    )
    .bind(job)
    .bind(run_id)
    .bind(ABANDONED)
    .fetch_all(conn)
    .await?;
    for (id, instance) in closed {
        tracing::warn!(job, run_id = id, instance, "closed a run whose process ended mid-run");
        metrics::counter!("allot_job_runs_total", "job_name" => job.to_owned(), "outcome" => "abandoned").increment(1);
    }
    Ok(())
}

/// Run a job once as a singleton: for tick `slot`, or by hand when `slot` is `None`.
///
/// First the tick is claimed (one `job_runs` row per job and slot, whoever inserts it first;
/// none while the job is paused, unless by hand), then the job's advisory lock is taken; if a
/// run from an earlier tick still holds it, this tick's row is recorded as skipped.
pub async fn run_once(
    job: &dyn Job,
    ctx: &JobContext,
    slot: Option<OffsetDateTime>,
    instance: &str,
) -> anyhow::Result<RunOutcome> {
    match claim(job, ctx, slot, instance, None).await? {
        Ok(claimed) => run_claimed(job, ctx, claimed).await,
        Err(NotClaimed::AlreadyClaimed) => Ok(RunOutcome::AlreadyClaimed),
        Err(NotClaimed::Paused) => Ok(RunOutcome::Paused),
    }
}

async fn run_locked(
    job: &dyn Job,
    ctx: &JobContext,
    run_id: i64,
    conn: &mut sqlx::PgConnection,
) -> anyhow::Result<RunOutcome> {
    let started = std::time::Instant::now();
    let result = async {
        job.pre(ctx).await?;
        job.run(ctx).await
    }
    .await;
    let (outcome, mut counts, error) = match &result {
        Ok(counts) => ("succeeded", serde_json::Value::Object(counts.clone()), None),
        Err(e) => ("failed", serde_json::json!({}), Some(format!("{e:#}"))),
    };
    counts["duration_ms"] = serde_json::json!(started.elapsed().as_millis() as u64);
    metrics::histogram!("allot_job_duration_seconds", "job_name" => job.name()).record(started.elapsed().as_secs_f64());
    sqlx::query("UPDATE job_runs SET finished_at = now(), outcome = $2, counts = $3, error = $4 WHERE id = $1")
        .bind(run_id)
        .bind(outcome)
        .bind(&counts)
        .bind(&error)
        .execute(&mut *conn)
        .await?;
    match result {
        Ok(c) => {
            job.post(ctx, &c).await;
            Ok(RunOutcome::Succeeded(c))
        }
        Err(e) => {
            job.on_failure(ctx, &e).await;
            Ok(RunOutcome::Failed(format!("{e:#}")))
        }
    }
}

/// Each job's interval override from `scheduled_jobs` (pauses are read when a tick is claimed).
async fn load_intervals(db: &Db) -> anyhow::Result<HashMap<String, Duration>> {
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT name, interval_secs FROM scheduled_jobs WHERE interval_secs IS NOT NULL")
            .fetch_all(&db.primary)
            .await?;
    Ok(rows.into_iter().map(|(n, secs)| (n, Duration::from_secs(secs.max(1) as u64))).collect())
}

/// How often the scheduler re-reads interval overrides from `scheduled_jobs`.
pub const OVERRIDE_REFRESH: Duration = Duration::from_secs(30);

/// The scheduler: runs each due job once per tick until `ctx.shutdown`, then waits for the
/// running ones to finish their current step.
pub async fn run_scheduler(ctx: JobContext, jobs: Vec<Arc<dyn Job>>) {
    let instance = instance_name();
    let names: Vec<&str> = jobs.iter().map(|j| j.name()).collect();
    tracing::info!(jobs = ?names, instance, "scheduler started");
    let mut intervals: HashMap<String, Duration> = HashMap::new();
    let mut refreshed_at: Option<std::time::Instant> = None;
    let mut last_slot: HashMap<&'static str, i64> = HashMap::new();
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        if refreshed_at.is_none_or(|t| t.elapsed() >= OVERRIDE_REFRESH) {
            match load_intervals(&ctx.db).await {
                Ok(i) => intervals = i,
                Err(e) => tracing::warn!(error = %e, "could not read scheduled_jobs; keeping the previous schedule"),
            }
            refreshed_at = Some(std::time::Instant::now());
        }
        while running.try_join_next().is_some() {}
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for job in &jobs {
            let every =
                intervals.get(job.name()).copied().unwrap_or_else(|| job.default_interval()).as_secs().max(1) as i64;
            let slot = now - now.rem_euclid(every);
            if last_slot.get(job.name()) == Some(&slot) {
                continue;
            }
            last_slot.insert(job.name(), slot);
            // A run from an earlier tick still going (here or elsewhere) makes run_once record
            // this tick as skipped: the advisory lock is per session, not per process. A paused
            // job's tick is refused by the claim itself, so a pause holds from the next tick.
            let (job, ctx2, instance2) = (job.clone(), ctx.clone(), instance.clone());
            let slot_time = OffsetDateTime::from_unix_timestamp(slot).ok();
            running.spawn(async move {
                if let Err(e) = run_once(job.as_ref(), &ctx2, slot_time, &instance2).await {
                    tracing::warn!(job = job.name(), error = %format!("{e:#}"), "could not run job");
                }
            });
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    tracing::info!(running = running.len(), "scheduler stopping; waiting for running jobs");
    while running.join_next().await.is_some() {}
    tracing::info!("scheduler stopped");
}
