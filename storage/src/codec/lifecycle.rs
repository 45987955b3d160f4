//! Bytes of the stream lifecycle: erased records in `global`, and the
//! `streammeta` keyspace (a stream's first readable version, its version
//! and whether it is tombstoned; erasures under way; retention cursors).

use super::frame::*;
use crate::error::{Corruption, CorruptionKind};
use crate::keyspaces::{CF_GLOBAL, CF_STREAM_META};
use eventfold_domain::RecordedEvent;

/// Format byte of an erased record: what stays of an event in `global`
/// once its stream was truncated past it.
pub(crate) const FORMAT_ERASED: u8 = 2;

/// First byte of the `streammeta` keys that are not stream ids (stream ids
/// never contain `0x00`).
const META_SYSTEM_KEY: u8 = 0;

/// The record that replaces an erased event at `position`: format byte 2,
/// the position, CRC32C.
pub(crate) fn encode_erased(position: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    out.push(FORMAT_ERASED);
    out.extend_from_slice(&position.to_be_bytes());
    with_crc(out)
}

/// Whether a `global` value is an erased record (by its format byte; an
/// erased record is checked by [`decode_global`]).
pub(crate) fn is_erased(value: &[u8]) -> bool {
    value.first() == Some(&FORMAT_ERASED)
}

/// A `global` record: the event, or `None` for an erased one.
pub(crate) fn decode_global(key: &[u8], value: &[u8]) -> Result<Option<RecordedEvent>, Corruption> {
    if value.first() != Some(&FORMAT_ERASED) {
        return super::decode_event(CF_GLOBAL, key, value).map(Some);
    }
    let corrupt = |kind| Corruption {
        keyspace: CF_GLOBAL,
        key: key.to_vec(),
        kind,
    };
    let Some((body, crc)) = value.split_last_chunk::<CRC_BYTES>() else {
        return Err(corrupt(CorruptionKind::Truncated(
            "shorter than an erased record",
        )));
    };
    let (stored, computed) = (u32::from_be_bytes(*crc), crc32c::crc32c(body));
    if stored != computed {
        return Err(corrupt(CorruptionKind::Checksum { stored, computed }));
    }
    let position = body
        .get(1..)
        .and_then(super::parse_u64_key)
        .ok_or_else(|| corrupt(CorruptionKind::Truncated("an erased record is 13 bytes")))?;
    if Some(position) != super::parse_u64_key(key) {
        return Err(corrupt(CorruptionKind::Inconsistent(format!(
            "erased record says position {position}"
        ))));
    }
    Ok(None)
}

/// What `streammeta` keeps of a stream that was truncated, deleted or
/// tombstoned.
pub(crate) use crate::lifecycle::DeletionRecord as StreamMeta;

const META_TOMBSTONED: u8 = 1;

pub(crate) fn encode_stream_meta(meta: &StreamMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(30);
    out.push(FORMAT_V1);
    out.push(if meta.tombstoned { META_TOMBSTONED } else { 0 });
    out.extend_from_slice(&meta.first_version.to_be_bytes());
    out.extend_from_slice(&meta.version.to_be_bytes());
    out.extend_from_slice(&meta.deleted_version.to_be_bytes());
    with_crc(out)
}

pub(crate) fn decode_stream_meta(key: &[u8], value: &[u8]) -> Result<StreamMeta, Corruption> {
    let body = checked_body(CF_STREAM_META, key, value)?;
    let mut c = Cursor { bytes: body };
    let parse = |c: &mut Cursor<'_>| {
        let flags = c.u8("flags")?;
        if flags & !META_TOMBSTONED != 0 {
            return Err(CorruptionKind::InvalidField(format!(
                "unknown flags {flags:#04x}"
            )));
        }
        let meta = StreamMeta {
            tombstoned: flags & META_TOMBSTONED != 0,
            first_version: c.u64("first version")?,
            version: c.u64("version")?,
            deleted_version: c.u64("deleted version")?,
        };
        c.end()?;
        if meta.first_version == 0
            || meta.first_version > meta.version.saturating_add(1)
            || meta.deleted_version > meta.version
        {
            return Err(CorruptionKind::InvalidField(format!(
                "first version {} of a stream at version {}",
                meta.first_version, meta.version
            )));
        }
        Ok(meta)
    };
    parse(&mut c).map_err(|kind| Corruption {
        keyspace: CF_STREAM_META,
        key: key.to_vec(),
        kind,
    })
}

/// Key of a stream's erasure under way: versions below the value's are
/// erased, those from it to the stream's first version are still to go.
pub(crate) fn erasure_key(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + stream.len());
    key.extend_from_slice(&[META_SYSTEM_KEY, b'e']);
    key.extend_from_slice(stream.as_bytes());
    key
}

/// Prefix of every erasure key.
pub(crate) const ERASURE_PREFIX: [u8; 2] = [META_SYSTEM_KEY, b'e'];

/// Key of a category's retention cursor: the last position its max-age
/// sweep has passed.
pub(crate) fn retention_cursor_key(category: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + category.len());
    key.extend_from_slice(&[META_SYSTEM_KEY, b'r']);
    key.extend_from_slice(category.as_bytes());
    key
}

/// Whether a `streammeta` key names a stream (not an erasure or cursor).
pub(crate) fn is_stream_meta_key(key: &[u8]) -> bool {
    key.first().is_some_and(|b| *b != META_SYSTEM_KEY)
}

/// A u64 value of `streammeta` (an erasure's progress, a cursor).
pub(crate) fn encode_meta_u64(value: u64) -> Vec<u8> {
    super::encode_checkpoint(value)
}

pub(crate) fn decode_meta_u64(key: &[u8], value: &[u8]) -> Result<u64, Corruption> {
    super::decode_checkpoint(key, value).map_err(|c| Corruption {
        keyspace: CF_STREAM_META,
        ..c
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erased_records_and_stream_meta_round_trip_and_refuse_damage() {
        let key = super::super::global_key(9);
        let erased = encode_erased(9);
        assert_eq!(erased.len(), 13);
        assert_eq!(decode_global(&key, &erased), Ok(None));
        let mut flipped = erased.clone();
        flipped[4] ^= 1;
        assert!(decode_global(&key, &flipped).is_err());
        assert!(decode_global(&super::super::global_key(8), &erased).is_err());
        assert!(decode_global(&key, &erased[..5]).is_err());
        let meta = StreamMeta {
            first_version: 4,
            version: 7,
            deleted_version: 3,
            tombstoned: true,
        };
        assert_eq!(
            decode_stream_meta(b"s", &encode_stream_meta(&meta)),
            Ok(meta)
        );
        let past = StreamMeta {
            first_version: 9,
            ..meta
        };
        assert!(decode_stream_meta(b"s", &encode_stream_meta(&past)).is_err());
        assert!(is_stream_meta_key(b"account-1"));
        assert!(!is_stream_meta_key(&erasure_key("account-1")));
    }
}
