//! Small values: a `streams` index entry, checkpoints, opaque read-model
//! values, snapshots and command outcomes.

use super::frame::*;
use super::keys::*;
use crate::error::{Corruption, CorruptionKind};
use eventfold_domain::{CommandId, StreamId};

/// Value of the `streams` keyspace: the event's position.
pub(crate) fn decode_stream_index(key: &[u8], value: &[u8]) -> Result<u64, Corruption> {
    parse_u64_key(value).ok_or_else(|| Corruption {
        keyspace: crate::keyspaces::CF_STREAMS,
        key: key.to_vec(),
        kind: CorruptionKind::Truncated("index entry is not 8 bytes"),
    })
}

pub(crate) fn encode_checkpoint(position: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    out.push(FORMAT_V1);
    out.extend_from_slice(&position.to_be_bytes());
    with_crc(out)
}

pub(crate) fn decode_checkpoint(key: &[u8], value: &[u8]) -> Result<u64, Corruption> {
    let keyspace = crate::keyspaces::CF_CHECKPOINTS;
    let body = checked_body(keyspace, key, value)?;
    let mut c = Cursor { bytes: body };
    let parse = |c: &mut Cursor<'_>| {
        let position = c.u64("position")?;
        c.end()?;
        Ok(position)
    };
    parse(&mut c).map_err(|kind| Corruption {
        keyspace,
        key: key.to_vec(),
        kind,
    })
}

/// Wraps an opaque value (read model entry) with format byte and checksum.
pub(crate) fn encode_opaque(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 5);
    out.push(FORMAT_V1);
    out.extend_from_slice(value);
    with_crc(out)
}

pub(crate) fn decode_opaque(
    keyspace: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<u8>, Corruption> {
    Ok(checked_body(keyspace, key, value)?.to_vec())
}

pub(crate) fn encode_snapshot(snapshot: &crate::Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(snapshot.state.len() + 21);
    out.push(FORMAT_V1);
    out.extend_from_slice(&snapshot.snapshot_version.to_be_bytes());
    out.extend_from_slice(&snapshot.stream_version.to_be_bytes());
    out.extend_from_slice(&(snapshot.state.len() as u32).to_be_bytes());
    out.extend_from_slice(&snapshot.state);
    with_crc(out)
}

pub(crate) fn decode_snapshot(key: &[u8], value: &[u8]) -> Result<crate::Snapshot, Corruption> {
    let keyspace = crate::keyspaces::CF_SNAPSHOTS;
    let body = checked_body(keyspace, key, value)?;
    let parse = || {
        let mut c = Cursor { bytes: body };
        let snapshot_version = c.u32("snapshot version")?;
        let stream_version = c.u64("stream version")?;
        let len = c.u32("state length")? as usize;
        let state = c.take(len, "state")?.to_vec();
        c.end()?;
        Ok(crate::Snapshot {
            snapshot_version,
            stream_version,
            state,
        })
    };
    parse().map_err(|kind| Corruption {
        keyspace,
        key: key.to_vec(),
        kind,
    })
}

pub(crate) fn encode_outcome(outcome: &crate::AppendOutcome) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + outcome.streams.len() * 32);
    out.push(FORMAT_V1);
    out.extend_from_slice(&outcome.first_position.to_be_bytes());
    out.extend_from_slice(&outcome.last_position.to_be_bytes());
    out.extend_from_slice(&(outcome.streams.len() as u16).to_be_bytes());
    for s in &outcome.streams {
        put_str16(&mut out, s.stream.as_str());
        out.extend_from_slice(&s.first_version.to_be_bytes());
        out.extend_from_slice(&s.last_version.to_be_bytes());
    }
    with_crc(out)
}

pub(crate) fn decode_outcome(key: &[u8], value: &[u8]) -> Result<crate::AppendOutcome, Corruption> {
    let keyspace = crate::keyspaces::CF_IDEMPOTENCY;
    let body = checked_body(keyspace, key, value)?;
    let parse = || {
        let mut c = Cursor { bytes: body };
        let first_position = c.u64("first position")?;
        let last_position = c.u64("last position")?;
        let count = usize::from(c.u16("stream count")?);
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            let stream = StreamId::new(c.str16("stream id")?)
                .map_err(|e| CorruptionKind::InvalidField(format!("stream id: {e}")))?;
            let first_version = c.u64("first version")?;
            let last_version = c.u64("last version")?;
            streams.push(crate::StreamWritten {
                stream,
                first_version,
                last_version,
            });
        }
        c.end()?;
        Ok(crate::AppendOutcome {
            streams,
            first_position,
            last_position,
            deduplicated: true,
        })
    };
    parse().map_err(|kind| Corruption {
        keyspace,
        key: key.to_vec(),
        kind,
    })
}

/// Key of the `idempotency` keyspace.
pub(crate) fn command_key(id: CommandId) -> [u8; 16] {
    id.to_bytes()
}
