//! `GET /v1/balance`: the calling client's funding accounts, one per currency.
//!
//! Read from the primary, never the replica: a caller that has just spent must never see the
//! balance from before (a replica a moment behind would show more than is there).

use allot_shared::Currency;
use allot_shared::funding::{Balance, BalancesBody};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::allocation::render::format_time;
use crate::error::AppError;

#[derive(sqlx::FromRow)]
struct AccountRow {
    currency: String,
    balance_minor: i64,
    credit_limit_minor: i64,
    low_balance_minor: Option<i64>,
    updated_at: OffsetDateTime,
}

/// A client's accounts, by currency code (the primary key's order).
const ACCOUNTS_OF: &str = "
SELECT currency, balance_minor, credit_limit_minor, low_balance_minor, updated_at
  FROM funding_accounts WHERE client_id = $1 ORDER BY currency";

impl AccountRow {
    fn to_wire(&self) -> Result<Balance, AppError> {
        let currency = Currency::parse(&self.currency).map_err(|e| AppError::Internal(e.into()))?;
        // The schema's CHECK: a balance goes below zero only within the credit limit.
        debug_assert!(self.balance_minor + self.credit_limit_minor >= 0, "an account within its credit");
        let available = self
            .balance_minor
            .checked_add(self.credit_limit_minor)
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("balance plus credit limit overflows")))?;
        Ok(Balance {
            currency,
            balance: currency.format_minor(self.balance_minor),
            credit_limit: currency.format_minor(self.credit_limit_minor),
            available: currency.format_minor(available),
            low_balance_threshold: self.low_balance_minor.map(|m| currency.format_minor(m)),
            updated_at: format_time(self.updated_at),
        })
    }
}

/// The funding accounts of `client_id`, read from `primary`. None: the client allocates without
/// limit.
pub async fn balances(primary: &PgPool, client_id: Uuid) -> Result<BalancesBody, AppError> {
    let rows: Vec<AccountRow> = sqlx::query_as(ACCOUNTS_OF).bind(client_id).fetch_all(primary).await?;
    let balances = rows.iter().map(AccountRow::to_wire).collect::<Result<Vec<_>, _>>()?;
    Ok(BalancesBody { balances })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(currency: &str, balance: i64, credit: i64, low: Option<i64>) -> AccountRow {
        AccountRow {
            currency: currency.into(),
            balance_minor: balance,
            credit_limit_minor: credit,
            low_balance_minor: low,
            updated_at: OffsetDateTime::from_unix_timestamp(1_795_795_531).unwrap(),
        }
    }

    #[test]
    fn an_account_in_its_currencys_exponent() {
        let eur = row("EUR", 12_000, 5_000, Some(2_000)).to_wire().unwrap();
        assert_eq!(
            (eur.balance.as_str(), eur.credit_limit.as_str(), eur.available.as_str()),
            ("120.00", "50.00", "170.00")
        );
        assert_eq!(eur.low_balance_threshold.as_deref(), Some("20.00"));
        assert_eq!(eur.updated_at, "2026-11-27T16:05:31Z");
        let jpy = row("JPY", -3_000, 10_000, None).to_wire().unwrap();
        assert_eq!(
            (jpy.balance.as_str(), jpy.credit_limit.as_str(), jpy.available.as_str()),
            ("-3000", "10000", "7000")
        );
        assert_eq!(jpy.low_balance_threshold, None);
    }
}
