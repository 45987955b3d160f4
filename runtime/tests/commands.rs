//! Commands through the public handle: ordering, pipelining, retried
//! command ids, timeouts, bad requests, any executor, the bus.

mod common;

use common::tally::*;
use eventfold_runtime::domain::*;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Barrier};
use std::time::Duration;

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
fn events_reach_the_bus_only_once_durable_and_in_order() {
    let rt = runtime();
    let mut bus = rt.subscribe();
    for i in 1..=20u64 {
        rt.execute_blocking::<Tally>(&format!("b{}", i % 3), Cmd::Add(i))
            .unwrap();
    }
    let mut positions = Vec::new();
    while positions.len() < 20 {
        let batch = bus
            .try_recv()
            .expect("the bus is open and did not lag")
            .expect("every durable batch is published");
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
        let rt = one_shard_in_memory();
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

#[test]
fn headers_of_a_command_are_stored_with_its_events() {
    let rt = runtime();
    let options = ExecuteOptions::new()
        .header("request-id", "r-1")
        .header("user", "ann");
    rt.execute_blocking_with::<Tally>("h", Cmd::Add(2), options)
        .unwrap();
    let stream = StreamId::new("tally-h").unwrap();
    let events = rt
        .store()
        .read_stream(&stream, 1, Direction::Forward, 10)
        .unwrap();
    let headers = &events[0].metadata.headers;
    assert_eq!(
        headers,
        &[
            ("request-id".to_owned(), "r-1".to_owned()),
            ("user".to_owned(), "ann".to_owned())
        ]
    );
}
