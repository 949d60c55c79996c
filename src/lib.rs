//! ordersync keeps a company's own database in sync with the order systems it sells through.
//! See `docs/architecture.md` for the map of this crate.

pub mod app;
pub mod config;
pub mod demo;
pub mod lease;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod providers;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod sync;
