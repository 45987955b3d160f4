//! A replica's writes: entries of another log at the positions they have
//! there (see [`crate::Replicated`]). They go through the one writer, in
//! the order given, after the same checks an append gets, except that the
//! position, version and time come from the source log and are checked,
//! not assigned.

use super::RocksStore;
use super::batch::{Pending, record_outcome, write_events};
use super::store::put_read_model;
use super::syncer::Decision;
use super::writer::{Job, Work, Writer};
use crate::api::{AppendOutcome, PendingAppend, StreamWritten};
use crate::codec;
use crate::error::AppendError;
use crate::keyspaces::{CF_CHECKPOINTS, CF_READ_MODELS};
use crate::replica::Replicated;
use crate::validate;

impl RocksStore {
    /// Queues `entry`, an entry of another log, to be written at the
    /// positions it has there; the answer (wait or `.await`) is the
    /// outcome as an append's would be, durable under the store's
    /// durability.
    ///
    /// Entries must come in the source log's order without a gap
    /// ([`AppendError::ReplicaOutOfOrder`] otherwise), and an append must
    /// continue its stream's history
    /// ([`AppendError::HistoryForked`] otherwise: two histories of one
    /// stream). A refused entry writes nothing. A store that takes
    /// replicated entries must take nothing else: its own appends would
    /// take positions the source log gives to others.
    pub fn replicate(&self, entry: Replicated) -> PendingAppend {
        if let Err(error) = self.writable() {
            return PendingAppend::ready(Err(error));
        }
        let records = match &entry {
            Replicated::Append(append) => {
                if let Err(error) = validate::replicated(append, self.options()) {
                    return PendingAppend::ready(Err(error));
                }
                append
                    .events
                    .iter()
                    .map(|event| codec::encode_event(&append.stream, event))
                    .collect()
            }
            Replicated::Skip { .. } => Vec::new(),
            Replicated::ReadModel {
                first_position,
                last_position,
                batch,
            } => {
                if last_position < first_position {
                    return PendingAppend::ready(Err(AppendError::ReplicaOutOfOrder {
                        expected: *first_position,
                        found: *last_position,
                    }));
                }
                if let Err(error) = validate::read_model_batch(batch, self.options()) {
                    return PendingAppend::ready(Err(AppendError::ReadModel(error)));
                }
                Vec::new()
            }
        };
        let bytes = records.iter().map(Vec::len).sum();
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            work: Work::Replicate { entry, records },
            bytes,
            reply,
        };
        self.queue(job, receiver)
    }
}

impl Writer {
    /// Decides a replicated entry: its position must be the next one, an
    /// append's first version its stream's next.
    pub(super) fn decide_replicated(
        &mut self,
        entry: Replicated,
        records: Vec<Vec<u8>>,
        pending: &mut Pending<'_>,
    ) -> Result<Decision, AppendError> {
        let first = entry.first_position();
        if first != *pending.position {
            return Err(AppendError::ReplicaOutOfOrder {
                expected: *pending.position,
                found: first,
            });
        }
        let global = pending.keyspaces.global;
        let append = match entry {
            Replicated::Skip { position } => {
                pending.batch.put_cf(
                    global,
                    codec::global_key(position),
                    codec::encode_erased(position),
                );
                *pending.position += 1;
                return Ok(Decision::Write(AppendOutcome {
                    streams: Vec::new(),
                    first_position: position,
                    last_position: position,
                    deduplicated: false,
                }));
            }
            Replicated::ReadModel {
                first_position,
                last_position,
                batch,
            } => {
                for position in first_position..=last_position {
                    pending.batch.put_cf(
                        global,
                        codec::global_key(position),
                        codec::encode_erased(position),
                    );
                }
                let models = self.shared.cf(&self.db, CF_READ_MODELS)?;
                let checkpoints = self.shared.cf(&self.db, CF_CHECKPOINTS)?;
                put_read_model(pending.batch, [models, checkpoints], &batch);
                *pending.position = last_position + 1;
                return Ok(Decision::Write(AppendOutcome {
                    streams: Vec::new(),
                    first_position,
                    last_position,
                    deduplicated: false,
                }));
            }
            Replicated::Append(append) => append,
        };
        let tip = self.current_tip(&append.stream, pending.versions)?;
        if append.first_version != tip.version.saturating_add(1) {
            return Err(AppendError::HistoryForked {
                stream: append.stream,
                held: tip.version,
                found: append.first_version,
            });
        }
        let recorded_at = append.recorded_at.max(self.replicated_at);
        self.replicated_at = recorded_at;
        let version = write_events(
            pending,
            &append.stream,
            tip.version,
            records,
            append.events,
            recorded_at,
        );
        let outcome = AppendOutcome {
            streams: vec![StreamWritten {
                stream: append.stream,
                first_version: append.first_version,
                last_version: version,
            }],
            first_position: first,
            last_position: *pending.position - 1,
            deduplicated: false,
        };
        // The first outcome of a command id stays: a log that holds an id
        // twice (a retry past the source's deduplication window) answers
        // retries with the first.
        if let Some(id) = append.command_id
            && self.applied_command(id, pending)?.is_none()
        {
            record_outcome(pending, id, &outcome);
        }
        Ok(Decision::Write(outcome))
    }
}
