//! Projections in the cluster: by default every node keeps each one over
//! its own replica; with `projections_once`, each partition of a
//! projection runs on one node, its read model written through the log to
//! every node (queries and read-your-writes waits answered anywhere), and
//! it moves with its checkpoint when its node dies. A placed projection
//! refuses a rebuild.

mod common;

use common::*;
use eventfold_cluster::local::LocalServices;
use eventfold_cluster::{ClusterNode, NodeConfig};
use eventfold_runtime::domain::*;
use eventfold_runtime::projection::{HandlerError, Projection, ReadModelTx, decode};
use eventfold_runtime::storage::Filter;
use eventfold_runtime::{ConsumerSettings, ConsumerState, ProjectionError};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const NAME: &str = "totals";
const COUNTERS: u64 = 16;

/// Each counter's total, and how many events this node applied.
struct Totals {
    applied: Arc<AtomicUsize>,
}

impl Projection for Totals {
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self) -> Filter {
        Filter::categories([Counter::KIND])
    }
    fn apply(
        &mut self,
        event: &RecordedEvent,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError> {
        self.applied.fetch_add(1, Ordering::SeqCst);
        let Ev::Added(n) = decode::<Ev>(event)?;
        let key = event.stream_id.as_str().as_bytes();
        let total: u64 = model.get_as(key)?.unwrap_or(0);
        model.put_as(key, &(total + n))
    }
}

fn totals_node(
    services: &LocalServices,
    dir: &Path,
    name: &str,
    applied: Arc<AtomicUsize>,
) -> Result<ClusterNode, Box<dyn std::error::Error>> {
    let mut config = NodeConfig::new("test", name, dir.join(name));
    config.partitions = 8;
    config.nats_urls = services.nats_urls();
    config.etcd_endpoints = services.etcd_endpoints();
    config.log.replicas = 1;
    config.lease_ttl = Duration::from_secs(3);
    config.rebalance_every = Duration::from_millis(100);
    config.projections_once = true;
    let settings = ConsumerSettings {
        partitions: 2,
        ..ConsumerSettings::default()
    };
    Ok(ClusterNode::builder(config)
        .aggregate::<Counter>()
        .runtime(move |b| {
            b.shards(2).projection(
                move || Totals {
                    applied: Arc::clone(&applied),
                },
                settings.clone(),
            )
        })
        .start()?)
}

fn total(node: &ClusterNode, i: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let key = format!("counter-c{i}");
    Ok(match node.runtime().query(NAME)?.get(key.as_bytes())? {
        Some(bytes) => eventfold_runtime::storage::payload::decode(&bytes)?,
        None => 0,
    })
}

fn runners(node: &ClusterNode) -> Vec<String> {
    node.process_managers()
}

#[test]
fn a_projection_placed_once_is_read_on_every_node_and_moves_when_its_node_dies() -> TestResult {
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 1, 1)?;
    let counts: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let mut nodes = Vec::new();
    // Names under which rendezvous hashing gives each node partitions.
    for (name, count) in ["node-a", "node-b", "node-c"].iter().zip(&counts) {
        nodes.push(totals_node(&services, dir.path(), name, Arc::clone(count))?);
    }
    let all: Vec<&ClusterNode> = nodes.iter().collect();
    let placed = |nodes: &[&ClusterNode]| {
        let mut held: Vec<String> = nodes.iter().flat_map(|n| runners(n)).collect();
        held.sort();
        held == vec![format!("{NAME}#0"), format!("{NAME}#1")]
    };
    let settled =
        || covered(&all, 8) && all.iter().all(|n| !n.partitions().is_empty()) && placed(&all);
    let state = || {
        all.iter()
            .map(|n| (n.partitions(), runners(n)))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(30), settled),
        "{:?}",
        state()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        wait_until(Duration::from_secs(30), settled),
        "{:?}",
        state()
    );

    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut last = 0;
    for i in 0..COUNTERS {
        last = add_retrying(
            &io,
            all[0],
            &format!("c{i}"),
            i + 1,
            Duration::from_secs(30),
        )?
        .1;
    }
    // Every node answers the read-your-writes wait and the query.
    for node in &all {
        node.runtime()
            .wait_for_blocking(NAME, last, Duration::from_secs(30))?;
        for i in 0..COUNTERS {
            assert_eq!(total(node, i)?, i + 1, "{} c{i}", node.name());
        }
    }
    // Each event was applied once, by the node that runs its partition.
    let applied: usize = counts.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(applied, COUNTERS as usize);
    let standing_by = nodes
        .iter()
        .filter(|n| runners(n).is_empty())
        .filter_map(|n| n.runtime().projection_status(NAME).ok())
        .flatten()
        .all(|status| status.state == ConsumerState::Standby);
    assert!(standing_by);
    assert!(matches!(
        all[0].runtime().rebuild_blocking(NAME),
        Err(ProjectionError::Placed(_))
    ));

    // A node that runs a partition dies: another takes it over from its
    // checkpoint, and the totals go on.
    let victim = nodes
        .iter()
        .position(|n| !runners(n).is_empty())
        .ok_or("a node runs a partition")?;
    let dead = nodes.remove(victim);
    drop(dead);
    let alive: Vec<&ClusterNode> = nodes.iter().collect();
    assert!(wait_until(Duration::from_secs(30), || placed(&alive)));
    for i in 0..COUNTERS {
        last = add_retrying(
            &io,
            alive[0],
            &format!("c{i}"),
            100,
            Duration::from_secs(30),
        )?
        .1;
    }
    for node in &alive {
        node.runtime()
            .wait_for_blocking(NAME, last, Duration::from_secs(30))?;
        for i in 0..COUNTERS {
            assert_eq!(total(node, i)?, i + 101, "{} c{i}", node.name());
        }
    }
    for node in nodes {
        node.shutdown();
    }
    Ok(())
}
