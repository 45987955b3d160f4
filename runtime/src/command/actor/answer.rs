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
use eventfold_storage::{AppendError, AppendOutcome, Snapshot};
use std::time::Instant;

impl<A: Aggregate> AggregateActor<A> {
    pub(super) fn appended(
        &mut self,
        seq: u64,
        result: Result<AppendOutcome, AppendError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(Waited {
            index,
            events,
            submitted,
            snapshot,
        }) = self.take_waiting(seq)
        else {
            return;
        };
        // One reading of the clock for the append's latency and the
        // answers it releases.
        let now = Instant::now();
        metrics::histogram!(APPEND_LATENCY_SECONDS, "kind" => A::KIND)
            .record(now.saturating_duration_since(submitted).as_secs_f64());
        let answer = self.answer_of(events, result);
        self.settle_after(index, seq, &answer);
        let landed = answer.as_ref().is_ok_and(|outcome| !outcome.deduplicated);
        self.book.queues.in_flight()[index].state = EntryState::Done(answer);
        if let Some(snapshot) = snapshot {
            self.snapshot_landed(snapshot, landed, ctx);
        }
        self.drain_at(Some(now), ctx);
    }

    /// The in-flight entry `seq` whose append was waiting, taken out of its
    /// waiting state: its index, events, submission time and snapshot.
    fn take_waiting(&mut self, seq: u64) -> Option<Waited<A>> {
        let in_flight = self.book.queues.in_flight();
        let index = in_flight.iter().position(|e| e.seq == seq)?;
        let state = std::mem::replace(&mut in_flight[index].state, EntryState::DuplicateOf(seq));
        match state {
            EntryState::Waiting {
                events,
                submitted,
                snapshot,
            } => Some(Waited {
                index,
                events,
                submitted,
                snapshot,
            }),
            other => {
                in_flight[index].state = other;
                None
            }
        }
    }

    /// The caller's answer for an append's result. A result that means the
    /// pending state is wrong (a duplicate applied by another path, a
    /// failure) marks the actor for reload.
    fn answer_of(
        &mut self,
        events: Vec<A::Event>,
        result: Result<AppendOutcome, AppendError>,
    ) -> CommandResult<A> {
        let preceding_failed = self.book.reload_needed;
        match result {
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
            Err(_) if preceding_failed => {
                self.book.reload_needed = true;
                Err(CommandError::PrecedingAppendFailed)
            }
            Err(error) => {
                self.book.reload_needed = true;
                Err(match error {
                    AppendError::WrongExpectedVersion {
                        expected, actual, ..
                    } => CommandError::WrongExpectedVersion { expected, actual },
                    AppendError::Overloaded { .. } => {
                        CommandError::Overloaded("the store's write queue is full")
                    }
                    other => CommandError::Store(other),
                })
            }
        }
    }

    /// Settles the entries behind `index` that depend on its answer:
    /// retries of the same command get its outcome, and when the state is
    /// to be reloaded, decisions made on the void events fail.
    fn settle_after(&mut self, index: usize, seq: u64, answer: &CommandResult<A>) {
        let duplicate = || -> CommandResult<A> {
            match answer {
                Ok(outcome) => Ok(CommandOutcome {
                    deduplicated: true,
                    ..outcome.clone()
                }),
                Err(_) => Err(CommandError::PrecedingAppendFailed),
            }
        };
        let reload_needed = self.book.reload_needed;
        let in_flight = self.book.queues.in_flight();
        for entry in in_flight.iter_mut().skip(index + 1) {
            if matches!(entry.state, EntryState::DuplicateOf(of) if of == seq) {
                entry.state = EntryState::Done(duplicate());
            }
            // A retry too: it was answered on the state being voided.
            if reload_needed && !entry.appended {
                entry.state = EntryState::Done(Err(CommandError::PrecedingAppendFailed));
            }
        }
    }

    /// A snapshot taken with this append: written now that it is durable
    /// (with every event before it: the appends of one stream land in
    /// order), or dropped when the append did not land.
    fn snapshot_landed(&mut self, snapshot: Box<Snapshot>, landed: bool, ctx: &mut Context<Self>) {
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

    /// Sends every answer at the front whose turn has come; when nothing is
    /// in flight, reloads, snapshots or stops as needed.
    pub(super) fn drain(&mut self, ctx: &mut Context<Self>) {
        self.drain_at(None, ctx);
    }

    /// [`drain`](Self::drain), with the clock read at `now` if the caller
    /// just did (otherwise once, if any answer leaves).
    fn drain_at(&mut self, mut now: Option<Instant>, ctx: &mut Context<Self>) {
        while self.book.queues.front_is_done() {
            if let Some(entry) = self.book.queues.in_flight().pop_front()
                && let EntryState::Done(result) = entry.state
            {
                let now = *now.get_or_insert_with(Instant::now);
                answer::<A>(entry.reply, entry.received, result, now);
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

/// An in-flight entry whose append has come back, taken out of waiting.
struct Waited<A: Aggregate> {
    index: usize,
    events: Vec<A::Event>,
    submitted: Instant,
    snapshot: Option<Box<Snapshot>>,
}

/// Sends an answer and records its latency (`now`: a recent reading of the
/// clock).
pub(super) fn answer<A: Aggregate>(
    reply: Reply<A>,
    received: Instant,
    result: CommandResult<A>,
    now: Instant,
) {
    let label = match &result {
        Ok(_) => "ok",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(_) => "error",
    };
    metrics::histogram!(COMMAND_LATENCY_SECONDS, "kind" => A::KIND, "result" => label)
        .record(now.saturating_duration_since(received).as_secs_f64());
    let _ = reply.send(result);
}
