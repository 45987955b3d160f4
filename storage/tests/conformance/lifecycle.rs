//! Conformance cases of the stream lifecycle: truncation (the Akka
//! persistence TCK's deletion cases), soft deletion, tombstones, retention,
//! the `$stream-deleted` events, and `verify` after all of them.

use super::*;
use std::time::Duration;

fn five(store: &impl EventStore, stream: &str) -> StreamId {
    let s = sid(stream);
    let events = (1..=5u8).map(|i| ev("E", &[i])).collect();
    store.append(&s, ExpectedVersion::NoStream, events).unwrap();
    s
}

fn read(store: &impl EventStore, s: &StreamId) -> Vec<u64> {
    versions(&store.read_stream(s, 1, Direction::Forward, 100).unwrap())
}

fn deletions(store: &impl EventStore) -> Vec<StreamDeletion> {
    store
        .read_all(0, 10_000, &Filter::all())
        .unwrap()
        .events
        .iter()
        .filter_map(StreamDeletion::of)
        .collect()
}

/// Akka TCK: "not replay messages deleted by deleteMessages" (delete to 3,
/// replay gives 4 and 5) and "not reset highestSequenceNr after message
/// deletion" (the highest version stays 5, after deleting to 3 and after
/// deleting everything); across a reopen.
pub fn tck_delete_messages_to<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = five(&store, "p-1");
    let snapshot = Snapshot {
        snapshot_version: 1,
        stream_version: 3,
        state: b"state".to_vec(),
    };
    store.save_snapshot(&s, &snapshot).unwrap();
    let done = store
        .delete(DeleteRequest::truncate_before(s.clone(), 4))
        .unwrap();
    assert_eq!(
        store.load_snapshot(&s).unwrap(),
        Some(snapshot),
        "truncation keeps the snapshot"
    );
    assert_eq!(
        (done.first_version, done.version, done.changed),
        (4, 5, true)
    );
    assert_eq!(read(&store, &s), [4, 5]);
    assert_eq!(store.stream_version(&s).unwrap(), 5);
    let backward = store
        .read_stream(&s, u64::MAX, Direction::Backward, 100)
        .unwrap();
    assert_eq!(versions(&backward), [5, 4]);
    let store = b.reopen(store);
    assert_eq!(read(&store, &s), [4, 5]);
    store
        .delete(DeleteRequest::truncate_before(s.clone(), u64::MAX))
        .unwrap();
    assert_eq!(read(&store, &s), Vec::<u64>::new());
    assert_eq!(store.stream_version(&s).unwrap(), 5);
    let store = b.reopen(store);
    assert_eq!(store.stream_version(&s).unwrap(), 5);
    let info = store.stream_info(&s).unwrap();
    assert_eq!(
        info,
        StreamInfo {
            version: 5,
            first_version: 6,
            tombstoned: false
        }
    );
    assert!(store.verify().unwrap().is_clean());
}

/// Truncation is idempotent and never moves back; the global log stays
/// gapless for readers (removed events read as skipped positions); a
/// `$stream-deleted` event tells of each deletion in order.
pub fn truncation_is_idempotent_and_the_log_stays_gapless<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = five(&store, "p-1");
    let other = five(&store, "q-1");
    assert!(
        store
            .delete(DeleteRequest::truncate_before(s.clone(), 3))
            .unwrap()
            .changed
    );
    let again = store
        .delete(DeleteRequest::truncate_before(s.clone(), 3))
        .unwrap();
    assert_eq!((again.changed, again.position), (false, None));
    let back = store
        .delete(DeleteRequest::truncate_before(s.clone(), 2))
        .unwrap();
    assert_eq!((back.changed, back.first_version), (false, 3));
    assert_eq!(read(&store, &s), [3, 4, 5]);
    let all = store.read_all(1, 100, &Filter::all()).unwrap();
    let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(all.next_position, 12);
    let slice = store.read_all(1, 1, &Filter::all()).unwrap();
    assert_eq!((slice.events[0].position, slice.next_position), (3, 4));
    // Read as stored: the erased positions read as skipped too.
    let stored = store
        .read_all_stored(1, 100, &Filter::all(), Vec::new())
        .unwrap();
    assert_eq!(stored.next_position, 12);
    assert_eq!(stored.events.decode().unwrap().0, all.events);
    let told = deletions(&store);
    assert_eq!(told.len(), 1);
    assert_eq!(
        (told[0].stream.as_str(), told[0].kind, told[0].first_version),
        ("p-1", DeletionKind::Truncated, 3)
    );
    assert_eq!(read(&store, &other), [1, 2, 3, 4, 5]);
    assert!(store.verify().unwrap().is_clean());
}

/// Soft delete: the stream reads as empty; writing again continues its
/// versions; expected versions still count the removed events.
pub fn soft_delete_reads_empty_and_writing_continues_versions<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = five(&store, "p-1");
    let snapshot = Snapshot {
        snapshot_version: 1,
        stream_version: 5,
        state: b"state".to_vec(),
    };
    store.save_snapshot(&s, &snapshot).unwrap();
    assert_eq!(
        store.deletion_record(&s, false).unwrap(),
        Cached::Ready(None)
    );
    let wrong = store.delete(DeleteRequest::delete(s.clone()).expecting(ExpectedVersion::Exact(4)));
    assert!(matches!(
        wrong,
        Err(AppendError::WrongExpectedVersion { actual: 5, .. })
    ));
    let done = store
        .delete(DeleteRequest::delete(s.clone()).expecting(ExpectedVersion::Exact(5)))
        .unwrap();
    assert_eq!((done.first_version, done.version), (6, 5));
    assert_eq!(read(&store, &s), Vec::<u64>::new());
    assert_eq!(
        store.load_snapshot(&s).unwrap(),
        None,
        "a snapshot holds what was deleted"
    );
    let record = DeletionRecord {
        first_version: 6,
        version: 5,
        deleted_version: 5,
        tombstoned: false,
    };
    assert_eq!(
        store.deletion_record(&s, false).unwrap(),
        Cached::Ready(Some(record))
    );
    assert!(is_conflict(
        &store.append(&s, ExpectedVersion::NoStream, vec![ev("E", b"x")]),
        5
    ));
    let again = store
        .append(&s, ExpectedVersion::Exact(5), vec![ev("E", b"6")])
        .unwrap();
    assert_eq!(again.last_version(), 6);
    assert_eq!(read(&store, &s), [6]);
    let store = b.reopen(store);
    assert_eq!(read(&store, &s), [6]);
    assert_eq!(deletions(&store)[0].kind, DeletionKind::Deleted);
    assert!(store.verify().unwrap().is_clean());
}

/// Tombstone: every event gone, and no append ever again (a typed error);
/// tombstoning again is a no-op; across a reopen.
pub fn tombstone_refuses_every_later_append<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = five(&store, "p-1");
    assert!(
        store
            .delete(DeleteRequest::tombstone(s.clone()))
            .unwrap()
            .changed
    );
    assert!(
        !store
            .delete(DeleteRequest::tombstone(s.clone()))
            .unwrap()
            .changed
    );
    let refused = store.append(&s, ExpectedVersion::Any, vec![ev("E", b"x")]);
    assert!(matches!(refused, Err(AppendError::StreamDeleted { ref stream }) if *stream == s));
    assert_eq!(read(&store, &s), Vec::<u64>::new());
    let store = b.reopen(store);
    let refused = store.append(&s, ExpectedVersion::Any, vec![ev("E", b"x")]);
    assert!(matches!(refused, Err(AppendError::StreamDeleted { .. })));
    let request = AppendRequest {
        streams: vec![
            StreamAppend {
                stream: sid("fine-1"),
                expected: ExpectedVersion::Any,
                events: vec![ev("E", b"")],
            },
            StreamAppend {
                stream: s.clone(),
                expected: ExpectedVersion::Any,
                events: vec![ev("E", b"")],
            },
        ],
        command_id: None,
    };
    assert!(store.submit(request).wait().is_err());
    assert_eq!(
        store.stream_version(&sid("fine-1")).unwrap(),
        0,
        "atomic: nothing written"
    );
    assert!(store.stream_info(&s).unwrap().tombstoned);
    assert_eq!(deletions(&store)[0].kind, DeletionKind::Tombstoned);
    // The store's own streams are not the user's.
    let reserved = store.append(
        &sid(DELETIONS_STREAM),
        ExpectedVersion::Any,
        vec![ev("E", b"")],
    );
    assert!(matches!(reserved, Err(AppendError::ReservedStream { .. })));
    let reserved = store.delete(DeleteRequest::tombstone(sid(DELETIONS_STREAM)));
    assert!(matches!(reserved, Err(AppendError::ReservedStream { .. })));
    assert!(store.verify().unwrap().is_clean());
}

/// Max count: a stream of a category with one keeps its last N events as
/// it is appended to; other categories keep everything.
pub fn retention_max_count<B: Backend>(b: &mut B) {
    let mut options = StoreOptions::default();
    options.retention.insert(
        "log".into(),
        Retention {
            max_count: Some(3),
            max_age: None,
        },
    );
    let store = b.open(options);
    let s = sid("log-1");
    for i in 0..7u8 {
        store
            .append(&s, ExpectedVersion::Any, vec![ev("E", &[i])])
            .unwrap();
    }
    let kept = five(&store, "keep-1");
    // The trim follows its batch: an append after it waits for it.
    store
        .append(&sid("other-1"), ExpectedVersion::Any, vec![ev("E", b"")])
        .unwrap();
    assert_eq!(read(&store, &s), [5, 6, 7]);
    assert_eq!(store.stream_version(&s).unwrap(), 7);
    assert_eq!(read(&store, &kept), [1, 2, 3, 4, 5]);
    assert!(
        deletions(&store).is_empty(),
        "retention writes no deletion events"
    );
    let store = b.reopen(store);
    assert_eq!(read(&store, &s), [5, 6, 7]);
    assert!(store.verify().unwrap().is_clean());
}

/// Max age: events older than their category's age are removed by the
/// sweep (run at once by `enforce_retention`); younger ones stay.
pub fn retention_max_age<B: Backend>(b: &mut B) {
    let mut options = StoreOptions::default();
    options.retention.insert(
        "tmp".into(),
        Retention {
            max_count: None,
            max_age: Some(Duration::from_millis(300)),
        },
    );
    let store = b.open(options);
    let old = sid("tmp-1");
    store
        .append(
            &old,
            ExpectedVersion::Any,
            vec![ev("E", b"1"), ev("E", b"2")],
        )
        .unwrap();
    let kept = five(&store, "keep-1");
    std::thread::sleep(Duration::from_millis(400));
    store
        .append(&old, ExpectedVersion::Any, vec![ev("E", b"3")])
        .unwrap();
    store.enforce_retention().unwrap();
    assert_eq!(read(&store, &old), [3]);
    assert_eq!(store.stream_version(&old).unwrap(), 3);
    assert_eq!(read(&store, &kept), [1, 2, 3, 4, 5]);
    std::thread::sleep(Duration::from_millis(400));
    store.enforce_retention().unwrap();
    assert_eq!(read(&store, &old), Vec::<u64>::new());
    assert_eq!(store.stream_version(&old).unwrap(), 3);
    let store = b.reopen(store);
    assert_eq!(read(&store, &old), Vec::<u64>::new());
    assert!(store.verify().unwrap().is_clean());
}

/// A deletion larger than one erase batch: readers never see the removed
/// events, the rest is erased between batches, and a reopen finishes it.
pub fn a_large_deletion_is_erased_in_batches<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    let s = sid("big-1");
    let total = ERASE_BATCH_EVENTS * 2 + 10;
    for chunk in 0..(total / 1000 + 1) {
        let n = (total - chunk * 1000).min(1000);
        if n == 0 {
            break;
        }
        let events = (0..n).map(|_| ev("E", b"payload")).collect();
        store.append(&s, ExpectedVersion::Any, events).unwrap();
    }
    let keep = five(&store, "keep-1");
    let version = store.stream_version(&s).unwrap();
    assert_eq!(version, total as u64);
    store
        .delete(DeleteRequest::truncate_before(s.clone(), version))
        .unwrap();
    assert_eq!(read(&store, &s), [version]);
    let all = store
        .read_all(0, 100_000, &Filter::categories(["big"]))
        .unwrap();
    assert_eq!(versions(&all.events), [version]);
    let store = b.reopen(store);
    assert_eq!(read(&store, &s), [version]);
    store.enforce_retention().unwrap();
    assert_eq!(read(&store, &keep), [1, 2, 3, 4, 5]);
    assert!(store.verify().unwrap().is_clean());
}

/// Data subjects' keys: created once (a second creation gets the first
/// key), forgotten for good (no key again), across a reopen.
pub fn subject_keys_are_created_once_and_forgotten_for_good<B: Backend>(b: &mut B) {
    let store = b.open(StoreOptions::default());
    assert_eq!(store.subject_key("ann").unwrap(), None);
    let first = store
        .create_subject_key("ann", [1; SUBJECT_KEY_BYTES])
        .unwrap();
    assert_eq!(first, SubjectKey::Active([1; SUBJECT_KEY_BYTES]));
    let second = store
        .create_subject_key("ann", [2; SUBJECT_KEY_BYTES])
        .unwrap();
    assert_eq!(second, first, "one key per subject");
    store
        .create_subject_key("bob", [3; SUBJECT_KEY_BYTES])
        .unwrap();
    let store = b.reopen(store);
    assert_eq!(store.subject_key("ann").unwrap(), Some(first));
    assert!(store.forget_subject("ann").unwrap());
    assert_eq!(
        store.subject_key("ann").unwrap(),
        Some(SubjectKey::Forgotten)
    );
    let again = store
        .create_subject_key("ann", [4; SUBJECT_KEY_BYTES])
        .unwrap();
    assert_eq!(
        again,
        SubjectKey::Forgotten,
        "a forgotten subject gets no key again"
    );
    let store = b.reopen(store);
    assert_eq!(
        store.subject_key("ann").unwrap(),
        Some(SubjectKey::Forgotten)
    );
    assert_eq!(
        store.subject_key("bob").unwrap(),
        Some(SubjectKey::Active([3; SUBJECT_KEY_BYTES]))
    );
    assert!(store.subject_key("").is_err());
    assert!(
        store
            .create_subject_key(&"x".repeat(SUBJECT_BYTES_MAX + 1), [0; SUBJECT_KEY_BYTES])
            .is_err()
    );
    assert!(store.verify().unwrap().is_clean());
}
