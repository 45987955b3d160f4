//! Where a stream goes: its bucket among the shards of the write side and
//! among the partitions of a partitioned projection. One function for both.

/// The bucket of a stream among `buckets`: a hash of its id that is stable
/// across runs and versions (`DefaultHasher::new()` has fixed keys). It
/// places streams on shards and on projection partitions; a partitioned
/// projection's checkpoints depend on it never changing.
pub(crate) fn bucket_of(stream: &str, buckets: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    stream.hash(&mut hasher);
    (hasher.finish() % buckets.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable() {
        // Partitioned projections' checkpoints depend on these never moving
        // (across runs, and across Rust releases: std does not promise
        // DefaultHasher's algorithm, so a change shows here first).
        let pinned = [
            ("acc-1", 3, 0),
            ("acc-2", 3, 2),
            ("account-42", 1, 2),
            ("transfer-x", 3, 6),
        ];
        for (stream, of_four, of_seven) in pinned {
            assert_eq!(
                (bucket_of(stream, 4), bucket_of(stream, 7)),
                (of_four, of_seven),
                "{stream}"
            );
        }
        assert_eq!(bucket_of("acc-1", 1), 0);
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|i| bucket_of(&format!("acc-{i}"), 4))
            .collect();
        assert_eq!(spread.len(), 4);
        assert_eq!(bucket_of("acc-1", 0), bucket_of("acc-1", 1));
    }
}
