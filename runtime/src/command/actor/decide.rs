//! Deciding a command on the pending state and submitting its append: the
//! command-id check for retries, the expected-version check, the bound on
//! commands in flight, `Aggregate::handle` and `apply` under
//! `catch_unwind`, and the entry that waits for the append.

use super::AggregateActor;
use super::answer::answer;
use super::load::applied;
use super::queues::{Entry, EntryState};
use crate::command::messages::{CommandResult, Execute, Reply, refuse};
use crate::command::outcome::{CommandOutcome, ExecuteOptions};
use crate::error::{CommandError, LoadError, panic_message};
use actix::prelude::*;
use eventfold_domain::{
    Aggregate, CausationId, CommandId, DomainEvent, EventId, ExpectedVersion, Metadata, NewEvent,
};
use eventfold_storage::{AppendRequest, Cached, payload};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

impl<A: Aggregate> AggregateActor<A> {
    pub(super) fn process(&mut self, msg: Execute<A>, ctx: &mut Context<Self>) {
        // The one clock reading of the decision: the deadline's check and
        // the append's submission time.
        let now = Instant::now();
        if now >= msg.deadline {
            // The caller has already been told the outcome is unknown.
            return refuse::<A>(
                msg.reply,
                CommandError::Timeout(msg.deadline - msg.received),
                "timeout",
            );
        }
        let Some(id) = msg.options.command_id else {
            return self.decide(msg, now, ctx);
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
            return self.decide(msg, now, ctx);
        }
        // A retry of a command applied earlier: answer with the original.
        self.book.ready = false;
        let store = Arc::clone(&self.link.shared.store);
        let upcasters = Arc::clone(&self.link.shared.upcasters);
        let keys = Arc::clone(&self.link.shared.keys);
        let task = tokio::task::spawn_blocking(move || {
            keys.scope(|| applied::<A>(&*store, &upcasters, id))
        });
        ctx.wait(task.into_actor(self).map(move |joined, actor, ctx| {
            actor.book.ready = true;
            match joined.unwrap_or_else(|e| Err(LoadError::Task(e.to_string()))) {
                Ok(Some(outcome)) => {
                    actor.push_done(msg.reply, msg.received, Some(id), Ok(outcome))
                }
                Ok(None) => actor.decide(msg, Instant::now(), ctx),
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

    /// Decides `msg` at `now` (a recent reading of the clock: the time the
    /// append is submitted, for its latency).
    pub(super) fn decide(&mut self, msg: Execute<A>, now: Instant, ctx: &mut Context<Self>) {
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
            Ok(Ok(events)) => self.append(events, options, reply, received, now, ctx),
        }
    }

    pub(super) fn append(
        &mut self,
        events: Vec<A::Event>,
        options: ExecuteOptions,
        reply: Reply<A>,
        received: Instant,
        submitted: Instant,
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
                    headers: options.headers.clone(),
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
                submitted,
                snapshot,
            },
        );
        ctx.spawn(
            pending
                .into_actor(self)
                .map(move |result, actor, ctx| actor.appended(seq, result, ctx)),
        );
    }

    pub(super) fn push_entry(
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
    pub(super) fn push_done(
        &mut self,
        reply: Reply<A>,
        received: Instant,
        command_id: Option<CommandId>,
        result: CommandResult<A>,
    ) {
        if self.book.queues.in_flight_is_empty() {
            answer::<A>(reply, received, result, Instant::now());
        } else {
            self.push_entry(reply, received, command_id, false, EntryState::Done(result));
        }
    }
}
