//! WORKLOADS.md W7: transfers through the `transfers` process manager, each
//! client waiting until its transfer is credited or refunded in the log.

use crate::clients::{Clients, run_clients};
use crate::measure::{Sampler, Timeline, histogram, progress};
use eventfold_examples::transfers;
use eventfold_examples::{Account, AccountCommand, AccountError, AccountEvent};
use eventfold_runtime::BusError;
use eventfold_runtime::domain::RecordedEvent;
use eventfold_runtime::domain::Timestamp;
use eventfold_runtime::storage::{Filter, payload};
use eventfold_runtime::{CommandError, RuntimeHandle};
use futures::future::Either;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a client waits for its transfer to finish after the debit.
pub const TRANSFER_WAIT_MAX: Duration = Duration::from_secs(120);
/// Longest the run waits for the process manager to answer every debit
/// after the clients are done.
pub const SETTLE_WAIT_MAX: Duration = Duration::from_secs(600);
/// The events that finish a transfer.
const FINISHED_TYPES: [&str; 2] = ["TransferCredited", "TransferRefunded"];
/// How often the watcher checks whether it is told to stop.
const WATCH_TICK: Duration = Duration::from_millis(10);
/// Most finished-transfer events the watcher reads from the log at once.
pub const WATCH_READ_EVENTS_MAX: usize = 4096;

/// The figures of a W7 run.
#[derive(Debug)]
pub struct Transfers {
    /// Transfers debited (accepted at the source).
    pub started: u64,
    /// Transfers refused at the source (insufficient funds).
    pub refused_at_source: u64,
    /// Transfers credited to their target.
    pub completed: u64,
    /// Transfers refunded to their source.
    pub compensated: u64,
    /// From the first debit to the last credit or refund in the log.
    pub seconds: f64,
    /// Client sends the debit → it sees the credit or refund, microseconds.
    pub end_to_end: Histogram<u64>,
    /// Round trip of the debit command alone, microseconds.
    pub debit_latency: Histogram<u64>,
    /// Sum of all balances at the end.
    pub total_money: i128,
    /// Sum of all deposits.
    pub deposited: i128,
    /// Finished transfers over time.
    pub timeline: Timeline,
}

impl Transfers {
    /// Finished (credited or refunded) transfers per second.
    pub fn per_second(&self) -> f64 {
        (self.completed + self.compensated) as f64 / self.seconds
    }
}

/// What a W7 run does.
#[derive(Clone, Debug)]
pub struct TransferLoad {
    /// Accounts `0..accounts`; the last 5% are closed first.
    pub accounts: u64,
    /// Transfers to start.
    pub transfers: u64,
    /// Concurrent clients, and where they run.
    pub clients: Clients,
    /// Seed of the clients' choices.
    pub seed: u64,
    /// Hide the progress bar.
    pub quiet: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// Closes 5% of the accounts, runs the transfers from the clients, waits
/// until the process manager has finished every one, and audits the log:
/// each transfer debited once, then credited or refunded once, money
/// conserved. The runtime must run the `transfers` process manager.
pub fn run_transfers(runtime: &RuntimeHandle, load: &TransferLoad) -> Result<Transfers, String> {
    let accounts = load.accounts.max(2);
    let open = (accounts - accounts / 20).max(2);
    for id in open..accounts {
        runtime
            .execute_blocking::<Account>(&id.to_string(), AccountCommand::Close)
            .map_err(|e| format!("closing account {id}: {e}"))?;
    }
    let clients = Clients {
        count: load.clients.count.clamp(1, load.transfers.max(1)),
        ..load.clients
    };
    let total = load.transfers;
    let per_client = total.div_ceil(clients.count);
    let started_at = Timestamp::now();
    let done = Arc::new(AtomicU64::new(0));
    let watcher = Watcher::start(runtime);
    let finished = Arc::clone(&watcher.finished);
    let sampler = Sampler::start_with(
        move || finished.load(Ordering::Relaxed),
        progress(total, "transfer", load.quiet),
    );
    let (handle, counted, all_waiters) = (
        runtime.clone(),
        Arc::clone(&done),
        Arc::clone(&watcher.waiters),
    );
    let base_seed = load.seed;
    let results = run_clients(runtime, clients, move |c| {
        let (runtime, done) = (handle.clone(), Arc::clone(&counted));
        let waiters = Arc::clone(&all_waiters);
        let seed = base_seed.wrapping_add(1000 + c);
        async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut latency = histogram();
            let mut end_to_end = histogram();
            let mut refused = 0;
            let first = c * per_client;
            for i in first..(first + per_client).min(total) {
                let from = rng.gen_range(0..open);
                let to = if accounts > open && rng.gen_bool(0.05) {
                    rng.gen_range(open..accounts)
                } else {
                    (from + rng.gen_range(1..open)) % open
                };
                let transfer_id = format!("t{i}");
                let (finished, wait) = oneshot::channel();
                lock(&waiters).insert(transfer_id.clone(), finished);
                let command = AccountCommand::TransferOut {
                    transfer_id: transfer_id.clone(),
                    to: to.to_string(),
                    amount: rng.gen_range(1..=10),
                };
                let sent = Instant::now();
                match runtime.execute::<Account>(&from.to_string(), command).await {
                    Ok(_) => {
                        latency.saturating_record(sent.elapsed().as_micros() as u64);
                        let timeout = futures_timer::Delay::new(TRANSFER_WAIT_MAX);
                        match futures::future::select(wait, timeout).await {
                            futures::future::Either::Left((Ok(()), _)) => {}
                            _ => {
                                let instance = runtime.process_instance::<transfers::Transfer>(
                                    transfers::NAME,
                                    &transfer_id,
                                );
                                let status = runtime.process_status(transfers::NAME);
                                return Err(format!(
                                    "transfer {transfer_id} did not finish within \
                                     {TRANSFER_WAIT_MAX:?}; its instance: {instance:?}; \
                                     the process manager: {status:?}"
                                ));
                            }
                        }
                        end_to_end.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                    Err(CommandError::Rejected(AccountError::InsufficientFunds { .. })) => {
                        lock(&waiters).remove(&transfer_id);
                        refused += 1;
                    }
                    Err(error) => return Err(format!("transfer {transfer_id} failed: {error}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok((latency, end_to_end, refused))
        }
    })?;
    let mut debit_latency = histogram();
    let mut end_to_end = histogram();
    let mut refused_at_source = 0;
    let joined: Result<(), String> = results.into_iter().try_for_each(|result| {
        let (latency, finished, refused) = result?;
        debit_latency.add(latency).map_err(|e| e.to_string())?;
        end_to_end.add(finished).map_err(|e| e.to_string())?;
        refused_at_source += refused;
        Ok(())
    });
    let timeline = sampler.stop();
    watcher.stop()?;
    joined?;
    settle(runtime)?;
    let audit = transfers::audit(runtime.store())?;
    let started = total - refused_at_source;
    if audit.open > 0 || audit.completed + audit.compensated != started {
        return Err(format!(
            "{started} transfers debited by acknowledged commands; {} completed, {} compensated, {} unfinished",
            audit.completed, audit.compensated, audit.open
        ));
    }
    if audit.total_money != audit.deposited {
        return Err(format!(
            "money is not conserved: balances sum to {}, deposits to {}",
            audit.total_money, audit.deposited
        ));
    }
    let seconds = audit
        .last_finished_us
        .saturating_sub(started_at.as_micros()) as f64
        / 1e6;
    Ok(Transfers {
        started,
        refused_at_source,
        completed: audit.completed,
        compensated: audit.compensated,
        seconds: seconds.max(1e-6),
        end_to_end,
        debit_latency,
        total_money: audit.total_money,
        deposited: audit.deposited,
        timeline,
    })
}

/// Waits until the process manager has handled every debit and answered
/// every command it sent.
fn settle(runtime: &RuntimeHandle) -> Result<(), String> {
    let last_debit = runtime.store().head();
    let waiting = Instant::now();
    loop {
        let status = runtime
            .process_status(transfers::NAME)
            .map_err(|e| e.to_string())?;
        if status.stuck > 0 {
            return Err(format!(
                "{} transfers are stuck: {:?}",
                status.stuck,
                runtime.stuck_instances(transfers::NAME)
            ));
        }
        if status.checkpoint >= last_debit && status.outbox == 0 {
            return Ok(());
        }
        if waiting.elapsed() > SETTLE_WAIT_MAX {
            return Err(format!("transfers did not finish: {status:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Tails the log for transfers that finished (credited or refunded) and
/// wakes the client waiting for each.
struct Watcher {
    waiters: Waiters,
    finished: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Watcher {
    fn start(runtime: &RuntimeHandle) -> Self {
        let waiters: Waiters = Arc::default();
        let running = Arc::new(AtomicBool::new(true));
        let finished = Arc::new(AtomicU64::new(0));
        let thread = {
            let (runtime, waiters, running, finished) = (
                runtime.clone(),
                Arc::clone(&waiters),
                Arc::clone(&running),
                Arc::clone(&finished),
            );
            // Subscribed before the head is read, and both before `start`
            // returns (the clients start right after): nothing that
            // finishes after the head is missed. (Done in the thread, a
            // transfer that finished before the thread ran was skipped and
            // its client waited until TRANSFER_WAIT_MAX.)
            let mut bus = runtime.subscribe();
            let mut next = runtime.store().head() + 1;
            std::thread::spawn(move || -> Result<(), String> {
                let seen = |next: &mut u64, event: &RecordedEvent| -> Result<(), String> {
                    if event.position < *next {
                        return Ok(());
                    }
                    *next = event.position + 1;
                    if !FINISHED_TYPES.contains(&event.event_type.as_str()) {
                        return Ok(());
                    }
                    let decoded: AccountEvent =
                        payload::decode(&event.payload).map_err(|e| e.to_string())?;
                    if let AccountEvent::TransferCredited { transfer_id, .. }
                    | AccountEvent::TransferRefunded { transfer_id, .. } = decoded
                    {
                        finished.fetch_add(1, Ordering::Relaxed);
                        if let Some(waiter) = lock(&waiters).remove(&transfer_id) {
                            let _ = waiter.send(());
                        }
                    }
                    Ok(())
                };
                let mut tick = futures_timer::Delay::new(WATCH_TICK);
                while running.load(Ordering::Relaxed) {
                    let woke = futures::executor::block_on(futures::future::select(
                        Box::pin(bus.recv()),
                        &mut tick,
                    ));
                    match woke {
                        Either::Left((Ok(batch), _)) => {
                            for event in batch.iter() {
                                seen(&mut next, event)?;
                            }
                        }
                        Either::Left((Err(BusError::Lagged(_)), _)) => {
                            // Fell behind the bus: read what it dropped.
                            let filter = Filter::event_types(FINISHED_TYPES);
                            let head = runtime.store().head();
                            let mut from = next;
                            while from <= head {
                                let slice = runtime
                                    .store()
                                    .read_all(from, WATCH_READ_EVENTS_MAX, &filter)
                                    .map_err(|e| e.to_string())?;
                                for event in &slice.events {
                                    seen(&mut next, event)?;
                                }
                                from = slice.next_position;
                            }
                        }
                        Either::Left((Err(BusError::Closed), _)) => break,
                        Either::Left((Err(error), _)) => return Err(error.to_string()),
                        Either::Right(_) => tick.reset(WATCH_TICK),
                    }
                }
                Ok(())
            })
        };
        Self {
            waiters,
            finished,
            running,
            thread,
        }
    }

    fn stop(self) -> Result<(), String> {
        self.running.store(false, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the watcher panicked".to_owned())?
    }
}
