//! The stream lifecycle on RocksDB beyond the conformance cases: the space
//! a deletion frees is given back, and `verify` still finds real faults in
//! a store with deletions.

mod conformance;

use conformance::{ev, sid};
use eventfold_domain::ExpectedVersion;
use eventfold_storage::*;

fn bytes_on_disk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn space_is_reclaimed_after_a_deletion_and_a_compaction() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    let big = sid("big-1");
    // Incompressible payloads: what the disk holds is what was written.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        (0..2048)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    for _ in 0..20 {
        let events = (0..500).map(|_| ev("E", &noise())).collect();
        store.append(&big, ExpectedVersion::Any, events)?;
    }
    store.append(
        &sid("small-1"),
        ExpectedVersion::Any,
        vec![ev("E", b"kept")],
    )?;
    store.compact()?;
    let before = bytes_on_disk(dir.path());
    assert!(before > 10_000_000, "20 MB written, {before} bytes on disk");
    store.delete(DeleteRequest::delete(big.clone()))?;
    store.enforce_retention()?;
    store.compact()?;
    let after = bytes_on_disk(dir.path());
    println!("table files: {before} bytes before the deletion, {after} after");
    assert!(after * 10 < before, "{before} bytes before, {after} after");
    assert_eq!(
        store
            .read_stream(&sid("small-1"), 1, Direction::Forward, 10)?
            .len(),
        1
    );
    assert_eq!(store.stream_version(&big)?, 10_000);
    assert!(store.verify()?.is_clean());
    Ok(())
}

#[test]
fn verify_understands_deletions_and_still_finds_real_faults()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    {
        let store = RocksStore::open(dir.path(), StoreOptions::default())?;
        for stream in ["a-1", "b-1"] {
            let events = (0..6u8).map(|i| ev("E", &[i])).collect();
            store.append(&sid(stream), ExpectedVersion::NoStream, events)?;
        }
        store.delete(DeleteRequest::truncate_before(sid("a-1"), 3))?;
        store.delete(DeleteRequest::tombstone(sid("b-1")))?;
        assert!(store.verify()?.is_clean(), "{:?}", store.verify()?);
        store.close();
    }
    {
        // A real fault: an index entry in the middle of what a-1 kept.
        let mut options = rocksdb::Options::default();
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(
            &options,
            dir.path(),
            std::iter::once("default").chain(KEYSPACES),
        )?;
        let streams = db.cf_handle(CF_STREAMS).ok_or("no streams keyspace")?;
        let key = db
            .iterator_cf(streams, rocksdb::IteratorMode::Start)
            .filter_map(Result::ok)
            .map(|(k, _)| k)
            .filter(|k| k.windows(3).any(|w| w == b"a-1"))
            .nth(1)
            .ok_or("no second entry of a-1")?;
        db.delete_cf(streams, key)?;
    }
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    let report = store.verify()?;
    assert!(!report.is_clean());
    assert!(
        report
            .faults
            .iter()
            .all(|f| f.corruption.keyspace == CF_STREAMS || f.corruption.keyspace == CF_GLOBAL),
        "{report:?}"
    );
    Ok(())
}

#[test]
fn the_max_age_sweep_runs_on_its_own_while_the_writer_is_idle()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut options = StoreOptions::default();
    let age = std::time::Duration::from_millis(200);
    options.retention.insert(
        "tmp".into(),
        Retention {
            max_count: None,
            max_age: Some(age),
        },
    );
    let store = RocksStore::open(dir.path(), options)?;
    let s = sid("tmp-1");
    store.append(&s, ExpectedVersion::Any, vec![ev("E", b"1"), ev("E", b"2")])?;
    // Nothing asks for it: the writer's idle sweep (every
    // RETENTION_SWEEP_INTERVAL) removes them once they are older than 200 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !store.read_stream(&s, 1, Direction::Forward, 10)?.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the sweep never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(store.stream_version(&s)?, 2);
    assert!(store.verify()?.is_clean());
    Ok(())
}
