//! `/ops/v1/me`, `/ops/v1/operators` and `/ops/v1/audit`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::{JsonBody, OpsCaller, QueryOf, listing};
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::audit::{self, AuditFilter};
use crate::ops::operators::{self, DEFAULT_TOKEN_DAYS, Role};
use crate::ops::page::Page;

/// Who the token belongs to.
pub async fn me(caller: OpsCaller) -> Response {
    let op = caller.operator;
    Json(serde_json::json!({ "id": op.id, "name": op.name, "role": op.role })).into_response()
}

/// Every operator (never a token).
pub async fn list(State(st): State<AppState>) -> Result<Response, AppError> {
    Ok(listing(operators::list(&st.db.primary).await?, None))
}

/// `POST /ops/v1/operators`: a new operator.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// Display name, 1-200 characters (trimmed).
    #[schema(min_length = 1, max_length = 200, example = "Ana (on call)")]
    name: String,
    /// Role.
    #[schema(value_type = Role)]
    role: String,
    /// Days until the token expires: 1-366, 90 when absent.
    #[schema(minimum = 1, maximum = 366, default = 90)]
    valid_days: Option<u32>,
}

/// Create an operator; the token is in this response only.
pub async fn create(
    State(st): State<AppState>,
    caller: OpsCaller,
    JsonBody(body): JsonBody<NewOperator>,
) -> Result<Response, AppError> {
    let role = Role::parse(&body.role)?;
    let days = body.valid_days.unwrap_or(DEFAULT_TOKEN_DAYS);
    let (id, token) = operators::create(&st.db.primary, &caller.actor, &body.name, role, days).await?;
    let doc = serde_json::json!({ "id": id, "name": body.name.trim(), "role": role, "token": token.expose() });
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

/// Revoke an operator's token.
pub async fn revoke(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    operators::revoke(&st.db.primary, &caller.actor, id).await?;
    Ok(Json(serde_json::json!({ "id": id, "revoked": true })).into_response())
}

/// `GET /ops/v1/audit`'s query: every filter narrows; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Exactly this actor: an operator id, or `cli:<os user>`.
    actor: Option<String>,
    /// This action, or every action under a prefix ending in `.` (`operator.`).
    action: Option<String>,
    /// Exactly this target.
    target: Option<String>,
    /// At or after (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<time::OffsetDateTime>,
    /// Before (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<time::OffsetDateTime>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<u32>,
}

/// The audit trail, newest first.
pub async fn audit(State(st): State<AppState>, QueryOf(q): QueryOf<AuditQuery>) -> Result<Response, AppError> {
    let page = Page::parse(q.cursor.as_deref(), q.limit)?;
    let filter = AuditFilter { actor: q.actor, action: q.action, target: q.target, since: q.since, until: q.until };
    let (rows, next) = audit::list(&st.db.primary, &filter, page).await?;
    Ok(listing(rows, next))
}

/// A UUID from a path or query value, or `400 VALIDATION_FAILED` naming the field.
pub fn parse_uuid(field: &str, value: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(value).map_err(|_| allot_shared::ApiError::validation(field, "must be a UUID").into())
}
