//! A tour of the event store: appends with expected versions, an idempotent
//! retry, a multi-stream append, reads, a snapshot, a read model committed
//! with its checkpoint, verify, backup and restore.
//!
//! `cargo run --release -p eventfold-examples --bin store-tour`

use eventfold_domain::{CommandId, ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_storage::{
    AppendError, AppendRequest, Direction, EventStore, Filter, ReadModelBatch, RocksStore,
    Snapshot, StoreOptions, StreamAppend, payload,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

fn event(e: &AccountEvent) -> Result<NewEvent, payload::PayloadError> {
    let name = match e {
        AccountEvent::Opened { .. } => "Opened",
        AccountEvent::Deposited { .. } => "Deposited",
        AccountEvent::Withdrawn { .. } => "Withdrawn",
    };
    Ok(NewEvent::new(name, 1, payload::encode(e)?, Metadata::new()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = RocksStore::open(dir.path().join("store"), StoreOptions::default())?;
    let alice = StreamId::new("account-alice")?;
    let bob = StreamId::new("account-bob")?;

    store.append(
        &alice,
        ExpectedVersion::NoStream,
        vec![event(&AccountEvent::Opened {
            owner: "alice".into(),
        })?],
    )?;
    store.append(
        &bob,
        ExpectedVersion::NoStream,
        vec![event(&AccountEvent::Opened {
            owner: "bob".into(),
        })?],
    )?;
    let deposit = AppendRequest::single(
        alice.clone(),
        ExpectedVersion::Exact(1),
        vec![event(&AccountEvent::Deposited { amount: 100 })?],
    )
    .with_command_id(CommandId::from_name("deposit-alice-1"));
    let first = store.submit(deposit.clone()).wait()?;
    let retry = store.submit(deposit).wait()?;
    println!(
        "deposit at position {}; retry deduplicated: {} (position {})",
        first.last_position, retry.deduplicated, retry.last_position
    );

    match store.append(
        &alice,
        ExpectedVersion::Exact(1),
        vec![event(&AccountEvent::Deposited { amount: 5 })?],
    ) {
        Err(AppendError::WrongExpectedVersion {
            expected, actual, ..
        }) => println!("stale append refused: expected {expected}, stream is at {actual}"),
        other => println!("unexpected: {other:?}"),
    }

    // A transfer: both streams or neither.
    let transfer = AppendRequest {
        streams: vec![
            StreamAppend {
                stream: alice.clone(),
                expected: ExpectedVersion::Exact(2),
                events: vec![event(&AccountEvent::Withdrawn { amount: 30 })?],
            },
            StreamAppend {
                stream: bob.clone(),
                expected: ExpectedVersion::Exact(1),
                events: vec![event(&AccountEvent::Deposited { amount: 30 })?],
            },
        ],
        command_id: Some(CommandId::from_name("transfer-1")),
    };
    let moved = store.submit(transfer).wait()?;
    println!(
        "transfer wrote positions {}..={}",
        moved.first_position, moved.last_position
    );

    for e in store.read_stream(&alice, 1, Direction::Forward, 100)? {
        let decoded: AccountEvent = payload::decode(&e.payload)?;
        println!("  alice v{} @{}: {decoded:?}", e.version, e.position);
    }

    // A balances read model, committed with its checkpoint in one batch.
    let mut balances = std::collections::BTreeMap::<String, i128>::new();
    let slice = store.read_all(1, 1000, &Filter::categories(["account"]))?;
    for e in &slice.events {
        let delta = match payload::decode::<AccountEvent>(&e.payload)? {
            AccountEvent::Deposited { amount } => i128::from(amount),
            AccountEvent::Withdrawn { amount } => -i128::from(amount),
            AccountEvent::Opened { .. } => 0,
        };
        *balances.entry(e.stream_id.to_string()).or_default() += delta;
    }
    let mut batch = ReadModelBatch::new();
    for (account, balance) in &balances {
        batch.put(
            "balances",
            account.as_bytes().to_vec(),
            balance.to_be_bytes().to_vec(),
        );
    }
    batch.set_checkpoint("balances", slice.next_position - 1);
    store.commit_read_model(batch)?;
    println!(
        "balances {balances:?} at checkpoint {:?}",
        store.checkpoint("balances")?
    );

    store.save_snapshot(
        &alice,
        &Snapshot {
            snapshot_version: 1,
            stream_version: 3,
            state: payload::encode(&70u64)?,
        },
    )?;

    let report = store.verify()?;
    println!(
        "verify: {} events, {} streams, {} faults",
        report.events,
        report.streams,
        report.faults.len()
    );
    let backup = dir.path().join("backup");
    let id = store.backup(&backup)?;
    RocksStore::restore(&backup, dir.path().join("restored"))?;
    let restored = RocksStore::open(dir.path().join("restored"), StoreOptions::default())?;
    println!(
        "backup {id} restored with head {} (live head {})",
        restored.head(),
        store.head()
    );
    Ok(())
}
