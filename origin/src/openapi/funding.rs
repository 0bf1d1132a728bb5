//! The callers' funding operations, `GET /v1/balance` and `GET /v1/ledger` (tag `funding`), and
//! the `402 INSUFFICIENT_FUNDS` of `POST /v1/allocations`. Examples are the real wire types and
//! the real error constructors.

use allot_shared::funding::{
    Balance, BalancesBody, LedgerEntry, LedgerKind, LedgerPage, insufficient_funds, signed_amount,
};
use allot_shared::{ApiError, Currency};
use serde_json::Value;
use utoipa::openapi::HttpMethod;
use uuid::Uuid;

use super::TAG_FUNDING;
use super::build::{Op, link};
use super::gate::{declared_body_too_large, gate_errors, rate_limit_headers};
use crate::funding::ledger_listing::{Ledger, LedgerQuery};
use crate::http::funding::LedgerParams;
use crate::http::ops::serde_urlencoded_query;
use crate::ops::page::FOREIGN_CURSOR;

/// A sample ledger cursor (opaque to callers).
const SAMPLE_CURSOR: &str = "ZzE6OGY0OWUxYzJhMGI3ZDNlNTo0ODE2";

fn eur() -> Currency {
    Currency::parse("EUR").expect("a known currency")
}

/// The `402` of an allocation the balance does not cover: 2 × 25.00 USD with 20.00 USD available.
pub fn insufficient_funds_example() -> ApiError {
    insufficient_funds(Currency::parse("USD").expect("a known currency"), 2_000, 5_000)
}

fn sample_balances() -> Value {
    let body = BalancesBody {
        balances: vec![Balance {
            currency: eur(),
            balance: eur().format_minor(12_000),
            credit_limit: eur().format_minor(5_000),
            available: eur().format_minor(17_000),
            low_balance_threshold: Some(eur().format_minor(2_000)),
            updated_at: "2026-11-27T16:05:31.204Z".into(),
        }],
    };
    serde_json::to_value(body).expect("balances serialise")
}

fn sample_ledger() -> Value {
    let entry = |id: i64, kind: LedgerKind, minor: i64, debit: bool, at: &str| LedgerEntry {
        id,
        kind,
        currency: eur(),
        amount: signed_amount(eur(), minor, debit),
        allocation_id: None,
        card_id: None,
        memo: None,
        created_at: at.into(),
    };
    let reversal = LedgerEntry {
        allocation_id: Some("0192f0c1-7c7e-7000-8000-000000000001".into()),
        card_id: Some(81_235),
        ..entry(4_818, LedgerKind::Reversal, 2_500, false, "2026-11-27T17:00:00Z")
    };
    let allocation = LedgerEntry {
        allocation_id: Some("0192f0c1-7c7e-7000-8000-000000000001".into()),
        ..entry(4_817, LedgerKind::Allocation, 5_000, true, "2026-11-27T16:05:31.204Z")
    };
    let deposit = LedgerEntry {
        memo: Some("top-up, wire 2026-11-27".into()),
        ..entry(4_816, LedgerKind::Deposit, 20_000, false, "2026-11-27T09:00:00Z")
    };
    let page = LedgerPage { items: vec![reversal, allocation, deposit], next_cursor: Some(SAMPLE_CURSOR.into()) };
    serde_json::to_value(page).expect("a ledger page serialises")
}

fn get_balance() -> Op {
    let to_ledger = link(
        "listLedger",
        &[("currency", "$response.body#/balances/0/currency")],
        "The entries of the first account, newest first.",
    );
    let op = Op::new(HttpMethod::Get, "/v1/balance", "getBalance", "Your balances")
        .description(
            "Your funding accounts, one per currency, by currency code. Money is an exact decimal string in \
             the currency's minor unit (`\"120.00\"` EUR, `\"3000\"` JPY); `available` is `balance` plus \
             `credit_limit`, what allocations may still spend. An allocation in a currency you have an account \
             in is paid from it (`402 INSUFFICIENT_FUNDS` when `available` does not cover it); in a currency \
             you have no account in, it is not charged. `{\"balances\": []}`: you have no account, and \
             allocate without limit. Read from the primary database: it already shows an allocation that \
             was just answered.",
        )
        .tag(TAG_FUNDING)
        .security(super::API_KEY_SCHEME)
        .json_response_linked::<BalancesBody>(
            200,
            "Your balances (empty: no funding account, no limit).",
            sample_balances(),
            &rate_limit_headers(),
            vec![("ListLedgerOfCurrency", to_ledger)],
        );
    gate_errors(declared_body_too_large(op))
}

/// A ledger query's error as the handler makes it, from a query string.
fn ledger_error(query: &str) -> ApiError {
    let checked = serde_urlencoded_query::<LedgerParams>(query)
        .and_then(|q| Ledger::parse(Uuid::nil(), &LedgerQuery::from(q)).map(|_| ()));
    match checked {
        Err(e) => e.to_api_error(),
        Ok(()) => unreachable!("the sample query {query} is invalid by construction"),
    }
}

fn list_ledger() -> Op {
    let invalid = [
        ledger_error("colour=blue"),
        ledger_error("limit=0"),
        ledger_error("currency=ZZZ"),
        ledger_error("kind=debit"),
        ledger_error("created_after=yesterday"),
        ledger_error("cursor=nope"),
        ApiError::validation("cursor", FOREIGN_CURSOR),
    ];
    let op = Op::new(HttpMethod::Get, "/v1/ledger", "listLedger", "Your ledger")
        .description(
            "Every change of your balances, newest first (by `id`), a page at a time: `deposit` (a top-up), \
             `allocation` (one per funded allocation: unit price × quantity), `reversal` (a voided card's \
             price credited back) and `adjustment`. `amount` is signed from your side: `\"-50.00\"` was taken \
             from your balance, `\"25.00\"` added to it. A balance is the sum of its entries. Follow \
             `next_cursor` with the same filters until it is null; a cursor used with other filters, or by \
             another client, is `400`. Unknown query parameters are `400` too. When a read replica is \
             configured, an entry written a moment ago may take that moment to be listed (`GET /v1/balance` \
             is always current).",
        )
        .tag(TAG_FUNDING)
        .security(super::API_KEY_SCHEME)
        .query::<LedgerParams>()
        .json_response::<LedgerPage>(200, "A page of your ledger.", sample_ledger(), &rate_limit_headers())
        .error("A query parameter is unknown or invalid; `details.field` names it.", &invalid);
    gate_errors(declared_body_too_large(op))
}

/// The callers' funding operations.
pub fn operations() -> Vec<Op> {
    vec![get_balance(), list_ledger()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_the_wire_types() {
        let balances: BalancesBody = serde_json::from_value(sample_balances()).unwrap();
        assert_eq!(balances.balances[0].available, "170.00");
        let page: LedgerPage = serde_json::from_value(sample_ledger()).unwrap();
        assert!(page.items.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let e = insufficient_funds_example();
        assert_eq!(e.details.unwrap()["required"], "50.00", "2 × 25.00");
    }

    #[test]
    fn the_sample_cursor_is_a_ledger_cursor() {
        let query = LedgerQuery { cursor: Some(SAMPLE_CURSOR.into()), ..LedgerQuery::default() };
        let e = Ledger::parse(Uuid::nil(), &query).unwrap_err().to_api_error();
        assert_eq!(e.details.unwrap()["reason"], FOREIGN_CURSOR, "well-formed, made for another client");
    }
}
