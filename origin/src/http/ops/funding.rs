//! `/ops/v1/clients/{id}/funding` and `/ops/v1/clients/{id}/discounts`: a client's accounts,
//! opening and changing them, top-ups, adjustments, CSV statements, and discounts.

use allot_shared::headers::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use allot_shared::request_headers;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;

use super::operators::parse_uuid;
use super::{JsonBody, OpsCaller, QueryOf};
use crate::error::AppError;
use crate::http::AppState;
use crate::http::gate::joined;
use crate::ops::funding::{self, AccountChange, Entry, Period, Receipt, parse_currency};

/// A field that may be absent (unchanged) or `null` (cleared).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A client's accounts (by currency) and discounts (by product).
pub async fn show(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    Ok(Json(funding::show(&st.db.primary, id).await?).into_response())
}

/// `PUT /ops/v1/clients/{id}/funding/{currency}`: what to set; an absent field stays as it is.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FundingAccountChange)]
pub struct AccountBody {
    /// How far below zero the balance may go, a decimal string ≥ 0 in the currency's exponent
    /// (`"500.00"`). A new account starts at `"0"`. A limit below what the client already owes
    /// is refused.
    #[schema(example = "500.00")]
    credit_limit: Option<String>,
    /// The low-balance threshold (a decimal string, may be negative), or null for none. A new
    /// account starts with none.
    #[schema(value_type = Option<String>, example = "100.00")]
    #[serde(default, deserialize_with = "present")]
    low_balance: Option<Option<String>>,
    /// Whether voiding an allocated card credits its price back. A new account starts with true.
    credit_voids: Option<bool>,
}

/// Open a client's account in a currency (`201`), or change its settings (`200`).
pub async fn set_account(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path((id, currency)): Path<(String, String)>,
    JsonBody(body): JsonBody<AccountBody>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let currency = parse_currency(&currency)?;
    let change = AccountChange {
        credit_limit: body.credit_limit,
        low_balance: body.low_balance,
        credit_voids: body.credit_voids,
    };
    let (account, opened) = funding::set_account(&st.db.primary, &caller.actor, id, currency, &change).await?;
    let status = if opened { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(account)).into_response())
}

/// `POST …/deposits` and `…/adjustments`: an amount and a memo.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FundingEntryBody)]
pub struct EntryBody {
    /// A decimal string in the currency's exponent: positive for a deposit; signed and not zero
    /// for an adjustment (negative debits the client).
    #[schema(example = "250.00")]
    amount: String,
    /// One line, at most 500 characters: optional on a deposit (a payment reference, say),
    /// required on an adjustment.
    #[schema(max_length = 500, example = "wire 2026-11-27 ref 8812")]
    memo: Option<String>,
}

/// Top up a client's account: one `deposit` ledger entry and the balance, in one transaction.
pub async fn deposit(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path((id, currency)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EntryBody>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let currency = parse_currency(&currency)?;
    let key = idempotency_key(&headers)?;
    let entry = Entry { amount: &body.amount, memo: body.memo.as_deref(), idempotency_key: key.as_deref() };
    Ok(created(funding::deposit(&st.db.primary, &caller.actor, id, currency, &entry).await?))
}

/// Adjust a client's balance by a signed amount, with a memo.
pub async fn adjust(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path((id, currency)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EntryBody>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let currency = parse_currency(&currency)?;
    let key = idempotency_key(&headers)?;
    let entry = Entry { amount: &body.amount, memo: body.memo.as_deref(), idempotency_key: key.as_deref() };
    Ok(created(funding::adjust(&st.db.primary, &caller.actor, id, currency, &entry).await?))
}

/// The optional `Idempotency-Key` of a posting: `400` when malformed or sent more than once.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(key) = joined(headers, IDEMPOTENCY_KEY) else { return Ok(None) };
    Ok(Some(request_headers::idempotency_key(Some(&key))?.to_owned()))
}

/// `201` with the entry; a repeat of an earlier request says so in `Idempotent-Replayed: true`.
fn created(receipt: Receipt) -> Response {
    let mut resp = (StatusCode::CREATED, Json(receipt.posted)).into_response();
    if receipt.replayed {
        resp.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// `GET …/statement.csv`'s query; unknown parameters are refused.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// Entries created at or after (RFC 3339); absent: from the first.
    #[serde(default, with = "time::serde::rfc3339::option")]
    from: Option<OffsetDateTime>,
    /// Entries created before (RFC 3339); absent: up to now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    to: Option<OffsetDateTime>,
}

/// A client's ledger entries in one currency and period, as CSV with a running balance,
/// streamed.
pub async fn statement(
    State(st): State<AppState>,
    Path((id, currency)): Path<(String, String)>,
    QueryOf(q): QueryOf<StatementQuery>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let currency = parse_currency(&currency)?;
    let statement = funding::statement(&st.db.primary, id, currency, Period { from: q.from, to: q.to }).await?;
    Ok(csv_response(statement))
}

/// A statement as a `text/csv` download. A failure after the first byte cuts the transfer
/// short (logged), so a partial file never looks complete.
pub fn csv_response(statement: funding::Statement) -> Response {
    let body = statement.lines.map(|chunk| {
        chunk.map_err(|e| {
            tracing::error!(error = %e, "statement stream failed; the transfer is cut short");
            std::io::Error::other(e.to_string())
        })
    });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    let disposition = format!("attachment; filename=\"{}\"", statement.file_name);
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// `PUT /ops/v1/clients/{id}/discounts/{product_id}`: the discount.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DiscountBody)]
pub struct DiscountBody {
    /// Basis points off the face value, 0 to 10000 (250 = 2.5 %).
    #[schema(minimum = 0, maximum = 10000, example = 250)]
    discount_bps: i64,
}

/// Set a client's discount on a product.
pub async fn set_discount(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path((id, product)): Path<(String, String)>,
    JsonBody(body): JsonBody<DiscountBody>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let discount = funding::set_discount(&st.db.primary, &caller.actor, id, &product, body.discount_bps).await?;
    Ok(Json(discount).into_response())
}

/// Clear a client's discount on a product: it pays face value.
pub async fn clear_discount(
    State(st): State<AppState>,
    caller: OpsCaller,
    Path((id, product)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    let previous = funding::clear_discount(&st.db.primary, &caller.actor, id, &product).await?;
    let doc = serde_json::json!({
        "client_id": id, "product_id": product, "cleared": previous.is_some(), "previous_bps": previous,
    });
    Ok(Json(doc).into_response())
}
