//! The write side: where a command goes from `RuntimeHandle::execute` to a
//! durable answer.
//!
//! ```text
//! router ──hash(stream id)──▶ shard ──▶ actor::decide ──submit──▶ store's writer
//!                                                                   │ fsync
//! caller ◀──────────── actor::answer (in decision order) ◀──────────┘
//! ```
//!
//! - [`router`]: checks a command and hands it to its shard's bounded mailbox.
//! - [`shard`]: one actix Arbiter per shard; the only map from stream id to
//!   live actor (one actor per aggregate), activation and passivation.
//! - [`actor`]: the aggregate actor: queues, load, decide, answer, snapshots.
//! - [`messages`]: what flows between them; [`shared`]: what they share.
//! - [`state_cache`]: the state of passivated aggregates, per shard.
//! - [`outcome`]: what a command returns and the options it is sent with.
//! - [`system`]: the actix system and its shard threads.
//! - [`history`]: an aggregate's state at a past version or moment, read
//!   beside its actor.
//!
//! Nothing here knows of projections or process managers: they reach the
//! write side through the router, as any caller does.

pub(crate) mod actor;
pub(crate) mod history;
pub(crate) mod messages;
pub(crate) mod outcome;
pub(crate) mod router;
pub(crate) mod shard;
pub(crate) mod shared;
pub(crate) mod state_cache;
pub(crate) mod system;
