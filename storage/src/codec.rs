//! Bytes on disk: keys and values of every keyspace. `docs/format.md`
//! describes the same layout; keep the two in step.
//!
//! Every value eventfold writes, except the 8-byte index entries of the
//! `streams` keyspace, starts with a format byte and ends with a big-endian
//! CRC32C of all the bytes before it. Integers are big-endian so that keys
//! sort numerically.

use crate::error::{Corruption, CorruptionKind};
use eventfold_domain::{
    CausationId, CommandId, CorrelationId, EventId, Metadata, NewEvent, RecordedEvent, StreamId,
    Timestamp,
};

/// Format byte of every value written by this version.
pub(crate) const FORMAT_V1: u8 = 1;
/// Marker stored under [`META_FORMAT_KEY`] in the default keyspace.
pub(crate) const STORE_FORMAT: &str = "eventfold-store-v2";
/// Key of the format marker.
pub(crate) const META_FORMAT_KEY: &[u8] = b"format";

/// Byte offsets of the fixed-width header of an event record.
const OFFSET_POSITION: usize = 1;
const OFFSET_VERSION: usize = 9;
const OFFSET_RECORDED_AT: usize = 17;
const OFFSET_EVENT_ID: usize = 25;
const OFFSET_FLAGS: usize = 41;
const FLAG_CORRELATION: u8 = 0b01;
const FLAG_CAUSATION: u8 = 0b10;
const CRC_BYTES: usize = 4;

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

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Checks the format byte and the trailing CRC; returns the bytes between.
fn checked_body<'a>(
    keyspace: &'static str,
    key: &[u8],
    value: &'a [u8],
) -> Result<&'a [u8], Corruption> {
    let corrupt = |kind| Corruption {
        keyspace,
        key: key.to_vec(),
        kind,
    };
    if value.len() < 1 + CRC_BYTES {
        return Err(corrupt(CorruptionKind::Truncated(
            "shorter than format byte and checksum",
        )));
    }
    let (body, crc_bytes) = value.split_at(value.len() - CRC_BYTES);
    let mut stored = [0u8; 4];
    stored.copy_from_slice(crc_bytes);
    let stored = u32::from_be_bytes(stored);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(corrupt(CorruptionKind::Checksum { stored, computed }));
    }
    if body[0] != FORMAT_V1 {
        return Err(corrupt(CorruptionKind::UnknownFormat(body[0])));
    }
    Ok(&body[1..])
}

/// Appends the checksum of `body` (which starts with the format byte).
fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    body
}

/// A bounds-checked reader over a value's body.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CorruptionKind> {
        if self.bytes.len() < n {
            return Err(CorruptionKind::Truncated(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CorruptionKind> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, CorruptionKind> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CorruptionKind> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, CorruptionKind> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }
    fn id16(&mut self, what: &'static str) -> Result<[u8; 16], CorruptionKind> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16, what)?);
        Ok(a)
    }
    fn str_n(&mut self, n: usize, what: &'static str) -> Result<&'a str, CorruptionKind> {
        std::str::from_utf8(self.take(n, what)?)
            .map_err(|_| CorruptionKind::InvalidField(format!("{what} is not UTF-8")))
    }
    fn str16(&mut self, what: &'static str) -> Result<&'a str, CorruptionKind> {
        let n = usize::from(self.u16(what)?);
        self.str_n(n, what)
    }
    fn end(&self) -> Result<(), CorruptionKind> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(CorruptionKind::InvalidField(format!(
                "{} unexpected trailing bytes",
                self.bytes.len()
            )))
        }
    }
}

/// Decodes an event record stored under `key` in `keyspace`.
pub(crate) fn decode_event(
    keyspace: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<RecordedEvent, Corruption> {
    let body = checked_body(keyspace, key, value)?;
    decode_event_body(body).map_err(|kind| Corruption {
        keyspace,
        key: key.to_vec(),
        kind,
    })
}

fn decode_event_body(body: &[u8]) -> Result<RecordedEvent, CorruptionKind> {
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
    let stream = c.str16("stream id")?;
    let stream_id = StreamId::new(stream)
        .map_err(|e| CorruptionKind::InvalidField(format!("stream id: {e}")))?;
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

/// Key of the `global` keyspace: the position.
pub(crate) fn global_key(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

/// Parses a `global` key.
pub(crate) fn parse_u64_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Bytes of the tag that starts every `streams` key: the big-endian CRC32C
/// of the stream id. Keys of one stream share it, so a fixed-length prefix
/// of the key tells streams apart (RocksDB's memtable insert hints need a
/// fixed-length prefix); the full id follows it, so two streams with the
/// same tag never share a key.
pub(crate) const STREAM_TAG_BYTES: usize = 4;

/// Bytes after the stream id: the `0x00` separator and the version.
const STREAM_KEY_SUFFIX_BYTES: usize = 9;

/// Shortest `streams` key: the tag, a one-byte id, separator and version.
const STREAM_KEY_MIN_BYTES: usize = STREAM_TAG_BYTES + 1 + STREAM_KEY_SUFFIX_BYTES;

fn stream_tag(stream: &[u8]) -> [u8; STREAM_TAG_BYTES] {
    crc32c::crc32c(stream).to_be_bytes()
}

/// The keys of one stream's index entries, built in one buffer: the tag,
/// id and separator are written once, and [`StreamKeys::at`] rewrites only
/// the version. How the writer makes the key of each event it appends.
pub(crate) struct StreamKeys {
    key: Vec<u8>,
}

impl StreamKeys {
    /// Keys of `stream`.
    pub(crate) fn new(stream: &str) -> Self {
        let mut key = Vec::with_capacity(stream.len() + STREAM_TAG_BYTES + STREAM_KEY_SUFFIX_BYTES);
        key.extend_from_slice(&stream_tag(stream.as_bytes()));
        key.extend_from_slice(stream.as_bytes());
        key.push(0);
        key.extend_from_slice(&[0; 8]);
        Self { key }
    }

    /// The key of the entry of `version`.
    pub(crate) fn at(&mut self, version: u64) -> &[u8] {
        let start = self.key.len() - 8;
        self.key[start..].copy_from_slice(&version.to_be_bytes());
        &self.key
    }
}

/// Key of the `streams` keyspace: tag ([`STREAM_TAG_BYTES`]), stream id,
/// NUL, version.
pub(crate) fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut keys = StreamKeys::new(stream);
    keys.at(version);
    keys.key
}

/// The prefix of every `streams` key of one stream, and the first key after
/// them all.
pub(crate) fn stream_key_bounds(stream: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lower = stream_key(stream, 0);
    lower.truncate(lower.len() - 8);
    let mut upper = lower.clone();
    if let Some(last) = upper.last_mut() {
        *last = 1;
    }
    (lower, upper)
}

/// The stream part of a `streams` key (tag, stream id and the `0x00` after
/// it), RocksDB's prefix extractor for that keyspace: its bloom filters hold
/// these prefixes, so a seek into one stream skips the table files without
/// it. Keys outside [`is_stream_key`]'s domain are returned whole.
pub(crate) fn stream_key_prefix(key: &[u8]) -> &[u8] {
    if is_stream_key(key) {
        &key[..key.len() - 8]
    } else {
        key
    }
}

/// Whether `key` has the shape of a `streams` key: long enough for a tag and
/// a one-byte id, with a `0x00` nine bytes from the end, before the version.
pub(crate) fn is_stream_key(key: &[u8]) -> bool {
    key.len() >= STREAM_KEY_MIN_BYTES && key[key.len() - STREAM_KEY_SUFFIX_BYTES] == 0
}

/// Splits a `streams` key into stream id and version; `None` for a key of
/// another shape, an id that is not UTF-8, or a tag that is not the id's.
pub(crate) fn parse_stream_key(key: &[u8]) -> Option<(&str, u64)> {
    if !is_stream_key(key) {
        return None;
    }
    let (tag, rest) = key.split_at(STREAM_TAG_BYTES);
    let (stream, suffix) = rest.split_at(rest.len() - STREAM_KEY_SUFFIX_BYTES);
    if tag != stream_tag(stream) {
        return None;
    }
    let version = parse_u64_key(&suffix[1..])?;
    Some((std::str::from_utf8(stream).ok()?, version))
}

/// Key of the `readmodels` keyspace: model name, NUL, user key.
pub(crate) fn read_model_key(model: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(model.len() + 1 + key.len());
    out.extend_from_slice(model.as_bytes());
    out.push(0);
    out.extend_from_slice(key);
    out
}

impl Corruption {
    /// A read-model value that its reader (a projection's registry, a
    /// process manager) cannot decode: keyspace `readmodels`, the value's
    /// whole key (model, NUL, key), the decoder's message.
    ///
    /// ```
    /// use eventfold_storage::{CF_READ_MODELS, Corruption};
    ///
    /// let corrupt = Corruption::read_model_value("$pm.transfers", b"it-1", "unexpected end");
    /// assert_eq!((corrupt.keyspace, &corrupt.key[..]), (CF_READ_MODELS, &b"$pm.transfers\0it-1"[..]));
    /// ```
    pub fn read_model_value(model: &str, key: &[u8], reason: impl std::fmt::Display) -> Self {
        Self {
            keyspace: crate::keyspaces::CF_READ_MODELS,
            key: read_model_key(model, key),
            kind: CorruptionKind::InvalidField(reason.to_string()),
        }
    }
}

// ---- small values ----

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

/// Payload encoding: bincode 2 through serde, with its standard settings.
pub mod payload {
    use serde::{Serialize, de::DeserializeOwned};

    /// Why a payload could not be encoded or decoded.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum PayloadError {
        /// The value could not be encoded.
        #[error("payload encoding failed: {0}")]
        Encode(#[from] bincode::error::EncodeError),
        /// The bytes are not a valid encoding of the expected type.
        #[error("payload decoding failed: {0}")]
        Decode(#[from] bincode::error::DecodeError),
        /// The bytes hold a valid value followed by unread bytes.
        #[error("payload has {0} trailing bytes")]
        TrailingBytes(usize),
    }

    /// Encodes a value with bincode 2's standard configuration.
    ///
    /// ```
    /// let bytes = eventfold_storage::payload::encode(&(7u32, "x".to_string()))?;
    /// let back: (u32, String) = eventfold_storage::payload::decode(&bytes)?;
    /// assert_eq!(back, (7, "x".to_string()));
    /// # Ok::<(), eventfold_storage::payload::PayloadError>(())
    /// ```
    pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PayloadError> {
        Ok(bincode::serde::encode_to_vec(
            value,
            bincode::config::standard(),
        )?)
    }

    /// Decodes a value encoded by [`encode`]; every byte must be used.
    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
        if read != bytes.len() {
            return Err(PayloadError::TrailingBytes(bytes.len() - read));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn sample() -> Result<(StreamId, NewEvent), eventfold_domain::StreamIdError> {
        let stream = StreamId::new("account-1")?;
        let metadata = Metadata::new()
            .with_correlation(CorrelationId::random())
            .with_header("k", "v");
        Ok((stream, NewEvent::new("Deposited", 3, vec![9; 40], metadata)))
    }

    #[test]
    fn record_round_trips() -> TestResult {
        let (stream, event) = sample()?;
        let mut record = encode_event(&stream, &event);
        seal_event(&mut record, 17, 4, Timestamp::from_micros(99));
        let decoded = decode_event("global", b"k", &record)?;
        assert_eq!(decoded.stream_id, stream);
        assert_eq!(decoded.position, 17);
        assert_eq!(decoded.version, 4);
        assert_eq!(decoded.recorded_at, Timestamp::from_micros(99));
        assert_eq!(decoded.metadata, event.metadata);
        assert_eq!(decoded.payload, event.payload);
        assert_eq!(decoded.schema_version, 3);
        Ok(())
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_a_typed_error() -> TestResult {
        let (stream, event) = sample()?;
        let mut record = encode_event(&stream, &event);
        seal_event(&mut record, 1, 1, Timestamp::from_micros(1));
        for i in 0..record.len() {
            for bit in 0..8 {
                let mut bad = record.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode_event("global", b"k", &bad).is_err(),
                    "byte {i} bit {bit}"
                );
            }
            assert!(
                decode_event("global", b"k", &record[..i]).is_err(),
                "len {i}"
            );
        }
        Ok(())
    }

    #[test]
    fn stream_keys_parse_back_and_sort_by_version() {
        let a = stream_key("s-1", 2);
        let b = stream_key("s-1", 10);
        assert!(a < b);
        assert_eq!(parse_stream_key(&b), Some(("s-1", 10)));
        let (lower, upper) = stream_key_bounds("s-1");
        assert!(lower < a && b < upper);
        // Another stream's keys, whatever its tag, are outside the bounds.
        for other in ["s-10", "s-", "s-2", "t-1"] {
            for version in [1, 2, 10, u64::MAX] {
                let key = stream_key(other, version);
                assert!(key < lower || key >= upper, "{other} {version}");
            }
        }
    }

    #[test]
    fn stream_keys_start_with_the_tag_of_their_stream() {
        let mut keys = StreamKeys::new("acct-7");
        let first = keys.at(1).to_vec();
        let later = keys.at(300).to_vec();
        assert_eq!(first, stream_key("acct-7", 1));
        assert_eq!(later, stream_key("acct-7", 300));
        assert_eq!(first[..STREAM_TAG_BYTES], later[..STREAM_TAG_BYTES]);
        assert_eq!(
            first[..STREAM_TAG_BYTES],
            crc32c::crc32c(b"acct-7").to_be_bytes()
        );
        assert_eq!(&first[STREAM_TAG_BYTES..STREAM_TAG_BYTES + 6], b"acct-7");
        // A key whose tag is not its id's is not a stream key of that id.
        let mut forged = first.clone();
        forged[0] ^= 1;
        assert_eq!(parse_stream_key(&forged), None);
        // Neither is one cut short, or with a stray separator.
        assert_eq!(parse_stream_key(&first[..first.len() - 1]), None);
        let mut no_separator = first;
        no_separator[STREAM_TAG_BYTES + 6] = b'x';
        assert_eq!(parse_stream_key(&no_separator), None);
    }

    #[test]
    fn stream_key_prefix_is_the_stream_part_for_every_version() {
        let (lower, _) = stream_key_bounds("acct-7");
        for version in [1, 255, 256, u64::MAX] {
            let key = stream_key("acct-7", version);
            assert!(is_stream_key(&key));
            assert_eq!(stream_key_prefix(&key), lower.as_slice());
        }
        // Versions whose bytes hold zeros do not confuse it: the separator is
        // found from the end.
        let (lower, _) = stream_key_bounds("a");
        assert_eq!(
            stream_key_prefix(&stream_key("a", 1 << 8)),
            lower.as_slice()
        );
        assert_eq!(&lower[STREAM_TAG_BYTES..], b"a\0");
        // Not the shape of a stream key: outside the domain, returned whole.
        for key in [
            &b"short"[..],
            b"",
            b"no-separator-in-here",
            b"\0\0\0\0\0\0\0\0\0",
        ] {
            assert!(!is_stream_key(key));
            assert_eq!(stream_key_prefix(key), key);
        }
    }

    #[test]
    fn small_values_round_trip_and_detect_corruption() {
        let bytes = encode_checkpoint(9);
        let mut bad = bytes.clone();
        bad[3] ^= 4;
        assert!(decode_checkpoint(b"c", &bad).is_err());
        assert_eq!(decode_checkpoint(b"c", &encode_checkpoint(5)), Ok(5));
        assert!(decode_checkpoint(b"c", &[1, 2]).is_err());
    }
}

/// The decoders of stored bytes, public so that fuzz targets and tools can
/// feed them anything: each returns a typed [`Corruption`] naming the key for
/// bytes it cannot read, and never panics. The encoders make valid inputs.
pub mod decoders {
    use super::*;

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
        super::encode_snapshot(snapshot)
    }
}
