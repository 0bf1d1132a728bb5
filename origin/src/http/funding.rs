//! `GET /v1/balance` and `GET /v1/ledger`: the calling client's funding, read only.

use allot_shared::funding::LedgerKind;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::AppState;
use super::ops::QueryOf;
use crate::allocation::Caller;
use crate::error::AppError;
use crate::funding::callers;
use crate::funding::ledger_listing::{self, Ledger, LedgerQuery};

/// The caller's funding accounts, one per currency, from the primary (see [`callers`]).
pub async fn balance(State(st): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Response, AppError> {
    let body = callers::balances(&st.db.primary, caller.client_id).await?;
    Ok(Json(body).into_response())
}

/// `GET /v1/ledger`'s query. Unknown parameters are refused (`400`), so a misspelt filter never
/// silently lists everything.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerParams {
    /// The `next_cursor` of the previous page; send the same filters with it.
    cursor: Option<String>,
    /// Entries per page, 1-100 (20 when absent).
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<u32>,
    /// Only entries in this currency (an active ISO 4217 code).
    #[param(pattern = "^[A-Z]{3}$", example = "EUR")]
    currency: Option<String>,
    /// Only entries of this kind.
    #[param(inline, value_type = Option<LedgerKind>, example = "allocation")]
    kind: Option<String>,
    /// Only entries created strictly after this time (RFC 3339; encode `+` as `%2B`).
    #[param(format = DateTime, example = "2026-11-27T00:00:00Z")]
    created_after: Option<String>,
    /// Only entries created strictly before this time (RFC 3339; encode `+` as `%2B`).
    #[param(format = DateTime, example = "2026-11-28T00:00:00Z")]
    created_before: Option<String>,
}

impl From<LedgerParams> for LedgerQuery {
    fn from(q: LedgerParams) -> Self {
        LedgerQuery {
            cursor: q.cursor,
            limit: q.limit,
            currency: q.currency,
            kind: q.kind,
            created_after: q.created_after,
            created_before: q.created_before,
        }
    }
}

/// The caller's ledger entries, newest first, a page at a time; from the replica while it serves.
pub async fn ledger(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    QueryOf(query): QueryOf<LedgerParams>,
) -> Result<Response, AppError> {
    let ledger = Ledger::parse(caller.client_id, &query.into())?;
    let ledger = &ledger;
    let page = st.db.read(|pool| async move { ledger_listing::read(&pool, ledger).await }).await?;
    Ok(Json(page).into_response())
}
