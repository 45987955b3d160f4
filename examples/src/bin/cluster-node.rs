//! The bank as one node of a cluster: accounts executed here when their
//! partition is this node's (and for any node that sends them), the
//! balances projection kept on this node's replica, the transfers process
//! manager run here while this node holds its claim. Runs until SIGTERM or
//! SIGINT, then hands its partitions off and exits 0.
//!
//! ```text
//! cluster-node --name node-a --dir /var/lib/eventfold/node-a \
//!     --nats nats://127.0.0.1:4222 --etcd http://127.0.0.1:2379
//! ```

// Every allocation of the process, Rust's and RocksDB's, with mimalloc, as
// the bank's other binaries: the C library's malloc and free took about a
// tenth of a node's CPU; with mimalloc a transfer costs about 6% less CPU
// and a deposit the same (BENCHMARKS.md, "The fourteenth session").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use eventfold_cluster::{ClusterNode, NodeConfig};
use eventfold_examples::Account;
use eventfold_examples::balances::Balances;
use eventfold_examples::transfers::TransferProcess;
use eventfold_runtime::ConsumerSettings;
use eventfold_runtime::process::ProcessSettings;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "The bank as a node of an eventfold cluster")]
struct Args {
    /// The node's name, unique in the cluster.
    #[arg(long)]
    name: String,
    /// The replica's directory.
    #[arg(long)]
    dir: PathBuf,
    /// JetStream servers (comma-separated URLs).
    #[arg(long, value_delimiter = ',', required = true)]
    nats: Vec<String>,
    /// etcd endpoints (comma-separated URLs).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The cluster's name.
    #[arg(long, default_value = "bank")]
    cluster: String,
    /// Partitions (the same on every node).
    #[arg(long, default_value_t = 32)]
    partitions: u32,
    /// The lease's time to live, in seconds.
    #[arg(long, default_value_t = 3)]
    lease_secs: u64,
    /// Copies JetStream keeps of each message.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Shards of the node's runtime.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Run the balances projection once in the cluster (its read model
    /// written through the log to every node) instead of on every node.
    #[arg(long)]
    projections_once: bool,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,eventfold_cluster=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cluster-node: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = NodeConfig::new(&args.cluster, &args.name, &args.dir);
    config.partitions = args.partitions;
    config.nats_urls = args.nats;
    config.etcd_endpoints = args.etcd;
    config.lease_ttl = Duration::from_secs(args.lease_secs);
    config.log.replicas = args.replicas;
    config.projections_once = args.projections_once;
    let shards = args.shards;
    let node = ClusterNode::builder(config)
        .aggregate::<Account>()
        .runtime(move |builder| {
            builder
                .shards(shards)
                .projection(|| Balances, ConsumerSettings::default())
                .process_manager(TransferProcess::default, ProcessSettings::default())
        })
        .start()?;
    eprintln!("cluster-node {}: started", node.name());
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    signals.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<(), std::io::Error>(())
    })?;
    eprintln!("cluster-node {}: leaving", node.name());
    node.shutdown();
    Ok(())
}
