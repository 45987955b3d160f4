//! An aggregate's data over time, through the handle: its state at a past
//! version or moment, deleting it, forgetting a data subject.

use super::RuntimeHandle;
use crate::command::history::{self, StateAt, Until};
use crate::error::{DeleteError, LoadError, StateAtError};
use eventfold_domain::{Aggregate, StreamId, Timestamp};
use eventfold_storage::{AppendError, DeleteRequest, Deletion, DeletionOutcome};
use std::sync::Arc;

impl RuntimeHandle {
    /// Forgets data subject `subject`: its key is destroyed for good, and
    /// every [`Personal`](crate::personal::Personal) value of it (in
    /// events, snapshots, read models, process managers) reads as shredded
    /// from now on; nothing personal can be stored for it again. True when
    /// it had a key (or had been forgotten) before. Blocking: a synced
    /// write, a flush of every keyspace and a compaction of the keys'.
    pub fn forget(&self, subject: &str) -> Result<bool, eventfold_storage::WriteError> {
        self.inner.router.shared().keys.forget(subject)
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
}
