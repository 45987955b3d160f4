//! The eventfold event store.
//!
//! [`EventStore`] is the contract; [`RocksStore`] implements it on an embedded
//! RocksDB and [`MemoryStore`] in memory, and one conformance suite
//! (`tests/conformance`) holds both to it.
//!
//! # Writes
//!
//! Appends go through one writer thread that assigns global positions and
//! commits whatever appends are waiting in one WriteBatch with one sync
//! (group commit). An append is answered only after its batch is durable under
//! the store's [`Durability`]; the committed [head](EventStore::head) moves at
//! the same moment, and no read returns an event past it.
//!
//! # Failure
//!
//! A version conflict is [`AppendError::WrongExpectedVersion`] and nothing is
//! written. A failed write or sync answers its callers with
//! [`AppendError::Io`] and *poisons* the store: every later write fails with
//! `Poisoned` until the store is reopened, because what reached the disk is no
//! longer known. Corrupt bytes on disk are a [`Corruption`] naming the key,
//! never a panic.
//!
//! # Backpressure
//!
//! The writer's queue holds at most `queue_appends_max` appends; past it
//! `submit` answers [`AppendError::Overloaded`] at once.
//!
//! ```
//! use eventfold_domain::{CommandId, ExpectedVersion, Metadata, NewEvent, StreamId};
//! use eventfold_storage::{AppendRequest, EventStore, Filter, RocksStore, StoreOptions, payload};
//!
//! let dir = tempfile::tempdir()?;
//! let store = RocksStore::open(dir.path(), StoreOptions::default())?;
//! let stream = StreamId::new("account-7")?;
//! let deposit = NewEvent::new("Deposited", 1, payload::encode(&100u64)?, Metadata::new());
//! let request = AppendRequest::single(stream.clone(), ExpectedVersion::NoStream, vec![deposit])
//!     .with_command_id(CommandId::from_name("deposit-1"));
//! let first = store.submit(request.clone()).wait()?;
//! let retry = store.submit(request).wait()?; // same command id: nothing written
//! assert!(retry.deduplicated);
//! assert_eq!(retry.last_position, first.last_position);
//! let all = store.read_all(1, 100, &Filter::categories(["account"]))?;
//! assert_eq!(all.events.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// Without the RocksDB backend, helpers only it uses are unused.
#![cfg_attr(not(feature = "rocksdb"), allow(dead_code))]

mod api;
mod codec;
mod error;
mod filter;
mod keyspaces;
pub mod lifecycle;
mod memory;
mod options;
mod replica;
#[cfg(feature = "rocksdb")]
mod rocks;
mod stored;
mod subjects;
mod validate;

pub use api::{
    AppendAnswer, AppendOutcome, AppendRequest, Cached, CommitListener, Direction, EventStore,
    Fault, Filter, GlobalSlice, PendingAppend, ReadModelBatch, ReadModelEntry, ReadModelOp,
    Snapshot, StreamAppend, StreamWritten, VerifyReport, WriterStats,
};
pub use codec::{decoders, payload};
pub use error::{
    AppendError, Corruption, CorruptionKind, DamagedFile, NameError, OpenError, ReadError,
    Unavailability, WriteError,
};
pub use keyspaces::{
    CF_CHECKPOINTS, CF_GLOBAL, CF_IDEMPOTENCY, CF_READ_MODELS, CF_SNAPSHOTS, CF_STREAM_META,
    CF_STREAMS, CF_SUBJECT_KEYS, KEYSPACES, READ_ALL_SCAN_EVENTS_MAX,
};
pub use lifecycle::{
    DELETIONS_STREAM, DeleteRequest, Deletion, DeletionKind, DeletionOutcome, DeletionRecord,
    ERASE_BATCH_EVENTS, RETENTION_SWEEP_EVENTS_MAX, RETENTION_SWEEP_INTERVAL, Retention,
    STREAM_DELETED_EVENT, StreamDeletion, StreamInfo,
};
pub use memory::MemoryStore;
pub use options::{Durability, FaultInjector, NAME_BYTES_MAX, StoreOptions};
pub use replica::{Replicated, ReplicatedAppend};
/// The RocksDB backend (feature `rocksdb`, on by default; off, the crate
/// builds without RocksDB, for the fuzz targets of its decoders).
#[cfg(feature = "rocksdb")]
pub use rocks::{
    CHECKPOINTS_LIST_MAX, KeyspaceStats, REINDEX_BATCH_EVENTS, RocksStore, SalvageReport,
    StreamSummary, UpgradeReport, VERIFY_PROGRESS_EVENTS,
};
pub use stored::{StoredEvents, StoredSlice};
pub use subjects::{SUBJECT_BYTES_MAX, SUBJECT_KEY_BYTES, SubjectKey};

/// The checks every backend applies to an append before it is queued
/// (names, counts, sizes against `options`), for a backend built outside
/// this crate: the error is the one this crate's stores give.
pub fn check_append(request: &AppendRequest, options: &StoreOptions) -> Result<(), AppendError> {
    validate::append_request(request, options)
}
