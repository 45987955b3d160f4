//! The eventfold actor runtime.
//!
//! Re-exports the domain and storage crates so that a user depends on this
//! crate alone. The actors (router, shards, aggregates, bus, projections,
//! process managers) are built on top of these.
#![deny(missing_docs)]

pub use eventfold_domain as domain;
pub use eventfold_storage as storage;
