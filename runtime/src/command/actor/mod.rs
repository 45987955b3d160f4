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

mod answer;
mod decide;
mod load;
mod queues;
mod snapshots;

pub(crate) use load::{applied, apply_loaded, start_of};

use super::messages::{Execute, Passivate, Stopped, refuse};
use super::shared::ShardLink;
use super::state_cache::CachedState;
use crate::error::CommandError;
use crate::metric_names::{ACTIVATIONS_TOTAL, PASSIVATIONS_TOTAL, REJECTIONS_TOTAL};
use actix::prelude::*;
use eventfold_domain::{Aggregate, EventId, StreamId};
use eventfold_storage::payload;
use queues::Queues;
use std::sync::Arc;

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
    /// The last load failed and its error was answered: the next command
    /// loads again first. (A load's error no command was waiting for is
    /// kept in `queues` for the next one. A failed actor stays resident
    /// rather than stopping, which would drop the commands already in its
    /// mailbox as shut down.)
    load_again: bool,
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
                load_again: false,
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
        if self.book.load_again {
            self.book.load_again = false;
            self.load(ctx);
        }
        if let Some(error) = self.book.queues.take_load_failed() {
            self.book.load_again = true;
            self.book.queues.release_if_idle();
            let _ = msg.reply.send(Err(CommandError::Load(error)));
            return;
        }
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
        // An actor whose load failed has no state to keep: it stops once
        // nothing waits for it.
        let failed = self.book.queues.load_failed() || self.book.load_again;
        if failed && !self.book.ready && self.book.queues.held_is_empty() {
            ctx.stop();
            return;
        }
        self.drain(ctx);
    }
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
