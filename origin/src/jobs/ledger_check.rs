//! `ledger-check` (every 5 minutes): every funding account's `balance_minor` against the sum of
//! its ledger entries (credits to the client less debits from it), read from one snapshot.
//! Each divergence is an ERROR log line with both figures; the run's counts say how many
//! accounts there are, how many diverge and how many are low, and the gauges
//! `allot_ledger_divergent_accounts` and `allot_funding_accounts_low` carry the last two.
//! The job only reports: a divergence is a bug (or a hand edit) for a person to look at.

use std::time::Duration;

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{Counts, Job, JobContext};

/// Compares balances with their ledgers.
pub struct LedgerCheck;

/// The most divergent accounts one run logs by name (all are counted).
pub const MAX_LOGGED: i64 = 1000;

/// A funding account whose balance is not the sum of its entries.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Divergent {
    /// The client.
    pub client_id: Uuid,
    /// The account's currency.
    pub currency: String,
    /// `funding_accounts.balance_minor`.
    pub balance_minor: i64,
    /// The sum of the account's ledger entries.
    pub ledger_minor: i64,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Funding accounts.
    pub accounts: i64,
    /// Accounts at or below their low-balance threshold.
    pub low: i64,
    /// Accounts whose balance is not the sum of their entries.
    pub divergent: i64,
    /// The first [`MAX_LOGGED`] of them, by client and currency.
    pub examples: Vec<Divergent>,
}

/// Each account's ledger sum, beside its balance (one row per account).
const LEDGER_SUMS: &str = "
    SELECT a.client_id, a.currency, a.balance_minor, a.low_balance_minor,
           COALESCE(e.ledger_minor, 0)::bigint AS ledger_minor
      FROM funding_accounts a
      LEFT JOIN (SELECT client_id, currency,
                        sum(CASE WHEN credit_account = 'client' THEN amount_minor ELSE -amount_minor END) AS ledger_minor
                   FROM ledger_entries GROUP BY client_id, currency) e
        ON e.client_id = a.client_id AND e.currency = a.currency";

/// Check every account, in one repeatable-read snapshot (a balance and its entries change in
/// one transaction, so a consistent snapshot never shows a divergence that is not there).
pub async fn check(pool: &sqlx::PgPool) -> anyhow::Result<Findings> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let (accounts, low, divergent): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*),
                count(*) FILTER (WHERE low_balance_minor IS NOT NULL AND balance_minor <= low_balance_minor),
                count(*) FILTER (WHERE balance_minor <> ledger_minor)
           FROM ({LEDGER_SUMS}) s"
    )))
    .fetch_one(&mut *tx)
    .await?;
    let examples: Vec<Divergent> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT client_id, currency, balance_minor, ledger_minor FROM ({LEDGER_SUMS}) s
          WHERE balance_minor <> ledger_minor ORDER BY client_id, currency LIMIT $1"
    )))
    .bind(MAX_LOGGED)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    debug_assert!(examples.len() as i64 == divergent.min(MAX_LOGGED));
    Ok(Findings { accounts, low, divergent, examples })
}

impl Job for LedgerCheck {
    fn name(&self) -> &'static str {
        "ledger-check"
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(300)
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>> {
        Box::pin(async move {
            let found = check(&ctx.db.primary).await?;
            for d in &found.examples {
                tracing::error!(
                    client_id = %d.client_id, currency = %d.currency, balance_minor = d.balance_minor,
                    ledger_minor = d.ledger_minor, difference_minor = d.balance_minor.saturating_sub(d.ledger_minor),
                    "ledger divergence: the account's balance is not the sum of its ledger entries"
                );
            }
            if found.divergent > MAX_LOGGED {
                tracing::error!(
                    divergent = found.divergent,
                    logged = MAX_LOGGED,
                    "ledger divergence: more divergent accounts than logged"
                );
            }
            metrics::gauge!("allot_ledger_divergent_accounts").set(found.divergent as f64);
            metrics::gauge!("allot_funding_accounts_low").set(found.low as f64);
            let mut counts = Counts::new();
            counts.insert("accounts".into(), found.accounts.into());
            counts.insert("divergent".into(), found.divergent.into());
            counts.insert("low".into(), found.low.into());
            Ok(counts)
        })
    }
}
