//! What an operator asks of one instance: resume a stuck one (its failed
//! input and held events again), or cancel one.

use super::*;
use crate::error::{ControlRefusal, ProcessError, ProcessFailure};
use crate::metric_names::PROCESS_STUCK;
use crate::process::api::{Input, ProcessManager};
use crate::process::records::*;
use eventfold_domain::RecordedEvent;
use eventfold_storage::Filter;
use std::sync::atomic::Ordering;

impl<P: ProcessManager> Host<P> {
    pub(super) fn resume(&mut self, id: &str) -> Result<(), ProcessError> {
        if !self.activate(id, false).map_err(ProcessError::Failed)? {
            return Err(ControlRefusal::NoInstance(id.to_owned()).into());
        }
        let Some(instance) = self.cache.get_mut(id) else {
            return Err(ControlRefusal::NoInstance(id.to_owned()).into());
        };
        if instance.record.status != RecordStatus::Stuck {
            return Err(ControlRefusal::NotStuck(id.to_owned()).into());
        }
        instance.record.status = RecordStatus::Active;
        let stuck = instance.record.stuck.take();
        let held = std::mem::take(&mut instance.record.held);
        for (name, due) in &instance.record.timers {
            self.timers.insert((*due, id.to_owned(), name.clone()));
        }
        self.ops.delete(&self.model, stuck_key(id));
        self.ops_count += 1;
        self.dirty.insert(id.to_owned());
        self.config.shared.stuck.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(PROCESS_STUCK, "process" => self.name.clone()).decrement(1.0);
        // Its unanswered commands are sent again (same ids).
        let mut waiting: Vec<(String, u64)> = self
            .outbox
            .keys()
            .filter(|(i, _)| i == id)
            .filter(|key| !self.in_flight.contains(*key))
            .cloned()
            .collect();
        waiting.sort();
        self.ready.extend(waiting);
        let mut events = Vec::new();
        if let Some(StuckRecord {
            input: StuckInput::Event(position),
            ..
        }) = stuck
        {
            events.push(position);
        }
        events.extend(held);
        for position in events {
            let event = self.read_event(position)?;
            self.deliver(id, false, Input::Event(&event), StuckInput::Event(position))?;
        }
        Ok(())
    }

    pub(super) fn read_event(&self, position: u64) -> Result<RecordedEvent, ProcessFailure> {
        let slice = self.config.store.read_all(position, 1, &Filter::all())?;
        slice
            .events
            .into_iter()
            .find(|e| e.position == position)
            .ok_or(ProcessFailure::MissingEvent(position))
    }

    pub(super) fn cancel(&mut self, id: &str) -> Result<(), ProcessError> {
        if !self.activate(id, false).map_err(ProcessError::Failed)? {
            return Err(ControlRefusal::NoInstance(id.to_owned()).into());
        }
        let Some(instance) = self.cache.get_mut(id) else {
            return Err(ControlRefusal::NoInstance(id.to_owned()).into());
        };
        if instance.record.status == RecordStatus::Finished {
            return Err(ControlRefusal::Finished(id.to_owned()).into());
        }
        if instance.record.status == RecordStatus::Stuck {
            self.ops.delete(&self.model, stuck_key(id));
            self.config.shared.stuck.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(PROCESS_STUCK, "process" => self.name.clone()).decrement(1.0);
        }
        instance.record.status = RecordStatus::Finished;
        instance.record.stuck = None;
        instance.record.held.clear();
        for (name, due) in std::mem::take(&mut instance.record.timers) {
            self.ops.delete(&self.model, timer_key(due, id, &name));
            self.timers.remove(&(due, id.to_owned(), name));
        }
        let sent: Vec<(String, u64)> = self
            .outbox
            .keys()
            .filter(|(i, _)| i == id)
            .cloned()
            .collect();
        for key in sent {
            self.ops.delete(&self.model, outbox_key(&key.0, key.1));
            self.outbox.remove(&key);
        }
        self.ops_count += 1;
        self.dirty.insert(id.to_owned());
        self.finished_now.push(id.to_owned());
        Ok(())
    }
}
