//! The operator API (`/ops/v1/…`, tag `operators`): one function per operation, listed in
//! [`operations`]. Every row of `http::ops::ROUTES` needs an entry here with the same least role,
//! and nothing else under `/ops/v1` may be documented (the `openapi` tests check both).
//!
//! To add an operation: write its request and response schemas (a struct deriving `ToSchema`
//! that serialises exactly as the handler's answer, or `IntoParams` for a query), write a
//! function starting from [`op`] (which adds the tag, the operator-token security, the least
//! role and the `401`/`403` responses), add it to [`operations`], and regenerate
//! `docs/openapi.json` (`cargo run -p allot-origin --bin allot -- openapi > docs/openapi.json`).

use allot_shared::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{HttpMethod, RefOr, Server};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use uuid::Uuid;

use super::build::{Op, formatted_string};
use super::{
    LEAST_ROLE_EXTENSION, OPERATOR_TOKEN_SCHEME, RESPONSE_OPS_FORBIDDEN, RESPONSE_OPS_UNAUTHORIZED, TAG_OPERATORS,
};
use crate::ops::operators::{DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS, Role};
use crate::ops::page::{DEFAULT_LIMIT, MAX_LIMIT};

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

/// Every operator operation, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    debug_assert_eq!(DEFAULT_LIMIT, 50, "the audit query's documented default");
    vec![me(), audit(), list_operators(), create_operator(), revoke_operator()]
}
