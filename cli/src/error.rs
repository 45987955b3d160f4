//! What can go wrong in a command, each with what to do about it.

use eventfold_runtime::inspect::InspectError;
use eventfold_storage::{OpenError, ReadError};
use std::path::PathBuf;

/// Why a command failed. Every variant says what happened and, where the
/// operator can act, how to proceed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Open(#[from] OpenError),
    /// The store could not be read.
    #[error("cannot read the store: {0}")]
    Read(#[from] ReadError),
    /// What the runtime keeps in the store could not be read.
    #[error("cannot inspect the store: {0}")]
    Inspect(#[from] InspectError),
    /// A command that changes the store found it held by another process.
    #[error(
        "the store at {} is in use by another process (a running service?); nothing was changed. {}",
        .path.display(),
        .action.how()
    )]
    InUse {
        /// The store.
        path: PathBuf,
        /// The command refused.
        action: Action,
    },
    /// A command that needs the user's handlers found no runtime running.
    #[error(
        "{action} runs the {what}'s own code, which only the service that embeds the runtime has: start the service on this store and pass --service URL"
    )]
    NeedsRuntime {
        /// The command refused.
        action: Action,
        /// Whose code: a projection's or a process manager's.
        what: &'static str,
    },
    /// A command names neither a store nor a service.
    #[error("{0} needs --store PATH or --service URL")]
    NoTarget(Action),
    /// A stream id given on the command line is not one.
    #[error("{0:?} is not a stream id: {1}")]
    StreamId(String, eventfold_domain::StreamIdError),
    /// The service answered with an error.
    #[error("the service answered {status} ({code}): {detail}")]
    Service {
        /// The HTTP status.
        status: u16,
        /// The error's stable code.
        code: String,
        /// What the service said.
        detail: String,
    },
    /// The service could not be reached or answered something unreadable.
    #[error("cannot reach the service: {0}")]
    Http(#[from] reqwest::Error),
    /// `verify` found faults (they are listed above the error).
    #[error("verify found {0} fault(s)")]
    Faults(usize),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The output could not be encoded as JSON.
    #[error("cannot encode the output: {0}")]
    Json(#[from] serde_json::Error),
}

/// A command that changes something (or needs the store to itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take a parked event again.
    Retry,
    /// Give up on a parked event.
    Skip,
    /// Resume a stuck process instance.
    Resume,
    /// Cancel a process instance.
    Cancel,
    /// Back the store up.
    Backup,
    /// Convert the store to this version's format.
    Upgrade,
    /// Open a damaged store keeping what precedes the damage.
    Salvage,
}

impl Action {
    /// The command's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Skip => "skip",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Backup => "backup",
            Self::Upgrade => "upgrade",
            Self::Salvage => "salvage",
        }
    }

    /// How to proceed when the store is in use.
    fn how(self) -> &'static str {
        match self {
            Self::Retry | Self::Skip | Self::Resume | Self::Cancel | Self::Backup => {
                "Go through the service's admin endpoints: pass --service URL (and its admin token with --token or EVENTFOLD_ADMIN_TOKEN)."
            }
            Self::Upgrade | Self::Salvage => {
                "It needs the store to itself: stop the service (SIGTERM drains it), then run it again."
            }
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
