//! Durable named subscriptions: an [`EventStream`] that starts after the
//! position its consumer last acknowledged, for consumers outside the
//! store (a bridge to a broker, a mailer, a search index).
//!
//! Delivery is at least once: the checkpoint is stored only when the
//! consumer calls [`DurableSubscription::ack`], so events delivered but not
//! acknowledged when the process stops come again after a restart. Each
//! event's `position` is the key to deduplicate by. One consumer at a time
//! per name: a second open while one is held is refused. The checkpoint
//! is kept in the store's `checkpoints` keyspace as `$sub.{name}`.

use crate::metric_names::{SUBSCRIPTION_CHECKPOINT, SUBSCRIPTION_LAG};
use crate::read::external::{EventStream, SubscribeError};
use eventfold_domain::RecordedEvent;
use eventfold_storage::{EventStore, ReadError, WriteError};
use futures::Stream;
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Longest name of a durable subscription, in bytes.
pub const DURABLE_NAME_BYTES_MAX: usize = 200;

/// Why a durable subscription could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The name is empty, too long or holds a reserved character.
    #[error(
        "invalid subscription name {0:?}: 1 to {DURABLE_NAME_BYTES_MAX} bytes, without NUL, '#', '@' or '$'"
    )]
    InvalidName(String),
    /// A consumer already holds the subscription open.
    #[error("durable subscription {0:?} is already open")]
    InUse(String),
    /// Its checkpoint could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The task that read the checkpoint was lost.
    #[error("the task reading the checkpoint was lost")]
    Lost,
}

/// Why an acknowledgement was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The position is past the last event delivered: acknowledging it
    /// would skip events never handed out.
    #[error("position {position} is past the last event delivered ({delivered})")]
    NotDelivered {
        /// The position acknowledged.
        position: u64,
        /// The last position delivered.
        delivered: u64,
    },
    /// The checkpoint could not be written; it stays where it was.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The task that wrote the checkpoint was lost.
    #[error("the task writing the checkpoint was lost")]
    Lost,
}

/// The names of durable subscriptions held open in this runtime.
#[derive(Default)]
pub(crate) struct DurableClaims {
    open: Mutex<HashSet<String>>,
}

/// A name held open; released when dropped.
struct Claim {
    claims: Arc<DurableClaims>,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut open = self.claims.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&self.name);
    }
}

/// The checkpoint key of a durable subscription.
fn checkpoint_key(name: &str) -> String {
    format!("$sub.{name}")
}

/// Runs `work` on the blocking pool of the current tokio runtime (on the
/// calling thread outside one).
async fn off_executor<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime.spawn_blocking(work).await.ok(),
        Err(_) => Some(work()),
    }
}

/// Opens durable subscription `name`: claims it, reads its checkpoint and
/// starts `events_after` from there.
pub(crate) async fn open(
    claims: &Arc<DurableClaims>,
    store: &Arc<dyn EventStore>,
    name: &str,
    events_after: impl FnOnce(u64) -> EventStream,
) -> Result<DurableSubscription, DurableError> {
    let invalid = name.is_empty()
        || name.len() > DURABLE_NAME_BYTES_MAX
        || name.contains(['\0', '#', '@', '$']);
    if invalid {
        return Err(DurableError::InvalidName(name.to_owned()));
    }
    let claim = {
        let mut open = claims.open.lock().unwrap_or_else(|p| p.into_inner());
        if !open.insert(name.to_owned()) {
            return Err(DurableError::InUse(name.to_owned()));
        }
        Claim {
            claims: Arc::clone(claims),
            name: name.to_owned(),
        }
    };
    let key = checkpoint_key(name);
    let reader = Arc::clone(store);
    let read_key = key.clone();
    let acked = off_executor(move || reader.checkpoint(&read_key))
        .await
        .ok_or(DurableError::Lost)??
        .unwrap_or(0);
    Ok(DurableSubscription {
        events: events_after(acked),
        store: Arc::clone(store),
        key,
        delivered: acked,
        acked,
        claim,
    })
}

/// The events after a durable subscription's last acknowledged position,
/// caught up from the store then live; see
/// [`RuntimeHandle::subscribe_durable`](crate::RuntimeHandle::subscribe_durable).
pub struct DurableSubscription {
    events: EventStream,
    store: Arc<dyn EventStore>,
    key: String,
    delivered: u64,
    acked: u64,
    claim: Claim,
}

impl DurableSubscription {
    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.claim.name
    }

    /// The last position acknowledged (0 before the first).
    pub fn checkpoint(&self) -> u64 {
        self.acked
    }

    /// The position of the last event handed out (the checkpoint before
    /// the first).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Acknowledges every event up to and including `position`: the
    /// checkpoint is stored (a synced write under `Durability::Sync`, on
    /// the blocking pool) and a restart resumes after it. A position at or
    /// below the checkpoint changes nothing; one past the last event
    /// delivered is refused. Acknowledge the last event of a batch rather
    /// than each: every call is one write.
    pub async fn ack(&mut self, position: u64) -> Result<(), AckError> {
        if position <= self.acked {
            return Ok(());
        }
        if position > self.delivered {
            return Err(AckError::NotDelivered {
                position,
                delivered: self.delivered,
            });
        }
        let store = Arc::clone(&self.store);
        let key = self.key.clone();
        let head =
            off_executor(move || store.set_checkpoint(&key, position).map(|()| store.head()))
                .await
                .ok_or(AckError::Lost)??;
        self.acked = position;
        let name = self.claim.name.clone();
        metrics::gauge!(SUBSCRIPTION_CHECKPOINT, "subscription" => name.clone())
            .set(position as f64);
        metrics::gauge!(SUBSCRIPTION_LAG, "subscription" => name)
            .set(head.saturating_sub(position) as f64);
        Ok(())
    }
}

impl Stream for DurableSubscription {
    type Item = Result<RecordedEvent, SubscribeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.events).poll_next(cx);
        if let Poll::Ready(Some(Ok(event))) = &polled {
            self.delivered = event.position;
        }
        polled
    }
}

impl std::fmt::Debug for DurableSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSubscription")
            .field("name", &self.claim.name)
            .field("acked", &self.acked)
            .field("delivered", &self.delivered)
            .finish()
    }
}
