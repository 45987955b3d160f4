//! The messages of the command path: a command on its way to its aggregate
//! (`Execute`) and its answer (`Reply`), and what shards and actors tell
//! each other (`Passivate`, `Stopped`, `Drain`, `Spawn`). They live apart
//! from the actors that handle them, so that the shard and the aggregate
//! actor each depend on them and not on each other.

use super::outcome::{CommandOutcome, ExecuteOptions};
use super::state_cache::CachedState;
use crate::error::CommandError;
use crate::metric_names::REJECTIONS_TOTAL;
use actix::prelude::*;
use eventfold_domain::{Aggregate, StreamId};
use std::sync::Arc;
use std::time::Instant;

/// A command's result, as the caller receives it.
pub(crate) type CommandResult<A> =
    Result<CommandOutcome<<A as Aggregate>::Event>, CommandError<<A as Aggregate>::Error>>;

/// Where a command's result goes.
pub(crate) type Reply<A> = oneshot::Sender<CommandResult<A>>;

/// A command on its way to its aggregate.
pub(crate) struct Execute<A: Aggregate> {
    pub stream: StreamId,
    pub command: A::Command,
    pub options: ExecuteOptions,
    /// Past it the caller has given up: the command is dropped undecided.
    pub deadline: Instant,
    /// When `execute` was called.
    pub received: Instant,
    pub reply: Reply<A>,
}

impl<A: Aggregate> Message for Execute<A> {
    type Result = ();
}

/// Answers a command refused before it reached its aggregate.
pub(crate) fn refuse<A: Aggregate>(
    reply: Reply<A>,
    error: CommandError<A::Error>,
    reason: &'static str,
) {
    metrics::counter!(REJECTIONS_TOTAL, "reason" => reason).increment(1);
    let _ = reply.send(Err(error));
}

/// Sent by an aggregate actor when it has stopped.
pub(crate) struct Stopped {
    pub stream: StreamId,
    pub generation: u32,
    /// Its state, when it stopped with a clean one and the cache is on.
    pub state: Option<CachedState>,
}

impl Message for Stopped {
    type Result = ();
}

/// Asks the shard to passivate every actor and answer once all have stopped.
pub(crate) struct Drain {
    pub done: oneshot::Sender<()>,
}

impl Message for Drain {
    type Result = ();
}

/// A task to start on the shard's thread ([`crate::RuntimeHandle::spawn_on_shard`]).
pub(crate) struct Spawn(pub Box<dyn FnOnce() -> LocalTask + Send>);

/// A future that runs on one shard's thread.
pub(crate) type LocalTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

impl Message for Spawn {
    type Result = ();
}

/// Soft-deletes or tombstones an aggregate's stream: the shard stops its
/// actor first (what is in flight lands, nothing stale is cached), holds
/// the stream's commands until the deletion is durable, then lets them
/// activate a fresh actor.
pub(crate) struct DeleteStream {
    pub stream: StreamId,
    pub kind: &'static str,
    pub deletion: eventfold_storage::Deletion,
    pub reply:
        oneshot::Sender<Result<eventfold_storage::AppendOutcome, eventfold_storage::AppendError>>,
}

impl Message for DeleteStream {
    type Result = ();
}

/// Tells an aggregate actor to stop once nothing is in flight.
pub(crate) struct Passivate;

impl Message for Passivate {
    type Result = ();
}

/// Which streams a [`Release`] lets go of.
pub(crate) type StreamMatcher = Arc<dyn Fn(&StreamId) -> bool + Send + Sync>;

/// Tells a shard to stop the actors of the streams `matches` says, and to
/// forget their cached states (their stream is now written elsewhere);
/// `done` hears once they have stopped.
pub(crate) struct Release {
    pub matches: StreamMatcher,
    pub done: oneshot::Sender<()>,
}

impl Message for Release {
    type Result = ();
}
