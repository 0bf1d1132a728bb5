//! The operators' commands: each parses its arguments, calls the same service function as the
//! operator API (acting as `cli:<os user>`), and prints the result.

pub mod cards;
pub mod clients;
pub mod events;
pub mod funding;
pub mod imports;
pub mod jobs;
pub mod operators;
pub mod stock;
pub mod webhooks;

use allot_origin::error::AppError;
use anyhow::Context;
use sqlx::PgPool;

/// The admin pool over `DATABASE_URL`.
pub async fn admin_pool() -> anyhow::Result<PgPool> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set: set it to the Postgres primary's URL")?;
    allot_origin::db::connect_admin(&url).await
}

/// The inventory cache the configuration names (`None` when `VALKEY_URL` is `none`).
pub fn cache(cfg: &allot_origin::config::Config) -> anyhow::Result<Option<allot_origin::cache::InventoryCache>> {
    cfg.valkey_url
        .as_ref()
        .map(|a| allot_origin::cache::InventoryCache::new(a, &cfg.valkey_prefix, cfg.valkey_timeout))
        .transpose()
        .map_err(Into::into)
}

/// A service error as a person at the terminal should read it: the caller-facing message, or
/// the whole cause for an internal failure.
pub fn fail(e: AppError) -> anyhow::Error {
    let api = e.to_api_error();
    match api.code {
        allot_shared::ErrorCode::Internal => anyhow::Error::new(e),
        _ => anyhow::anyhow!("{}", api.message),
    }
}

/// Print a value as indented JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
