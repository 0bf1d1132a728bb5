//! Webhooks: clients' endpoints and the delivery of events to them, signed as Standard
//! Webhooks specifies (`allot_shared::webhook`).
//!
//! - [`endpoints`]: add, list, disable and enable endpoints, rotate their secrets (audited)
//! - [`address`]: which URLs an endpoint may have, and the resolver that keeps deliveries
//!   off private and loopback addresses
//! - [`fanout`]: each event the relay places, into the queue of every endpoint that wants it
//! - [`deliveries`]: an endpoint's delivery log, redelivery by hand, test events
//! - [`dispatcher`]: the worker that sends each endpoint's queue head first, with backoff, and
//!   disables an endpoint that keeps failing

pub mod address;
pub mod deliveries;
pub mod dispatcher;
pub mod endpoints;
pub mod fanout;

pub use dispatcher::Dispatcher;
