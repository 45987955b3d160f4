//! What an operator asks of one instance: resume a stuck one (its failed
//! input and held events again), or cancel one.

use super::*;
use crate::error::{ControlRefusal, ProcessError, ProcessFailure};
use crate::metric_names::PROCESS_STUCK;
use crate::process::api::Association;
use crate::process::api::{Input, ProcessManager};
use crate::process::records::*;
use crate::read::interest::Interest;
use crate::read::subscription::read_at;
use eventfold_domain::RecordedEvent;
use std::panic::{AssertUnwindSafe, catch_unwind};
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
        // The stuck event (from the part of it that failed), then the held
        // ones, each as the events upcasting makes of it.
        let mut events = Vec::new();
        if let Some(at) = stuck.and_then(|s| s.input.event_position()) {
            events.push(at);
        }
        events.extend(held.into_iter().map(|position| (position, 0)));
        for (position, from) in events {
            let made = read_at(
                &*self.config.store,
                &self.config.upcasters,
                position,
                &Interest::events(self.filter.clone()),
            )
            .map_err(ProcessFailure::from)?
            .ok_or(ProcessFailure::MissingEvent(position))?;
            let several = made.len() > 1;
            for (index, event) in made.iter().enumerate() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                // Of several, only those routed to this instance.
                if index < from || (several && !self.routes_to(event, id)) {
                    continue;
                }
                let input = StuckInput::event(position, index);
                self.deliver(id, false, Input::Event(event), input)?;
            }
        }
        Ok(())
    }

    /// Whether the process manager routes `event` to instance `id` (a
    /// panic of `associate` routes it nowhere).
    fn routes_to(&self, event: &RecordedEvent, id: &str) -> bool {
        let pm = &self.pm;
        match catch_unwind(AssertUnwindSafe(|| pm.associate(event))) {
            Ok(Association::Start(to) | Association::Continue(to)) => to == id,
            Ok(Association::Ignore) | Err(_) => false,
        }
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
