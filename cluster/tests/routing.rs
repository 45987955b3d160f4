//! Nodes of one cluster on local JetStream and etcd services: the
//! partitions are shared out, a command sent to any node reaches the
//! owner of its aggregate, a retry with the same command id is answered
//! with the original outcome, and every replica holds the same log.

mod common;

use common::*;
use eventfold_cluster::ClusterCommandError;
use eventfold_cluster::local::LocalServices;
use eventfold_runtime::ExecuteOptions;
use eventfold_runtime::domain::{CommandId, StreamId};
use eventfold_runtime::storage::{Direction, EventStore};
use std::time::Duration;

#[test]
fn commands_reach_their_owner_from_any_node_and_replicas_agree() -> TestResult {
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 3, 3)?;
    let a = node(&services, dir.path(), "node-a", 8, 3)?;
    let b = node(&services, dir.path(), "node-b", 8, 3)?;
    assert!(
        wait_until(Duration::from_secs(30), || covered(&[&a, &b], 8)
            && !a.partitions().is_empty()
            && !b.partitions().is_empty()),
        "partitions shared out: a {:?}, b {:?}",
        a.partitions(),
        b.partitions()
    );
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut last = 0;
    for round in 0..3u64 {
        for i in 0..40u64 {
            let sender = if i % 2 == 0 { &a } else { &b };
            // Retried with its command id if a partition moves meanwhile.
            let (version, position, _) = add_retrying(
                &io,
                sender,
                &format!("c{i}"),
                i + 1,
                Duration::from_secs(60),
            )?;
            assert_eq!(version, round + 1);
            last = last.max(position);
        }
    }
    // A refusal comes back typed from whichever node owns the aggregate.
    for sender in [&a, &b] {
        match io.block_on(sender.execute::<Counter>("c1", Cmd::Add(0), ExecuteOptions::new())) {
            Err(ClusterCommandError::Rejected(CounterError::Zero)) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // A retry with the same command id, from the other node, is the original.
    let id = CommandId::random();
    let first =
        io.block_on(a.execute::<Counter>("c7", Cmd::Add(5), ExecuteOptions::new().command_id(id)))?;
    let again =
        io.block_on(b.execute::<Counter>("c7", Cmd::Add(5), ExecuteOptions::new().command_id(id)))?;
    assert!(again.deduplicated);
    assert_eq!(
        (again.version, again.position),
        (first.version, first.position)
    );
    // Both replicas hold the same log.
    let last = last.max(first.position.unwrap_or(0));
    assert!(wait_until(Duration::from_secs(10), || a.applied() >= last
        && b.applied() >= last));
    for i in 0..40u64 {
        let stream = StreamId::new(format!("counter-c{i}"))?;
        let ra = a.store().read_stream(&stream, 1, Direction::Forward, 100)?;
        let rb = b.store().read_stream(&stream, 1, Direction::Forward, 100)?;
        let expected = if i == 7 { 4 } else { 3 };
        assert_eq!(ra.len(), expected, "stream {stream}");
        assert_eq!(ra, rb);
        for (n, event) in ra.iter().enumerate() {
            assert_eq!(event.version, n as u64 + 1);
        }
    }
    assert!(a.store().verify()?.is_clean());
    assert!(b.store().verify()?.is_clean());
    a.shutdown();
    b.shutdown();
    Ok(())
}
