//! The operator API (`/ops/v1/…`, tag `operators`): one function per operation, listed in
//! [`operations`]. Every row of `http::ops::ROUTES` needs an entry here with the same least role,
//! and nothing else under `/ops/v1` may be documented (the `openapi` tests check both).
//!
//! To add an operation: derive `ToSchema` (a body or an answer) or `IntoParams` (a query) on the
//! type the handler reads or writes (a hand-written struct here only when the handler answers
//! with `json!`), write a
//! function starting from [`op`] (which adds the tag, the operator-token security, the least
//! role and the `401`/`403` responses), add it to [`operations`], and regenerate
//! `docs/openapi.json` (`cargo run -p allot-origin --bin allot -- openapi > docs/openapi.json`).
//!
//! This file holds the shared pieces and the `me`, `audit`, `operators`, `stock`, `jobs` and
//! `divergences` operations; each further area has its own file with the same pattern:
//!
//! - `/ops/v1/imports` in [`imports`]
//! - `/ops/v1/clients` and `/ops/v1/keys` in [`clients`]
//! - `/ops/v1/voids` and `/ops/v1/allocations` in [`cards`]
//! - `/ops/v1/events` in [`events`]
//! - `/ops/v1/clients/{id}/funding` and `/ops/v1/clients/{id}/discounts` in [`funding`]
//! - `/ops/v1/clients/{id}/webhooks` and `/ops/v1/webhooks` in [`webhooks`]

pub mod cards;
pub mod clients;
pub mod events;
pub mod funding;
pub mod imports;
pub mod webhooks;

use std::sync::Arc;

use allot_shared::{ApiError, Denomination, ErrorCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::{HttpMethod, Server};
use uuid::Uuid;

use super::build::{Op, formatted_string, header, string};
use super::{
    LEAST_ROLE_EXTENSION, OPERATOR_TOKEN_SCHEME, RESPONSE_OPS_FORBIDDEN, RESPONSE_OPS_UNAUTHORIZED, TAG_OPERATORS,
};
use crate::http::ops::{jobs as jobs_http, operators as operators_http, stock as stock_http};
use crate::jobs::{self, Job};
use crate::ops::audit::AuditEntry;
use crate::ops::jobs::{
    self as job_ops, Divergence, JobRun, JobStatus, MAX_INTERVAL_SECS, MIN_INTERVAL_SECS, RECENT_RUNS,
};
use crate::ops::operators::{DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS, OperatorRecord, Role};
use crate::ops::page::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::ops::stock::{self, BucketStock, MAX_THRESHOLD};

/// An operator operation: tag `operators`, the operator token, its least role (stated first in
/// the description and as `x-allot-least-role`), served on the operator listener, and the `401`,
/// `403`, `500` and `503` every operator route can answer.
pub fn op(
    method: HttpMethod,
    path: &'static str,
    role: Role,
    operation_id: &str,
    summary: &str,
    description: &str,
) -> Op {
    debug_assert!(path.starts_with("/ops/v1/"), "operator paths live under /ops/v1: {path}");
    let listener = Server::builder()
        .url("http://127.0.0.1:9090")
        .description(Some(
            "The operator listener (ALLOT_OPERATOR_LISTEN; default shown): private, never through the edge",
        ))
        .build();
    Op::new(method, path, operation_id, summary)
        .description(&format!("**Least role: {}.** {description}", role.as_str()))
        .tag(TAG_OPERATORS)
        .security(OPERATOR_TOKEN_SCHEME)
        .server(listener)
        .extension(LEAST_ROLE_EXTENSION, json!(role.as_str()))
        .shared_response(401, RESPONSE_OPS_UNAUTHORIZED)
        .shared_response(403, RESPONSE_OPS_FORBIDDEN)
        .shared_response(500, super::RESPONSE_INTERNAL)
        .shared_response(503, super::RESPONSE_UNAVAILABLE)
}

/// `400 VALIDATION_FAILED` naming the field, as the operator extractors answer.
fn bad_input(op: Op, examples: &[ApiError]) -> Op {
    op.error("Bad input; `details.field` names what. Nothing was written.", examples)
}

// ---- schemas -------------------------------------------------------------------------------
//
// Bodies, answers and queries are the real types the handlers read and write (they derive
// `ToSchema` or `IntoParams` where they are defined). What follows has no such type.

/// `GET /ops/v1/me`: who the token belongs to.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Me {
    /// The operator's id (the actor in the audit trail).
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Role.
    #[schema(value_type = Role)]
    pub role: String,
}

/// `201` of `POST /ops/v1/operators`: the token, shown in this response only.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatedOperator {
    /// Operator id.
    pub id: Uuid,
    /// Display name, trimmed.
    pub name: String,
    /// Role.
    #[schema(value_type = Role)]
    pub role: String,
    /// The bearer token, `allotop_…`: shown once, stored only as a digest.
    pub token: String,
}

/// `POST /ops/v1/operators/{id}/revoke`: done.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokedOperator {
    /// Operator id.
    pub id: Uuid,
    /// Always true.
    pub revoked: bool,
}

/// `202` of `POST /ops/v1/jobs/{name}/run`: the run claimed, and where to watch it.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunStarted {
    /// The job's name.
    pub job: String,
    /// The run's id in the job's runs.
    pub run_id: i64,
    /// The job's runs listing (also the `Location` header).
    pub runs: String,
}

// ---- operations ----------------------------------------------------------------------------

const SAMPLE_OPERATOR: &str = "0192f0c1-7c7e-7000-8000-0000000000a1";

fn me() -> Op {
    op(HttpMethod::Get, "/ops/v1/me", Role::Viewer, "opsMe", "Who the token belongs to", "Any live token.")
        .json_response::<Me>(
            200,
            "The operator.",
            json!({ "id": SAMPLE_OPERATOR, "name": "Ana (on call)", "role": "operator" }),
            &[],
        )
}

fn audit() -> Op {
    let example = json!({
        "items": [{
            "id": 4182, "at": "2026-11-27T16:05:31.204Z", "actor": SAMPLE_OPERATOR, "action": "operator.create",
            "target": "0192f0c1-7c7e-7000-8000-0000000000b2",
            "change": { "name": "Bo", "role": "viewer", "valid_days": 90 },
            "request_id": "8f14e45fceea467a9c1c5e8d3f0b2a71"
        }],
        "next_cursor": "djE6NDE4Mg"
    });
    let description = "Every mutating action, from the API or the CLI, with cursor pagination.";
    let op =
        op(HttpMethod::Get, "/ops/v1/audit", Role::Viewer, "opsAudit", "The audit trail, newest first", description)
            .query::<operators_http::AuditQuery>()
            .listing_response::<AuditEntry>("A page of audit rows.", example);
    bad_input(
        op,
        &[
            ApiError::validation("limit", format!("must be 1 to {MAX_LIMIT}")),
            ApiError::validation("cursor", "is not a cursor this API returned"),
        ],
    )
}

fn list_operators() -> Op {
    let example = json!({
        "items": [{
            "id": SAMPLE_OPERATOR, "name": "Ana (on call)", "role": "operator", "token_id": "Xk29fLq0Pz7RtY1a",
            "created_at": "2026-11-01T09:00:00Z", "expires_at": "2027-01-30T09:00:00Z",
            "revoked_at": null, "last_used_at": "2026-11-27T16:04:10Z"
        }],
        "next_cursor": null
    });
    let description = "Newest first, on one page (`next_cursor` is null). Never a token.";
    op(HttpMethod::Get, "/ops/v1/operators", Role::Admin, "opsListOperators", "Every operator", description)
        .listing_response::<OperatorRecord>("The operators.", example)
}

fn create_operator() -> Op {
    let description = format!(
        "The token is in this response only. It expires after `valid_days` ({DEFAULT_TOKEN_DAYS} by default, \
         at most {MAX_TOKEN_DAYS}). Audited as `operator.create`."
    );
    let op =
        op(HttpMethod::Post, "/ops/v1/operators", Role::Admin, "opsCreateOperator", "Create an operator", &description)
            .json_body::<operators_http::NewOperator>(
                "The operator.",
                json!({ "name": "Ana (on call)", "role": "operator", "valid_days": 30 }),
            )
            .json_response::<CreatedOperator>(
                201,
                "Created; keep the token now.",
                json!({
                    "id": SAMPLE_OPERATOR, "name": "Ana (on call)", "role": "operator",
                    "token": "allotop_Xk29fLq0Pz7RtY1a_…"
                }),
                &[],
            );
    bad_input(
        op,
        &[
            ApiError::validation("role", "must be viewer, operator or admin"),
            ApiError::validation("valid_days", format!("must be 1 to {MAX_TOKEN_DAYS}")),
            ApiError::validation("name", "must be 1-200 characters"),
        ],
    )
    .error(
        "The body is over 1 MiB.",
        &[ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 1048576 bytes")],
    )
}

fn revoke_operator() -> Op {
    let description = "At once: the token's next request is `401`. Audited as `operator.revoke`.";
    let op = op(
        HttpMethod::Post,
        "/ops/v1/operators/{id}/revoke",
        Role::Admin,
        "opsRevokeOperator",
        "Revoke an operator's token",
        description,
    )
    .path_param("id", formatted_string("uuid", "The operator's id."))
    .json_response::<RevokedOperator>(200, "Revoked.", json!({ "id": SAMPLE_OPERATOR, "revoked": true }), &[]);
    bad_input(op, &[ApiError::validation("id", "must be a UUID")]).error(
        "No operator with this id has a live token.",
        &[ApiError::new(ErrorCode::NotFound, format!("no operator {SAMPLE_OPERATOR} with a live token"))],
    )
}

/// The `400` the operator query extractor answers for a parameter `Q` does not take (made by
/// the same `axum` call the extractor makes).
fn unknown_parameter<Q: DeserializeOwned>() -> ApiError {
    let uri = "/?colour=blue".parse().expect("a valid URI");
    let rejection = axum::extract::Query::<Q>::try_from_uri(&uri).err().expect("colour is not a parameter");
    ApiError::validation("query", rejection.body_text())
}

/// The `400` the operator body extractor answers for `text` (made by the same `serde_json` call).
fn bad_body<B: DeserializeOwned>(text: &str) -> ApiError {
    let error = serde_json::from_str::<B>(text).err().expect("the example body is refused");
    ApiError::validation("body", error.to_string())
}

/// The `400`s of a page's `limit` and `cursor`.
fn bad_page() -> [ApiError; 2] {
    [
        ApiError::validation("limit", format!("must be 1 to {MAX_LIMIT}")),
        ApiError::validation("cursor", "is not a cursor this API returned"),
    ]
}

/// The `404` for a job not registered here, as `ops::jobs::find` answers it in a process that
/// registers every job.
fn unknown_job() -> ApiError {
    let every: Vec<Arc<dyn Job>> = vec![
        Arc::new(jobs::pump::InventoryPump),
        Arc::new(jobs::reconcile::Reconciler),
        Arc::new(jobs::housekeeping::IdempotencyExpiry),
        Arc::new(jobs::housekeeping::JobHistoryPrune),
        Arc::new(jobs::housekeeping::AuditPrune),
        Arc::new(jobs::stock_watch::StockWatch),
        Arc::new(jobs::outbox_prune::OutboxPrune),
        Arc::new(jobs::ledger_check::LedgerCheck),
    ];
    job_ops::find(&every, "nope").err().expect("no job is called nope").to_api_error()
}

fn job_name_param(op: Op) -> Op {
    let description = "The job's name: `inventory-pump`, `reconcile` (both with the inventory cache and a Valkey), \
                       `idempotency-expiry`, `job-history-prune`, `audit-prune`, `stock-watch`, `outbox-prune`, \
                       `ledger-check` (housekeeping).";
    op.path_param("name", string(description))
}

fn sample_bucket() -> Value {
    json!({
        "product_id": "steam-eu", "currency": "EUR", "denomination": "25.00", "denomination_minor": 2500,
        "active": 30, "cached": 30, "allocated_1h": 3, "allocated_24h": 6,
        "rate_per_hour": 0.25, "days_of_cover": 5.0,
        "low_stock_threshold": 100, "threshold_source": "default",
        "state": "low", "published_state": "low", "published_state_at": "2026-11-27T16:00:15.123Z"
    })
}

fn sample_job() -> Value {
    json!({
        "name": "stock-watch", "default_interval_secs": 15, "override_interval_secs": null,
        "interval_secs": 15, "enabled": false,
        "updated_at": "2026-11-27T16:01:00Z", "updated_by": SAMPLE_OPERATOR,
        "last_runs": [sample_run()]
    })
}

fn sample_run() -> Value {
    json!({
        "id": 812, "instance": "origin-1:4242", "slot": "2026-11-27T16:00:45Z",
        "started_at": "2026-11-27T16:00:45.004Z", "finished_at": "2026-11-27T16:00:45.031Z",
        "outcome": "succeeded", "counts": { "buckets": 12, "transitions": 1, "duration_ms": 27 },
        "error": null
    })
}

fn list_stock() -> Op {
    let description = "One row per bucket (a product at one denomination), on one page (`next_cursor` is null). \
                       `state` is computed at the request; `published_state` catches up within one `stock-watch` \
                       tick. While Valkey is down the listing still answers, with `cached: null`.";
    let op = op(HttpMethod::Get, "/ops/v1/stock", Role::Viewer, "opsListStock", "Stock per bucket", description)
        .query::<stock_http::StockQuery>()
        .listing_response::<BucketStock>("The buckets.", json!({ "items": [sample_bucket()], "next_cursor": null }));
    let bad_state = stock::StockState::parse("full").expect_err("full is not a state");
    bad_input(op, &[bad_state, unknown_parameter::<stock_http::StockQuery>()])
}

fn set_stock_threshold() -> Op {
    let description = "`{denomination}` as on the wire for the product's currency (`25.00`, `500` for JPY). \
                       Answers the bucket as listed, with the new threshold and state; `stock-watch` publishes \
                       any transition this causes on its next tick. Audited as `stock.threshold`.";
    let op = op(
        HttpMethod::Put,
        "/ops/v1/stock/{product_id}/{denomination}/threshold",
        Role::Operator,
        "opsSetStockThreshold",
        "Set a bucket's low-stock threshold",
        description,
    )
    .path_param("product_id", string("The product's id."))
    .path_param("denomination", string("The denomination as on the wire (`25.00`)."))
    .json_body::<stock_http::ThresholdBody>(
        "The threshold, or null for the default.",
        json!({ "low_stock_threshold": 50 }),
    )
    .json_response::<BucketStock>(200, "The bucket.", sample_bucket_with_threshold(), &[]);
    let malformed = Denomination::parse("abc").expect_err("abc is not a denomination");
    let too_precise = Denomination::parse("25.001").and_then(|d| d.to_minor(2)).expect_err("EUR has 2 places");
    bad_input(
        op,
        &[
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<stock_http::ThresholdBody>("{}"),
            bad_body::<stock_http::ThresholdBody>(r#"{"low_stock_threshold": "ten"}"#),
            ApiError::validation("low_stock_threshold", format!("must be 0 to {MAX_THRESHOLD}, or null")),
            ApiError::validation("denomination", malformed.to_string()),
            ApiError::validation("denomination", too_precise.to_string()),
        ],
    )
    .error(
        "No such product, or the product is not offered in this denomination.",
        &[
            ApiError::new(ErrorCode::NotFound, "no product \"steam-eu\""),
            ApiError::new(ErrorCode::NotFound, "product \"steam-eu\" is not offered in 30.00"),
            ApiError::new(ErrorCode::NotFound, "no bucket steam-eu/2500"),
        ],
    )
    .error(
        "The body is over 1 MiB.",
        &[ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 1048576 bytes")],
    )
}

fn sample_bucket_with_threshold() -> Value {
    let mut bucket = sample_bucket();
    bucket["low_stock_threshold"] = json!(50);
    bucket["threshold_source"] = json!("bucket");
    bucket
}

fn list_jobs() -> Op {
    let description = format!(
        "Every job this process's configuration registers, on one page (`next_cursor` is null), with its last \
         {RECENT_RUNS} runs, newest first."
    );
    op(HttpMethod::Get, "/ops/v1/jobs", Role::Viewer, "opsListJobs", "Scheduled jobs", &description)
        .listing_response::<JobStatus>("The jobs.", json!({ "items": [sample_job()], "next_cursor": null }))
}

fn job_runs() -> Op {
    let description = "Newest first, with cursor pagination; the items are as in `last_runs`.";
    let op = op(HttpMethod::Get, "/ops/v1/jobs/{name}/runs", Role::Viewer, "opsJobRuns", "A job's runs", description);
    let op = job_name_param(op)
        .query::<jobs_http::PageQuery>()
        .listing_response::<JobRun>("A page of runs.", json!({ "items": [sample_run()], "next_cursor": "djE6ODEy" }));
    let [limit, cursor] = bad_page();
    bad_input(op, &[limit, cursor, unknown_parameter::<jobs_http::PageQuery>()])
        .error("No job with this name is registered here.", &[unknown_job()])
}

/// A change to a job's schedule (pause, resume): no body, answers the job.
fn change_job(path: &'static str, operation_id: &str, summary: &str, description: &str) -> Op {
    let op = op(HttpMethod::Post, path, Role::Operator, operation_id, summary, description);
    job_name_param(op)
        .json_response::<JobStatus>(200, "The job as it stands now.", sample_job(), &[])
        .error("No job with this name is registered here.", &[unknown_job()])
}

fn pause_job() -> Op {
    let description = "No body. No scheduled tick is claimed once the pause commits (a run in progress finishes; \
                       a run by hand still runs). Pausing a paused job is allowed. Audited as `job.pause`.";
    change_job("/ops/v1/jobs/{name}/pause", "opsPauseJob", "Pause a job", description)
}

fn resume_job() -> Op {
    let description = "No body. The job runs again from its next tick. Audited as `job.resume`.";
    change_job("/ops/v1/jobs/{name}/resume", "opsResumeJob", "Resume a job", description)
}

fn schedule_job() -> Op {
    let description = format!(
        "`interval_secs` from {MIN_INTERVAL_SECS} to {MAX_INTERVAL_SECS}, or null for the interval in code. \
         Schedulers re-read intervals every 30 s; ticks are aligned to the epoch. A pause stays as it was. \
         Audited as `job.schedule`."
    );
    let op = op(
        HttpMethod::Put,
        "/ops/v1/jobs/{name}/schedule",
        Role::Operator,
        "opsScheduleJob",
        "Re-time a job",
        &description,
    );
    let mut retimed = sample_job();
    retimed["override_interval_secs"] = json!(60);
    retimed["interval_secs"] = json!(60);
    let op = job_name_param(op)
        .json_body::<jobs_http::ScheduleBody>("The interval, or null for the default.", json!({ "interval_secs": 60 }))
        .json_response::<JobStatus>(200, "The job as it stands now.", retimed, &[]);
    let reason = format!("must be {MIN_INTERVAL_SECS} to {MAX_INTERVAL_SECS} seconds, or null for the default");
    bad_input(
        op,
        &[
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<jobs_http::ScheduleBody>("{}"),
            ApiError::validation("interval_secs", reason),
        ],
    )
    .error("No job with this name is registered here.", &[unknown_job()])
    .error(
        "The body is over 1 MiB.",
        &[ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 1048576 bytes")],
    )
}

fn run_job() -> Op {
    let description = "No body. Runs the job now, in the serving process, in the background, as a singleton (if it \
                       is running elsewhere the run is recorded as `skipped`), even while it is paused. The run is \
                       claimed, and audited as `job.run`, before the answer; watch it in the job's runs.";
    let op = op(HttpMethod::Post, "/ops/v1/jobs/{name}/run", Role::Operator, "opsRunJob", "Run a job now", description);
    let location = header("The job's runs listing, `/ops/v1/jobs/{name}/runs`.");
    job_name_param(op)
        .json_response::<RunStarted>(
            202,
            "Claimed and started.",
            json!({ "job": "reconcile", "run_id": 815, "runs": "/ops/v1/jobs/reconcile/runs" }),
            &[("location", location)],
        )
        .error("No job with this name is registered here.", &[unknown_job()])
}

fn divergences() -> Op {
    let description = "What the reconciler found: each divergent bucket, when, the counts in Postgres and in the \
                       cache, and whether the rebuild healed it. Newest first, with cursor pagination.";
    let op = op(
        HttpMethod::Get,
        "/ops/v1/divergences",
        Role::Viewer,
        "opsListDivergences",
        "Cache divergences",
        description,
    )
    .query::<jobs_http::DivergenceQuery>()
    .listing_response::<Divergence>(
        "A page of divergences.",
        json!({
            "items": [{
                "id": 41, "at": "2026-11-27T16:02:30Z", "product_id": "steam-eu", "denomination_minor": 2500,
                "postgres_active": 10, "cache_active": 7, "healed": true
            }],
            "next_cursor": null
        }),
    );
    let [limit, cursor] = bad_page();
    bad_input(op, &[limit, cursor, unknown_parameter::<jobs_http::DivergenceQuery>()])
}

/// Every operator operation, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    debug_assert_eq!(DEFAULT_LIMIT, 50, "the page queries' documented default");
    vec![
        me(),
        audit(),
        list_operators(),
        create_operator(),
        revoke_operator(),
        list_stock(),
        set_stock_threshold(),
        list_jobs(),
        job_runs(),
        pause_job(),
        resume_job(),
        schedule_job(),
        run_job(),
        divergences(),
    ]
    .into_iter()
    .chain(imports::operations())
    .chain(clients::operations())
    .chain(cards::operations())
    .chain(webhooks::operations())
    .chain(events::operations())
    .chain(funding::operations())
    .collect()
}
