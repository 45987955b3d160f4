//! The load generator: runs one workload of `../shared/WORKLOADS.md`
//! through the runtime, with its raw-RocksDB baseline in the same run on the
//! same disk, and prints a table (`--json` and `--plot` write the figures).
//!
//! `cargo run --release -p eventfold-benches --bin loadgen -- --workload w1`

#[global_allocator]
static GLOBAL: eventfold_benches::allocator::Global = eventfold_benches::allocator::GLOBAL;

use clap::{Parser, ValueEnum};
use eventfold_benches::clients::Placement;
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
    /// Size of RocksDB's block cache in MiB. Default: the store's (64 MiB); W4: 512
    /// MiB, a quarter of its memory budget.
    #[arg(long)]
    block_cache_mib: Option<usize>,
    /// W4: bytes of the state cache (the state of passivated aggregates kept
    /// in memory) in MiB; 0 turns it off, so that every activation reads the
    /// store. Default: 256 MiB, within the memory budget.
    #[arg(long)]
    state_cache_mib: Option<usize>,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Shards of the runtime. Default: one per core.
    #[arg(long)]
    shards: Option<usize>,
    /// W7: partitions (host threads) of the transfers process manager.
    /// Default: one per shard.
    #[arg(long)]
    process_partitions: Option<usize>,
    /// Where the clients' futures run: on the runtime's shard threads (as
    /// the request handlers of an actix service), or on a thread of their own.
    #[arg(long, value_enum, default_value_t = Placement::Shards)]
    clients_on: Placement,
    /// Skip the raw-RocksDB baseline.
    #[arg(long)]
    no_baseline: bool,
    /// W5: write the log at schema version 0 and upcast every event to
    /// version 1 as the projection catches up.
    #[arg(long)]
    upcast: bool,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency distribution and throughput over time to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
    /// Runs of the workload, each in a process of its own from a fresh
    /// store; the figures are those of the run with the median throughput
    /// (W8: bytes per resident aggregate), the JSON lists every run.
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
        state_cache_bytes: args
            .state_cache_mib
            .map_or(Config::new(args.workload).state_cache_bytes, |m| m << 20),
        shards: args.shards,
        process_partitions: args.process_partitions,
        clients_on: args.clients_on,
        no_baseline: args.no_baseline,
        upcast: args.upcast,
        quiet: args.quiet,
        ..Config::new(args.workload)
    };
    if args.runs > 1 {
        return repeat(&args);
    }
    let report = run(&config)?;
    println!();
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&to_json(&report))?)?;
        println!("figures written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot(&report, path)?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}

/// `--runs N`: each run in a process of its own (so that peak RSS and the
/// heap are its own), then the figures of the run with the median headline
/// figure (`Workload::headline`), with every run listed in the JSON.
fn repeat(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut own_args: Vec<String> = Vec::new();
    let mut skip = false;
    for arg in std::env::args().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        match arg.as_str() {
            "--runs" | "--json" | "--plot" => skip = true,
            a if a.starts_with("--runs=")
                || a.starts_with("--json=")
                || a.starts_with("--plot=") => {}
            _ => own_args.push(arg),
        }
    }
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let json = dir.path().join(format!("run-{i}.json"));
        let plot = dir.path().join(format!("run-{i}.svg"));
        let output = std::process::Command::new(std::env::current_exe()?)
            .args(&own_args)
            .arg("--json")
            .arg(&json)
            .arg("--plot")
            .arg(&plot)
            .stderr(std::process::Stdio::inherit())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            print!("{stdout}");
            return Err(format!("run {} failed", i + 1).into());
        }
        let figures: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
        let (field, unit) = args.workload.headline();
        let figure = figures[field].as_f64().unwrap_or(0.0);
        println!("run {}: {figure:.0} {unit}", i + 1);
        runs.push((figure, figures, stdout, plot));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all: Vec<_> = runs.iter().map(|r| r.1.clone()).collect();
    let (_, mut figures, stdout, plot) = runs.swap_remove(runs.len() / 2);
    println!();
    println!("median of {} runs:", args.runs);
    // The median run's table: its output from the blank line before it.
    let table = stdout.split("\n\n").nth(1).unwrap_or(&stdout);
    for line in table
        .lines()
        .filter(|l| !l.starts_with("figures written") && !l.starts_with("plot written"))
    {
        println!("{line}");
    }
    if let Some(path) = &args.json {
        figures["runs"] = serde_json::Value::Array(all);
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
        println!("figures written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        std::fs::copy(&plot, path)?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}
