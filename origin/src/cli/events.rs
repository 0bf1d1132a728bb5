//! `allot events`: events from Postgres in the relay's order, as `GET /ops/v1/events` lists them.

use allot_origin::config::Config;
use allot_origin::ops::events;
use clap::Args;

use super::{admin_pool, fail, print_json};

/// `allot events`.
#[derive(Args)]
pub struct EventsArgs {
    /// The id of the last event processed: print the events after it (absent or 0: from the
    /// oldest kept).
    #[arg(long)]
    after: Option<i64>,
    /// Events to print, 1-1000.
    #[arg(long, default_value_t = events::DEFAULT_LIMIT)]
    limit: u32,
}

/// Run `allot events`: one page as JSON (`items`, `next_after`, `has_more`).
pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let pool = admin_pool().await?;
    let page = events::list(&pool, args.after, Some(args.limit), cfg.events_retention).await.map_err(fail)?;
    print_json(&page)
}
