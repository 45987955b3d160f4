//! eventfold across several machines: the event log on NATS JetStream,
//! membership and partition ownership in etcd, each node a runtime whose
//! store is a replica of the log. What it guarantees in each failure is in
//! ARCHITECTURE.md, "The cluster".
//!
//! ```no_run
//! use eventfold_cluster::{ClusterCommandError, ClusterNode, NodeConfig};
//! use eventfold_runtime::ExecuteOptions;
//! use eventfold_runtime::domain::{Aggregate, CommandId, DomainEvent};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { total: u64 }
//! #[derive(Serialize, Deserialize, Clone)]
//! struct Added(u64);
//! impl DomainEvent for Added {
//!     fn event_type(&self) -> &'static str { "Added" }
//! }
//! #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
//! #[error("zero")]
//! struct Zero;
//! impl Aggregate for Counter {
//!     const KIND: &'static str = "counter";
//!     type Command = u64;
//!     type Event = Added;
//!     type Error = Zero;
//!     fn handle(&self, n: u64) -> Result<Vec<Added>, Zero> {
//!         if n == 0 { Err(Zero) } else { Ok(vec![Added(n)]) }
//!     }
//!     fn apply(&mut self, event: &Added) { self.total += event.0; }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = NodeConfig::new("shop", "node-a", "/var/lib/eventfold/node-a");
//! config.nats_urls = vec!["nats://10.0.0.1:4222".into()];
//! config.etcd_endpoints = vec!["http://10.0.0.1:2379".into()];
//! let node = ClusterNode::builder(config).aggregate::<Counter>().start()?;
//! let io = tokio::runtime::Runtime::new()?;
//! let id = CommandId::random();
//! loop {
//!     let options = ExecuteOptions::new().command_id(id);
//!     match io.block_on(node.execute::<Counter>("c1", 5, options)) {
//!         // A failover or a move: the same command id is safe to send again.
//!         Err(ClusterCommandError::OwnerUnavailable { .. } | ClusterCommandError::Moved { .. }) => {}
//!         other => { other?; break; }
//!     }
//! }
//! node.shutdown();
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod claims;
pub mod client;
pub mod follower;
mod lease;
pub mod local;
pub mod log;
mod models;
pub mod node;
pub mod ownership;
pub mod partition;
pub mod route;
pub mod singletons;
pub mod store;
pub mod wire;

pub use client::ClusterClient;
pub use node::{ClusterNode, NodeBuilder, NodeConfig, NodeError};
pub use route::ClusterCommandError;
pub use store::ClusterStore;
