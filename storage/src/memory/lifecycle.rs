//! Deletions and retention in memory: the same semantics as RocksDB's
//! (`rocks/lifecycle.rs`), applied under the store's one lock.

use super::{MemoryStore, State};
use crate::api::{AppendOutcome, StreamWritten};
use crate::error::AppendError;
use crate::lifecycle::*;
use crate::options::StoreOptions;
use crate::validate;
use eventfold_domain::{Metadata, NewEvent, StreamId, Timestamp};
use std::sync::atomic::Ordering;

/// What the store keeps of a stream that had a deletion.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Meta {
    pub first_version: u64,
    pub deleted_version: u64,
    pub tombstoned: bool,
}

impl State {
    pub(super) fn info(&self, stream: &StreamId) -> StreamInfo {
        let version = self.streams.get(stream).map_or(0, |v| v.len() as u64);
        let meta = self.meta.get(stream).copied().unwrap_or_default();
        StreamInfo {
            version,
            first_version: meta.first_version.max(1),
            tombstoned: meta.tombstoned,
        }
    }

    /// Erases the events of `stream` before `first_version` (at most its
    /// version + 1); the number erased.
    pub(super) fn truncate(&mut self, stream: &StreamId, first_version: u64) -> u64 {
        let info = self.info(stream);
        let first_version = first_version.min(info.version + 1);
        if first_version <= info.first_version {
            return 0;
        }
        if let Some(positions) = self.streams.get(stream) {
            let from = (info.first_version - 1) as usize;
            let to = (first_version - 1) as usize;
            self.erased.extend(positions[from..to].iter().copied());
        }
        self.meta.entry(stream.clone()).or_default().first_version = first_version;
        first_version - info.first_version
    }

    /// Appends one event at the stream's next version; its position.
    pub(super) fn push(
        &mut self,
        stream: &StreamId,
        event: NewEvent,
        recorded_at: Timestamp,
    ) -> u64 {
        let version = self.streams.get(stream).map_or(0, |v| v.len() as u64) + 1;
        let position = self.log.len() as u64 + 1;
        self.log
            .push(event.recorded(stream.clone(), version, position, recorded_at));
        self.streams
            .entry(stream.clone())
            .or_default()
            .push(position);
        position
    }

    /// Max-count retention of `stream`'s category, after an append to it.
    pub(super) fn keep_max_count(&mut self, options: &StoreOptions, stream: &StreamId) {
        let Some(max) = options
            .retention
            .get(stream.category())
            .and_then(|r| r.max_count)
        else {
            return;
        };
        let version = self.info(stream).version;
        self.truncate(stream, version.saturating_sub(max).saturating_add(1));
    }

    /// One max-age pass over every category that has one: the number of
    /// events erased.
    pub(super) fn sweep_max_age(&mut self, options: &StoreOptions, now: Timestamp) -> u64 {
        let mut erased = 0;
        for (category, retention) in &options.retention {
            let Some(age) = retention.max_age else {
                continue;
            };
            let age = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
            let cutoff = now.as_micros().saturating_sub(age);
            let mut expired: Vec<(StreamId, u64)> = Vec::new();
            let start = self.age_cursors.get(category).copied().unwrap_or(0);
            let mut cursor = start;
            for event in self.log.iter().skip(start) {
                if event.recorded_at.as_micros() >= cutoff {
                    break;
                }
                cursor += 1;
                if event.category() == category {
                    expired.push((event.stream_id.clone(), event.version + 1));
                }
            }
            self.age_cursors.insert(category.clone(), cursor);
            for (stream, first_version) in expired {
                erased += self.truncate(&stream, first_version);
            }
        }
        erased
    }
}

impl MemoryStore {
    pub(super) fn delete_now(&self, request: DeleteRequest) -> Result<AppendOutcome, AppendError> {
        validate::delete_request(&request)?;
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(AppendError::Poisoned);
        }
        let mut state = self.lock();
        let info = state.info(&request.stream);
        let last_event = state
            .streams
            .get(&request.stream)
            .and_then(|v| v.last())
            .filter(|_| info.first_version <= info.version)
            .map(|p| state.log[(p - 1) as usize].metadata.event_id);
        if let Err(mismatch) = request.expected.check_with_last(info.version, last_event) {
            return Err(AppendError::WrongExpectedVersion {
                stream: request.stream.clone(),
                expected: mismatch.expected,
                actual: mismatch.actual,
            });
        }
        let (first_version, kind) = match request.deletion {
            Deletion::TruncateBefore(v) => (v.min(info.version + 1), DeletionKind::Truncated),
            Deletion::Delete => (info.version + 1, DeletionKind::Deleted),
            Deletion::Tombstone => (info.version + 1, DeletionKind::Tombstoned),
        };
        let first_version = first_version.max(info.first_version);
        let tombstone = kind == DeletionKind::Tombstoned;
        let deleted_before = state
            .meta
            .get(&request.stream)
            .map_or(0, |m| m.deleted_version);
        let unchanged = first_version == info.first_version
            && (info.tombstoned || !tombstone)
            && (kind == DeletionKind::Truncated || deleted_before == info.version);
        let written = StreamWritten {
            stream: request.stream.clone(),
            first_version,
            last_version: info.version,
        };
        if unchanged {
            return Ok(AppendOutcome {
                streams: vec![written],
                first_position: 0,
                last_position: 0,
                deduplicated: true,
            });
        }
        if self.inject_fault() {
            return Err(AppendError::Io("injected write failure".into()));
        }
        let payload = crate::payload::encode(&StreamDeletion {
            stream: request.stream.to_string(),
            kind,
            first_version,
            version: info.version,
        })
        .map_err(|e| AppendError::Io(e.to_string()))?;
        let recorded_at = Timestamp::now().max(state.last_recorded_at);
        state.last_recorded_at = recorded_at;
        state.truncate(&request.stream, first_version);
        if tombstone {
            state
                .meta
                .entry(request.stream.clone())
                .or_default()
                .tombstoned = true;
        }
        if kind != DeletionKind::Truncated {
            // A snapshot holds the removed events.
            state.snapshots.remove(&request.stream);
            state
                .meta
                .entry(request.stream.clone())
                .or_default()
                .deleted_version = info.version;
        }
        let deletions =
            StreamId::new(DELETIONS_STREAM).map_err(|e| AppendError::Io(e.to_string()))?;
        let event = NewEvent::new(STREAM_DELETED_EVENT, 1, payload, Metadata::new());
        let position = state.push(&deletions, event, recorded_at);
        state.stats.batches += 1;
        state.stats.events += 1;
        self.notify(&state, position);
        Ok(AppendOutcome {
            streams: vec![written],
            first_position: position,
            last_position: position,
            deduplicated: false,
        })
    }
}
