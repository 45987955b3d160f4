//! Storage-level W1/W2 load: `clients` appenders through the store, then the
//! raw-RocksDB group-commit baseline with the same count, on the same disk.
//!
//! `cargo run --release -p eventfold-benches --bin append-load -- [sync|buffered|nowal] [appends] [clients]`

use eventfold_benches::{RunReport, account_streams, raw_group_commit, store_appenders};
use eventfold_storage::{Durability, EventStore, RocksStore, StoreOptions};

fn print(name: &str, report: &RunReport) {
    let h = &report.latency_us;
    println!(
        "{name:<12} {:>10.0} appends/s   p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  max {:>7} us",
        report.per_second(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let durability = match args.get(1).map(String::as_str) {
        None | Some("sync") => Durability::Sync,
        Some("buffered") => Durability::Buffered,
        Some("nowal") => Durability::NoWal,
        Some(other) => {
            return Err(format!("unknown durability {other}: use sync, buffered or nowal").into());
        }
    };
    let total: u64 = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let clients: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let skip_raw = std::env::var_os("SKIP_RAW").is_some();
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(
        dir.path().join("store"),
        StoreOptions::with_durability(durability),
    )?;
    let streams = account_streams(10_000);
    let report = store_appenders(&store, &streams, clients, total, 1);
    let stats = store.writer_stats();
    print("eventfold", &report);
    println!(
        "             {:.1} events per write batch, {:.1} events per fsync",
        stats.events as f64 / stats.batches.max(1) as f64,
        stats.events as f64 / stats.syncs.max(1) as f64
    );
    if !skip_raw {
        let raw = raw_group_commit(&dir.path().join("raw"), clients, total, durability);
        print("raw rocksdb", &raw);
        println!("ratio        {:.2}", report.per_second() / raw.per_second());
    }
    Ok(())
}
