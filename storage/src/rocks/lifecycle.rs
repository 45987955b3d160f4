//! The stream lifecycle in RocksDB: deletions decided by the writer, the
//! erasure of what they remove, retention, and what readers skip meanwhile.
//!
//! A deletion is decided in a batch of its own (so that every event it
//! erases is already in the database), writes the stream's lifecycle record
//! (`streammeta`), range-deletes the index entries it removes, replaces
//! their records in `global` with erased records, and appends a
//! `$stream-deleted` event, all in one WriteBatch. More than
//! [`ERASE_BATCH_EVENTS`] to erase: the rest is recorded as an erasure under
//! way (its progress under an erasure key) and erased between batches;
//! until then readers skip those events ([`Erasing`]).
//!
//! Retention: streams appended to in a category with a max count are
//! trimmed right after their batch; max age is a sweep of the global log
//! from a cursor per category, while the writer is idle, at most every
//! [`RETENTION_SWEEP_INTERVAL`].

use super::batch::{Pending, Tip, write_events};
use super::erasing::{Upkeep, engine, read_meta};
use super::syncer::Decision;
use super::writer::Writer;
use crate::api::{AppendOutcome, StreamWritten};
use crate::codec::{self, StreamMeta};
use crate::error::AppendError;
use crate::keyspaces::{CF_GLOBAL, CF_STREAM_META, CF_STREAMS};
use crate::lifecycle::*;
use eventfold_domain::{Metadata, NewEvent, StreamId, Timestamp};
use foldhash::HashMap;
use rocksdb::WriteBatch;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Writer {
    /// Decides a deletion (alone in its batch).
    pub(super) fn decide_deletion(
        &mut self,
        request: DeleteRequest,
        pending: &mut Pending<'_>,
    ) -> Result<Decision, AppendError> {
        crate::validate::delete_request(&request)?;
        let stream = request.stream;
        let tip = self.current_tip(&stream, pending.versions)?;
        if let Err(mismatch) = request
            .expected
            .check_with_last(tip.version, tip.last_event)
        {
            return Err(AppendError::WrongExpectedVersion {
                stream,
                expected: mismatch.expected,
                actual: mismatch.actual,
            });
        }
        let old = read_meta(&self.db, &self.shared, &stream)?.unwrap_or(StreamMeta {
            first_version: 1,
            version: tip.version,
            deleted_version: 0,
            tombstoned: false,
        });
        let end = tip.version.saturating_add(1);
        let (first_version, kind) = match request.deletion {
            Deletion::TruncateBefore(v) => (v.min(end), DeletionKind::Truncated),
            Deletion::Delete => (end, DeletionKind::Deleted),
            Deletion::Tombstone => (end, DeletionKind::Tombstoned),
        };
        let new = StreamMeta {
            first_version: first_version.max(old.first_version),
            version: tip.version,
            deleted_version: if kind == DeletionKind::Truncated {
                old.deleted_version
            } else {
                tip.version
            },
            tombstoned: old.tombstoned || kind == DeletionKind::Tombstoned,
        };
        let written = StreamWritten {
            stream: stream.clone(),
            first_version: new.first_version,
            last_version: tip.version,
        };
        if new.first_version == old.first_version
            && new.tombstoned == old.tombstoned
            && new.deleted_version == old.deleted_version
        {
            return Ok(Decision::Done(Ok(AppendOutcome {
                streams: vec![written],
                first_position: 0,
                last_position: 0,
                deduplicated: true,
            })));
        }
        let deletion = StreamDeletion {
            stream: stream.to_string(),
            kind,
            first_version: new.first_version,
            version: tip.version,
        };
        let payload =
            crate::payload::encode(&deletion).map_err(|e| AppendError::Io(e.to_string()))?;
        self.remove_events(pending.batch, &stream, old, new)?;
        if kind != DeletionKind::Truncated {
            // A snapshot holds the removed events.
            let snapshots = self.shared.cf(&self.db, crate::keyspaces::CF_SNAPSHOTS)?;
            pending
                .batch
                .delete_cf(snapshots, stream.as_str().as_bytes());
        }
        let position = self.append_deletion_event(payload, pending)?;
        let last_event = (new.first_version <= tip.version)
            .then_some(tip.last_event)
            .flatten();
        pending.versions.insert(
            stream,
            Tip {
                version: tip.version,
                last_event,
                tombstoned: new.tombstoned,
            },
        );
        Ok(Decision::Write(AppendOutcome {
            streams: vec![written],
            first_position: position,
            last_position: position,
            deduplicated: false,
        }))
    }

    /// Appends the `$stream-deleted` event to the batch; its position.
    fn append_deletion_event(
        &mut self,
        payload: Vec<u8>,
        pending: &mut Pending<'_>,
    ) -> Result<u64, AppendError> {
        let stream = StreamId::new(DELETIONS_STREAM).map_err(|e| AppendError::Io(e.to_string()))?;
        let tip = self.current_tip(&stream, pending.versions)?;
        let event = NewEvent::new(STREAM_DELETED_EVENT, 1, payload, Metadata::new());
        let record = codec::encode_event(&stream, &event);
        let (position, recorded_at) = (*pending.position, pending.recorded_at);
        write_events(
            pending,
            &stream,
            tip.version,
            vec![record],
            vec![event],
            recorded_at,
        );
        Ok(position)
    }

    /// Writes `new` as the stream's lifecycle record and erases (in
    /// `batch`) the events from `old.first_version` (or where an erasure
    /// under way stands) to `new.first_version`, at most
    /// [`ERASE_BATCH_EVENTS`]; the rest becomes an erasure under way.
    /// Returns the number of events erased.
    fn remove_events(
        &mut self,
        batch: &mut WriteBatch,
        stream: &StreamId,
        old: StreamMeta,
        new: StreamMeta,
    ) -> Result<u64, AppendError> {
        let meta = self.shared.cf(&self.db, CF_STREAM_META)?;
        batch.put_cf(
            meta,
            stream.as_str().as_bytes(),
            codec::encode_stream_meta(&new),
        );
        if self.upkeep.erasures.contains_key(stream) {
            // Erased between batches, towards the new first version.
            self.shared.erasing.set(stream, new.first_version);
            return Ok(0);
        }
        let (erased_to, count) =
            self.erase_range(batch, stream, old.first_version, new.first_version)?;
        if erased_to < new.first_version {
            batch.put_cf(
                meta,
                codec::erasure_key(stream.as_str()),
                codec::encode_meta_u64(erased_to),
            );
            self.upkeep.erasures.insert(stream.clone(), erased_to);
            // Readers skip the rest from now on (before the batch is
            // durable: hiding events about to be removed is safe).
            self.shared.erasing.set(stream, new.first_version);
        }
        Ok(count)
    }

    /// Erases, in `batch`, the events of `stream` from version `from` up to
    /// (not including) `to`, at most [`ERASE_BATCH_EVENTS`]: their records
    /// become erased records and their index entries are range-deleted.
    /// Returns the version erased up to and how many were erased.
    fn erase_range(
        &self,
        batch: &mut WriteBatch,
        stream: &StreamId,
        from: u64,
        to: u64,
    ) -> Result<(u64, u64), AppendError> {
        if from >= to {
            return Ok((to, 0));
        }
        let global = self.shared.cf(&self.db, CF_GLOBAL)?;
        let streams = self.shared.cf(&self.db, CF_STREAMS)?;
        let mut iter = self.db.raw_iterator_cf_opt(
            streams,
            super::options::stream_read_options(stream.as_str(), false),
        );
        iter.seek(codec::stream_key(stream.as_str(), from));
        let mut erased_to = to;
        let mut count = 0u64;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let Some((_, version)) = codec::parse_stream_key(key) else {
                break;
            };
            if version >= to {
                break;
            }
            if count == ERASE_BATCH_EVENTS as u64 {
                erased_to = version;
                break;
            }
            let position = codec::decode_stream_index(key, value)?;
            batch.put_cf(
                global,
                codec::global_key(position),
                codec::encode_erased(position),
            );
            count += 1;
            iter.next();
        }
        iter.status().map_err(engine)?;
        batch.delete_range_cf(
            streams,
            codec::stream_key(stream.as_str(), from),
            codec::stream_key(stream.as_str(), erased_to),
        );
        Ok((erased_to, count))
    }

    /// Writes an upkeep batch (nothing to answer; a later sync covers it,
    /// and a crash before only leaves the work to do again).
    fn write_upkeep(&self, batch: WriteBatch) -> Result<(), AppendError> {
        let mut options = super::options::write_options(self.options.durability);
        options.set_sync(false);
        self.db.write_opt(batch, &options).map_err(|e| {
            self.shared.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %e.as_ref(), "a lifecycle write failed; the store is poisoned");
            engine(e)
        })
    }

    /// After a batch: trims the streams it appended to down to their
    /// category's max count.
    pub(super) fn after_batch(&mut self) {
        if self.upkeep.trim.is_empty() || self.shared.poisoned.load(Ordering::SeqCst) {
            return;
        }
        if let Err(error) = self.trim() {
            tracing::error!(%error, "max-count retention failed");
        }
    }

    fn trim(&mut self) -> Result<u64, AppendError> {
        let streams = std::mem::take(&mut self.upkeep.trim);
        let mut batch = WriteBatch::default();
        let mut erased = 0;
        for stream in streams {
            let Some(max) = self
                .options
                .retention
                .get(stream.category())
                .and_then(|r| r.max_count)
            else {
                continue;
            };
            let tip = self.current_tip(&stream, &HashMap::default())?;
            let first = tip.version.saturating_sub(max).saturating_add(1);
            erased += self.truncate_between_batches(&mut batch, &stream, tip, first)?;
        }
        if erased > 0 {
            self.write_upkeep(batch)?;
        }
        Ok(erased)
    }

    /// Removes the events of `stream` before `first` (retention: no
    /// deletion event); the number erased now.
    fn truncate_between_batches(
        &mut self,
        batch: &mut WriteBatch,
        stream: &StreamId,
        tip: Tip,
        first: u64,
    ) -> Result<u64, AppendError> {
        let old = read_meta(&self.db, &self.shared, stream)?.unwrap_or(StreamMeta {
            first_version: 1,
            version: tip.version,
            deleted_version: 0,
            tombstoned: tip.tombstoned,
        });
        let new = StreamMeta {
            first_version: first.min(tip.version.saturating_add(1)),
            version: tip.version,
            ..old
        };
        if new.first_version <= old.first_version {
            return Ok(0);
        }
        self.remove_events(batch, stream, old, new)
    }

    /// While idle: one chunk of an erasure under way, or a max-age sweep
    /// pass when one is due.
    pub(super) fn idle_upkeep(&mut self) {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            self.upkeep = Upkeep::default();
            return;
        }
        let done = if self.upkeep.erasures.is_empty() {
            self.sweep_pass().map(|_| ())
        } else {
            self.continue_erasure().map(|_| ())
        };
        if let Err(error) = done {
            tracing::error!(%error, "lifecycle upkeep failed");
        }
    }

    /// Erases the next chunk of one erasure under way.
    fn continue_erasure(&mut self) -> Result<u64, AppendError> {
        let Some((stream, from)) = self
            .upkeep
            .erasures
            .iter()
            .next()
            .map(|(s, f)| (s.clone(), *f))
        else {
            return Ok(0);
        };
        let Some(target) = self.shared.erasing.first_version(&stream) else {
            self.upkeep.erasures.remove(&stream);
            return Ok(0);
        };
        let meta = self.shared.cf(&self.db, CF_STREAM_META)?;
        let mut batch = WriteBatch::default();
        let (erased_to, count) = self.erase_range(&mut batch, &stream, from, target)?;
        let key = codec::erasure_key(stream.as_str());
        let finished = erased_to >= target;
        if finished {
            batch.delete_cf(meta, key);
        } else {
            batch.put_cf(meta, key, codec::encode_meta_u64(erased_to));
        }
        self.write_upkeep(batch)?;
        if finished {
            self.upkeep.erasures.remove(&stream);
            self.shared.erasing.remove(&stream);
        } else {
            self.upkeep.erasures.insert(stream, erased_to);
        }
        Ok(count)
    }

    /// One max-age pass, if one is due: per category with a max age, the
    /// durable events past its cursor older than the age, at most
    /// [`RETENTION_SWEEP_EVENTS_MAX`] examined. The number erased now.
    fn sweep_pass(&mut self) -> Result<u64, AppendError> {
        let Some(due) = self.upkeep.next_sweep else {
            return Ok(0);
        };
        if due > Instant::now() {
            return Ok(0);
        }
        self.upkeep.next_sweep = Some(Instant::now() + RETENTION_SWEEP_INTERVAL);
        let ages: Vec<(String, Duration)> = self
            .options
            .retention
            .iter()
            .filter_map(|(c, r)| Some((c.clone(), r.max_age?)))
            .collect();
        let now = Timestamp::now().as_micros();
        let mut erased = 0;
        for (category, age) in ages {
            let cutoff = now.saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX));
            erased += self.sweep_category(&category, cutoff)?;
        }
        Ok(erased)
    }

    fn sweep_category(&mut self, category: &str, cutoff: u64) -> Result<u64, AppendError> {
        let head = self.shared.head.load(Ordering::Acquire);
        let cursor = self.upkeep.cursors.get(category).copied().unwrap_or(0);
        if cursor >= head {
            return Ok(0);
        }
        let global = self.shared.cf(&self.db, CF_GLOBAL)?;
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(codec::global_key(head.saturating_add(1)).to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(global, read);
        iter.seek(codec::global_key(cursor.saturating_add(1)));
        let mut expired: Vec<(StreamId, u64)> = Vec::new();
        let mut passed = cursor;
        let mut examined = 0;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if examined == RETENTION_SWEEP_EVENTS_MAX {
                break;
            }
            examined += 1;
            let position = codec::parse_u64_key(key).unwrap_or(passed + 1);
            if let Some(event) = codec::decode_global(key, value)? {
                if event.recorded_at.as_micros() >= cutoff {
                    break;
                }
                if event.category() == category {
                    match expired.iter_mut().find(|(s, _)| *s == event.stream_id) {
                        Some((_, first)) => *first = event.version + 1,
                        None => expired.push((event.stream_id, event.version + 1)),
                    }
                }
            }
            passed = position;
            iter.next();
        }
        iter.status().map_err(engine)?;
        drop(iter);
        if passed == cursor {
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        let mut erased = 0;
        for (stream, first) in expired {
            let tip = self.current_tip(&stream, &HashMap::default())?;
            erased += self.truncate_between_batches(&mut batch, &stream, tip, first)?;
        }
        let meta = self.shared.cf(&self.db, CF_STREAM_META)?;
        batch.put_cf(
            meta,
            codec::retention_cursor_key(category),
            codec::encode_meta_u64(passed),
        );
        self.write_upkeep(batch)?;
        self.upkeep.cursors.insert(category.to_owned(), passed);
        Ok(erased)
    }

    /// [`EventStore::enforce_retention`](crate::EventStore::enforce_retention):
    /// max-age passes until none finds more, and every erasure under way
    /// finished.
    pub(super) fn sweep_now(&mut self) -> Result<u64, AppendError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(AppendError::Poisoned);
        }
        let mut erased = 0;
        loop {
            if self.upkeep.next_sweep.is_some() {
                self.upkeep.next_sweep = Some(Instant::now());
            }
            let before = self.upkeep.cursors.clone();
            let now = self.sweep_pass()?;
            erased += now;
            while !self.upkeep.erasures.is_empty() {
                erased += self.continue_erasure()?;
            }
            if now == 0 && before == self.upkeep.cursors {
                return Ok(erased);
            }
        }
    }
}
