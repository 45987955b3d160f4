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
use super::options::write_options;
use super::reads::stream_entries_backward;
use crate::api::{AppendOutcome, AppendRequest, StreamWritten};
use crate::codec;
use crate::error::AppendError;
use crate::keyspaces::{CF_GLOBAL, CF_IDEMPOTENCY, CF_STREAMS};
use crate::options::{Durability, StoreOptions};
use eventfold_domain::{CommandId, EventId, RecordedEvent, StreamId, Timestamp};
use foldhash::HashMap;
use foldhash::HashMapExt;
use rocksdb::{DB, WriteBatch};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvError, SyncSender, TryRecvError};

/// Most written batches waiting for the syncer; past it the writer waits.
pub(crate) const SYNC_QUEUE_BATCHES_MAX: usize = 64;

type Reply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

/// How many times the writer yields its thread on an empty queue before it
/// sleeps until an append arrives (`Writer::next_message`).
const WRITER_YIELDS_BEFORE_PARK: u32 = 1;

/// One queued append.
pub(crate) struct Job {
    pub request: AppendRequest,
    /// Encoded records, per stream, per event, waiting to be sealed.
    pub records: Vec<Vec<Vec<u8>>>,
    /// Encoded bytes of all records.
    pub bytes: usize,
    pub reply: Reply,
}

/// A stream's version and the id of its last event, as the writer knows them
/// (including batches written but not yet synced).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tip {
    pub version: u64,
    pub last_event: Option<EventId>,
}

/// What the writer's queue carries.
pub(crate) enum Message {
    Append(Job),
    /// Finish what is queued before this, then stop.
    Stop,
}

/// A batch that is written and waits to be made durable and answered.
pub(crate) struct Written {
    /// The last position the batch holds.
    last_position: u64,
    appends: u64,
    event_count: u64,
    answers: Vec<(Reply, Decision)>,
    /// The events written, for the commit listener (empty without one).
    events: Vec<RecordedEvent>,
}

/// How one job of a batch was decided.
enum Decision {
    Write(AppendOutcome),
    Done(Result<AppendOutcome, AppendError>),
}

pub(crate) struct Writer {
    db: Arc<DB>,
    shared: Arc<Shared>,
    options: Arc<StoreOptions>,
    receiver: Receiver<Message>,
    /// To the syncer, under `Durability::Sync`.
    syncer: Option<SyncSender<Written>>,
    next_position: u64,
    last_recorded_at: Timestamp,
    /// Stream tips including batches written but not yet synced.
    versions: HashMap<StreamId, Tip>,
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
        Self {
            db,
            shared,
            options,
            receiver,
            syncer,
            next_position: head + 1,
            last_recorded_at,
            versions: HashMap::new(),
        }
    }

    pub(crate) fn run(mut self) {
        let mut stop = false;
        while !stop {
            let first = match self.next_message() {
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
    fn next_message(&self) -> Result<Message, RecvError> {
        for _ in 0..WRITER_YIELDS_BEFORE_PARK {
            match self.receiver.try_recv() {
                Ok(message) => return Ok(message),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => std::thread::yield_now(),
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
        let mut written = Written {
            last_position: 0,
            appends: 0,
            event_count: 0,
            answers: Vec::with_capacity(jobs.len()),
            events: Vec::new(),
        };
        for job in jobs {
            let Job {
                request,
                records,
                reply,
                ..
            } = job;
            let mut pending = Pending {
                batch: &mut batch,
                versions: &mut pending_versions,
                commands: &mut pending_commands,
                position: &mut position,
                recorded_at,
                events: listening.then_some(&mut written.events),
            };
            let decision = match self.decide(request, records, &mut pending) {
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
        self.last_recorded_at = recorded_at;
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
    fn current_tip(
        &mut self,
        stream: &StreamId,
        pending: &HashMap<StreamId, Tip>,
    ) -> Result<Tip, AppendError> {
        if let Some(tip) = pending.get(stream).or_else(|| self.versions.get(stream)) {
            return Ok(*tip);
        }
        let tip = last_indexed_tip(&self.db, &self.shared, stream)?;
        if tip.version > 0 {
            if self.versions.len() >= self.options.version_cache_streams_max {
                self.versions.clear();
            }
            self.versions.insert(stream.clone(), tip);
        }
        Ok(tip)
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

    fn decide(
        &mut self,
        request: AppendRequest,
        records: Vec<Vec<Vec<u8>>>,
        pending: &mut Pending<'_>,
    ) -> Result<Decision, AppendError> {
        let db = Arc::clone(&self.db);
        let global = self.shared.cf(&db, CF_GLOBAL)?;
        let streams = self.shared.cf(&db, CF_STREAMS)?;
        let commands = self.shared.cf(&db, CF_IDEMPOTENCY)?;
        if let Some(id) = request.command_id
            && let Some(original) = self.applied_command(id, pending.commands)?
        {
            return Ok(Decision::Done(Ok(original)));
        }
        let mut current = Vec::with_capacity(request.streams.len());
        for part in &request.streams {
            let tip = self.current_tip(&part.stream, pending.versions)?;
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
            let mut version = before;
            let mut last_event = None;
            let mut index_keys = codec::StreamKeys::new(part.stream.as_str());
            for (mut record, event) in records.into_iter().zip(part.events) {
                version += 1;
                last_event = Some(event.metadata.event_id);
                let position = *pending.position;
                codec::seal_event(&mut record, position, version, pending.recorded_at);
                if let Some(events) = pending.events.as_deref_mut() {
                    events.push(RecordedEvent {
                        stream_id: part.stream.clone(),
                        version,
                        position,
                        recorded_at: pending.recorded_at,
                        event_type: event.event_type,
                        schema_version: event.schema_version,
                        payload: event.payload,
                        metadata: event.metadata,
                    });
                }
                pending
                    .batch
                    .put_cf(global, codec::global_key(position), &record);
                pending
                    .batch
                    .put_cf(streams, index_keys.at(version), codec::global_key(position));
                *pending.position += 1;
            }
            pending.versions.insert(
                part.stream.clone(),
                Tip {
                    version,
                    last_event,
                },
            );
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
            pending.batch.put_cf(
                commands,
                codec::command_key(id),
                codec::encode_outcome(&outcome),
            );
            pending.commands.insert(id, outcome.clone());
        }
        Ok(Decision::Write(outcome))
    }
}

/// What the jobs of one batch share while it is being built.
struct Pending<'a> {
    batch: &'a mut WriteBatch,
    versions: &'a mut HashMap<StreamId, Tip>,
    commands: &'a mut HashMap<CommandId, AppendOutcome>,
    position: &'a mut u64,
    recorded_at: Timestamp,
    /// Collects the events for the commit listener, when there is one.
    events: Option<&'a mut Vec<RecordedEvent>>,
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
    })
}

/// Makes batches durable and answers them, under `Durability::Sync`.
pub(crate) struct Syncer {
    pub db: Arc<DB>,
    pub shared: Arc<Shared>,
    pub options: Arc<StoreOptions>,
    pub receiver: Receiver<Written>,
}

impl Syncer {
    pub(crate) fn run(self) {
        while let Ok(first) = self.receiver.recv() {
            let mut batches = vec![first];
            while batches.len() < SYNC_QUEUE_BATCHES_MAX {
                match self.receiver.try_recv() {
                    Ok(written) => batches.push(written),
                    Err(_) => break,
                }
            }
            if self.shared.poisoned.load(Ordering::SeqCst) {
                for written in batches {
                    fail(&self.shared, written, &BatchFailure::EarlierFailed);
                }
                continue;
            }
            let writes = batches.iter().any(|w| w.appends > 0);
            // One sync covers every batch written before it started.
            let synced = if !writes {
                Ok(())
            } else if self
                .options
                .faults
                .as_ref()
                .is_some_and(|f| f.should_fail_sync())
            {
                Err(BatchFailure::InjectedSync)
            } else {
                self.db.flush_wal(true).map_err(BatchFailure::Engine)
            };
            match synced {
                Ok(()) => {
                    if writes {
                        self.shared.stats_syncs.fetch_add(1, Ordering::Relaxed);
                    }
                    complete(&self.shared, batches)
                }
                Err(failure) => {
                    for written in batches {
                        fail(&self.shared, written, &failure);
                    }
                }
            }
        }
    }
}

/// Advances the head past durable batches (in order), then answers them.
fn complete(shared: &Shared, batches: Vec<Written>) {
    let mut head = None;
    for written in &batches {
        if written.appends > 0 {
            head = Some(written.last_position);
        }
        shared
            .stats_appends
            .fetch_add(written.appends, Ordering::Relaxed);
        shared
            .stats_events
            .fetch_add(written.event_count, Ordering::Relaxed);
        if written.appends > 0 {
            shared.stats_batches.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(head) = head {
        // Invariant 1: the head moves only after the batch is durable.
        shared.head.store(head, Ordering::Release);
    }
    let listener = shared.listener();
    let mut answers = Vec::with_capacity(batches.len());
    for written in batches {
        if let Some(listener) = &listener
            && !written.events.is_empty()
        {
            listener.committed(Arc::from(written.events));
        }
        answers.push(written.answers);
    }
    for answers in answers {
        for (reply, decision) in answers {
            let answer = match decision {
                Decision::Write(outcome) => Ok(outcome),
                Decision::Done(result) => result,
            };
            let _ = reply.send(answer);
        }
    }
}

/// Why a batch did not become durable.
#[derive(Debug, thiserror::Error)]
enum BatchFailure {
    /// RocksDB failed the write or the WAL sync.
    #[error("{}", .0.as_ref())]
    Engine(rocksdb::Error),
    /// A write failure injected by a test's `FaultInjector`.
    #[error("injected write failure")]
    InjectedWrite,
    /// A sync failure injected by a test's `FaultInjector`.
    #[error("injected sync failure")]
    InjectedSync,
    /// The syncer thread is gone.
    #[error("the syncer stopped")]
    SyncerStopped,
    /// The store was poisoned by an earlier batch.
    #[error("an earlier write or sync failed")]
    EarlierFailed,
}

/// Poisons the store and answers a batch whose write or sync failed.
fn fail(shared: &Shared, written: Written, failure: &BatchFailure) {
    if !shared.poisoned.swap(true, Ordering::SeqCst) {
        tracing::error!(error = %failure, "event store write failed; the store is poisoned");
    }
    let message = failure.to_string();
    for (reply, decision) in written.answers {
        let answer = match decision {
            // Whether it reached the disk is unknown.
            Decision::Write(_) => Err(AppendError::Io(message.clone())),
            // Refusals decided against batches that did not land may be
            // stale; the store cannot write anyway.
            Decision::Done(_) => Err(AppendError::Poisoned),
        };
        let _ = reply.send(answer);
    }
}
