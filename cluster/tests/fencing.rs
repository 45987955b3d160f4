//! The log's own checks, without nodes: an append under a claim that a
//! newer claim's marker superseded is refused by JetStream; a marker
//! written after a stale one is refused too; a retried append lands once;
//! the follower copies events and markers to a replica at the log's
//! positions, several events of one append as one append.

mod common;

use common::*;
use eventfold_cluster::follower;
use eventfold_cluster::local::LocalServices;
use eventfold_cluster::log::{Log, LogConfig, LogError};
use eventfold_runtime::domain::{CommandId, Metadata, NewEvent, StreamId};
use eventfold_runtime::storage::{Direction, EventStore, Filter, RocksStore, StoreOptions};
use std::time::Duration;

fn event(text: &str) -> NewEvent {
    NewEvent::new("E", 1, text.as_bytes().to_vec(), Metadata::new())
}

#[test]
fn a_superseded_claim_cannot_write_and_the_replica_follows_the_log() -> TestResult {
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 1, 0)?;
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = LogConfig {
        replicas: 1,
        ..LogConfig::default()
    };
    let log = io.block_on(Log::connect(&services.nats_urls(), config))?;
    let replica = RocksStore::open(dir.path().join("replica"), StoreOptions::default())?;
    let progress = {
        let _entered = io.enter();
        follower::start(log.clone(), replica.clone())
    };
    let stream = StreamId::new("account-1")?;
    let old = io.block_on(log.write_fence(3, 10, "node-a", 0))?;
    assert_eq!(old.sequence, 1);
    let landed = io.block_on(log.append(3, old, &stream, 1, &[event("one")], None))?;
    assert_eq!(landed.last_sequence, 2);
    // A newer claim: its marker must follow the last one it read.
    match io.block_on(log.write_fence(3, 20, "node-b", 0)) {
        Err(LogError::WrongLastSequence { .. }) => {}
        other => panic!("a marker after a stale read must be refused: {other:?}"),
    }
    let new = io.block_on(log.write_fence(3, 20, "node-b", old.sequence))?;
    // The old claim's append is refused by the log, whatever its version.
    match io.block_on(log.append(3, old, &stream, 2, &[event("stale")], None)) {
        Err(LogError::WrongLastSequence { .. }) => {}
        other => panic!("a fenced append must be refused: {other:?}"),
    }
    // Another partition's claim is untouched.
    let other = io.block_on(log.write_fence(4, 11, "node-a", 0))?;
    io.block_on(log.append(
        4,
        other,
        &StreamId::new("account-2")?,
        1,
        &[event("x")],
        None,
    ))?;
    // Several events: one atomic batch; sent twice with the same command
    // id, it lands once.
    let batch_id = CommandId::random();
    let three = [event("two"), event("three"), event("four")];
    let first = io.block_on(log.append(3, new, &stream, 2, &three, Some(batch_id)))?;
    assert!(!first.duplicate);
    match io.block_on(log.append(3, new, &stream, 2, &three, Some(batch_id))) {
        Err(LogError::AlreadyLanded { .. }) => {}
        other => panic!("a batch sent again must be known: {other:?}"),
    }
    // One event sent again is answered with where it landed.
    let id = CommandId::random();
    let single = io.block_on(log.append(
        4,
        other,
        &StreamId::new("account-3")?,
        1,
        &[event("y")],
        Some(id),
    ))?;
    let single_again = io.block_on(log.append(
        4,
        other,
        &StreamId::new("account-3")?,
        1,
        &[event("y")],
        Some(id),
    ))?;
    assert!(single_again.duplicate);
    assert_eq!(single_again.last_sequence, single.last_sequence);
    let last = io.block_on(log.last_sequence())?;
    assert_eq!(last, single.last_sequence);
    io.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), progress.wait_for(last)).await
    })??;
    // The replica: the same positions, markers stepped over.
    assert_eq!(replica.head(), last);
    let events = replica.read_stream(&stream, 1, Direction::Forward, 10)?;
    let shape: Vec<(u64, u64)> = events.iter().map(|e| (e.version, e.position)).collect();
    let base = first.last_sequence - 2;
    assert_eq!(shape, vec![(1, 2), (2, base), (3, base + 1), (4, base + 2)]);
    let all = replica.read_all(1, 100, &Filter::all())?;
    assert_eq!(all.events.len(), 6);
    let outcome = replica
        .command_outcome(id)?
        .ok_or("the command id is recorded")?;
    assert_eq!(outcome.last_position, single.last_sequence);
    assert_eq!(progress.fence(3).map(|f| f.token), Some(20));
    assert!(replica.verify()?.is_clean());
    drop(io);
    replica.close();
    Ok(())
}
