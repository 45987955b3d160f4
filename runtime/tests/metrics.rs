//! The runtime's metrics reach a recorder installed by the embedding service.
//! (Its own test binary: a global recorder can be installed once per process.)

use eventfold_runtime::domain::RecordedEvent;
use eventfold_runtime::domain::{Aggregate, DomainEvent};
use eventfold_runtime::metric_names::*;
use eventfold_runtime::storage::{EventStore, Filter, MemoryStore, payload};
use eventfold_runtime::{
    AfterRetries, CommandError, ConsumerSettings, ErrorPolicy, EventHandler, HandlerError,
    Passivation, Runtime,
};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Default, Serialize, Deserialize)]
struct Counter(u64);

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Added(u64);

impl DomainEvent for Added {
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("zero")]
struct Zero;

impl Aggregate for Counter {
    const KIND: &'static str = "counter";
    type Command = u64;
    type Event = Added;
    type Error = Zero;
    fn handle(&self, n: u64) -> Result<Vec<Added>, Zero> {
        if n == 0 {
            Err(Zero)
        } else {
            Ok(vec![Added(n)])
        }
    }
    fn apply(&mut self, Added(n): &Added) {
        self.0 += n;
    }
}

#[test]
fn commands_activations_passivations_and_rejections_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let runtime = Runtime::builder()
        .temporary()
        .passivation(Passivation {
            idle_after: Duration::from_millis(50),
            resident_actors_max: 100,
            ..Passivation::default()
        })
        .aggregate::<Counter>()
        .start()
        .unwrap();
    for i in 1..=10 {
        runtime
            .execute_blocking::<Counter>(&format!("c{}", i % 3), i)
            .unwrap();
    }
    assert!(matches!(
        runtime.execute_blocking::<Counter>("c1", 0),
        Err(CommandError::Rejected(Zero))
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while runtime.resident_actors() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "actors were not passivated"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Activated again, from the state cache.
    runtime.execute_blocking::<Counter>("c1", 1).unwrap();
    // The batch-size sampler runs once a second.
    std::thread::sleep(Duration::from_millis(1200));
    runtime.shutdown_blocking().unwrap();
    assert!(matches!(
        runtime.execute_blocking::<Counter>("c1", 1),
        Err(CommandError::ShutDown)
    ));

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &'static str| {
        snapshot
            .iter()
            .filter(move |(key, ..)| key.key().name() == name)
    };
    let histogram_count = |name: &'static str| {
        find(name)
            .map(|(_, _, _, value)| match value {
                DebugValue::Histogram(values) => values.len(),
                _ => 0,
            })
            .sum::<usize>()
    };
    let counter_sum = |name: &'static str| {
        find(name)
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum::<u64>()
    };
    assert_eq!(histogram_count(COMMAND_LATENCY_SECONDS), 12);
    assert_eq!(histogram_count(APPEND_LATENCY_SECONDS), 11);
    assert!(histogram_count(WRITE_BATCH_EVENTS) >= 1);
    assert_eq!(counter_sum(ACTIVATIONS_TOTAL), 4);
    assert_eq!(counter_sum(STATE_CACHE_HITS_TOTAL), 1);
    assert_eq!(counter_sum(PASSIVATIONS_TOTAL), 4);
    assert_eq!(counter_sum(REJECTIONS_TOTAL), 1, "the call after shutdown");
    assert!(find(RESIDENT_ACTORS).next().is_some());
    let rejected = find(COMMAND_LATENCY_SECONDS).any(|(key, ..)| {
        key.key()
            .labels()
            .any(|l| l.key() == "result" && l.value() == "rejected")
    });
    assert!(rejected, "a refused command is labelled");

    // Snapshots: one taken on a decision whose events do not land (a
    // foreign write takes its version first) is dropped, not written; the
    // next, after the reload, is written.
    let store = MemoryStore::new();
    let runtime = Runtime::builder()
        .memory_store(store.clone())
        .snapshot_every_events(Some(10))
        .aggregate::<Counter>()
        .start()
        .unwrap();
    store.hold_appends();
    let send = |first: u64, count: u64| -> Vec<std::thread::JoinHandle<bool>> {
        let held = store.held_appends();
        let threads = (first..first + count)
            .map(|n| {
                let runtime = runtime.clone();
                std::thread::spawn(move || runtime.execute_blocking::<Counter>("s", n).is_ok())
            })
            .collect();
        wait_until(|| store.held_appends() == held + count as usize);
        threads
    };
    // Versions 1..=9, the foreign write, then 10..=14 as the actor sees
    // them: its snapshot is taken at 10.
    let landing = send(1, 9);
    let foreign = {
        let store = store.clone();
        let stream = eventfold_runtime::domain::StreamId::new("counter-s").unwrap();
        let event = eventfold_runtime::domain::NewEvent::new(
            "Added",
            1,
            payload::encode(&Added(1000)).unwrap(),
            eventfold_runtime::domain::Metadata::new(),
        );
        std::thread::spawn(move || {
            store.append(
                &stream,
                eventfold_runtime::domain::ExpectedVersion::Any,
                vec![event],
            )
        })
    };
    wait_until(|| store.held_appends() == 10);
    let failing = send(10, 5);
    store.resume_appends();
    assert!(landing.into_iter().all(|t| t.join().unwrap()));
    assert!(foreign.join().unwrap().is_ok());
    assert!(failing.into_iter().all(|t| !t.join().unwrap()));
    // The next command reloads at version 10: a snapshot is due and written.
    runtime.execute_blocking::<Counter>("s", 1).unwrap();
    // The debugging recorder's snapshots are taken whole: counters are read
    // from one.
    let snapshots = |metrics: &[(CompositeKey, _, _, DebugValue)], result: &'static str| {
        metrics
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == SNAPSHOTS_TOTAL
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "result" && l.value() == result)
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum::<u64>()
    };
    let metrics = (0..3000)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            snapshotter.snapshot().into_vec()
        })
        .find(|metrics| snapshots(metrics, "saved") == 1)
        .expect("the snapshot after the reload is written within 30 s");
    assert_eq!(snapshots(&metrics, "dropped"), 1);
    assert_eq!(snapshots(&metrics, "failed"), 0);
    let saved = store
        .load_snapshot(&eventfold_runtime::domain::StreamId::new("counter-s").unwrap())
        .unwrap()
        .expect("the snapshot after the reload");
    assert_eq!(saved.stream_version, 10);
    let state: Counter = payload::decode(&saved.state).unwrap();
    assert_eq!(state.0, (1..=9).sum::<u64>() + 1000);
    runtime.shutdown_blocking().unwrap();

    mailbox_parked_and_subscription_gauges(&snapshotter);
}

struct Refuser;

impl EventHandler for Refuser {
    fn name(&self) -> &str {
        "refuser"
    }
    fn handle(&mut self, _: &RecordedEvent) -> Result<(), HandlerError> {
        Err(HandlerError::new("never"))
    }
}

/// The value of gauge `name` with label `label`.
fn gauge(snapshotter: &Snapshotter, name: &str, label: (&str, &str)) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .and_then(|(_, _, _, value)| match value {
            DebugValue::Gauge(value) => Some(value.into_inner()),
            _ => None,
        })
}

/// Mailbox depth (a shard held busy), parked events (a handler that
/// always fails) and a durable subscription's lag.
fn mailbox_parked_and_subscription_gauges(snapshotter: &Snapshotter) {
    let parking = ConsumerSettings {
        error_policy: ErrorPolicy {
            attempts_max: 1,
            then: AfterRetries::Park,
            ..ErrorPolicy::default()
        },
        ..ConsumerSettings::default()
    };
    let runtime = Runtime::builder()
        .in_memory()
        .shards(1)
        .aggregate::<Counter>()
        .event_handler(|| Refuser, parking)
        .start()
        .unwrap();
    for n in 1..=3 {
        runtime.execute_blocking::<Counter>("p", n).unwrap();
    }
    // Parked one by one (each held behind the first of its stream).
    wait_until(|| gauge(snapshotter, PARKED_EVENTS, ("consumer", "refuser@v1")) == Some(3.0));

    // The shard's thread held by a task: commands wait in its mailbox.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (busy, is_busy) = std::sync::mpsc::channel::<()>();
    runtime
        .spawn_on_shard(0, move || async move {
            let _ = busy.send(());
            // Deliberately blocking the shard's thread, as a stuck shard would.
            let _ = held.recv_timeout(Duration::from_secs(30));
        })
        .unwrap();
    is_busy.recv_timeout(Duration::from_secs(30)).unwrap();
    let waiting: Vec<_> = (0..5)
        .map(|i| {
            let runtime = runtime.clone();
            std::thread::spawn(move || runtime.execute_blocking::<Counter>(&format!("m{i}"), 1))
        })
        .collect();
    wait_until(|| runtime.mailbox_depth() == 5);
    wait_until(|| gauge(snapshotter, MAILBOX_DEPTH, ("shard", "0")) == Some(5.0));
    release.send(()).unwrap();
    for waiting in waiting {
        assert!(waiting.join().unwrap().is_ok());
    }
    wait_until(|| runtime.mailbox_depth() == 0);

    // A durable subscription's lag: the head (8) minus what it acknowledged.
    futures::executor::block_on(async {
        use futures::StreamExt;
        let mut sub = runtime
            .subscribe_durable("lagging", Filter::all())
            .await
            .unwrap();
        let first = sub.next().await.unwrap().unwrap();
        sub.ack(first.position).await.unwrap();
    });
    assert_eq!(runtime.store().head(), 8);
    assert_eq!(
        gauge(snapshotter, SUBSCRIPTION_LAG, ("subscription", "lagging")),
        Some(7.0)
    );
    runtime.shutdown_blocking().unwrap();
}

fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}
