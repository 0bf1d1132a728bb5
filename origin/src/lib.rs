//! allot's regional origin: the allocation API, its stores, and the operator commands.
//!
//! - [`config`]: settings from the environment, validated at start
//! - [`db`]: Postgres pools, embedded migrations, the schema check
//! - [`valkey`]: where Valkey is (a server or a cluster) and the one connection type
//! - [`cache`]: the Valkey sorted-set inventory cache
//! - [`crypto`]: AES-256-GCM encryption of card codes
//! - [`allocation`]: idempotent, all-or-nothing allocations (start at its `mod.rs`)
//! - [`coalescer`]: batches any `In → Out` under load (the allocation path's two stages)
//! - [`rebuilder`]: single-flight rebuilds of cold cache sets
//! - [`products`], [`catalogue`]: the product directory and the public catalogue
//! - [`read_routing`]: reads that may lag go to the replica while it keeps up, else the primary
//! - [`auth`]: API key verification
//! - [`http`]: routers, middleware and handlers
//! - [`services`]: the one initialisation path of every process
//! - [`server`]: serving and graceful shutdown
//! - [`jobs`]: scheduled jobs (pump, reconciler, housekeeping) and the scheduler
//! - [`relay`]: the outbox relay
//! - [`ops`], [`demo`]: operator actions and demo data
//! - [`openapi`]: the OpenAPI document of the public and operator APIs
//! - [`funding`]: balances, prices and the double-entry ledger
//! - [`error`]: the one error type and its HTTP mapping
//! - [`outage`]: dependency outages, logged once each
//! - [`request_guard`]: the replay guard and each client's exact rate limit, in Valkey
//! - [`telemetry`]: structured logging
//! - [`webhooks`]: clients' webhook endpoints and the delivery of events to them

pub mod allocation;
pub mod auth;
pub mod cache;
pub mod catalogue;
pub mod coalescer;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod error;
pub mod funding;
pub mod http;
pub mod jobs;
pub mod openapi;
pub mod ops;
pub mod outage;
pub mod products;
pub mod read_routing;
pub mod rebuilder;
pub mod relay;
pub mod request_guard;
pub mod server;
pub mod services;
pub mod telemetry;
pub mod valkey;
pub mod webhooks;
