//! The read side and process managers, through the handle: queries and
//! read-your-writes waits, the bus, projection and process-manager status
//! and administration.

use super::{PROCESS_CONTROL_TIMEOUT, RuntimeHandle};
use crate::error::{ProcessError, ProjectionError};
use crate::process::control::{ControlReply, ProcessControl};
use crate::process::{InstanceView, ProcessStatus, StuckInstance};
use crate::read::bus::BusReceiver;
use crate::read::durable::{self, DurableError, DurableSubscription};
use crate::read::external::EventStream;
use crate::read::projection::{ConsumerStatus, ParkedEvent, ReadModelView};
use eventfold_storage::{Filter, ReadError, VerifyReport};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

impl RuntimeHandle {
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

    /// Resumes a stuck instance: the input it failed on is handled again,
    /// then the events held for it, in order; its unanswered commands are
    /// sent again (same command ids). Answers once the process manager has
    /// tried; waits on the blocking pool, not on an executor thread.
    pub async fn resume_instance(&self, name: &str, id: &str) -> Result<(), ProcessError> {
        let (name, id) = (name.to_owned(), id.to_owned());
        self.off_executor(
            move |h| h.resume_instance_blocking(&name, &id),
            ProcessError::ShutDown,
        )
        .await
    }

    /// [`RuntimeHandle::resume_instance`] for plain threads (it blocks).
    pub fn resume_instance_blocking(&self, name: &str, id: &str) -> Result<(), ProcessError> {
        self.ask_process(name, id, |reply| {
            ProcessControl::Resume(id.to_owned(), reply)
        })
    }

    /// Cancels an instance (stuck or not): it is finished without further
    /// steps, its timers and unanswered commands are dropped. Commands
    /// already delivered are not undone. Waits like
    /// [`RuntimeHandle::resume_instance`].
    pub async fn cancel_instance(&self, name: &str, id: &str) -> Result<(), ProcessError> {
        let (name, id) = (name.to_owned(), id.to_owned());
        self.off_executor(
            move |h| h.cancel_instance_blocking(&name, &id),
            ProcessError::ShutDown,
        )
        .await
    }

    /// [`RuntimeHandle::cancel_instance`] for plain threads (it blocks).
    pub fn cancel_instance_blocking(&self, name: &str, id: &str) -> Result<(), ProcessError> {
        self.ask_process(name, id, |reply| {
            ProcessControl::Cancel(id.to_owned(), reply)
        })
    }

    fn ask_process(
        &self,
        name: &str,
        id: &str,
        message: impl FnOnce(ControlReply) -> ProcessControl,
    ) -> Result<(), ProcessError> {
        if !self.inner.router.accepting() {
            return Err(ProcessError::ShutDown);
        }
        self.inner
            .processes
            .ask(name, id, message, PROCESS_CONTROL_TIMEOUT)
    }

    /// The events after position `after` (0: from the start) that match
    /// `filter`, in position order, upcast: caught up from the store, then
    /// live, each exactly once however slowly the stream is read (see
    /// [`crate::read::external`]).
    ///
    /// ```
    /// # use eventfold_runtime::Runtime;
    /// # use eventfold_runtime::domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
    /// # use eventfold_runtime::storage::{EventStore, Filter};
    /// use futures::StreamExt;
    ///
    /// let runtime = Runtime::builder().in_memory().start()?;
    /// let stream = StreamId::new("note-1")?;
    /// let note = || NewEvent::new("Noted", 1, vec![], Metadata::new());
    /// runtime.store().append(&stream, ExpectedVersion::Any, vec![note(), note()])?;
    /// let mut events = runtime.subscribe_from(1, Filter::categories(["note"]));
    /// let second = futures::executor::block_on(events.next()).ok_or("ended")??;
    /// assert_eq!(second.position, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe_from(&self, after: u64, filter: Filter) -> EventStream {
        let shared = self.inner.router.shared();
        EventStream::new(
            Arc::clone(&shared.store),
            &self.inner.bus,
            after,
            filter,
            Arc::clone(&shared.upcasters),
        )
    }

    /// Opens durable subscription `name`: the events matching `filter`
    /// after the position it last acknowledged (from the start the first
    /// time), caught up from the store then live, as
    /// [`RuntimeHandle::subscribe_from`]. At least once: events delivered
    /// but not yet [acknowledged](DurableSubscription::ack) come again
    /// after a restart; deduplicate by `position`. One consumer per name at
    /// a time ([`DurableError::InUse`](crate::DurableError::InUse)). The
    /// checkpoint is read on the blocking pool.
    ///
    /// ```
    /// use eventfold_runtime::Runtime;
    /// use eventfold_runtime::domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
    /// use eventfold_runtime::storage::{EventStore, Filter};
    /// use futures::StreamExt;
    ///
    /// let runtime = Runtime::builder().in_memory().start()?;
    /// let stream = StreamId::new("mail-1")?;
    /// let mail = || NewEvent::new("Queued", 1, vec![], Metadata::new());
    /// runtime.store().append(&stream, ExpectedVersion::Any, vec![mail(), mail()])?;
    /// futures::executor::block_on(async {
    ///     let mut mailer = runtime.subscribe_durable("mailer", Filter::all()).await?;
    ///     let first = mailer.next().await.ok_or("ended")??;
    ///     mailer.ack(first.position).await?;
    ///     drop(mailer);
    ///     // Opened again, it resumes after what was acknowledged.
    ///     let mut mailer = runtime.subscribe_durable("mailer", Filter::all()).await?;
    ///     assert_eq!(mailer.next().await.ok_or("ended")??.position, 2);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn subscribe_durable(
        &self,
        name: &str,
        filter: Filter,
    ) -> Result<DurableSubscription, DurableError> {
        let store = Arc::clone(&self.inner.router.shared().store);
        durable::open(&self.inner.durable, &store, name, |after| {
            self.subscribe_from(after, filter)
        })
        .await
    }

    /// Receives every batch of durable events from now on, in position
    /// order, upcast to their current shapes. Live only: a receiver that
    /// falls more than the bus's buffer behind is told
    /// [`BusError::Lagged`](crate::BusError::Lagged) and those batches are
    /// gone for it; [`RuntimeHandle::subscribe_from`] never loses one.
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
    /// it); answers once the consumer has tried, waiting on the blocking
    /// pool.
    pub async fn retry_parked(&self, name: &str, position: u64) -> Result<(), ProjectionError> {
        let name = name.to_owned();
        self.off_executor(
            move |h| h.retry_parked_blocking(&name, position),
            ProjectionError::ShutDown,
        )
        .await
    }

    /// [`RuntimeHandle::retry_parked`] for plain threads (it blocks).
    pub fn retry_parked_blocking(&self, name: &str, position: u64) -> Result<(), ProjectionError> {
        self.inner.registry.resolve_parked(name, position, false)
    }

    /// Drops a parked event without handling it, then retries the events of
    /// its stream held behind it. Waits like [`RuntimeHandle::retry_parked`].
    pub async fn skip_parked(&self, name: &str, position: u64) -> Result<(), ProjectionError> {
        let name = name.to_owned();
        self.off_executor(
            move |h| h.skip_parked_blocking(&name, position),
            ProjectionError::ShutDown,
        )
        .await
    }

    /// [`RuntimeHandle::skip_parked`] for plain threads (it blocks).
    pub fn skip_parked_blocking(&self, name: &str, position: u64) -> Result<(), ProjectionError> {
        self.inner.registry.resolve_parked(name, position, true)
    }

    /// Rebuilds a projection: a new version of its read model is built from
    /// position 0 while queries keep reading the current one, and becomes the
    /// active version atomically once it has caught up. Returns the new
    /// version; [`RuntimeHandle::projection_status`] shows its progress.
    /// Starting it reads the store, on the blocking pool.
    pub async fn rebuild(&self, name: &str) -> Result<u32, ProjectionError> {
        let name = name.to_owned();
        self.off_executor(
            move |h| h.rebuild_blocking(&name),
            ProjectionError::ShutDown,
        )
        .await
    }

    /// [`RuntimeHandle::rebuild`] for plain threads.
    pub fn rebuild_blocking(&self, name: &str) -> Result<u32, ProjectionError> {
        self.inner.registry.rebuild(name)
    }

    /// Walks the store (checksums, versions, positions, indexes; see
    /// [`EventStore::verify`](eventfold_storage::EventStore::verify)) while
    /// the runtime runs, on the blocking pool.
    pub async fn verify(&self) -> Result<VerifyReport, ReadError> {
        self.off_executor(|h| h.verify_blocking(), ReadError::Closed)
            .await
    }

    /// [`RuntimeHandle::verify`] for plain threads (it blocks).
    pub fn verify_blocking(&self) -> Result<VerifyReport, ReadError> {
        self.store().verify()
    }

    /// Backs the running store up into `dir` (RocksDB's backup engine:
    /// incremental, checksummed, verified), on the blocking pool; the new
    /// backup's id. Restore it with `RocksStore::restore`.
    pub async fn backup(&self, dir: impl Into<PathBuf>) -> Result<u32, BackupError> {
        let dir = dir.into();
        self.off_executor(move |h| h.backup_blocking(&dir), BackupError::ShutDown)
            .await
    }

    /// [`RuntimeHandle::backup`] for plain threads (it blocks).
    pub fn backup_blocking(&self, dir: impl AsRef<Path>) -> Result<u32, BackupError> {
        let store = self.inner.rocks.as_ref().ok_or(BackupError::InMemory)?;
        Ok(store.backup(dir)?)
    }

    /// Runs `call` (an administrative call that waits) on the tokio blocking
    /// pool of the calling runtime, so that no executor thread waits; on
    /// this thread outside one. `lost` answers a task that was lost.
    async fn off_executor<T, E>(
        &self,
        call: impl FnOnce(&RuntimeHandle) -> Result<T, E> + Send + 'static,
        lost: E,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let handle = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(move || call(&handle))
                .await
                .unwrap_or_else(|_| Err(lost)),
            Err(_) => call(&handle),
        }
    }
}

/// Why a backup of the running store was not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The runtime keeps its events in memory: there is nothing to back up.
    #[error("the runtime's store is in memory")]
    InMemory,
    /// The backup engine failed.
    #[error(transparent)]
    Store(#[from] eventfold_storage::OpenError),
    /// The runtime shut down meanwhile.
    #[error("the runtime shut down")]
    ShutDown,
}
