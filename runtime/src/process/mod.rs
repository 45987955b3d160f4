//! Process managers (sagas): long-running workflows that react to events,
//! send commands, set deadlines and compensate.
//!
//! A [`ProcessManager`] maps the events it is interested in to instance ids
//! ([`Association`]). Each instance has a durable state. Its handler receives
//! one [`Input`] at a time — an event, the result of a command it sent, or a
//! timer that fell due — and answers through [`Effects`]: commands to send
//! (each to an aggregate type and id), timers to set or cancel, and whether
//! the instance is finished.
//!
//! **What is atomic.** For each step, the instance's new state, the commands
//! it sent (its outbox), its timer changes and the process manager's
//! checkpoint are written in one `WriteBatch`. The outbox is dispatched only
//! after that batch is written. Every command carries a command id derived
//! from the instance, the input and its index in the step, so a re-dispatch
//! after a crash is recognised by the target aggregate and not executed twice.
//! The result of each command comes back to the instance as
//! [`Input::Result`]: accepted (with the events it produced), rejected with
//! the aggregate's own error, or failed after the dispatch retries.
//!
//! **Timers** are kept in the store by due time and fire after a restart
//! too; a timer cancelled (or replaced, or whose instance finished) never
//! fires. Time comes from the runtime's [`Clock`](crate::domain::Clock); tests
//! use a [`VirtualClock`](crate::domain::VirtualClock).
//!
//! **Errors.** A handler that returns an error (or panics) is retried on the
//! same input with backoff ([`ProcessSettings::handler_retry`]); after the
//! last attempt the instance is parked as *stuck*: later events for it are
//! held, its timers and results wait, and
//! [`RuntimeHandle::stuck_instances`](crate::RuntimeHandle::stuck_instances)
//! lists it with its last error until it is resumed or cancelled.
//!
//! ```
//! use eventfold_runtime::process::{Association, Effects, Input, ProcessManager};
//! use eventfold_runtime::domain::RecordedEvent;
//! use std::time::Duration;
//!
//! /// Reminds every new stream's owner once, a day after it was created.
//! struct Reminder;
//! impl ProcessManager for Reminder {
//!     type State = u32;
//!     type Error = std::convert::Infallible;
//!     fn name(&self) -> &str { "reminder" }
//!     fn associate(&self, event: &RecordedEvent) -> Association {
//!         if event.version == 1 {
//!             Association::Start(event.stream_id.to_string())
//!         } else {
//!             Association::Ignore
//!         }
//!     }
//!     fn handle(&mut self, reminded: &mut u32, input: Input<'_>, effects: &mut Effects)
//!         -> Result<(), Self::Error>
//!     {
//!         match input {
//!             Input::Event(_) => effects.set_timer_after("remind", Duration::from_secs(86_400)),
//!             Input::Timer(_) => { *reminded += 1; effects.finish(); }
//!             Input::Result(_) => {}
//!         }
//!         Ok(())
//!     }
//! }
//! ```

pub(crate) mod admin;
pub(crate) mod control;
pub(crate) mod dispatch;
pub(crate) mod host;
pub(crate) mod records;
pub(crate) mod supervisor;

use crate::command::outcome::ExecuteOptions;
use eventfold_domain::{Aggregate, CommandId, DomainEvent, RecordedEvent, Timestamp};
use eventfold_storage::{Filter, payload};
use serde::{Serialize, de::DeserializeOwned};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Longest instance id, in bytes. Events mapped to a longer id are not
/// routed (logged and counted in [`ProcessStatus::unroutable`]).
pub const INSTANCE_ID_BYTES_MAX: usize = 1024;

/// Which instance an event belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Association {
    /// Starts the instance with this id if it does not exist yet (and
    /// continues it if it does). An id that finished is not started again.
    Start(String),
    /// Continues the instance with this id; ignored if there is none.
    Continue(String),
    /// Not for this process manager.
    Ignore,
}

/// What an instance is asked to handle.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// An event associated with the instance.
    Event(&'a RecordedEvent),
    /// The result of a command the instance sent.
    Result(&'a CommandResult),
    /// A timer of the instance that fell due.
    Timer(&'a FiredTimer),
}

/// A timer that fell due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiredTimer {
    /// The name it was set under.
    pub name: String,
    /// When it was due.
    pub due: Timestamp,
}

/// A process manager: see the [module documentation](self).
///
/// **Contract.** `handle` is deterministic given the state and the input (it
/// may be run again on the same input after a crash) and does not block; its
/// only effects go through [`Effects`]. `associate` is a pure function of the
/// event.
pub trait ProcessManager: Send + 'static {
    /// An instance's state; a new instance starts from `Default`.
    type State: Default + Clone + Serialize + DeserializeOwned + Send + 'static;
    /// Why the handler failed; retried, then the instance is parked as stuck.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Unique per runtime: its instances, outbox, timers and checkpoint are
    /// named after it. No NUL, `#`, `@` or `$`.
    fn name(&self) -> &str;

    /// Which events are offered to `associate` (default: all).
    fn filter(&self) -> Filter {
        Filter::all()
    }

    /// The instance an event belongs to.
    fn associate(&self, event: &RecordedEvent) -> Association;

    /// Handles one input of one instance. On error (or panic) the state
    /// change and every effect of this call are discarded.
    fn handle(
        &mut self,
        state: &mut Self::State,
        input: Input<'_>,
        effects: &mut Effects,
    ) -> Result<(), Self::Error>;
}

/// A command in an instance's outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingCommand {
    /// The target aggregate's `KIND`.
    pub kind: String,
    /// The target aggregate's id.
    pub aggregate_id: String,
    /// The command id it is sent with: the target executes it at most once.
    pub command_id: CommandId,
    /// The command, bincode-encoded.
    pub payload: Vec<u8>,
}

impl OutgoingCommand {
    /// The command decoded as `A`'s command, if it was sent to `A`.
    pub fn decode<A: Aggregate>(&self) -> Option<A::Command> {
        if self.kind != A::KIND {
            return None;
        }
        payload::decode(&self.payload).ok()
    }
}

/// A change to an instance's timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimerChange {
    /// Set (or move) the timer `name` to fire at `due`.
    Set {
        /// Its name within the instance.
        name: String,
        /// When it fires.
        due: Timestamp,
    },
    /// Cancel the timer `name`; it will not fire.
    Cancel {
        /// Its name within the instance.
        name: String,
    },
}

/// What a handler does: commands, timers, finishing. Collected during one
/// call of [`ProcessManager::handle`] and committed with the new state.
#[derive(Debug)]
pub struct Effects {
    process: String,
    instance: String,
    input_key: String,
    now: Timestamp,
    pub(crate) commands: Vec<OutgoingCommand>,
    pub(crate) timers: Vec<TimerChange>,
    pub(crate) finished: bool,
    pub(crate) error: Option<String>,
}

impl Effects {
    pub(crate) fn new(process: &str, instance: &str, input_key: String, now: Timestamp) -> Self {
        Self {
            process: process.to_owned(),
            instance: instance.to_owned(),
            input_key,
            now,
            commands: Vec::new(),
            timers: Vec::new(),
            finished: false,
            error: None,
        }
    }

    /// The time of the runtime's clock when this input was handled.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Sends `command` to the aggregate `A` with id `aggregate_id`, with a
    /// command id derived from the instance, this input and the command's
    /// index in this step; returns that id (keep it in the state to match
    /// the result, or to fence the command, see [`Effects::send_with_id`]).
    pub fn send<A: Aggregate>(&mut self, aggregate_id: &str, command: A::Command) -> CommandId {
        let command_id = CommandId::from_name(&format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.process,
            self.instance,
            self.input_key,
            self.commands.len()
        ));
        self.send_with_id::<A>(command_id, aggregate_id, command);
        command_id
    }

    /// Sends `command` with a command id of your choosing. Sending a
    /// different command under the id of one sent earlier to the same
    /// aggregate *fences* it: whichever the aggregate executes first wins,
    /// and the other gets the winner's outcome (with its events) instead of
    /// being executed. A deadline uses this to cancel a command whose fate is
    /// unknown.
    pub fn send_with_id<A: Aggregate>(
        &mut self,
        command_id: CommandId,
        aggregate_id: &str,
        command: A::Command,
    ) {
        match payload::encode(&command) {
            Ok(payload) => self.commands.push(OutgoingCommand {
                kind: A::KIND.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                command_id,
                payload,
            }),
            Err(error) => {
                self.error = Some(format!(
                    "a command to {} could not be encoded: {error}",
                    A::KIND
                ))
            }
        }
    }

    /// Sets (or moves) the timer `name` to fire at `due`.
    pub fn set_timer(&mut self, name: &str, due: Timestamp) {
        self.timers.push(TimerChange::Set {
            name: name.to_owned(),
            due,
        });
    }

    /// Sets the timer `name` to fire `after` from now.
    pub fn set_timer_after(&mut self, name: &str, after: Duration) {
        self.set_timer(name, self.now.plus(after));
    }

    /// Cancels the timer `name` (nothing happens if it is not set).
    pub fn cancel_timer(&mut self, name: &str) {
        self.timers.push(TimerChange::Cancel {
            name: name.to_owned(),
        });
    }

    /// Finishes the instance after this step: its timers are cancelled,
    /// later inputs are ignored; commands sent in this step are still sent.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The commands sent so far in this step.
    pub fn commands(&self) -> &[OutgoingCommand] {
        &self.commands
    }
}

/// How a command sent by an instance ended.
#[derive(Clone)]
pub enum ResultOutcome {
    /// Executed (now or earlier: `deduplicated`).
    Accepted {
        /// The aggregate's version after it.
        version: u64,
        /// Global position of its last event.
        position: Option<u64>,
        /// True when the command id had been executed before (a re-dispatch,
        /// or a fenced command): `events` are that first execution's.
        deduplicated: bool,
        /// The events, as `Vec<A::Event>`: read them with
        /// [`CommandResult::events`].
        events: Arc<dyn Any + Send + Sync>,
    },
    /// The aggregate refused it: read the error with
    /// [`CommandResult::rejection`]. Nothing was written.
    Rejected {
        /// The error's message.
        message: String,
        /// The error, as `A::Error`.
        error: Arc<dyn Any + Send + Sync>,
    },
    /// It could not be delivered within the dispatch retries (overloaded,
    /// timed out, the aggregate panicked or could not be loaded). It may or
    /// may not have been executed; sending it again under the same command
    /// id is safe.
    Failed(String),
}

impl std::fmt::Debug for ResultOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResultOutcome::Accepted {
                version,
                position,
                deduplicated,
                ..
            } => f
                .debug_struct("Accepted")
                .field("version", version)
                .field("position", position)
                .field("deduplicated", deduplicated)
                .finish_non_exhaustive(),
            ResultOutcome::Rejected { message, .. } => {
                f.debug_tuple("Rejected").field(message).finish()
            }
            ResultOutcome::Failed(message) => f.debug_tuple("Failed").field(message).finish(),
        }
    }
}

/// The result of a command an instance sent.
#[derive(Clone, Debug)]
pub struct CommandResult {
    /// The command's id.
    pub command_id: CommandId,
    /// The target aggregate's `KIND`.
    pub kind: String,
    /// The target aggregate's id.
    pub aggregate_id: String,
    /// How it ended.
    pub outcome: ResultOutcome,
}

impl CommandResult {
    /// The result of `command` accepted by `A` with these events (for
    /// fixtures; the runtime builds results itself).
    pub fn accepted<A: Aggregate>(command: &OutgoingCommand, events: Vec<A::Event>) -> Self {
        Self {
            command_id: command.command_id,
            kind: command.kind.clone(),
            aggregate_id: command.aggregate_id.clone(),
            outcome: ResultOutcome::Accepted {
                version: 0,
                position: None,
                deduplicated: false,
                events: Arc::new(events),
            },
        }
    }

    /// The result of `command` refused by `A` with `error`.
    pub fn rejected<A: Aggregate>(command: &OutgoingCommand, error: A::Error) -> Self {
        Self {
            command_id: command.command_id,
            kind: command.kind.clone(),
            aggregate_id: command.aggregate_id.clone(),
            outcome: ResultOutcome::Rejected {
                message: error.to_string(),
                error: Arc::new(error),
            },
        }
    }

    /// The result of `command` that could not be delivered.
    pub fn failed(command: &OutgoingCommand, reason: impl Into<String>) -> Self {
        Self {
            command_id: command.command_id,
            kind: command.kind.clone(),
            aggregate_id: command.aggregate_id.clone(),
            outcome: ResultOutcome::Failed(reason.into()),
        }
    }

    /// True when the command was executed.
    pub fn is_accepted(&self) -> bool {
        matches!(self.outcome, ResultOutcome::Accepted { .. })
    }

    /// The events the command produced, when it was accepted by `A`.
    pub fn events<A: Aggregate>(&self) -> Option<&[A::Event]> {
        match &self.outcome {
            ResultOutcome::Accepted { events, .. } if self.kind == A::KIND => {
                events.downcast_ref::<Vec<A::Event>>().map(Vec::as_slice)
            }
            _ => None,
        }
    }

    /// `A`'s error, when `A` refused the command.
    pub fn rejection<A: Aggregate>(&self) -> Option<&A::Error> {
        match &self.outcome {
            ResultOutcome::Rejected { error, .. } if self.kind == A::KIND => {
                error.downcast_ref::<A::Error>()
            }
            _ => None,
        }
    }

    /// Why the command could not be delivered, when it could not.
    pub fn failure(&self) -> Option<&str> {
        match &self.outcome {
            ResultOutcome::Failed(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Attempts and backoff of a retried operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts_max: u32,
    /// Wait before the second attempt; doubled each time.
    pub backoff_initial: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Settings of one process manager.
#[derive(Clone, Debug)]
pub struct ProcessSettings {
    /// Most instances kept in memory; the least recently used beyond it are
    /// passivated (their state stays in the store).
    pub instances_resident_max: usize,
    /// Instances idle this long are passivated.
    pub instance_idle: Duration,
    /// Most commands sent and not yet answered (the outbox). While it is
    /// full no new events are taken: results and timers still are.
    pub outbox_max: usize,
    /// Most commands being delivered at once.
    pub dispatch_in_flight_max: usize,
    /// Delivery retries of one command on overload, timeout, panic or load
    /// failure of the target; after the last, the instance gets
    /// [`ResultOutcome::Failed`].
    pub dispatch_retry: RetryPolicy,
    /// Timeout of each delivery attempt.
    pub command_timeout: Duration,
    /// Retries of a failing handler on the same input; after the last, the
    /// instance is parked as stuck. The process manager waits during the
    /// backoff.
    pub handler_retry: RetryPolicy,
    /// Most inputs handled per commit.
    pub batch_inputs_max: usize,
    /// Most timers set at once across the process manager's instances; a
    /// step that would set more fails (and is retried, then parked).
    pub timers_max: usize,
    /// Most events read from the store per catch-up read.
    pub catch_up_chunk_events: usize,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        Self {
            instances_resident_max: 100_000,
            instance_idle: Duration::from_secs(60),
            outbox_max: 65_536,
            dispatch_in_flight_max: 4096,
            dispatch_retry: RetryPolicy {
                attempts_max: 8,
                backoff_initial: Duration::from_millis(5),
                backoff_max: Duration::from_secs(1),
            },
            command_timeout: Duration::from_secs(5),
            handler_retry: RetryPolicy {
                attempts_max: 3,
                backoff_initial: Duration::from_millis(5),
                backoff_max: Duration::from_millis(100),
            },
            batch_inputs_max: 4096,
            timers_max: 1_000_000,
            catch_up_chunk_events: 4096,
        }
    }
}

impl ProcessSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let zero = [
            ("instances_resident_max", self.instances_resident_max),
            ("outbox_max", self.outbox_max),
            ("dispatch_in_flight_max", self.dispatch_in_flight_max),
            ("batch_inputs_max", self.batch_inputs_max),
            ("timers_max", self.timers_max),
            ("catch_up_chunk_events", self.catch_up_chunk_events),
            (
                "dispatch_retry.attempts_max",
                self.dispatch_retry.attempts_max as usize,
            ),
            (
                "handler_retry.attempts_max",
                self.handler_retry.attempts_max as usize,
            ),
        ];
        match zero.iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(format!("{name} must be at least 1")),
            None => Ok(()),
        }
    }

    pub(crate) fn execute_options(&self, command_id: CommandId) -> ExecuteOptions {
        ExecuteOptions::new()
            .command_id(command_id)
            .timeout(self.command_timeout)
    }
}

/// Where an instance stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Running.
    Active,
    /// Parked after its handler kept failing: see [`StuckInstance`].
    Stuck,
    /// Finished (or cancelled); later inputs are ignored.
    Finished,
}

/// An instance as stored.
#[derive(Clone, Debug)]
pub struct InstanceView<S> {
    /// Its id.
    pub id: String,
    /// Where it stands.
    pub status: InstanceStatus,
    /// Its state.
    pub state: S,
    /// Its timers that are set: name and due time.
    pub timers: Vec<(String, Timestamp)>,
    /// Commands it sent that have not been answered yet.
    pub outbox: usize,
}

/// An instance parked because its handler kept failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckInstance {
    /// Its id.
    pub id: String,
    /// The last error.
    pub error: String,
    /// Attempts made on the input.
    pub attempts: u32,
    /// The input it failed on.
    pub input: String,
    /// When it was parked (runtime clock).
    pub since: Timestamp,
    /// Events for it held since, waiting for it to resume.
    pub held_events: usize,
}

/// What the handle sees of a process manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessStatus {
    /// Its name.
    pub name: String,
    /// Catching up, live, or stopped (with why).
    pub state: crate::read::projection::ConsumerState,
    /// The last position of the global log it has handled and committed.
    pub checkpoint: u64,
    /// The store's committed head.
    pub head: u64,
    /// Instances in memory.
    pub resident: u64,
    /// Commands sent and not yet answered.
    pub outbox: u64,
    /// Timers set.
    pub timers: u64,
    /// Stuck instances.
    pub stuck: u64,
    /// Inputs handled since start.
    pub steps: u64,
    /// Events whose instance id was unusable (too long).
    pub unroutable: u64,
}

/// One step's effects as a fixture sees them.
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// Commands sent, in order.
    pub commands: Vec<OutgoingCommand>,
    /// Timer changes, in order.
    pub timers: Vec<TimerChange>,
    /// Whether an instance finished.
    pub finished: bool,
}

impl StepOutcome {
    /// The commands sent to `A`, decoded, with the aggregate id.
    pub fn commands_to<A: Aggregate>(&self) -> Vec<(String, A::Command)> {
        self.commands
            .iter()
            .filter_map(|c| c.decode::<A>().map(|cmd| (c.aggregate_id.clone(), cmd)))
            .collect()
    }

    /// Names of the timers set, with due times.
    pub fn timers_set(&self) -> Vec<(String, Timestamp)> {
        self.timers
            .iter()
            .filter_map(|t| match t {
                TimerChange::Set { name, due } => Some((name.clone(), *due)),
                TimerChange::Cancel { .. } => None,
            })
            .collect()
    }

    /// Names of the timers cancelled.
    pub fn timers_cancelled(&self) -> Vec<String> {
        self.timers
            .iter()
            .filter_map(|t| match t {
                TimerChange::Cancel { name } => Some(name.clone()),
                TimerChange::Set { .. } => None,
            })
            .collect()
    }
}

/// Given-when-then for process managers, with a virtual clock: no store, no
/// actors. Instances, timers and finishing behave as in the runtime.
///
/// ```
/// # use eventfold_runtime::process::{Association, Effects, Input, ProcessManager};
/// # use eventfold_runtime::domain::RecordedEvent;
/// # use std::time::Duration;
/// # struct Reminder;
/// # impl ProcessManager for Reminder {
/// #     type State = u32;
/// #     type Error = std::convert::Infallible;
/// #     fn name(&self) -> &str { "reminder" }
/// #     fn associate(&self, event: &RecordedEvent) -> Association {
/// #         Association::Start(event.stream_id.to_string())
/// #     }
/// #     fn handle(&mut self, n: &mut u32, input: Input<'_>, effects: &mut Effects) -> Result<(), Self::Error> {
/// #         match input {
/// #             Input::Event(_) => effects.set_timer_after("remind", Duration::from_secs(60)),
/// #             Input::Timer(_) => { *n += 1; effects.finish(); }
/// #             Input::Result(_) => {}
/// #         }
/// #         Ok(())
/// #     }
/// # }
/// use eventfold_runtime::process::ProcessFixture;
/// use eventfold_runtime::domain::Timestamp;
///
/// let mut fixture = ProcessFixture::new(Reminder, Timestamp::from_micros(0));
/// let step = fixture.when_raw_event("doc-1", "Created", vec![])?;
/// assert_eq!(step.timers_set().len(), 1);
/// assert!(!fixture.when_elapsed(Duration::from_secs(59))?.finished);
/// assert!(fixture.when_elapsed(Duration::from_secs(1))?.finished);
/// assert_eq!(fixture.state("doc-1"), Some(&1));
/// # Ok::<(), std::convert::Infallible>(())
/// ```
pub struct ProcessFixture<P: ProcessManager> {
    pm: P,
    now: Timestamp,
    next_position: u64,
    versions: BTreeMap<String, u64>,
    instances: BTreeMap<String, (P::State, bool)>,
    timers: BTreeSet<(Timestamp, String, String)>,
    sent: Vec<(CommandId, String)>,
}

impl<P: ProcessManager> ProcessFixture<P> {
    /// A fixture with no history, its clock at `now`.
    pub fn new(pm: P, now: Timestamp) -> Self {
        Self {
            pm,
            now,
            next_position: 1,
            versions: BTreeMap::new(),
            instances: BTreeMap::new(),
            timers: BTreeSet::new(),
            sent: Vec::new(),
        }
    }

    /// The fixture's clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// An instance's state.
    pub fn state(&self, id: &str) -> Option<&P::State> {
        self.instances.get(id).map(|(state, _)| state)
    }

    /// Whether an instance has finished.
    pub fn is_finished(&self, id: &str) -> bool {
        self.instances.get(id).is_some_and(|(_, done)| *done)
    }

    /// Timers set: due time, instance, name.
    pub fn timers(&self) -> Vec<(Timestamp, String, String)> {
        self.timers.iter().cloned().collect()
    }

    /// Delivers a domain event of `stream`.
    pub fn when_event<E: DomainEvent>(
        &mut self,
        stream: &str,
        event: E,
    ) -> Result<StepOutcome, P::Error> {
        match payload::encode(&event) {
            Ok(bytes) => self.when_raw_event(stream, event.event_type(), bytes),
            Err(error) => panic!("the fixture could not encode an event: {error}"),
        }
    }

    /// Delivers an event given by type name and payload bytes.
    pub fn when_raw_event(
        &mut self,
        stream: &str,
        event_type: &str,
        payload: Vec<u8>,
    ) -> Result<StepOutcome, P::Error> {
        let stream_id = match eventfold_domain::StreamId::new(stream) {
            Ok(id) => id,
            Err(error) => panic!("the fixture got an invalid stream id: {error}"),
        };
        let version = self.versions.entry(stream.to_owned()).or_default();
        *version += 1;
        let event = RecordedEvent {
            stream_id,
            version: *version,
            position: self.next_position,
            recorded_at: self.now,
            event_type: event_type.to_owned(),
            schema_version: 1,
            payload,
            metadata: eventfold_domain::Metadata::new(),
        };
        self.next_position += 1;
        let mut outcome = StepOutcome::default();
        if !self.pm.filter().matches(&event) {
            return Ok(outcome);
        }
        let (id, start) = match self.pm.associate(&event) {
            Association::Start(id) => (id, true),
            Association::Continue(id) => (id, false),
            Association::Ignore => return Ok(outcome),
        };
        let key = format!("e{}", event.position);
        self.step(&id, start, Input::Event(&event), key, &mut outcome)?;
        Ok(outcome)
    }

    /// Delivers the result of a command an instance sent; the instance is
    /// found by the command id.
    pub fn when_result(&mut self, result: CommandResult) -> Result<StepOutcome, P::Error> {
        let mut outcome = StepOutcome::default();
        let instance = self.sent_by(result.command_id);
        if let Some(id) = instance {
            let key = format!("r{}", result.command_id);
            self.step(&id, false, Input::Result(&result), key, &mut outcome)?;
        }
        Ok(outcome)
    }

    /// Moves the clock forward and fires every timer that falls due, in due
    /// order.
    pub fn when_elapsed(&mut self, elapsed: Duration) -> Result<StepOutcome, P::Error> {
        self.now = self.now.plus(elapsed);
        let mut outcome = StepOutcome::default();
        while let Some(first) = self.timers.first().cloned() {
            if first.0 > self.now {
                break;
            }
            self.timers.remove(&first);
            let (due, id, name) = first;
            let timer = FiredTimer { name, due };
            let key = format!("t{}@{}", timer.name, due.as_micros());
            self.step(&id, false, Input::Timer(&timer), key, &mut outcome)?;
        }
        Ok(outcome)
    }

    fn sent_by(&self, command_id: CommandId) -> Option<String> {
        self.sent
            .iter()
            .find(|(id, _)| *id == command_id)
            .map(|(_, instance)| instance.clone())
    }

    fn step(
        &mut self,
        id: &str,
        start: bool,
        input: Input<'_>,
        key: String,
        outcome: &mut StepOutcome,
    ) -> Result<(), P::Error> {
        let (mut state, finished) = match self.instances.get(id) {
            Some((state, finished)) => (state.clone(), *finished),
            None if start => (P::State::default(), false),
            None => return Ok(()),
        };
        if finished {
            return Ok(());
        }
        let name = self.pm.name().to_owned();
        let mut effects = Effects::new(&name, id, key, self.now);
        self.pm.handle(&mut state, input, &mut effects)?;
        if let Some(error) = effects.error {
            panic!("{error}");
        }
        for change in &effects.timers {
            match change {
                TimerChange::Set { name, due } => {
                    self.timers.retain(|(_, i, n)| !(i == id && n == name));
                    self.timers.insert((*due, id.to_owned(), name.clone()));
                }
                TimerChange::Cancel { name } => {
                    self.timers.retain(|(_, i, n)| !(i == id && n == name));
                }
            }
        }
        if effects.finished {
            self.timers.retain(|(_, i, _)| i != id);
        }
        for command in &effects.commands {
            self.sent.push((command.command_id, id.to_owned()));
        }
        self.instances
            .insert(id.to_owned(), (state, effects.finished));
        outcome.commands.extend(effects.commands);
        outcome.timers.extend(effects.timers);
        outcome.finished |= effects.finished;
        Ok(())
    }
}
