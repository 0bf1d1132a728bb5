//! Scheduled jobs as operators see them: the schedule, pauses and overrides, recent runs, and
//! the reconciler's divergences. Changes to `scheduled_jobs` are audited in their transaction.

use std::sync::Arc;

use allot_shared::{ApiError, ErrorCode};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::audit::{self, Actor};
use super::page::Page;
use crate::error::AppError;
use crate::jobs::{self, Claimed, Job, JobContext};

/// The shortest interval a job may be re-timed to.
pub const MIN_INTERVAL_SECS: i64 = 5;
/// The longest interval a job may be re-timed to (7 days).
pub const MAX_INTERVAL_SECS: i64 = 7 * 86_400;
/// Runs shown per job in the listing.
pub const RECENT_RUNS: i64 = 5;

/// One run of a job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct JobRun {
    /// Run id; the runs listing is newest first by id.
    pub id: i64,
    /// The process that ran it (`host:pid`).
    pub instance: String,
    /// The tick it ran for; null for a run by hand.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub slot: Option<OffsetDateTime>,
    /// Started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Finished; null while running.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub finished_at: Option<OffsetDateTime>,
    /// How it ended.
    #[schema(value_type = RecordedOutcome)]
    pub outcome: String,
    /// What the run reported (per job: `deleted`, `transitions`, `duration_ms`, …).
    pub counts: serde_json::Value,
    /// Why it failed or was skipped; null otherwise.
    #[schema(required = true)]
    pub error: Option<String>,
}

/// One registered job: its schedule, pause and latest runs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = JobEntry)]
pub struct JobStatus {
    /// The job's name.
    pub name: String,
    /// The interval in code, in seconds.
    pub default_interval_secs: u64,
    /// The interval an operator set, in seconds; null when none.
    #[schema(required = true)]
    pub override_interval_secs: Option<i64>,
    /// The interval the scheduler uses, in seconds.
    pub interval_secs: u64,
    /// False while paused.
    pub enabled: bool,
    /// When an operator last changed the job; null if never.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub updated_at: Option<OffsetDateTime>,
    /// Who changed it last (an operator id, or `cli:<os user>`); null if never.
    #[schema(required = true)]
    pub updated_by: Option<String>,
    /// The latest runs (at most 5), newest first.
    pub last_runs: Vec<JobRun>,
}

/// The registered job called `name`, or `404`.
pub fn find<'a>(registry: &'a [Arc<dyn Job>], name: &str) -> Result<&'a Arc<dyn Job>, AppError> {
    registry.iter().find(|j| j.name() == name).ok_or_else(|| {
        let names: Vec<&str> = registry.iter().map(|j| j.name()).collect();
        AppError::api(
            ErrorCode::NotFound,
            format!("no job {name:?} is registered here; registered: {}", names.join(", ")),
        )
    })
}

#[derive(sqlx::FromRow)]
struct OverrideRow {
    enabled: bool,
    interval_secs: Option<i32>,
    updated_at: OffsetDateTime,
    updated_by: Option<String>,
}

async fn recent_runs(pool: &PgPool, name: &str, limit: i64) -> Result<Vec<JobRun>, AppError> {
    Ok(sqlx::query_as(
        "SELECT id, instance, slot, started_at, finished_at, outcome, counts, error
           FROM job_runs WHERE job_name = $1 ORDER BY started_at DESC, id DESC LIMIT $2",
    )
    .bind(name)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Every registered job with its schedule and its last runs.
pub async fn list(pool: &PgPool, registry: &[Arc<dyn Job>]) -> Result<Vec<JobStatus>, AppError> {
    let mut out = Vec::with_capacity(registry.len());
    for job in registry {
        let row: Option<OverrideRow> =
            sqlx::query_as("SELECT enabled, interval_secs, updated_at, updated_by FROM scheduled_jobs WHERE name = $1")
                .bind(job.name())
                .fetch_optional(pool)
                .await?;
        let default_interval_secs = job.default_interval().as_secs();
        let override_interval_secs = row.as_ref().and_then(|r| r.interval_secs).map(i64::from);
        out.push(JobStatus {
            name: job.name().to_owned(),
            default_interval_secs,
            override_interval_secs,
            interval_secs: override_interval_secs.map_or(default_interval_secs, |s| s as u64),
            enabled: row.as_ref().is_none_or(|r| r.enabled),
            updated_at: row.as_ref().map(|r| r.updated_at),
            updated_by: row.and_then(|r| r.updated_by),
            last_runs: recent_runs(pool, job.name(), RECENT_RUNS).await?,
        });
    }
    Ok(out)
}

/// One page of a job's runs, newest first.
pub async fn runs(
    pool: &PgPool,
    registry: &[Arc<dyn Job>],
    name: &str,
    page: Page,
) -> Result<(Vec<JobRun>, Option<String>), AppError> {
    find(registry, name)?;
    let mut rows: Vec<JobRun> = sqlx::query_as(
        "SELECT id, instance, slot, started_at, finished_at, outcome, counts, error
           FROM job_runs WHERE job_name = $1 AND ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3",
    )
    .bind(name)
    .bind(page.before)
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await?;
    let next = page.next_cursor(&mut rows, |r| r.id);
    Ok((rows, next))
}

/// Write `name`'s override row (creating it with the defaults if needed) with `enabled` and
/// `interval_secs` (each `None`: unchanged), audited as `action` with the before and after.
async fn change(
    pool: &PgPool,
    actor: &Actor,
    name: &str,
    action: &str,
    enabled: Option<bool>,
    interval_secs: Option<Option<i32>>,
) -> Result<(), AppError> {
    let mut tx = pool.begin().await?;
    // The row exists and is locked before it is read, so the audit's "from" is exact.
    sqlx::query("INSERT INTO scheduled_jobs (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let (was_enabled, was_interval): (bool, Option<i32>) =
        sqlx::query_as("SELECT enabled, interval_secs FROM scheduled_jobs WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    let now_enabled = enabled.unwrap_or(was_enabled);
    let now_interval = interval_secs.unwrap_or(was_interval);
    sqlx::query(
        "UPDATE scheduled_jobs SET enabled = $2, interval_secs = $3, updated_at = now(), updated_by = $4
          WHERE name = $1",
    )
    .bind(name)
    .bind(now_enabled)
    .bind(now_interval)
    .bind(actor.name())
    .execute(&mut *tx)
    .await?;
    let change = serde_json::json!({
        "from": { "enabled": was_enabled, "interval_secs": was_interval },
        "to": { "enabled": now_enabled, "interval_secs": now_interval },
    });
    audit::record(&mut tx, actor, action, name, change).await?;
    tx.commit().await?;
    Ok(())
}

/// Pause a job: no scheduled tick is claimed from now on (a run in progress finishes; a run
/// by hand still runs). Audited `job.pause`.
pub async fn pause(pool: &PgPool, actor: &Actor, registry: &[Arc<dyn Job>], name: &str) -> Result<(), AppError> {
    find(registry, name)?;
    change(pool, actor, name, "job.pause", Some(false), None).await
}

/// Resume a paused job from its next tick. Audited `job.resume`.
pub async fn resume(pool: &PgPool, actor: &Actor, registry: &[Arc<dyn Job>], name: &str) -> Result<(), AppError> {
    find(registry, name)?;
    change(pool, actor, name, "job.resume", Some(true), None).await
}

/// Re-time a job (`None`: back to the interval in code). Audited `job.schedule`.
pub async fn schedule(
    pool: &PgPool,
    actor: &Actor,
    registry: &[Arc<dyn Job>],
    name: &str,
    interval_secs: Option<i64>,
) -> Result<(), AppError> {
    find(registry, name)?;
    if interval_secs.is_some_and(|s| !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&s)) {
        let reason = format!("must be {MIN_INTERVAL_SECS} to {MAX_INTERVAL_SECS} seconds, or null for the default");
        return Err(ApiError::validation("interval_secs", reason).into());
    }
    change(pool, actor, name, "job.schedule", None, Some(interval_secs.map(|s| s as i32))).await
}

/// Claim a run of `name` by hand, audited `job.run` in the claim's transaction. A run by hand
/// ignores a pause, and is recorded as skipped if the job is running elsewhere.
pub async fn claim_by_hand(
    ctx: &JobContext,
    actor: &Actor,
    registry: &[Arc<dyn Job>],
    name: &str,
) -> Result<(Arc<dyn Job>, Claimed), AppError> {
    let job = find(registry, name)?.clone();
    match jobs::claim(job.as_ref(), ctx, None, &jobs::instance_name(), Some(actor)).await? {
        Ok(claimed) => Ok((job, claimed)),
        // A run without a slot has no tick to lose and no pause to respect.
        Err(why) => Err(AppError::Internal(anyhow::anyhow!("a run by hand was not claimed: {why:?}"))),
    }
}

/// Run `name` now, in this process, in the background; returns the run's id in `job_runs`.
pub async fn run_in_background(
    ctx: &JobContext,
    actor: &Actor,
    registry: &[Arc<dyn Job>],
    name: &str,
) -> Result<i64, AppError> {
    let (job, claimed) = claim_by_hand(ctx, actor, registry, name).await?;
    let run_id = claimed.run_id();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = jobs::run_claimed(job.as_ref(), &ctx, claimed).await {
            tracing::warn!(job = job.name(), run_id, error = %format!("{e:#}"), "could not run job");
        }
    });
    Ok(run_id)
}

/// One divergence the reconciler found between Postgres and the cache.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct Divergence {
    /// Row id; the listing is newest first by id.
    pub id: i64,
    /// When it was found.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Product id.
    pub product_id: String,
    /// Denomination in minor units.
    pub denomination_minor: i64,
    /// Active cards in Postgres.
    pub postgres_active: i64,
    /// Members in the cache; null when the set was missing.
    #[schema(required = true)]
    pub cache_active: Option<i64>,
    /// Whether the product's rebuild succeeded.
    pub healed: bool,
}

/// One page of divergences, newest first, optionally for one product.
pub async fn divergences(
    pool: &PgPool,
    product_id: Option<&str>,
    page: Page,
) -> Result<(Vec<Divergence>, Option<String>), AppError> {
    let mut rows: Vec<Divergence> = sqlx::query_as(
        "SELECT id, at, product_id, denomination_minor, postgres_active, cache_active, healed
           FROM cache_divergences
          WHERE ($1::text IS NULL OR product_id = $1) AND ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3",
    )
    .bind(product_id)
    .bind(page.before)
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await?;
    let next = page.next_cursor(&mut rows, |r| r.id);
    Ok((rows, next))
}

// The values of a text column, named for the OpenAPI document (the column is read as text).
/// How a job run ended (`running` until it does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = RunOutcome)]
pub enum RecordedOutcome {
    /// Claimed and not finished (or its process exited first).
    Running,
    /// Ran and succeeded.
    Succeeded,
    /// Ran and failed; `error` says why.
    Failed,
    /// Not run: the job was running elsewhere.
    Skipped,
}
