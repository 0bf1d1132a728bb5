//! Deposits and adjustments: one ledger entry, the balance and the audit row in one transaction.

use allot_shared::ident::validate_idempotency_key;
use allot_shared::{ApiError, Currency, ErrorCode};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    ACCOUNT_COLUMNS, ADJUSTMENT_BEYOND_CREDIT, Account, AccountRow, Sign, beyond_credit, client_exists, lock_account,
    no_account, parse_amount, parse_memo,
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

/// What an operator posts: the amount as sent, a memo, and the `Idempotency-Key` under which
/// it is posted at most once (optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry<'a> {
    /// A decimal string in the currency's exponent.
    pub amount: &'a str,
    /// The memo as sent (trimmed; empty means none).
    pub memo: Option<&'a str>,
    /// The key: the same key on the same account posts once.
    pub idempotency_key: Option<&'a str>,
}

/// A posting's answer: the entry and the account, and whether an earlier request with the same
/// `Idempotency-Key` posted it (then nothing was written, and the account is as it is now).
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The entry.
    pub posted: Posted,
    /// True when this answers a repeat of an earlier request.
    pub replayed: bool,
}

/// Which entry an operator posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posting {
    Deposit,
    Adjustment,
}

/// An operator's posting, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checked {
    posting: Posting,
    signed_minor: i64,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

impl Checked {
    fn parse(posting: Posting, currency: Currency, entry: &Entry<'_>) -> Result<Self, AppError> {
        let (sign, memo_required) = match posting {
            Posting::Deposit => (Sign::Positive, false),
            Posting::Adjustment => (Sign::NonZero, true),
        };
        let idempotency_key = entry
            .idempotency_key
            .map(|k| validate_idempotency_key(k).map(|()| k.to_owned()))
            .transpose()
            .map_err(|reason| ApiError::validation("Idempotency-Key", reason))?;
        Ok(Self {
            posting,
            signed_minor: parse_amount("amount", entry.amount, currency, sign)?,
            memo: parse_memo(entry.memo, memo_required)?,
            idempotency_key,
        })
    }

    /// The entry's kind, the account debited and the one credited, and the audit action.
    fn accounts(&self) -> (&'static str, &'static str, &'static str, &'static str) {
        match (self.posting, self.signed_minor > 0) {
            (Posting::Deposit, _) => ("deposit", "deposits", "client", "funding.deposit"),
            (Posting::Adjustment, true) => ("adjustment", "adjustments", "client", "funding.adjust"),
            (Posting::Adjustment, false) => ("adjustment", "client", "adjustments", "funding.adjust"),
        }
    }
}

/// Top up `client`'s account in `currency` by `entry.amount` (a positive decimal string): one
/// `deposit` entry (debit `deposits`, credit `client`) and the balance, in one transaction,
/// audited as `funding.deposit`. A client without an account in the currency gets `404`.
pub async fn deposit(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    currency: Currency,
    entry: &Entry<'_>,
) -> Result<Receipt, AppError> {
    post(pool, actor, client, currency, Checked::parse(Posting::Deposit, currency, entry)?).await
}

/// Adjust `client`'s balance in `currency` by `entry.amount` (a signed, non-zero decimal string)
/// with a mandatory memo: one `adjustment` entry (credit `client` from `adjustments` when
/// positive, the other way round when negative) and the balance, in one transaction, audited as
/// `funding.adjust`. One that would take the balance past the credit limit is refused.
pub async fn adjust(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    currency: Currency,
    entry: &Entry<'_>,
) -> Result<Receipt, AppError> {
    post(pool, actor, client, currency, Checked::parse(Posting::Adjustment, currency, entry)?).await
}

/// The `422` of a key sent again with another posting than the entry it made.
pub fn key_used_for_another_posting(entry_id: i64, kind: &str, amount: &str) -> ApiError {
    let message = format!(
        "this Idempotency-Key was used for another posting (entry {entry_id}: {kind} of {amount}); nothing was changed"
    );
    ApiError::new(ErrorCode::IdempotencyMismatch, message)
}

/// An entry posted earlier under an `Idempotency-Key`.
#[derive(Debug, sqlx::FromRow)]
struct EarlierEntry {
    id: i64,
    kind: String,
    debit_account: String,
    amount_minor: i64,
    memo: Option<String>,
}

impl EarlierEntry {
    /// The entry's amount as it changed the client's balance.
    fn signed_minor(&self) -> i64 {
        if self.debit_account == "client" { -self.amount_minor } else { self.amount_minor }
    }

    /// The answer to a repeat of the request that posted this entry, or `422` when the repeat
    /// asks for another posting under the same key.
    fn replay(self, asked: &Checked, account: Account, currency: Currency) -> Result<Posted, AppError> {
        let (kind, ..) = asked.accounts();
        let same = self.kind == kind && self.signed_minor() == asked.signed_minor && self.memo == asked.memo;
        let amount = currency.format_minor(self.signed_minor());
        if !same {
            return Err(key_used_for_another_posting(self.id, &self.kind, &amount).into());
        }
        Ok(Posted { entry_id: self.id, kind: self.kind, amount, memo: self.memo, account })
    }
}

/// The answer to a repeat of a keyed posting, if one was posted under `key` on this account.
/// Runs with the account row locked, so a concurrent request with the same key has committed
/// its entry or not begun.
async fn repeat_of(
    tx: &mut PgConnection,
    client: Uuid,
    currency: Currency,
    key: &str,
    asked: &Checked,
) -> Result<Option<Posted>, AppError> {
    let account = lock_account(tx, client, currency).await?.ok_or_else(|| no_account(client, currency))?;
    let earlier: Option<EarlierEntry> = sqlx::query_as(
        "SELECT id, kind, debit_account, amount_minor, memo FROM ledger_entries
          WHERE client_id = $1 AND currency = $2 AND idempotency_key = $3",
    )
    .bind(client)
    .bind(currency.code())
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    earlier.map(|e| e.replay(asked, account.to_account()?, currency)).transpose()
}

async fn post(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    currency: Currency,
    asked: Checked,
) -> Result<Receipt, AppError> {
    debug_assert!(asked.signed_minor != 0 && (asked.posting == Posting::Adjustment || asked.signed_minor > 0));
    let (kind, debit, credit, action) = asked.accounts();
    let mut tx = pool.begin().await?;
    client_exists(&mut tx, client).await?;
    if let Some(key) = &asked.idempotency_key
        && let Some(posted) = repeat_of(&mut tx, client, currency, key, &asked).await?
    {
        tx.rollback().await?;
        return Ok(Receipt { posted, replayed: true });
    }
    // The balance first: it locks the row, and a debit past the credit limit fails here.
    let after: Option<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE funding_accounts SET balance_minor = balance_minor + $3, updated_at = now()
          WHERE client_id = $1 AND currency = $2
         RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(client)
    .bind(currency.code())
    .bind(asked.signed_minor)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| beyond_credit(e, "amount", ADJUSTMENT_BEYOND_CREDIT))?;
    let after = after.ok_or_else(|| no_account(client, currency))?;
    let entry_id: i64 = sqlx::query_scalar(
        "INSERT INTO ledger_entries
                (client_id, currency, kind, debit_account, credit_account, amount_minor, memo, actor, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(client)
    .bind(currency.code())
    .bind(kind)
    .bind(debit)
    .bind(credit)
    .bind(asked.signed_minor.abs())
    .bind(&asked.memo)
    .bind(actor.name())
    .bind(&asked.idempotency_key)
    .fetch_one(&mut *tx)
    .await?;
    let amount = currency.format_minor(asked.signed_minor);
    let account = after.to_account()?;
    let change = serde_json::json!({
        "currency": currency.code(), "amount": amount, "memo": asked.memo, "entry_id": entry_id,
        "balance": account.balance, "idempotency_key": asked.idempotency_key,
    });
    audit::record(&mut tx, actor, action, &client.to_string(), change).await?;
    tx.commit().await?;
    let posted = Posted { entry_id, kind: kind.to_owned(), amount, memo: asked.memo, account };
    Ok(Receipt { posted, replayed: false })
}
