//! The partitions this node holds a claim on, shared by the ownership loop
//! (which adds and removes them), the store (which writes only under an
//! active claim) and the command routes (which listen for a partition
//! only while it is held).

use crate::log::Fence;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// A claim on a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Its token (etcd's create revision of the claim key), which every
    /// event written under it carries.
    pub token: u64,
    /// The marker that opened it in the log.
    pub fence: Fence,
    /// Being handed off: no new append starts under it.
    pub draining: bool,
}

/// The claims of one node.
pub struct Claims {
    claims: RwLock<HashMap<u32, Claim>>,
    in_flight: Vec<AtomicUsize>,
    changed: watch::Sender<u64>,
}

/// An append under way in a partition; counted until dropped, so that a
/// hand-off waits for it.
pub struct InFlight {
    claims: Arc<Claims>,
    partition: u32,
    /// The claim it writes under.
    pub claim: Claim,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(count) = self.claims.in_flight.get(self.partition as usize) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Claims {
    /// No claims, among `partitions`.
    pub fn new(partitions: u32) -> Arc<Self> {
        let (changed, _) = watch::channel(0);
        Arc::new(Self {
            claims: RwLock::new(HashMap::new()),
            in_flight: (0..partitions).map(|_| AtomicUsize::new(0)).collect(),
            changed,
        })
    }

    fn write(&self, change: impl FnOnce(&mut HashMap<u32, Claim>)) {
        if let Ok(mut claims) = self.claims.write() {
            change(&mut claims);
        }
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// The active (not draining) claim on `partition`.
    pub fn active(&self, partition: u32) -> Option<Claim> {
        let claims = self.claims.read().ok()?;
        claims.get(&partition).copied().filter(|c| !c.draining)
    }

    /// Starts an append under the active claim on `partition`.
    pub fn enter(self: &Arc<Self>, partition: u32) -> Option<InFlight> {
        let count = self.in_flight.get(partition as usize)?;
        count.fetch_add(1, Ordering::AcqRel);
        // Counted before the claim is read: a hand-off that marks the
        // claim draining and then sees no append in flight knows none
        // will start under it.
        let mut guard = InFlight {
            claims: Arc::clone(self),
            partition,
            claim: Claim {
                token: 0,
                fence: Fence {
                    sequence: 0,
                    token: 0,
                },
                draining: true,
            },
        };
        guard.claim = self.active(partition)?;
        Some(guard)
    }

    /// Appends under way in `partition`.
    pub fn in_flight(&self, partition: u32) -> usize {
        self.in_flight
            .get(partition as usize)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Holds `claim` on `partition`.
    pub fn insert(&self, partition: u32, claim: Claim) {
        self.write(|claims| {
            claims.insert(partition, claim);
        });
    }

    /// Stops new appends under the claim on `partition` (a hand-off).
    pub fn drain(&self, partition: u32) {
        self.write(|claims| {
            if let Some(claim) = claims.get_mut(&partition) {
                claim.draining = true;
            }
        });
    }

    /// Drops the claim on `partition`.
    pub fn remove(&self, partition: u32) {
        self.write(|claims| {
            claims.remove(&partition);
        });
    }

    /// Drops the claim on `partition` if it is still the one with
    /// `token`: the log refused an append under it (fenced).
    pub fn fenced(&self, partition: u32, token: u64) {
        self.write(|claims| {
            if claims.get(&partition).is_some_and(|c| c.token == token) {
                claims.remove(&partition);
            }
        });
    }

    /// Drops every claim (the lease is lost).
    pub fn clear(&self) {
        self.write(HashMap::clear);
    }

    /// The partitions claimed, draining ones too, in order.
    pub fn held(&self) -> Vec<(u32, Claim)> {
        let mut held: Vec<(u32, Claim)> = self
            .claims
            .read()
            .map(|claims| claims.iter().map(|(p, c)| (*p, *c)).collect())
            .unwrap_or_default();
        held.sort_by_key(|(p, _)| *p);
        held
    }

    /// Told of every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
