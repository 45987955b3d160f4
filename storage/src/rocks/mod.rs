//! The RocksDB backend.
//!
//! Keyspaces are column families; `docs/format.md` gives their keys and
//! values byte by byte. One [`writer`] thread assigns positions and commits
//! appends in groups; reads run on the caller's thread.

mod recovery;
mod upgrade;
mod verify;
pub(crate) mod writer;

use crate::api::*;
use crate::codec;
use crate::error::{AppendError, Corruption, CorruptionKind, OpenError, ReadError, WriteError};
use crate::options::{Durability, StoreOptions};
use crate::validate;
use eventfold_domain::{CommandId, RecordedEvent, StreamId, Timestamp};
use rocksdb::backup::{BackupEngine, BackupEngineOptions, RestoreOptions};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Env,
    IteratorMode, Options, ReadOptions, SliceTransform, WriteBatch, WriteOptions,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use writer::{Job, Message, Syncer, Writer};

pub use recovery::SalvageReport;
pub use upgrade::{REINDEX_BATCH_EVENTS, UpgradeReport};

pub use crate::keyspaces::{
    CF_CHECKPOINTS, CF_GLOBAL, CF_IDEMPOTENCY, CF_READ_MODELS, CF_SNAPSHOTS, CF_STREAMS, KEYSPACES,
    READ_ALL_SCAN_EVENTS_MAX,
};

/// State shared by the store handle and the writer thread.
pub(crate) struct Shared {
    pub head: AtomicU64,
    pub poisoned: AtomicBool,
    pub closed: AtomicBool,
    pub stats_batches: AtomicU64,
    pub stats_syncs: AtomicU64,
    /// Writes outside the writer that waited for a WAL sync of their own.
    pub stats_direct_syncs: AtomicU64,
    pub stats_appends: AtomicU64,
    pub stats_events: AtomicU64,
    /// Told of every durable batch; read once per batch by the writer.
    pub listener: std::sync::RwLock<Option<Arc<dyn CommitListener>>>,
}

impl Shared {
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

/// Whether a write made outside the writer thread waits for a WAL sync of
/// its own under `Durability::Sync` (see `RocksStore::write_direct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirectSync {
    /// Synced before the write returns.
    Own,
    /// Written to the WAL unsynced; a later sync covers it.
    Covered,
}

pub(crate) fn write_options(durability: Durability) -> WriteOptions {
    let mut options = WriteOptions::default();
    match durability {
        Durability::Sync => options.set_sync(true),
        Durability::Buffered => options.set_sync(false),
        Durability::NoWal => options.disable_wal(true),
    }
    options
}

struct Inner {
    db: Arc<DB>,
    shared: Arc<Shared>,
    options: Arc<StoreOptions>,
    sender: SyncSender<Message>,
    /// The writer thread, then (under `Durability::Sync`) the syncer thread.
    threads: Mutex<Vec<JoinHandle<()>>>,
    path: PathBuf,
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

fn db_options(options: &StoreOptions) -> Result<(Options, Vec<ColumnFamilyDescriptor>), OpenError> {
    let mut db = Options::default();
    // See `recovery`: damage before the log's end refuses the open.
    db.set_wal_recovery_mode(recovery::Recovery::Strict.mode());
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    db.set_max_background_jobs(2);
    db.set_bytes_per_sync(1024 * 1024);
    let cache = Cache::new_lru_cache(options.block_cache_bytes);
    let families = std::iter::once("default")
        .chain(KEYSPACES)
        .map(|name| Ok(ColumnFamilyDescriptor::new(name, cf_options(name, &cache)?)))
        .collect::<Result<_, OpenError>>()?;
    Ok((db, families))
}

/// The options of keyspace `name`, its table files in `cache`.
fn cf_options(name: &str, cache: &Cache) -> Result<Options, OpenError> {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    let mut cf = Options::default();
    cf.set_compression_type(DBCompressionType::Lz4);
    if name == CF_STREAMS {
        // Every read of the stream index seeks into one stream: the
        // bloom filters hold stream prefixes instead of whole keys
        // (never looked up), and the memtable has one too.
        table.set_whole_key_filtering(false);
        cf.set_prefix_extractor(SliceTransform::create(
            STREAMS_PREFIX_EXTRACTOR,
            codec::stream_key_prefix,
            Some(codec::is_stream_key),
        ));
        cf.set_memtable_prefix_bloom_ratio(STREAMS_MEMTABLE_PREFIX_BLOOM_RATIO);
    }
    if POINT_LOOKUP_KEYSPACES.contains(&name) {
        // Most lookups here are of keys that are not there (a new
        // process instance, a command id not seen before): a bloom
        // filter of the memtable's keys answers them without a
        // search of its skip list (a cache miss per level).
        cf.set_memtable_prefix_bloom_ratio(POINT_LOOKUP_MEMTABLE_BLOOM_RATIO);
        cf.set_memtable_whole_key_filtering(true);
    }
    cf.set_block_based_table_factory(&table);
    if name == CF_STREAMS {
        // Each event's index key lands inside its stream's range, at
        // a random place among all streams: a search of the memtable's
        // skip list from its top, a cache miss per level, was half
        // the writer thread's time. With hints by tag (see
        // STREAMS_HINT_BYTES) the insert starts from where the
        // stream's last key went.
        // The option exists only as a string in RocksDB's C API; the
        // string is applied on top of everything set above.
        cf = cf.get_options_from_string(streams_insert_hint_option())?;
    }
    Ok(cf)
}

/// RocksDB option giving the `streams` memtable one insert hint per value
/// of the first [`STREAMS_HINT_BYTES`] bytes of a key's tag.
fn streams_insert_hint_option() -> String {
    format!("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{STREAMS_HINT_BYTES}")
}

/// Bytes of a `streams` key's tag that pick its memtable insert hint: 2, so
/// a memtable keeps at most 65,536 hints (a hash map in RocksDB of about
/// 56 bytes an entry, 3.7 MB at most, not counted toward the memtable's
/// size). Streams sharing those bytes share a hint; their keys sort next to
/// each other, so a hint left by another stream still starts the insert a
/// few skip-list levels from the right place. The tag's full 4 bytes gave
/// one hint per stream: W4's and W8's million streams held 100-140 MB more.
const STREAMS_HINT_BYTES: usize = 2;
const _: () = assert!(STREAMS_HINT_BYTES <= codec::STREAM_TAG_BYTES);

/// The name RocksDB records in each `streams` table file for its prefix
/// extractor ([`codec::stream_key_prefix`]); files written under another
/// name are read without their prefix filters.
const STREAMS_PREFIX_EXTRACTOR: &str = "eventfold.stream-prefix.v2";

/// Share of the `streams` memtable's size given to its prefix bloom filter.
const STREAMS_MEMTABLE_PREFIX_BLOOM_RATIO: f64 = 0.1;

/// The keyspaces read by whole key (`get`), whose memtables keep a bloom
/// filter of whole keys.
const POINT_LOOKUP_KEYSPACES: [&str; 4] =
    [CF_READ_MODELS, CF_IDEMPOTENCY, CF_SNAPSHOTS, CF_CHECKPOINTS];

/// Share of those memtables' size given to their bloom filter: 2% of a
/// 64 MiB memtable is 10.7 million bits, about 10 bits per key at 1 million
/// keys of 64 bytes.
const POINT_LOOKUP_MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// Read options for the index entries of one stream: bounded to them, and
/// seeking in prefix mode so the `streams` prefix filters skip the table
/// files that hold none of them.
pub(crate) fn stream_read_options(stream: &str, cache_only: bool) -> ReadOptions {
    let (lower, upper) = codec::stream_key_bounds(stream);
    let mut options = read_options(cache_only);
    options.set_prefix_same_as_start(true);
    options.set_iterate_lower_bound(lower);
    options.set_iterate_upper_bound(upper);
    options
}

/// The index entries of one stream from its last backwards (prefix-mode
/// reverse seek from the stream's last possible key): how a stream's tip is
/// read, by readers and by the writer.
pub(crate) fn stream_entries_backward<'a>(
    db: &'a DB,
    cf: &ColumnFamily,
    stream: &str,
) -> rocksdb::DBIteratorWithThreadMode<'a, DB> {
    let last = codec::stream_key(stream, u64::MAX);
    db.iterator_cf_opt(
        cf,
        stream_read_options(stream, false),
        IteratorMode::From(&last, rocksdb::Direction::Reverse),
    )
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, OpenError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| OpenError::Thread(e.to_string()))
}

/// Read options; `cache_only` reads memtables and the block cache only
/// (RocksDB's block-cache tier), failing with `Incomplete` where it would
/// need the disk.
fn read_options(cache_only: bool) -> ReadOptions {
    let mut options = ReadOptions::default();
    if cache_only {
        options.set_read_tier(rocksdb::ReadTier::BlockCache);
    }
    options
}

/// A read's engine error: damage to a file (a table file's checksum) is
/// [`ReadError::Damaged`], naming the file; anything else is `Io`.
fn engine(error: rocksdb::Error) -> ReadError {
    if error.kind() == rocksdb::ErrorKind::Corruption {
        ReadError::Damaged(crate::error::DamagedFile::from_engine_message(
            error.into_string(),
        ))
    } else {
        ReadError::Io(error.into_string())
    }
}

impl RocksStore {
    /// Opens (or creates) the store in `path` and starts its writer thread.
    ///
    /// A write-ahead log damaged anywhere but in an incomplete last record
    /// (a write a crash cut short, never acknowledged) is refused with
    /// [`OpenError::Damaged`], as is a MANIFEST cut short, and nothing is
    /// changed: see [`RocksStore::open_salvaging`]. A store another runtime
    /// or process holds is [`OpenError::InUse`].
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, OpenError> {
        Self::open_with(path.as_ref(), options, recovery::Recovery::Strict)
    }

    fn open_with(
        path: &Path,
        options: StoreOptions,
        recovery: recovery::Recovery,
    ) -> Result<Self, OpenError> {
        let path = path.to_path_buf();
        let (mut db_options, families) = db_options(&options)?;
        db_options.set_wal_recovery_mode(recovery.mode());
        let db = DB::open_cf_descriptors(&db_options, &path, families)
            .map_err(|e| recovery::open_error(&path, e))?;
        match db.get(codec::META_FORMAT_KEY)? {
            Some(found) if found != codec::STORE_FORMAT.as_bytes() => {
                let found = String::from_utf8_lossy(&found).into_owned();
                return Err(if upgrade::UPGRADABLE_FORMATS.contains(&found.as_str()) {
                    OpenError::NeedsUpgrade {
                        found,
                        supported: codec::STORE_FORMAT,
                    }
                } else {
                    OpenError::UnsupportedFormat {
                        found,
                        supported: codec::STORE_FORMAT,
                    }
                });
            }
            Some(_) => {}
            None => {
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                db.put_opt(codec::META_FORMAT_KEY, codec::STORE_FORMAT, &sync)?;
            }
        }
        let (head, last_recorded_at) = Self::find_head(&db)?;
        let db = Arc::new(db);
        let options = Arc::new(options);
        let shared = Arc::new(Shared {
            head: AtomicU64::new(head),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stats_batches: AtomicU64::new(0),
            stats_syncs: AtomicU64::new(0),
            stats_direct_syncs: AtomicU64::new(0),
            stats_appends: AtomicU64::new(0),
            stats_events: AtomicU64::new(0),
            listener: std::sync::RwLock::new(None),
        });
        let (sender, receiver) = sync_channel(options.queue_appends_max.max(1));
        let mut threads = Vec::with_capacity(2);
        let syncer = if options.durability == Durability::Sync {
            let (to_syncer, from_writer) = sync_channel(writer::SYNC_QUEUE_BATCHES_MAX);
            let syncer = Syncer {
                db: Arc::clone(&db),
                shared: Arc::clone(&shared),
                options: Arc::clone(&options),
                receiver: from_writer,
            };
            threads.push(spawn("eventfold-syncer", move || syncer.run())?);
            Some(to_syncer)
        } else {
            None
        };
        let writer = Writer::new(
            Arc::clone(&db),
            Arc::clone(&shared),
            Arc::clone(&options),
            receiver,
            syncer,
            head,
            last_recorded_at,
        );
        // Joined in this order at close: the writer first.
        threads.insert(0, spawn("eventfold-writer", move || writer.run())?);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                shared,
                options,
                sender,
                threads: Mutex::new(threads),
                path,
            }),
        })
    }

    /// The last position in the global log and the time it was recorded.
    fn find_head(db: &DB) -> Result<(u64, Timestamp), OpenError> {
        let cf = db
            .cf_handle(CF_GLOBAL)
            .ok_or_else(|| OpenError::Engine("column family global is missing".into()))?;
        let Some(last) = db.iterator_cf(cf, IteratorMode::End).next() else {
            return Ok((0, Timestamp::EPOCH));
        };
        let (key, value) = last?;
        let position = codec::parse_u64_key(&key).ok_or_else(|| Corruption {
            keyspace: CF_GLOBAL,
            key: key.to_vec(),
            kind: CorruptionKind::MalformedKey,
        })?;
        // A corrupt last record must not keep the store from opening (verify
        // names it); the clock then starts from now.
        let recorded_at = codec::decode_event(CF_GLOBAL, &key, &value)
            .map(|e| e.recorded_at)
            .unwrap_or(Timestamp::EPOCH);
        Ok((position, recorded_at))
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The store's options.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// True after a failed write: the store refuses writes until reopened.
    pub fn is_poisoned(&self) -> bool {
        self.inner.shared.poisoned.load(Ordering::SeqCst)
    }

    /// Stops the writer after the appends already queued, and refuses new
    /// ones with `Closed`. Reads keep working until the last handle drops.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Backs up the live store into `backup_dir` (RocksDB's backup engine:
    /// incremental, checksummed) and verifies the new backup.
    pub fn backup(&self, backup_dir: impl AsRef<Path>) -> Result<u32, OpenError> {
        let options = BackupEngineOptions::new(backup_dir.as_ref())?;
        let env = Env::new()?;
        let mut engine = BackupEngine::open(&options, &env)?;
        engine.create_new_backup_flush(&*self.inner.db, true)?;
        let id = engine
            .get_backup_info()
            .iter()
            .map(|info| info.backup_id)
            .max()
            .ok_or_else(|| OpenError::Engine("the new backup is not listed".into()))?;
        engine.verify_backup(id)?;
        Ok(id)
    }

    /// Restores the latest backup in `backup_dir` into `target_dir`, which
    /// must be missing or empty. Open the result with [`RocksStore::open`].
    pub fn restore(
        backup_dir: impl AsRef<Path>,
        target_dir: impl AsRef<Path>,
    ) -> Result<(), OpenError> {
        let target = target_dir.as_ref();
        if target.exists() && std::fs::read_dir(target)?.next().is_some() {
            return Err(OpenError::TargetNotEmpty(target.display().to_string()));
        }
        let options = BackupEngineOptions::new(backup_dir.as_ref())?;
        let env = Env::new()?;
        let mut engine = BackupEngine::open(&options, &env)?;
        engine.restore_from_latest_backup(target, target, &RestoreOptions::default())?;
        Ok(())
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, ReadError> {
        self.inner
            .db
            .cf_handle(name)
            .ok_or_else(|| ReadError::Io(format!("column family {name} is missing")))
    }

    fn check_writable(&self) -> Result<(), WriteError> {
        if self.inner.shared.closed.load(Ordering::SeqCst) {
            return Err(WriteError::Closed);
        }
        if self.inner.shared.poisoned.load(Ordering::SeqCst) {
            return Err(WriteError::Poisoned);
        }
        Ok(())
    }

    /// Writes a batch outside the writer thread (snapshots, checkpoints, read
    /// models); a failure poisons the store.
    ///
    /// Under `Durability::Sync` the write waits for a WAL sync of its own
    /// only with [`DirectSync::Own`]; a [`DirectSync::Covered`] write is in
    /// the WAL before anything written after it, so the next sync (the
    /// syncer's, for the next append) makes it durable, and losing it in a
    /// crash is harmless to its caller (a relaxed read-model batch loses its
    /// checkpoint with it; a snapshot only shortens a replay).
    fn write_direct(&self, batch: WriteBatch, sync: DirectSync) -> Result<(), WriteError> {
        self.check_writable()?;
        let durability = self.inner.options.durability;
        let own_sync = durability == Durability::Sync && sync == DirectSync::Own;
        let mut options = write_options(durability);
        if durability == Durability::Sync {
            options.set_sync(own_sync);
        }
        let faulted = self
            .inner
            .options
            .faults
            .as_ref()
            .is_some_and(|f| f.should_fail());
        let result = if faulted {
            Err("injected write failure".to_owned())
        } else {
            self.inner
                .db
                .write_opt(batch, &options)
                .map_err(|e| e.into_string())
        };
        if result.is_ok() && own_sync {
            self.inner
                .shared
                .stats_direct_syncs
                .fetch_add(1, Ordering::Relaxed);
        }
        result.map_err(|message| {
            self.inner.shared.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %message, "event store write failed; the store is poisoned");
            WriteError::Io(message)
        })
    }

    /// `command_outcome`, from memory only when `cache_only` (then
    /// `NeedsIo` where the disk would be read).
    fn command_outcome_tier(
        &self,
        id: CommandId,
        cache_only: bool,
    ) -> Result<Cached<Option<AppendOutcome>>, ReadError> {
        let key = codec::command_key(id);
        match self.inner.db.get_pinned_cf_opt(
            self.cf(CF_IDEMPOTENCY)?,
            key,
            &read_options(cache_only),
        ) {
            // An outcome past the head is written but not yet durable.
            Ok(Some(bytes)) => Ok(Cached::Ready(
                Some(codec::decode_outcome(&key, &bytes)?)
                    .filter(|o| o.last_position <= self.head()),
            )),
            Ok(None) => Ok(Cached::Ready(None)),
            Err(error) if error.kind() == rocksdb::ErrorKind::Incomplete => Ok(Cached::NeedsIo),
            Err(error) => Err(engine(error)),
        }
    }

    /// `read_stream`, from memory only when `cache_only` (then
    /// [`Cached::NeedsIo`] where it would need the disk).
    fn read_stream_tier(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max_count: usize,
        cache_only: bool,
    ) -> Result<Cached<Vec<RecordedEvent>>, ReadError> {
        if max_count == 0 || (direction == Direction::Backward && from == 0) {
            return Ok(Cached::Ready(Vec::new()));
        }
        let head = self.head();
        let read_options = stream_read_options(stream.as_str(), cache_only);
        let start = codec::stream_key(stream.as_str(), from.max(1));
        // A raw iterator: index entries are decoded from RocksDB's buffers.
        let mut iter = self
            .inner
            .db
            .raw_iterator_cf_opt(self.cf(CF_STREAMS)?, read_options);
        match direction {
            Direction::Forward => iter.seek(&start),
            Direction::Backward => iter.seek_for_prev(&start),
        }
        let mut entries = Vec::with_capacity(max_count.min(4096));
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let position = codec::decode_stream_index(key, value)?;
            // Past the head: written by a batch not yet acknowledged, not
            // visible (and nothing after it is, going forward).
            if position <= head {
                entries.push((key.to_vec(), position));
                if entries.len() == max_count {
                    break;
                }
            } else if direction == Direction::Forward {
                break;
            }
            match direction {
                Direction::Forward => iter.next(),
                Direction::Backward => iter.prev(),
            }
        }
        match iter.status() {
            Ok(()) => {}
            Err(error) if error.kind() == rocksdb::ErrorKind::Incomplete => {
                return Ok(Cached::NeedsIo);
            }
            Err(error) => return Err(engine(error)),
        }
        self.load_indexed(entries, cache_only)
    }

    /// Loads the records `entries` point to (each a `streams` index key and
    /// a position at or below the head), checking that each is the event
    /// its index entry names. Dense positions (a stream written by one
    /// writer at a time, as a hot aggregate's is) are read by one scan of
    /// the global log, scattered ones by a batched point lookup.
    fn load_indexed(
        &self,
        mut entries: Vec<(Vec<u8>, u64)>,
        cache_only: bool,
    ) -> Result<Cached<Vec<RecordedEvent>>, ReadError> {
        // Both reads go in ascending position order; a backward read's
        // entries are turned back after.
        let descending = entries.len() > 1 && entries[0].1 > entries[entries.len() - 1].1;
        if descending {
            entries.reverse();
        }
        let events = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) if dense(first.1, last.1, entries.len()) => {
                self.scan_indexed(entries, cache_only)?
            }
            _ => self.lookup_indexed(entries, cache_only)?,
        };
        Ok(match events {
            Cached::Ready(mut events) => {
                if descending {
                    events.reverse();
                }
                Cached::Ready(events)
            }
            Cached::NeedsIo => Cached::NeedsIo,
        })
    }

    /// [`Self::load_indexed`] by one batched point lookup per record;
    /// `entries` ascend by position.
    fn lookup_indexed(
        &self,
        entries: Vec<(Vec<u8>, u64)>,
        cache_only: bool,
    ) -> Result<Cached<Vec<RecordedEvent>>, ReadError> {
        let global = self.cf(CF_GLOBAL)?;
        let keys: Vec<[u8; 8]> = entries.iter().map(|(_, p)| codec::global_key(*p)).collect();
        // Sorted: the keys ascend, and RocksDB need not sort them again.
        let values = self.inner.db.batched_multi_get_cf_opt(
            global,
            keys.iter(),
            true,
            &read_options(cache_only),
        );
        let mut events = Vec::with_capacity(entries.len());
        for ((index_key, position), value) in entries.into_iter().zip(values) {
            let value = match value {
                Err(error) if error.kind() == rocksdb::ErrorKind::Incomplete => {
                    return Ok(Cached::NeedsIo);
                }
                other => other.map_err(engine)?,
            };
            let value = value.ok_or_else(|| missing_position(&index_key, position))?;
            events.push(indexed_event(
                index_key,
                position,
                &codec::global_key(position),
                &value,
            )?);
        }
        Ok(Cached::Ready(events))
    }

    /// [`Self::load_indexed`] by one scan of the global log from the first
    /// position to the last, skipping the records of other streams between
    /// them without decoding them; `entries` ascend by position.
    fn scan_indexed(
        &self,
        entries: Vec<(Vec<u8>, u64)>,
        cache_only: bool,
    ) -> Result<Cached<Vec<RecordedEvent>>, ReadError> {
        let (Some(&(_, first)), Some(&(_, last))) = (entries.first(), entries.last()) else {
            return Ok(Cached::Ready(Vec::new()));
        };
        let mut options = read_options(cache_only);
        options.set_iterate_upper_bound(codec::global_key(last.saturating_add(1)).to_vec());
        let mut iter = self
            .inner
            .db
            .raw_iterator_cf_opt(self.cf(CF_GLOBAL)?, options);
        iter.seek(codec::global_key(first));
        let mut events = Vec::with_capacity(entries.len());
        let mut wanted = entries.into_iter();
        let mut next = wanted.next();
        while let Some((index_key, position)) = next.take() {
            let Some((key, value)) = iter.key().zip(iter.value()) else {
                next = Some((index_key, position));
                break;
            };
            let found = codec::parse_u64_key(key).ok_or_else(|| Corruption {
                keyspace: CF_GLOBAL,
                key: key.to_vec(),
                kind: CorruptionKind::MalformedKey,
            })?;
            if found > position {
                return Err(missing_position(&index_key, position).into());
            }
            if found == position {
                events.push(indexed_event(index_key, position, key, value)?);
                next = wanted.next();
            } else {
                next = Some((index_key, position));
            }
            iter.next();
        }
        match iter.status() {
            Ok(()) => {}
            Err(error) if error.kind() == rocksdb::ErrorKind::Incomplete => {
                return Ok(Cached::NeedsIo);
            }
            Err(error) => return Err(engine(error)),
        }
        match next {
            Some((index_key, position)) => Err(missing_position(&index_key, position).into()),
            None => Ok(Cached::Ready(events)),
        }
    }
}

/// Positions `first..=last` holding `count` wanted records are read by a
/// scan when the scan reads at most this many records per record wanted;
/// sparser ones by point lookups (a lookup costs a few times a step of a
/// scan).
const DENSE_SCAN_RECORDS_PER_WANTED_MAX: u64 = 4;

/// Whether `count` records between positions `first` and `last` (ascending)
/// are dense enough for [`RocksStore::scan_indexed`]. One record is looked
/// up.
fn dense(first: u64, last: u64, count: usize) -> bool {
    let span = last.saturating_sub(first).saturating_add(1);
    count > 1 && span <= (count as u64).saturating_mul(DENSE_SCAN_RECORDS_PER_WANTED_MAX)
}

/// The corruption of a `streams` index entry whose record is missing.
pub(crate) fn missing_position(index_key: &[u8], position: u64) -> Corruption {
    Corruption {
        keyspace: CF_STREAMS,
        key: index_key.to_vec(),
        kind: CorruptionKind::Inconsistent(format!("points at missing position {position}")),
    }
}

/// Decodes the record at `position` (its `global` key and value) that the
/// `streams` index entry `index_key` points to, checking that it is the
/// event the entry names.
fn indexed_event(
    index_key: Vec<u8>,
    position: u64,
    global_key: &[u8],
    value: &[u8],
) -> Result<RecordedEvent, ReadError> {
    let event = codec::decode_event(CF_GLOBAL, global_key, value)?;
    let expected = codec::parse_stream_key(&index_key);
    if expected != Some((event.stream_id.as_str(), event.version)) || event.position != position {
        return Err(Corruption {
            keyspace: CF_STREAMS,
            key: index_key,
            kind: CorruptionKind::Inconsistent(format!(
                "points at position {position}, which holds {}@{} at position {}",
                event.stream_id, event.version, event.position
            )),
        }
        .into());
    }
    Ok(event)
}

impl EventStore for RocksStore {
    fn submit(&self, request: AppendRequest) -> PendingAppend {
        if let Err(error) = validate::append_request(&request, &self.inner.options) {
            return PendingAppend::ready(Err(error));
        }
        if self.inner.shared.closed.load(Ordering::SeqCst) {
            return PendingAppend::ready(Err(AppendError::Closed));
        }
        if self.inner.shared.poisoned.load(Ordering::SeqCst) {
            return PendingAppend::ready(Err(AppendError::Poisoned));
        }
        let records: Vec<Vec<Vec<u8>>> = request
            .streams
            .iter()
            .map(|part| {
                part.events
                    .iter()
                    .map(|e| codec::encode_event(&part.stream, e))
                    .collect()
            })
            .collect();
        let bytes = records.iter().flatten().map(Vec::len).sum();
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            request,
            records,
            bytes,
            reply,
        };
        match self.inner.sender.try_send(Message::Append(job)) {
            Ok(()) => PendingAppend::waiting(receiver),
            Err(TrySendError::Full(_)) => PendingAppend::ready(Err(AppendError::Overloaded {
                limit: self.inner.options.queue_appends_max,
            })),
            Err(TrySendError::Disconnected(_)) => PendingAppend::ready(Err(AppendError::Closed)),
        }
    }

    fn head(&self) -> u64 {
        self.inner.shared.head.load(Ordering::Acquire)
    }

    fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadError> {
        let head = self.head();
        let iter = stream_entries_backward(&self.inner.db, self.cf(CF_STREAMS)?, stream.as_str());
        for item in iter {
            let (key, value) = item.map_err(engine)?;
            // Entries of a batch not yet durable are skipped.
            if codec::decode_stream_index(&key, &value)? <= head {
                let (_, version) = codec::parse_stream_key(&key).ok_or_else(|| Corruption {
                    keyspace: CF_STREAMS,
                    key: key.to_vec(),
                    kind: CorruptionKind::MalformedKey,
                })?;
                return Ok(version);
            }
        }
        Ok(0)
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        match self.read_stream_tier(stream, from, direction, max_count, false)? {
            Cached::Ready(events) => Ok(events),
            Cached::NeedsIo => Err(ReadError::Io("a blocking read reported incomplete".into())),
        }
    }

    /// Reads with RocksDB's block-cache tier: memtables and block cache only.
    fn read_stream_cached(
        &self,
        stream: &StreamId,
        from: u64,
        max_count: usize,
    ) -> Result<Cached<Vec<RecordedEvent>>, ReadError> {
        self.read_stream_tier(stream, from, Direction::Forward, max_count, true)
    }

    /// Reads with RocksDB's block-cache tier: memtables and block cache only.
    fn load_snapshot_cached(
        &self,
        stream: &StreamId,
    ) -> Result<Cached<Option<Snapshot>>, ReadError> {
        let key = stream.as_str().as_bytes();
        match self
            .inner
            .db
            .get_pinned_cf_opt(self.cf(CF_SNAPSHOTS)?, key, &read_options(true))
        {
            Ok(Some(bytes)) => Ok(Cached::Ready(Some(codec::decode_snapshot(key, &bytes)?))),
            Ok(None) => Ok(Cached::Ready(None)),
            Err(error) if error.kind() == rocksdb::ErrorKind::Incomplete => Ok(Cached::NeedsIo),
            Err(error) => Err(engine(error)),
        }
    }

    fn read_all(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<GlobalSlice, ReadError> {
        let head = self.head();
        let from = from.max(1);
        let mut slice = GlobalSlice {
            events: Vec::new(),
            next_position: from,
            head,
        };
        if max_count == 0 || from > head {
            return Ok(slice);
        }
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(codec::global_key(head + 1).to_vec());
        // A raw iterator: the records are decoded from RocksDB's own
        // buffers, without a copy of each key and value.
        let mut iter = self
            .inner
            .db
            .raw_iterator_cf_opt(self.cf(CF_GLOBAL)?, read_options);
        iter.seek(codec::global_key(from));
        let mut examined = 0usize;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let event = codec::decode_event(CF_GLOBAL, key, value)?;
            if event.position != slice.next_position {
                return Err(Corruption {
                    keyspace: CF_GLOBAL,
                    key: key.to_vec(),
                    kind: CorruptionKind::Inconsistent(format!(
                        "expected position {}, found {}",
                        slice.next_position, event.position
                    )),
                }
                .into());
            }
            slice.next_position += 1;
            examined += 1;
            if filter.matches(&event) {
                slice.events.push(event);
                if slice.events.len() == max_count {
                    break;
                }
            }
            if examined == READ_ALL_SCAN_EVENTS_MAX {
                break;
            }
            iter.next();
        }
        iter.status().map_err(engine)?;
        if slice.next_position <= head
            && examined < READ_ALL_SCAN_EVENTS_MAX
            && slice.events.len() < max_count
        {
            // The iterator ended before the head: positions are missing.
            return Err(Corruption {
                keyspace: CF_GLOBAL,
                key: codec::global_key(slice.next_position).to_vec(),
                kind: CorruptionKind::Inconsistent("position missing below the head".into()),
            }
            .into());
        }
        Ok(slice)
    }

    fn save_snapshot(&self, stream: &StreamId, snapshot: &Snapshot) -> Result<(), WriteError> {
        if snapshot.state.len() > self.inner.options.payload_bytes_max {
            return Err(WriteError::ValueTooLarge {
                bytes: snapshot.state.len(),
                limit: self.inner.options.payload_bytes_max,
            });
        }
        let cf = self
            .cf(CF_SNAPSHOTS)
            .map_err(|e| WriteError::Io(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf,
            stream.as_str().as_bytes(),
            codec::encode_snapshot(snapshot),
        );
        self.write_direct(batch, DirectSync::Covered)
    }

    fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, ReadError> {
        let key = stream.as_str().as_bytes();
        match self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_SNAPSHOTS)?, key)
            .map_err(engine)?
        {
            Some(bytes) => Ok(Some(codec::decode_snapshot(key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn checkpoint(&self, name: &str) -> Result<Option<u64>, ReadError> {
        validate::name(name)?;
        let key = name.as_bytes();
        match self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_CHECKPOINTS)?, key)
            .map_err(engine)?
        {
            Some(bytes) => Ok(Some(codec::decode_checkpoint(key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn read_model_get(&self, model: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        validate::name(model)?;
        let key = codec::read_model_key(model, key);
        match self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_READ_MODELS)?, &key)
            .map_err(engine)?
        {
            Some(bytes) => Ok(Some(codec::decode_opaque(CF_READ_MODELS, &key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn read_model_scan(
        &self,
        model: &str,
        prefix: &[u8],
        max_count: usize,
    ) -> Result<Vec<ReadModelEntry>, ReadError> {
        validate::name(model)?;
        let start = codec::read_model_key(model, prefix);
        let model_prefix_len = model.len() + 1;
        let iter = self.inner.db.iterator_cf(
            self.cf(CF_READ_MODELS)?,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            if out.len() >= max_count {
                break;
            }
            let (key, value) = item.map_err(engine)?;
            if !key.starts_with(&start) {
                break;
            }
            let value = codec::decode_opaque(CF_READ_MODELS, &key, &value)?;
            out.push((key[model_prefix_len..].to_vec(), value));
        }
        Ok(out)
    }

    fn commit_read_model(&self, batch: ReadModelBatch) -> Result<(), WriteError> {
        validate::read_model_batch(&batch, &self.inner.options)?;
        let missing = |e: ReadError| WriteError::Io(e.to_string());
        let models = self.cf(CF_READ_MODELS).map_err(missing)?;
        let checkpoints = self.cf(CF_CHECKPOINTS).map_err(missing)?;
        let mut write = WriteBatch::default();
        for (model, op) in &batch.ops {
            match op {
                ReadModelOp::Put { key, value } => {
                    write.put_cf(
                        models,
                        codec::read_model_key(model, key),
                        codec::encode_opaque(value),
                    );
                }
                ReadModelOp::Delete { key } => {
                    write.delete_cf(models, codec::read_model_key(model, key));
                }
            }
        }
        if let Some((name, position)) = &batch.checkpoint {
            write.put_cf(
                checkpoints,
                name.as_bytes(),
                codec::encode_checkpoint(*position),
            );
        }
        let sync = if batch.relaxed {
            DirectSync::Covered
        } else {
            DirectSync::Own
        };
        self.write_direct(write, sync)
    }

    fn verify(&self) -> Result<VerifyReport, ReadError> {
        verify::run(self)
    }

    fn command_outcome(&self, id: CommandId) -> Result<Option<AppendOutcome>, ReadError> {
        match self.command_outcome_tier(id, false)? {
            Cached::Ready(outcome) => Ok(outcome),
            Cached::NeedsIo => Err(ReadError::Io("a blocking read reported incomplete".into())),
        }
    }

    /// Reads with RocksDB's block-cache tier: memtables and block cache only.
    fn command_outcome_cached(
        &self,
        id: CommandId,
    ) -> Result<Cached<Option<AppendOutcome>>, ReadError> {
        self.command_outcome_tier(id, true)
    }

    fn set_commit_listener(&self, listener: Arc<dyn CommitListener>) {
        *self
            .inner
            .shared
            .listener
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    fn writer_stats(&self) -> WriterStats {
        let shared = &self.inner.shared;
        WriterStats {
            batches: shared.stats_batches.load(Ordering::Relaxed),
            syncs: shared.stats_syncs.load(Ordering::Relaxed),
            direct_syncs: shared.stats_direct_syncs.load(Ordering::Relaxed),
            appends: shared.stats_appends.load(Ordering::Relaxed),
            events: shared.stats_events.load(Ordering::Relaxed),
        }
    }
}
