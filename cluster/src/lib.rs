//! eventfold across several machines: the event log on NATS JetStream,
//! membership and partition ownership in etcd, each node a runtime whose
//! store is a replica of the log.
#![deny(missing_docs)]

pub mod claims;
pub mod client;
pub mod follower;
pub mod local;
pub mod log;
pub mod node;
pub mod ownership;
pub mod partition;
pub mod route;
pub mod store;
pub mod wire;

pub use client::ClusterClient;
pub use node::{ClusterNode, NodeBuilder, NodeConfig, NodeError};
pub use route::ClusterCommandError;
pub use store::ClusterStore;
