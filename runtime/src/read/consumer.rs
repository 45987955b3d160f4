//! The consumer actor: one projection (or partition, or rebuild) or event
//! handler, on a thread of its own. See [`crate::projection`] for the model.
//!
//! **Architecture Invariant:** a projection's effects and its checkpoint are
//! committed in one `ReadModelBatch`; parked events are written in the same
//! batch. Positions are handled strictly in order, each at most once per run:
//! `next` only moves forward, and a bus batch that starts past `next` sends
//! the consumer back to reading the store.

use crate::error::{ParkedError, ProjectionError, panic_message};
use crate::evolution::Upcasters;
use crate::metric_names::{PARKED_EVENTS, PROJECTION_CHECKPOINT, PROJECTION_LAG};
use crate::placement::bucket_of;
use crate::read::bus::EventBus;
use crate::read::interest::{Interest, is_deletion};
use crate::read::projection::*;
use crate::read::subscription::{Chunk, Subscription, SubscriptionError, Woke};
use crate::runners::Placement;
use eventfold_domain::RecordedEvent;
use eventfold_storage::{EventStore, Filter, ReadModelBatch, StreamDeletion, WriteError, payload};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a live consumer waits for the bus before it looks at its mailbox.
pub(crate) const LIVE_WAIT: Duration = Duration::from_millis(20);
/// Without effects to commit, the checkpoint is still persisted after this
/// many positions, so that a restart does not re-read far.
pub(crate) const CHECKPOINT_PERSIST_EVENTS: u64 = 65_536;
/// Most parked events a consumer lists or reloads at start.
pub(crate) const PARKED_LIST_MAX: usize = 100_000;
/// The read model holding each projection's active version.
pub(crate) const ACTIVE_VERSIONS_MODEL: &str = "$projections";

/// What the handle can ask of a consumer.
pub(crate) enum Control {
    Retry(u64, oneshot::Sender<Result<(), ProjectionError>>),
    Skip(u64, oneshot::Sender<Result<(), ProjectionError>>),
    Stop,
}

/// What the handle sees of a consumer without asking it.
pub(crate) struct ConsumerShared {
    pub id: String,
    pub processed: watch::Sender<u64>,
    pub state: Mutex<ConsumerState>,
    pub parked: AtomicU64,
    pub parked_model: String,
}

impl ConsumerShared {
    pub(crate) fn state(&self) -> ConsumerState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub(super) fn set_state(&self, state: ConsumerState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }
    /// A rebuild that has been switched to.
    pub(crate) fn set_live(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *state == ConsumerState::Rebuilding {
            *state = ConsumerState::Live;
        }
    }
}

/// The handler a consumer drives.
pub(crate) enum Kind {
    Projection(Box<dyn Projection>),
    Handler(Box<dyn EventHandler>),
}

impl Kind {
    pub(crate) fn filter(&self) -> Filter {
        match self {
            Kind::Projection(p) => p.filter(),
            Kind::Handler(h) => h.filter(),
        }
    }
}

/// When a rebuild's consumer reports that it has caught up.
pub(crate) type CaughtUp = Option<std::sync::mpsc::Sender<()>>;

pub(crate) struct Consumer {
    pub shared: Arc<ConsumerShared>,
    pub kind: Kind,
    pub filter: Filter,
    pub settings: ConsumerSettings,
    pub store: Arc<dyn EventStore>,
    pub bus: EventBus,
    pub upcasters: Arc<Upcasters>,
    pub control: Receiver<Control>,
    /// The read model this consumer writes (`name@vN`).
    pub model: String,
    /// `(index, count)` when partitioned.
    pub partition: (usize, usize),
    /// Told once when the consumer first reaches the head (rebuilds).
    pub caught_up: CaughtUp,
    /// An event handler's placement, and the name it is placed by.
    pub placement: Option<(Arc<dyn crate::runners::Placement>, String)>,
}

pub(super) struct Run {
    /// Where the consumer stands in the log: catching up or live.
    pub(super) sub: Subscription,
    pub(super) persisted: u64,
    pub(super) pending: Pending,
    pub(super) cache: ReadCache,
    /// Attempts at events so far (`ReadModelTx::attempt`).
    pub(super) attempts: u64,
    pub(super) parked: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub(super) pending_events: usize,
    /// Streams with parked events, and how many.
    pub(super) held: HashMap<String, u64>,
    pub(super) last_commit: std::time::Instant,
}

enum Flow {
    Continue,
    Stop,
}

/// Why a consumer stopped serving.
pub(super) enum Served {
    /// Told to stop.
    Told,
    /// Its grant moved to another node.
    Lost,
    /// Stopped by its error policy or a store failure.
    Failed,
}

impl Consumer {
    /// Runs until told to stop or stopped by a failure; under a placement,
    /// also until `grant` is no longer this runtime's (`Served::Lost`,
    /// nothing more written).
    pub(super) fn serve(&mut self, grant: Option<(&dyn Placement, &str, u64)>) -> Served {
        let start = match self.store.checkpoint(&self.shared.id) {
            Ok(checkpoint) => checkpoint.unwrap_or(0),
            Err(error) => {
                self.stop(format!("checkpoint unreadable: {error}"));
                return Served::Failed;
            }
        };
        // It takes whole chunks of one size: the next are read ahead while
        // it handles one.
        let sub = Subscription::new(
            Arc::clone(&self.store),
            &self.bus,
            Interest::with_deletions(self.filter.clone()),
            start,
            Arc::clone(&self.upcasters),
        )
        .read_ahead();
        let mut run = Run {
            sub,
            persisted: start,
            pending: Pending::default(),
            cache: ReadCache::with_hasher(
                std::num::NonZeroUsize::new(self.settings.read_cache_entries_max.max(1))
                    .unwrap_or(std::num::NonZeroUsize::MIN),
                foldhash::fast::RandomState::default(),
            ),
            attempts: 0,
            parked: Vec::new(),
            pending_events: 0,
            held: HashMap::new(),
            last_commit: std::time::Instant::now(),
        };
        match self
            .store
            .read_model_scan(&self.shared.parked_model, b"", PARKED_LIST_MAX)
        {
            Ok(entries) => {
                for (_, value) in entries {
                    if let Ok(parked) = payload::decode::<ParkedEvent>(&value) {
                        *run.held.entry(parked.stream).or_default() += 1;
                        self.shared.parked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(error) => {
                self.stop(format!("dead letters unreadable: {error}"));
                return Served::Failed;
            }
        }
        self.shared.processed.send_replace(start);
        let held = |grant: Option<(&dyn Placement, &str, u64)>| {
            grant.is_none_or(|(placement, name, grant)| placement.grant(name) == Some(grant))
        };
        loop {
            if !held(grant) {
                return Served::Lost;
            }
            if !self.mailbox(&mut run) {
                break;
            }
            let flow = if run.sub.is_live() {
                self.step_live(&mut run)
            } else {
                self.step_catch_up(&mut run)
            };
            if let Flow::Stop = flow {
                // A commit refused after the grant went: another node
                // runs it now.
                if !held(grant) {
                    return Served::Lost;
                }
                return Served::Failed;
            }
        }
        // A clean stop commits what is pending.
        let through = run.sub.next() - 1;
        let _ = self.commit(&mut run, through, true);
        Served::Told
    }

    /// Stopped by the error policy or a store failure: answers the
    /// mailbox until told to stop.
    pub(super) fn stopped(&self) {
        while let Ok(message) = self.control.recv() {
            match message {
                Control::Stop => return,
                Control::Retry(_, reply) | Control::Skip(_, reply) => {
                    let _ = reply.send(Err(ParkedError::ConsumerStopped.into()));
                }
            }
        }
    }

    /// Handles control messages; false when told to stop.
    fn mailbox(&mut self, run: &mut Run) -> bool {
        loop {
            match self.control.try_recv() {
                Ok(Control::Stop) => return false,
                Ok(Control::Retry(position, reply)) => {
                    let _ = reply.send(self.retry_parked(run, position, false));
                }
                Ok(Control::Skip(position, reply)) => {
                    let _ = reply.send(self.retry_parked(run, position, true));
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn stop(&self, reason: String) {
        tracing::error!(consumer = %self.shared.id, %reason, "consumer stopped");
        self.shared.set_state(ConsumerState::Stopped(reason));
    }

    fn step_catch_up(&mut self, run: &mut Run) -> Flow {
        let chunk = match self.next_chunk(run) {
            Ok(chunk) => chunk,
            Err(flow) => return flow,
        };
        if let Flow::Stop = self.handle_chunk(run, &chunk) {
            return Flow::Stop;
        }
        if chunk.reached_head() {
            // At the head: commit, then take live events.
            if self.commit(run, run.sub.next() - 1, false).is_err() {
                return Flow::Stop;
            }
            if self.shared.state() == ConsumerState::CatchingUp {
                self.shared.set_state(ConsumerState::Live);
            }
            if let Some(caught_up) = self.caught_up.take() {
                let _ = caught_up.send(());
            }
        }
        Flow::Continue
    }

    fn step_live(&mut self, run: &mut Run) -> Flow {
        let interval = self.settings.commit_interval;
        let wait = LIVE_WAIT.min(interval.max(Duration::from_millis(1)));
        match run.sub.wait_blocking(wait) {
            Ok(Woke::Ready) => {}
            Ok(Woke::Idle) => {
                // Idle: commit what waits, and read the store if the head has
                // moved past positions the bus never carried (written before
                // we subscribed).
                if self.commit(run, run.sub.next() - 1, false).is_err() {
                    return Flow::Stop;
                }
                run.sub.idle();
                return Flow::Continue;
            }
            Err(error) => return self.failed(error),
        }
        if !run.sub.is_live() {
            // The bus lagged: the next step catches up from the store.
            return Flow::Continue;
        }
        let chunk = match self.next_chunk(run) {
            Ok(chunk) => chunk,
            Err(flow) => return flow,
        };
        if let Flow::Stop = self.handle_chunk(run, &chunk) {
            return Flow::Stop;
        }
        // A chunk read from the store after a gap ends at the head: commit
        // as a catch-up does; a live batch when nothing follows it and the
        // interval is due.
        let due = run.last_commit.elapsed() >= interval && run.sub.bus_is_empty();
        if (chunk.reached_head() || due) && self.commit(run, run.sub.next() - 1, false).is_err() {
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Handles a chunk's events in order, committing every
    /// `batch_events_max` handled events.
    /// Events upcast from one stored event share its position and are
    /// handled as one unit.
    fn handle_chunk(&mut self, run: &mut Run, chunk: &Chunk) -> Flow {
        let events: Vec<&RecordedEvent> = chunk.events().collect();
        let span = tracing::debug_span!(
            "consumer_batch",
            consumer = %self.shared.id,
            events = events.len(),
            first = events.first().map_or(0, |e| e.position),
            last = events.last().map_or(0, |e| e.position),
        );
        let _entered = span.enter();
        for group in events.chunk_by(|a, b| a.position == b.position) {
            let Some(position) = group.first().map(|e| e.position) else {
                continue;
            };
            if let Flow::Stop = self.handle(run, group) {
                return Flow::Stop;
            }
            run.sub.handled(position);
            if run.pending_events >= self.settings.batch_events_max
                && self.commit(run, position, false).is_err()
            {
                return Flow::Stop;
            }
        }
        run.sub.finish(chunk);
        Flow::Continue
    }

    /// The subscription's next chunk, or the flow to return without one.
    fn next_chunk(&self, run: &mut Run) -> Result<Chunk, Flow> {
        match run.sub.take(self.settings.catch_up_chunk_events) {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => Err(Flow::Continue),
            Err(error) => Err(self.failed(error)),
        }
    }

    fn failed(&self, error: SubscriptionError) -> Flow {
        self.stop(error.to_string());
        Flow::Stop
    }

    /// Whether this partition handles `event`: the partition of its
    /// stream (for a deletion, of the stream it deleted).
    fn mine(&self, event: &RecordedEvent) -> bool {
        let (index, count) = self.partition;
        if count <= 1 {
            return true;
        }
        match deletion(event) {
            Some(deletion) => bucket_of(&deletion.stream, count) == index,
            None => bucket_of(event.stream_id.as_str(), count) == index,
        }
    }

    /// Handles the events of one position under the error policy.
    fn handle(&mut self, run: &mut Run, group: &[&RecordedEvent]) -> Flow {
        let Some(&event) = group.first() else {
            return Flow::Continue;
        };
        if !self.mine(event) {
            return Flow::Continue;
        }
        let stream = event.stream_id.as_str();
        if run.held.contains_key(stream) {
            let parked = ParkedEvent {
                position: event.position,
                stream: stream.to_owned(),
                reason: "held behind an earlier parked event of its stream".into(),
                attempts: 0,
            };
            self.park(run, parked);
            return Flow::Continue;
        }
        let policy = self.settings.error_policy.clone();
        let mut backoff = policy.backoff_initial;
        let mut last_error = String::new();
        let attempts = policy.attempts_max.max(1);
        for attempt in 1..=attempts {
            match self.attempt(run, group) {
                Ok(()) => {
                    run.pending_events += group.len();
                    return Flow::Continue;
                }
                Err(error) => last_error = error.to_string(),
            }
            if attempt < attempts {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(policy.backoff_max);
            }
        }
        match policy.then {
            AfterRetries::Park => {
                tracing::warn!(consumer = %self.shared.id, position = event.position, error = %last_error, "event parked");
                let parked = ParkedEvent {
                    position: event.position,
                    stream: stream.to_owned(),
                    reason: last_error,
                    attempts,
                };
                self.park(run, parked);
                Flow::Continue
            }
            AfterRetries::Stop => {
                // Effects of earlier events of this batch are committed.
                let _ = self.commit(run, event.position - 1, true);
                self.stop(format!("position {}: {last_error}", event.position));
                Flow::Stop
            }
        }
    }

    /// One attempt of the events of one position: the handler's writes stay
    /// pending on success and are undone (all of them) on failure or panic.
    pub(super) fn attempt(
        &mut self,
        run: &mut Run,
        events: &[&RecordedEvent],
    ) -> Result<(), AttemptError> {
        run.attempts += 1;
        let result = match &mut self.kind {
            Kind::Projection(projection) => {
                let mut tx = ReadModelTx {
                    store: &*self.store,
                    model: &self.model,
                    pending: &mut run.pending,
                    cache: &mut run.cache,
                    attempt: run.attempts,
                };
                catch_unwind(AssertUnwindSafe(|| {
                    events.iter().try_for_each(|e| match deletion(e) {
                        Some(deletion) => projection.deleted(&deletion, &mut tx),
                        None => projection.apply(e, &mut tx),
                    })
                }))
            }
            Kind::Handler(handler) => catch_unwind(AssertUnwindSafe(|| {
                events.iter().try_for_each(|e| match deletion(e) {
                    Some(deletion) => handler.deleted(&deletion, e.position),
                    None => handler.handle(e),
                })
            })),
        };
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(AttemptError::Failed(error)),
            Err(panic) => Err(AttemptError::Panicked(panic_message(panic))),
        };
        if outcome.is_err() {
            roll_back(&mut run.pending, run.attempts);
        }
        outcome
    }

    /// Commits effects, parked events and the checkpoint `through`, in one
    /// batch. Without effects the checkpoint is persisted only now and then
    /// (or when `force`), but `processed` always moves.
    pub(super) fn commit(
        &mut self,
        run: &mut Run,
        through: u64,
        force: bool,
    ) -> Result<(), WriteError> {
        let effects = !run.pending.is_empty() || !run.parked.is_empty();
        // A placed handler's checkpoint is what the next node to run it
        // starts from: kept at every commit, not now and then.
        let due = through >= run.persisted + CHECKPOINT_PERSIST_EVENTS
            || (self.placement.as_ref().is_some_and(|(p, n)| p.places(n))
                && through > run.persisted);
        if effects || (force && through > run.persisted) || due {
            let mut batch = ReadModelBatch::new();
            let written = drain_into(&mut run.pending, &self.model, &mut batch);
            for (key, value) in run.parked.drain(..) {
                match value {
                    Some(value) => batch.put(&self.shared.parked_model, key, value),
                    None => batch.delete(&self.shared.parked_model, key),
                }
            }
            batch.set_checkpoint(&self.shared.id, through);
            // Effects and checkpoint are lost together or not at all, and the
            // events are durable already: no fsync of its own (see `relaxed`).
            if let Err(error) = self.store.commit_read_model(batch.relaxed()) {
                // What the cache holds may now be ahead of the store.
                run.cache.clear();
                self.stop(format!("commit failed: {error}"));
                return Err(error);
            }
            for (key, value) in written {
                run.cache.put(key, value);
            }
            run.persisted = through;
        }
        run.pending_events = 0;
        run.last_commit = std::time::Instant::now();
        if through > *self.shared.processed.borrow() {
            self.shared.processed.send_replace(through);
        }
        let labels = [("consumer", self.shared.id.clone())];
        metrics::gauge!(PROJECTION_CHECKPOINT, &labels).set(through as f64);
        metrics::gauge!(PROJECTION_LAG, &labels)
            .set(self.store.head().saturating_sub(through) as f64);
        metrics::gauge!(PARKED_EVENTS, &labels)
            .set(self.shared.parked.load(Ordering::Relaxed) as f64);
        Ok(())
    }
}

/// The deletion `event` records, if it is one.
fn deletion(event: &RecordedEvent) -> Option<StreamDeletion> {
    if is_deletion(event) {
        StreamDeletion::of(event)
    } else {
        None
    }
}

/// Why one attempt of a handler failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
    /// The handler returned an error.
    #[error(transparent)]
    Failed(HandlerError),
    /// The handler panicked.
    #[error("the handler panicked: {0}")]
    Panicked(String),
}
