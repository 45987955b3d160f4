//! A store that replicates another log: entries land at the positions the
//! source gave them, a position without an event is stepped over by every
//! reader, and what does not follow the log (a gap, a fork) is refused
//! with nothing written.

use eventfold_domain::{CommandId, Metadata, NewEvent, StreamId, Timestamp};
use eventfold_storage::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn event(text: &str) -> NewEvent {
    NewEvent::new("E", 1, text.as_bytes().to_vec(), Metadata::new())
}

fn append(position: u64, stream: &str, version: u64, count: usize, at: u64) -> Replicated {
    Replicated::Append(ReplicatedAppend {
        first_position: position,
        stream: StreamId::new(stream).expect("a valid stream id"),
        first_version: version,
        recorded_at: Timestamp::from_micros(at),
        events: (0..count)
            .map(|i| event(&format!("{stream} {}", version + i as u64)))
            .collect(),
        command_id: None,
    })
}

#[test]
fn entries_land_at_the_source_positions_and_skips_are_stepped_over() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("replica");
    let id = CommandId::random();
    {
        let store = RocksStore::open(&path, StoreOptions::default())?;
        store.replicate(Replicated::Skip { position: 1 }).wait()?;
        let mut first = append(2, "account-1", 1, 2, 1_000);
        if let Replicated::Append(a) = &mut first {
            a.command_id = Some(id);
        }
        let outcome = store.replicate(first).wait()?;
        assert_eq!((outcome.first_position, outcome.last_position), (2, 3));
        store.replicate(Replicated::Skip { position: 4 }).wait()?;
        // An earlier time than the log's last stays at the last.
        store.replicate(append(5, "account-1", 3, 1, 500)).wait()?;
        store.replicate(Replicated::Skip { position: 6 }).wait()?;
        assert_eq!(store.head(), 6);
    }
    let store = RocksStore::open(&path, StoreOptions::default())?;
    assert_eq!(store.head(), 6);
    let slice = store.read_all(1, 100, &Filter::all())?;
    let positions: Vec<u64> = slice.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![2, 3, 5]);
    assert_eq!(slice.next_position, 7);
    let stream = StreamId::new("account-1")?;
    let events = store.read_stream(&stream, 1, Direction::Forward, 10)?;
    let versions: Vec<(u64, u64)> = events.iter().map(|e| (e.version, e.position)).collect();
    assert_eq!(versions, vec![(1, 2), (2, 3), (3, 5)]);
    assert_eq!(events[2].recorded_at, Timestamp::from_micros(1_000));
    let outcome = store
        .command_outcome(id)?
        .ok_or("the command id is recorded")?;
    assert_eq!((outcome.first_position, outcome.last_position), (2, 3));
    assert!(store.verify()?.is_clean());
    Ok(())
}

#[test]
fn a_gap_or_a_fork_is_refused_and_nothing_is_written() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    store.replicate(append(1, "account-1", 1, 1, 10)).wait()?;
    assert_eq!(
        store.replicate(append(3, "account-1", 2, 1, 10)).wait(),
        Err(AppendError::ReplicaOutOfOrder {
            expected: 2,
            found: 3
        })
    );
    // Version 1 again: a second history of the stream.
    assert_eq!(
        store.replicate(append(2, "account-1", 1, 1, 10)).wait(),
        Err(AppendError::HistoryForked {
            stream: StreamId::new("account-1")?,
            held: 1,
            found: 1
        })
    );
    assert_eq!(store.head(), 1);
    // The log goes on where it was.
    store.replicate(append(2, "account-1", 2, 1, 10)).wait()?;
    assert_eq!(store.stream_version(&StreamId::new("account-1")?)?, 2);
    Ok(())
}

#[test]
fn replicated_events_reach_the_commit_listener() -> TestResult {
    struct Collect(std::sync::Mutex<Vec<u64>>);
    impl CommitListener for Collect {
        fn committed(&self, events: std::sync::Arc<[eventfold_domain::RecordedEvent]>) {
            if let Ok(mut seen) = self.0.lock() {
                seen.extend(events.iter().map(|e| e.position));
            }
        }
    }
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    let listener = std::sync::Arc::new(Collect(std::sync::Mutex::new(Vec::new())));
    store.set_commit_listener(listener.clone());
    store.replicate(append(1, "a-1", 1, 2, 10)).wait()?;
    store.replicate(Replicated::Skip { position: 3 }).wait()?;
    store.replicate(append(4, "a-2", 1, 1, 10)).wait()?;
    let seen = listener.0.lock().map_err(|_| "poisoned")?.clone();
    assert_eq!(seen, vec![1, 2, 4]);
    Ok(())
}

#[test]
fn read_model_changes_land_with_their_positions_and_survive_a_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("replica");
    {
        let store = RocksStore::open(&path, StoreOptions::default())?;
        store.replicate(append(1, "account-1", 1, 1, 10)).wait()?;
        let mut batch = ReadModelBatch::new();
        batch.put("$pm.transfers", b"i1".to_vec(), b"state one".to_vec());
        batch.put("$pm.transfers", b"i2".to_vec(), b"state two".to_vec());
        batch.set_checkpoint("$pm.transfers", 1);
        let outcome = store
            .replicate(Replicated::ReadModel {
                first_position: 2,
                last_position: 3,
                batch,
            })
            .wait()?;
        assert_eq!((outcome.first_position, outcome.last_position), (2, 3));
        let mut later = ReadModelBatch::new();
        later.delete("$pm.transfers", b"i1".to_vec());
        later.set_checkpoint("$pm.transfers", 3);
        store
            .replicate(Replicated::ReadModel {
                first_position: 4,
                last_position: 4,
                batch: later,
            })
            .wait()?;
        store.replicate(append(5, "account-1", 2, 1, 20)).wait()?;
    }
    let store = RocksStore::open(&path, StoreOptions::default())?;
    assert_eq!(store.head(), 5);
    let positions: Vec<u64> = store
        .read_all(1, 100, &Filter::all())?
        .events
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(
        positions,
        vec![1, 5],
        "the read model's positions hold no event"
    );
    assert_eq!(store.read_model_get("$pm.transfers", b"i1")?, None);
    assert_eq!(
        store.read_model_get("$pm.transfers", b"i2")?,
        Some(b"state two".to_vec())
    );
    assert_eq!(store.checkpoint("$pm.transfers")?, Some(3));
    assert!(store.verify()?.is_clean());
    Ok(())
}

#[test]
fn read_model_entries_out_of_order_or_invalid_are_refused_with_nothing_written() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    let mut batch = ReadModelBatch::new();
    batch.put("$pm.p", b"k".to_vec(), b"v".to_vec());
    let entry = |first, last, batch: &ReadModelBatch| Replicated::ReadModel {
        first_position: first,
        last_position: last,
        batch: batch.clone(),
    };
    assert_eq!(
        store.replicate(entry(2, 2, &batch)).wait(),
        Err(AppendError::ReplicaOutOfOrder {
            expected: 1,
            found: 2
        })
    );
    assert!(matches!(
        store.replicate(entry(1, 0, &batch)).wait(),
        Err(AppendError::ReplicaOutOfOrder { .. })
    ));
    let mut invalid = ReadModelBatch::new();
    invalid.put("", b"k".to_vec(), b"v".to_vec());
    assert!(matches!(
        store.replicate(entry(1, 1, &invalid)).wait(),
        Err(AppendError::ReadModel(WriteError::InvalidName(_)))
    ));
    assert_eq!(store.head(), 0);
    assert_eq!(store.read_model_get("$pm.p", b"k")?, None);
    store.replicate(entry(1, 1, &batch)).wait()?;
    assert_eq!(store.read_model_get("$pm.p", b"k")?, Some(b"v".to_vec()));
    Ok(())
}
