//! W2's deposits on cqrs-es 0.5 with its in-memory store (`MemStore`):
//! open N accounts, then C concurrent clients send K `Deposit` commands to
//! uniformly random accounts (fixed seed), each awaited before the next.
//! Prints one line of figures on stderr, and writes JSON with `--json`.
//!
//! `MemStore` persists nothing and keeps every event in one map behind a
//! lock; each command loads the aggregate by replaying its events. It is
//! the fastest store cqrs-es has: the bar eventfold's buffered W2 (which
//! writes every event to RocksDB's WAL) is compared with.

use clap::Parser;
use cqrs_es::mem_store::MemStore;
use cqrs_es::{Aggregate, CqrsFramework, DomainEvent, EventStore};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Accounts (N).
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Concurrent clients (C).
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Deposits (K).
    #[arg(long, default_value_t = 200_000)]
    commands: u64,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Worker threads of the tokio runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Also write the figures as JSON here. (MemStore prints two lines
    /// per command on stdout; the run script sends them to /dev/null,
    /// the cheapest place, and reads this file.)
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: u64,
}

#[derive(Debug)]
enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            AccountEvent::Opened { .. } => "Opened".into(),
            AccountEvent::Deposited { .. } => "Deposited".into(),
        }
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("the account is not open")]
    NotOpen,
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("an amount must be positive")]
    ZeroAmount,
    #[error("the balance would overflow")]
    Overflow,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: AccountCommand,
        _: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), AccountError> {
        let event = match command {
            AccountCommand::Open { .. } if self.open => return Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner } => AccountEvent::Opened { owner },
            AccountCommand::Deposit { .. } if !self.open => return Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount: 0 } => return Err(AccountError::ZeroAmount),
            AccountCommand::Deposit { amount } => {
                self.balance
                    .checked_add(amount)
                    .ok_or(AccountError::Overflow)?;
                AccountEvent::Deposited { amount }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => {
                self.balance = self.balance.saturating_add(amount)
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let store = MemStore::<Account>::default();
    // A clone shares the events: read after the run to check them.
    let cqrs = Arc::new(CqrsFramework::new(store.clone(), vec![], ()));
    for id in 0..args.accounts {
        let owner = format!("owner-{id}");
        cqrs.execute(&format!("acc-{id}"), AccountCommand::Open { owner })
            .await?;
    }
    let clients = args.clients.clamp(1, args.commands.max(1));
    let per_client = args.commands.div_ceil(clients);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let cqrs = Arc::clone(&cqrs);
        let (accounts, total, seed) = (args.accounts, args.commands, args.seed);
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(c));
            let first = c * per_client;
            for _ in first..(first + per_client).min(total) {
                let id = rng.gen_range(0..accounts);
                cqrs.execute(&format!("acc-{id}"), AccountCommand::Deposit { amount: 1 })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let mut landed = 0;
    for id in 0..args.accounts {
        landed += store.load_events(&format!("acc-{id}")).await?.len() as u64;
    }
    // Every command was acknowledged; MemStore has no version check, so
    // two deposits to one account at once can both load the same history
    // and the later commit overwrite the earlier: counted, not hidden.
    let expected = args.accounts + args.commands;
    let lost = expected.saturating_sub(landed);
    let per_second = args.commands as f64 / seconds;
    // CPU per command as loadgen reports it: the process's CPU time over
    // the deposits, divided by their count.
    let cpu_us = cpu.map(|cpu| cpu * 1e6 / args.commands.max(1) as f64);
    let line = format!(
        "cqrs-es 0.5.0 MemStore: {} deposits to {} accounts from {} clients in {seconds:.2} s: {per_second:.0}/s, {} µs of CPU per command; {lost} acknowledged events lost",
        args.commands,
        args.accounts,
        clients,
        cpu_us.map_or("?".into(), |us| format!("{us:.2}")),
    );
    eprintln!("{line}");
    if let Some(path) = &args.json {
        let json = format!(
            "{{\"peer\":\"cqrs-es 0.5.0 MemStore\",\"accounts\":{},\"clients\":{},\"commands\":{},\"seconds\":{seconds:.3},\"commands_per_s\":{per_second:.0},\"cpu_seconds\":{},\"cpu_us_per_command\":{},\"acknowledged_events_lost\":{lost}}}\n",
            args.accounts,
            clients,
            args.commands,
            cpu.map_or("null".into(), |cpu| format!("{cpu:.2}")),
            cpu_us.map_or("null".into(), |us| format!("{us:.2}")),
        );
        std::fs::write(path, json)?;
    }
    Ok(())
}

/// `/proc`'s clock ticks per second (`USER_HZ`, 100 on Linux's ABI).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system) this process has used so far, in seconds
/// (`None` where `/proc` is not available). The same reading as loadgen's
/// (`benches/src/measure.rs`); this crate is built outside the workspace
/// and does not depend on it.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime is field 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}
