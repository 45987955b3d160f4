//! The runtime's settings, with their units in their names.

use crate::error::InvalidSetting;
use eventfold_storage::StoreOptions;
use std::time::Duration;

/// When resident aggregate actors are stopped.
#[derive(Clone, Debug)]
pub struct Passivation {
    /// An actor that has received no command for this long is stopped.
    pub idle_after: Duration,
    /// Most aggregate actors resident at once (over all shards); past it the
    /// least recently used are stopped.
    pub resident_actors_max: usize,
    /// Bytes of stopped aggregates' state kept in memory (encoded, over all
    /// shards), so that reactivating one skips the store; the least recently
    /// stopped go first. 0 turns the cache off. See the `state_cache` module.
    pub state_cache_bytes_max: usize,
}

impl Default for Passivation {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(300),
            resident_actors_max: 250_000,
            state_cache_bytes_max: 64 << 20,
        }
    }
}

/// Everything the builder sets.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Shards (actix Arbiters, each a thread). Default: one per core.
    pub shards: usize,
    /// Commands waiting in one shard's mailbox; past it `Overloaded`.
    pub shard_mailbox_commands_max: usize,
    /// Commands waiting in one aggregate actor's mailbox; past it `Overloaded`.
    pub actor_mailbox_commands_max: usize,
    /// Commands of one aggregate decided but not yet durable (pipelining
    /// depth); past it `Overloaded`.
    pub actor_in_flight_commands_max: usize,
    /// When actors are stopped.
    pub passivation: Passivation,
    /// A snapshot is taken when a command brings the aggregate this many
    /// events past its last one, even while earlier appends are in flight,
    /// and written once that command's events are durable (`None`: never).
    pub snapshot_every_events: Option<u64>,
    /// Default time a caller waits for an outcome (an async caller notices
    /// it within 50 ms after; see `TIMEOUT_EPOCH`).
    pub command_timeout: Duration,
    /// Most batches of durable events the bus buffers for a slow subscriber.
    pub bus_capacity_batches: usize,
    /// Most threads per shard for blocking store reads (activation, snapshots).
    pub blocking_threads_per_shard_max: usize,
    /// The store's settings (durability, limits).
    pub store: StoreOptions,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shard_mailbox_commands_max: 65_536,
            actor_mailbox_commands_max: 4096,
            actor_in_flight_commands_max: 1024,
            passivation: Passivation::default(),
            snapshot_every_events: Some(1000),
            command_timeout: Duration::from_secs(10),
            bus_capacity_batches: 4096,
            blocking_threads_per_shard_max: 8,
            store: StoreOptions::default(),
        }
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        let positive = [
            ("shards", self.shards),
            (
                "shard_mailbox_commands_max",
                self.shard_mailbox_commands_max,
            ),
            (
                "actor_mailbox_commands_max",
                self.actor_mailbox_commands_max,
            ),
            (
                "actor_in_flight_commands_max",
                self.actor_in_flight_commands_max,
            ),
            (
                "passivation.resident_actors_max",
                self.passivation.resident_actors_max,
            ),
            ("bus_capacity_batches", self.bus_capacity_batches),
            (
                "blocking_threads_per_shard_max",
                self.blocking_threads_per_shard_max,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(InvalidSetting::new(name, "must be at least 1"));
            }
        }
        if self.snapshot_every_events == Some(0) {
            return Err(InvalidSetting::new(
                "snapshot_every_events",
                "must be at least 1 (or None)",
            ));
        }
        Ok(())
    }

    /// State-cache bytes per shard.
    pub(crate) fn state_cache_bytes_per_shard(&self) -> usize {
        self.passivation.state_cache_bytes_max / self.shards
    }

    /// Resident actors per shard.
    pub(crate) fn resident_per_shard(&self) -> usize {
        self.passivation
            .resident_actors_max
            .div_ceil(self.shards)
            .max(1)
    }
}
