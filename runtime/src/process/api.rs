//! What a process manager is: the trait, its inputs (events, command
//! results, fired timers) and the effects a step may have.

use super::results::{CommandResult, OutgoingCommand};
use eventfold_domain::{Aggregate, CommandId, RecordedEvent, Timestamp};
use eventfold_storage::{Filter, payload};
use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;

/// Longest instance id, in bytes. Events mapped to a longer id are not
/// routed (logged and counted in
/// [`ProcessStatus::unroutable`](super::ProcessStatus::unroutable)).
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

/// A process manager: see the [module documentation](crate::process).
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
    /// Where the commands sent come from (set by the host).
    pub(crate) trace: crate::process::records::Trace,
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
            trace: Default::default(),
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
