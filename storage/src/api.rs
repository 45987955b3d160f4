//! The `EventStore` contract and the types it speaks.

use crate::error::{AppendError, ReadError, WriteError};
use eventfold_domain::{CommandId, ExpectedVersion, NewEvent, RecordedEvent, StreamId, Timestamp};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use crate::filter::Filter;
use crate::stored::{StoredEvents, StoredSlice};

/// The events to append to one stream, with the version the stream must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamId,
    /// What its version must be for the append to happen.
    pub expected: ExpectedVersion,
    /// The events, in order; at least one.
    pub events: Vec<NewEvent>,
}

/// One atomic append, to one or several streams: either every event of every
/// stream is written, or none is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    /// The streams and their events; each stream at most once.
    pub streams: Vec<StreamAppend>,
    /// Makes the append idempotent: if an append with this id was already
    /// applied, its original outcome is returned and nothing is written.
    pub command_id: Option<CommandId>,
}

impl AppendRequest {
    /// An append of `events` to one stream.
    pub fn single(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            streams: vec![StreamAppend {
                stream,
                expected,
                events,
            }],
            command_id: None,
        }
    }

    /// Sets the command id that makes this append idempotent.
    pub fn with_command_id(mut self, id: CommandId) -> Self {
        self.command_id = Some(id);
        self
    }

    /// The number of events over all streams.
    pub fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }
}

/// What an append wrote to one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamWritten {
    /// The stream.
    pub stream: StreamId,
    /// Version of its first new event.
    pub first_version: u64,
    /// Version of its last new event: the stream's new version.
    pub last_version: u64,
}

/// The result of a successful append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Per stream, in request order.
    pub streams: Vec<StreamWritten>,
    /// Global position of the first event written.
    pub first_position: u64,
    /// Global position of the last event written.
    pub last_position: u64,
    /// True when the command id had already been applied and this is the
    /// original outcome returned again (nothing was written this time).
    pub deduplicated: bool,
}

impl AppendOutcome {
    /// The new version of the first (for single appends: the only) stream.
    pub fn last_version(&self) -> u64 {
        self.streams.first().map_or(0, |s| s.last_version)
    }
}

/// Direction of a stream read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From a version upwards.
    Forward,
    /// From a version downwards.
    Backward,
}

/// A slice of the global log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalSlice {
    /// Matching events in position order.
    pub events: Vec<RecordedEvent>,
    /// Where to continue reading: one past the last position examined (which
    /// may be past the last event returned when a filter skipped events).
    pub next_position: u64,
    /// The committed head when the read started.
    pub head: u64,
}

impl From<GlobalSlice> for StoredSlice {
    /// A slice read decoded.
    fn from(slice: GlobalSlice) -> Self {
        Self {
            events: StoredEvents::decoded(slice.events),
            next_position: slice.next_position,
            head: slice.head,
        }
    }
}

/// A saved aggregate state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The version of the state's schema; a reader that expects another
    /// version ignores the snapshot and replays events.
    pub snapshot_version: u32,
    /// The stream version the state includes.
    pub stream_version: u64,
    /// The encoded state.
    pub state: Vec<u8>,
}

/// A read-model entry: key and value.
pub type ReadModelEntry = (Vec<u8>, Vec<u8>);

/// One change to a read model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadModelOp {
    /// Sets `key` to `value`.
    Put {
        /// The key within the model.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// The key within the model.
        key: Vec<u8>,
    },
}

/// Read-model changes and, optionally, a checkpoint, committed in one
/// WriteBatch: either all of them are durable, or none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadModelBatch {
    /// `(model, op)` pairs applied in order.
    pub ops: Vec<(String, ReadModelOp)>,
    /// A checkpoint to set in the same batch: `(name, position)`.
    pub checkpoint: Option<(String, u64)>,
    /// Write the batch to the WAL without waiting for its own fsync, even
    /// under `Durability::Sync` (a later sync of the log covers it). For
    /// state derived from durable events whose checkpoint is in the same
    /// batch: a crash may lose the batch, but then loses its checkpoint too,
    /// and the events are applied again.
    pub relaxed: bool,
}

impl ReadModelBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, model: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((
            model.to_owned(),
            ReadModelOp::Put {
                key: key.into(),
                value: value.into(),
            },
        ));
    }

    /// Adds a delete.
    pub fn delete(&mut self, model: &str, key: impl Into<Vec<u8>>) {
        self.ops
            .push((model.to_owned(), ReadModelOp::Delete { key: key.into() }));
    }

    /// Sets the checkpoint committed with the changes.
    pub fn set_checkpoint(&mut self, name: &str, position: u64) {
        self.checkpoint = Some((name.to_owned(), position));
    }

    /// Marks the batch [`relaxed`](ReadModelBatch::relaxed).
    pub fn relaxed(mut self) -> Self {
        self.relaxed = true;
        self
    }
}

/// One problem found by [`EventStore::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What is wrong and where.
    pub corruption: crate::Corruption,
}

/// What [`EventStore::verify`] walked and what it found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events walked in the global log.
    pub events: u64,
    /// Streams walked.
    pub streams: u64,
    /// Every fault found, each naming its key.
    pub faults: Vec<Fault>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Counters of the writer since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// WriteBatches written.
    pub batches: u64,
    /// WAL syncs under `Durability::Sync`; each covers one or more batches
    /// (0 under the other durabilities).
    pub syncs: u64,
    /// Writes made outside the writer (read-model commits, checkpoints)
    /// that waited for a WAL sync of their own under `Durability::Sync`:
    /// those not marked [`relaxed`](ReadModelBatch::relaxed). Relaxed
    /// batches and snapshots ride on the writer's next sync.
    pub direct_syncs: u64,
    /// Appends acknowledged as written (not deduplicated ones).
    pub appends: u64,
    /// Events written.
    pub events: u64,
}

/// An append that has been submitted: wait for it, or `.await` it.
///
/// Dropping it does not cancel the append.
#[must_use = "an append's outcome must be checked"]
pub struct PendingAppend {
    state: PendingState,
}

enum PendingState {
    Ready(Option<Result<AppendOutcome, AppendError>>),
    Waiting(oneshot::Receiver<Result<AppendOutcome, AppendError>>),
}

impl PendingAppend {
    /// An append that is already decided (refused before queueing, or done).
    pub fn ready(result: Result<AppendOutcome, AppendError>) -> Self {
        Self {
            state: PendingState::Ready(Some(result)),
        }
    }

    /// An append decided elsewhere (another backend's own writer): the
    /// [`AppendAnswer`] decides it, once; dropped unanswered, the append
    /// reads as [`AppendError::Closed`].
    pub fn answered_later() -> (AppendAnswer, Self) {
        let (sender, receiver) = oneshot::channel();
        (AppendAnswer { sender }, Self::waiting(receiver))
    }

    pub(crate) fn waiting(receiver: oneshot::Receiver<Result<AppendOutcome, AppendError>>) -> Self {
        Self {
            state: PendingState::Waiting(receiver),
        }
    }

    /// Blocks the calling thread until the append is decided. Do not call it
    /// on an async executor thread; `.await` the append there instead.
    pub fn wait(self) -> Result<AppendOutcome, AppendError> {
        match self.state {
            PendingState::Ready(result) => result.unwrap_or(Err(AppendError::Closed)),
            // A dropped sender means the writer stopped without answering.
            PendingState::Waiting(receiver) => receiver.recv().unwrap_or(Err(AppendError::Closed)),
        }
    }
}

/// Decides a [`PendingAppend`] made by [`PendingAppend::answered_later`].
pub struct AppendAnswer {
    sender: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

impl AppendAnswer {
    /// Decides the append; nothing happens if its holder dropped it.
    pub fn send(self, result: Result<AppendOutcome, AppendError>) {
        let _ = self.sender.send(result);
    }
}

impl Future for PendingAppend {
    type Output = Result<AppendOutcome, AppendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            PendingState::Ready(result) => {
                Poll::Ready(result.take().unwrap_or(Err(AppendError::Closed)))
            }
            PendingState::Waiting(receiver) => match Pin::new(receiver).poll(cx) {
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(_)) => Poll::Ready(Err(AppendError::Closed)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The answer of a read that may use memory only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached<T> {
    /// Read from memory (memtables, block cache) without any disk I/O.
    Ready(T),
    /// The answer needs disk I/O: ask again with the blocking read.
    NeedsIo,
}

/// The event store contract, held by every backend to one conformance suite.
///
/// **Positions.** Every event gets a global position from one writer: gapless,
/// strictly increasing from 1. The committed head is the last position whose
/// batch is durable under the store's durability; no read returns an event
/// past it.
///
/// **Versions.** A stream's events have versions 1, 2, 3, …; a stream without
/// events has version 0 and does not exist.
///
/// **Atomicity.** An [`AppendRequest`] is written whole or not at all, across
/// all its streams.
///
/// **Idempotency.** An append with a [`CommandId`] already applied returns the
/// original [`AppendOutcome`] (with `deduplicated` set) and writes nothing.
/// The record of applied ids is durable.
pub trait EventStore: Send + Sync {
    /// Queues an append for the writer and returns at once. Limits and names
    /// are checked here; an invalid request is returned already decided.
    fn submit(&self, request: AppendRequest) -> PendingAppend;

    /// Appends `events` to one stream and blocks until the outcome is known.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, AppendError> {
        self.submit(AppendRequest::single(stream.clone(), expected, events))
            .wait()
    }

    /// Queues a deletion (see [`crate::lifecycle`]) for the writer, ordered
    /// with appends, and returns at once; its outcome reads with
    /// [`DeletionOutcome::of`](crate::DeletionOutcome::of).
    fn submit_deletion(&self, request: crate::DeleteRequest) -> PendingAppend;

    /// Deletes (truncates, soft-deletes or tombstones) and blocks until the
    /// deletion is durable.
    fn delete(&self, request: crate::DeleteRequest) -> Result<crate::DeletionOutcome, AppendError> {
        let outcome = self.submit_deletion(request).wait()?;
        crate::DeletionOutcome::of(&outcome).ok_or(AppendError::NoStreams)
    }

    /// Where a stream's lifecycle stands: its version, first readable
    /// version, tombstone.
    fn stream_info(&self, stream: &StreamId) -> Result<crate::StreamInfo, ReadError>;

    /// What the store keeps of a stream that had a deletion (`None`: it
    /// never had one). With `cache_only`, answered from memory or
    /// [`Cached::NeedsIo`], for threads that must not block.
    fn deletion_record(
        &self,
        stream: &StreamId,
        cache_only: bool,
    ) -> Result<Cached<Option<crate::DeletionRecord>>, ReadError>;

    /// The key of data subject `subject` (see [`SubjectKey`](crate::SubjectKey)),
    /// `None` when it has none yet.
    fn subject_key(&self, subject: &str) -> Result<Option<crate::SubjectKey>, ReadError>;

    /// Stores `key` as the key of `subject` unless it has one or was
    /// forgotten, and returns the key it has now (one caller wins a race).
    /// The write is in the write-ahead log before anything appended after
    /// this returns, so an event sealed with the key is never durable
    /// without it.
    fn create_subject_key(
        &self,
        subject: &str,
        key: [u8; crate::SUBJECT_KEY_BYTES],
    ) -> Result<crate::SubjectKey, WriteError>;

    /// Destroys the key of `subject` for good: durably marks it forgotten
    /// (no key can be created for it again), and makes the store's files
    /// drop the key's bytes (RocksDB: every memtable flushed, so no live
    /// write-ahead log holds it, and its keyspace compacted). True when it
    /// had a key or mark before.
    fn forget_subject(&self, subject: &str) -> Result<bool, WriteError>;

    /// Runs a pass of max-age retention now (it also runs on its own; see
    /// [`Retention`](crate::Retention)), after the appends queued before it:
    /// the number of events it erased.
    fn enforce_retention(&self) -> Result<u64, AppendError>;

    /// The last durable position (0 for an empty store).
    fn head(&self) -> u64;

    /// The stream's current version (0: the stream does not exist).
    fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadError>;

    /// Up to `max_count` events of one stream, starting at version `from`
    /// (inclusive) and going in `direction`. Reading backward from
    /// `u64::MAX` starts at the last event. A missing stream reads as empty.
    fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError>;

    /// The stream as it was at `until`: its first events, in order, up to and
    /// including the last one recorded at or before `until`; at most
    /// `max_count`.
    fn read_stream_until(
        &self,
        stream: &StreamId,
        until: Timestamp,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = self.read_stream(stream, 1, Direction::Forward, max_count)?;
        // recorded_at never decreases along a stream, so the events kept are a prefix.
        let keep = events.partition_point(|e| e.recorded_at <= until);
        events.truncate(keep);
        Ok(events)
    }

    /// Up to `max_count` events of the global log matching `filter`, from
    /// position `from` (inclusive; 0 reads as 1) up to the committed head.
    fn read_all(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<GlobalSlice, ReadError>;

    /// As [`read_all`](Self::read_all), but the events may come back as
    /// stored, for [`StoredEvents::decode`] to check and decode, on another
    /// thread than the read if the caller likes. `room` is a buffer an
    /// earlier slice's `decode` gave back (or empty), reused for the
    /// records. By default, `read_all` decoded.
    fn read_all_stored(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
        room: Vec<u8>,
    ) -> Result<StoredSlice, ReadError> {
        drop(room);
        Ok(self.read_all(from, max_count, filter)?.into())
    }

    /// Saves the latest snapshot of a stream, replacing any earlier one.
    ///
    /// It does not wait for a WAL sync of its own: a snapshot lost in a
    /// crash only means a longer replay, and one that survives holds only
    /// events written to the log before it.
    fn save_snapshot(&self, stream: &StreamId, snapshot: &Snapshot) -> Result<(), WriteError>;

    /// The latest snapshot of a stream.
    fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, ReadError>;

    /// [`EventStore::read_stream`] forward from `from`, answered only if it
    /// needs no disk I/O (what it reads is in memory); otherwise
    /// [`Cached::NeedsIo`]. For callers on threads that must not block, such
    /// as an actor activating. The default always says `NeedsIo`.
    fn read_stream_cached(
        &self,
        stream: &StreamId,
        from: u64,
        max_count: usize,
    ) -> Result<Cached<Vec<RecordedEvent>>, ReadError> {
        let _ = (stream, from, max_count);
        Ok(Cached::NeedsIo)
    }

    /// [`EventStore::load_snapshot`] answered only if it needs no disk I/O;
    /// otherwise [`Cached::NeedsIo`] (the default).
    fn load_snapshot_cached(
        &self,
        stream: &StreamId,
    ) -> Result<Cached<Option<Snapshot>>, ReadError> {
        let _ = stream;
        Ok(Cached::NeedsIo)
    }

    /// A subscriber's checkpoint: the last position it has processed.
    fn checkpoint(&self, name: &str) -> Result<Option<u64>, ReadError>;

    /// Sets a subscriber's checkpoint.
    fn set_checkpoint(&self, name: &str, position: u64) -> Result<(), WriteError> {
        let mut batch = ReadModelBatch::new();
        batch.set_checkpoint(name, position);
        self.commit_read_model(batch)
    }

    /// A read model's value for `key`.
    fn read_model_get(&self, model: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError>;

    /// Up to `max_count` entries of a read model whose keys start with
    /// `prefix`, in key order.
    fn read_model_scan(
        &self,
        model: &str,
        prefix: &[u8],
        max_count: usize,
    ) -> Result<Vec<ReadModelEntry>, ReadError>;

    /// Commits read-model changes and an optional checkpoint atomically.
    fn commit_read_model(&self, batch: ReadModelBatch) -> Result<(), WriteError>;

    /// Walks every stream and the global log, checking checksums, contiguous
    /// versions, gapless positions and that the indexes agree.
    fn verify(&self) -> Result<VerifyReport, ReadError>;

    /// The writer's counters.
    fn writer_stats(&self) -> WriterStats;

    /// The outcome of the append that carried command id `id`, if one was
    /// applied and is durable.
    fn command_outcome(&self, id: CommandId) -> Result<Option<AppendOutcome>, ReadError>;

    /// [`EventStore::command_outcome`] answered only if it needs no disk
    /// I/O; otherwise [`Cached::NeedsIo`] (the default). An actor checks
    /// each command id with it on its own thread: most ids were never
    /// applied, and a memtable's bloom filter says so without a read.
    fn command_outcome_cached(
        &self,
        id: CommandId,
    ) -> Result<Cached<Option<AppendOutcome>>, ReadError> {
        let _ = id;
        Ok(Cached::NeedsIo)
    }

    /// Registers the listener told of every durable batch, replacing any
    /// earlier one. See [`CommitListener`].
    fn set_commit_listener(&self, listener: Arc<dyn CommitListener>);
}

/// Told of every batch of events once it is durable, in position order.
///
/// Called on the store's writer (or syncer) thread after the committed head
/// has passed the events and before their appenders are answered, so it must
/// not block: hand the events on through a bounded, non-blocking channel.
pub trait CommitListener: Send + Sync + 'static {
    /// `events` are consecutive in the global log and follow those of the
    /// previous call (for as long as the listener is interested).
    fn committed(&self, events: Arc<[RecordedEvent]>);

    /// Whether the listener wants events now; the writer skips building them
    /// for batches written while it does not. Checked once per batch.
    fn interested(&self) -> bool {
        true
    }
}
