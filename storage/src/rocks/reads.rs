//! Reads: a stream through its index (the dense scan of the global log or
//! a batched multi-get), command outcomes, from memory only when asked; the
//! index helpers the writer shares; engine errors made typed.

use super::RocksStore;
use super::options::*;
use crate::api::*;
use crate::codec;
use crate::error::{Corruption, CorruptionKind, ReadError};
use crate::keyspaces::*;
use eventfold_domain::{CommandId, RecordedEvent, StreamId};
use rocksdb::{ColumnFamily, DB, IteratorMode};

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

/// A read's engine error: damage to a file (a table file's checksum) is
/// [`ReadError::Damaged`], naming the file; anything else is `Io`.
pub(crate) fn engine(error: rocksdb::Error) -> ReadError {
    if error.kind() == rocksdb::ErrorKind::Corruption {
        ReadError::Damaged(super::recovery::damage_from(error.into_string()))
    } else {
        ReadError::Io(error.into_string())
    }
}

impl RocksStore {
    pub(super) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, ReadError> {
        self.inner
            .db
            .cf_handle(name)
            .ok_or_else(|| ReadError::Io(format!("column family {name} is missing")))
    }

    /// `command_outcome`, from memory only when `cache_only` (then
    /// `NeedsIo` where the disk would be read).
    pub(super) fn command_outcome_tier(
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
    pub(super) fn read_stream_tier(
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
        // Events removed but not yet erased are skipped.
        let first = self.inner.shared.erasing.first_version(stream).unwrap_or(1);
        if direction == Direction::Backward && from < first {
            return Ok(Cached::Ready(Vec::new()));
        }
        let from = match direction {
            Direction::Forward => from.max(first),
            Direction::Backward => from,
        };
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
            if direction == Direction::Backward
                && codec::parse_stream_key(key).is_some_and(|(_, v)| v < first)
            {
                break;
            }
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
    pub(super) fn load_indexed(
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
    pub(super) fn lookup_indexed(
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
            events.extend(indexed_event(
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
    pub(super) fn scan_indexed(
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
                events.extend(indexed_event(index_key, position, key, value)?);
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
pub(crate) const DENSE_SCAN_RECORDS_PER_WANTED_MAX: u64 = 4;

/// Whether `count` records between positions `first` and `last` (ascending)
/// are dense enough for [`RocksStore::scan_indexed`]. One record is looked
/// up.
pub(crate) fn dense(first: u64, last: u64, count: usize) -> bool {
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
/// event the entry names. `None` when it was erased after the index entry
/// was read (a deletion between the two reads).
pub(crate) fn indexed_event(
    index_key: Vec<u8>,
    position: u64,
    global_key: &[u8],
    value: &[u8],
) -> Result<Option<RecordedEvent>, ReadError> {
    let Some(event) = codec::decode_global(global_key, value)? else {
        return Ok(None);
    };
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
    Ok(Some(event))
}
