//! The process managers of a runtime: one host thread each, started in
//! one pass with the runtime's router, and stopped after each has
//! committed what it handled.

use super::control::{HostConfig, HostRun, ProcessControl, ProcessShared};
use super::dispatch::DispatchTable;
use super::records::model_of;
use super::settings::ProcessSettings;
use crate::command::router::Router;
use crate::error::StartError;
use crate::read::bus::EventBus;
use crate::read::subscription::CONTROL_QUEUE_MAX;
use eventfold_domain::Clock;
use eventfold_storage::EventStore;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

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
            let shared = Arc::new(ProcessShared::new());
            let (control, receiver) = mpsc::channel(CONTROL_QUEUE_MAX);
            let config = HostConfig {
                settings: registration.settings,
                store: Arc::clone(&environment.store),
                bus: environment.bus.clone(),
                clock: Arc::clone(&environment.clock),
                dispatch: Arc::clone(&environment.dispatch),
                router: Arc::clone(&environment.router),
                upcasters: Arc::clone(&environment.upcasters),
                control: receiver,
                shared: Arc::clone(&shared),
                placement: environment.placement.clone(),
            };
            let host = (registration.make)(config);
            let name = format!("eventfold-pm-{}", registration.name);
            let keys = Arc::clone(&environment.keys);
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    // Its own thread: personal values open with the runtime's keys.
                    crate::personal::install(&keys);
                    host.run()
                });
            let thread = match thread {
                Ok(thread) => thread,
                Err(source) => {
                    processes.stop_all();
                    return Err(StartError::Thread { name, source });
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
