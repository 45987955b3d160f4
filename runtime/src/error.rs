//! Errors of the runtime: one enum per operation (commands, starting,
//! shutting down, projections, process managers), each wrapping the store's
//! errors as typed values.

use crate::evolution::EventError;
use eventfold_domain::{ExpectedVersion, StreamIdError};
use eventfold_storage::{AppendError, Corruption, OpenError, ReadError, WriteError};
use std::time::Duration;

/// Why a command did not produce an outcome.
///
/// `E` is the aggregate's own error type: [`CommandError::Rejected`] carries
/// it. Everything else is about the runtime or the store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command. Nothing was written.
    #[error("the command was refused: {0}")]
    Rejected(#[source] E),
    /// The aggregate's version did not match the `expected_version` option,
    /// or the store found another writer's events. Nothing was written.
    #[error("expected {expected}, the aggregate is at version {actual}")]
    WrongExpectedVersion {
        /// What the command expected.
        expected: ExpectedVersion,
        /// The aggregate's version.
        actual: u64,
    },
    /// A mailbox or queue on the way is full: nothing was done, retry later.
    #[error("overloaded: {0}; nothing was done, retry later")]
    Overloaded(&'static str),
    /// No answer within the timeout. The command may or may not have been
    /// applied: retrying with the same command id is safe.
    #[error(
        "no answer within {0:?}: the outcome is unknown; a retry with the same command id is safe"
    )]
    Timeout(Duration),
    /// The aggregate's code panicked. Nothing was written for this command;
    /// the aggregate is rebuilt from the store.
    #[error("the aggregate panicked: {0}")]
    Panicked(String),
    /// An earlier command of the same aggregate, whose events this one was
    /// decided on, failed to append. Nothing was written for this command.
    #[error("an earlier command of this aggregate failed to append; nothing was written")]
    PrecedingAppendFailed,
    /// The store refused or failed the append.
    #[error("the append failed: {0}")]
    Store(#[source] AppendError),
    /// The aggregate could not be loaded from the store.
    #[error("the aggregate could not be loaded: {0}")]
    Load(#[source] LoadError),
    /// An event could not be encoded.
    #[error("an event could not be encoded: {0}")]
    Encode(String),
    /// The aggregate type was not registered with the runtime builder.
    #[error("aggregate kind {0} is not registered with this runtime")]
    NotRegistered(&'static str),
    /// The aggregate id does not make a valid stream id.
    #[error("invalid aggregate id: {0}")]
    InvalidId(#[source] StreamIdError),
    /// The runtime is shutting down or has stopped; the command was not taken.
    #[error("the runtime is shut down")]
    ShutDown,
}

/// Why an aggregate could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The store could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A stored event could not be upcast or decoded as the aggregate's
    /// event type (an unknown event, a changed shape without an upcaster,
    /// a schema newer than the code); it names the event.
    #[error(transparent)]
    Event(#[from] EventError),
    /// Events the state needs were removed by a truncation, and no snapshot
    /// covers them (its snapshot was lost, or is of another
    /// `SNAPSHOT_VERSION`): folding what is left would give a wrong state.
    #[error(
        "events of {stream} from version {needed} were truncated away (it starts at {first_version}) and no snapshot covers them"
    )]
    EventsRemoved {
        /// The stream.
        stream: String,
        /// The first version the state needed.
        needed: u64,
        /// The stream's first readable version.
        first_version: u64,
    },
    /// The recorded outcome of a command names versions that cannot be
    /// (its last before its first).
    #[error(
        "the recorded outcome of a command on {stream} spans versions {first_version} to {last_version}"
    )]
    InconsistentOutcome {
        /// The stream.
        stream: String,
        /// The first version it names.
        first_version: u64,
        /// The last version it names.
        last_version: u64,
    },
    /// `apply` panicked while replaying.
    #[error("apply panicked while replaying: {0}")]
    Panicked(String),
    /// The blocking task that loads was lost.
    #[error("the load task failed: {0}")]
    Task(String),
}

/// Why an aggregate's stream was not truncated, deleted or tombstoned.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteError {
    /// The aggregate's type is not registered with this runtime.
    #[error("aggregate kind {0} is not registered with this runtime")]
    NotRegistered(&'static str),
    /// The aggregate id does not make a valid stream id.
    #[error("invalid aggregate id: {0}")]
    InvalidId(#[source] StreamIdError),
    /// The store refused or failed the deletion (`StreamDeleted` is not
    /// among its answers: deleting again is a no-op).
    #[error(transparent)]
    Store(#[from] AppendError),
    /// Before a truncation, the state at the truncation point could not be
    /// replayed for the snapshot that keeps the aggregate loadable.
    #[error("the state to snapshot before the truncation could not be read: {0}")]
    Replay(#[source] LoadError),
    /// That snapshot's state did not encode.
    #[error("the state to snapshot before the truncation does not encode: {0}")]
    Encode(#[source] std::sync::Arc<eventfold_storage::payload::PayloadError>),
    /// That snapshot could not be written.
    #[error("the snapshot before the truncation could not be written: {0}")]
    Snapshot(#[source] WriteError),
    /// The shard's mailbox is full: retry later.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// The runtime is shutting down or has stopped.
    #[error("the runtime is shut down")]
    ShutDown,
}

/// Why a past state of an aggregate could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StateAtError {
    /// The aggregate id does not make a valid stream id.
    #[error("invalid aggregate id: {0}")]
    InvalidId(#[source] StreamIdError),
    /// Its events could not be read, upcast, decoded or applied.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// A temporary directory could not be made.
    #[error("could not create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// A thread of the runtime (the actor system, a shard, a consumer, a
    /// process-manager host) could not be started.
    #[error("could not start the thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// Why the operating system refused it.
        #[source]
        source: std::io::Error,
    },
    /// The actor system stopped while it was starting: its thread ended, or
    /// the arbiter of a shard stopped before the shard ran.
    #[error("the actor system stopped while starting{}", .shard.map(|s| format!(" (shard {s})")).unwrap_or_default())]
    SystemStopped {
        /// The shard whose arbiter stopped, if that was it.
        shard: Option<usize>,
    },
    /// A projection's active version could not be read.
    #[error("a projection could not be started: {0}")]
    Projection(#[source] ProjectionError),
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Setting(#[from] InvalidSetting),
    /// A process manager is configured with another partition count than
    /// the store was written with: its instances, outboxes and timers
    /// would be looked for in the wrong partitions. Start it with the
    /// stored count (moving instances between counts is not supported).
    #[error(
        "process manager {name:?} was written with {stored} partition(s) and is configured with {configured}"
    )]
    ProcessPartitions {
        /// The process manager.
        name: String,
        /// The count its records were written with.
        stored: usize,
        /// The count configured now.
        configured: usize,
    },
    /// A process manager's records could not be read at start.
    #[error("reading the records of {model}: {source}")]
    ProcessRecords {
        /// The read model.
        model: String,
        /// Why.
        #[source]
        source: eventfold_storage::ReadError,
    },
    /// Two registered aggregate types share a kind, or a kind is invalid.
    #[error("invalid aggregate kind {0:?}: kinds must be unique, non-empty, and contain no '-'")]
    Kind(&'static str),
}

/// A setting the runtime refuses: which one, and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {rule}")]
pub struct InvalidSetting {
    /// The setting, with its owner where there is one (`shards`,
    /// `transfers: outbox_max`, `projection name "a#b"`).
    pub setting: String,
    /// What it must be.
    pub rule: &'static str,
}

impl InvalidSetting {
    pub(crate) fn new(setting: impl Into<String>, rule: &'static str) -> Self {
        Self {
            setting: setting.into(),
            rule,
        }
    }

    /// The same setting, named under its owner (`owner: setting`).
    pub(crate) fn of(self, owner: &str) -> Self {
        Self {
            setting: format!("{owner}: {}", self.setting),
            rule: self.rule,
        }
    }
}

/// What a process-manager operation of the handle can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// No process manager of this name is registered.
    #[error("no process manager named {0}")]
    Unknown(String),
    /// The process manager refused: no such instance, not stuck, finished,
    /// stopped, or its mailbox is full.
    #[error(transparent)]
    Refused(#[from] ControlRefusal),
    /// The process manager failed while doing what was asked (a read or
    /// write of the store, a corrupt record).
    #[error("the process manager failed: {0}")]
    Failed(#[from] ProcessFailure),
    /// The process manager did not answer in time (it may be retrying a
    /// failing handler); the request may still take effect.
    #[error("the process manager did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// What the store holds for it could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A record of it in the store does not decode; names the key.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The runtime is shut down.
    #[error("the runtime is shut down")]
    ShutDown,
}

/// Why a process manager refused a control request (resume, cancel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlRefusal {
    /// No instance has this id.
    #[error("no instance {0:?}")]
    NoInstance(String),
    /// Resume asked of an instance that is not stuck.
    #[error("instance {0:?} is not stuck")]
    NotStuck(String),
    /// Cancel asked of an instance that has finished.
    #[error("instance {0:?} has finished")]
    Finished(String),
    /// The process manager is stopped, for this reason.
    #[error("the process manager is stopped: {0}")]
    Stopped(String),
    /// Its control mailbox is full (or closed): try again.
    #[error("the mailbox of {0} is full or closed")]
    MailboxFull(String),
    /// The process manager runs on another node of the cluster now: ask
    /// that node.
    #[error("{0} runs on another node of the cluster")]
    Elsewhere(String),
}

/// What stops a process manager, or fails a control request: the store, a
/// corrupt record, the event bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessFailure {
    /// A read of the store failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The commit of a step's batch failed.
    #[error("the commit failed: {0}")]
    Commit(#[source] WriteError),
    /// A record of its read model does not decode, or a key does not parse.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// A record could not be encoded (the encoder's message).
    #[error("{what} could not be encoded: {reason}")]
    Encode {
        /// What it was.
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// More commands wait in the outbox than a start reads back.
    #[error("more than {0} commands in the outbox")]
    OutboxOverflow(usize),
    /// An instance left the host's cache in the middle of its own step (a
    /// bug of the host; the step is not committed).
    #[error("instance {0:?} left the cache during a step")]
    InstanceLost(String),
    /// An event the instance must see again is missing from the log.
    #[error("event {0} is missing from the log")]
    MissingEvent(u64),
    /// The event bus closed while the process manager ran.
    #[error("the event bus closed")]
    BusClosed,
    /// An event could not be upcast to its current shape.
    #[error(transparent)]
    Event(#[from] EventError),
    /// Its own thread could not wait (no tokio runtime).
    #[error("no runtime to wait on: {0}")]
    NoRuntime(std::io::ErrorKind),
}

/// Why a projection operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// No projection or handler of this name is registered.
    #[error("no projection named {0}")]
    Unknown(String),
    /// The name is an event handler, which keeps no read model.
    #[error("{0} is an event handler, not a projection")]
    NotAProjection(String),
    /// The projection had not reached the position within the timeout.
    #[error("the projection had not reached position {position} within {timeout:?}")]
    Timeout {
        /// The position waited for.
        position: u64,
        /// How long it waited.
        timeout: std::time::Duration,
    },
    /// The projection is stopped (its error policy stopped it).
    #[error("the projection is stopped: {0}")]
    Stopped(String),
    /// A parked event could not be retried or skipped.
    #[error(transparent)]
    Parked(#[from] ParkedError),
    /// A rebuild of this projection is already running.
    #[error("a rebuild of {0} is already running")]
    RebuildRunning(String),
    /// The projection runs once in a cluster (placed on one node): it
    /// cannot be rebuilt in place yet.
    #[error("{0} runs once in the cluster; rebuilding it is not supported yet")]
    Placed(String),
    /// The store could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A record of the projection in the store does not decode.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// An event could not be upcast to its current shape.
    #[error(transparent)]
    Event(#[from] EventError),
    /// A thread (a rebuild's consumer or coordinator) could not be started.
    #[error("could not start the thread {name}: {kind}")]
    Thread {
        /// The thread's name.
        name: String,
        /// What the operating system said.
        kind: std::io::ErrorKind,
    },
    /// The runtime is shut down.
    #[error("the runtime is shut down")]
    ShutDown,
}

/// Why a parked event was not retried or skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParkedError {
    /// Nothing is parked at this position.
    #[error("position {0} is not parked")]
    NotParked(u64),
    /// An earlier parked event of the same stream must go first.
    #[error(
        "position {position} is held behind an earlier parked event of {stream}; retry or skip that first"
    )]
    HeldBehind {
        /// The position asked for.
        position: u64,
        /// Its stream.
        stream: String,
    },
    /// The handler failed again; the event stays parked with this reason.
    #[error("position {position} failed again: {reason}")]
    FailedAgain {
        /// The position retried.
        position: u64,
        /// The handler's error.
        reason: String,
    },
    /// The parked event is no longer in the store.
    #[error("position {0} is not in the store")]
    Missing(u64),
    /// The consumer holding it is stopped.
    #[error("the consumer is stopped")]
    ConsumerStopped,
    /// The consumer runs on another node of the cluster now: ask that
    /// node.
    #[error("the consumer runs on another node of the cluster")]
    Elsewhere,
}

/// Why [`crate::RuntimeHandle::spawn_on_shard`] did not start a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The runtime is shutting down or has shut down.
    #[error("the runtime is shut down")]
    ShutDown,
    /// The shard's mailbox is full (`shard_mailbox_commands_max`).
    #[error("the shard's mailbox is full")]
    Overloaded,
}

/// Why shutdown did not complete cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The actor system's thread panicked.
    #[error("the actor system thread panicked")]
    SystemPanicked,
}

pub(crate) use crate::panics::panic_message;
