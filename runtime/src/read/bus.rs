//! The internal event bus: durable events, in position order.
//!
//! The store's writer tells the bus of every batch once it is durable (see
//! `eventfold_storage::CommitListener`); the bus broadcasts each batch to its
//! subscribers through a bounded buffer of `bus_capacity_batches` batches.
//!
//! **Backpressure.** Publishing never blocks the writer. A subscriber that
//! falls more than the buffer behind loses the oldest batches and is told so
//! (`RecvError::Lagged`); it must then read the missed positions from the
//! store (catch-up) before taking live batches again.

use eventfold_domain::RecordedEvent;
use eventfold_storage::CommitListener;
use std::sync::Arc;
use tokio::sync::broadcast;

/// A batch of durable events, consecutive in the global log.
pub type EventBatch = Arc<[RecordedEvent]>;

/// The bus: clone it to publish or subscribe.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<EventBatch>,
}

impl EventBus {
    /// A bus that buffers `capacity_batches` batches per subscriber.
    pub fn new(capacity_batches: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity_batches.max(1));
        Self { sender }
    }

    /// A receiver of every batch published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EventBatch> {
        self.sender.subscribe()
    }
}

impl CommitListener for EventBus {
    fn committed(&self, events: Arc<[RecordedEvent]>) {
        // No subscriber is not an error: the events are in the store.
        let _ = self.sender.send(events);
    }

    fn interested(&self) -> bool {
        self.sender.receiver_count() > 0
    }
}
