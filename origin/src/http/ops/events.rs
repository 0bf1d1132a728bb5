//! `GET /ops/v1/events`: events from Postgres in the relay's order, for consumers catching up.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::QueryOf;
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::events;

/// `GET /ops/v1/events`'s query; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The id of the last event processed: the events after it, in order. Absent or 0: from the
    /// oldest event kept.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Events per page, 1-1000 (100 when absent).
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
}

/// A page of events after `after`.
pub async fn list(State(st): State<AppState>, QueryOf(q): QueryOf<EventsQuery>) -> Result<Response, AppError> {
    let page = events::list(&st.db.primary, q.after, q.limit, st.config.events_retention).await?;
    Ok(Json(page).into_response())
}
