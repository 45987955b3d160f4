//! The process managers of a runtime: one host thread per partition of
//! each, started in one pass with the runtime's router, and stopped after
//! each has committed what it handled.

use super::control::{HostConfig, HostRun, ProcessControl, ProcessShared};
use super::dispatch::DispatchTable;
use super::records::{PARTITIONS_KEY, model_of};
use super::settings::ProcessSettings;
use crate::command::router::Router;
use crate::error::StartError;
use crate::read::bus::EventBus;
use crate::read::registry::runner_name;
use crate::read::subscription::CONTROL_QUEUE_MAX;
use eventfold_domain::Clock;
use eventfold_storage::Corruption;
use eventfold_storage::EventStore;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A registered process manager: how to make the host of each partition.
pub(crate) struct ProcessRegistration {
    pub name: String,
    pub settings: ProcessSettings,
    pub make: Box<dyn Fn(HostConfig) -> Box<dyn HostRun> + Send>,
}

/// A running process manager: its partitions' hosts, in partition order.
pub(crate) struct RunningProcess {
    pub parts: Vec<RunningPart>,
}

/// The host of one partition.
pub(crate) struct RunningPart {
    pub shared: Arc<ProcessShared>,
    pub control: mpsc::Sender<ProcessControl>,
    pub model: String,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl RunningProcess {
    /// The host of the partition instance `id` lives in.
    pub(crate) fn part_of(&self, id: &str) -> &RunningPart {
        let index = partition_of(id, self.parts.len());
        // `partition_of` is below the count, which is at least 1.
        &self.parts[index.min(self.parts.len().saturating_sub(1))]
    }
}

/// The partition (of `partitions`) that instance `id` lives in: a stable
/// hash (CRC-32C of its bytes), the same in every process and release.
pub(crate) fn partition_of(id: &str, partitions: usize) -> usize {
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(u32::MAX);
    // A u32 remainder always fits a usize on the targets eventfold builds for.
    (crc32c::crc32c(id.as_bytes()) % partitions) as usize
}

/// The running process managers of a runtime.
#[derive(Default)]
pub(crate) struct Processes {
    pub running: HashMap<String, RunningProcess>,
}

/// Everything the hosts share.
pub(crate) struct HostEnvironment {
    pub store: Arc<dyn EventStore>,
    pub bus: EventBus,
    pub clock: Arc<dyn Clock>,
    pub dispatch: Arc<DispatchTable>,
    pub router: Arc<Router>,
    pub upcasters: Arc<crate::evolution::Upcasters>,
    pub keys: Arc<crate::personal::SubjectKeys>,
    pub placement: Option<Arc<dyn crate::runners::Placement>>,
}

impl Processes {
    pub(crate) fn start(
        registrations: Vec<ProcessRegistration>,
        environment: &HostEnvironment,
    ) -> Result<Self, StartError> {
        let mut processes = Processes::default();
        for registration in registrations {
            if let Err(error) = check_partitions(&*environment.store, &registration) {
                processes.stop_all();
                return Err(error);
            }
            let partitions = registration.settings.partitions.max(1);
            let mut parts = Vec::with_capacity(partitions);
            for index in 0..partitions {
                let runner = runner_name(&registration.name, index, partitions);
                match start_part(&registration, (index, partitions), &runner, environment) {
                    Ok(part) => parts.push(part),
                    Err(error) => {
                        processes
                            .running
                            .insert(registration.name.clone(), RunningProcess { parts });
                        processes.stop_all();
                        return Err(error);
                    }
                }
            }
            processes
                .running
                .insert(registration.name.clone(), RunningProcess { parts });
        }
        Ok(processes)
    }

    /// Stops every host after it has committed what it handled. Commands
    /// in flight stay in the outbox and are sent again at the next start.
    pub(crate) fn stop_all(&self) {
        let parts = || self.running.values().flat_map(|p| p.parts.iter());
        for part in parts() {
            part.shared.stopping.store(true, Ordering::SeqCst);
            // Wakes it; with a full mailbox it sees the flag within IDLE_WAIT.
            let _ = part.control.try_send(ProcessControl::Stop);
        }
        for part in parts() {
            let thread = part.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
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

/// Starts the host of partition `partition` of `registration` on a thread
/// of its own.
fn start_part(
    registration: &ProcessRegistration,
    partition: (usize, usize),
    runner: &str,
    environment: &HostEnvironment,
) -> Result<RunningPart, StartError> {
    let shared = Arc::new(ProcessShared::new());
    let (control, receiver) = mpsc::channel(CONTROL_QUEUE_MAX);
    let config = HostConfig {
        settings: registration.settings.clone(),
        store: Arc::clone(&environment.store),
        bus: environment.bus.clone(),
        clock: Arc::clone(&environment.clock),
        dispatch: Arc::clone(&environment.dispatch),
        router: Arc::clone(&environment.router),
        upcasters: Arc::clone(&environment.upcasters),
        control: receiver,
        shared: Arc::clone(&shared),
        placement: environment.placement.clone(),
        partition,
    };
    let host = (registration.make)(config);
    let name = format!("eventfold-pm-{runner}");
    let keys = Arc::clone(&environment.keys);
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // Its own thread: personal values open with the runtime's keys.
            crate::personal::install(&keys);
            host.run()
        })
        .map_err(|source| StartError::Thread { name, source })?;
    Ok(RunningPart {
        shared,
        control,
        model: model_of(runner),
        thread: Mutex::new(Some(thread)),
    })
}

/// Refuses a partition count other than the one the store was written
/// with: each partition's model records the count at its first commit
/// ([`PARTITIONS_KEY`]); a store from before partitions has only
/// `$pm.{name}`, which is one partition.
fn check_partitions(
    store: &dyn EventStore,
    registration: &ProcessRegistration,
) -> Result<(), StartError> {
    let name = &registration.name;
    let configured = registration.settings.partitions.max(1);
    let stored = match stored_partitions(store, &model_of(name))? {
        Some(count) => Some(count),
        None => stored_partitions(store, &model_of(&runner_name(name, 0, 2)))?,
    };
    match stored {
        Some(stored) if stored != configured => Err(StartError::ProcessPartitions {
            name: name.clone(),
            stored,
            configured,
        }),
        _ => Ok(()),
    }
}

/// The partition count recorded in `model`: its [`PARTITIONS_KEY`], or 1
/// for a model with a checkpoint and no count (written before partitions).
fn stored_partitions(store: &dyn EventStore, model: &str) -> Result<Option<usize>, StartError> {
    let read = |e| StartError::ProcessRecords {
        model: model.to_owned(),
        source: e,
    };
    match store.read_model_get(model, PARTITIONS_KEY).map_err(read)? {
        Some(bytes) => {
            let count = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    read(
                        Corruption::read_model_value(
                            model,
                            PARTITIONS_KEY,
                            "a partition count is 4 bytes",
                        )
                        .into(),
                    )
                })?;
            Ok(Some(usize::try_from(count).unwrap_or(usize::MAX)))
        }
        None => Ok(store.checkpoint(model).map_err(read)?.map(|_| 1)),
    }
}
