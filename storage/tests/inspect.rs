//! A store read beside the process that holds it (RocksDB's secondary
//! mode), as the inspector reads it: the streams in the index, the
//! checkpoints, the keyspaces' sizes; it catches up on refresh and writes
//! nothing.

use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_storage::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn event(text: &str) -> NewEvent {
    NewEvent::new("E", 1, text.as_bytes().to_vec(), Metadata::new())
}

fn append(store: &RocksStore, stream: &str, count: usize) -> TestResult {
    let events = (0..count)
        .map(|i| event(&format!("{stream} {i}")))
        .collect();
    store.append(&StreamId::new(stream)?, ExpectedVersion::Any, events)?;
    Ok(())
}

fn by_name(mut streams: Vec<StreamSummary>) -> Vec<StreamSummary> {
    streams.sort_by(|a, b| a.stream.as_str().cmp(b.stream.as_str()));
    streams
}

#[test]
fn a_held_store_is_read_beside_its_holder_and_caught_up_on_refresh() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    append(&store, "account-1", 3)?;
    append(&store, "account-2", 1)?;
    append(&store, "ledger-1", 2)?;
    store.set_checkpoint("balances@v1", 4)?;

    let reader = RocksStore::open_secondary(dir.path(), StoreOptions::default())?;
    assert!(reader.is_read_only());
    assert_eq!(reader.head(), 6);
    let streams = by_name(reader.list_streams(None, 100)?);
    let names: Vec<_> = streams.iter().map(|s| s.stream.as_str()).collect();
    assert_eq!(names, ["account-1", "account-2", "ledger-1"]);
    let first = &streams[0];
    assert_eq!((first.first_version, first.version), (1, 3));
    assert_eq!(
        (first.first_position, first.last_position),
        (Some(1), Some(3))
    );
    assert!(first.last_recorded_at.is_some());
    assert_eq!(streams[2].last_position, Some(6));

    let accounts = reader.list_streams(Some("account"), 100)?;
    assert_eq!(accounts.len(), 2);
    assert_eq!(reader.list_streams(None, 1)?.len(), 1);
    assert_eq!(reader.checkpoints()?, vec![("balances@v1".to_owned(), 4)]);

    // The holder writes on; the reader sees it after a refresh only.
    append(&store, "account-1", 2)?;
    assert_eq!(reader.head(), 6);
    assert_eq!(reader.refresh()?, 8);
    let account = reader.read_stream(&StreamId::new("account-1")?, 1, Direction::Forward, 10)?;
    assert_eq!(account.len(), 5);
    let all = reader.read_all(0, 100, &Filter::all())?;
    assert_eq!(all.events.len(), 8);
    Ok(())
}

#[test]
fn a_read_only_handle_writes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    append(&store, "account-1", 1)?;
    let reader = RocksStore::open_secondary(dir.path(), StoreOptions::default())?;
    let stream = StreamId::new("account-2")?;
    let refused = reader.append(&stream, ExpectedVersion::Any, vec![event("x")]);
    assert!(matches!(refused, Err(AppendError::ReadOnly)), "{refused:?}");
    let refused = reader.set_checkpoint("p@v1", 1);
    assert!(matches!(refused, Err(WriteError::ReadOnly)), "{refused:?}");
    let refused = reader.delete(DeleteRequest::delete(StreamId::new("account-1")?));
    assert!(matches!(refused, Err(AppendError::ReadOnly)), "{refused:?}");
    drop(reader);
    // The holder is untouched and still writes.
    append(&store, "account-1", 1)?;
    assert_eq!(store.head(), 2);
    assert!(store.verify()?.is_clean());
    Ok(())
}

#[test]
fn deleted_streams_are_listed_without_events_and_sizes_are_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    append(&store, "account-1", 4)?;
    append(&store, "account-2", 2)?;
    store.delete(DeleteRequest::truncate_before(
        StreamId::new("account-1")?,
        3,
    ))?;
    store.delete(DeleteRequest::tombstone(StreamId::new("account-2")?))?;
    store.compact()?;
    drop(store);

    // Nobody holds it now: a read-only handle opens all the same.
    let reader = RocksStore::open_secondary(dir.path(), StoreOptions::default())?;
    let streams = by_name(reader.list_streams(Some("account"), 100)?);
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert_eq!((streams[0].first_version, streams[0].version), (3, 4));
    assert_eq!(streams[0].first_position, Some(3));
    assert_eq!((streams[1].first_version, streams[1].version), (3, 2));
    assert!(streams[1].tombstoned);
    assert_eq!(streams[1].last_position, None);

    let stats = reader.keyspace_stats()?;
    let global = stats
        .iter()
        .find(|s| s.keyspace == "global")
        .ok_or("no global keyspace")?;
    assert!(global.table_bytes > 0, "{stats:?}");
    assert!(global.estimated_keys > 0, "{stats:?}");
    Ok(())
}

#[test]
fn what_is_not_a_store_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = RocksStore::open_secondary(dir.path().join("nothing"), StoreOptions::default());
    assert!(
        matches!(missing, Err(OpenError::Missing(_))),
        "{:?}",
        missing.err()
    );
    let empty = RocksStore::open_secondary(dir.path(), StoreOptions::default());
    assert!(
        matches!(empty, Err(OpenError::Missing(_))),
        "{:?}",
        empty.err()
    );
    Ok(())
}
