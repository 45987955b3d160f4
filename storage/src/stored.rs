//! Events of the global log as a read found them, for a reader that decodes
//! on another thread than the one that read (a projection's catch-up reads
//! ahead on a thread of its own, and the two threads share the work).
//!
//! [`EventStore::read_all_stored`](crate::EventStore::read_all_stored)
//! answers with [`StoredEvents`]: either decoded already (the default, and
//! what a backend without an encoding answers) or the records as stored,
//! copied into one buffer, which [`StoredEvents::decode`] checks and
//! decodes. The buffer comes back from `decode` empty, for the next read.

use crate::codec;
use crate::error::ReadError;
use eventfold_domain::{RecordedEvent, StreamId};

/// A slice of the global log whose events may still be encoded.
#[derive(Debug)]
pub struct StoredSlice {
    /// The matching events in position order.
    pub events: StoredEvents,
    /// Where to continue reading: one past the last position examined.
    pub next_position: u64,
    /// The committed head when the read started.
    pub head: u64,
}

/// Events read from the global log, decoded or still as stored.
#[derive(Debug)]
pub struct StoredEvents {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Decoded(Vec<RecordedEvent>),
    Encoded(EncodedRecords),
}

/// Event records as stored, one after another in `bytes`: record `i` is
/// at position `positions[i]` and ends at byte `ends[i]`. Not yet checked:
/// their checksums are verified as they are decoded.
#[derive(Debug, Default)]
pub(crate) struct EncodedRecords {
    pub(crate) bytes: Vec<u8>,
    pub(crate) positions: Vec<u64>,
    pub(crate) ends: Vec<usize>,
}

impl EncodedRecords {
    /// An empty set of records reusing `room` (emptied) for their bytes.
    pub(crate) fn with_room(mut room: Vec<u8>) -> Self {
        room.clear();
        Self {
            bytes: room,
            positions: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Adds the record stored at `position`.
    pub(crate) fn push(&mut self, position: u64, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.positions.push(position);
        self.ends.push(self.bytes.len());
    }

    pub(crate) fn len(&self) -> usize {
        self.positions.len()
    }
}

impl StoredEvents {
    /// Events decoded already.
    pub fn decoded(events: Vec<RecordedEvent>) -> Self {
        Self {
            inner: Inner::Decoded(events),
        }
    }

    pub(crate) fn encoded(records: EncodedRecords) -> Self {
        Self {
            inner: Inner::Encoded(records),
        }
    }

    /// How many events there are.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Decoded(events) => events.len(),
            Inner::Encoded(records) => records.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events, decoded here if they were not, and the buffer that held
    /// their records (empty; pass it to the next
    /// [`read_all_stored`](crate::EventStore::read_all_stored) to reuse its
    /// memory). A record whose bytes are damaged is a
    /// [`ReadError::Corrupt`], as the same record read by `read_all` is.
    ///
    /// # Examples
    ///
    /// ```
    /// use eventfold_storage::{EventStore, Filter, MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let slice = store.read_all_stored(1, 100, &Filter::all(), Vec::new())?;
    /// let (events, room) = slice.events.decode()?;
    /// assert!(events.is_empty());
    /// assert!(room.is_empty());
    /// # Ok::<(), eventfold_storage::ReadError>(())
    /// ```
    pub fn decode(self) -> Result<(Vec<RecordedEvent>, Vec<u8>), ReadError> {
        let records = match self.inner {
            Inner::Decoded(events) => return Ok((events, Vec::new())),
            Inner::Encoded(records) => records,
        };
        let mut events = Vec::with_capacity(records.len());
        let mut start = 0;
        let mut last_stream: Option<StreamId> = None;
        for (&position, &end) in records.positions.iter().zip(&records.ends) {
            let value = records.bytes.get(start..end).unwrap_or_default();
            start = end;
            events.push(codec::decode_global_event(
                position,
                value,
                &mut last_stream,
            )?);
        }
        let mut room = records.bytes;
        room.clear();
        Ok((events, room))
    }
}
