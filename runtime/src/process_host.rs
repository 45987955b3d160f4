//! The process-manager host: one per registered process manager, on a
//! thread of its own. See [`crate::process`] for the model.
//!
//! The host is the only owner of its instances: it takes events (catch-up
//! from the store, then live from the bus), results of the commands its
//! instances sent, timers that fell due and control messages, one at a time.
//! Instances are activated on demand from the store, kept in an LRU, and
//! passivated when idle or beyond the resident bound.
//!
//! **Architecture Invariant:** every change a step makes — instance record,
//! outbox entries, timer keys, stuck marker — and the checkpoint are written
//! in one `ReadModelBatch`, and outbox commands are dispatched only after it
//! is written. The batch skips its own fsync: it is in the WAL before any
//! command it dispatches is appended, so the append's fsync covers it, and an
//! event-triggered step lost in a crash is replayed from the checkpoint with
//! the same command ids.
//!
//! The host's blocking store calls (catch-up reads, commits, activation)
//! run on its own thread, which serves no other actor: a deliberate choice,
//! so that the host never waits on a shard's executor and no shard waits on
//! the host. The futures of the commands it sends run on the host's own
//! current-thread tokio runtime: each round polls those that are ready
//! (`Host::drive`), which routes new commands to their shards and hands
//! answers to the results queue, and the host's wait is a `block_on` of the
//! same runtime, so an answer wakes it directly. (A dispatcher thread of
//! its own cost W7 two thread wake-ups per command, in a workload bound by
//! them.)

use crate::error::{CommandError, panic_message};
use crate::handle::{Inner, RuntimeHandle};
use crate::metric_names::{PROCESS_COMMANDS_TOTAL, PROCESS_STEPS_TOTAL, PROCESS_STUCK};
use crate::process::*;
use crate::projection::ConsumerState;
use eventfold_domain::{Aggregate, Clock, CommandId, RecordedEvent, Timestamp};
use eventfold_storage::{EventStore, Filter, ReadModelBatch, payload};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// Control messages waiting per process manager.
pub(crate) const CONTROL_QUEUE_MAX: usize = 64;
/// How long an idle host waits before it looks at its timers and the head.
pub(crate) const IDLE_WAIT: Duration = Duration::from_millis(10);
/// Most stuck instances listed or counted at start.
pub(crate) const STUCK_LIST_MAX: usize = 100_000;

const STATUS_ACTIVE: u8 = 0;
const STATUS_STUCK: u8 = 1;
const STATUS_FINISHED: u8 = 2;

/// The read model holding a process manager's instances, outbox and timers;
/// also the name of its checkpoint.
pub(crate) fn model_of(name: &str) -> String {
    format!("$pm.{name}")
}

pub(crate) fn instance_key(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(b'i');
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) fn stuck_key(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(b's');
    key.extend_from_slice(id.as_bytes());
    key
}

/// `o`, id length (u16 BE), id, then the sequence (u64 BE).
pub(crate) fn outbox_prefix(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + id.len() + 8);
    key.push(b'o');
    key.extend_from_slice(&(id.len() as u16).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

fn outbox_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = outbox_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `t`, due (µs, u64 BE), id length (u16 BE), id, then the timer's name.
fn timer_key(due: u64, id: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(11 + id.len() + name.len());
    key.push(b't');
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(&(id.len() as u16).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

fn split_id(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return None;
    }
    let (id, rest) = rest.split_at(len);
    Some((String::from_utf8(id.to_vec()).ok()?, rest))
}

fn parse_outbox_key(key: &[u8]) -> Option<(String, u64)> {
    let (id, rest) = split_id(key.strip_prefix(b"o")?)?;
    let seq: [u8; 8] = rest.try_into().ok()?;
    Some((id, u64::from_be_bytes(seq)))
}

fn parse_timer_key(key: &[u8]) -> Option<(u64, String, String)> {
    let (due, rest) = key.strip_prefix(b"t")?.split_first_chunk::<8>()?;
    let (id, name) = split_id(rest)?;
    Some((
        u64::from_be_bytes(*due),
        id,
        String::from_utf8(name.to_vec()).ok()?,
    ))
}

/// An instance as stored under `i{id}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub status: u8,
    pub state: Vec<u8>,
    pub next_seq: u64,
    pub timers: BTreeMap<String, u64>,
    pub stuck: Option<StuckRecord>,
    /// Positions of events held while stuck, in order.
    pub held: Vec<u64>,
}

impl InstanceRecord {
    /// Its status as the handle shows it.
    pub(crate) fn status(&self) -> InstanceStatus {
        match self.status {
            STATUS_ACTIVE => InstanceStatus::Active,
            STATUS_STUCK => InstanceStatus::Stuck,
            _ => InstanceStatus::Finished,
        }
    }
}

/// Why an instance is stuck; also stored under `s{id}` for listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StuckRecord {
    pub error: String,
    pub attempts: u32,
    pub since: u64,
    pub input: StuckInput,
}

/// The input of a step: what it consumes (cleaned up after it), and what a
/// stuck instance failed on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum StuckInput {
    Event(u64),
    Result { seq: u64, command_id: [u8; 16] },
    Timer { name: String, due: u64 },
}

impl std::fmt::Display for StuckInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StuckInput::Event(position) => write!(f, "event at position {position}"),
            StuckInput::Result { command_id, .. } => write!(
                f,
                "result of command {}",
                CommandId::from_bytes(*command_id)
            ),
            StuckInput::Timer { name, due } => write!(f, "timer {name:?} due at {due} µs"),
        }
    }
}

/// A command in the outbox, stored under `o{id}{seq}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct OutboxRecord {
    pub command_id: [u8; 16],
    pub kind: String,
    pub aggregate_id: String,
    pub payload: Vec<u8>,
}

/// What a delivery attempt ended with.
pub(crate) enum Delivery {
    Done(ResultOutcome),
    /// The runtime is shutting down: the command stays in the outbox and is
    /// sent again at the next start.
    Abandoned,
}

type DeliveryFuture = Pin<Box<dyn Future<Output = Delivery> + Send>>;

/// Sends an encoded command to one aggregate type.
pub(crate) trait Dispatch: Send + Sync {
    fn send(
        &self,
        handle: &Weak<Inner>,
        store: &Arc<dyn EventStore>,
        entry: &OutboxRecord,
        settings: &ProcessSettings,
    ) -> DeliveryFuture;
}

/// The aggregate types commands can be sent to, by `KIND`.
pub(crate) type DispatchTable = HashMap<&'static str, Arc<dyn Dispatch>>;

pub(crate) struct TypedDispatch<A>(PhantomData<fn() -> A>);

impl<A> TypedDispatch<A> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<A: Aggregate> Dispatch for TypedDispatch<A> {
    fn send(
        &self,
        handle: &Weak<Inner>,
        store: &Arc<dyn EventStore>,
        entry: &OutboxRecord,
        settings: &ProcessSettings,
    ) -> DeliveryFuture {
        let handle = handle.clone();
        let store = Arc::clone(store);
        let aggregate_id = entry.aggregate_id.clone();
        let payload = entry.payload.clone();
        let command_id = CommandId::from_bytes(entry.command_id);
        let retry = settings.dispatch_retry.clone();
        let options = settings.execute_options(command_id);
        Box::pin(async move {
            let mut last = String::new();
            for attempt in 1..=retry.attempts_max {
                let command: A::Command = match payload::decode(&payload) {
                    Ok(command) => command,
                    Err(error) => {
                        return Delivery::Done(ResultOutcome::Failed(format!(
                            "the command could not be decoded: {error}"
                        )));
                    }
                };
                let answer =
                    RuntimeHandle::submit::<A>(&handle, &aggregate_id, command, options.clone());
                match answer.await {
                    Ok(mut outcome) => {
                        if outcome.deduplicated && outcome.events.is_empty() {
                            // The answer of a duplicate found at append time
                            // carries no events: read the original's. Blocks
                            // the host's thread, which serves only this host.
                            if let Ok(Some(original)) =
                                crate::actor::applied::<A>(&*store, command_id)
                            {
                                outcome = original;
                            }
                        }
                        return Delivery::Done(ResultOutcome::Accepted {
                            version: outcome.version,
                            position: outcome.position,
                            deduplicated: outcome.deduplicated,
                            events: Arc::new(outcome.events),
                        });
                    }
                    Err(CommandError::Rejected(error)) => {
                        return Delivery::Done(ResultOutcome::Rejected {
                            message: error.to_string(),
                            error: Arc::new(error),
                        });
                    }
                    Err(CommandError::ShutDown) => return Delivery::Abandoned,
                    Err(
                        error @ (CommandError::InvalidId(_)
                        | CommandError::NotRegistered(_)
                        | CommandError::Encode(_)),
                    ) => return Delivery::Done(ResultOutcome::Failed(error.to_string())),
                    Err(error) => {
                        last = error.to_string();
                        if attempt < retry.attempts_max {
                            tokio::time::sleep(retry.backoff(attempt)).await;
                        }
                    }
                }
            }
            Delivery::Done(ResultOutcome::Failed(format!(
                "not delivered after {} attempts: {last}",
                retry.attempts_max
            )))
        })
    }
}

/// What the handle can ask of a host.
pub(crate) enum ProcessControl {
    Resume(String, oneshot::Sender<Result<(), String>>),
    Cancel(String, oneshot::Sender<Result<(), String>>),
    Stop,
}

/// What the handle sees of a host without asking it.
pub(crate) struct ProcessShared {
    pub state: Mutex<ConsumerState>,
    pub checkpoint: AtomicU64,
    pub resident: AtomicU64,
    pub outbox: AtomicU64,
    pub timers: AtomicU64,
    pub stuck: AtomicU64,
    pub steps: AtomicU64,
    pub unroutable: AtomicU64,
    /// Set by `stop_all`; the host stops at its next round.
    pub stopping: std::sync::atomic::AtomicBool,
}

impl ProcessShared {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(ConsumerState::CatchingUp),
            checkpoint: AtomicU64::new(0),
            resident: AtomicU64::new(0),
            outbox: AtomicU64::new(0),
            timers: AtomicU64::new(0),
            stuck: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            unroutable: AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn state(&self) -> ConsumerState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_state(&self, state: ConsumerState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }
}

/// Everything a host is started with.
pub(crate) struct HostConfig {
    pub settings: ProcessSettings,
    pub store: Arc<dyn EventStore>,
    pub bus: crate::bus::EventBus,
    pub clock: Arc<dyn Clock>,
    pub dispatch: Arc<DispatchTable>,
    pub handle: Weak<Inner>,
    pub control: mpsc::Receiver<ProcessControl>,
    pub shared: Arc<ProcessShared>,
}

/// A host with its process manager's type erased.
pub(crate) trait HostRun: Send {
    fn run(self: Box<Self>);
}

struct Instance<S> {
    record: InstanceRecord,
    state: S,
    used: Instant,
}

struct Delivered {
    id: String,
    seq: u64,
    delivery: Delivery,
}

pub(crate) struct Host<P: ProcessManager> {
    pm: P,
    name: String,
    model: String,
    filter: Filter,
    config: HostConfig,
    cache: LruCache<String, Instance<P::State>>,
    dirty: HashSet<String>,
    finished_now: Vec<String>,
    ops: ReadModelBatch,
    ops_count: usize,
    next: u64,
    committed: u64,
    live: bool,
    bus_batch: Option<crate::bus::EventBatch>,
    outbox: HashMap<(String, u64), OutboxRecord>,
    ready: VecDeque<(String, u64)>,
    after_commit: Vec<(String, u64)>,
    in_flight: HashSet<(String, u64)>,
    local: VecDeque<Delivered>,
    timers: BTreeSet<(u64, String, String)>,
    results_tx: mpsc::Sender<Delivered>,
    results_rx: mpsc::Receiver<Delivered>,
}

impl<P: ProcessManager> Host<P> {
    pub(crate) fn new(pm: P, config: HostConfig) -> Self {
        let name = pm.name().to_owned();
        let (results_tx, results_rx) = mpsc::channel(config.settings.dispatch_in_flight_max);
        Self {
            model: model_of(&name),
            filter: pm.filter(),
            pm,
            name,
            config,
            cache: LruCache::unbounded(),
            dirty: HashSet::new(),
            finished_now: Vec::new(),
            ops: ReadModelBatch::new(),
            ops_count: 0,
            next: 1,
            committed: 0,
            live: false,
            bus_batch: None,
            outbox: HashMap::new(),
            ready: VecDeque::new(),
            after_commit: Vec::new(),
            in_flight: HashSet::new(),
            local: VecDeque::new(),
            timers: BTreeSet::new(),
            results_tx,
            results_rx,
        }
    }
}

impl<P: ProcessManager> HostRun for Host<P> {
    fn run(mut self: Box<Self>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => return self.stopped(format!("no runtime to wait on: {error}")),
        };
        let mut bus = self.config.bus.subscribe();
        if let Err(reason) = self.recover() {
            return self.stopped(reason);
        }
        loop {
            match self.round(&runtime, &mut bus) {
                Ok(true) => {}
                Ok(false) => {
                    // Told to stop: keep what was handled.
                    if let Err(reason) = self.commit() {
                        tracing::error!(process = %self.name, %reason, "final commit failed");
                    }
                    return;
                }
                Err(reason) => return self.stopped(reason),
            }
        }
    }
}

impl<P: ProcessManager> Host<P> {
    /// Stopped by a failure: answers control messages until told to stop.
    fn stopped(&mut self, reason: String) {
        tracing::error!(process = %self.name, %reason, "process manager stopped");
        self.config
            .shared
            .set_state(ConsumerState::Stopped(reason.clone()));
        while !self.config.shared.stopping.load(Ordering::SeqCst) {
            let message = match self.config.control.try_recv() {
                Ok(message) => message,
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(IDLE_WAIT);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            };
            match message {
                ProcessControl::Stop => return,
                ProcessControl::Resume(_, reply) | ProcessControl::Cancel(_, reply) => {
                    let _ = reply.send(Err(format!("the process manager is stopped: {reason}")));
                }
            }
        }
    }

    /// Reads the checkpoint, the timers, the outbox and the stuck count.
    fn recover(&mut self) -> Result<(), String> {
        let store = &self.config.store;
        let checkpoint = store
            .checkpoint(&self.model)
            .map_err(|e| format!("checkpoint unreadable: {e}"))?
            .unwrap_or(0);
        self.next = checkpoint + 1;
        self.committed = checkpoint;
        let settings = &self.config.settings;
        let timers = store
            .read_model_scan(&self.model, b"t", settings.timers_max)
            .map_err(|e| format!("timers unreadable: {e}"))?;
        for (key, _) in timers {
            let timer = parse_timer_key(&key)
                .ok_or_else(|| format!("corrupt timer key {key:?} in {}", self.model))?;
            self.timers.insert(timer);
        }
        let outbox_scan = settings.outbox_max.saturating_mul(4);
        let outbox = store
            .read_model_scan(&self.model, b"o", outbox_scan)
            .map_err(|e| format!("outbox unreadable: {e}"))?;
        if outbox.len() >= outbox_scan {
            return Err(format!(
                "more than {outbox_scan} commands in the outbox of {}",
                self.model
            ));
        }
        for (key, value) in outbox {
            let (id, seq) = parse_outbox_key(&key)
                .ok_or_else(|| format!("corrupt outbox key {key:?} in {}", self.model))?;
            let record: OutboxRecord = payload::decode(&value)
                .map_err(|e| format!("outbox entry {key:?} of {} unreadable: {e}", self.model))?;
            self.outbox.insert((id.clone(), seq), record);
            self.ready.push_back((id, seq));
        }
        let stuck = store
            .read_model_scan(&self.model, b"s", STUCK_LIST_MAX)
            .map_err(|e| format!("stuck instances unreadable: {e}"))?;
        // A stuck instance's timers wait for it to resume.
        for (key, _) in &stuck {
            let id = String::from_utf8_lossy(&key[1..]).into_owned();
            self.timers.retain(|(_, i, _)| *i != id);
        }
        self.config
            .shared
            .stuck
            .store(stuck.len() as u64, Ordering::Relaxed);
        self.config
            .shared
            .checkpoint
            .store(checkpoint, Ordering::Relaxed);
        self.publish();
        Ok(())
    }

    /// Polls the delivery futures that are ready, without waiting: those
    /// just spawned route their command to its shard, those whose answer
    /// came send it to the results queue. A `block_on` of a future that is
    /// pending once lets the current-thread scheduler run its ready tasks.
    fn drive(runtime: &tokio::runtime::Runtime) {
        runtime.block_on(tokio::task::yield_now());
    }

    /// One round: control, results, timers, events, commit, dispatch, wait.
    /// False when told to stop.
    fn round(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        bus: &mut broadcast::Receiver<crate::bus::EventBatch>,
    ) -> Result<bool, String> {
        if self.config.shared.stopping.load(Ordering::SeqCst) {
            return Ok(false);
        }
        loop {
            match self.config.control.try_recv() {
                Ok(ProcessControl::Stop) => return Ok(false),
                Ok(message) => self.control(message)?,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(false),
            }
        }
        let budget = self.config.settings.batch_inputs_max;
        let mut work = 0;
        while work < budget {
            let delivered = match self.local.pop_front() {
                Some(delivered) => delivered,
                None => match self.results_rx.try_recv() {
                    Ok(delivered) => delivered,
                    Err(_) => break,
                },
            };
            self.on_delivery(delivered)?;
            work += 1;
        }
        work += self.fire_timers(budget.saturating_sub(work))?;
        if self.outbox.len() < self.config.settings.outbox_max && work < budget {
            work += if self.live {
                self.take_live(bus)?
            } else {
                self.catch_up(budget - work)?
            };
        }
        self.commit()?;
        self.dispatch(runtime.handle());
        Self::drive(runtime);
        self.passivate();
        self.publish();
        if work == 0 {
            return self.wait(runtime, bus);
        }
        Ok(true)
    }

    fn control(&mut self, message: ProcessControl) -> Result<(), String> {
        match message {
            ProcessControl::Stop => {}
            ProcessControl::Resume(id, reply) => {
                let result = self.resume(&id);
                self.commit()?;
                let _ = reply.send(result);
            }
            ProcessControl::Cancel(id, reply) => {
                let result = self.cancel(&id);
                self.commit()?;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    /// Waits for a result, a control message, a bus batch or the next timer;
    /// false when told to stop.
    fn wait(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        bus: &mut broadcast::Receiver<crate::bus::EventBatch>,
    ) -> Result<bool, String> {
        enum Woke {
            Result(Option<Delivered>),
            Control(Option<ProcessControl>),
            Bus(Result<crate::bus::EventBatch, broadcast::error::RecvError>),
            Idle,
        }
        let now = self.config.clock.now().as_micros();
        let timeout = match self.timers.first() {
            Some((due, _, _)) => Duration::from_micros(due.saturating_sub(now)).min(IDLE_WAIT),
            None => IDLE_WAIT,
        };
        let take_bus = self.live && self.outbox.len() < self.config.settings.outbox_max;
        let results = &mut self.results_rx;
        let control = &mut self.config.control;
        let woke = runtime.block_on(async {
            tokio::select! {
                delivered = results.recv() => Woke::Result(delivered),
                message = control.recv() => Woke::Control(message),
                batch = bus.recv(), if take_bus => Woke::Bus(batch),
                _ = tokio::time::sleep(timeout) => Woke::Idle,
            }
        });
        match woke {
            Woke::Result(Some(delivered)) => self.local.push_back(delivered),
            Woke::Result(None) => {}
            Woke::Control(None) | Woke::Control(Some(ProcessControl::Stop)) => return Ok(false),
            Woke::Control(Some(message)) => self.control(message)?,
            Woke::Bus(Ok(batch)) => self.bus_batch = Some(batch),
            Woke::Bus(Err(broadcast::error::RecvError::Lagged(_))) => self.live = false,
            Woke::Bus(Err(broadcast::error::RecvError::Closed)) => {
                return Err("the event bus closed".into());
            }
            Woke::Idle => {
                // Positions written before we subscribed never come on the bus.
                if self.live && self.config.store.head() >= self.next {
                    self.live = false;
                }
            }
        }
        Ok(true)
    }

    fn take_live(
        &mut self,
        bus: &mut broadcast::Receiver<crate::bus::EventBatch>,
    ) -> Result<usize, String> {
        let mut handled = 0;
        loop {
            let batch = match self.bus_batch.take() {
                Some(batch) => batch,
                None => match bus.try_recv() {
                    Ok(batch) => batch,
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        self.live = false;
                        break;
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        return Err("the event bus closed".into());
                    }
                },
            };
            let first = batch.first().map_or(self.next, |e| e.position);
            if first > self.next {
                self.live = false;
                break;
            }
            let from = self.next;
            for event in batch.iter().filter(|e| e.position >= from) {
                if self.filter.matches(event) {
                    self.on_event(event)?;
                }
                self.next = event.position + 1;
                handled += 1;
            }
            if handled >= self.config.settings.batch_inputs_max
                || self.outbox.len() >= self.config.settings.outbox_max
            {
                break;
            }
        }
        Ok(handled)
    }

    fn catch_up(&mut self, budget: usize) -> Result<usize, String> {
        let chunk = self
            .config
            .settings
            .catch_up_chunk_events
            .min(budget.max(1));
        let slice = self
            .config
            .store
            .read_all(self.next, chunk, &self.filter)
            .map_err(|e| format!("catch-up read failed: {e}"))?;
        let mut handled = 0;
        for event in &slice.events {
            self.on_event(event)?;
            self.next = event.position + 1;
            handled += 1;
        }
        self.next = self.next.max(slice.next_position);
        if slice.next_position > slice.head {
            self.live = true;
            if self.config.shared.state() == ConsumerState::CatchingUp {
                self.config.shared.set_state(ConsumerState::Live);
            }
        }
        // Still behind the head: go on reading without waiting.
        Ok(if self.live { handled } else { handled.max(1) })
    }

    fn on_event(&mut self, event: &RecordedEvent) -> Result<(), String> {
        let pm = &self.pm;
        let association = match catch_unwind(AssertUnwindSafe(|| pm.associate(event))) {
            Ok(association) => association,
            Err(panic) => {
                tracing::error!(process = %self.name, position = event.position,
                    reason = %panic_message(panic), "associate panicked; event not routed");
                self.config
                    .shared
                    .unroutable
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let (id, start) = match association {
            Association::Start(id) => (id, true),
            Association::Continue(id) => (id, false),
            Association::Ignore => return Ok(()),
        };
        if id.is_empty() || id.len() > INSTANCE_ID_BYTES_MAX {
            tracing::error!(process = %self.name, position = event.position,
                "instance id is empty or longer than {INSTANCE_ID_BYTES_MAX} bytes; event not routed");
            self.config
                .shared
                .unroutable
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.deliver(
            &id,
            start,
            Input::Event(event),
            StuckInput::Event(event.position),
        )
    }

    fn on_delivery(&mut self, delivered: Delivered) -> Result<(), String> {
        let key = (delivered.id, delivered.seq);
        self.in_flight.remove(&key);
        let Delivery::Done(outcome) = delivered.delivery else {
            return Ok(());
        };
        let Some(entry) = self.outbox.get(&key).cloned() else {
            // Cancelled meanwhile.
            return Ok(());
        };
        let result = CommandResult {
            command_id: CommandId::from_bytes(entry.command_id),
            kind: entry.kind,
            aggregate_id: entry.aggregate_id,
            outcome,
        };
        let (id, seq) = key;
        self.deliver(
            &id,
            false,
            Input::Result(&result),
            StuckInput::Result {
                seq,
                command_id: entry.command_id,
            },
        )
    }

    fn fire_timers(&mut self, budget: usize) -> Result<usize, String> {
        let now = self.config.clock.now().as_micros();
        let mut fired = 0;
        while fired < budget {
            match self.timers.first() {
                Some((due, _, _)) if *due <= now => {}
                _ => break,
            }
            let Some((due, id, name)) = self.timers.pop_first() else {
                break;
            };
            let timer = FiredTimer {
                name: name.clone(),
                due: Timestamp::from_micros(due),
            };
            self.deliver(
                &id,
                false,
                Input::Timer(&timer),
                StuckInput::Timer { name, due },
            )?;
            fired += 1;
        }
        Ok(fired)
    }

    /// Loads an instance into the cache; false when it does not exist (and
    /// `start` is false).
    fn activate(&mut self, id: &str, start: bool) -> Result<bool, String> {
        if let Some(instance) = self.cache.get_mut(id) {
            instance.used = Instant::now();
            return Ok(true);
        }
        let stored = self
            .config
            .store
            .read_model_get(&self.model, &instance_key(id))
            .map_err(|e| format!("instance {id:?} unreadable: {e}"))?;
        let instance = match stored {
            Some(bytes) => {
                let record: InstanceRecord = payload::decode(&bytes).map_err(|e| {
                    format!(
                        "instance {id:?} (key i{id} of {}) is corrupt: {e}",
                        self.model
                    )
                })?;
                let state = if record.status == STATUS_FINISHED {
                    P::State::default()
                } else {
                    payload::decode(&record.state).map_err(|e| {
                        format!(
                            "the state of instance {id:?} (key i{id} of {}) is unreadable: {e}",
                            self.model
                        )
                    })?
                };
                Instance {
                    record,
                    state,
                    used: Instant::now(),
                }
            }
            None if start => Instance {
                record: InstanceRecord::default(),
                state: P::State::default(),
                used: Instant::now(),
            },
            None => return Ok(false),
        };
        self.cache.put(id.to_owned(), instance);
        Ok(true)
    }

    /// Runs one input through an instance's handler under the retry policy.
    fn deliver(
        &mut self,
        id: &str,
        start: bool,
        input: Input<'_>,
        consumed: StuckInput,
    ) -> Result<(), String> {
        if !self.activate(id, start)? {
            // No such instance: drop what the input left behind.
            self.clean_up(id, &consumed);
            return Ok(());
        }
        let (status, base) = match self.cache.peek(id) {
            Some(instance) => (instance.record.status, instance.state.clone()),
            None => return Ok(()),
        };
        match status {
            STATUS_FINISHED => {
                self.clean_up(id, &consumed);
                return Ok(());
            }
            STATUS_STUCK => {
                if let StuckInput::Event(position) = consumed
                    && let Some(instance) = self.cache.get_mut(id)
                {
                    instance.record.held.push(position);
                    self.dirty.insert(id.to_owned());
                }
                return Ok(());
            }
            _ => {}
        }
        let retry = self.config.settings.handler_retry.clone();
        let now = self.config.clock.now();
        let key = match &consumed {
            StuckInput::Event(position) => format!("e{position}"),
            StuckInput::Result { command_id, .. } => {
                format!("r{}", CommandId::from_bytes(*command_id))
            }
            StuckInput::Timer { name, due } => format!("t{name}@{due}"),
        };
        let mut last_error = String::new();
        for attempt in 1..=retry.attempts_max {
            let mut state = base.clone();
            let mut effects = Effects::new(&self.name, id, key.clone(), now);
            let pm = &mut self.pm;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                pm.handle(&mut state, input, &mut effects)
            }));
            let error = match outcome {
                Ok(Ok(())) => match (effects.error.take(), payload::encode(&state)) {
                    (Some(error), _) => Some(error),
                    (None, Err(error)) => Some(format!("the state could not be encoded: {error}")),
                    (None, Ok(bytes)) => {
                        let new_timers = effects
                            .timers
                            .iter()
                            .filter(|t| matches!(t, TimerChange::Set { .. }))
                            .count();
                        if self.timers.len() + new_timers > self.config.settings.timers_max {
                            Some(format!(
                                "more than {} timers would be set",
                                self.config.settings.timers_max
                            ))
                        } else {
                            self.apply(id, state, bytes, effects, &consumed)?;
                            return Ok(());
                        }
                    }
                },
                Ok(Err(error)) => Some(error.to_string()),
                Err(panic) => Some(format!("the handler panicked: {}", panic_message(panic))),
            };
            if let Some(error) = error {
                tracing::warn!(process = %self.name, instance = id, attempt, %error, "handler failed");
                last_error = error;
                if attempt < retry.attempts_max {
                    std::thread::sleep(retry.backoff(attempt));
                }
            }
        }
        self.park(id, last_error, retry.attempts_max, &consumed, now)
    }

    /// Removes what a consumed input leaves in the store.
    fn clean_up(&mut self, id: &str, consumed: &StuckInput) {
        match consumed {
            StuckInput::Event(_) => {}
            StuckInput::Result { seq, .. } => {
                if self.outbox.remove(&(id.to_owned(), *seq)).is_some() {
                    self.ops.delete(&self.model, outbox_key(id, *seq));
                    self.ops_count += 1;
                }
            }
            StuckInput::Timer { name, due } => {
                let mut owned = false;
                if let Some(instance) = self.cache.get_mut(id)
                    && instance.record.timers.get(name) == Some(due)
                {
                    instance.record.timers.remove(name);
                    owned = true;
                }
                if owned {
                    self.dirty.insert(id.to_owned());
                }
                self.ops.delete(&self.model, timer_key(*due, id, name));
                self.ops_count += 1;
            }
        }
    }

    fn apply(
        &mut self,
        id: &str,
        state: P::State,
        state_bytes: Vec<u8>,
        effects: Effects,
        consumed: &StuckInput,
    ) -> Result<(), String> {
        self.clean_up(id, consumed);
        let Some(instance) = self.cache.get_mut(id) else {
            return Err(format!("instance {id:?} left the cache during a step"));
        };
        instance.state = state;
        instance.record.state = state_bytes;
        for change in effects.timers {
            match change {
                TimerChange::Set { name, due } => {
                    let due = due.as_micros();
                    if let Some(old) = instance.record.timers.insert(name.clone(), due) {
                        self.ops.delete(&self.model, timer_key(old, id, &name));
                        self.timers.remove(&(old, id.to_owned(), name.clone()));
                    }
                    self.ops
                        .put(&self.model, timer_key(due, id, &name), Vec::new());
                    self.timers.insert((due, id.to_owned(), name));
                }
                TimerChange::Cancel { name } => {
                    if let Some(old) = instance.record.timers.remove(&name) {
                        self.ops.delete(&self.model, timer_key(old, id, &name));
                        self.timers.remove(&(old, id.to_owned(), name));
                    }
                }
            }
            self.ops_count += 1;
        }
        for command in effects.commands {
            let seq = instance.record.next_seq;
            instance.record.next_seq += 1;
            let record = OutboxRecord {
                command_id: *command.command_id.as_uuid().as_bytes(),
                kind: command.kind,
                aggregate_id: command.aggregate_id,
                payload: command.payload,
            };
            let bytes = payload::encode(&record)
                .map_err(|e| format!("an outbox entry could not be encoded: {e}"))?;
            self.ops.put(&self.model, outbox_key(id, seq), bytes);
            self.ops_count += 1;
            self.outbox.insert((id.to_owned(), seq), record);
            self.after_commit.push((id.to_owned(), seq));
            metrics::counter!(PROCESS_COMMANDS_TOTAL, "process" => self.name.clone()).increment(1);
        }
        if effects.finished {
            instance.record.status = STATUS_FINISHED;
            instance.record.held.clear();
            for (name, due) in std::mem::take(&mut instance.record.timers) {
                self.ops.delete(&self.model, timer_key(due, id, &name));
                self.timers.remove(&(due, id.to_owned(), name));
                self.ops_count += 1;
            }
            self.finished_now.push(id.to_owned());
        }
        self.dirty.insert(id.to_owned());
        self.config.shared.steps.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(PROCESS_STEPS_TOTAL, "process" => self.name.clone()).increment(1);
        Ok(())
    }

    fn park(
        &mut self,
        id: &str,
        error: String,
        attempts: u32,
        consumed: &StuckInput,
        now: Timestamp,
    ) -> Result<(), String> {
        tracing::error!(process = %self.name, instance = id, %error, "instance parked as stuck");
        let stuck = StuckRecord {
            error,
            attempts,
            since: now.as_micros(),
            input: consumed.clone(),
        };
        let bytes = payload::encode(&stuck).map_err(|e| format!("stuck record: {e}"))?;
        let Some(instance) = self.cache.get_mut(id) else {
            return Err(format!("instance {id:?} left the cache during a step"));
        };
        instance.record.status = STATUS_STUCK;
        instance.record.stuck = Some(stuck);
        for (name, due) in &instance.record.timers {
            self.timers.remove(&(*due, id.to_owned(), name.clone()));
        }
        self.ops.put(&self.model, stuck_key(id), bytes);
        self.ops_count += 1;
        self.dirty.insert(id.to_owned());
        self.config.shared.stuck.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(PROCESS_STUCK, "process" => self.name.clone()).increment(1.0);
        Ok(())
    }

    fn resume(&mut self, id: &str) -> Result<(), String> {
        if !self.activate(id, false)? {
            return Err(format!("no instance {id:?}"));
        }
        let Some(instance) = self.cache.get_mut(id) else {
            return Err(format!("no instance {id:?}"));
        };
        if instance.record.status != STATUS_STUCK {
            return Err(format!("instance {id:?} is not stuck"));
        }
        instance.record.status = STATUS_ACTIVE;
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
        let mut events = Vec::new();
        if let Some(StuckRecord {
            input: StuckInput::Event(position),
            ..
        }) = stuck
        {
            events.push(position);
        }
        events.extend(held);
        for position in events {
            let event = self.read_event(position)?;
            self.deliver(id, false, Input::Event(&event), StuckInput::Event(position))?;
        }
        Ok(())
    }

    fn read_event(&self, position: u64) -> Result<RecordedEvent, String> {
        let slice = self
            .config
            .store
            .read_all(position, 1, &Filter::all())
            .map_err(|e| format!("event {position} unreadable: {e}"))?;
        slice
            .events
            .into_iter()
            .find(|e| e.position == position)
            .ok_or_else(|| format!("event {position} is missing from the log"))
    }

    fn cancel(&mut self, id: &str) -> Result<(), String> {
        if !self.activate(id, false)? {
            return Err(format!("no instance {id:?}"));
        }
        let Some(instance) = self.cache.get_mut(id) else {
            return Err(format!("no instance {id:?}"));
        };
        if instance.record.status == STATUS_FINISHED {
            return Err(format!("instance {id:?} has finished"));
        }
        if instance.record.status == STATUS_STUCK {
            self.ops.delete(&self.model, stuck_key(id));
            self.config.shared.stuck.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(PROCESS_STUCK, "process" => self.name.clone()).decrement(1.0);
        }
        instance.record.status = STATUS_FINISHED;
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

    /// Writes the changed instances, the outbox and timer changes and the
    /// checkpoint in one batch; then the new commands may be dispatched.
    fn commit(&mut self) -> Result<(), String> {
        let through = self.next - 1;
        if self.dirty.is_empty() && self.ops_count == 0 && through == self.committed {
            return Ok(());
        }
        for id in self.dirty.drain() {
            if let Some(instance) = self.cache.peek(&id) {
                let bytes = payload::encode(&instance.record)
                    .map_err(|e| format!("instance {id:?} could not be encoded: {e}"))?;
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
            .map_err(|e| format!("commit failed: {e}"))?;
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

    fn dispatch(&mut self, runtime: &tokio::runtime::Handle) {
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
                &self.config.handle,
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
    fn passivate(&mut self) {
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

    fn publish(&self) {
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

/// A registered process manager: how to make its host.
pub(crate) struct ProcessRegistration {
    pub name: String,
    pub settings: ProcessSettings,
    pub make: Box<dyn FnOnce(HostConfig) -> Box<dyn HostRun> + Send>,
}

/// A running host.
pub(crate) struct RunningProcess {
    pub shared: Arc<ProcessShared>,
    pub control: mpsc::Sender<ProcessControl>,
    pub model: String,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The running process managers of a runtime.
#[derive(Default)]
pub(crate) struct Processes {
    pub running: HashMap<String, RunningProcess>,
}

/// Everything the hosts share.
pub(crate) struct HostEnvironment {
    pub store: Arc<dyn EventStore>,
    pub bus: crate::bus::EventBus,
    pub clock: Arc<dyn Clock>,
    pub dispatch: Arc<DispatchTable>,
    pub handle: Weak<Inner>,
}

impl Processes {
    pub(crate) fn start(
        registrations: Vec<ProcessRegistration>,
        environment: &HostEnvironment,
    ) -> Result<Self, String> {
        let mut processes = Processes::default();
        for registration in registrations {
            let shared = Arc::new(ProcessShared::new());
            let (control, receiver) = mpsc::channel(CONTROL_QUEUE_MAX);
            let config = HostConfig {
                settings: registration.settings,
                store: Arc::clone(&environment.store),
                bus: environment.bus.clone(),
                clock: Arc::clone(&environment.clock),
                dispatch: Arc::clone(&environment.dispatch),
                handle: environment.handle.clone(),
                control: receiver,
                shared: Arc::clone(&shared),
            };
            let host = (registration.make)(config);
            let thread = std::thread::Builder::new()
                .name(format!("eventfold-pm-{}", registration.name))
                .spawn(move || host.run());
            let thread = match thread {
                Ok(thread) => thread,
                Err(error) => {
                    processes.stop_all();
                    return Err(format!("could not start {}: {error}", registration.name));
                }
            };
            processes.running.insert(
                registration.name.clone(),
                RunningProcess {
                    shared,
                    control,
                    model: model_of(&registration.name),
                    thread: Mutex::new(Some(thread)),
                },
            );
        }
        Ok(processes)
    }

    /// Stops every host after it has committed what it handled. Commands
    /// in flight stay in the outbox and are sent again at the next start.
    pub(crate) fn stop_all(&self) {
        for process in self.running.values() {
            process.shared.stopping.store(true, Ordering::SeqCst);
            // Wakes it; with a full mailbox it sees the flag within IDLE_WAIT.
            let _ = process.control.try_send(ProcessControl::Stop);
        }
        for process in self.running.values() {
            let thread = process
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(thread) = thread {
                // The last handle may be dropped on a host's own thread.
                if thread.thread().id() == std::thread::current().id() {
                    continue;
                }
                if thread.join().is_err() {
                    tracing::error!("a process manager thread panicked");
                }
            }
        }
    }

    pub(crate) fn get(&self, name: &str) -> Result<&RunningProcess, crate::ProcessError> {
        self.running
            .get(name)
            .ok_or_else(|| crate::ProcessError::Unknown(name.to_owned()))
    }
}
