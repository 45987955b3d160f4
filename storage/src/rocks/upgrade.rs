//! Upgrading a store of an earlier format, in place.
//!
//! `eventfold-store-v1` differs from v2 only in the `streams` index: its
//! keys lacked the tag (`docs/format.md`). [`RocksStore::upgrade`] drops
//! the index and rebuilds it from the global log, which holds every
//! event's stream, version and position. It writes in synced batches of
//! [`REINDEX_BATCH_EVENTS`], each with how far it got, under the format
//! marker [`STORE_FORMAT_REINDEXING`] (which `open` refuses): an upgrade cut
//! short by a crash or a full disk resumes where it stopped when run again.

use super::RocksStore;
use super::options::{cf_options, db_options};
use crate::codec;
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::keyspaces::{CF_GLOBAL, CF_STREAMS};
use crate::options::StoreOptions;
use rocksdb::{Cache, DB, WriteBatch, WriteOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// The format marker of stores written before `streams` keys had a tag.
pub(crate) const STORE_FORMAT_V1: &str = "eventfold-store-v1";
/// The format marker while an upgrade rebuilds the `streams` index.
pub(crate) const STORE_FORMAT_REINDEXING: &str = "eventfold-store-v2-reindexing";
/// The formats [`RocksStore::upgrade`] converts.
pub(crate) const UPGRADABLE_FORMATS: [&str; 2] = [STORE_FORMAT_V1, STORE_FORMAT_REINDEXING];
/// Key, in the default keyspace, of the last position whose index entry an
/// upgrade has written (u64 big-endian); there only during an upgrade.
const META_REINDEXED_KEY: &[u8] = b"reindexed";
/// Events indexed per synced WriteBatch of an upgrade.
pub const REINDEX_BATCH_EVENTS: usize = 65_536;

/// What [`RocksStore::upgrade`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeReport {
    /// The format marker the store had.
    pub from: String,
    /// Index entries written (0 when the store was current).
    pub events_indexed: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl RocksStore {
    /// Converts the store in `path` to the format this version writes. A
    /// current store is left as it is; a store of another, unknown format
    /// is refused (`UnsupportedFormat`); a missing one is an error. Run it
    /// with no process holding the store open. Safe to run again after a
    /// crash: it resumes.
    ///
    /// ```
    /// use eventfold_storage::{RocksStore, StoreOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// RocksStore::open(dir.path(), StoreOptions::default())?.close();
    /// let report = RocksStore::upgrade(dir.path())?;
    /// assert_eq!((report.from.as_str(), report.events_indexed), ("eventfold-store-v2", 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn upgrade(path: impl AsRef<Path>) -> Result<UpgradeReport, OpenError> {
        let started = Instant::now();
        let path = path.as_ref();
        // RocksDB would create the directory even when told not to create
        // a database: nothing is opened without its CURRENT file.
        if !path.join("CURRENT").is_file() {
            return Err(OpenError::Missing(path.to_path_buf()));
        }
        let options = StoreOptions::default();
        let (mut db_opts, families) = db_options(&options)?;
        db_opts.create_if_missing(false);
        let mut db = DB::open_cf_descriptors(&db_opts, path, families)
            .map_err(|e| super::recovery::open_error(path, e))?;
        let from = match db.get(codec::META_FORMAT_KEY)? {
            Some(found) => String::from_utf8_lossy(&found).into_owned(),
            None => return Err(OpenError::Missing(path.to_path_buf())),
        };
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        match from.as_str() {
            codec::STORE_FORMAT => {
                return Ok(UpgradeReport {
                    from,
                    events_indexed: 0,
                    elapsed: started.elapsed(),
                });
            }
            STORE_FORMAT_V1 => {
                // Dropping the whole keyspace is the quickest way to lose
                // every old key; a crash before the marker changes below
                // only repeats it.
                db.drop_cf(CF_STREAMS)?;
                let cache = Cache::new_lru_cache(options.block_cache_bytes);
                db.create_cf(CF_STREAMS, &cf_options(CF_STREAMS, &cache)?)?;
                let mut batch = WriteBatch::default();
                batch.put(codec::META_FORMAT_KEY, STORE_FORMAT_REINDEXING);
                batch.put(META_REINDEXED_KEY, 0u64.to_be_bytes());
                db.write_opt(batch, &sync)?;
            }
            STORE_FORMAT_REINDEXING => {}
            _ => {
                return Err(OpenError::UnsupportedFormat {
                    found: from,
                    supported: codec::STORE_FORMAT,
                });
            }
        }
        let events_indexed = reindex(&db, &sync)?;
        let mut batch = WriteBatch::default();
        batch.put(codec::META_FORMAT_KEY, codec::STORE_FORMAT);
        batch.delete(META_REINDEXED_KEY);
        db.write_opt(batch, &sync)?;
        Ok(UpgradeReport {
            from,
            events_indexed,
            elapsed: started.elapsed(),
        })
    }
}

/// Writes the `streams` entry of every record of the global log after the
/// last one already indexed; returns how many it wrote.
fn reindex(db: &DB, sync: &WriteOptions) -> Result<u64, OpenError> {
    let missing = |name: &str| OpenError::Engine(format!("column family {name} is missing"));
    let global = db.cf_handle(CF_GLOBAL).ok_or_else(|| missing(CF_GLOBAL))?;
    let streams = db
        .cf_handle(CF_STREAMS)
        .ok_or_else(|| missing(CF_STREAMS))?;
    let reindexed = match db.get(META_REINDEXED_KEY)? {
        Some(bytes) => codec::parse_u64_key(&bytes).ok_or_else(|| Corruption {
            keyspace: "default",
            key: META_REINDEXED_KEY.to_vec(),
            kind: CorruptionKind::Inconsistent("an upgrade's progress is not a u64".into()),
        })?,
        None => 0,
    };
    let mut next = reindexed + 1;
    let mut written = 0u64;
    let mut iter = db.raw_iterator_cf(global);
    iter.seek(codec::global_key(next));
    loop {
        let mut batch = WriteBatch::default();
        let mut count = 0;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let event = codec::decode_event(CF_GLOBAL, key, value)?;
            if event.position != next {
                return Err(Corruption {
                    keyspace: CF_GLOBAL,
                    key: key.to_vec(),
                    kind: CorruptionKind::Inconsistent(format!(
                        "expected position {next}, found {}",
                        event.position
                    )),
                }
                .into());
            }
            batch.put_cf(
                streams,
                codec::stream_key(event.stream_id.as_str(), event.version),
                codec::global_key(event.position),
            );
            next += 1;
            count += 1;
            iter.next();
            if count == REINDEX_BATCH_EVENTS {
                break;
            }
        }
        iter.status()?;
        if count == 0 {
            return Ok(written);
        }
        batch.put(META_REINDEXED_KEY, (next - 1).to_be_bytes());
        db.write_opt(batch, sync)?;
        written += count as u64;
    }
}
