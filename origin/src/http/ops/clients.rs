//! `/ops/v1/clients` and `/ops/v1/keys`: clients, their keys, suspension, rate limits,
//! issuing, revoking and rotating keys. A key's secret appears only in the response that
//! creates it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;

use super::operators::parse_uuid;
use super::{JsonBody, OpsCaller, QueryOf, listing};
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::clients::{self, ClientFilter, RotationEnd};
use crate::ops::page::DEFAULT_LIMIT;
use allot_shared::ApiError;

/// `GET /ops/v1/clients`'s query; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// Only clients in this status.
    #[param(value_type = Option<crate::ops::clients::ClientStatus>, inline)]
    status: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<u32>,
}

/// Clients in id order, a page at a time.
pub async fn list(State(st): State<AppState>, QueryOf(q): QueryOf<ClientQuery>) -> Result<Response, AppError> {
    let after = q.cursor.as_deref().map(clients::parse_client_cursor).transpose()?;
    let filter = ClientFilter { status: q.status, after, limit: q.limit.unwrap_or(DEFAULT_LIMIT) };
    let (rows, next) = clients::list_clients(&st.db.primary, &filter).await?;
    Ok(listing(rows, next))
}

/// One client and its keys.
pub async fn show(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    Ok(Json(clients::show_client(&st.db.primary, id).await?).into_response())
}

/// `POST /ops/v1/clients`: a new client.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// Display name, 1-200 characters (trimmed).
    #[schema(min_length = 1, max_length = 200)]
    name: String,
}

/// Create a client in this origin's region.
pub async fn create(
    State(st): State<AppState>,
    caller: OpsCaller,
    JsonBody(body): JsonBody<NewClient>,
) -> Result<Response, AppError> {
    let pool = &st.db.primary;
    let id = clients::create_client(pool, &caller.actor, &body.name, &st.config.region, None).await?;
    Ok((StatusCode::CREATED, Json(clients::show_client(pool, id).await?)).into_response())
}

/// Suspend a client: its keys get `403` (within the key cache's TTL).
pub async fn suspend(st: State<AppState>, caller: OpsCaller, id: Path<String>) -> Result<Response, AppError> {
    set_active(st, caller, id, false).await
}

/// Resume a suspended client.
pub async fn resume(st: State<AppState>, caller: OpsCaller, id: Path<String>) -> Result<Response, AppError> {
    set_active(st, caller, id, true).await
}

async fn set_active(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
    active: bool,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let changed = clients::set_client_active(&st.db.primary, &caller.actor, id, active).await?;
    let status = if active { "active" } else { "suspended" };
    Ok(Json(serde_json::json!({ "id": id, "status": status, "changed": changed })).into_response())
}

/// A field that must be present, though it may be `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `PUT /ops/v1/clients/{id}/rate-limit`: the new limit.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RateLimitChange)]
pub struct RateLimitBody {
    /// Requests per minute, at least 1; null for the configured default
    /// (`ALLOT_CLIENT_RATE_LIMIT_PER_MINUTE`). The field is required.
    #[schema(value_type = Option<u32>, required = true, minimum = 1, maximum = 2_147_483_647)]
    #[serde(default, deserialize_with = "present")]
    per_minute: Option<Option<u32>>,
}

/// Set or clear a client's requests-per-minute limit.
pub async fn rate_limit(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RateLimitBody>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let Some(per_minute) = body.per_minute else {
        return Err(ApiError::validation("per_minute", "is required (a number, or null for the default)").into());
    };
    clients::set_client_rate_limit(&st.db.primary, &caller.actor, id, per_minute).await?;
    Ok(Json(serde_json::json!({ "id": id, "rate_limit_per_minute": per_minute })).into_response())
}

/// `POST /ops/v1/clients/{id}/keys`: the new key's label (`{}` for none).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// At most 200 characters.
    #[schema(max_length = 200)]
    label: Option<String>,
}

/// Issue a key; its secret is in this response only.
pub async fn issue_key(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let key = clients::issue_key(&st.db.primary, &caller.actor, id, body.label.as_deref()).await?;
    let doc = serde_json::json!({ "client_id": id, "key_id": key.key_id(), "label": body.label, "key": key.expose() });
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

/// Revoke a key (effective within the key cache's TTL).
pub async fn revoke_key(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(key_id): Path<String>,
) -> Result<Response, AppError> {
    clients::revoke_key(&st.db.primary, &caller.actor, &key_id).await?;
    Ok(Json(serde_json::json!({ "key_id": key_id, "revoked": true })).into_response())
}

/// `POST /ops/v1/keys/{key_id}/rotate`: when the old key stops, exactly one of the two.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KeyRotation)]
pub struct RotateBody {
    /// Seconds from now, 0 to 2,592,000 (30 days).
    #[schema(minimum = 0, maximum = 2_592_000)]
    overlap_secs: Option<u64>,
    /// A time from now to 30 days ahead (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
}

/// Rotate a key: the new key is live at once, the old one works until the chosen time.
pub async fn rotate_key(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(key_id): Path<String>,
    JsonBody(body): JsonBody<RotateBody>,
) -> Result<Response, AppError> {
    let end = match (body.overlap_secs, body.until) {
        (Some(s), None) => RotationEnd::OverlapSecs(s),
        (None, Some(t)) => RotationEnd::Until(t),
        _ => return Err(ApiError::validation("body", "give exactly one of overlap_secs and until").into()),
    };
    let r = clients::rotate_key(&st.db.primary, &caller.actor, &key_id, end).await?;
    let doc = serde_json::json!({
        "client_id": r.client_id,
        "key_id": r.key.key_id(),
        "label": r.label,
        "key": r.key.expose(),
        "old_key": { "key_id": r.old_key_id, "expires_at": crate::allocation::format_time(r.old_expires_at) },
    });
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}
