//! What fails and what is kept: panics, failed appends, full mailboxes,
//! shutdown, a store another runtime holds.

mod common;

use common::tally::*;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use std::time::Duration;

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
    let rt = one_shard_in_memory();
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
