//! What a step leaves behind: the instance's new state, its timers and
//! outbox entries staged in the host's batch, the cleanup of the input it
//! consumed, or the instance parked as stuck.

use super::*;
use crate::error::ProcessFailure;
use crate::metric_names::{PROCESS_COMMANDS_TOTAL, PROCESS_STEPS_TOTAL, PROCESS_STUCK};
use crate::process::api::{Effects, ProcessManager, TimerChange};
use crate::process::records::*;
use eventfold_domain::Timestamp;
use eventfold_storage::payload;
use std::sync::atomic::Ordering;

impl<P: ProcessManager> Host<P> {
    /// Removes what a consumed input leaves in the store.
    pub(super) fn clean_up(&mut self, id: &str, consumed: &StuckInput) {
        match consumed {
            StuckInput::Event(_) | StuckInput::EventPart { .. } => {}
            StuckInput::Result { seq, .. } => {
                if self.outbox.remove(&(id.to_owned(), *seq)).is_some() {
                    self.ops.delete(&self.model, outbox_key(id, *seq));
                    self.ops_count += 1;
                }
            }
            StuckInput::Timer { name, due } => {
                let mut owned = false;
                if let Some(instance) = self.cache.get_mut(id)
                    && instance.record.timers.get(name) == Some(due)
                {
                    instance.record.timers.remove(name);
                    owned = true;
                }
                if owned {
                    self.dirty.insert(id.to_owned());
                }
                self.ops.delete(&self.model, timer_key(*due, id, name));
                self.ops_count += 1;
            }
        }
    }

    pub(super) fn apply(
        &mut self,
        id: &str,
        state: P::State,
        state_bytes: Vec<u8>,
        effects: Effects,
        consumed: &StuckInput,
    ) -> Result<(), ProcessFailure> {
        self.clean_up(id, consumed);
        let Some(instance) = self.cache.get_mut(id) else {
            return Err(ProcessFailure::InstanceLost(id.to_owned()));
        };
        instance.state = state;
        instance.record.state = state_bytes;
        for change in effects.timers {
            match change {
                TimerChange::Set { name, due } => {
                    let due = due.as_micros();
                    if let Some(old) = instance.record.timers.insert(name.clone(), due) {
                        self.ops.delete(&self.model, timer_key(old, id, &name));
                        self.timers.remove(&(old, id.to_owned(), name.clone()));
                    }
                    self.ops
                        .put(&self.model, timer_key(due, id, &name), Vec::new());
                    self.timers.insert((due, id.to_owned(), name));
                }
                TimerChange::Cancel { name } => {
                    if let Some(old) = instance.record.timers.remove(&name) {
                        self.ops.delete(&self.model, timer_key(old, id, &name));
                        self.timers.remove(&(old, id.to_owned(), name));
                    }
                }
            }
            self.ops_count += 1;
        }
        for command in effects.commands {
            let seq = instance.record.next_seq;
            instance.record.next_seq += 1;
            let record = OutboxRecord {
                command_id: *command.command_id.as_uuid().as_bytes(),
                kind: command.kind,
                aggregate_id: command.aggregate_id,
                payload: command.payload,
                trace: effects.trace,
            };
            let bytes = record.encode().map_err(|e| ProcessFailure::Encode {
                what: "an outbox entry",
                reason: e.to_string(),
            })?;
            self.ops.put(&self.model, outbox_key(id, seq), bytes);
            self.ops_count += 1;
            self.outbox.insert((id.to_owned(), seq), record);
            self.after_commit.push((id.to_owned(), seq));
            metrics::counter!(PROCESS_COMMANDS_TOTAL, "process" => self.name.clone()).increment(1);
        }
        if effects.finished {
            instance.record.status = RecordStatus::Finished;
            instance.record.held.clear();
            for (name, due) in std::mem::take(&mut instance.record.timers) {
                self.ops.delete(&self.model, timer_key(due, id, &name));
                self.timers.remove(&(due, id.to_owned(), name));
                self.ops_count += 1;
            }
            self.finished_now.push(id.to_owned());
        }
        self.dirty.insert(id.to_owned());
        self.config.shared.steps.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(PROCESS_STEPS_TOTAL, "process" => self.name.clone()).increment(1);
        Ok(())
    }

    pub(super) fn park(
        &mut self,
        id: &str,
        error: String,
        attempts: u32,
        consumed: &StuckInput,
        now: Timestamp,
    ) -> Result<(), ProcessFailure> {
        tracing::error!(process = %self.name, instance = id, %error, "instance parked as stuck");
        let stuck = StuckRecord {
            error,
            attempts,
            since: now.as_micros(),
            input: consumed.clone(),
        };
        let bytes = payload::encode(&stuck).map_err(|e| ProcessFailure::Encode {
            what: "a stuck record",
            reason: e.to_string(),
        })?;
        let Some(instance) = self.cache.get_mut(id) else {
            return Err(ProcessFailure::InstanceLost(id.to_owned()));
        };
        instance.record.status = RecordStatus::Stuck;
        instance.record.stuck = Some(stuck);
        for (name, due) in &instance.record.timers {
            self.timers.remove(&(*due, id.to_owned(), name.clone()));
        }
        self.ops.put(&self.model, stuck_key(id), bytes);
        self.ops_count += 1;
        self.dirty.insert(id.to_owned());
        self.config.shared.stuck.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(PROCESS_STUCK, "process" => self.name.clone()).increment(1.0);
        Ok(())
    }
}
