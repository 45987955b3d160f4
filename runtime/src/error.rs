//! Errors of the runtime: one enum for commands, one for starting, one for
//! shutting down.

use eventfold_domain::{ExpectedVersion, StreamIdError};
use eventfold_storage::{AppendError, OpenError, ReadError};
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
    /// A stored event is not a valid encoding of the aggregate's event type
    /// (an unknown event, or a schema without an upcaster).
    #[error("event {version} of {stream} cannot be decoded: {reason}")]
    Decode {
        /// The stream.
        stream: String,
        /// The event's version.
        version: u64,
        /// The decoder's message.
        reason: String,
    },
    /// `apply` panicked while replaying.
    #[error("apply panicked while replaying: {0}")]
    Panicked(String),
    /// The blocking task that loads was lost.
    #[error("the load task failed: {0}")]
    Task(String),
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
    /// The actor system's threads could not be started.
    #[error("could not start the actor system: {0}")]
    System(String),
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Setting(String),
    /// Two registered aggregate types share a kind, or a kind is invalid.
    #[error("invalid aggregate kind {0:?}: kinds must be unique, non-empty, and contain no '-'")]
    Kind(&'static str),
}

/// What a process-manager operation of the handle can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// No process manager of this name is registered.
    #[error("no process manager named {0}")]
    Unknown(String),
    /// The process manager refused: no such instance, not stuck, finished,
    /// or it is stopped (the message says which).
    #[error("{0}")]
    Refused(String),
    /// The process manager did not answer in time (it may be retrying a
    /// failing handler); the request may still take effect.
    #[error("the process manager did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// What the store holds for it could not be read or decoded; names the key.
    #[error("store: {0}")]
    Store(String),
    /// The runtime is shut down.
    #[error("the runtime is shut down")]
    ShutDown,
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
    #[error("parked event: {0}")]
    Parked(String),
    /// A rebuild of this projection is already running.
    #[error("a rebuild of {0} is already running")]
    RebuildRunning(String),
    /// The store could not be read or written.
    #[error("store: {0}")]
    Store(String),
    /// The runtime is shut down.
    #[error("the runtime is shut down")]
    ShutDown,
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

/// Turns a panic payload into its message.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
