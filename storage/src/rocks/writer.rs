//! The group-commit writer: one thread that owns position assignment.
//!
//! Callers validate and encode their events on their own threads and queue a
//! [`Job`]. The writer takes whatever is waiting, up to the batch bounds,
//! checks expected versions and command ids against the store plus the jobs
//! already accepted into the same batch, assigns versions and positions,
//! writes one WriteBatch (one fsync under `Durability::Sync`), advances the
//! committed head, and only then answers every caller of the batch.

use super::{CF_GLOBAL, CF_HEADS, CF_IDEMPOTENCY, CF_STREAMS, Shared, write_options};
use crate::api::{AppendOutcome, AppendRequest, StreamWritten};
use crate::codec::{self, StreamHead};
use crate::error::AppendError;
use crate::options::StoreOptions;
use eventfold_domain::{CommandId, StreamId, Timestamp};
use rocksdb::{DB, WriteBatch};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};

/// Most stream heads the writer keeps in memory; past it the cache is
/// emptied and refilled from the `heads` keyspace.
pub(crate) const HEAD_CACHE_STREAMS_MAX: usize = 262_144;

/// One queued append.
pub(crate) struct Job {
    pub request: AppendRequest,
    /// Encoded records, per stream, per event, waiting to be sealed.
    pub records: Vec<Vec<Vec<u8>>>,
    /// Encoded bytes of all records.
    pub bytes: usize,
    pub reply: oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

/// What the writer's queue carries.
pub(crate) enum Message {
    Append(Job),
    /// Finish what is queued before this, then stop.
    Stop,
}

pub(crate) struct Writer {
    db: Arc<DB>,
    shared: Arc<Shared>,
    options: Arc<StoreOptions>,
    receiver: Receiver<Message>,
    next_position: u64,
    last_recorded_at: Timestamp,
    heads: HashMap<StreamId, StreamHead>,
}

/// Decides one job within a batch.
enum Decision {
    Write(AppendOutcome),
    Done(Result<AppendOutcome, AppendError>),
}

impl Writer {
    pub(crate) fn new(
        db: Arc<DB>,
        shared: Arc<Shared>,
        options: Arc<StoreOptions>,
        receiver: Receiver<Message>,
        head: u64,
        last_recorded_at: Timestamp,
    ) -> Self {
        Self {
            db,
            shared,
            options,
            receiver,
            next_position: head + 1,
            last_recorded_at,
            heads: HashMap::new(),
        }
    }

    pub(crate) fn run(mut self) {
        let mut stop = false;
        while !stop {
            let first = match self.receiver.recv() {
                Ok(Message::Append(job)) => job,
                Ok(Message::Stop) | Err(_) => break,
            };
            let mut events = first.request.event_count();
            let mut bytes = first.bytes;
            let mut jobs = vec![first];
            while jobs.len() < self.options.batch_appends_max
                && events < self.options.batch_events_max
                && bytes < self.options.batch_bytes_max
            {
                match self.receiver.try_recv() {
                    Ok(Message::Append(job)) => {
                        events += job.request.event_count();
                        bytes += job.bytes;
                        jobs.push(job);
                    }
                    Ok(Message::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit(jobs);
        }
        // Anything still queued after Stop is answered: the store is closed.
        while let Ok(message) = self.receiver.try_recv() {
            if let Message::Append(job) = message {
                let _ = job.reply.send(Err(AppendError::Closed));
            }
        }
    }

    fn commit(&mut self, jobs: Vec<Job>) {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            for job in jobs {
                let _ = job.reply.send(Err(AppendError::Poisoned));
            }
            return;
        }
        let recorded_at = Timestamp::now().max(self.last_recorded_at);
        let mut batch = WriteBatch::default();
        let mut pending_heads: HashMap<StreamId, StreamHead> = HashMap::new();
        let mut pending_commands: HashMap<CommandId, AppendOutcome> = HashMap::new();
        let mut position = self.next_position;
        let mut decisions = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut written_events = 0u64;
        let mut written_appends = 0u64;
        for job in jobs {
            let Job {
                request,
                records,
                reply,
                ..
            } = job;
            let decision = self.decide(
                &request,
                records,
                &mut batch,
                &mut pending_heads,
                &mut pending_commands,
                &mut position,
                recorded_at,
            );
            if let Decision::Write(outcome) = &decision {
                written_appends += 1;
                written_events += outcome.last_position - outcome.first_position + 1;
            }
            decisions.push(decision);
            replies.push(reply);
        }
        if written_appends > 0 {
            let result = self.write(batch);
            if let Err(message) = result {
                self.shared.poisoned.store(true, Ordering::SeqCst);
                tracing::error!(error = %message, "event store write failed; the store is poisoned");
                for (decision, reply) in decisions.into_iter().zip(replies) {
                    let answer = match decision {
                        Decision::Write(_) => Err(AppendError::Io(message.clone())),
                        // Refusals decided against a batch that never landed
                        // may be stale; the store cannot write anyway.
                        Decision::Done(_) => Err(AppendError::Poisoned),
                    };
                    let _ = reply.send(answer);
                }
                return;
            }
            self.next_position = position;
            self.last_recorded_at = recorded_at;
            if self.heads.len() + pending_heads.len() > HEAD_CACHE_STREAMS_MAX {
                self.heads.clear();
            }
            self.heads.extend(pending_heads);
            // Invariant 1: the head moves only after the batch is durable.
            self.shared.head.store(position - 1, Ordering::Release);
            self.shared.stats_batches.fetch_add(1, Ordering::Relaxed);
            self.shared
                .stats_appends
                .fetch_add(written_appends, Ordering::Relaxed);
            self.shared
                .stats_events
                .fetch_add(written_events, Ordering::Relaxed);
        }
        for (decision, reply) in decisions.into_iter().zip(replies) {
            let answer = match decision {
                Decision::Write(outcome) => Ok(outcome),
                Decision::Done(result) => result,
            };
            let _ = reply.send(answer);
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), String> {
        if self
            .options
            .faults
            .as_ref()
            .is_some_and(|f| f.should_fail())
        {
            return Err("injected write failure".into());
        }
        self.db
            .write_opt(batch, &write_options(self.options.durability))
            .map_err(|e| e.into_string())
    }

    fn current_head(
        &mut self,
        stream: &StreamId,
        pending: &HashMap<StreamId, StreamHead>,
    ) -> Result<StreamHead, AppendError> {
        if let Some(head) = pending.get(stream).or_else(|| self.heads.get(stream)) {
            return Ok(*head);
        }
        let cf = self.shared.cf(&self.db, CF_HEADS)?;
        let head = match self.db.get_pinned_cf(cf, stream.as_str().as_bytes()) {
            Ok(Some(bytes)) => codec::decode_head(stream.as_str().as_bytes(), &bytes)?,
            Ok(None) => StreamHead {
                version: 0,
                position: 0,
            },
            Err(e) => return Err(AppendError::Io(e.into_string())),
        };
        if head.version > 0 {
            if self.heads.len() >= HEAD_CACHE_STREAMS_MAX {
                self.heads.clear();
            }
            self.heads.insert(stream.clone(), head);
        }
        Ok(head)
    }

    fn applied_command(
        &self,
        id: CommandId,
        pending: &HashMap<CommandId, AppendOutcome>,
    ) -> Result<Option<AppendOutcome>, AppendError> {
        if let Some(outcome) = pending.get(&id) {
            let mut outcome = outcome.clone();
            outcome.deduplicated = true;
            return Ok(Some(outcome));
        }
        let cf = self.shared.cf(&self.db, CF_IDEMPOTENCY)?;
        let key = codec::command_key(id);
        match self.db.get_pinned_cf(cf, key) {
            Ok(Some(bytes)) => Ok(Some(codec::decode_outcome(&key, &bytes)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(AppendError::Io(e.into_string())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        request: &AppendRequest,
        records: Vec<Vec<Vec<u8>>>,
        batch: &mut WriteBatch,
        pending_heads: &mut HashMap<StreamId, StreamHead>,
        pending_commands: &mut HashMap<CommandId, AppendOutcome>,
        position: &mut u64,
        recorded_at: Timestamp,
    ) -> Decision {
        match self.try_decide(
            request,
            records,
            batch,
            pending_heads,
            pending_commands,
            position,
            recorded_at,
        ) {
            Ok(decision) => decision,
            Err(error) => Decision::Done(Err(error)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn try_decide(
        &mut self,
        request: &AppendRequest,
        records: Vec<Vec<Vec<u8>>>,
        batch: &mut WriteBatch,
        pending_heads: &mut HashMap<StreamId, StreamHead>,
        pending_commands: &mut HashMap<CommandId, AppendOutcome>,
        position: &mut u64,
        recorded_at: Timestamp,
    ) -> Result<Decision, AppendError> {
        let db = Arc::clone(&self.db);
        let global = self.shared.cf(&db, CF_GLOBAL)?;
        let streams = self.shared.cf(&db, CF_STREAMS)?;
        let heads = self.shared.cf(&db, CF_HEADS)?;
        let commands = self.shared.cf(&db, CF_IDEMPOTENCY)?;
        if let Some(id) = request.command_id
            && let Some(original) = self.applied_command(id, pending_commands)?
        {
            return Ok(Decision::Done(Ok(original)));
        }
        let mut current = Vec::with_capacity(request.streams.len());
        for part in &request.streams {
            let head = self.current_head(&part.stream, pending_heads)?;
            if let Err(mismatch) = part.expected.check(head.version) {
                return Err(AppendError::WrongExpectedVersion {
                    stream: part.stream.clone(),
                    expected: mismatch.expected,
                    actual: mismatch.actual,
                });
            }
            current.push(head);
        }
        // Nothing below can fail: a refused job adds nothing to the batch.
        let first_position = *position;
        let mut written = Vec::with_capacity(request.streams.len());
        for ((part, records), head) in request.streams.iter().zip(records).zip(current) {
            let mut version = head.version;
            for mut record in records {
                version += 1;
                codec::seal_event(&mut record, *position, version, recorded_at);
                batch.put_cf(global, codec::global_key(*position), &record);
                batch.put_cf(
                    streams,
                    codec::stream_key(part.stream.as_str(), version),
                    codec::global_key(*position),
                );
                *position += 1;
            }
            let new_head = StreamHead {
                version,
                position: *position - 1,
            };
            batch.put_cf(
                heads,
                part.stream.as_str().as_bytes(),
                codec::encode_head(new_head),
            );
            pending_heads.insert(part.stream.clone(), new_head);
            written.push(StreamWritten {
                stream: part.stream.clone(),
                first_version: head.version + 1,
                last_version: version,
            });
        }
        let outcome = AppendOutcome {
            streams: written,
            first_position,
            last_position: *position - 1,
            deduplicated: false,
        };
        if let Some(id) = request.command_id {
            batch.put_cf(
                commands,
                codec::command_key(id),
                codec::encode_outcome(&outcome),
            );
            pending_commands.insert(id, outcome.clone());
        }
        Ok(Decision::Write(outcome))
    }
}
