//! `allot import …`: import a CSV file of cards (the same service function as
//! `POST /ops/v1/imports`), and show or list imports.

use std::path::PathBuf;
use std::time::Duration;

use allot_origin::config::Config;
use allot_origin::ops::Actor;
use allot_origin::ops::imports::{self, Import, ImportContext, ImportTarget};
use clap::{Args, Subcommand};
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::{admin_pool, fail, print_json};

/// How often progress is printed while a file is imported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// `allot import --product P --denomination D --file F`, or `allot import show|list`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ImportArgs {
    #[command(subcommand)]
    action: Option<ImportAction>,
    /// Product id.
    #[arg(long, required = true)]
    product: Option<String>,
    /// Denomination, e.g. 25.00.
    #[arg(long, required = true)]
    denomination: Option<String>,
    /// The CSV file: a header line (code[,pin][,expires_at]), then one card per line.
    #[arg(long, required = true)]
    file: Option<PathBuf>,
}

/// `allot import show|list`.
#[derive(Subcommand)]
pub enum ImportAction {
    /// One import, with its progress and problems.
    Show {
        /// The import's id.
        id: Uuid,
    },
    /// Imports, newest first.
    List {
        /// Rows (1-100).
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// Run `allot import …`.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    match args.action {
        Some(ImportAction::Show { id }) => print_json(&imports::get(&admin_pool().await?, id).await.map_err(fail)?),
        Some(ImportAction::List { limit, cursor }) => list(limit, cursor.as_deref()).await,
        None => {
            let (Some(product), Some(denomination), Some(file)) = (args.product, args.denomination, args.file) else {
                anyhow::bail!("--product, --denomination and --file are required");
            };
            import_file(product, denomination, file).await
        }
    }
}

async fn list(limit: Option<u32>, cursor: Option<&str>) -> anyhow::Result<()> {
    let pool = admin_pool().await?;
    let (items, next) = imports::list(&pool, cursor, limit).await.map_err(fail)?;
    for i in &items {
        let at = i.created_at.format(&Rfc3339).unwrap_or_default();
        println!(
            "{} {at} {:<10} {} {:>9} {:>10} accepted {:>8} rejected  {}",
            i.id, i.state, i.product_id, i.denomination, i.accepted, i.rejected, i.created_by
        );
    }
    match next {
        Some(c) => println!("next page: --cursor {c}"),
        None => println!("(end)"),
    }
    Ok(())
}

async fn import_file(product_id: String, denomination: String, path: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let pool = admin_pool().await?;
    let cache = super::cache(&cfg)?;
    let body = imports::file_chunks(&path).await.map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let id = Uuid::now_v7();
    println!("import {id}: {} into {product_id} {denomination}", path.display());
    let printer = tokio::spawn(print_progress(pool.clone(), id));
    let ctx =
        ImportContext { pool: &pool, cache: cache.as_ref(), keys: &cfg.card_keys, max_bytes: cfg.import_max_bytes };
    let expected_bytes = tokio::fs::metadata(&path).await.ok().map(|m| m.len());
    let target = ImportTarget { product_id, denomination, id: Some(id), expected_bytes };
    let result = imports::import(ctx, &Actor::cli(), &target, body).await;
    printer.abort();
    match result {
        Ok(import) => {
            report(&import);
            Ok(())
        }
        Err(e) => {
            if let Ok(import) = imports::get(&pool, id).await {
                report(&import);
            }
            Err(fail(e))
        }
    }
}

async fn print_progress(pool: sqlx::PgPool, id: Uuid) {
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        if let Ok(i) = imports::get(&pool, id).await {
            eprintln!("  {}: {} lines read, {} accepted, {} rejected", i.state, i.lines_read, i.accepted, i.rejected);
        }
    }
}

fn report(i: &Import) {
    println!("{}: {} lines read, {} accepted, {} rejected", i.state, i.lines_read, i.accepted, i.rejected);
    for p in i.problems.as_array().into_iter().flatten() {
        match p["line"].as_u64() {
            Some(line) => println!("  line {line}: {}", p["problem"].as_str().unwrap_or_default()),
            None => println!("  {}", p["problem"].as_str().unwrap_or_default()),
        }
    }
    if i.rejected > 0 && i.problems.as_array().is_some_and(|a| a.len() as i64 >= 100) {
        println!("  (the first 100 problems are listed)");
    }
}
