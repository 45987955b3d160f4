//! `ClusterStore`: the [`EventStore`] a cluster node's runtime runs on.
//! Appends go to the log (JetStream) under the node's claim on the
//! stream's partition; everything read comes from the node's replica of
//! the log (a local RocksDB that also keeps snapshots, checkpoints and read
//! models), which the follower fills.
//!
//! **One append per stream at a time.** An append to a stream waits until
//! the one before it is answered: its expected version is checked against
//! the replica, which by then holds the one before. The log's check is the
//! partition's claim marker (only the claim's holder writes the partition),
//! so the holder's own order is the stream's. An append whose answer never
//! came is sent again with the same message ids (JetStream drops it if it
//! had landed); after [`PUBLISH_ATTEMPTS_MAX`](crate::log::PUBLISH_ATTEMPTS_MAX) unanswered attempts the
//! partition is given up, and the next claim's marker fences whatever may
//! still land.

use crate::claims::Claims;
use crate::follower::Progress;
use crate::log::{AfterFailure, Log, LogError, REPLICA_WAIT_MAX, WriteAttempts};
use crate::models::ModelWriter;
use crate::partition::partition_of;
use crate::singletons::Singletons;
use eventfold_runtime::domain::{StreamId, Timestamp};
use eventfold_runtime::storage::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Appends queued or under way on one node; more are refused
/// (`Overloaded`).
pub const PUBLISH_QUEUE_MAX: usize = 16_384;

struct Job {
    stream: StreamId,
    partition: u32,
    part: StreamAppend,
    command_id: Option<eventfold_runtime::domain::CommandId>,
    answer: AppendAnswer,
}

struct Shared {
    replica: RocksStore,
    log: Log,
    progress: Progress,
    claims: Arc<Claims>,
    partitions: u32,
    queued: AtomicUsize,
    /// Streams whose last append landed in the log but was not yet seen
    /// applied by the replica, with its sequence: the next append of the
    /// stream waits for it before it checks its version, so that an
    /// append answered with an error after it landed (the replica stopped,
    /// or was slow) is never decided over again. An entry goes once the
    /// replica applied it; only a replica that stopped keeps them, and its
    /// node gives its partitions up.
    landed: std::sync::Mutex<HashMap<StreamId, u64>>,
}

/// The store of a cluster node.
#[derive(Clone)]
pub struct ClusterStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    models: ModelWriter,
}

impl ClusterStore {
    /// A store writing to `log` under `claims` (and `singletons` for
    /// process managers' state), reading `replica` (which `progress`'s
    /// follower fills); its appends run on `runtime`.
    pub fn new(
        replica: RocksStore,
        log: Log,
        progress: Progress,
        (claims, singletons): (Arc<Claims>, Arc<Singletons>),
        partitions: u32,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let models = ModelWriter {
            log: log.clone(),
            progress: progress.clone(),
            singletons,
            io: runtime.clone(),
        };
        let shared = Arc::new(Shared {
            replica,
            log,
            progress,
            claims,
            partitions,
            queued: AtomicUsize::new(0),
            landed: std::sync::Mutex::new(HashMap::new()),
        });
        let (jobs, receiver) = mpsc::channel(PUBLISH_QUEUE_MAX);
        runtime.spawn(dispatch(receiver, Arc::clone(&shared)));
        Self {
            shared,
            jobs,
            models,
        }
    }

    /// The replica: the node's local copy of the log, with its snapshots,
    /// checkpoints and read models.
    pub fn replica(&self) -> &RocksStore {
        &self.shared.replica
    }

    fn unsupported(operation: &'static str) -> PendingAppend {
        PendingAppend::ready(Err(AppendError::Unsupported { operation }))
    }
}

fn unavailable(stream: &StreamId, reason: Unavailability) -> AppendError {
    AppendError::Unavailable {
        stream: stream.clone(),
        reason,
    }
}

/// Runs each stream's appends one at a time, in the order they came.
async fn dispatch(mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut waiting: HashMap<StreamId, VecDeque<Job>> = HashMap::new();
    let (done, mut finished) = mpsc::channel::<StreamId>(PUBLISH_QUEUE_MAX);
    let start = |job: Job| {
        let shared = Arc::clone(&shared);
        let done = done.clone();
        tokio::spawn(async move {
            let stream = job.stream.clone();
            let result = append(&shared, &job).await;
            job.answer.send(result);
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = done.send(stream).await;
        });
    };
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                match waiting.get_mut(&job.stream) {
                    Some(queue) => queue.push_back(job),
                    None => {
                        waiting.insert(job.stream.clone(), VecDeque::new());
                        start(job);
                    }
                }
            }
            Some(stream) = finished.recv() => {
                let next = waiting.get_mut(&stream).and_then(VecDeque::pop_front);
                match next {
                    Some(job) => start(job),
                    None => {
                        waiting.remove(&stream);
                    }
                }
            }
        }
    }
}

/// One append: checked against the replica, sent under the claim,
/// answered once the replica applied it.
async fn append(shared: &Shared, job: &Job) -> Result<AppendOutcome, AppendError> {
    let stream = &job.stream;
    let Some(in_flight) = shared.claims.enter(job.partition) else {
        return Err(unavailable(
            stream,
            Unavailability::NotOwner {
                partition: job.partition,
            },
        ));
    };
    let claim = in_flight.claim;
    let unapplied = shared
        .landed
        .lock()
        .ok()
        .and_then(|landed| landed.get(stream).copied());
    if let Some(sequence) = unapplied {
        match tokio::time::timeout(REPLICA_WAIT_MAX, shared.progress.wait_for(sequence)).await {
            Ok(Ok(())) => forget_landed(shared, stream, sequence),
            Ok(Err(_)) | Err(_) => return Err(unavailable(stream, Unavailability::Stopping)),
        }
    }
    // The replica's reads block this runtime's thread for as long as
    // RocksDB takes (microseconds from its memtables and cache): this
    // runtime serves only the log's traffic (appends, the follower, the
    // ownership loop), never an actor's messages.
    let replica = &shared.replica;
    let read = |e: ReadError| AppendError::Unavailable {
        stream: stream.clone(),
        reason: Unavailability::Refused(e.to_string()),
    };
    if let Some(id) = job.command_id
        && let Some(mut original) = replica.command_outcome(id).map_err(read)?
    {
        original.deduplicated = true;
        return Ok(original);
    }
    let last = replica
        .read_stream(stream, u64::MAX, Direction::Backward, 1)
        .map_err(read)?;
    let (version, last_event) = last
        .first()
        .map_or((0, None), |e| (e.version, Some(e.metadata.event_id)));
    if let Err(mismatch) = job.part.expected.check_with_last(version, last_event) {
        return Err(AppendError::WrongExpectedVersion {
            stream: stream.clone(),
            expected: mismatch.expected,
            actual: mismatch.actual,
        });
    }
    let events = &job.part.events;
    let count = events.len() as u64;
    // A write no server took (an election) wrote nothing and is sent
    // again while the log elects, without giving the claim up unless an
    // earlier attempt may have landed.
    let mut attempts = WriteAttempts::new();
    let landed = loop {
        match shared
            .log
            .append(
                job.partition,
                claim.fence,
                stream,
                version + 1,
                events,
                job.command_id,
            )
            .await
        {
            Ok(landed) => break landed,
            // Sent before, by an attempt whose answer was lost: it is in
            // the log; the replica says where once it has caught up.
            Err(LogError::AlreadyLanded { .. }) => {
                return landed_before(shared, job, version).await;
            }
            Err(LogError::WrongLastSequence { .. }) => {
                shared.claims.fenced(job.partition, claim.token);
                return Err(unavailable(
                    stream,
                    Unavailability::Fenced {
                        partition: job.partition,
                        token: claim.token,
                    },
                ));
            }
            Err(error) => {
                let reason = error.to_string();
                let unavailability = match attempts.after(&error).await {
                    AfterFailure::SendAgain => continue,
                    AfterFailure::Leaderless if !attempts.may_have_landed() => {
                        Unavailability::Leaderless(reason)
                    }
                    AfterFailure::Leaderless => {
                        shared.claims.fenced(job.partition, claim.token);
                        Unavailability::Leaderless(reason)
                    }
                    AfterFailure::NoAnswer => {
                        shared.claims.fenced(job.partition, claim.token);
                        Unavailability::NoAnswer(reason)
                    }
                    AfterFailure::Refused => Unavailability::Refused(reason),
                };
                return Err(unavailable(stream, unavailability));
            }
        }
    };
    drop(in_flight);
    if let Ok(mut pending) = shared.landed.lock() {
        pending.insert(stream.clone(), landed.last_sequence);
    }
    match tokio::time::timeout(
        REPLICA_WAIT_MAX,
        shared.progress.wait_for(landed.last_sequence),
    )
    .await
    {
        Ok(Ok(())) => forget_landed(shared, stream, landed.last_sequence),
        Ok(Err(_)) | Err(_) => return Err(unavailable(stream, Unavailability::Stopping)),
    }
    if landed.duplicate
        && let Some(id) = job.command_id
        && let Some(mut original) = replica.command_outcome(id).map_err(read)?
    {
        original.deduplicated = true;
        return Ok(original);
    }
    Ok(AppendOutcome {
        streams: vec![StreamWritten {
            stream: stream.clone(),
            first_version: version + 1,
            last_version: version + count,
        }],
        first_position: landed.last_sequence + 1 - count,
        last_position: landed.last_sequence,
        deduplicated: false,
    })
}

/// Forgets that `stream`'s append at `sequence` waits to be applied.
fn forget_landed(shared: &Shared, stream: &StreamId, sequence: u64) {
    if let Ok(mut landed) = shared.landed.lock()
        && landed.get(stream).is_some_and(|s| *s <= sequence)
    {
        landed.remove(stream);
    }
}

/// The outcome of an append the log already holds (an atomic batch sent
/// again): read from the replica once it has applied the log's end.
async fn landed_before(
    shared: &Shared,
    job: &Job,
    version: u64,
) -> Result<AppendOutcome, AppendError> {
    let stream = &job.stream;
    let stopping = || unavailable(stream, Unavailability::Stopping);
    let no_answer = |e: LogError| unavailable(stream, Unavailability::NoAnswer(e.to_string()));
    let end = shared.log.last_sequence().await.map_err(no_answer)?;
    match tokio::time::timeout(REPLICA_WAIT_MAX, shared.progress.wait_for(end)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => return Err(stopping()),
    }
    let read = |e: ReadError| unavailable(stream, Unavailability::Refused(e.to_string()));
    if let Some(id) = job.command_id
        && let Some(mut original) = shared.replica.command_outcome(id).map_err(read)?
    {
        original.deduplicated = true;
        return Ok(original);
    }
    let events = &job.part.events;
    let found = shared
        .replica
        .read_stream(stream, version + 1, Direction::Forward, events.len())
        .map_err(read)?;
    let same = found.len() == events.len()
        && found
            .iter()
            .zip(events)
            .all(|(f, e)| f.metadata.event_id == e.metadata.event_id);
    match (same, found.first(), found.last()) {
        (true, Some(first), Some(last)) => Ok(AppendOutcome {
            streams: vec![StreamWritten {
                stream: stream.clone(),
                first_version: first.version,
                last_version: last.version,
            }],
            first_position: first.position,
            last_position: last.position,
            deduplicated: false,
        }),
        _ => Err(unavailable(
            stream,
            Unavailability::Refused(
                "the log holds this append's message ids, the stream other events".into(),
            ),
        )),
    }
}

impl EventStore for ClusterStore {
    fn submit(&self, request: AppendRequest) -> PendingAppend {
        if request.streams.len() > 1 {
            return Self::unsupported("an append to several streams at once");
        }
        if let Err(error) = check_append(&request, self.shared.replica.options()) {
            return PendingAppend::ready(Err(error));
        }
        let command_id = request.command_id;
        let Some(part) = request.streams.into_iter().next() else {
            return PendingAppend::ready(Err(AppendError::NoStreams));
        };
        let stream = part.stream.clone();
        let partition = partition_of(stream.as_str(), self.shared.partitions);
        if self.shared.claims.active(partition).is_none() {
            return PendingAppend::ready(Err(unavailable(
                &stream,
                Unavailability::NotOwner { partition },
            )));
        }
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= PUBLISH_QUEUE_MAX {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return PendingAppend::ready(Err(AppendError::Overloaded {
                limit: PUBLISH_QUEUE_MAX,
            }));
        }
        let (answer, pending) = PendingAppend::answered_later();
        let job = Job {
            stream,
            partition,
            part,
            command_id,
            answer,
        };
        if let Err(error) = self.jobs.try_send(job) {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            let job = match error {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            job.answer
                .send(Err(unavailable(&job.stream, Unavailability::Stopping)));
        }
        pending
    }

    fn submit_deletion(&self, _request: DeleteRequest) -> PendingAppend {
        Self::unsupported("deleting a stream in a cluster")
    }

    fn stream_info(&self, stream: &StreamId) -> Result<StreamInfo, ReadError> {
        self.shared.replica.stream_info(stream)
    }

    fn deletion_record(
        &self,
        stream: &StreamId,
        cache_only: bool,
    ) -> Result<Cached<Option<DeletionRecord>>, ReadError> {
        self.shared.replica.deletion_record(stream, cache_only)
    }

    fn subject_key(&self, _subject: &str) -> Result<Option<SubjectKey>, ReadError> {
        // No keys in a cluster: a key kept on one node could not open
        // another node's copy. `create_subject_key` refuses.
        Ok(None)
    }

    fn create_subject_key(
        &self,
        _subject: &str,
        _key: [u8; SUBJECT_KEY_BYTES],
    ) -> Result<SubjectKey, WriteError> {
        Err(WriteError::Unsupported {
            operation: "personal data (crypto-shredding) in a cluster",
        })
    }

    fn forget_subject(&self, _subject: &str) -> Result<bool, WriteError> {
        Err(WriteError::Unsupported {
            operation: "personal data (crypto-shredding) in a cluster",
        })
    }

    fn enforce_retention(&self) -> Result<u64, AppendError> {
        Err(AppendError::Unsupported {
            operation: "retention in a cluster",
        })
    }

    fn head(&self) -> u64 {
        self.shared.replica.head()
    }

    fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadError> {
        self.shared.replica.stream_version(stream)
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<eventfold_runtime::domain::RecordedEvent>, ReadError> {
        self.shared
            .replica
            .read_stream(stream, from, direction, max_count)
    }

    fn read_stream_until(
        &self,
        stream: &StreamId,
        until: Timestamp,
        max_count: usize,
    ) -> Result<Vec<eventfold_runtime::domain::RecordedEvent>, ReadError> {
        self.shared
            .replica
            .read_stream_until(stream, until, max_count)
    }

    fn read_all(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<GlobalSlice, ReadError> {
        self.shared.replica.read_all(from, max_count, filter)
    }

    fn read_all_stored(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
        room: Vec<u8>,
    ) -> Result<StoredSlice, ReadError> {
        self.shared
            .replica
            .read_all_stored(from, max_count, filter, room)
    }

    fn save_snapshot(&self, stream: &StreamId, snapshot: &Snapshot) -> Result<(), WriteError> {
        self.shared.replica.save_snapshot(stream, snapshot)
    }

    fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, ReadError> {
        self.shared.replica.load_snapshot(stream)
    }

    fn read_stream_cached(
        &self,
        stream: &StreamId,
        from: u64,
        max_count: usize,
    ) -> Result<Cached<Vec<eventfold_runtime::domain::RecordedEvent>>, ReadError> {
        self.shared
            .replica
            .read_stream_cached(stream, from, max_count)
    }

    fn load_snapshot_cached(
        &self,
        stream: &StreamId,
    ) -> Result<Cached<Option<Snapshot>>, ReadError> {
        self.shared.replica.load_snapshot_cached(stream)
    }

    fn checkpoint(&self, name: &str) -> Result<Option<u64>, ReadError> {
        self.shared.replica.checkpoint(name)
    }

    fn read_model_get(&self, model: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.shared.replica.read_model_get(model, key)
    }

    fn read_model_scan(
        &self,
        model: &str,
        prefix: &[u8],
        max_count: usize,
    ) -> Result<Vec<ReadModelEntry>, ReadError> {
        self.shared
            .replica
            .read_model_scan(model, prefix, max_count)
    }

    fn commit_read_model(&self, batch: ReadModelBatch) -> Result<(), WriteError> {
        match self.models.owner_of(&batch)? {
            Some((name, fence)) => self.models.commit(&name, fence, batch),
            None => self.shared.replica.commit_read_model(batch),
        }
    }

    fn verify(&self) -> Result<VerifyReport, ReadError> {
        self.shared.replica.verify()
    }

    fn writer_stats(&self) -> WriterStats {
        self.shared.replica.writer_stats()
    }

    fn command_outcome(
        &self,
        id: eventfold_runtime::domain::CommandId,
    ) -> Result<Option<AppendOutcome>, ReadError> {
        self.shared.replica.command_outcome(id)
    }

    fn command_outcome_cached(
        &self,
        id: eventfold_runtime::domain::CommandId,
    ) -> Result<Cached<Option<AppendOutcome>>, ReadError> {
        self.shared.replica.command_outcome_cached(id)
    }

    fn set_commit_listener(&self, listener: Arc<dyn CommitListener>) {
        self.shared.replica.set_commit_listener(listener);
    }
}
