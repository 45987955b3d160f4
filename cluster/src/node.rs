//! `ClusterNode`: one eventfold node of a cluster. It runs a runtime whose
//! store is a [`ClusterStore`] (appends to JetStream, reads from its
//! replica), keeps its membership and claims in etcd, listens for the
//! commands of the partitions it holds, and sends the others' to their
//! owners.

use crate::claims::Claims;
use crate::client::{ClusterClient, RoutedSender, SenderParts};
use crate::follower::{self, Progress};
use crate::log::{Log, LogConfig, LogError};
use crate::ownership::{self, OwnershipConfig};
use crate::partition::partition_of;
use crate::route::{self, ClusterCommandError, RoutedReply, Routes};
use crate::singletons::{FenceClash, Singletons};
use crate::store::ClusterStore;
use eventfold_runtime::Placement;
use eventfold_runtime::domain::Aggregate;
use eventfold_runtime::storage::{Durability, OpenError, RocksStore, StoreOptions};
use eventfold_runtime::{CommandOutcome, ExecuteOptions, Runtime, RuntimeBuilder, RuntimeHandle};
use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Threads of the runtime that serves the node's log traffic (appends,
/// the follower, ownership, command routes).
pub const IO_THREADS: usize = 2;

/// What a node needs to join a cluster.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's name, unique in the cluster.
    pub node: String,
    /// The cluster's name (its etcd keys).
    pub cluster: String,
    /// Partitions of the cluster (the same on every node, for its life).
    pub partitions: u32,
    /// JetStream servers.
    pub nats_urls: Vec<String>,
    /// etcd endpoints.
    pub etcd_endpoints: Vec<String>,
    /// The replica's directory.
    pub dir: PathBuf,
    /// The log's layout.
    pub log: LogConfig,
    /// The lease's time to live.
    pub lease_ttl: Duration,
    /// How often ownership is rebalanced.
    pub rebalance_every: Duration,
    /// Projections run once in the cluster, on the node that holds each
    /// one's claim, their read models written through the log to every
    /// node; `false` (the default): each node runs every projection over
    /// its own replica. Process managers and event handlers always run
    /// once.
    pub projections_once: bool,
}

impl NodeConfig {
    /// A node named `node` of `cluster`, its replica in `dir`.
    pub fn new(cluster: &str, node: &str, dir: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            cluster: cluster.into(),
            partitions: 32,
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            dir: dir.into(),
            log: LogConfig::default(),
            lease_ttl: Duration::from_secs(5),
            rebalance_every: Duration::from_millis(250),
            projections_once: false,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node's own async runtime could not start.
    #[error("the node's I/O runtime: {0}")]
    Io(#[from] std::io::Error),
    /// The replica could not be opened.
    #[error("the replica: {0}")]
    Replica(#[from] OpenError),
    /// The log could not be reached or laid out.
    #[error(transparent)]
    Log(#[from] LogError),
    /// etcd could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The runtime did not start.
    #[error("the runtime: {0}")]
    Runtime(#[from] eventfold_runtime::StartError),
    /// Two process managers share a fence.
    #[error(transparent)]
    Fences(#[from] FenceClash),
    /// Too many partitions.
    #[error("{0} partitions, more than {max}", max = crate::partition::PARTITIONS_MAX)]
    Partitions(u32),
}

/// Configures a node: its aggregates (executed here, and for other nodes
/// when it owns them) and the rest of its runtime.
pub struct NodeBuilder {
    config: NodeConfig,
    routes: Routes,
    runtime: RuntimeBuilder,
    senders: Arc<OnceLock<SenderParts>>,
}

impl NodeBuilder {
    /// Registers `A` with the runtime and routes its commands.
    pub fn aggregate<A: Aggregate>(mut self) -> Self
    where
        A::Error: Serialize + DeserializeOwned,
    {
        self.routes.add::<A>();
        let sender = RoutedSender::<A> {
            parts: Arc::clone(&self.senders),
            kind: std::marker::PhantomData,
        };
        self.runtime = self.runtime.aggregate_sent_by::<A>(Arc::new(sender));
        self
    }

    /// Configures the rest of the runtime (projections, process managers,
    /// settings); its store is the cluster's. Each process manager and
    /// event handler runs once in the cluster, on the node that holds its
    /// claim (see [`crate::singletons`]); projections run on every node,
    /// each over its own replica, or once when
    /// [`NodeConfig::projections_once`] says so.
    pub fn runtime(mut self, configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder) -> Self {
        self.runtime = configure(self.runtime);
        self
    }

    /// Joins the cluster: opens the replica, starts following the log,
    /// registers in etcd, starts the runtime.
    pub fn start(self) -> Result<ClusterNode, NodeError> {
        let config = self.config;
        if config.partitions == 0 || config.partitions > crate::partition::PARTITIONS_MAX {
            return Err(NodeError::Partitions(config.partitions));
        }
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .thread_name(format!("eventfold-{}-io", config.node))
            .enable_all()
            .build()?;
        // The replica is rebuilt from the log whenever it is lost: it
        // waits for no sync of its own (see ARCHITECTURE.md, "Cluster").
        let options = StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        };
        let replica = RocksStore::open(&config.dir, options)?;
        let log = io.block_on(Log::connect(&config.nats_urls, config.log.clone()))?;
        let etcd = io.block_on(etcd_client::Client::connect(&config.etcd_endpoints, None))?;
        let progress = {
            let _entered = io.enter();
            follower::start(log.clone(), replica.clone())
        };
        let claims = Claims::new(config.partitions);
        let runners = self.runtime.single_runners().into_iter().filter(|runner| {
            config.projections_once
                || !matches!(
                    runner.kind,
                    eventfold_runtime::RunnerKind::Projection { .. }
                )
        });
        let singletons = Singletons::new(runners.collect())?;
        let store = ClusterStore::new(
            replica.clone(),
            log.clone(),
            progress.clone(),
            (Arc::clone(&claims), Arc::clone(&singletons)),
            config.partitions,
            io.handle(),
        );
        let client = ClusterClient::from_connection(
            log.client().clone(),
            log.subjects().clone(),
            config.partitions,
        );
        let _ = self.senders.set(SenderParts {
            client: client.clone(),
            claims: Arc::clone(&claims),
            io: io.handle().clone(),
        });
        let runtime = self
            .runtime
            .store(Arc::new(store.clone()), Some(replica.clone()))
            .process_placement(Arc::clone(&singletons) as Arc<dyn Placement>)
            .start()?;
        let (stop, stopped) = watch::channel(false);
        let mut ownership_config =
            OwnershipConfig::new(&config.cluster, &config.node, config.partitions);
        ownership_config.lease_ttl = config.lease_ttl;
        ownership_config.rebalance_every = config.rebalance_every;
        let release: ownership::Release = {
            let runtime = runtime.clone();
            let partitions = config.partitions;
            Arc::new(move |partition| {
                let runtime = runtime.clone();
                Box::pin(async move {
                    runtime
                        .release_streams(move |stream| {
                            partition_of(stream.as_str(), partitions) == partition
                        })
                        .await;
                })
            })
        };
        let parts = ownership::Parts {
            log: log.clone(),
            progress: progress.clone(),
            claims: Arc::clone(&claims),
            release,
            singletons: Arc::clone(&singletons),
        };
        let ownership = io.spawn(ownership::run(
            ownership_config,
            etcd,
            parts,
            stopped.clone(),
        ));
        let routes = Arc::new(self.routes);
        io.spawn(listen(
            log.clone(),
            Arc::clone(&claims),
            routes,
            runtime.clone(),
            stopped,
        ));
        Ok(ClusterNode {
            config,
            io: Some(io),
            runtime,
            store,
            claims,
            singletons,
            progress,
            client,
            stop,
            ownership: Some(ownership),
        })
    }
}

/// One node of a cluster.
pub struct ClusterNode {
    config: NodeConfig,
    io: Option<tokio::runtime::Runtime>,
    runtime: RuntimeHandle,
    store: ClusterStore,
    claims: Arc<Claims>,
    singletons: Arc<Singletons>,
    progress: Progress,
    client: ClusterClient,
    stop: watch::Sender<bool>,
    ownership: Option<tokio::task::JoinHandle<()>>,
}

impl ClusterNode {
    /// A node to configure.
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            routes: Routes::default(),
            runtime: Runtime::builder(),
            senders: Arc::new(OnceLock::new()),
        }
    }

    /// The node's runtime (queries, projections, process managers).
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    /// The node's store.
    pub fn store(&self) -> &ClusterStore {
        &self.store
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.config.node
    }

    /// The partitions this node holds now.
    pub fn partitions(&self) -> Vec<u32> {
        self.claims.held().into_iter().map(|(p, _)| p).collect()
    }

    /// The process managers and event handlers this node runs now (it
    /// holds their claims).
    pub fn process_managers(&self) -> Vec<String> {
        let mut held: Vec<String> = self
            .singletons
            .held()
            .into_iter()
            .filter(|(_, claim)| !claim.draining)
            .map(|(name, _)| name)
            .collect();
        held.sort();
        held
    }

    /// The last log position the replica applied.
    pub fn applied(&self) -> u64 {
        self.progress.applied()
    }

    /// The partition of aggregate `id` of `A`.
    pub fn partition_of<A: Aggregate>(&self, id: &str) -> Option<u32> {
        self.client.partition_of::<A>(id)
    }

    /// Executes a command of `A` on the node that owns its partition:
    /// here, or sent to the owner.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        options: ExecuteOptions,
    ) -> Result<CommandOutcome<A::Event>, ClusterCommandError<A::Error>>
    where
        A::Error: DeserializeOwned,
    {
        let partition = self.client.partition_checked::<A>(id)?;
        if self.claims.active(partition).is_some() {
            let explicit = options.expected_version.is_some();
            return self
                .runtime
                .execute_with::<A>(id, command, options)
                .await
                .map_err(|e| route::local_error(e, partition, explicit));
        }
        // Sent on the node's I/O runtime, whatever runs the caller.
        let io = self
            .io
            .as_ref()
            .map(|io| io.handle().clone())
            .ok_or(ClusterCommandError::OwnerUnavailable { partition })?;
        let client = self.client.clone();
        let id = id.to_owned();
        io.spawn(async move { client.execute::<A>(&id, command, options).await })
            .await
            .map_err(|_| ClusterCommandError::OwnerUnavailable { partition })?
    }

    /// Leaves the cluster: hands every partition off (no new appends,
    /// those under way finish, claims released), stops the runtime, then
    /// the follower, and closes the replica.
    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let (Some(io), Some(ownership)) = (self.io.as_ref(), self.ownership.take()) {
            let _ = io.block_on(ownership);
        }
        if let Err(error) = self.runtime.shutdown_blocking() {
            tracing::warn!(%error, "the node's runtime did not stop cleanly");
        }
        if let Some(io) = self.io.take() {
            io.shutdown_timeout(Duration::from_secs(5));
        }
        self.store.replica().close();
    }
}

/// Listens on the command subject of each partition while it is held.
async fn listen(
    log: Log,
    claims: Arc<Claims>,
    routes: Arc<Routes>,
    runtime: RuntimeHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = claims.subscribe();
    let mut listening: HashMap<u32, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let held: Vec<u32> = claims
            .held()
            .into_iter()
            .filter(|(_, c)| !c.draining)
            .map(|(p, _)| p)
            .collect();
        listening.retain(|partition, task| {
            let keep = held.contains(partition);
            if !keep {
                task.abort();
            }
            keep
        });
        for partition in held {
            if listening.contains_key(&partition) {
                continue;
            }
            let subject = log.subjects().commands(partition);
            let Ok(mut requests) = log.client().subscribe(subject).await else {
                continue; // tried again on the next change
            };
            let client = log.client().clone();
            let routes = Arc::clone(&routes);
            let runtime = runtime.clone();
            let claims = Arc::clone(&claims);
            listening.insert(
                partition,
                tokio::spawn(async move {
                    while let Some(request) = requests.next().await {
                        let Some(reply_to) = request.reply.clone() else {
                            continue;
                        };
                        let client = client.clone();
                        let routes = Arc::clone(&routes);
                        let runtime = runtime.clone();
                        let claims = Arc::clone(&claims);
                        tokio::spawn(async move {
                            let reply = if claims.active(partition).is_some() {
                                routes.handle(runtime, &request.payload, partition).await
                            } else {
                                RoutedReply::OwnerUnavailable(partition)
                            };
                            if let Ok(bytes) = route::encode(&reply) {
                                let _ = client.publish(reply_to, bytes.into()).await;
                            }
                        });
                    }
                }),
            );
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    for (_, task) in listening {
        task.abort();
    }
}
