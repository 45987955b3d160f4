//! Given-when-then tests of aggregates, without a store or actors.

use crate::aggregate::Aggregate;
use std::fmt::Debug;

/// Given past events, when a command, then these events or this error.
///
/// ```
/// # use eventfold_domain::{Aggregate, DomainEvent, AggregateFixture};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)] struct Counter { value: u64 }
/// # #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)] enum CounterEvent { Added(u64) }
/// # impl DomainEvent for CounterEvent { fn event_type(&self) -> &'static str { "Added" } }
/// # #[derive(Debug, PartialEq, thiserror::Error)] #[error("nothing to add")] struct NothingToAdd;
/// # impl Aggregate for Counter {
/// #     const KIND: &'static str = "counter";
/// #     type Command = u64; type Event = CounterEvent; type Error = NothingToAdd;
/// #     fn handle(&self, n: u64) -> Result<Vec<CounterEvent>, NothingToAdd> {
/// #         if n == 0 { Err(NothingToAdd) } else { Ok(vec![CounterEvent::Added(n)]) } }
/// #     fn apply(&mut self, event: &CounterEvent) { let CounterEvent::Added(n) = event; self.value += n; }
/// # }
/// AggregateFixture::<Counter>::given([CounterEvent::Added(2)])
///     .when(3)
///     .then_events([CounterEvent::Added(3)]);
/// AggregateFixture::<Counter>::given_no_history().when(0).then_error(NothingToAdd);
/// let after = AggregateFixture::<Counter>::given([CounterEvent::Added(2)]).when(3).state_after();
/// assert_eq!(after.value, 5);
/// ```
pub struct AggregateFixture<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateFixture<A> {
    /// An aggregate that has seen these events, in order.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        Self { state }
    }

    /// An aggregate with no events.
    pub fn given_no_history() -> Self {
        Self::given([])
    }

    /// Decides on `command`.
    pub fn when(self, command: A::Command) -> FixtureOutcome<A> {
        let result = self.state.handle(command);
        FixtureOutcome {
            state: self.state,
            result,
        }
    }
}

/// What a fixture's command produced.
pub struct FixtureOutcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> FixtureOutcome<A> {
    /// Asserts the command produced exactly these events.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>)
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => assert_eq!(events, expected, "the command produced other events"),
            Err(error) => {
                panic!("expected events {expected:?}, the command was refused: {error:?}")
            }
        }
    }

    /// Asserts the command was refused with exactly this error.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Event: Debug,
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, the command produced {events:?}"),
            Err(error) => assert_eq!(error, expected, "the command was refused otherwise"),
        }
    }

    /// The decision itself, for assertions the other methods do not cover.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }

    /// The state after applying the produced events (the given state if the
    /// command was refused).
    pub fn state_after(mut self) -> A {
        if let Ok(events) = &self.result {
            for event in events {
                self.state.apply(event);
            }
        }
        self.state
    }
}
