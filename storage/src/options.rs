//! Settings of a store: durability and limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// When an append is acknowledged, relative to the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// The write-ahead log is fsynced before any append of the batch is
    /// acknowledged: survives power loss. The default.
    #[default]
    Sync,
    /// The write-ahead log is written but not synced: survives a crash of the
    /// process, not of the machine.
    Buffered,
    /// No write-ahead log: for experiments only; a crash loses whatever was
    /// not yet flushed to tables.
    NoWal,
}

/// The longest checkpoint, read-model or snapshot-owner name, in bytes.
pub const NAME_BYTES_MAX: usize = 256;

/// Settings of a store. Every limit carries its unit in its name.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Most appends (requests) the writer puts in one WriteBatch.
    pub batch_appends_max: usize,
    /// Most events the writer puts in one WriteBatch; a batch closes once it
    /// holds this many (one request is never split).
    pub batch_events_max: usize,
    /// Most encoded bytes the writer puts in one WriteBatch; as above.
    pub batch_bytes_max: usize,
    /// Most appends waiting for the writer; past it, appends fail with
    /// `Overloaded`.
    pub queue_appends_max: usize,
    /// Most events in one append request (all streams together).
    pub events_per_append_max: usize,
    /// Largest event payload, and largest snapshot or read-model value.
    pub payload_bytes_max: usize,
    /// Longest event type name.
    pub event_type_bytes_max: usize,
    /// Most bytes of header keys and values together, per event.
    pub headers_bytes_max: usize,
    /// Most entries in one read-model batch.
    pub read_model_batch_entries_max: usize,
    /// Size of RocksDB's block cache.
    pub block_cache_bytes: usize,
    /// Most streams whose last version the writer keeps in memory (about
    /// 64 bytes each); an append to a stream not among them reads its tip
    /// from the store on the writer thread. Past it the cache is emptied.
    pub version_cache_streams_max: usize,
    /// Fault injection for tests: writes fail while it says so.
    pub faults: Option<FaultInjector>,
    /// How long events are kept, per stream category (none: for ever).
    pub retention: std::collections::BTreeMap<String, crate::Retention>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            batch_appends_max: 1024,
            batch_events_max: 8192,
            batch_bytes_max: 16 * 1024 * 1024,
            queue_appends_max: 16 * 1024,
            events_per_append_max: 4096,
            payload_bytes_max: 1024 * 1024,
            event_type_bytes_max: 256,
            headers_bytes_max: 16 * 1024,
            read_model_batch_entries_max: 65_536,
            block_cache_bytes: 64 * 1024 * 1024,
            version_cache_streams_max: 1 << 20,
            faults: None,
            retention: std::collections::BTreeMap::new(),
        }
    }
}

impl StoreOptions {
    /// Default settings with this durability.
    pub fn with_durability(durability: Durability) -> Self {
        Self {
            durability,
            ..Self::default()
        }
    }
}

/// Makes a store's next writes fail, to test what callers do when the disk
/// refuses. Cloning shares the same switch.
///
/// ```
/// use eventfold_storage::FaultInjector;
/// let faults = FaultInjector::new();
/// faults.fail_next_writes(1);
/// assert!(faults.should_fail());
/// assert!(!faults.should_fail());
/// ```
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    writes_to_fail: Arc<AtomicU64>,
    syncs_to_fail: Arc<AtomicU64>,
}

impl FaultInjector {
    /// A switch that fails nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `count` writes (WriteBatches) fail.
    pub fn fail_next_writes(&self, count: u64) {
        self.writes_to_fail.store(count, Ordering::SeqCst);
    }

    /// Consumes one pending failure: true if this write must fail.
    pub fn should_fail(&self) -> bool {
        self.writes_to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Makes the next `count` WAL syncs fail (under `Durability::Sync`):
    /// the batch is written, but not known to be durable.
    pub fn fail_next_syncs(&self, count: u64) {
        self.syncs_to_fail.store(count, Ordering::SeqCst);
    }

    /// Consumes one pending sync failure: true if this sync must fail.
    pub fn should_fail_sync(&self) -> bool {
        self.syncs_to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}
