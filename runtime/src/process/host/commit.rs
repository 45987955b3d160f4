//! The end of a round: one batch with every changed instance, outbox and
//! timer entry and the checkpoint; then the new commands are dispatched,
//! idle instances passivated and the status published.

use super::*;
use crate::error::ProcessFailure;
use crate::process::api::ProcessManager;
use crate::process::dispatch::Delivery;
use crate::process::records::*;
use crate::process::results::ResultOutcome;
use eventfold_storage::payload;
use std::sync::atomic::Ordering;

impl<P: ProcessManager> Host<P> {
    /// Writes the changed instances, the outbox and timer changes and the
    /// checkpoint in one batch; then the new commands may be dispatched.
    pub(super) fn commit(&mut self) -> Result<(), ProcessFailure> {
        let through = self.next - 1;
        if self.dirty.is_empty() && self.ops_count == 0 && through == self.committed {
            return Ok(());
        }
        for id in self.dirty.drain() {
            if let Some(instance) = self.cache.peek(&id) {
                let bytes =
                    payload::encode(&instance.record).map_err(|e| ProcessFailure::Encode {
                        what: "an instance record",
                        reason: e.to_string(),
                    })?;
                self.ops.put(&self.model, instance_key(&id), bytes);
            }
        }
        if through > self.committed {
            self.ops.set_checkpoint(&self.model, through);
        }
        let batch = std::mem::take(&mut self.ops).relaxed();
        self.ops_count = 0;
        self.config
            .store
            .commit_read_model(batch)
            .map_err(ProcessFailure::Commit)?;
        self.committed = through;
        self.config
            .shared
            .checkpoint
            .store(through, Ordering::Relaxed);
        self.ready.extend(self.after_commit.drain(..));
        for id in self.finished_now.drain(..) {
            self.cache.pop(&id);
        }
        Ok(())
    }

    pub(super) fn dispatch(&mut self, runtime: &tokio::runtime::Handle) {
        let in_flight_max = self.config.settings.dispatch_in_flight_max;
        while self.in_flight.len() < in_flight_max {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            if self.in_flight.contains(&key) {
                continue;
            }
            let Some(entry) = self.outbox.get(&key) else {
                continue;
            };
            let Some(target) = self.config.dispatch.get(entry.kind.as_str()) else {
                let reason = format!("aggregate kind {} is not registered", entry.kind);
                self.local.push_back(Delivered {
                    id: key.0,
                    seq: key.1,
                    delivery: Delivery::Done(ResultOutcome::Failed(reason)),
                });
                continue;
            };
            let future = target.send(
                &self.config.router,
                &self.config.store,
                entry,
                &self.config.settings,
            );
            let results = self.results_tx.clone();
            let (id, seq) = key.clone();
            runtime.spawn(async move {
                let delivery = future.await;
                let _ = results.send(Delivered { id, seq, delivery }).await;
            });
            self.in_flight.insert(key);
        }
    }

    /// Drops idle instances and those beyond the resident bound (all are
    /// committed at this point).
    pub(super) fn passivate(&mut self) {
        let settings = &self.config.settings;
        while self.cache.len() > settings.instances_resident_max {
            self.cache.pop_lru();
        }
        while let Some((_, instance)) = self.cache.peek_lru() {
            if instance.used.elapsed() < settings.instance_idle {
                break;
            }
            self.cache.pop_lru();
        }
    }

    pub(super) fn publish(&self) {
        let shared = &self.config.shared;
        shared
            .resident
            .store(self.cache.len() as u64, Ordering::Relaxed);
        shared
            .outbox
            .store(self.outbox.len() as u64, Ordering::Relaxed);
        shared
            .timers
            .store(self.timers.len() as u64, Ordering::Relaxed);
    }
}
