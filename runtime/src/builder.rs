//! The runtime's builder: what a service registers (aggregates,
//! projections, handlers, process managers, settings) and `start`, which
//! opens the store and starts the three parts in one pass: the read side's
//! consumers, the actor system with its shards and router, then the
//! process-manager hosts, which send their commands through that router.

use crate::command::router::Router;
use crate::command::shared::Shared;
use crate::command::system::{SystemThread, start_system};
use crate::error::{InvalidSetting, StartError};
use crate::evolution::Upcasters;
use crate::handle::{Inner, RuntimeHandle};
use crate::personal::SubjectKeys;
use crate::process;
use crate::process::dispatch::{DispatchTable, TypedDispatch};
use crate::process::supervisor::{HostEnvironment, ProcessRegistration, Processes};
use crate::read::bus::EventBus;
use crate::read::consumer;
use crate::read::projection::{ConsumerSettings, EventHandler, Projection};
use crate::read::registry::{self, Registry};
use crate::settings::{Passivation, Settings};
use eventfold_domain::Aggregate;
use eventfold_storage::{Durability, EventStore, MemoryStore, RocksStore, StoreOptions};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the runtime keeps its events.
#[derive(Clone)]
enum Location {
    /// RocksDB in a new temporary directory, removed when the runtime is dropped.
    Temporary,
    /// RocksDB in this directory.
    Path(PathBuf),
    /// In memory: nothing survives the process (for tests).
    Memory,
    /// A store the caller made (a cluster node's), with the RocksDB store
    /// behind it if there is one (for the admin reads).
    Given(Arc<dyn EventStore>, Option<RocksStore>),
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
            dispatch: DispatchTable::new(),
            clock: Arc::new(eventfold_domain::SystemClock),
            upcasters: Upcasters::new(),
            placement: None,
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
    processes: Vec<ProcessRegistration>,
    dispatch: DispatchTable,
    clock: Arc<dyn eventfold_domain::Clock>,
    upcasters: Upcasters,
    placement: Option<Arc<dyn crate::runners::Placement>>,
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

    /// Run on `store`, made and owned by the caller (a cluster node's
    /// store, say); `local` is the RocksDB store behind it, if any, which
    /// [`RuntimeHandle::rocks_store`](crate::RuntimeHandle::rocks_store)
    /// hands out. Shutdown leaves both open: the caller closes them.
    pub fn store(mut self, store: Arc<dyn EventStore>, local: Option<RocksStore>) -> Self {
        self.location = Location::Given(store, local);
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
            .insert(A::KIND, Arc::new(TypedDispatch::<A>::new(None)));
        self
    }

    /// Registers an aggregate type whose commands from process managers
    /// go through `sender` when another node hosts the aggregate (a
    /// cluster node routes them to their partition's owner).
    pub fn aggregate_sent_by<A: Aggregate>(
        mut self,
        sender: Arc<dyn process::CommandSender<A>>,
    ) -> Self {
        self.kinds.push(A::KIND);
        self.dispatch
            .insert(A::KIND, Arc::new(TypedDispatch::<A>::new(Some(sender))));
        self
    }

    /// What a [`Placement`](crate::runners::Placement) may decide for, as
    /// registered so far: every process manager, event handler and
    /// projection (each partition of a partitioned consumer as `name#i`).
    /// The placement says which it places; the others run here always.
    pub fn single_runners(&self) -> Vec<crate::runners::SingleRunner> {
        let processes = self.processes.iter().flat_map(|p| {
            let partitions = p.settings.partitions.max(1);
            (0..partitions).map(move |i| crate::runners::SingleRunner {
                name: registry::runner_name(&p.name, i, partitions),
                kind: crate::runners::RunnerKind::ProcessManager,
            })
        });
        let consumers = self.consumers.iter().flat_map(|c| {
            let partitions = c.settings.partitions.max(1);
            (0..partitions).map(move |i| crate::runners::SingleRunner {
                name: registry::runner_name(&c.name, i, partitions),
                kind: if c.projection {
                    crate::runners::RunnerKind::Projection {
                        name: c.name.clone(),
                    }
                } else {
                    crate::runners::RunnerKind::EventHandler {
                        name: c.name.clone(),
                    }
                },
            })
        });
        processes.chain(consumers).collect()
    }

    /// Decides where each process manager and event handler runs (see
    /// [`Placement`](crate::runners::Placement)); without one, all run here.
    pub fn process_placement(mut self, placement: Arc<dyn crate::runners::Placement>) -> Self {
        self.placement = Some(placement);
        self
    }

    /// Registers a process manager; `make` builds it for each of its
    /// partitions ([`ProcessSettings::partitions`](process::ProcessSettings))
    /// when the runtime starts. See [`process`].
    pub fn process_manager<P: process::ProcessManager>(
        mut self,
        make: impl Fn() -> P + Send + 'static,
        settings: process::ProcessSettings,
    ) -> Self {
        let name = make().name().to_owned();
        self.processes.push(ProcessRegistration {
            name,
            settings,
            make: Box::new(move |config| Box::new(process::host::Host::new(make(), config))),
        });
        self
    }

    /// Adds upcasting steps (see [`evolution`](crate::evolution)): every
    /// path of the runtime that reads events reads them through these, so
    /// aggregates, projections, handlers and process managers see only
    /// current shapes. A type and version given a step twice fails
    /// [`start`](Self::start).
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = std::mem::take(&mut self.upcasters).merge(upcasters);
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
        self.settings.validate()?;
        let mut names = HashSet::new();
        for process in &self.processes {
            let name = process.name.as_str();
            check_name("process manager", name, &mut names)?;
            process.settings.validate().map_err(|e| e.of(name))?;
        }
        let mut names = HashSet::new();
        for consumer in &self.consumers {
            let name = consumer.name.as_str();
            check_name("projection or handler", name, &mut names)?;
            if consumer.settings.batch_events_max == 0
                || consumer.settings.catch_up_chunk_events == 0
            {
                return Err(InvalidSetting::new(
                    format!("{name}: batch_events_max and catch_up_chunk_events"),
                    "must be at least 1",
                )
                .into());
            }
        }
        if let Some((event_type, version)) = self.upcasters.conflicts().first() {
            return Err(InvalidSetting::new(
                format!("upcaster of {event_type} v{version}"),
                "one step per event type and schema version",
            )
            .into());
        }
        let mut kinds = HashSet::new();
        for kind in &self.kinds {
            if kind.is_empty() || kind.contains('-') || !kinds.insert(*kind) {
                return Err(StartError::Kind(kind));
            }
        }
        let owns_store = !matches!(self.location, Location::Given(..));
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
            Location::Given(store, local) => (store, local, None),
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
        let upcasters = Arc::new(self.upcasters);
        let keys = Arc::new(SubjectKeys::new(Arc::clone(&store)));
        let queued = (0..self.settings.shards)
            .map(|_| AtomicI64::new(0))
            .collect();
        let shared = Arc::new(Shared {
            store: Arc::clone(&store),
            upcasters: Arc::clone(&upcasters),
            keys: Arc::clone(&keys),
            settings: self.settings,
            resident: AtomicI64::new(0),
            activations: std::sync::atomic::AtomicU64::new(0),
            state_cache_hits: std::sync::atomic::AtomicU64::new(0),
            queued,
        });
        let registry = Arc::new(Registry::new(
            Arc::clone(&store),
            bus.clone(),
            Arc::clone(&upcasters),
            Arc::clone(&keys),
            self.consumers,
            self.placement.clone(),
        ));
        registry.start_all().map_err(StartError::Projection)?;
        let (shards, system) = match start_system(Arc::clone(&shared)) {
            Ok(started) => started,
            Err(error) => {
                registry.stop_all();
                return Err(error);
            }
        };
        let router = Arc::new(Router::new(shards, shared, kinds));
        let environment = HostEnvironment {
            store,
            bus: bus.clone(),
            clock: self.clock,
            dispatch: Arc::new(self.dispatch),
            router: Arc::clone(&router),
            upcasters,
            keys,
            placement: self.placement,
        };
        let processes = match Processes::start(self.processes, &environment) {
            Ok(processes) => processes,
            Err(error) => {
                abandon(
                    &router,
                    &registry,
                    system,
                    rocks.as_ref().filter(|_| owns_store),
                );
                return Err(error);
            }
        };
        Ok(RuntimeHandle::new(Inner {
            router,
            bus,
            system: Mutex::new(Some(system)),
            rocks,
            owns_store,
            registry,
            processes,
            durable: Arc::default(),
            _temp: temp,
        }))
    }
}

/// Undoes a start that failed after the actor system was running.
fn abandon(router: &Router, registry: &Registry, system: SystemThread, rocks: Option<&RocksStore>) {
    router.stop_accepting();
    registry.stop_all();
    if system.stop().is_err() {
        tracing::error!("the actor system thread panicked");
    }
    if let Some(store) = rocks {
        store.close();
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
        return Err(InvalidSetting::new(
            format!("{what} name {name:?}"),
            "names must be unique, 1 to 200 bytes, without NUL, '#', '@' or '$'",
        )
        .into());
    }
    Ok(())
}
