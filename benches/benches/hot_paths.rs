//! The hot paths one at a time: a record's encoding and decoding, one append
//! by batch size, an activation from a snapshot, one command's round trip
//! through the runtime, and a projection applying batches.
//!
//! `cargo bench -p eventfold-benches --bench hot_paths`

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eventfold_benches::deposit_event;
use eventfold_benches::workloads::new_event;
use eventfold_examples::balances::{self, Balances};
use eventfold_examples::{Account, AccountCommand, AccountEvent};
use eventfold_runtime::domain::{ExpectedVersion, StreamId, Timestamp};
use eventfold_runtime::storage::{Durability, EventStore, RocksStore, StoreOptions, decoders};
use eventfold_runtime::{ConsumerSettings, Passivation, Runtime, RuntimeHandle};
use std::time::{Duration, Instant};

/// Events of the aggregate activated from its snapshot.
const ACTIVATION_HISTORY: u64 = 10_000;
/// Events a projection rebuild applies per iteration.
const PROJECTION_EVENTS: u64 = 20_000;
/// Events per append when the projection's store is filled.
const FILL_EVENTS_PER_APPEND: u64 = 100;
/// How often a rebuild's progress is polled.
const POLL_EVERY: Duration = Duration::from_micros(200);

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    let stream = StreamId::new("acc-42").expect("valid stream id");
    let event = deposit_event(7);
    let now = Timestamp::now();
    let bytes = decoders::encode_record(&stream, &event, 1_000_000, 42, now);
    let key = 1_000_000u64.to_be_bytes();
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode", |b| {
        b.iter(|| decoders::encode_record(&stream, &event, 1_000_000, 42, now))
    });
    group.bench_function("decode", |b| {
        b.iter(|| decoders::record(&key, &bytes).expect("valid record"))
    });
    group.finish();
}

fn append_by_batch_size(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_one_batch");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for durability in [Durability::Buffered, Durability::Sync] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), StoreOptions::with_durability(durability))
            .expect("open store");
        let stream = StreamId::new("acc-1").expect("valid stream id");
        for events in [1usize, 10, 100, 1000] {
            group.throughput(Throughput::Elements(events as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{durability:?}"), events),
                &events,
                |b, &events| {
                    b.iter_batched(
                        || (0..events as u64).map(deposit_event).collect::<Vec<_>>(),
                        |batch| {
                            store
                                .append(&stream, ExpectedVersion::Any, batch)
                                .expect("append")
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
        store.close();
    }
    group.finish();
}

fn runtime(path: &std::path::Path, durability: Durability) -> RuntimeHandle {
    Runtime::builder()
        .path(path)
        .durability(durability)
        .aggregate::<Account>()
        .start()
        .expect("start runtime")
}

fn open(runtime: &RuntimeHandle, id: &str) {
    runtime
        .execute_blocking::<Account>(id, AccountCommand::Open { owner: id.into() })
        .expect("open account");
}

fn command_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("command_round_trip");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for durability in [Durability::Buffered, Durability::Sync] {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = runtime(dir.path(), durability);
        open(&runtime, "1");
        group.bench_function(format!("deposit_{durability:?}"), |b| {
            b.iter(|| {
                runtime
                    .execute_blocking::<Account>("1", AccountCommand::Deposit { amount: 1 })
                    .expect("deposit")
            })
        });
        group.bench_function(format!("refused_{durability:?}"), |b| {
            b.iter(|| {
                runtime
                    .execute_blocking::<Account>("1", AccountCommand::Deposit { amount: 0 })
                    .expect_err("a deposit of 0 is refused")
            })
        });
        runtime.shutdown_blocking().expect("shutdown");
    }
    group.finish();
}

fn activation_from_snapshot(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let runtime = runtime(dir.path(), Durability::Buffered);
        open(&runtime, "big");
        open(&runtime, "small");
        for _ in 1..ACTIVATION_HISTORY {
            runtime
                .execute_blocking::<Account>("big", AccountCommand::Deposit { amount: 1 })
                .expect("deposit");
        }
        runtime.shutdown_blocking().expect("shutdown");
    }
    // One shard, one resident actor: a command to the other account
    // passivates the first.
    let runtime = Runtime::builder()
        .path(dir.path())
        .shards(1)
        .passivation(Passivation {
            idle_after: Duration::from_secs(300),
            resident_actors_max: 1,
            // Activation reads the store: the state cache is what it avoids.
            state_cache_bytes_max: 0,
        })
        .aggregate::<Account>()
        .start()
        .expect("start runtime");
    let refused = |id: &str| {
        runtime
            .execute_blocking::<Account>(id, AccountCommand::Deposit { amount: 0 })
            .expect_err("a deposit of 0 is refused");
    };
    let mut group = c.benchmark_group("activation");
    group.sample_size(20);
    group.bench_function(format!("from_snapshot_{ACTIVATION_HISTORY}_events"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                refused("small");
                let started = Instant::now();
                refused("big");
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    runtime.shutdown_blocking().expect("shutdown");
}

fn projection_batch_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = RocksStore::open(
            dir.path(),
            StoreOptions::with_durability(Durability::Buffered),
        )
        .expect("open store");
        for i in 0..PROJECTION_EVENTS / FILL_EVENTS_PER_APPEND {
            let stream = StreamId::new(format!("acc-{}", i % 100)).expect("valid stream id");
            let batch = (0..FILL_EVENTS_PER_APPEND)
                .map(|j| new_event(&AccountEvent::Deposited { amount: j + 1 }).expect("encode"))
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, batch)
                .expect("append");
        }
        store.close();
    }
    let runtime = Runtime::builder()
        .path(dir.path())
        .projection(|| Balances, ConsumerSettings::default())
        .start()
        .expect("start runtime");
    let head = runtime.store().head();
    runtime
        .wait_for_blocking(balances::NAME, head, Duration::from_secs(600))
        .expect("caught up");
    let mut group = c.benchmark_group("projection");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PROJECTION_EVENTS));
    group.bench_function(format!("rebuild_{PROJECTION_EVENTS}_events"), |b| {
        b.iter(|| {
            runtime.rebuild_blocking(balances::NAME).expect("rebuild");
            // Done when the rebuilt version is the only one and caught up.
            loop {
                let status = runtime
                    .projection_status(balances::NAME)
                    .expect("projection status");
                if status.len() == 1 && status[0].checkpoint >= head {
                    break;
                }
                std::thread::sleep(POLL_EVERY);
            }
        })
    });
    group.finish();
    runtime.shutdown_blocking().expect("shutdown");
}

criterion_group!(
    benches,
    record,
    append_by_batch_size,
    command_round_trip,
    activation_from_snapshot,
    projection_batch_apply
);
criterion_main!(benches);
