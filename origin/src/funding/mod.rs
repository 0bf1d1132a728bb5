//! Funding: prepaid balances per client and currency, prices, and the double-entry ledger.
//!
//! - A client with a funding account in a product's currency pays for every allocation in that
//!   currency: the price (face value less the client's discount for the product, see
//!   [`unit_price_minor`]) is debited in the allocation's own transaction, and an allocation the
//!   balance plus credit limit does not cover is refused with `402 INSUFFICIENT_FUNDS`. A client
//!   without an account in the currency allocates without limit.
//! - Every change of a balance is a `ledger_entries` row (deposit, allocation, reversal,
//!   adjustment) that moves the amount between the client's account and a platform account, in
//!   the same transaction; `funding_accounts.balance_minor` is their sum (the `ledger-check` job
//!   verifies it).
//! - No hot row: the batch writer debits each client once per batch statement (the sum of the
//!   batch's allocations), so a busy client's account row is updated once per batch, not once
//!   per allocation.
//!
//! Migration `20261127000011_funding` holds the schema and the ledger's account rules.
//!
//! - [`callers`]: `GET /v1/balance`; [`ledger_listing`]: `GET /v1/ledger`.

pub mod callers;
pub mod ledger_listing;

/// The platform's accounts; `client` is the entry's own client's account in its currency.
pub const ACCOUNTS: [&str; 4] = ["client", "deposits", "sales", "adjustments"];

/// A client's price of one card of face value `face_minor` with a discount of `discount_bps`
/// basis points: the discount is rounded down to whole minor units, so the price is rounded up.
pub fn unit_price_minor(face_minor: i64, discount_bps: i32) -> i64 {
    assert!((0..=10_000).contains(&discount_bps), "a discount is 0..=10000 basis points");
    assert!(face_minor > 0, "a face value is positive");
    let discount = i128::from(face_minor) * i128::from(discount_bps) / 10_000;
    face_minor - discount as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discount_rounds_in_the_platforms_favour() {
        assert_eq!(unit_price_minor(2500, 0), 2500);
        assert_eq!(unit_price_minor(2500, 250), 2438, "2.5 % of 25.00 is 0.625: 0.62 off");
        assert_eq!(unit_price_minor(999, 10_000), 0, "a free card");
        assert_eq!(unit_price_minor(1, 9_999), 1, "less than a minor unit off is nothing off");
        assert_eq!(unit_price_minor(i64::MAX, 5_000), i64::MAX - i64::MAX / 2);
    }
}
