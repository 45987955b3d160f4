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

mod api;
mod fixture;
mod results;
mod settings;
mod status;

pub(crate) mod admin;
pub(crate) mod control;
pub(crate) mod dispatch;
pub(crate) mod host;
pub(crate) mod records;
pub(crate) mod supervisor;

pub use api::{
    Association, Effects, FiredTimer, INSTANCE_ID_BYTES_MAX, Input, ProcessManager, TimerChange,
};
pub use dispatch::{CommandSender, SentCommand};
pub use fixture::{ProcessFixture, StepOutcome};
pub use results::{CommandResult, OutgoingCommand, ResultOutcome};
pub use settings::{PROCESS_PARTITIONS_MAX, ProcessSettings, RetryPolicy};
pub use status::{InstanceStatus, InstanceView, ProcessStatus, StuckInstance};
