//! `/ops/v1/clients/{id}/webhooks` and `/ops/v1/webhooks`: clients' webhook endpoints (the
//! secret is in the response that makes it only), their delivery logs, redelivery by hand and
//! test events.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::operators::parse_uuid;
use super::{JsonBody, OpsCaller, QueryOf, listing};
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::page::Page;
use crate::webhooks::{deliveries, endpoints};

/// `POST /ops/v1/clients/{id}/webhooks`: where to deliver and what.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// An `https` URL (plain `http` only with `ALLOT_WEBHOOK_ALLOW_PRIVATE`) whose host
    /// resolves to public addresses only; at most 2000 characters.
    #[schema(max_length = 2000, example = "https://hooks.example.com/allot")]
    url: String,
    /// 1-16 of `allocation.created`, `card.voided`, `stock.low`, `stock.out`.
    #[schema(min_items = 1, max_items = 16)]
    topics: Vec<String>,
}

/// Add an endpoint; its secret is in this response only.
pub async fn create(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewEndpoint>,
) -> Result<Response, AppError> {
    let client = parse_uuid("id", &id)?;
    let allow_private = st.config.webhooks.allow_private;
    let (endpoint, secret) = endpoints::create(
        &st.db.primary,
        &st.config.card_keys,
        &caller.actor,
        client,
        &body.url,
        &body.topics,
        allow_private,
    )
    .await?;
    let doc = serde_json::json!({ "endpoint": endpoint, "secret": secret.expose() });
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

/// A client's endpoints (never a secret).
pub async fn list(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let client = parse_uuid("id", &id)?;
    Ok(listing(endpoints::list(&st.db.primary, client).await?, None))
}

/// One endpoint.
pub async fn show(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    Ok(Json(endpoints::show(&st.db.primary, id).await?).into_response())
}

/// Disable an endpoint.
pub async fn disable(st: State<AppState>, caller: OpsCaller, id: Path<String>) -> Result<Response, AppError> {
    set_enabled(st, caller, id, false).await
}

/// Enable an endpoint (its retries start afresh).
pub async fn enable(st: State<AppState>, caller: OpsCaller, id: Path<String>) -> Result<Response, AppError> {
    set_enabled(st, caller, id, true).await
}

async fn set_enabled(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
    enabled: bool,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let changed = endpoints::set_enabled(&st.db.primary, &caller.actor, id, enabled).await?;
    let endpoint = endpoints::show(&st.db.primary, id).await?;
    Ok(Json(serde_json::json!({ "endpoint": endpoint, "changed": changed })).into_response())
}

/// Give an endpoint a new secret (in this response only); the old one signs beside it for
/// `ALLOT_WEBHOOK_SECRET_OVERLAP_HOURS`.
pub async fn rotate_secret(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let overlap = st.config.webhooks.secret_overlap;
    let (secret, until) =
        endpoints::rotate_secret(&st.db.primary, &st.config.card_keys, &caller.actor, id, overlap).await?;
    let doc = serde_json::json!({
        "endpoint_id": id,
        "secret": secret.expose(),
        "previous_secret_expires_at": crate::allocation::format_time(until),
    });
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

/// `GET /ops/v1/webhooks/{id}/deliveries`'s query; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only deliveries in this state: `pending`, `delivered` or `abandoned`.
    state: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Rows per page, 1-100 (50 when absent).
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<u32>,
}

/// The endpoint's deliveries, newest first, each with its attempts.
pub async fn list_deliveries(
    State(st): State<AppState>,
    Path(id): Path<String>,
    QueryOf(q): QueryOf<DeliveryQuery>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let page = Page::parse(q.cursor.as_deref(), q.limit)?;
    let (items, next) = deliveries::list(&st.db.primary, id, q.state.as_deref(), page).await?;
    Ok(listing(items, next))
}

/// Send a delivery again, at the end of the endpoint's queue.
pub async fn redeliver(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let delivery: i64 = delivery
        .parse()
        .map_err(|_| allot_shared::ApiError::validation("delivery_id", "must be a delivery's id (a whole number)"))?;
    let queued = deliveries::redeliver(&st.db.primary, &caller.actor, id, delivery).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "endpoint_id": id, "delivery_id": queued }))).into_response())
}

/// Queue a `webhook.test` event for the endpoint.
pub async fn send_test(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let queued = deliveries::send_test(&st.db.primary, &caller.actor, id).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "endpoint_id": id, "delivery_id": queued }))).into_response())
}
