//! ordersync keeps a company's own database in sync with the order systems it sells through.
//! See `docs/architecture.md` for the map of this crate.

pub mod config;
pub mod model;
pub mod providers;
pub mod sandbox;
pub mod store;
pub mod sync;
