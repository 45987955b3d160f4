//! Process managers in the cluster: each runs on one node, sends its
//! commands to whichever node owns their partition, and when its node dies
//! another takes it over from the state the first wrote through the log
//! (instances, outbox, timers, checkpoint): every command once, every
//! timer fired once.

mod common;

use common::*;
use eventfold_cluster::local::LocalServices;
use eventfold_cluster::log::{Log, LogConfig};
use eventfold_cluster::singletons::fence_of;
use eventfold_cluster::{ClusterNode, NodeConfig};
use eventfold_runtime::domain::*;
use eventfold_runtime::process::*;
use eventfold_runtime::projection::decode;
use eventfold_runtime::projection::{EventHandler, HandlerError};
use eventfold_runtime::storage::{Direction, EventStore, Filter};
use eventfold_runtime::{ConsumerSettings, ConsumerState, RuntimeHandle};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NAME: &str = "relay";
const SOURCES: u64 = 12;
const LATER: Duration = Duration::from_secs(4);

/// For each `Added(n)` to `src{i}`: adds `n` to `dst{i}` at once, and 1
/// more `LATER`.
struct Relay;

impl ProcessManager for Relay {
    type State = u64;
    type Error = std::convert::Infallible;
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self) -> Filter {
        Filter::categories([Counter::KIND])
    }
    fn associate(&self, event: &RecordedEvent) -> Association {
        match event.stream_id.as_str().strip_prefix("counter-src") {
            Some(i) => Association::Start(format!("{i}-{}", event.version)),
            None => Association::Ignore,
        }
    }
    fn handle(
        &mut self,
        results: &mut u64,
        input: Input<'_>,
        effects: &mut Effects,
    ) -> Result<(), Self::Error> {
        let instance = effects.instance().to_owned();
        let target = format!("dst{}", instance.split('-').next().unwrap_or_default());
        match input {
            Input::Event(event) => {
                if let Ok(Ev::Added(n)) = decode::<Ev>(event) {
                    effects.send::<Counter>(&target, Cmd::Add(n));
                    effects.set_timer_after("later", LATER);
                }
            }
            Input::Result(_) => *results += 1,
            Input::Timer(_) => {
                effects.send::<Counter>(&target, Cmd::Add(1));
                effects.finish();
            }
        }
        Ok(())
    }
}

/// Who saw which event: (node, stream, version) → times.
type Seen = Arc<Mutex<HashMap<(String, String, u64), usize>>>;

/// Notes every counter event, and the node it ran on.
struct Audit {
    node: String,
    seen: Seen,
}

impl EventHandler for Audit {
    fn name(&self) -> &str {
        "audit"
    }
    fn filter(&self) -> Filter {
        Filter::categories([Counter::KIND])
    }
    fn handle(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let key = (
            self.node.clone(),
            event.stream_id.to_string(),
            event.version,
        );
        *self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
        Ok(())
    }
}

fn relay_node(
    services: &LocalServices,
    dir: &Path,
    name: &str,
) -> Result<ClusterNode, Box<dyn std::error::Error>> {
    relay_node_seen(services, dir, name, Seen::default())
}

fn relay_node_seen(
    services: &LocalServices,
    dir: &Path,
    name: &str,
    seen: Seen,
) -> Result<ClusterNode, Box<dyn std::error::Error>> {
    relay_node_partitioned(services, dir, name, seen, 1)
}

/// A node whose relay runs in `partitions` partitions.
fn relay_node_partitioned(
    services: &LocalServices,
    dir: &Path,
    name: &str,
    seen: Seen,
    partitions: usize,
) -> Result<ClusterNode, Box<dyn std::error::Error>> {
    let node = name.to_owned();
    let settings = ProcessSettings {
        partitions,
        ..ProcessSettings::default()
    };
    let mut config = NodeConfig::new("test", name, dir.join(name));
    config.partitions = 8;
    config.nats_urls = services.nats_urls();
    config.etcd_endpoints = services.etcd_endpoints();
    config.log.replicas = services.nats_urls().len();
    config.lease_ttl = Duration::from_secs(3);
    config.rebalance_every = Duration::from_millis(100);
    Ok(ClusterNode::builder(config)
        .aggregate::<Counter>()
        .runtime(|b| {
            b.shards(2)
                .process_manager(|| Relay, settings)
                .event_handler(
                    move || Audit {
                        node: node.clone(),
                        seen: Arc::clone(&seen),
                    },
                    ConsumerSettings::default(),
                )
        })
        .start()?)
}

fn events_of(runtime: &RuntimeHandle, id: &str) -> Vec<Ev> {
    let Ok(stream) = StreamId::new(format!("counter-{id}")) else {
        return Vec::new();
    };
    runtime
        .store()
        .read_stream(&stream, 1, Direction::Forward, 100)
        .map(|events| events.iter().filter_map(|e| decode::<Ev>(e).ok()).collect())
        .unwrap_or_default()
}

fn holders<'a>(nodes: &[&'a ClusterNode]) -> Vec<&'a ClusterNode> {
    nodes
        .iter()
        .copied()
        .filter(|n| n.process_managers().contains(&NAME.to_owned()))
        .collect()
}

#[test]
fn a_process_manager_runs_once_and_moves_with_its_state_when_its_node_dies() -> TestResult {
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 3, 3)?;
    let seen = Seen::default();
    let nodes = vec![
        relay_node_seen(&services, dir.path(), "node-a", Arc::clone(&seen))?,
        relay_node_seen(&services, dir.path(), "node-b", Arc::clone(&seen))?,
        relay_node_seen(&services, dir.path(), "node-c", Arc::clone(&seen))?,
    ];
    let all: Vec<&ClusterNode> = nodes.iter().collect();
    let audits = |nodes: &[&ClusterNode]| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n.process_managers().contains(&"audit".to_owned()))
            .map(|n| n.name().to_owned())
            .collect()
    };
    // Placed once every node is a member (until then, the first nodes
    // hold everything and hand some over as the others join).
    let settled = || {
        covered(&all, 8)
            && all.iter().all(|n| !n.partitions().is_empty())
            && holders(&all).len() == 1
            && audits(&all).len() == 1
    };
    assert!(wait_until(Duration::from_secs(30), settled));
    std::thread::sleep(Duration::from_millis(500));
    assert!(wait_until(Duration::from_secs(30), settled));
    let holder = holders(&all)[0].name().to_owned();
    let auditor = audits(&all)[0].clone();
    // The holder runs it; the others stand by.
    let placed = || {
        all.iter().all(|node| {
            let state = node.runtime().process_status(NAME).map(|s| s.state);
            match node.name() == holder {
                true => state == Ok(ConsumerState::Live),
                false => state == Ok(ConsumerState::Standby),
            }
        })
    };
    assert!(wait_until(Duration::from_secs(10), placed));

    // Commands through a node that does not run the process manager.
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sender = all
        .iter()
        .find(|n| n.name() != holder)
        .ok_or("a second node")?;
    for i in 0..SOURCES {
        add_retrying(
            &io,
            sender,
            &format!("src{i}"),
            i + 2,
            Duration::from_secs(30),
        )?;
    }
    // The first commands land (on the owners of the dst partitions) ...
    assert!(wait_until(Duration::from_secs(30), || (0..SOURCES).all(
        |i| events_of(sender.runtime(), &format!("dst{i}")) == vec![Ev::Added(i + 2)]
    )));
    // ... and every node reads the instances' state, written through the log.
    assert!(wait_until(Duration::from_secs(10), || {
        (0..SOURCES).all(|i| {
            sender
                .runtime()
                .process_instance::<u64>(NAME, &format!("{i}-1"))
                .is_ok_and(|view| view.is_some_and(|v| v.state == 1 && v.timers.len() == 1))
        })
    }));

    // The handler ran on one node only, once per event so far.
    let seen_by = |seen: &Seen| -> (Vec<String>, usize, usize) {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<String> = seen.keys().map(|(n, _, _)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        let events: std::collections::HashSet<(String, u64)> =
            seen.keys().map(|(_, s, v)| (s.clone(), *v)).collect();
        (nodes, events.len(), seen.values().sum())
    };
    assert!(wait_until(Duration::from_secs(30), || seen_by(&seen).1
        == 2 * SOURCES as usize));
    let (nodes_seen, _, times) = seen_by(&seen);
    assert_eq!(
        nodes_seen,
        vec![auditor.clone()],
        "one node runs the handler"
    );
    assert_eq!(times, 2 * SOURCES as usize, "each event once");

    // The holder dies before its timers are due.
    let mut survivors = Vec::new();
    for node in nodes {
        if node.name() == holder {
            drop(node);
        } else {
            survivors.push(node);
        }
    }
    let alive: Vec<&ClusterNode> = survivors.iter().collect();
    assert!(wait_until(Duration::from_secs(30), || holders(&alive)
        .len()
        == 1));
    // Its timers fire on the new holder, once each.
    assert!(wait_until(Duration::from_secs(30), || (0..SOURCES).all(
        |i| { events_of(alive[0].runtime(), &format!("dst{i}")).len() == 2 }
    )));
    std::thread::sleep(Duration::from_secs(1));
    // The handler saw the timers' events too, wherever it ran by then.
    assert!(wait_until(Duration::from_secs(30), || seen_by(&seen).1
        == 3 * SOURCES as usize));
    for i in 0..SOURCES {
        assert_eq!(
            events_of(alive[0].runtime(), &format!("dst{i}")),
            vec![Ev::Added(i + 2), Ev::Added(1)],
            "dst{i}: each command once"
        );
        let view = alive[0]
            .runtime()
            .process_instance::<u64>(NAME, &format!("{i}-1"))?
            .ok_or("an instance")?;
        assert_eq!(view.status, InstanceStatus::Finished);
    }
    // A graceful leave hands it over too.
    let leaving = holders(&alive)[0].name().to_owned();
    let mut rest = Vec::new();
    for node in survivors {
        if node.name() == leaving {
            node.shutdown();
        } else {
            rest.push(node);
        }
    }
    let last: Vec<&ClusterNode> = rest.iter().collect();
    assert!(wait_until(Duration::from_secs(30), || holders(&last).len() == 1));
    add_retrying(&io, last[0], "src0", 5, Duration::from_secs(30))?;
    assert!(wait_until(Duration::from_secs(30), || {
        events_of(last[0].runtime(), "dst0").len() == 3
    }));
    for node in rest {
        node.shutdown();
    }
    Ok(())
}

#[test]
fn a_process_manager_fenced_by_a_newer_marker_stands_down_and_resumes_under_its_own() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 1, 1)?;
    let node = relay_node(&services, dir.path(), "node-a")?;
    assert!(wait_until(Duration::from_secs(30), || covered(&[&node], 8)
        && holders(&[&node]).len() == 1));
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    add_retrying(&io, &node, "src0", 3, Duration::from_secs(30))?;
    assert!(wait_until(Duration::from_secs(30), || {
        events_of(node.runtime(), "dst0") == vec![Ev::Added(3)]
    }));
    // Another claimer's marker on the process manager's fence: the
    // node's next write of its state is refused by the log.
    let log = io.block_on(Log::connect(
        &services.nats_urls(),
        LogConfig {
            replicas: 1,
            ..LogConfig::default()
        },
    ))?;
    let fence = fence_of(NAME);
    let last = io
        .block_on(log.last_fence(fence))?
        .ok_or("the process manager's marker")?;
    io.block_on(log.write_fence(fence, last.token + 1_000_000, "intruder", last.sequence))?;
    add_retrying(&io, &node, "src1", 4, Duration::from_secs(30))?;
    // It stands down, claims again behind a marker of its own, and
    // handles what came meanwhile, once.
    let answered = wait_until(Duration::from_secs(30), || {
        events_of(node.runtime(), "dst1") == vec![Ev::Added(4)]
    });
    assert!(
        answered,
        "{:?} {:?} {:?}",
        node.process_managers(),
        node.runtime().process_status(NAME),
        events_of(node.runtime(), "dst1")
    );
    let now = io.block_on(log.last_fence(fence))?.ok_or("a marker")?;
    // The node's claim again (its key taken up again, or written anew once
    // the round released it), under a new marker: never an older token,
    // never the intruder's.
    assert!(now.token >= last.token, "tokens never go backwards");
    assert_ne!(now.token, last.token + 1_000_000, "the node's own marker");
    assert!(now.sequence > last.sequence);
    assert!(wait_until(Duration::from_secs(30), || (0..2).all(|i| {
        events_of(node.runtime(), &format!("dst{i}")).len() == 2
    })));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        events_of(node.runtime(), "dst0"),
        vec![Ev::Added(3), Ev::Added(1)]
    );
    assert_eq!(
        events_of(node.runtime(), "dst1"),
        vec![Ev::Added(4), Ev::Added(1)]
    );
    assert!(node.store().verify()?.is_clean());
    node.shutdown();
    Ok(())
}

#[test]
fn each_partition_of_a_partitioned_process_manager_runs_once_in_the_cluster() -> TestResult {
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 1, 1)?;
    let node = |name| relay_node_partitioned(&services, dir.path(), name, Seen::default(), 2);
    let nodes = [node("node-a")?, node("node-b")?];
    let all: Vec<&ClusterNode> = nodes.iter().collect();
    let runners = |all: &[&ClusterNode]| -> Vec<String> {
        let mut names: Vec<String> = all
            .iter()
            .flat_map(|n| n.process_managers())
            .filter(|name| name.starts_with(NAME))
            .collect();
        names.sort();
        names
    };
    // Each partition is placed as `relay#i`, on one node.
    let placed = || covered(&all, 8) && runners(&all) == ["relay#0", "relay#1"];
    assert!(wait_until(Duration::from_secs(30), placed));
    std::thread::sleep(Duration::from_millis(500));
    assert!(wait_until(Duration::from_secs(30), placed));
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for i in 0..SOURCES {
        add_retrying(
            &io,
            all[0],
            &format!("src{i}"),
            i + 2,
            Duration::from_secs(30),
        )?;
    }
    // Every instance's command once, and its timer once (each partition's
    // timers where that partition runs).
    assert!(wait_until(Duration::from_secs(30), || (0..SOURCES).all(
        |i| events_of(all[1].runtime(), &format!("dst{i}")).len() == 2
    )));
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..SOURCES {
        assert_eq!(
            events_of(all[1].runtime(), &format!("dst{i}")),
            vec![Ev::Added(i + 2), Ev::Added(1)],
            "dst{i}: each command once"
        );
    }
    let status = all[0].runtime().process_status(NAME)?;
    assert_eq!(status.partitions, 2);
    for node in nodes {
        node.shutdown();
    }
    Ok(())
}
