//! The subscription engine: every reader of the global log inside the
//! runtime (projections, event handlers, process-manager hosts) takes its
//! events through one [`Subscription`].
//!
//! ```text
//!            read_all from `next`                  bus batch
//!  catch-up ───────────────────▶ at the head ──▶ live ──────▶ handled
//!     ▲                                            │
//!     └── a gap (a batch starts past `next`), a lagged bus (the buffer
//!         overflowed), or an idle head past `next` (written before we
//!         subscribed) ─────────────────────────────┘
//! ```
//!
//! **Architecture Invariant:** positions are handed out strictly in order,
//! each at most once per run: `next` only moves forward, and a bus batch that
//! starts past `next` sends the subscription back to reading the store, so no
//! event is lost and none is seen twice. The subscription subscribes to the
//! bus before its first read of the store, so nothing committed in between
//! is missed.
//!
//! The engine does not handle events: it hands out [`Chunk`]s and the
//! subscriber reports each position it is done with. What a subscriber does
//! between chunks (commit, wait on other inputs) stays its own.
//!
//! Every chunk's events are upcast (see [`crate::evolution`]) before they
//! are filtered: the store is read with the filter widened to the stored
//! type names steps take, and the subscriber's own filter is applied to
//! the upcast events. Events made from one stored event share its position
//! and come together in one chunk.

use crate::evolution::Upcasters;
use crate::read::bus::{EventBatch, EventBus};
pub(crate) use crate::read::chunk::{Chunk, SubscriptionError};
use crate::read::interest::Interest;
use crate::read::read_ahead::{ReadAhead, StoreReader};
use eventfold_domain::RecordedEvent;
use eventfold_storage::{EventStore, Filter};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Control messages (retry, skip, resume, cancel, stop) waiting per
/// subscriber: per projection consumer and per process-manager host.
pub(crate) const CONTROL_QUEUE_MAX: usize = 64;

/// What a wait for the bus ended with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Woke {
    /// A batch (or a lag, which sends the subscription back to catch-up) is
    /// waiting: take it.
    Ready,
    /// Nothing came in the time given.
    Idle,
}

/// One reader's position in the global log, from the store or from the bus.
pub(crate) struct Subscription {
    bus: broadcast::Receiver<EventBatch>,
    /// The store, what it is asked for, and how its answers are upcast and
    /// filtered (shared with a read-ahead thread).
    reader: Arc<StoreReader>,
    /// Catch-up chunks are read ahead on a thread of their own.
    reads_ahead: bool,
    /// The chunks being read ahead, while catching up.
    ahead: Option<ReadAhead>,
    next: u64,
    live: bool,
    /// A batch received by a wait, not yet taken.
    stashed: Option<EventBatch>,
}

impl Subscription {
    /// A subscription of the events matching `filter` after position
    /// `checkpoint`, upcast by `upcasters`; it starts catching up.
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        bus: &EventBus,
        interest: Interest,
        checkpoint: u64,
        upcasters: Arc<Upcasters>,
    ) -> Self {
        Self {
            bus: bus.subscribe(),
            reader: Arc::new(StoreReader {
                store,
                store_filter: interest.store_filter(&upcasters),
                store_matched: upcasters.is_empty(),
                interest: Arc::new(interest),
                upcasters,
            }),
            reads_ahead: false,
            ahead: None,
            next: checkpoint.saturating_add(1),
            live: false,
            stashed: None,
        }
    }

    /// Reads catch-up chunks ahead on a thread of their own while the
    /// subscriber handles the current one (see [`super::read_ahead`]): for
    /// a subscriber that takes whole chunks of the same size, as a
    /// projection's consumer does.
    pub(crate) fn read_ahead(mut self) -> Self {
        self.reads_ahead = true;
        self
    }

    /// The next position to hand out: every position before it is done.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// True once the subscription has caught up and takes bus batches.
    pub(crate) fn is_live(&self) -> bool {
        self.live
    }

    /// Nothing is waiting on the bus (and no batch is stashed).
    pub(crate) fn bus_is_empty(&self) -> bool {
        self.stashed.is_none() && self.bus.is_empty()
    }

    /// The next chunk, without waiting. Catching up: one read of the store
    /// of at most `max` events. Live: the batch a wait stashed, or the next
    /// on the bus, or `None` when none is there. A gap or a lagged bus sends
    /// the subscription back to catch-up, which this call starts at once.
    pub(crate) fn take(&mut self, max: usize) -> Result<Option<Chunk>, SubscriptionError> {
        if self.live {
            let batch = match self.stashed.take() {
                Some(batch) => batch,
                None => match self.bus.try_recv() {
                    Ok(batch) => batch,
                    Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                    Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "bus lagged; catching up from the store");
                        return self.back_to_catch_up(max);
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        return Err(SubscriptionError::BusClosed);
                    }
                },
            };
            let first = batch.first().map_or(self.next, |e| e.position);
            if first > self.next {
                // Events between were published while we were not listening.
                return self.back_to_catch_up(max);
            }
            let end = batch
                .last()
                .map_or(self.next, |e| e.position.saturating_add(1))
                .max(self.next);
            let chunk = if batch
                .iter()
                .any(|e| e.position >= self.next && self.reader.upcasters.applies_to(e))
            {
                let mut upcast = Vec::with_capacity(batch.len());
                for event in batch.iter().filter(|e| e.position >= self.next) {
                    self.reader
                        .upcasters
                        .upcast_into(event.clone(), &mut upcast)?;
                }
                upcast.retain(|e| self.reader.interest.wants(e));
                Chunk::live_upcast(upcast, self.next, end)
            } else {
                Chunk::live(batch, Arc::clone(&self.reader.interest), self.next, end)
            };
            return Ok(Some(chunk));
        }
        if let Some(ahead) = &mut self.ahead {
            match ahead.take(self.next) {
                Some(Ok(chunk)) => {
                    if chunk.reached_head() {
                        self.ahead = None;
                    }
                    return Ok(Some(chunk));
                }
                Some(Err(error)) => {
                    self.ahead = None;
                    return Err(error);
                }
                // Not where the subscriber stands, or the thread ended.
                None => self.ahead = None,
            }
        }
        let chunk = self.reader.read(self.next, max)?;
        if self.reads_ahead && !chunk.reached_head() {
            self.ahead = ReadAhead::start(Arc::clone(&self.reader), chunk.end(), max);
        }
        Ok(Some(chunk))
    }

    fn back_to_catch_up(&mut self, max: usize) -> Result<Option<Chunk>, SubscriptionError> {
        self.live = false;
        self.ahead = None;
        self.stashed = None;
        self.take(max)
    }

    /// The subscriber is done with the event at `position`.
    pub(crate) fn handled(&mut self, position: u64) {
        self.next = self.next.max(position.saturating_add(1));
    }

    /// The subscriber is done with the whole chunk; at the end of a catch-up
    /// the subscription goes live.
    pub(crate) fn finish(&mut self, chunk: &Chunk) {
        self.next = self.next.max(chunk.end());
        if chunk.reached_head() {
            self.live = true;
        }
    }

    /// Waits for the next bus batch and stashes it for [`take`](Self::take).
    /// Cancel-safe: dropped before it completes, nothing is lost.
    pub(crate) async fn wait(&mut self) -> Result<Woke, SubscriptionError> {
        if self.stashed.is_some() || !self.live {
            return Ok(Woke::Ready);
        }
        match self.bus.recv().await {
            Ok(batch) => self.stashed = Some(batch),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "bus lagged; catching up from the store");
                self.live = false;
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Err(SubscriptionError::BusClosed);
            }
        }
        Ok(Woke::Ready)
    }

    /// [`wait`](Self::wait) for at most `timeout`, blocking the calling
    /// thread (a subscriber on a thread of its own).
    pub(crate) fn wait_blocking(&mut self, timeout: Duration) -> Result<Woke, SubscriptionError> {
        // A batch (or a lag) already waiting is for `take`, which handles
        // both: no timer for it.
        if self.stashed.is_some() || !self.live || !self.bus.is_empty() {
            return Ok(Woke::Ready);
        }
        futures::executor::block_on(async {
            let mut timer = futures_timer::Delay::new(timeout);
            let mut waiting = std::pin::pin!(self.wait());
            std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(result) = waiting.as_mut().poll(cx) {
                    return std::task::Poll::Ready(result);
                }
                std::pin::Pin::new(&mut timer)
                    .poll(cx)
                    .map(|()| Ok(Woke::Idle))
            })
            .await
        })
    }

    /// Nothing came for a while: if the head has moved past `next`, those
    /// positions were written before we subscribed and never come on the
    /// bus, so the subscription reads them from the store.
    pub(crate) fn idle(&mut self) {
        if self.live && self.reader.store.head() >= self.next {
            self.live = false;
        }
    }
}

/// The events made of the stored event at `position` that match `filter`
/// (for a parked or stuck event taken again), or `None` when no event is
/// stored there.
pub(crate) fn read_at(
    store: &dyn EventStore,
    upcasters: &Upcasters,
    position: u64,
    interest: &Interest,
) -> Result<Option<Vec<RecordedEvent>>, SubscriptionError> {
    let Some(event) = store
        .read_all(position, 1, &Filter::all())?
        .events
        .into_iter()
        .find(|e| e.position == position)
    else {
        return Ok(None);
    };
    let mut events = Vec::new();
    upcasters.upcast_into(event, &mut events)?;
    events.retain(|e| interest.wants(e));
    Ok(Some(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
    use eventfold_storage::{AppendRequest, MemoryStore};

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn append(store: &MemoryStore, stream: &str, count: usize) -> TestResult {
        let events = (0..count)
            .map(|_| NewEvent::new("E", 1, b"x".to_vec(), Metadata::new()))
            .collect();
        let stream = StreamId::new(stream)?;
        store
            .submit(AppendRequest::single(stream, ExpectedVersion::Any, events))
            .wait()?;
        Ok(())
    }

    /// Takes every chunk there is now, handing out positions.
    fn drain(sub: &mut Subscription, max: usize) -> TestResult<Vec<u64>> {
        let mut seen = Vec::new();
        while let Some(chunk) = sub.take(max)? {
            for event in chunk.events() {
                seen.push(event.position);
                sub.handled(event.position);
            }
            sub.finish(&chunk);
            if chunk.positions() == 0 && !chunk.reached_head() && !sub.is_live() {
                break;
            }
        }
        Ok(seen)
    }

    #[test]
    fn reading_ahead_hands_out_every_position_once_in_order() -> TestResult {
        let store = MemoryStore::new();
        let bus = EventBus::new(4);
        store.set_commit_listener(Arc::new(bus.clone()));
        append(&store, "a-1", 50)?;
        let reader = |checkpoint| {
            Subscription::new(
                Arc::new(store.clone()),
                &bus,
                Interest::events(Filter::all()),
                checkpoint,
                Arc::default(),
            )
            .read_ahead()
        };
        let mut sub = reader(3);
        assert_eq!(drain(&mut sub, 4)?, (4..=50).collect::<Vec<_>>());
        assert!(sub.is_live());
        append(&store, "a-2", 3)?;
        assert_eq!(drain(&mut sub, 4)?, vec![51, 52, 53]);

        // A subscriber that stops half-way through a chunk: the chunks read
        // ahead no longer start where it stands, and the store is read
        // from there instead.
        let mut sub = reader(0);
        let mut seen = Vec::new();
        while !sub.is_live() {
            let Some(chunk) = sub.take(6)? else { break };
            let events: Vec<u64> = chunk.events().map(|e| e.position).collect();
            let half = events.len().div_ceil(2);
            for position in &events[..half] {
                seen.push(*position);
                sub.handled(*position);
            }
            if chunk.reached_head() {
                for position in &events[half..] {
                    seen.push(*position);
                    sub.handled(*position);
                }
                sub.finish(&chunk);
            }
        }
        assert_eq!(seen, (1..=53).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn catches_up_goes_live_and_hands_out_every_position_once() -> TestResult {
        let store = MemoryStore::new();
        let bus = EventBus::new(4);
        store.set_commit_listener(Arc::new(bus.clone()));
        append(&store, "a-1", 5)?;
        let mut sub = Subscription::new(
            Arc::new(store.clone()),
            &bus,
            Interest::events(Filter::all()),
            2,
            Arc::default(),
        );
        assert_eq!(drain(&mut sub, 2)?, vec![3, 4, 5]);
        assert!(sub.is_live());
        append(&store, "a-2", 3)?;
        assert_eq!(drain(&mut sub, 2)?, vec![6, 7, 8]);
        assert_eq!(sub.next(), 9);
        Ok(())
    }

    #[test]
    fn a_lagged_bus_falls_back_to_the_store_and_loses_nothing() -> TestResult {
        let store = MemoryStore::new();
        let bus = EventBus::new(2);
        store.set_commit_listener(Arc::new(bus.clone()));
        let mut sub = Subscription::new(
            Arc::new(store.clone()),
            &bus,
            Interest::events(Filter::all()),
            0,
            Arc::default(),
        );
        assert_eq!(drain(&mut sub, 10)?, Vec::<u64>::new());
        assert!(sub.is_live());
        for i in 0..6 {
            append(&store, &format!("a-{i}"), 1)?;
        }
        assert_eq!(drain(&mut sub, 10)?, vec![1, 2, 3, 4, 5, 6]);
        Ok(())
    }

    #[test]
    fn an_idle_head_past_next_is_read_from_the_store() -> TestResult {
        let store = MemoryStore::new();
        let bus = EventBus::new(4);
        let mut sub = Subscription::new(
            Arc::new(store.clone()),
            &bus,
            Interest::events(Filter::all()),
            0,
            Arc::default(),
        );
        assert_eq!(drain(&mut sub, 10)?, Vec::<u64>::new());
        // Written without the bus hearing of it.
        append(&store, "a-1", 2)?;
        assert_eq!(drain(&mut sub, 10)?, Vec::<u64>::new());
        assert_eq!(sub.wait_blocking(Duration::from_millis(1))?, Woke::Idle);
        sub.idle();
        assert!(!sub.is_live());
        assert_eq!(drain(&mut sub, 10)?, vec![1, 2]);
        Ok(())
    }
}
