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

use sqlx::PgConnection;
use uuid::Uuid;

/// SQL: the unit price of request row `$row` (its `denomination_minor`) given its discount row
/// `$discount` (LEFT JOINed `client_discounts`; none: face value). The discount is rounded down
/// to whole minor units, as [`unit_price_minor`] does; `numeric` keeps the product exact.
macro_rules! unit_price_sql {
    ($row:literal, $discount:literal) => {
        concat!(
            "(",
            $row,
            ".denomination_minor - div(",
            $row,
            ".denomination_minor::numeric * coalesce(",
            $discount,
            ".discount_bps, 0), 10000)::bigint)"
        )
    };
}
pub(crate) use unit_price_sql;

/// SQL: a `balance.low` outbox event for each account of `$debited` (rows of `client_id`,
/// `currency`, `balance_minor` after, `low_balance_minor`, `total` just debited) whose debit took
/// it from above its threshold to at or below it: one event per crossing.
macro_rules! balance_low_event_sql {
    ($debited:literal) => {
        concat!(
            "
    INSERT INTO outbox (topic, aggregate_id, payload)
    SELECT 'balance.low', x.client_id::text || '/' || x.currency,
           jsonb_build_object('client_id', x.client_id, 'currency', x.currency, 'balance_minor', x.balance_minor,
                              'low_balance_minor', x.low_balance_minor)
      FROM ",
            $debited,
            " x
     WHERE x.low_balance_minor IS NOT NULL AND x.balance_minor <= x.low_balance_minor
       AND x.balance_minor + x.total > x.low_balance_minor"
        )
    };
}
pub(crate) use balance_low_event_sql;

/// A client's unit price of a product's denomination, and whether the client has an account in
/// the currency (`$1` client, `$2` product, `$3` denomination, `$4` currency).
const PRICE_ONE: &str = concat!(
    "SELECT ",
    unit_price_sql!("r", "d"),
    ", EXISTS (SELECT 1 FROM funding_accounts fa WHERE fa.client_id = $1 AND fa.currency = $4)
  FROM (SELECT $1::uuid AS client_id, $2::text AS product_id, $3::bigint AS denomination_minor) r
  LEFT JOIN client_discounts d ON d.client_id = r.client_id AND d.product_id = r.product_id"
);

/// Debit `$3` from client `$1`'s account in `$2` for allocation `$4` if the balance plus credit
/// limit covers it: the ledger entry, the balance and a `balance.low` event on a crossing, in one
/// statement. Answers whether it was debited, and the headroom the statement saw.
const DEBIT_ONE: &str = concat!(
    "
WITH debited AS (
    UPDATE funding_accounts
       SET balance_minor = balance_minor - $3, updated_at = now()
     WHERE client_id = $1 AND currency = $2 AND balance_minor + credit_limit_minor >= $3
    RETURNING client_id, currency, balance_minor, low_balance_minor, $3::bigint AS total
), entry AS (
    INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, allocation_id)
    SELECT client_id, currency, 'allocation', 'client', 'sales', total, $4 FROM debited WHERE total > 0
), low AS (",
    balance_low_event_sql!("debited"),
    "
)
SELECT EXISTS (SELECT 1 FROM debited),
       (SELECT balance_minor + credit_limit_minor FROM funding_accounts WHERE client_id = $1 AND currency = $2)"
);

/// Credit back the unit price of each voided card `$1` whose allocation was charged, when its
/// client's account credits voids: one reversal entry per card (never two: a unique index) and
/// one balance update per account. `$2` is the void's reason, `$3` its actor. Answers how many
/// cards were credited.
pub const REVERSE_VOIDED: &str = "
WITH card AS (
    SELECT i.id AS card_id, a.id AS allocation_id, a.client_id, p.currency, a.unit_price_minor AS amount
      FROM unnest($1::bigint[]) AS u(id)
      JOIN inventories i ON i.id = u.id
      JOIN allocations a ON a.id = i.allocation_id
      JOIN products p ON p.id = a.product_id
     WHERE a.unit_price_minor > 0
), entry AS (
    INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor,
                                allocation_id, card_id, memo, actor)
    SELECT c.client_id, c.currency, 'reversal', 'sales', 'client', c.amount, c.allocation_id, c.card_id, $2, $3
      FROM card c
      JOIN funding_accounts fa ON fa.client_id = c.client_id AND fa.currency = c.currency AND fa.credit_voids
    ON CONFLICT (card_id) WHERE kind = 'reversal' DO NOTHING
    RETURNING client_id, currency, amount_minor
), credited AS (
    UPDATE funding_accounts fa
       SET balance_minor = fa.balance_minor + e.total, updated_at = now()
      FROM (SELECT client_id, currency, sum(amount_minor)::bigint AS total FROM entry GROUP BY client_id, currency) e
     WHERE fa.client_id = e.client_id AND fa.currency = e.currency
)
SELECT count(*) FROM entry";

/// What one allocation costs a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Per card, in the currency's minor units.
    pub unit_price_minor: i64,
    /// Whether the client has an account in the currency (else it is not charged).
    pub funded: bool,
}

/// The price of one card of `product_id` at `denomination_minor` for `client_id`.
pub async fn price_one(
    conn: &mut PgConnection,
    client_id: Uuid,
    product_id: &str,
    denomination_minor: i64,
    currency: &str,
) -> Result<Price, sqlx::Error> {
    let (unit_price_minor, funded): (i64, bool) = sqlx::query_as(PRICE_ONE)
        .bind(client_id)
        .bind(product_id)
        .bind(denomination_minor)
        .bind(currency)
        .fetch_one(conn)
        .await?;
    debug_assert!(unit_price_minor >= 0, "a price is never negative");
    Ok(Price { unit_price_minor, funded })
}

/// Debit `amount_minor` for `allocation_id` (already inserted in this transaction), or say how
/// far the funds fall short (nothing written then).
pub async fn debit_one(
    conn: &mut PgConnection,
    client_id: Uuid,
    currency: &str,
    amount_minor: i64,
    allocation_id: Uuid,
) -> Result<Result<(), Shortfall>, sqlx::Error> {
    let (debited, headroom): (bool, Option<i64>) = sqlx::query_as(DEBIT_ONE)
        .bind(client_id)
        .bind(currency)
        .bind(amount_minor)
        .bind(allocation_id)
        .fetch_one(conn)
        .await?;
    Ok(if debited {
        Ok(())
    } else {
        // The headroom is the statement's snapshot; a debit committed meanwhile may have taken
        // more, so what is reported stays below the price.
        let available_minor = headroom.unwrap_or(0).clamp(0, (amount_minor - 1).max(0));
        Err(Shortfall { available_minor, required_minor: amount_minor })
    })
}

/// How far a client's funds fell short of an allocation's price, in the currency's minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// Balance plus credit limit left for this allocation.
    pub available_minor: i64,
    /// The allocation's price.
    pub required_minor: i64,
}

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
