//! Snapshots: activation from a snapshot and its tail, snapshots of a hot
//! aggregate while its appends are in flight, none of events that did
//! not land.

mod common;

use common::tally::*;
use eventfold_runtime::domain::*;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use std::time::Duration;

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
