//! An event record, as stored in the `global` keyspace: the fixed-width
//! header the writer seals (position, version, recorded-at), the event's
//! ids, type, schema version, headers and payload.

use super::frame::*;
use crate::error::{Corruption, CorruptionKind};
use crate::keyspaces::CF_GLOBAL;
use eventfold_domain::{
    CausationId, CorrelationId, EventId, Metadata, NewEvent, RecordedEvent, StreamId, Timestamp,
};

/// Byte offsets of the fixed-width header of an event record.
const OFFSET_POSITION: usize = 1;
const OFFSET_VERSION: usize = 9;
const OFFSET_RECORDED_AT: usize = 17;
const OFFSET_EVENT_ID: usize = 25;
const OFFSET_FLAGS: usize = 41;
const FLAG_CORRELATION: u8 = 0b01;
const FLAG_CAUSATION: u8 = 0b10;

/// Encodes everything of an event record except its position, version and
/// recorded-at time, which the writer fills in with [`seal_event`]. Runs on
/// the caller's thread so that the writer only patches and checksums.
pub(crate) fn encode_event(stream: &StreamId, event: &NewEvent) -> Vec<u8> {
    let headers_bytes: usize = event
        .metadata
        .headers
        .iter()
        .map(|(k, v)| 6 + k.len() + v.len())
        .sum();
    let capacity = 42
        + 32
        + 2
        + 2
        + stream.as_str().len()
        + 2
        + event.event_type.len()
        + 2
        + headers_bytes
        + 4
        + event.payload.len()
        + CRC_BYTES;
    let mut out = Vec::with_capacity(capacity);
    out.push(FORMAT_V1);
    out.extend_from_slice(&[0u8; 24]); // position, version, recorded-at: sealed later
    out.extend_from_slice(&event.metadata.event_id.to_bytes());
    debug_assert_eq!(out.len(), OFFSET_FLAGS, "fixed header layout");
    let mut flags = 0u8;
    if event.metadata.correlation_id.is_some() {
        flags |= FLAG_CORRELATION;
    }
    if event.metadata.causation_id.is_some() {
        flags |= FLAG_CAUSATION;
    }
    out.push(flags);
    if let Some(id) = event.metadata.correlation_id {
        out.extend_from_slice(&id.to_bytes());
    }
    if let Some(id) = event.metadata.causation_id {
        out.extend_from_slice(&id.to_bytes());
    }
    out.extend_from_slice(&event.schema_version.to_be_bytes());
    put_str16(&mut out, stream.as_str());
    put_str16(&mut out, &event.event_type);
    // Validation has bounded the count and the lengths (see `validate`).
    out.extend_from_slice(&(event.metadata.headers.len() as u16).to_be_bytes());
    for (key, value) in &event.metadata.headers {
        put_str16(&mut out, key);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&(event.payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&event.payload);
    out
}

/// Fills in the writer-assigned fields of an encoded record and appends its
/// checksum.
pub(crate) fn seal_event(
    record: &mut Vec<u8>,
    position: u64,
    version: u64,
    recorded_at: Timestamp,
) {
    record[OFFSET_POSITION..OFFSET_VERSION].copy_from_slice(&position.to_be_bytes());
    record[OFFSET_VERSION..OFFSET_RECORDED_AT].copy_from_slice(&version.to_be_bytes());
    record[OFFSET_RECORDED_AT..OFFSET_EVENT_ID]
        .copy_from_slice(&recorded_at.as_micros().to_be_bytes());
    let crc = crc32c::crc32c(record);
    record.extend_from_slice(&crc.to_be_bytes());
}

/// Decodes an event record stored under `key` in `keyspace`.
pub(crate) fn decode_event(
    keyspace: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<RecordedEvent, Corruption> {
    decode_event_after(keyspace, key, value, None)
}

/// As [`decode_event`], sharing the stream id of `previous` (the event
/// decoded before it in a scan) when the record names the same stream: the
/// events of one append lie next to each other in the global log, and
/// share one id instead of each checking and allocating its own.
pub(crate) fn decode_event_after(
    keyspace: &'static str,
    key: &[u8],
    value: &[u8],
    previous: Option<&StreamId>,
) -> Result<RecordedEvent, Corruption> {
    let body = checked_body(keyspace, key, value)?;
    decode_event_body(body, previous).map_err(|kind| Corruption {
        keyspace,
        key: key.to_vec(),
        kind,
    })
}

/// Decodes the record at `position` of the global log in a scan in
/// position order: the record must hold that position, and it shares the
/// stream id of the event before it (`last`, which becomes this event's)
/// when it names the same stream.
pub(crate) fn decode_global_event(
    position: u64,
    value: &[u8],
    last: &mut Option<StreamId>,
) -> Result<RecordedEvent, Corruption> {
    let key = super::global_key(position);
    let event = decode_event_after(CF_GLOBAL, &key, value, last.as_ref())?;
    if event.position != position {
        return Err(Corruption {
            keyspace: CF_GLOBAL,
            key: key.to_vec(),
            kind: CorruptionKind::Inconsistent(format!(
                "expected position {position}, found {}",
                event.position
            )),
        });
    }
    // The same id shares its allocation: compared by address.
    let same = last
        .as_ref()
        .is_some_and(|s| std::ptr::eq(s.as_str(), event.stream_id.as_str()));
    if !same {
        *last = Some(event.stream_id.clone());
    }
    Ok(event)
}

/// The stream id and event type of an event record, as their bytes, read
/// without checking the record's checksum; `None` when the bytes do not
/// parse that far. For a scan that filters records it leaves to be decoded
/// later: a record it keeps is checked when decoded, and one it skips must
/// be checked with [`checked_body`] (damaged bytes could make a wanted
/// event look unwanted).
pub(crate) fn peek_event(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = value.get(OFFSET_FLAGS..value.len().checked_sub(CRC_BYTES)?)?;
    let mut c = Cursor { bytes: body };
    let flags = c.u8("flags").ok()?;
    let ids = usize::from(flags & FLAG_CORRELATION != 0) + usize::from(flags & FLAG_CAUSATION != 0);
    c.take(16 * ids + 2, "ids and schema version").ok()?;
    let stream = c.bytes16("stream id").ok()?;
    let event_type = c.bytes16("event type").ok()?;
    Some((stream, event_type))
}

fn decode_event_body(
    body: &[u8],
    previous: Option<&StreamId>,
) -> Result<RecordedEvent, CorruptionKind> {
    let mut c = Cursor { bytes: body };
    let position = c.u64("position")?;
    let version = c.u64("version")?;
    let recorded_at = Timestamp::from_micros(c.u64("recorded-at")?);
    let event_id = EventId::from_bytes(c.id16("event id")?);
    let flags = c.u8("flags")?;
    if flags & !(FLAG_CORRELATION | FLAG_CAUSATION) != 0 {
        return Err(CorruptionKind::InvalidField(format!(
            "unknown flags {flags:#04x}"
        )));
    }
    let correlation_id = if flags & FLAG_CORRELATION != 0 {
        Some(CorrelationId::from_bytes(c.id16("correlation id")?))
    } else {
        None
    };
    let causation_id = if flags & FLAG_CAUSATION != 0 {
        Some(CausationId::from_bytes(c.id16("causation id")?))
    } else {
        None
    };
    let schema_version = c.u16("schema version")?;
    let stream = c.bytes16("stream id")?;
    let stream_id = match previous {
        Some(previous) if previous.as_str().as_bytes() == stream => previous.clone(),
        _ => {
            let stream = std::str::from_utf8(stream)
                .map_err(|_| CorruptionKind::InvalidField("stream id is not UTF-8".into()))?;
            StreamId::new(stream)
                .map_err(|e| CorruptionKind::InvalidField(format!("stream id: {e}")))?
        }
    };
    let event_type = c.str16("event type")?.to_owned();
    let header_count = usize::from(c.u16("header count")?);
    let mut headers = Vec::with_capacity(header_count.min(1024));
    for _ in 0..header_count {
        let key = c.str16("header key")?.to_owned();
        let len = c.u32("header value length")? as usize;
        let value = c.str_n(len, "header value")?.to_owned();
        headers.push((key, value));
    }
    let payload_len = c.u32("payload length")? as usize;
    let payload = c.take(payload_len, "payload")?.to_vec();
    c.end()?;
    if position == 0 {
        return Err(CorruptionKind::InvalidField("position 0".into()));
    }
    if version == 0 {
        return Err(CorruptionKind::InvalidField("version 0".into()));
    }
    Ok(RecordedEvent {
        stream_id,
        version,
        position,
        recorded_at,
        event_type,
        schema_version,
        payload,
        metadata: Metadata {
            event_id,
            correlation_id,
            causation_id,
            headers,
        },
    })
}

// ---- keys ----
