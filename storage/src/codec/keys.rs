//! Keys: the global log's positions, the `streams` index (tag, stream id,
//! version), read models, command ids; the store's format marker.

use crate::error::{Corruption, CorruptionKind};

/// Marker stored under [`META_FORMAT_KEY`] in the default keyspace.
pub(crate) const STORE_FORMAT: &str = "eventfold-store-v2";
/// Key of the format marker.
pub(crate) const META_FORMAT_KEY: &[u8] = b"format";

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
