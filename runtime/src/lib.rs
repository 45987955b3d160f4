//! The eventfold actor runtime.
//!
//! Every aggregate lives as an actix actor that owns its event stream; a
//! shard per core (an actix Arbiter) hosts the actors, and the
//! [`RuntimeHandle`] routes each command by a hash of the aggregate id. An
//! actor decides on a command, appends the events through the store's
//! group-commit writer and answers only once they are durable. The domain and
//! storage crates are re-exported, so a service depends on this crate alone.
//!
//! ```
//! use eventfold_runtime::{Runtime, ExecuteOptions, CommandError, domain::{Aggregate, CommandId, DomainEvent}};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Account { open: bool, balance: u64 }
//!
//! #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
//! enum Event { Opened, Deposited(u64) }
//! impl DomainEvent for Event {
//!     fn event_type(&self) -> &'static str {
//!         match self { Event::Opened => "Opened", Event::Deposited(_) => "Deposited" }
//!     }
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Command { Open, Deposit(u64) }
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! enum Refused { #[error("not open")] NotOpen, #[error("already open")] AlreadyOpen }
//!
//! impl Aggregate for Account {
//!     const KIND: &'static str = "account";
//!     type Command = Command;
//!     type Event = Event;
//!     type Error = Refused;
//!     fn handle(&self, command: Command) -> Result<Vec<Event>, Refused> {
//!         match command {
//!             Command::Open if self.open => Err(Refused::AlreadyOpen),
//!             Command::Open => Ok(vec![Event::Opened]),
//!             Command::Deposit(_) if !self.open => Err(Refused::NotOpen),
//!             Command::Deposit(n) => Ok(vec![Event::Deposited(n)]),
//!         }
//!     }
//!     fn apply(&mut self, event: &Event) {
//!         match event { Event::Opened => self.open = true, Event::Deposited(n) => self.balance += n }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder().temporary().aggregate::<Account>().start()?;
//! # let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! # rt.block_on(async {
//! runtime.execute::<Account>("a1", Command::Open).await?;
//! let once = ExecuteOptions::new().command_id(CommandId::from_name("deposit-1"));
//! let first = runtime.execute_with::<Account>("a1", Command::Deposit(5), once.clone()).await?;
//! let retry = runtime.execute_with::<Account>("a1", Command::Deposit(5), once).await?;
//! assert!(retry.deduplicated && retry.version == first.version);
//! let refused = runtime.execute::<Account>("a2", Command::Deposit(1)).await;
//! assert!(matches!(refused, Err(CommandError::Rejected(Refused::NotOpen))));
//! runtime.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```
//!
//! # Backpressure
//!
//! Every mailbox is bounded (`shard_mailbox_commands_max`,
//! `actor_mailbox_commands_max`, `actor_in_flight_commands_max`, and the
//! store's `queue_appends_max`). A command that meets a full one fails at once
//! with [`CommandError::Overloaded`]; nothing was done and it may be retried.
//!
//! # Timeouts
//!
//! A caller waits at most the command's timeout and then gets
//! [`CommandError::Timeout`]: the command may or may not have been applied,
//! and retrying with the same command id is safe.
//!
//! # Shutdown
//!
//! [`RuntimeHandle::shutdown`] stops intake, lets every aggregate finish what
//! it has taken, closes the store and stops the threads; later calls fail with
//! [`CommandError::ShutDown`]. Dropping the last handle without it stops the
//! threads at once: acknowledged commands are durable either way.
#![deny(missing_docs)]

mod actor;
pub mod bus;
mod consumer;
mod error;
mod handle;
pub mod metric_names;
mod outcome;
pub mod process;
mod process_host;
pub mod projection;
mod registry;
mod settings;
mod shard;
mod state_cache;
mod timeout;

pub use bus::{EventBatch, EventBus};
pub use error::{
    CommandError, LoadError, ProcessError, ProjectionError, ShutdownError, SpawnError, StartError,
};
pub use eventfold_domain as domain;
pub use eventfold_storage as storage;
pub use handle::RuntimeHandle;
pub use outcome::{CommandOutcome, ExecuteOptions};
pub use projection::{
    AfterRetries, ConsumerSettings, ConsumerState, ConsumerStatus, ErrorPolicy, EventHandler,
    HandlerError, ParkedEvent, Projection, ReadModelTx, ReadModelView,
};
pub use settings::{Passivation, Settings};

use actix::prelude::*;
use eventfold_domain::Aggregate;
use eventfold_storage::{Durability, EventStore, MemoryStore, RocksStore, StoreOptions};
use handle::{Inner, Monitor, SystemThread};
use shard::{Shard, Shared};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the runtime keeps its events.
#[derive(Clone, Debug)]
enum Location {
    /// RocksDB in a new temporary directory, removed when the runtime is dropped.
    Temporary,
    /// RocksDB in this directory.
    Path(PathBuf),
    /// In memory: nothing survives the process (for tests).
    Memory,
}

/// Entry point: `Runtime::builder()`.
pub struct Runtime;

impl Runtime {
    /// A builder with default settings and an embedded store in a temporary
    /// directory.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            location: Location::Temporary,
            settings: Settings::default(),
            kinds: Vec::new(),
            memory: None,
            consumers: Vec::new(),
            processes: Vec::new(),
            dispatch: process_host::DispatchTable::new(),
            clock: Arc::new(eventfold_domain::SystemClock),
        }
    }
}

/// Configures and starts a runtime.
pub struct RuntimeBuilder {
    location: Location,
    settings: Settings,
    kinds: Vec<&'static str>,
    memory: Option<MemoryStore>,
    consumers: Vec<registry::Registration>,
    processes: Vec<process_host::ProcessRegistration>,
    dispatch: process_host::DispatchTable,
    clock: Arc<dyn eventfold_domain::Clock>,
}

impl RuntimeBuilder {
    /// Keep the store in this directory (created if missing).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.location = Location::Path(path.into());
        self
    }

    /// Keep the store in a new temporary directory (the default).
    pub fn temporary(mut self) -> Self {
        self.location = Location::Temporary;
        self
    }

    /// Keep events in memory only.
    pub fn in_memory(mut self) -> Self {
        self.location = Location::Memory;
        self
    }

    /// Use this in-memory store (shared with the caller, e.g. to inspect it).
    pub fn memory_store(mut self, store: MemoryStore) -> Self {
        self.location = Location::Memory;
        self.memory = Some(store);
        self
    }

    /// When appends are acknowledged (default `Sync`).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.settings.store.durability = durability;
        self
    }

    /// The store's settings (durability, limits, fault injection).
    pub fn store_options(mut self, options: StoreOptions) -> Self {
        self.settings.store = options;
        self
    }

    /// Number of shards (default: one per core).
    pub fn shards(mut self, shards: usize) -> Self {
        self.settings.shards = shards;
        self
    }

    /// Mailbox bounds: commands waiting per shard and per aggregate actor.
    pub fn mailboxes(mut self, shard_commands_max: usize, actor_commands_max: usize) -> Self {
        self.settings.shard_mailbox_commands_max = shard_commands_max;
        self.settings.actor_mailbox_commands_max = actor_commands_max;
        self
    }

    /// Most commands of one aggregate decided but not yet durable.
    pub fn in_flight_per_aggregate(mut self, commands_max: usize) -> Self {
        self.settings.actor_in_flight_commands_max = commands_max;
        self
    }

    /// When actors are passivated, and how much of the stopped aggregates'
    /// state stays in memory (the state cache) so that reactivating them
    /// skips the store.
    ///
    /// ```
    /// use eventfold_runtime::{Passivation, Runtime};
    /// use std::time::Duration;
    ///
    /// let builder = Runtime::builder().temporary().passivation(Passivation {
    ///     idle_after: Duration::from_secs(60),
    ///     resident_actors_max: 100_000,
    ///     // About a million small states; 0 reads every activation from the store.
    ///     state_cache_bytes_max: 256 << 20,
    /// });
    /// # drop(builder);
    /// ```
    pub fn passivation(mut self, passivation: Passivation) -> Self {
        self.settings.passivation = passivation;
        self
    }

    /// Snapshot every this many events (`None`: never): taken when a
    /// command brings the aggregate that far past its last snapshot, and
    /// written once that command's events are durable.
    pub fn snapshot_every_events(mut self, events: Option<u64>) -> Self {
        self.settings.snapshot_every_events = events;
        self
    }

    /// Default command timeout.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.settings.command_timeout = timeout;
        self
    }

    /// Every setting at once.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Registers an aggregate type.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.kinds.push(A::KIND);
        self.dispatch
            .insert(A::KIND, Arc::new(process_host::TypedDispatch::<A>::new()));
        self
    }

    /// Registers a process manager; `make` builds it when the runtime starts.
    /// See [`process`].
    pub fn process_manager<P: process::ProcessManager>(
        mut self,
        make: impl FnOnce() -> P + Send + 'static,
        settings: process::ProcessSettings,
    ) -> Self {
        let pm = make();
        let name = pm.name().to_owned();
        self.processes.push(process_host::ProcessRegistration {
            name,
            settings,
            make: Box::new(move |config| Box::new(process_host::Host::new(pm, config))),
        });
        self
    }

    /// The clock process-manager timers read (default: the system clock;
    /// tests pass a [`VirtualClock`](eventfold_domain::VirtualClock)).
    pub fn clock(mut self, clock: impl eventfold_domain::Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Registers a projection; `make` builds a handler for each partition
    /// (and for each rebuild).
    pub fn projection<P: Projection>(
        self,
        make: impl Fn() -> P + Send + Sync + 'static,
        settings: ConsumerSettings,
    ) -> Self {
        let name = make().name().to_owned();
        let make = move || consumer::Kind::Projection(Box::new(make()));
        self.register(name, settings, Arc::new(make), true)
    }

    /// Registers an event handler with side effects (at-least-once).
    pub fn event_handler<H: EventHandler>(
        self,
        make: impl Fn() -> H + Send + Sync + 'static,
        settings: ConsumerSettings,
    ) -> Self {
        let name = make().name().to_owned();
        let make = move || consumer::Kind::Handler(Box::new(make()));
        self.register(name, settings, Arc::new(make), false)
    }

    fn register(
        mut self,
        name: String,
        settings: ConsumerSettings,
        make: Arc<dyn Fn() -> consumer::Kind + Send + Sync>,
        projection: bool,
    ) -> Self {
        self.consumers.push(registry::Registration {
            name,
            settings,
            make,
            projection,
        });
        self
    }

    /// Opens the store and starts the actor system on its own threads.
    pub fn start(self) -> Result<RuntimeHandle, StartError> {
        self.settings.validate().map_err(StartError::Setting)?;
        let mut names = HashSet::new();
        for process in &self.processes {
            let name = process.name.as_str();
            check_name("process manager", name, &mut names)?;
            process
                .settings
                .validate()
                .map_err(|e| StartError::Setting(format!("{name}: {e}")))?;
        }
        let mut names = HashSet::new();
        for consumer in &self.consumers {
            let name = consumer.name.as_str();
            check_name("projection or handler", name, &mut names)?;
            if consumer.settings.batch_events_max == 0
                || consumer.settings.catch_up_chunk_events == 0
            {
                return Err(StartError::Setting(format!(
                    "{name}: batch sizes must be at least 1"
                )));
            }
        }
        let mut kinds = HashSet::new();
        for kind in &self.kinds {
            if kind.is_empty() || kind.contains('-') || !kinds.insert(*kind) {
                return Err(StartError::Kind(kind));
            }
        }
        let (store, rocks, temp): (
            Arc<dyn EventStore>,
            Option<RocksStore>,
            Option<tempfile::TempDir>,
        ) = match self.location {
            Location::Memory => {
                let store = self
                    .memory
                    .unwrap_or_else(|| MemoryStore::with_options(self.settings.store.clone()));
                (Arc::new(store), None, None)
            }
            Location::Path(path) => {
                let store = RocksStore::open(&path, self.settings.store.clone())?;
                (Arc::new(store.clone()), Some(store), None)
            }
            Location::Temporary => {
                let dir = tempfile::Builder::new()
                    .prefix("eventfold-")
                    .tempdir()
                    .map_err(StartError::TempDir)?;
                let store = RocksStore::open(dir.path(), self.settings.store.clone())?;
                (Arc::new(store.clone()), Some(store), Some(dir))
            }
        };
        let bus = EventBus::new(self.settings.bus_capacity_batches);
        store.set_commit_listener(Arc::new(bus.clone()));
        let shared = Arc::new(Shared {
            store: Arc::clone(&store),
            settings: self.settings,
            resident: AtomicI64::new(0),
            activations: std::sync::atomic::AtomicU64::new(0),
            state_cache_hits: std::sync::atomic::AtomicU64::new(0),
        });
        let registry = Arc::new(registry::Registry::new(
            Arc::clone(&store),
            bus.clone(),
            self.consumers,
        ));
        registry.start_all().map_err(StartError::System)?;
        let (shards, system) = match start_system(Arc::clone(&shared)) {
            Ok(started) => started,
            Err(error) => {
                registry.stop_all();
                return Err(error);
            }
        };
        let handle = RuntimeHandle::new(Inner {
            shards,
            shared,
            kinds,
            bus: bus.clone(),
            accepting: AtomicBool::new(true),
            system: Mutex::new(Some(system)),
            rocks,
            registry,
            processes: std::sync::OnceLock::new(),
            _temp: temp,
        });
        let environment = process_host::HostEnvironment {
            store,
            bus,
            clock: self.clock,
            dispatch: Arc::new(self.dispatch),
            handle: handle.downgrade(),
        };
        let processes = process_host::Processes::start(self.processes, &environment)
            .map_err(StartError::System)?;
        handle.set_processes(processes);
        Ok(handle)
    }
}

/// Names of projections, handlers and process managers: unique among their
/// kind, 1 to 200 bytes, without the separators the store's names use.
fn check_name<'a>(
    what: &str,
    name: &'a str,
    seen: &mut HashSet<&'a str>,
) -> Result<(), StartError> {
    let invalid = name.is_empty()
        || name.len() > 200
        || name.contains(['\0', '#', '@', '$'])
        || !seen.insert(name);
    if invalid {
        return Err(StartError::Setting(format!(
            "{what} name {name:?}: names must be unique, 1 to 200 bytes, without NUL, '#', '@' or '$'"
        )));
    }
    Ok(())
}

/// Starts the actix system on its own thread, with one Arbiter per shard.
fn start_system(shared: Arc<Shared>) -> Result<(Vec<Addr<Shard>>, SystemThread), StartError> {
    let (started, receive) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("eventfold-system".into())
        .spawn(move || {
            let runner = actix_rt::System::new();
            let result = runner.block_on(async move {
                let mut arbiters = Vec::with_capacity(shared.settings.shards);
                let mut shards = Vec::with_capacity(shared.settings.shards);
                for index in 0..shared.settings.shards {
                    let blocking = shared.settings.blocking_threads_per_shard_max;
                    let arbiter = actix_rt::Arbiter::try_with_tokio_rt(move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .max_blocking_threads(blocking)
                            .thread_name(format!("eventfold-shard-{index}"))
                            .build()
                    })
                    .map_err(|e| e.to_string())?;
                    let shard_shared = Arc::clone(&shared);
                    // The mailbox is created with its bound, here, before the
                    // handle can send: `start_in_arbiter` would create it with
                    // actix's default of 16 and set the bound only once the
                    // arbiter runs the shard, and commands sent in between
                    // were refused as `Overloaded`.
                    let (sender, receiver) =
                        actix::dev::channel::channel(shared.settings.shard_mailbox_commands_max);
                    let spawned = arbiter.handle().spawn_fn(move || {
                        Context::with_receiver(receiver).run(Shard::new(shard_shared));
                    });
                    if !spawned {
                        return Err(format!("the arbiter of shard {index} stopped at start"));
                    }
                    shards.push(Addr::new(sender));
                    arbiters.push(arbiter);
                }
                let monitor = Monitor {
                    last: shared.store.writer_stats(),
                    store: Arc::clone(&shared.store),
                };
                monitor.start();
                Ok::<_, String>((arbiters, shards, actix_rt::System::current()))
            });
            match result {
                Ok((arbiters, shards, system)) => {
                    let _ = started.send(Ok((shards, system)));
                    if let Err(error) = runner.run() {
                        tracing::error!(%error, "the actor system stopped with an error");
                    }
                    for arbiter in arbiters {
                        arbiter.stop();
                        if arbiter.join().is_err() {
                            tracing::error!("a shard thread panicked");
                        }
                    }
                }
                Err(error) => {
                    let _ = started.send(Err(error));
                }
            }
        })
        .map_err(|e| StartError::System(e.to_string()))?;
    match receive.recv() {
        Ok(Ok((shards, system))) => Ok((shards, SystemThread { system, thread })),
        Ok(Err(error)) => Err(StartError::System(error)),
        Err(_) => Err(StartError::System(
            "the actor system thread ended while starting".into(),
        )),
    }
}
