//! Single-runners: the process managers and event handlers that run once
//! in the cluster.
//!
//! Each has a claim in etcd like a partition's (`/singletons/{name}`,
//! written only if absent, under the node's lease; the create revision is
//! the token), placed by rendezvous hashing over the live members, and a
//! fence of its own in the log: a number above every partition's
//! ([`fence_of`]), whose markers go on `{prefix}.fence.{fence}` like a
//! partition's. A process manager's state (instances, outbox, timers,
//! checkpoint), or an event handler's checkpoint and dead letters, is
//! written through the log on `{prefix}.rm.{fence}` under that fence and
//! applied by every node's follower into its replica, so the node that
//! claims it next starts from what the last one wrote.
//!
//! This node's [`Singletons`] is the runtime's
//! [`Placement`](eventfold_runtime::Placement): a
//! host runs while its claim is held and not being handed off.

use crate::claims::Claim;
use crate::partition::PARTITIONS_MAX;
use eventfold_runtime::{Placement, RunnerKind, SingleRunner};
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
    kinds: HashMap<String, RunnerKind>,
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
    /// The node's single-runners (its runtime's
    /// [`single_runners`](eventfold_runtime::RuntimeBuilder::single_runners)).
    pub fn new(runners: Vec<SingleRunner>) -> Result<Arc<Self>, FenceClash> {
        let mut fences: HashMap<u32, String> = HashMap::new();
        let mut named = Vec::with_capacity(runners.len());
        let mut kinds = HashMap::new();
        for SingleRunner { name, kind } in runners {
            let fence = fence_of(&name);
            if let Some(other) = fences.insert(fence, name.clone()) {
                return Err(FenceClash(other, name, fence));
            }
            kinds.insert(name.clone(), kind);
            named.push((name, fence));
        }
        let (stood, _) = watch::channel(0);
        Ok(Arc::new(Self {
            names: named,
            kinds,
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

    /// The single-runner that writes the read model or checkpoint
    /// `written`, if one does: `$pm.{name}` is a process manager's; an
    /// event handler's are its checkpoint `{name}@v{n}` (`#{i}` after it
    /// when partitioned) and its dead letters `$parked.{checkpoint}`.
    pub fn runner_of(&self, written: &str) -> Option<&str> {
        if let Some(name) = written.strip_prefix("$pm.") {
            return self
                .kinds
                .get_key_value(name)
                .filter(|(_, kind)| **kind == RunnerKind::ProcessManager)
                .map(|(name, _)| name.as_str());
        }
        let checkpoint = written.strip_prefix("$parked.").unwrap_or(written);
        let (name, rest) = checkpoint.rsplit_once("@v")?;
        let (version, partition) = match rest.split_once('#') {
            Some((version, partition)) => (version, Some(partition)),
            None => (rest, None),
        };
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let runner = match partition {
            Some(partition) => format!("{name}#{partition}"),
            None => name.to_owned(),
        };
        self.kinds
            .get_key_value(runner.as_str())
            .filter(|(_, kind)| **kind != RunnerKind::ProcessManager)
            .map(|(name, _)| name.as_str())
    }

    /// Whether the single-runner `runner` writes `written`: its own
    /// names ([`runner_of`](Self::runner_of)), or, for a partition of a
    /// projection, the projection's read model `{name}@v{n}`.
    pub fn writes(&self, runner: &str, written: &str) -> bool {
        if self.runner_of(written) == Some(runner) {
            return true;
        }
        match self.kinds.get(runner) {
            Some(RunnerKind::Projection { name }) => written
                .strip_prefix(name.as_str())
                .and_then(|rest| rest.strip_prefix("@v"))
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())),
            _ => false,
        }
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
impl Placement for Singletons {
    fn places(&self, name: &str) -> bool {
        self.kinds.contains_key(name)
    }

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

    fn process(name: &str) -> SingleRunner {
        SingleRunner {
            name: name.into(),
            kind: RunnerKind::ProcessManager,
        }
    }

    fn handler(runner: &str, name: &str) -> SingleRunner {
        SingleRunner {
            name: runner.into(),
            kind: RunnerKind::EventHandler { name: name.into() },
        }
    }

    #[test]
    fn what_each_single_runner_writes_is_known_by_its_names() -> Result<(), FenceClash> {
        let singletons = Singletons::new(vec![
            process("transfers"),
            handler("mailer", "mailer"),
            handler("audit#0", "audit"),
            handler("audit#1", "audit"),
        ])?;
        assert_eq!(singletons.runner_of("$pm.transfers"), Some("transfers"));
        assert_eq!(singletons.runner_of("$pm.mailer"), None, "a handler's name");
        assert_eq!(singletons.runner_of("mailer@v1"), Some("mailer"));
        assert_eq!(singletons.runner_of("$parked.mailer@v3"), Some("mailer"));
        assert_eq!(singletons.runner_of("audit@v1#1"), Some("audit#1"));
        assert_eq!(singletons.runner_of("$parked.audit@v2#0"), Some("audit#0"));
        assert_eq!(singletons.runner_of("audit@v1#2"), None);
        assert_eq!(singletons.runner_of("balances@v1"), None, "a projection");
        assert_eq!(singletons.runner_of("mailer@vx"), None);
        assert_eq!(
            singletons.runner_of("transfers@v1"),
            None,
            "a process manager's name"
        );
        assert!(singletons.places("audit#1") && !singletons.places("balances"));
        Ok(())
    }

    #[test]
    fn a_placed_projection_writes_its_model_from_each_partition() -> Result<(), FenceClash> {
        let projection = |runner: &str| SingleRunner {
            name: runner.into(),
            kind: RunnerKind::Projection {
                name: "totals".into(),
            },
        };
        let singletons = Singletons::new(vec![projection("totals#0"), projection("totals#1")])?;
        assert_eq!(singletons.runner_of("totals@v1#0"), Some("totals#0"));
        assert_eq!(singletons.runner_of("totals@v1"), None, "shared by both");
        assert!(singletons.writes("totals#0", "totals@v1"));
        assert!(singletons.writes("totals#1", "totals@v2"));
        assert!(singletons.writes("totals#1", "$parked.totals@v1#1"));
        assert!(!singletons.writes("totals#1", "$parked.totals@v1#0"));
        assert!(!singletons.writes("totals#0", "balances@v1"));
        Ok(())
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
        let singletons = Singletons::new(vec![process("a"), process("b")])?;
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
