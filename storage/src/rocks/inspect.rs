//! What an inspector reads: a store opened beside the process that holds it
//! (RocksDB's secondary mode), the streams in the index, the checkpoints,
//! and how much each keyspace holds.

use super::options::db_options;
use super::reads::engine;
use super::{Inner, RocksStore, Shared};
use crate::codec;
use crate::error::{Corruption, CorruptionKind, OpenError, ReadError};
use crate::keyspaces::*;
use crate::options::StoreOptions;
use eventfold_domain::{StreamId, Timestamp, category_of};
use rocksdb::{DB, ReadOptions};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

/// Most checkpoints [`RocksStore::checkpoints`] returns in one call.
pub const CHECKPOINTS_LIST_MAX: usize = 100_000;

/// One stream as the index holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream.
    pub stream: StreamId,
    /// Its version: the last it was written at (kept through deletions).
    pub version: u64,
    /// The first version a read returns (`version + 1`: it reads empty).
    pub first_version: u64,
    /// The position of its first readable event, if it has one.
    pub first_position: Option<u64>,
    /// The position of its last event, if it still has one.
    pub last_position: Option<u64>,
    /// When its last event was recorded, if it still has one.
    pub last_recorded_at: Option<Timestamp>,
    /// It can never be written again.
    pub tombstoned: bool,
}

/// How much one keyspace holds, by RocksDB's estimates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyspaceStats {
    /// The keyspace (column family).
    pub keyspace: &'static str,
    /// Keys, estimated (deletions not yet compacted away are counted).
    pub estimated_keys: u64,
    /// Bytes in table files.
    pub table_bytes: u64,
    /// Bytes in memtables.
    pub memtable_bytes: u64,
}

impl RocksStore {
    /// Opens the store in `path` read-only beside the process that holds it
    /// (RocksDB's secondary mode; its own files go to a temporary
    /// directory): it sees what was written up to now, and more after each
    /// [`RocksStore::refresh`]. Nothing of the store is changed: appends
    /// are refused with `AppendError::ReadOnly`, other writes with
    /// `WriteError::ReadOnly`. Works whether or not another process holds
    /// the store.
    pub fn open_secondary(
        path: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        if !path.join("CURRENT").is_file() {
            return Err(OpenError::Missing(path));
        }
        let (mut db_options, families) = db_options(&options)?;
        db_options.create_if_missing(false);
        db_options.create_missing_column_families(false);
        // Secondary mode keeps every table file open.
        db_options.set_max_open_files(-1);
        let secondary = tempfile::Builder::new()
            .prefix("eventfold-secondary-")
            .tempdir()?;
        let db = DB::open_cf_descriptors_as_secondary(
            &db_options,
            &path,
            &secondary.path().to_path_buf(),
            families,
        )
        .map_err(|e| super::recovery::open_error(&path, e))?;
        // A directory eventfold never opened is not an eventfold store.
        if !check_format(&db)? {
            return Err(OpenError::NoFormatMarker(path));
        }
        let (head, _) = Self::find_head(&db)?;
        let shared = Arc::new(Shared::new(head, true));
        super::erasing::load_hidden(&db, &shared).map_err(|e| match read_error(e) {
            ReadError::Corrupt(c) => OpenError::Corrupt(c),
            other => OpenError::Engine(other.to_string()),
        })?;
        // No writer: its queue has no receiver.
        let (sender, _) = sync_channel(1);
        Ok(Self {
            inner: Arc::new(Inner {
                subject_keys: std::sync::Mutex::new(()),
                db: Arc::new(db),
                shared,
                options: Arc::new(options),
                sender,
                threads: Mutex::new(Vec::new()),
                path,
                _secondary: Some(secondary),
            }),
        })
    }

    /// Whether this handle only reads ([`RocksStore::open_secondary`]).
    pub fn is_read_only(&self) -> bool {
        self.inner.shared.read_only
    }

    /// A read-only handle catches up with what the process holding the
    /// store wrote since; returns the head. On a writable store it only
    /// returns the head.
    pub fn refresh(&self) -> Result<u64, ReadError> {
        if !self.inner.shared.read_only {
            return Ok(self.inner.shared.head.load(Ordering::Acquire));
        }
        self.inner.db.try_catch_up_with_primary().map_err(engine)?;
        let (head, _) = Self::find_head(&self.inner.db).map_err(|e| match e {
            OpenError::Corrupt(c) => ReadError::Corrupt(c),
            other => ReadError::Io(other.to_string()),
        })?;
        super::erasing::load_hidden(&self.inner.db, &self.inner.shared).map_err(read_error)?;
        self.inner.shared.head.store(head, Ordering::Release);
        Ok(head)
    }

    /// The streams in the index, in index order (by the stream id's tag,
    /// not alphabetically), those of `category` only when given, at most
    /// `limit`. A stream whose every event was deleted is listed with no
    /// positions. Reads two index entries and one record per stream.
    pub fn list_streams(
        &self,
        category: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamSummary>, ReadError> {
        let db = &self.inner.db;
        let mut total_order = ReadOptions::default();
        total_order.set_total_order_seek(true);
        let mut iter = db.raw_iterator_cf_opt(self.cf(CF_STREAMS)?, total_order);
        iter.seek_to_first();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while out.len() < limit {
            let Some(key) = iter.key() else { break };
            let (stream, _) = codec::parse_stream_key(key).ok_or_else(|| Corruption {
                keyspace: CF_STREAMS,
                key: key.to_vec(),
                kind: CorruptionKind::MalformedKey,
            })?;
            let stream = stream.to_owned();
            let (_, upper) = codec::stream_key_bounds(&stream);
            if category.is_none_or(|c| category_of(&stream) == c) {
                let id = StreamId::new(stream.clone()).map_err(|_| Corruption {
                    keyspace: CF_STREAMS,
                    key: key.to_vec(),
                    kind: CorruptionKind::MalformedKey,
                })?;
                out.push(self.summary(id)?);
                seen.insert(stream);
            }
            iter.seek(&upper);
        }
        iter.status().map_err(engine)?;
        // Streams with a lifecycle record and no index entry left.
        let meta = self.cf(CF_STREAM_META)?;
        for item in db.iterator_cf(meta, rocksdb::IteratorMode::Start) {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(engine)?;
            if key.first() == Some(&0) {
                continue;
            }
            let Ok(name) = std::str::from_utf8(&key) else {
                continue;
            };
            if seen.contains(name) || category.is_some_and(|c| category_of(name) != c) {
                continue;
            }
            if let Ok(id) = StreamId::new(name) {
                out.push(self.summary(id)?);
            }
        }
        Ok(out)
    }

    fn summary(&self, stream: StreamId) -> Result<StreamSummary, ReadError> {
        use crate::api::{Direction, EventStore};
        let info = self.stream_info(&stream)?;
        let first = self.read_stream(&stream, info.first_version, Direction::Forward, 1)?;
        let last = self.read_stream(&stream, u64::MAX, Direction::Backward, 1)?;
        Ok(StreamSummary {
            version: info.version,
            first_version: info.first_version,
            first_position: first.first().map(|e| e.position),
            last_position: last.first().map(|e| e.position),
            last_recorded_at: last.first().map(|e| e.recorded_at),
            tombstoned: info.tombstoned,
            stream,
        })
    }

    /// Every checkpoint, by name (at most [`CHECKPOINTS_LIST_MAX`]).
    pub fn checkpoints(&self) -> Result<Vec<(String, u64)>, ReadError> {
        let cf = self.cf(CF_CHECKPOINTS)?;
        let mut out = Vec::new();
        for item in self.inner.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            if out.len() == CHECKPOINTS_LIST_MAX {
                break;
            }
            let (key, value) = item.map_err(engine)?;
            let position = codec::decode_checkpoint(&key, &value)?;
            out.push((String::from_utf8_lossy(&key).into_owned(), position));
        }
        Ok(out)
    }

    /// How many keys read model `model` holds that start with `prefix`
    /// and, when `before` is given, sort before it (`before` starts with
    /// `prefix`). Keys only: no value is copied.
    pub fn read_model_count(
        &self,
        model: &str,
        prefix: &[u8],
        before: Option<&[u8]>,
    ) -> Result<u64, ReadError> {
        let start = codec::read_model_key(model, prefix);
        let mut options = ReadOptions::default();
        if let Some(before) = before {
            options.set_iterate_upper_bound(codec::read_model_key(model, before));
        }
        let mut iter = self
            .inner
            .db
            .raw_iterator_cf_opt(self.cf(CF_READ_MODELS)?, options);
        iter.seek(&start);
        let mut count = 0u64;
        while let Some(key) = iter.key() {
            if !key.starts_with(&start) {
                break;
            }
            count += 1;
            iter.next();
        }
        iter.status().map_err(engine)?;
        Ok(count)
    }

    /// How much each keyspace holds (RocksDB's estimates).
    pub fn keyspace_stats(&self) -> Result<Vec<KeyspaceStats>, ReadError> {
        let db = &self.inner.db;
        let property = |cf, name: &str| -> Result<u64, ReadError> {
            Ok(db
                .property_int_value_cf(cf, name)
                .map_err(engine)?
                .unwrap_or(0))
        };
        std::iter::once("default")
            .chain(KEYSPACES)
            .map(|keyspace| {
                let cf = db
                    .cf_handle(keyspace)
                    .ok_or_else(|| ReadError::Io(format!("column family {keyspace} is missing")))?;
                Ok(KeyspaceStats {
                    keyspace,
                    estimated_keys: property(cf, "rocksdb.estimate-num-keys")?,
                    table_bytes: property(cf, "rocksdb.total-sst-files-size")?,
                    memtable_bytes: property(cf, "rocksdb.cur-size-all-mem-tables")?,
                })
            })
            .collect()
    }
}

/// Whether the store has this version's format marker (`false`: it has
/// none); a store of another format is refused.
pub(super) fn check_format(db: &DB) -> Result<bool, OpenError> {
    match db.get(codec::META_FORMAT_KEY)? {
        Some(found) if found == codec::STORE_FORMAT.as_bytes() => Ok(true),
        Some(found) => {
            let found = String::from_utf8_lossy(&found).into_owned();
            Err(
                if super::upgrade::UPGRADABLE_FORMATS.contains(&found.as_str()) {
                    OpenError::NeedsUpgrade {
                        found,
                        supported: codec::STORE_FORMAT,
                    }
                } else {
                    OpenError::UnsupportedFormat {
                        found,
                        supported: codec::STORE_FORMAT,
                    }
                },
            )
        }
        None => Ok(false),
    }
}

/// The errors of reading the erasures under way (engine errors and
/// corruption, which the writer's path reports as `AppendError`) as a
/// read's.
fn read_error(error: crate::error::AppendError) -> ReadError {
    match error {
        crate::error::AppendError::Corrupt(c) => ReadError::Corrupt(c),
        other => ReadError::Io(other.to_string()),
    }
}
