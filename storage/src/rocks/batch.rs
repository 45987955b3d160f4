//! One write batch being built by the writer: what its jobs share (the
//! keyspaces, the stream tips and command outcomes decided so far, the next
//! position) and what an append adds to it.

use super::Shared;
use crate::api::AppendOutcome;
use crate::codec;
use crate::error::AppendError;
use crate::keyspaces::{CF_GLOBAL, CF_IDEMPOTENCY, CF_STREAMS};
use eventfold_domain::{CommandId, EventId, NewEvent, RecordedEvent, StreamId, Timestamp};
use foldhash::HashMap;
use rocksdb::{ColumnFamily, DB, WriteBatch};

/// A stream's version and the id of its last event, as the writer knows them
/// (including batches written but not yet synced).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tip {
    pub version: u64,
    pub last_event: Option<EventId>,
    /// Tombstoned: appends are refused.
    pub tombstoned: bool,
}

/// The keyspaces an append writes: the log, the stream index and the
/// command ids. Looked up once per batch: each lookup is a search of
/// RocksDB's map of names.
#[derive(Clone, Copy)]
pub(super) struct AppendKeyspaces<'a> {
    pub(super) global: &'a ColumnFamily,
    pub(super) streams: &'a ColumnFamily,
    pub(super) commands: &'a ColumnFamily,
}

impl<'a> AppendKeyspaces<'a> {
    pub(super) fn of(db: &'a DB, shared: &Shared) -> Result<Self, AppendError> {
        Ok(Self {
            global: shared.cf(db, CF_GLOBAL)?,
            streams: shared.cf(db, CF_STREAMS)?,
            commands: shared.cf(db, CF_IDEMPOTENCY)?,
        })
    }
}

/// What the jobs of one batch share while it is being built.
pub(super) struct Pending<'a> {
    pub(super) batch: &'a mut WriteBatch,
    pub(super) keyspaces: AppendKeyspaces<'a>,
    pub(super) versions: &'a mut HashMap<StreamId, Tip>,
    pub(super) commands: &'a mut HashMap<CommandId, AppendOutcome>,
    pub(super) position: &'a mut u64,
    pub(super) recorded_at: Timestamp,
    /// Collects the events for the commit listener, when there is one.
    pub(super) events: Option<&'a mut Vec<RecordedEvent>>,
}

/// Writes the sealed records of `events` (encoded as `records`) of
/// `stream` after its version `before` at the batch's next positions, with
/// their index entries, recording them for the commit listener and the
/// stream's new tip in `pending`; the stream's new version.
pub(super) fn write_events(
    pending: &mut Pending<'_>,
    stream: &StreamId,
    before: u64,
    records: Vec<Vec<u8>>,
    events: Vec<NewEvent>,
    recorded_at: Timestamp,
) -> u64 {
    let AppendKeyspaces {
        global, streams, ..
    } = pending.keyspaces;
    let mut version = before;
    let mut last_event = None;
    let mut index_keys = codec::StreamKeys::new(stream.as_str());
    for (mut record, event) in records.into_iter().zip(events) {
        version += 1;
        last_event = Some(event.metadata.event_id);
        let position = *pending.position;
        codec::seal_event(&mut record, position, version, recorded_at);
        if let Some(listened) = pending.events.as_deref_mut() {
            listened.push(event.recorded(stream.clone(), version, position, recorded_at));
        }
        pending
            .batch
            .put_cf(global, codec::global_key(position), &record);
        pending
            .batch
            .put_cf(streams, index_keys.at(version), codec::global_key(position));
        *pending.position += 1;
    }
    pending.versions.insert(
        stream.clone(),
        Tip {
            version,
            last_event,
            tombstoned: false,
        },
    );
    version
}

/// Records `outcome` as the outcome of command id `id` in the batch and for
/// the batch's later jobs.
pub(super) fn record_outcome(pending: &mut Pending<'_>, id: CommandId, outcome: &AppendOutcome) {
    pending.batch.put_cf(
        pending.keyspaces.commands,
        codec::command_key(id),
        codec::encode_outcome(outcome),
    );
    pending.commands.insert(id, outcome.clone());
}
