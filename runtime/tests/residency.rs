//! Where aggregates live: passivation by idle time and by count, the state
//! cache, the resident bound, tasks on a shard's thread.

mod common;

use common::tally::*;
use eventfold_runtime::*;
use std::sync::Arc;
use std::time::Duration;

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
