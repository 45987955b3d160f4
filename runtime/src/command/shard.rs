//! A shard: one actix Arbiter (thread) hosting a share of the aggregates.
//!
//! The handle routes each command to the shard chosen by a hash of its stream
//! id. The shard owns the only map from stream id to live aggregate actor, so
//! there is exactly one live actor per aggregate (invariant 3): it activates
//! actors on demand, passivates idle ones and the least recently used past
//! the shard's share of `resident_actors_max`, and while an actor is stopping
//! holds the commands for its stream until it has stopped, so that the next
//! actor loads a stream no earlier actor is still writing to.

use super::actor::AggregateActor;
use super::messages::{DeleteStream, Drain, Execute, Passivate, Release, Spawn, Stopped, refuse};
use super::shared::{ShardLink, Shared};
use super::state_cache::StateCache;
use crate::error::CommandError;
use crate::metric_names::{RESIDENT_ACTORS, STATE_CACHE_HITS_TOTAL};
use actix::WeakAddr;
use actix::dev::SendError;
use actix::prelude::*;
use eventfold_domain::{Aggregate, StreamId};
use lru::LruCache;
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Handler<Spawn> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Spawn, _: &mut Context<Self>) {
        drop(actix_rt::spawn((msg.0)()));
    }
}

/// A resident actor, whatever its aggregate type.
trait ResidentActor {
    fn passivate(&self);
    fn as_any(&self) -> &dyn Any;
}

/// The shard keeps a weak address of each resident actor: a strong `Addr`
/// holds a sender task and a parking flag of its own (about 100 bytes of
/// heap per resident actor), a weak one only a pointer. An address is made
/// for each send and dropped after it; the actor does not stop when the last
/// one goes (see `AggregateActor::started`), only when told to or when its
/// load fails.
impl<A: Aggregate> ResidentActor for WeakAddr<AggregateActor<A>> {
    fn passivate(&self) {
        // Bypasses the mailbox bound: passivation must not be refused. An
        // actor already gone has sent (or is sending) its `Stopped`.
        if let Some(addr) = self.upgrade() {
            addr.do_send(Passivate);
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Resident {
    actor: Box<dyn ResidentActor>,
    generation: u32,
    /// When it was last used, in milliseconds since the shard's epoch
    /// (wrapping, see `Shard::now_ms`) rounded down to even, and in the
    /// lowest bit whether it was used since it was last moved to the front
    /// of the LRU list. A command only sets the bit (a CLOCK, or second
    /// chance); the list is reordered when an actor at its end is found
    /// marked (`evict_one`, `passivate_idle`), not on every command. One
    /// `u32` for both keeps the LRU entry of each resident actor in its
    /// 64-byte allocation.
    used: u32,
}

impl Resident {
    /// Marks it used at `now`.
    fn mark_used(&mut self, now: u32) {
        self.used = (now & !1) | 1;
    }

    /// Whether it was used since it was last moved to the front.
    fn referenced(&self) -> bool {
        self.used & 1 == 1
    }

    /// Clears the mark, keeping the time of last use.
    fn clear_mark(&mut self) {
        self.used &= !1;
    }

    /// How long ago it was last used, at `now` (2 ms resolution).
    fn idle(&self, now: u32) -> Duration {
        Duration::from_millis(u64::from(now.wrapping_sub(self.used & !1)))
    }
}

/// A command held until its stream's stopping actor has stopped.
type Held = Box<dyn FnOnce(&mut Shard, &mut Context<Shard>)>;

pub(crate) struct Shard {
    shared: Arc<Shared>,
    resident: LruCache<StreamId, Resident, foldhash::fast::RandomState>,
    resident_max: usize,
    /// Streams whose actor is stopping: its generation and the held commands.
    stopping: HashMap<StreamId, (u32, Vec<Held>)>,
    /// The state of this shard's stopped aggregates.
    cache: StateCache,
    /// Wraps after 2^32 activations: a shard never has two actors of one
    /// stream that far apart.
    next_generation: u32,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
    /// This shard's address and the shared parts, one pointer per actor.
    link: Option<Arc<ShardLink>>,
    /// What `Resident::used` counts from.
    epoch: Instant,
    /// This shard's place among the shards (its `Shared::queued` count).
    index: usize,
    /// Released streams whose actors are stopping (`release.rs`): their
    /// state is not cached, and the waiters hear once none is left.
    released: HashSet<StreamId>,
    release_waiters: Vec<oneshot::Sender<()>>,
}

impl Shard {
    pub(crate) fn new(shared: Arc<Shared>, index: usize) -> Self {
        let resident_max = shared.settings.resident_per_shard();
        let cache = StateCache::new(shared.settings.state_cache_bytes_per_shard());
        Self {
            shared,
            resident: LruCache::unbounded_with_hasher(foldhash::fast::RandomState::default()),
            resident_max,
            stopping: HashMap::new(),
            cache,
            next_generation: 1,
            draining: false,
            drained: Vec::new(),
            link: None,
            epoch: Instant::now(),
            index,
            released: HashSet::new(),
            release_waiters: Vec::new(),
        }
    }

    /// Milliseconds since the shard started, truncated to 32 bits: a
    /// resident's last use in 4 bytes instead of an `Instant`'s 16 (the
    /// LRU entry of each resident actor fits a 16-byte-smaller malloc
    /// chunk). Differences are taken wrapping, which is exact for idle times
    /// under 49 days; idle passivation runs at least every 10 s, so only an
    /// `idle_after` of more than 49 days can see a wrapped (shorter) idle
    /// time, and that only delays a passivation.
    fn now_ms(&self) -> u32 {
        self.ms_at(Instant::now())
    }

    /// [`now_ms`](Self::now_ms) at `at`.
    fn ms_at(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.epoch).as_millis() as u32
    }

    fn dispatch<A: Aggregate>(&mut self, msg: Execute<A>, ctx: &mut Context<Self>) {
        if self.draining {
            return refuse::<A>(msg.reply, CommandError::ShutDown, "shut_down");
        }
        let held_max = self.shared.settings.actor_mailbox_commands_max;
        if let Some((_, held)) = self.stopping.get_mut(&msg.stream) {
            if held.len() >= held_max {
                return refuse::<A>(
                    msg.reply,
                    CommandError::Overloaded("aggregate is passivating"),
                    "overloaded",
                );
            }
            held.push(Box::new(move |shard, ctx| shard.dispatch(msg, ctx)));
            return;
        }
        // A command's use of its actor is dated by its arrival at the
        // runtime, microseconds ago: no reading of the clock here.
        let now = self.ms_at(msg.received);
        let sent = match self.resident.peek_mut(&msg.stream) {
            Some(resident) => {
                resident.mark_used(now);
                match resident
                    .actor
                    .as_any()
                    .downcast_ref::<WeakAddr<AggregateActor<A>>>()
                {
                    Some(weak) => match weak.upgrade() {
                        Some(addr) => addr.try_send(msg),
                        None => Err(SendError::Closed(msg)),
                    },
                    // Kinds are unique per runtime, so a stream id names one type.
                    None => {
                        return refuse::<A>(
                            msg.reply,
                            CommandError::NotRegistered(A::KIND),
                            "not_registered",
                        );
                    }
                }
            }
            None => self.activate::<A>(msg.stream.clone(), ctx).try_send(msg),
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Full(msg)) => refuse::<A>(
                msg.reply,
                CommandError::Overloaded("aggregate mailbox is full"),
                "overloaded",
            ),
            Err(SendError::Closed(msg)) => {
                // The actor stopped by itself (a failed load); start afresh.
                // Its own `Stopped` notice will count it out.
                self.resident.pop(&msg.stream);
                let addr = self.activate::<A>(msg.stream.clone(), ctx);
                if let Err(SendError::Full(msg) | SendError::Closed(msg)) = addr.try_send(msg) {
                    refuse::<A>(
                        msg.reply,
                        CommandError::Overloaded("aggregate mailbox is full"),
                        "overloaded",
                    );
                }
            }
        }
    }

    fn activate<A: Aggregate>(
        &mut self,
        stream: StreamId,
        ctx: &mut Context<Self>,
    ) -> Addr<AggregateActor<A>> {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        // One link (the shard's address and the shared parts) for all the
        // shard's actors: an `Addr` clone allocates a sender task, which
        // would cost each resident actor.
        let shared = &self.shared;
        let link = Arc::clone(self.link.get_or_insert_with(|| {
            Arc::new(ShardLink {
                shard: ctx.address().recipient(),
                shared: Arc::clone(shared),
            })
        }));
        let capacity = self.shared.settings.actor_mailbox_commands_max;
        let actor_stream = stream.clone();
        let cached = self.cache.take(&stream, A::KIND);
        let mut restored = false;
        let addr = AggregateActor::<A>::create(|actor_ctx| {
            actor_ctx.set_mailbox_capacity(capacity);
            let mut actor = AggregateActor::new(actor_stream, generation, link);
            if let Some(cached) = cached {
                restored = actor.restore(cached);
            }
            actor
        });
        if restored {
            self.shared.state_cache_hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(STATE_CACHE_HITS_TOTAL, "kind" => A::KIND).increment(1);
        }
        // Room is made before the new actor joins the list: unmarked at the
        // front, it would reach the end after a pass that moved every
        // marked actor in front of it, and be passivated with the command
        // it was activated for still in its mailbox.
        while self.resident.len() >= self.resident_max && self.evict_one() {}
        self.resident.put(
            stream,
            Resident {
                actor: Box::new(addr.downgrade()),
                generation,
                used: self.now_ms() & !1,
            },
        );
        self.shared.activations.fetch_add(1, Ordering::Relaxed);
        let resident = self.shared.resident.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(RESIDENT_ACTORS).set(resident as f64);
        addr
    }

    /// Passivates the least recently used actor: the one at the end of the
    /// list, after each one found there used since it was put in front has
    /// gone back to the front (once: its mark is cleared). Ends within one
    /// pass over the list. False when no actor is resident.
    fn evict_one(&mut self) -> bool {
        loop {
            let Some((stream, resident)) = self.resident.peek_lru() else {
                return false;
            };
            if !resident.referenced() {
                if let Some((stream, resident)) = self.resident.pop_lru() {
                    self.begin_passivation(stream, resident);
                }
                return true;
            }
            let stream = stream.clone();
            self.second_chance(&stream);
        }
    }

    /// Moves a resident actor used since it was last put in front back to
    /// the front, clearing its mark.
    fn second_chance(&mut self, stream: &StreamId) {
        if let Some(resident) = self.resident.peek_mut(stream) {
            resident.clear_mark();
        }
        self.resident.promote(stream);
    }

    fn begin_passivation(&mut self, stream: StreamId, resident: Resident) {
        resident.actor.passivate();
        self.stopping
            .insert(stream, (resident.generation, Vec::new()));
    }

    fn passivate_idle(&mut self) {
        let idle_after = self.shared.settings.passivation.idle_after;
        let now = self.now_ms();
        // The list is in the order actors were put in front, not of their
        // last use: one at the end that is not idle but was used since goes
        // back to the front, and the scan goes on; one neither idle nor used
        // since ends it. An idle actor behind that one waits for a later
        // scan (every quarter of `idle_after`), at most until that one is
        // idle too: it passivates at most one `idle_after` late.
        while let Some((stream, resident)) = self.resident.peek_lru() {
            if resident.idle(now) >= idle_after {
                if let Some((stream, resident)) = self.resident.pop_lru() {
                    self.begin_passivation(stream, resident);
                }
            } else if resident.referenced() {
                let stream = stream.clone();
                self.second_chance(&stream);
            } else {
                break;
            }
        }
    }

    /// Answers the waiters of releases once every released actor stopped.
    fn check_released(&mut self) {
        if self.released.is_empty() {
            for done in self.release_waiters.drain(..) {
                let _ = done.send(());
            }
        }
    }

    fn check_drained(&mut self) {
        if self.draining && self.resident.is_empty() && self.stopping.is_empty() {
            for done in self.drained.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The shard's own thread: its actors' personal values open with
        // the runtime's keys.
        crate::personal::install(&self.shared.keys);
        let every = (self.shared.settings.passivation.idle_after / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(10));
        ctx.run_interval(every, |shard, _| shard.passivate_idle());
    }
}

impl<A: Aggregate> Handler<Execute<A>> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Execute<A>, ctx: &mut Context<Self>) {
        self.shared.queued[self.index].fetch_sub(1, Ordering::Relaxed);
        self.dispatch(msg, ctx);
    }
}

/// The generation under which a stream's commands wait for its deletion.
const DELETING: u32 = u32::MAX;

impl Shard {
    /// Deletes once the stream's actor is stopped (see [`DeleteStream`]).
    fn delete_stream(&mut self, msg: DeleteStream, ctx: &mut Context<Self>) {
        if let Some((_, held)) = self.stopping.get_mut(&msg.stream) {
            held.push(Box::new(move |shard, ctx| shard.delete_stream(msg, ctx)));
            return;
        }
        if let Some(resident) = self.resident.pop(&msg.stream) {
            let stream = msg.stream.clone();
            self.begin_passivation(stream.clone(), resident);
            if let Some((_, held)) = self.stopping.get_mut(&stream) {
                held.push(Box::new(move |shard, ctx| shard.delete_stream(msg, ctx)));
            }
            return;
        }
        // Its stopped actor's state is of the events about to go.
        self.cache.take(&msg.stream, msg.kind);
        self.stopping
            .insert(msg.stream.clone(), (DELETING, Vec::new()));
        let request = eventfold_storage::DeleteRequest {
            stream: msg.stream.clone(),
            expected: eventfold_domain::ExpectedVersion::Any,
            deletion: msg.deletion,
        };
        let pending = self.shared.store.submit_deletion(request);
        let (stream, reply) = (msg.stream, msg.reply);
        ctx.spawn(pending.into_actor(self).map(move |result, shard, ctx| {
            let _ = reply.send(result);
            if let Some((_, held)) = shard.stopping.remove(&stream) {
                for command in held {
                    command(shard, ctx);
                }
            }
            shard.check_drained();
        }));
    }
}

impl Handler<DeleteStream> for Shard {
    type Result = ();

    fn handle(&mut self, msg: DeleteStream, ctx: &mut Context<Self>) {
        self.delete_stream(msg, ctx);
    }
}

impl Handler<Stopped> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Stopped, ctx: &mut Context<Self>) {
        let resident = self.shared.resident.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(RESIDENT_ACTORS).set(resident as f64);
        let was_stopping = self
            .stopping
            .get(&msg.stream)
            .is_some_and(|(generation, _)| *generation == msg.generation);
        if was_stopping {
            // Cached before the held commands run: the first of them
            // activates the next actor from it. Not while shutting down.
            let released = self.released.remove(&msg.stream);
            if let Some(state) = msg.state
                && !self.draining
                && !released
            {
                self.cache.put(msg.stream.clone(), state);
            }
            if let Some((_, held)) = self.stopping.remove(&msg.stream) {
                for command in held {
                    command(self, ctx);
                }
            }
            self.check_released();
        } else if self
            .resident
            .peek(&msg.stream)
            .is_some_and(|r| r.generation == msg.generation)
        {
            // It stopped by itself (a failed load).
            self.resident.pop(&msg.stream);
        }
        self.check_drained();
    }
}

impl Handler<Release> for Shard {
    type Result = ();

    /// Stops the actors of the streams released and forgets their cached
    /// states; answers once they have stopped (their states are not
    /// cached when they do).
    fn handle(&mut self, msg: Release, _: &mut Context<Self>) {
        let streams: Vec<StreamId> = self
            .resident
            .iter()
            .filter(|(stream, _)| (msg.matches)(stream))
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in streams {
            if let Some(resident) = self.resident.pop(&stream) {
                self.released.insert(stream.clone());
                self.begin_passivation(stream, resident);
            }
        }
        for (stream, (generation, _)) in &self.stopping {
            // A deletion's entry stops no actor.
            if *generation != DELETING && (msg.matches)(stream) {
                self.released.insert(stream.clone());
            }
        }
        self.cache.forget_where(&*msg.matches);
        self.release_waiters.push(msg.done);
        self.check_released();
    }
}

impl Handler<Drain> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Drain, _: &mut Context<Self>) {
        self.draining = true;
        self.drained.push(msg.done);
        while let Some((stream, resident)) = self.resident.pop_lru() {
            self.begin_passivation(stream, resident);
        }
        self.check_drained();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl ResidentActor for Nothing {
        fn passivate(&self) {}
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    #[test]
    fn a_resident_keeps_its_last_use_and_its_mark_in_one_word() {
        // The LRU entry (key, value, two links) stays in 64 bytes.
        assert!(std::mem::size_of::<Resident>() <= 24);
        let mut resident = Resident {
            actor: Box::new(Nothing),
            generation: 1,
            used: 1000,
        };
        assert!(!resident.referenced());
        resident.mark_used(1001);
        assert!(resident.referenced());
        assert_eq!(resident.idle(1500), Duration::from_millis(500));
        resident.clear_mark();
        assert!(!resident.referenced());
        assert_eq!(resident.idle(1500), Duration::from_millis(500));
        // Across the wrap of the 32-bit clock.
        resident.mark_used(u32::MAX - 9);
        assert_eq!(resident.idle(10), Duration::from_millis(20));
    }
}
