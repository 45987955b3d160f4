//! Concurrent clients driving commands through the runtime's handle.

use crate::measure::{Sampler, Timeline, histogram};
use eventfold_examples::{Account, AccountCommand};
use eventfold_runtime::{CommandError, RuntimeHandle};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the clients of one run measured.
#[derive(Debug)]
pub struct Driven {
    /// From the first command sent to the last answer.
    pub elapsed: Duration,
    /// Round trip of each command (sent → answered), microseconds.
    pub latency: Histogram<u64>,
    /// Answered commands over time.
    pub timeline: Timeline,
    /// Commands refused by the aggregate (counted only when allowed).
    pub rejected: u64,
}

/// Whether a refusal by the aggregate ends the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusals {
    /// A refused command is an error of the run.
    Fail,
    /// Refusals are expected (commands that only activate an aggregate).
    Count,
}

/// Runs commands `0..total` from `clients` concurrent clients, each sending
/// its next command when the previous one is answered (a closed loop), and
/// measures every round trip. Client `c` sends the commands
/// `c * ceil(total / clients) ..` with an RNG seeded by `seed + c`; `command`
/// gives the account id and the command for an index.
///
/// The clients are futures on one thread (the caller's), awaiting
/// [`RuntimeHandle::execute`]: like the tasks of a service embedding the
/// runtime, they cost no thread each.
pub fn drive(
    runtime: &RuntimeHandle,
    clients: u64,
    total: u64,
    bar: ProgressBar,
    seed: u64,
    refusals: Refusals,
    command: impl Fn(u64, &mut SmallRng) -> (String, AccountCommand),
) -> Result<Driven, String> {
    let clients = clients.clamp(1, total.max(1));
    let per_client = total.div_ceil(clients);
    let done = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(Arc::clone(&done), bar);
    let command = &command;
    let started = Instant::now();
    let results = futures::executor::block_on(futures::future::join_all((0..clients).map(|c| {
        let (runtime, done) = (runtime.clone(), Arc::clone(&done));
        async move {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(c));
            let mut latency = histogram();
            let mut rejected = 0;
            let first = c * per_client;
            for i in first..(first + per_client).min(total) {
                let (id, cmd) = command(i, &mut rng);
                let sent = Instant::now();
                match runtime.execute::<Account>(&id, cmd).await {
                    Ok(_) => {}
                    Err(CommandError::Rejected(_)) if refusals == Refusals::Count => rejected += 1,
                    Err(error) => {
                        return Err(format!("command {i} on account {id} failed: {error}"));
                    }
                }
                latency.saturating_record(sent.elapsed().as_micros() as u64);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>((latency, rejected))
        }
    })));
    let elapsed = started.elapsed();
    let timeline = sampler.stop();
    let mut latency = histogram();
    let mut rejected = 0;
    for result in results {
        let (h, r) = result?;
        latency.add(h).map_err(|e| e.to_string())?;
        rejected += r;
    }
    Ok(Driven {
        elapsed,
        latency,
        timeline,
        rejected,
    })
}
