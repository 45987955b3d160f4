//! Answering: an append's result becomes its entry's answer (and voids the
//! decisions made on a failed one), answers leave in the order commands
//! were decided, and when nothing is in flight the actor reloads, snapshots
//! or stops.

use super::AggregateActor;
use super::queues::EntryState;
use crate::command::messages::{CommandResult, Reply};
use crate::command::outcome::CommandOutcome;
use crate::error::CommandError;
use crate::metric_names::{APPEND_LATENCY_SECONDS, COMMAND_LATENCY_SECONDS, SNAPSHOTS_TOTAL};
use actix::prelude::*;
use eventfold_domain::Aggregate;
use eventfold_storage::{AppendError, AppendOutcome};
use std::time::Instant;

impl<A: Aggregate> AggregateActor<A> {
    pub(super) fn appended(
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
    pub(super) fn drain(&mut self, ctx: &mut Context<Self>) {
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

    pub(super) fn restart(&mut self, ctx: &mut Context<Self>) {
        tracing::warn!(stream = %self.stream, "aggregate code panicked; reloading from the store");
        self.book.reload_needed = true;
        self.drain(ctx);
    }
}

/// Sends an answer and records its latency.
pub(super) fn answer<A: Aggregate>(reply: Reply<A>, received: Instant, result: CommandResult<A>) {
    let label = match &result {
        Ok(_) => "ok",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(_) => "error",
    };
    metrics::histogram!(COMMAND_LATENCY_SECONDS, "kind" => A::KIND, "result" => label)
        .record(received.elapsed().as_secs_f64());
    let _ = reply.send(result);
}
