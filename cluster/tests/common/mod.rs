//! What the cluster's tests share: a small aggregate, and nodes on local
//! JetStream and etcd services.

#![allow(dead_code)]

use eventfold_cluster::local::LocalServices;
use eventfold_cluster::{ClusterNode, NodeConfig};
use eventfold_runtime::domain::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A counter: `Add(n)` adds, `Add(0)` is refused.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct Counter {
    pub total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Cmd {
    Add(u64),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Ev {
    Added(u64),
}

impl DomainEvent for Ev {
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum CounterError {
    #[error("zero")]
    Zero,
}

impl Aggregate for Counter {
    const KIND: &'static str = "counter";
    type Command = Cmd;
    type Event = Ev;
    type Error = CounterError;

    fn handle(&self, command: Cmd) -> Result<Vec<Ev>, CounterError> {
        match command {
            Cmd::Add(0) => Err(CounterError::Zero),
            Cmd::Add(n) => Ok(vec![Ev::Added(n)]),
        }
    }

    fn apply(&mut self, event: &Ev) {
        let Ev::Added(n) = event;
        self.total += n;
    }
}

/// A node of `services`' cluster named `name`, its replica under `dir`.
pub fn node(
    services: &LocalServices,
    dir: &Path,
    name: &str,
    partitions: u32,
    replicas: usize,
) -> Result<ClusterNode, Box<dyn std::error::Error>> {
    let mut config = NodeConfig::new("test", name, dir.join(name));
    config.partitions = partitions;
    config.nats_urls = services.nats_urls();
    config.etcd_endpoints = services.etcd_endpoints();
    config.log.replicas = replicas;
    config.lease_ttl = Duration::from_secs(3);
    config.rebalance_every = Duration::from_millis(100);
    Ok(ClusterNode::builder(config)
        .aggregate::<Counter>()
        .runtime(|b| b.shards(2))
        .start()?)
}

/// Waits until `check` holds, up to `limit`.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether `nodes` together hold every one of `partitions` exactly once.
pub fn covered(nodes: &[&ClusterNode], partitions: u32) -> bool {
    let mut all: Vec<u32> = nodes.iter().flat_map(|n| n.partitions()).collect();
    all.sort_unstable();
    all == (0..partitions).collect::<Vec<_>>()
}

/// Executes `Add(n)` on `id` through `node`, retrying with the same command
/// id while the owner is unavailable, up to `limit`; the outcome's version
/// and position, and how long it took.
pub fn add_retrying(
    io: &tokio::runtime::Runtime,
    node: &ClusterNode,
    id: &str,
    n: u64,
    limit: Duration,
) -> Result<(u64, u64, Duration), Box<dyn std::error::Error>> {
    let command_id = CommandId::random();
    let started = Instant::now();
    loop {
        let result = io.block_on(
            node.execute::<Counter>(
                id,
                Cmd::Add(n),
                eventfold_runtime::ExecuteOptions::new()
                    .command_id(command_id)
                    .timeout(Duration::from_secs(5)),
            ),
        );
        match result {
            Ok(outcome) => {
                return Ok((
                    outcome.version,
                    outcome.position.unwrap_or(0),
                    started.elapsed(),
                ));
            }
            Err(
                eventfold_cluster::ClusterCommandError::OwnerUnavailable { .. }
                | eventfold_cluster::ClusterCommandError::Moved { .. }
                | eventfold_cluster::ClusterCommandError::Timeout(_),
            ) if started.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => return Err(error.into()),
        }
    }
}
