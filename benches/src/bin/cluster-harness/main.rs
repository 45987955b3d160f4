//! The cluster's harness: 3 etcd members, 3 JetStream servers and 3
//! eventfold nodes (`cluster-node`, the bank) on loopback, each with its
//! own directory; a bounded workload of deposits (unique command ids,
//! every acknowledgement recorded) in phases, each with one fault injected
//! by stored PID; the checks after each phase; the figures.
//!
//! ```text
//! cargo build --release -p eventfold-examples --bin cluster-node
//! cargo run --release -p eventfold-benches --bin cluster-harness -- --commands 3000
//! ```

mod check;
mod nodes;

use check::Sent;
use clap::Parser;
use eventfold_cluster::local::LocalServices;
use eventfold_cluster::log::{Log, LogConfig};
use eventfold_cluster::{ClusterClient, ClusterCommandError};
use eventfold_examples::{Account, AccountCommand, AccountError};
use eventfold_runtime::ExecuteOptions;
use eventfold_runtime::domain::CommandId;
use nodes::Nodes;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
#[command(about = "Faults injected into a 3-node eventfold cluster, and the checks after each")]
struct Args {
    /// Deposits per phase.
    #[arg(long, default_value_t = 2000)]
    commands: usize,
    /// Accounts.
    #[arg(long, default_value_t = 200)]
    accounts: usize,
    /// Commands in flight at once.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Partitions.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// The nodes' lease, in seconds.
    #[arg(long, default_value_t = 3)]
    lease_secs: u64,
    /// Rounds of the fault phases (the long form by hand: 10 or more).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Where the services and nodes keep their files (default: a
    /// temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Writes the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// The longest a phase's workload may take: a cluster that stops
/// acknowledging commands fails the run instead of hanging it.
const PHASE_TIME_MAX: Duration = Duration::from_secs(180);

/// The faults, one per phase.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    KillOwner,
    KillStreamLeader,
    KillEtcdLeader,
    PauseOwner,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::None => "none (steady)",
            Fault::KillOwner => "kill -9 of an owner",
            Fault::KillStreamLeader => "kill -9 of the JetStream leader",
            Fault::KillEtcdLeader => "kill -9 of the etcd leader",
            Fault::PauseOwner => "SIGSTOP of an owner past its lease",
        }
    }
}

/// What a fault leaves to start again after its phase.
enum Restore {
    Nothing,
    Node(String),
    Service(String),
}

/// What the workers record.
struct Record {
    sent: Mutex<Vec<Sent>>,
    /// When each acknowledgement came, with its account's partition.
    /// (sent, acknowledged, partition) of each acknowledged command.
    acks: Mutex<Vec<(Instant, Instant, u32)>>,
    done: AtomicUsize,
}

struct Phase {
    fault: Fault,
    commands: usize,
    seconds: f64,
    cpu_micros: Vec<(String, u64)>,
    /// From the fault to the first acknowledgement of a partition it hit
    /// (an owner's faults: the failover).
    failover: Option<Duration>,
    /// The longest time without any acknowledgement from the fault on.
    stall: Option<Duration>,
    faults: Vec<String>,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("cluster-harness: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut services = LocalServices::start(&dir.join("services"), 3, 3)?;
    let common = vec![
        "--partitions".into(),
        args.partitions.to_string(),
        "--lease-secs".into(),
        args.lease_secs.to_string(),
    ];
    let mut nodes = Nodes::start(&services, &dir, 3, &common)?;
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let log = io.block_on(Log::connect(&services.nats_urls(), LogConfig::default()))?;
    let client = io.block_on(ClusterClient::connect(
        &services.nats_urls(),
        "ef",
        args.partitions,
    ))?;
    let mut etcd = io.block_on(etcd_client::Client::connect(
        services.etcd_endpoints(),
        None,
    ))?;
    wait_covered(&io, &mut etcd, args.partitions)?;
    let record = Arc::new(Record {
        sent: Mutex::new(Vec::new()),
        acks: Mutex::new(Vec::new()),
        done: AtomicUsize::new(0),
    });
    // Every account opened first.
    let opened = (0..args.accounts)
        .map(|i| (i.to_string(), 0))
        .collect::<Vec<_>>();
    io.block_on(workload(
        &client,
        &record,
        opened,
        args.workers,
        args.partitions,
    ))?;
    let mut phases = Vec::new();
    let mut faults = vec![Fault::None];
    for _ in 0..args.rounds {
        faults.extend([
            Fault::KillOwner,
            Fault::KillStreamLeader,
            Fault::KillEtcdLeader,
            Fault::PauseOwner,
        ]);
    }
    let mut seed = 0x5eed_u64;
    for fault in faults {
        let commands: Vec<(String, u64)> = (0..args.commands)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let account = (seed >> 33) as usize % args.accounts;
                (account.to_string(), 1 + (seed >> 20) % 100)
            })
            .collect();
        let phase = phase(
            &io,
            &args,
            &mut services,
            &mut nodes,
            &log,
            &client,
            &mut etcd,
            &record,
            fault,
            commands,
        )?;
        report(&phase);
        phases.push(phase);
    }
    // The projections: each node's balances read model against the log.
    let replicas = nodes.stop_all()?;
    let folded = io.block_on(check::fold(&log))?;
    let mut projection_faults = Vec::new();
    for (name, path) in replicas {
        projection_faults.extend(projection_check(&io, &log, &name, &path)?);
    }
    for fault in &projection_faults {
        eprintln!("FAULT (projection): {fault}");
    }
    let clean = projection_faults.is_empty() && phases.iter().all(|p| p.faults.is_empty());
    println!(
        "checks: {} ({} messages in the log, {} commands sent)",
        if clean { "all passed" } else { "FAILED" },
        folded.messages,
        record.sent.lock().map(|s| s.len()).unwrap_or(0)
    );
    if let Some(path) = &args.json {
        std::fs::write(path, figures_json(&phases, clean).to_string())?;
    }
    Ok(clean)
}

/// `ask` until it answers, for at most 30 s: the services may be electing
/// a leader after the last fault.
fn retrying<T, E: std::fmt::Display>(mut ask: impl FnMut() -> Result<T, E>) -> Result<T, String> {
    let started = Instant::now();
    loop {
        match ask() {
            Ok(answer) => return Ok(answer),
            Err(error) if started.elapsed() > Duration::from_secs(30) => {
                return Err(error.to_string());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Waits until etcd says every partition has an owner.
fn wait_covered(
    io: &tokio::runtime::Runtime,
    etcd: &mut etcd_client::Client,
    partitions: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        // etcd may be electing (its leader was just killed): asked again.
        let owners = io
            .block_on(eventfold_cluster::ownership::owners(etcd, "bank"))
            .unwrap_or_default();
        if owners.len() as u32 == partitions {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("only {} of {partitions} partitions owned", owners.len()).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[allow(clippy::too_many_arguments)]
fn phase(
    io: &tokio::runtime::Runtime,
    args: &Args,
    services: &mut LocalServices,
    nodes: &mut Nodes,
    log: &Log,
    client: &ClusterClient,
    etcd: &mut etcd_client::Client,
    record: &Arc<Record>,
    fault: Fault,
    commands: Vec<(String, u64)>,
) -> Result<Phase, Box<dyn std::error::Error>> {
    let count = commands.len();
    let pids = nodes.pids();
    let cpu_before: Vec<(String, u64)> = pids
        .iter()
        .map(|(name, pid)| (name.clone(), nodes::cpu_micros(*pid).unwrap_or(0)))
        .collect();
    record.done.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let work = io.spawn({
        let client = client.clone();
        let record = Arc::clone(record);
        let (workers, partitions) = (args.workers, args.partitions);
        async move { workload(&client, &record, commands, workers, partitions).await }
    });
    // The fault, a third of the way in.
    while record.done.load(Ordering::SeqCst) < count / 3 && !work.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let owners = retrying(|| io.block_on(eventfold_cluster::ownership::owners(etcd, "bank")))?;
    let victim = owners.get(&0).cloned().unwrap_or_else(|| "node-1".into());
    let hit: HashSet<u32> = match fault {
        Fault::KillOwner | Fault::PauseOwner => owners
            .iter()
            .filter(|(_, owner)| **owner == victim)
            .map(|(p, _)| *p)
            .collect(),
        _ => (0..args.partitions).collect(),
    };
    let fault_at = Instant::now();
    // What comes back after the phase: a node or a service killed.
    let restore = match fault {
        Fault::None => Restore::Nothing,
        Fault::KillOwner => {
            nodes.kill(&victim)?;
            Restore::Node(victim.clone())
        }
        Fault::KillStreamLeader => {
            let leader = retrying(|| io.block_on(nodes::stream_leader(log)))?;
            services.kill(&leader)?;
            Restore::Service(leader)
        }
        Fault::KillEtcdLeader => {
            let leader = retrying(|| io.block_on(nodes::etcd_leader(services)))?;
            services.kill(&leader)?;
            Restore::Service(leader)
        }
        Fault::PauseOwner => {
            let pid = nodes.pid(&victim)?;
            eventfold_cluster::local::signal_pid(pid, libc::SIGSTOP)?;
            std::thread::sleep(Duration::from_secs(args.lease_secs * 2 + 1));
            eventfold_cluster::local::signal_pid(pid, libc::SIGCONT)?;
            Restore::Nothing
        }
    };
    let outcome = io.block_on(work)?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_micros = cpu_before
        .into_iter()
        .filter_map(|(name, before)| {
            let pid = *pids.get(&name)?;
            Some((name, nodes::cpu_micros(pid)?.saturating_sub(before)))
        })
        .collect();
    match restore {
        Restore::Nothing => {}
        Restore::Node(name) => nodes.restart(&name)?,
        Restore::Service(name) => services.restart(&name)?,
    }
    let acks: Vec<(Instant, Instant, u32)> = record
        .acks
        .lock()
        .map(|acks| {
            acks.iter()
                .filter(|(_, at, _)| *at > fault_at)
                .copied()
                .collect()
        })
        .unwrap_or_default();
    // The first command sent after the fault to a partition it hit, from
    // the fault to its acknowledgement.
    let failover = match fault {
        Fault::KillOwner | Fault::PauseOwner => acks
            .iter()
            .filter(|(sent, _, partition)| *sent > fault_at && hit.contains(partition))
            .map(|(_, at, _)| *at - fault_at)
            .min(),
        _ => None,
    };
    let stall = match fault {
        Fault::None => None,
        _ => {
            let mut times: Vec<Instant> = acks.iter().map(|(_, at, _)| *at).collect();
            times.sort();
            let mut last = fault_at;
            let mut longest = Duration::ZERO;
            for at in times {
                longest = longest.max(at - last);
                last = at;
            }
            Some(longest)
        }
    };
    let mut faults = Vec::new();
    if let Err(error) = outcome {
        faults.push(error);
    }
    wait_covered(io, etcd, args.partitions)?;
    let folded = io.block_on(check::fold(log))?;
    let sent = record.sent.lock().map(|s| s.clone()).unwrap_or_default();
    faults.extend(check::against(&sent, &folded));
    Ok(Phase {
        fault,
        commands: count,
        seconds,
        cpu_micros,
        failover,
        stall,
        faults,
    })
}

/// Sends every command, `workers` at a time, each retried with its command
/// id while the owner is unavailable (at most a minute).
async fn workload(
    client: &ClusterClient,
    record: &Arc<Record>,
    commands: Vec<(String, u64)>,
    workers: usize,
    partitions: u32,
) -> Result<(), String> {
    let queue = Arc::new(Mutex::new(commands.into_iter()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (client, record, queue) = (client.clone(), Arc::clone(record), Arc::clone(&queue));
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((account, amount)) = next else {
                    return Ok::<(), String>(());
                };
                if started.elapsed() > PHASE_TIME_MAX {
                    return Err(format!(
                        "the phase did not finish within {PHASE_TIME_MAX:?}: commands stopped being acknowledged"
                    ));
                }
                let command_id = CommandId::random();
                let command = if amount == 0 {
                    AccountCommand::Open {
                        owner: format!("owner {account}"),
                    }
                } else {
                    AccountCommand::Deposit { amount }
                };
                let partition = client
                    .partition_of::<Account>(&account)
                    .unwrap_or(partitions);
                let sent_at = Instant::now();
                let acknowledged = send(&client, &account, command, command_id).await?;
                if acknowledged.is_some()
                    && let Ok(mut acks) = record.acks.lock()
                {
                    acks.push((sent_at, Instant::now(), partition));
                }
                if let Ok(mut sent) = record.sent.lock() {
                    sent.push(Sent {
                        account,
                        amount,
                        command_id,
                        acknowledged,
                    });
                }
                record.done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// One command until it is acknowledged (its version and position) or
/// given up (`None`: its outcome unknown).
async fn send(
    client: &ClusterClient,
    account: &str,
    command: AccountCommand,
    command_id: CommandId,
) -> Result<Option<(u64, u64)>, String> {
    let started = Instant::now();
    loop {
        let options = ExecuteOptions::new()
            .command_id(command_id)
            .timeout(Duration::from_secs(5));
        match client
            .execute::<Account>(account, command.clone(), options)
            .await
        {
            Ok(outcome) => return Ok(Some((outcome.version, outcome.position.unwrap_or(0)))),
            Err(ClusterCommandError::Rejected(AccountError::AlreadyOpen)) => return Ok(None),
            Err(
                ClusterCommandError::OwnerUnavailable { .. }
                | ClusterCommandError::Moved { .. }
                | ClusterCommandError::Timeout(_),
            ) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(
                ClusterCommandError::OwnerUnavailable { .. }
                | ClusterCommandError::Moved { .. }
                | ClusterCommandError::Timeout(_),
            ) => {
                return Ok(None);
            }
            Err(error) => return Err(format!("account {account}: {error}")),
        }
    }
}

/// A node's balances read model against the log's fold.
fn projection_check(
    io: &tokio::runtime::Runtime,
    log: &Log,
    name: &str,
    path: &std::path::Path,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    use eventfold_runtime::storage::{EventStore, RocksStore, StoreOptions, payload};
    let store = RocksStore::open(path, StoreOptions::default())?;
    let model = eventfold_runtime::inspect::read_model_name(&store, "balances")?;
    let checkpoint = store.checkpoint(&model)?.unwrap_or(0);
    let head = store.head();
    let mut faults = Vec::new();
    if checkpoint > head {
        faults.push(format!(
            "{name}: the projection is at {checkpoint}, past its replica's {head}"
        ));
    }
    // The node may have stopped before its replica or its projection
    // caught up: its read model must be the fold of the log up to its
    // checkpoint, exactly.
    println!("{name}: replica at {head}, balances projection at {checkpoint}");
    let folded = io.block_on(check::fold_until(log, checkpoint))?;
    for (account, balance) in &folded.balances {
        let held: i128 = match store.read_model_get(&model, account.as_bytes())? {
            Some(bytes) => payload::decode(&bytes)?,
            None => 0,
        };
        if held != *balance {
            faults.push(format!(
                "{name}: {account} is {held} in its projection, {balance} in the log up to {checkpoint}"
            ));
        }
    }
    store.close();
    Ok(faults)
}

fn report(phase: &Phase) {
    let cpu: u64 = phase.cpu_micros.iter().map(|(_, c)| c).sum();
    println!(
        "phase {:<36} {:>6} commands in {:>6.2} s: {:>7.0}/s, CPU {:>6.1} µs per command over 3 nodes{}{}",
        phase.fault.name(),
        phase.commands,
        phase.seconds,
        phase.commands as f64 / phase.seconds,
        cpu as f64 / phase.commands as f64,
        phase
            .failover
            .map(|f| format!(", failover {:.2} s", f.as_secs_f64()))
            .unwrap_or_default()
            + &phase
                .stall
                .map(|f| format!(", longest stall {:.2} s", f.as_secs_f64()))
                .unwrap_or_default(),
        if phase.faults.is_empty() {
            ", checks passed"
        } else {
            ", CHECKS FAILED"
        }
    );
    for fault in &phase.faults {
        eprintln!("FAULT: {fault}");
    }
}

fn figures_json(phases: &[Phase], clean: bool) -> serde_json::Value {
    serde_json::json!({
        "clean": clean,
        "phases": phases.iter().map(|p| serde_json::json!({
            "fault": p.fault.name(),
            "commands": p.commands,
            "seconds": p.seconds,
            "commands_per_s": p.commands as f64 / p.seconds,
            "cpu_us_per_command_by_node": p.cpu_micros.iter()
                .map(|(n, c)| (n.clone(), serde_json::json!(*c as f64 / p.commands as f64)))
                .collect::<serde_json::Map<_, _>>(),
            "failover_s": p.failover.map(|f| f.as_secs_f64()),
            "longest_stall_s": p.stall.map(|f| f.as_secs_f64()),
            "faults": p.faults,
        })).collect::<Vec<_>>(),
    })
}
