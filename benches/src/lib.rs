//! The load-benchmark harness: drivers shared by the criterion benches and
//! the load generator. See `../shared/WORKLOADS.md` for the workloads.
#![deny(missing_docs)]

pub mod allocator;
pub mod clients;
pub mod measure;
pub mod report;
pub mod transfers;
pub mod workloads;

use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_storage::{Durability, EventStore};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rocksdb::{DB, WriteBatch, WriteOptions};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Payload bytes of a benchmark event: with its metadata the stored record is
/// 100 bytes, the value size of the raw baseline.
pub const PAYLOAD_BYTES: usize = 24;
/// Value size of the raw-RocksDB baseline.
pub const RAW_VALUE_BYTES: usize = 100;
/// Most requests the raw baseline's writer puts in one WriteBatch.
pub const RAW_BATCH_REQUESTS_MAX: usize = 1024;

/// A `Deposited` event with a [`PAYLOAD_BYTES`] payload.
pub fn deposit_event(amount: u64) -> NewEvent {
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&amount.to_be_bytes());
    NewEvent::new("Deposited", 1, payload, Metadata::new())
}

/// Stream ids `acc-0` … `acc-{n-1}`.
pub fn account_streams(n: usize) -> Vec<StreamId> {
    (0..n)
        .map(|i| StreamId::new(format!("acc-{i}")).expect("valid stream id"))
        .collect()
}

/// What one load run measured.
#[derive(Debug)]
pub struct RunReport {
    /// Operations completed.
    pub operations: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Per-operation latency in microseconds.
    pub latency_us: Histogram<u64>,
}

impl RunReport {
    /// Operations per second.
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }
}

use measure::histogram;

/// `clients` threads each append `total / clients` single-event appends to
/// uniformly random streams of `streams` (seeded per client), waiting for
/// each before the next. Panics if an append fails: a benchmark of a broken
/// store has no figure to report.
pub fn store_appenders<S: EventStore + Clone + 'static>(
    store: &S,
    streams: &[StreamId],
    clients: usize,
    total: u64,
    seed: u64,
) -> RunReport {
    let per_client = total / clients as u64;
    let streams: Arc<Vec<StreamId>> = Arc::new(streams.to_vec());
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (store, streams, barrier) =
                (store.clone(), Arc::clone(&streams), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut rng =
                    SmallRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut latency = histogram();
                barrier.wait();
                for i in 0..per_client {
                    let stream = &streams[rng.gen_range(0..streams.len())];
                    let start = Instant::now();
                    store
                        .append(stream, ExpectedVersion::Any, vec![deposit_event(i)])
                        .expect("benchmark append failed");
                    latency.saturating_record(start.elapsed().as_micros() as u64);
                }
                latency
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut latency_us = histogram();
    for handle in handles {
        let h = handle.join().expect("appender thread panicked");
        latency_us.add(h).expect("histograms share bounds");
    }
    RunReport {
        operations: per_client * clients as u64,
        elapsed: start.elapsed(),
        latency_us,
    }
}

struct RawRequest {
    key: [u8; 8],
    value: Vec<u8>,
    reply: SyncSender<()>,
}

fn raw_writer(db: Arc<DB>, receiver: Receiver<RawRequest>, durability: Durability) {
    let mut options = WriteOptions::default();
    match durability {
        Durability::Sync => options.set_sync(true),
        Durability::Buffered => options.set_sync(false),
        Durability::NoWal => options.disable_wal(true),
    }
    while let Ok(first) = receiver.recv() {
        let mut requests = vec![first];
        while requests.len() < RAW_BATCH_REQUESTS_MAX {
            match receiver.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let mut batch = WriteBatch::default();
        for r in &requests {
            batch.put(r.key, &r.value);
        }
        db.write_opt(batch, &options)
            .expect("raw baseline write failed");
        for r in requests {
            let _ = r.reply.send(());
        }
    }
}

/// The W1 baseline: raw RocksDB, `clients` threads each waiting for its own
/// put of a [`RAW_VALUE_BYTES`] value through one group-commit writer thread
/// (one WriteBatch, one sync per flush). `total` puts in all.
pub fn raw_group_commit(
    dir: &std::path::Path,
    clients: usize,
    total: u64,
    durability: Durability,
) -> RunReport {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    let db = Arc::new(DB::open(&options, dir).expect("open raw baseline db"));
    let (sender, receiver) = sync_channel::<RawRequest>(16 * 1024);
    let writer = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || raw_writer(db, receiver, durability))
    };
    let per_client = total / clients as u64;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (sender, barrier) = (sender.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut latency = histogram();
                let (reply, done) = sync_channel(1);
                barrier.wait();
                for i in 0..per_client {
                    let key = ((c as u64) << 40 | i).to_be_bytes();
                    let start = Instant::now();
                    sender
                        .send(RawRequest {
                            key,
                            value: vec![7u8; RAW_VALUE_BYTES],
                            reply: reply.clone(),
                        })
                        .expect("raw writer stopped");
                    done.recv().expect("raw writer stopped");
                    latency.saturating_record(start.elapsed().as_micros() as u64);
                }
                latency
            })
        })
        .collect();
    drop(sender);
    barrier.wait();
    let start = Instant::now();
    let mut latency_us = histogram();
    for handle in handles {
        latency_us
            .add(handle.join().expect("raw client panicked"))
            .expect("histograms share bounds");
    }
    let elapsed = start.elapsed();
    writer.join().expect("raw writer panicked");
    RunReport {
        operations: per_client * clients as u64,
        elapsed,
        latency_us,
    }
}
