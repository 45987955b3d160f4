//! Model-based property test of the runtime: random command sequences across
//! a few aggregates, sent by one concurrent client per aggregate, with
//! passivation (two resident actors at most, snapshots every three events)
//! and restarts of the runtime between rounds. Every outcome — events or
//! refusal — must equal what a pure fold of the same commands gives, and in
//! the end each stream folds to the model's state.

use eventfold_runtime::domain::*;
use eventfold_runtime::projection::decode;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Meter {
    value: u64,
    resets: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Cmd {
    Add(u8),
    Double,
    Reset,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Ev {
    Added(u64),
    Reset,
}

impl DomainEvent for Ev {
    fn event_type(&self) -> &'static str {
        match self {
            Ev::Added(_) => "Added",
            Ev::Reset => "Reset",
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
enum Refused {
    #[error("zero")]
    Zero,
    #[error("over the limit")]
    Limit,
    #[error("empty")]
    Empty,
}

const LIMIT: u64 = 600;

impl Aggregate for Meter {
    const KIND: &'static str = "meter";
    type Command = Cmd;
    type Event = Ev;
    type Error = Refused;
    fn handle(&self, command: Cmd) -> Result<Vec<Ev>, Refused> {
        let add = |n: u64| {
            if n == 0 {
                Err(Refused::Zero)
            } else if self.value + n > LIMIT {
                Err(Refused::Limit)
            } else {
                Ok(vec![Ev::Added(n)])
            }
        };
        match command {
            Cmd::Add(n) => add(u64::from(n)),
            Cmd::Double if self.value == 0 => Err(Refused::Empty),
            Cmd::Double => add(self.value),
            Cmd::Reset if self.value == 0 => Ok(vec![]),
            Cmd::Reset => Ok(vec![Ev::Reset]),
        }
    }
    fn apply(&mut self, event: &Ev) {
        match event {
            Ev::Added(n) => self.value += n,
            Ev::Reset => {
                self.value = 0;
                self.resets += 1;
            }
        }
    }
}

type Expected = Result<Vec<Ev>, Refused>;

/// The model: the same decisions, folded in order, without the runtime.
fn model_step(state: &mut Meter, command: Cmd) -> Expected {
    let result = state.handle(command);
    if let Ok(events) = &result {
        for event in events {
            state.apply(event);
        }
    }
    result
}

fn command() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        4 => any::<u8>().prop_map(Cmd::Add),
        1 => Just(Cmd::Double),
        1 => Just(Cmd::Reset),
    ]
}

/// Rounds (the runtime restarts between them) of commands to 4 aggregates.
fn rounds() -> impl Strategy<Value = Vec<Vec<(u8, Cmd)>>> {
    prop::collection::vec(prop::collection::vec((0u8..4, command()), 1..30), 1..4)
}

fn start(
    path: &std::path::Path,
    state_cache_bytes_max: usize,
) -> Result<RuntimeHandle, StartError> {
    Runtime::builder()
        .path(path)
        .aggregate::<Meter>()
        .passivation(Passivation {
            idle_after: Duration::from_millis(2),
            resident_actors_max: 2,
            state_cache_bytes_max,
        })
        .snapshot_every_events(Some(3))
        .start()
}

fn run(rounds: Vec<Vec<(u8, Cmd)>>, state_cache_bytes_max: usize) -> Result<(), TestCaseError> {
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
    let mut model: BTreeMap<u8, Meter> = BTreeMap::new();
    for round in rounds {
        let runtime = start(dir.path(), state_cache_bytes_max).map_err(|e| fail(&e))?;
        let mut per_aggregate: BTreeMap<u8, Vec<(Cmd, Expected)>> = BTreeMap::new();
        for (aggregate, command) in round {
            let state = model.entry(aggregate).or_default();
            let expected = model_step(state, command.clone());
            per_aggregate
                .entry(aggregate)
                .or_default()
                .push((command, expected));
        }
        // One concurrent client per aggregate, each in order.
        let clients: Vec<_> = per_aggregate
            .into_iter()
            .map(|(aggregate, commands)| {
                let runtime = runtime.clone();
                std::thread::spawn(move || -> Result<(), String> {
                    for (i, (command, expected)) in commands.into_iter().enumerate() {
                        let got = runtime
                            .execute_blocking::<Meter>(&aggregate.to_string(), command.clone());
                        let got: Expected = match got {
                            Ok(outcome) => Ok(outcome.events),
                            Err(CommandError::Rejected(refused)) => Err(refused),
                            Err(other) => {
                                return Err(format!("meter-{aggregate} #{i}: {other}"));
                            }
                        };
                        if got != expected {
                            return Err(format!(
                                "meter-{aggregate} #{i} {command:?}: runtime {got:?}, model {expected:?}"
                            ));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for client in clients {
            client
                .join()
                .map_err(|_| fail(&"a client panicked"))?
                .map_err(|e| fail(&e))?;
        }
        runtime.shutdown_blocking().map_err(|e| fail(&e))?;
        drop(runtime);
    }
    // Each stream folds to the model's state.
    let store = RocksStore::open(dir.path(), StoreOptions::default()).map_err(|e| fail(&e))?;
    for (aggregate, expected) in &model {
        let stream = StreamId::new(format!("meter-{aggregate}")).map_err(|e| fail(&e))?;
        let events = store
            .read_stream(&stream, 1, Direction::Forward, 10_000)
            .map_err(|e| fail(&e))?;
        let mut folded = Meter::default();
        for event in &events {
            folded.apply(&decode::<Ev>(event).map_err(|e| fail(&e))?);
        }
        prop_assert_eq!(&folded, expected, "meter-{}", aggregate);
    }
    prop_assert!(store.verify().map_err(|e| fail(&e))?.is_clean());
    store.close();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    })]

    #[test]
    /// With the state cache off, big enough for every aggregate, and with
    /// room for about one entry per shard (evictions).
    fn the_runtime_agrees_with_a_pure_fold(
        rounds in rounds(),
        state_cache_bytes_max in prop_oneof![Just(0usize), Just(400), Just(64 << 20)],
    ) {
        run(rounds, state_cache_bytes_max)?;
    }
}
