//! Deposits and adjustments: one ledger entry, the balance and the audit row in one transaction.

use allot_shared::Currency;
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ACCOUNT_COLUMNS, ADJUSTMENT_BEYOND_CREDIT, Account, AccountRow, Sign, beyond_credit, client_exists, no_account,
    parse_amount, parse_memo,
};
use crate::error::AppError;
use crate::ops::audit::{self, Actor};

/// A ledger entry an operator wrote (a deposit or an adjustment), and the account after it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct Posted {
    /// The ledger entry's id.
    pub entry_id: i64,
    /// `deposit` or `adjustment`.
    pub kind: String,
    /// The amount as it changed the balance (negative: a debit of the client).
    #[schema(example = "100.00")]
    pub amount: String,
    /// The memo.
    #[schema(required = true)]
    pub memo: Option<String>,
    /// The account after the entry.
    pub account: Account,
}

/// Which entry an operator posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posting {
    Deposit,
    Adjustment,
}

/// Top up `client`'s account in `currency` by `amount` (a positive decimal string): one
/// `deposit` entry (debit `deposits`, credit `client`) and the balance, in one transaction,
/// audited as `funding.deposit`. A client without an account in the currency gets `404`.
pub async fn deposit(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    currency: Currency,
    amount: &str,
    memo: Option<&str>,
) -> Result<Posted, AppError> {
    let minor = parse_amount("amount", amount, currency, Sign::Positive)?;
    let memo = parse_memo(memo, false)?;
    post(pool, actor, client, currency, Posting::Deposit, minor, memo).await
}

/// Adjust `client`'s balance in `currency` by `amount` (a signed, non-zero decimal string) with
/// a mandatory memo: one `adjustment` entry (credit `client` from `adjustments` when positive,
/// the other way round when negative) and the balance, in one transaction, audited as
/// `funding.adjust`. One that would take the balance past the credit limit is refused.
pub async fn adjust(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    currency: Currency,
    amount: &str,
    memo: Option<&str>,
) -> Result<Posted, AppError> {
    let minor = parse_amount("amount", amount, currency, Sign::NonZero)?;
    let memo = parse_memo(memo, true)?;
    post(pool, actor, client, currency, Posting::Adjustment, minor, memo).await
}

async fn post(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    currency: Currency,
    posting: Posting,
    signed_minor: i64,
    memo: Option<String>,
) -> Result<Posted, AppError> {
    debug_assert!(signed_minor != 0 && (posting == Posting::Adjustment || signed_minor > 0));
    let (kind, debit, credit, action) = match (posting, signed_minor > 0) {
        (Posting::Deposit, _) => ("deposit", "deposits", "client", "funding.deposit"),
        (Posting::Adjustment, true) => ("adjustment", "adjustments", "client", "funding.adjust"),
        (Posting::Adjustment, false) => ("adjustment", "client", "adjustments", "funding.adjust"),
    };
    let mut tx = pool.begin().await?;
    client_exists(&mut tx, client).await?;
    // The balance first: it locks the row, and a debit past the credit limit fails here.
    let after: Option<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE funding_accounts SET balance_minor = balance_minor + $3, updated_at = now()
          WHERE client_id = $1 AND currency = $2
         RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(client)
    .bind(currency.code())
    .bind(signed_minor)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| beyond_credit(e, "amount", ADJUSTMENT_BEYOND_CREDIT))?;
    let after = after.ok_or_else(|| no_account(client, currency))?;
    let (entry_id, _at): (i64, OffsetDateTime) = sqlx::query_as(
        "INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, memo, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, created_at",
    )
    .bind(client)
    .bind(currency.code())
    .bind(kind)
    .bind(debit)
    .bind(credit)
    .bind(signed_minor.abs())
    .bind(&memo)
    .bind(actor.name())
    .fetch_one(&mut *tx)
    .await?;
    let amount = currency.format_minor(signed_minor);
    let account = after.to_account()?;
    let change = serde_json::json!({
        "currency": currency.code(), "amount": amount, "memo": memo, "entry_id": entry_id,
        "balance": account.balance,
    });
    audit::record(&mut tx, actor, action, &client.to_string(), change).await?;
    tx.commit().await?;
    Ok(Posted { entry_id, kind: kind.to_owned(), amount, memo, account })
}
