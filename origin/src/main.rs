//! `allot`: one binary, many subcommands.

use std::process::ExitCode;

use allot_origin::config::{Config, generate_card_key};
use allot_origin::services::Services;
use allot_origin::{db, demo, jobs, ops, server, telemetry};
use allot_shared::{Currency, Denomination};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod cli;

// glibc malloc took about a third of the server's own CPU under load (free-list consolidation
// across threads); mimalloc cuts that and gave ~15% more allocations/s on the 2-core box.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// allot's regional origin. Configuration comes from environment variables (see README).
#[derive(Parser)]
#[command(name = "allot", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (public listener) and health (operator listener).
    Server,
    /// Run continuous workers: the outbox relay and the webhook dispatcher.
    Worker,
    /// Run the scheduler: inventory pump, reconciler, housekeeping.
    Cron,
    /// Server, worker and cron in one process.
    RunAll,
    /// Scheduled jobs: list, pause, resume, re-time, run now, runs, divergences.
    Jobs {
        #[command(subcommand)]
        action: cli::jobs::JobsAction,
    },
    /// Apply or revert database migrations (never run implicitly).
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Demo data for local use.
    Demo {
        #[command(subcommand)]
        action: DemoAction,
    },
    /// Print a fresh card encryption key for ALLOT_CARD_KEYS.
    Keygen {
        /// The id to give the key.
        #[arg(long, default_value = "k1")]
        key_id: String,
    },
    /// Manage clients.
    Client {
        #[command(subcommand)]
        action: cli::clients::ClientAction,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        action: cli::clients::KeyAction,
    },
    /// Manage products.
    Product {
        #[command(subcommand)]
        action: ProductAction,
    },
    /// Rebuild the cache.
    Inventory {
        #[command(subcommand)]
        action: InventoryAction,
    },
    /// Manage operators and their tokens.
    Operator {
        #[command(subcommand)]
        action: cli::operators::OperatorAction,
    },
    /// Show the audit trail, newest first.
    Audit(cli::operators::AuditArgs),
    /// Clients' webhook endpoints: add, list, disable, enable, rotate secrets, deliveries, tests.
    Webhook {
        #[command(subcommand)]
        action: cli::webhooks::WebhookAction,
    },
    /// Print the OpenAPI document (public and operator APIs) as JSON; needs no database.
    Openapi,
    /// Stock per product and denomination; `allot stock threshold` sets a low-stock threshold.
    Stock(cli::stock::StockArgs),
    /// Import a CSV file of cards (all or nothing), or show and list imports.
    Import(cli::imports::ImportArgs),
    /// Void cards by ids, by import, or by product and denomination.
    Void(cli::cards::VoidArgs),
    /// Look allocations up (codes masked) or reveal one's codes.
    Allocation {
        #[command(subcommand)]
        action: cli::cards::AllocationAction,
    },
    /// Events in the relay's (commit) order after an event id, from Postgres, as JSON.
    Events(cli::events::EventsArgs),
    /// Clients' funding accounts: show, open or change, deposit, adjust, statements as CSV.
    Funding {
        #[command(subcommand)]
        action: cli::funding::FundingAction,
    },
    /// Clients' discounts per product: set or clear.
    Discount {
        #[command(subcommand)]
        action: cli::funding::DiscountAction,
    },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Revert the newest N migrations (default 1).
    Down {
        /// How many to revert.
        #[arg(default_value_t = 1)]
        steps: usize,
    },
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Subcommand)]
enum DemoAction {
    /// Create a demo client, key, catalogue and cards, and fill the cache.
    Seed {
        /// Active cards to keep per denomination.
        #[arg(long, default_value_t = 400)]
        cards_per_denomination: usize,
        /// Which catalogue: `standard` (gift-usd, games-eur, mobile-jpy) or `us` (store-usd,
        /// games-usd: a second region's, dollars only).
        #[arg(long, default_value = "standard")]
        catalogue: demo::Catalogue,
    },
}

#[derive(Subcommand)]
enum ProductAction {
    /// Create a product or add denominations to it.
    Upsert {
        /// Product id.
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// ISO 4217 currency.
        #[arg(long)]
        currency: String,
        /// Comma-separated denominations, e.g. 10.00,25.00.
        #[arg(long, value_delimiter = ',')]
        denominations: Vec<String>,
    },
}

#[derive(Subcommand)]
enum InventoryAction {
    /// Rebuild every product's cache set from Postgres.
    RebuildCache,
}

fn main() -> ExitCode {
    let mut telemetry = telemetry::init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Flush buffered spans before exiting.
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Which parts a process runs.
struct Roles {
    server: bool,
    worker: bool,
    cron: bool,
}

/// Run the given roles until SIGTERM/SIGINT, then shut down gracefully within the deadline.
async fn run_processes(roles: Roles) -> anyhow::Result<()> {
    let services = Services::init(Config::from_env()?)?;
    services.check_schema().await?;
    let deadline = services.config.shutdown_timeout;
    let token = CancellationToken::new();
    server::cancel_on_signals(token.clone());
    let mut tasks: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    if roles.server {
        let bound = server::bind(server::state_from(&services)).await?;
        tasks.spawn(bound.serve(token.clone()));
    } else {
        // Workers and schedulers are watched too: health and metrics on the operator listener.
        tasks.spawn(server::serve_operator(server::state_from(&services), token.clone()));
    }
    if roles.worker {
        match services.relay() {
            Some(relay) => {
                let t = token.clone();
                tasks.spawn(async move {
                    relay.run(t).await;
                    Ok(())
                });
            }
            None => tracing::warn!(
                "no events Valkey (ALLOT_EVENTS_URL is `none`, or unset with VALKEY_URL `none`): the outbox relay \
                 has nowhere to publish and is not started"
            ),
        }
        let dispatcher = services.webhook_dispatcher()?;
        let t = token.clone();
        tasks.spawn(async move {
            dispatcher.run(t).await;
            Ok(())
        });
    }
    if roles.cron {
        let jobs = jobs::registry(&services.config, services.cache.is_some());
        let ctx = services.job_context(token.clone());
        tasks.spawn(async move {
            jobs::run_scheduler(ctx, jobs).await;
            Ok(())
        });
    }
    let all = async {
        let mut first_error = None;
        while let Some(r) = tasks.join_next().await {
            let r = r.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = r {
                // One part failing stops the others: the process is unhealthy as a whole.
                token.cancel();
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    };
    tokio::select! {
        r = all => {
            tracing::info!("stopped");
            r
        }
        _ = async { token.cancelled().await; tokio::time::sleep(deadline).await } => {
            tracing::warn!(deadline = ?deadline, "work did not finish within the shutdown deadline; exiting");
            Ok(())
        }
    }
}

fn database_url() -> anyhow::Result<String> {
    std::env::var("DATABASE_URL").context("DATABASE_URL is not set: set it to the Postgres primary's URL")
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Server => run_processes(Roles { server: true, worker: false, cron: false }).await,
        Command::Worker => run_processes(Roles { server: false, worker: true, cron: false }).await,
        Command::Cron => run_processes(Roles { server: false, worker: false, cron: true }).await,
        Command::RunAll => run_processes(Roles { server: true, worker: true, cron: true }).await,
        Command::Jobs { action } => cli::jobs::run(action).await,
        Command::Migrate { action } => {
            let pool = db::connect_admin(&database_url()?).await?;
            match action {
                MigrateAction::Up => {
                    println!("applied {} migration(s)", db::migrate_up(&pool).await?)
                }
                MigrateAction::Down { steps } => {
                    println!("reverted {} migration(s)", db::migrate_down(&pool, steps).await?)
                }
                MigrateAction::Status => {
                    for m in db::migration_status(&pool).await? {
                        println!(
                            "{} {:<10} {}",
                            m.version,
                            if m.applied { "applied" } else { "pending" },
                            m.description
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Demo { action: DemoAction::Seed { cards_per_denomination, catalogue } } => {
            let cfg = Config::from_env()?;
            let pool = db::connect_admin(&cfg.database_url).await?;
            db::check_schema(&pool).await?;
            let cache = cli::cache(&cfg)?;
            let seeded = demo::seed(&pool, cache.as_ref(), &cfg, catalogue, cards_per_denomination).await?;
            println!("demo client: {}", demo::DEMO_CLIENT_ID);
            println!("demo cards added: {}", seeded.cards_added);
            println!("demo API key (shown once): {}", seeded.key.expose());
            Ok(())
        }
        Command::Keygen { key_id } => {
            println!("{}", generate_card_key(&key_id));
            Ok(())
        }
        Command::Client { action } => cli::clients::run_client(action).await,
        Command::Key { action } => cli::clients::run_key(action).await,
        Command::Void(args) => cli::cards::void(args).await,
        Command::Allocation { action } => cli::cards::allocation(action).await,
        Command::Events(args) => cli::events::run(args).await,
        Command::Funding { action } => cli::funding::run(action).await,
        Command::Discount { action } => cli::funding::run_discount(action).await,
        Command::Product { action: ProductAction::Upsert { id, name, currency, denominations } } => {
            let pool = db::connect_admin(&database_url()?).await?;
            let currency = Currency::parse(&currency).map_err(anyhow::Error::msg)?;
            let denominations = denominations
                .iter()
                .map(|d| Denomination::parse(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            ops::upsert_product(&pool, &ops::Actor::cli(), &id, &name, currency, &denominations).await?;
            println!("product {id} ready");
            Ok(())
        }
        Command::Operator { action } => cli::operators::run(action).await,
        Command::Audit(args) => cli::operators::audit(args).await,
        Command::Webhook { action } => cli::webhooks::run(action).await,
        Command::Openapi => {
            print!("{}", allot_origin::openapi::pretty_json());
            Ok(())
        }
        Command::Stock(args) => cli::stock::run(args).await,
        Command::Import(args) => cli::imports::run(args).await,
        Command::Inventory { action } => {
            let cfg = Config::from_env()?;
            let pool = db::connect_admin(&cfg.database_url).await?;
            let cache = cli::cache(&cfg)?;
            match action {
                InventoryAction::RebuildCache => {
                    let cache = cache.context("VALKEY_URL is `none`: there is no cache to rebuild")?;
                    let (products, cards) = ops::rebuild_all_caches(&pool, &cache).await?;
                    println!("rebuilt {products} product set(s) with {cards} card(s)");
                }
            }
            Ok(())
        }
    }
}
