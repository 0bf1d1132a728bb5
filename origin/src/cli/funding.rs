//! `allot funding …` (accounts, top-ups, adjustments, statements) and `allot discount …`.

use std::io::Write;

use allot_origin::ops::Actor;
use allot_origin::ops::funding::{self, AccountChange, Entry, Period, Receipt, parse_currency};
use clap::Subcommand;
use futures::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::{admin_pool, fail, print_json};

fn rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("expected an RFC 3339 time: {e}"))
}

/// `allot funding …`.
#[derive(Subcommand)]
pub enum FundingAction {
    /// A client's accounts and discounts, as JSON.
    Show {
        /// The client's id.
        client: Uuid,
    },
    /// Open a client's account in a currency, or change its settings (unset options stay as
    /// they are; a new account has a credit limit of 0, no threshold, voids credited back).
    Set {
        /// The client's id.
        client: Uuid,
        /// ISO 4217 currency (EUR).
        currency: String,
        /// How far below zero the balance may go (500.00).
        #[arg(long)]
        credit_limit: Option<String>,
        /// The low-balance threshold (100.00).
        #[arg(long, conflicts_with = "no_low_balance", allow_hyphen_values = true)]
        low_balance: Option<String>,
        /// Clear the low-balance threshold.
        #[arg(long)]
        no_low_balance: bool,
        /// Whether voiding an allocated card credits its price back (true or false).
        #[arg(long)]
        credit_voids: Option<bool>,
    },
    /// Top up a client's account (the account must exist).
    Deposit {
        /// The client's id.
        client: Uuid,
        /// ISO 4217 currency.
        currency: String,
        /// A positive amount (250.00).
        amount: String,
        /// A payment reference, say.
        #[arg(long)]
        memo: Option<String>,
        /// Post at most once under this key (1-255 visible ASCII characters): run again with
        /// the same key, the command answers the entry it made instead of posting another.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Adjust a client's balance by a signed amount (-12.50 debits the client), saying why.
    Adjust {
        /// The client's id.
        client: Uuid,
        /// ISO 4217 currency.
        currency: String,
        /// A signed, non-zero amount.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Why (required).
        #[arg(long)]
        memo: String,
        /// Post at most once under this key, as for a deposit.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Write a client's statement in a currency as CSV (stdout, or --out FILE).
    Statement {
        /// The client's id.
        client: Uuid,
        /// ISO 4217 currency.
        currency: String,
        /// Entries at or after (RFC 3339); default: from the first.
        #[arg(long, value_parser = rfc3339)]
        from: Option<OffsetDateTime>,
        /// Entries before (RFC 3339); default: now.
        #[arg(long, value_parser = rfc3339)]
        to: Option<OffsetDateTime>,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// The entry as JSON; a repeat under the same key says on stderr that nothing was posted.
fn print_receipt(receipt: Receipt) -> anyhow::Result<()> {
    if receipt.replayed {
        eprintln!("already posted under this idempotency key (entry {}); nothing was written", receipt.posted.entry_id);
    }
    print_json(&receipt.posted)
}

/// Run `allot funding …`.
pub async fn run(action: FundingAction) -> anyhow::Result<()> {
    let pool = admin_pool().await?;
    let actor = Actor::cli();
    match action {
        FundingAction::Show { client } => print_json(&funding::show(&pool, client).await.map_err(fail)?)?,
        FundingAction::Set { client, currency, credit_limit, low_balance, no_low_balance, credit_voids } => {
            let currency = parse_currency(&currency).map_err(fail)?;
            let low_balance = if no_low_balance { Some(None) } else { low_balance.map(Some) };
            let change = AccountChange { credit_limit, low_balance, credit_voids };
            let (account, opened) =
                funding::set_account(&pool, &actor, client, currency, &change).await.map_err(fail)?;
            println!("{} the {currency} account of client {client}", if opened { "opened" } else { "changed" });
            print_json(&account)?;
        }
        FundingAction::Deposit { client, currency, amount, memo, idempotency_key } => {
            let currency = parse_currency(&currency).map_err(fail)?;
            let entry = Entry { amount: &amount, memo: memo.as_deref(), idempotency_key: idempotency_key.as_deref() };
            print_receipt(funding::deposit(&pool, &actor, client, currency, &entry).await.map_err(fail)?)?;
        }
        FundingAction::Adjust { client, currency, amount, memo, idempotency_key } => {
            let currency = parse_currency(&currency).map_err(fail)?;
            let entry = Entry { amount: &amount, memo: Some(&memo), idempotency_key: idempotency_key.as_deref() };
            print_receipt(funding::adjust(&pool, &actor, client, currency, &entry).await.map_err(fail)?)?;
        }
        FundingAction::Statement { client, currency, from, to, out } => {
            let currency = parse_currency(&currency).map_err(fail)?;
            let statement = funding::statement(&pool, client, currency, Period { from, to }).await.map_err(fail)?;
            // A one-shot command: plain blocking writes are fine here.
            let sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::fs::File::create(path)?),
                None => Box::new(std::io::stdout()),
            };
            let mut sink = std::io::BufWriter::new(sink);
            let mut lines = statement.lines;
            while let Some(chunk) = lines.next().await {
                sink.write_all(&chunk.map_err(fail)?)?;
            }
            sink.flush()?;
            if let Some(path) = out {
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// `allot discount …`.
#[derive(Subcommand)]
pub enum DiscountAction {
    /// Set a client's discount on a product, in basis points (250 = 2.5 %).
    Set {
        /// The client's id.
        client: Uuid,
        /// The product's id.
        product: String,
        /// 0 to 10000.
        bps: i64,
    },
    /// Clear a client's discount on a product (it pays face value).
    Clear {
        /// The client's id.
        client: Uuid,
        /// The product's id.
        product: String,
    },
}

/// Run `allot discount …`.
pub async fn run_discount(action: DiscountAction) -> anyhow::Result<()> {
    let pool = admin_pool().await?;
    let actor = Actor::cli();
    match action {
        DiscountAction::Set { client, product, bps } => {
            print_json(&funding::set_discount(&pool, &actor, client, &product, bps).await.map_err(fail)?)?;
        }
        DiscountAction::Clear { client, product } => {
            match funding::clear_discount(&pool, &actor, client, &product).await.map_err(fail)? {
                Some(bps) => println!("cleared the discount of {bps} bps on {product}"),
                None => println!("client {client} had no discount on {product}; nothing changed"),
            }
        }
    }
    Ok(())
}
