//! The errors of the store, one enum per operation.

use eventfold_domain::{ExpectedVersion, StreamId};
use std::fmt;

/// Stored bytes that cannot be what eventfold wrote: a bad checksum, a
/// truncated record, an unknown format byte, or an index entry that points
/// at the wrong record. Names the keyspace and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {keyspace} entry at key {}: {kind}", Hex(&self.key))]
pub struct Corruption {
    /// The keyspace (column family) holding the entry.
    pub keyspace: &'static str,
    /// The entry's key, as stored.
    pub key: Vec<u8>,
    /// What is wrong with it.
    pub kind: CorruptionKind,
}

/// What is wrong with a corrupt entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The CRC32C stored with the value does not match its bytes.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The checksum found in the value.
        stored: u32,
        /// The checksum of the value's bytes.
        computed: u32,
    },
    /// The value ends before a field it declares.
    #[error("truncated: {0}")]
    Truncated(&'static str),
    /// The value's format byte is not one this version understands.
    #[error("unknown format byte {0}")]
    UnknownFormat(u8),
    /// A field holds a value that cannot be valid.
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// The key itself has the wrong shape.
    #[error("malformed key")]
    MalformedKey,
    /// Two entries that must agree do not (an index and the record it names,
    /// a gap in positions or versions, a head that disagrees with its stream).
    #[error("inconsistent: {0}")]
    Inconsistent(String),
}

/// Displays bytes as lowercase hex, abbreviated past 64 bytes.
pub(crate) struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0.iter().take(64) {
            write!(f, "{byte:02x}")?;
        }
        if self.0.len() > 64 {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// Why an append was refused or failed.
///
/// [`AppendError::WrongExpectedVersion`] is a concurrency conflict: nothing was
/// written and the caller may reload and retry. [`AppendError::Io`] and
/// [`AppendError::Poisoned`] mean the store cannot write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The stream's version did not match; nothing was written.
    #[error(
        "wrong expected version on stream {stream}: expected {expected}, actual version {actual}"
    )]
    WrongExpectedVersion {
        /// The stream whose check failed.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version at the time of the check (0: no stream).
        actual: u64,
    },
    /// An append must carry at least one event for every stream it names.
    #[error("the append for stream {stream} carries no events")]
    NoEvents {
        /// The stream with no events.
        stream: StreamId,
    },
    /// The request names no stream at all.
    #[error("the append names no stream")]
    NoStreams,
    /// The same stream appears twice in one multi-stream append.
    #[error("stream {stream} appears more than once in one append")]
    DuplicateStream {
        /// The repeated stream.
        stream: StreamId,
    },
    /// More events than `events_per_append_max` in one request.
    #[error("{count} events in one append, more than the limit of {limit}")]
    TooManyEvents {
        /// Events in the request.
        count: usize,
        /// The store's `events_per_append_max`.
        limit: usize,
    },
    /// One event's payload exceeds `payload_bytes_max`.
    #[error(
        "event {index} for stream {stream} has a {bytes}-byte payload, more than the limit of {limit}"
    )]
    PayloadTooLarge {
        /// The stream the event was for.
        stream: StreamId,
        /// The event's index within that stream's events.
        index: usize,
        /// The payload's size.
        bytes: usize,
        /// The store's `payload_bytes_max`.
        limit: usize,
    },
    /// One event's type name, headers or other fields exceed what a record
    /// can hold (`event_type_bytes_max`, `headers_bytes_max`).
    #[error("event {index} for stream {stream} is invalid: {reason}")]
    InvalidEvent {
        /// The stream the event was for.
        stream: StreamId,
        /// The event's index within that stream's events.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The stream is tombstoned: it can never be written again.
    #[error("stream {stream} is deleted for good (tombstoned)")]
    StreamDeleted {
        /// The stream.
        stream: StreamId,
    },
    /// The stream's name starts with `$`, which the store keeps for its own
    /// streams (such as [`DELETIONS_STREAM`](crate::DELETIONS_STREAM)).
    #[error("stream {stream} is reserved: names starting with '$' are the store's own")]
    ReservedStream {
        /// The stream.
        stream: StreamId,
    },
    /// The writer's queue (`queue_appends_max`) is full: retry later.
    #[error("the store's write queue is full ({limit} appends waiting); retry later")]
    Overloaded {
        /// The store's `queue_appends_max`.
        limit: usize,
    },
    /// An earlier write or sync failed; the store refuses writes until it is
    /// reopened, because what is on disk is no longer known.
    #[error("the store refuses writes after an earlier write failure; reopen it")]
    Poisoned,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The store was opened read-only (beside the process that holds it).
    #[error("the store was opened read-only")]
    ReadOnly,
    /// This append's write or sync failed. Whether it reached the disk is
    /// unknown; the store is now poisoned.
    #[error("the write failed: {0}")]
    Io(String),
    /// Stored bytes needed to check the append are corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// A replica was given an entry that does not follow its log: the
    /// source log's positions must arrive in order, without a gap.
    #[error("replica out of order: its next position is {expected}, the entry starts at {found}")]
    ReplicaOutOfOrder {
        /// The replica's next position.
        expected: u64,
        /// Where the entry starts.
        found: u64,
    },
    /// A replica was given events of a stream that do not continue the
    /// stream's history as the replica holds it: two histories of one
    /// stream (a fork). Nothing was written; the replica refuses to fold it.
    #[error(
        "history of stream {stream} forked: the replica holds version {held}, the log's next event says version {found}"
    )]
    HistoryForked {
        /// The stream.
        stream: StreamId,
        /// The stream's version in the replica.
        held: u64,
        /// The version the log's event carries.
        found: u64,
    },
    /// The operation is not offered by this store (a deletion on a
    /// cluster's log, say).
    #[error("{operation} is not supported by this store")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
    },
    /// The store cannot reach the log that makes appends durable (a
    /// cluster's JetStream), or lost the right to write this stream (its
    /// partition is owned elsewhere, or its claim was fenced). Whether an
    /// append that was sent landed is unknown unless `landed` says no;
    /// retrying with the same command id is safe.
    #[error("the log is unavailable for stream {stream}: {reason}")]
    Unavailable {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: Unavailability,
    },
    /// A replicated entry's read-model changes are invalid (a name, a
    /// size): nothing was written.
    #[error("the replicated read-model changes: {0}")]
    ReadModel(#[source] WriteError),
}

/// Why a cluster's log refused or could not take an append.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailability {
    /// This node does not own the stream's partition (now).
    #[error("partition {partition} is not owned by this node")]
    NotOwner {
        /// The partition.
        partition: u32,
    },
    /// The claim this node wrote with was superseded: another node claimed
    /// the partition since. The append was refused by the log; the node
    /// stops the partition.
    #[error("the claim on partition {partition} (token {token}) was fenced by a newer claim")]
    Fenced {
        /// The partition.
        partition: u32,
        /// The token of the superseded claim.
        token: u64,
    },
    /// The log did not answer (a lost connection, a leader election, a
    /// timeout): the append may or may not have landed.
    #[error("the log did not answer: {0}")]
    NoAnswer(String),
    /// The log refused the append for a reason of its own (a message
    /// over its size limit, say); nothing was written.
    #[error("the log refused the append: {0}")]
    Refused(String),
    /// The node is stopping or its replica stopped.
    #[error("the node is stopping")]
    Stopping,
    /// No server of the log took the write for as long as the node
    /// waits (the log is electing a leader): nothing was written.
    #[error("the log has no leader: {0}")]
    Leaderless(String),
    /// This node does not hold the claim on a single-runner (a process
    /// manager that runs once in the cluster), or its claim was fenced.
    #[error("the claim on {name} is not held by this node")]
    NotHeld {
        /// The single-runner's name.
        name: String,
    },
}

/// A file of the store that the storage engine found damaged: a table
/// file whose block checksum does not match, a write-ahead log damaged
/// before its last record, a MANIFEST cut short. The engine's own words are
/// kept in `detail`; `file` is the file they name, when they name one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged file {}: {detail}", .file.as_deref().map_or_else(|| "(not named by the engine)".into(), |f| f.display().to_string()))]
pub struct DamagedFile {
    /// The damaged file (a `.log`, `.sst` or `MANIFEST-*` file of the
    /// store's directory), when the engine names it.
    pub file: Option<std::path::PathBuf>,
    /// What the storage engine reported.
    pub detail: String,
}

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Stored bytes are corrupt; the error names the key.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The storage engine failed.
    #[error("the read failed: {0}")]
    Io(String),
    /// A file of the store is damaged (a table file's checksum does not
    /// match): the engine cannot read past it.
    #[error(transparent)]
    Damaged(DamagedFile),
    /// A name (checkpoint, read model) is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// Why a write other than an append (snapshot, checkpoint, read model)
/// failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A name (checkpoint, read model) is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A value exceeds `payload_bytes_max`.
    #[error("a {bytes}-byte value, more than the limit of {limit}")]
    ValueTooLarge {
        /// The value's size.
        bytes: usize,
        /// The store's `payload_bytes_max`.
        limit: usize,
    },
    /// The batch holds more than `read_model_batch_entries_max` entries.
    #[error("{count} entries in one read-model batch, more than the limit of {limit}")]
    BatchTooLarge {
        /// Entries in the batch.
        count: usize,
        /// The store's `read_model_batch_entries_max`.
        limit: usize,
    },
    /// An earlier write or sync failed; reopen the store.
    #[error("the store refuses writes after an earlier write failure; reopen it")]
    Poisoned,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The store was opened read-only (beside the process that holds it).
    #[error("the store was opened read-only")]
    ReadOnly,
    /// The operation is not offered by this store.
    #[error("{operation} is not supported by this store")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
    },
    /// The write failed; the store is now poisoned.
    #[error("the write failed: {0}")]
    Io(String),
    /// A read the write depends on failed (a subject's key before it is
    /// created or forgotten).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store cannot reach the log that makes the write durable (a
    /// cluster's JetStream), or lost the right to write `model` (the
    /// claim on the process manager it belongs to is held elsewhere, or
    /// was fenced). Nothing is known to be written unless it is read back.
    #[error("the log is unavailable for read model {model}: {reason}")]
    Unavailable {
        /// The read model.
        model: String,
        /// Why.
        reason: Unavailability,
    },
}

/// Why a name of a checkpoint, read model or snapshot owner was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("a name must not be empty")]
    Empty,
    /// The name is longer than [`crate::NAME_BYTES_MAX`].
    #[error("name is {bytes} bytes long, more than the limit of {limit}")]
    TooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The name contains NUL, which separates names from keys on disk.
    #[error("a name must not contain NUL")]
    ContainsNul,
}

/// Why the store could not be opened, backed up or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The storage engine failed.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The directory holds a store of a format this version cannot read.
    #[error("the store at this path has format {found:?}; this version reads {supported:?}")]
    UnsupportedFormat {
        /// The format marker found.
        found: String,
        /// The format marker this version writes.
        supported: &'static str,
    },
    /// The directory holds a store of an earlier format (or one whose
    /// upgrade was cut short) that [`RocksStore::upgrade`](crate::RocksStore::upgrade)
    /// converts; it is left untouched until then.
    #[error(
        "the store at this path has format {found:?}; RocksStore::upgrade converts it to {supported:?}"
    )]
    NeedsUpgrade {
        /// The format marker found.
        found: String,
        /// The format marker this version writes.
        supported: &'static str,
    },
    /// The directory holds a RocksDB database without eventfold's format
    /// marker: not an eventfold store, or one whose marker cannot be read
    /// (a damaged table file; a read-only open does not write one).
    #[error(
        "{} has no eventfold format marker: not an eventfold store, or the marker's table file is damaged",
        .0.display()
    )]
    NoFormatMarker(std::path::PathBuf),
    /// There is no store at the path (for operations that never create one).
    #[error("no eventfold store at {0}")]
    Missing(std::path::PathBuf),
    /// A file of the store is damaged where a crash cannot have left it:
    /// the write-ahead log before its last record (acknowledged events
    /// would be dropped), a MANIFEST cut short. Nothing was changed;
    /// [`RocksStore::open_salvaging`](crate::RocksStore::open_salvaging)
    /// keeps the longest consistent prefix and says how much is lost.
    #[error(
        "the store cannot be opened without losing data: {0}; RocksStore::open_salvaging keeps what precedes the damage"
    )]
    Damaged(DamagedFile),
    /// Another runtime or process holds the store at this path (its
    /// `LOCK` file).
    #[error("the store at {} is in use by another runtime or process", .0.display())]
    InUse(std::path::PathBuf),
    /// Stored bytes needed to open the store are corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// A file-system operation failed.
    #[error("file-system error: {0}")]
    Fs(#[from] std::io::Error),
    /// The writer thread could not be started.
    #[error("could not start the writer thread: {0}")]
    Thread(String),
    /// A restore target already holds files.
    #[error("restore target {0} is not empty")]
    TargetNotEmpty(String),
}

#[cfg(feature = "rocksdb")]
impl From<rocksdb::Error> for OpenError {
    fn from(value: rocksdb::Error) -> Self {
        OpenError::Engine(value.into_string())
    }
}
