//! External subscriptions: a `Stream` of the global log from a position,
//! for code outside the runtime (a service's server-sent events, a bridge
//! to a broker), on the same subscription engine as projections.
//!
//! The stream catches up from the store, then goes live from the bus; a
//! consumer that falls behind the bus's buffer is sent back to the store,
//! so it never loses or repeats an event. It holds at most one chunk of
//! [`EXTERNAL_CHUNK_EVENTS`] events: the next is read only once those are
//! taken. Reads of the store run on the tokio blocking pool of the runtime
//! the stream was made in (on the polling thread outside one), never on an
//! executor thread. Events come upcast; deletions (`$deletions` events)
//! only when the filter names them, as for process managers.

use crate::evolution::{EventError, Upcasters};
use crate::read::bus::EventBus;
use crate::read::interest::Interest;
use crate::read::subscription::{Subscription, SubscriptionError, Woke};
use eventfold_domain::RecordedEvent;
use eventfold_storage::{EventStore, Filter, ReadError};
use futures::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most events an external subscription reads at a time and holds.
pub const EXTERNAL_CHUNK_EVENTS: usize = 1024;
/// How long a live external subscription waits for the bus before it
/// checks the store's head (positions written before it subscribed).
const EXTERNAL_IDLE_CHECK: Duration = Duration::from_millis(200);

/// Why an external subscription ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// A read of the store failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An event could not be upcast to its current shape.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The runtime stopped.
    #[error("the runtime stopped")]
    Closed,
    /// The task that read the store was lost (it panicked or its runtime
    /// shut down).
    #[error("the task reading the store was lost")]
    Lost,
}

impl From<SubscriptionError> for SubscribeError {
    fn from(error: SubscriptionError) -> Self {
        match error {
            SubscriptionError::Read(error) => Self::Read(error),
            SubscriptionError::BusClosed => Self::Closed,
            SubscriptionError::Event(error) => Self::Event(error),
        }
    }
}

/// The events of the global log after a position that match a filter, in
/// position order: [`crate::RuntimeHandle::subscribe_from`].
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<RecordedEvent, SubscribeError>> + Send>>,
}

impl Stream for EventStream {
    type Item = Result<RecordedEvent, SubscribeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State {
    sub: Option<Subscription>,
    held: VecDeque<RecordedEvent>,
    blocking: Option<tokio::runtime::Handle>,
    ended: bool,
}

impl EventStream {
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        bus: &EventBus,
        after: u64,
        filter: Filter,
        upcasters: Arc<Upcasters>,
    ) -> Self {
        let sub = Subscription::new(store, bus, Interest::events(filter), after, upcasters);
        let state = State {
            sub: Some(sub),
            held: VecDeque::new(),
            blocking: tokio::runtime::Handle::try_current().ok(),
            ended: false,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            let item = next(&mut state).await?;
            if item.is_err() {
                state.ended = true;
            }
            Some((item, state))
        });
        Self {
            inner: Box::pin(stream),
        }
    }
}

/// The next event, or the error that ends the stream (`None` after it).
async fn next(state: &mut State) -> Option<Result<RecordedEvent, SubscribeError>> {
    loop {
        if let Some(event) = state.held.pop_front() {
            return Some(Ok(event));
        }
        if state.ended {
            return None;
        }
        let mut sub = state.sub.take()?;
        let taken = match &state.blocking {
            Some(runtime) => match runtime.spawn_blocking(move || take(sub)).await {
                Ok(taken) => taken,
                Err(_) => return Some(Err(SubscribeError::Lost)),
            },
            None => take(sub),
        };
        let (back, events) = taken;
        sub = back;
        match events {
            Err(error) => return Some(Err(error.into())),
            Ok(Some(events)) => state.held.extend(events),
            Ok(None) => {
                // Live, nothing waiting: wait for the bus, or check the head
                // when it stays quiet.
                let mut timer = futures_timer::Delay::new(EXTERNAL_IDLE_CHECK);
                let woke = match futures::future::select(Box::pin(sub.wait()), &mut timer).await {
                    futures::future::Either::Left((woke, _)) => Some(woke),
                    futures::future::Either::Right(_) => None,
                };
                match woke {
                    Some(Ok(Woke::Ready | Woke::Idle)) => {}
                    Some(Err(error)) => return Some(Err(error.into())),
                    None => sub.idle(),
                }
            }
        }
        state.sub = Some(sub);
    }
}

/// One chunk's events (`None`: nothing waiting on the bus), handed out as
/// done. Blocking when it reads the store.
fn take(
    mut sub: Subscription,
) -> (
    Subscription,
    Result<Option<Vec<RecordedEvent>>, SubscriptionError>,
) {
    let result = sub.take(EXTERNAL_CHUNK_EVENTS).map(|chunk| {
        chunk.map(|chunk| {
            let events: Vec<RecordedEvent> = chunk.events().cloned().collect();
            sub.finish(&chunk);
            events
        })
    });
    (sub, result)
}
