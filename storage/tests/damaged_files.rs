//! Damaged files under a closed store: the write-ahead log, table files and
//! the MANIFEST, as a failing disk leaves them; a store another runtime or
//! process holds. Each open either keeps every acknowledged event or
//! refuses with a typed error that names the file and changes nothing;
//! `open_salvaging` is the explicit way past a damaged log.

use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_storage::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const STREAMS: u64 = 50;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

/// `appends` synced appends of `events_each` events, round robin over
/// `STREAMS` streams, never flushed to a table file (all of it is in the
/// WAL), then closed.
fn written(dir: &Path, appends: u64, events_each: u64) {
    let store = RocksStore::open(dir, StoreOptions::default()).unwrap();
    for i in 0..appends {
        let events = (0..events_each)
            .map(|e| {
                let payload = format!("append {i} event {e} {}", "x".repeat(60));
                NewEvent::new("E", 1, payload.into_bytes(), Metadata::new())
            })
            .collect();
        store
            .append(
                &sid(&format!("acc-{}", i % STREAMS)),
                ExpectedVersion::Any,
                events,
            )
            .unwrap();
    }
    store.close();
}

/// Every file of the store but RocksDB's text logs, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|name| !name.starts_with("LOG"))
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

fn with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

/// The largest file whose name ends in `suffix`.
fn largest(dir: &Path, suffix: &str) -> PathBuf {
    with_suffix(dir, suffix)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap_or_else(|| panic!("no {suffix} file in {}", dir.display()))
}

/// Overwrites `bytes` bytes at the middle of `file`, as a failing disk would.
fn damage_middle(file: &Path, bytes: usize) {
    let length = std::fs::metadata(file).unwrap().len();
    damage_at(file, usize::try_from(length / 2).unwrap(), bytes);
}

/// Overwrites `bytes` bytes of `file` from `offset`.
fn damage_at(file: &Path, offset: usize, bytes: usize) {
    let mut content = std::fs::read(file).unwrap();
    for (i, byte) in content[offset..offset + bytes].iter_mut().enumerate() {
        *byte ^= 0x5a ^ (i as u8);
    }
    std::fs::write(file, content).unwrap();
}

/// Every event from 1 to the head, gapless, each stream's versions
/// contiguous from 1.
fn assert_gapless(store: &RocksStore) {
    let head = store.head();
    let mut next = 1;
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    while next <= head {
        let slice = store.read_all(next, 4_096, &Filter::all()).unwrap();
        for event in &slice.events {
            assert_eq!(event.position, next, "positions gapless");
            next += 1;
            let version = versions.entry(event.stream_id.to_string()).or_default();
            *version += 1;
            assert_eq!(event.version, *version, "versions contiguous");
        }
        if slice.events.is_empty() {
            break;
        }
    }
    assert_eq!(next, head + 1, "every position up to the head is there");
    assert!(store.verify().unwrap().is_clean());
}

// Regression: 64 bytes changed in the middle of the WAL of 20,000
// acknowledged events, and `open` kept 10,042 of them without an error
// (RocksDB's point-in-time recovery stops at the first damaged record);
// `verify` reported nothing.
#[test]
fn damage_in_the_middle_of_the_wal_is_refused_and_salvage_keeps_a_gapless_prefix() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 2_000, 10);
    let log = largest(dir.path(), ".log");
    damage_middle(&log, 64);
    let before = files(dir.path());

    for _ in 0..2 {
        assert_refused_naming(dir.path(), &log);
    }

    let (store, report) = RocksStore::open_salvaging(dir.path(), StoreOptions::default()).unwrap();
    assert!(report.damage.is_some(), "{report:?}");
    assert_eq!(store.head(), report.head);
    assert!(report.head > 0 && report.head < 20_000, "{report:?}");
    assert_eq!(report.last_position_found, 20_000, "{report:?}");
    assert_eq!(report.positions_lost, 20_000 - report.head, "{report:?}");
    assert_eq!(report.head % 10, 0, "whole appends are kept: {report:?}");
    let kept = report.kept_logs.clone().unwrap();
    assert_eq!(
        std::fs::read(kept.join(log.file_name().unwrap())).unwrap(),
        before[log.file_name().unwrap().to_str().unwrap()],
        "the damaged log is kept as it was"
    );
    assert_gapless(&store);
    let head = report.head;
    store
        .append(
            &sid("acc-new"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new("E", 1, b"after".to_vec(), Metadata::new())],
        )
        .unwrap();
    store.close();
    drop(store);

    // The salvage is durable: a plain open sees the prefix and the new event.
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.head(), head + 1);
    assert_gapless(&store);
}

// A crash in the middle of a write leaves an incomplete last record: that
// write was never acknowledged, and the store must still open.
#[test]
fn a_torn_tail_of_the_wal_opens_without_its_last_write() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 200, 10);
    let log = largest(dir.path(), ".log");
    let length = std::fs::metadata(&log).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    file.set_len(length - 100).unwrap();
    drop(file);
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.head(), 1_990, "only the cut append is gone");
    assert_gapless(&store);
}

/// Flushes every keyspace to table files through a plain RocksDB handle.
fn flushed(dir: &Path) {
    let names = std::iter::once("default").chain(KEYSPACES);
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, names).unwrap();
    for name in KEYSPACES {
        db.flush_cf(db.cf_handle(name).unwrap()).unwrap();
    }
}

// Kept from before: damage in a table file is found on read and by verify,
// as a typed error naming the file.
#[test]
fn damage_in_a_table_file_is_a_typed_error_on_read_and_in_verify() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 400, 10);
    flushed(dir.path());
    // The largest table file (the global log's), a quarter in: its data
    // blocks come first, its index and properties at the end. (Damage to
    // those refuses the open instead, naming the file too.)
    let table = largest(dir.path(), ".sst");
    let length = std::fs::metadata(&table).unwrap().len();
    damage_at(&table, usize::try_from(length / 4).unwrap(), 64);
    let tables = [table];
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    let damaged = |error: ReadError| match error {
        ReadError::Damaged(damage) => {
            let file = damage
                .file
                .clone()
                .unwrap_or_else(|| panic!("unnamed: {damage}"));
            assert!(
                tables.iter().any(|t| t.file_name() == file.file_name()),
                "{damage}"
            );
        }
        other => panic!("expected a damaged table file, got {other}"),
    };
    let mut read = Ok(());
    let mut next = 1;
    while next <= store.head() {
        match store.read_all(next, 1_000, &Filter::all()) {
            Ok(slice) => next = slice.next_position,
            Err(error) => {
                read = Err(error);
                break;
            }
        }
    }
    damaged(read.expect_err("a full read of damaged table files succeeded"));
    damaged(
        store
            .verify()
            .expect_err("verify passed damaged table files"),
    );
}

#[test]
fn a_truncated_manifest_is_refused_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 100, 10);
    flushed(dir.path());
    written_more(dir.path());
    let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
    let manifest = dir.path().join(current.trim());
    let length = std::fs::metadata(&manifest).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&manifest)
        .unwrap();
    file.set_len(length / 2).unwrap();
    drop(file);
    assert_refused_naming(dir.path(), &manifest);
}

/// Opens the store expecting `OpenError::Damaged` naming `file`, and checks
/// that the refused open changed no file of the store.
fn assert_refused_naming(dir: &Path, file: &Path) {
    let before = files(dir);
    match RocksStore::open(dir, StoreOptions::default()) {
        Err(OpenError::Damaged(damage)) => {
            let named = damage
                .file
                .as_ref()
                .unwrap_or_else(|| panic!("the damaged file is not named: {damage}"));
            assert_eq!(named.file_name(), file.file_name(), "{damage}");
        }
        Err(other) => panic!("expected a damaged file, got {other}"),
        Ok(store) => panic!("opened a damaged store, head {}", store.head()),
    }
    assert_eq!(files(dir), before, "a refused open changes nothing");
}

/// One more flushed round, so the MANIFEST records several table files.
fn written_more(dir: &Path) {
    let store = RocksStore::open(dir, StoreOptions::default()).unwrap();
    store
        .append(
            &sid("acc-more"),
            ExpectedVersion::Any,
            vec![NewEvent::new("E", 1, b"m".to_vec(), Metadata::new())],
        )
        .unwrap();
    store.close();
    drop(store);
    flushed(dir);
}

// Regression: a second runtime on a held path failed with RocksDB's raw
// text ("IO error: lock hold by current process ... No locks available").
#[test]
fn a_store_held_by_this_process_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    match RocksStore::open(dir.path(), StoreOptions::default()) {
        Err(OpenError::InUse(path)) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected in use, got {other}"),
        Ok(_) => panic!("opened twice"),
    }
    store.close();
    drop(store);
    RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
}

/// Run as a child by the test below: holds the store until stdin closes.
#[test]
fn hold_store_child() {
    let Ok(path) = std::env::var("EVENTFOLD_HOLD_STORE") else {
        return;
    };
    let store = RocksStore::open(&path, StoreOptions::default()).unwrap();
    println!("holding");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    store.close();
}

#[test]
fn a_store_held_by_another_process_is_in_use() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path(), StoreOptions::default()).unwrap());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_store_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EVENTFOLD_HOLD_STORE", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("holding")),
        "the child did not open the store"
    );
    let result = RocksStore::open(dir.path(), StoreOptions::default());
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    match result {
        Err(OpenError::InUse(path)) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected in use, got {other}"),
        Ok(_) => panic!("opened a store another process holds"),
    }
}
