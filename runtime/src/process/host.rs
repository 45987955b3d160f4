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

use super::control::{HostConfig, HostRun, ProcessControl};
use super::dispatch::Delivery;
use super::records::*;
use crate::error::panic_message;
use crate::metric_names::{PROCESS_COMMANDS_TOTAL, PROCESS_STEPS_TOTAL, PROCESS_STUCK};
use crate::process::*;
use crate::read::projection::ConsumerState;
use crate::read::subscription::{self, Subscription, SubscriptionError};
use eventfold_domain::{CommandId, RecordedEvent, Timestamp};
use eventfold_storage::{Filter, ReadModelBatch, payload};
use lru::LruCache;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long an idle host waits before it looks at its timers and the head.
pub(crate) const IDLE_WAIT: Duration = Duration::from_millis(10);
/// Most stuck instances listed or counted at start.
pub(crate) const STUCK_LIST_MAX: usize = 100_000;

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
    /// Every position before it is handled (the subscription's `next`).
    next: u64,
    committed: u64,
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
        if let Err(reason) = self.recover() {
            return self.stopped(reason);
        }
        let mut sub = Subscription::new(
            Arc::clone(&self.config.store),
            &self.config.bus,
            self.filter.clone(),
            self.committed,
        );
        loop {
            match self.round(&runtime, &mut sub) {
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
        sub: &mut Subscription,
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
            work += self.take_events(sub, budget - work)?;
        }
        self.commit()?;
        self.dispatch(runtime.handle());
        Self::drive(runtime);
        self.passivate();
        self.publish();
        if work == 0 {
            return self.wait(runtime, sub);
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
        sub: &mut Subscription,
    ) -> Result<bool, String> {
        enum Woke {
            Result(Option<Delivered>),
            Control(Option<ProcessControl>),
            Bus(Result<subscription::Woke, SubscriptionError>),
            Idle,
        }
        let now = self.config.clock.now().as_micros();
        let timeout = match self.timers.first() {
            Some((due, _, _)) => Duration::from_micros(due.saturating_sub(now)).min(IDLE_WAIT),
            None => IDLE_WAIT,
        };
        let take_bus = sub.is_live() && self.outbox.len() < self.config.settings.outbox_max;
        let results = &mut self.results_rx;
        let control = &mut self.config.control;
        let woke = runtime.block_on(async {
            tokio::select! {
                delivered = results.recv() => Woke::Result(delivered),
                message = control.recv() => Woke::Control(message),
                woke = sub.wait(), if take_bus => Woke::Bus(woke),
                _ = tokio::time::sleep(timeout) => Woke::Idle,
            }
        });
        match woke {
            Woke::Result(Some(delivered)) => self.local.push_back(delivered),
            Woke::Result(None) => {}
            Woke::Control(None) | Woke::Control(Some(ProcessControl::Stop)) => return Ok(false),
            Woke::Control(Some(message)) => self.control(message)?,
            // A batch is stashed in the subscription, or a lag sent it back
            // to catch-up: the next round takes either.
            Woke::Bus(woke) => {
                woke.map_err(|e| e.to_string())?;
            }
            // Positions written before we subscribed never come on the bus.
            Woke::Idle => sub.idle(),
        }
        Ok(true)
    }

    /// Takes events from the subscription. Catching up: one read of at most
    /// `budget` events (and at least one position counted while behind, so
    /// the host reads on without waiting). Live: the batches the bus holds,
    /// until `batch_inputs_max` positions or a full outbox.
    fn take_events(&mut self, sub: &mut Subscription, budget: usize) -> Result<usize, String> {
        let settings = &self.config.settings;
        let (batch_max, outbox_max) = (settings.batch_inputs_max, settings.outbox_max);
        let chunk_max = settings.catch_up_chunk_events.min(budget.max(1));
        let mut handled = 0;
        loop {
            let was_live = sub.is_live();
            let Some(chunk) = sub.take(chunk_max).map_err(|e| e.to_string())? else {
                break;
            };
            let mut events = 0;
            for event in chunk.events() {
                self.on_event(event)?;
                sub.handled(event.position);
                self.next = sub.next();
                events += 1;
            }
            sub.finish(&chunk);
            self.next = sub.next();
            if !chunk.is_live() {
                if chunk.reached_head() && self.config.shared.state() == ConsumerState::CatchingUp {
                    self.config.shared.set_state(ConsumerState::Live);
                }
                handled += events;
                // Still behind the head: go on reading without waiting.
                return Ok(if sub.is_live() || was_live {
                    handled
                } else {
                    handled.max(1)
                });
            }
            handled += usize::try_from(chunk.positions()).unwrap_or(usize::MAX);
            if handled >= batch_max || self.outbox.len() >= outbox_max {
                break;
            }
        }
        Ok(handled)
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
