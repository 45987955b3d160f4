//! The commands an instance sends, and what each came to, as the instance
//! sees it.

use eventfold_domain::{Aggregate, CommandId};
use eventfold_storage::payload;
use std::any::Any;
use std::sync::Arc;

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
