//! A host's start: its checkpoint, its timers, its outbox and the count
//! of its stuck instances, read back from its read model.

use super::*;
use crate::error::ProcessFailure;
use crate::process::api::ProcessManager;
use crate::process::records::*;
use eventfold_storage::Corruption;
use std::sync::atomic::Ordering;

impl<P: ProcessManager> Host<P> {
    /// Reads the checkpoint, the timers, the outbox and the stuck count.
    pub(super) fn recover(&mut self) -> Result<(), ProcessFailure> {
        let store = &self.config.store;
        let checkpoint = store.checkpoint(&self.model)?.unwrap_or(0);
        if store.read_model_get(&self.model, PARTITIONS_KEY)?.is_none() {
            // Recorded with the first commit: a later start with another
            // count is refused (`StartError::ProcessPartitions`).
            let count = u32::try_from(self.config.partition.1).unwrap_or(u32::MAX);
            self.ops.put(
                &self.model,
                PARTITIONS_KEY.to_vec(),
                count.to_be_bytes().to_vec(),
            );
            self.ops_count += 1;
        }
        self.next = checkpoint + 1;
        self.committed = checkpoint;
        let settings = &self.config.settings;
        let timers = store.read_model_scan(&self.model, b"t", settings.timers_max)?;
        for (key, _) in timers {
            let timer = parse_timer_key(&key).ok_or_else(|| {
                Corruption::read_model_value(&self.model, &key, "malformed timer key")
            })?;
            self.timers.insert(timer);
        }
        let outbox_scan = settings.outbox_max.saturating_mul(4);
        let outbox = store.read_model_scan(&self.model, b"o", outbox_scan)?;
        if outbox.len() >= outbox_scan {
            return Err(ProcessFailure::OutboxOverflow(outbox_scan));
        }
        for (key, value) in outbox {
            let (id, seq) = parse_outbox_key(&key).ok_or_else(|| {
                Corruption::read_model_value(&self.model, &key, "malformed outbox key")
            })?;
            let record = OutboxRecord::decode(&value)
                .map_err(|e| Corruption::read_model_value(&self.model, &key, e))?;
            self.outbox.insert((id.clone(), seq), record);
            self.ready.push_back((id, seq));
        }
        let stuck = store.read_model_scan(&self.model, b"s", STUCK_LIST_MAX)?;
        // A stuck instance's timers wait for it to resume.
        for (key, _) in &stuck {
            let id = String::from_utf8_lossy(&key[1..]).into_owned();
            self.timers.retain(|(_, i, _)| *i != id);
        }
        self.config
            .shared
            .stuck
            .store(stuck.len() as u64, Ordering::Relaxed);
        metrics::gauge!(crate::metric_names::PROCESS_STUCK, "process" => self.name.clone())
            .set(stuck.len() as f64);
        self.config
            .shared
            .checkpoint
            .store(checkpoint, Ordering::Relaxed);
        self.publish();
        Ok(())
    }
}
