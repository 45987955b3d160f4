//! WORKLOADS.md W5: a store holding 1,000,000 events; a new balances
//! projection starts from position 0. Prints catch-up events/s and its ratio
//! to a raw RocksDB iteration of the global log in the same run.
//!
//! `cargo run --release -p eventfold-examples --bin catch-up -- [events]`

use eventfold_examples::AccountEvent;
use eventfold_examples::balances::{self, Balances};
use eventfold_runtime::domain::{DomainEvent, ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_runtime::storage::{
    Durability, EventStore, Filter, KEYSPACES, RocksStore, StoreOptions, payload,
};
use eventfold_runtime::{ConsumerSettings, Runtime};
use std::time::{Duration, Instant};

const ACCOUNTS: u64 = 10_000;
const EVENTS_PER_APPEND: u64 = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store");

    let started = Instant::now();
    {
        let store = RocksStore::open(&path, StoreOptions::with_durability(Durability::Buffered))?;
        let mut written = 0;
        let mut i = 0u64;
        while written < events {
            let stream = StreamId::new(format!("acc-{}", i % ACCOUNTS))?;
            let count = EVENTS_PER_APPEND.min(events - written);
            let batch = (0..count)
                .map(|j| {
                    let event = AccountEvent::Deposited { amount: j + 1 };
                    Ok(NewEvent::new(
                        event.event_type(),
                        1,
                        payload::encode(&event)?,
                        Metadata::new(),
                    ))
                })
                .collect::<Result<Vec<_>, payload::PayloadError>>()?;
            store.append(&stream, ExpectedVersion::Any, batch)?;
            written += count;
            i += 1;
        }
        store.close();
    }
    println!("W5: wrote {events} events in {:.2?}", started.elapsed());

    // Raw iteration of the global log: RocksDB only, no decoding.
    let raw = {
        let names = std::iter::once("default").chain(KEYSPACES);
        let db =
            rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), &path, names, false)?;
        let cf = db.cf_handle("global").ok_or("no global keyspace")?;
        let started = Instant::now();
        let mut count = 0u64;
        let mut bytes = 0usize;
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            count += 1;
            bytes += key.len() + value.len();
        }
        let elapsed = started.elapsed();
        println!("raw iteration:      {count} events, {bytes} bytes in {elapsed:.2?}");
        count as f64 / elapsed.as_secs_f64()
    };

    // The store's own read_all, decoding and checking every record.
    let read_all = {
        let store = RocksStore::open(&path, StoreOptions::default())?;
        let started = Instant::now();
        let mut from = 1;
        let mut count = 0u64;
        loop {
            let slice = store.read_all(from, 4096, &Filter::all())?;
            count += slice.events.len() as u64;
            if slice.next_position > slice.head {
                break;
            }
            from = slice.next_position;
        }
        let elapsed = started.elapsed();
        println!("store read_all:     {count} events in {elapsed:.2?}");
        count as f64 / elapsed.as_secs_f64()
    };

    // The projection from position 0.
    let started = Instant::now();
    let runtime = Runtime::builder()
        .path(&path)
        .projection(|| Balances, ConsumerSettings::default())
        .start()?;
    let head = runtime.store().head();
    runtime.wait_for_blocking(balances::NAME, head, Duration::from_secs(3600))?;
    let elapsed = started.elapsed();
    let total: i128 = runtime
        .query(balances::NAME)?
        .get_as(balances::TOTAL_KEY)?
        .unwrap_or(0);
    runtime.shutdown_blocking()?;
    let catch_up = head as f64 / elapsed.as_secs_f64();
    println!("projection catch-up: {head} events in {elapsed:.2?} (total balance {total})");
    println!();
    println!("{:<34} {:>12.0}", "raw iteration events/s", raw);
    println!("{:<34} {:>12.0}", "store read_all events/s", read_all);
    println!("{:<34} {:>12.0}", "projection catch-up events/s", catch_up);
    println!(
        "{:<34} {:>12.2}",
        "catch-up / raw iteration",
        catch_up / raw
    );
    Ok(())
}
