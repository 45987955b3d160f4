//! Reading the global log in position order, decoded (`read_all`) or as
//! stored (`read_all_stored`): one scan for both, which takes each position
//! in turn, steps over erased records, stops after
//! [`READ_ALL_SCAN_EVENTS_MAX`] positions and refuses a missing one. What
//! happens to each record is the caller's.

use super::RocksStore;
use super::reads::engine;
use crate::api::{EventStore, Filter, GlobalSlice};
use crate::codec;
use crate::error::{Corruption, CorruptionKind, ReadError};
use crate::keyspaces::{CF_GLOBAL, READ_ALL_SCAN_EVENTS_MAX};
use crate::stored::{EncodedRecords, StoredEvents, StoredSlice};
use eventfold_domain::StreamId;
use rocksdb::ReadOptions;

/// Most events a read allocates room for before it reads: a chunk of a
/// catch-up fills its vector without growing it, a huge `max_count` does
/// not reserve memory it may never use.
const READ_ALL_PREALLOC_EVENTS: usize = 4096;

fn inconsistent(key: &[u8], what: String) -> ReadError {
    Corruption {
        keyspace: CF_GLOBAL,
        key: key.to_vec(),
        kind: CorruptionKind::Inconsistent(what),
    }
    .into()
}

impl RocksStore {
    /// Hands each record of positions `from..=head` that is not erased to
    /// `take` with its position and key, until `take` has said yes
    /// `max_count` times or the scan's bound is reached; where to read on.
    fn scan_global(
        &self,
        from: u64,
        head: u64,
        max_count: usize,
        mut take: impl FnMut(u64, &[u8], &[u8]) -> Result<bool, ReadError>,
    ) -> Result<u64, ReadError> {
        let mut next = from;
        if max_count == 0 || from > head {
            return Ok(next);
        }
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(codec::global_key(head + 1).to_vec());
        // A raw iterator: the records are read from RocksDB's own buffers,
        // without a copy of each key and value.
        let mut iter = self
            .inner
            .db
            .raw_iterator_cf_opt(self.cf(CF_GLOBAL)?, read_options);
        iter.seek(codec::global_key(from));
        let (mut examined, mut taken) = (0usize, 0usize);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if codec::parse_u64_key(key) != Some(next) {
                return Err(inconsistent(key, format!("expected position {next}")));
            }
            // Erased records are told by their first byte: the position
            // reads as skipped.
            if codec::is_erased(value) {
                codec::decode_global(key, value)?;
            } else if take(next, key, value)? {
                taken += 1;
            }
            next += 1;
            examined += 1;
            if taken == max_count || examined == READ_ALL_SCAN_EVENTS_MAX {
                break;
            }
            iter.next();
        }
        iter.status().map_err(engine)?;
        if next <= head && examined < READ_ALL_SCAN_EVENTS_MAX && taken < max_count {
            // The iterator ended before the head: positions are missing.
            return Err(inconsistent(
                &codec::global_key(next),
                "position missing below the head".into(),
            ));
        }
        Ok(next)
    }

    /// `read_all`: every record decoded where it is read.
    pub(super) fn read_all_decoded(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<GlobalSlice, ReadError> {
        let head = self.head();
        let from = from.max(1);
        let mut events = Vec::with_capacity(max_count.min(READ_ALL_PREALLOC_EVENTS));
        // Taken before the iterator's view of the database: see `snapshot`.
        let erasing = self.inner.shared.erasing.snapshot();
        let mut last_stream: Option<StreamId> = None;
        let next_position = self.scan_global(from, head, max_count, |position, _, value| {
            let event = codec::decode_global_event(position, value, &mut last_stream)?;
            let hidden = erasing.as_ref().is_some_and(|streams| {
                streams
                    .get(&event.stream_id)
                    .is_some_and(|first| event.version < *first)
            });
            let wanted = filter.matches(&event) && !hidden;
            if wanted {
                events.push(event);
            }
            Ok(wanted)
        })?;
        Ok(GlobalSlice {
            events,
            next_position,
            head,
        })
    }

    /// `read_all_stored`: the records copied as they are, filtered by the
    /// stream id and type read from their headers; decoded where the
    /// caller decodes them. While an erasure is under way the events are
    /// decoded here instead (what it hides depends on each event's stream
    /// and version).
    pub(super) fn read_all_encoded(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
        room: Vec<u8>,
    ) -> Result<StoredSlice, ReadError> {
        if self.inner.shared.erasing.snapshot().is_some() {
            return Ok(self.read_all_decoded(from, max_count, filter)?.into());
        }
        let head = self.head();
        let from = from.max(1);
        let mut records = EncodedRecords::with_room(room);
        records
            .positions
            .reserve(max_count.min(READ_ALL_PREALLOC_EVENTS));
        records
            .ends
            .reserve(max_count.min(READ_ALL_PREALLOC_EVENTS));
        let takes_all = filter.is_all();
        let next_position = self.scan_global(from, head, max_count, |position, key, value| {
            if !takes_all
                && let Some((stream, event_type)) = codec::peek_event(value)
                && !filter.matches_parts(stream, event_type)
            {
                // Not decoded later: checked now, so that damaged bytes
                // cannot pass a wanted event off as unwanted.
                codec::frame::checked_body(CF_GLOBAL, key, value)?;
                return Ok(false);
            }
            records.push(position, value);
            Ok(true)
        })?;
        Ok(StoredSlice {
            events: StoredEvents::encoded(records),
            next_position,
            head,
        })
    }
}
