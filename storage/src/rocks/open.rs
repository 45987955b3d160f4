//! Opening and closing a store: the format marker, the head, the writer and
//! syncer threads; backup and restore.

use super::options::*;
use super::syncer::{self, Syncer};
use super::{Inner, RocksStore, Shared, recovery, writer};
use crate::codec;
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::keyspaces::*;
use crate::options::{Durability, StoreOptions};
use eventfold_domain::Timestamp;
use rocksdb::backup::{BackupEngine, BackupEngineOptions, RestoreOptions};
use rocksdb::{DB, Env, IteratorMode, WriteOptions};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use writer::Writer;

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, OpenError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| OpenError::Thread(e.to_string()))
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

    pub(super) fn open_with(
        path: &Path,
        options: StoreOptions,
        recovery: recovery::Recovery,
    ) -> Result<Self, OpenError> {
        let path = path.to_path_buf();
        let (mut db_options, families) = db_options(&options)?;
        db_options.set_wal_recovery_mode(recovery.mode());
        let db = DB::open_cf_descriptors(&db_options, &path, families)
            .map_err(|e| recovery::open_error(&path, e))?;
        if !super::inspect::check_format(&db)? {
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.put_opt(codec::META_FORMAT_KEY, codec::STORE_FORMAT, &sync)?;
        }
        let (head, last_recorded_at) = Self::find_head(&db)?;
        let db = Arc::new(db);
        let options = Arc::new(options);
        let shared = Arc::new(Shared::new(head, false));
        let (sender, receiver) = sync_channel(options.queue_appends_max.max(1));
        let mut threads = Vec::with_capacity(2);
        let syncer = if options.durability == Durability::Sync {
            let (to_syncer, from_writer) = sync_channel(syncer::SYNC_QUEUE_BATCHES_MAX);
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
                subject_keys: std::sync::Mutex::new(()),
                db,
                shared,
                options,
                sender,
                threads: Mutex::new(threads),
                path,
                _secondary: None,
            }),
        })
    }

    /// The last position in the global log and the time it was recorded.
    pub(super) fn find_head(db: &DB) -> Result<(u64, Timestamp), OpenError> {
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

    /// Flushes the memtables and compacts every keyspace: the space of
    /// erased events (deletions, retention) is given back to the file
    /// system, as EventStoreDB's scavenge does. Runs on the calling thread
    /// for as long as RocksDB takes; appends go on meanwhile.
    pub fn compact(&self) -> Result<(), OpenError> {
        self.flush_all()?;
        let db = &self.inner.db;
        for name in KEYSPACES {
            let cf = db
                .cf_handle(name)
                .ok_or_else(|| OpenError::Engine(format!("column family {name} is missing")))?;
            db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Flushes every keyspace's memtable, `default` too (its memtable, the
    /// format marker, would keep the first write-ahead log alive): no live
    /// WAL then holds anything written before.
    pub(super) fn flush_all(&self) -> Result<(), OpenError> {
        let db = &self.inner.db;
        for name in std::iter::once("default").chain(KEYSPACES) {
            let cf = db
                .cf_handle(name)
                .ok_or_else(|| OpenError::Engine(format!("column family {name} is missing")))?;
            db.flush_cf(cf)?;
        }
        Ok(())
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
}
