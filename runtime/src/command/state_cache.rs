//! The state cache: the state of passivated aggregates, kept encoded in
//! memory so that reactivating one skips the store.
//!
//! A resident aggregate actor costs about a kilobyte (actix context, mailbox,
//! tokio task); its state is often a few dozen bytes. When an actor stops
//! with a clean state (loaded, nothing in flight, no reload pending) it hands
//! that state to its shard, encoded as a snapshot would be; the next actor
//! for the stream starts from it instead of reading the snapshot and events
//! from RocksDB. Each shard keeps its own cache (streams are routed to one
//! shard), bounded in bytes, least recently cached evicted first.
//!
//! **Freshness.** A cached state is exactly what the stopped actor held, and
//! only aggregate actors append to aggregate streams, so it is as current as
//! a resident actor's state would be. A write to the stream from outside the
//! runtime (straight through the store) is caught the way it is for a
//! resident actor: the next append's expected version fails and the actor
//! reloads from the store. Until then, a command that writes nothing (a
//! refusal, a no-op) is decided on the state as it stands, as a resident
//! actor would decide it; turn the cache off (`state_cache_bytes_max: 0`)
//! and keep `resident_actors_max` low if streams are written from outside.

use eventfold_domain::{EventId, StreamId};
use lru::LruCache;

/// Bytes counted for one entry besides its stream id and encoded state: the
/// LRU node (112), its hash-table slot (about 24), the allocation headers of
/// the state and of the stream id's `Arc` (about 56). Measured: a million
/// entries of 12-byte states under 10-byte ids grew RSS by 180 bytes each
/// with the ids' allocations shared, about 212 with them. The allocator's
/// fragmentation under churn comes on top (see BENCHMARKS.md, W4).
pub(crate) const STATE_CACHE_ENTRY_OVERHEAD_BYTES: usize = 192;

/// A passivated aggregate's state, as its actor left it.
pub(crate) struct CachedState {
    /// The aggregate type (`Aggregate::KIND`) the state belongs to.
    pub kind: &'static str,
    /// The state, encoded with the snapshot codec (`payload::encode`).
    pub state: Box<[u8]>,
    /// The stream version the state includes.
    pub version: u64,
    /// The id of the event at `version`, when the actor knew it.
    pub last_event: Option<EventId>,
    /// The stream version of the last snapshot written.
    pub snapshot_version: u64,
}

impl CachedState {
    fn bytes(&self, stream: &StreamId) -> usize {
        STATE_CACHE_ENTRY_OVERHEAD_BYTES + stream.as_str().len() + self.state.len()
    }
}

/// One shard's cached states, bounded by `bytes_max`.
pub(crate) struct StateCache {
    entries: LruCache<StreamId, CachedState, foldhash::fast::RandomState>,
    bytes: usize,
    bytes_max: usize,
}

impl StateCache {
    /// A cache holding at most `bytes_max` bytes (0: keeps nothing).
    pub(crate) fn new(bytes_max: usize) -> Self {
        Self {
            entries: LruCache::unbounded_with_hasher(foldhash::fast::RandomState::default()),
            bytes: 0,
            bytes_max,
        }
    }

    /// Keeps `cached` as the state of `stream` (replacing any older one),
    /// evicting the least recently cached past the bound. An entry larger
    /// than the whole bound is not kept.
    pub(crate) fn put(&mut self, stream: StreamId, cached: CachedState) {
        let size = cached.bytes(&stream);
        if let Some(old) = self.entries.pop(&stream) {
            self.bytes -= old.bytes(&stream);
        }
        if size > self.bytes_max {
            return;
        }
        self.bytes += size;
        self.entries.put(stream, cached);
        while self.bytes > self.bytes_max {
            match self.entries.pop_lru() {
                Some((stream, old)) => self.bytes -= old.bytes(&stream),
                None => break,
            }
        }
    }

    /// Removes and returns the state cached for `stream` when it belongs to
    /// aggregate type `kind` (a state of another type is dropped).
    pub(crate) fn take(&mut self, stream: &StreamId, kind: &'static str) -> Option<CachedState> {
        let cached = self.entries.pop(stream)?;
        self.bytes -= cached.bytes(stream);
        (cached.kind == kind).then_some(cached)
    }

    /// Drops the states of every stream `matches` says.
    pub(crate) fn forget_where(&mut self, matches: &dyn Fn(&StreamId) -> bool) {
        let streams: Vec<StreamId> = self
            .entries
            .iter()
            .filter(|(stream, _)| matches(stream))
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in streams {
            if let Some(old) = self.entries.pop(&stream) {
                self.bytes -= old.bytes(&stream);
            }
        }
    }

    /// Bytes counted for the entries held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: &str) -> StreamId {
        StreamId::new(id).unwrap_or_else(|e| panic!("{e}"))
    }

    fn cached(kind: &'static str, state_bytes: usize, version: u64) -> CachedState {
        CachedState {
            kind,
            state: vec![7; state_bytes].into_boxed_slice(),
            version,
            last_event: None,
            snapshot_version: 0,
        }
    }

    #[test]
    fn take_returns_what_was_put_once() {
        let mut cache = StateCache::new(10_000);
        cache.put(stream("a-1"), cached("a", 10, 3));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), STATE_CACHE_ENTRY_OVERHEAD_BYTES + 3 + 10);
        let taken = cache.take(&stream("a-1"), "a").map(|p| p.version);
        assert_eq!(taken, Some(3));
        assert!(cache.take(&stream("a-1"), "a").is_none());
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }

    #[test]
    fn a_state_of_another_kind_is_dropped_not_returned() {
        let mut cache = StateCache::new(10_000);
        cache.put(stream("x"), cached("a", 4, 1));
        assert!(cache.take(&stream("x"), "b").is_none());
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }

    #[test]
    fn putting_again_replaces_and_recounts() {
        let mut cache = StateCache::new(10_000);
        cache.put(stream("s"), cached("a", 100, 1));
        cache.put(stream("s"), cached("a", 10, 2));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), STATE_CACHE_ENTRY_OVERHEAD_BYTES + 1 + 10);
        assert_eq!(cache.take(&stream("s"), "a").map(|p| p.version), Some(2));
    }

    #[test]
    fn the_bound_evicts_the_least_recently_put() {
        let entry = STATE_CACHE_ENTRY_OVERHEAD_BYTES + 2 + 40;
        let mut cache = StateCache::new(3 * entry);
        for i in 0..5u64 {
            cache.put(stream(&format!("s{i}")), cached("a", 40, i));
            assert!(cache.bytes() <= 3 * entry);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.take(&stream("s0"), "a").is_none());
        assert!(cache.take(&stream("s1"), "a").is_none());
        for i in 2..5u64 {
            let version = cache
                .take(&stream(&format!("s{i}")), "a")
                .map(|p| p.version);
            assert_eq!(version, Some(i));
        }
    }

    #[test]
    fn an_entry_over_the_whole_bound_or_a_zero_bound_keeps_nothing() {
        let mut cache = StateCache::new(STATE_CACHE_ENTRY_OVERHEAD_BYTES + 10);
        cache.put(stream("big"), cached("a", 1000, 1));
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        let mut off = StateCache::new(0);
        off.put(stream("s"), cached("a", 1, 1));
        assert_eq!((off.len(), off.bytes()), (0, 0));
    }
}
