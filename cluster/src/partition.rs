//! Where an aggregate lives in the cluster: its partition, a stable hash of
//! its stream id (CRC32C, a fixed algorithm, not a seeded hasher), and the
//! partition's place among the live members by rendezvous hashing: each
//! member scores each partition, the highest score owns it, so a member
//! that joins or leaves moves only the partitions it wins or held.

/// The largest number of partitions a cluster may have.
pub const PARTITIONS_MAX: u32 = 4096;

/// The partition of `stream` among `partitions` (at least 1).
pub fn partition_of(stream: &str, partitions: u32) -> u32 {
    crc32c::crc32c(stream.as_bytes()) % partitions.max(1)
}

/// The member that should own `partition` among `members` (none when
/// `members` is empty). Every node computes the same answer from the same
/// member list, in any order.
pub fn owner_of(partition: u32, members: &[String]) -> Option<&str> {
    members
        .iter()
        .max_by_key(|member| (score(member, partition), member.as_str()))
        .map(String::as_str)
}

/// The partitions `member` should own among `members`.
pub fn partitions_of(member: &str, members: &[String], partitions: u32) -> Vec<u32> {
    (0..partitions)
        .filter(|p| owner_of(*p, members) == Some(member))
        .collect()
}

/// A member's score for a partition: CRC32C of the member's name, then the
/// partition's bytes, mixed to 64 bits (splitmix64's finaliser) so that
/// near names spread.
fn score(member: &str, partition: u32) -> u64 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(member.as_bytes()), &partition.to_be_bytes());
    let mut z = u64::from(crc) ^ (u64::from(partition) << 32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partitions_are_stable_across_runs_and_releases() {
        // CRC32C is a fixed algorithm: these never change.
        assert_eq!(
            partition_of("account-1", 64),
            crc32c::crc32c(b"account-1") % 64
        );
        assert_eq!(partition_of("account-1", 1), 0);
        assert_eq!(partition_of("x", 0), 0);
    }

    #[test]
    fn every_partition_has_one_owner_whatever_the_order() {
        let a = names(&["node-a", "node-b", "node-c"]);
        let b = names(&["node-c", "node-a", "node-b"]);
        let mut counts = std::collections::HashMap::new();
        for p in 0..256 {
            let owner = owner_of(p, &a).expect("members");
            assert_eq!(Some(owner), owner_of(p, &b));
            *counts.entry(owner).or_insert(0) += 1;
        }
        // Spread: each of three gets a fair share of 256.
        for (_, count) in counts {
            assert!((50..=120).contains(&count), "{count}");
        }
    }

    #[test]
    fn a_member_leaving_moves_only_its_partitions() {
        let three = names(&["node-a", "node-b", "node-c"]);
        let two = names(&["node-a", "node-c"]);
        for p in 0..256 {
            let before = owner_of(p, &three).expect("members");
            let after = owner_of(p, &two).expect("members");
            if before != "node-b" {
                assert_eq!(before, after);
            }
        }
        assert_eq!(owner_of(3, &[]), None);
    }
}
