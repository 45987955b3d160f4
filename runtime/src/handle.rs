//! The embedding handle.

use crate::bus::{EventBatch, EventBus};
use crate::error::{CommandError, ProcessError, ProjectionError, ShutdownError, SpawnError};
use crate::metric_names::{REJECTIONS_TOTAL, WRITE_BATCH_EVENTS};
use crate::outcome::{CommandOutcome, ExecuteOptions};
use crate::process::{InstanceView, ProcessStatus, StuckInstance};
use crate::projection::{ConsumerState, ConsumerStatus, ParkedEvent, ReadModelView};
use crate::shard::{CommandResult, Drain, Execute, Shard, Shared};
use actix::dev::SendError;
use actix::prelude::*;
use eventfold_domain::{Aggregate, StreamId};
use eventfold_storage::payload;
use eventfold_storage::{EventStore, RocksStore};
use std::collections::HashSet;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running actor system: stopped at shutdown or when the last handle drops.
pub(crate) struct SystemThread {
    pub system: actix_rt::System,
    pub thread: JoinHandle<()>,
}

pub(crate) struct Inner {
    pub shards: Vec<Addr<Shard>>,
    pub shared: Arc<Shared>,
    pub kinds: HashSet<&'static str>,
    pub bus: EventBus,
    pub accepting: AtomicBool,
    pub system: Mutex<Option<SystemThread>>,
    /// Set when the store is RocksDB, to close it at shutdown.
    pub rocks: Option<RocksStore>,
    /// Projections and event handlers.
    pub registry: Arc<crate::registry::Registry>,
    /// Process managers, set once right after the handle exists.
    pub processes: std::sync::OnceLock<crate::process_host::Processes>,
    /// The temporary directory of an embedded default store, removed last.
    pub _temp: Option<tempfile::TempDir>,
}

impl Inner {
    fn stop_system(&self) -> Result<(), ShutdownError> {
        // Process managers and consumers commit what they have handled
        // before the store closes.
        if let Some(processes) = self.processes.get() {
            processes.stop_all();
        }
        self.registry.stop_all();
        let running = self.system.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(running) = running {
            running.system.stop();
            running
                .thread
                .join()
                .map_err(|_| ShutdownError::SystemPanicked)?;
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
        self.accepting.store(false, Ordering::SeqCst);
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

/// Where a dispatched command's answer comes, how long to wait for it, and
/// until when (its timeout from when it was received).
type Dispatched<A> = (oneshot::Receiver<CommandResult<A>>, Duration, Instant);

/// Waits for a routed command's answer, or its timeout.
async fn answer<A: Aggregate>((reply, timeout, deadline): Dispatched<A>) -> CommandResult<A> {
    match crate::timeout::Deadline::until(reply, deadline).await {
        Some(Ok(result)) => result,
        Some(Err(_)) => Err(CommandError::ShutDown),
        None => Err(CommandError::Timeout(timeout)),
    }
}

impl RuntimeHandle {
    pub(crate) fn new(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn set_processes(&self, processes: crate::process_host::Processes) {
        if self.inner.processes.set(processes).is_err() {
            tracing::error!("process managers were started twice");
        }
    }

    fn process(&self, name: &str) -> Result<&crate::process_host::RunningProcess, ProcessError> {
        match self.inner.processes.get() {
            Some(processes) => processes.get(name),
            None => Err(ProcessError::Unknown(name.to_owned())),
        }
    }

    /// A process manager's status: checkpoint, head, instances in memory,
    /// outbox, timers, stuck instances.
    pub fn process_status(&self, name: &str) -> Result<ProcessStatus, ProcessError> {
        let process = self.process(name)?;
        let shared = &process.shared;
        Ok(ProcessStatus {
            name: name.to_owned(),
            state: shared.state(),
            checkpoint: shared.checkpoint.load(Ordering::Relaxed),
            head: self.inner.shared.store.head(),
            resident: shared.resident.load(Ordering::Relaxed),
            outbox: shared.outbox.load(Ordering::Relaxed),
            timers: shared.timers.load(Ordering::Relaxed),
            stuck: shared.stuck.load(Ordering::Relaxed),
            steps: shared.steps.load(Ordering::Relaxed),
            unroutable: shared.unroutable.load(Ordering::Relaxed),
        })
    }

    /// The instances of a process manager parked as stuck, with their last
    /// error (at most [`STUCK_LIST_MAX`](crate::process) of them).
    pub fn stuck_instances(&self, name: &str) -> Result<Vec<StuckInstance>, ProcessError> {
        let process = self.process(name)?;
        let store = &self.inner.shared.store;
        let entries = store
            .read_model_scan(&process.model, b"s", crate::process_host::STUCK_LIST_MAX)
            .map_err(|e| ProcessError::Store(e.to_string()))?;
        let mut stuck = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let id = String::from_utf8_lossy(&key[1..]).into_owned();
            let record: crate::process_host::StuckRecord =
                payload::decode(&value).map_err(|e| {
                    ProcessError::Store(format!(
                        "stuck record of {id:?} in {} is corrupt: {e}",
                        process.model
                    ))
                })?;
            let held = self
                .read_instance(&process.model, &id)?
                .map_or(0, |r| r.held.len());
            stuck.push(StuckInstance {
                id,
                error: record.error,
                attempts: record.attempts,
                input: record.input.to_string(),
                since: eventfold_domain::Timestamp::from_micros(record.since),
                held_events: held,
            });
        }
        Ok(stuck)
    }

    fn read_instance(
        &self,
        model: &str,
        id: &str,
    ) -> Result<Option<crate::process_host::InstanceRecord>, ProcessError> {
        let bytes = self
            .inner
            .shared
            .store
            .read_model_get(model, &crate::process_host::instance_key(id))
            .map_err(|e| ProcessError::Store(e.to_string()))?;
        bytes
            .map(|bytes| {
                payload::decode(&bytes).map_err(|e| {
                    ProcessError::Store(format!("instance {id:?} in {model} is corrupt: {e}"))
                })
            })
            .transpose()
    }

    /// An instance of process manager `name` as last committed, with its
    /// state decoded as `S` (the process manager's `State`).
    pub fn process_instance<S: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
        id: &str,
    ) -> Result<Option<InstanceView<S>>, ProcessError> {
        let process = self.process(name)?;
        let Some(record) = self.read_instance(&process.model, id)? else {
            return Ok(None);
        };
        let status = record.status();
        let state = if record.state.is_empty() {
            S::default()
        } else {
            payload::decode(&record.state).map_err(|e| {
                ProcessError::Store(format!(
                    "the state of instance {id:?} in {} is unreadable: {e}",
                    process.model
                ))
            })?
        };
        let outbox = self
            .inner
            .shared
            .store
            .read_model_scan(
                &process.model,
                &crate::process_host::outbox_prefix(id),
                usize::try_from(record.next_seq).unwrap_or(usize::MAX),
            )
            .map_err(|e| ProcessError::Store(e.to_string()))?
            .len();
        Ok(Some(InstanceView {
            id: id.to_owned(),
            status,
            state,
            timers: record
                .timers
                .into_iter()
                .map(|(name, due)| (name, eventfold_domain::Timestamp::from_micros(due)))
                .collect(),
            outbox,
        }))
    }

    /// Resumes a stuck instance: the input it failed on is handled again,
    /// then the events held for it, in order; its unanswered commands are
    /// sent again (same command ids). Blocks until the process manager has
    /// tried; do not call it from an async task.
    pub fn resume_instance(&self, name: &str, id: &str) -> Result<(), ProcessError> {
        self.ask_process(name, |reply| {
            crate::process_host::ProcessControl::Resume(id.to_owned(), reply)
        })
    }

    /// Cancels an instance (stuck or not): it is finished without further
    /// steps, its timers and unanswered commands are dropped. Commands
    /// already delivered are not undone. Blocks like
    /// [`RuntimeHandle::resume_instance`].
    pub fn cancel_instance(&self, name: &str, id: &str) -> Result<(), ProcessError> {
        self.ask_process(name, |reply| {
            crate::process_host::ProcessControl::Cancel(id.to_owned(), reply)
        })
    }

    fn ask_process(
        &self,
        name: &str,
        message: impl FnOnce(oneshot::Sender<Result<(), String>>) -> crate::process_host::ProcessControl,
    ) -> Result<(), ProcessError> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(ProcessError::ShutDown);
        }
        let process = self.process(name)?;
        let (reply, answer) = oneshot::channel();
        process.control.try_send(message(reply)).map_err(|_| {
            ProcessError::Refused(format!("the mailbox of {name} is full or closed"))
        })?;
        match answer.recv_timeout(PROCESS_CONTROL_TIMEOUT) {
            Ok(result) => result.map_err(ProcessError::Refused),
            Err(oneshot::RecvTimeoutError::Timeout) => {
                Err(ProcessError::Timeout(PROCESS_CONTROL_TIMEOUT))
            }
            Err(oneshot::RecvTimeoutError::Disconnected) => Err(ProcessError::ShutDown),
        }
    }

    /// A weak reference, for the runtime's own threads (process managers),
    /// which must not keep the runtime alive.
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Routes a command now and returns a future of its answer that holds no
    /// reference to the runtime (see [`RuntimeHandle::downgrade`]).
    pub(crate) fn submit<A: Aggregate>(
        weak: &std::sync::Weak<Inner>,
        id: &str,
        command: A::Command,
        options: ExecuteOptions,
    ) -> impl Future<Output = CommandResult<A>> + Send + 'static + use<A> {
        let routed = match weak.upgrade() {
            Some(inner) => Self { inner }.dispatch::<A>(id, command, options),
            None => Err(CommandError::ShutDown),
        };
        async move { answer::<A>(routed?).await }
    }

    /// Routes a command to its shard; returns where its answer will come.
    fn dispatch<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        options: ExecuteOptions,
    ) -> Result<Dispatched<A>, CommandError<A::Error>> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            metrics::counter!(REJECTIONS_TOTAL, "reason" => "shut_down").increment(1);
            return Err(CommandError::ShutDown);
        }
        if !self.inner.kinds.contains(A::KIND) {
            return Err(CommandError::NotRegistered(A::KIND));
        }
        let stream = StreamId::for_aggregate(A::KIND, id).map_err(CommandError::InvalidId)?;
        let timeout = options
            .timeout
            .unwrap_or(self.inner.shared.settings.command_timeout);
        let received = Instant::now();
        let deadline = crate::timeout::deadline(received, timeout);
        let (reply, receiver) = oneshot::channel();
        let shard = &self.inner.shards[shard_of(&stream, self.inner.shards.len())];
        let message = Execute::<A> {
            stream,
            command,
            options,
            deadline,
            received,
            reply,
        };
        match shard.try_send(message) {
            Ok(()) => Ok((receiver, timeout, deadline)),
            Err(SendError::Full(_)) => {
                metrics::counter!(REJECTIONS_TOTAL, "reason" => "overloaded").increment(1);
                Err(CommandError::Overloaded("shard mailbox is full"))
            }
            Err(SendError::Closed(_)) => Err(CommandError::ShutDown),
        }
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
        answer::<A>(self.dispatch::<A>(id, command, options)?).await
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
        let (reply, timeout, _) = self.dispatch::<A>(id, command, options)?;
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
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(SpawnError::ShutDown);
        }
        let address = &self.inner.shards[shard % self.inner.shards.len()];
        let message = crate::shard::Spawn(Box::new(move || Box::pin(task())));
        match address.try_send(message) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => Err(SpawnError::Overloaded),
            Err(SendError::Closed(_)) => Err(SpawnError::ShutDown),
        }
    }

    /// The number of shards (threads hosting aggregate actors).
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// The event store, for reads.
    pub fn store(&self) -> &dyn EventStore {
        &*self.inner.shared.store
    }

    /// Receives every batch of durable events from now on, in position order.
    /// See [`crate::bus`] for what happens to a subscriber that falls behind.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<EventBatch> {
        self.inner.bus.subscribe()
    }

    /// The read model of a projection, at its active version.
    pub fn query(&self, projection: &str) -> Result<ReadModelView, ProjectionError> {
        let model = self.inner.registry.active_model(projection)?;
        Ok(ReadModelView {
            store: Arc::clone(&self.inner.shared.store),
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
        let (_, consumers) = self.inner.registry.consumers(projection)?;
        let deadline = crate::timeout::deadline(Instant::now(), timeout);
        for consumer in consumers {
            let mut processed = consumer.processed.subscribe();
            loop {
                if *processed.borrow_and_update() >= position {
                    break;
                }
                if let ConsumerState::Stopped(reason) = consumer.state() {
                    return Err(ProjectionError::Stopped(reason));
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(ProjectionError::Timeout { position, timeout });
                }
                // Re-checks the state at least every 50 ms.
                crate::timeout::Deadline::after(
                    Box::pin(processed.changed()),
                    remaining.min(Duration::from_millis(50)),
                )
                .await;
            }
        }
        Ok(())
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
        self.inner.shared.resident.load(Ordering::Relaxed).max(0) as u64
    }

    /// Aggregate actors activated (started, loading their state from the
    /// store or the state cache) since the runtime started, over all shards.
    pub fn activations_total(&self) -> u64 {
        self.inner.shared.activations.load(Ordering::Relaxed)
    }

    /// Activations that started from the state cache (the state of stopped
    /// aggregates kept in memory, [`Passivation::state_cache_bytes_max`])
    /// instead of reading the store, since the runtime started.
    ///
    /// [`Passivation::state_cache_bytes_max`]: crate::Passivation::state_cache_bytes_max
    pub fn state_cache_hits_total(&self) -> u64 {
        self.inner.shared.state_cache_hits.load(Ordering::Relaxed)
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
    if inner.accepting.swap(false, Ordering::SeqCst) {
        let waits: Vec<_> = inner
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
    inner.stop_system()
}

/// The shard of a stream: a hash of its id.
pub(crate) fn shard_of(stream: &StreamId, shards: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    stream.as_str().hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

/// Samples the writer's batch size once a second into a histogram.
pub(crate) struct Monitor {
    pub store: Arc<dyn EventStore>,
    pub last: eventfold_storage::WriterStats,
}

impl Actor for Monitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |monitor, _| {
            let now = monitor.store.writer_stats();
            let batches = now.batches - monitor.last.batches;
            if batches > 0 {
                let events = now.events - monitor.last.events;
                metrics::histogram!(WRITE_BATCH_EVENTS).record(events as f64 / batches as f64);
            }
            monitor.last = now;
        });
    }
}
