//! The cluster's harness: 3 etcd members, 3 JetStream servers and 3
//! eventfold nodes (`cluster-node`, the bank) on loopback, each with its
//! own directory; a bounded workload of deposits and transfers (unique
//! command ids, every acknowledgement recorded) in phases: deposits alone
//! (W1's shape), transfers alone (W7's: each settled by the transfers
//! process manager, which runs on one node), then a mix with one fault
//! injected by stored PID per phase; the checks after each phase; the
//! figures.
//!
//! ```text
//! cargo build --release -p eventfold-examples --bin cluster-node
//! cargo run --release -p eventfold-benches --bin cluster-harness -- --commands 3000
//! ```

mod check;
mod nodes;
mod work;

use check::Sent;
use clap::Parser;
use eventfold_cluster::ClusterClient;
use eventfold_cluster::local::LocalServices;
use eventfold_cluster::log::{Log, LogConfig};
use nodes::Nodes;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use work::{Order, workload};

#[derive(Parser, Clone)]
#[command(about = "Faults injected into a 3-node eventfold cluster, and the checks after each")]
struct Args {
    /// Commands per phase.
    #[arg(long, default_value_t = 2000)]
    commands: usize,
    /// Of the commands of a fault phase, the percentage that are
    /// transfers (the others are deposits).
    #[arg(long, default_value_t = 25)]
    transfer_share: u64,
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
    /// The nodes run the balances projection once in the cluster instead
    /// of on every node.
    #[arg(long)]
    projections_once: bool,
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

/// The longest the transfers of a phase may take to settle after its
/// commands were acknowledged.
const SETTLE_TIME_MAX: Duration = Duration::from_secs(120);

/// What every account is funded with before the phases.
const FUNDING: u64 = 1_000_000;

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
            Fault::KillOwner => "kill -9 of an owner (runs transfers)",
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
    label: &'static str,
    fault: Fault,
    commands: usize,
    /// Transfers among the commands.
    transfers: usize,
    /// From the phase's start until every transfer was settled.
    settled: Option<Duration>,
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
    let mut common = vec![
        "--partitions".into(),
        args.partitions.to_string(),
        "--lease-secs".into(),
        args.lease_secs.to_string(),
    ];
    if args.projections_once {
        common.push("--projections-once".into());
    }
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
    // Every account opened, then funded.
    for order in [Order::Open, Order::Deposit(FUNDING)] {
        let orders = (0..args.accounts)
            .map(|i| (i.to_string(), order.clone()))
            .collect::<Vec<_>>();
        io.block_on(workload(
            &client,
            &record,
            orders,
            args.workers,
            args.partitions,
        ))?;
    }
    let mut phases = Vec::new();
    let mut plan = vec![
        ("steady: deposits (W1)", Fault::None, 0),
        ("steady: transfers (W7)", Fault::None, 100),
    ];
    for _ in 0..args.rounds {
        for fault in [
            Fault::KillOwner,
            Fault::KillStreamLeader,
            Fault::KillEtcdLeader,
            Fault::PauseOwner,
        ] {
            plan.push((fault.name(), fault, args.transfer_share.min(100)));
        }
    }
    let mut seed = 0x5eed_u64;
    let mut transfers = 0u64;
    for (label, fault, share) in plan {
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 20
        };
        let commands: Vec<(String, Order)> = (0..args.commands)
            .map(|_| {
                let account = next() as usize % args.accounts;
                let amount = 1 + next() % 100;
                let order = if next() % 100 < share {
                    transfers += 1;
                    let to = (account + 1 + next() as usize % (args.accounts - 1).max(1))
                        % args.accounts;
                    Order::Transfer {
                        id: format!("t{transfers}"),
                        to: to.to_string(),
                        amount,
                    }
                } else {
                    Order::Deposit(amount)
                };
                (account.to_string(), order)
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
            (label, fault),
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
    (label, fault): (&'static str, Fault),
    commands: Vec<(String, Order)>,
) -> Result<Phase, Box<dyn std::error::Error>> {
    let count = commands.len();
    let transfers = commands
        .iter()
        .filter(|(_, order)| matches!(order, Order::Transfer { .. }))
        .count();
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
    // An owner killed is the one that runs the transfers process manager
    // (it owns partitions too); an owner paused, partition 0's.
    let runs_transfers = retrying(|| {
        io.block_on(eventfold_cluster::ownership::singleton_holders(
            etcd, "bank",
        ))
    })?
    .remove(eventfold_examples::transfers::NAME);
    let victim = match (fault, runs_transfers) {
        (Fault::KillOwner, Some(holder)) => holder,
        _ => owners.get(&0).cloned().unwrap_or_else(|| "node-1".into()),
    };
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
    const PHASE_TIME_LIMIT: Duration =
        Duration::from_secs(work::PHASE_TIME_MAX.as_secs() + SETTLE_TIME_MAX.as_secs());
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
    // Every transfer settled by the process manager, wherever it runs.
    let mut folded = io.block_on(check::fold(log))?;
    while folded.open_transfers() > 0 && started.elapsed() < PHASE_TIME_LIMIT {
        std::thread::sleep(Duration::from_millis(100));
        folded = io.block_on(check::fold(log))?;
    }
    let settled = (transfers > 0).then(|| started.elapsed());
    // The nodes' CPU from the phase's start until its transfers settled.
    let cpu_micros = cpu_before
        .into_iter()
        .filter_map(|(name, before)| {
            let pid = *pids.get(&name)?;
            Some((name, nodes::cpu_micros(pid)?.saturating_sub(before)))
        })
        .collect();

    if folded.open_transfers() > 0 {
        faults.push(format!(
            "{} transfers still open {SETTLE_TIME_MAX:?} after the phase",
            folded.open_transfers()
        ));
    }
    let sent = record.sent.lock().map(|s| s.clone()).unwrap_or_default();
    faults.extend(check::against(&sent, &folded));
    Ok(Phase {
        label,
        fault,
        commands: count,
        transfers,
        settled,
        seconds,
        cpu_micros,
        failover,
        stall,
        faults,
    })
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
    let transfers = match phase.settled {
        Some(settled) => format!(
            ", {} transfers settled in {:.2} s ({:.0}/s)",
            phase.transfers,
            settled.as_secs_f64(),
            phase.transfers as f64 / settled.as_secs_f64()
        ),
        None => String::new(),
    };
    println!(
        "phase {:<36} {:>6} commands in {:>6.2} s: {:>7.0}/s, CPU {:>6.1} µs per command over 3 nodes{transfers}{}{}",
        phase.label,
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
            "phase": p.label,
            "fault": p.fault.name(),
            "commands": p.commands,
            "transfers": p.transfers,
            "transfers_settled_s": p.settled.map(|s| s.as_secs_f64()),
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
