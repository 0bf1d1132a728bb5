//! Funding on the wire: `GET /v1/balance`, `GET /v1/ledger`, and the `402 INSUFFICIENT_FUNDS`
//! answer of an allocation. Money is an exact decimal string in the currency's exponent, never a
//! float; a ledger amount is signed from the client's point of view.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{ApiError, ErrorCode};
use crate::money::Currency;

/// One funding account of the calling client: its balance in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Balance {
    /// The account's currency.
    pub currency: Currency,
    /// The balance (`"120.00"`); below zero only while the credit limit covers it.
    #[cfg_attr(feature = "openapi", schema(pattern = "^-?[0-9]+(\\.[0-9]+)?$", example = "120.00"))]
    pub balance: String,
    /// How far below zero the balance may go (`"0.00"` when there is no credit).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9]+(\\.[0-9]+)?$", example = "50.00"))]
    pub credit_limit: String,
    /// What allocations may still spend: balance plus credit limit.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9]+(\\.[0-9]+)?$", example = "170.00"))]
    pub available: String,
    /// At or below this balance a `balance.low` event is raised; null when no threshold is set.
    #[cfg_attr(feature = "openapi", schema(required = true, pattern = "^-?[0-9]+(\\.[0-9]+)?$", example = "20.00"))]
    pub low_balance_threshold: Option<String>,
    /// When the account last changed (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
}

/// The body of `GET /v1/balance`: one account per currency, by currency code. Empty when the
/// client has no funding account: it allocates without limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BalancesBody {
    /// The accounts, by currency code.
    pub balances: Vec<Balance>,
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    /// Money received (an operator's top-up): a credit.
    Deposit,
    /// The price of one allocation (unit price × quantity): a debit.
    Allocation,
    /// A voided card's price credited back.
    Reversal,
    /// An operator's correction, either way.
    Adjustment,
}

impl LedgerKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [LedgerKind; 4] =
        [LedgerKind::Deposit, LedgerKind::Allocation, LedgerKind::Reversal, LedgerKind::Adjustment];

    /// The kind as stored and sent (`deposit`).
    pub const fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Deposit => "deposit",
            LedgerKind::Allocation => "allocation",
            LedgerKind::Reversal => "reversal",
            LedgerKind::Adjustment => "adjustment",
        }
    }

    /// The kind named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One entry of the calling client's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// The entry's id; a later entry has a larger id.
    pub id: i64,
    /// What the entry records.
    pub kind: LedgerKind,
    /// The account's currency.
    pub currency: Currency,
    /// The change to the balance: `"-25.00"` debits it, `"25.00"` credits it.
    #[cfg_attr(feature = "openapi", schema(pattern = "^-?[0-9]+(\\.[0-9]+)?$", example = "-50.00"))]
    pub amount: String,
    /// The allocation paid for (`allocation`) or whose card was voided (`reversal`); else null.
    #[cfg_attr(feature = "openapi", schema(required = true, format = Uuid))]
    pub allocation_id: Option<String>,
    /// The voided card (`reversal`); else null.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub card_id: Option<i64>,
    /// A note on the entry (a top-up's reference, an adjustment's reason), if any.
    #[cfg_attr(feature = "openapi", schema(required = true, max_length = 500))]
    pub memo: Option<String>,
    /// When the entry was written (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
}

/// A page of `GET /v1/ledger`: `{"items": [...], "next_cursor": "…" | null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LedgerPage {
    /// The entries, newest first.
    pub items: Vec<LedgerEntry>,
    /// The cursor of the next page (pass it as `cursor`, with the same filters); null on the last.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub next_cursor: Option<String>,
}

/// An entry's amount as the client sees it: `minor` units taken from its account (`debit`) are
/// negative, units added are positive.
pub fn signed_amount(currency: Currency, minor: i64, debit: bool) -> String {
    debug_assert!(minor > 0, "a ledger entry moves a positive amount");
    currency.format_minor(if debit { -minor } else { minor })
}

/// `402 INSUFFICIENT_FUNDS`: an allocation costing `required_minor` while only `available_minor`
/// (balance plus credit limit) is available in `currency`; nothing was allocated.
pub fn insufficient_funds(currency: Currency, available_minor: i64, required_minor: i64) -> ApiError {
    debug_assert!(required_minor > available_minor, "refused only when the price is not covered");
    let available = currency.format_minor(available_minor);
    let required = currency.format_minor(required_minor);
    ApiError::new(
        ErrorCode::InsufficientFunds,
        format!(
            "this allocation costs {required} {currency} but only {available} {currency} is available; nothing was \
             allocated"
        ),
    )
    .with_details(json!({ "currency": currency.code(), "available": available, "required": required }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn amounts_are_signed_from_the_clients_side() {
        assert_eq!(signed_amount(eur(), 2500, true), "-25.00");
        assert_eq!(signed_amount(eur(), 2500, false), "25.00");
        assert_eq!(signed_amount(Currency::parse("JPY").unwrap(), 3000, true), "-3000");
        assert_eq!(signed_amount(Currency::parse("KWD").unwrap(), 5, false), "0.005");
    }

    #[test]
    fn kinds_round_trip() {
        for kind in LedgerKind::ALL {
            assert_eq!(LedgerKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(LedgerKind::parse("Deposit"), None);
    }

    #[test]
    fn insufficient_funds_says_what_was_available_and_required() {
        let e = insufficient_funds(eur(), 2000, 5000);
        assert_eq!(e.code.http_status(), 402);
        assert_eq!(e.details.unwrap(), json!({ "currency": "EUR", "available": "20.00", "required": "50.00" }));
        assert!(e.message.contains("50.00 EUR") && e.message.contains("20.00 EUR"), "{}", e.message);
    }

    #[test]
    fn an_entry_round_trips_with_its_nulls() {
        let entry = LedgerEntry {
            id: 7,
            kind: LedgerKind::Deposit,
            currency: eur(),
            amount: "100.00".into(),
            allocation_id: None,
            card_id: None,
            memo: Some("wire 2026-11".into()),
            created_at: "2026-11-27T16:05:31Z".into(),
        };
        let value = serde_json::to_value(&entry).unwrap();
        assert!(value["allocation_id"].is_null() && value["card_id"].is_null(), "{value}");
        assert_eq!(serde_json::from_value::<LedgerEntry>(value).unwrap(), entry);
    }
}
