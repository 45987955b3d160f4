//! Concurrent clients driving commands through the runtime's handle.

use crate::measure::{Sampler, Timeline, histogram};
use eventfold_examples::{Account, AccountCommand};
use eventfold_runtime::{CommandError, RuntimeHandle};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::future::Future;
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

/// Where the clients' futures run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// On the runtime's shard threads, spread evenly
    /// ([`RuntimeHandle::spawn_on_shard`]), as the request handlers of an
    /// actix service run: no thread of their own, and a command routed to
    /// the client's own shard is sent without a thread hand-off.
    Shards,
    /// On one thread of their own (the caller's).
    Thread,
}

impl Placement {
    /// Its name in the JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shards => "shards",
            Self::Thread => "thread",
        }
    }
}

/// The concurrent clients of a run: how many, and where they run.
#[derive(Clone, Copy, Debug)]
pub struct Clients {
    /// How many (C).
    pub count: u64,
    /// Where their futures run.
    pub on: Placement,
}

/// Runs client futures `client(0) .. client(count - 1)` where `clients.on`
/// says and waits for all of them; their results in client order.
pub fn run_clients<T, F, Fut>(
    runtime: &RuntimeHandle,
    clients: Clients,
    client: F,
) -> Result<Vec<Result<T, String>>, String>
where
    T: Send + 'static,
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + 'static,
{
    match clients.on {
        Placement::Thread => Ok(futures::executor::block_on(futures::future::join_all(
            (0..clients.count).map(client),
        ))),
        Placement::Shards => {
            let client = Arc::new(client);
            let mut answers = Vec::with_capacity(usize::try_from(clients.count).unwrap_or(0));
            for c in 0..clients.count {
                let (send, answer) = futures::channel::oneshot::channel();
                let client = Arc::clone(&client);
                // Spread evenly: the handle takes the index modulo the shards.
                // A shard's mailbox (65,536 by default) holds far more
                // clients than a run has; past it, the run fails saying so.
                runtime
                    .spawn_on_shard(usize::try_from(c).unwrap_or(0), move || async move {
                        let _ = send.send(client(c).await);
                    })
                    .map_err(|e| format!("client {c} could not start: {e}"))?;
                answers.push(answer);
            }
            Ok(
                futures::executor::block_on(futures::future::join_all(answers))
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|_| Err("a client task was dropped".into())))
                    .collect(),
            )
        }
    }
}

/// Runs commands `0..total` from `clients` concurrent clients, each sending
/// its next command when the previous one is answered (a closed loop), and
/// measures every round trip. Client `c` sends the commands
/// `c * ceil(total / clients) ..` with an RNG seeded by `seed + c`; `command`
/// gives the account id and the command for an index.
///
/// The clients are futures awaiting [`RuntimeHandle::execute`] where
/// `clients.on` says ([`run_clients`]): like the tasks of a service
/// embedding the runtime, they cost no thread each.
pub fn drive(
    runtime: &RuntimeHandle,
    clients: Clients,
    total: u64,
    bar: ProgressBar,
    seed: u64,
    refusals: Refusals,
    command: impl Fn(u64, &mut SmallRng) -> (String, AccountCommand) + Send + Sync + 'static,
) -> Result<Driven, String> {
    let clients = Clients {
        count: clients.count.clamp(1, total.max(1)),
        ..clients
    };
    let per_client = total.div_ceil(clients.count);
    let done = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(Arc::clone(&done), bar);
    let started = Instant::now();
    let handle = runtime.clone();
    let counted = Arc::clone(&done);
    let command = Arc::new(command);
    let results = run_clients(runtime, clients, move |c: u64| {
        let (runtime, done, command) = (handle.clone(), Arc::clone(&counted), Arc::clone(&command));
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
    })?;
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
