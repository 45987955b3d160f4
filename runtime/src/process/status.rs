//! What an operator sees of a process manager and its instances.

use eventfold_domain::Timestamp;

/// Where an instance stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Running.
    Active,
    /// Parked after its handler kept failing: see [`StuckInstance`].
    Stuck,
    /// Finished (or cancelled); later inputs are ignored.
    Finished,
}

/// An instance as stored.
#[derive(Clone, Debug)]
pub struct InstanceView<S> {
    /// Its id.
    pub id: String,
    /// Where it stands.
    pub status: InstanceStatus,
    /// Its state.
    pub state: S,
    /// Its timers that are set: name and due time.
    pub timers: Vec<(String, Timestamp)>,
    /// Commands it sent that have not been answered yet.
    pub outbox: usize,
}

/// An instance parked because its handler kept failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckInstance {
    /// Its id.
    pub id: String,
    /// The last error.
    pub error: String,
    /// Attempts made on the input.
    pub attempts: u32,
    /// The input it failed on.
    pub input: String,
    /// When it was parked (runtime clock).
    pub since: Timestamp,
    /// Events for it held since, waiting for it to resume.
    pub held_events: usize,
}

/// What the handle sees of a process manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessStatus {
    /// Its name.
    pub name: String,
    /// Its partitions (host threads); the figures below are summed over
    /// them, the state and checkpoint are those of the one furthest behind.
    pub partitions: usize,
    /// Catching up, live, or stopped (with why).
    pub state: crate::read::projection::ConsumerState,
    /// The last position of the global log it has handled and committed.
    pub checkpoint: u64,
    /// The store's committed head.
    pub head: u64,
    /// Instances in memory.
    pub resident: u64,
    /// Commands sent and not yet answered.
    pub outbox: u64,
    /// Timers set.
    pub timers: u64,
    /// Stuck instances.
    pub stuck: u64,
    /// Inputs handled since start.
    pub steps: u64,
    /// Events whose instance id was unusable (too long).
    pub unroutable: u64,
}
