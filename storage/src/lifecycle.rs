//! The stream lifecycle: truncation, soft deletion, tombstones and
//! retention, with EventStoreDB's semantics where they fit.
//!
//! A deletion is a request to the writer like an append: durable, ordered
//! with appends, idempotent (asking again for what is already done changes
//! nothing and says so). What a deletion removes is erased from the disk:
//! its index entries are range-deleted and its records in the global log are
//! replaced by erased records of 13 bytes, which readers skip, so the log
//! stays gapless for them. Each deletion (not retention) appends a
//! [`STREAM_DELETED_EVENT`] to [`DELETIONS_STREAM`], in order with every
//! other event, so that projections learn of it.
//!
//! ```
//! use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
//! use eventfold_storage::{DeleteRequest, Direction, EventStore, MemoryStore};
//!
//! let store = MemoryStore::new();
//! let stream = StreamId::new("account-1")?;
//! let events = (0..5).map(|_| NewEvent::new("Noted", 1, vec![], Metadata::new())).collect();
//! store.append(&stream, ExpectedVersion::NoStream, events)?;
//! let done = store.delete(DeleteRequest::truncate_before(stream.clone(), 4))?;
//! assert!(done.changed);
//! let versions: Vec<u64> = store
//!     .read_stream(&stream, 1, Direction::Forward, 10)?
//!     .iter()
//!     .map(|e| e.version)
//!     .collect();
//! assert_eq!(versions, [4, 5]);
//! assert_eq!(store.stream_version(&stream)?, 5); // never reset
//! store.delete(DeleteRequest::tombstone(stream.clone()))?;
//! let again = store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Noted", 1, vec![], Metadata::new())]);
//! assert!(again.is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::api::AppendOutcome;
use eventfold_domain::{ExpectedVersion, RecordedEvent, StreamId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The stream the store appends a [`StreamDeletion`] to for every
/// deletion. Names starting with `$` are the store's: appends to them are
/// refused with `AppendError::ReservedStream`.
pub const DELETIONS_STREAM: &str = "$deletions";
/// The type of the events of [`DELETIONS_STREAM`].
pub const STREAM_DELETED_EVENT: &str = "$stream-deleted";
/// Most events one batch erases: a deletion erases up to this many in its
/// own batch, and the writer erases the rest between batches, this many at
/// a time. Until then readers skip them.
pub const ERASE_BATCH_EVENTS: usize = 4096;
/// Most events of one category a retention sweep (max-age) examines per
/// pass; passes run while the writer is idle, at most every
/// [`RETENTION_SWEEP_INTERVAL`].
pub const RETENTION_SWEEP_EVENTS_MAX: usize = 4096;
/// How often the writer looks for events past their category's max age.
pub const RETENTION_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// What a [`DeleteRequest`] does to its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Deletion {
    /// Removes the events before this version (Akka's `DeleteMessagesTo`
    /// of version - 1; EventStoreDB's `$tb`). The stream's version is never
    /// reset. A version past the stream's end removes every event.
    TruncateBefore(u64),
    /// Soft delete: every event is removed and the stream reads as empty;
    /// appending again continues its versions.
    Delete,
    /// Hard delete: every event is removed and no event may be appended
    /// again (`AppendError::StreamDeleted`).
    Tombstone,
}

/// A deletion to submit to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    /// The stream.
    pub stream: StreamId,
    /// What its version must be for the deletion to happen.
    pub expected: ExpectedVersion,
    /// What to remove.
    pub deletion: Deletion,
}

impl DeleteRequest {
    /// Removes the events of `stream` before `version`, whatever its version.
    pub fn truncate_before(stream: StreamId, version: u64) -> Self {
        Self {
            stream,
            expected: ExpectedVersion::Any,
            deletion: Deletion::TruncateBefore(version),
        }
    }

    /// Soft-deletes `stream`, whatever its version.
    pub fn delete(stream: StreamId) -> Self {
        Self {
            stream,
            expected: ExpectedVersion::Any,
            deletion: Deletion::Delete,
        }
    }

    /// Tombstones `stream`, whatever its version.
    pub fn tombstone(stream: StreamId) -> Self {
        Self {
            stream,
            expected: ExpectedVersion::Any,
            deletion: Deletion::Tombstone,
        }
    }

    /// Sets the version the stream must have.
    pub fn expecting(mut self, expected: ExpectedVersion) -> Self {
        self.expected = expected;
        self
    }
}

/// What a deletion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletionOutcome {
    /// The stream.
    pub stream: StreamId,
    /// The first version it now reads from (`version + 1`: it reads empty).
    pub first_version: u64,
    /// Its version, unchanged by the deletion.
    pub version: u64,
    /// False when the deletion was already done: nothing was written.
    pub changed: bool,
    /// The position of the [`StreamDeletion`] event written for it.
    pub position: Option<u64>,
}

impl DeletionOutcome {
    /// The outcome the writer answered a deletion with (as an append's:
    /// the stream's first version and version, the position of its event,
    /// `deduplicated` when nothing changed).
    pub fn of(outcome: &AppendOutcome) -> Option<Self> {
        let written = outcome.streams.first()?;
        Some(Self {
            stream: written.stream.clone(),
            first_version: written.first_version,
            version: written.last_version,
            changed: !outcome.deduplicated,
            position: (!outcome.deduplicated).then_some(outcome.last_position),
        })
    }
}

/// What the store keeps of a stream that had a deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeletionRecord {
    /// The first version readers see (`version + 1`: none).
    pub first_version: u64,
    /// The stream's version when the record was last written (its index
    /// may no longer hold it).
    pub version: u64,
    /// Its version when it was last soft-deleted or tombstoned (0: never):
    /// what came before is gone, and an aggregate's state starts afresh
    /// after it. A truncation leaves it as it was.
    pub deleted_version: u64,
    /// No event may be appended again.
    pub tombstoned: bool,
}

/// Where a stream's lifecycle stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Its version (0: it never had an event).
    pub version: u64,
    /// The first version a read returns (`version + 1`: it reads empty).
    pub first_version: u64,
    /// It can never be written again.
    pub tombstoned: bool,
}

/// The kind of a [`StreamDeletion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeletionKind {
    /// A prefix was removed.
    Truncated,
    /// Soft-deleted: every event removed, the stream may be written again.
    Deleted,
    /// Tombstoned: every event removed, for good.
    Tombstoned,
}

/// The payload of a [`STREAM_DELETED_EVENT`] (bincode 2, as every payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDeletion {
    /// The stream whose events were removed.
    pub stream: String,
    /// What was done.
    pub kind: DeletionKind,
    /// The stream's first readable version after it: events before are gone.
    pub first_version: u64,
    /// The stream's version when it happened.
    pub version: u64,
}

impl StreamDeletion {
    /// The deletion an event of [`DELETIONS_STREAM`] records; `None` for
    /// any other event (or one whose payload does not decode).
    pub fn of(event: &RecordedEvent) -> Option<Self> {
        if event.stream_id.as_str() != DELETIONS_STREAM || event.event_type != STREAM_DELETED_EVENT
        {
            return None;
        }
        crate::payload::decode(&event.payload).ok()
    }

    /// The category of the stream it is about.
    pub fn category(&self) -> &str {
        eventfold_domain::category_of(&self.stream)
    }
}

/// How long a category's events are kept: EventStoreDB's `$maxCount` and
/// `$maxAge`, set per category in [`StoreOptions::retention`](crate::StoreOptions::retention).
/// Retention removes events silently (no [`StreamDeletion`] is written):
/// its events are meant to be read while they last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many events per stream: enforced as events are
    /// appended, in the append's own batch.
    pub max_count: Option<u64>,
    /// Remove events older than this: enforced by the writer's sweep.
    pub max_age: Option<Duration>,
}
