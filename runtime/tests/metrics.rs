//! The runtime's metrics reach a recorder installed by the embedding service.
//! (Its own test binary: a global recorder can be installed once per process.)

use eventfold_runtime::domain::{Aggregate, DomainEvent};
use eventfold_runtime::metric_names::*;
use eventfold_runtime::{CommandError, Passivation, Runtime};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
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
}
