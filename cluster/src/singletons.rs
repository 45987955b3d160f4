//! Single-runners: the process managers that run once in the cluster.
//!
//! Each has a claim in etcd like a partition's (`/singletons/{name}`,
//! written only if absent, under the node's lease; the create revision is
//! the token), placed by rendezvous hashing over the live members, and a
//! fence of its own in the log: a number above every partition's
//! ([`fence_of`]), whose markers go on `{prefix}.fence.{fence}` like a
//! partition's. The process manager's state (instances, outbox, timers,
//! checkpoint) is written through the log on `{prefix}.rm.{fence}` under
//! that fence and applied by every node's follower into its replica, so
//! the node that claims it next starts from the state the last one wrote.
//!
//! This node's [`Singletons`] is the runtime's
//! [`ProcessPlacement`](eventfold_runtime::process::ProcessPlacement): a
//! host runs while its claim is held and not being handed off.

use crate::claims::Claim;
use crate::partition::PARTITIONS_MAX;
use eventfold_runtime::process::ProcessPlacement;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

/// The fence of the single-runner `name`: above every partition number
/// (the top bit set), the rest a CRC32C of the name.
pub fn fence_of(name: &str) -> u32 {
    0x8000_0000 | (crc32c::crc32c(name.as_bytes()) & 0x7fff_ffff)
}

const _: () = assert!(PARTITIONS_MAX < 0x8000_0000);

/// The single-runners of one node: their names, and the claims it holds.
pub struct Singletons {
    names: Vec<(String, u32)>,
    claims: RwLock<HashMap<String, Claim>>,
    /// The token each host last stood down from.
    stood_down: Mutex<HashMap<String, u64>>,
    stood: watch::Sender<u64>,
    /// Read-model commits under this node's claims, for message ids.
    commits: AtomicU64,
}

/// Two single-runners of one node share a fence.
#[derive(Debug, thiserror::Error)]
#[error("process managers {0:?} and {1:?} share fence {2}: rename one")]
pub struct FenceClash(pub String, pub String, pub u32);

impl Singletons {
    /// The single-runners `names` (the node's process managers).
    pub fn new(names: Vec<String>) -> Result<Arc<Self>, FenceClash> {
        let mut fences: HashMap<u32, String> = HashMap::new();
        let mut named = Vec::with_capacity(names.len());
        for name in names {
            let fence = fence_of(&name);
            if let Some(other) = fences.insert(fence, name.clone()) {
                return Err(FenceClash(other, name, fence));
            }
            named.push((name, fence));
        }
        let (stood, _) = watch::channel(0);
        Ok(Arc::new(Self {
            names: named,
            claims: RwLock::new(HashMap::new()),
            stood_down: Mutex::new(HashMap::new()),
            stood,
            commits: AtomicU64::new(0),
        }))
    }

    /// Every single-runner's name and fence.
    pub fn names(&self) -> &[(String, u32)] {
        &self.names
    }

    /// The fence of `name` if it is one of this node's single-runners.
    pub fn fence(&self, name: &str) -> Option<u32> {
        self.names.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
    }

    fn write(&self, change: impl FnOnce(&mut HashMap<String, Claim>)) {
        if let Ok(mut claims) = self.claims.write() {
            change(&mut claims);
        }
    }

    /// The active (not draining) claim on `name`.
    pub fn active(&self, name: &str) -> Option<Claim> {
        let claims = self.claims.read().ok()?;
        claims.get(name).copied().filter(|c| !c.draining)
    }

    /// The single-runners claimed, draining ones too.
    pub fn held(&self) -> Vec<(String, Claim)> {
        self.claims
            .read()
            .map(|claims| claims.iter().map(|(n, c)| (n.clone(), *c)).collect())
            .unwrap_or_default()
    }

    /// Holds `claim` on `name`.
    pub fn insert(&self, name: &str, claim: Claim) {
        self.write(|claims| {
            claims.insert(name.to_owned(), claim);
        });
    }

    /// Stops the host of `name` (a hand-off).
    pub fn drain(&self, name: &str) {
        self.write(|claims| {
            if let Some(claim) = claims.get_mut(name) {
                claim.draining = true;
            }
        });
    }

    /// Drops the claim on `name`.
    pub fn remove(&self, name: &str) {
        self.write(|claims| {
            claims.remove(name);
        });
    }

    /// Drops the claim on `name` if it is still the one whose marker is
    /// at `marker` (the log refused a write under it, or one could not be
    /// resolved).
    pub fn fenced(&self, name: &str, marker: u64) {
        self.write(|claims| {
            if claims.get(name).is_some_and(|c| c.fence.sequence == marker) {
                claims.remove(name);
            }
        });
    }

    /// Drops every claim (the lease is lost).
    pub fn clear(&self) {
        self.write(HashMap::clear);
    }

    /// Waits until the host of `name` stood down from `token`, up to
    /// `limit`; whether it did.
    pub async fn stood_down_from(
        &self,
        name: &str,
        token: u64,
        limit: std::time::Duration,
    ) -> bool {
        let mut stood = self.stood.subscribe();
        let done = |singletons: &Self| {
            singletons
                .stood_down
                .lock()
                .map(|s| s.get(name) == Some(&token))
                .unwrap_or(false)
        };
        let wait = async {
            while !done(self) {
                if stood.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok() && done(self)
    }

    /// A number for a read-model commit's message ids, new for each.
    pub fn next_commit(&self) -> u64 {
        self.commits.fetch_add(1, Ordering::Relaxed)
    }
}

/// A host's grant is its claim's marker: a claim taken up again (the
/// same etcd key, a new marker) is a new grant.
impl ProcessPlacement for Singletons {
    fn grant(&self, name: &str) -> Option<u64> {
        self.active(name).map(|claim| claim.fence.sequence)
    }

    fn stood_down(&self, name: &str, grant: u64) {
        if let Ok(mut stood) = self.stood_down.lock() {
            stood.insert(name.to_owned(), grant);
        }
        self.stood.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Fence;

    fn claim(token: u64, marker: u64) -> Claim {
        Claim {
            token,
            fence: Fence {
                sequence: marker,
                token,
            },
            draining: false,
        }
    }

    #[test]
    fn fences_lie_above_every_partition() {
        for name in ["transfers", "billing", ""] {
            assert!(fence_of(name) >= 0x8000_0000);
            assert!(fence_of(name) > PARTITIONS_MAX);
        }
        assert_eq!(fence_of("transfers"), fence_of("transfers"));
    }

    #[test]
    fn a_grant_is_the_active_claim_and_a_hand_off_waits_for_the_stand_down()
    -> Result<(), FenceClash> {
        let singletons = Singletons::new(vec!["a".into(), "b".into()])?;
        assert_eq!(singletons.grant("a"), None);
        singletons.insert("a", claim(3, 7));
        assert_eq!(singletons.grant("a"), Some(7), "the marker's sequence");
        singletons.drain("a");
        assert_eq!(singletons.grant("a"), None, "draining: no grant");
        let io = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|_| FenceClash(String::new(), String::new(), 0))?;
        let short = std::time::Duration::from_millis(20);
        assert!(!io.block_on(singletons.stood_down_from("a", 7, short)));
        singletons.stood_down("a", 7);
        assert!(io.block_on(singletons.stood_down_from("a", 7, short)));
        singletons.insert("b", claim(3, 9));
        singletons.fenced("b", 8);
        assert_eq!(
            singletons.grant("b"),
            Some(9),
            "an earlier marker's refusal"
        );
        singletons.fenced("b", 9);
        assert_eq!(singletons.grant("b"), None);
        Ok(())
    }
}
