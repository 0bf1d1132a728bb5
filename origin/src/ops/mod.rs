//! Operator actions, one service layer under both the operator API and the CLI. Every mutating
//! action writes its audit row in the transaction of its change.
//!
//! - [`audit`]: who acts, and the audit row
//! - [`operators`]: operators, their roles and tokens
//! - [`clients`]: clients and their API keys: listing, suspension, issue, revoke, rotation
//! - [`cards`]: products, card loads and cache rebuilds
//! - [`imports`]: streamed CSV imports of cards, all or nothing
//! - [`page`]: cursor pagination of listings
//! - [`stock`]: stock per bucket, low-stock thresholds and states
//! - [`jobs`]: scheduled jobs (pause, resume, re-time, run now) and the reconciler's divergences
//! - [`voids`]: voiding cards by ids, import or bucket
//! - [`allocations`]: allocation lookup with masked codes, and audited reveals
//! - [`events`]: events read back from the outbox in the relay's order, for catching up
//! - [`funding`]: funding accounts, top-ups, adjustments, discounts and CSV statements

pub mod allocations;
pub mod audit;
pub mod cards;
pub mod clients;
pub mod events;
pub mod funding;
pub mod imports;
pub mod jobs;
pub mod operators;
pub mod page;
pub mod stock;
pub mod voids;

pub use audit::Actor;
pub use cards::{NewCard, load_cards, rebuild_all_caches, rebuild_product_cache, upsert_product};
pub use clients::{create_client, issue_key, revoke_key, set_client_rate_limit};
