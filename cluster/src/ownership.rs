//! Membership and partition ownership in etcd.
//!
//! A node keeps a lease (`lease_ttl`, renewed every third of it) and, under
//! it, its member key. Every `rebalance_every` it reads the members and
//! computes by rendezvous hashing the partitions it should own. For each
//! one it does not hold it writes the claim key in a transaction that
//! requires the key not to exist; the key's create revision is the claim's
//! token. It then writes the claim's marker to the log (which fences every
//! earlier claim's appends) and waits until its replica has applied the
//! marker, so that every event of the partition before it is in the
//! replica, and only then holds the claim. A partition it holds but should
//! not is handed off: no new append starts, those under way finish, the
//! claim is dropped and its key deleted.
//!
//! A lease that cannot be renewed before it runs out drops every claim at
//! once; the log's fence makes any append still on its way fail.

use crate::claims::{Claim, Claims};
use crate::follower::Progress;
use crate::lease::{keep_alive, lease_lost};
use crate::log::{Fence, Log, LogError, REPLICA_WAIT_MAX};
use crate::partition::{owner_of, partitions_of};
use crate::singletons::Singletons;
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Attempts to write a claim's marker when another marker came between
/// reading the last and writing.
pub const FENCE_ATTEMPTS_MAX: usize = 5;

/// The longest a rebalance round may take. The lease is renewed on a task
/// of its own, so a round stuck on a request that never ends would leave
/// the node holding claims it no longer serves; past this bound the node
/// revokes its lease and starts a new session with nothing held. A round
/// that works takes well under a second, one that waits on an election a
/// few of the log's and replica's bounds.
pub const ROUND_MAX: Duration = Duration::from_secs(60);

/// How membership and ownership run.
#[derive(Clone, Debug)]
pub struct OwnershipConfig {
    /// The cluster's name: its keys live under `/eventfold/{cluster}/`.
    pub cluster: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The number of partitions (fixed for the cluster's life).
    pub partitions: u32,
    /// The lease's time to live (whole seconds, at least 2).
    pub lease_ttl: Duration,
    /// How often members and claims are compared.
    pub rebalance_every: Duration,
    /// How long a hand-off waits for appends under way.
    pub handoff_timeout: Duration,
}

impl OwnershipConfig {
    /// Defaults for `node` in `cluster` with `partitions`.
    pub fn new(cluster: &str, node: &str, partitions: u32) -> Self {
        Self {
            cluster: cluster.into(),
            node: node.into(),
            partitions,
            lease_ttl: Duration::from_secs(5),
            rebalance_every: Duration::from_millis(250),
            handoff_timeout: Duration::from_secs(5),
        }
    }

    fn base(&self) -> String {
        format!("/eventfold/{}", self.cluster)
    }

    fn member_key(&self, node: &str) -> String {
        format!("{}/members/{node}", self.base())
    }

    fn owner_key(&self, partition: u32) -> String {
        format!("{}/owners/{partition}", self.base())
    }

    fn singleton_key(&self, name: &str) -> String {
        format!("{}/singletons/{name}", self.base())
    }
}

/// Why an ownership step failed (each is retried on the next round).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnershipError {
    /// etcd refused or did not answer.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The log did not take the claim's marker.
    #[error("the claim's marker: {0}")]
    Log(#[from] LogError),
    /// The replica stopped before it applied the marker.
    #[error("the replica: {0}")]
    Replica(#[from] crate::follower::FollowError),
    /// The replica did not apply the claim's marker in time (its follower
    /// is reading the log again); the claim is given up and retried.
    #[error("the replica did not apply the claim's marker at {sequence} within {waited:?}")]
    ReplicaBehind {
        /// The marker's position.
        sequence: u64,
        /// How long the claim waited.
        waited: Duration,
    },
    /// A rebalance round did not end within [`ROUND_MAX`]: the session
    /// ends and its lease is revoked.
    #[error("a rebalance round did not end within {waited:?}")]
    RoundStuck {
        /// The bound.
        waited: Duration,
    },
    /// The lease ran out.
    #[error("the lease ran out")]
    LeaseLost,
}

/// Lets go of what a node holds of a partition's aggregates (their actors
/// and cached states): called before a claim is used, since another node
/// may have written them meanwhile, and after one is lost.
pub type Release = Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the ownership loop works with.
pub struct Parts {
    /// The log, for the claims' markers.
    pub log: Log,
    /// The replica's progress, to wait for a marker.
    pub progress: Progress,
    /// The node's claims.
    pub claims: Arc<Claims>,
    /// Lets go of a partition's aggregates.
    pub release: Release,
    /// The node's single-runners and their claims.
    pub singletons: Arc<Singletons>,
}

/// Runs membership and ownership until `stop` turns true; then hands every
/// partition off and revokes the lease.
pub async fn run(
    config: OwnershipConfig,
    mut etcd: Client,
    parts: Parts,
    mut stop: watch::Receiver<bool>,
) {
    let owner = Owner {
        config,
        log: parts.log,
        progress: parts.progress,
        claims: parts.claims,
        release: parts.release,
        singletons: parts.singletons,
    };
    while !*stop.borrow() {
        if let Err(error) = owner.session(&mut etcd, &mut stop).await {
            tracing::warn!(node = %owner.config.node, %error, "ownership session ended");
            owner.lose_all().await;
            tokio::select! {
                _ = tokio::time::sleep(owner.config.rebalance_every) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

struct Owner {
    config: OwnershipConfig,
    log: Log,
    progress: Progress,
    claims: Arc<Claims>,
    release: Release,
    singletons: Arc<Singletons>,
}

impl Owner {
    /// Drops every claim at once (the lease is lost), then lets go of
    /// their aggregates.
    async fn lose_all(&self) {
        self.singletons.clear();
        let held = self.claims.held();
        self.claims.clear();
        for (partition, _) in held {
            (self.release)(partition).await;
        }
    }

    /// One lease's life: register, keep it, rebalance; returns when the
    /// lease is lost (an error) or the node stops (after the hand-off).
    ///
    /// The lease is renewed on a task of its own ([`keep_alive`]), so that
    /// a rebalance round waiting on the log (a claim's marker while
    /// JetStream elects a leader) or on a host standing down never holds
    /// a renewal back; the round is abandoned the moment the lease runs
    /// out.
    async fn session(
        &self,
        etcd: &mut Client,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), OwnershipError> {
        let ttl = self.config.lease_ttl.as_secs().max(2);
        let granted_at = Instant::now();
        let lease = etcd.lease_grant(ttl as i64, None).await?.id();
        let ttl = Duration::from_secs(ttl);
        // A fifth of the lease is kept in hand for clocks and scheduling.
        let margin = ttl / 5;
        etcd.put(
            self.config.member_key(&self.config.node),
            self.config.node.as_bytes(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
        let alive = etcd.lease_keep_alive(lease).await?;
        let valid = keep_alive(etcd.clone(), lease, ttl, granted_at, alive);
        let mut rebalance = tokio::time::interval(self.config.rebalance_every);
        loop {
            tokio::select! {
                _ = lease_lost(valid.clone(), margin) => return Err(OwnershipError::LeaseLost),
                _ = rebalance.tick() => {
                    let round = tokio::select! {
                        result = tokio::time::timeout(ROUND_MAX, self.rebalance(etcd, lease, &valid, margin)) => {
                            result.unwrap_or(Err(OwnershipError::RoundStuck { waited: ROUND_MAX }))
                        }
                        _ = lease_lost(valid.clone(), margin) => Err(OwnershipError::LeaseLost),
                    };
                    match round {
                        Ok(()) => {}
                        // The replica stopped, or the round is stuck: give
                        // every partition up, and the member key with the
                        // lease.
                        Err(error @ (OwnershipError::Replica(_) | OwnershipError::RoundStuck { .. })) => {
                            let _ = etcd.lease_revoke(lease).await;
                            return Err(error);
                        }
                        Err(error @ OwnershipError::LeaseLost) => return Err(error),
                        Err(error) => {
                            tracing::debug!(node = %self.config.node, %error, "rebalance round failed");
                        }
                    }
                }
                _ = stop.changed() => {
                    self.hand_off_all(etcd).await;
                    let _ = etcd.lease_revoke(lease).await;
                    return Ok(());
                }
            }
        }
    }

    /// Claims what this node should own and hands off what it should not.
    async fn rebalance(
        &self,
        etcd: &mut Client,
        lease: i64,
        valid: &watch::Receiver<Option<Instant>>,
        margin: Duration,
    ) -> Result<(), OwnershipError> {
        let expired = || valid.borrow().is_none_or(|d| Instant::now() + margin >= d);
        if let Some(error) = self.progress.stopped() {
            // A replica that stopped cannot tell what a partition holds:
            // hold none (the session ends, the claims go).
            return Err(error.into());
        }
        // One read of the cluster's keys: the members, and the claim keys
        // this lease holds.
        let base = format!("{}/", self.config.base());
        let answer = etcd
            .get(base.as_bytes(), Some(GetOptions::new().with_prefix()))
            .await?;
        let members_prefix = format!("{base}members/");
        let mut members = Vec::new();
        let mut ours = Vec::new();
        for kv in answer.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            if key.starts_with(&members_prefix) {
                members.extend(kv.value_str().ok().map(str::to_owned));
            } else if kv.lease() == lease && kv.value() == self.config.node.as_bytes() {
                ours.push(key.to_owned());
            }
        }
        let desired: BTreeSet<u32> =
            partitions_of(&self.config.node, &members, self.config.partitions)
                .into_iter()
                .collect();
        let held: BTreeSet<u32> = self.claims.held().into_iter().map(|(p, _)| p).collect();
        self.release_strays(etcd, &ours, &held).await;
        let leaving: Vec<u32> = held.difference(&desired).copied().collect();
        if !leaving.is_empty() {
            self.hand_off(etcd, &leaving).await;
        }
        for partition in desired.difference(&held) {
            if expired() {
                return Err(OwnershipError::LeaseLost);
            }
            self.claim(etcd, lease, *partition).await?;
        }
        let held: BTreeSet<String> = self.singletons.held().into_iter().map(|(n, _)| n).collect();
        for (name, fence) in self.singletons.names() {
            let wanted = owner_of(*fence, &members) == Some(self.config.node.as_str());
            if held.contains(name) && !wanted {
                self.hand_off_singleton(etcd, name).await;
            } else if !held.contains(name) && wanted {
                if expired() {
                    return Err(OwnershipError::LeaseLost);
                }
                let key = self.config.singleton_key(name);
                if let Some(claim) = self.claim_key(etcd, lease, key, *fence).await? {
                    self.singletons.insert(name, claim);
                    tracing::info!(node = %self.config.node, %name, token = claim.token, "claimed the single-runner");
                }
            }
        }
        Ok(())
    }

    /// Releases the claim keys this lease holds without a claim behind
    /// them (a release that failed, a round abandoned half-way): such a
    /// key would keep a partition or single-runner from every node for as
    /// long as this node lives. A key still wanted is taken up again by
    /// the claim that follows, behind a new marker.
    async fn release_strays(&self, etcd: &mut Client, ours: &[String], held: &BTreeSet<u32>) {
        // The keys a claim (or the membership) stands behind.
        let claimed: BTreeSet<String> = held
            .iter()
            .map(|p| self.config.owner_key(*p))
            .chain(
                self.singletons
                    .held()
                    .into_iter()
                    .map(|(name, _)| self.config.singleton_key(&name)),
            )
            .chain([self.config.member_key(&self.config.node)])
            .collect();
        for key in ours {
            if !claimed.contains(key) {
                tracing::warn!(node = %self.config.node, %key, "releasing a claim key held without a claim");
                self.release_key(etcd, key.clone()).await;
            }
        }
    }

    /// Hands the single-runner `name` off: its host stops (waited for up
    /// to the hand-off timeout), the claim and its key go.
    async fn hand_off_singleton(&self, etcd: &mut Client, name: &str) {
        if let Some(claim) = self.singletons.active(name) {
            self.singletons.drain(name);
            let grant = claim.fence.sequence;
            if !self
                .singletons
                .stood_down_from(name, grant, self.config.handoff_timeout)
                .await
            {
                tracing::warn!(%name, "the host did not stand down in time; the next marker fences it");
            }
        }
        self.singletons.remove(name);
        self.release_key(etcd, self.config.singleton_key(name))
            .await;
        tracing::info!(node = %self.config.node, %name, "handed off the single-runner");
    }

    /// Claims `partition` if nobody holds it.
    async fn claim(
        &self,
        etcd: &mut Client,
        lease: i64,
        partition: u32,
    ) -> Result<(), OwnershipError> {
        let key = self.config.owner_key(partition);
        let Some(claim) = self.claim_key(etcd, lease, key, partition).await? else {
            return Ok(());
        };
        (self.release)(partition).await;
        self.claims.insert(partition, claim);
        tracing::info!(node = %self.config.node, partition, token = claim.token, "claimed");
        Ok(())
    }

    /// Claims `key` if nobody holds it, and writes the claim's marker on
    /// `fence`; the claim once the replica has applied the marker, `None`
    /// when another node holds the key or the marker could not be placed.
    async fn claim_key(
        &self,
        etcd: &mut Client,
        lease: i64,
        key: String,
        fence: u32,
    ) -> Result<Option<Claim>, OwnershipError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.config.node.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let txn = txn.or_else([TxnOp::get(key.clone(), None)]);
        let answer = etcd.txn(txn).await?;
        let token = if answer.succeeded() {
            answer
                .header()
                .map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
        } else {
            // Held: by another node, which hands it off in time; or still
            // by this one, under this lease, after the node gave the
            // claim up and could not release its key (the round's sweep
            // of strays failed too). Then it is taken up again with a new
            // marker, which fences whatever of the old claim may still
            // land.
            let mine = answer.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .filter(|kv| kv.value() == self.config.node.as_bytes() && kv.lease() == lease)
                    .map(|kv| u64::try_from(kv.create_revision()).unwrap_or(0)),
                _ => None,
            });
            match mine {
                Some(token) => token,
                None => return Ok(None),
            }
        };
        // From here the key is this node's: whatever stops the claim
        // short releases it, or it would stay held under a lease that
        // lives on, and the partition would have no owner at all.
        let marker = match self.place_marker(fence, token).await {
            Ok(Some(marker)) => marker,
            Ok(None) => {
                self.release_key(etcd, key).await;
                return Ok(None);
            }
            Err(error) => {
                self.release_key(etcd, key).await;
                return Err(error);
            }
        };
        let applied =
            tokio::time::timeout(REPLICA_WAIT_MAX, self.progress.wait_for(marker.sequence)).await;
        let failed = match applied {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.into()),
            Err(_) => Some(OwnershipError::ReplicaBehind {
                sequence: marker.sequence,
                waited: REPLICA_WAIT_MAX,
            }),
        };
        if let Some(error) = failed {
            self.release_key(etcd, key).await;
            return Err(error);
        }
        Ok(Some(Claim {
            token,
            fence: marker,
            draining: false,
        }))
    }

    /// Writes the marker of the claim `token` on `fence` after the last
    /// one there; `None` if other markers kept coming between.
    async fn place_marker(&self, fence: u32, token: u64) -> Result<Option<Fence>, OwnershipError> {
        for _ in 0..FENCE_ATTEMPTS_MAX {
            let after = self.log.last_fence(fence).await?.map_or(0, |f| f.sequence);
            match self
                .log
                .write_fence(fence, token, &self.config.node, after)
                .await
            {
                Ok(marker) => return Ok(Some(marker)),
                // Another marker came between: a claim older than ours
                // (etcd says ours is current); write after it.
                Err(LogError::WrongLastSequence { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(None)
    }

    /// Hands `partitions` off together: no new appends in any of them,
    /// those under way finish (one wait for all, at most the hand-off
    /// timeout: one at a time, a log that does not answer made each wait
    /// its own timeout), the claims and their keys go.
    async fn hand_off(&self, etcd: &mut Client, partitions: &[u32]) {
        for partition in partitions {
            self.claims.drain(*partition);
        }
        let started = Instant::now();
        while partitions.iter().any(|p| self.claims.in_flight(*p) > 0)
            && started.elapsed() < self.config.handoff_timeout
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for partition in partitions {
            self.claims.remove(*partition);
            self.release_key(etcd, self.config.owner_key(*partition))
                .await;
            (self.release)(*partition).await;
            tracing::info!(node = %self.config.node, partition, "handed off");
        }
    }

    async fn hand_off_all(&self, etcd: &mut Client) {
        // The process managers first: they send commands to partitions.
        for (name, _) in self.singletons.held() {
            self.hand_off_singleton(etcd, &name).await;
        }
        let held: Vec<u32> = self.claims.held().into_iter().map(|(p, _)| p).collect();
        self.hand_off(etcd, &held).await;
    }

    /// Deletes the claim `key` if it is still this node's.
    async fn release_key(&self, etcd: &mut Client, key: String) {
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.config.node.as_bytes(),
            )])
            .and_then([TxnOp::delete(key.clone(), None)]);
        if let Err(error) = etcd.txn(txn).await {
            tracing::debug!(%key, %error, "releasing a claim key failed; its lease ends it");
        }
    }
}

/// Who holds each partition of `cluster` now, as etcd says (for tools and
/// the harness: a node's own view is its [`Claims`]).
pub async fn owners(
    etcd: &mut Client,
    cluster: &str,
) -> Result<std::collections::HashMap<u32, String>, OwnershipError> {
    let held = holders(etcd, &format!("/eventfold/{cluster}/owners/")).await?;
    Ok(held
        .into_iter()
        .filter_map(|(partition, node)| Some((partition.parse().ok()?, node)))
        .collect())
}

/// Who runs each process manager and event handler of `cluster` now, as
/// etcd says.
pub async fn singleton_holders(
    etcd: &mut Client,
    cluster: &str,
) -> Result<std::collections::HashMap<String, String>, OwnershipError> {
    holders(etcd, &format!("/eventfold/{cluster}/singletons/")).await
}

/// The claim keys under `prefix` (what follows it) and their holders.
async fn holders(
    etcd: &mut Client,
    prefix: &str,
) -> Result<std::collections::HashMap<String, String>, OwnershipError> {
    let answer = etcd
        .get(prefix.as_bytes(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(answer
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(prefix)?.to_owned();
            Some((name, kv.value_str().ok()?.to_owned()))
        })
        .collect())
}
