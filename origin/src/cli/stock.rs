//! `allot stock` and `allot stock threshold`.

use allot_origin::config::Config;
use allot_origin::ops::Actor;
use allot_origin::ops::stock::{self, BucketStock, StockFilter, StockState};
use clap::{Args, Subcommand};

use super::fail;

/// `allot stock`: every bucket's stock as a table, or a subcommand.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct StockArgs {
    #[command(subcommand)]
    action: Option<StockAction>,
    /// Only this product.
    #[arg(long)]
    product: Option<String>,
    /// Only buckets in this state now: ok, low or out.
    #[arg(long)]
    state: Option<String>,
}

/// `allot stock …`.
#[derive(Subcommand)]
pub enum StockAction {
    /// Set a bucket's low-stock threshold, or go back to the default.
    Threshold {
        /// Product id.
        #[arg(long)]
        product: String,
        /// Denomination, e.g. 25.00.
        #[arg(long)]
        denomination: String,
        /// Low at or below this many active cards.
        #[arg(long, conflicts_with = "default", required_unless_present = "default", allow_hyphen_values = true)]
        cards: Option<i64>,
        /// Use the configured default (ALLOT_STOCK_LOW_THRESHOLD).
        #[arg(long)]
        default: bool,
    },
}

fn optional<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn print_table(rows: &[BucketStock]) {
    println!(
        "{:<20} {:>12} {:>10} {:>10} {:>8} {:>8} {:>9} {:>8} {:>11} {:<5} {:<5} since",
        "product", "denomination", "active", "cached", "1h", "24h", "rate/h", "cover_d", "threshold", "state", "pub"
    );
    for r in rows {
        let threshold = format!(
            "{}{}",
            r.low_stock_threshold,
            if r.threshold_source == stock::ThresholdSource::Default { "*" } else { "" }
        );
        let since = r.published_state_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        println!(
            "{:<20} {:>12} {:>10} {:>10} {:>8} {:>8} {:>9.1} {:>8} {:>11} {:<5} {:<5} {since}",
            r.product_id,
            format!("{} {}", r.denomination, r.currency),
            r.active,
            optional(r.cached),
            r.allocated_1h,
            r.allocated_24h,
            r.rate_per_hour,
            optional(r.days_of_cover.map(|d| format!("{d:.1}"))),
            threshold,
            r.state.as_str(),
            r.published_state,
        );
    }
    println!("({} bucket(s); * = the default threshold; cached - = set missing or Valkey unreachable)", rows.len());
}

/// Run `allot stock …`.
pub async fn run(args: StockArgs) -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let pool = allot_origin::db::connect_admin(&cfg.database_url).await?;
    match args.action {
        None => {
            let cache = super::cache(&cfg)?;
            let state = args
                .state
                .as_deref()
                .map(StockState::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let filter = StockFilter { product_id: args.product, state };
            let rows = stock::list(&pool, cache.as_ref(), cfg.stock_low_threshold, &filter).await.map_err(fail)?;
            print_table(&rows);
        }
        Some(StockAction::Threshold { product, denomination, cards, default: _ }) => {
            let minor = stock::resolve_bucket(&pool, &product, &denomination).await.map_err(fail)?;
            stock::set_threshold(&pool, &Actor::cli(), &product, minor, cards).await.map_err(fail)?;
            match cards {
                Some(n) => println!("{product} {denomination}: low at or below {n} active card(s)"),
                None => println!("{product} {denomination}: the default threshold ({})", cfg.stock_low_threshold),
            }
        }
    }
    Ok(())
}
