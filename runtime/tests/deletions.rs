//! Deleting aggregates through the runtime: truncation keeps the state
//! (a snapshot covers what is removed), a soft delete starts the aggregate
//! afresh with its versions going on, a tombstone refuses every later
//! command; projections are told of each, in order, and drop their rows.

mod common;

use common::tally::{Cmd, Ev, Tally, TallyV2};
use eventfold_runtime::domain::*;
use eventfold_runtime::projection::{HandlerError, Projection, ReadModelTx, decode};
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use std::time::Duration;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The total per tally, and how many deletions it heard of.
struct Totals;

impl Projection for Totals {
    fn name(&self) -> &str {
        "totals"
    }
    fn filter(&self) -> Filter {
        Filter::categories(["tally"])
    }
    fn apply(
        &mut self,
        event: &RecordedEvent,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError> {
        if let Ev::Added(n) = decode::<Ev>(event)? {
            let key = event.stream_id.as_str().as_bytes();
            let total: u64 = model.get_as(key)?.unwrap_or(0);
            model.put_as(key, &(total + n))?;
        }
        Ok(())
    }
    fn deleted(
        &mut self,
        deletion: &StreamDeletion,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError> {
        if deletion.kind != DeletionKind::Truncated {
            model.delete(deletion.stream.as_bytes());
        }
        let heard: u64 = model.get_as(b"$heard")?.unwrap_or(0);
        model.put_as(b"$heard", &(heard + 1))
    }
}

fn start(path: &std::path::Path) -> Result<RuntimeHandle, StartError> {
    Runtime::builder()
        .path(path)
        .shards(2)
        .aggregate::<Tally>()
        .projection(|| Totals, ConsumerSettings::default())
        .start()
}

fn add(runtime: &RuntimeHandle, id: &str, values: &[u64]) -> TestResult<u64> {
    let mut position = 0;
    for n in values {
        let outcome = runtime.execute_blocking::<Tally>(id, Cmd::Add(*n))?;
        position = outcome.position.ok_or("no position")?;
    }
    Ok(position)
}

fn check(runtime: &RuntimeHandle, id: &str, total: u64, count: u64) -> TestResult {
    runtime.execute_blocking::<Tally>(id, Cmd::Check { total, count })?;
    Ok(())
}

#[test]
fn a_soft_deleted_aggregate_starts_afresh_and_its_versions_go_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let runtime = start(dir.path())?;
    add(&runtime, "a", &[1, 2, 3])?;
    let position = add(&runtime, "b", &[10])?;
    runtime.wait_for_blocking("totals", position, Duration::from_secs(20))?;
    assert_eq!(runtime.query("totals")?.get_as::<u64>(b"tally-a")?, Some(6));
    let done = runtime.delete_aggregate_blocking::<Tally>("a", Deletion::Delete)?;
    assert_eq!(
        (done.version, done.first_version, done.changed),
        (3, 4, true)
    );
    let deleted_at = done.position.ok_or("no position")?;
    // The resident actor was stopped: the next command sees a fresh state.
    check(&runtime, "a", 0, 0)?;
    let outcome = runtime.execute_blocking::<Tally>("a", Cmd::Add(5))?;
    assert_eq!(outcome.version, 4, "versions go on after a soft delete");
    check(&runtime, "a", 5, 1)?;
    check(&runtime, "b", 10, 1)?;
    let again = runtime.delete_aggregate_blocking::<Tally>("a", Deletion::Delete)?;
    assert!(again.changed, "the event at version 4 is deleted");
    let noop = runtime.delete_aggregate_blocking::<Tally>("a", Deletion::Delete)?;
    assert!(!noop.changed);
    // The projection heard of both deletions in order and dropped the rows.
    runtime.wait_for_blocking("totals", deleted_at, Duration::from_secs(20))?;
    let last = runtime.execute_blocking::<Tally>("b", Cmd::Add(1))?;
    runtime.wait_for_blocking(
        "totals",
        last.position.ok_or("no position")?,
        Duration::from_secs(20),
    )?;
    let view = runtime.query("totals")?;
    assert_eq!(view.get_as::<u64>(b"tally-a")?, None);
    assert_eq!(view.get_as::<u64>(b"tally-b")?, Some(11));
    assert_eq!(view.get_as::<u64>(b"$heard")?, Some(2));
    runtime.shutdown_blocking()?;
    drop((view, runtime));
    // A fresh runtime loads it the same way (no snapshot, no events).
    let runtime = start(dir.path())?;
    check(&runtime, "a", 0, 0)?;
    assert_eq!(
        runtime.execute_blocking::<Tally>("a", Cmd::Add(1))?.version,
        5
    );
    runtime.shutdown_blocking()?;
    Ok(())
}

#[test]
fn a_tombstoned_aggregate_refuses_every_later_command() -> TestResult {
    let dir = tempfile::tempdir()?;
    let runtime = start(dir.path())?;
    add(&runtime, "t", &[1, 2])?;
    runtime.delete_aggregate_blocking::<Tally>("t", Deletion::Tombstone)?;
    let refused = runtime.execute_blocking::<Tally>("t", Cmd::Add(1));
    assert!(
        matches!(
            refused,
            Err(CommandError::Store(AppendError::StreamDeleted { .. }))
        ),
        "{refused:?}"
    );
    runtime.shutdown_blocking()?;
    drop(runtime);
    let runtime = start(dir.path())?;
    let refused = runtime.execute_blocking::<Tally>("t", Cmd::Add(1));
    assert!(matches!(
        refused,
        Err(CommandError::Store(AppendError::StreamDeleted { .. }))
    ));
    let info = runtime.store().stream_info(&StreamId::new("tally-t")?)?;
    assert!(info.tombstoned);
    runtime.shutdown_blocking()?;
    Ok(())
}

#[test]
fn a_truncated_aggregate_keeps_its_state_and_a_load_refuses_what_no_snapshot_covers() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let runtime = start(dir.path())?;
    add(&runtime, "k", &[1, 2, 3, 4, 5])?;
    let done = runtime.delete_aggregate_blocking::<Tally>("k", Deletion::TruncateBefore(4))?;
    assert_eq!((done.first_version, done.version), (4, 5));
    let stream = StreamId::new("tally-k")?;
    let snapshot = runtime
        .store()
        .load_snapshot(&stream)?
        .ok_or("no snapshot")?;
    assert!(
        snapshot.stream_version >= 3,
        "a snapshot covers what was removed"
    );
    let kept = runtime
        .store()
        .read_stream(&stream, 1, Direction::Forward, 10)?;
    assert_eq!(kept.iter().map(|e| e.version).collect::<Vec<_>>(), [4, 5]);
    check(&runtime, "k", 15, 5)?;
    runtime.shutdown_blocking()?;
    drop(runtime);
    // Loaded again from the snapshot and what is left.
    let runtime = start(dir.path())?;
    check(&runtime, "k", 15, 5)?;
    runtime.shutdown_blocking()?;
    drop(runtime);
    // Code whose snapshot version differs cannot use it, and refuses to
    // fold what is left rather than give a wrong state.
    let runtime = Runtime::builder()
        .path(dir.path())
        .aggregate::<TallyV2>()
        .start()?;
    let refused = runtime.execute_blocking::<TallyV2>("k", Cmd::Add(1));
    assert!(
        matches!(
            refused,
            Err(CommandError::Load(LoadError::EventsRemoved {
                needed: 1,
                first_version: 4,
                ..
            }))
        ),
        "{refused:?}"
    );
    let past = runtime.state_at_blocking::<Tally>("k", 2);
    assert!(
        matches!(
            past,
            Err(StateAtError::Load(LoadError::EventsRemoved { .. }))
        ),
        "{past:?}"
    );
    runtime.shutdown_blocking()?;
    Ok(())
}

#[test]
fn deleting_an_unregistered_kind_or_an_invalid_id_is_refused() -> TestResult {
    let runtime = Runtime::builder().in_memory().start()?;
    assert!(matches!(
        runtime.delete_aggregate_blocking::<Tally>("x", Deletion::Delete),
        Err(DeleteError::NotRegistered("tally"))
    ));
    let runtime = Runtime::builder()
        .in_memory()
        .aggregate::<Tally>()
        .start()?;
    assert!(matches!(
        runtime.delete_aggregate_blocking::<Tally>("", Deletion::Tombstone),
        Err(DeleteError::InvalidId(_))
    ));
    runtime.shutdown_blocking()?;
    assert!(matches!(
        runtime.delete_aggregate_blocking::<Tally>("x", Deletion::Delete),
        Err(DeleteError::ShutDown)
    ));
    Ok(())
}

/// Counts the deletions it is told of, per deleted stream.
struct Janitor;

impl eventfold_runtime::process::ProcessManager for Janitor {
    type State = Vec<String>;
    type Error = HandlerError;
    fn name(&self) -> &str {
        "janitor"
    }
    fn filter(&self) -> Filter {
        // A process manager hears of deletions when its filter names them.
        Filter::categories([DELETIONS_STREAM, "tally"])
    }
    fn associate(&self, event: &RecordedEvent) -> eventfold_runtime::process::Association {
        use eventfold_runtime::process::Association;
        match StreamDeletion::of(event) {
            Some(deletion) => Association::Start(deletion.stream),
            None => Association::Ignore,
        }
    }
    fn handle(
        &mut self,
        state: &mut Vec<String>,
        input: eventfold_runtime::process::Input<'_>,
        _: &mut eventfold_runtime::process::Effects,
    ) -> Result<(), HandlerError> {
        if let eventfold_runtime::process::Input::Event(event) = input
            && let Some(deletion) = StreamDeletion::of(event)
        {
            state.push(format!(
                "{:?} before {}",
                deletion.kind, deletion.first_version
            ));
        }
        Ok(())
    }
}

#[test]
fn a_process_manager_whose_filter_names_deletions_hears_of_them_in_order() -> TestResult {
    let runtime = Runtime::builder()
        .in_memory()
        .aggregate::<Tally>()
        .process_manager(
            || Janitor,
            eventfold_runtime::process::ProcessSettings::default(),
        )
        .start()?;
    add(&runtime, "j", &[1, 2, 3])?;
    runtime.delete_aggregate_blocking::<Tally>("j", Deletion::TruncateBefore(2))?;
    runtime.delete_aggregate_blocking::<Tally>("j", Deletion::Tombstone)?;
    let seen = || -> TestResult<Vec<String>> {
        let instance = runtime.process_instance::<Vec<String>>("janitor", "tally-j")?;
        Ok(instance.map(|i| i.state).unwrap_or_default())
    };
    common::wait_until("the janitor heard of both", || Ok(seen()?.len() == 2))?;
    assert_eq!(seen()?, ["Truncated before 2", "Tombstoned before 4"]);
    runtime.shutdown_blocking()?;
    Ok(())
}
