//! One input through one instance: routing an event, a command's result
//! or a fired timer to its instance (activated from the store on demand),
//! and running the handler under the retry policy.

use super::*;
use crate::error::ProcessFailure;
use crate::error::panic_message;
use crate::process::api::{
    Association, Effects, FiredTimer, INSTANCE_ID_BYTES_MAX, Input, ProcessManager, TimerChange,
};
use crate::process::dispatch::Delivery;
use crate::process::records::*;
use crate::process::results::CommandResult;
use eventfold_domain::{CommandId, RecordedEvent, Timestamp};
use eventfold_storage::Corruption;
use eventfold_storage::payload;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl<P: ProcessManager> Host<P> {
    /// Routes an event: the `index`-th of those upcast from one stored
    /// event (0 for most).
    pub(super) fn on_event(
        &mut self,
        event: &RecordedEvent,
        index: u32,
    ) -> Result<(), ProcessFailure> {
        let pm = &self.pm;
        let association = match catch_unwind(AssertUnwindSafe(|| pm.associate(event))) {
            Ok(association) => association,
            Err(panic) => {
                tracing::error!(process = %self.name, position = event.position,
                    reason = %panic_message(panic), "associate panicked; event not routed");
                self.config
                    .shared
                    .unroutable
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let (id, start) = match association {
            Association::Start(id) => (id, true),
            Association::Continue(id) => (id, false),
            Association::Ignore => return Ok(()),
        };
        if id.is_empty() || id.len() > INSTANCE_ID_BYTES_MAX {
            tracing::error!(process = %self.name, position = event.position,
                "instance id is empty or longer than {INSTANCE_ID_BYTES_MAX} bytes; event not routed");
            self.config
                .shared
                .unroutable
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let (partition, partitions) = self.config.partition;
        if partitions > 1 && crate::process::supervisor::partition_of(&id, partitions) != partition
        {
            // Another partition's instance: that host handles it.
            return Ok(());
        }
        self.deliver(
            &id,
            start,
            Input::Event(event),
            StuckInput::event(event.position, index),
        )
    }

    pub(super) fn on_delivery(&mut self, delivered: Delivered) -> Result<(), ProcessFailure> {
        let key = (delivered.id, delivered.seq);
        self.in_flight.remove(&key);
        let Delivery::Done(outcome) = delivered.delivery else {
            return Ok(());
        };
        let Some(entry) = self.outbox.get(&key).cloned() else {
            // Cancelled meanwhile.
            return Ok(());
        };
        let result = CommandResult {
            command_id: CommandId::from_bytes(entry.command_id),
            kind: entry.kind,
            aggregate_id: entry.aggregate_id,
            outcome,
        };
        let (id, seq) = key;
        self.deliver(
            &id,
            false,
            Input::Result(&result),
            StuckInput::Result {
                seq,
                command_id: entry.command_id,
            },
        )
    }

    pub(super) fn fire_timers(&mut self, budget: usize) -> Result<usize, ProcessFailure> {
        let now = self.config.clock.now().as_micros();
        let mut fired = 0;
        while fired < budget {
            match self.timers.first() {
                Some((due, _, _)) if *due <= now => {}
                _ => break,
            }
            let Some((due, id, name)) = self.timers.pop_first() else {
                break;
            };
            let timer = FiredTimer {
                name: name.clone(),
                due: Timestamp::from_micros(due),
            };
            self.deliver(
                &id,
                false,
                Input::Timer(&timer),
                StuckInput::Timer { name, due },
            )?;
            fired += 1;
        }
        Ok(fired)
    }

    /// Loads an instance into the cache; false when it does not exist (and
    /// `start` is false).
    pub(super) fn activate(&mut self, id: &str, start: bool) -> Result<bool, ProcessFailure> {
        if let Some(instance) = self.cache.get_mut(id) {
            instance.used = Instant::now();
            return Ok(true);
        }
        let key = instance_key(id);
        let stored = self.config.store.read_model_get(&self.model, &key)?;
        let instance = match stored {
            Some(bytes) => {
                let record: InstanceRecord = payload::decode(&bytes)
                    .map_err(|e| Corruption::read_model_value(&self.model, &key, e))?;
                let state = if record.status == RecordStatus::Finished {
                    P::State::default()
                } else {
                    payload::decode(&record.state)
                        .map_err(|e| Corruption::read_model_value(&self.model, &key, e))?
                };
                Instance {
                    record,
                    state,
                    used: Instant::now(),
                }
            }
            None if start => Instance {
                record: InstanceRecord::default(),
                state: P::State::default(),
                used: Instant::now(),
            },
            None => return Ok(false),
        };
        self.cache.put(id.to_owned(), instance);
        Ok(true)
    }

    /// Runs one input through an instance's handler under the retry policy.
    pub(super) fn deliver(
        &mut self,
        id: &str,
        start: bool,
        input: Input<'_>,
        consumed: StuckInput,
    ) -> Result<(), ProcessFailure> {
        let Some(base) = self.deliverable(id, start, &consumed)? else {
            return Ok(());
        };
        let retry = self.config.settings.handler_retry.clone();
        let now = self.config.clock.now();
        let key = step_key(&consumed);
        let trace = self.trace(id, input, &consumed);
        let span = tracing::debug_span!("process_step", process = %self.name, instance = id, input = %consumed);
        let _entered = span.enter();
        let mut last_error = String::new();
        for attempt in 1..=retry.attempts_max {
            match self.attempt(id, &base, input, key.clone(), now, trace) {
                Ok(step) => return self.apply(id, step.state, step.bytes, step.effects, &consumed),
                Err(error) => {
                    tracing::warn!(process = %self.name, instance = id, attempt, %error, "handler failed");
                    last_error = error.to_string();
                }
            }
            if attempt < retry.attempts_max {
                std::thread::sleep(retry.backoff(attempt));
            }
        }
        self.park(id, last_error, retry.attempts_max, &consumed, now)
    }

    /// Where the commands an input makes come from: an event's correlation
    /// id (its own id when it has none) and its id as their causation; a
    /// command's result carries on the command's correlation, caused by the
    /// command; a timer starts none.
    fn trace(&self, id: &str, input: Input<'_>, consumed: &StuckInput) -> Trace {
        match (input, consumed) {
            (Input::Event(event), _) => {
                let meta = &event.metadata;
                let own = meta.event_id.to_bytes();
                Trace {
                    correlation: Some(meta.correlation_id.map_or(own, |c| c.to_bytes())),
                    causation: Some(own),
                }
            }
            (Input::Result(result), StuckInput::Result { seq, .. }) => Trace {
                correlation: self
                    .outbox
                    .get(&(id.to_owned(), *seq))
                    .and_then(|entry| entry.trace.correlation),
                causation: Some(result.command_id.to_bytes()),
            },
            _ => Trace::default(),
        }
    }

    /// The state an input is to be handled on, or `None` when the input
    /// goes no further: no such instance, or a finished one (what it left
    /// behind is cleaned up), or a stuck one (an event is held for it).
    fn deliverable(
        &mut self,
        id: &str,
        start: bool,
        consumed: &StuckInput,
    ) -> Result<Option<P::State>, ProcessFailure> {
        if !self.activate(id, start)? {
            self.clean_up(id, consumed);
            return Ok(None);
        }
        let Some(instance) = self.cache.get_mut(id) else {
            return Ok(None);
        };
        match instance.record.status {
            RecordStatus::Active => Ok(Some(instance.state.clone())),
            RecordStatus::Finished => {
                self.clean_up(id, consumed);
                Ok(None)
            }
            RecordStatus::Stuck => {
                // Held once per position: a resume takes again every event
                // upcast from it (from the stuck one on, for its own).
                if let Some((position, _)) = consumed.event_position() {
                    let stuck_at = instance
                        .record
                        .stuck
                        .as_ref()
                        .and_then(|s| s.input.event_position());
                    let held = &mut instance.record.held;
                    if held.last() != Some(&position) && stuck_at.map(|(p, _)| p) != Some(position)
                    {
                        held.push(position);
                        self.dirty.insert(id.to_owned());
                    }
                }
                Ok(None)
            }
        }
    }

    /// One run of the handler on a copy of `base`: the new state (and its
    /// bytes) and the effects, or why the attempt failed. Nothing of the
    /// host changes.
    fn attempt(
        &mut self,
        id: &str,
        base: &P::State,
        input: Input<'_>,
        key: String,
        now: Timestamp,
        trace: Trace,
    ) -> Result<Step<P::State>, StepFailure> {
        let mut state = base.clone();
        let mut effects = Effects::new(&self.name, id, key, now);
        effects.trace = trace;
        let pm = &mut self.pm;
        match catch_unwind(AssertUnwindSafe(|| {
            pm.handle(&mut state, input, &mut effects)
        })) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(StepFailure::Handler(error.to_string())),
            Err(panic) => return Err(StepFailure::Panicked(panic_message(panic))),
        }
        if let Some(error) = effects.error.take() {
            return Err(StepFailure::Effects(error));
        }
        let bytes = payload::encode(&state).map_err(StepFailure::Encode)?;
        let timers_max = self.config.settings.timers_max;
        let new_timers = effects
            .timers
            .iter()
            .filter(|t| matches!(t, TimerChange::Set { .. }))
            .count();
        if self.timers.len() + new_timers > timers_max {
            return Err(StepFailure::TooManyTimers(timers_max));
        }
        Ok(Step {
            state,
            bytes,
            effects,
        })
    }
}

/// A handler's successful attempt, not yet applied.
struct Step<S> {
    state: S,
    bytes: Vec<u8>,
    effects: Effects,
}

/// Why one attempt of a handler failed; its text is the reason a stuck
/// instance shows.
#[derive(Debug, thiserror::Error)]
enum StepFailure {
    /// The handler returned its error.
    #[error("{0}")]
    Handler(String),
    /// The handler panicked.
    #[error("the handler panicked: {0}")]
    Panicked(String),
    /// An effect was refused (a command that did not encode).
    #[error("{0}")]
    Effects(String),
    /// The new state did not encode.
    #[error("the state could not be encoded: {0}")]
    Encode(eventfold_storage::payload::PayloadError),
    /// The step would set more timers than the bound.
    #[error("more than {0} timers would be set")]
    TooManyTimers(usize),
}

/// The key an input's effects derive their command ids from: the same for
/// every attempt of the same input, so a retried step sends the same ids.
fn step_key(consumed: &StuckInput) -> String {
    match consumed {
        StuckInput::Event(position) => format!("e{position}"),
        StuckInput::EventPart { position, index } => format!("e{position}.{index}"),
        StuckInput::Result { command_id, .. } => {
            format!("r{}", CommandId::from_bytes(*command_id))
        }
        StuckInput::Timer { name, due } => format!("t{name}@{due}"),
    }
}
