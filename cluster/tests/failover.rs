//! Nodes that leave: one handed off gracefully loses no command; one that
//! dies (its lease runs out) has its partitions claimed by the others,
//! and a command retried with its command id lands once.

mod common;

use common::*;
use eventfold_cluster::local::LocalServices;
use eventfold_runtime::domain::StreamId;
use eventfold_runtime::storage::{Direction, EventStore};
use std::collections::HashMap;
use std::time::Duration;

#[test]
fn a_graceful_leave_and_a_death_keep_every_acknowledged_command_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 3, 3)?;
    let a = node(&services, dir.path(), "node-a", 8, 3)?;
    let b = node(&services, dir.path(), "node-b", 8, 3)?;
    let c = node(&services, dir.path(), "node-c", 8, 3)?;
    assert!(wait_until(Duration::from_secs(30), || covered(
        &[&a, &b, &c],
        8
    ) && [&a, &b, &c]
        .iter()
        .all(|n| !n.partitions().is_empty())));
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    let run = |acknowledged: &mut HashMap<String, u64>,
               sender: &eventfold_cluster::ClusterNode,
               round: u64|
     -> TestResult {
        for i in 0..24u64 {
            let id = format!("c{i}");
            let (version, _, _) = add_retrying(&io, sender, &id, round, Duration::from_secs(30))?;
            let expected = acknowledged.get(&id).copied().unwrap_or(0) + 1;
            assert_eq!(version, expected, "{id}");
            acknowledged.insert(id, version);
        }
        Ok(())
    };
    run(&mut acknowledged, &a, 1)?;
    // c leaves gracefully: its partitions go to a and b.
    c.shutdown();
    run(&mut acknowledged, &b, 2)?;
    assert!(wait_until(Duration::from_secs(30), || covered(
        &[&a, &b],
        8
    )));
    // b dies: nothing is handed off; its lease runs out and a claims all.
    let held_by_b = b.partitions();
    drop(b);
    let (_, _, waited) = add_retrying(&io, &a, "c0", 3, Duration::from_secs(60))?;
    *acknowledged.entry("c0".into()).or_default() += 1;
    assert!(wait_until(Duration::from_secs(30), || covered(&[&a], 8)));
    eprintln!("partitions {held_by_b:?} of the dead node moved; a command waited {waited:?}");
    run(&mut acknowledged, &a, 4)?;
    // Every acknowledged command is in the log once, versions contiguous.
    for (id, version) in &acknowledged {
        let stream = StreamId::new(format!("counter-{id}"))?;
        let events = a.store().read_stream(&stream, 1, Direction::Forward, 100)?;
        assert_eq!(events.len() as u64, *version, "{id}");
        for (n, event) in events.iter().enumerate() {
            assert_eq!(event.version, n as u64 + 1);
        }
    }
    assert!(a.store().verify()?.is_clean());
    a.shutdown();
    Ok(())
}

#[test]
fn a_partition_that_comes_back_is_loaded_afresh() -> TestResult {
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 1, 1)?;
    let a = node(&services, dir.path(), "node-a", 8, 1)?;
    assert!(wait_until(Duration::from_secs(30), || covered(&[&a], 8)));
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let limit = Duration::from_secs(30);
    // Every aggregate has an actor on a.
    for i in 0..16u64 {
        assert_eq!(add_retrying(&io, &a, &format!("c{i}"), 1, limit)?.0, 1);
    }
    // b joins and takes some partitions; their aggregates move on there.
    let b = node(&services, dir.path(), "node-b", 8, 1)?;
    assert!(wait_until(Duration::from_secs(30), || covered(
        &[&a, &b],
        8
    ) && !b
        .partitions()
        .is_empty()));
    for i in 0..16u64 {
        assert_eq!(add_retrying(&io, &b, &format!("c{i}"), 1, limit)?.0, 2);
    }
    // b leaves: a holds everything again, and its old actors are gone:
    // each aggregate is loaded with b's events, no command fails.
    b.shutdown();
    assert!(wait_until(Duration::from_secs(30), || covered(&[&a], 8)));
    for i in 0..16u64 {
        let id = format!("c{i}");
        let outcome = io.block_on(a.execute::<Counter>(
            &id,
            Cmd::Add(1),
            eventfold_runtime::ExecuteOptions::new(),
        ))?;
        assert_eq!(outcome.version, 3, "{id}");
    }
    a.shutdown();
    Ok(())
}

#[test]
fn a_claim_fenced_by_another_marker_is_taken_up_again_behind_a_new_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 1, 1)?;
    let a = node(&services, dir.path(), "node-a", 8, 1)?;
    assert!(wait_until(Duration::from_secs(30), || covered(&[&a], 8)));
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let limit = Duration::from_secs(30);
    assert_eq!(add_retrying(&io, &a, "c1", 1, limit)?.0, 1);
    let partition = a.partition_of::<Counter>("c1").ok_or("a partition")?;
    let log = io.block_on(eventfold_cluster::log::Log::connect(
        &services.nats_urls(),
        eventfold_cluster::log::LogConfig {
            replicas: 1,
            ..Default::default()
        },
    ))?;
    let last = io.block_on(log.last_fence(partition))?.ok_or("a marker")?;
    io.block_on(log.write_fence(partition, last.token + 1_000_000, "intruder", last.sequence))?;
    // The node's next append is refused by the log; it gives the claim
    // up, takes it again behind a marker of its own, and the retry lands.
    assert_eq!(add_retrying(&io, &a, "c1", 1, limit)?.0, 2);
    let now = io.block_on(log.last_fence(partition))?.ok_or("a marker")?;
    // Taken up again under the same key or a new one: never an older token.
    assert!(now.token >= last.token, "tokens never go backwards");
    assert_ne!(now.token, last.token + 1_000_000, "the node's own marker");
    assert!(
        now.sequence > last.sequence + 1,
        "a new marker after the intruder's"
    );
    assert_eq!(add_retrying(&io, &a, "c1", 1, limit)?.0, 3);
    a.shutdown();
    Ok(())
}

#[test]
fn a_claim_key_held_without_a_claim_is_released() -> TestResult {
    // What a claim that failed half-way leaves when its release fails too:
    // a key under the node's lease that no claim of the node stands behind.
    // It would keep the partition or single-runner from every node for as
    // long as the node lives; the node's next round releases it.
    let dir = tempfile::tempdir()?;
    let services = LocalServices::start(&dir.path().join("services"), 1, 1)?;
    let a = node(&services, dir.path(), "node-a", 4, 1)?;
    assert!(wait_until(Duration::from_secs(30), || covered(&[&a], 4)));
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut etcd = io.block_on(etcd_client::Client::connect(
        services.etcd_endpoints(),
        None,
    ))?;
    let member = io.block_on(etcd.get("/eventfold/test/members/node-a", None))?;
    let lease = member.kvs().first().ok_or("node-a's member key")?.lease();
    let stray = "/eventfold/test/singletons/ghost";
    io.block_on(etcd.put(
        stray,
        "node-a",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    ))?;
    let gone = wait_until(Duration::from_secs(10), || {
        io.block_on(etcd.get(stray, None))
            .is_ok_and(|answer| answer.kvs().is_empty())
    });
    assert!(gone, "the stray key is released while its lease lives");
    assert!(covered(&[&a], 4), "the node's own claims stay");
    a.shutdown();
    Ok(())
}
