//! `allot void …` and `allot allocation …`.

use allot_origin::config::Config;
use allot_origin::ops::Actor;
use allot_origin::ops::allocations::{self, AllocationLookup, AllocationPage};
use allot_origin::ops::voids::{self, VoidRequest, VoidSelector};
use clap::{ArgGroup, Args, Subcommand};

use super::{admin_pool, fail, print_json};

/// `allot void`: void cards by ids, by import, or by product and denomination.
#[derive(Args)]
#[command(group(ArgGroup::new("selector").required(true).args(["cards", "import", "product"])))]
pub struct VoidArgs {
    /// Comma-separated card ids (voided whatever their status).
    #[arg(long, value_delimiter = ',')]
    cards: Option<Vec<i64>>,
    /// An import's id.
    #[arg(long)]
    import: Option<uuid::Uuid>,
    /// A product id (with --denomination).
    #[arg(long, requires = "denomination")]
    product: Option<String>,
    /// A denomination, e.g. 25.00 (with --product).
    #[arg(long, requires = "product")]
    denomination: Option<String>,
    /// Why (1-500 characters); stored on each card and in its event.
    #[arg(long)]
    reason: String,
    /// With --import or --product: void allocated cards too.
    #[arg(long)]
    include_allocated: bool,
}

/// Run `allot void`.
pub async fn void(args: VoidArgs) -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let pool = admin_pool().await?;
    let cache = super::cache(&cfg)?;
    let selector = VoidSelector::from_fields(args.cards, args.import, args.product, args.denomination.as_deref())
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let req = VoidRequest { selector, reason: args.reason, include_allocated: args.include_allocated };
    let outcome = voids::void_cards(&pool, cache.as_ref(), &Actor::cli(), &req).await.map_err(fail)?;
    print_json(&outcome)
}

/// `allot allocation …`.
#[derive(Subcommand)]
pub enum AllocationAction {
    /// One allocation, codes masked.
    Show {
        /// The allocation's id.
        id: uuid::Uuid,
    },
    /// Allocations by client, client reference or card, newest first, codes masked.
    #[command(group(ArgGroup::new("by").required(true).args(["client", "reference", "card"])))]
    Find {
        /// A client's id.
        #[arg(long)]
        client: Option<uuid::Uuid>,
        /// A client reference.
        #[arg(long)]
        reference: Option<String>,
        /// A card id.
        #[arg(long)]
        card: Option<i64>,
        /// Allocations per page (1-100).
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One allocation's codes and PINs in clear (audited as allocation.reveal first).
    Reveal {
        /// The allocation's id.
        id: uuid::Uuid,
    },
}

/// Run `allot allocation …`.
pub async fn allocation(action: AllocationAction) -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let pool = admin_pool().await?;
    let keys = &cfg.card_keys;
    match action {
        AllocationAction::Show { id } => print_json(&allocations::show(&pool, keys, id).await.map_err(fail)?),
        AllocationAction::Find { client, reference, card, limit, cursor } => {
            let lookup = AllocationLookup::from_fields(None, client, reference, card)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let page = AllocationPage::parse(cursor.as_deref(), limit).map_err(fail)?;
            let (rows, next) = allocations::find(&pool, keys, &lookup, page).await.map_err(fail)?;
            print_json(&serde_json::json!({ "items": rows, "next_cursor": next }))
        }
        AllocationAction::Reveal { id } => {
            print_json(&allocations::reveal(&pool, keys, &Actor::cli(), id).await.map_err(fail)?)
        }
    }
}
