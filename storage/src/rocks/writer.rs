//! The group-commit writer: one thread that owns position assignment, and,
//! under `Durability::Sync`, a syncer thread behind it.
//!
//! Callers validate and encode their events on their own threads and queue a
//! [`Job`]. The writer takes whatever is waiting, up to the batch bounds,
//! checks expected versions and command ids against the store plus the jobs
//! already accepted (including batches written but not yet synced), assigns
//! versions and positions, and writes one WriteBatch.
//!
//! Under `Sync`, the batch is written with its WAL unsynced and handed to the
//! syncer, which syncs the WAL once for every batch waiting (`SyncWAL`), then
//! advances the committed head and answers the callers. While the syncer
//! waits for the disk, the writer already prepares and writes the next batch:
//! the two stages overlap. Under `Buffered` and `NoWal` the writer advances
//! the head and answers as soon as the write returns.
//!
//! **Architecture Invariant:** no caller is answered, and the head does not
//! move, before the batch holding its events is durable under the store's
//! durability. Readers only see positions up to the head.

use super::Shared;
use super::batch::{AppendKeyspaces, Pending, Tip, record_outcome, write_events};
use super::options::write_options;
use super::reads::stream_entries_backward;
use super::syncer::{BatchFailure, Decision, Reply, Written, complete, fail};
use crate::api::{AppendOutcome, AppendRequest, StreamWritten};
use crate::codec;
use crate::error::AppendError;
use crate::keyspaces::{CF_GLOBAL, CF_STREAMS};
use crate::lifecycle::DeleteRequest;
use crate::options::{Durability, StoreOptions};
use eventfold_domain::{CommandId, StreamId, Timestamp};
use foldhash::HashMap;
use foldhash::HashMapExt;
use rocksdb::{DB, WriteBatch};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvError, SyncSender, TryRecvError};

/// How many times the writer yields its thread on an empty queue before it
/// sleeps until an append arrives (`Writer::next_message`).
const WRITER_YIELDS_BEFORE_PARK: u32 = 1;

/// One queued request.
pub(crate) struct Job {
    pub work: Work,
    /// Encoded bytes of all records.
    pub bytes: usize,
    pub reply: Reply,
}

/// What a job asks for.
pub(crate) enum Work {
    Append {
        request: AppendRequest,
        /// Encoded records, per stream, per event, waiting to be sealed.
        records: Vec<Vec<Vec<u8>>>,
    },
    /// A deletion: always in a batch of its own, so that every event it
    /// erases is in the database when it is decided.
    Delete(DeleteRequest),
    /// An entry of another log, at the positions it has there
    /// (`rocks/replica.rs`), with its records encoded.
    Replicate {
        entry: crate::Replicated,
        records: Vec<Vec<u8>>,
    },
}

impl Job {
    fn event_count(&self) -> usize {
        match &self.work {
            Work::Append { request, .. } => request.event_count(),
            Work::Delete(_) => 1,
            Work::Replicate { records, .. } => records.len().max(1),
        }
    }
}

/// What the writer's queue carries.
pub(crate) enum Message {
    Append(Job),
    /// Run a retention pass now and say how many events it erased.
    Sweep(oneshot::Sender<Result<u64, AppendError>>),
    /// Finish what is queued before this, then stop.
    Stop,
}

pub(crate) struct Writer {
    pub(super) db: Arc<DB>,
    pub(super) shared: Arc<Shared>,
    pub(super) options: Arc<StoreOptions>,
    receiver: Receiver<Message>,
    /// To the syncer, under `Durability::Sync`.
    syncer: Option<SyncSender<Written>>,
    next_position: u64,
    last_recorded_at: Timestamp,
    /// The time of the last replicated entry written (`rocks/replica.rs`):
    /// replicated times never go back along the log.
    pub(super) replicated_at: Timestamp,
    /// Stream tips including batches written but not yet synced.
    versions: HashMap<StreamId, Tip>,
    /// Lifecycle work between batches: streams to trim to their
    /// category's max count, erasures under way, the max-age sweep.
    pub(super) upkeep: super::erasing::Upkeep,
}

impl Writer {
    pub(crate) fn new(
        db: Arc<DB>,
        shared: Arc<Shared>,
        options: Arc<StoreOptions>,
        receiver: Receiver<Message>,
        syncer: Option<SyncSender<Written>>,
        head: u64,
        last_recorded_at: Timestamp,
    ) -> Self {
        // Before the store is handed out: readers must skip what an
        // erasure under way has yet to erase from the first read on.
        let mut upkeep = super::erasing::Upkeep::default();
        upkeep.start(&db, &shared, &options);
        Self {
            db,
            shared,
            options,
            receiver,
            syncer,
            next_position: head + 1,
            last_recorded_at,
            replicated_at: last_recorded_at,
            versions: HashMap::new(),
            upkeep,
        }
    }

    pub(crate) fn run(mut self) {
        let mut stop = false;
        // A message taken while collecting a batch that must not join it.
        let mut carried: Option<Message> = None;
        while !stop {
            let first = match carried
                .take()
                .map(Ok)
                .unwrap_or_else(|| self.next_message())
            {
                Ok(Message::Append(job)) => job,
                Ok(Message::Sweep(reply)) => {
                    let _ = reply.send(self.sweep_now());
                    continue;
                }
                Ok(Message::Stop) | Err(_) => break,
            };
            let mut events = first.event_count();
            let mut bytes = first.bytes;
            let alone = matches!(first.work, Work::Delete(_));
            let mut jobs = vec![first];
            while !alone
                && jobs.len() < self.options.batch_appends_max
                && events < self.options.batch_events_max
                && bytes < self.options.batch_bytes_max
            {
                match self.receiver.try_recv() {
                    Ok(Message::Append(job))
                        if matches!(job.work, Work::Append { .. } | Work::Replicate { .. }) =>
                    {
                        events += job.event_count();
                        bytes += job.bytes;
                        jobs.push(job);
                    }
                    Ok(message @ (Message::Append(_) | Message::Sweep(_))) => {
                        carried = Some(message);
                        break;
                    }
                    Ok(Message::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit(jobs);
            self.after_batch();
        }
        if let Some(Message::Append(job)) = carried {
            let _ = job.reply.send(Err(AppendError::Closed));
        }
        // Anything still queued after Stop is answered: the store is closed.
        while let Ok(message) = self.receiver.try_recv() {
            match message {
                Message::Append(job) => {
                    let _ = job.reply.send(Err(AppendError::Closed));
                }
                Message::Sweep(reply) => {
                    let _ = reply.send(Err(AppendError::Closed));
                }
                Message::Stop => {}
            }
        }
        // Dropping `self.syncer` lets the syncer finish what it holds and stop.
    }

    /// The next message, yielding the processor up to
    /// [`WRITER_YIELDS_BEFORE_PARK`] times while the queue is empty before
    /// sleeping on it.
    ///
    /// Right after a batch the queue is often empty only because the
    /// threads that append are still answering it: they run on the same
    /// cores. A writer that sleeps at once makes each of their next appends
    /// pay a wake-up (a futex call and a context switch) and starts the next
    /// batch with one append; one yield lets them queue theirs first. In W2
    /// (buffered, 2 cores) it took 2-5% off the CPU time per command in four
    /// interleaved pairs of a million commands, and four yields did no
    /// better than one.
    fn next_message(&mut self) -> Result<Message, RecvError> {
        for _ in 0..WRITER_YIELDS_BEFORE_PARK {
            match self.receiver.try_recv() {
                Ok(message) => return Ok(message),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => std::thread::yield_now(),
            }
        }
        // Lifecycle upkeep waiting: do it while nothing else is asked.
        while let Some(wait) = self.upkeep.idle_wait() {
            match self.receiver.recv_timeout(wait) {
                Ok(message) => return Ok(message),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(RecvError),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => self.idle_upkeep(),
            }
        }
        self.receiver.recv()
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
        let mut pending_versions: HashMap<StreamId, Tip> = HashMap::new();
        let mut pending_commands: HashMap<CommandId, AppendOutcome> = HashMap::new();
        let mut position = self.next_position;
        let listening = self.shared.listener().is_some_and(|l| l.interested());
        let db = Arc::clone(&self.db);
        let keyspaces = match AppendKeyspaces::of(&db, &self.shared) {
            Ok(keyspaces) => keyspaces,
            Err(error) => {
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let mut written = Written {
            last_position: 0,
            appends: 0,
            event_count: 0,
            answers: Vec::with_capacity(jobs.len()),
            events: Vec::new(),
        };
        for job in jobs {
            let Job { work, reply, .. } = job;
            let mut pending = Pending {
                batch: &mut batch,
                keyspaces,
                versions: &mut pending_versions,
                commands: &mut pending_commands,
                position: &mut position,
                recorded_at,
                events: listening.then_some(&mut written.events),
            };
            let decided = match work {
                Work::Append { request, records } => self.decide(request, records, &mut pending),
                Work::Delete(request) => self.decide_deletion(request, &mut pending),
                Work::Replicate { entry, records } => {
                    self.decide_replicated(entry, records, &mut pending)
                }
            };
            let decision = match decided {
                Ok(decision) => decision,
                Err(error) => Decision::Done(Err(error)),
            };
            if let Decision::Write(outcome) = &decision {
                written.appends += 1;
                written.event_count += outcome.last_position - outcome.first_position + 1;
            }
            written.answers.push((reply, decision));
        }
        written.last_position = position - 1;
        if written.appends == 0 {
            // Only refusals and duplicates: nothing to write. Their answers
            // may rest on batches still being synced, so they queue behind.
            self.hand_on(written);
            return;
        }
        if let Err(failure) = self.write(batch) {
            fail(&self.shared, written, &failure);
            return;
        }
        self.next_position = position;
        self.last_recorded_at = recorded_at.max(self.replicated_at);
        if self.versions.len() + pending_versions.len() > self.options.version_cache_streams_max {
            self.versions.clear();
        }
        self.versions.extend(pending_versions);
        self.hand_on(written);
    }

    /// Passes a written batch to the syncer, or completes it at once when the
    /// durability needs no sync.
    fn hand_on(&mut self, written: Written) {
        match &self.syncer {
            Some(syncer) => {
                if let Err(returned) = syncer.send(written) {
                    // The syncer stopped: only after a failure it reported.
                    fail(&self.shared, returned.0, &BatchFailure::SyncerStopped);
                }
            }
            None => complete(&self.shared, vec![written]),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BatchFailure> {
        if self
            .options
            .faults
            .as_ref()
            .is_some_and(|f| f.should_fail())
        {
            return Err(BatchFailure::InjectedWrite);
        }
        let mut options = write_options(self.options.durability);
        if self.options.durability == Durability::Sync {
            // The syncer makes the WAL durable (see the module doc).
            options.set_sync(false);
        }
        self.db
            .write_opt(batch, &options)
            .map_err(BatchFailure::Engine)
    }

    /// The stream's tip including batches written but not yet synced.
    pub(super) fn current_tip(
        &mut self,
        stream: &StreamId,
        pending: &HashMap<StreamId, Tip>,
    ) -> Result<Tip, AppendError> {
        if let Some(tip) = pending.get(stream).or_else(|| self.versions.get(stream)) {
            return Ok(*tip);
        }
        let mut tip = last_indexed_tip(&self.db, &self.shared, stream)?;
        // A stream without index entries may have had them deleted, and a
        // tombstone's erasure may still be under way: its lifecycle record
        // says its version and whether it is tombstoned.
        if (tip.version == 0 || self.shared.erasing.first_version(stream).is_some())
            && let Some(meta) = super::erasing::read_meta(&self.db, &self.shared, stream)?
        {
            tip.version = tip.version.max(meta.version);
            tip.tombstoned = meta.tombstoned;
        }
        if tip.version > 0 {
            if self.versions.len() >= self.options.version_cache_streams_max {
                self.versions.clear();
            }
            self.versions.insert(stream.clone(), tip);
        }
        Ok(tip)
    }

    pub(super) fn applied_command(
        &self,
        id: CommandId,
        pending: &Pending<'_>,
    ) -> Result<Option<AppendOutcome>, AppendError> {
        if let Some(outcome) = pending.commands.get(&id) {
            let mut outcome = outcome.clone();
            outcome.deduplicated = true;
            return Ok(Some(outcome));
        }
        let key = codec::command_key(id);
        match self.db.get_pinned_cf(pending.keyspaces.commands, key) {
            Ok(Some(bytes)) => Ok(Some(codec::decode_outcome(&key, &bytes)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(AppendError::Io(e.into_string())),
        }
    }

    fn decide(
        &mut self,
        request: AppendRequest,
        records: Vec<Vec<Vec<u8>>>,
        pending: &mut Pending<'_>,
    ) -> Result<Decision, AppendError> {
        if let Some(id) = request.command_id
            && let Some(original) = self.applied_command(id, pending)?
        {
            return Ok(Decision::Done(Ok(original)));
        }
        let mut current = Vec::with_capacity(request.streams.len());
        for part in &request.streams {
            let tip = self.current_tip(&part.stream, pending.versions)?;
            if tip.tombstoned {
                return Err(AppendError::StreamDeleted {
                    stream: part.stream.clone(),
                });
            }
            let version = tip.version;
            if let Err(mismatch) = part.expected.check_with_last(version, tip.last_event) {
                return Err(AppendError::WrongExpectedVersion {
                    stream: part.stream.clone(),
                    expected: mismatch.expected,
                    actual: mismatch.actual,
                });
            }
            current.push(version);
        }
        // Nothing below can fail: a refused job adds nothing to the batch.
        let first_position = *pending.position;
        let mut written = Vec::with_capacity(request.streams.len());
        let command_id = request.command_id;
        for ((part, records), before) in request.streams.into_iter().zip(records).zip(current) {
            let version = write_events(
                pending,
                &part.stream,
                before,
                records,
                part.events,
                pending.recorded_at,
            );
            self.upkeep.appended(&self.options, &part.stream);
            written.push(StreamWritten {
                stream: part.stream,
                first_version: before + 1,
                last_version: version,
            });
        }
        let outcome = AppendOutcome {
            streams: written,
            first_position,
            last_position: *pending.position - 1,
            deduplicated: false,
        };
        if let Some(id) = command_id {
            record_outcome(pending, id, &outcome);
        }
        Ok(Decision::Write(outcome))
    }
}

/// The version and event id of the last event in the `streams` index of
/// `stream`, written or not yet synced (version 0 when the stream has none).
pub(crate) fn last_indexed_tip(
    db: &DB,
    shared: &Shared,
    stream: &StreamId,
) -> Result<Tip, AppendError> {
    let cf = shared.cf(db, CF_STREAMS)?;
    let (key, value) = match stream_entries_backward(db, cf, stream.as_str()).next() {
        None => {
            return Ok(Tip {
                version: 0,
                last_event: None,
                tombstoned: false,
            });
        }
        Some(Ok(entry)) => entry,
        Some(Err(e)) => return Err(AppendError::Io(e.into_string())),
    };
    let malformed = || {
        AppendError::Corrupt(crate::Corruption {
            keyspace: CF_STREAMS,
            key: key.to_vec(),
            kind: crate::CorruptionKind::MalformedKey,
        })
    };
    let (_, version) = codec::parse_stream_key(&key).ok_or_else(malformed)?;
    let position = codec::decode_stream_index(&key, &value)?;
    let global = shared.cf(db, CF_GLOBAL)?;
    let global_key = codec::global_key(position);
    let record = db
        .get_pinned_cf(global, global_key)
        .map_err(|e| AppendError::Io(e.into_string()))?
        .ok_or_else(|| AppendError::Corrupt(super::reads::missing_position(&key, position)))?;
    let event = codec::decode_event(CF_GLOBAL, &global_key, &record)?;
    Ok(Tip {
        version,
        last_event: Some(event.metadata.event_id),
        tombstoned: false,
    })
}
