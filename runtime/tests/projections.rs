//! The read side through the public handle: catch-up and live delivery,
//! crashes, slow subscribers, rebuilds, dead letters, partitions, filters,
//! read-your-writes.

mod common;

use eventfold_runtime::domain::*;
use eventfold_runtime::projection::{ReadModelTx, decode};
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Ev {
    Added(u64),
    Other,
}

impl DomainEvent for Ev {
    fn event_type(&self) -> &'static str {
        match self {
            Ev::Added(_) => "Added",
            Ev::Other => "Other",
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Counter;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const KIND: &'static str = "ctr";
    type Command = u64;
    type Event = Ev;
    type Error = Never;
    fn handle(&self, n: u64) -> Result<Vec<Ev>, Never> {
        Ok(vec![Ev::Added(n)])
    }
    fn apply(&mut self, _: &Ev) {}
}

fn new_event(ev: &Ev) -> NewEvent {
    NewEvent::new(
        ev.event_type(),
        1,
        payload::encode(ev).unwrap(),
        Metadata::new(),
    )
}

fn append(store: &dyn EventStore, stream: &str, events: &[Ev]) -> AppendOutcome {
    let stream = StreamId::new(stream).unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            events.iter().map(new_event).collect(),
        )
        .unwrap()
}

/// Sum per stream and in total, and a count per stream: what the fold of the
/// log must equal.
struct Totals {
    name: &'static str,
    filter: Filter,
    /// Keep per-stream keys only (for partitioned runs).
    per_stream_only: bool,
    /// Events with this amount fail while the switch is on.
    fail_on: Option<(u64, Arc<AtomicBool>)>,
}

impl Totals {
    fn named(name: &'static str) -> Self {
        Self {
            name,
            filter: Filter::all(),
            per_stream_only: false,
            fail_on: None,
        }
    }
}

impl Projection for Totals {
    fn name(&self) -> &str {
        self.name
    }
    fn filter(&self) -> Filter {
        self.filter.clone()
    }
    fn apply(
        &mut self,
        event: &RecordedEvent,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError> {
        let amount = match decode::<Ev>(event)? {
            Ev::Added(n) => n,
            Ev::Other => 0,
        };
        let key = format!("s/{}", event.stream_id);
        let (sum, count): (u64, u64) = model.get_as(key.as_bytes())?.unwrap_or((0, 0));
        model.put_as(key.as_bytes(), &(sum + amount, count + 1))?;
        if let Some((bad, on)) = &self.fail_on
            && amount == *bad
            && on.load(Ordering::SeqCst)
        {
            // The write above must be undone.
            return Err(HandlerError::new(format!("refusing {bad}")));
        }
        if !self.per_stream_only {
            let total: u64 = model.get_as(b"total")?.unwrap_or(0);
            model.put_as(b"total", &(total + amount))?;
        }
        Ok(())
    }
}

/// The fold of the log, as `Totals` keeps it.
fn fold(store: &dyn EventStore, filter: &Filter) -> (BTreeMap<String, (u64, u64)>, u64) {
    let mut per_stream = BTreeMap::new();
    let mut total = 0;
    let mut from = 1;
    loop {
        let slice = store.read_all(from, 10_000, filter).unwrap();
        for event in &slice.events {
            let amount = match payload::decode::<Ev>(&event.payload).unwrap() {
                Ev::Added(n) => n,
                Ev::Other => 0,
            };
            let entry = per_stream
                .entry(format!("s/{}", event.stream_id))
                .or_insert((0, 0));
            entry.0 += amount;
            entry.1 += 1;
            total += amount;
        }
        if slice.next_position > slice.head {
            break;
        }
        from = slice.next_position;
    }
    (per_stream, total)
}

fn model_of(view: &ReadModelView) -> (BTreeMap<String, (u64, u64)>, u64) {
    let per_stream = view
        .scan_as::<(u64, u64)>(b"s/", 1_000_000)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), v))
        .collect();
    (
        per_stream,
        view.get_as::<u64>(b"total").unwrap().unwrap_or(0),
    )
}

fn quick() -> ConsumerSettings {
    ConsumerSettings {
        batch_events_max: 7,
        catch_up_chunk_events: 50,
        ..ConsumerSettings::default()
    }
}

#[test]
fn catch_up_then_live_equals_the_fold_and_reads_your_writes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..300u64 {
            append(
                &store,
                &format!("ctr-{}", i % 7),
                &[Ev::Added(i), Ev::Other],
            );
        }
    }
    let rt = Runtime::builder()
        .path(dir.path())
        .aggregate::<Counter>()
        .projection(|| Totals::named("totals"), quick())
        .start()
        .unwrap();
    rt.wait_for_blocking("totals", rt.store().head(), Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        model_of(&rt.query("totals").unwrap()),
        fold(rt.store(), &Filter::all())
    );
    for i in 0..200u64 {
        let outcome = rt
            .execute_blocking::<Counter>(&format!("{}", i % 5), i + 1)
            .unwrap();
        if i % 50 == 0 {
            // Read-your-writes: once waited for, the query shows the command.
            rt.wait_for_blocking("totals", outcome.position.unwrap(), Duration::from_secs(30))
                .unwrap();
            // Nothing else writes: the entry equals the fold of the log.
            let key = format!("s/ctr-{}", i % 5);
            let seen = rt
                .query("totals")
                .unwrap()
                .get_as::<(u64, u64)>(key.as_bytes())
                .unwrap();
            assert_eq!(seen.as_ref(), fold(rt.store(), &Filter::all()).0.get(&key));
        }
    }
    let head = rt.store().head();
    // The longest timeout is no timeout (and no overflow of the deadline).
    rt.wait_for_blocking("totals", head, Duration::MAX).unwrap();
    assert_eq!(
        model_of(&rt.query("totals").unwrap()),
        fold(rt.store(), &Filter::all())
    );
    let status = rt.projection_status("totals").unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (
            status[0].state.clone(),
            status[0].checkpoint,
            status[0].lag,
            status[0].parked
        ),
        (ConsumerState::Live, head, 0, 0)
    );
    // The projection's commits carry their checkpoint and wait for no sync
    // of their own (the events they derive from are durable already).
    assert_eq!(rt.store().writer_stats().direct_syncs, 0);
    assert!(matches!(rt.query("nope"), Err(ProjectionError::Unknown(_))));
    assert!(matches!(
        rt.wait_for_blocking("totals", head + 1, Duration::from_millis(50)),
        Err(ProjectionError::Timeout { .. })
    ));
    rt.shutdown_blocking().unwrap();
    drop(rt);
    // The checkpoint was committed: a restart does not re-apply anything.
    let rt = Runtime::builder()
        .path(dir.path())
        .projection(|| Totals::named("totals"), quick())
        .start()
        .unwrap();
    rt.wait_for_blocking("totals", head, Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        model_of(&rt.query("totals").unwrap()),
        fold(rt.store(), &Filter::all())
    );
}

const CHILD_DIR: &str = "EVENTFOLD_CRASH_CHILD_DIR";

/// The child of the crash test: appends and projects until it is killed.
#[test]
#[ignore = "run by crash_test_projection_killed_at_random_points as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let rt = Runtime::builder()
        .path(&dir)
        .projection(|| Totals::named("totals"), quick())
        .start()
        .unwrap();
    for i in 0u64.. {
        let events: Vec<Ev> = (0..(i % 5 + 1)).map(|j| Ev::Added(i + j)).collect();
        append(rt.store(), &format!("ctr-{}", i % 11), &events);
    }
}

// Guards invariant 5: a projection killed at any point (SIGKILL, no clean
// stop) and restarted ends with the fold of the log: nothing missed, nothing
// applied twice.
#[test]
fn crash_test_projection_killed_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..8u64 {
        common::run_and_kill(
            "crash_child",
            CHILD_DIR,
            dir.path(),
            Duration::from_millis(150 + (round * 97) % 400),
        );
    }
    let rt = Runtime::builder()
        .path(dir.path())
        .projection(|| Totals::named("totals"), quick())
        .start()
        .unwrap();
    let head = rt.store().head();
    assert!(head > 0, "the children wrote nothing");
    rt.wait_for_blocking("totals", head, Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        model_of(&rt.query("totals").unwrap()),
        fold(rt.store(), &Filter::all())
    );
    assert!(rt.store().verify().unwrap().is_clean());
}

/// Records every position it is given.
struct Recorder {
    seen: Arc<Mutex<Vec<u64>>>,
    delay: Duration,
}

impl EventHandler for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn handle(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        std::thread::sleep(self.delay);
        self.seen.lock().unwrap().push(event.position);
        Ok(())
    }
}

#[test]
fn a_subscriber_slower_than_the_bus_still_sees_every_event_once_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder_seen = Arc::clone(&seen);
    let settings = Settings {
        bus_capacity_batches: 2,
        ..Settings::default()
    };
    let rt = Runtime::builder()
        .temporary()
        .settings(settings)
        .durability(Durability::Buffered)
        .event_handler(
            move || Recorder {
                seen: Arc::clone(&recorder_seen),
                delay: Duration::from_micros(300),
            },
            quick(),
        )
        .start()
        .unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                for i in 0..150u64 {
                    append(rt.store(), &format!("s-{w}"), &[Ev::Added(i)]);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let head = rt.store().head();
    rt.wait_for_blocking("recorder", head, Duration::from_secs(60))
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), (1..=head).collect::<Vec<_>>());
    assert!(matches!(
        rt.query("recorder"),
        Err(ProjectionError::NotAProjection(_))
    ));
}

#[test]
fn rebuild_equals_incremental_and_queries_never_see_a_half_built_model() {
    let rt = Runtime::builder()
        .temporary()
        .projection(|| Totals::named("totals"), quick())
        .start()
        .unwrap();
    for i in 0..400u64 {
        append(rt.store(), &format!("ctr-{}", i % 13), &[Ev::Added(i)]);
    }
    let head = rt.store().head();
    rt.wait_for_blocking("totals", head, Duration::from_secs(30))
        .unwrap();
    let incremental = model_of(&rt.query("totals").unwrap());
    assert_eq!(rt.query("totals").unwrap().model(), "totals@v1");
    assert_eq!(rt.rebuild_blocking("totals").unwrap(), 2);
    assert!(matches!(
        rt.rebuild_blocking("totals"),
        Err(ProjectionError::RebuildRunning(_)) | Ok(3)
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = rt.query("totals").unwrap();
        let model = model_of(&view);
        // Whichever version queries read, it is complete.
        if !model.0.is_empty() || view.model() == "totals@v1" {
            assert_eq!(model, incremental, "{} was read half-built", view.model());
        }
        if view.model() != "totals@v1" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild never switched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.wait_for_blocking("totals", head, Duration::from_secs(30))
        .unwrap();
    assert_eq!(model_of(&rt.query("totals").unwrap()), incremental);
    // The new version keeps up with new events.
    append(rt.store(), "ctr-0", &[Ev::Added(1000)]);
    rt.wait_for_blocking("totals", head + 1, Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        model_of(&rt.query("totals").unwrap()),
        fold(rt.store(), &Filter::all())
    );
}

#[test]
fn dead_letters_retry_park_hold_retry_and_skip() {
    let failing = Arc::new(AtomicBool::new(true));
    let switch = Arc::clone(&failing);
    let settings = ConsumerSettings {
        error_policy: ErrorPolicy {
            attempts_max: 3,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            then: AfterRetries::Park,
        },
        ..quick()
    };
    let rt = Runtime::builder()
        .temporary()
        .projection(
            move || Totals {
                fail_on: Some((13, Arc::clone(&switch))),
                ..Totals::named("totals")
            },
            settings,
        )
        .start()
        .unwrap();
    let a1 = append(rt.store(), "a-1", &[Ev::Added(1)]).last_position;
    let bad = append(rt.store(), "a-1", &[Ev::Added(13)]).last_position;
    let held = append(rt.store(), "a-1", &[Ev::Added(2)]).last_position;
    append(rt.store(), "b-1", &[Ev::Added(5)]);
    let head = rt.store().head();
    rt.wait_for_blocking("totals", head, Duration::from_secs(30))
        .unwrap();
    let parked = rt.parked_events("totals").unwrap();
    assert_eq!(
        parked
            .iter()
            .map(|p| (p.position, p.attempts))
            .collect::<Vec<_>>(),
        vec![(bad, 3), (held, 0)]
    );
    assert!(parked[0].reason.contains("refusing 13"));
    let view = rt.query("totals").unwrap();
    // a-1 stopped at its first event (the failed write was undone); b-1 went on.
    assert_eq!(view.get_as::<(u64, u64)>(b"s/a-1").unwrap(), Some((1, 1)));
    assert_eq!(view.get_as::<(u64, u64)>(b"s/b-1").unwrap(), Some((5, 1)));
    assert_eq!(rt.projection_status("totals").unwrap()[0].parked, 2);
    // Still failing: it stays parked; the held event cannot jump the queue.
    assert!(matches!(
        rt.retry_parked_blocking("totals", bad),
        Err(ProjectionError::Parked(_))
    ));
    assert!(
        matches!(rt.retry_parked_blocking("totals", held), Err(ProjectionError::Parked(ParkedError::HeldBehind { position, .. })) if position == held)
    );
    assert_eq!(rt.parked_events("totals").unwrap()[0].attempts, 4);
    failing.store(false, Ordering::SeqCst);
    rt.retry_parked_blocking("totals", bad).unwrap();
    assert!(rt.parked_events("totals").unwrap().is_empty());
    assert_eq!(
        rt.query("totals")
            .unwrap()
            .get_as::<(u64, u64)>(b"s/a-1")
            .unwrap(),
        Some((16, 3))
    );
    assert!(a1 < bad);
    // Skip: the parked event is dropped, the ones held behind it applied.
    failing.store(true, Ordering::SeqCst);
    let bad = append(rt.store(), "c-1", &[Ev::Added(13)]).last_position;
    append(rt.store(), "c-1", &[Ev::Added(3)]);
    rt.wait_for_blocking("totals", rt.store().head(), Duration::from_secs(30))
        .unwrap();
    assert_eq!(rt.parked_events("totals").unwrap().len(), 2);
    rt.skip_parked_blocking("totals", bad).unwrap();
    assert!(rt.parked_events("totals").unwrap().is_empty());
    assert_eq!(
        rt.query("totals")
            .unwrap()
            .get_as::<(u64, u64)>(b"s/c-1")
            .unwrap(),
        Some((3, 1))
    );
    assert!(matches!(
        rt.skip_parked_blocking("totals", bad),
        Err(ProjectionError::Parked(_))
    ));
    let total: u64 = rt
        .query("totals")
        .unwrap()
        .get_as(b"total")
        .unwrap()
        .unwrap();
    assert_eq!(total, 1 + 13 + 2 + 5 + 3);
}

#[test]
fn the_stop_policy_stops_the_projection_and_says_why() {
    let settings = ConsumerSettings {
        error_policy: ErrorPolicy {
            attempts_max: 2,
            backoff_initial: Duration::from_millis(1),
            then: AfterRetries::Stop,
            ..ErrorPolicy::default()
        },
        ..quick()
    };
    let on = Arc::new(AtomicBool::new(true));
    let rt = Runtime::builder()
        .temporary()
        .projection(
            move || Totals {
                fail_on: Some((13, Arc::clone(&on))),
                ..Totals::named("strict")
            },
            settings,
        )
        .start()
        .unwrap();
    let good = append(rt.store(), "a-1", &[Ev::Added(4)]).last_position;
    rt.wait_for_blocking("strict", good, Duration::from_secs(30))
        .unwrap();
    let bad = append(rt.store(), "a-1", &[Ev::Added(13)]).last_position;
    append(rt.store(), "a-1", &[Ev::Added(5)]);
    let waited = rt.wait_for_blocking("strict", bad, Duration::from_secs(30));
    assert!(
        matches!(waited, Err(ProjectionError::Stopped(ref m)) if m.contains("refusing 13")),
        "{waited:?}"
    );
    let status = &rt.projection_status("strict").unwrap()[0];
    assert!(matches!(status.state, ConsumerState::Stopped(_)));
    assert_eq!(status.checkpoint, good);
    assert_eq!(
        rt.query("strict").unwrap().get_as::<u64>(b"total").unwrap(),
        Some(4)
    );
}

#[test]
fn partitioned_and_single_projections_build_the_same_model() {
    let per_stream = |name: &'static str| {
        move || Totals {
            per_stream_only: true,
            ..Totals::named(name)
        }
    };
    let rt = Runtime::builder()
        .temporary()
        .projection(per_stream("single"), quick())
        .projection(
            per_stream("split"),
            ConsumerSettings {
                partitions: 3,
                ..quick()
            },
        )
        .start()
        .unwrap();
    for i in 0..300u64 {
        append(rt.store(), &format!("ctr-{}", i % 17), &[Ev::Added(i)]);
    }
    let head = rt.store().head();
    rt.wait_for_blocking("single", head, Duration::from_secs(30))
        .unwrap();
    rt.wait_for_blocking("split", head, Duration::from_secs(30))
        .unwrap();
    let statuses = rt.projection_status("split").unwrap();
    assert_eq!(
        statuses.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["split@v1#0", "split@v1#1", "split@v1#2"]
    );
    assert!(statuses.iter().all(|s| s.checkpoint == head));
    let single = model_of(&rt.query("single").unwrap()).0;
    assert_eq!(single, model_of(&rt.query("split").unwrap()).0);
    assert_eq!(single, fold(rt.store(), &Filter::all()).0);
}

#[test]
fn filters_by_category_and_event_type() {
    let by_category = || Totals {
        filter: Filter::categories(["a"]),
        ..Totals::named("cat")
    };
    let by_type = || Totals {
        filter: Filter::event_types(["Other"]),
        ..Totals::named("typ")
    };
    let rt = Runtime::builder()
        .temporary()
        .projection(by_category, quick())
        .projection(by_type, quick())
        .start()
        .unwrap();
    for i in 0..60u64 {
        let stream = if i % 3 == 0 {
            format!("a-{i}")
        } else {
            format!("b-{i}")
        };
        append(rt.store(), &stream, &[Ev::Added(i), Ev::Other]);
    }
    let head = rt.store().head();
    rt.wait_for_blocking("cat", head, Duration::from_secs(30))
        .unwrap();
    rt.wait_for_blocking("typ", head, Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        model_of(&rt.query("cat").unwrap()),
        fold(rt.store(), &Filter::categories(["a"]))
    );
    assert_eq!(
        model_of(&rt.query("typ").unwrap()),
        fold(rt.store(), &Filter::event_types(["Other"]))
    );
    assert_eq!(
        rt.query("typ").unwrap().get_as::<u64>(b"total").unwrap(),
        Some(0)
    );
    assert_eq!(
        rt.projection_status("cat").unwrap()[0].checkpoint,
        head,
        "the checkpoint passes filtered events"
    );
}

#[test]
fn invalid_projection_names_are_refused() {
    let result = Runtime::builder()
        .in_memory()
        .projection(|| Totals::named("bad@name"), quick())
        .start();
    assert!(matches!(result, Err(StartError::Setting(_))));
    let twice = Runtime::builder()
        .in_memory()
        .projection(|| Totals::named("same"), quick())
        .projection(|| Totals::named("same"), quick())
        .start();
    assert!(matches!(twice, Err(StartError::Setting(_))));
}
