//! The conformance suite against RocksDB, and what only a disk can do:
//! corrupt bytes, durability modes, backup and restore, overload.

mod conformance;

use conformance::{Backend, ev, sid};
use eventfold_domain::{CommandId, ExpectedVersion, RecordedEvent};
use eventfold_storage::*;
use tempfile::TempDir;

struct Rocks {
    dir: TempDir,
    options: StoreOptions,
}

impl Rocks {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            options: StoreOptions::default(),
        }
    }
}

impl Backend for Rocks {
    type Store = RocksStore;
    fn open(&mut self, options: StoreOptions) -> RocksStore {
        self.options = options.clone();
        RocksStore::open(self.dir.path(), options).unwrap()
    }
    fn reopen(&mut self, store: RocksStore) -> RocksStore {
        store.close();
        drop(store);
        RocksStore::open(self.dir.path(), self.options.clone()).unwrap()
    }
}

conformance_suite!(Rocks::new());

/// Opens the store's directory as a plain RocksDB, to damage it.
fn raw(dir: &std::path::Path) -> rocksdb::DB {
    let names = std::iter::once("default").chain(KEYSPACES);
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, names).unwrap()
}

/// A `streams` key as docs/format.md spells it: the CRC32C of the stream id
/// (big-endian), the id, `0x00`, the version (big-endian).
fn index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = crc32c::crc32c(stream.as_bytes()).to_be_bytes().to_vec();
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn populated(dir: &std::path::Path) -> RocksStore {
    let store = RocksStore::open(dir, StoreOptions::default()).unwrap();
    for i in 0..10u8 {
        store
            .append(
                &sid(&format!("acc-{}", i % 2)),
                ExpectedVersion::Any,
                vec![ev("E", &[i; 20])],
            )
            .unwrap();
    }
    store
}

#[test]
fn flipped_byte_in_a_record_is_found_by_verify_and_read_as_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path());
    assert!(store.verify().unwrap().is_clean());
    store.close();
    drop(store);
    let key = 5u64.to_be_bytes();
    {
        let db = raw(dir.path());
        let cf = db.cf_handle(CF_GLOBAL).unwrap();
        let mut value = db.get_cf(cf, key).unwrap().unwrap();
        let middle = value.len() / 2;
        value[middle] ^= 0x40;
        db.put_cf(cf, key, value).unwrap();
    }
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.faults.len(), 1, "{:?}", report.faults);
    let fault = &report.faults[0].corruption;
    assert_eq!(
        (fault.keyspace, fault.key.as_slice()),
        (CF_GLOBAL, key.as_slice())
    );
    assert!(matches!(fault.kind, CorruptionKind::Checksum { .. }));
    // Event 5 is acc-0 version 3.
    match store.read_stream(&sid("acc-0"), 1, Direction::Forward, 10) {
        Err(ReadError::Corrupt(c)) => assert_eq!((c.keyspace, c.key), (CF_GLOBAL, key.to_vec())),
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(
        store
            .read_stream(&sid("acc-0"), 1, Direction::Forward, 2)
            .is_ok(),
        "events before it read fine"
    );
    assert!(matches!(
        store.read_all(1, 100, &Filter::all()),
        Err(ReadError::Corrupt(_))
    ));
    assert_eq!(
        store.read_all(1, 4, &Filter::all()).unwrap().events.len(),
        4
    );
    assert!(
        store
            .read_stream(&sid("acc-1"), 1, Direction::Forward, 10)
            .is_ok()
    );
    // Read as stored: the damage is found where the records are decoded,
    // and a filter that does not want the damaged record finds it at the
    // read (its bytes could be passing a wanted event off as unwanted).
    let stored = store
        .read_all_stored(1, 100, &Filter::all(), Vec::new())
        .unwrap();
    match stored.events.decode() {
        Err(ReadError::Corrupt(c)) => assert_eq!((c.keyspace, c.key), (CF_GLOBAL, key.to_vec())),
        other => panic!("expected corruption, got {other:?}"),
    }
    let (four, _) = store
        .read_all_stored(1, 4, &Filter::all(), Vec::new())
        .unwrap()
        .events
        .decode()
        .unwrap();
    assert_eq!(four.len(), 4);
    assert!(matches!(
        store.read_all_stored(1, 100, &Filter::event_types(["F"]), Vec::new()),
        Err(ReadError::Corrupt(_))
    ));
}

#[test]
fn truncated_values_and_broken_indexes_are_reported_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path());
    store.set_checkpoint("proj", 3).unwrap();
    store.close();
    drop(store);
    {
        let db = raw(dir.path());
        let global = db.cf_handle(CF_GLOBAL).unwrap();
        let value = db.get_cf(global, 2u64.to_be_bytes()).unwrap().unwrap();
        db.put_cf(global, 2u64.to_be_bytes(), &value[..value.len() - 7])
            .unwrap();
        let streams = db.cf_handle(CF_STREAMS).unwrap();
        db.delete_cf(streams, index_key("acc-1", 4)).unwrap();
        let checkpoints = db.cf_handle(CF_CHECKPOINTS).unwrap();
        db.put_cf(checkpoints, b"proj", [1, 2, 3]).unwrap();
    }
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    let report = store.verify().unwrap();
    let keyspaces: Vec<_> = report
        .faults
        .iter()
        .map(|f| f.corruption.keyspace)
        .collect();
    assert!(keyspaces.contains(&CF_GLOBAL), "{report:?}");
    assert!(keyspaces.contains(&CF_STREAMS), "{report:?}");
    assert!(keyspaces.contains(&CF_CHECKPOINTS), "{report:?}");
    assert!(matches!(
        store.checkpoint("proj"),
        Err(ReadError::Corrupt(_))
    ));
}

// Guards invariant 1: a batch that is written to RocksDB but whose WAL sync
// failed sits in the memtable; no read may return it.
#[test]
fn written_but_unsynced_events_are_never_visible() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let store = RocksStore::open(
        dir.path(),
        StoreOptions {
            faults: Some(faults.clone()),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let s = sid("acc-1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("E", b"durable")])
        .unwrap();
    faults.fail_next_syncs(1);
    let lost = store.append(
        &s,
        ExpectedVersion::Exact(1),
        vec![ev("E", b"unsynced"), ev("E", b"unsynced")],
    );
    assert!(matches!(lost, Err(AppendError::Io(_))), "{lost:?}");
    assert_eq!(store.head(), 1);
    assert_eq!(store.stream_version(&s).unwrap(), 1);
    let forward = store.read_stream(&s, 1, Direction::Forward, 10).unwrap();
    let backward = store
        .read_stream(&s, u64::MAX, Direction::Backward, 10)
        .unwrap();
    assert_eq!((forward.len(), backward.len()), (1, 1));
    assert_eq!(
        store.read_all(1, 10, &Filter::all()).unwrap().events.len(),
        1
    );
    assert_eq!(
        store
            .read_stream_until(&s, eventfold_domain::Timestamp::now(), 10)
            .unwrap()
            .len(),
        1
    );
    let report = store.verify().unwrap();
    assert!(report.is_clean() && report.events == 1, "{report:?}");
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![ev("E", b"")]),
        Err(AppendError::Poisoned)
    ));
}

#[test]
fn every_durability_keeps_appends_across_a_clean_reopen() {
    for durability in [Durability::Sync, Durability::Buffered, Durability::NoWal] {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::with_durability(durability);
        let store = RocksStore::open(dir.path(), options.clone()).unwrap();
        for i in 0..25u8 {
            store
                .append(
                    &sid("acc-1"),
                    ExpectedVersion::Exact(u64::from(i)),
                    vec![ev("E", &[i])],
                )
                .unwrap();
        }
        store.close();
        assert!(matches!(
            store.append(&sid("acc-1"), ExpectedVersion::Any, vec![ev("E", b"")]),
            Err(AppendError::Closed)
        ));
        drop(store);
        let store = RocksStore::open(dir.path(), options).unwrap();
        assert_eq!(
            store.stream_version(&sid("acc-1")).unwrap(),
            25,
            "{durability:?}"
        );
        assert!(store.verify().unwrap().is_clean());
    }
}

#[test]
fn only_read_model_commits_not_marked_relaxed_wait_for_a_sync_of_their_own() {
    for durability in [Durability::Sync, Durability::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::with_durability(durability);
        let store = RocksStore::open(dir.path(), options.clone()).unwrap();
        let mut relaxed = ReadModelBatch::new();
        relaxed.put("m", b"a".to_vec(), b"1".to_vec());
        relaxed.set_checkpoint("m", 0);
        store.commit_read_model(relaxed.relaxed()).unwrap();
        store
            .save_snapshot(
                &sid("acc-1"),
                &Snapshot {
                    snapshot_version: 1,
                    stream_version: 0,
                    state: b"s".to_vec(),
                },
            )
            .unwrap();
        assert_eq!(store.writer_stats().direct_syncs, 0, "{durability:?}");
        let mut own = ReadModelBatch::new();
        own.put("m", b"b".to_vec(), b"2".to_vec());
        store.commit_read_model(own).unwrap();
        let expected = u64::from(durability == Durability::Sync);
        assert_eq!(
            store.writer_stats().direct_syncs,
            expected,
            "{durability:?}"
        );
        // An append syncs the WAL through the syncer, which covers the
        // relaxed writes before it; a clean reopen keeps them all.
        store
            .append(
                &sid("acc-1"),
                ExpectedVersion::NoStream,
                vec![ev("E", b"x")],
            )
            .unwrap();
        assert_eq!(
            store.writer_stats().direct_syncs,
            expected,
            "{durability:?}"
        );
        store.close();
        drop(store);
        let store = RocksStore::open(dir.path(), options).unwrap();
        assert_eq!(
            store.read_model_get("m", b"a").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(
            store.read_model_get("m", b"b").unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(store.checkpoint("m").unwrap(), Some(0));
        let snapshot = store.load_snapshot(&sid("acc-1")).unwrap().unwrap();
        assert_eq!(snapshot.state, b"s".to_vec());
        assert_eq!(store.writer_stats().direct_syncs, 0);
    }
}

#[test]
fn backup_of_a_live_store_restores_to_an_equal_store() {
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let store = populated(dir.path());
    store.set_checkpoint("proj", 10).unwrap();
    // Writers keep going while the backup is taken.
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..50u8 {
                store
                    .append(&sid("live-1"), ExpectedVersion::Any, vec![ev("E", &[i])])
                    .unwrap();
            }
        })
    };
    let id = store.backup(backups.path()).unwrap();
    assert!(id >= 1);
    writer.join().unwrap();
    let backed_up_head_max = store.head();
    let target = tempfile::tempdir().unwrap();
    let restored_dir = target.path().join("restored");
    RocksStore::restore(backups.path(), &restored_dir).unwrap();
    let restored = RocksStore::open(&restored_dir, StoreOptions::default()).unwrap();
    let report = restored.verify().unwrap();
    assert!(report.is_clean(), "{:?}", report.faults);
    assert!(restored.head() >= 10 && restored.head() <= backed_up_head_max);
    let original = store
        .read_all(1, restored.head() as usize, &Filter::all())
        .unwrap();
    assert_eq!(
        restored.read_all(1, 1000, &Filter::all()).unwrap().events,
        original.events
    );
    assert_eq!(restored.checkpoint("proj").unwrap(), Some(10));
    // A restore into a directory that holds files is refused.
    assert!(matches!(
        RocksStore::restore(backups.path(), &restored_dir),
        Err(OpenError::TargetNotEmpty(_))
    ));
}

#[test]
fn full_queue_is_overloaded_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(
        dir.path(),
        StoreOptions {
            queue_appends_max: 1,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // Submitting without waiting outruns a writer that fsyncs each batch.
    let pending: Vec<_> = (0..2000u32)
        .map(|i| {
            store.submit(AppendRequest::single(
                sid(&format!("s-{i}")),
                ExpectedVersion::NoStream,
                vec![ev("E", b"")],
            ))
        })
        .collect();
    let results: Vec<_> = pending.into_iter().map(PendingAppend::wait).collect();
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(AppendError::Overloaded { limit: 1 })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(overloaded > 0, "no append was refused");
    assert_eq!(ok + overloaded, results.len());
    assert_eq!(store.head(), ok as u64);
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn a_store_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path()));
    {
        let db = raw(dir.path());
        db.put(b"format", b"eventfold-store-v99").unwrap();
    }
    assert!(matches!(
        RocksStore::open(dir.path(), StoreOptions::default()),
        Err(OpenError::UnsupportedFormat { .. })
    ));
}

#[test]
fn appends_await_from_an_async_context() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    let pending = store.submit(AppendRequest::single(
        sid("a-1"),
        ExpectedVersion::NoStream,
        vec![ev("E", b"")],
    ));
    // An executor without tokio: the future must complete on any executor.
    let outcome = futures::executor::block_on(pending).unwrap();
    assert_eq!(outcome.last_position, 1);
}

/// Write and sync failures injected at many points under eight concurrent
/// appenders: every failed append gets a typed error (`Io`, or `Poisoned`
/// for appends after the failure), the running store never shows an event
/// of a failed batch, it refuses writes until reopened, and after reopening
/// every acknowledged event is there, versions are contiguous, positions
/// gapless and `verify` clean.
#[test]
fn faults_at_many_points_under_load_lose_nothing_acknowledged()
-> Result<(), Box<dyn std::error::Error>> {
    let mut injected = 0;
    for (point, sync) in [1u64, 2, 3, 5, 8, 13, 21, 34]
        .into_iter()
        .flat_map(|p| [(p, false), (p, true)])
    {
        let dir = tempfile::tempdir()?;
        let faults = FaultInjector::new();
        let options = StoreOptions {
            faults: Some(faults.clone()),
            ..StoreOptions::default()
        };
        let store = RocksStore::open(dir.path(), options)?;
        let acknowledged = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let (store, acknowledged) = (&store, &acknowledged);
                scope.spawn(move || {
                    for i in 0.. {
                        let stream = sid(&format!("s-{}", (t + i) % 5));
                        match store.append(
                            &stream,
                            ExpectedVersion::Any,
                            vec![ev("E", &i.to_be_bytes())],
                        ) {
                            Ok(outcome) => acknowledged
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((stream, outcome.last_version(), outcome.last_position)),
                            Err(AppendError::Io(_) | AppendError::Poisoned) => break,
                            Err(other) => panic!("untyped failure: {other:?}"),
                        }
                    }
                });
            }
            // The failure lands on the batch after `point` batches.
            while store.writer_stats().batches < point {
                std::thread::yield_now();
            }
            if sync {
                faults.fail_next_syncs(1);
            } else {
                faults.fail_next_writes(1);
            }
        });
        injected += 1;
        let acknowledged = acknowledged.into_inner().unwrap_or_else(|p| p.into_inner());
        // Running: nothing past the acknowledged head is visible.
        let head = store.head();
        let acknowledged_max = acknowledged.iter().map(|(_, _, p)| *p).max().unwrap_or(0);
        assert_eq!(head, acknowledged_max, "point {point}, sync {sync}");
        assert_eq!(
            store.read_all(head + 1, 10, &Filter::all())?.events.len(),
            0
        );
        assert!(matches!(
            store.append(&sid("s-0"), ExpectedVersion::Any, vec![ev("E", b"")]),
            Err(AppendError::Poisoned)
        ));
        store.close();
        drop(store);
        // Reopened: everything acknowledged, in order.
        let store = RocksStore::open(dir.path(), StoreOptions::default())?;
        for (stream, version, position) in &acknowledged {
            let events = store.read_stream(stream, *version, Direction::Forward, 1)?;
            assert_eq!(
                events.first().map(|e| e.position),
                Some(*position),
                "{stream}@{version}"
            );
        }
        let all = store.read_all(1, 100_000, &Filter::all())?.events;
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=store.head()).collect::<Vec<_>>());
        let mut versions = std::collections::BTreeMap::new();
        for event in &all {
            let last = versions.entry(event.stream_id.to_string()).or_insert(0);
            assert_eq!(event.version, *last + 1);
            *last = event.version;
        }
        assert!(store.verify()?.is_clean());
        store.close();
    }
    println!("{injected} faults injected; nothing acknowledged lost");
    Ok(())
}

/// Events only on disk (flushed to table files, block cache empty) are not
/// read by the memory-only reads: they say `NeedsIo`. Once a blocking read
/// has brought the blocks into the cache, they answer the same events.
#[test]
fn cached_reads_need_io_for_what_is_only_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("acc-1");
    let cmd = CommandId::from_name("open-1");
    {
        let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
        let events: Vec<_> = (1..=5u8).map(|i| ev("E", &[i])).collect();
        let request = AppendRequest::single(s.clone(), ExpectedVersion::NoStream, events)
            .with_command_id(cmd);
        store.submit(request).wait().unwrap();
        store.close();
    }
    {
        let names = std::iter::once("default").chain(KEYSPACES);
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), names).unwrap();
        for name in KEYSPACES {
            db.flush_cf(db.cf_handle(name).unwrap()).unwrap();
        }
    }
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.command_outcome_cached(cmd).unwrap(), Cached::NeedsIo);
    let outcome = store.command_outcome(cmd).unwrap();
    assert_eq!(outcome.map(|o| o.last_position), Some(5));
    assert_eq!(
        store.command_outcome_cached(cmd).unwrap(),
        Cached::Ready(store.command_outcome(cmd).unwrap())
    );
    assert_eq!(
        store.read_stream_cached(&s, 1, 10).unwrap(),
        Cached::NeedsIo
    );
    let blocking = store.read_stream(&s, 1, Direction::Forward, 10).unwrap();
    assert_eq!(blocking.len(), 5);
    assert_eq!(
        store.read_stream_cached(&s, 1, 10).unwrap(),
        Cached::Ready(blocking)
    );
}

/// The `streams` keyspace seeks with prefix bloom filters. Streams whose ids
/// extend one another ("s", "s-1", "s-10"), each spread over several table
/// files (the store flushes at close) that lack the others, read back whole
/// in both directions, report their versions, and take appends checked
/// against a tip the writer has to read from disk after the reopen.
#[test]
fn prefix_filtered_stream_reads_across_table_files() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["s", "s-1", "s-10", "s-1x", "t"];
    for round in 0..4u64 {
        let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            // Stream i gets events in rounds where i + round is even: some
            // table files hold none of it.
            if (i as u64 + round).is_multiple_of(2) || round == 3 {
                let version = store.stream_version(&sid(id)).unwrap();
                store
                    .append(
                        &sid(id),
                        ExpectedVersion::Exact(version),
                        vec![ev("E", &[round as u8]), ev("E", &[round as u8 + 10])],
                    )
                    .unwrap();
            }
        }
        store.close();
    }
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let rounds = (0..4u64)
            .filter(|round| (i as u64 + round).is_multiple_of(2) || *round == 3)
            .count() as u64;
        let s = sid(id);
        assert_eq!(store.stream_version(&s).unwrap(), rounds * 2, "{id}");
        let forward = store.read_stream(&s, 1, Direction::Forward, 100).unwrap();
        let versions: Vec<u64> = forward.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=rounds * 2).collect::<Vec<_>>(), "{id}");
        assert!(forward.iter().all(|e| e.stream_id == s));
        let backward = store
            .read_stream(&s, u64::MAX, Direction::Backward, 100)
            .unwrap();
        let mut reversed = forward.clone();
        reversed.reverse();
        assert_eq!(backward, reversed, "{id}");
        let middle = store.read_stream(&s, 2, Direction::Forward, 2).unwrap();
        assert_eq!(middle, forward[1..3].to_vec(), "{id}");
        // The writer's version cache is empty after the reopen: this append
        // is checked against the tip it reads from the index.
        let stale = store.append(
            &s,
            ExpectedVersion::Exact(rounds * 2 - 1),
            vec![ev("E", &[0])],
        );
        assert!(
            stale.is_err(),
            "{id}: a stale expected version was accepted"
        );
        store
            .append(&s, ExpectedVersion::Exact(rounds * 2), vec![ev("E", &[0])])
            .unwrap();
    }
    assert_eq!(store.stream_version(&sid("s-")).unwrap(), 0);
    assert!(
        store
            .read_stream(&sid("s-1"), 100, Direction::Forward, 10)
            .unwrap()
            .is_empty()
    );
    let report = store.verify().unwrap();
    assert!(report.faults.is_empty(), "{:?}", report.faults);
    assert_eq!(report.streams, ids.len() as u64);
}

/// The index keys on disk are the ones docs/format.md describes, and the
/// `streams` keyspace keeps its prefix extractor, its memtable bloom filter
/// and its insert hints together: the hint option is applied as a string on
/// top of the others, which must not undo them.
#[test]
fn stream_index_keys_and_options_are_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path());
    store.close();
    drop(store);
    let options_file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("OPTIONS-"))
        })
        .max()
        .expect("RocksDB writes an OPTIONS file");
    let text = std::fs::read_to_string(options_file).unwrap();
    let section = text
        .split("[CFOptions \"streams\"]")
        .nth(1)
        .and_then(|rest| rest.split("[TableOptions").next())
        .expect("a section for the streams keyspace");
    for line in [
        "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.2",
        "prefix_extractor=eventfold.stream-prefix.v2",
        "memtable_prefix_bloom_size_ratio=0.100000",
    ] {
        assert!(
            section.lines().any(|l| l.trim() == line),
            "{line} missing from:\n{section}"
        );
    }
    // The plain open below writes OPTIONS files of its own.
    {
        let db = raw(dir.path());
        let streams = db.cf_handle(CF_STREAMS).unwrap();
        let keys: Vec<Vec<u8>> = db
            .iterator_cf(streams, rocksdb::IteratorMode::Start)
            .map(|entry| entry.unwrap().0.to_vec())
            .collect();
        let mut expected: Vec<Vec<u8>> = (1..=5)
            .flat_map(|version| [index_key("acc-0", version), index_key("acc-1", version)])
            .collect();
        expected.sort();
        assert_eq!(keys, expected);
    }
}

/// Streams whose ids have the same CRC32C share the tag that starts their
/// index keys, so they share an insert hint and a tag range: they stay
/// apart, in the memtable and across table files.
#[test]
fn streams_with_the_same_tag_stay_apart() {
    let (a, b) = ("acc-1371838", "acc-2000402");
    assert_eq!(
        crc32c::crc32c(a.as_bytes()),
        crc32c::crc32c(b.as_bytes()),
        "the two ids were chosen for their equal CRC32C"
    );
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u8 {
        let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..4u8 {
            for id in [a, b] {
                store
                    .append(&sid(id), ExpectedVersion::Any, vec![ev("E", &[round, i])])
                    .unwrap();
            }
        }
        if round < 2 {
            store.close();
        } else {
            // The last round is read from the memtable as well.
            for id in [a, b] {
                let s = sid(id);
                assert_eq!(store.stream_version(&s).unwrap(), 12);
                let events = store.read_stream(&s, 1, Direction::Forward, 100).unwrap();
                let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
                assert_eq!(versions, (1..=12).collect::<Vec<_>>(), "{id}");
                assert!(events.iter().all(|e| e.stream_id == s), "{id}");
                let tip = store
                    .read_stream(&s, u64::MAX, Direction::Backward, 1)
                    .unwrap();
                assert_eq!(tip[0].payload, vec![2, 3]);
                assert!(matches!(
                    store.append(&s, ExpectedVersion::Exact(11), vec![ev("E", b"")]),
                    Err(AppendError::WrongExpectedVersion { actual: 12, .. })
                ));
            }
            assert!(store.verify().unwrap().is_clean());
        }
    }
}

/// A stream's events are fetched from the global log by one scan when their
/// positions are dense and by point lookups when they are sparse. Both
/// answer every slice of the stream alike, in both directions, from the
/// memtable and from table files, and both name the index entry whose
/// record is missing.
#[test]
fn dense_and_sparse_streams_read_alike_and_report_missing_records() {
    let dir = tempfile::tempdir().unwrap();
    // `dense` takes every other position, `sparse` one in ten, `filler` the
    // rest: 200 positions in all.
    let mut written: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    {
        let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
        for position in 1..=200u64 {
            let id = if position % 10 == 5 {
                "sparse"
            } else if position % 2 == 0 {
                "dense"
            } else {
                "filler"
            };
            let outcome = store
                .append(
                    &sid(id),
                    ExpectedVersion::Any,
                    vec![ev("E", &position.to_be_bytes())],
                )
                .unwrap();
            assert_eq!(outcome.last_position, position);
            written.entry(id).or_default().push(position);
        }
        check_slices(&store, &written, "memtable");
        store.close();
    }
    // The store flushes at close: now from table files.
    {
        let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
        check_slices(&store, &written, "table files");
        store.close();
    }
    // Position 100 is `dense` version 50, position 105 is `sparse` version
    // 11: their records go, their index entries stay.
    {
        let db = raw(dir.path());
        let global = db.cf_handle(CF_GLOBAL).unwrap();
        db.delete_cf(global, 100u64.to_be_bytes()).unwrap();
        db.delete_cf(global, 105u64.to_be_bytes()).unwrap();
    }
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    for (id, version) in [("dense", 50u64), ("sparse", 11)] {
        let s = sid(id);
        for (from, direction) in [(1, Direction::Forward), (u64::MAX, Direction::Backward)] {
            match store.read_stream(&s, from, direction, 1000) {
                Err(ReadError::Corrupt(c)) => {
                    assert_eq!((c.keyspace, c.key), (CF_STREAMS, index_key(id, version)));
                    assert!(
                        matches!(&c.kind, CorruptionKind::Inconsistent(m) if m.contains("missing")),
                        "{:?}",
                        c.kind
                    );
                }
                other => panic!("{id} {direction:?}: expected corruption, got {other:?}"),
            }
        }
        let before = store.read_stream(&s, 1, Direction::Forward, version as usize - 1);
        assert_eq!(before.unwrap().len(), version as usize - 1, "{id}");
    }
}

/// Every slice of each stream of `written` (its positions, by version)
/// reads back in both directions with the right positions and payloads.
fn check_slices(
    store: &RocksStore,
    written: &std::collections::BTreeMap<&str, Vec<u64>>,
    round: &str,
) {
    for (id, positions) in written {
        let s = sid(id);
        let count = positions.len() as u64;
        for from in [1, 2, count / 2, count] {
            for max in [1, 2, 7, 1000] {
                let forward = store
                    .read_stream(&s, from, Direction::Forward, max)
                    .unwrap();
                let expected: Vec<u64> = (from..=count).take(max).collect();
                let got: Vec<u64> = forward.iter().map(|e| e.version).collect();
                assert_eq!(got, expected, "{round}: {id} forward from {from}, {max}");
                let backward = store
                    .read_stream(&s, from, Direction::Backward, max)
                    .unwrap();
                let expected: Vec<u64> = (1..=from).rev().take(max).collect();
                let got: Vec<u64> = backward.iter().map(|e| e.version).collect();
                assert_eq!(got, expected, "{round}: {id} backward from {from}, {max}");
                for event in forward.iter().chain(&backward) {
                    let position = positions[event.version as usize - 1];
                    assert_eq!(event.position, position, "{round}: {id}");
                    assert_eq!(event.payload, position.to_be_bytes(), "{round}: {id}");
                }
            }
        }
    }
}

/// Rewrites the store in `dir` (closed) as `eventfold-store-v1` wrote it:
/// `streams` keys without their tag. Index entries of positions above
/// `keep_v2_up_to` are dropped instead when `reindexing` (an upgrade cut
/// short after writing those), and the marker says so.
fn downgrade(dir: &std::path::Path, reindexing: Option<u64>) {
    let db = raw(dir);
    let streams = db.cf_handle(CF_STREAMS).unwrap();
    let entries: Vec<_> = db
        .iterator_cf(streams, rocksdb::IteratorMode::Start)
        .map(Result::unwrap)
        .collect();
    assert!(!entries.is_empty());
    let mut batch = rocksdb::WriteBatch::default();
    for (key, position) in entries {
        batch.delete_cf(streams, &key);
        let position = u64::from_be_bytes(position[..].try_into().unwrap());
        match reindexing {
            None => batch.put_cf(streams, &key[4..], position.to_be_bytes()),
            Some(done) if position <= done => batch.put_cf(streams, &key, position.to_be_bytes()),
            Some(_) => {}
        }
    }
    match reindexing {
        None => batch.put(b"format", b"eventfold-store-v1"),
        Some(done) => {
            batch.put(b"format", b"eventfold-store-v2-reindexing");
            batch.put(b"reindexed", done.to_be_bytes());
        }
    }
    db.write(batch).unwrap();
}

/// Every stream of `ids` read whole.
fn all_streams(store: &RocksStore, ids: &[&str]) -> Vec<Vec<RecordedEvent>> {
    ids.iter()
        .map(|id| {
            store
                .read_stream(&sid(id), 1, Direction::Forward, 10_000)
                .unwrap()
        })
        .collect()
}

/// A v1 store (index keys without a tag) is refused at open, untouched,
/// until `RocksStore::upgrade` rebuilds its index from the global log; then
/// it reads as it did, and takes appends checked against its versions.
#[test]
fn a_v1_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["acc-1371838", "acc-2000402", "s", "s-1", "t"];
    let before = {
        let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..200u32 {
            let id = ids[(i as usize * 7) % ids.len()];
            store
                .append(
                    &sid(id),
                    ExpectedVersion::Any,
                    vec![ev("E", &i.to_be_bytes())],
                )
                .unwrap();
        }
        store
            .save_snapshot(
                &sid("t"),
                &Snapshot {
                    snapshot_version: 1,
                    stream_version: 3,
                    state: vec![9],
                },
            )
            .unwrap();
        store.set_checkpoint("projection", 150).unwrap();
        let before = all_streams(&store, &ids);
        store.close();
        before
    };
    downgrade(dir.path(), None);
    match RocksStore::open(dir.path(), StoreOptions::default()) {
        Err(OpenError::NeedsUpgrade { found, supported }) => {
            assert_eq!(
                (found.as_str(), supported),
                ("eventfold-store-v1", "eventfold-store-v2")
            );
        }
        other => panic!("expected NeedsUpgrade, got {:?}", other.map(|_| ())),
    }
    let report = RocksStore::upgrade(dir.path()).unwrap();
    assert_eq!(
        (report.from.as_str(), report.events_indexed),
        ("eventfold-store-v1", 200)
    );
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(store.verify().unwrap().is_clean());
    assert_eq!(all_streams(&store, &ids), before);
    assert_eq!(store.checkpoint("projection").unwrap(), Some(150));
    assert_eq!(
        store.load_snapshot(&sid("t")).unwrap().unwrap().state,
        vec![9]
    );
    let version = store.stream_version(&sid("s")).unwrap();
    assert_eq!(version, before[2].len() as u64);
    assert!(matches!(
        store.append(
            &sid("s"),
            ExpectedVersion::Exact(version - 1),
            vec![ev("E", b"")]
        ),
        Err(AppendError::WrongExpectedVersion { .. })
    ));
    store
        .append(
            &sid("s"),
            ExpectedVersion::Exact(version),
            vec![ev("E", b"")],
        )
        .unwrap();
    store.close();
    drop(store);
    // Current already: nothing to do.
    let again = RocksStore::upgrade(dir.path()).unwrap();
    assert_eq!(
        (again.from.as_str(), again.events_indexed),
        ("eventfold-store-v2", 0)
    );
}

/// An upgrade cut short (its marker says how far it got) is refused at open
/// and resumes from there; a store of an unknown format is not touched and
/// a directory without a store is not created.
#[test]
fn an_upgrade_cut_short_resumes_and_unknown_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = populated(dir.path());
        let before = all_streams(&store, &["acc-0", "acc-1"]);
        store.close();
        before
    };
    downgrade(dir.path(), Some(4));
    assert!(matches!(
        RocksStore::open(dir.path(), StoreOptions::default()),
        Err(OpenError::NeedsUpgrade { found, .. }) if found == "eventfold-store-v2-reindexing"
    ));
    let report = RocksStore::upgrade(dir.path()).unwrap();
    assert_eq!(report.events_indexed, 6, "positions 5 to 10");
    let store = RocksStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(all_streams(&store, &["acc-0", "acc-1"]), before);
    assert!(store.verify().unwrap().is_clean());
    store.close();
    drop(store);
    {
        let db = raw(dir.path());
        db.put(b"format", b"eventfold-store-v99").unwrap();
    }
    assert!(matches!(
        RocksStore::upgrade(dir.path()),
        Err(OpenError::UnsupportedFormat { found, .. }) if found == "eventfold-store-v99"
    ));
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("no-store");
    assert!(matches!(RocksStore::upgrade(&missing), Err(OpenError::Missing(p)) if p == missing));
    assert!(!missing.exists());
}
