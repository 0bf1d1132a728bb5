//! Funding, the operators' side: open or change a client's account in a currency (credit limit,
//! low-balance threshold, whether voids credit back), top-ups, adjustments, discounts, and
//! statements as CSV. Every change writes its ledger entry, its balance and its audit row in one
//! transaction; the ledger's account rules are in migration `20261127000011_funding`.

use allot_shared::{ApiError, Currency, Denomination, ErrorCode};
use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::audit::{self, Actor};
use crate::error::AppError;

/// The most characters a ledger memo may have (the schema's CHECK).
pub const MAX_MEMO_CHARS: usize = 500;
/// Ledger entries a statement reads per query while it streams.
pub const STATEMENT_PAGE: i64 = 1000;
/// The statement's header row (a CSV line, with its line end).
pub const STATEMENT_HEADER: &str = "entry_id,created_at,kind,amount,balance_after,allocation_id,card_id,memo,actor\r\n";

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

async fn product_exists(conn: &mut PgConnection, product: &str) -> Result<(), AppError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM products WHERE id = $1").bind(product).fetch_optional(conn).await?;
    found.map(|_| ()).ok_or_else(|| AppError::api(ErrorCode::NotFound, format!("no product {product:?}")))
}

/// Set `client`'s discount on `product` to `bps` basis points (0..=10000); audited as
/// `discount.set` with the previous value.
pub async fn set_discount(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    product: &str,
    bps: i64,
) -> Result<Discount, AppError> {
    if !(0..=10_000).contains(&bps) {
        return Err(ApiError::validation("discount_bps", "must be 0 to 10000 basis points (100 = 1 %)").into());
    }
    let bps = bps as i32;
    let mut tx = pool.begin().await?;
    client_exists(&mut tx, client).await?;
    product_exists(&mut tx, product).await?;
    let previous: Option<i32> = sqlx::query_scalar(
        "SELECT discount_bps FROM client_discounts WHERE client_id = $1 AND product_id = $2 FOR UPDATE",
    )
    .bind(client)
    .bind(product)
    .fetch_optional(&mut *tx)
    .await?;
    let discount: Discount = sqlx::query_as(
        "INSERT INTO client_discounts (client_id, product_id, discount_bps) VALUES ($1, $2, $3)
         ON CONFLICT (client_id, product_id) DO UPDATE SET discount_bps = EXCLUDED.discount_bps, updated_at = now()
         RETURNING client_id, product_id, discount_bps, updated_at",
    )
    .bind(client)
    .bind(product)
    .bind(bps)
    .fetch_one(&mut *tx)
    .await?;
    let change = serde_json::json!({ "product_id": product, "discount_bps": bps, "previous_bps": previous });
    audit::record(&mut tx, actor, "discount.set", &client.to_string(), change).await?;
    tx.commit().await?;
    Ok(discount)
}

/// Remove `client`'s discount on `product` (it pays face value); returns the discount it had,
/// `None` when it had none (nothing written, no audit row). Audited as `discount.clear`.
pub async fn clear_discount(
    pool: &PgPool,
    actor: &Actor,
    client: Uuid,
    product: &str,
) -> Result<Option<i32>, AppError> {
    let mut tx = pool.begin().await?;
    client_exists(&mut tx, client).await?;
    product_exists(&mut tx, product).await?;
    let removed: Option<i32> = sqlx::query_scalar(
        "DELETE FROM client_discounts WHERE client_id = $1 AND product_id = $2 RETURNING discount_bps",
    )
    .bind(client)
    .bind(product)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(bps) = removed {
        let change = serde_json::json!({ "product_id": product, "previous_bps": bps });
        audit::record(&mut tx, actor, "discount.clear", &client.to_string(), change).await?;
    }
    tx.commit().await?;
    Ok(removed)
}

/// One field of a CSV line: quoted when it holds a comma, a quote or a line break (quotes
/// doubled), and a text that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab)
/// is prefixed with `'`.
pub fn csv_field(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() };
    if guarded.contains([',', '"', '\n', '\r']) { format!("\"{}\"", guarded.replace('"', "\"\"")) } else { guarded }
}

/// One statement row as read.
#[derive(Debug, sqlx::FromRow)]
struct StatementRow {
    id: i64,
    created_at: OffsetDateTime,
    kind: String,
    signed_minor: i64,
    allocation_id: Option<Uuid>,
    card_id: Option<i64>,
    memo: Option<String>,
    actor: Option<String>,
}

/// The period of a statement: entries created at or after `from` and before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// At or after; `None`: from the account's first entry.
    pub from: Option<OffsetDateTime>,
    /// Before; `None`: now.
    pub to: Option<OffsetDateTime>,
}

/// A statement ready to stream: its file name and its CSV lines.
pub struct Statement {
    /// `statement-<client>-<currency>.csv`.
    pub file_name: String,
    /// The header row, then one row per entry, each line ending in CRLF. An error ends the
    /// stream early (the file is then cut short, and the transfer fails).
    pub lines: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, AppError>> + Send>>,
}

/// Streaming state: the snapshot's transaction, the last entry written, the running balance.
struct Cursor {
    tx: Transaction<'static, Postgres>,
    client: Uuid,
    currency: Currency,
    period: Period,
    after_id: i64,
    balance: i64,
    header: bool,
    done: bool,
}

/// The ledger entries of `client` in `currency` in `period`, oldest first (by entry id), as
/// CSV with a running balance that starts from the balance at `from` (the sum of the entries
/// before it). Streamed a page of [`STATEMENT_PAGE`] entries at a time from one repeatable-read
/// snapshot, so any length is one consistent statement. A missing account is `404` before
/// anything streams.
pub async fn statement(pool: &PgPool, client: Uuid, currency: Currency, period: Period) -> Result<Statement, AppError> {
    if let (Some(from), Some(to)) = (period.from, period.to)
        && from >= to
    {
        return Err(ApiError::validation("to", "must be after from").into());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    client_exists(&mut tx, client).await?;
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM funding_accounts WHERE client_id = $1 AND currency = $2")
            .bind(client)
            .bind(currency.code())
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(no_account(client, currency));
    }
    let opening: i64 = match period.from {
        None => 0,
        Some(from) => sqlx::query_scalar(
            "SELECT COALESCE(sum(CASE WHEN credit_account = 'client' THEN amount_minor ELSE -amount_minor END), 0)::bigint
               FROM ledger_entries WHERE client_id = $1 AND currency = $2 AND created_at < $3",
        )
        .bind(client)
        .bind(currency.code())
        .bind(from)
        .fetch_one(&mut *tx)
        .await?,
    };
    let cursor = Cursor { tx, client, currency, period, after_id: 0, balance: opening, header: true, done: false };
    let lines = futures::stream::try_unfold(cursor, next_lines);
    Ok(Statement { file_name: format!("statement-{client}-{currency}.csv"), lines: Box::pin(lines) })
}

/// The next chunk of a statement: the header, then a page of rows; `None` once all are out.
async fn next_lines(mut c: Cursor) -> Result<Option<(Bytes, Cursor)>, AppError> {
    if c.header {
        c.header = false;
        return Ok(Some((Bytes::from_static(STATEMENT_HEADER.as_bytes()), c)));
    }
    if c.done {
        return Ok(None);
    }
    let rows: Vec<StatementRow> = sqlx::query_as(
        "SELECT id, created_at, kind,
                CASE WHEN credit_account = 'client' THEN amount_minor ELSE -amount_minor END AS signed_minor,
                allocation_id, card_id, memo, actor
           FROM ledger_entries
          WHERE client_id = $1 AND currency = $2 AND id > $3
            AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5)
          ORDER BY id LIMIT $6",
    )
    .bind(c.client)
    .bind(c.currency.code())
    .bind(c.after_id)
    .bind(c.period.from)
    .bind(c.period.to)
    .bind(STATEMENT_PAGE)
    .fetch_all(&mut *c.tx)
    .await?;
    if rows.len() < STATEMENT_PAGE as usize {
        c.done = true;
    }
    if rows.is_empty() {
        // Ends the snapshot's read-only transaction (dropping it would roll back just the same).
        return Ok(None);
    }
    let mut out = String::with_capacity(rows.len() * 128);
    for r in &rows {
        c.balance = c.balance.checked_add(r.signed_minor).ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!("the running balance of client {} overflows", c.client))
        })?;
        debug_assert!(r.id > c.after_id, "entries come in id order");
        c.after_id = r.id;
        let at = r.created_at.to_offset(time::UtcOffset::UTC).format(&Rfc3339).map_err(anyhow::Error::from)?;
        let fields = [
            r.id.to_string(),
            at,
            r.kind.clone(),
            c.currency.format_minor(r.signed_minor),
            c.currency.format_minor(c.balance),
            r.allocation_id.map(|a| a.to_string()).unwrap_or_default(),
            r.card_id.map(|a| a.to_string()).unwrap_or_default(),
            csv_field(r.memo.as_deref().unwrap_or("")),
            csv_field(r.actor.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    Ok(Some((Bytes::from(out), c)))
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

    #[test]
    fn csv_fields_are_quoted_and_formula_safe() {
        assert_eq!(csv_field("plain memo"), "plain memo");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("-1,5"), "\"'-1,5\"");
        assert_eq!(csv_field("@x"), "'@x");
    }
}
