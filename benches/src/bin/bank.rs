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
//! `cargo run --release -p eventfold-benches --bin bank -- --help`

#[global_allocator]
static GLOBAL: eventfold_benches::allocator::Global = eventfold_benches::allocator::GLOBAL;

use clap::{Parser, ValueEnum};
use eventfold_benches::clients::{Clients, Placement, Refusals, drive};
use eventfold_benches::measure::{peak_rss_bytes, progress};
use eventfold_benches::transfers::{TransferLoad, Transfers, run_transfers};
use eventfold_benches::workloads::open_command;
use eventfold_examples::balances::{self, Balances};
use eventfold_examples::transfers::TransferProcess;
use eventfold_examples::{Account, AccountCommand};
use eventfold_runtime::process::ProcessSettings;
use eventfold_runtime::storage::{Durability, Filter};
use eventfold_runtime::{ConsumerSettings, Runtime};
use hdrhistogram::Histogram;
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    /// Where the clients' futures run: on the runtime's shard threads, or
    /// on a thread of their own.
    #[arg(long, value_enum, default_value_t = Placement::Shards)]
    clients_on: Placement,
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
        // One host thread of the transfers process manager per shard, as
        // loadgen's W7 runs it.
        let partitions = args
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let settings = ProcessSettings {
            partitions,
            ..ProcessSettings::default()
        };
        builder = builder.process_manager(TransferProcess::default, settings);
    }
    if let Some(shards) = args.shards {
        builder = builder.shards(shards);
    }
    let runtime = builder.start()?;

    let opened = drive(
        &runtime,
        Clients {
            count: args.clients,
            on: args.clients_on,
        },
        args.accounts,
        progress(args.accounts, "open", args.quiet),
        args.seed,
        Refusals::Fail,
        |i, _| open_command(i),
    )?;
    println!(
        "opened {} accounts in {:.2?}",
        args.accounts, opened.elapsed
    );

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
    let driven = drive(
        &runtime,
        Clients {
            count: args.clients,
            on: args.clients_on,
        },
        args.commands,
        progress(args.commands, "deposit", args.quiet),
        args.seed,
        Refusals::Fail,
        move |_, rng| {
            let id = if hot { 0 } else { rng.gen_range(0..accounts) };
            (
                id.to_string(),
                AccountCommand::Deposit {
                    amount: rng.gen_range(1..=100),
                },
            )
        },
    )?;
    let (elapsed, latency) = (driven.elapsed, driven.latency);
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
        Some(run_transfers(
            &runtime,
            &TransferLoad {
                accounts: args.accounts,
                transfers: args.transfers,
                clients: Clients {
                    count: args.transfer_clients,
                    on: args.clients_on,
                },
                seed: args.seed,
                quiet: args.quiet,
            },
        )?)
    } else {
        None
    };
    runtime.shutdown_blocking()?;

    let rss = peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64);
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
        print_transfers(w7);
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
            "w7": w7.as_ref().map(transfers_json),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

fn print_transfers(w7: &Transfers) {
    println!();
    println!("{:<28} {:>14}", "W7 transfers", "eventfold");
    println!("{:<28} {:>14}", "transfers started", w7.started);
    println!(
        "{:<28} {:>14}",
        "refused at the source", w7.refused_at_source
    );
    println!("{:<28} {:>14}", "completed (credited)", w7.completed);
    println!("{:<28} {:>14}", "compensated (refunded)", w7.compensated);
    println!("{:<28} {:>14.0}", "finished transfers/s", w7.per_second());
    for (name, q) in [
        ("end-to-end p50 (us)", 0.5),
        ("end-to-end p99 (us)", 0.99),
        ("end-to-end p99.9 (us)", 0.999),
    ] {
        println!("{name:<28} {:>14}", w7.end_to_end.value_at_quantile(q));
    }
    println!("{:<28} {:>14}", "end-to-end max (us)", w7.end_to_end.max());
    println!(
        "{:<28} {:>14}",
        "debit command p99 (us)",
        w7.debit_latency.value_at_quantile(0.99)
    );
    println!(
        "{:<28} {:>14}",
        "money conserved",
        format!("{} = {}", w7.total_money, w7.deposited)
    );
}

fn transfers_json(w7: &Transfers) -> serde_json::Value {
    serde_json::json!({
        "workload": "W7",
        "transfers": w7.started,
        "refused_at_source": w7.refused_at_source,
        "completed": w7.completed,
        "compensated": w7.compensated,
        "seconds": w7.seconds,
        "transfers_per_s": w7.per_second(),
        "end_to_end_us_p50": w7.end_to_end.value_at_quantile(0.5),
        "end_to_end_us_p99": w7.end_to_end.value_at_quantile(0.99),
        "end_to_end_us_p999": w7.end_to_end.value_at_quantile(0.999),
        "end_to_end_us_max": w7.end_to_end.max(),
        "total_money": w7.total_money.to_string(),
        "deposited": w7.deposited.to_string(),
        "money_conserved": w7.total_money == w7.deposited,
    })
}
