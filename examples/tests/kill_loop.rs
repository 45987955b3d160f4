//! The kill loop: a child process runs the bank — deposits, transfers
//! through the `transfers` process manager (some to a frozen and a closed
//! account, with deadlines that span restarts) and the `balances`
//! projection — and writes an oracle line before every command and after
//! every acknowledgement. The
//! parent kills it with SIGKILL at varying moments and restarts it on the
//! same directory, and after every kill checks the store against the
//! oracle; every `FULL_CHECK_EVERY` kills, and at the end, it starts the
//! runtime itself, lets every transfer finish and the projection catch up,
//! and checks them against the log.
//!
//! CI runs `KILLS_DEFAULT` kills; more:
//! `EVENTFOLD_KILLS=200 cargo test --release -p eventfold-examples --test kill_loop -- --nocapture`

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

use eventfold_examples::balances::{self, Balances};
use eventfold_examples::transfers::{self, TransferProcess};
use eventfold_examples::{Account, AccountCommand, AccountEvent};
use eventfold_runtime::domain::{CommandId, StreamId};
use eventfold_runtime::process::ProcessSettings;
use eventfold_runtime::projection::decode;
use eventfold_runtime::storage::{Direction, EventStore, Filter, RocksStore, StoreOptions};
use eventfold_runtime::{ConsumerSettings, ConsumerState, ExecuteOptions, Runtime, RuntimeHandle};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHILD_DIR: &str = "EVENTFOLD_KILL_LOOP_DIR";
const KILLS_DEFAULT: u64 = 20;
const FULL_CHECK_EVERY: u64 = 10;
const ACCOUNTS: u64 = 20;
const FUNDING: u64 = 10_000;

fn start(dir: &Path) -> Result<RuntimeHandle, eventfold_runtime::StartError> {
    Runtime::builder()
        .path(dir.join("store"))
        .aggregate::<Account>()
        .projection(|| Balances, ConsumerSettings::default())
        .process_manager(
            || TransferProcess {
                deadline: Duration::from_millis(700),
                retry_every: Duration::from_millis(100),
            },
            // Two host threads, each with its own checkpoint, outbox and
            // timers: every kill lands on both.
            ProcessSettings {
                partitions: 2,
                ..ProcessSettings::default()
            },
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

/// One client of the child: `deposits` or transfers, until killed. Oracle
/// lines: `I {command id name}` before each command is sent, then after its
/// acknowledgement `D {stream} {version} {position} {amount}` or
/// `T {transfer id}`.
fn client(runtime: &RuntimeHandle, dir: &Path, c: u64, deposits: bool) -> Result<(), String> {
    let oracle = dir.join(format!("oracle-{c}-{}", std::process::id()));
    let mut file = std::fs::File::create(oracle).map_err(|e| e.to_string())?;
    for i in 0u64.. {
        let line = if deposits {
            let id = ((c * 7 + i) % ACCOUNTS).to_string();
            let amount = 1 + i % 50;
            let name = format!("d-{}-{c}-{i}", std::process::id());
            writeln!(file, "I {name}").map_err(|e| e.to_string())?;
            let options = ExecuteOptions::new().command_id(CommandId::from_name(&name));
            let outcome = runtime
                .execute_blocking_with::<Account>(&id, AccountCommand::Deposit { amount }, options)
                .map_err(|e| e.to_string())?;
            let position = outcome.position.ok_or("a deposit has a position")?;
            format!("D acc-{id} {} {position} {amount}", outcome.version)
        } else {
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
            writeln!(file, "I {transfer_id}").map_err(|e| e.to_string())?;
            let options = ExecuteOptions::new().command_id(CommandId::from_name(&transfer_id));
            runtime
                .execute_blocking_with::<Account>(&from.to_string(), command, options)
                .map_err(|e| e.to_string())?;
            format!("T {transfer_id}")
        };
        writeln!(file, "{line}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The child: sets up, then runs three deposit and three transfer clients
/// until killed.
#[test]
#[ignore = "run by the kill loop as a child process"]
fn kill_loop_child() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return Ok(());
    };
    let dir = std::path::PathBuf::from(dir);
    let runtime = start(&dir)?;
    set_up(&runtime)?;
    let clients: Vec<_> = (0..6u64)
        .map(|c| {
            let (runtime, dir) = (runtime.clone(), dir.clone());
            std::thread::spawn(move || client(&runtime, &dir, c, c < 3))
        })
        .collect();
    for client in clients {
        let _ = client.join();
    }
    Ok(())
}

/// What the oracle files say was sent and acknowledged.
#[derive(Default)]
struct Oracle {
    /// (stream, version) → (position, amount).
    deposits: BTreeMap<(String, u64), (u64, u64)>,
    transfers: HashSet<String>,
    /// Each client's commands in the order it sent them (command id names),
    /// and how many of them were acknowledged.
    traces: Vec<(Vec<String>, usize)>,
}

fn read_oracle(dir: &Path) -> Result<Oracle, Box<dyn std::error::Error>> {
    let mut oracle = Oracle::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_oracle = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("oracle-"));
        if !is_oracle {
            continue;
        }
        let mut trace = (Vec::new(), 0);
        for line in std::fs::read_to_string(&path)?.lines() {
            // A line cut by the kill is not an acknowledgement we know of.
            match line.split(' ').collect::<Vec<_>>()[..] {
                ["I", name] if !name.is_empty() => trace.0.push(name.to_owned()),
                ["D", stream, version, position, amount] => {
                    let parsed = (version.parse(), position.parse(), amount.parse());
                    if let (Ok(version), Ok(position), Ok(amount)) = parsed {
                        oracle
                            .deposits
                            .insert((stream.to_owned(), version), (position, amount));
                        trace.1 += 1;
                    }
                }
                ["T", id] if !id.is_empty() => {
                    oracle.transfers.insert(id.to_owned());
                    trace.1 += 1;
                }
                _ => {}
            }
        }
        oracle.traces.push(trace);
    }
    Ok(oracle)
}

/// Checks a store (not running) after a kill: every acknowledged deposit at
/// its version and position with its amount; every acknowledged transfer
/// debited; versions contiguous from 1 (so each stream is a prefix of what
/// was written), positions gapless, event ids unique, `verify` clean.
/// Returns the events checked.
fn check_after_kill(store: &dyn EventStore, oracle: &Oracle, kill: u64) -> Result<u64, String> {
    for ((stream, version), (position, amount)) in &oracle.deposits {
        let id = StreamId::new(stream.clone()).map_err(|e| e.to_string())?;
        let events = store
            .read_stream(&id, *version, Direction::Forward, 1)
            .map_err(|e| e.to_string())?;
        let event = events.first().ok_or(format!(
            "kill {kill}: acknowledged {stream}@{version} is missing"
        ))?;
        if event.position != *position {
            return Err(format!("kill {kill}: {stream}@{version} moved"));
        }
        match decode::<AccountEvent>(event).map_err(|e| e.to_string())? {
            AccountEvent::Deposited { amount: stored } if stored == *amount => {}
            other => return Err(format!("kill {kill}: {stream}@{version} is {other:?}")),
        }
    }
    let head = store.head();
    let mut next_position = 1;
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut ids = HashSet::new();
    let mut debited = HashSet::new();
    while next_position <= head {
        let slice = store
            .read_all(next_position, 65_536, &Filter::all())
            .map_err(|e| e.to_string())?;
        for event in &slice.events {
            if event.position != next_position {
                return Err(format!(
                    "kill {kill}: position {next_position} is missing (found {})",
                    event.position
                ));
            }
            next_position += 1;
            let last = versions.entry(event.stream_id.to_string()).or_insert(0);
            if event.version != *last + 1 {
                return Err(format!(
                    "kill {kill}: {} jumps from {last} to {}",
                    event.stream_id, event.version
                ));
            }
            *last = event.version;
            if !ids.insert(event.metadata.event_id) {
                return Err(format!("kill {kill}: event id twice at {}", event.position));
            }
            if event.event_type == "TransferDebited"
                && let Ok(AccountEvent::TransferDebited { transfer_id, .. }) =
                    decode::<AccountEvent>(event)
            {
                debited.insert(transfer_id);
            }
        }
        if slice.events.is_empty() {
            break;
        }
    }
    if next_position != head + 1 {
        return Err(format!(
            "kill {kill}: the log ends at {next_position}, the head is {head}"
        ));
    }
    if let Some(missing) = oracle.transfers.iter().find(|t| !debited.contains(*t)) {
        return Err(format!(
            "kill {kill}: acknowledged transfer {missing} was not debited"
        ));
    }
    // What survives of each client's trace is a prefix of it: the commands it
    // sent were executed up to some point and not after, and that point is
    // at or past its last acknowledgement (at most the one in flight beyond).
    for (trace, acknowledged) in &oracle.traces {
        let mut executed = 0;
        for (i, name) in trace.iter().enumerate() {
            let ran = store
                .command_outcome(CommandId::from_name(name))
                .map_err(|e| e.to_string())?
                .is_some();
            match (ran, i == executed) {
                (true, true) => executed += 1,
                (true, false) => {
                    return Err(format!(
                        "kill {kill}: {name} ran after a command that did not"
                    ));
                }
                (false, _) => {}
            }
        }
        if executed < *acknowledged || executed > acknowledged + 1 {
            return Err(format!(
                "kill {kill}: {executed} commands of a trace ran, {acknowledged} were acknowledged"
            ));
        }
    }
    let report = store.verify().map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("kill {kill}: verify: {:?}", report.faults));
    }
    Ok(head)
}

fn wait_until(
    what: &str,
    mut condition: impl FnMut() -> Result<bool, Box<dyn std::error::Error>>,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if condition()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("timed out waiting until {what}").into())
}

/// Starts the runtime on the directory, lets every transfer finish and the
/// projection catch up, and checks: each transfer completed or compensated
/// exactly once, money conserved, the balances (each account and the total)
/// equal to the fold of the log. Returns (completed, compensated).
fn full_check(dir: &Path) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let runtime = start(dir)?;
    wait_until("every transfer is finished", || {
        let status = runtime.process_status(transfers::NAME)?;
        if status.stuck > 0 {
            return Err(format!("stuck: {:?}", runtime.stuck_instances(transfers::NAME)?).into());
        }
        Ok(status.state == ConsumerState::Live
            && status.checkpoint == runtime.store().head()
            && status.outbox == 0
            && status.timers == 0
            && transfers::audit(runtime.store())?.open == 0)
    })?;
    let audit = transfers::audit(runtime.store())?;
    if audit.total_money != audit.deposited {
        return Err(format!(
            "money is not conserved: {} in balances, {} deposited",
            audit.total_money, audit.deposited
        )
        .into());
    }
    let head = runtime.store().head();
    runtime.wait_for_blocking(balances::NAME, head, Duration::from_secs(60))?;
    let mut folded: BTreeMap<String, i128> = BTreeMap::new();
    let mut from = 1;
    while from <= head {
        let slice = runtime.store().read_all(from, 65_536, &Filter::all())?;
        for event in &slice.events {
            let delta = decode::<AccountEvent>(event)?.balance_delta();
            *folded.entry(event.stream_id.to_string()).or_default() += delta;
        }
        from = slice.next_position;
    }
    let view = runtime.query(balances::NAME)?;
    for (stream, balance) in &folded {
        let projected: Option<i128> = view.get_as(stream.as_bytes())?;
        if projected != Some(*balance) {
            return Err(
                format!("balances says {projected:?} for {stream}, the log {balance}").into(),
            );
        }
    }
    let total: Option<i128> = view.get_as(balances::TOTAL_KEY)?;
    if total != Some(audit.total_money) {
        return Err(format!("balances total {total:?}, the log {}", audit.total_money).into());
    }
    runtime.shutdown_blocking()?;
    Ok((audit.completed, audit.compensated))
}

// Guards invariants 1 to 6 under SIGKILL (see the module documentation).
#[test]
fn kill_loop_loses_nothing_acknowledged_and_finishes_every_transfer() -> TestResult {
    let kills: u64 = match std::env::var("EVENTFOLD_KILLS") {
        Ok(n) => n.parse()?,
        Err(_) => KILLS_DEFAULT,
    };
    let dir = tempfile::tempdir()?;
    let mut rng_state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut events = 0;
    let (mut completed, mut compensated) = (0, 0);
    for kill in 1..=kills {
        // xorshift: varying moments, the same sequence every run.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let after = Duration::from_millis(150 + rng_state % 900);
        common::run_and_kill("kill_loop_child", CHILD_DIR, dir.path(), after);
        let store = RocksStore::open(dir.path().join("store"), StoreOptions::default())?;
        let oracle = read_oracle(dir.path())?;
        events = check_after_kill(&store, &oracle, kill)?;
        store.close();
        drop(store);
        if kill % FULL_CHECK_EVERY == 0 || kill == kills {
            (completed, compensated) = full_check(dir.path())?;
        }
    }
    let oracle = read_oracle(dir.path())?;
    assert!(!oracle.deposits.is_empty() && !oracle.transfers.is_empty());
    assert!(completed > 0 && compensated > 0);
    println!(
        "kill loop: {kills} kills survived; {} acknowledged deposits and {} acknowledged transfers checked; \
         {events} events in the log; {completed} transfers completed, {compensated} compensated; money conserved; \
         balances equal the fold of the log; verify clean",
        oracle.deposits.len(),
        oracle.transfers.len()
    );
    Ok(())
}
