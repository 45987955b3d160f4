//! The decoders of stored bytes, public so that fuzz targets and tools can
//! feed them anything: each returns a typed [`Corruption`] naming the key for
//! bytes it cannot read, and never panics. The encoders make valid inputs.

use super::record::{decode_event, encode_event, seal_event};
use super::values::{decode_checkpoint, decode_outcome, decode_snapshot};
use crate::error::Corruption;
use eventfold_domain::{NewEvent, RecordedEvent, StreamId, Timestamp};

/// An event record as stored in the `global` keyspace under `key`.
pub fn record(key: &[u8], value: &[u8]) -> Result<RecordedEvent, Corruption> {
    decode_event(crate::keyspaces::CF_GLOBAL, key, value)
}

/// A snapshot as stored in the `snapshots` keyspace under `key`.
pub fn snapshot(key: &[u8], value: &[u8]) -> Result<crate::Snapshot, Corruption> {
    decode_snapshot(key, value)
}

/// A checkpoint value.
pub fn checkpoint(key: &[u8], value: &[u8]) -> Result<u64, Corruption> {
    decode_checkpoint(key, value)
}

/// An idempotency outcome.
pub fn outcome(key: &[u8], value: &[u8]) -> Result<crate::AppendOutcome, Corruption> {
    decode_outcome(key, value)
}

/// The bytes a record of `event` in `stream` is stored as, at this
/// position, version and time.
pub fn encode_record(
    stream: &StreamId,
    event: &NewEvent,
    position: u64,
    version: u64,
    recorded_at: Timestamp,
) -> Vec<u8> {
    let mut record = encode_event(stream, event);
    seal_event(&mut record, position, version, recorded_at);
    record
}

/// The bytes a snapshot is stored as.
pub fn encode_snapshot(snapshot: &crate::Snapshot) -> Vec<u8> {
    super::values::encode_snapshot(snapshot)
}
