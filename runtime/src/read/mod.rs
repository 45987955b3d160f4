//! The read side: durable events reach projections and event handlers.
//!
//! - [`bus`]: the in-process broadcast of committed batches, in position order.
//! - [`subscription`]: the subscription engine every reader of the log
//!   uses (projections, handlers, process-manager hosts): catch-up from the
//!   store, live from the bus, back to catch-up on a gap, a lag or an idle
//!   head.
//! - [`external`]: `EventStream`, the subscriptions handed to code outside
//!   the runtime, on the same engine.
//! - [`durable`]: named external subscriptions whose checkpoint is stored
//!   when the consumer acknowledges.
//! - [`interest`]: what a subscriber wants of the log: its filter, and the
//!   deletions of the streams it reads.
//! - [`consumer`]: one projection partition, rebuild or event handler on a
//!   thread of its own, driving a subscription; `parked`: its dead letters;
//!   `placed`: an event handler run only where its placement grants it.
//! - [`projection`]: the public traits and settings, read-model views.
//! - [`registry`]: starts, stops and rebuilds the consumers; answers status,
//!   parked events and read-your-writes waits.
//!
//! Nothing here knows of aggregates' actors or process managers.

pub mod bus;
pub(crate) mod chunk;
pub(crate) mod consumer;
pub mod durable;
pub mod external;
pub(crate) mod interest;
pub(crate) mod parked;
mod placed;
pub mod projection;
pub(crate) mod read_ahead;
pub(crate) mod registry;
pub(crate) mod subscription;
