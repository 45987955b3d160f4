//! Catch-up reads of the store, and reading ahead on a thread of their own.
//!
//! A subscription far behind the head spends its time reading (RocksDB's
//! iterator), decoding (the record's checks, its allocations, upcasting)
//! and handling (a projection's writes and commits). A subscriber that asks
//! for it ([`Subscription::read_ahead`](super::subscription::Subscription))
//! has the next chunks read on a thread of their own while it handles the
//! current one: at most [`READ_AHEAD_CHUNKS_MAX`] chunks wait, and the
//! thread ends at the head, at the first error, or when the subscription
//! drops it.
//!
//! The thread only reads: it takes the records as stored
//! ([`EventStore::read_all_stored`]), and the subscriber decodes, upcasts
//! and filters them as it takes each chunk. Reading alone and decoding plus
//! handling take about as long as each other, so the two threads share the
//! work evenly; and the events are allocated and freed on one thread, with
//! no cross-thread frees for the allocator. The buffer a chunk's records
//! came in goes back to the reading thread for its next read (at most
//! [`READ_AHEAD_SPENT_MAX`] waiting).
//!
//! **Architecture Invariant:** a chunk read ahead is handed out only when it
//! starts exactly where the subscription's `next` stands; otherwise the
//! read-ahead is dropped and the store read directly, so positions still go
//! out in order, each once.

use super::chunk::{Chunk, SubscriptionError};
use super::interest::Interest;
use crate::evolution::Upcasters;
use eventfold_domain::RecordedEvent;
use eventfold_storage::{EventStore, Filter, StoredEvents};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Chunks read ahead and not yet taken, per reading-ahead subscription.
pub(crate) const READ_AHEAD_CHUNKS_MAX: usize = 2;
/// Buffers of handled chunks' records waiting to be reused by the reading
/// thread; past it the subscriber frees them.
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

/// A chunk as the store answered a read ahead: its events maybe still as
/// stored, not yet upcast or filtered.
pub(crate) struct ReadChunk {
    events: StoredEvents,
    from: u64,
    end: u64,
    reached_head: bool,
}

impl StoreReader {
    /// One read of at most `max` events from position `from`, upcast and
    /// filtered.
    pub(crate) fn read(&self, from: u64, max: usize) -> Result<Chunk, SubscriptionError> {
        let slice = self.store.read_all(from, max.max(1), &self.store_filter)?;
        let reached_head = slice.next_position > slice.head;
        Ok(Chunk::stored(
            self.upcast_and_filter(slice.events)?,
            from,
            slice.next_position.max(from),
            reached_head,
        ))
    }

    /// One read of at most `max` events from position `from`, as the store
    /// answers it (for [`finish`](Self::finish) on another thread), its
    /// records in `room` if they come encoded.
    fn read_stored(
        &self,
        from: u64,
        max: usize,
        room: Vec<u8>,
    ) -> Result<ReadChunk, SubscriptionError> {
        let slice = self
            .store
            .read_all_stored(from, max.max(1), &self.store_filter, room)?;
        Ok(ReadChunk {
            events: slice.events,
            from,
            end: slice.next_position.max(from),
            reached_head: slice.next_position > slice.head,
        })
    }

    /// A chunk read by [`read_stored`](Self::read_stored), decoded, upcast
    /// and filtered; and the buffer its records came in.
    fn finish(&self, read: ReadChunk) -> Result<(Chunk, Vec<u8>), SubscriptionError> {
        let (events, room) = read.events.decode()?;
        let chunk = Chunk::stored(
            self.upcast_and_filter(events)?,
            read.from,
            read.end,
            read.reached_head,
        );
        Ok((chunk, room))
    }

    fn upcast_and_filter(
        &self,
        events: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>, SubscriptionError> {
        let mut events = self.upcasters.upcast_all(events)?;
        if self.store_matched {
            if !self.interest.takes_all() {
                events.retain(|e| self.interest.wants_stored(e));
            }
        } else {
            events.retain(|e| self.interest.wants(e));
        }
        Ok(events)
    }
}

/// Chunks being read on a thread of their own, from `next` on.
pub(crate) struct ReadAhead {
    reader: Arc<StoreReader>,
    chunks: Receiver<Result<ReadChunk, SubscriptionError>>,
    /// Where the next chunk from the thread starts.
    next: u64,
    /// Buffers of records decoded, back to the thread for its next reads.
    spent: SyncSender<Vec<u8>>,
}

impl ReadAhead {
    /// Starts reading chunks of at most `max` events from `from`; `None`
    /// when no thread could be started (the caller reads directly).
    pub(crate) fn start(reader: Arc<StoreReader>, from: u64, max: usize) -> Option<Self> {
        let (sender, chunks) = sync_channel(READ_AHEAD_CHUNKS_MAX);
        let (spent, handled) = sync_channel(READ_AHEAD_SPENT_MAX);
        let thread_reader = Arc::clone(&reader);
        let started = std::thread::Builder::new()
            .name("eventfold-read-ahead".into())
            .spawn(move || read_on(&thread_reader, from, max, &sender, &handled));
        match started {
            Ok(_) => Some(Self {
                reader,
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
    /// it), decoded, upcast and filtered here; `None` when it would not
    /// start there, or the thread has ended: the caller drops this
    /// read-ahead and reads directly.
    pub(crate) fn take(&mut self, next: u64) -> Option<Result<Chunk, SubscriptionError>> {
        if next != self.next {
            return None;
        }
        let read = match self.chunks.recv().ok()? {
            Ok(read) => read,
            Err(error) => return Some(Err(error)),
        };
        self.next = read.end;
        Some(self.reader.finish(read).map(|(chunk, room)| {
            // When the thread has enough waiting, or has ended, it is freed.
            let _ = self.spent.try_send(room);
            chunk
        }))
    }
}

/// The read-ahead thread: reads chunk after chunk until one reaches the
/// head, a read fails, or the subscription dropped its end.
fn read_on(
    reader: &StoreReader,
    mut from: u64,
    max: usize,
    sender: &SyncSender<Result<ReadChunk, SubscriptionError>>,
    handled: &Receiver<Vec<u8>>,
) {
    loop {
        // A buffer the subscriber is done with, if one is back.
        let room = handled.try_recv().unwrap_or_default();
        let chunk = reader.read_stored(from, max, room);
        let go_on = match &chunk {
            Ok(chunk) if !chunk.reached_head && chunk.end > from => {
                from = chunk.end;
                true
            }
            _ => false,
        };
        if sender.send(chunk).is_err() || !go_on {
            return;
        }
    }
}
