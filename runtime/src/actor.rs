//! The aggregate actor: one per live aggregate, owning its stream.
//!
//! **Deciding.** A command is decided (`Aggregate::handle`) on the actor's
//! *pending* state: the durable state plus the events of appends still in
//! flight. Its events are applied to the pending state at once and appended
//! with `ExpectedVersion::Exact(version before them)`, and the actor goes on
//! to the next command without waiting: one hot aggregate keeps many appends
//! in the writer's queue (pipelining, at most `actor_in_flight_commands_max`).
//!
//! **Answering.** Answers leave in the order commands were decided, each only
//! once its append is durable (invariant 2 as the caller sees it: nothing is
//! acknowledged before it is durable). A refusal or an empty decision made on
//! pending state waits behind the appends it was decided on.
//!
//! **Failure.** If an append fails, every later command that was decided on
//! it fails (`PrecedingAppendFailed`; their own appends fail their version
//! check in the store), new commands are held, and once nothing is in flight
//! the actor reloads its state from the store: a failed append leaves no
//! trace in the state. A panic in `handle` or `apply` fails that command and
//! reloads the same way (supervision by restart).
//!
//! **Blocking.** Loading (activation, reload), command-id look-ups and
//! snapshot writes are blocking store calls: they run on the shard runtime's
//! blocking pool (`blocking_threads_per_shard_max`), never on the shard's
//! thread. While a load or look-up runs the actor takes no other message
//! (`ctx.wait`), so commands queue in its bounded mailbox.

use crate::error::{CommandError, LoadError, panic_message};
use crate::metric_names::{
    ACTIVATIONS_TOTAL, APPEND_LATENCY_SECONDS, COMMAND_LATENCY_SECONDS, PASSIVATIONS_TOTAL,
    REJECTIONS_TOTAL, SNAPSHOTS_TOTAL,
};
use crate::outcome::{CommandOutcome, ExecuteOptions};
use crate::shard::{CommandResult, Execute, Reply, ShardLink, Stopped, refuse};
use crate::state_cache::CachedState;
use actix::prelude::*;
use eventfold_domain::{
    Aggregate, CausationId, CommandId, DomainEvent, EventId, ExpectedVersion, Metadata, NewEvent,
    StreamId,
};
use eventfold_storage::{
    AppendError, AppendOutcome, AppendRequest, Cached, Direction, EventStore, Snapshot, payload,
};
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

/// Events read per store call while loading an aggregate.
pub(crate) const LOAD_CHUNK_EVENTS: usize = 4096;
/// Most events an actor reads and applies on its own thread when it
/// activates from memory (see [`load_cached`]); more go to the blocking pool.
pub(crate) const LOAD_INLINE_EVENTS_MAX: usize = 64;

/// Stop once nothing is in flight.
pub(crate) struct Passivate;

impl Message for Passivate {
    type Result = ();
}

enum EntryState<A: Aggregate> {
    /// The append is in the writer's hands.
    Waiting {
        events: Vec<A::Event>,
        submitted: Instant,
        /// The state as of this append's last event, saved once the append
        /// is durable (see [`Book::snapshot_taken`]).
        snapshot: Option<Box<Snapshot>>,
    },
    /// The answer is known; it leaves when every earlier entry has.
    Done(CommandResult<A>),
    /// A retry (same command id) of the append entry `seq`, still in flight.
    DuplicateOf(u64),
}

struct Entry<A: Aggregate> {
    seq: u64,
    reply: Reply<A>,
    received: Instant,
    command_id: Option<CommandId>,
    /// True for entries whose answer comes from an append.
    appended: bool,
    state: EntryState<A>,
}

/// The commands an actor is busy with: those in flight (decided, their
/// answers not yet sent, in order) and those held while it loads. Boxed, and
/// only while there are any: an idle resident actor pays one pointer, not
/// two queue headers and the buffer its last burst of commands grew.
struct Queues<A: Aggregate>(Option<Box<Busy<A>>>);

struct Busy<A: Aggregate> {
    in_flight: VecDeque<Entry<A>>,
    /// Commands that arrived while a load or reload was pending.
    held: VecDeque<Execute<A>>,
    /// The sequence number of the next in-flight entry. It starts again
    /// from 0 with each new box: the box is freed only once no entry is in
    /// flight, so no answer of an old entry can arrive after.
    next_seq: u64,
    /// A snapshot whose events are durable, waiting for the write of the
    /// one before it to finish.
    landed_snapshot: Option<Box<Snapshot>>,
}

impl<A: Aggregate> Queues<A> {
    fn busy(&mut self) -> &mut Busy<A> {
        self.0.get_or_insert_with(|| {
            Box::new(Busy {
                in_flight: VecDeque::new(),
                held: VecDeque::new(),
                next_seq: 0,
                landed_snapshot: None,
            })
        })
    }

    fn in_flight_len(&self) -> usize {
        self.0.as_ref().map_or(0, |busy| busy.in_flight.len())
    }

    fn in_flight_is_empty(&self) -> bool {
        self.in_flight_len() == 0
    }

    /// The in-flight queue, created if there is none.
    fn in_flight(&mut self) -> &mut VecDeque<Entry<A>> {
        &mut self.busy().in_flight
    }

    fn front_is_done(&self) -> bool {
        self.0.as_ref().is_some_and(|busy| {
            matches!(
                busy.in_flight.front(),
                Some(Entry {
                    state: EntryState::Done(_),
                    ..
                })
            )
        })
    }

    /// The sequence number of the entry with command id `id` whose append
    /// is in flight.
    fn waiting_with_id(&self, id: CommandId) -> Option<u64> {
        self.0
            .as_ref()?
            .in_flight
            .iter()
            .find(|e| e.command_id == Some(id) && matches!(e.state, EntryState::Waiting { .. }))
            .map(|e| e.seq)
    }

    fn held_len(&self) -> usize {
        self.0.as_ref().map_or(0, |busy| busy.held.len())
    }

    fn held_is_empty(&self) -> bool {
        self.held_len() == 0
    }

    fn hold(&mut self, msg: Execute<A>) {
        self.busy().held.push_back(msg);
    }

    fn pop_held(&mut self) -> Option<Execute<A>> {
        self.0.as_mut()?.held.pop_front()
    }

    fn take_held(&mut self) -> VecDeque<Execute<A>> {
        self.0
            .as_mut()
            .map(|busy| std::mem::take(&mut busy.held))
            .unwrap_or_default()
    }

    /// Frees the box once both queues are empty.
    fn release_if_idle(&mut self) {
        if self.0.as_ref().is_some_and(|busy| {
            busy.in_flight.is_empty() && busy.held.is_empty() && busy.landed_snapshot.is_none()
        }) {
            self.0 = None;
        }
    }
}

/// What an actor keeps besides its identity and state, boxed: an actix
/// actor lives inside its tokio task, whose allocation is rounded up to a
/// multiple of 128 bytes, and keeping the actor itself small (its stream id,
/// its shard, its state and this pointer) keeps the task of an aggregate
/// with a small state in a smaller size step (see BENCHMARKS.md, W8).
struct Book<A: Aggregate> {
    /// The version of the pending state.
    version: u64,
    /// The stream version the last snapshot holds (or the pending one).
    snapshot_version: u64,
    /// The id of the event at `version`, when known: each append is chained
    /// to it (`ExpectedVersion::After`), so that an append decided on events
    /// that never landed cannot match a stream that a foreign write has
    /// brought to the same version.
    last_event: Option<EventId>,
    /// Told apart from other actors of the same stream by the shard.
    generation: u32,
    /// False while loading or looking up a command id.
    ready: bool,
    /// A snapshot was taken and is not yet being written. Snapshots are
    /// taken from the pending state when a command is decided (a hot
    /// aggregate may never be idle) and ride on that command's in-flight
    /// entry; each is written once its append is durable and dropped if it
    /// fails, so a snapshot never holds an event that did not land. At most
    /// one is taken and not yet written, at most one is being written, and
    /// they are written in the order they were taken.
    snapshot_taken: bool,
    /// A snapshot is being written by the blocking pool.
    snapshot_saving: bool,
    /// An append failed or user code panicked: reload once nothing is in flight.
    reload_needed: bool,
    passivating: bool,
    queues: Queues<A>,
}

pub(crate) struct AggregateActor<A: Aggregate> {
    stream: StreamId,
    link: Arc<ShardLink>,
    /// The pending state: durable events plus those in flight.
    state: A,
    book: Box<Book<A>>,
}

impl<A: Aggregate> AggregateActor<A> {
    pub(crate) fn new(stream: StreamId, generation: u32, link: Arc<ShardLink>) -> Self {
        Self {
            stream,
            link,
            state: A::default(),
            book: Box::new(Book {
                version: 0,
                snapshot_version: 0,
                last_event: None,
                generation,
                ready: false,
                snapshot_taken: false,
                snapshot_saving: false,
                reload_needed: false,
                passivating: false,
                queues: Queues(None),
            }),
        }
    }

    /// Starts from the state a stopped actor of this stream left in the
    /// shard's state cache instead of loading from the store (true). A
    /// state that does not decode is ignored (a warning; false) and the
    /// store is read.
    pub(crate) fn restore(&mut self, cached: CachedState) -> bool {
        match payload::decode::<A>(&cached.state) {
            Ok(state) => {
                self.state = state;
                self.book.version = cached.version;
                self.book.last_event = cached.last_event;
                self.book.snapshot_version = cached.snapshot_version;
                self.book.ready = true;
                true
            }
            Err(error) => {
                tracing::warn!(stream = %self.stream, %error, "cached state ignored: it does not decode");
                false
            }
        }
    }

    /// The state to leave in the shard's state cache when stopping: only a
    /// clean one (loaded, nothing in flight, no reload pending), and only
    /// when the cache is on.
    fn state_to_cache(&self) -> Option<CachedState> {
        if !self.book.ready
            || self.book.reload_needed
            || !self.book.queues.in_flight_is_empty()
            || self.link.shared.settings.state_cache_bytes_per_shard() == 0
        {
            return None;
        }
        match payload::encode(&self.state) {
            Ok(state) => Some(CachedState {
                kind: A::KIND,
                state: state.into_boxed_slice(),
                version: self.book.version,
                last_event: self.book.last_event,
                snapshot_version: self.book.snapshot_version,
            }),
            Err(error) => {
                tracing::warn!(stream = %self.stream, %error, "state not cached: it does not encode");
                None
            }
        }
    }

    /// Loads the state from the store, holding every message until done.
    fn load(&mut self, ctx: &mut Context<Self>) {
        self.book.ready = false;
        self.book.reload_needed = false;
        let store = Arc::clone(&self.link.shared.store);
        // Deliberately on this executor thread: a read of memory only
        // (memtables and block cache; RocksDB's block-cache tier refuses
        // anything that needs the disk) of at most LOAD_INLINE_EVENTS_MAX
        // events, microseconds of work. A hand-off to the blocking pool and
        // back costs more than that; anything bigger still goes there.
        match load_cached::<A>(&*store, &self.stream) {
            Ok(Cached::Ready(loaded)) => return self.loaded(Ok(loaded), ctx),
            Err(error) => return self.loaded(Err(error), ctx),
            Ok(Cached::NeedsIo) => {}
        }
        let stream = self.stream.clone();
        let task = tokio::task::spawn_blocking(move || load::<A>(&*store, &stream));
        ctx.wait(task.into_actor(self).map(|joined, actor, ctx| {
            actor.loaded(
                joined.unwrap_or_else(|e| Err(LoadError::Task(e.to_string()))),
                ctx,
            )
        }));
    }

    fn loaded(&mut self, loaded: Result<Loaded<A>, LoadError>, ctx: &mut Context<Self>) {
        match loaded {
            Ok(loaded) => {
                self.state = loaded.state;
                self.book.version = loaded.version;
                self.book.last_event = loaded.last_event;
                self.book.snapshot_version = loaded.snapshot_version;
                self.book.ready = true;
                self.release_held(ctx);
            }
            Err(error) => {
                tracing::error!(stream = %self.stream, %error, "aggregate could not be loaded");
                for held in self.book.queues.take_held() {
                    let _ = held.reply.send(Err(CommandError::Load(error.clone())));
                }
                // The shard activates a fresh actor for the next command.
                ctx.stop();
            }
        }
    }

    fn release_held(&mut self, ctx: &mut Context<Self>) {
        while self.book.ready && !self.book.reload_needed {
            match self.book.queues.pop_held() {
                Some(msg) => self.process(msg, ctx),
                None => break,
            }
        }
        self.drain(ctx);
    }

    fn process(&mut self, msg: Execute<A>, ctx: &mut Context<Self>) {
        if Instant::now() >= msg.deadline {
            // The caller has already been told the outcome is unknown.
            return refuse::<A>(
                msg.reply,
                CommandError::Timeout(msg.deadline - msg.received),
                "timeout",
            );
        }
        let Some(id) = msg.options.command_id else {
            return self.decide(msg, ctx);
        };
        if let Some(of) = self.book.queues.waiting_with_id(id) {
            self.push_entry(
                msg.reply,
                msg.received,
                Some(id),
                false,
                EntryState::DuplicateOf(of),
            );
            return;
        }
        // Most command ids were never applied, and the store says so from
        // memory (a memtable's bloom filter, the block cache) in well under
        // a microsecond: asked here, on the shard's thread, the command is
        // decided at once. Only a retry of an applied command, or a lookup
        // that would read the disk, goes to the blocking pool.
        if let Ok(Cached::Ready(None)) = self.link.shared.store.command_outcome_cached(id) {
            return self.decide(msg, ctx);
        }
        // A retry of a command applied earlier: answer with the original.
        self.book.ready = false;
        let store = Arc::clone(&self.link.shared.store);
        let task = tokio::task::spawn_blocking(move || applied::<A>(&*store, id));
        ctx.wait(task.into_actor(self).map(move |joined, actor, ctx| {
            actor.book.ready = true;
            match joined.unwrap_or_else(|e| Err(LoadError::Task(e.to_string()))) {
                Ok(Some(outcome)) => {
                    actor.push_done(msg.reply, msg.received, Some(id), Ok(outcome))
                }
                Ok(None) => actor.decide(msg, ctx),
                Err(error) => actor.push_done(
                    msg.reply,
                    msg.received,
                    Some(id),
                    Err(CommandError::Load(error)),
                ),
            }
            actor.release_held(ctx);
        }));
    }

    fn decide(&mut self, msg: Execute<A>, ctx: &mut Context<Self>) {
        let Execute {
            command,
            options,
            received,
            reply,
            ..
        } = msg;
        let span = tracing::debug_span!(
            "command",
            kind = A::KIND,
            stream = %self.stream,
            correlation_id = tracing::field::Empty,
        );
        if let Some(id) = options.correlation_id {
            span.record("correlation_id", tracing::field::display(id));
        }
        let _entered = span.enter();
        if let Some(expected) = options.expected_version
            && let Err(mismatch) = expected.check(self.book.version)
        {
            let error = CommandError::WrongExpectedVersion {
                expected,
                actual: mismatch.actual,
            };
            return self.push_done(reply, received, options.command_id, Err(error));
        }
        if self.book.queues.in_flight_len()
            >= self.link.shared.settings.actor_in_flight_commands_max
        {
            return refuse::<A>(
                reply,
                CommandError::Overloaded("too many commands in flight for this aggregate"),
                "overloaded",
            );
        }
        let state = &self.state;
        match catch_unwind(AssertUnwindSafe(|| state.handle(command))) {
            Err(panic) => {
                let _ = reply.send(Err(CommandError::Panicked(panic_message(panic))));
                self.restart(ctx);
            }
            Ok(Err(error)) => self.push_done(
                reply,
                received,
                options.command_id,
                Err(CommandError::Rejected(error)),
            ),
            Ok(Ok(events)) if events.is_empty() => {
                let outcome = CommandOutcome {
                    version: self.book.version,
                    position: None,
                    events,
                    deduplicated: false,
                };
                self.push_done(reply, received, options.command_id, Ok(outcome));
            }
            Ok(Ok(events)) => self.append(events, options, reply, received, ctx),
        }
    }

    fn append(
        &mut self,
        events: Vec<A::Event>,
        options: ExecuteOptions,
        reply: Reply<A>,
        received: Instant,
        ctx: &mut Context<Self>,
    ) {
        let causation_id = options.causation_id.or_else(|| {
            options
                .command_id
                .map(|id| CausationId::from_bytes(id.to_bytes()))
        });
        let mut new_events = Vec::with_capacity(events.len());
        for event in &events {
            let bytes = match payload::encode(event) {
                Ok(bytes) => bytes,
                Err(e) => {
                    return self.push_done(
                        reply,
                        received,
                        options.command_id,
                        Err(CommandError::Encode(e.to_string())),
                    );
                }
            };
            new_events.push(NewEvent {
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload: bytes,
                metadata: Metadata {
                    event_id: EventId::random(),
                    correlation_id: options.correlation_id,
                    causation_id,
                    headers: Vec::new(),
                },
            });
        }
        let state = &mut self.state;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| {
            for event in &events {
                state.apply(event);
            }
        })) {
            let _ = reply.send(Err(CommandError::Panicked(panic_message(panic))));
            return self.restart(ctx);
        }
        let expected = match self.book.last_event {
            Some(event_id) => ExpectedVersion::After {
                version: self.book.version,
                event_id,
            },
            None => ExpectedVersion::Exact(self.book.version),
        };
        self.book.version += events.len() as u64;
        self.book.last_event = new_events.last().map(|e| e.metadata.event_id);
        let snapshot = self.take_snapshot().map(Box::new);
        let mut request = AppendRequest::single(self.stream.clone(), expected, new_events);
        request.command_id = options.command_id;
        let pending = self.link.shared.store.submit(request);
        let seq = self.push_entry(
            reply,
            received,
            options.command_id,
            true,
            EntryState::Waiting {
                events,
                submitted: Instant::now(),
                snapshot,
            },
        );
        ctx.spawn(
            pending
                .into_actor(self)
                .map(move |result, actor, ctx| actor.appended(seq, result, ctx)),
        );
    }

    fn push_entry(
        &mut self,
        reply: Reply<A>,
        received: Instant,
        command_id: Option<CommandId>,
        appended: bool,
        state: EntryState<A>,
    ) -> u64 {
        let busy = self.book.queues.busy();
        let seq = busy.next_seq;
        busy.next_seq += 1;
        busy.in_flight.push_back(Entry {
            seq,
            reply,
            received,
            command_id,
            appended,
            state,
        });
        seq
    }

    /// An answer known now; it still leaves behind earlier entries.
    fn push_done(
        &mut self,
        reply: Reply<A>,
        received: Instant,
        command_id: Option<CommandId>,
        result: CommandResult<A>,
    ) {
        if self.book.queues.in_flight_is_empty() {
            answer::<A>(reply, received, result);
        } else {
            self.push_entry(reply, received, command_id, false, EntryState::Done(result));
        }
    }

    fn appended(
        &mut self,
        seq: u64,
        result: Result<AppendOutcome, AppendError>,
        ctx: &mut Context<Self>,
    ) {
        let in_flight = self.book.queues.in_flight();
        let Some(index) = in_flight.iter().position(|e| e.seq == seq) else {
            return;
        };
        let preceding_failed = self.book.reload_needed;
        let state = std::mem::replace(&mut in_flight[index].state, EntryState::DuplicateOf(seq));
        let EntryState::Waiting {
            events,
            submitted,
            snapshot,
        } = state
        else {
            in_flight[index].state = state;
            return;
        };
        metrics::histogram!(APPEND_LATENCY_SECONDS, "kind" => A::KIND)
            .record(submitted.elapsed().as_secs_f64());
        let answer: CommandResult<A> = match result {
            Ok(outcome) if !outcome.deduplicated => Ok(CommandOutcome {
                version: outcome.last_version(),
                position: Some(outcome.last_position),
                events,
                deduplicated: false,
            }),
            Ok(outcome) => {
                // Another path applied this command id first: our events were
                // not written, so the pending state is wrong.
                self.book.reload_needed = true;
                Ok(CommandOutcome {
                    version: outcome.last_version(),
                    position: Some(outcome.last_position),
                    events: Vec::new(),
                    deduplicated: true,
                })
            }
            Err(error) => {
                self.book.reload_needed = true;
                Err(if preceding_failed {
                    CommandError::PrecedingAppendFailed
                } else {
                    match error {
                        AppendError::WrongExpectedVersion {
                            expected, actual, ..
                        } => CommandError::WrongExpectedVersion { expected, actual },
                        AppendError::Overloaded { .. } => {
                            CommandError::Overloaded("the store's write queue is full")
                        }
                        other => CommandError::Store(other),
                    }
                })
            }
        };
        // Retries of this command that arrived while it was in flight.
        let duplicate = || -> CommandResult<A> {
            match &answer {
                Ok(outcome) => Ok(CommandOutcome {
                    deduplicated: true,
                    ..outcome.clone()
                }),
                Err(_) => Err(CommandError::PrecedingAppendFailed),
            }
        };
        let in_flight = self.book.queues.in_flight();
        for entry in in_flight.iter_mut().skip(index + 1) {
            if matches!(entry.state, EntryState::DuplicateOf(of) if of == seq) {
                entry.state = EntryState::Done(duplicate());
            }
        }
        if self.book.reload_needed {
            // Decisions made on the failed events are void.
            for entry in in_flight.iter_mut().skip(index + 1) {
                if !entry.appended {
                    entry.state = EntryState::Done(Err(CommandError::PrecedingAppendFailed));
                }
            }
        }
        let landed = answer.as_ref().is_ok_and(|outcome| !outcome.deduplicated);
        in_flight[index].state = EntryState::Done(answer);
        if let Some(snapshot) = snapshot {
            // Durable now, with every event before it (the appends of one
            // stream land in order, each chained to the one before).
            if landed && !self.book.reload_needed {
                self.save_snapshot(snapshot, ctx);
            } else {
                // The reload that follows reads the last saved snapshot's
                // version back.
                self.book.snapshot_taken = false;
                metrics::counter!(SNAPSHOTS_TOTAL, "kind" => A::KIND, "result" => "dropped")
                    .increment(1);
            }
        }
        self.drain(ctx);
    }

    /// Sends every answer at the front whose turn has come; when nothing is
    /// in flight, reloads, snapshots or stops as needed.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while self.book.queues.front_is_done() {
            if let Some(entry) = self.book.queues.in_flight().pop_front()
                && let EntryState::Done(result) = entry.state
            {
                answer::<A>(entry.reply, entry.received, result);
            }
        }
        self.book.queues.release_if_idle();
        if !self.book.queues.in_flight_is_empty() || !self.book.ready {
            return;
        }
        if self.book.reload_needed {
            return self.load(ctx);
        }
        // Nothing in flight: the state is durable.
        if let Some(snapshot) = self.take_snapshot() {
            self.save_snapshot(Box::new(snapshot), ctx);
        }
        // A snapshot being written is waited for (its end drains again).
        if !self.book.snapshot_saving && self.book.passivating && self.book.queues.held_is_empty() {
            ctx.stop();
        }
    }

    fn restart(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!(stream = %self.stream, "aggregate code panicked; reloading from the store");
        self.book.reload_needed = true;
        self.drain(ctx);
    }

    /// A snapshot of the pending state, if one is due: the version has
    /// passed the last snapshot's by `snapshot_every_events` and no other
    /// snapshot is taken and not yet written. Its version becomes the last
    /// snapshot's.
    fn take_snapshot(&mut self) -> Option<Snapshot> {
        let every = self.link.shared.settings.snapshot_every_events?;
        if self.book.snapshot_taken
            || self.book.version < self.book.snapshot_version.saturating_add(every)
        {
            return None;
        }
        match payload::encode(&self.state) {
            Ok(state) => {
                self.book.snapshot_version = self.book.version;
                self.book.snapshot_taken = true;
                Some(Snapshot {
                    snapshot_version: A::SNAPSHOT_VERSION,
                    stream_version: self.book.version,
                    state,
                })
            }
            Err(error) => {
                tracing::warn!(stream = %self.stream, %error, "state could not be encoded for a snapshot");
                None
            }
        }
    }

    /// Writes a taken snapshot of durable state on the blocking pool, or,
    /// while the one before it is being written, once that is done.
    fn save_snapshot(&mut self, snapshot: Box<Snapshot>, ctx: &mut Context<Self>) {
        if self.book.snapshot_saving {
            self.book.queues.busy().landed_snapshot = Some(snapshot);
            return;
        }
        self.book.snapshot_taken = false;
        self.book.snapshot_saving = true;
        let store = Arc::clone(&self.link.shared.store);
        let stream = self.stream.clone();
        let task = tokio::task::spawn_blocking(move || {
            // A lost snapshot only costs a longer replay.
            let result = match store.save_snapshot(&stream, &snapshot) {
                Ok(()) => "saved",
                Err(error) => {
                    tracing::warn!(%stream, %error, "snapshot not saved");
                    "failed"
                }
            };
            metrics::counter!(SNAPSHOTS_TOTAL, "kind" => A::KIND, "result" => result).increment(1);
        });
        // Dropped if the actor stops first (shutdown); the write still
        // finishes.
        ctx.spawn(task.into_actor(self).map(|_, actor, ctx| {
            actor.book.snapshot_saving = false;
            if let Some(landed) = actor
                .book
                .queues
                .0
                .as_mut()
                .and_then(|busy| busy.landed_snapshot.take())
            {
                actor.save_snapshot(landed, ctx);
            }
            actor.drain(ctx);
        }));
    }
}

/// Sends an answer and records its latency.
fn answer<A: Aggregate>(reply: Reply<A>, received: Instant, result: CommandResult<A>) {
    let label = match &result {
        Ok(_) => "ok",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(_) => "error",
    };
    metrics::histogram!(COMMAND_LATENCY_SECONDS, "kind" => A::KIND, "result" => label)
        .record(received.elapsed().as_secs_f64());
    let _ = reply.send(result);
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::counter!(ACTIVATIONS_TOTAL, "kind" => A::KIND).increment(1);
        // The shard holds only a weak address (see `shard::ResidentActor`),
        // so the actor must outlive its last strong address: actix keeps an
        // actor alive while its context has a spawned future, and this one
        // never completes. It is zero-sized, so it allocates nothing, and it
        // is dropped when the actor stops (passivation, failed load,
        // shutdown of the arbiter).
        ctx.spawn(actix::fut::wrap_future::<_, Self>(
            std::future::pending::<()>(),
        ));
        // Ready already when restored from the state cache.
        if !self.book.ready {
            self.load(ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::counter!(PASSIVATIONS_TOTAL, "kind" => A::KIND).increment(1);
        for msg in self.book.queues.take_held() {
            refuse::<A>(msg.reply, CommandError::ShutDown, "shut_down");
        }
        self.link.shard.do_send(Stopped {
            stream: self.stream.clone(),
            generation: self.book.generation,
            state: self.state_to_cache(),
        });
    }
}

impl<A: Aggregate> Handler<Execute<A>> for AggregateActor<A> {
    type Result = ();

    fn handle(&mut self, msg: Execute<A>, ctx: &mut Context<Self>) {
        if !self.book.ready || self.book.reload_needed || !self.book.queues.held_is_empty() {
            if self.book.queues.held_len() >= self.link.shared.settings.actor_mailbox_commands_max {
                metrics::counter!(REJECTIONS_TOTAL, "reason" => "overloaded").increment(1);
                let _ = msg
                    .reply
                    .send(Err(CommandError::Overloaded("aggregate is reloading")));
                return;
            }
            self.book.queues.hold(msg);
            return;
        }
        self.process(msg, ctx);
    }
}

impl<A: Aggregate> Handler<Passivate> for AggregateActor<A> {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Context<Self>) {
        self.book.passivating = true;
        self.drain(ctx);
    }
}

struct Loaded<A> {
    state: A,
    version: u64,
    /// The id of the last event read (unknown when the state came from a
    /// snapshot with no events after it).
    last_event: Option<eventfold_domain::EventId>,
    snapshot_version: u64,
}

fn decode_event<A: Aggregate>(
    event: &eventfold_domain::RecordedEvent,
) -> Result<A::Event, LoadError> {
    payload::decode::<A::Event>(&event.payload).map_err(|e| LoadError::Decode {
        stream: event.stream_id.to_string(),
        version: event.version,
        reason: e.to_string(),
    })
}

/// The aggregate's state: its latest snapshot of the current snapshot
/// version (if any) plus every event after it. Blocking.
fn load<A: Aggregate>(store: &dyn EventStore, stream: &StreamId) -> Result<Loaded<A>, LoadError> {
    let (mut state, mut version) = from_snapshot::<A>(stream, store.load_snapshot(stream)?);
    let snapshot_version = version;
    let mut last_event = None;
    loop {
        let events =
            store.read_stream(stream, version + 1, Direction::Forward, LOAD_CHUNK_EVENTS)?;
        let Some(last) = events.last() else { break };
        let last_version = last.version;
        last_event = Some(last.metadata.event_id);
        apply_loaded(&mut state, &events)?;
        version = last_version;
        // A short chunk is the end of the stream: no read to find it empty.
        if events.len() < LOAD_CHUNK_EVENTS {
            break;
        }
    }
    Ok(Loaded {
        state,
        version,
        last_event,
        snapshot_version,
    })
}

/// [`load`] from memory only, for the actor's own thread: `NeedsIo` when a
/// read would need the disk or more than [`LOAD_INLINE_EVENTS_MAX`] events
/// follow the snapshot.
fn load_cached<A: Aggregate>(
    store: &dyn EventStore,
    stream: &StreamId,
) -> Result<Cached<Loaded<A>>, LoadError> {
    let Cached::Ready(snapshot) = store.load_snapshot_cached(stream)? else {
        return Ok(Cached::NeedsIo);
    };
    let (mut state, version) = from_snapshot::<A>(stream, snapshot);
    let Cached::Ready(events) =
        store.read_stream_cached(stream, version + 1, LOAD_INLINE_EVENTS_MAX + 1)?
    else {
        return Ok(Cached::NeedsIo);
    };
    if events.len() > LOAD_INLINE_EVENTS_MAX {
        return Ok(Cached::NeedsIo);
    }
    apply_loaded(&mut state, &events)?;
    Ok(Cached::Ready(Loaded {
        state,
        version: events.last().map_or(version, |e| e.version),
        last_event: events.last().map(|e| e.metadata.event_id),
        snapshot_version: version,
    }))
}

/// The state a snapshot holds and its stream version; the default state at
/// version 0 without a usable snapshot (another snapshot version, or bytes
/// that do not decode: the events are read from the start instead).
fn from_snapshot<A: Aggregate>(stream: &StreamId, snapshot: Option<Snapshot>) -> (A, u64) {
    if let Some(snapshot) = snapshot
        && snapshot.snapshot_version == A::SNAPSHOT_VERSION
    {
        match payload::decode::<A>(&snapshot.state) {
            Ok(decoded) => return (decoded, snapshot.stream_version),
            Err(error) => tracing::warn!(%stream, %error, "snapshot ignored: it does not decode"),
        }
    }
    (A::default(), 0)
}

/// Decodes `events` and applies them to `state`; a panic of `apply` is an
/// error.
fn apply_loaded<A: Aggregate>(
    state: &mut A,
    events: &[eventfold_domain::RecordedEvent],
) -> Result<(), LoadError> {
    let decoded = events
        .iter()
        .map(decode_event::<A>)
        .collect::<Result<Vec<_>, _>>()?;
    catch_unwind(AssertUnwindSafe(|| {
        for event in &decoded {
            state.apply(event);
        }
    }))
    .map_err(|panic| LoadError::Panicked(panic_message(panic)))
}

/// The original outcome of command `id`, if it was applied. Blocking.
pub(crate) fn applied<A: Aggregate>(
    store: &dyn EventStore,
    id: CommandId,
) -> Result<Option<CommandOutcome<A::Event>>, LoadError> {
    let Some(outcome) = store.command_outcome(id)? else {
        return Ok(None);
    };
    let Some(written) = outcome.streams.first() else {
        return Ok(None);
    };
    let Some(span) = written.last_version.checked_sub(written.first_version) else {
        return Err(LoadError::Decode {
            stream: written.stream.to_string(),
            version: written.first_version,
            reason: "the recorded outcome of this command is inconsistent".into(),
        });
    };
    let count = usize::try_from(span.saturating_add(1)).unwrap_or(usize::MAX);
    let recorded = store.read_stream(
        &written.stream,
        written.first_version,
        Direction::Forward,
        count,
    )?;
    let events = recorded
        .iter()
        .map(decode_event::<A>)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(CommandOutcome {
        version: written.last_version,
        position: Some(outcome.last_position),
        events,
        deduplicated: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    /// The shape of the bank's `Account`: three flags, a string, a number.
    #[derive(Default, Serialize, Deserialize)]
    struct Forty {
        flags: [bool; 3],
        owner: String,
        balance: u64,
    }

    #[derive(Clone, Serialize, Deserialize)]
    struct Nothing;

    impl eventfold_domain::DomainEvent for Nothing {
        fn event_type(&self) -> &'static str {
            "Nothing"
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Aggregate for Forty {
        const KIND: &'static str = "forty";
        type Command = ();
        type Event = Nothing;
        type Error = Never;
        fn handle(&self, _: ()) -> Result<Vec<Nothing>, Never> {
            Ok(Vec::new())
        }
        fn apply(&mut self, _: &Nothing) {}
    }

    /// An actor lives inside its tokio task, whose allocation is rounded up
    /// to 128 bytes: what the actor adds to its state is its stream id, its
    /// shard and one pointer, and its book fits a 64-byte malloc chunk
    /// (W8's figure depends on both).
    #[test]
    fn an_actor_is_its_state_plus_32_bytes_and_its_book_fits_56() {
        assert_eq!(std::mem::size_of::<Forty>(), 40);
        assert_eq!(std::mem::size_of::<AggregateActor<Forty>>(), 40 + 32);
        assert!(std::mem::size_of::<Book<Forty>>() <= 56);
    }
}
