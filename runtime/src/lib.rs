//! The eventfold actor runtime.
//!
//! Every aggregate lives as an actix actor that owns its event stream; a
//! shard per core (an actix Arbiter) hosts the actors, and the
//! [`RuntimeHandle`] routes each command by a hash of the aggregate id. An
//! actor decides on a command, appends the events through the store's
//! group-commit writer and answers only once they are durable. The domain and
//! storage crates are re-exported, so a service depends on this crate alone.
//!
//! ```
//! use eventfold_runtime::{Runtime, ExecuteOptions, CommandError, domain::{Aggregate, CommandId, DomainEvent}};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Account { open: bool, balance: u64 }
//!
//! #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
//! enum Event { Opened, Deposited(u64) }
//! impl DomainEvent for Event {
//!     fn event_type(&self) -> &'static str {
//!         match self { Event::Opened => "Opened", Event::Deposited(_) => "Deposited" }
//!     }
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Command { Open, Deposit(u64) }
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! enum Refused { #[error("not open")] NotOpen, #[error("already open")] AlreadyOpen }
//!
//! impl Aggregate for Account {
//!     const KIND: &'static str = "account";
//!     type Command = Command;
//!     type Event = Event;
//!     type Error = Refused;
//!     fn handle(&self, command: Command) -> Result<Vec<Event>, Refused> {
//!         match command {
//!             Command::Open if self.open => Err(Refused::AlreadyOpen),
//!             Command::Open => Ok(vec![Event::Opened]),
//!             Command::Deposit(_) if !self.open => Err(Refused::NotOpen),
//!             Command::Deposit(n) => Ok(vec![Event::Deposited(n)]),
//!         }
//!     }
//!     fn apply(&mut self, event: &Event) {
//!         match event { Event::Opened => self.open = true, Event::Deposited(n) => self.balance += n }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder().temporary().aggregate::<Account>().start()?;
//! # let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! # rt.block_on(async {
//! runtime.execute::<Account>("a1", Command::Open).await?;
//! let once = ExecuteOptions::new().command_id(CommandId::from_name("deposit-1"));
//! let first = runtime.execute_with::<Account>("a1", Command::Deposit(5), once.clone()).await?;
//! let retry = runtime.execute_with::<Account>("a1", Command::Deposit(5), once).await?;
//! assert!(retry.deduplicated && retry.version == first.version);
//! let refused = runtime.execute::<Account>("a2", Command::Deposit(1)).await;
//! assert!(matches!(refused, Err(CommandError::Rejected(Refused::NotOpen))));
//! runtime.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```
//!
//! # Backpressure
//!
//! Every mailbox is bounded (`shard_mailbox_commands_max`,
//! `actor_mailbox_commands_max`, `actor_in_flight_commands_max`, and the
//! store's `queue_appends_max`). A command that meets a full one fails at once
//! with [`CommandError::Overloaded`]; nothing was done and it may be retried.
//!
//! # Timeouts
//!
//! A caller waits at most the command's timeout and then gets
//! [`CommandError::Timeout`]: the command may or may not have been applied,
//! and retrying with the same command id is safe.
//!
//! # Shutdown
//!
//! [`RuntimeHandle::shutdown`] stops intake, lets every aggregate finish what
//! it has taken, closes the store and stops the threads; later calls fail with
//! [`CommandError::ShutDown`]. Dropping the last handle without it stops the
//! threads at once: acknowledged commands are durable either way.
#![deny(missing_docs)]

// The three parts, each in its folder: the write side (a command from the
// router to a durable answer), the read side (the bus, subscriptions,
// projections and handlers) and process managers. `builder` wires them,
// `handle` is the facade a service holds.
mod builder;
mod command;
mod error;
pub mod evolution;
mod handle;
pub mod inspect;
pub mod metric_names;
mod panics;
pub mod personal;
mod placement;
pub mod process;
mod read;
mod runners;
mod settings;
mod timeout;

pub use builder::{Runtime, RuntimeBuilder};
pub use command::history::StateAt;
pub use command::outcome::{CommandOutcome, ExecuteOptions};
pub use error::{
    CommandError, ControlRefusal, DeleteError, InvalidSetting, LoadError, ParkedError,
    ProcessError, ProcessFailure, ProjectionError, ShutdownError, SpawnError, StartError,
    StateAtError,
};
pub use eventfold_domain as domain;
pub use eventfold_storage as storage;
pub use handle::{BackupError, RuntimeHandle};
pub use read::bus::{self, BusError, BusReceiver, EventBatch, EventBus};
pub use read::durable::{AckError, DurableError, DurableSubscription};
pub use read::external::{EventStream, SubscribeError};
pub use read::projection::{
    self, AfterRetries, ConsumerSettings, ConsumerState, ConsumerStatus, ErrorPolicy, EventHandler,
    HandlerError, ParkedEvent, Projection, ReadModelTx, ReadModelView,
};
pub use runners::{Placement, RunnerKind, SingleRunner};
pub use settings::{Passivation, Settings};
