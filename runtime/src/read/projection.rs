//! Projections and event handlers: the read side.
//!
//! A [`Projection`] keeps a read model in eventfold's own store: its writes
//! (through [`ReadModelTx`]) and its checkpoint commit in one WriteBatch, so
//! every event takes effect exactly once, across crashes and restarts. An
//! [`EventHandler`] has side effects elsewhere: it gets every event at least
//! once, with its global position to deduplicate by.
//!
//! Each consumer (a projection, one partition of a partitioned projection, or
//! an event handler) runs as an actor on a thread of its own, because it
//! reads the store (catch-up) and waits for the bus, which block:
//!
//! 1. **Catch-up.** From its checkpoint it reads the global log from the
//!    store up to the committed head, in chunks.
//! 2. **Live.** Having reached the head it takes batches from the bus. A gap
//!    (a batch past the next position) or a lagged bus buffer sends it back to
//!    catch-up: it never misses an event and never sees one twice.
//!
//! Events are handled in position order. Effects and the checkpoint are
//! committed every `batch_events_max` events and whenever the consumer has
//! nothing more to read.

use eventfold_domain::{DomainEvent, RecordedEvent};
use eventfold_storage::{EventStore, Filter, ReadError, ReadModelBatch, StreamDeletion, payload};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::time::Duration;

/// Why a handler could not handle an event. The consumer's [`ErrorPolicy`]
/// decides what happens next. Its message becomes the reason a parked
/// event or a stopped projection shows.
///
/// ```
/// use eventfold_runtime::projection::HandlerError;
///
/// let refused = HandlerError::new("amount out of range");
/// assert_eq!(refused.to_string(), "amount out of range");
/// let io = HandlerError::other(std::io::Error::other("the mail server is down"));
/// assert!(matches!(io, HandlerError::Failed(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A read of the store (a read model) failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A payload or a read-model value did not decode, or a value did not
    /// encode.
    #[error(transparent)]
    Payload(#[from] payload::PayloadError),
    /// The event does not decode as the current type, or is of a newer
    /// schema than the code's.
    #[error(transparent)]
    Event(#[from] crate::evolution::EventError),
    /// The handler's own error.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl HandlerError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self::Failed(message.into().into())
    }

    /// The handler's own error, kept as its source.
    pub fn other(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed(Box::new(error))
    }
}

/// Decodes an event's payload as the domain event type `E` (the runtime
/// has upcast it already): [`crate::evolution::decode`], for handlers.
pub fn decode<E: DomainEvent>(event: &RecordedEvent) -> Result<E, HandlerError> {
    Ok(crate::evolution::decode(event)?)
}

/// A read model kept in eventfold's store, updated exactly once per event.
///
/// ```
/// use eventfold_runtime::projection::{HandlerError, Projection, ReadModelTx};
/// use eventfold_runtime::domain::RecordedEvent;
///
/// /// Counts events per stream.
/// struct Counts;
/// impl Projection for Counts {
///     fn name(&self) -> &str { "counts" }
///     fn apply(&mut self, event: &RecordedEvent, model: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
///         let key = event.stream_id.as_str().as_bytes();
///         let n: u64 = model.get_as(key)?.unwrap_or(0);
///         model.put_as(key, &(n + 1))
///     }
/// }
/// ```
pub trait Projection: Send + 'static {
    /// The projection's name: its read model, checkpoint and dead letters
    /// are named after it. Unique per runtime; no NUL, `#`, `@` or `$`.
    fn name(&self) -> &str;

    /// Which events it receives (default: all). Its checkpoint still moves
    /// past the others.
    fn filter(&self) -> Filter {
        Filter::all()
    }

    /// Applies one event to the read model. On error every write this call
    /// made is undone, and the error policy decides.
    fn apply(
        &mut self,
        event: &RecordedEvent,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError>;

    /// A stream whose category this projection reads (any stream, when its
    /// filter names no category) was truncated, soft-deleted or tombstoned
    /// (see [`StreamDeletion`]): drop what the read model keeps of the
    /// removed events. Called in order with the events, under the same
    /// error policy, with the same exactly-once commit. Default: nothing.
    fn deleted(
        &mut self,
        deletion: &StreamDeletion,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError> {
        let _ = (deletion, model);
        Ok(())
    }
}

/// A consumer with side effects outside eventfold: at-least-once delivery.
/// After a crash it may see again the events after its last checkpoint;
/// `event.position` is the key to deduplicate by.
pub trait EventHandler: Send + 'static {
    /// Unique per runtime, as for projections.
    fn name(&self) -> &str;

    /// Which events it receives (default: all).
    fn filter(&self) -> Filter {
        Filter::all()
    }

    /// Handles one event.
    fn handle(&mut self, event: &RecordedEvent) -> Result<(), HandlerError>;

    /// A stream it reads was truncated, soft-deleted or tombstoned, as for
    /// [`Projection::deleted`]; `position` is the deletion's position in
    /// the log, to deduplicate by. Default: nothing.
    fn deleted(&mut self, deletion: &StreamDeletion, position: u64) -> Result<(), HandlerError> {
        let _ = (deletion, position);
        Ok(())
    }
}

/// What a consumer does when its handler fails on an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// Attempts in all (the first included) before giving up on the event.
    pub attempts_max: u32,
    /// Wait before the second attempt; doubled each time.
    pub backoff_initial: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// What happens after the last attempt.
    pub then: AfterRetries,
}

/// What happens to an event the handler keeps failing on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRetries {
    /// Park it in the dead-letter keyspace and go on. Later events of the
    /// same stream are parked behind it (held) until it is retried or
    /// skipped, so that a stream's events are never applied out of order.
    Park,
    /// Stop the consumer; its status says why. Nothing after the event is
    /// handled until the runtime is restarted.
    Stop,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        Self {
            attempts_max: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            then: AfterRetries::Park,
        }
    }
}

/// Settings of one consumer.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// Most events handled per commit (effects and checkpoint in one batch).
    pub batch_events_max: usize,
    /// A live consumer commits when it has drained the bus and at least this
    /// long has passed since its last commit (and whenever a batch is full).
    /// Zero (the default) commits every time the bus is drained: the least
    /// lag. A larger interval makes fewer, larger writes for more lag.
    pub commit_interval: Duration,
    /// Most read-model entries a projection keeps in memory between commits
    /// (its own committed values; it is the only writer of its model).
    pub read_cache_entries_max: usize,
    /// Most events read from the store per catch-up read.
    pub catch_up_chunk_events: usize,
    /// What happens when the handler fails.
    pub error_policy: ErrorPolicy,
    /// Partitions (separate actors, each with its own checkpoint) by a hash of
    /// the stream id; 1 for none. Each partition keeps its streams' order.
    pub partitions: usize,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            batch_events_max: 4096,
            commit_interval: Duration::ZERO,
            read_cache_entries_max: 100_000,
            catch_up_chunk_events: 4096,
            error_policy: ErrorPolicy::default(),
            partitions: 1,
        }
    }
}

/// Writes not yet committed, by key. Hashed with foldhash (randomly
/// seeded), as the command side's maps: SipHash of every key was a tenth of
/// a catching-up consumer's time.
pub(crate) type Pending = HashMap<Vec<u8>, Slot, foldhash::fast::RandomState>;

/// A key's write not yet committed, and how to undo it while the event
/// that wrote it is being handled.
pub(crate) struct Slot {
    /// The new value (`None`: deleted).
    value: Option<Vec<u8>>,
    /// The attempt (`ReadModelTx::attempt`) that wrote it last.
    written_by: u64,
    /// What the batch held for the key before that attempt wrote it
    /// (`None`: nothing; the key is removed if the attempt fails).
    before: Option<Option<Vec<u8>>>,
}

/// Committed values a consumer has read or written: it is the only writer
/// of its read model, so they stay true (`None`: known absent).
pub(crate) type ReadCache = lru::LruCache<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// The writes of one commit of a projection, with reads that see them.
///
/// Writes go to the projection's active read-model version; they become
/// visible to queries when the batch commits with the checkpoint.
pub struct ReadModelTx<'a> {
    pub(crate) store: &'a dyn EventStore,
    pub(crate) model: &'a str,
    pub(crate) pending: &'a mut Pending,
    pub(crate) cache: &'a mut ReadCache,
    /// The attempt at the event being handled, numbered from 1: its
    /// writes are undone by [`roll_back`] if it fails or panics.
    pub(crate) attempt: u64,
}

impl ReadModelTx<'_> {
    /// The value of `key`, including this batch's writes.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, HandlerError> {
        if let Some(slot) = self.pending.get(key) {
            return Ok(slot.value.clone());
        }
        if let Some(value) = self.cache.get(key) {
            return Ok(value.clone());
        }
        let value = self.store.read_model_get(self.model, key)?;
        self.cache.put(key.to_vec(), value.clone());
        Ok(value)
    }

    /// The value of `key` decoded (bincode 2).
    pub fn get_as<T: DeserializeOwned>(&mut self, key: &[u8]) -> Result<Option<T>, HandlerError> {
        // Decoded in place when the batch or the cache holds it: no copy.
        let held = match self.pending.get(key) {
            Some(slot) => Some(&slot.value),
            None => self.cache.get(key),
        };
        match held {
            Some(Some(bytes)) => Ok(Some(payload::decode(bytes)?)),
            Some(None) => Ok(None),
            None => self
                .get(key)?
                .map(|bytes| Ok(payload::decode(&bytes)?))
                .transpose(),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.record(key, Some(value));
    }

    /// Sets `key` to the encoding (bincode 2) of `value`.
    pub fn put_as<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), HandlerError> {
        let bytes = payload::encode(value)?;
        self.put(key, bytes);
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) {
        self.record(key, None);
    }

    fn record(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        // A key the batch holds already is updated in place, its earlier
        // value kept for an undo: no copy of the key.
        match self.pending.get_mut(key) {
            Some(slot) if slot.written_by == self.attempt => slot.value = value,
            Some(slot) => {
                slot.before = Some(std::mem::replace(&mut slot.value, value));
                slot.written_by = self.attempt;
            }
            None => {
                let slot = Slot {
                    value,
                    written_by: self.attempt,
                    before: None,
                };
                self.pending.insert(key.to_vec(), slot);
            }
        }
    }
}

/// Undoes the writes of a failed attempt: each key it wrote goes back to
/// what the batch held before (or leaves the batch).
pub(crate) fn roll_back(pending: &mut Pending, attempt: u64) {
    pending.retain(|_, slot| {
        if slot.written_by != attempt {
            return true;
        }
        slot.written_by = 0;
        match slot.before.take() {
            Some(value) => {
                slot.value = value;
                true
            }
            None => false,
        }
    });
}

/// Adds pending writes to a batch for `model`, and returns them so that the
/// cache can take them once the batch has committed.
pub(crate) fn drain_into(
    pending: &mut Pending,
    model: &str,
    batch: &mut ReadModelBatch,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let written: Vec<_> = pending
        .drain()
        .map(|(key, slot)| (key, slot.value))
        .collect();
    for (key, value) in &written {
        match value {
            Some(value) => batch.put(model, key.clone(), value.clone()),
            None => batch.delete(model, key.clone()),
        }
    }
    written
}

/// Where a consumer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerState {
    /// Reading the store towards the head.
    CatchingUp,
    /// At the head, taking events from the bus.
    Live,
    /// Stopped by its error policy, with the reason.
    Stopped(String),
    /// A rebuild of this version is catching up; queries read the old one.
    Rebuilding,
    /// Runs on another node of a cluster (a process manager elected to run
    /// once): this runtime stands by and takes it over when it is granted.
    Standby,
}

/// A consumer's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerStatus {
    /// The consumer's name (partitions: `name#i`; rebuilds: `name@vN`).
    pub name: String,
    /// The last position whose effects are committed.
    pub checkpoint: u64,
    /// The store's committed head when the status was taken.
    pub head: u64,
    /// `head - checkpoint`.
    pub lag: u64,
    /// Where it is.
    pub state: ConsumerState,
    /// Events parked in its dead-letter keyspace.
    pub parked: u64,
}

/// An event parked after its handler kept failing, or held behind one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParkedEvent {
    /// Its global position.
    pub position: u64,
    /// Its stream.
    pub stream: String,
    /// The last error, or which parked position it is held behind.
    pub reason: String,
    /// Attempts made (0 for an event held behind another).
    pub attempts: u32,
}

/// A read model as queries see it: the projection's active version.
///
/// A view names one version: a view taken before a rebuild switches keeps
/// reading the old version (whose keys are removed after the switch).
pub struct ReadModelView {
    pub(crate) store: std::sync::Arc<dyn EventStore>,
    /// Personal values in the model open with these.
    pub(crate) keys: std::sync::Arc<crate::personal::SubjectKeys>,
    pub(crate) model: String,
}

impl ReadModelView {
    /// The read model's name and version, such as `balances@v2`.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.store.read_model_get(&self.model, key)
    }

    /// The value of `key`, decoded (bincode 2) as `T`.
    pub fn get_as<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, HandlerError> {
        self.get(key)?
            .map(|bytes| Ok(self.keys.scope(|| payload::decode(&bytes))?))
            .transpose()
    }

    /// Up to `max_count` entries whose keys start with `prefix`, in key order.
    pub fn scan(
        &self,
        prefix: &[u8],
        max_count: usize,
    ) -> Result<Vec<eventfold_storage::ReadModelEntry>, ReadError> {
        self.store.read_model_scan(&self.model, prefix, max_count)
    }

    /// [`ReadModelView::scan`] with values decoded as `T`.
    pub fn scan_as<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        max_count: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, HandlerError> {
        self.scan(prefix, max_count)?
            .into_iter()
            .map(|(k, v)| Ok((k, self.keys.scope(|| payload::decode(&v))?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_storage::MemoryStore;

    /// Runs `writes` as attempt `attempt` on `pending`.
    fn attempt(pending: &mut Pending, attempt: u64, writes: &[(&str, Option<&str>)]) {
        let store = MemoryStore::new();
        let mut cache = ReadCache::unbounded_with_hasher(foldhash::fast::RandomState::default());
        let mut tx = ReadModelTx {
            store: &store,
            model: "m",
            pending,
            cache: &mut cache,
            attempt,
        };
        for (key, value) in writes {
            match value {
                Some(value) => tx.put(key.as_bytes(), value.as_bytes().to_vec()),
                None => tx.delete(key.as_bytes()),
            }
        }
    }

    fn held(pending: &Pending) -> Vec<(String, Option<String>)> {
        let mut held: Vec<_> = pending
            .iter()
            .map(|(key, slot)| {
                let value = slot.value.as_ref();
                (
                    String::from_utf8_lossy(key).into_owned(),
                    value.map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        held.sort();
        held
    }

    #[test]
    fn a_failed_attempt_leaves_the_batch_as_the_attempts_before_it_left_it() {
        let mut pending = Pending::default();
        attempt(&mut pending, 1, &[("a", Some("1")), ("b", Some("1"))]);
        attempt(&mut pending, 2, &[("b", Some("2")), ("c", None)]);
        let before = held(&pending);
        // Overwrites twice, deletes, and adds a key of its own.
        attempt(
            &mut pending,
            3,
            &[
                ("a", Some("3")),
                ("a", Some("33")),
                ("b", None),
                ("d", Some("3")),
            ],
        );
        assert_eq!(held(&pending).len(), 4);
        roll_back(&mut pending, 3);
        assert_eq!(held(&pending), before);
        // The keys rolled back are written again by a later attempt, and
        // a failure of that one goes back to the same state.
        attempt(&mut pending, 4, &[("a", Some("4")), ("c", Some("4"))]);
        roll_back(&mut pending, 4);
        assert_eq!(held(&pending), before);
        attempt(&mut pending, 5, &[("a", Some("5"))]);
        assert_eq!(held(&pending)[0], ("a".into(), Some("5".into())));
    }
}
