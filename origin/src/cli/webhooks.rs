//! `allot webhook …`: clients' webhook endpoints, their delivery logs, redelivery and tests.

use allot_origin::config::Config;
use allot_origin::ops::Actor;
use allot_origin::ops::page::Page;
use allot_origin::webhooks::{deliveries, endpoints};
use clap::Subcommand;
use uuid::Uuid;

use super::{admin_pool, fail, print_json};

/// `allot webhook …`.
#[derive(Subcommand)]
pub enum WebhookAction {
    /// Add an endpoint for a client and print its signing secret (shown once).
    Add {
        /// The client's id.
        #[arg(long)]
        client: Uuid,
        /// An https URL whose host resolves to public addresses.
        #[arg(long)]
        url: String,
        /// Comma-separated topics: allocation.created, card.voided, stock.low, stock.out.
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
    },
    /// A client's endpoints (never a secret).
    List {
        /// The client's id.
        #[arg(long)]
        client: Uuid,
    },
    /// One endpoint.
    Show {
        /// The endpoint's id.
        id: Uuid,
    },
    /// Disable an endpoint (nothing is queued or sent until it is enabled).
    Disable {
        /// The endpoint's id.
        id: Uuid,
    },
    /// Enable an endpoint (its retries start afresh).
    Enable {
        /// The endpoint's id.
        id: Uuid,
    },
    /// Give an endpoint a new secret (shown once); the old one signs beside it for a while.
    RotateSecret {
        /// The endpoint's id.
        id: Uuid,
    },
    /// An endpoint's deliveries, newest first, with their attempts.
    Deliveries {
        /// The endpoint's id.
        id: Uuid,
        /// Only pending, delivered or abandoned deliveries.
        #[arg(long)]
        state: Option<String>,
        /// Rows (1-100).
        #[arg(long)]
        limit: Option<u32>,
        /// The next_cursor of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Queue a delivery again, at the end of the endpoint's queue.
    Redeliver {
        /// The endpoint's id.
        id: Uuid,
        /// The delivery's id.
        delivery: i64,
    },
    /// Queue a webhook.test event for an endpoint.
    Test {
        /// The endpoint's id.
        id: Uuid,
    },
}

/// Run `allot webhook …`.
pub async fn run(action: WebhookAction) -> anyhow::Result<()> {
    let pool = admin_pool().await?;
    let actor = Actor::cli();
    match action {
        WebhookAction::Add { client, url, topics } => {
            let cfg = Config::from_env()?;
            let allow_private = cfg.webhooks.allow_private;
            let (endpoint, secret) =
                endpoints::create(&pool, &cfg.card_keys, &actor, client, &url, &topics, allow_private)
                    .await
                    .map_err(fail)?;
            println!("webhook endpoint {} added for client {client}", endpoint.id);
            println!("secret (shown once): {}", secret.expose());
        }
        WebhookAction::List { client } => print_json(&endpoints::list(&pool, client).await.map_err(fail)?)?,
        WebhookAction::Show { id } => print_json(&endpoints::show(&pool, id).await.map_err(fail)?)?,
        WebhookAction::Disable { id } => {
            let changed = endpoints::set_enabled(&pool, &actor, id, false).await.map_err(fail)?;
            println!("{}", if changed { "disabled" } else { "already disabled" });
        }
        WebhookAction::Enable { id } => {
            let changed = endpoints::set_enabled(&pool, &actor, id, true).await.map_err(fail)?;
            println!("{}", if changed { "enabled" } else { "already enabled" });
        }
        WebhookAction::RotateSecret { id } => {
            let cfg = Config::from_env()?;
            let (secret, until) =
                endpoints::rotate_secret(&pool, &cfg.card_keys, &actor, id, cfg.webhooks.secret_overlap)
                    .await
                    .map_err(fail)?;
            println!("the old secret also signs until {until}");
            println!("secret (shown once): {}", secret.expose());
        }
        WebhookAction::Deliveries { id, state, limit, cursor } => {
            let page = Page::parse(cursor.as_deref(), limit).map_err(fail)?;
            let (items, next) = deliveries::list(&pool, id, state.as_deref(), page).await.map_err(fail)?;
            print_json(&serde_json::json!({ "items": items, "next_cursor": next }))?;
        }
        WebhookAction::Redeliver { id, delivery } => {
            let queued = deliveries::redeliver(&pool, &actor, id, delivery).await.map_err(fail)?;
            println!("queued as delivery {queued}");
        }
        WebhookAction::Test { id } => {
            let queued = deliveries::send_test(&pool, &actor, id).await.map_err(fail)?;
            println!("test event queued as delivery {queued}");
        }
    }
    Ok(())
}
