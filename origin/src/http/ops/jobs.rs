//! `/ops/v1/jobs` and `/ops/v1/divergences`: the schedule, pauses, re-timing, runs by hand, run
//! history, and the reconciler's divergences.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{JsonBody, OpsCaller, QueryOf, listing};
use crate::error::AppError;
use crate::http::AppState;
use crate::jobs::{self, Job, JobContext};
use crate::ops::jobs as job_ops;
use crate::ops::page::Page;

/// The jobs this process's configuration registers (the same list `allot cron` schedules).
pub fn registry(st: &AppState) -> Vec<Arc<dyn Job>> {
    jobs::registry(&st.config, st.engine.cache().is_some())
}

/// What a run by hand in the serving process works with. It is not cancelled on shutdown: a
/// run by hand ends with the process, like any request still in flight at the deadline.
pub fn job_context(st: &AppState) -> JobContext {
    JobContext {
        config: st.config.clone(),
        db: st.db.clone(),
        cache: st.engine.cache().cloned(),
        shutdown: CancellationToken::new(),
    }
}

/// Every registered job with its schedule and last runs.
pub async fn list(State(st): State<AppState>) -> Result<Response, AppError> {
    Ok(listing(job_ops::list(&st.db.primary, &registry(&st)).await?, None))
}

/// A page of a listing: cursor and limit only; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<u32>,
}

/// A job's runs, newest first.
pub async fn runs(
    State(st): State<AppState>,
    Path(name): Path<String>,
    QueryOf(q): QueryOf<PageQuery>,
) -> Result<Response, AppError> {
    let page = Page::parse(q.cursor.as_deref(), q.limit)?;
    let (rows, next) = job_ops::runs(&st.db.primary, &registry(&st), &name, page).await?;
    Ok(listing(rows, next))
}

/// The job as it stands after a change.
async fn one(st: &AppState, name: &str) -> Result<Response, AppError> {
    let all = job_ops::list(&st.db.primary, &registry(st)).await?;
    // The change just succeeded on a registered job, so it is listed.
    let job = all.into_iter().find(|j| j.name == name).ok_or_else(|| {
        AppError::Internal(anyhow::anyhow!("job {name} changed but is not in the registry's listing"))
    })?;
    Ok(Json(job).into_response())
}

/// Pause a job.
pub async fn pause(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    job_ops::pause(&st.db.primary, &caller.actor, &registry(&st), &name).await?;
    one(&st, &name).await
}

/// Resume a job.
pub async fn resume(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    job_ops::resume(&st.db.primary, &caller.actor, &registry(&st), &name).await?;
    one(&st, &name).await
}

/// `PUT /ops/v1/jobs/{name}/schedule`: the new interval.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobSchedule)]
pub struct ScheduleBody {
    /// Seconds, 5-604,800 (7 days); null for the interval in code. The field is required.
    #[schema(required = true, minimum = 5, maximum = 604_800)]
    #[serde(deserialize_with = "super::nullable")]
    interval_secs: Option<i64>,
}

/// Re-time a job.
pub async fn schedule(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ScheduleBody>,
) -> Result<Response, AppError> {
    job_ops::schedule(&st.db.primary, &caller.actor, &registry(&st), &name, body.interval_secs).await?;
    one(&st, &name).await
}

/// Run a job now in this process, in the background: `202` with the run's id and where to
/// watch it.
pub async fn run(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let run_id = job_ops::run_in_background(&job_context(&st), &caller.actor, &registry(&st), &name).await?;
    let runs = format!("/ops/v1/jobs/{name}/runs");
    let doc = serde_json::json!({ "job": name, "run_id": run_id, "runs": runs });
    Ok((StatusCode::ACCEPTED, [(axum::http::header::LOCATION, runs)], Json(doc)).into_response())
}

/// `GET /ops/v1/divergences`'s query; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DivergenceQuery {
    /// Exactly this product.
    product_id: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<u32>,
}

/// The reconciler's divergences, newest first.
pub async fn divergences(
    State(st): State<AppState>,
    QueryOf(q): QueryOf<DivergenceQuery>,
) -> Result<Response, AppError> {
    let page = Page::parse(q.cursor.as_deref(), q.limit)?;
    let (rows, next) = job_ops::divergences(&st.db.primary, q.product_id.as_deref(), page).await?;
    Ok(listing(rows, next))
}
