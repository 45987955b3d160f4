//! What a [`Subscription`](super::subscription::Subscription) hands out:
//! chunks of events in position order, and why it cannot go on. Shared by
//! the subscription and the thread that reads ahead for it.

use crate::evolution::EventError;
use crate::read::bus::EventBatch;
use crate::read::interest::Interest;
use eventfold_domain::RecordedEvent;
use eventfold_storage::ReadError;
use std::sync::Arc;

/// Why a subscription cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscriptionError {
    /// A catch-up read of the store failed.
    #[error("catch-up read failed: {0}")]
    Read(#[from] ReadError),
    /// The event bus closed: the runtime is stopping.
    #[error("the event bus closed")]
    BusClosed,
    /// An event could not be upcast to its current shape.
    #[error(transparent)]
    Event(#[from] EventError),
}

impl From<SubscriptionError> for crate::error::ProcessFailure {
    fn from(error: SubscriptionError) -> Self {
        match error {
            SubscriptionError::Read(error) => Self::Read(error),
            SubscriptionError::BusClosed => Self::BusClosed,
            SubscriptionError::Event(error) => Self::Event(error),
        }
    }
}

impl From<SubscriptionError> for crate::error::ProjectionError {
    fn from(error: SubscriptionError) -> Self {
        match error {
            SubscriptionError::Read(error) => Self::Read(error),
            SubscriptionError::BusClosed => Self::ShutDown,
            SubscriptionError::Event(error) => Self::Event(error),
        }
    }
}

/// Where a chunk's events came from.
enum Events {
    /// A catch-up read of the store, or an upcast bus batch: already
    /// filtered.
    Stored(Vec<RecordedEvent>),
    /// A batch of the bus (every event; filtered as it is handed out).
    Live(EventBatch, Arc<Interest>),
}

/// Events to handle, in position order.
pub(crate) struct Chunk {
    events: Events,
    /// Events before it were handed out already.
    from: u64,
    /// The position after the chunk: where `next` stands once it is done.
    end: u64,
    /// This chunk is the end of a catch-up: the subscription is at the head.
    reached_head: bool,
    /// It came from the bus.
    live: bool,
}

impl Chunk {
    /// A chunk read from the store: `events` (filtered) of positions
    /// `from..end`.
    pub(crate) fn stored(
        events: Vec<RecordedEvent>,
        from: u64,
        end: u64,
        reached_head: bool,
    ) -> Self {
        Self {
            events: Events::Stored(events),
            from,
            end,
            reached_head,
            live: false,
        }
    }

    /// A bus batch past `from`, filtered as it is handed out.
    pub(crate) fn live(batch: EventBatch, interest: Arc<Interest>, from: u64, end: u64) -> Self {
        Self {
            events: Events::Live(batch, interest),
            from,
            end,
            reached_head: false,
            live: true,
        }
    }

    /// A bus batch's events upcast (and filtered) already.
    pub(crate) fn live_upcast(events: Vec<RecordedEvent>, from: u64, end: u64) -> Self {
        Self {
            events: Events::Stored(events),
            from,
            end,
            reached_head: false,
            live: true,
        }
    }

    /// The position after the chunk.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// The chunk's events that match the subscription's filter and were not
    /// handed out before, in order.
    pub(crate) fn events(&self) -> impl Iterator<Item = &RecordedEvent> + '_ {
        let (events, filter): (&[RecordedEvent], Option<&Interest>) = match &self.events {
            Events::Stored(events) => (events, None),
            Events::Live(batch, interest) if interest.takes_all() => (batch, None),
            Events::Live(batch, interest) => (batch, Some(interest)),
        };
        let from = self.from;
        events
            .iter()
            .filter(move |e| e.position >= from && filter.is_none_or(|f| f.wants(e)))
    }

    /// How many events of the log it covers (matching or not).
    pub(crate) fn positions(&self) -> u64 {
        self.end.saturating_sub(self.from)
    }

    /// Whether its events came from the bus (live) rather than the store.
    pub(crate) fn is_live(&self) -> bool {
        self.live
    }

    /// Whether this chunk ends a catch-up at the head.
    pub(crate) fn reached_head(&self) -> bool {
        self.reached_head
    }
}
