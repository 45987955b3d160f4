//! Catch-up reads of the store, and reading ahead on a thread of their own.
//!
//! A subscription far behind the head spends about half its time reading
//! and decoding (RocksDB's iterator, the record's checks, upcasting) and
//! half handling (a projection's writes and commits). A subscriber that
//! asks for it ([`Subscription::read_ahead`](super::subscription::Subscription))
//! has the next chunks read on a thread of its own while it handles the
//! current one: at most [`READ_AHEAD_CHUNKS_MAX`] chunks wait, and the
//! thread ends at the head, at the first error, or when the subscription
//! drops it.
//!
//! The subscriber hands the events of a chunk it is done with back to the
//! thread that read them (at most [`READ_AHEAD_SPENT_MAX`] waiting), which
//! frees them: memory freed by the thread that allocated it costs the
//! allocator no cross-thread hand-off.
//!
//! **Architecture Invariant:** a chunk read ahead is handed out only when it
//! starts exactly where the subscription's `next` stands; otherwise the
//! read-ahead is dropped and the store read directly, so positions still go
//! out in order, each once.

use super::chunk::{Chunk, SubscriptionError};
use super::interest::Interest;
use crate::evolution::Upcasters;
use eventfold_domain::RecordedEvent;
use eventfold_storage::{EventStore, Filter};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Chunks read ahead and not yet taken, per reading-ahead subscription.
pub(crate) const READ_AHEAD_CHUNKS_MAX: usize = 2;
/// Handled chunks' events waiting to be freed by the reading thread; past
/// it the subscriber frees them itself.
pub(crate) const READ_AHEAD_SPENT_MAX: usize = 2;

/// What a catch-up read needs: the store, what to ask it for, and how to
/// upcast and filter what it answers.
pub(crate) struct StoreReader {
    pub store: Arc<dyn EventStore>,
    pub interest: Arc<Interest>,
    /// The interest's filter widened to the stored types the upcasters
    /// take (and to deletions).
    pub store_filter: Filter,
    /// No upcasting step widened the store's filter: events read from the
    /// store need no second look, but for deletions.
    pub store_matched: bool,
    pub upcasters: Arc<Upcasters>,
}

impl StoreReader {
    /// One read of at most `max` events from position `from`, upcast and
    /// filtered.
    pub(crate) fn read(&self, from: u64, max: usize) -> Result<Chunk, SubscriptionError> {
        let slice = self.store.read_all(from, max.max(1), &self.store_filter)?;
        let reached_head = slice.next_position > slice.head;
        let mut events = self.upcasters.upcast_all(slice.events)?;
        if self.store_matched {
            if !self.interest.takes_all() {
                events.retain(|e| self.interest.wants_stored(e));
            }
        } else {
            events.retain(|e| self.interest.wants(e));
        }
        Ok(Chunk::stored(
            events,
            from,
            slice.next_position.max(from),
            reached_head,
        ))
    }
}

/// Chunks being read on a thread of their own, from `next` on.
pub(crate) struct ReadAhead {
    chunks: Receiver<Result<Chunk, SubscriptionError>>,
    /// Where the next chunk from the thread starts.
    next: u64,
    /// Events handled, back to the thread that read them.
    spent: SyncSender<Vec<RecordedEvent>>,
}

impl ReadAhead {
    /// Starts reading chunks of at most `max` events from `from`; `None`
    /// when no thread could be started (the caller reads directly).
    pub(crate) fn start(reader: Arc<StoreReader>, from: u64, max: usize) -> Option<Self> {
        let (sender, chunks) = sync_channel(READ_AHEAD_CHUNKS_MAX);
        let (spent, handled) = sync_channel(READ_AHEAD_SPENT_MAX);
        // Personal values decode under the keys of the subscriber's thread.
        let keys = crate::personal::installed();
        let started = std::thread::Builder::new()
            .name("eventfold-read-ahead".into())
            .spawn(move || {
                if let Some(keys) = keys {
                    crate::personal::install(&keys);
                }
                read_on(&reader, from, max, &sender, &handled);
            });
        match started {
            Ok(_) => Some(Self {
                chunks,
                next: from,
                spent,
            }),
            Err(error) => {
                tracing::debug!(%error, "no read-ahead thread; reading directly");
                None
            }
        }
    }

    /// The next chunk if it starts at `next` (waiting for the thread to read
    /// it); `None` when it would not, or the thread has ended: the caller
    /// drops this read-ahead and reads directly.
    pub(crate) fn take(&mut self, next: u64) -> Option<Result<Chunk, SubscriptionError>> {
        if next != self.next {
            return None;
        }
        let chunk = self.chunks.recv().ok()?;
        if let Ok(chunk) = &chunk {
            self.next = chunk.end();
        }
        Some(chunk)
    }

    /// Hands events the subscriber is done with to the reading thread to
    /// free; when it has enough waiting, or has ended, they are freed here.
    pub(crate) fn give_back(&self, events: Vec<RecordedEvent>) {
        let _ = self.spent.try_send(events);
    }
}

/// The read-ahead thread: reads chunk after chunk until one reaches the
/// head, a read fails, or the subscription dropped its end.
fn read_on(
    reader: &StoreReader,
    mut from: u64,
    max: usize,
    sender: &SyncSender<Result<Chunk, SubscriptionError>>,
    handled: &Receiver<Vec<RecordedEvent>>,
) {
    loop {
        // Frees what the subscriber handed back.
        while handled.try_recv().is_ok() {}
        let chunk = reader.read(from, max);
        let go_on = match &chunk {
            Ok(chunk) if !chunk.reached_head() && chunk.end() > from => {
                from = chunk.end();
                true
            }
            _ => false,
        };
        if sender.send(chunk).is_err() || !go_on {
            return;
        }
    }
}
