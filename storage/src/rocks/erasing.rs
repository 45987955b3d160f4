//! What the writer keeps of the stream lifecycle between batches, and what
//! readers consult: the erasures under way ([`Erasing`], which readers skip),
//! the streams to trim and the retention cursors ([`Upkeep`]), and the
//! lifecycle record of a stream. The writer's lifecycle work is in
//! `lifecycle.rs`.

use super::Shared;
use crate::codec::{self, StreamMeta};
use crate::error::AppendError;
use crate::keyspaces::CF_STREAM_META;
use crate::options::StoreOptions;
use eventfold_domain::{RecordedEvent, StreamId};
use foldhash::HashMap;
use rocksdb::DB;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Streams whose erasure is under way, with the first version readers may
/// see: the events below it that are still on disk are skipped.
#[derive(Default)]
pub(crate) struct Erasing {
    streams: RwLock<HashMap<StreamId, u64>>,
    /// Some stream is in `streams`: readers look only when set.
    any: AtomicBool,
}

impl Erasing {
    /// The first version readers see of `stream`, if its erasure is under way.
    pub(crate) fn first_version(&self, stream: &StreamId) -> Option<u64> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.read().get(stream).copied()
    }

    /// The streams whose erasure is under way now (`None`: none), for a
    /// reader to take before it opens its iterator: an erasure that ends
    /// after that is not in the iterator's view, and must still hide.
    pub(crate) fn snapshot(&self) -> Option<HashMap<StreamId, u64>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        Some(self.read().clone())
    }

    /// Whether `event` is removed but not yet erased.
    pub(crate) fn hides(&self, event: &RecordedEvent) -> bool {
        self.first_version(&event.stream_id)
            .is_some_and(|first| event.version < first)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<StreamId, u64>> {
        // Each change is one insert or remove: a poisoned lock is consistent.
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, stream: &StreamId, first_version: u64) {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        streams.insert(stream.clone(), first_version);
        self.any.store(true, Ordering::Release);
    }

    pub(super) fn remove(&self, stream: &StreamId) {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        streams.remove(stream);
        self.any.store(!streams.is_empty(), Ordering::Release);
    }
}

pub(super) fn engine(error: rocksdb::Error) -> AppendError {
    AppendError::Io(error.into_string())
}

/// The lifecycle record of `stream`, if it had a deletion.
pub(crate) fn read_meta(
    db: &DB,
    shared: &Shared,
    stream: &StreamId,
) -> Result<Option<StreamMeta>, AppendError> {
    let cf = shared.cf(db, CF_STREAM_META)?;
    let key = stream.as_str().as_bytes();
    match db.get_pinned_cf(cf, key).map_err(engine)? {
        Some(value) => Ok(Some(codec::decode_stream_meta(key, &value)?)),
        None => Ok(None),
    }
}

/// The streams whose erasure is under way: each with the version below
/// which its events are erased so far, and its lifecycle record.
fn erasures_under_way(
    db: &DB,
    shared: &Shared,
) -> Result<Vec<(StreamId, u64, StreamMeta)>, AppendError> {
    let cf = shared.cf(db, CF_STREAM_META)?;
    let mut out = Vec::new();
    for item in db.prefix_iterator_cf(cf, codec::ERASURE_PREFIX) {
        let (key, value) = item.map_err(engine)?;
        let Some(name) = key.strip_prefix(&codec::ERASURE_PREFIX) else {
            break;
        };
        let erased_before = codec::decode_meta_u64(&key, &value)?;
        let Ok(Ok(stream)) = std::str::from_utf8(name).map(StreamId::new) else {
            continue;
        };
        if let Some(meta) = read_meta(db, shared, &stream)? {
            out.push((stream, erased_before, meta));
        }
    }
    Ok(out)
}

/// Sets what readers skip to the erasures under way in the store now
/// (a read-only handle, at open and after catching up).
pub(super) fn load_hidden(db: &DB, shared: &Shared) -> Result<(), AppendError> {
    let under_way = erasures_under_way(db, shared)?;
    let mut streams = shared
        .erasing
        .streams
        .write()
        .unwrap_or_else(|p| p.into_inner());
    streams.clear();
    for (stream, _, meta) in under_way {
        streams.insert(stream, meta.first_version);
    }
    shared
        .erasing
        .any
        .store(!streams.is_empty(), Ordering::Release);
    Ok(())
}

/// The writer's lifecycle work between batches.
#[derive(Default)]
pub(crate) struct Upkeep {
    /// Streams appended to in the last batch whose category has a max count.
    pub(super) trim: Vec<StreamId>,
    /// Erasures under way: stream → versions below this are erased.
    pub(super) erasures: HashMap<StreamId, u64>,
    /// When the max-age sweep runs next (none: no category has a max age).
    pub(super) next_sweep: Option<Instant>,
    /// Per category with a max age: the last position its sweep passed.
    pub(super) cursors: HashMap<String, u64>,
}

impl Upkeep {
    /// Loads the erasures under way and the retention cursors; a failure
    /// is logged and leaves them to the next open.
    pub(super) fn start(&mut self, db: &DB, shared: &Shared, options: &StoreOptions) {
        if let Err(error) = self.load(db, shared, options) {
            tracing::error!(%error, "the store's erasures under way could not be read");
        }
        if options.retention.values().any(|r| r.max_age.is_some()) {
            self.next_sweep = Some(Instant::now());
        }
    }

    fn load(
        &mut self,
        db: &DB,
        shared: &Shared,
        options: &StoreOptions,
    ) -> Result<(), AppendError> {
        for (stream, erased_before, meta) in erasures_under_way(db, shared)? {
            shared.erasing.set(&stream, meta.first_version);
            self.erasures.insert(stream, erased_before);
        }
        let cf = shared.cf(db, CF_STREAM_META)?;
        for category in options.retention.keys() {
            let key = codec::retention_cursor_key(category);
            if let Some(value) = db.get_pinned_cf(cf, &key).map_err(engine)? {
                self.cursors
                    .insert(category.clone(), codec::decode_meta_u64(&key, &value)?);
            }
        }
        Ok(())
    }

    /// Notes an append to `stream` for max-count retention.
    pub(super) fn appended(&mut self, options: &StoreOptions, stream: &StreamId) {
        if options.retention.is_empty() {
            return;
        }
        let counted = options
            .retention
            .get(stream.category())
            .is_some_and(|r| r.max_count.is_some());
        if counted && !self.trim.contains(stream) {
            self.trim.push(stream.clone());
        }
    }

    /// How long the writer may wait for a message before upkeep is due;
    /// `None` when there is none to do.
    pub(super) fn idle_wait(&self) -> Option<Duration> {
        if !self.erasures.is_empty() {
            return Some(Duration::ZERO);
        }
        self.next_sweep
            .map(|due| due.saturating_duration_since(Instant::now()))
    }
}
