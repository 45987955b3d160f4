//! `verify`: walk every keyspace and report each fault with its key.

use super::RocksStore;
use super::reads::*;
use crate::api::*;
use crate::codec;
use crate::error::{Corruption, CorruptionKind, ReadError};
use crate::keyspaces::*;
use eventfold_domain::RecordedEvent;
use rocksdb::IteratorMode;

/// Events walked between two calls of a walk's progress callback.
pub const VERIFY_PROGRESS_EVENTS: u64 = 8_192;

struct Walk<'a> {
    store: &'a RocksStore,
    report: VerifyReport,
    progress: &'a dyn Fn(u64),
}

impl Walk<'_> {
    fn fault(&mut self, keyspace: &'static str, key: &[u8], kind: CorruptionKind) {
        self.report.faults.push(Fault {
            corruption: Corruption {
                keyspace,
                key: key.to_vec(),
                kind,
            },
        });
    }

    fn corrupt(&mut self, corruption: Corruption) {
        self.report.faults.push(Fault { corruption });
    }

    /// The record at `position`, if it is present and sound.
    /// The record at `position`: `None` when there is none, `Ok(None)`
    /// when it is erased.
    fn record_at(
        &self,
        position: u64,
    ) -> Result<Option<Result<Option<RecordedEvent>, Corruption>>, ReadError> {
        let key = codec::global_key(position);
        let value = self
            .store
            .inner
            .db
            .get_pinned_cf(self.store.cf(CF_GLOBAL)?, key)
            .map_err(engine)?;
        Ok(value.map(|v| codec::decode_global(&key, &v)))
    }

    /// Global log: gapless from 1 to the head; each record sound, at its own
    /// position, and indexed by its stream.
    fn global(&mut self, head: u64) -> Result<(), ReadError> {
        let db = &self.store.inner.db;
        let streams = self.store.cf(CF_STREAMS)?;
        let mut expected = 1u64;
        for item in db.iterator_cf(self.store.cf(CF_GLOBAL)?, IteratorMode::Start) {
            let (key, value) = item.map_err(engine)?;
            let Some(position) = codec::parse_u64_key(&key) else {
                self.fault(CF_GLOBAL, &key, CorruptionKind::MalformedKey);
                continue;
            };
            if position > head {
                break; // written by a batch not yet acknowledged
            }
            if position != expected {
                self.fault(
                    CF_GLOBAL,
                    &codec::global_key(expected),
                    CorruptionKind::Inconsistent(format!(
                        "positions {expected} to {} are missing",
                        position - 1
                    )),
                );
            }
            expected = position + 1;
            self.report.events += 1;
            if self.report.events.is_multiple_of(VERIFY_PROGRESS_EVENTS) {
                (self.progress)(self.report.events);
            }
            let event = match codec::decode_global(&key, &value) {
                Ok(Some(event)) => event,
                // Erased by a deletion: nothing indexes it.
                Ok(None) => continue,
                Err(corruption) => {
                    self.corrupt(corruption);
                    continue;
                }
            };
            // Removed, its erasure under way: its index entry may be gone.
            if self.store.inner.shared.erasing.hides(&event) {
                continue;
            }
            if event.position != position {
                self.fault(
                    CF_GLOBAL,
                    &key,
                    CorruptionKind::Inconsistent(format!(
                        "record says position {}",
                        event.position
                    )),
                );
            }
            let index_key = codec::stream_key(event.stream_id.as_str(), event.version);
            match db.get_pinned_cf(streams, &index_key).map_err(engine)? {
                Some(v) if codec::parse_u64_key(&v) == Some(position) => {}
                Some(_) => self.fault(
                    CF_STREAMS,
                    &index_key,
                    CorruptionKind::Inconsistent(format!("does not point at position {position}")),
                ),
                None => self.fault(
                    CF_STREAMS,
                    &index_key,
                    CorruptionKind::Inconsistent(format!(
                        "missing; position {position} holds this event"
                    )),
                ),
            }
        }
        if expected <= head {
            self.fault(
                CF_GLOBAL,
                &codec::global_key(expected),
                CorruptionKind::Inconsistent(format!("positions {expected} to {head} are missing")),
            );
        }
        Ok(())
    }

    /// Stream index: versions contiguous from 1 per stream, each pointing at
    /// a record of that stream and version.
    fn streams(&mut self, head: u64) -> Result<(), ReadError> {
        let db = &self.store.inner.db;
        let mut current: Option<(String, u64)> = None; // stream, last version
        // The whole keyspace in key order, across stream prefixes.
        let mut read_options = rocksdb::ReadOptions::default();
        read_options.set_total_order_seek(true);
        for item in db.iterator_cf_opt(
            self.store.cf(CF_STREAMS)?,
            read_options,
            IteratorMode::Start,
        ) {
            let (key, value) = item.map_err(engine)?;
            let Some((stream, version)) = codec::parse_stream_key(&key) else {
                self.fault(CF_STREAMS, &key, CorruptionKind::MalformedKey);
                continue;
            };
            let position = match codec::decode_stream_index(&key, &value) {
                Ok(p) => p,
                Err(c) => {
                    self.corrupt(c);
                    continue;
                }
            };
            if position > head {
                continue;
            }
            let previous = match &current {
                Some((s, v)) if s == stream => *v,
                _ => {
                    self.report.streams += 1;
                    0
                }
            };
            // A truncated stream starts where its lifecycle record says (or
            // below it, while its erasure is under way).
            let truncated = previous == 0
                && version > 1
                && self
                    .store
                    .stream_meta(&eventfold_domain::StreamId::new(stream).map_err(|e| {
                        ReadError::Io(format!("a stream key holds an invalid id: {e}"))
                    })?)?
                    .is_some_and(|m| version <= m.first_version);
            if version != previous + 1 && !truncated {
                self.fault(
                    CF_STREAMS,
                    &key,
                    CorruptionKind::Inconsistent(format!(
                        "version {version} follows version {previous}"
                    )),
                );
            }
            current = Some((stream.to_owned(), version));
            match self.record_at(position)? {
                Some(Ok(Some(event)))
                    if event.stream_id.as_str() == stream && event.version == version => {}
                Some(Ok(None)) => self.fault(
                    CF_STREAMS,
                    &key,
                    CorruptionKind::Inconsistent(format!(
                        "points at position {position}, which is erased"
                    )),
                ),
                Some(Ok(Some(event))) => self.fault(
                    CF_STREAMS,
                    &key,
                    CorruptionKind::Inconsistent(format!(
                        "points at position {position}, which holds {}@{}",
                        event.stream_id, event.version
                    )),
                ),
                // The global walk reports the corrupt record itself.
                Some(Err(_)) => {}
                None => self.corrupt(super::reads::missing_position(&key, position)),
            }
        }
        Ok(())
    }

    /// Every checksummed keyspace besides the log.
    fn values(&mut self) -> Result<(), ReadError> {
        let db = &self.store.inner.db;
        for item in db.iterator_cf(self.store.cf(CF_SNAPSHOTS)?, IteratorMode::Start) {
            let (key, value) = item.map_err(engine)?;
            if let Err(c) = codec::decode_snapshot(&key, &value) {
                self.corrupt(c);
            }
        }
        for item in db.iterator_cf(self.store.cf(CF_STREAM_META)?, IteratorMode::Start) {
            let (key, value) = item.map_err(engine)?;
            let decoded = if codec::is_stream_meta_key(&key) {
                codec::decode_stream_meta(&key, &value).map(|_| ())
            } else {
                codec::decode_meta_u64(&key, &value).map(|_| ())
            };
            if let Err(c) = decoded {
                self.corrupt(c);
            }
        }
        for item in db.iterator_cf(self.store.cf(CF_SUBJECT_KEYS)?, IteratorMode::Start) {
            let (key, value) = item.map_err(engine)?;
            if let Err(c) = crate::subjects::decode(&key, &value) {
                self.corrupt(c);
            }
        }
        for item in db.iterator_cf(self.store.cf(CF_CHECKPOINTS)?, IteratorMode::Start) {
            let (key, value) = item.map_err(engine)?;
            if let Err(c) = codec::decode_checkpoint(&key, &value) {
                self.corrupt(c);
            }
        }
        for item in db.iterator_cf(self.store.cf(CF_IDEMPOTENCY)?, IteratorMode::Start) {
            let (key, value) = item.map_err(engine)?;
            if key.len() != 16 {
                self.fault(CF_IDEMPOTENCY, &key, CorruptionKind::MalformedKey);
            }
            if let Err(c) = codec::decode_outcome(&key, &value) {
                self.corrupt(c);
            }
        }
        for item in db.iterator_cf(self.store.cf(CF_READ_MODELS)?, IteratorMode::Start) {
            let (key, value) = item.map_err(engine)?;
            if let Err(c) = codec::decode_opaque(CF_READ_MODELS, &key, &value) {
                self.corrupt(c);
            }
        }
        Ok(())
    }
}

pub(super) fn run(store: &RocksStore, progress: &dyn Fn(u64)) -> Result<VerifyReport, ReadError> {
    let head = store.head();
    let mut walk = Walk {
        store,
        report: VerifyReport::default(),
        progress,
    };
    walk.global(head)?;
    walk.streams(head)?;
    walk.values()?;
    Ok(walk.report)
}

impl RocksStore {
    /// [`EventStore::verify`], telling `progress` how many events of the
    /// global log it has walked, every [`VERIFY_PROGRESS_EVENTS`] (the walk
    /// then checks the index and the other keyspaces).
    pub fn verify_with_progress(&self, progress: &dyn Fn(u64)) -> Result<VerifyReport, ReadError> {
        run(self, progress)
    }
}
