//! Transfers through the process manager: completion, compensation, and the
//! deadline that fences a credit to a frozen account, with a virtual clock.
//! Crashes during transfers: `kill_loop.rs`.

use eventfold_examples::transfers::{self, Phase, Transfer, TransferProcess};
use eventfold_examples::{Account, AccountCommand, AccountEvent};
use eventfold_runtime::domain::{StreamId, Timestamp, VirtualClock};
use eventfold_runtime::process::{InstanceStatus, ProcessSettings};
use eventfold_runtime::projection::decode;
use eventfold_runtime::storage::{Direction, EventStore};
use eventfold_runtime::{ExecuteOptions, Runtime, RuntimeHandle};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn wait_until(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> Result<bool, Box<dyn std::error::Error>>,
) -> TestResult {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("timed out waiting until {what}").into())
}

fn events_of(
    store: &dyn EventStore,
    id: &str,
) -> Result<Vec<AccountEvent>, Box<dyn std::error::Error>> {
    let stream = StreamId::new(format!("acc-{id}"))?;
    let events = store.read_stream(&stream, 1, Direction::Forward, 10_000)?;
    Ok(events
        .iter()
        .map(decode::<AccountEvent>)
        .collect::<Result<_, _>>()?)
}

fn transfer_state(
    runtime: &RuntimeHandle,
    id: &str,
) -> Result<Option<(InstanceStatus, Transfer)>, Box<dyn std::error::Error>> {
    Ok(runtime
        .process_instance::<Transfer>(transfers::NAME, id)?
        .map(|view| (view.status, view.state)))
}

fn command(runtime: &RuntimeHandle, id: &str, command: AccountCommand) -> TestResult {
    runtime.execute_blocking::<Account>(id, command)?;
    Ok(())
}

#[test]
fn transfers_complete_or_compensate_and_the_deadline_fences_a_frozen_target() -> TestResult {
    let clock = VirtualClock::new(Timestamp::from_micros(1_000_000));
    let process = TransferProcess {
        deadline: Duration::from_secs(10),
        retry_every: Duration::from_secs(1),
    };
    let runtime = Runtime::builder()
        .in_memory()
        .aggregate::<Account>()
        .clock(clock.clone())
        .process_manager(move || process.clone(), ProcessSettings::default())
        .start()?;
    for id in ["a", "b", "frozen", "closed"] {
        command(&runtime, id, AccountCommand::Open { owner: id.into() })?;
    }
    command(&runtime, "a", AccountCommand::Deposit { amount: 100 })?;
    command(&runtime, "frozen", AccountCommand::Freeze)?;
    command(&runtime, "closed", AccountCommand::Close)?;
    for (transfer, to) in [
        ("ok", "b"),
        ("to-closed", "closed"),
        ("to-frozen", "frozen"),
    ] {
        let transfer_out = AccountCommand::TransferOut {
            transfer_id: transfer.into(),
            to: to.into(),
            amount: 10,
        };
        command(&runtime, "a", transfer_out)?;
    }
    wait_until(
        "the credit and the refund are done",
        Duration::from_secs(30),
        || {
            let ok = transfer_state(&runtime, "ok")?;
            let closed = transfer_state(&runtime, "to-closed")?;
            let frozen = transfer_state(&runtime, "to-frozen")?;
            Ok(ok.is_some_and(|(_, s)| s.phase == Phase::Completed)
                && closed.is_some_and(|(s, _)| s == InstanceStatus::Finished)
                && frozen.is_some_and(|(_, s)| s.phase == Phase::WaitingRetry))
        },
    )?;
    let (_, closed) = transfer_state(&runtime, "to-closed")?.ok_or("no instance")?;
    assert_eq!(
        closed.phase,
        Phase::Compensated {
            reason: "the account is closed".into()
        }
    );
    // The frozen target is retried each second, under one command id.
    clock.advance(Duration::from_secs(1));
    wait_until("a second attempt", Duration::from_secs(30), || {
        Ok(transfer_state(&runtime, "to-frozen")?
            .is_some_and(|(_, s)| s.attempts == 2 && s.phase == Phase::WaitingRetry))
    })?;
    // Past the deadline: fenced, refunded.
    clock.advance(Duration::from_secs(10));
    wait_until(
        "the frozen transfer is compensated",
        Duration::from_secs(30),
        || {
            Ok(transfer_state(&runtime, "to-frozen")?
                .is_some_and(|(status, _)| status == InstanceStatus::Finished))
        },
    )?;
    let (_, frozen) = transfer_state(&runtime, "to-frozen")?.ok_or("no instance")?;
    assert_eq!(
        frozen.phase,
        Phase::Compensated {
            reason: "deadline passed".into()
        }
    );
    // Unfrozen later, the fenced credit can never land.
    command(&runtime, "frozen", AccountCommand::Unfreeze)?;
    let credit = frozen.credit.ok_or("no credit id")?;
    let late = runtime.execute_blocking_with::<Account>(
        "frozen",
        AccountCommand::ReceiveTransfer {
            transfer_id: "to-frozen".into(),
            from: "a".into(),
            amount: 10,
        },
        ExecuteOptions::new().command_id(credit),
    )?;
    assert!(late.deduplicated);
    assert_eq!(
        late.events,
        vec![AccountEvent::TransferCancelled {
            transfer_id: "to-frozen".into()
        }]
    );
    let store = runtime.store();
    assert!(
        !events_of(store, "frozen")?
            .iter()
            .any(|e| matches!(e, AccountEvent::TransferCredited { .. }))
    );
    let audit = transfers::audit(store)?;
    assert_eq!((audit.completed, audit.compensated, audit.open), (1, 2, 0));
    assert_eq!(audit.total_money, audit.deposited);
    let balance: i128 = events_of(store, "a")?
        .iter()
        .map(AccountEvent::balance_delta)
        .sum();
    assert_eq!(balance, 90);
    let status = runtime.process_status(transfers::NAME)?;
    assert_eq!((status.outbox, status.timers, status.stuck), (0, 0, 0));
    Ok(())
}
