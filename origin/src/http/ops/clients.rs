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

/// The client listing's query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuery {
    status: Option<String>,
    cursor: Option<String>,
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

/// A new client.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
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

/// A client's own rate limit: a number, or `null` for the configured default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
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

/// A new key's label.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
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

/// When the old key stops: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    overlap_secs: Option<u64>,
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
