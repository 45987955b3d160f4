//! The RocksDB backend.
//!
//! Keyspaces are column families; `docs/format.md` gives their keys and
//! values byte by byte. One [`writer`] thread assigns positions and commits
//! appends in groups; reads run on the caller's thread.

mod batch;
mod erasing;
mod inspect;
mod lifecycle;
mod open;
mod options;
mod reads;
mod recovery;
mod replica;
mod scan;
mod store;
mod subjects;
pub(crate) mod syncer;
mod upgrade;
mod verify;
pub(crate) mod writer;

use crate::api::CommitListener;
use crate::error::AppendError;
use crate::options::{Durability, StoreOptions};
use rocksdb::{ColumnFamily, DB};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use writer::Message;

pub use inspect::{CHECKPOINTS_LIST_MAX, KeyspaceStats, StreamSummary};
pub use recovery::SalvageReport;
pub use upgrade::{REINDEX_BATCH_EVENTS, UpgradeReport};
pub use verify::VERIFY_PROGRESS_EVENTS;

use crate::keyspaces::KEYSPACES;

/// State shared by the store handle and the writer thread.
pub(crate) struct Shared {
    pub head: AtomicU64,
    pub poisoned: AtomicBool,
    pub closed: AtomicBool,
    /// Opened beside the process that holds the store: nothing is written.
    pub read_only: bool,
    pub stats_batches: AtomicU64,
    pub stats_syncs: AtomicU64,
    /// Writes outside the writer that waited for a WAL sync of their own.
    pub stats_direct_syncs: AtomicU64,
    pub stats_appends: AtomicU64,
    pub stats_events: AtomicU64,
    /// Told of every durable batch; read once per batch by the writer.
    pub listener: std::sync::RwLock<Option<Arc<dyn CommitListener>>>,
    /// Streams whose erasure is under way: readers skip what is removed.
    pub erasing: erasing::Erasing,
}

impl Shared {
    /// The state of a store just opened at `head`: open, or closed and
    /// read-only (a secondary has no writer).
    pub(crate) fn new(head: u64, read_only: bool) -> Self {
        Self {
            head: AtomicU64::new(head),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(read_only),
            read_only,
            stats_batches: AtomicU64::new(0),
            stats_syncs: AtomicU64::new(0),
            stats_direct_syncs: AtomicU64::new(0),
            stats_appends: AtomicU64::new(0),
            stats_events: AtomicU64::new(0),
            listener: std::sync::RwLock::new(None),
            erasing: Default::default(),
        }
    }

    pub(crate) fn listener(&self) -> Option<Arc<dyn CommitListener>> {
        self.listener
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Shared {
    /// A column family handle. Every family is created at open, so a missing
    /// one means the directory was changed behind the store's back.
    pub(crate) fn cf<'a>(
        &self,
        db: &'a DB,
        name: &'static str,
    ) -> Result<&'a ColumnFamily, AppendError> {
        db.cf_handle(name)
            .ok_or_else(|| AppendError::Io(format!("column family {name} is missing")))
    }
}

struct Inner {
    /// Held while a subject's key is created or forgotten.
    subject_keys: std::sync::Mutex<()>,
    db: Arc<DB>,
    shared: Arc<Shared>,
    options: Arc<StoreOptions>,
    sender: SyncSender<Message>,
    /// The writer thread, then (under `Durability::Sync`) the syncer thread.
    threads: Mutex<Vec<JoinHandle<()>>>,
    path: PathBuf,
    /// A read-only handle's own files (RocksDB's secondary mode), removed
    /// after the database is dropped.
    _secondary: Option<tempfile::TempDir>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    fn close(&self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Blocks while the queue is full: close waits for queued appends.
        let _ = self.sender.send(Message::Stop);
        // The writer stops first; dropping its end of the sync queue then
        // lets the syncer finish the batches it holds.
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in threads {
            if handle.join().is_err() {
                tracing::error!("an event store thread panicked");
            }
        }
        if self.options.durability == Durability::NoWal {
            for name in KEYSPACES {
                if let Some(cf) = self.db.cf_handle(name)
                    && let Err(e) = self.db.flush_cf(cf)
                {
                    tracing::error!(keyspace = name, error = %e, "flush at close failed");
                }
            }
        }
    }
}

/// The event store on an embedded RocksDB. Cloning gives another handle on
/// the same store; the store closes when the last handle is dropped or when
/// [`RocksStore::close`] is called.
///
/// ```
/// use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
/// use eventfold_storage::{Direction, EventStore, RocksStore, StoreOptions};
///
/// let dir = tempfile::tempdir()?;
/// let store = RocksStore::open(dir.path(), StoreOptions::default())?;
/// let stream = StreamId::new("account-1")?;
/// let event = NewEvent::new("Opened", 1, b"alice".to_vec(), Metadata::new());
/// store.append(&stream, ExpectedVersion::NoStream, vec![event])?;
/// let events = store.read_stream(&stream, 1, Direction::Forward, 10)?;
/// assert_eq!(events[0].payload, b"alice");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RocksStore {
    inner: Arc<Inner>,
}
