//! Transfers through the process manager: compensation at the deadline with
//! a virtual clock, and a kill loop — a child process runs transfers (some
//! to a frozen and a closed account) while the parent kills it with SIGKILL
//! and restarts it; in the end every transfer is completed or compensated,
//! exactly once, and money is conserved.

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

use eventfold_examples::balances::{self, Balances};
use eventfold_examples::transfers::{self, Phase, Transfer, TransferProcess};
use eventfold_examples::{Account, AccountCommand, AccountEvent};
use eventfold_runtime::domain::{CommandId, StreamId, Timestamp, VirtualClock};
use eventfold_runtime::process::{InstanceStatus, ProcessSettings};
use eventfold_runtime::projection::decode;
use eventfold_runtime::storage::{Direction, EventStore, RocksStore, StoreOptions};
use eventfold_runtime::{ConsumerSettings, ConsumerState, ExecuteOptions, Runtime, RuntimeHandle};
use std::collections::HashSet;
use std::io::Write;
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
        .process_manager(move || process, ProcessSettings::default())
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

const CHILD_DIR: &str = "EVENTFOLD_TRANSFER_CHILD_DIR";
const KILLS: u64 = 12;
const ACCOUNTS: u64 = 20;
const FUNDING: u64 = 10_000;

fn start(dir: &std::path::Path) -> Result<RuntimeHandle, eventfold_runtime::StartError> {
    Runtime::builder()
        .path(dir.join("store"))
        .aggregate::<Account>()
        .projection(|| Balances, ConsumerSettings::default())
        .process_manager(
            || TransferProcess {
                deadline: Duration::from_millis(700),
                retry_every: Duration::from_millis(100),
            },
            ProcessSettings::default(),
        )
        .start()
}

/// Opens and funds the accounts, freezes one and closes another; every
/// command has a fixed id, so running it again changes nothing.
fn set_up(runtime: &RuntimeHandle) -> TestResult {
    let once = |name: String| ExecuteOptions::new().command_id(CommandId::from_name(&name));
    let mut ids: Vec<String> = (0..ACCOUNTS).map(|i| i.to_string()).collect();
    ids.extend(["frozen".to_owned(), "closed".to_owned()]);
    for id in &ids {
        let open = AccountCommand::Open { owner: id.clone() };
        runtime.execute_blocking_with::<Account>(id, open, once(format!("open-{id}")))?;
    }
    for id in 0..ACCOUNTS {
        let fund = AccountCommand::Deposit { amount: FUNDING };
        runtime.execute_blocking_with::<Account>(
            &id.to_string(),
            fund,
            once(format!("fund-{id}")),
        )?;
    }
    runtime.execute_blocking_with::<Account>(
        "frozen",
        AccountCommand::Freeze,
        once("freeze".into()),
    )?;
    runtime.execute_blocking_with::<Account>(
        "closed",
        AccountCommand::Close,
        once("close".into()),
    )?;
    Ok(())
}

/// The child: sets up, then starts transfers from 4 clients until killed;
/// appends each acknowledged transfer's id to an oracle file.
#[test]
#[ignore = "run by the kill loop as a child process"]
fn transfer_child() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return Ok(());
    };
    let dir = std::path::PathBuf::from(dir);
    let runtime = start(&dir)?;
    set_up(&runtime)?;
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let runtime = runtime.clone();
            let oracle = dir.join(format!("oracle-{c}-{}", std::process::id()));
            std::thread::spawn(move || -> Result<(), String> {
                let mut file = std::fs::File::create(oracle).map_err(|e| e.to_string())?;
                for i in 0u64.. {
                    let transfer_id = format!("t-{}-{c}-{i}", std::process::id());
                    let from = (c * 5 + i) % ACCOUNTS;
                    let to = match i % 20 {
                        0 => "frozen".to_owned(),
                        1 => "closed".to_owned(),
                        _ => ((from + 1 + i % 7) % ACCOUNTS).to_string(),
                    };
                    let command = AccountCommand::TransferOut {
                        transfer_id: transfer_id.clone(),
                        to,
                        amount: 1 + i % 10,
                    };
                    let options =
                        ExecuteOptions::new().command_id(CommandId::from_name(&transfer_id));
                    match runtime.execute_blocking_with::<Account>(
                        &from.to_string(),
                        command,
                        options,
                    ) {
                        // Written after the acknowledgement.
                        Ok(_) => writeln!(file, "{transfer_id}").map_err(|e| e.to_string())?,
                        Err(error) => return Err(error.to_string()),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        let _ = client.join();
    }
    Ok(())
}

#[test]
fn kill_loop_every_transfer_completes_or_compensates_exactly_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    for kill in 0..KILLS {
        let after = Duration::from_millis(300 + (kill * 181) % 900);
        common::run_and_kill("transfer_child", CHILD_DIR, dir.path(), after);
        // Each kill leaves a store that verifies clean.
        let store = RocksStore::open(dir.path().join("store"), StoreOptions::default())?;
        let report = store.verify()?;
        assert!(report.is_clean(), "after kill {kill}: {:?}", report.faults);
        store.close();
        drop(store);
    }
    // The last restart finishes every transfer left in flight.
    let runtime = start(dir.path())?;
    wait_until(
        "every transfer is finished",
        Duration::from_secs(120),
        || {
            let status = runtime.process_status(transfers::NAME)?;
            assert_eq!(
                status.stuck,
                0,
                "{:?}",
                runtime.stuck_instances(transfers::NAME)?
            );
            let audit = transfers::audit(runtime.store())?;
            Ok(status.state == ConsumerState::Live
                && status.checkpoint == runtime.store().head()
                && status.outbox == 0
                && status.timers == 0
                && audit.open == 0)
        },
    )?;
    let audit = transfers::audit(runtime.store())?;
    assert_eq!(audit.total_money, audit.deposited, "money is not conserved");
    assert_eq!(audit.deposited, i128::from(ACCOUNTS * FUNDING));
    // Every acknowledged transfer was debited (and, by the audit, exactly
    // once, then credited or refunded exactly once).
    let mut acknowledged = HashSet::new();
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("oracle-"))
        {
            for line in std::fs::read_to_string(&path)?.lines() {
                acknowledged.insert(line.to_owned());
            }
        }
    }
    let missing: Vec<_> = acknowledged.difference(&audit.debited).collect();
    assert!(
        missing.is_empty(),
        "acknowledged transfers missing: {missing:?}"
    );
    assert!(audit.compensated > 0 && audit.completed > 0);
    // The projection agrees with the log.
    let head = runtime.store().head();
    runtime.wait_for_blocking(balances::NAME, head, Duration::from_secs(60))?;
    let total: i128 = runtime
        .query(balances::NAME)?
        .get_as(balances::TOTAL_KEY)?
        .unwrap_or(0);
    assert_eq!(total, audit.total_money);
    assert!(runtime.store().verify()?.is_clean());
    println!(
        "{KILLS} kills survived; {} acknowledged transfers checked; {} completed, {} compensated; money conserved ({})",
        acknowledged.len(),
        audit.completed,
        audit.compensated,
        audit.total_money
    );
    Ok(())
}
