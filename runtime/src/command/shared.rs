//! What the shards and the aggregate actors of one runtime share: the
//! store, the settings and the counters of live actors.

use super::messages::Stopped;
use crate::evolution::Upcasters;
use crate::settings::Settings;
use actix::Recipient;
use eventfold_storage::EventStore;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

/// What the shards and actors of one runtime share.
pub(crate) struct Shared {
    pub store: Arc<dyn EventStore>,
    /// Every event an aggregate loads passes through these.
    pub upcasters: Arc<Upcasters>,
    /// Personal values are sealed and opened with these.
    pub keys: Arc<crate::personal::SubjectKeys>,
    pub settings: Settings,
    pub resident: AtomicI64,
    /// Aggregate actors started (activated) since the runtime started.
    pub activations: std::sync::atomic::AtomicU64,
    /// Activations that started from the state cache instead of the store.
    pub state_cache_hits: std::sync::atomic::AtomicU64,
    /// Per shard: commands sent to it and not yet taken from its mailbox.
    pub queued: Box<[AtomicI64]>,
}

/// What each actor of a shard needs of it: where to say it has stopped
/// (the shard) and the runtime's shared parts, behind one pointer per actor.
pub(crate) struct ShardLink {
    pub shard: Recipient<Stopped>,
    pub shared: Arc<Shared>,
}
