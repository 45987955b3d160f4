//! The names of the keyspaces (RocksDB column families) and the scan bound
//! every backend shares; see `docs/format.md`.

/// Keyspace of event records, keyed by global position.
pub const CF_GLOBAL: &str = "global";
/// Keyspace of the stream index: stream id, NUL, version → position.
pub const CF_STREAMS: &str = "streams";
/// Keyspace of snapshots: stream id → latest snapshot.
pub const CF_SNAPSHOTS: &str = "snapshots";
/// Keyspace of checkpoints: subscriber name → position.
pub const CF_CHECKPOINTS: &str = "checkpoints";
/// Keyspace of applied command ids: command id → original outcome.
pub const CF_IDEMPOTENCY: &str = "idempotency";
/// Keyspace of read models: model name, NUL, key → value.
pub const CF_READ_MODELS: &str = "readmodels";
/// Keyspace of stream lifecycle records: stream id → first readable
/// version, version, tombstone; erasures under way; retention cursors.
pub const CF_STREAM_META: &str = "streammeta";
/// Keyspace of data subjects' keys: subject id → key, or the mark that it
/// was forgotten.
pub const CF_SUBJECT_KEYS: &str = "subjectkeys";
/// Every keyspace besides RocksDB's `default` (which holds the format marker).
pub const KEYSPACES: [&str; 8] = [
    CF_GLOBAL,
    CF_STREAMS,
    CF_SNAPSHOTS,
    CF_CHECKPOINTS,
    CF_IDEMPOTENCY,
    CF_READ_MODELS,
    CF_STREAM_META,
    CF_SUBJECT_KEYS,
];

/// Most events one `read_all` call examines; a filtered read that finds
/// fewer matches returns early with `next_position` to continue from.
pub const READ_ALL_SCAN_EVENTS_MAX: usize = 65_536;
