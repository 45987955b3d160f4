//! What a process-manager host shares with the runtime that runs it: the
//! control messages it takes, the status it publishes, and what it is
//! started with.

use super::dispatch::DispatchTable;
use super::settings::ProcessSettings;
use crate::command::router::Router;
use crate::error::ProcessError;
use crate::read::bus::EventBus;
use crate::read::projection::ConsumerState;
use eventfold_domain::Clock;
use eventfold_storage::EventStore;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Where a host answers a control message.
pub(crate) type ControlReply = oneshot::Sender<Result<(), ProcessError>>;

/// What the handle can ask of a host.
pub(crate) enum ProcessControl {
    Resume(String, ControlReply),
    Cancel(String, ControlReply),
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

    pub(crate) fn set_state(&self, state: ConsumerState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }
}

/// Everything a host is started with.
pub(crate) struct HostConfig {
    pub settings: ProcessSettings,
    pub store: Arc<dyn EventStore>,
    pub bus: EventBus,
    pub clock: Arc<dyn Clock>,
    pub dispatch: Arc<DispatchTable>,
    pub router: Arc<Router>,
    pub upcasters: Arc<crate::evolution::Upcasters>,
    pub control: mpsc::Receiver<ProcessControl>,
    pub shared: Arc<ProcessShared>,
    pub placement: Option<Arc<dyn crate::runners::Placement>>,
    /// `(index, count)`: the partition of the instances this host runs.
    pub partition: (usize, usize),
}

/// A host with its process manager's type erased.
pub(crate) trait HostRun: Send {
    fn run(self: Box<Self>);
}
