//! What runs once when several runtimes share one log (a cluster): the
//! process managers, event handlers and projections a [`Placement`] may
//! decide for, and the trait it answers through.

/// Decides where each process manager, event handler and projection it
/// places runs: a cluster runs each once, on the node that holds its
/// claim. Without a placement every one runs on its runtime. Their names
/// are [`RuntimeBuilder::single_runners`](crate::RuntimeBuilder::single_runners).
///
/// A host (or a consumer) asks [`grant`](Placement::grant)
/// before it starts and at every round. While it has none it stands by
/// ([`ConsumerState::Standby`]). When the grant it runs under is gone or
/// changed, it stops at once without writing more, drops what it held in
/// memory, tells [`stood_down`](Placement::stood_down), and waits
/// for the next grant, under which it starts again from the store (its
/// checkpoint, instances, outbox and timers).
pub trait Placement: Send + Sync {
    /// Whether it decides for `name`; one it does not runs here always.
    fn places(&self, name: &str) -> bool;
    /// The grant under which process manager `name` may run here now
    /// (any number that changes when the claim is taken again).
    fn grant(&self, name: &str) -> Option<u64>;
    /// The host of `name` no longer runs under `grant`: nothing more is
    /// written under it (a hand-off waits for this).
    fn stood_down(&self, name: &str, grant: u64);
}

/// What runs once under a [`Placement`]: its name and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SingleRunner {
    /// The name it is placed by.
    pub name: String,
    /// What it is.
    pub kind: RunnerKind,
}

/// What a [`SingleRunner`] is, and so which of the store's names it
/// writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunnerKind {
    /// A process manager: its instances, outbox, timers and checkpoint in
    /// the read model `$pm.{name}`.
    ProcessManager,
    /// A partition of the event handler `name`: its checkpoint
    /// `{name}@v{version}` (`#i` after it when partitioned) and its dead
    /// letters in `$parked.{checkpoint}`.
    EventHandler {
        /// The handler's registered name.
        name: String,
    },
    /// A partition of the projection `name`: as an event handler's, plus
    /// its read model `{name}@v{version}`.
    Projection {
        /// The projection's registered name.
        name: String,
    },
}
