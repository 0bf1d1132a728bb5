//! `allot jobs …`: the schedule, pauses, re-timing, runs by hand and their history, and the
//! reconciler's divergences.

use allot_origin::config::Config;
use allot_origin::jobs::{self, RunOutcome};
use allot_origin::ops::Actor;
use allot_origin::ops::jobs as job_ops;
use allot_origin::ops::page::Page;
use allot_origin::services::Services;
use clap::Subcommand;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use super::fail;

/// `allot jobs …`.
#[derive(Subcommand)]
pub enum JobsAction {
    /// Run one job now (as a singleton: skipped if it is running elsewhere; runs even if paused).
    Run {
        /// The job's name (see `allot jobs list`).
        name: String,
    },
    /// List the jobs this configuration registers: schedule, enabled, override, last run.
    List,
    /// Pause a job: no scheduled run starts from its next tick on.
    Pause {
        /// The job's name.
        name: String,
    },
    /// Resume a paused job.
    Resume {
        /// The job's name.
        name: String,
    },
    /// Re-time a job, or go back to the interval in code.
    Schedule {
        /// The job's name.
        name: String,
        /// Run every N seconds (5 to 604800).
        #[arg(long, conflicts_with = "default", required_unless_present = "default")]
        every_secs: Option<i64>,
        /// Use the interval in code.
        #[arg(long)]
        default: bool,
    },
    /// A job's runs, newest first.
    Runs {
        /// The job's name.
        name: String,
        /// Rows (1-100).
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// The reconciler's divergences, newest first.
    Divergences {
        /// Only this product.
        #[arg(long)]
        product: Option<String>,
        /// Rows (1-100).
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
}

fn at(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn print_next(next: Option<String>) {
    match next {
        Some(c) => println!("next page: --cursor {c}"),
        None => println!("(end)"),
    }
}

/// Run `allot jobs …`.
pub async fn run(action: JobsAction) -> anyhow::Result<()> {
    let services = Services::init(Config::from_env()?)?;
    services.check_schema().await?;
    let registry = jobs::registry(&services.config, services.cache.is_some());
    let pool = &services.db.primary;
    let actor = Actor::cli();
    match action {
        JobsAction::Run { name } => {
            let ctx = services.job_context(CancellationToken::new());
            let (job, claimed) = job_ops::claim_by_hand(&ctx, &actor, &registry, &name).await.map_err(fail)?;
            println!("{name}: run {}", claimed.run_id());
            let outcome = jobs::run_claimed(job.as_ref(), &ctx, claimed).await?;
            println!("{name}: {outcome:?}");
            if let RunOutcome::Failed(e) = outcome {
                anyhow::bail!("{name} failed: {e}");
            }
        }
        JobsAction::List => {
            println!("{:<20} {:>9} {:>9} {:<8} last run", "job", "every_s", "override", "enabled");
            for j in job_ops::list(pool, &registry).await.map_err(fail)? {
                let last = j.last_runs.first().map_or_else(
                    || "never run".to_owned(),
                    |r| {
                        format!(
                            "{} at {}{}",
                            r.outcome,
                            at(r.started_at),
                            r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
                        )
                    },
                );
                let by = j.updated_by.as_ref().map_or(String::new(), |b| format!(" (changed by {b})"));
                let ovr = j.override_interval_secs.map_or_else(|| "-".to_owned(), |s| s.to_string());
                let enabled = if j.enabled { "yes" } else { "PAUSED" };
                println!("{:<20} {:>9} {:>9} {:<8} {last}{by}", j.name, j.interval_secs, ovr, enabled);
            }
        }
        JobsAction::Pause { name } => {
            job_ops::pause(pool, &actor, &registry, &name).await.map_err(fail)?;
            println!("{name}: paused (no scheduled run starts from its next tick)");
        }
        JobsAction::Resume { name } => {
            job_ops::resume(pool, &actor, &registry, &name).await.map_err(fail)?;
            println!("{name}: resumed");
        }
        JobsAction::Schedule { name, every_secs, default: _ } => {
            job_ops::schedule(pool, &actor, &registry, &name, every_secs).await.map_err(fail)?;
            match every_secs {
                Some(s) => println!(
                    "{name}: every {s} s (schedulers pick it up within {} s)",
                    jobs::OVERRIDE_REFRESH.as_secs()
                ),
                None => println!("{name}: the interval in code"),
            }
        }
        JobsAction::Runs { name, limit, cursor } => {
            let page = Page::parse(cursor.as_deref(), limit).map_err(fail)?;
            let (rows, next) = job_ops::runs(pool, &registry, &name, page).await.map_err(fail)?;
            for r in &rows {
                let finished = r.finished_at.map_or_else(|| "-".to_owned(), at);
                let slot = r.slot.map_or_else(|| "by hand".to_owned(), at);
                println!(
                    "{:>8} {} {finished} {:<9} {:<26} {slot} {} {}",
                    r.id,
                    at(r.started_at),
                    r.outcome,
                    r.instance,
                    r.counts,
                    r.error.as_deref().unwrap_or("")
                );
            }
            print_next(next);
        }
        JobsAction::Divergences { product, limit, cursor } => {
            let page = Page::parse(cursor.as_deref(), limit).map_err(fail)?;
            let (rows, next) = job_ops::divergences(pool, product.as_deref(), page).await.map_err(fail)?;
            println!(
                "{:>8} {:<25} {:<20} {:>12} {:>10} {:>10} healed",
                "id", "at", "product", "denomination", "postgres", "cache"
            );
            for d in &rows {
                let cache = d.cache_active.map_or_else(|| "missing".to_owned(), |n| n.to_string());
                println!(
                    "{:>8} {:<25} {:<20} {:>12} {:>10} {:>10} {}",
                    d.id,
                    at(d.at),
                    d.product_id,
                    d.denomination_minor,
                    d.postgres_active,
                    cache,
                    d.healed
                );
            }
            print_next(next);
        }
    }
    Ok(())
}
