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
    pub(super) fn on_event(&mut self, event: &RecordedEvent) -> Result<(), ProcessFailure> {
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
        self.deliver(
            &id,
            start,
            Input::Event(event),
            StuckInput::Event(event.position),
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
        if !self.activate(id, start)? {
            // No such instance: drop what the input left behind.
            self.clean_up(id, &consumed);
            return Ok(());
        }
        let (status, base) = match self.cache.peek(id) {
            Some(instance) => (instance.record.status, instance.state.clone()),
            None => return Ok(()),
        };
        match status {
            RecordStatus::Finished => {
                self.clean_up(id, &consumed);
                return Ok(());
            }
            RecordStatus::Stuck => {
                if let StuckInput::Event(position) = consumed
                    && let Some(instance) = self.cache.get_mut(id)
                {
                    instance.record.held.push(position);
                    self.dirty.insert(id.to_owned());
                }
                return Ok(());
            }
            _ => {}
        }
        let retry = self.config.settings.handler_retry.clone();
        let now = self.config.clock.now();
        let key = match &consumed {
            StuckInput::Event(position) => format!("e{position}"),
            StuckInput::Result { command_id, .. } => {
                format!("r{}", CommandId::from_bytes(*command_id))
            }
            StuckInput::Timer { name, due } => format!("t{name}@{due}"),
        };
        let mut last_error = String::new();
        for attempt in 1..=retry.attempts_max {
            let mut state = base.clone();
            let mut effects = Effects::new(&self.name, id, key.clone(), now);
            let pm = &mut self.pm;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                pm.handle(&mut state, input, &mut effects)
            }));
            let error = match outcome {
                Ok(Ok(())) => match (effects.error.take(), payload::encode(&state)) {
                    (Some(error), _) => Some(error),
                    (None, Err(error)) => Some(format!("the state could not be encoded: {error}")),
                    (None, Ok(bytes)) => {
                        let new_timers = effects
                            .timers
                            .iter()
                            .filter(|t| matches!(t, TimerChange::Set { .. }))
                            .count();
                        if self.timers.len() + new_timers > self.config.settings.timers_max {
                            Some(format!(
                                "more than {} timers would be set",
                                self.config.settings.timers_max
                            ))
                        } else {
                            self.apply(id, state, bytes, effects, &consumed)?;
                            return Ok(());
                        }
                    }
                },
                Ok(Err(error)) => Some(error.to_string()),
                Err(panic) => Some(format!("the handler panicked: {}", panic_message(panic))),
            };
            if let Some(error) = error {
                tracing::warn!(process = %self.name, instance = id, attempt, %error, "handler failed");
                last_error = error;
                if attempt < retry.attempts_max {
                    std::thread::sleep(retry.backoff(attempt));
                }
            }
        }
        self.park(id, last_error, retry.attempts_max, &consumed, now)
    }
}
