//! Funding, the operators' side: open or change a client's account in a currency (credit limit,
//! low-balance threshold, whether voids credit back), top-ups, adjustments, discounts, and
//! statements as CSV. Every change writes its ledger entry, its balance and its audit row in one
//! transaction; the ledger's account rules are in migration `20261127000011_funding`.

mod discounts;
mod postings;
mod statement;

pub use discounts::{clear_discount, set_discount};
pub use postings::{Entry, Posted, Receipt, adjust, deposit, key_used_for_another_posting};
pub use statement::{Period, STATEMENT_HEADER, STATEMENT_PAGE, Statement, csv_field, statement};

use allot_shared::{ApiError, Currency, Denomination, ErrorCode};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::{self, Actor};
use crate::error::AppError;

/// The most characters a ledger memo may have (the schema's CHECK).
pub const MAX_MEMO_CHARS: usize = 500;

/// The constraint a balance beyond its credit limit breaks.
const WITHIN_CREDIT: &str = "funding_accounts_within_credit";

/// A client's funding account in one currency; money as decimal strings in the currency's
/// exponent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The client.
    pub client_id: Uuid,
    /// The account's currency.
    #[schema(value_type = Currency)]
    pub currency: String,
    /// The balance (negative while the client uses its credit).
    #[schema(example = "120.50")]
    pub balance: String,
    /// How far below zero the balance may go.
    #[schema(example = "0.00")]
    pub credit_limit: String,
    /// What allocations may still spend: balance plus credit limit.
    #[schema(example = "120.50")]
    pub available: String,
    /// At or below this balance the account is low (`balance.low`, the low-accounts gauge);
    /// null: never.
    #[schema(required = true, example = "50.00")]
    pub low_balance: Option<String>,
    /// Whether the balance is at or below `low_balance`.
    pub low: bool,
    /// Whether voiding an allocated card credits its price back.
    pub credit_voids: bool,
    /// Opened.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed (settings or balance).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// An account row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AccountRow {
    client_id: Uuid,
    currency: String,
    balance_minor: i64,
    credit_limit_minor: i64,
    low_balance_minor: Option<i64>,
    credit_voids: bool,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

/// The columns of an [`AccountRow`].
const ACCOUNT_COLUMNS: &str =
    "client_id, currency, balance_minor, credit_limit_minor, low_balance_minor, credit_voids, created_at, updated_at";

impl AccountRow {
    fn to_account(&self) -> Result<Account, AppError> {
        let currency = stored_currency(&self.currency)?;
        let fmt = |minor: i64| currency.format_minor(minor);
        Ok(Account {
            client_id: self.client_id,
            currency: self.currency.clone(),
            balance: fmt(self.balance_minor),
            credit_limit: fmt(self.credit_limit_minor),
            available: fmt(self.balance_minor.saturating_add(self.credit_limit_minor)),
            low_balance: self.low_balance_minor.map(fmt),
            low: self.low_balance_minor.is_some_and(|t| self.balance_minor <= t),
            credit_voids: self.credit_voids,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A client's discount on one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct Discount {
    /// The client.
    pub client_id: Uuid,
    /// The product.
    pub product_id: String,
    /// Off the face value, in basis points (100 = 1 %); the price is rounded up to a whole
    /// minor unit.
    #[schema(minimum = 0, maximum = 10000)]
    pub discount_bps: i32,
    /// Last set.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A client's funding: its accounts by currency, and its discounts by product.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct Funding {
    /// The client.
    pub client_id: Uuid,
    /// Its accounts, by currency; empty: it allocates without limit.
    pub accounts: Vec<Account>,
    /// Its discounts, by product.
    pub discounts: Vec<Discount>,
}

/// What to change on an account; `None` leaves a setting as it is (a new account starts with
/// a credit limit of 0, no threshold, and voids credited back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountChange {
    /// The credit limit, a decimal string ≥ 0.
    pub credit_limit: Option<String>,
    /// The low-balance threshold: `Some(None)` clears it.
    pub low_balance: Option<Option<String>>,
    /// Whether voids credit back.
    pub credit_voids: Option<bool>,
}

fn no_client(id: Uuid) -> AppError {
    AppError::api(ErrorCode::NotFound, format!("no client with id {id}"))
}

fn no_account(client: Uuid, currency: Currency) -> AppError {
    let message = format!("client {client} has no funding account in {currency}; an admin opens one first");
    AppError::api(ErrorCode::NotFound, message)
}

/// A currency read back from the database (written only after [`Currency::parse`]).
fn stored_currency(code: &str) -> Result<Currency, AppError> {
    Currency::parse(code).map_err(|e| AppError::Internal(anyhow::anyhow!("stored currency {code:?}: {e}")))
}

/// A currency from a path or argument, or `400` naming `currency`.
pub fn parse_currency(code: &str) -> Result<Currency, AppError> {
    Currency::parse(code).map_err(|e| ApiError::validation("currency", e.to_string()).into())
}

/// Which amounts a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// Greater than zero (a deposit).
    Positive,
    /// Zero or more (a credit limit).
    NonNegative,
    /// Not zero, either sign (an adjustment).
    NonZero,
    /// Any (a threshold).
    Any,
}

/// Parse a decimal string such as `"25.00"`, `"-3.5"` or `"0"` into minor units of `currency`;
/// more decimal places than the currency has (unless zeros) are refused, naming `field`.
pub fn parse_amount(field: &str, text: &str, currency: Currency, sign: Sign) -> Result<i64, AppError> {
    let bad = |reason: String| -> AppError { ApiError::validation(field, reason).into() };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let zero =
        digits == "0" || digits.strip_prefix("0.").is_some_and(|f| !f.is_empty() && f.bytes().all(|b| b == b'0'));
    let magnitude = if zero {
        if negative {
            return Err(bad("must not be \"-0\"".into()));
        }
        0
    } else {
        let d =
            Denomination::parse(digits).map_err(|e| bad(format!("must be a decimal string such as \"25.00\": {e}")))?;
        d.to_minor(currency.exponent()).map_err(|e| bad(format!("{e} for {currency}")))?
    };
    let minor = if negative { -magnitude } else { magnitude };
    let allowed = match sign {
        Sign::Positive => minor > 0,
        Sign::NonNegative => minor >= 0,
        Sign::NonZero => minor != 0,
        Sign::Any => true,
    };
    if !allowed {
        let rule = match sign {
            Sign::Positive => "must be greater than zero",
            Sign::NonNegative => "must be zero or more",
            Sign::NonZero | Sign::Any => "must not be zero",
        };
        return Err(bad(rule.into()));
    }
    Ok(minor)
}

/// A memo trimmed and checked: at most [`MAX_MEMO_CHARS`] characters, no control characters.
/// `required`: an empty memo is refused; otherwise it is `None`.
pub fn parse_memo(memo: Option<&str>, required: bool) -> Result<Option<String>, AppError> {
    let memo = memo.map(str::trim).filter(|m| !m.is_empty());
    match memo {
        None if required => Err(ApiError::validation("memo", "is required: say why").into()),
        None => Ok(None),
        Some(m) if m.chars().count() > MAX_MEMO_CHARS => {
            Err(ApiError::validation("memo", format!("must be at most {MAX_MEMO_CHARS} characters")).into())
        }
        Some(m) if m.chars().any(char::is_control) => {
            Err(ApiError::validation("memo", "must be one line without control characters").into())
        }
        Some(m) => Ok(Some(m.to_owned())),
    }
}

/// Why a credit limit is refused when the client owes more.
pub const LIMIT_BELOW_OWED: &str = "the account would owe more than its credit limit: the balance plus the credit \
                                    limit must stay at or above zero";
/// Why an adjustment is refused when it would break the credit limit.
pub const ADJUSTMENT_BEYOND_CREDIT: &str = "the adjustment would take the balance below what the credit limit allows";

/// The `400` of a change that would leave the account owing more than its credit limit.
pub fn beyond_credit_error(field: &str, reason: &str) -> ApiError {
    ApiError::validation(field, format!("{reason}; nothing was changed"))
}

/// `e`, or `400` naming `field` when it is the balance breaking its credit limit.
fn beyond_credit(e: sqlx::Error, field: &str, reason: &str) -> AppError {
    match &e {
        sqlx::Error::Database(db) if db.constraint() == Some(WITHIN_CREDIT) => {
            beyond_credit_error(field, reason).into()
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("22003") => {
            ApiError::validation(field, "would take the balance past the largest amount an account holds").into()
        }
        _ => e.into(),
    }
}

async fn client_exists(conn: &mut PgConnection, client: Uuid) -> Result<(), AppError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM clients WHERE id = $1").bind(client).fetch_optional(conn).await?;
    found.map(|_| ()).ok_or_else(|| no_client(client))
}

/// A client's accounts and discounts.
pub async fn show(pool: &PgPool, client: Uuid) -> Result<Funding, AppError> {
    let mut conn = pool.acquire().await?;
    client_exists(&mut conn, client).await?;
    let rows: Vec<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM funding_accounts WHERE client_id = $1 ORDER BY currency"
    )))
    .bind(client)
    .fetch_all(&mut *conn)
    .await?;
    let discounts: Vec<Discount> = sqlx::query_as(
        "SELECT client_id, product_id, discount_bps, updated_at FROM client_discounts
          WHERE client_id = $1 ORDER BY product_id",
    )
    .bind(client)
    .fetch_all(&mut *conn)
    .await?;
    let accounts = rows.iter().map(AccountRow::to_account).collect::<Result<_, _>>()?;
    Ok(Funding { client_id: client, accounts, discounts })
}

/// The accounts of each of `clients` (for a listing), by client and currency.
pub async fn accounts_of(pool: &PgPool, clients: &[Uuid]) -> Result<Vec<Account>, AppError> {
    let rows: Vec<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM funding_accounts WHERE client_id = ANY($1) ORDER BY client_id, currency"
    )))
    .bind(clients)
    .fetch_all(pool)
    .await?;
    rows.iter().map(AccountRow::to_account).collect()
}

/// The account of `client` in `currency`, locked for the rest of the transaction.
async fn lock_account(tx: &mut PgConnection, client: Uuid, currency: Currency) -> Result<Option<AccountRow>, AppError> {
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM funding_accounts WHERE client_id = $1 AND currency = $2 FOR UPDATE"
    )))
    .bind(client)
    .bind(currency.code())
    .fetch_optional(tx)
    .await?;
    Ok(row)
}

/// Open `client`'s account in `currency`, or change its settings; returns the account and
/// whether it was opened. Audited as `funding.open` or `funding.set`, with before and after.
pub async fn set_account(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    currency: Currency,
    change: &AccountChange,
) -> Result<(Account, bool), AppError> {
    let credit_limit = change
        .credit_limit
        .as_deref()
        .map(|t| parse_amount("credit_limit", t, currency, Sign::NonNegative))
        .transpose()?;
    let low_balance = match &change.low_balance {
        Some(Some(t)) => Some(Some(parse_amount("low_balance", t, currency, Sign::Any)?)),
        Some(None) => Some(None),
        None => None,
    };
    let mut tx = pool.begin().await?;
    client_exists(&mut tx, client).await?;
    let before = lock_account(&mut tx, client, currency).await?;
    let opened = before.is_none();
    let credit_limit = credit_limit.unwrap_or_else(|| before.as_ref().map_or(0, |b| b.credit_limit_minor));
    let low_balance = low_balance.unwrap_or_else(|| before.as_ref().and_then(|b| b.low_balance_minor));
    let credit_voids = change.credit_voids.unwrap_or_else(|| before.as_ref().is_none_or(|b| b.credit_voids));
    // An insert of a new account, or an update of the locked one (ON CONFLICT cannot race: a
    // second opener waits on the primary key and then updates).
    let after: AccountRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO funding_accounts (client_id, currency, credit_limit_minor, low_balance_minor, credit_voids)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (client_id, currency) DO UPDATE
            SET credit_limit_minor = EXCLUDED.credit_limit_minor, low_balance_minor = EXCLUDED.low_balance_minor,
                credit_voids = EXCLUDED.credit_voids, updated_at = now()
         RETURNING {ACCOUNT_COLUMNS}"
    )))
    .bind(client)
    .bind(currency.code())
    .bind(credit_limit)
    .bind(low_balance)
    .bind(credit_voids)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| beyond_credit(e, "credit_limit", LIMIT_BELOW_OWED))?;
    let account = after.to_account()?;
    let settings = |credit_limit: i64, low: Option<i64>, voids: bool| {
        serde_json::json!({
            "credit_limit": currency.format_minor(credit_limit),
            "low_balance": low.map(|t| currency.format_minor(t)),
            "credit_voids": voids,
        })
    };
    let change = serde_json::json!({
        "currency": currency.code(),
        "before": before.as_ref().map(|b| settings(b.credit_limit_minor, b.low_balance_minor, b.credit_voids)),
        "after": settings(after.credit_limit_minor, after.low_balance_minor, after.credit_voids),
    });
    let action = if opened { "funding.open" } else { "funding.set" };
    audit::record(&mut tx, actor, action, &client.to_string(), change).await?;
    tx.commit().await?;
    Ok((account, opened))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn amounts_parse_exactly_in_the_currencys_exponent() {
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(parse_amount("a", "25.00", eur(), Sign::Positive).unwrap(), 2500);
        assert_eq!(parse_amount("a", "25", eur(), Sign::Positive).unwrap(), 2500);
        assert_eq!(parse_amount("a", "-3.5", eur(), Sign::NonZero).unwrap(), -350);
        assert_eq!(parse_amount("a", "0", eur(), Sign::NonNegative).unwrap(), 0);
        assert_eq!(parse_amount("a", "0.00", eur(), Sign::Any).unwrap(), 0);
        assert_eq!(parse_amount("a", "-12", eur(), Sign::Any).unwrap(), -1200);
        assert_eq!(parse_amount("a", "500", jpy, Sign::Positive).unwrap(), 500);
        for (text, sign) in [
            ("25.001", Sign::Positive),
            ("1.5", Sign::Any),
            ("0", Sign::Positive),
            ("0", Sign::NonZero),
            ("-1", Sign::Positive),
            ("-1", Sign::NonNegative),
            ("-0", Sign::Any),
            ("", Sign::Any),
            ("1e3", Sign::Any),
            (" 5", Sign::Any),
            ("--5", Sign::Any),
            ("0.", Sign::Any),
            ("00", Sign::Any),
        ] {
            let currency = if text == "1.5" { jpy } else { eur() };
            let e = parse_amount("amount", text, currency, sign).expect_err(text).to_api_error();
            assert_eq!(e.code, ErrorCode::ValidationFailed, "{text}");
            assert_eq!(e.details.as_ref().unwrap()["field"], "amount", "{text}");
        }
    }

    #[test]
    fn memos_are_one_trimmed_line_of_at_most_500_characters() {
        assert_eq!(parse_memo(Some("  wire 42 "), true).unwrap().as_deref(), Some("wire 42"));
        assert_eq!(parse_memo(Some("   "), false).unwrap(), None);
        assert!(parse_memo(None, true).is_err());
        assert!(parse_memo(Some(" "), true).is_err());
        assert!(parse_memo(Some("a\nb"), false).is_err());
        assert!(parse_memo(Some(&"é".repeat(500)), true).is_ok());
        assert!(parse_memo(Some(&"é".repeat(501)), true).is_err());
    }
}
