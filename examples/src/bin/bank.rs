//! The bank: WORKLOADS.md W1 (or W3 with `--hot`), then W7, through the
//! runtime.
//!
//! Opens `--accounts` accounts, then `--clients` concurrent clients issue
//! `--commands` deposits to uniformly random accounts (fixed seed), each a
//! full round trip through the handle. Prints commands/s, latency
//! percentiles, peak RSS and events per fsync, then the raw-RocksDB
//! group-commit baseline with the same count on the same disk.
//!
//! Then W7: 5% of the accounts are closed and `--transfer-clients` clients
//! run `--transfers` transfers between random accounts (5% of them to a
//! closed account), each run by the `transfers` process manager: debit,
//! credit, or refund when the credit is refused. Each client waits for its
//! transfer to finish before it starts the next. Prints finished transfers/s
//! and end-to-end latency (the client sends the debit → it sees the credit or
//! refund in the log), and checks that money is conserved and every transfer
//! finished exactly once.
//!
//! `cargo run --release -p eventfold-examples --bin bank -- --help`

use clap::{Parser, ValueEnum};
use eventfold_examples::balances::{self, Balances};
use eventfold_examples::transfers::{self, TransferProcess};
use eventfold_examples::{Account, AccountCommand, AccountError};
use eventfold_runtime::process::ProcessSettings;
use eventfold_runtime::storage::{Durability, Filter};
use eventfold_runtime::{ConsumerSettings, Runtime, RuntimeHandle};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Sync,
    Buffered,
    Nowal,
}

#[derive(Parser, Debug)]
#[command(about = "The eventfold bank: opens accounts, then runs a deposit load and reports it")]
struct Args {
    /// Accounts to open (N).
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Deposits to issue (K).
    #[arg(long, default_value_t = 200_000)]
    commands: u64,
    /// Concurrent clients (C).
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Durability of the store.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,
    /// W3: every deposit goes to one account.
    #[arg(long)]
    hot: bool,
    /// Seed of the account choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Skip the raw-RocksDB baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Shards (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Run without the balances projection (the write side alone).
    #[arg(long)]
    no_projection: bool,
    /// W7: transfers through the process manager after the deposits (0: none).
    #[arg(long, default_value_t = 100_000)]
    transfers: u64,
    /// W7: concurrent clients, each waiting for its transfer to finish
    /// before it starts the next.
    #[arg(long, default_value_t = 256)]
    transfer_clients: u64,
}

fn progress(total: u64, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar
}

/// Runs `total` commands from `clients` threads; returns elapsed time and latencies.
fn drive(
    runtime: &RuntimeHandle,
    clients: u64,
    total: u64,
    bar: &ProgressBar,
    command: impl Fn(u64, &mut SmallRng) -> (String, AccountCommand) + Send + Sync + 'static,
    seed: u64,
) -> Result<(Duration, Histogram<u64>), String> {
    let command = Arc::new(command);
    let done = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(clients as usize + 1));
    let per_client = total.div_ceil(clients);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (runtime, command, done, barrier) = (
                runtime.clone(),
                Arc::clone(&command),
                Arc::clone(&done),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || -> Result<Histogram<u64>, String> {
                let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(c));
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .map_err(|e| e.to_string())?;
                barrier.wait();
                let start_index = c * per_client;
                for i in start_index..(start_index + per_client).min(total) {
                    let (id, cmd) = command(i, &mut rng);
                    let started = Instant::now();
                    runtime
                        .execute_blocking::<Account>(&id, cmd)
                        .map_err(|e| format!("command on {id} failed: {e}"))?;
                    latency.saturating_record(started.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(latency)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    while handles.iter().any(|h| !h.is_finished()) {
        bar.set_position(done.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    bar.set_position(done.load(Ordering::Relaxed));
    bar.finish();
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for handle in handles {
        let h = handle
            .join()
            .map_err(|_| "a client thread panicked".to_owned())??;
        latency.add(h).map_err(|e| e.to_string())?;
    }
    Ok((elapsed, latency))
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.clients == 0 || args.accounts == 0 {
        return Err("--clients and --accounts must be at least 1".into());
    }
    let durability = match args.durability {
        DurabilityArg::Sync => Durability::Sync,
        DurabilityArg::Buffered => Durability::Buffered,
        DurabilityArg::Nowal => Durability::NoWal,
    };
    let workload = if args.hot {
        "W3 (one hot account)"
    } else {
        "W1 (random accounts)"
    };
    println!(
        "eventfold bank: {workload}, {} accounts, {} deposits, {} clients, {durability:?} durability, {} cores",
        args.accounts,
        args.commands,
        args.clients,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut builder = Runtime::builder()
        .temporary()
        .durability(durability)
        .aggregate::<Account>();
    if !args.no_projection {
        builder = builder.projection(|| Balances, ConsumerSettings::default());
    }
    if args.transfers > 0 {
        builder = builder.process_manager(TransferProcess::default, ProcessSettings::default());
    }
    if let Some(shards) = args.shards {
        builder = builder.shards(shards);
    }
    let runtime = builder.start()?;

    let bar = progress(args.accounts, "open", args.quiet);
    let (open_time, _) = drive(
        &runtime,
        args.clients.min(args.accounts),
        args.accounts,
        &bar,
        |i, _| {
            (
                i.to_string(),
                AccountCommand::Open {
                    owner: format!("owner-{i}"),
                },
            )
        },
        args.seed,
    )?;
    println!("opened {} accounts in {:.2?}", args.accounts, open_time);

    let before = runtime.store().writer_stats();
    // Samples the balances projection's lag (events) while the load runs.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (runtime, sampling) = (runtime.clone(), Arc::clone(&sampling));
        std::thread::spawn(move || {
            let mut lag = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).ok();
            while sampling.load(Ordering::Relaxed) {
                if let (Some(h), Ok(status)) =
                    (lag.as_mut(), runtime.projection_status(balances::NAME))
                {
                    h.saturating_record(status.iter().map(|s| s.lag).max().unwrap_or(0).max(1));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            lag
        })
    };
    let accounts = args.accounts;
    let hot = args.hot;
    let bar = progress(args.commands, "deposit", args.quiet);
    let (elapsed, latency) = drive(
        &runtime,
        args.clients,
        args.commands,
        &bar,
        move |_, rng| {
            let id = if hot { 0 } else { rng.gen_range(0..accounts) };
            (
                id.to_string(),
                AccountCommand::Deposit {
                    amount: rng.gen_range(1..=100),
                },
            )
        },
        args.seed,
    )?;
    let after = runtime.store().writer_stats();
    sampling.store(false, Ordering::Relaxed);
    let lag = sampler.join().map_err(|_| "the lag sampler panicked")?;
    // Read-your-writes: one more deposit, then its effect in the read model.
    let last = runtime.execute_blocking::<Account>("0", AccountCommand::Deposit { amount: 1 })?;
    let position = last.position.ok_or("a deposit writes an event")?;
    let waited = Instant::now();
    if !args.no_projection {
        runtime.wait_for_blocking(balances::NAME, position, Duration::from_secs(60))?;
    }
    let caught_up_in = waited.elapsed();
    let (total, first) = if args.no_projection {
        (None, None)
    } else {
        let view = runtime.query(balances::NAME)?;
        let total = view.get_as::<i128>(balances::TOTAL_KEY)?.unwrap_or(0);
        (
            Some(total),
            Some(view.get_as::<i128>(b"acc-0")?.unwrap_or(0)),
        )
    };
    let per_second = args.commands as f64 / elapsed.as_secs_f64();
    let syncs = after.syncs - before.syncs;
    let events_per_fsync =
        (syncs > 0).then(|| (after.events - before.events) as f64 / syncs as f64);
    let events_per_write =
        (after.events - before.events) as f64 / (after.batches - before.batches).max(1) as f64;

    // Check: every acknowledged command is in the store.
    let expected_events = args.accounts + args.commands + 1;
    let head = runtime.store().head();
    // One pass over the deposits in the log: how many, and their sum.
    let (deposits, stored_total) = {
        let (mut count, mut sum) = (0u64, 0i128);
        let mut from = 1;
        let filter = Filter::event_types(["Deposited"]);
        while from <= head {
            let slice = runtime.store().read_all(from, 65_536, &filter)?;
            for event in &slice.events {
                if let eventfold_examples::AccountEvent::Deposited { amount } =
                    eventfold_runtime::storage::payload::decode(&event.payload)?
                {
                    count += 1;
                    sum += i128::from(amount);
                }
            }
            from = slice.next_position;
        }
        (count, sum)
    };
    if head != expected_events || deposits != args.commands + 1 {
        return Err(format!(
            "lost events: {head} stored, {expected_events} expected, {deposits} deposits"
        )
        .into());
    }
    let w7 = if args.transfers > 0 {
        Some(run_transfers(&runtime, &args)?)
    } else {
        None
    };
    runtime.shutdown_blocking()?;

    let rss = peak_rss_mib();
    println!();
    println!("{:<28} {:>14}", "figure", "eventfold");
    println!("{:<28} {:>14.0}", "commands/s", per_second);
    for (name, q) in [
        ("latency p50 (us)", 0.5),
        ("latency p99 (us)", 0.99),
        ("latency p99.9 (us)", 0.999),
    ] {
        println!("{name:<28} {:>14}", latency.value_at_quantile(q));
    }
    println!("{:<28} {:>14}", "latency max (us)", latency.max());
    if let Some(rss) = rss {
        println!("{:<28} {:>14.1}", "peak RSS (MiB)", rss);
    }
    match events_per_fsync {
        Some(n) => println!("{:<28} {:>14.1}", "events/fsync", n),
        None => println!("{:<28} {:>14}", "events/fsync", "no fsync"),
    }
    println!("{:<28} {:>14.1}", "events/write batch", events_per_write);
    println!(
        "{:<28} {:>14}",
        "events stored / expected",
        format!("{head}/{expected_events}")
    );
    let lag_p50 = lag.as_ref().map_or(0, |h| h.value_at_quantile(0.5));
    let lag_max = lag.as_ref().map_or(0, |h| h.max());
    if let (Some(total), Some(first)) = (total, first) {
        println!("{:<28} {:>14}", "projection lag p50 (events)", lag_p50);
        println!("{:<28} {:>14}", "projection lag max (events)", lag_max);
        println!("{:<28} {:>14.2?}", "read-your-writes wait", caught_up_in);
        println!("{:<28} {:>14}", "balances total", total);
        println!("{:<28} {:>14}", "balance of acc-0", first);
        if total != stored_total {
            return Err(format!(
                "the balances projection says {total}, the log says {stored_total}"
            )
            .into());
        }
    }
    if let Some(w7) = &w7 {
        w7.print();
    }

    let mut baseline = None;
    if !args.no_baseline {
        let dir = tempfile::tempdir()?;
        let raw = eventfold_benches::raw_group_commit(
            dir.path(),
            args.clients as usize,
            args.commands,
            durability,
        );
        println!(
            "{:<28} {:>14.0}   (raw RocksDB, {} threads, one group-commit writer, same count, same disk)",
            "baseline commands/s",
            raw.per_second(),
            args.clients
        );
        println!(
            "{:<28} {:>14.2}",
            "ratio to baseline",
            per_second / raw.per_second()
        );
        baseline = Some(raw.per_second());
    }
    if let Some(path) = args.json {
        let json = serde_json::json!({
            "workload": if args.hot { "W3" } else { "W1" },
            "durability": format!("{durability:?}"),
            "accounts": args.accounts,
            "commands": args.commands,
            "clients": args.clients,
            "commands_per_second": per_second,
            "latency_us_p50": latency.value_at_quantile(0.5),
            "latency_us_p99": latency.value_at_quantile(0.99),
            "latency_us_p999": latency.value_at_quantile(0.999),
            "latency_us_max": latency.max(),
            "peak_rss_mib": rss,
            "events_per_fsync": events_per_fsync,
            "projection_lag_events_p50": lag_p50,
            "projection_lag_events_max": lag_max,
            "baseline_per_second": baseline,
            "ratio_to_baseline": baseline.map(|b| per_second / b),
            "w7": w7.as_ref().map(Transfers::json),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

/// The figures of a W7 run.
struct Transfers {
    started: u64,
    refused_at_source: u64,
    completed: u64,
    compensated: u64,
    seconds: f64,
    end_to_end: Histogram<u64>,
    debit_latency: Histogram<u64>,
    total_money: i128,
    deposited: i128,
}

impl Transfers {
    fn per_second(&self) -> f64 {
        (self.completed + self.compensated) as f64 / self.seconds
    }

    fn print(&self) {
        println!();
        println!("{:<28} {:>14}", "W7 transfers", "eventfold");
        println!("{:<28} {:>14}", "transfers started", self.started);
        println!(
            "{:<28} {:>14}",
            "refused at the source", self.refused_at_source
        );
        println!("{:<28} {:>14}", "completed (credited)", self.completed);
        println!("{:<28} {:>14}", "compensated (refunded)", self.compensated);
        println!("{:<28} {:>14.0}", "finished transfers/s", self.per_second());
        for (name, q) in [
            ("end-to-end p50 (us)", 0.5),
            ("end-to-end p99 (us)", 0.99),
            ("end-to-end p99.9 (us)", 0.999),
        ] {
            println!("{name:<28} {:>14}", self.end_to_end.value_at_quantile(q));
        }
        println!(
            "{:<28} {:>14}",
            "end-to-end max (us)",
            self.end_to_end.max()
        );
        println!(
            "{:<28} {:>14}",
            "debit command p99 (us)",
            self.debit_latency.value_at_quantile(0.99)
        );
        println!(
            "{:<28} {:>14}",
            "money conserved",
            format!("{} = {}", self.total_money, self.deposited)
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "workload": "W7",
            "transfers": self.started,
            "refused_at_source": self.refused_at_source,
            "completed": self.completed,
            "compensated": self.compensated,
            "seconds": self.seconds,
            "transfers_per_s": self.per_second(),
            "end_to_end_us_p50": self.end_to_end.value_at_quantile(0.5),
            "end_to_end_us_p99": self.end_to_end.value_at_quantile(0.99),
            "end_to_end_us_p999": self.end_to_end.value_at_quantile(0.999),
            "end_to_end_us_max": self.end_to_end.max(),
            "total_money": self.total_money.to_string(),
            "deposited": self.deposited.to_string(),
            "money_conserved": self.total_money == self.deposited,
        })
    }
}

/// W7: closes 5% of the accounts, then runs `--transfers` transfers from
/// the clients, waits until the process manager has finished every one, and
/// checks the log.
fn run_transfers(
    runtime: &RuntimeHandle,
    args: &Args,
) -> Result<Transfers, Box<dyn std::error::Error>> {
    let open = (args.accounts - args.accounts / 20).max(1);
    for id in open..args.accounts {
        runtime.execute_blocking::<Account>(&id.to_string(), AccountCommand::Close)?;
    }
    let clients = args.transfer_clients.max(1);
    let total = args.transfers;
    let per_client = total.div_ceil(clients);
    let accounts = args.accounts;
    let started_at = eventfold_runtime::domain::Timestamp::now();
    let bar = progress(total, "transfer", args.quiet);
    let done = Arc::new(AtomicU64::new(0));
    let watcher = Watcher::start(runtime);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (runtime, done) = (runtime.clone(), Arc::clone(&done));
            let waiters = Arc::clone(&watcher.waiters);
            let seed = args.seed.wrapping_add(1000 + c);
            type ClientFigures = (Histogram<u64>, Histogram<u64>, u64);
            std::thread::spawn(move || -> Result<ClientFigures, String> {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .map_err(|e| e.to_string())?;
                let mut end_to_end = latency.clone();
                let mut refused = 0;
                let first = c * per_client;
                for i in first..(first + per_client).min(total) {
                    let from = rng.gen_range(0..open);
                    let to = if accounts > open && rng.gen_bool(0.05) {
                        rng.gen_range(open..accounts)
                    } else {
                        (from + rng.gen_range(1..open.max(2))) % open
                    };
                    let transfer_id = format!("t{i}");
                    let (finished, wait) = std::sync::mpsc::sync_channel(1);
                    lock(&waiters).insert(transfer_id.clone(), finished);
                    let command = AccountCommand::TransferOut {
                        transfer_id: transfer_id.clone(),
                        to: to.to_string(),
                        amount: rng.gen_range(1..=10),
                    };
                    let started = Instant::now();
                    match runtime.execute_blocking::<Account>(&from.to_string(), command) {
                        Ok(_) => {
                            latency.saturating_record(started.elapsed().as_micros() as u64);
                            wait.recv_timeout(Duration::from_secs(120)).map_err(|_| {
                                format!("transfer {transfer_id} did not finish within 120 s")
                            })?;
                            end_to_end.saturating_record(started.elapsed().as_micros() as u64);
                        }
                        Err(eventfold_runtime::CommandError::Rejected(
                            AccountError::InsufficientFunds { .. },
                        )) => {
                            lock(&waiters).remove(&transfer_id);
                            refused += 1;
                        }
                        Err(error) => return Err(format!("transfer t{i} failed: {error}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok((latency, end_to_end, refused))
            })
        })
        .collect();
    while handles.iter().any(|h| !h.is_finished()) {
        bar.set_position(done.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish();
    let mut debit_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut end_to_end = debit_latency.clone();
    let mut refused_at_source = 0;
    for handle in handles {
        let (latency, finished, refused) = handle
            .join()
            .map_err(|_| "a client thread panicked".to_owned())??;
        debit_latency.add(latency)?;
        end_to_end.add(finished)?;
        refused_at_source += refused;
    }
    watcher.stop()?;
    // Every debit handled, every command answered.
    let last_debit = runtime.store().head();
    let waiting = Instant::now();
    loop {
        let status = runtime.process_status(transfers::NAME)?;
        if status.stuck > 0 {
            return Err(format!(
                "{} transfers are stuck: {:?}",
                status.stuck,
                runtime.stuck_instances(transfers::NAME)?
            )
            .into());
        }
        if status.checkpoint >= last_debit && status.outbox == 0 {
            break;
        }
        if waiting.elapsed() > Duration::from_secs(600) {
            return Err(format!("transfers did not finish: {status:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check_transfers(
        runtime,
        started_at,
        (total - refused_at_source, refused_at_source),
        debit_latency,
        end_to_end,
    )
}

/// Audits the log: every transfer debited once and then credited or
/// refunded once; the sum of all balances equals the sum of deposits.
fn check_transfers(
    runtime: &RuntimeHandle,
    started_at: eventfold_runtime::domain::Timestamp,
    (started, refused_at_source): (u64, u64),
    debit_latency: Histogram<u64>,
    end_to_end: Histogram<u64>,
) -> Result<Transfers, Box<dyn std::error::Error>> {
    let audit = transfers::audit(runtime.store())?;
    if audit.open > 0 || audit.completed + audit.compensated != started {
        return Err(format!(
            "{started} transfers debited by acknowledged commands; {} completed, {} compensated, {} unfinished",
            audit.completed, audit.compensated, audit.open
        )
        .into());
    }
    if audit.total_money != audit.deposited {
        return Err(format!(
            "money is not conserved: balances sum to {}, deposits to {}",
            audit.total_money, audit.deposited
        )
        .into());
    }
    let seconds = audit
        .last_finished_us
        .saturating_sub(started_at.as_micros()) as f64
        / 1e6;
    Ok(Transfers {
        started,
        refused_at_source,
        completed: audit.completed,
        compensated: audit.compensated,
        seconds: seconds.max(1e-6),
        end_to_end,
        debit_latency,
        total_money: audit.total_money,
        deposited: audit.deposited,
    })
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

type Waiters =
    Arc<std::sync::Mutex<std::collections::HashMap<String, std::sync::mpsc::SyncSender<()>>>>;

/// Tails the log for transfers that finished (credited or refunded) and
/// wakes the client waiting for each.
struct Watcher {
    waiters: Waiters,
    running: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Watcher {
    fn start(runtime: &RuntimeHandle) -> Self {
        let waiters: Waiters = Arc::default();
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let thread = {
            let (runtime, waiters, running) =
                (runtime.clone(), Arc::clone(&waiters), Arc::clone(&running));
            std::thread::spawn(move || -> Result<(), String> {
                let filter = Filter::event_types(["TransferCredited", "TransferRefunded"]);
                let mut next = runtime.store().head() + 1;
                while running.load(Ordering::Relaxed) {
                    let slice = runtime
                        .store()
                        .read_all(next, 4096, &filter)
                        .map_err(|e| e.to_string())?;
                    for event in &slice.events {
                        let decoded: eventfold_examples::AccountEvent =
                            eventfold_runtime::storage::payload::decode(&event.payload)
                                .map_err(|e| e.to_string())?;
                        if let eventfold_examples::AccountEvent::TransferCredited {
                            transfer_id,
                            ..
                        }
                        | eventfold_examples::AccountEvent::TransferRefunded {
                            transfer_id,
                            ..
                        } = decoded
                            && let Some(waiter) = lock(&waiters).remove(&transfer_id)
                        {
                            let _ = waiter.try_send(());
                        }
                    }
                    if slice.next_position == next {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    next = slice.next_position;
                }
                Ok(())
            })
        };
        Self {
            waiters,
            running,
            thread,
        }
    }

    fn stop(self) -> Result<(), String> {
        self.running.store(false, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the watcher panicked".to_owned())?
    }
}
