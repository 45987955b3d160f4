//! Starts, stops and rebuilds the consumers (projections and handlers).

use crate::error::{ParkedError, ProjectionError};
use crate::evolution::Upcasters;
use crate::personal::SubjectKeys;
use crate::read::bus::EventBus;
use crate::read::consumer::{ACTIVE_VERSIONS_MODEL, Consumer, ConsumerShared, Control, Kind};
use crate::read::projection::{ConsumerSettings, ConsumerState, ConsumerStatus, ParkedEvent};
use crate::read::subscription::CONTROL_QUEUE_MAX;
use crate::runners::Placement;
use eventfold_storage::{Corruption, EventStore, ReadModelBatch};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Control messages waiting per consumer.
/// Keys deleted per batch when an old read-model version is removed.
pub(crate) const CLEANUP_BATCH_KEYS: usize = 10_000;

/// A registered consumer: how to make its handler.
pub(crate) struct Registration {
    pub name: String,
    pub settings: ConsumerSettings,
    pub make: Arc<dyn Fn() -> Kind + Send + Sync>,
    pub projection: bool,
}

/// The consumers of one version of one registration.
pub(crate) struct Running {
    pub version: u32,
    pub consumers: Vec<Arc<ConsumerShared>>,
    controls: Vec<SyncSender<Control>>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    fn stop(self) {
        for control in &self.controls {
            let _ = control.send(Control::Stop);
        }
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a consumer thread panicked");
            }
        }
    }
}

pub(crate) struct Registry {
    store: Arc<dyn EventStore>,
    bus: EventBus,
    upcasters: Arc<Upcasters>,
    keys: Arc<SubjectKeys>,
    placement: Option<Arc<dyn Placement>>,
    registrations: HashMap<String, Registration>,
    running: Mutex<HashMap<String, Running>>,
    rebuilding: Mutex<HashMap<String, Running>>,
    coordinators: Mutex<Vec<JoinHandle<()>>>,
}

/// The version of projection `name` that queries read (`$projections`;
/// 1 when it was never rebuilt): what the registry starts, and what the
/// inspector calls active.
pub(crate) fn active_version(store: &dyn EventStore, name: &str) -> Result<u32, ProjectionError> {
    let key = name.as_bytes();
    match store.read_model_get(ACTIVE_VERSIONS_MODEL, key)? {
        Some(bytes) => bytes
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|bytes: Vec<u8>| {
                let reason = format!("an active version is 4 bytes, not {}", bytes.len());
                Corruption::read_model_value(ACTIVE_VERSIONS_MODEL, key, reason).into()
            }),
        None => Ok(1),
    }
}

/// The name a consumer's partition runs under in a placement:
/// `name`, or `name#i` when it is partitioned (its version aside).
pub(crate) fn runner_name(name: &str, index: usize, partitions: usize) -> String {
    if partitions > 1 {
        format!("{name}#{index}")
    } else {
        name.to_owned()
    }
}

pub(crate) fn model_name(name: &str, version: u32) -> String {
    format!("{name}@v{version}")
}

impl Registry {
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        bus: EventBus,
        upcasters: Arc<Upcasters>,
        keys: Arc<SubjectKeys>,
        registrations: Vec<Registration>,
        placement: Option<Arc<dyn Placement>>,
    ) -> Self {
        Self {
            store,
            bus,
            upcasters,
            keys,
            placement,
            registrations: registrations
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            running: Mutex::new(HashMap::new()),
            rebuilding: Mutex::new(HashMap::new()),
            coordinators: Mutex::new(Vec::new()),
        }
    }

    /// Starts every registered consumer at its active version.
    pub(crate) fn start_all(&self) -> Result<(), ProjectionError> {
        for registration in self.registrations.values() {
            let version = active_version(&*self.store, &registration.name)?;
            let running = self.spawn(registration, version, None)?;
            lock(&self.running).insert(registration.name.clone(), running);
        }
        Ok(())
    }

    fn spawn(
        &self,
        registration: &Registration,
        version: u32,
        caught_up: Option<std::sync::mpsc::Sender<()>>,
    ) -> Result<Running, ProjectionError> {
        let partitions = registration.settings.partitions.max(1);
        let model = model_name(&registration.name, version);
        let mut running = Running {
            version,
            consumers: Vec::with_capacity(partitions),
            controls: Vec::with_capacity(partitions),
            threads: Vec::with_capacity(partitions),
        };
        for index in 0..partitions {
            let id = if partitions > 1 {
                format!("{model}#{index}")
            } else {
                model.clone()
            };
            let (processed, _) = tokio::sync::watch::channel(0);
            let state = if caught_up.is_some() {
                ConsumerState::Rebuilding
            } else {
                ConsumerState::CatchingUp
            };
            let shared = Arc::new(ConsumerShared {
                parked_model: format!("$parked.{id}"),
                id: id.clone(),
                processed,
                state: Mutex::new(state),
                parked: AtomicU64::new(0),
            });
            let (control, mailbox) = sync_channel(CONTROL_QUEUE_MAX);
            let kind = (registration.make)();
            let consumer = Consumer {
                shared: Arc::clone(&shared),
                filter: kind.filter(),
                kind,
                settings: registration.settings.clone(),
                store: Arc::clone(&self.store),
                bus: self.bus.clone(),
                upcasters: Arc::clone(&self.upcasters),
                control: mailbox,
                model: model.clone(),
                partition: (index, partitions),
                caught_up: caught_up.clone(),
                // The placement decides which it places (`places`): a
                // cluster places event handlers, and projections when
                // asked to.
                placement: self
                    .placement
                    .clone()
                    .map(|p| (p, runner_name(&registration.name, index, partitions))),
            };
            let name = format!("eventfold-consumer-{id}");
            let keys = Arc::clone(&self.keys);
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    // Its own thread: personal values open with the runtime's keys.
                    crate::personal::install(&keys);
                    consumer.run()
                })
                .map_err(|e| ProjectionError::Thread {
                    name,
                    kind: e.kind(),
                })?;
            running.consumers.push(shared);
            running.controls.push(control);
            running.threads.push(thread);
        }
        Ok(running)
    }

    /// Stops every consumer after it has committed what it handled.
    pub(crate) fn stop_all(&self) {
        // Rebuilds first, and their coordinators joined, so that no switch
        // installs consumers after the running ones are stopped.
        let rebuilding: Vec<_> = lock(&self.rebuilding).drain().collect();
        for (_, running) in rebuilding {
            running.stop();
        }
        let coordinators = std::mem::take(&mut *lock(&self.coordinators));
        for coordinator in coordinators {
            if coordinator.join().is_err() {
                tracing::error!("a rebuild coordinator panicked");
            }
        }
        let running: Vec<_> = lock(&self.running).drain().collect();
        for (_, running) in running {
            running.stop();
        }
    }

    fn registration(&self, name: &str) -> Result<&Registration, ProjectionError> {
        self.registrations
            .get(name)
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))
    }

    /// The active version's consumers.
    pub(crate) fn consumers(
        &self,
        name: &str,
    ) -> Result<(u32, Vec<Arc<ConsumerShared>>), ProjectionError> {
        self.registration(name)?;
        let running = lock(&self.running);
        let current = running.get(name).ok_or(ProjectionError::ShutDown)?;
        Ok((current.version, current.consumers.clone()))
    }

    /// The read model queries read now.
    pub(crate) fn active_model(&self, name: &str) -> Result<String, ProjectionError> {
        let registration = self.registration(name)?;
        if !registration.projection {
            return Err(ProjectionError::NotAProjection(name.to_owned()));
        }
        let (version, _) = self.consumers(name)?;
        Ok(model_name(name, version))
    }

    pub(crate) fn status(&self, name: &str) -> Result<Vec<ConsumerStatus>, ProjectionError> {
        let (_, mut consumers) = self.consumers(name)?;
        if let Some(rebuild) = lock(&self.rebuilding).get(name) {
            consumers.extend(rebuild.consumers.iter().cloned());
        }
        let head = self.store.head();
        Ok(consumers
            .iter()
            .map(|c| {
                let checkpoint = *c.processed.borrow();
                ConsumerStatus {
                    name: c.id.clone(),
                    checkpoint,
                    head,
                    lag: head.saturating_sub(checkpoint),
                    state: c.state(),
                    parked: c.parked.load(Ordering::Relaxed),
                }
            })
            .collect())
    }

    pub(crate) fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, ProjectionError> {
        let (_, consumers) = self.consumers(name)?;
        let mut all = Vec::new();
        for consumer in consumers {
            all.extend(crate::read::parked::list_parked(
                &*self.store,
                &consumer.parked_model,
            )?);
        }
        all.sort_by_key(|p| p.position);
        Ok(all)
    }

    /// Waits until every consumer of `name` has committed every event up
    /// to `position`, at most `timeout`; re-checks a consumer's state at
    /// least every 50 ms, so a stopped one ends the wait.
    pub(crate) async fn wait_for(
        &self,
        name: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let (_, consumers) = self.consumers(name)?;
        let deadline = crate::timeout::deadline(Instant::now(), timeout);
        for consumer in consumers {
            let mut processed = consumer.processed.subscribe();
            loop {
                if *processed.borrow_and_update() >= position {
                    break;
                }
                if let ConsumerState::Stopped(reason) = consumer.state() {
                    return Err(ProjectionError::Stopped(reason));
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(ProjectionError::Timeout { position, timeout });
                }
                // Re-checks the state at least every 50 ms.
                crate::timeout::Deadline::after(
                    Box::pin(processed.changed()),
                    remaining.min(Duration::from_millis(50)),
                )
                .await;
            }
        }
        Ok(())
    }

    /// Asks the consumer holding a parked position to retry or skip it.
    pub(crate) fn resolve_parked(
        &self,
        name: &str,
        position: u64,
        skip: bool,
    ) -> Result<(), ProjectionError> {
        let running = lock(&self.running);
        let current = running
            .get(name)
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))?;
        let key = position.to_be_bytes();
        for (consumer, control) in current.consumers.iter().zip(&current.controls) {
            let parked = self.store.read_model_get(&consumer.parked_model, &key)?;
            if parked.is_some() {
                let (reply, answer) = oneshot::channel();
                let message = if skip {
                    Control::Skip(position, reply)
                } else {
                    Control::Retry(position, reply)
                };
                control
                    .send(message)
                    .map_err(|_| ProjectionError::ShutDown)?;
                drop(running);
                return match answer.recv() {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(ProjectionError::ShutDown),
                };
            }
        }
        Err(ParkedError::NotParked(position).into())
    }

    /// Starts a rebuild into the next version; switches when it has caught up.
    pub(crate) fn rebuild(self: &Arc<Self>, name: &str) -> Result<u32, ProjectionError> {
        let registration = self.registration(name)?;
        if !registration.projection {
            return Err(ProjectionError::NotAProjection(name.to_owned()));
        }
        if lock(&self.rebuilding).contains_key(name) {
            return Err(ProjectionError::RebuildRunning(name.to_owned()));
        }
        let partitions = registration.settings.partitions.max(1);
        if let Some(placement) = &self.placement
            && (0..partitions).any(|i| placement.places(&runner_name(name, i, partitions)))
        {
            // Its new version would run on one node while the switch to
            // it is each node's own.
            return Err(ProjectionError::Placed(name.to_owned()));
        }
        let (current, _) = self.consumers(name)?;
        let version = current + 1;
        let (caught_up, signals) = std::sync::mpsc::channel();
        let running = self.spawn(registration, version, Some(caught_up))?;
        let partitions = running.consumers.len();
        lock(&self.rebuilding).insert(name.to_owned(), running);
        let registry = Arc::clone(self);
        let name = name.to_owned();
        let thread = format!("eventfold-rebuild-{name}");
        let coordinator = std::thread::Builder::new()
            .name(thread.clone())
            .spawn(move || {
                for _ in 0..partitions {
                    // A consumer that stops before catching up drops its sender.
                    if signals.recv().is_err() {
                        return;
                    }
                }
                if let Err(error) = registry.switch(&name, version) {
                    tracing::error!(projection = %name, %error, "rebuild could not switch");
                }
            })
            .map_err(|e| ProjectionError::Thread {
                name: thread,
                kind: e.kind(),
            })?;
        lock(&self.coordinators).push(coordinator);
        Ok(version)
    }

    /// Makes `version` the active one in one write, stops the old consumers
    /// and removes the old read model.
    fn switch(&self, name: &str, version: u32) -> Result<(), ProjectionError> {
        let mut batch = ReadModelBatch::new();
        batch.put(
            ACTIVE_VERSIONS_MODEL,
            name.as_bytes().to_vec(),
            version.to_be_bytes().to_vec(),
        );
        self.store.commit_read_model(batch)?;
        // Stopped meanwhile (shutdown): the runtime is going away.
        let new = lock(&self.rebuilding)
            .remove(name)
            .ok_or(ProjectionError::ShutDown)?;
        for consumer in &new.consumers {
            consumer.set_live();
        }
        let old = lock(&self.running).insert(name.to_owned(), new);
        if let Some(old) = old {
            let old_model = model_name(name, old.version);
            old.stop();
            loop {
                let keys = self
                    .store
                    .read_model_scan(&old_model, b"", CLEANUP_BATCH_KEYS)?;
                if keys.is_empty() {
                    break;
                }
                let mut batch = ReadModelBatch::new();
                for (key, _) in keys {
                    batch.delete(&old_model, key);
                }
                self.store.commit_read_model(batch)?;
            }
        }
        tracing::info!(projection = %name, version, "rebuild switched");
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
