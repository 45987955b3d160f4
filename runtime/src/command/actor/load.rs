//! Loading an aggregate's state: from the state cache, from memory on the
//! actor's own thread when the store can answer from memory, otherwise on
//! the blocking pool; and the original outcome of a retried command.

use super::AggregateActor;
use crate::command::outcome::CommandOutcome;
use crate::error::{CommandError, LoadError, panic_message};
use crate::evolution::{Upcasters, decode};
use actix::prelude::*;
use eventfold_domain::{Aggregate, CommandId, RecordedEvent, StreamId};
use eventfold_storage::{Cached, Direction, EventStore, Snapshot, payload};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Events read per store call while loading an aggregate.
pub(crate) const LOAD_CHUNK_EVENTS: usize = 4096;
/// Most events an actor reads and applies on its own thread when it
/// activates from memory (see [`load_cached`]); more go to the blocking pool.
pub(crate) const LOAD_INLINE_EVENTS_MAX: usize = 64;

impl<A: Aggregate> AggregateActor<A> {
    /// Loads the state from the store, holding every message until done.
    pub(super) fn load(&mut self, ctx: &mut Context<Self>) {
        self.book.ready = false;
        self.book.reload_needed = false;
        let store = Arc::clone(&self.link.shared.store);
        // Deliberately on this executor thread: a read of memory only
        // (memtables and block cache; RocksDB's block-cache tier refuses
        // anything that needs the disk) of at most LOAD_INLINE_EVENTS_MAX
        // events, microseconds of work. A hand-off to the blocking pool and
        // back costs more than that; anything bigger still goes there.
        let upcasters = &self.link.shared.upcasters;
        match load_cached::<A>(&*store, upcasters, &self.stream) {
            Ok(Cached::Ready(loaded)) => return self.loaded(Ok(loaded), ctx),
            Err(error) => return self.loaded(Err(error), ctx),
            Ok(Cached::NeedsIo) => {}
        }
        let stream = self.stream.clone();
        let upcasters = Arc::clone(upcasters);
        let keys = Arc::clone(&self.link.shared.keys);
        let task = tokio::task::spawn_blocking(move || {
            keys.scope(|| load::<A>(&*store, &upcasters, &stream))
        });
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
                let mut answered = false;
                for held in self.book.queues.take_held() {
                    let _ = held.reply.send(Err(CommandError::Load(error.clone())));
                    answered = true;
                }
                // The next command is told, the one after loads again.
                self.book.load_again = answered;
                if !answered {
                    self.book.queues.set_load_failed(error);
                }
                if self.book.passivating {
                    ctx.stop();
                }
            }
        }
    }

    pub(super) fn release_held(&mut self, ctx: &mut Context<Self>) {
        while self.book.ready && !self.book.reload_needed {
            match self.book.queues.pop_held() {
                Some(msg) => self.process(msg, ctx),
                None => break,
            }
        }
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

/// Stored events in the aggregate's current event type: upcast, then
/// decoded (a schema newer than the code's is refused).
pub(crate) fn decode_events<A: Aggregate>(
    upcasters: &Upcasters,
    events: Vec<RecordedEvent>,
) -> Result<Vec<A::Event>, LoadError> {
    let events = upcasters.upcast_all(events)?;
    let decoded = events.iter().map(decode::<A::Event>);
    Ok(decoded.collect::<Result<Vec<_>, _>>()?)
}

/// Where a replay stands before the first events it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Start {
    /// The version the state is at before them.
    pub base: u64,
    /// The stream was soft-deleted after the state's version: start from
    /// the default state.
    pub fresh: bool,
}

/// Where a replay from a state at version `base` stands, given the version
/// of the first event it read after it. Read events that follow on need
/// nothing more; otherwise the stream's deletion record says whether the
/// stream was soft-deleted since (the state starts afresh after it), and
/// refuses to fold a stream whose events the state needs were truncated
/// away (no snapshot covers them).
pub(crate) fn start_of(
    store: &dyn EventStore,
    stream: &StreamId,
    base: u64,
    first_read: Option<u64>,
    cache_only: bool,
) -> Result<Cached<Start>, LoadError> {
    let follows = Start { base, fresh: false };
    if first_read == Some(base.saturating_add(1)) {
        return Ok(Cached::Ready(follows));
    }
    let Cached::Ready(record) = store.deletion_record(stream, cache_only)? else {
        return Ok(Cached::NeedsIo);
    };
    let Some(record) = record else {
        return match first_read {
            None => Ok(Cached::Ready(follows)),
            Some(found) => Err(LoadError::EventsRemoved {
                stream: stream.to_string(),
                needed: base.saturating_add(1),
                first_version: found,
            }),
        };
    };
    let start = if record.deleted_version > base {
        Start {
            base: record.deleted_version,
            fresh: true,
        }
    } else {
        follows
    };
    let first = first_read.unwrap_or(record.first_version);
    if first > start.base.saturating_add(1) && record.first_version > start.base.saturating_add(1) {
        return Err(LoadError::EventsRemoved {
            stream: stream.to_string(),
            needed: start.base.saturating_add(1),
            first_version: record.first_version,
        });
    }
    Ok(Cached::Ready(start))
}

/// The aggregate's state: its latest snapshot of the current snapshot
/// version (if any) plus every event after it. Blocking.
fn load<A: Aggregate>(
    store: &dyn EventStore,
    upcasters: &Upcasters,
    stream: &StreamId,
) -> Result<Loaded<A>, LoadError> {
    let (mut state, mut version) = from_snapshot::<A>(stream, store.load_snapshot(stream)?);
    let snapshot_version = version;
    let mut last_event = None;
    let mut first_chunk = true;
    loop {
        let events =
            store.read_stream(stream, version + 1, Direction::Forward, LOAD_CHUNK_EVENTS)?;
        if std::mem::take(&mut first_chunk) {
            let first = events.first().map(|e| e.version);
            if let Cached::Ready(start) = start_of(store, stream, version, first, false)? {
                if start.fresh {
                    state = A::default();
                }
                version = start.base;
            }
        }
        let Some(last) = events.last() else { break };
        let last_version = last.version;
        last_event = Some(last.metadata.event_id);
        let short = events.len() < LOAD_CHUNK_EVENTS;
        apply_loaded(&mut state, upcasters, events)?;
        version = last_version;
        // A short chunk is the end of the stream: no read to find it empty.
        if short {
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
    upcasters: &Upcasters,
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
    let first = events.first().map(|e| e.version);
    let Cached::Ready(start) = start_of(store, stream, version, first, true)? else {
        return Ok(Cached::NeedsIo);
    };
    if start.fresh {
        state = A::default();
    }
    let version = start.base;
    let last = events.last().map(|e| (e.version, e.metadata.event_id));
    apply_loaded(&mut state, upcasters, events)?;
    Ok(Cached::Ready(Loaded {
        state,
        version: last.map_or(version, |(v, _)| v),
        last_event: last.map(|(_, id)| id),
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
pub(crate) fn apply_loaded<A: Aggregate>(
    state: &mut A,
    upcasters: &Upcasters,
    events: Vec<RecordedEvent>,
) -> Result<(), LoadError> {
    let decoded = decode_events::<A>(upcasters, events)?;
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
    upcasters: &Upcasters,
    id: CommandId,
) -> Result<Option<CommandOutcome<A::Event>>, LoadError> {
    let Some(outcome) = store.command_outcome(id)? else {
        return Ok(None);
    };
    let Some(written) = outcome.streams.first() else {
        return Ok(None);
    };
    let Some(span) = written.last_version.checked_sub(written.first_version) else {
        return Err(LoadError::InconsistentOutcome {
            stream: written.stream.to_string(),
            first_version: written.first_version,
            last_version: written.last_version,
        });
    };
    let count = usize::try_from(span.saturating_add(1)).unwrap_or(usize::MAX);
    let recorded = store.read_stream(
        &written.stream,
        written.first_version,
        Direction::Forward,
        count,
    )?;
    let events = decode_events::<A>(upcasters, recorded)?;
    Ok(Some(CommandOutcome {
        version: written.last_version,
        position: Some(outcome.last_position),
        events,
        deduplicated: true,
    }))
}
