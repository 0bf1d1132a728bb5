//! Funding on the Clients pages: each client's balances, a top-up form (operators), a form to
//! open an account or set its credit limit and threshold (admins), and statement downloads.

use allot_shared::ApiError;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use time::OffsetDateTime;
use time::macros::format_description;

use super::layout::{self, Tone};
use super::{Console, ConsoleError, FormOf};
use crate::error::AppError;
use crate::http::AppState;
use crate::http::ops::funding::csv_response;
use crate::http::ops::operators::parse_uuid;
use crate::ops::funding::{self, Account, AccountChange, Entry, Funding, Period, parse_currency};

/// A balance as a cell: the amount and currency, marked when low.
pub fn balance(a: &Account) -> Markup {
    html! {
        (a.balance) " " (a.currency)
        @if a.low { " " (layout::badge("low", Tone::Low)) }
    }
}

/// The Funding section of a client's page.
pub fn section(console: &Console, f: &Funding) -> Markup {
    let base = format!("/ops/clients/{}/funding", f.client_id);
    let may_deposit = console.may("POST", "/ops/clients/{id}/funding/{currency}/deposit");
    html! {
        h2 #funding { "Funding" }
        @if f.accounts.is_empty() {
            p { "No funding account: this client allocates without limit." }
        } @else {
            div.table-wrap { table #funding-accounts {
                thead { tr {
                    th scope="col" { "Currency" }
                    th.num scope="col" { "Balance" }
                    th.num scope="col" { "Credit limit" }
                    th.num scope="col" { "Available" }
                    th.num scope="col" { "Low at" }
                    th scope="col" { "Voids credited" }
                    th scope="col" { "Statement" }
                    @if may_deposit { th scope="col" { "Top up" } }
                } }
                tbody {
                    @for a in &f.accounts {
                        tr {
                            th scope="row" { (a.currency) }
                            td.num { (balance(a)) }
                            td.num { (a.credit_limit) }
                            td.num { (a.available) }
                            td.num { (a.low_balance.as_deref().unwrap_or("—")) }
                            td { (if a.credit_voids { "yes" } else { "no" }) }
                            td {
                                form.inline method="get" action={ (base) "/" (a.currency) "/statement.csv" } {
                                    label { span.hint { "from" } input type="date" name="from"; }
                                    label { span.hint { "to (before)" } input type="date" name="to"; }
                                    button.secondary type="submit" { "Download CSV" }
                                }
                            }
                            @if may_deposit {
                                td {
                                    form.inline method="post" action={ (base) "/" (a.currency) "/deposit" } {
                                        (layout::csrf(console))
                                        // One key per form shown: a second submit of it is answered, not posted.
                                        input type="hidden" name="idempotency_key" value=(uuid::Uuid::new_v4());
                                        label { span.hint { "amount" }
                                            input type="text" name="amount" required inputmode="decimal" size="10";
                                        }
                                        label { span.hint { "memo (optional)" }
                                            input type="text" name="memo" maxlength="500";
                                        }
                                        button type="submit" { "Top up" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
        @if !f.discounts.is_empty() {
            p { "Discounts: "
                @for (i, d) in f.discounts.iter().enumerate() {
                    @if i > 0 { ", " }
                    (d.product_id) " " (d.discount_bps) " bps"
                }
            }
        }
        @if console.may("POST", "/ops/clients/{id}/funding") {
            section.card aria-labelledby="set-funding" {
                h2 #set-funding { "Open an account or change one" }
                form.row method="post" action=(base) {
                    (layout::csrf(console))
                    label { "Currency" input type="text" name="currency" required maxlength="3" size="4" placeholder="EUR"; }
                    label { "Credit limit" span.hint { "empty: unchanged (0 for a new account)" }
                        input type="text" name="credit_limit" inputmode="decimal" size="10";
                    }
                    label { "Low-balance threshold" span.hint { "empty: none" }
                        input type="text" name="low_balance" inputmode="decimal" size="10";
                    }
                    button.secondary type="submit" { "Save account" }
                }
            }
        }
    }
}

/// The top-up form.
#[derive(Deserialize)]
pub struct DepositForm {
    amount: String,
    memo: Option<String>,
    /// Made when the form was shown.
    idempotency_key: Option<String>,
}

/// `POST /ops/clients/{id}/funding/{currency}/deposit`.
pub async fn deposit(
    State(st): State<AppState>,
    console: Console,
    Path((id, currency)): Path<(String, String)>,
    FormOf(f): FormOf<DepositForm>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let outcome = async {
        let currency = parse_currency(&currency)?;
        let amount = f.amount.trim();
        let key = f.idempotency_key.as_deref().filter(|k| !k.is_empty());
        let entry = Entry { amount, memo: f.memo.as_deref(), idempotency_key: key };
        let receipt = funding::deposit(&st.db.primary, &console.actor, id, currency, &entry).await?;
        let (posted, balance) = (&receipt.posted, &receipt.posted.account.balance);
        Ok(if receipt.replayed {
            format!(
                "This top-up was already posted (entry {}, {} {currency}); nothing more was added. The balance is {balance} {currency}.",
                posted.entry_id, posted.amount
            )
        } else {
            format!("Topped up {} {currency}: the balance is now {balance} {currency}.", posted.amount)
        })
    }
    .await;
    console.finish(&st, outcome, &format!("/ops/clients/{id}")).await
}

/// The account form.
#[derive(Deserialize)]
pub struct AccountForm {
    currency: String,
    credit_limit: String,
    low_balance: String,
}

/// `POST /ops/clients/{id}/funding`: open an account, or set its credit limit and threshold.
pub async fn set_account(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    FormOf(f): FormOf<AccountForm>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let outcome = async {
        let currency = parse_currency(f.currency.trim())?;
        let credit_limit = Some(f.credit_limit.trim()).filter(|t| !t.is_empty()).map(str::to_owned);
        let low_balance = Some(Some(f.low_balance.trim()).filter(|t| !t.is_empty()).map(str::to_owned));
        let change = AccountChange { credit_limit, low_balance, credit_voids: None };
        let (account, opened) = funding::set_account(&st.db.primary, &console.actor, id, currency, &change).await?;
        let threshold = account.low_balance.map_or("no low-balance threshold".to_owned(), |t| format!("low at {t}"));
        Ok(format!(
            "{} the {currency} account: credit limit {}, {threshold}.",
            if opened { "Opened" } else { "Saved" },
            account.credit_limit
        ))
    }
    .await;
    console.finish(&st, outcome, &format!("/ops/clients/{id}")).await
}

/// The statement download's query: dates (UTC midnight), each optional.
#[derive(Deserialize)]
pub struct StatementForm {
    from: Option<String>,
    to: Option<String>,
}

fn date(field: &str, text: Option<&str>) -> Result<Option<OffsetDateTime>, AppError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    let day = time::Date::parse(text, format_description!("[year]-[month]-[day]"))
        .map_err(|_| ApiError::validation(field, "must be a date such as 2026-11-01"))?;
    Ok(Some(day.midnight().assume_utc()))
}

/// `GET /ops/clients/{id}/funding/{currency}/statement.csv`: the statement, as the API streams it.
pub async fn statement(
    State(st): State<AppState>,
    Path((id, currency)): Path<(String, String)>,
    Query(q): Query<StatementForm>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let currency = parse_currency(&currency)?;
    let period = Period { from: date("from", q.from.as_deref())?, to: date("to", q.to.as_deref())? };
    Ok(csv_response(funding::statement(&st.db.primary, id, currency, period).await?))
}
