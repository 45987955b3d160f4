//! What an operator asks of the process managers: status, stuck instances,
//! one instance as last committed, and control messages (resume, cancel).

use super::control::{ControlReply, ProcessControl, ProcessShared};
use super::host::STUCK_LIST_MAX;
use super::records::{InstanceRecord, StuckRecord, instance_key, outbox_prefix};
use super::status::{InstanceView, ProcessStatus, StuckInstance};
use super::supervisor::Processes;
use crate::error::{ControlRefusal, ProcessError};
use crate::read::projection::ConsumerState;
use eventfold_storage::{Corruption, EventStore, payload};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Processes {
    /// A process manager's status: checkpoint, head, instances in memory,
    /// outbox, timers, stuck instances.
    pub(crate) fn status(
        &self,
        name: &str,
        store: &dyn EventStore,
    ) -> Result<ProcessStatus, ProcessError> {
        let process = self.get(name)?;
        let sum = |field: fn(&ProcessShared) -> &AtomicU64| {
            process
                .parts
                .iter()
                .map(|p| field(&p.shared).load(Ordering::Relaxed))
                .sum()
        };
        // The state and checkpoint of the partition furthest behind: a
        // stopped one first, then the lowest checkpoint.
        let behind = process.parts.iter().min_by_key(|p| {
            let stopped = matches!(p.shared.state(), ConsumerState::Stopped(_));
            (!stopped, p.shared.checkpoint.load(Ordering::Relaxed))
        });
        Ok(ProcessStatus {
            name: name.to_owned(),
            partitions: process.parts.len(),
            state: behind.map_or(ConsumerState::CatchingUp, |p| p.shared.state()),
            checkpoint: behind.map_or(0, |p| p.shared.checkpoint.load(Ordering::Relaxed)),
            head: store.head(),
            resident: sum(|s| &s.resident),
            outbox: sum(|s| &s.outbox),
            timers: sum(|s| &s.timers),
            stuck: sum(|s| &s.stuck),
            steps: sum(|s| &s.steps),
            unroutable: sum(|s| &s.unroutable),
        })
    }

    /// The instances of a process manager parked as stuck, with their last
    /// error (at most [`STUCK_LIST_MAX`](crate::process) of them).
    pub(crate) fn stuck_instances(
        &self,
        name: &str,
        store: &dyn EventStore,
    ) -> Result<Vec<StuckInstance>, ProcessError> {
        let mut stuck = Vec::new();
        for part in &self.get(name)?.parts {
            stuck.extend(stuck_in(&part.model, store)?);
            stuck.truncate(STUCK_LIST_MAX);
        }
        Ok(stuck)
    }

    /// An instance of process manager `name` as last committed, with its
    /// state decoded as `S` (the process manager's `State`).
    pub(crate) fn instance<S: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
        id: &str,
        store: &dyn EventStore,
    ) -> Result<Option<InstanceView<S>>, ProcessError> {
        let process = self.get(name)?.part_of(id);
        let Some(record) = read_instance(&process.model, id, store)? else {
            return Ok(None);
        };
        let status = record.status();
        let state = if record.state.is_empty() {
            S::default()
        } else {
            payload::decode(&record.state)
                .map_err(|e| Corruption::read_model_value(&process.model, &instance_key(id), e))?
        };
        let outbox = store
            .read_model_scan(
                &process.model,
                &outbox_prefix(id),
                usize::try_from(record.next_seq).unwrap_or(usize::MAX),
            )?
            .len();
        Ok(Some(InstanceView {
            id: id.to_owned(),
            status,
            state,
            timers: record
                .timers
                .into_iter()
                .map(|(name, due)| (name, eventfold_domain::Timestamp::from_micros(due)))
                .collect(),
            outbox,
        }))
    }

    /// Sends a control message about instance `id` to the host of its
    /// partition of `name`, and waits (blocking) for its answer, at most
    /// `timeout`.
    pub(crate) fn ask(
        &self,
        name: &str,
        id: &str,
        message: impl FnOnce(ControlReply) -> ProcessControl,
        timeout: Duration,
    ) -> Result<(), ProcessError> {
        let process = self.get(name)?.part_of(id);
        let (reply, answer) = oneshot::channel();
        process
            .control
            .try_send(message(reply))
            .map_err(|_| ControlRefusal::MailboxFull(name.to_owned()))?;
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(oneshot::RecvTimeoutError::Timeout) => Err(ProcessError::Timeout(timeout)),
            Err(oneshot::RecvTimeoutError::Disconnected) => Err(ProcessError::ShutDown),
        }
    }
}

/// The instances parked as stuck in the process manager's read model
/// `model` (at most [`STUCK_LIST_MAX`]), with their last error: what the
/// handle and the inspector list.
pub(crate) fn stuck_in(
    model: &str,
    store: &dyn EventStore,
) -> Result<Vec<StuckInstance>, ProcessError> {
    let entries = store.read_model_scan(model, b"s", STUCK_LIST_MAX)?;
    let mut stuck = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let id = String::from_utf8_lossy(&key[1..]).into_owned();
        let record: StuckRecord =
            payload::decode(&value).map_err(|e| Corruption::read_model_value(model, &key, e))?;
        let held = read_instance(model, &id, store)?.map_or(0, |r| r.held.len());
        stuck.push(StuckInstance {
            id,
            error: record.error,
            attempts: record.attempts,
            input: record.input.to_string(),
            since: eventfold_domain::Timestamp::from_micros(record.since),
            held_events: held,
        });
    }
    Ok(stuck)
}

fn read_instance(
    model: &str,
    id: &str,
    store: &dyn EventStore,
) -> Result<Option<InstanceRecord>, ProcessError> {
    let key = instance_key(id);
    let Some(bytes) = store.read_model_get(model, &key)? else {
        return Ok(None);
    };
    let record =
        payload::decode(&bytes).map_err(|e| Corruption::read_model_value(model, &key, e))?;
    Ok(Some(record))
}
