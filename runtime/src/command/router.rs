//! The router: where a command enters the runtime. It checks the command
//! (the runtime is taking commands, the aggregate type is registered, the id
//! is valid), picks the shard by a hash of the stream id and hands the
//! command to that shard's bounded mailbox. The handle and the
//! process-manager hosts share one router; it holds nothing of theirs.

use super::messages::{CommandResult, Drain, Execute, Spawn};
use super::outcome::ExecuteOptions;
use super::shard::Shard;
use super::shared::Shared;
use crate::error::DeleteError;
use crate::error::{CommandError, SpawnError};
use crate::metric_names::REJECTIONS_TOTAL;
use crate::placement::bucket_of;
use crate::timeout::{Deadline, deadline};
use actix::dev::SendError;
use actix::prelude::*;
use eventfold_domain::{Aggregate, StreamId};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Routes commands to the shards of one runtime.
pub(crate) struct Router {
    shards: Vec<Addr<Shard>>,
    shared: Arc<Shared>,
    kinds: HashSet<&'static str>,
    /// False once shutdown has begun: later commands are `ShutDown`.
    accepting: AtomicBool,
}

/// Where a dispatched command's answer comes, how long to wait for it,
/// until when (its timeout from when it was received), and when it was
/// received.
pub(crate) type Dispatched<A> = (
    oneshot::Receiver<CommandResult<A>>,
    Duration,
    Instant,
    Instant,
);

/// Waits for a routed command's answer, or its timeout.
pub(crate) async fn answer<A: Aggregate>(
    (reply, timeout, deadline, received): Dispatched<A>,
) -> CommandResult<A> {
    match Deadline::until(reply, deadline, received).await {
        Some(Ok(result)) => result,
        Some(Err(_)) => Err(CommandError::ShutDown),
        None => Err(CommandError::Timeout(timeout)),
    }
}

/// Where the store's answer to a deletion comes.
pub(crate) type DeletionReceiver =
    oneshot::Receiver<Result<eventfold_storage::AppendOutcome, eventfold_storage::AppendError>>;

impl Router {
    pub(crate) fn new(
        shards: Vec<Addr<Shard>>,
        shared: Arc<Shared>,
        kinds: HashSet<&'static str>,
    ) -> Self {
        Self {
            shards,
            shared,
            kinds,
            accepting: AtomicBool::new(true),
        }
    }

    /// What the shards and actors share (the store, the settings, counters).
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// [`Router::shared`], to hand to another thread.
    pub(crate) fn shared_arc(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The number of shards.
    pub(crate) fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Routes a command to its shard; returns where its answer will come.
    pub(crate) fn dispatch<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        options: ExecuteOptions,
    ) -> Result<Dispatched<A>, CommandError<A::Error>> {
        if !self.accepting.load(Ordering::SeqCst) {
            metrics::counter!(REJECTIONS_TOTAL, "reason" => "shut_down").increment(1);
            return Err(CommandError::ShutDown);
        }
        if !self.kinds.contains(A::KIND) {
            return Err(CommandError::NotRegistered(A::KIND));
        }
        let stream = StreamId::for_aggregate(A::KIND, id).map_err(CommandError::InvalidId)?;
        let timeout = options
            .timeout
            .unwrap_or(self.shared.settings.command_timeout);
        let received = Instant::now();
        let deadline = deadline(received, timeout);
        let (reply, receiver) = oneshot::channel();
        let index = bucket_of(stream.as_str(), self.shards.len());
        let shard = &self.shards[index];
        let message = Execute::<A> {
            stream,
            command,
            options,
            deadline,
            received,
            reply,
        };
        // Counted before it is sent, so the shard never takes it first.
        let queued = &self.shared.queued[index];
        queued.fetch_add(1, Ordering::Relaxed);
        let sent = shard.try_send(message);
        if sent.is_err() {
            queued.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok((receiver, timeout, deadline, received)),
            Err(SendError::Full(_)) => {
                metrics::counter!(REJECTIONS_TOTAL, "reason" => "overloaded").increment(1);
                Err(CommandError::Overloaded("shard mailbox is full"))
            }
            Err(SendError::Closed(_)) => Err(CommandError::ShutDown),
        }
    }

    /// The stream of aggregate `id`, checked for a deletion as a command is.
    pub(crate) fn deletion_stream<A: Aggregate>(&self, id: &str) -> Result<StreamId, DeleteError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(DeleteError::ShutDown);
        }
        if !self.kinds.contains(A::KIND) {
            return Err(DeleteError::NotRegistered(A::KIND));
        }
        StreamId::for_aggregate(A::KIND, id).map_err(DeleteError::InvalidId)
    }

    /// Sends a soft delete or tombstone of aggregate `id`'s stream to its
    /// shard (see [`DeleteStream`](super::messages::DeleteStream)); the
    /// store's answer comes on the receiver.
    pub(crate) fn delete<A: Aggregate>(
        &self,
        id: &str,
        deletion: eventfold_storage::Deletion,
    ) -> Result<DeletionReceiver, DeleteError> {
        let stream = self.deletion_stream::<A>(id)?;
        let (reply, receiver) = oneshot::channel();
        let shard = &self.shards[bucket_of(stream.as_str(), self.shards.len())];
        let message = super::messages::DeleteStream {
            stream,
            kind: A::KIND,
            deletion,
            reply,
        };
        match shard.try_send(message) {
            Ok(()) => Ok(receiver),
            Err(SendError::Full(_)) => Err(DeleteError::Overloaded("shard mailbox is full")),
            Err(SendError::Closed(_)) => Err(DeleteError::ShutDown),
        }
    }

    /// Routes a command now and returns a future of its answer that holds
    /// no reference to the router.
    pub(crate) fn submit<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        options: ExecuteOptions,
    ) -> impl Future<Output = CommandResult<A>> + Send + 'static + use<A> {
        let routed = self.dispatch::<A>(id, command, options);
        async move { answer::<A>(routed?).await }
    }

    /// Starts the future `task` makes on the thread of shard `shard`
    /// (modulo the number of shards).
    pub(crate) fn spawn_on_shard(
        &self,
        shard: usize,
        task: Box<dyn FnOnce() -> super::messages::LocalTask + Send>,
    ) -> Result<(), SpawnError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(SpawnError::ShutDown);
        }
        let address = &self.shards[shard % self.shards.len()];
        match address.try_send(Spawn(task)) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => Err(SpawnError::Overloaded),
            Err(SendError::Closed(_)) => Err(SpawnError::ShutDown),
        }
    }

    /// Whether commands are taken (false once shutdown has begun).
    pub(crate) fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Stops taking commands; true the first time only.
    pub(crate) fn stop_accepting(&self) -> bool {
        self.accepting.swap(false, Ordering::SeqCst)
    }

    /// Asks every shard to passivate its actors, and waits (blocking) until
    /// each has answered: every command taken has been answered.
    /// Stops the actors of the streams `matches` says on every shard and
    /// forgets their cached states; returns once they have stopped.
    pub(crate) async fn release(&self, matches: super::messages::StreamMatcher) {
        let waits: Vec<_> = self
            .shards
            .iter()
            .map(|shard| {
                let (done, released) = oneshot::channel();
                shard.do_send(super::messages::Release {
                    matches: Arc::clone(&matches),
                    done,
                });
                released
            })
            .collect();
        for released in waits {
            // A shard whose thread is gone holds no actor.
            let _ = released.await;
        }
    }

    pub(crate) fn drain_blocking(&self) {
        let waits: Vec<_> = self
            .shards
            .iter()
            .map(|shard| {
                let (done, drained) = oneshot::channel();
                shard.do_send(Drain { done });
                drained
            })
            .collect();
        for drained in waits {
            // A shard whose thread is gone has nothing left to drain.
            let _ = drained.recv();
        }
    }
}
