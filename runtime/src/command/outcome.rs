//! What a command returns and what it may carry.

use eventfold_domain::{CausationId, CommandId, CorrelationId, ExpectedVersion};
use std::time::Duration;

/// The result of a command that was applied (or had been applied already).
#[derive(Clone, Debug, PartialEq)]
pub struct CommandOutcome<E> {
    /// The aggregate's version after the command.
    pub version: u64,
    /// Global position of the last event written; `None` when the command
    /// produced no events. Pass it to read-your-writes waits.
    pub position: Option<u64>,
    /// The events the command produced.
    pub events: Vec<E>,
    /// True when the command id had been applied before: this is the
    /// original outcome, and nothing was written this time.
    pub deduplicated: bool,
}

/// Options of one command.
///
/// ```
/// use eventfold_runtime::ExecuteOptions;
/// use eventfold_runtime::domain::CommandId;
/// use std::time::Duration;
/// let options = ExecuteOptions::new()
///     .command_id(CommandId::from_name("deposit-17"))
///     .timeout(Duration::from_secs(2))
///     .header("request-id", "r-8812");
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
pub struct ExecuteOptions {
    /// Makes the command idempotent: a retry with the same id returns the
    /// original outcome and writes nothing.
    pub command_id: Option<CommandId>,
    /// Stored with every event the command produces.
    pub correlation_id: Option<CorrelationId>,
    /// Stored with every event; defaults to the command id.
    pub causation_id: Option<CausationId>,
    /// The aggregate must be at this version, or the command fails with
    /// `WrongExpectedVersion` without being decided.
    pub expected_version: Option<ExpectedVersion>,
    /// How long to wait for the outcome (default: the runtime's
    /// `command_timeout`).
    pub timeout: Option<Duration>,
    /// Stored with every event the command produces, in this order (a
    /// request id, a user, a tenant...). The store bounds their bytes
    /// (`headers_bytes_max`); past it the command fails as the append does.
    pub headers: eventfold_domain::Headers,
}

impl ExecuteOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the command id.
    pub fn command_id(mut self, id: CommandId) -> Self {
        self.command_id = Some(id);
        self
    }
    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: CorrelationId) -> Self {
        self.correlation_id = Some(id);
        self
    }
    /// Sets the causation id.
    pub fn causation_id(mut self, id: CausationId) -> Self {
        self.causation_id = Some(id);
        self
    }
    /// Sets the expected version.
    pub fn expected_version(mut self, expected: ExpectedVersion) -> Self {
        self.expected_version = Some(expected);
        self
    }
    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Adds a header stored with every event the command produces.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
}
