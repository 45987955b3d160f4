//! The embedding handle: a thin facade over the three parts of the
//! runtime. Commands go to the [router](crate::command::router), reads of
//! projections to the [registry](crate::read::registry), process-manager
//! administration to the [hosts](crate::process::host). This file holds
//! commands, the runtime's lifecycle and its counters; `admin.rs` the read
//! side and process managers (queries, waits, subscriptions, status,
//! parked events, stuck instances); `data.rs` an aggregate's data over
//! time (past states, deletions, forgetting).

mod admin;
mod data;

pub use admin::BackupError;

use crate::command::outcome::{CommandOutcome, ExecuteOptions};
use crate::command::router::{Router, answer};
use crate::command::system::SystemThread;
use crate::error::{CommandError, ShutdownError, SpawnError};
use crate::process::supervisor::Processes;
use crate::read::bus::EventBus;
use crate::read::registry::Registry;
use eventfold_domain::Aggregate;
use eventfold_storage::{EventStore, RocksStore};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a running runtime holds; dropped with the last handle.
pub(crate) struct Inner {
    pub router: Arc<Router>,
    pub bus: EventBus,
    pub system: Mutex<Option<SystemThread>>,
    /// Set when the store is RocksDB (or a store given to the builder has
    /// one behind it).
    pub rocks: Option<RocksStore>,
    /// Whether the runtime opened the store, and so closes it at shutdown
    /// (a store given to the builder is its maker's to close).
    pub owns_store: bool,
    /// Projections and event handlers.
    pub registry: Arc<Registry>,
    /// Process managers.
    pub processes: Processes,
    /// Durable subscriptions held open.
    pub durable: Arc<crate::read::durable::DurableClaims>,
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
        if let Some(store) = self.rocks.as_ref().filter(|_| self.owns_store) {
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
        let stop = || {
            if self.stop_system().is_err() {
                tracing::error!("the actor system thread panicked");
            }
        };
        // Stopping joins threads. Dropped inside a task of a multi-threaded
        // tokio runtime (the last handle going out of scope in a handler),
        // the worker hands its other tasks on while it waits. (Not on a
        // thread of its own: a process that exits meanwhile would tear
        // RocksDB down under it.)
        match tokio::runtime::Handle::try_current() {
            Ok(runtime)
                if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(stop)
            }
            _ => stop(),
        }
    }
}

/// The handle to a running eventfold runtime: `Send + Sync + Clone`, usable
/// from any thread and any async executor. Dropping the last one stops the
/// runtime, which joins its threads: inside a multi-threaded tokio runtime
/// the worker hands its other tasks on meanwhile; on a current-thread one,
/// `shutdown().await` first.
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
    pub(crate) inner: Arc<Inner>,
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

    /// The runtime's subjects' keys: decode events of your own reads of
    /// the store inside [`SubjectKeys::scope`](crate::personal::SubjectKeys::scope)
    /// for their personal values to open.
    pub fn subject_keys(&self) -> &Arc<crate::personal::SubjectKeys> {
        &self.inner.router.shared_arc().keys
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
        let (reply, timeout, ..) = self.inner.router.dispatch::<A>(id, command, options)?;
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

    /// The upcasters the runtime reads events through, for a reader of the
    /// store of its own (see [`crate::evolution`]).
    pub fn upcasters(&self) -> &crate::evolution::Upcasters {
        &self.inner.router.shared().upcasters
    }

    /// The event store, for reads.
    pub fn store(&self) -> &dyn EventStore {
        &*self.inner.router.shared().store
    }

    /// The RocksDB store, when the runtime runs on one: what
    /// [`crate::inspect`] and the store's own listings
    /// ([`RocksStore::list_streams`]) read. `None` on another backend.
    pub fn rocks_store(&self) -> Option<&RocksStore> {
        self.inner.rocks.as_ref()
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

    /// Commands waiting in the shards' mailboxes now (sent, not yet taken
    /// by their shard), over all shards.
    pub fn mailbox_depth(&self) -> u64 {
        let queued = &self.inner.router.shared().queued;
        queued
            .iter()
            .map(|q| q.load(Ordering::Relaxed).max(0) as u64)
            .sum()
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

    /// Stops the aggregate actors of every stream `matches` says and
    /// forgets their cached states, so that the next command for one of
    /// them loads it from the store afresh; returns once they have
    /// stopped. For a store whose streams can be written elsewhere (a
    /// cluster node that loses or gains a partition). Commands for those
    /// streams that arrive meanwhile wait, then run on a fresh actor.
    pub async fn release_streams(
        &self,
        matches: impl Fn(&eventfold_domain::StreamId) -> bool + Send + Sync + 'static,
    ) {
        self.inner.router.release(Arc::new(matches)).await;
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
        // Joining threads blocks; do it off the caller's executor. The
        // thread lets go of its handle before it answers: were it still
        // holding it, and the last, once the caller has returned and its
        // process exits, the store would close on this thread while the
        // process's static destructors run (RocksDB aborts: "pthread lock:
        // Invalid argument"; seen in CI at bank-service's exit).
        std::thread::spawn(move || {
            let result = shutdown_now(&inner);
            drop(inner);
            let _ = done.send(result);
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
