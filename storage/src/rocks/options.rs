//! The RocksDB options of the store: the database's, each keyspace's
//! (block cache, bloom filters, prefix extractor, memtable insert hints),
//! and the read and write options every operation uses.

use crate::codec;
use crate::error::OpenError;
use crate::keyspaces::*;
use crate::options::{Durability, StoreOptions};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions,
    SliceTransform, WriteOptions,
};

/// Whether a write made outside the writer thread waits for a WAL sync of
/// its own under `Durability::Sync` (see `RocksStore::write_direct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirectSync {
    /// Synced before the write returns.
    Own,
    /// Written to the WAL unsynced; a later sync covers it.
    Covered,
}

pub(crate) fn write_options(durability: Durability) -> WriteOptions {
    let mut options = WriteOptions::default();
    match durability {
        Durability::Sync => options.set_sync(true),
        Durability::Buffered => options.set_sync(false),
        Durability::NoWal => options.disable_wal(true),
    }
    options
}

pub(crate) fn db_options(
    options: &StoreOptions,
) -> Result<(Options, Vec<ColumnFamilyDescriptor>), OpenError> {
    let mut db = Options::default();
    // See `recovery`: damage before the log's end refuses the open.
    db.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    db.set_max_background_jobs(2);
    db.set_bytes_per_sync(1024 * 1024);
    let cache = Cache::new_lru_cache(options.block_cache_bytes);
    let families = std::iter::once("default")
        .chain(KEYSPACES)
        .map(|name| Ok(ColumnFamilyDescriptor::new(name, cf_options(name, &cache)?)))
        .collect::<Result<_, OpenError>>()?;
    Ok((db, families))
}

/// The options of keyspace `name`, its table files in `cache`.
pub(crate) fn cf_options(name: &str, cache: &Cache) -> Result<Options, OpenError> {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    let mut cf = Options::default();
    cf.set_compression_type(DBCompressionType::Lz4);
    if name == CF_STREAMS {
        // Every read of the stream index seeks into one stream: the
        // bloom filters hold stream prefixes instead of whole keys
        // (never looked up), and the memtable has one too.
        table.set_whole_key_filtering(false);
        cf.set_prefix_extractor(SliceTransform::create(
            STREAMS_PREFIX_EXTRACTOR,
            codec::stream_key_prefix,
            Some(codec::is_stream_key),
        ));
        cf.set_memtable_prefix_bloom_ratio(STREAMS_MEMTABLE_PREFIX_BLOOM_RATIO);
    }
    if POINT_LOOKUP_KEYSPACES.contains(&name) {
        // Most lookups here are of keys that are not there (a new
        // process instance, a command id not seen before): a bloom
        // filter of the memtable's keys answers them without a
        // search of its skip list (a cache miss per level).
        cf.set_memtable_prefix_bloom_ratio(POINT_LOOKUP_MEMTABLE_BLOOM_RATIO);
        cf.set_memtable_whole_key_filtering(true);
    }
    cf.set_block_based_table_factory(&table);
    if name == CF_STREAMS {
        // Each event's index key lands inside its stream's range, at
        // a random place among all streams: a search of the memtable's
        // skip list from its top, a cache miss per level, was half
        // the writer thread's time. With hints by tag (see
        // STREAMS_HINT_BYTES) the insert starts from where the
        // stream's last key went.
        // The option exists only as a string in RocksDB's C API; the
        // string is applied on top of everything set above.
        cf = cf.get_options_from_string(streams_insert_hint_option())?;
    }
    Ok(cf)
}

/// RocksDB option giving the `streams` memtable one insert hint per value
/// of the first [`STREAMS_HINT_BYTES`] bytes of a key's tag.
pub(crate) fn streams_insert_hint_option() -> String {
    format!("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{STREAMS_HINT_BYTES}")
}

/// Bytes of a `streams` key's tag that pick its memtable insert hint: 2, so
/// a memtable keeps at most 65,536 hints (a hash map in RocksDB of about
/// 56 bytes an entry, 3.7 MB at most, not counted toward the memtable's
/// size). Streams sharing those bytes share a hint; their keys sort next to
/// each other, so a hint left by another stream still starts the insert a
/// few skip-list levels from the right place. The tag's full 4 bytes gave
/// one hint per stream: W4's and W8's million streams held 100-140 MB more.
pub(crate) const STREAMS_HINT_BYTES: usize = 2;
const _: () = assert!(STREAMS_HINT_BYTES <= codec::STREAM_TAG_BYTES);

/// The name RocksDB records in each `streams` table file for its prefix
/// extractor ([`codec::stream_key_prefix`]); files written under another
/// name are read without their prefix filters.
pub(crate) const STREAMS_PREFIX_EXTRACTOR: &str = "eventfold.stream-prefix.v2";

/// Share of the `streams` memtable's size given to its prefix bloom filter.
pub(crate) const STREAMS_MEMTABLE_PREFIX_BLOOM_RATIO: f64 = 0.1;

/// The keyspaces read by whole key (`get`), whose memtables keep a bloom
/// filter of whole keys.
pub(crate) const POINT_LOOKUP_KEYSPACES: [&str; 4] =
    [CF_READ_MODELS, CF_IDEMPOTENCY, CF_SNAPSHOTS, CF_CHECKPOINTS];

/// Share of those memtables' size given to their bloom filter: 2% of a
/// 64 MiB memtable is 10.7 million bits, about 10 bits per key at 1 million
/// keys of 64 bytes.
pub(crate) const POINT_LOOKUP_MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// Read options for the index entries of one stream: bounded to them, and
/// seeking in prefix mode so the `streams` prefix filters skip the table
/// files that hold none of them.
pub(crate) fn stream_read_options(stream: &str, cache_only: bool) -> ReadOptions {
    let (lower, upper) = codec::stream_key_bounds(stream);
    let mut options = read_options(cache_only);
    options.set_prefix_same_as_start(true);
    options.set_iterate_lower_bound(lower);
    options.set_iterate_upper_bound(upper);
    options
}

/// Read options; `cache_only` reads memtables and the block cache only
/// (RocksDB's block-cache tier), failing with `Incomplete` where it would
/// need the disk.
pub(crate) fn read_options(cache_only: bool) -> ReadOptions {
    let mut options = ReadOptions::default();
    if cache_only {
        options.set_read_tier(rocksdb::ReadTier::BlockCache);
    }
    options
}
