//! The runtime through its public handle.

use eventfold_runtime::domain::*;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A test aggregate whose state can be checked through a command.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Tally {
    total: u64,
    count: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Cmd {
    Add(u64),
    /// Succeeds without events iff the state is exactly this.
    Check {
        total: u64,
        count: u64,
    },
    Panic,
    PanicInApply,
    /// Blocks the shard's thread: only for tests of overload and timeouts.
    Sleep(Duration),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Ev {
    Added(u64),
    Poison,
}

impl DomainEvent for Ev {
    fn event_type(&self) -> &'static str {
        match self {
            Ev::Added(_) => "Added",
            Ev::Poison => "Poison",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum TallyError {
    #[error("zero")]
    Zero,
    #[error("state is total {total}, count {count}")]
    Mismatch { total: u64, count: u64 },
}

impl Aggregate for Tally {
    const KIND: &'static str = "tally";
    type Command = Cmd;
    type Event = Ev;
    type Error = TallyError;

    fn handle(&self, command: Cmd) -> Result<Vec<Ev>, TallyError> {
        match command {
            Cmd::Add(0) => Err(TallyError::Zero),
            Cmd::Add(n) => Ok(vec![Ev::Added(n)]),
            Cmd::Check { total, count } if (total, count) == (self.total, self.count) => Ok(vec![]),
            Cmd::Check { .. } => Err(TallyError::Mismatch {
                total: self.total,
                count: self.count,
            }),
            Cmd::Panic => panic!("boom in handle"),
            Cmd::PanicInApply => Ok(vec![Ev::Poison]),
            Cmd::Sleep(d) => {
                std::thread::sleep(d);
                Ok(vec![])
            }
        }
    }

    fn apply(&mut self, event: &Ev) {
        match event {
            Ev::Added(n) => {
                self.total += n;
                self.count += 1;
            }
            Ev::Poison => panic!("poison in apply"),
        }
    }
}

/// The same stream kind with another snapshot version.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct TallyV2 {
    total: u64,
    count: u64,
}

impl Aggregate for TallyV2 {
    const KIND: &'static str = "tally";
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = Cmd;
    type Event = Ev;
    type Error = TallyError;
    fn handle(&self, command: Cmd) -> Result<Vec<Ev>, TallyError> {
        Tally {
            total: self.total,
            count: self.count,
        }
        .handle(command)
    }
    fn apply(&mut self, event: &Ev) {
        if let Ev::Added(n) = event {
            self.total += n;
            self.count += 1;
        }
    }
}

fn runtime() -> RuntimeHandle {
    runtime_with_shards(2)
}

fn runtime_with_shards(shards: usize) -> RuntimeHandle {
    Runtime::builder()
        .temporary()
        .shards(shards)
        .aggregate::<Tally>()
        .start()
        .unwrap()
}

fn check(rt: &RuntimeHandle, id: &str, total: u64, count: u64) {
    match rt.execute_blocking::<Tally>(id, Cmd::Check { total, count }) {
        Ok(outcome) => assert!(outcome.events.is_empty()),
        Err(e) => panic!("state of {id} is not ({total}, {count}): {e}"),
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Keeps the shard of `id` busy for `held` (a `Sleep` command blocks its
/// thread), then waits `settle` so that the hold has begun.
fn hold_shard(
    rt: &RuntimeHandle,
    id: &'static str,
    held: Duration,
    settle: Duration,
) -> std::thread::JoinHandle<()> {
    let rt = rt.clone();
    let handle = std::thread::spawn(move || {
        rt.execute_blocking::<Tally>(id, Cmd::Sleep(held)).unwrap();
    });
    std::thread::sleep(settle);
    handle
}

/// A one-shard runtime with a shard mailbox of 4 commands and actor
/// mailboxes of 2, its shard held busy for `held` (see [`hold_shard`]).
fn small_mailboxes_held(held: Duration) -> (RuntimeHandle, std::thread::JoinHandle<()>) {
    let rt = Runtime::builder()
        .temporary()
        .shards(1)
        .mailboxes(4, 2)
        .aggregate::<Tally>()
        .start()
        .unwrap();
    let blocker = hold_shard(&rt, "slow", held, Duration::from_millis(300));
    (rt, blocker)
}

fn stream(id: &str) -> StreamId {
    StreamId::new(format!("tally-{id}")).unwrap()
}

#[test]
fn the_handle_is_send_sync_and_clone() {
    fn embeddable<T: Send + Sync + Clone + 'static>() {}
    embeddable::<RuntimeHandle>();
}

#[test]
fn concurrent_commands_to_one_id_are_applied_in_order_with_no_lost_update() {
    let rt = runtime();
    let threads = 8;
    let per_thread = 100u64;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads as u64)
        .map(|t| {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                (0..per_thread)
                    .map(|i| {
                        rt.execute_blocking::<Tally>("hot", Cmd::Add(t * 1000 + i + 1))
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut versions = Vec::new();
    let mut total = 0;
    for handle in handles {
        let outcomes = handle.join().unwrap();
        // One caller's commands are applied in the order it sent them.
        assert!(
            outcomes
                .windows(2)
                .all(|w| w[0].version < w[1].version && w[0].position < w[1].position)
        );
        for outcome in outcomes {
            let Ev::Added(n) = outcome.events[0] else {
                panic!("unexpected event")
            };
            total += n;
            versions.push(outcome.version);
        }
    }
    versions.sort_unstable();
    let n = threads as u64 * per_thread;
    assert_eq!(
        versions,
        (1..=n).collect::<Vec<_>>(),
        "every version exactly once"
    );
    check(&rt, "hot", total, n);
    assert_eq!(
        rt.store()
            .read_stream(&stream("hot"), 1, Direction::Forward, 10_000)
            .unwrap()
            .len() as u64,
        n
    );
    rt.shutdown_blocking().unwrap();
}

#[test]
fn one_hot_aggregate_pipelines_its_appends() {
    let rt = runtime();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let outcomes = tokio.block_on(async {
        let tasks: Vec<_> = (1..=200u64)
            .map(|i| {
                let rt = rt.clone();
                tokio::spawn(async move { rt.execute::<Tally>("hot", Cmd::Add(i)).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        outcomes
    });
    assert_eq!(outcomes.len(), 200);
    let stats = rt.store().writer_stats();
    // Without pipelining every append of one aggregate would be its own batch.
    assert!(stats.batches < 200, "{stats:?}");
    check(&rt, "hot", (1..=200).sum(), 200);
}

#[test]
fn passivation_by_idle_time_and_by_count_preserves_state() {
    // From the state cache, from the store, and with a cache too small for
    // the twelve (room for about five).
    for state_cache_bytes_max in [64 << 20, 0, 1000] {
        passivation_preserves_state(state_cache_bytes_max);
    }
}

fn passivation_preserves_state(state_cache_bytes_max: usize) {
    let rt = Runtime::builder()
        .temporary()
        .shards(1)
        .passivation(Passivation {
            idle_after: Duration::from_millis(200),
            resident_actors_max: 4,
            state_cache_bytes_max,
        })
        .aggregate::<Tally>()
        .start()
        .unwrap();
    for round in 1..=3u64 {
        for id in 0..12 {
            rt.execute_blocking::<Tally>(&id.to_string(), Cmd::Add(id + 1))
                .unwrap();
        }
        wait_until("at most 4 actors are resident", || {
            rt.resident_actors() <= 4
        });
        for id in 0..12 {
            check(&rt, &id.to_string(), (id + 1) * round, round);
        }
    }
    wait_until("idle actors are passivated", || rt.resident_actors() == 0);
    let outcome = rt.execute_blocking::<Tally>("3", Cmd::Add(1)).unwrap();
    assert_eq!(
        outcome.version, 4,
        "a reactivated actor continues its stream"
    );
    check(&rt, "3", 4 * 3 + 1, 4);
    let hits = rt.state_cache_hits_total();
    let activations = rt.activations_total();
    match state_cache_bytes_max {
        0 => assert_eq!(hits, 0),
        // Commands cycle over twelve aggregates, four resident and about
        // five cached: evicted before they come round again.
        1000 => assert!(hits < activations - 12, "{hits} of {activations}"),
        // Every activation after the first of each aggregate.
        _ => assert_eq!(hits, activations - 12, "{hits} of {activations}"),
    }
}

#[test]
fn an_idle_actor_stays_resident_with_no_address_held_but_the_shards_weak_one() {
    let rt = runtime_with_shards(1);
    rt.execute_blocking::<Tally>("a", Cmd::Add(1)).unwrap();
    // Every strong address made to send that command is gone by now; an
    // actor kept alive only by them would have stopped.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((rt.resident_actors(), rt.activations_total()), (1, 1));
    let outcome = rt.execute_blocking::<Tally>("a", Cmd::Add(1)).unwrap();
    assert_eq!(outcome.version, 2);
    assert_eq!(
        rt.activations_total(),
        1,
        "the second command found it resident"
    );
    rt.shutdown_blocking().unwrap();
}

#[test]
fn a_cached_state_behind_a_foreign_write_is_refused_then_reloaded() {
    // Resident bound 1: each command passivates the other aggregate, whose
    // state goes to the cache.
    let rt = Runtime::builder()
        .temporary()
        .shards(1)
        .passivation(Passivation {
            resident_actors_max: 1,
            ..Passivation::default()
        })
        .aggregate::<Tally>()
        .start()
        .unwrap();
    rt.execute_blocking::<Tally>("c", Cmd::Add(5)).unwrap();
    rt.execute_blocking::<Tally>("other", Cmd::Add(1)).unwrap();
    wait_until("c is passivated", || rt.resident_actors() == 1);
    // Written straight to the store while c's state sits in the cache.
    write_behind_the_actor(&rt, "c", 100);
    let hits_before = rt.state_cache_hits_total();
    conflicts_then_reloads(&rt, "c", 105);
    // Only the conflicting command activated c, from the cache.
    assert_eq!(rt.state_cache_hits_total(), hits_before + 1);
}

/// Appends `Added(amount)` to the stream of `id` straight through the
/// store, behind its actor's back.
fn write_behind_the_actor(rt: &RuntimeHandle, id: &str, amount: u64) {
    let foreign = NewEvent::new(
        "Added",
        1,
        payload::encode(&Ev::Added(amount)).unwrap(),
        Metadata::new(),
    );
    rt.store()
        .append(&stream(id), ExpectedVersion::Any, vec![foreign])
        .unwrap();
}

/// After one event of the actor's and one foreign event: the next command
/// conflicts at version 2, the actor reloads (its state is `total` over
/// two events), and the command after that lands at version 3.
fn conflicts_then_reloads(rt: &RuntimeHandle, id: &str, total: u64) {
    let refused = rt.execute_blocking::<Tally>(id, Cmd::Add(7));
    assert!(
        matches!(
            refused,
            Err(CommandError::WrongExpectedVersion { actual: 2, .. })
        ),
        "{refused:?}"
    );
    check(rt, id, total, 2);
    assert_eq!(
        rt.execute_blocking::<Tally>(id, Cmd::Add(1))
            .unwrap()
            .version,
        3
    );
}

#[test]
fn a_panic_fails_that_command_and_the_actor_restarts_from_the_store() {
    let rt = runtime();
    rt.execute_blocking::<Tally>("p", Cmd::Add(5)).unwrap();
    let bystander = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            for i in 1..=50 {
                rt.execute_blocking::<Tally>("bystander", Cmd::Add(i))
                    .unwrap();
            }
        })
    };
    assert!(
        matches!(rt.execute_blocking::<Tally>("p", Cmd::Panic), Err(CommandError::Panicked(m)) if m.contains("boom"))
    );
    assert!(
        matches!(rt.execute_blocking::<Tally>("p", Cmd::PanicInApply), Err(CommandError::Panicked(m)) if m.contains("poison"))
    );
    check(&rt, "p", 5, 1);
    assert_eq!(
        rt.execute_blocking::<Tally>("p", Cmd::Add(2))
            .unwrap()
            .version,
        2
    );
    bystander.join().unwrap();
    check(&rt, "bystander", (1..=50).sum(), 50);
    assert!(matches!(
        rt.execute_blocking::<Tally>("p", Cmd::Add(0)),
        Err(CommandError::Rejected(TallyError::Zero))
    ));
}

#[test]
fn a_retried_command_id_returns_the_original_outcome_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        Runtime::builder()
            .path(dir.path())
            .shards(1)
            .aggregate::<Tally>()
            .start()
            .unwrap()
    };
    let rt = start();
    let once = ExecuteOptions::new().command_id(CommandId::from_name("add-5"));
    let first = rt
        .execute_blocking_with::<Tally>("i", Cmd::Add(5), once.clone())
        .unwrap();
    let retry = rt
        .execute_blocking_with::<Tally>("i", Cmd::Add(5), once.clone())
        .unwrap();
    assert!(!first.deduplicated && retry.deduplicated);
    assert_eq!(
        (retry.version, retry.position, &retry.events),
        (first.version, first.position, &first.events)
    );
    // Retries that arrive while the original is in flight.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let twice = ExecuteOptions::new().command_id(CommandId::from_name("add-7"));
    let (a, b) = tokio.block_on(async {
        let a = rt.execute_with::<Tally>("i", Cmd::Add(7), twice.clone());
        let b = rt.execute_with::<Tally>("i", Cmd::Add(7), twice.clone());
        futures::future::join(a, b).await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.version, a.position), (b.version, b.position));
    assert!(a.deduplicated != b.deduplicated);
    rt.shutdown_blocking().unwrap();
    drop(rt);
    // After a restart the original comes from the store.
    let rt = start();
    let again = rt
        .execute_blocking_with::<Tally>("i", Cmd::Add(5), once)
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(
        (again.version, again.position, again.events),
        (first.version, first.position, first.events)
    );
    check(&rt, "i", 12, 2);
    assert_eq!(
        rt.store()
            .read_stream(&stream("i"), 1, Direction::Forward, 100)
            .unwrap()
            .len(),
        2
    );
    rt.shutdown_blocking().unwrap();
}

#[test]
fn full_mailboxes_answer_overloaded() {
    let (rt, blocker) = small_mailboxes_held(Duration::from_millis(1500));
    let results: Vec<_> = (0..40)
        .map(|i| {
            let rt = rt.clone();
            std::thread::spawn(move || rt.execute_blocking::<Tally>(&format!("x{i}"), Cmd::Add(1)))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    blocker.join().unwrap();
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(CommandError::Overloaded(_))))
        .count();
    assert!(overloaded > 0, "a full mailbox must refuse");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(CommandError::Overloaded(_))))
    );
    let written = rt.store().head() as usize;
    assert_eq!(
        written,
        results.iter().filter(|r| r.is_ok()).count(),
        "refused commands wrote nothing"
    );
}

#[test]
fn a_timeout_says_the_outcome_is_unknown_and_a_late_command_is_dropped() {
    let rt = runtime_with_shards(1);
    let blocker = hold_shard(
        &rt,
        "t",
        Duration::from_millis(1000),
        Duration::from_millis(200),
    );
    let quick = ExecuteOptions::new()
        .timeout(Duration::from_millis(50))
        .command_id(CommandId::from_name("late"));
    let error = rt
        .execute_blocking_with::<Tally>("t", Cmd::Add(7), quick.clone())
        .unwrap_err();
    assert!(matches!(error, CommandError::Timeout(_)));
    let message = error.to_string();
    assert!(
        message.contains("unknown") && message.contains("same command id"),
        "{message}"
    );
    blocker.join().unwrap();
    // The late command was dropped undecided once its deadline had passed.
    check(&rt, "t", 0, 0);
    // Retrying with the same command id is safe.
    let retry = rt
        .execute_blocking_with::<Tally>(
            "t",
            Cmd::Add(7),
            ExecuteOptions::new().command_id(CommandId::from_name("late")),
        )
        .unwrap();
    assert_eq!(retry.version, 1);
    check(&rt, "t", 7, 1);
}

#[test]
fn activation_from_snapshot_plus_tail_equals_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .path(dir.path())
        .snapshot_every_events(Some(10))
        .aggregate::<Tally>()
        .start()
        .unwrap();
    for i in 1..=35u64 {
        rt.execute_blocking::<Tally>("s", Cmd::Add(i)).unwrap();
    }
    rt.shutdown_blocking().unwrap();
    drop(rt);
    let rt = Runtime::builder()
        .path(dir.path())
        .snapshot_every_events(None)
        .aggregate::<Tally>()
        .start()
        .unwrap();
    let snapshot = rt
        .store()
        .load_snapshot(&stream("s"))
        .unwrap()
        .expect("a snapshot was written");
    assert_eq!(
        (snapshot.snapshot_version, snapshot.stream_version),
        (1, 30)
    );
    let from_snapshot: Tally = payload::decode(&snapshot.state).unwrap();
    assert_eq!(
        from_snapshot,
        Tally {
            total: (1..=30).sum(),
            count: 30
        }
    );
    // Full replay of the stored events, with the fixture.
    let events: Vec<Ev> = rt
        .store()
        .read_stream(&stream("s"), 1, Direction::Forward, 100)
        .unwrap()
        .iter()
        .map(|e| payload::decode(&e.payload).unwrap())
        .collect();
    let replayed = AggregateFixture::<Tally>::given(events).when(Cmd::Check { total: 0, count: 0 });
    let Err(TallyError::Mismatch { total, count }) = replayed.result() else {
        panic!("replay")
    };
    // The actor activates from the snapshot plus five events: the same state.
    check(&rt, "s", *total, *count);
    assert_eq!((*total, *count), ((1..=35).sum(), 35));
    rt.shutdown_blocking().unwrap();
    drop(rt);
    // A snapshot of another version is ignored: the aggregate replays.
    let rt = Runtime::builder()
        .path(dir.path())
        .aggregate::<TallyV2>()
        .start()
        .unwrap();
    let outcome = rt.execute_blocking::<TallyV2>(
        "s",
        Cmd::Check {
            total: (1..=35).sum(),
            count: 35,
        },
    );
    assert!(outcome.is_ok(), "{outcome:?}");
    rt.shutdown_blocking().unwrap();
}

#[test]
fn shutdown_loses_no_acknowledged_command() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .path(dir.path())
        .aggregate::<Tally>()
        .start()
        .unwrap();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for i in 1.. {
                    match rt.execute_blocking::<Tally>(&format!("c{c}"), Cmd::Add(i)) {
                        Ok(outcome) => acknowledged.push((outcome.version, outcome.position)),
                        Err(CommandError::ShutDown) => break,
                        Err(other) => panic!("unexpected error {other}"),
                    }
                }
                (c, acknowledged)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    rt.shutdown_blocking().unwrap();
    let results: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(matches!(
        rt.execute_blocking::<Tally>("c0", Cmd::Add(1)),
        Err(CommandError::ShutDown)
    ));
    drop(rt);
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    let mut total = 0;
    for (c, acknowledged) in results {
        let events = store
            .read_stream(&stream(&format!("c{c}")), 1, Direction::Forward, 1_000_000)
            .unwrap();
        for (version, position) in &acknowledged {
            let event = &events[(*version - 1) as usize];
            assert_eq!(Some(event.position), *position);
        }
        total += acknowledged.len();
    }
    assert!(total > 0);
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn a_failed_append_leaves_the_state_unchanged() {
    // A conflicting write behind the actor's back.
    let rt = runtime();
    rt.execute_blocking::<Tally>("f", Cmd::Add(5)).unwrap();
    write_behind_the_actor(&rt, "f", 100);
    conflicts_then_reloads(&rt, "f", 105);

    // An injected write failure.
    let faults = FaultInjector::new();
    let rt = Runtime::builder()
        .temporary()
        .store_options(StoreOptions {
            faults: Some(faults.clone()),
            ..StoreOptions::default()
        })
        .aggregate::<Tally>()
        .start()
        .unwrap();
    rt.execute_blocking::<Tally>("g", Cmd::Add(5)).unwrap();
    faults.fail_next_writes(1);
    assert!(matches!(
        rt.execute_blocking::<Tally>("g", Cmd::Add(7)),
        Err(CommandError::Store(AppendError::Io(_)))
    ));
    check(&rt, "g", 5, 1);
    assert!(matches!(
        rt.execute_blocking::<Tally>("g", Cmd::Add(1)),
        Err(CommandError::Store(AppendError::Poisoned))
    ));
}

#[test]
fn commands_decided_on_a_failed_append_fail_too() {
    let rt = Runtime::builder()
        .in_memory()
        .shards(1)
        .aggregate::<Tally>()
        .start()
        .unwrap();
    rt.execute_blocking::<Tally>("q", Cmd::Add(1)).unwrap();
    // A foreign write makes the actor's next append conflict.
    write_behind_the_actor(&rt, "q", 1000);
    // Hold the only shard so that five commands reach the actor together and
    // are decided one on another before any append completes.
    let blocker = hold_shard(
        &rt,
        "z",
        Duration::from_millis(1000),
        Duration::from_millis(200),
    );
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let rt = rt.clone();
            std::thread::spawn(move || rt.execute_blocking::<Tally>("q", Cmd::Add(10)))
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    blocker.join().unwrap();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(CommandError::WrongExpectedVersion { .. })))
        .count();
    let voided = results
        .iter()
        .filter(|r| matches!(r, Err(CommandError::PrecedingAppendFailed)))
        .count();
    assert_eq!((conflicts, voided), (1, 4), "{results:?}");
    // None of the five left a trace; the foreign event is in the state.
    check(&rt, "q", 1001, 2);
    assert_eq!(
        rt.execute_blocking::<Tally>("q", Cmd::Add(10))
            .unwrap()
            .version,
        3
    );
}

#[test]
fn events_reach_the_bus_only_once_durable_and_in_order() {
    let rt = runtime();
    let mut bus = rt.subscribe();
    for i in 1..=20u64 {
        rt.execute_blocking::<Tally>(&format!("b{}", i % 3), Cmd::Add(i))
            .unwrap();
    }
    let mut positions = Vec::new();
    while positions.len() < 20 {
        let batch = bus.try_recv().expect("every durable batch is published");
        for event in batch.iter() {
            assert!(event.position <= rt.store().head());
            positions.push(event.position);
        }
    }
    assert_eq!(positions, (1..=20).collect::<Vec<_>>());
}

#[test]
fn bad_requests_are_typed_errors() {
    #[derive(Default, Serialize, Deserialize)]
    struct Unregistered;
    impl Aggregate for Unregistered {
        const KIND: &'static str = "nope";
        type Command = ();
        type Event = Ev;
        type Error = TallyError;
        fn handle(&self, _: ()) -> Result<Vec<Ev>, TallyError> {
            Ok(vec![])
        }
        fn apply(&mut self, _: &Ev) {}
    }
    let rt = runtime();
    assert!(matches!(
        rt.execute_blocking::<Unregistered>("x", ()),
        Err(CommandError::NotRegistered("nope"))
    ));
    assert!(matches!(
        rt.execute_blocking::<Tally>("a\0b", Cmd::Add(1)),
        Err(CommandError::InvalidId(_))
    ));
    // Regression: an empty id was accepted and wrote the stream `tally-`.
    assert!(matches!(
        rt.execute_blocking::<Tally>("", Cmd::Add(1)),
        Err(CommandError::InvalidId(StreamIdError::EmptyAggregateId))
    ));
    assert_eq!(rt.store().head(), 0, "a refused id wrote nothing");
    let dup = Runtime::builder()
        .in_memory()
        .aggregate::<Tally>()
        .aggregate::<TallyV2>()
        .start();
    assert!(matches!(dup, Err(StartError::Kind("tally"))));
    assert!(matches!(
        Runtime::builder().in_memory().shards(0).start(),
        Err(StartError::Setting(_))
    ));
}

// Regression: a second runtime on a path another one holds failed with
// RocksDB's raw text ("IO error: lock hold by current process ...").
#[test]
fn a_second_runtime_on_a_held_path_is_told_the_store_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let first = Runtime::builder()
        .path(dir.path())
        .aggregate::<Tally>()
        .start()
        .unwrap();
    first.execute_blocking::<Tally>("a", Cmd::Add(1)).unwrap();
    let second = Runtime::builder()
        .path(dir.path())
        .aggregate::<Tally>()
        .start();
    match second {
        Err(StartError::Store(OpenError::InUse(path))) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected the store in use, got {other}"),
        Ok(_) => panic!("two runtimes hold one store"),
    }
    assert_eq!(
        first
            .execute_blocking::<Tally>("a", Cmd::Add(1))
            .unwrap()
            .version,
        2
    );
    first.shutdown_blocking().unwrap();
}

#[test]
fn the_handle_works_from_any_executor() {
    let rt = Runtime::builder()
        .in_memory()
        .aggregate::<Tally>()
        .start()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let outcome = multi
        .block_on(rt.execute::<Tally>("e", Cmd::Add(1)))
        .unwrap();
    assert_eq!(outcome.version, 1);
    // A bare executor without tokio: the timer and reply are runtime-agnostic.
    let outcome = futures::executor::block_on(rt.execute::<Tally>("e", Cmd::Add(2))).unwrap();
    assert_eq!(outcome.version, 2);
    multi.block_on(rt.shutdown()).unwrap();
    assert!(matches!(
        futures::executor::block_on(rt.execute::<Tally>("e", Cmd::Add(3))),
        Err(CommandError::ShutDown)
    ));
}

#[test]
fn a_burst_sent_the_moment_the_runtime_starts_is_not_refused() {
    // The shard's mailbox has its bound from the start: it used to get it
    // only once the arbiter ran the shard, and until then actix's default
    // of 16 refused the rest of a burst as `Overloaded`. Busy threads make
    // the arbiter late, as a loaded machine does.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    for _ in 0..20 {
        let rt = Runtime::builder()
            .in_memory()
            .shards(1)
            .aggregate::<Tally>()
            .start()
            .unwrap();
        let burst = (0..200u64).map(|i| {
            let rt = rt.clone();
            async move {
                rt.execute::<Tally>(&format!("burst-{i}"), Cmd::Add(i + 1))
                    .await
            }
        });
        let outcomes = futures::executor::block_on(futures::future::join_all(burst));
        for (i, outcome) in outcomes.into_iter().enumerate() {
            assert!(outcome.is_ok(), "command {i}: {outcome:?}");
        }
        rt.shutdown_blocking().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for hog in hogs {
        hog.join().unwrap();
    }
}

/// The thread a task spawned on `shard` runs on, after it has executed a
/// command from there (through an `Rc`: the future need not be `Send`).
fn thread_of_task_on(rt: &RuntimeHandle, shard: usize, id: String) -> std::thread::ThreadId {
    let (send, receive) = std::sync::mpsc::channel();
    let handle = rt.clone();
    rt.spawn_on_shard(shard, move || async move {
        let local = std::rc::Rc::new(handle);
        let outcome = local.execute::<Tally>(&id, Cmd::Add(1)).await;
        send.send((std::thread::current().id(), outcome.map(|o| o.events.len())))
            .unwrap();
    })
    .unwrap();
    let (thread, outcome) = receive.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(outcome.unwrap(), 1);
    thread
}

#[test]
fn tasks_spawned_on_a_shard_run_on_its_thread_and_send_commands_from_there() {
    let rt = runtime_with_shards(2);
    assert_eq!(rt.shards(), 2);
    let zero = thread_of_task_on(&rt, 0, "a".into());
    let one = thread_of_task_on(&rt, 1, "b".into());
    assert_ne!(zero, one, "two shards, two threads");
    assert_ne!(zero, std::thread::current().id());
    assert_eq!(
        thread_of_task_on(&rt, 2, "c".into()),
        zero,
        "modulo the shards"
    );
    assert_eq!(thread_of_task_on(&rt, 3, "d".into()), one);
    check(&rt, "a", 1, 1);
    rt.shutdown_blocking().unwrap();
    assert_eq!(rt.spawn_on_shard(0, || async {}), Err(SpawnError::ShutDown));
}

#[test]
fn a_full_shard_mailbox_refuses_a_task() {
    let (rt, blocker) = small_mailboxes_held(Duration::from_millis(1000));
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Vec<_> = (0..40)
        .map(|_| {
            let ran = Arc::clone(&ran);
            rt.spawn_on_shard(0, move || async move {
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    blocker.join().unwrap();
    let refused = results
        .iter()
        .filter(|r| **r == Err(SpawnError::Overloaded))
        .count();
    assert!(refused > 0, "a full mailbox must refuse");
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    wait_until("every accepted task has run", || {
        ran.load(std::sync::atomic::Ordering::SeqCst) == accepted
    });
}

/// One shard that keeps at most two actors resident, none passivated for
/// idleness, and no state cache.
fn two_resident_runtime() -> RuntimeHandle {
    Runtime::builder()
        .temporary()
        .shards(1)
        .passivation(Passivation {
            idle_after: Duration::from_secs(3600),
            resident_actors_max: 2,
            state_cache_bytes_max: 0,
        })
        .aggregate::<Tally>()
        .start()
        .unwrap()
}

#[test]
fn past_the_resident_bound_the_least_recently_used_actor_is_passivated() {
    let rt = two_resident_runtime();
    let add = |id: &str| rt.execute_blocking::<Tally>(id, Cmd::Add(1)).unwrap();
    add("a");
    add("b");
    // "a" was activated first but used last: "b" is the least recently used.
    add("a");
    add("c");
    let activations = rt.activations_total();
    add("a");
    assert_eq!(rt.activations_total(), activations, "a stayed resident");
    add("b");
    assert_eq!(rt.activations_total(), activations + 1, "b was passivated");
    check(&rt, "a", 3, 3);
    check(&rt, "b", 2, 2);
}

#[test]
fn an_actor_activated_past_the_bound_answers_its_command_when_all_others_were_used() {
    let rt = two_resident_runtime();
    for id in ["a", "b", "a", "b"] {
        rt.execute_blocking::<Tally>(id, Cmd::Add(1)).unwrap();
    }
    // Both residents are marked used: making room must not pass the new
    // actor over and passivate it before it has answered.
    for id in ["c", "d", "a", "e"] {
        let outcome = rt.execute_blocking::<Tally>(id, Cmd::Add(1));
        assert!(outcome.is_ok(), "{id}: {outcome:?}");
    }
    check(&rt, "a", 3, 3);
}

/// The state the stored events of `id` fold to, up to `version`.
fn folded(store: &dyn EventStore, id: &str, version: u64) -> Tally {
    let events = store
        .read_stream(&stream(id), 1, Direction::Forward, version as usize)
        .unwrap();
    assert_eq!(
        events.len() as u64,
        version,
        "events of {id} up to {version}"
    );
    let mut state = Tally::default();
    for event in &events {
        state.apply(&payload::decode::<Ev>(&event.payload).unwrap());
    }
    state
}

/// The snapshot of `id` and the state it holds.
fn snapshot_of(store: &dyn EventStore, id: &str) -> Option<(u64, Tally)> {
    let snapshot = store.load_snapshot(&stream(id)).unwrap()?;
    Some((
        snapshot.stream_version,
        payload::decode(&snapshot.state).unwrap(),
    ))
}

/// `count` commands `Add(first..)` to `id`, each from a thread of its own,
/// all sent before this returns (they wait on `store`'s held appends).
fn send_held(
    rt: &RuntimeHandle,
    store: &MemoryStore,
    id: &'static str,
    first: u64,
    count: usize,
) -> Vec<std::thread::JoinHandle<Result<CommandOutcome<Ev>, CommandError<TallyError>>>> {
    let held = store.held_appends();
    let threads = (first..first + count as u64)
        .map(|n| {
            let rt = rt.clone();
            std::thread::spawn(move || rt.execute_blocking::<Tally>(id, Cmd::Add(n)))
        })
        .collect();
    wait_until("the commands are decided and their appends held", || {
        store.held_appends() == held + count
    });
    threads
}

/// A runtime on a memory store, snapshotting every 10 events, after
/// `Add(1)` to `id` (version 1); from then on the store holds appends.
fn snapshotting_with_held_appends(id: &str) -> (MemoryStore, RuntimeHandle) {
    let store = MemoryStore::new();
    let rt = Runtime::builder()
        .memory_store(store.clone())
        .snapshot_every_events(Some(10))
        .aggregate::<Tally>()
        .start()
        .unwrap();
    rt.execute_blocking::<Tally>(id, Cmd::Add(1)).unwrap();
    store.hold_appends();
    (store, rt)
}

/// A hot aggregate always has appends in flight, so it cannot wait for an
/// idle moment to snapshot: a snapshot is taken when a command is decided
/// and written once that command's append is durable, never before.
#[test]
fn a_hot_aggregate_snapshots_durable_state_while_appends_are_in_flight() {
    let (store, rt) = snapshotting_with_held_appends("h");
    let threads = send_held(&rt, &store, "h", 2, 30);
    // Versions 2..=31 are decided, none durable: the snapshot taken at
    // version 10 waits.
    std::thread::sleep(Duration::from_millis(50));
    assert!(snapshot_of(&store, "h").is_none());
    // Versions 2..=11 land; twenty appends are still in flight.
    assert_eq!(store.release_appends(10), 10);
    wait_until("the snapshot at version 10 is written", || {
        snapshot_of(&store, "h").is_some()
    });
    assert_eq!(
        snapshot_of(&store, "h"),
        Some((10, folded(&store, "h", 10)))
    );
    // One snapshot at a time is taken and not yet written: none was taken
    // at version 20, decided while the one at 10 was in flight.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(snapshot_of(&store, "h").map(|(v, _)| v), Some(10));
    store.resume_appends();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    // Idle at version 31, 21 past the last snapshot: the next is taken.
    wait_until("the snapshot at version 31 is written", || {
        snapshot_of(&store, "h").is_some_and(|(v, _)| v == 31)
    });
    assert_eq!(
        snapshot_of(&store, "h"),
        Some((31, folded(&store, "h", 31)))
    );
    rt.shutdown_blocking().unwrap();
    // Activation from it.
    let rt = Runtime::builder()
        .memory_store(store.reopen())
        .aggregate::<Tally>()
        .start()
        .unwrap();
    check(&rt, "h", (1..=31).sum(), 31);
    rt.shutdown_blocking().unwrap();
}

/// A snapshot taken on a decision whose events never land (a foreign write
/// took the version) is dropped; the one written after the reload holds
/// the events that did land.
#[test]
fn a_snapshot_of_events_that_did_not_land_is_never_written() {
    let (store, rt) = snapshotting_with_held_appends("f");
    // Versions 2..=9 by the actor, then a foreign write held behind them,
    // then versions 10..=14 as the actor sees them (the snapshot is taken
    // at 10): the foreign write takes version 10 first.
    let first = send_held(&rt, &store, "f", 2, 8);
    let foreign = {
        let store = store.clone();
        let event = NewEvent::new(
            "Added",
            1,
            payload::encode(&Ev::Added(1000)).unwrap(),
            Metadata::new(),
        );
        std::thread::spawn(move || store.append(&stream("f"), ExpectedVersion::Any, vec![event]))
    };
    wait_until("the foreign write is held", || store.held_appends() == 9);
    let second = send_held(&rt, &store, "f", 10, 5);
    store.resume_appends();
    for thread in first {
        thread.join().unwrap().unwrap();
    }
    assert_eq!(foreign.join().unwrap().unwrap().last_version(), 10);
    for thread in second {
        assert!(thread.join().unwrap().is_err());
    }
    // After the reload the actor is at version 10, due a snapshot: of the
    // stored events, the foreign one among them.
    check(&rt, "f", (1..=9).sum::<u64>() + 1000, 10);
    wait_until("a snapshot is written", || {
        snapshot_of(&store, "f").is_some()
    });
    assert_eq!(
        snapshot_of(&store, "f"),
        Some((10, folded(&store, "f", 10)))
    );
    rt.shutdown_blocking().unwrap();
}

/// A timeout too long for a clock to hold means no timeout, in both the
/// async and the blocking call, and never an overflow.
#[test]
fn the_longest_timeout_is_no_timeout() {
    let rt = runtime();
    let options = || ExecuteOptions::new().timeout(Duration::MAX);
    let outcome = rt
        .execute_blocking_with::<Tally>("forever", Cmd::Add(2), options())
        .unwrap();
    assert_eq!(outcome.version, 1);
    let outcome =
        futures::executor::block_on(rt.execute_with::<Tally>("forever", Cmd::Add(3), options()))
            .unwrap();
    assert_eq!(outcome.version, 2);
    check(&rt, "forever", 5, 2);
    rt.shutdown_blocking().unwrap();
}
