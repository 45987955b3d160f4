//! The in-memory backend: the same contract as RocksDB, for fast tests.
//!
//! Appends are applied under one lock, so the "writer" is whoever holds it;
//! durability settings have no meaning here. [`MemoryStore::reopen`] gives a
//! new handle on the same data, the way reopening a RocksDB directory would.

use crate::api::*;
use crate::error::{AppendError, ReadError, WriteError};
use crate::lifecycle::{DeleteRequest, DeletionRecord, StreamInfo};
use crate::options::StoreOptions;
use crate::validate;
use eventfold_domain::{CommandId, RecordedEvent, StreamId, Timestamp};
use std::collections::{BTreeMap, HashMap, HashSet};

mod hold;
mod lifecycle;
mod verify;

use hold::Hold;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    /// The global log; index = position - 1.
    log: Vec<RecordedEvent>,
    /// Per stream, the positions of its events; index = version - 1.
    streams: HashMap<StreamId, Vec<u64>>,
    commands: HashMap<CommandId, AppendOutcome>,
    snapshots: HashMap<StreamId, Snapshot>,
    checkpoints: HashMap<String, u64>,
    read_models: BTreeMap<(String, Vec<u8>), Vec<u8>>,
    last_recorded_at: Timestamp,
    stats: WriterStats,
    /// Streams that had a deletion.
    meta: HashMap<StreamId, lifecycle::Meta>,
    /// Positions of erased events: readers skip them.
    erased: HashSet<u64>,
    /// Per category with a max age: how far into `log` its sweep has gone.
    age_cursors: HashMap<String, usize>,
    /// Data subjects' keys.
    subjects: HashMap<String, crate::SubjectKey>,
}

/// An event store held in memory.
///
/// ```
/// use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
/// use eventfold_storage::{EventStore, MemoryStore};
///
/// let store = MemoryStore::new();
/// let stream = StreamId::new("account-1")?;
/// let event = NewEvent::new("Opened", 1, vec![], Metadata::new());
/// let outcome = store.append(&stream, ExpectedVersion::NoStream, vec![event])?;
/// assert_eq!((outcome.last_version(), outcome.last_position), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    listener: Arc<std::sync::RwLock<Option<Arc<dyn CommitListener>>>>,
    poisoned: Arc<AtomicBool>,
    options: Arc<StoreOptions>,
    hold: Arc<Mutex<Hold>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with default options.
    pub fn new() -> Self {
        Self::with_options(StoreOptions::default())
    }

    /// An empty store with these options (limits and fault injection apply).
    pub fn with_options(options: StoreOptions) -> Self {
        Self {
            state: Arc::default(),
            listener: Arc::default(),
            poisoned: Arc::default(),
            options: Arc::new(options),
            hold: Arc::default(),
        }
    }

    /// A new handle on the same data, as if the store had been closed and
    /// opened again: a poisoned store accepts writes again.
    pub fn reopen(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            listener: Arc::default(),
            poisoned: Arc::default(),
            options: Arc::clone(&self.options),
            hold: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed:
        // every mutation below is prepared first and applied without fallible
        // steps, so a poisoned mutex is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Consumes a pending injected fault, poisoning the store.
    fn inject_fault(&self) -> bool {
        let fail = self
            .options
            .faults
            .as_ref()
            .is_some_and(|f| f.should_fail());
        if fail {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        fail
    }

    fn append_now(&self, request: AppendRequest) -> Result<AppendOutcome, AppendError> {
        validate::append_request(&request, &self.options)?;
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(AppendError::Poisoned);
        }
        let mut state = self.lock();
        if let Some(id) = request.command_id
            && let Some(original) = state.commands.get(&id)
        {
            let mut outcome = original.clone();
            outcome.deduplicated = true;
            return Ok(outcome);
        }
        for part in &request.streams {
            if state.meta.get(&part.stream).is_some_and(|m| m.tombstoned) {
                return Err(AppendError::StreamDeleted {
                    stream: part.stream.clone(),
                });
            }
            let positions = state.streams.get(&part.stream);
            let actual = positions.map_or(0, |v| v.len() as u64);
            let last_event = positions
                .and_then(|v| v.last())
                .map(|p| state.log[(p - 1) as usize].metadata.event_id);
            if let Err(mismatch) = part.expected.check_with_last(actual, last_event) {
                return Err(AppendError::WrongExpectedVersion {
                    stream: part.stream.clone(),
                    expected: mismatch.expected,
                    actual: mismatch.actual,
                });
            }
        }
        if self.inject_fault() {
            return Err(AppendError::Io("injected write failure".into()));
        }
        let recorded_at = Timestamp::now().max(state.last_recorded_at);
        state.last_recorded_at = recorded_at;
        let first_position = state.log.len() as u64 + 1;
        let mut written = Vec::with_capacity(request.streams.len());
        for part in request.streams {
            let first_version = state
                .streams
                .get(&part.stream)
                .map_or(0, |v| v.len() as u64)
                + 1;
            let count = part.events.len() as u64;
            for event in part.events {
                state.push(&part.stream, event, recorded_at);
            }
            state.keep_max_count(&self.options, &part.stream);
            written.push(StreamWritten {
                stream: part.stream,
                first_version,
                last_version: first_version + count - 1,
            });
        }
        state.sweep_max_age(&self.options, recorded_at);
        let outcome = AppendOutcome {
            streams: written,
            first_position,
            last_position: state.log.len() as u64,
            deduplicated: false,
        };
        if let Some(id) = request.command_id {
            state.commands.insert(id, outcome.clone());
        }
        state.stats.batches += 1;
        state.stats.appends += 1;
        state.stats.events += outcome.last_position - outcome.first_position + 1;
        self.notify(&state, outcome.first_position);
        Ok(outcome)
    }

    /// Tells the listener of the events from `first_position` on; under the
    /// lock, so that listeners see batches in position order.
    fn notify(&self, state: &State, first_position: u64) {
        if let Some(listener) = self
            .listener
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && listener.interested()
        {
            let first = first_position.saturating_sub(1) as usize;
            let events: Vec<RecordedEvent> = state.log[first..]
                .iter()
                .filter(|e| !state.erased.contains(&e.position))
                .cloned()
                .collect();
            listener.committed(Arc::from(events));
        }
    }

    fn check_writable(&self) -> Result<(), WriteError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(WriteError::Poisoned);
        }
        if self.inject_fault() {
            return Err(WriteError::Io("injected write failure".into()));
        }
        Ok(())
    }
}

impl EventStore for MemoryStore {
    fn submit(&self, request: AppendRequest) -> PendingAppend {
        let mut hold = self.lock_hold();
        if !hold.on {
            drop(hold);
            return PendingAppend::ready(self.append_now(request));
        }
        if let Err(error) = validate::append_request(&request, &self.options) {
            return PendingAppend::ready(Err(error));
        }
        if hold.queue.len() >= self.options.queue_appends_max {
            return PendingAppend::ready(Err(AppendError::Overloaded {
                limit: self.options.queue_appends_max,
            }));
        }
        let (reply, receiver) = oneshot::channel();
        hold.queue.push_back((request, reply));
        PendingAppend::waiting(receiver)
    }

    fn submit_deletion(&self, request: DeleteRequest) -> PendingAppend {
        PendingAppend::ready(self.delete_now(request))
    }

    fn stream_info(&self, stream: &StreamId) -> Result<StreamInfo, ReadError> {
        Ok(self.lock().info(stream))
    }

    /// Always answered: everything is in memory.
    /// Always answered: everything is in memory.
    fn deletion_record(
        &self,
        stream: &StreamId,
        _: bool,
    ) -> Result<Cached<Option<DeletionRecord>>, ReadError> {
        let state = self.lock();
        let info = state.info(stream);
        Ok(Cached::Ready(state.meta.get(stream).map(|meta| {
            DeletionRecord {
                first_version: info.first_version,
                version: info.version,
                deleted_version: meta.deleted_version,
                tombstoned: meta.tombstoned,
            }
        })))
    }

    fn subject_key(&self, subject: &str) -> Result<Option<crate::SubjectKey>, ReadError> {
        crate::subjects::check(subject)?;
        Ok(self.lock().subjects.get(subject).copied())
    }

    fn create_subject_key(
        &self,
        subject: &str,
        key: [u8; crate::SUBJECT_KEY_BYTES],
    ) -> Result<crate::SubjectKey, WriteError> {
        crate::subjects::check(subject)?;
        self.check_writable()?;
        let mut state = self.lock();
        Ok(*state
            .subjects
            .entry(subject.to_owned())
            .or_insert(crate::SubjectKey::Active(key)))
    }

    fn forget_subject(&self, subject: &str) -> Result<bool, WriteError> {
        crate::subjects::check(subject)?;
        self.check_writable()?;
        let mut state = self.lock();
        Ok(state
            .subjects
            .insert(subject.to_owned(), crate::SubjectKey::Forgotten)
            .is_some())
    }

    fn enforce_retention(&self) -> Result<u64, AppendError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(AppendError::Poisoned);
        }
        let mut state = self.lock();
        let now = Timestamp::now();
        Ok(state.sweep_max_age(&self.options, now))
    }

    fn head(&self) -> u64 {
        self.lock().log.len() as u64
    }

    fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadError> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .map_or(0, |v| v.len() as u64))
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let state = self.lock();
        let Some(positions) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let first = state.info(stream).first_version;
        let len = positions.len() as u64;
        let selected: Vec<u64> = match direction {
            Direction::Forward => {
                let start = from.max(first);
                if start > len {
                    return Ok(Vec::new());
                }
                positions[(start - 1) as usize..]
                    .iter()
                    .take(max_count)
                    .copied()
                    .collect()
            }
            Direction::Backward => {
                if from == 0 {
                    return Ok(Vec::new());
                }
                let start = from.min(len);
                if start < first {
                    return Ok(Vec::new());
                }
                positions[(first - 1) as usize..start as usize]
                    .iter()
                    .rev()
                    .take(max_count)
                    .copied()
                    .collect()
            }
        };
        Ok(selected
            .into_iter()
            .map(|p| state.log[(p - 1) as usize].clone())
            .collect())
    }

    fn read_all(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<GlobalSlice, ReadError> {
        let state = self.lock();
        let head = state.log.len() as u64;
        let mut next_position = from.max(1);
        let mut events = Vec::new();
        let mut examined = 0;
        while next_position <= head
            && events.len() < max_count
            && examined < crate::READ_ALL_SCAN_EVENTS_MAX
        {
            examined += 1;
            let event = &state.log[(next_position - 1) as usize];
            if !state.erased.contains(&next_position) && filter.matches(event) {
                events.push(event.clone());
            }
            next_position += 1;
        }
        Ok(GlobalSlice {
            events,
            next_position,
            head,
        })
    }

    fn save_snapshot(&self, stream: &StreamId, snapshot: &Snapshot) -> Result<(), WriteError> {
        if snapshot.state.len() > self.options.payload_bytes_max {
            return Err(WriteError::ValueTooLarge {
                bytes: snapshot.state.len(),
                limit: self.options.payload_bytes_max,
            });
        }
        self.check_writable()?;
        self.lock()
            .snapshots
            .insert(stream.clone(), snapshot.clone());
        Ok(())
    }

    fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, ReadError> {
        Ok(self.lock().snapshots.get(stream).cloned())
    }

    /// Always answered: everything is in memory.
    fn read_stream_cached(
        &self,
        stream: &StreamId,
        from: u64,
        max_count: usize,
    ) -> Result<Cached<Vec<RecordedEvent>>, ReadError> {
        self.read_stream(stream, from, Direction::Forward, max_count)
            .map(Cached::Ready)
    }

    /// Always answered: everything is in memory.
    fn load_snapshot_cached(
        &self,
        stream: &StreamId,
    ) -> Result<Cached<Option<Snapshot>>, ReadError> {
        self.load_snapshot(stream).map(Cached::Ready)
    }

    fn checkpoint(&self, name: &str) -> Result<Option<u64>, ReadError> {
        validate::name(name)?;
        Ok(self.lock().checkpoints.get(name).copied())
    }

    fn read_model_get(&self, model: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        validate::name(model)?;
        Ok(self
            .lock()
            .read_models
            .get(&(model.to_owned(), key.to_vec()))
            .cloned())
    }

    fn read_model_scan(
        &self,
        model: &str,
        prefix: &[u8],
        max_count: usize,
    ) -> Result<Vec<ReadModelEntry>, ReadError> {
        validate::name(model)?;
        let state = self.lock();
        Ok(state
            .read_models
            .range((model.to_owned(), prefix.to_vec())..)
            .take_while(|((m, k), _)| m == model && k.starts_with(prefix))
            .take(max_count)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit_read_model(&self, batch: ReadModelBatch) -> Result<(), WriteError> {
        validate::read_model_batch(&batch, &self.options)?;
        self.check_writable()?;
        let mut state = self.lock();
        for (model, op) in batch.ops {
            match op {
                ReadModelOp::Put { key, value } => {
                    state.read_models.insert((model, key), value);
                }
                ReadModelOp::Delete { key } => {
                    state.read_models.remove(&(model, key));
                }
            }
        }
        if let Some((name, position)) = batch.checkpoint {
            state.checkpoints.insert(name, position);
        }
        Ok(())
    }

    fn verify(&self) -> Result<VerifyReport, ReadError> {
        Ok(self.lock().verify())
    }

    fn writer_stats(&self) -> WriterStats {
        self.lock().stats
    }

    fn command_outcome(&self, id: CommandId) -> Result<Option<AppendOutcome>, ReadError> {
        Ok(self.lock().commands.get(&id).map(|outcome| AppendOutcome {
            deduplicated: true,
            ..outcome.clone()
        }))
    }

    /// Always answered: everything is in memory.
    fn command_outcome_cached(
        &self,
        id: CommandId,
    ) -> Result<Cached<Option<AppendOutcome>>, ReadError> {
        self.command_outcome(id).map(Cached::Ready)
    }

    fn set_commit_listener(&self, listener: Arc<dyn CommitListener>) {
        *self.listener.write().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }
}
