//! Append throughput with 64 concurrent appenders, for each durability, and
//! the raw-RocksDB group-commit loop of WORKLOADS.md W1 as the baseline, in
//! the same run on the same disk.
//!
//! `cargo bench -p eventfold-benches --bench append`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventfold_benches::{account_streams, raw_group_commit, store_appenders};
use eventfold_storage::{Durability, RocksStore, StoreOptions};
use std::time::Duration;

const CLIENTS: usize = 64;
const APPENDS_PER_ITERATION: u64 = 12_800;
const ACCOUNTS: usize = 10_000;

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_64_clients");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(APPENDS_PER_ITERATION));
    let streams = account_streams(ACCOUNTS);
    for durability in [Durability::Sync, Durability::Buffered, Durability::NoWal] {
        group.bench_function(format!("raw_rocksdb_{durability:?}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("tempdir");
                    total +=
                        raw_group_commit(dir.path(), CLIENTS, APPENDS_PER_ITERATION, durability)
                            .elapsed;
                }
                total
            })
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), StoreOptions::with_durability(durability))
            .expect("open store");
        group.bench_function(format!("eventfold_{durability:?}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    total += store_appenders(&store, &streams, CLIENTS, APPENDS_PER_ITERATION, i)
                        .elapsed;
                }
                total
            })
        });
        let stats = eventfold_storage::EventStore::writer_stats(&store);
        if stats.batches > 0 {
            println!(
                "eventfold_{durability:?}: {} events in {} batches ({:.1} events per write)",
                stats.events,
                stats.batches,
                stats.events as f64 / stats.batches as f64
            );
        }
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
