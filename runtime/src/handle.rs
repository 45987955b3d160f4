//! The embedding handle: a thin facade over the three parts of the
//! runtime. Commands go to the [router](crate::command::router), reads of
//! projections to the [registry](crate::read::registry), process-manager
//! administration to the [hosts](crate::process::host).

use crate::command::history::{self, StateAt, Until};
use crate::command::outcome::{CommandOutcome, ExecuteOptions};
use crate::command::router::{Router, answer};
use crate::command::system::SystemThread;
use crate::error::{
    CommandError, DeleteError, LoadError, ProcessError, ProjectionError, ShutdownError, SpawnError,
    StateAtError,
};
use crate::process::control::{ControlReply, ProcessControl};
use crate::process::supervisor::Processes;
use crate::process::{InstanceView, ProcessStatus, StuckInstance};
use crate::read::bus::{BusReceiver, EventBus};
use crate::read::projection::{ConsumerStatus, ParkedEvent, ReadModelView};
use crate::read::registry::Registry;
use eventfold_domain::{Aggregate, StreamId, Timestamp};
use eventfold_storage::{
    AppendError, DeleteRequest, Deletion, DeletionOutcome, EventStore, RocksStore,
};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a running runtime holds; dropped with the last handle.
pub(crate) struct Inner {
    pub router: Arc<Router>,
    pub bus: EventBus,
    pub system: Mutex<Option<SystemThread>>,
    /// Set when the store is RocksDB, to close it at shutdown.
    pub rocks: Option<RocksStore>,
    /// Projections and event handlers.
    pub registry: Arc<Registry>,
    /// Process managers.
    pub processes: Processes,
    /// The temporary directory of an embedded default store, removed last.
    pub _temp: Option<tempfile::TempDir>,
}

impl Inner {
    fn stop_system(&self) -> Result<(), ShutdownError> {
        // Process managers and consumers commit what they have handled
        // before the store closes.
        self.processes.stop_all();
        self.registry.stop_all();
        let running = self.system.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(running) = running {
            running.stop()?;
        }
        if let Some(store) = &self.rocks {
            store.close();
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Without `shutdown`, commands in flight are answered `ShutDown`;
        // everything acknowledged is already durable.
        self.router.stop_accepting();
        if self.stop_system().is_err() {
            tracing::error!("the actor system thread panicked");
        }
    }
}

/// The handle to a running eventfold runtime: `Send + Sync + Clone`, usable
/// from any thread and any async executor.
///
/// ```
/// use eventfold_runtime::{Runtime, domain::{Aggregate, DomainEvent}};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { value: u64 }
/// #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
/// struct Added(u64);
/// impl DomainEvent for Added { fn event_type(&self) -> &'static str { "Added" } }
/// #[derive(Debug, thiserror::Error)]
/// #[error("zero")]
/// struct Zero;
/// impl Aggregate for Counter {
///     const KIND: &'static str = "counter";
///     type Command = u64;
///     type Event = Added;
///     type Error = Zero;
///     fn handle(&self, n: u64) -> Result<Vec<Added>, Zero> {
///         if n == 0 { Err(Zero) } else { Ok(vec![Added(n)]) }
///     }
///     fn apply(&mut self, Added(n): &Added) { self.value += n; }
/// }
///
/// let runtime = Runtime::builder().temporary().aggregate::<Counter>().start()?;
/// let outcome = runtime.execute_blocking::<Counter>("c1", 5)?;
/// assert_eq!((outcome.version, outcome.events), (1, vec![Added(5)]));
/// runtime.shutdown_blocking()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RuntimeHandle {
    inner: Arc<Inner>,
}

/// How long [`RuntimeHandle::resume_instance`] and
/// [`RuntimeHandle::cancel_instance`] wait for the process manager.
pub const PROCESS_CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

impl RuntimeHandle {
    pub(crate) fn new(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A process manager's status: checkpoint, head, instances in memory,
    /// outbox, timers, stuck instances.
    pub fn process_status(&self, name: &str) -> Result<ProcessStatus, ProcessError> {
        self.inner.processes.status(name, self.store())
    }

    /// The instances of a process manager parked as stuck, with their last
    /// error (at most [`STUCK_LIST_MAX`](crate::process) of them).
    pub fn stuck_instances(&self, name: &str) -> Result<Vec<StuckInstance>, ProcessError> {
        self.inner.processes.stuck_instances(name, self.store())
    }

    /// An instance of process manager `name` as last committed, with its
    /// state decoded as `S` (the process manager's `State`).
    pub fn process_instance<S: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
        id: &str,
    ) -> Result<Option<InstanceView<S>>, ProcessError> {
        let keys = &self.inner.router.shared_arc().keys;
        keys.scope(|| self.inner.processes.instance(name, id, self.store()))
    }

    /// Forgets data subject `subject`: its key is destroyed for good, and
    /// every [`Personal`](crate::personal::Personal) value of it (in
    /// events, snapshots, read models, process managers) reads as shredded
    /// from now on; nothing personal can be stored for it again. True when
    /// it had a key (or had been forgotten) before. Blocking: a synced
    /// write, a flush of every keyspace and a compaction of the keys'.
    pub fn forget(&self, subject: &str) -> Result<bool, eventfold_storage::WriteError> {
        self.inner.router.shared().keys.forget(subject)
    }

    /// The runtime's subjects' keys: decode events of your own reads of
    /// the store inside [`SubjectKeys::scope`](crate::personal::SubjectKeys::scope)
    /// for their personal values to open.
    pub fn subject_keys(&self) -> &Arc<crate::personal::SubjectKeys> {
        &self.inner.router.shared_arc().keys
    }

    /// Resumes a stuck instance: the input it failed on is handled again,
    /// then the events held for it, in order; its unanswered commands are
    /// sent again (same command ids). Blocks until the process manager has
    /// tried; do not call it from an async task.
    pub fn resume_instance(&self, name: &str, id: &str) -> Result<(), ProcessError> {
        self.ask_process(name, |reply| ProcessControl::Resume(id.to_owned(), reply))
    }

    /// Cancels an instance (stuck or not): it is finished without further
    /// steps, its timers and unanswered commands are dropped. Commands
    /// already delivered are not undone. Blocks like
    /// [`RuntimeHandle::resume_instance`].
    pub fn cancel_instance(&self, name: &str, id: &str) -> Result<(), ProcessError> {
        self.ask_process(name, |reply| ProcessControl::Cancel(id.to_owned(), reply))
    }

    fn ask_process(
        &self,
        name: &str,
        message: impl FnOnce(ControlReply) -> ProcessControl,
    ) -> Result<(), ProcessError> {
        if !self.inner.router.accepting() {
            return Err(ProcessError::ShutDown);
        }
        self.inner
            .processes
            .ask(name, message, PROCESS_CONTROL_TIMEOUT)
    }

    /// Executes `command` on the aggregate `A` with id `id` (its stream is
    /// `{A::KIND}-{id}`) and returns the outcome once its events are durable.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.execute_with::<A>(id, command, ExecuteOptions::default())
            .await
    }

    /// [`RuntimeHandle::execute`] with options (command id, correlation and
    /// causation ids, expected version, timeout).
    pub async fn execute_with<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        options: ExecuteOptions,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        answer::<A>(self.inner.router.dispatch::<A>(id, command, options)?).await
    }

    /// [`RuntimeHandle::execute`] for plain threads: blocks the calling
    /// thread. Do not call it from an async task or an actor.
    pub fn execute_blocking<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.execute_blocking_with::<A>(id, command, ExecuteOptions::default())
    }

    /// [`RuntimeHandle::execute_with`] for plain threads.
    pub fn execute_blocking_with<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        options: ExecuteOptions,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let (reply, timeout, _) = self.inner.router.dispatch::<A>(id, command, options)?;
        match reply.recv_timeout(timeout) {
            Ok(result) => result,
            Err(oneshot::RecvTimeoutError::Timeout) => Err(CommandError::Timeout(timeout)),
            Err(oneshot::RecvTimeoutError::Disconnected) => Err(CommandError::ShutDown),
        }
    }

    /// Runs the future `task` makes on the thread of shard `shard` (modulo
    /// the number of shards), next to its aggregate actors: a task that
    /// sends commands from there saves a thread hand-off each way for the
    /// commands routed to that shard, as a request handler of an actix
    /// service does. The future need not be `Send`; it must not block. A
    /// panic in it ends only the task (tokio catches it); a task still
    /// running when the runtime shuts down is dropped with the shard.
    ///
    /// ```
    /// use eventfold_runtime::Runtime;
    /// use eventfold_runtime::domain::{Aggregate, DomainEvent};
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// # struct Counter(u64);
    /// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    /// # struct Added;
    /// # impl DomainEvent for Added {
    /// #     fn event_type(&self) -> &'static str { "Added" }
    /// # }
    /// # #[derive(Debug, Clone, thiserror::Error)]
    /// # #[error("never")]
    /// # struct Never;
    /// # impl Aggregate for Counter {
    /// #     const KIND: &'static str = "counter";
    /// #     type Command = ();
    /// #     type Event = Added;
    /// #     type Error = Never;
    /// #     fn handle(&self, _: ()) -> Result<Vec<Added>, Never> { Ok(vec![Added]) }
    /// #     fn apply(&mut self, _: &Added) { self.0 += 1; }
    /// # }
    /// let runtime = Runtime::builder().temporary().aggregate::<Counter>().start()?;
    /// let (done, answer) = std::sync::mpsc::channel();
    /// let handle = runtime.clone();
    /// runtime.spawn_on_shard(0, move || async move {
    ///     let outcome = handle.execute::<Counter>("c-1", ()).await;
    ///     let _ = done.send(outcome.map(|o| o.version));
    /// })?;
    /// assert_eq!(answer.recv()??, 1);
    /// runtime.shutdown_blocking()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_on_shard<F, Fut>(&self, shard: usize, task: F) -> Result<(), SpawnError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        self.inner
            .router
            .spawn_on_shard(shard, Box::new(move || Box::pin(task())))
    }

    /// The number of shards (threads hosting aggregate actors).
    pub fn shards(&self) -> usize {
        self.inner.router.shards()
    }

    /// The state aggregate `id` had at `version` of its stream (the
    /// current state when its stream is shorter), folded from its events
    /// through the runtime's upcasters. Read from the store on the blocking
    /// pool of the calling tokio runtime (on the calling thread outside
    /// one); the live actor is not involved and not disturbed.
    ///
    /// ```
    /// # use eventfold_runtime::Runtime;
    /// # use eventfold_runtime::domain::{Aggregate, DomainEvent};
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// # struct Counter { value: u64 }
    /// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    /// # struct Added(u64);
    /// # impl DomainEvent for Added {
    /// #     fn event_type(&self) -> &'static str { "Added" }
    /// # }
    /// # #[derive(Debug, Clone, thiserror::Error)]
    /// # #[error("never")]
    /// # struct Never;
    /// # impl Aggregate for Counter {
    /// #     const KIND: &'static str = "counter";
    /// #     type Command = u64;
    /// #     type Event = Added;
    /// #     type Error = Never;
    /// #     fn handle(&self, n: u64) -> Result<Vec<Added>, Never> { Ok(vec![Added(n)]) }
    /// #     fn apply(&mut self, e: &Added) { self.value += e.0; }
    /// # }
    /// let runtime = Runtime::builder().in_memory().aggregate::<Counter>().start()?;
    /// for n in [5, 7, 9] {
    ///     runtime.execute_blocking::<Counter>("c", n)?;
    /// }
    /// let then = futures::executor::block_on(runtime.state_at::<Counter>("c", 2))?;
    /// assert_eq!((then.state.value, then.version), (12, 2));
    /// assert_eq!(runtime.state_at_blocking::<Counter>("c", 99)?.version, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn state_at<A: Aggregate>(
        &self,
        id: &str,
        version: u64,
    ) -> Result<StateAt<A>, StateAtError> {
        self.replay::<A>(id, Until::Version(version)).await
    }

    /// The state aggregate `id` had at `moment`: every event recorded at or
    /// before it, as [`RuntimeHandle::state_at`] does.
    pub async fn state_at_time<A: Aggregate>(
        &self,
        id: &str,
        moment: Timestamp,
    ) -> Result<StateAt<A>, StateAtError> {
        self.replay::<A>(id, Until::Time(moment)).await
    }

    /// [`RuntimeHandle::state_at`] for plain threads (it blocks).
    pub fn state_at_blocking<A: Aggregate>(
        &self,
        id: &str,
        version: u64,
    ) -> Result<StateAt<A>, StateAtError> {
        self.replay_blocking::<A>(id, Until::Version(version))
    }

    /// [`RuntimeHandle::state_at_time`] for plain threads (it blocks).
    pub fn state_at_time_blocking<A: Aggregate>(
        &self,
        id: &str,
        moment: Timestamp,
    ) -> Result<StateAt<A>, StateAtError> {
        self.replay_blocking::<A>(id, Until::Time(moment))
    }

    async fn replay<A: Aggregate>(
        &self,
        id: &str,
        until: Until,
    ) -> Result<StateAt<A>, StateAtError> {
        let Ok(tokio) = tokio::runtime::Handle::try_current() else {
            return self.replay_blocking::<A>(id, until);
        };
        let stream = StreamId::for_aggregate(A::KIND, id).map_err(StateAtError::InvalidId)?;
        let shared = Arc::clone(self.inner.router.shared_arc());
        let task = tokio.spawn_blocking(move || {
            let read = || history::state_at::<A>(&*shared.store, &shared.upcasters, &stream, until);
            shared.keys.scope(read)
        });
        match task.await {
            Ok(result) => Ok(result?),
            Err(error) => Err(LoadError::Task(error.to_string()).into()),
        }
    }

    fn replay_blocking<A: Aggregate>(
        &self,
        id: &str,
        until: Until,
    ) -> Result<StateAt<A>, StateAtError> {
        let stream = StreamId::for_aggregate(A::KIND, id).map_err(StateAtError::InvalidId)?;
        let shared = self.inner.router.shared_arc();
        let read = || history::state_at::<A>(&*shared.store, &shared.upcasters, &stream, until);
        Ok(shared.keys.scope(read)?)
    }

    /// Truncates, soft-deletes or tombstones aggregate `id`'s stream (see
    /// [`eventfold_storage::lifecycle`]).
    ///
    /// - `TruncateBefore(n)`: events before `n` are removed; the aggregate
    ///   keeps its state (a snapshot at `n - 1` or later is written first
    ///   when the stored one is older, so it still loads), its version
    ///   is unchanged.
    /// - `Delete`: every event is removed and the aggregate starts afresh
    ///   from its default state; its version goes on from where it was.
    /// - `Tombstone`: as `Delete`, and every later command fails with
    ///   `CommandError::Store(AppendError::StreamDeleted)`.
    ///
    /// A delete or tombstone stops the aggregate's actor first (what it has
    /// in flight lands) and holds the aggregate's commands until the
    /// deletion is durable. Deleting again is a no-op (`changed` false).
    /// Projections learn of each through [`Projection::deleted`](crate::Projection::deleted).
    pub async fn delete_aggregate<A: Aggregate>(
        &self,
        id: &str,
        deletion: Deletion,
    ) -> Result<DeletionOutcome, DeleteError> {
        let outcome = match deletion {
            Deletion::TruncateBefore(before) => {
                let stream = self.inner.router.deletion_stream::<A>(id)?;
                let shared = Arc::clone(self.inner.router.shared_arc());
                let prepare = move || {
                    let snapshot = || {
                        history::snapshot_before_truncation::<A>(
                            &*shared.store,
                            &shared.upcasters,
                            &stream,
                            before,
                        )
                    };
                    shared.keys.scope(snapshot).map(|()| (shared, stream))
                };
                let (shared, stream) = match tokio::runtime::Handle::try_current() {
                    Ok(tokio) => tokio
                        .spawn_blocking(prepare)
                        .await
                        .map_err(|e| DeleteError::Replay(LoadError::Task(e.to_string())))??,
                    Err(_) => prepare()?,
                };
                let request = DeleteRequest::truncate_before(stream, before);
                shared.store.submit_deletion(request).await?
            }
            Deletion::Delete | Deletion::Tombstone => {
                let receiver = self.inner.router.delete::<A>(id, deletion)?;
                receiver.await.map_err(|_| DeleteError::ShutDown)??
            }
        };
        DeletionOutcome::of(&outcome).ok_or(DeleteError::Store(AppendError::NoStreams))
    }

    /// [`RuntimeHandle::delete_aggregate`] for plain threads (it blocks).
    pub fn delete_aggregate_blocking<A: Aggregate>(
        &self,
        id: &str,
        deletion: Deletion,
    ) -> Result<DeletionOutcome, DeleteError> {
        futures::executor::block_on(self.delete_aggregate::<A>(id, deletion))
    }

    /// The upcasters the runtime reads events through, for a reader of the
    /// store of its own (see [`crate::evolution`]).
    pub fn upcasters(&self) -> &crate::evolution::Upcasters {
        &self.inner.router.shared().upcasters
    }

    /// The event store, for reads.
    pub fn store(&self) -> &dyn EventStore {
        &*self.inner.router.shared().store
    }

    /// Receives every batch of durable events from now on, in position
    /// order, upcast to their current shapes. See [`crate::bus`] for what
    /// happens to a subscriber that falls behind.
    pub fn subscribe(&self) -> BusReceiver {
        let upcasters = Arc::clone(&self.inner.router.shared().upcasters);
        BusReceiver::new(self.inner.bus.subscribe(), upcasters)
    }

    /// The read model of a projection, at its active version.
    pub fn query(&self, projection: &str) -> Result<ReadModelView, ProjectionError> {
        let model = self.inner.registry.active_model(projection)?;
        Ok(ReadModelView {
            store: Arc::clone(&self.inner.router.shared().store),
            keys: Arc::clone(&self.inner.router.shared().keys),
            model,
        })
    }

    /// Waits until `projection` has committed every event up to `position`
    /// (such as [`CommandOutcome::position`]): read-your-writes.
    pub async fn wait_for(
        &self,
        projection: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        self.inner
            .registry
            .wait_for(projection, position, timeout)
            .await
    }

    /// [`RuntimeHandle::wait_for`] for plain threads.
    pub fn wait_for_blocking(
        &self,
        projection: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        futures::executor::block_on(self.wait_for(projection, position, timeout))
    }

    /// The status of each consumer of a projection or handler: every
    /// partition, and a rebuild while it runs.
    pub fn projection_status(&self, name: &str) -> Result<Vec<ConsumerStatus>, ProjectionError> {
        self.inner.registry.status(name)
    }

    /// The events parked by a projection or handler, in position order.
    pub fn parked_events(&self, name: &str) -> Result<Vec<ParkedEvent>, ProjectionError> {
        self.inner.registry.parked(name)
    }

    /// Retries a parked event (then the events of its stream held behind
    /// it); blocks until the consumer has tried. Do not call it from an
    /// async task.
    pub fn retry_parked(&self, name: &str, position: u64) -> Result<(), ProjectionError> {
        self.inner.registry.resolve_parked(name, position, false)
    }

    /// Drops a parked event without handling it, then retries the events of
    /// its stream held behind it. Blocks like [`RuntimeHandle::retry_parked`].
    pub fn skip_parked(&self, name: &str, position: u64) -> Result<(), ProjectionError> {
        self.inner.registry.resolve_parked(name, position, true)
    }

    /// Rebuilds a projection: a new version of its read model is built from
    /// position 0 while queries keep reading the current one, and becomes the
    /// active version atomically once it has caught up. Returns the new
    /// version; [`RuntimeHandle::projection_status`] shows its progress.
    pub fn rebuild(&self, name: &str) -> Result<u32, ProjectionError> {
        self.inner.registry.rebuild(name)
    }

    /// Aggregate actors resident now, over all shards.
    pub fn resident_actors(&self) -> u64 {
        self.inner
            .router
            .shared()
            .resident
            .load(Ordering::Relaxed)
            .max(0) as u64
    }

    /// Aggregate actors activated (started, loading their state from the
    /// store or the state cache) since the runtime started, over all shards.
    pub fn activations_total(&self) -> u64 {
        self.inner
            .router
            .shared()
            .activations
            .load(Ordering::Relaxed)
    }

    /// Activations that started from the state cache (the state of stopped
    /// aggregates kept in memory, [`Passivation::state_cache_bytes_max`])
    /// instead of reading the store, since the runtime started.
    ///
    /// [`Passivation::state_cache_bytes_max`]: crate::Passivation::state_cache_bytes_max
    pub fn state_cache_hits_total(&self) -> u64 {
        self.inner
            .router
            .shared()
            .state_cache_hits
            .load(Ordering::Relaxed)
    }

    /// Stops taking commands (later calls fail with `ShutDown`), lets every
    /// aggregate finish the commands it has taken and its appends become
    /// durable, lets projections commit what they have handled, closes the
    /// store's writer and stops the actor threads. Commands acknowledged
    /// before are never lost. The store's files are released when the last
    /// handle is dropped; reads through [`RuntimeHandle::store`] work until then.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        let (done, finished) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        // Joining threads blocks; do it off the caller's executor.
        std::thread::spawn(move || {
            let _ = done.send(shutdown_now(&inner));
        });
        finished.await.unwrap_or(Err(ShutdownError::SystemPanicked))
    }

    /// [`RuntimeHandle::shutdown`] for plain threads.
    pub fn shutdown_blocking(&self) -> Result<(), ShutdownError> {
        shutdown_now(&self.inner)
    }
}

fn shutdown_now(inner: &Inner) -> Result<(), ShutdownError> {
    if inner.router.stop_accepting() {
        inner.router.drain_blocking();
    }
    inner.stop_system()
}
