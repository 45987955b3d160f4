//! The modelling API: aggregates decide on commands and fold events.

use serde::{Serialize, de::DeserializeOwned};

/// An event of an aggregate: a serde type with a type name and a schema
/// version, stored as its bincode encoding.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static
{
    /// The event's type name, such as `Deposited`; filters and projections
    /// match on it.
    fn event_type(&self) -> &'static str;

    /// The version of this event's schema, stored with it; bump it when the
    /// payload's shape changes and add an upcaster.
    fn schema_version(&self) -> u16 {
        1
    }
}

/// A consistency boundary: decides on commands against its state and folds
/// its own events into that state.
///
/// **Contract.** `handle` has no side effects: the runtime may call it on a
/// state that includes events still being written, and throws the decision
/// away if those fail. `apply` must accept every event `handle` ever
/// returned, including those of older versions of the code. Neither may
/// block. A panic in either fails the command with a typed error and the
/// runtime rebuilds the aggregate from the store.
///
/// Every type involved is plain data: `Send`, `Unpin` and `'static`, as
/// structs and enums without self-references are.
///
/// The aggregate's stream is `{KIND}-{id}`; `KIND` is its category and must
/// not contain `-`.
///
/// ```
/// use eventfold_domain::{Aggregate, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { value: u64 }
///
/// #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
/// enum CounterEvent { Added(u64) }
/// impl DomainEvent for CounterEvent {
///     fn event_type(&self) -> &'static str { "Added" }
/// }
///
/// #[derive(Debug, PartialEq, thiserror::Error)]
/// #[error("nothing to add")]
/// struct NothingToAdd;
///
/// impl Aggregate for Counter {
///     const KIND: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = NothingToAdd;
///     fn handle(&self, n: u64) -> Result<Vec<CounterEvent>, NothingToAdd> {
///         if n == 0 { Err(NothingToAdd) } else { Ok(vec![CounterEvent::Added(n)]) }
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         let CounterEvent::Added(n) = event;
///         self.value += n;
///     }
/// }
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Unpin + 'static {
    /// The aggregate's kind: the category of its streams.
    const KIND: &'static str;

    /// The version of the state's serialized shape. Snapshots of another
    /// version are ignored and the aggregate is rebuilt from its events.
    const SNAPSHOT_VERSION: u32 = 1;

    /// What the aggregate is asked to do. Serializable, because process
    /// managers keep the commands they send in a durable outbox.
    type Command: Serialize + DeserializeOwned + Send + Unpin + 'static;
    /// What happened.
    type Event: DomainEvent;
    /// Why a command was refused.
    type Error: std::error::Error + Send + Sync + Unpin + 'static;

    /// Decides: the events a command produces, or why it is refused.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);
}
