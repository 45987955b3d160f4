//! The storage conformance suite: every case runs against every backend.
//!
//! A backend provides a [`Backend`]: a way to open a store with options and
//! to reopen it (close it and open the same data again). The
//! `conformance_suite!` macro expands to one `#[test]` per case.

#![allow(dead_code)]

use eventfold_domain::*;
use eventfold_storage::*;
use std::sync::{Arc, Barrier};

mod lifecycle;
#[allow(unused_imports)]
pub use lifecycle::*;

/// How the suite opens and reopens a store of one backend.
pub trait Backend {
    /// The store type.
    type Store: EventStore + Clone + Send + Sync + 'static;
    /// Opens a fresh, empty store.
    fn open(&mut self, options: StoreOptions) -> Self::Store;
    /// Closes `store` and opens the same data again.
    fn reopen(&mut self, store: Self::Store) -> Self::Store;
}

pub fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

pub fn ev(event_type: &str, payload: &[u8]) -> NewEvent {
    NewEvent::new(event_type, 1, payload.to_vec(), Metadata::new())
}

fn payloads(events: &[RecordedEvent]) -> Vec<Vec<u8>> {
    events.iter().map(|e| e.payload.clone()).collect()
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

fn is_conflict(r: &Result<AppendOutcome, AppendError>, actual_version: u64) -> bool {
    matches!(r, Err(AppendError::WrongExpectedVersion { actual, .. }) if *actual == actual_version)
}

pub fn expected_version_semantics<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("acc-1");
    use ExpectedVersion::*;
    assert!(is_conflict(
        &store.append(&s, StreamExists, vec![ev("A", b"x")]),
        0
    ));
    assert!(is_conflict(
        &store.append(&s, Exact(1), vec![ev("A", b"x")]),
        0
    ));
    assert_eq!(store.head(), 0, "a refused append writes nothing");
    let first = store.append(&s, NoStream, vec![ev("A", b"1")]).unwrap();
    assert_eq!(
        (
            first.last_version(),
            first.first_position,
            first.last_position
        ),
        (1, 1, 1)
    );
    assert!(!first.deduplicated);
    assert!(is_conflict(
        &store.append(&s, NoStream, vec![ev("A", b"x")]),
        1
    ));
    assert!(is_conflict(
        &store.append(&s, Exact(0), vec![ev("A", b"x")]),
        1
    ));
    assert!(is_conflict(
        &store.append(&s, Exact(2), vec![ev("A", b"x")]),
        1
    ));
    assert_eq!(
        store
            .append(&s, Exact(1), vec![ev("A", b"2")])
            .unwrap()
            .last_version(),
        2
    );
    assert_eq!(
        store
            .append(&s, StreamExists, vec![ev("A", b"3")])
            .unwrap()
            .last_version(),
        3
    );
    assert_eq!(
        store
            .append(&s, Any, vec![ev("A", b"4")])
            .unwrap()
            .last_version(),
        4
    );
    assert_eq!(
        store
            .append(&sid("acc-2"), Any, vec![ev("A", b"5")])
            .unwrap()
            .last_version(),
        1
    );
    assert_eq!(
        store
            .append(&sid("acc-3"), Exact(0), vec![ev("A", b"6")])
            .unwrap()
            .last_version(),
        1
    );
    match store.append(&s, Exact(9), vec![ev("A", b"x")]) {
        Err(AppendError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!((stream, expected, actual), (s.clone(), Exact(9), 4));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.head(), 6);
    assert_eq!(store.stream_version(&s).unwrap(), 4);
}

pub fn after_chains_an_append_to_the_last_event<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("acc-1");
    let first = ev("E", b"1");
    let first_id = first.metadata.event_id;
    store
        .append(&s, ExpectedVersion::NoStream, vec![first])
        .unwrap();
    // A foreign event takes version 2.
    store
        .append(&s, ExpectedVersion::Any, vec![ev("E", b"foreign")])
        .unwrap();
    let planned = ev("E", b"planned");
    let planned_id = planned.metadata.event_id;
    // An append chained to an event that never landed fails, although the
    // version alone would match.
    let chained = ExpectedVersion::After {
        version: 2,
        event_id: planned_id,
    };
    assert!(is_conflict(
        &store.append(&s, chained, vec![ev("E", b"x")]),
        2
    ));
    let wrong_tip = ExpectedVersion::After {
        version: 2,
        event_id: first_id,
    };
    assert!(is_conflict(
        &store.append(&s, wrong_tip, vec![ev("E", b"x")]),
        2
    ));
    let store = b.reopen(store);
    let tip = store
        .read_stream(&s, u64::MAX, Direction::Backward, 1)
        .unwrap()[0]
        .metadata
        .event_id;
    let out = store
        .append(
            &s,
            ExpectedVersion::After {
                version: 2,
                event_id: tip,
            },
            vec![planned],
        )
        .unwrap();
    assert_eq!(out.last_version(), 3);
    let next = ExpectedVersion::After {
        version: 3,
        event_id: planned_id,
    };
    assert_eq!(
        store
            .append(&s, next, vec![ev("E", b"4")])
            .unwrap()
            .last_version(),
        4
    );
    assert!(is_conflict(
        &store.append(&sid("new-1"), next, vec![ev("E", b"x")]),
        0
    ));
}

pub fn multi_event_append_is_contiguous<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("acc-1");
    store
        .append(&sid("other"), ExpectedVersion::Any, vec![ev("A", b"0")])
        .unwrap();
    let out = store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![ev("A", b"1"), ev("B", b"2"), ev("C", b"3")],
        )
        .unwrap();
    assert_eq!(out.streams[0].first_version, 1);
    assert_eq!(out.streams[0].last_version, 3);
    assert_eq!((out.first_position, out.last_position), (2, 4));
    let events = store.read_stream(&s, 1, Direction::Forward, 10).unwrap();
    assert_eq!(versions(&events), vec![1, 2, 3]);
    assert_eq!(
        events.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(
        payloads(&events),
        vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
}

pub fn multi_stream_append_is_atomic<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let (a, c) = (sid("acc-a"), sid("acc-c"));
    store
        .append(&a, ExpectedVersion::NoStream, vec![ev("A", b"a1")])
        .unwrap();
    let request = |expected_c| AppendRequest {
        streams: vec![
            StreamAppend {
                stream: a.clone(),
                expected: ExpectedVersion::Exact(1),
                events: vec![ev("W", b"a2")],
            },
            StreamAppend {
                stream: c.clone(),
                expected: expected_c,
                events: vec![ev("D", b"c1"), ev("D", b"c2")],
            },
        ],
        command_id: None,
    };
    // The second stream's check fails: nothing of either stream is written.
    let refused = store.submit(request(ExpectedVersion::StreamExists)).wait();
    assert!(
        matches!(refused, Err(AppendError::WrongExpectedVersion { ref stream, .. }) if *stream == c)
    );
    assert_eq!(store.head(), 1);
    assert_eq!(store.stream_version(&a).unwrap(), 1);
    assert_eq!(store.stream_version(&c).unwrap(), 0);
    let out = store
        .submit(request(ExpectedVersion::NoStream))
        .wait()
        .unwrap();
    assert_eq!((out.first_position, out.last_position), (2, 4));
    assert_eq!(
        out.streams[0],
        StreamWritten {
            stream: a.clone(),
            first_version: 2,
            last_version: 2
        }
    );
    assert_eq!(
        out.streams[1],
        StreamWritten {
            stream: c.clone(),
            first_version: 1,
            last_version: 2
        }
    );
    assert_eq!(
        versions(&store.read_stream(&c, 1, Direction::Forward, 9).unwrap()),
        vec![1, 2]
    );
    let all = store.read_all(1, 10, &Filter::all()).unwrap();
    assert_eq!(all.events.len(), 4);
}

pub fn idempotent_append_survives_reopen<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("acc-1");
    let cmd = CommandId::from_name("deposit-42");
    let request = AppendRequest::single(
        s.clone(),
        ExpectedVersion::NoStream,
        vec![ev("D", b"1"), ev("D", b"2")],
    )
    .with_command_id(cmd);
    let original = store.submit(request.clone()).wait().unwrap();
    assert!(!original.deduplicated);
    let retry = store.submit(request.clone()).wait().unwrap();
    assert!(retry.deduplicated);
    assert_eq!(
        (retry.first_position, retry.last_position),
        (original.first_position, original.last_position)
    );
    assert_eq!(retry.streams, original.streams);
    assert_eq!(store.head(), 2, "a retry writes nothing");
    // Another append under the same id, even one that would conflict, returns the original.
    let other = AppendRequest::single(sid("acc-9"), ExpectedVersion::Exact(7), vec![ev("D", b"x")])
        .with_command_id(cmd);
    assert_eq!(
        store.submit(other).wait().unwrap().streams,
        original.streams
    );
    // A different id appends.
    let next = AppendRequest::single(s.clone(), ExpectedVersion::Exact(2), vec![ev("D", b"3")])
        .with_command_id(CommandId::from_name("deposit-43"));
    assert_eq!(store.submit(next).wait().unwrap().last_position, 3);
    let store = b.reopen(store);
    let after = store.submit(request).wait().unwrap();
    assert!(after.deduplicated);
    assert_eq!(after.streams, original.streams);
    assert_eq!(store.head(), 3);
    assert_eq!(store.stream_version(&s).unwrap(), 3);
}

pub fn positions_are_gapless_and_head_is_last<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    for i in 0..30u64 {
        let s = sid(&format!("s-{}", i % 4));
        let events = (0..=i % 3).map(|_| ev("E", &i.to_be_bytes())).collect();
        store.append(&s, ExpectedVersion::Any, events).unwrap();
    }
    let all = store.read_all(0, 1000, &Filter::all()).unwrap();
    let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=store.head()).collect::<Vec<_>>());
    assert_eq!(all.next_position, store.head() + 1);
    assert_eq!(all.head, store.head());
    let ids: std::collections::HashSet<_> =
        all.events.iter().map(|e| e.metadata.event_id).collect();
    assert_eq!(ids.len(), all.events.len(), "event ids are unique");
    assert!(
        all.events
            .windows(2)
            .all(|w| w[0].recorded_at <= w[1].recorded_at)
    );
}

/// Five events in `acc-1` (payloads 1 to 5) and one in `acc-10`, a stream
/// whose id extends the first's; returns `acc-1`.
fn five_and_one(store: &impl EventStore) -> StreamId {
    let s = sid("acc-1");
    let events: Vec<NewEvent> = (1..=5u8).map(|i| ev("E", &[i])).collect();
    store.append(&s, ExpectedVersion::NoStream, events).unwrap();
    store
        .append(
            &sid("acc-10"),
            ExpectedVersion::NoStream,
            vec![ev("E", b"other")],
        )
        .unwrap();
    s
}

pub fn stream_read_bounds<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = five_and_one(&store);
    let read = |from, dir, max| versions(&store.read_stream(&s, from, dir, max).unwrap());
    use Direction::*;
    assert_eq!(read(1, Forward, 100), vec![1, 2, 3, 4, 5]);
    assert_eq!(read(0, Forward, 2), vec![1, 2]);
    assert_eq!(read(4, Forward, 100), vec![4, 5]);
    assert_eq!(read(5, Forward, 1), vec![5]);
    assert_eq!(read(6, Forward, 100), Vec::<u64>::new());
    assert_eq!(read(u64::MAX, Forward, 100), Vec::<u64>::new());
    assert_eq!(read(1, Forward, 0), Vec::<u64>::new());
    assert_eq!(read(u64::MAX, Backward, 100), vec![5, 4, 3, 2, 1]);
    assert_eq!(read(3, Backward, 2), vec![3, 2]);
    assert_eq!(read(9, Backward, 1), vec![5]);
    assert_eq!(read(1, Backward, 5), vec![1]);
    assert_eq!(read(0, Backward, 5), Vec::<u64>::new());
    assert_eq!(read(3, Backward, 0), Vec::<u64>::new());
    let missing = sid("nope");
    assert!(
        store
            .read_stream(&missing, 1, Forward, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_stream(&missing, u64::MAX, Backward, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stream_version(&missing).unwrap(), 0);
    // A stream whose id is a prefix of another's reads only its own events.
    assert!(
        store
            .read_stream(&sid("acc"), 1, Forward, 10)
            .unwrap()
            .is_empty()
    );
}

pub fn global_read_bounds<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let empty = store.read_all(1, 10, &Filter::all()).unwrap();
    assert!(empty.events.is_empty());
    assert_eq!((empty.next_position, empty.head), (1, 0));
    for i in 0..10u8 {
        store
            .append(
                &sid(&format!("s-{i}")),
                ExpectedVersion::NoStream,
                vec![ev("E", &[i])],
            )
            .unwrap();
    }
    let positions = |s: &GlobalSlice| s.events.iter().map(|e| e.position).collect::<Vec<_>>();
    let first = store.read_all(0, 4, &Filter::all()).unwrap();
    assert_eq!(positions(&first), vec![1, 2, 3, 4]);
    assert_eq!(first.next_position, 5);
    let rest = store
        .read_all(first.next_position, 100, &Filter::all())
        .unwrap();
    assert_eq!(positions(&rest), (5..=10).collect::<Vec<_>>());
    assert_eq!(rest.next_position, 11);
    let zero = store.read_all(3, 0, &Filter::all()).unwrap();
    assert!(zero.events.is_empty());
    assert_eq!(zero.next_position, 3);
    let beyond = store.read_all(11, 10, &Filter::all()).unwrap();
    assert!(beyond.events.is_empty());
    assert_eq!(beyond.next_position, 11);
    assert!(
        store
            .read_all(u64::MAX, 10, &Filter::all())
            .unwrap()
            .events
            .is_empty()
    );
}

pub fn filtered_global_reads<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let plan = [
        ("account-1", "Opened"),
        ("order-1", "Placed"),
        ("account-2", "Opened"),
        ("account-1", "Deposited"),
        ("order-2", "Placed"),
        ("accounting", "Opened"),
        ("account-2", "Deposited"),
    ];
    for (stream, ty) in plan {
        store
            .append(&sid(stream), ExpectedVersion::Any, vec![ev(ty, b"")])
            .unwrap();
    }
    let positions = |f: &Filter, from, max| {
        let slice = store.read_all(from, max, f).unwrap();
        (
            slice.events.iter().map(|e| e.position).collect::<Vec<_>>(),
            slice.next_position,
        )
    };
    assert_eq!(
        positions(&Filter::event_types(["Opened"]), 1, 100),
        (vec![1, 3, 6], 8)
    );
    assert_eq!(
        positions(&Filter::event_types(["Opened", "Placed"]), 1, 100),
        (vec![1, 2, 3, 5, 6], 8)
    );
    assert_eq!(
        positions(&Filter::categories(["account"]), 1, 100),
        (vec![1, 3, 4, 7], 8)
    );
    assert_eq!(
        positions(&Filter::categories(["order"]), 1, 1),
        (vec![2], 3)
    );
    assert_eq!(
        positions(&Filter::categories(["order"]), 3, 1),
        (vec![5], 6)
    );
    assert_eq!(
        positions(&Filter::categories(["accounting"]), 1, 100),
        (vec![6], 8)
    );
    let both = Filter {
        event_types: vec!["Deposited".into()],
        categories: vec!["account".into()],
    };
    assert_eq!(positions(&both, 1, 100), (vec![4, 7], 8));
    assert_eq!(
        positions(&Filter::event_types(["Nothing"]), 1, 100),
        (vec![], 8)
    );
}

pub fn temporal_reads<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("acc-1");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![ev("E", b"1"), ev("E", b"2")],
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let between = Timestamp::now();
    std::thread::sleep(std::time::Duration::from_millis(5));
    store
        .append(&s, ExpectedVersion::Exact(2), vec![ev("E", b"3")])
        .unwrap();
    let at = |t| versions(&store.read_stream_until(&s, t, 100).unwrap());
    assert_eq!(at(between), vec![1, 2]);
    assert_eq!(at(Timestamp::EPOCH), Vec::<u64>::new());
    assert_eq!(at(Timestamp::now()), vec![1, 2, 3]);
    let events = store.read_stream(&s, 1, Direction::Forward, 10).unwrap();
    assert!(events[0].recorded_at <= between && events[2].recorded_at > between);
    assert_eq!(
        versions(&store.read_stream_until(&s, Timestamp::now(), 1).unwrap()),
        vec![1]
    );
}

pub fn metadata_round_trips<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("acc-1");
    let metadata = Metadata::new()
        .with_correlation(CorrelationId::random())
        .with_causation(CausationId::random())
        .with_header("user", "alice")
        .with_header("trace", "");
    let event = NewEvent::new("Deposited", 7, vec![0, 1, 2, 255], metadata.clone());
    store
        .append(&s, ExpectedVersion::Any, vec![event, ev("Bare", b"")])
        .unwrap();
    let store = b.reopen(store);
    let events = store.read_stream(&s, 1, Direction::Forward, 10).unwrap();
    assert_eq!(events[0].metadata, metadata);
    assert_eq!(events[0].schema_version, 7);
    assert_eq!(events[0].event_type, "Deposited");
    assert_eq!(events[0].payload, vec![0, 1, 2, 255]);
    assert_eq!(events[1].metadata.correlation_id, None);
    assert!(events[1].payload.is_empty());
}

pub fn snapshots<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("acc-1");
    assert_eq!(store.load_snapshot(&s).unwrap(), None);
    let first = Snapshot {
        snapshot_version: 1,
        stream_version: 10,
        state: b"ten".to_vec(),
    };
    store.save_snapshot(&s, &first).unwrap();
    assert_eq!(store.load_snapshot(&s).unwrap(), Some(first));
    let second = Snapshot {
        snapshot_version: 2,
        stream_version: 20,
        state: b"twenty".to_vec(),
    };
    store.save_snapshot(&s, &second).unwrap();
    let store = b.reopen(store);
    assert_eq!(store.load_snapshot(&s).unwrap(), Some(second));
    assert_eq!(store.load_snapshot(&sid("acc-2")).unwrap(), None);
}

/// Reads from memory only answer exactly what the blocking reads answer,
/// or say they need I/O; data just written (memtables) is answered.
pub fn cached_reads_agree_or_need_io<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = five_and_one(&store);
    let snapshot = Snapshot {
        snapshot_version: 1,
        stream_version: 3,
        state: b"three".to_vec(),
    };
    store.save_snapshot(&s, &snapshot).unwrap();
    let check = |store: &B::Store, must_answer: bool| {
        for (stream, from, max) in [
            (&s, 1, 100),
            (&s, 4, 100),
            (&s, 2, 2),
            (&s, 6, 10),
            (&s, 0, 10),
            (&s, 1, 0),
            (&sid("nope"), 1, 10),
        ] {
            let blocking = store
                .read_stream(stream, from, Direction::Forward, max)
                .unwrap();
            match store.read_stream_cached(stream, from, max).unwrap() {
                Cached::Ready(cached) => assert_eq!(cached, blocking, "{stream} from {from}"),
                Cached::NeedsIo => assert!(!must_answer, "{stream} from {from} needs I/O"),
            }
        }
        for stream in [&s, &sid("nope")] {
            let blocking = store.load_snapshot(stream).unwrap();
            match store.load_snapshot_cached(stream).unwrap() {
                Cached::Ready(cached) => assert_eq!(cached, blocking),
                Cached::NeedsIo => assert!(!must_answer, "snapshot of {stream} needs I/O"),
            }
        }
    };
    check(&store, true);
    let store = b.reopen(store);
    check(&store, false);
}

pub fn checkpoints<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    assert_eq!(store.checkpoint("balances").unwrap(), None);
    store.set_checkpoint("balances", 42).unwrap();
    store.set_checkpoint("audit", 7).unwrap();
    store.set_checkpoint("balances", 43).unwrap();
    let store = b.reopen(store);
    assert_eq!(store.checkpoint("balances").unwrap(), Some(43));
    assert_eq!(store.checkpoint("audit").unwrap(), Some(7));
    assert!(matches!(
        store.checkpoint(""),
        Err(ReadError::InvalidName(NameError::Empty))
    ));
    assert!(matches!(
        store.set_checkpoint("a\0b", 1),
        Err(WriteError::InvalidName(NameError::ContainsNul))
    ));
    let long = "x".repeat(NAME_BYTES_MAX + 1);
    assert!(matches!(
        store.set_checkpoint(&long, 1),
        Err(WriteError::InvalidName(NameError::TooLong { .. }))
    ));
}

pub fn read_models_commit_with_checkpoint<B: Backend>(b: &mut B) {
    let faults = FaultInjector::new();
    let options = StoreOptions {
        faults: Some(faults.clone()),
        ..StoreOptions::default()
    };
    let store = b.open(options);
    let mut batch = ReadModelBatch::new();
    batch.put("balances", b"acc-1".to_vec(), b"10".to_vec());
    batch.put("balances", b"acc-2".to_vec(), b"20".to_vec());
    batch.put("balances", b"bcc-1".to_vec(), b"30".to_vec());
    batch.put("balancesX", b"acc-1".to_vec(), b"other model".to_vec());
    batch.put("other", b"".to_vec(), b"empty key".to_vec());
    batch.set_checkpoint("balances", 3);
    store.commit_read_model(batch).unwrap();
    assert_eq!(
        store.read_model_get("balances", b"acc-2").unwrap(),
        Some(b"20".to_vec())
    );
    assert_eq!(store.read_model_get("balances", b"zzz").unwrap(), None);
    assert_eq!(
        store.read_model_get("other", b"").unwrap(),
        Some(b"empty key".to_vec())
    );
    assert_eq!(store.checkpoint("balances").unwrap(), Some(3));
    let scan = store.read_model_scan("balances", b"acc-", 100).unwrap();
    assert_eq!(
        scan,
        vec![
            (b"acc-1".to_vec(), b"10".to_vec()),
            (b"acc-2".to_vec(), b"20".to_vec())
        ]
    );
    assert_eq!(
        store.read_model_scan("balances", b"", 100).unwrap().len(),
        3
    );
    assert_eq!(store.read_model_scan("balances", b"", 2).unwrap().len(), 2);
    assert_eq!(store.read_model_scan("balances", b"", 0).unwrap().len(), 0);
    let mut update = ReadModelBatch::new();
    update.delete("balances", b"acc-1".to_vec());
    update.put("balances", b"acc-2".to_vec(), b"25".to_vec());
    update.set_checkpoint("balances", 4);
    store.commit_read_model(update).unwrap();
    assert_eq!(store.read_model_get("balances", b"acc-1").unwrap(), None);
    assert_eq!(
        store.read_model_get("balances", b"acc-2").unwrap(),
        Some(b"25".to_vec())
    );
    // A failed commit changes neither the model nor the checkpoint.
    let mut failing = ReadModelBatch::new();
    failing.put("balances", b"acc-2".to_vec(), b"999".to_vec());
    failing.set_checkpoint("balances", 5);
    faults.fail_next_writes(1);
    assert!(matches!(
        store.commit_read_model(failing),
        Err(WriteError::Io(_))
    ));
    let store = b.reopen(store);
    assert_eq!(
        store.read_model_get("balances", b"acc-2").unwrap(),
        Some(b"25".to_vec())
    );
    assert_eq!(store.checkpoint("balances").unwrap(), Some(4));
    assert_eq!(
        store.read_model_get("balancesX", b"acc-1").unwrap(),
        Some(b"other model".to_vec())
    );
}

pub fn limits_are_typed_errors_and_write_nothing<B: Backend>(b: &mut B) {
    let options = StoreOptions {
        payload_bytes_max: 100,
        events_per_append_max: 3,
        ..StoreOptions::default()
    };
    let store = b.open(options);
    let s = sid("acc-1");
    let r = store.append(&s, ExpectedVersion::Any, vec![ev("E", &[0; 101])]);
    assert!(matches!(
        r,
        Err(AppendError::PayloadTooLarge {
            bytes: 101,
            limit: 100,
            index: 0,
            ..
        })
    ));
    assert!(
        store
            .append(&s, ExpectedVersion::Any, vec![ev("E", &[0; 100])])
            .is_ok()
    );
    let r = store.append(
        &s,
        ExpectedVersion::Any,
        (0..4).map(|_| ev("E", b"")).collect(),
    );
    assert!(matches!(
        r,
        Err(AppendError::TooManyEvents { count: 4, limit: 3 })
    ));
    let twin = ev("E", b"");
    let r = store.append(&s, ExpectedVersion::Any, vec![twin.clone(), twin]);
    assert!(
        matches!(r, Err(AppendError::InvalidEvent { index: 1, .. })),
        "{r:?}"
    );
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![]),
        Err(AppendError::NoEvents { .. })
    ));
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![ev("", b"")]),
        Err(AppendError::InvalidEvent { .. })
    ));
    let long_type = "T".repeat(300);
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![ev(&long_type, b"")]),
        Err(AppendError::InvalidEvent { .. })
    ));
    let mut big_headers = ev("E", b"");
    big_headers
        .metadata
        .headers
        .push(("k".into(), "v".repeat(20_000)));
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![big_headers]),
        Err(AppendError::InvalidEvent { .. })
    ));
    let none = AppendRequest {
        streams: vec![],
        command_id: None,
    };
    assert!(matches!(
        store.submit(none).wait(),
        Err(AppendError::NoStreams)
    ));
    let twice = AppendRequest {
        streams: vec![
            StreamAppend {
                stream: s.clone(),
                expected: ExpectedVersion::Any,
                events: vec![ev("E", b"")],
            },
            StreamAppend {
                stream: s.clone(),
                expected: ExpectedVersion::Any,
                events: vec![ev("E", b"")],
            },
        ],
        command_id: None,
    };
    assert!(matches!(
        store.submit(twice).wait(),
        Err(AppendError::DuplicateStream { .. })
    ));
    let big_snapshot = Snapshot {
        snapshot_version: 1,
        stream_version: 1,
        state: vec![0; 101],
    };
    assert!(matches!(
        store.save_snapshot(&s, &big_snapshot),
        Err(WriteError::ValueTooLarge { .. })
    ));
    assert_eq!(store.head(), 1);
    assert_eq!(store.verify().unwrap().faults, vec![]);
}

pub fn failed_write_poisons_until_reopen<B: Backend>(b: &mut B) {
    let faults = FaultInjector::new();
    let store = b.open(StoreOptions {
        faults: Some(faults.clone()),
        ..StoreOptions::default()
    });
    let s = sid("acc-1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("E", b"1")])
        .unwrap();
    faults.fail_next_writes(1);
    let failed = store.append(&s, ExpectedVersion::Exact(1), vec![ev("E", b"lost")]);
    assert!(matches!(failed, Err(AppendError::Io(_))), "{failed:?}");
    assert!(matches!(
        store.append(&s, ExpectedVersion::Exact(1), vec![ev("E", b"2")]),
        Err(AppendError::Poisoned)
    ));
    assert!(matches!(
        store.set_checkpoint("c", 1),
        Err(WriteError::Poisoned)
    ));
    let snap = Snapshot {
        snapshot_version: 1,
        stream_version: 1,
        state: vec![],
    };
    assert!(matches!(
        store.save_snapshot(&s, &snap),
        Err(WriteError::Poisoned)
    ));
    // Reads still work while poisoned.
    assert_eq!(
        store
            .read_stream(&s, 1, Direction::Forward, 10)
            .unwrap()
            .len(),
        1
    );
    let store = b.reopen(store);
    assert_eq!(
        store.stream_version(&s).unwrap(),
        1,
        "the failed append left nothing"
    );
    let out = store
        .append(&s, ExpectedVersion::Exact(1), vec![ev("E", b"2")])
        .unwrap();
    assert_eq!((out.last_version(), out.last_position), (2, 2));
    assert!(store.verify().unwrap().is_clean());
}

pub fn concurrent_exact_appends_one_wins<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("hot-1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("E", b"0")])
        .unwrap();
    for round in 1..=3u64 {
        let k = 16;
        let barrier = Arc::new(Barrier::new(k));
        let handles: Vec<_> = (0..k)
            .map(|i| {
                let (store, s, barrier) = (store.clone(), s.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    store.append(&s, ExpectedVersion::Exact(round), vec![ev("E", &[i as u8])])
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        for r in &results {
            assert!(r.is_ok() || is_conflict(r, round + 1), "{r:?}");
        }
        assert_eq!(store.stream_version(&s).unwrap(), round + 1);
    }
}

pub fn concurrent_appends_stay_gapless<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let threads = 8;
    let per_thread = 50;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let s = sid(&format!("s-{}", (t + i) % 5));
                    store
                        .append(&s, ExpectedVersion::Any, vec![ev("E", &[t as u8, i as u8])])
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total = (threads * per_thread) as u64;
    assert_eq!(store.head(), total);
    let all = store.read_all(1, 10_000, &Filter::all()).unwrap();
    assert_eq!(
        all.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let mut per_stream = 0;
    for i in 0..5 {
        let events = store
            .read_stream(&sid(&format!("s-{i}")), 1, Direction::Forward, 10_000)
            .unwrap();
        assert_eq!(
            versions(&events),
            (1..=events.len() as u64).collect::<Vec<_>>()
        );
        assert!(events.windows(2).all(|w| w[0].position < w[1].position));
        per_stream += events.len();
    }
    assert_eq!(per_stream as u64, total);
    let stats = store.writer_stats();
    assert_eq!((stats.appends, stats.events), (total, total));
    assert!(stats.batches >= 1 && stats.batches <= total);
    assert!(store.verify().unwrap().is_clean());
}

pub fn reopen_keeps_everything<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    for i in 0..20u8 {
        store
            .append(
                &sid(&format!("s-{}", i % 3)),
                ExpectedVersion::Any,
                vec![ev("E", &[i])],
            )
            .unwrap();
    }
    let before = store.read_all(1, 100, &Filter::all()).unwrap();
    let store = b.reopen(store);
    let after = store.read_all(1, 100, &Filter::all()).unwrap();
    assert_eq!(before, after);
    assert_eq!(store.head(), 20);
    let out = store
        .append(&sid("s-0"), ExpectedVersion::Exact(7), vec![ev("E", b"x")])
        .unwrap();
    assert_eq!((out.last_version(), out.last_position), (8, 21));
    let last = store.read_all(21, 1, &Filter::all()).unwrap();
    assert!(last.events[0].recorded_at >= after.events[19].recorded_at);
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.faults);
    assert_eq!((report.events, report.streams), (21, 3));
}

pub fn command_outcomes_are_durable<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let cmd = CommandId::from_name("open-1");
    assert_eq!(store.command_outcome(cmd).unwrap(), None);
    let request =
        AppendRequest::single(sid("acc-1"), ExpectedVersion::NoStream, vec![ev("O", b"")])
            .with_command_id(cmd);
    let outcome = store.submit(request).wait().unwrap();
    // From memory, right after the append: the same answer as a read.
    let other = CommandId::from_name("other");
    for id in [cmd, other] {
        assert_eq!(
            store.command_outcome_cached(id).unwrap(),
            Cached::Ready(store.command_outcome(id).unwrap()),
            "{id}"
        );
    }
    let store = b.reopen(store);
    let found = store
        .command_outcome(cmd)
        .unwrap()
        .expect("applied command is recorded");
    // After a reopen the outcome may be on disk only; if it is answered
    // from memory, it is the same.
    if let Cached::Ready(cached) = store.command_outcome_cached(cmd).unwrap() {
        assert_eq!(cached.as_ref(), Some(&found));
    }
    assert!(found.deduplicated);
    assert_eq!(
        (found.first_position, found.last_position, found.streams),
        (
            outcome.first_position,
            outcome.last_position,
            outcome.streams
        )
    );
    assert_eq!(
        store
            .command_outcome(CommandId::from_name("other"))
            .unwrap(),
        None
    );
}

/// Collects what a commit listener is told.
#[derive(Default)]
pub struct Collector(std::sync::Mutex<Vec<RecordedEvent>>);

impl CommitListener for Collector {
    fn committed(&self, events: Arc<[RecordedEvent]>) {
        self.0.lock().unwrap().extend_from_slice(&events);
    }
}

pub fn commit_listener_sees_every_durable_event_in_order<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    store
        .append(
            &sid("before-1"),
            ExpectedVersion::Any,
            vec![ev("E", b"early")],
        )
        .unwrap();
    let collector = Arc::new(Collector::default());
    store.set_commit_listener(collector.clone());
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25u8 {
                    let events = vec![ev("E", &[t, i]), ev("F", &[t, i])];
                    store
                        .append(&sid(&format!("s-{t}")), ExpectedVersion::Any, events)
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // A refused append tells the listener nothing.
    assert!(
        store
            .append(&sid("s-0"), ExpectedVersion::NoStream, vec![ev("E", b"")])
            .is_err()
    );
    let seen = collector.0.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|e| e.position).collect::<Vec<_>>(),
        (2..=201).collect::<Vec<_>>()
    );
    let stored = store.read_all(2, 1000, &Filter::all()).unwrap().events;
    assert_eq!(
        seen, stored,
        "the listener gets the events exactly as stored"
    );
}

/// Expands to one test per conformance case, for the backend `$make`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            expected_version_semantics, after_chains_an_append_to_the_last_event, multi_event_append_is_contiguous, multi_stream_append_is_atomic,
            idempotent_append_survives_reopen, positions_are_gapless_and_head_is_last, stream_read_bounds,
            global_read_bounds, filtered_global_reads, temporal_reads, metadata_round_trips, snapshots, cached_reads_agree_or_need_io,
            checkpoints, read_models_commit_with_checkpoint, limits_are_typed_errors_and_write_nothing,
            failed_write_poisons_until_reopen, concurrent_exact_appends_one_wins,
            concurrent_appends_stay_gapless, reopen_keeps_everything, command_outcomes_are_durable,
            commit_listener_sees_every_durable_event_in_order,
            tck_delete_messages_to, truncation_is_idempotent_and_the_log_stays_gapless,
            soft_delete_reads_empty_and_writing_continues_versions, tombstone_refuses_every_later_append,
            retention_max_count, retention_max_age, a_large_deletion_is_erased_in_batches,
            subject_keys_are_created_once_and_forgotten_for_good);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        mod conformance_cases {
            use super::*;
            $(
                #[test]
                fn $case() {
                    let mut backend = $make;
                    conformance::$case(&mut backend);
                }
            )*
        }
    };
}
