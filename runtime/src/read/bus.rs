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

use crate::evolution::{EventError, Upcasters};
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

/// A receiver of the bus for code outside the runtime
/// ([`crate::RuntimeHandle::subscribe`]): every batch with its events in
/// their current shapes (through the runtime's upcasters; events upcast from
/// one stored event share its position).
pub struct BusReceiver {
    inner: broadcast::Receiver<EventBatch>,
    upcasters: Arc<Upcasters>,
}

/// Why a [`BusReceiver`] handed out no batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The receiver fell this many batches behind and they were dropped:
    /// read the missed positions from the store before going on.
    #[error("the receiver fell {0} batches behind; read the missed positions from the store")]
    Lagged(u64),
    /// The bus closed: the runtime stopped.
    #[error("the bus closed: the runtime stopped")]
    Closed,
    /// An event of the batch could not be upcast (the batch is not handed
    /// out; the events are in the store).
    #[error(transparent)]
    Event(#[from] EventError),
}

impl BusReceiver {
    pub(crate) fn new(inner: broadcast::Receiver<EventBatch>, upcasters: Arc<Upcasters>) -> Self {
        Self { inner, upcasters }
    }

    /// The next batch, waiting for one.
    pub async fn recv(&mut self) -> Result<EventBatch, BusError> {
        match self.inner.recv().await {
            Ok(batch) => self.current(batch),
            Err(broadcast::error::RecvError::Lagged(missed)) => Err(BusError::Lagged(missed)),
            Err(broadcast::error::RecvError::Closed) => Err(BusError::Closed),
        }
    }

    /// The next batch if one is waiting (`None`: none is).
    pub fn try_recv(&mut self) -> Result<Option<EventBatch>, BusError> {
        match self.inner.try_recv() {
            Ok(batch) => self.current(batch).map(Some),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Err(BusError::Lagged(missed)),
            Err(broadcast::error::TryRecvError::Closed) => Err(BusError::Closed),
        }
    }

    fn current(&self, batch: EventBatch) -> Result<EventBatch, BusError> {
        if !batch.iter().any(|e| self.upcasters.applies_to(e)) {
            return Ok(batch);
        }
        Ok(Arc::from(self.upcasters.upcast_all(batch.to_vec())?))
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
