//! The operator API (`/ops/v1/…`, tag `operators`): one function per operation, listed in
//! [`operations`]. Every row of `http::ops::ROUTES` needs an entry here with the same least role,
//! and nothing else under `/ops/v1` may be documented (the `openapi` tests check both).
//!
//! To add an operation: write its request and response schemas (a struct deriving `ToSchema`
//! that serialises exactly as the handler's answer, or `IntoParams` for a query), write a
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

pub mod cards;
pub mod clients;
pub mod imports;

use std::sync::Arc;

use allot_shared::{ApiError, Denomination, ErrorCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{HttpMethod, RefOr, Server};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use uuid::Uuid;

use super::build::{Op, formatted_string, header, string};
use super::{
    LEAST_ROLE_EXTENSION, OPERATOR_TOKEN_SCHEME, RESPONSE_OPS_FORBIDDEN, RESPONSE_OPS_UNAUTHORIZED, TAG_OPERATORS,
};
use crate::jobs::{self, Job};
use crate::ops::jobs::{self as job_ops, MAX_INTERVAL_SECS, MIN_INTERVAL_SECS, RECENT_RUNS};
use crate::ops::operators::{DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS, Role};
use crate::ops::page::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::ops::stock::{self, MAX_THRESHOLD};

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

/// A role name (`viewer` < `operator` < `admin`); its values are [`Role::ALL`].
pub struct RoleName;

impl PartialSchema for RoleName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Role::ALL.map(Role::as_str)))
            .description(Some("viewer reads; operator also imports, voids and runs jobs; admin also manages clients, keys and operators"))
            .into()
    }
}

impl ToSchema for RoleName {
    fn name() -> std::borrow::Cow<'static, str> {
        "Role".into()
    }
}

/// `GET /ops/v1/me`: who the token belongs to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Me {
    /// The operator's id (the actor in the audit trail).
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Role.
    #[schema(schema_with = role_schema)]
    pub role: String,
}

fn role_schema() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Role"))
}

/// An operator as listed (never the token).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorEntry {
    /// Operator id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Role.
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// The public part of the token (`allotop_<token id>_…`).
    pub token_id: String,
    /// Created.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the token stops working.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// When the token was revoked; null while live.
    #[schema(format = DateTime, required = true)]
    pub revoked_at: Option<String>,
    /// Last authenticated request (written at most once a minute); null if never used.
    #[schema(format = DateTime, required = true)]
    pub last_used_at: Option<String>,
}

/// `POST /ops/v1/operators`: a new operator.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// Display name, 1-200 characters (trimmed).
    #[schema(min_length = 1, max_length = 200, example = "Ana (on call)")]
    pub name: String,
    /// Role.
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// Days until the token expires: 1-366, 90 when absent.
    #[schema(minimum = 1, maximum = 366, default = 90)]
    pub valid_days: Option<u32>,
}

/// `201` of `POST /ops/v1/operators`: the token, shown in this response only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatedOperator {
    /// Operator id.
    pub id: Uuid,
    /// Display name, trimmed.
    pub name: String,
    /// Role.
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// The bearer token, `allotop_…`: shown once, stored only as a digest.
    pub token: String,
}

/// `POST /ops/v1/operators/{id}/revoke`: done.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokedOperator {
    /// Operator id.
    pub id: Uuid,
    /// Always true.
    pub revoked: bool,
}

/// One audit row.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Row id; the listing is newest first by id.
    pub id: i64,
    /// When.
    #[schema(format = DateTime)]
    pub at: String,
    /// Who: an operator id, or `cli:<os user>`.
    pub actor: String,
    /// What, as `<noun>.<verb>` (`operator.create`).
    pub action: String,
    /// To what (an id).
    pub target: String,
    /// A summary of the change (never a secret).
    pub change: Value,
    /// The request it came with; null from the CLI.
    #[schema(required = true)]
    pub request_id: Option<String>,
}

/// `GET /ops/v1/audit`'s query: every filter narrows; unknown parameters are refused.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Exactly this actor: an operator id, or `cli:<os user>`.
    pub actor: Option<String>,
    /// This action, or every action under a prefix ending in `.` (`operator.`).
    pub action: Option<String>,
    /// Exactly this target.
    pub target: Option<String>,
    /// At or after (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Before (RFC 3339).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
}

/// A bucket's stock state: `out` (no active card), `low` (at or below its threshold), `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StockState {
    /// More active cards than the threshold.
    Ok,
    /// At or below the threshold, and not empty.
    Low,
    /// No active card.
    Out,
}

/// Where a bucket's low-stock threshold comes from: its own, or `ALLOT_STOCK_LOW_THRESHOLD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdSource {
    /// The bucket's own `low_stock_threshold`.
    Bucket,
    /// `ALLOT_STOCK_LOW_THRESHOLD`.
    Default,
}

/// One bucket's stock (a product at one denomination), as listed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockBucket {
    /// Product id.
    pub product_id: String,
    /// ISO 4217 currency of the product.
    pub currency: String,
    /// The denomination as on the wire (`"25.00"`).
    pub denomination: String,
    /// The denomination in minor units.
    pub denomination_minor: i64,
    /// Active cards in Postgres (the truth).
    pub active: i64,
    /// Members of the bucket in the cache; null when the product's set is missing or Valkey did
    /// not answer.
    #[schema(required = true)]
    pub cached: Option<i64>,
    /// Cards allocated in the last hour.
    pub allocated_1h: i64,
    /// Cards allocated in the last 24 hours.
    pub allocated_24h: i64,
    /// Cards allocated per hour, averaged over 24 hours (`allocated_24h / 24`).
    pub rate_per_hour: f64,
    /// Days until the active cards run out at the last day's rate; null when nothing was
    /// allocated in 24 hours.
    #[schema(required = true)]
    pub days_of_cover: Option<f64>,
    /// The low-stock threshold in effect, in cards.
    pub low_stock_threshold: i64,
    /// Whether the threshold is the bucket's own or the default.
    pub threshold_source: ThresholdSource,
    /// The state now, from `active` and the threshold.
    pub state: StockState,
    /// The state `stock-watch` last published (catches up within one tick).
    pub published_state: StockState,
    /// Since when the published state holds.
    #[schema(format = DateTime)]
    pub published_state_at: String,
}

/// `GET /ops/v1/stock`'s query: every filter narrows; unknown parameters are refused.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StockQuery {
    /// Exactly this product.
    pub product_id: Option<String>,
    /// Only buckets in this state now.
    #[param(inline)]
    pub state: Option<StockState>,
}

/// `PUT /ops/v1/stock/{product_id}/{denomination}/threshold`: the new threshold.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdChange {
    /// Cards, 0-100,000,000 (0: never `low`, only `ok` or `out`); null for the default. The field
    /// is required.
    #[schema(required = true, minimum = 0, maximum = 100_000_000)]
    #[serde(deserialize_with = "crate::http::ops::jobs::nullable")]
    pub low_stock_threshold: Option<i64>,
}

/// How a job run ended (`running` until it does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Claimed and not finished (or its process exited first).
    Running,
    /// Ran and succeeded.
    Succeeded,
    /// Ran and failed; `error` says why.
    Failed,
    /// Not run: the job was running elsewhere.
    Skipped,
}

/// One run of a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRun {
    /// Run id; the runs listing is newest first by id.
    pub id: i64,
    /// The process that ran it (`host:pid`).
    pub instance: String,
    /// The tick it ran for; null for a run by hand.
    #[schema(format = DateTime, required = true)]
    pub slot: Option<String>,
    /// Started.
    #[schema(format = DateTime)]
    pub started_at: String,
    /// Finished; null while running.
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// What the run reported (per job: `deleted`, `transitions`, `duration_ms`, …).
    pub counts: Value,
    /// Why it failed or was skipped; null otherwise.
    #[schema(required = true)]
    pub error: Option<String>,
}

/// One registered job: its schedule, pause and latest runs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobEntry {
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
    #[schema(format = DateTime, required = true)]
    pub updated_at: Option<String>,
    /// Who changed it last (an operator id, or `cli:<os user>`); null if never.
    #[schema(required = true)]
    pub updated_by: Option<String>,
    /// The latest runs (at most 5), newest first.
    pub last_runs: Vec<JobRun>,
}

/// A page of a listing: cursor and limit only; unknown parameters are refused.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
}

/// `PUT /ops/v1/jobs/{name}/schedule`: the new interval.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSchedule {
    /// Seconds, 5-604,800 (7 days); null for the interval in code. The field is required.
    #[schema(required = true, minimum = 5, maximum = 604_800)]
    #[serde(deserialize_with = "crate::http::ops::jobs::nullable")]
    pub interval_secs: Option<i64>,
}

/// `202` of `POST /ops/v1/jobs/{name}/run`: the run claimed, and where to watch it.
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

/// One divergence the reconciler found between Postgres and the cache.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Divergence {
    /// Row id; the listing is newest first by id.
    pub id: i64,
    /// When it was found.
    #[schema(format = DateTime)]
    pub at: String,
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

/// `GET /ops/v1/divergences`'s query; unknown parameters are refused.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DivergenceQuery {
    /// Exactly this product.
    pub product_id: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
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
            .query::<AuditQuery>()
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
        .listing_response::<OperatorEntry>("The operators.", example)
}

fn create_operator() -> Op {
    let description = format!(
        "The token is in this response only. It expires after `valid_days` ({DEFAULT_TOKEN_DAYS} by default, \
         at most {MAX_TOKEN_DAYS}). Audited as `operator.create`."
    );
    let op =
        op(HttpMethod::Post, "/ops/v1/operators", Role::Admin, "opsCreateOperator", "Create an operator", &description)
            .json_body::<NewOperator>(
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
    ];
    job_ops::find(&every, "nope").err().expect("no job is called nope").to_api_error()
}

fn job_name_param(op: Op) -> Op {
    let description = "The job's name: `inventory-pump`, `reconcile` (both with the inventory cache and a Valkey), \
                       `idempotency-expiry`, `job-history-prune`, `audit-prune`, `stock-watch` (housekeeping).";
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
        .query::<StockQuery>()
        .listing_response::<StockBucket>("The buckets.", json!({ "items": [sample_bucket()], "next_cursor": null }));
    let bad_state = stock::StockState::parse("full").expect_err("full is not a state");
    bad_input(op, &[bad_state, unknown_parameter::<StockQuery>()])
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
    .json_body::<ThresholdChange>("The threshold, or null for the default.", json!({ "low_stock_threshold": 50 }))
    .json_response::<StockBucket>(200, "The bucket.", sample_bucket_with_threshold(), &[]);
    let malformed = Denomination::parse("abc").expect_err("abc is not a denomination");
    let too_precise = Denomination::parse("25.001").and_then(|d| d.to_minor(2)).expect_err("EUR has 2 places");
    bad_input(
        op,
        &[
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<ThresholdChange>("{}"),
            bad_body::<ThresholdChange>(r#"{"low_stock_threshold": "ten"}"#),
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
        .listing_response::<JobEntry>("The jobs.", json!({ "items": [sample_job()], "next_cursor": null }))
}

fn job_runs() -> Op {
    let description = "Newest first, with cursor pagination; the items are as in `last_runs`.";
    let op = op(HttpMethod::Get, "/ops/v1/jobs/{name}/runs", Role::Viewer, "opsJobRuns", "A job's runs", description);
    let op = job_name_param(op)
        .query::<PageQuery>()
        .listing_response::<JobRun>("A page of runs.", json!({ "items": [sample_run()], "next_cursor": "djE6ODEy" }));
    let [limit, cursor] = bad_page();
    bad_input(op, &[limit, cursor, unknown_parameter::<PageQuery>()])
        .error("No job with this name is registered here.", &[unknown_job()])
}

/// A change to a job's schedule (pause, resume): no body, answers the job.
fn change_job(path: &'static str, operation_id: &str, summary: &str, description: &str) -> Op {
    let op = op(HttpMethod::Post, path, Role::Operator, operation_id, summary, description);
    job_name_param(op)
        .json_response::<JobEntry>(200, "The job as it stands now.", sample_job(), &[])
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
        .json_body::<JobSchedule>("The interval, or null for the default.", json!({ "interval_secs": 60 }))
        .json_response::<JobEntry>(200, "The job as it stands now.", retimed, &[]);
    let reason = format!("must be {MIN_INTERVAL_SECS} to {MAX_INTERVAL_SECS} seconds, or null for the default");
    bad_input(
        op,
        &[
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<JobSchedule>("{}"),
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
    .query::<DivergenceQuery>()
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
    bad_input(op, &[limit, cursor, unknown_parameter::<DivergenceQuery>()])
}

/// Every operator operation, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    debug_assert_eq!(DEFAULT_LIMIT, 50, "the page queries' documented default");
    debug_assert_eq!(
        serde_json::to_value(stock::StockState::ALL).ok(),
        serde_json::to_value([StockState::Ok, StockState::Low, StockState::Out]).ok(),
        "the documented stock states are the service's"
    );
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
    .collect()
}
