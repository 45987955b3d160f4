//! A process manager partitioned over several host threads: each instance
//! lives in one partition (by its id), with its outbox and timers; the
//! handle's status, listings and controls span or find the partitions; a
//! runtime started with another count on the same store is refused.

mod common;

use common::wait_until;
use eventfold_runtime::domain::*;
use eventfold_runtime::process::*;
use eventfold_runtime::projection::decode;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Default, Serialize, Deserialize)]
struct Task;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum TaskCommand {
    Open { poison: bool },
    Work,
    Close,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum TaskEvent {
    Opened { poison: bool },
    Worked,
    Closed,
}

impl DomainEvent for TaskEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TaskEvent::Opened { .. } => "Opened",
            TaskEvent::Worked => "Worked",
            TaskEvent::Closed => "Closed",
        }
    }
}

impl Aggregate for Task {
    const KIND: &'static str = "task";
    type Command = TaskCommand;
    type Event = TaskEvent;
    type Error = std::convert::Infallible;
    fn handle(&self, command: TaskCommand) -> Result<Vec<TaskEvent>, Self::Error> {
        Ok(vec![match command {
            TaskCommand::Open { poison } => TaskEvent::Opened { poison },
            TaskCommand::Work => TaskEvent::Worked,
            TaskCommand::Close => TaskEvent::Closed,
        }])
    }
    fn apply(&mut self, _: &TaskEvent) {}
}

#[derive(Default, Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Progress {
    worked: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("poisoned task")]
struct Poisoned;

/// Works each opened task at once, closes it a minute later.
struct Worker {
    fail_poison: Arc<AtomicBool>,
}

const NAME: &str = "worker";
const MINUTE: Duration = Duration::from_secs(60);
const TASKS: usize = 40;

impl ProcessManager for Worker {
    type State = Progress;
    type Error = Poisoned;
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self) -> Filter {
        Filter::categories([Task::KIND])
    }
    fn associate(&self, event: &RecordedEvent) -> Association {
        let id = event.stream_id.as_str()["task-".len()..].to_owned();
        match event.event_type.as_str() {
            "Opened" => Association::Start(id),
            _ => Association::Ignore,
        }
    }
    fn handle(
        &mut self,
        state: &mut Progress,
        input: Input<'_>,
        effects: &mut Effects,
    ) -> Result<(), Poisoned> {
        let id = effects.instance().to_owned();
        match input {
            Input::Event(event) => {
                if let Ok(TaskEvent::Opened { poison: true }) = decode::<TaskEvent>(event)
                    && self.fail_poison.load(Ordering::SeqCst)
                {
                    return Err(Poisoned);
                }
                effects.send::<Task>(&id, TaskCommand::Work);
                effects.set_timer_after("close", MINUTE);
            }
            Input::Result(result) => state.worked = result.events::<Task>().is_some(),
            Input::Timer(_) => {
                effects.send::<Task>(&id, TaskCommand::Close);
                effects.finish();
            }
        }
        Ok(())
    }
}

fn start(
    path: &std::path::Path,
    clock: &VirtualClock,
    fail_poison: &Arc<AtomicBool>,
    partitions: usize,
) -> Result<RuntimeHandle, StartError> {
    let fail_poison = Arc::clone(fail_poison);
    let settings = ProcessSettings {
        partitions,
        ..ProcessSettings::default()
    };
    Runtime::builder()
        .path(path)
        .aggregate::<Task>()
        .clock(clock.clone())
        .process_manager(
            move || Worker {
                fail_poison: Arc::clone(&fail_poison),
            },
            settings,
        )
        .start()
}

fn events(runtime: &RuntimeHandle, id: &str) -> Result<Vec<TaskEvent>, Box<dyn std::error::Error>> {
    let stream = StreamId::new(format!("task-{id}"))?;
    let read = runtime
        .store()
        .read_stream(&stream, 1, Direction::Forward, 100)?;
    Ok(read
        .iter()
        .map(decode::<TaskEvent>)
        .collect::<Result<_, _>>()?)
}

fn all_worked(runtime: &RuntimeHandle) -> Result<bool, Box<dyn std::error::Error>> {
    for i in 0..TASKS {
        let view = runtime.process_instance::<Progress>(NAME, &i.to_string())?;
        if !view.is_some_and(|v| v.state.worked && v.outbox == 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[test]
fn instances_spread_over_partitions_keep_their_outboxes_and_timers_across_a_restart() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(1_000_000_000));
    let fail = Arc::new(AtomicBool::new(false));
    let runtime = start(dir.path(), &clock, &fail, 3)?;
    for i in 0..TASKS {
        runtime.execute_blocking::<Task>(&i.to_string(), TaskCommand::Open { poison: false })?;
    }
    wait_until("every task is worked", || all_worked(&runtime))?;
    let status = runtime.process_status(NAME)?;
    assert_eq!(status.partitions, 3);
    assert_eq!(
        status.timers, TASKS as u64,
        "one timer per instance, summed"
    );
    // Each partition ran some of the instances, under a checkpoint of its own.
    for index in 0..3 {
        let model = format!("$pm.{NAME}#{index}");
        assert!(runtime.store().checkpoint(&model)?.is_some(), "{model}");
        let instances = runtime.store().read_model_scan(&model, b"i", TASKS)?;
        assert!(!instances.is_empty(), "partition {index} holds instances");
    }
    runtime.shutdown_blocking()?;
    drop(runtime);

    // The timers fire from each partition's records after a restart.
    clock.advance(MINUTE + Duration::from_secs(1));
    let runtime = start(dir.path(), &clock, &fail, 3)?;
    wait_until("every task is closed", || {
        for i in 0..TASKS {
            if !events(&runtime, &i.to_string())?.contains(&TaskEvent::Closed) {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    for i in 0..TASKS {
        // Handled by one partition: worked once, closed once.
        assert_eq!(
            events(&runtime, &i.to_string())?,
            vec![
                TaskEvent::Opened { poison: false },
                TaskEvent::Worked,
                TaskEvent::Closed
            ]
        );
    }
    wait_until("no timer is left", || {
        Ok(runtime.process_status(NAME)?.timers == 0)
    })?;
    Ok(())
}

#[test]
fn a_stuck_instance_is_listed_and_resumed_in_its_partition() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(1_000_000_000));
    let fail = Arc::new(AtomicBool::new(true));
    let runtime = start(dir.path(), &clock, &fail, 4)?;
    for i in 0..8 {
        let poison = i == 5;
        runtime.execute_blocking::<Task>(&i.to_string(), TaskCommand::Open { poison })?;
    }
    wait_until("task 5 is stuck", || {
        Ok(runtime.stuck_instances(NAME)?.iter().any(|s| s.id == "5"))
    })?;
    assert_eq!(runtime.process_status(NAME)?.stuck, 1);
    fail.store(false, Ordering::SeqCst);
    runtime.resume_instance_blocking(NAME, "5")?;
    wait_until("task 5 is worked", || {
        Ok(events(&runtime, "5")?.contains(&TaskEvent::Worked))
    })?;
    assert!(runtime.stuck_instances(NAME)?.is_empty());
    Ok(())
}

#[test]
fn a_store_written_with_another_partition_count_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(1_000_000_000));
    let fail = Arc::new(AtomicBool::new(false));
    let runtime = start(dir.path(), &clock, &fail, 2)?;
    runtime.execute_blocking::<Task>("a", TaskCommand::Open { poison: false })?;
    wait_until("a is worked", || {
        Ok(runtime
            .process_instance::<Progress>(NAME, "a")?
            .is_some_and(|v| v.state.worked))
    })?;
    runtime.shutdown_blocking()?;
    drop(runtime);
    for configured in [1, 3] {
        match start(dir.path(), &clock, &fail, configured) {
            Err(StartError::ProcessPartitions {
                name,
                stored: 2,
                configured: c,
            }) if name == NAME && c == configured => {}
            Err(other) => return Err(format!("{configured}: {other}").into()),
            Ok(_) => return Err(format!("{configured} partitions were accepted").into()),
        }
    }
    // The stored count starts, and finds its instance.
    let runtime = start(dir.path(), &clock, &fail, 2)?;
    assert!(runtime.process_instance::<Progress>(NAME, "a")?.is_some());
    Ok(())
}

#[test]
fn a_partition_count_beyond_the_bound_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = VirtualClock::new(Timestamp::from_micros(1));
    let fail = Arc::new(AtomicBool::new(false));
    let result = start(dir.path(), &clock, &fail, PROCESS_PARTITIONS_MAX + 1);
    assert!(matches!(result, Err(StartError::Setting(_))));
}
