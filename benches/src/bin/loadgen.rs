//! The load generator: runs one workload of `../shared/WORKLOADS.md`
//! through the runtime, with its raw-RocksDB baseline in the same run on the
//! same disk, and prints a table (`--json` and `--plot` write the figures).
//!
//! `cargo run --release -p eventfold-benches --bin loadgen -- --workload w1`

use clap::{Parser, ValueEnum};
use eventfold_benches::report::{plot, table, to_json};
use eventfold_benches::workloads::{Config, Workload, run};
use eventfold_runtime::storage::Durability;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Sync,
    Buffered,
}

#[derive(Parser, Debug)]
#[command(about = "Runs a workload of WORKLOADS.md (W1-W8) and reports its figures")]
struct Args {
    /// Which workload.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Accounts (N). Default: the workload's (10,000; 1,000,000 for W4 and W8).
    #[arg(long)]
    accounts: Option<u64>,
    /// Concurrent clients (C). Default: 64 (256 for W7, 1 for W6).
    #[arg(long)]
    clients: Option<u64>,
    /// Commands (K); events in the store for W5, transfers for W7,
    /// activations for W6 and W8. Default: the workload's.
    #[arg(long)]
    commands: Option<u64>,
    /// Durability of the store. Default: sync (buffered for W2, W5, W8).
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// W6: events in the aggregate's history.
    #[arg(long, default_value_t = 100_000)]
    history: u64,
    /// W4: the memory budget in MiB; the run fails if peak RSS exceeds it.
    #[arg(long, default_value_t = 2048)]
    memory_limit_mib: u64,
    /// W4: resident aggregate actors at most (passivation beyond).
    #[arg(long, default_value_t = 250_000)]
    resident_max: usize,
    /// Size of RocksDB's block cache in MiB. Default: the store's (64 MiB).
    #[arg(long)]
    block_cache_mib: Option<usize>,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Shards of the runtime. Default: one per core.
    #[arg(long)]
    shards: Option<usize>,
    /// Skip the raw-RocksDB baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency distribution and throughput over time to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
    /// Runs of the workload (each from a fresh store); the figures are those
    /// of the run with the median throughput, the JSON lists every run.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = Config {
        accounts: args.accounts,
        clients: args.clients,
        commands: args.commands,
        durability: args.durability.map(|d| match d {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Buffered => Durability::Buffered,
        }),
        history: args.history,
        memory_limit_bytes: args.memory_limit_mib.saturating_mul(1 << 20),
        resident_max: args.resident_max,
        seed: args.seed,
        block_cache_bytes: args
            .block_cache_mib
            .map_or(Config::new(args.workload).block_cache_bytes, |m| m << 20),
        shards: args.shards,
        no_baseline: args.no_baseline,
        quiet: args.quiet,
        ..Config::new(args.workload)
    };
    let mut reports = Vec::new();
    for i in 0..args.runs.max(1) {
        let report = run(&config)?;
        if args.runs > 1 {
            println!(
                "run {}: {:.0} {}/s",
                i + 1,
                report.per_second(),
                report.workload.unit()
            );
        }
        reports.push(report);
    }
    reports.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    let runs: Vec<_> = reports.iter().map(to_json).collect();
    let report = reports.swap_remove(reports.len() / 2);
    println!();
    if args.runs > 1 {
        println!("median of {} runs:", args.runs);
    }
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        let mut json = to_json(&report);
        if args.runs > 1 {
            json["runs"] = serde_json::Value::Array(runs);
        }
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
        println!("figures written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot(&report, path)?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}
