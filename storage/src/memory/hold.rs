//! Appends held for tests of what happens while appends are in flight.

use super::MemoryStore;
use crate::api::{AppendOutcome, AppendRequest};
use crate::error::AppendError;
use std::collections::VecDeque;
use std::sync::MutexGuard;

/// Appends submitted while [`MemoryStore::hold_appends`] is on, in order,
/// each with the sender of its outcome.
#[derive(Default)]
pub(super) struct Hold {
    pub(super) on: bool,
    pub(super) queue: VecDeque<(
        AppendRequest,
        oneshot::Sender<Result<AppendOutcome, AppendError>>,
    )>,
}

impl MemoryStore {
    /// Holds every append submitted from now on (queued in order, each
    /// still waiting for its outcome) until [`MemoryStore::release_appends`]
    /// or [`MemoryStore::resume_appends`]: for tests of what happens while
    /// appends are in flight. Past `queue_appends_max` held appends, an
    /// append fails with `Overloaded`, as a full writer queue does.
    ///
    /// ```
    /// use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
    /// use eventfold_storage::{AppendRequest, EventStore, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let stream = StreamId::new("account-1")?;
    /// let event = NewEvent::new("Opened", 1, vec![], Metadata::new());
    /// store.hold_appends();
    /// let pending =
    ///     store.submit(AppendRequest::single(stream.clone(), ExpectedVersion::NoStream, vec![event]));
    /// assert_eq!((store.held_appends(), store.stream_version(&stream)?), (1, 0));
    /// assert_eq!(store.release_appends(1), 1);
    /// assert_eq!(pending.wait()?.last_version(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hold_appends(&self) {
        self.lock_hold().on = true;
    }

    /// Applies the first `count` held appends, in order, and answers them;
    /// returns how many there were. Appends stay held.
    pub fn release_appends(&self, count: usize) -> usize {
        let mut hold = self.lock_hold();
        let count = count.min(hold.queue.len());
        for (request, reply) in hold.queue.drain(..count) {
            // A receiver that is gone no longer wants the outcome.
            let _ = reply.send(self.append_now(request));
        }
        count
    }

    /// Applies every held append, in order, and stops holding.
    pub fn resume_appends(&self) {
        let mut hold = self.lock_hold();
        hold.on = false;
        for (request, reply) in hold.queue.drain(..) {
            let _ = reply.send(self.append_now(request));
        }
    }

    /// How many appends are held.
    pub fn held_appends(&self) -> usize {
        self.lock_hold().queue.len()
    }

    pub(super) fn lock_hold(&self) -> MutexGuard<'_, Hold> {
        // Every change under this lock is a single push or drain: a panic
        // elsewhere cannot leave it half-done.
        self.hold.lock().unwrap_or_else(|p| p.into_inner())
    }
}
