//! Bytes on disk: keys and values of every keyspace. `docs/format.md`
//! describes the same layout; keep the two in step.
//!
//! Every value eventfold writes, except the 8-byte index entries of the
//! `streams` keyspace, starts with a format byte and ends with a big-endian
//! CRC32C of all the bytes before it. Integers are big-endian so that keys
//! sort numerically.

pub(crate) mod frame;
mod keys;
mod lifecycle;
mod record;
mod values;

pub mod decoders;
pub mod payload;

#[cfg(test)]
mod tests;

pub(crate) use keys::*;
// Without the RocksDB backend nothing reads the lifecycle's bytes.
#[cfg_attr(not(feature = "rocksdb"), allow(unused_imports))]
pub(crate) use lifecycle::*;
pub(crate) use record::*;
pub(crate) use values::*;
