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

mod commit;
mod effects;
mod operator;
mod recover;
mod step;

use super::api::ProcessManager;
use super::control::{HostConfig, HostRun, ProcessControl};
use super::dispatch::Delivery;
use super::records::*;
use crate::error::{ControlRefusal, ProcessFailure};
use crate::read::interest::Interest;
use crate::read::projection::ConsumerState;
use crate::read::subscription::{self, Subscription, SubscriptionError};
use crate::runners::Placement;
use eventfold_storage::{Filter, ReadModelBatch};
use lru::LruCache;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
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
        // A partition runs, logs and is placed as `name#i`.
        let (index, partitions) = config.partition;
        let name = crate::read::registry::runner_name(pm.name(), index, partitions);
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
    fn run(self: Box<Self>) {
        let mut host = *self;
        let placed = host.config.placement.clone();
        let Some(placement) = placed.filter(|p| p.places(&host.name)) else {
            if let Ended::Failed(reason) = host.serve(None) {
                host.stopped(reason);
            }
            return;
        };
        loop {
            let Some(grant) = host.await_grant(&*placement) else {
                return;
            };
            match host.serve(Some((&*placement, grant))) {
                Ended::Told => return,
                Ended::Failed(reason) => return host.stopped(reason),
                Ended::Lost => {
                    tracing::info!(process = %host.name, grant, "standing down: the grant moved");
                    placement.stood_down(&host.name, grant);
                    // What it held in memory may be stale: the next grant
                    // starts from the store.
                    host = host.renew();
                }
            }
        }
    }
}

/// Why a host stopped serving.
enum Ended {
    /// Told to stop.
    Told,
    /// Its grant moved (a placement decided it runs elsewhere now).
    Lost,
    /// A failure it cannot go past.
    Failed(ProcessFailure),
}

impl<P: ProcessManager> Host<P> {
    /// Serves until told to stop, until a failure, or (under a
    /// placement) until `grant` is no longer this runtime's.
    fn serve(&mut self, grant: Option<(&dyn Placement, u64)>) -> Ended {
        let held = |host: &Self| {
            grant.is_none_or(|(placement, grant)| placement.grant(&host.name) == Some(grant))
        };
        let failed = |host: &Self, reason| {
            if held(host) {
                Ended::Failed(reason)
            } else {
                Ended::Lost
            }
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => return Ended::Failed(ProcessFailure::NoRuntime(error.kind())),
        };
        self.config.shared.set_state(ConsumerState::CatchingUp);
        if let Err(reason) = self.recover() {
            return failed(self, reason);
        }
        let mut sub = Subscription::new(
            Arc::clone(&self.config.store),
            &self.config.bus,
            Interest::events(self.filter.clone()),
            self.committed,
            Arc::clone(&self.config.upcasters),
        );
        loop {
            if !held(self) {
                return Ended::Lost;
            }
            match self.round(&runtime, &mut sub) {
                Ok(true) => {}
                Ok(false) => {
                    // Told to stop: keep what was handled.
                    if let Err(reason) = self.commit() {
                        tracing::error!(process = %self.name, %reason, "final commit failed");
                    }
                    return Ended::Told;
                }
                Err(reason) => return failed(self, reason),
            }
        }
    }

    /// Waits (answering control messages) until the placement grants this
    /// runtime the process manager; `None` when told to stop first.
    fn await_grant(&mut self, placement: &dyn Placement) -> Option<u64> {
        loop {
            if self.config.shared.stopping.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(grant) = placement.grant(&self.name) {
                return Some(grant);
            }
            self.config.shared.set_state(ConsumerState::Standby);
            loop {
                match self.config.control.try_recv() {
                    Ok(ProcessControl::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => {
                        return None;
                    }
                    Ok(ProcessControl::Resume(_, reply) | ProcessControl::Cancel(_, reply)) => {
                        let refusal = ControlRefusal::Elsewhere(self.name.clone());
                        let _ = reply.send(Err(refusal.into()));
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            std::thread::sleep(IDLE_WAIT);
        }
    }

    /// A host with nothing in memory, to serve a new grant.
    fn renew(self) -> Self {
        let Host { pm, config, .. } = self;
        Host::new(pm, config)
    }
}

impl<P: ProcessManager> Host<P> {
    /// Stopped by a failure: answers control messages until told to stop.
    pub(super) fn stopped(&mut self, failure: ProcessFailure) {
        let reason = failure.to_string();
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
                    let refusal = ControlRefusal::Stopped(reason.clone());
                    let _ = reply.send(Err(refusal.into()));
                }
            }
        }
    }

    /// Polls the delivery futures that are ready, without waiting: those
    /// just spawned route their command to its shard, those whose answer
    /// came send it to the results queue. A `block_on` of a future that is
    /// pending once lets the current-thread scheduler run its ready tasks.
    pub(super) fn drive(runtime: &tokio::runtime::Runtime) {
        runtime.block_on(tokio::task::yield_now());
    }

    /// One round: control, results, timers, events, commit, dispatch, wait.
    /// False when told to stop.
    pub(super) fn round(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        sub: &mut Subscription,
    ) -> Result<bool, ProcessFailure> {
        if !self.take_control()? {
            return Ok(false);
        }
        let budget = self.config.settings.batch_inputs_max;
        let mut work = self.take_results(budget)?;
        work += self.fire_timers(budget.saturating_sub(work))?;
        if self.outbox.len() < self.config.settings.outbox_max && work < budget {
            work += self.take_events(sub, budget - work)?;
        }
        self.end_round(runtime)?;
        if work == 0 {
            return self.wait(runtime, sub);
        }
        Ok(true)
    }

    /// Handles the control messages waiting; false when told to stop.
    fn take_control(&mut self) -> Result<bool, ProcessFailure> {
        if self.config.shared.stopping.load(Ordering::SeqCst) {
            return Ok(false);
        }
        loop {
            match self.config.control.try_recv() {
                Ok(ProcessControl::Stop) => return Ok(false),
                Ok(message) => self.control(message)?,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(true),
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(false),
            }
        }
    }

    /// Hands at most `budget` results of sent commands to their instances.
    fn take_results(&mut self, budget: usize) -> Result<usize, ProcessFailure> {
        let mut taken = 0;
        while taken < budget {
            let delivered = match self.local.pop_front() {
                Some(delivered) => delivered,
                None => match self.results_rx.try_recv() {
                    Ok(delivered) => delivered,
                    Err(_) => break,
                },
            };
            self.on_delivery(delivered)?;
            taken += 1;
        }
        Ok(taken)
    }

    /// Commits the round, then sends its commands, lets their futures run,
    /// passivates idle instances and publishes the status.
    fn end_round(&mut self, runtime: &tokio::runtime::Runtime) -> Result<(), ProcessFailure> {
        self.commit()?;
        self.dispatch(runtime.handle());
        Self::drive(runtime);
        self.passivate();
        self.publish();
        Ok(())
    }

    pub(super) fn control(&mut self, message: ProcessControl) -> Result<(), ProcessFailure> {
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
    pub(super) fn wait(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        sub: &mut Subscription,
    ) -> Result<bool, ProcessFailure> {
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
                woke?;
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
    pub(super) fn take_events(
        &mut self,
        sub: &mut Subscription,
        budget: usize,
    ) -> Result<usize, ProcessFailure> {
        let settings = &self.config.settings;
        let (batch_max, outbox_max) = (settings.batch_inputs_max, settings.outbox_max);
        let chunk_max = settings.catch_up_chunk_events.min(budget.max(1));
        let mut handled = 0;
        loop {
            let was_live = sub.is_live();
            let Some(chunk) = sub.take(chunk_max)? else {
                break;
            };
            let mut events = 0;
            // Events upcast from one stored event share its position.
            let mut previous: Option<(u64, u32)> = None;
            for event in chunk.events() {
                let index = match previous {
                    Some((position, index)) if position == event.position => index + 1,
                    _ => 0,
                };
                previous = Some((event.position, index));
                self.on_event(event, index)?;
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
}
