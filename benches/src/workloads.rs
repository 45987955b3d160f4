//! The workloads W1–W8 of `../shared/WORKLOADS.md`, each run through the
//! runtime on an embedded RocksDB in a temporary directory, with its
//! raw-RocksDB baseline measured in the same run on the same disk.

use crate::clients::{Clients, Placement, Refusals, drive};
use crate::measure::{Timeline, cpu_seconds, histogram, peak_rss_bytes, progress, rss_bytes};
use crate::transfers::{TransferLoad, run_transfers};
use crate::{RunReport, raw_group_commit};
use eventfold_examples::balances::{self, Balances};
use eventfold_examples::transfers::TransferProcess;
use eventfold_examples::{Account, AccountCommand, AccountEvent};
use eventfold_runtime::domain::{DomainEvent, ExpectedVersion, Metadata, NewEvent, StreamId};
use eventfold_runtime::evolution::Upcasters;
use eventfold_runtime::process::ProcessSettings;
use eventfold_runtime::storage::{
    Durability, EventStore, Filter, KEYSPACES, RocksStore, StoreOptions, payload,
};
use eventfold_runtime::{ConsumerSettings, Passivation, Runtime, RuntimeBuilder, RuntimeHandle};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Events per append when a workload fills a store directly (W5, W8).
pub const FILL_EVENTS_PER_APPEND: usize = 100;
/// Events read per `read_all` call when the log is checked.
pub const CHECK_READ_EVENTS_MAX: usize = 65_536;
/// Events per read when W8 warms the block cache.
pub const WARM_READ_EVENTS_MAX: usize = 1024;
/// Longest a projection may take to catch up (W5).
pub const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(3600);

/// One of the workloads of WORKLOADS.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Deposits to random accounts, durable.
    W1,
    /// Deposits to random accounts, buffered (WAL written, not synced).
    W2,
    /// Deposits to one hot account, durable.
    W3,
    /// 1,000,000 accounts under a memory budget that forces passivation.
    W4,
    /// A new projection catching up with 1,000,000 events.
    W5,
    /// Activation of one aggregate with 100,000 events, with and without
    /// snapshots.
    W6,
    /// Transfers through a process manager.
    W7,
    /// 1,000,000 idle resident aggregates: memory per aggregate.
    W8,
}

impl Workload {
    /// `"W1"` … `"W8"`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
            Workload::W5 => "W5",
            Workload::W6 => "W6",
            Workload::W7 => "W7",
            Workload::W8 => "W8",
        }
    }

    /// The JSON field a run is judged by, and its unit: `--runs` reports
    /// the run with its median. Throughput, but for W8, whose figure is
    /// memory per resident aggregate.
    pub fn headline(self) -> (&'static str, &'static str) {
        match self {
            Workload::W8 => (
                "rss_bytes_per_resident_aggregate",
                "bytes RSS per resident aggregate",
            ),
            Workload::W5 => ("commands_per_s", "events/s"),
            Workload::W6 => ("commands_per_s", "activations/s"),
            Workload::W7 => ("commands_per_s", "transfers/s"),
            _ => ("commands_per_s", "commands/s"),
        }
    }

    /// What the workload's `commands` count.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::W1 | Workload::W2 | Workload::W3 | Workload::W4 => "commands",
            Workload::W5 => "events",
            Workload::W6 | Workload::W8 => "activations",
            Workload::W7 => "transfers",
        }
    }

    fn default_accounts(self) -> u64 {
        match self {
            Workload::W4 | Workload::W8 => 1_000_000,
            Workload::W6 => 2,
            _ => 10_000,
        }
    }

    fn default_commands(self) -> u64 {
        match self {
            Workload::W4 | Workload::W5 => 1_000_000,
            Workload::W6 => 400,
            Workload::W7 => 100_000,
            Workload::W8 => 1_000_000,
            _ => 200_000,
        }
    }

    fn default_clients(self) -> u64 {
        match self {
            Workload::W6 => 1,
            Workload::W7 => 256,
            _ => 64,
        }
    }

    fn default_durability(self) -> Durability {
        match self {
            Workload::W2 | Workload::W5 | Workload::W8 => Durability::Buffered,
            _ => Durability::Sync,
        }
    }
}

/// How to run a workload; `None` takes the workload's own default.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which workload.
    pub workload: Workload,
    /// Accounts (N).
    pub accounts: Option<u64>,
    /// Concurrent clients (C).
    pub clients: Option<u64>,
    /// Commands (K), events (W5), transfers (W7) or activations (W6, W8).
    pub commands: Option<u64>,
    /// Durability of the store.
    pub durability: Option<Durability>,
    /// W6: events in the aggregate's history.
    pub history: u64,
    /// W4: the memory budget; peak RSS is checked against it.
    pub memory_limit_bytes: u64,
    /// W4: resident aggregate actors at most (the runtime's passivation
    /// bound, sized to the memory budget).
    pub resident_max: usize,
    /// Size of RocksDB's block cache.
    pub block_cache_bytes: usize,
    /// W4: bytes of the runtime's state cache (passivated aggregates' state).
    pub state_cache_bytes: usize,
    /// Seed of the clients' choices.
    pub seed: u64,
    /// Shards of the runtime (`None`: one per core).
    pub shards: Option<usize>,
    /// W7: partitions (host threads) of the transfers process manager
    /// (`None`: one per shard).
    pub process_partitions: Option<usize>,
    /// Where the clients' futures run.
    pub clients_on: Placement,
    /// Skip the raw-RocksDB baseline.
    pub no_baseline: bool,
    /// W5: the log is written at schema version 0 and every event goes
    /// through an upcasting step to version 1 (decoded, mapped, encoded).
    pub upcast: bool,
    /// Hide progress bars.
    pub quiet: bool,
}

/// W4's share of its 2 GiB memory budget for RocksDB's block cache (a
/// quarter; the 250,000 resident actors and the rest of the process take
/// about 1.2 GB). With the store's default of 64 MiB most activations read
/// their blocks through the OS page cache: `pread`, a checksum and LZ4 on
/// every read took about a fifth of the CPU.
pub const W4_BLOCK_CACHE_BYTES: usize = 512 << 20;

/// W4's share of its memory budget for the runtime's state cache: room for
/// the encoded state of every account (about 220 bytes each as the cache
/// counts them, so 1,000,000 fit), so that an activation creates an actor
/// but does not read the store.
/// `--state-cache-mib 0` measures activations that read the store.
pub const W4_STATE_CACHE_BYTES: usize = 256 << 20;

impl Config {
    /// The defaults of WORKLOADS.md for `workload`.
    pub fn new(workload: Workload) -> Self {
        Self {
            workload,
            accounts: None,
            clients: None,
            commands: None,
            durability: None,
            history: 100_000,
            memory_limit_bytes: 2 << 30,
            resident_max: 250_000,
            block_cache_bytes: match workload {
                Workload::W4 => W4_BLOCK_CACHE_BYTES,
                _ => StoreOptions::default().block_cache_bytes,
            },
            state_cache_bytes: match workload {
                Workload::W4 => W4_STATE_CACHE_BYTES,
                _ => Passivation::default().state_cache_bytes_max,
            },
            seed: 42,
            shards: None,
            process_partitions: None,
            clients_on: Placement::Shards,
            no_baseline: false,
            upcast: false,
            quiet: false,
        }
    }

    fn accounts(&self) -> u64 {
        self.accounts
            .unwrap_or(self.workload.default_accounts())
            .max(1)
    }

    fn commands(&self) -> u64 {
        self.commands
            .unwrap_or(self.workload.default_commands())
            .max(1)
    }

    fn clients(&self) -> u64 {
        self.clients
            .unwrap_or(self.workload.default_clients())
            .max(1)
    }

    /// The clients: how many, and where they run.
    fn client_set(&self) -> Clients {
        Clients {
            count: self.clients(),
            on: self.clients_on,
        }
    }

    fn durability(&self) -> Durability {
        self.durability
            .unwrap_or(self.workload.default_durability())
    }

    fn builder(&self) -> RuntimeBuilder {
        let store = StoreOptions {
            block_cache_bytes: self.block_cache_bytes,
            ..StoreOptions::with_durability(self.durability())
        };
        let builder = Runtime::builder()
            .store_options(store)
            .aggregate::<Account>();
        match self.shards {
            Some(shards) => builder.shards(shards),
            None => builder,
        }
    }
}

/// The figures of one run.
#[derive(Debug)]
pub struct Report {
    /// Which workload.
    pub workload: Workload,
    /// Durability of the store.
    pub durability: Durability,
    /// Accounts (N).
    pub accounts: u64,
    /// Concurrent clients, and where they ran.
    pub clients: Clients,
    /// Operations measured (see [`Workload::unit`]).
    pub commands: u64,
    /// Wall-clock time of the measured phase.
    pub seconds: f64,
    /// Latency of each operation, microseconds (none for W5).
    pub latency: Option<Histogram<u64>>,
    /// Peak RSS of the process over the whole run.
    pub rss_bytes_peak: Option<u64>,
    /// Events per fsync in the measured phase (none when nothing synced).
    pub events_per_fsync: Option<f64>,
    /// The raw-RocksDB baseline of the same workload, same run, same disk.
    pub baseline_per_s: Option<f64>,
    /// What the baseline is.
    pub baseline: String,
    /// Operations completed over time.
    pub timeline: Timeline,
    /// Figures of this workload only, in the order printed.
    pub extra: Vec<(&'static str, Value)>,
}

impl Report {
    /// Operations per second.
    pub fn per_second(&self) -> f64 {
        self.commands as f64 / self.seconds.max(1e-9)
    }

    /// Throughput over the baseline's.
    pub fn ratio_to_baseline(&self) -> Option<f64> {
        self.baseline_per_s.map(|b| self.per_second() / b)
    }
}

/// Runs `config.workload`. Errors are failed commands or a failed check of
/// the log (lost or duplicated events, money not conserved).
pub fn run(config: &Config) -> Result<Report, String> {
    match config.workload {
        Workload::W1 | Workload::W2 => deposits(config, false),
        Workload::W3 => deposits(config, true),
        Workload::W4 => many_aggregates(config),
        Workload::W5 => catch_up(config),
        Workload::W6 => rehydration(config),
        Workload::W7 => transfers(config),
        Workload::W8 => idle_actors(config),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The command that opens account `i` (owner `owner-{i}`).
pub fn open_command(i: u64) -> (String, AccountCommand) {
    (
        i.to_string(),
        AccountCommand::Open {
            owner: format!("owner-{i}"),
        },
    )
}

/// Opens accounts `0..accounts` from the clients.
fn open_accounts(runtime: &RuntimeHandle, config: &Config, accounts: u64) -> Result<f64, String> {
    let driven = drive(
        runtime,
        config.client_set(),
        accounts,
        progress(accounts, "open", config.quiet),
        config.seed,
        Refusals::Fail,
        |i, _| open_command(i),
    )?;
    Ok(driven.elapsed.as_secs_f64())
}

fn baseline(config: &Config, operations: u64, durability: Durability) -> Option<RunReport> {
    if config.no_baseline {
        return None;
    }
    let dir = tempfile::tempdir().ok()?;
    Some(raw_group_commit(
        dir.path(),
        config.clients() as usize,
        operations,
        durability,
    ))
}

fn baseline_text(config: &Config, durability: Durability) -> String {
    format!(
        "raw RocksDB: {} threads, one group-commit writer, one WriteBatch per flush, {durability:?}, same count",
        config.clients()
    )
}

/// Counts the `Deposited` events in the log.
fn count_deposits(store: &dyn EventStore) -> Result<u64, String> {
    let filter = Filter::event_types(["Deposited"]);
    let (mut from, mut count) = (1, 0);
    while from <= store.head() {
        let slice = store
            .read_all(from, CHECK_READ_EVENTS_MAX, &filter)
            .map_err(err)?;
        count += slice.events.len() as u64;
        from = slice.next_position;
    }
    Ok(count)
}

/// W1, W2, W3 (and the deposit phase of W4): open the accounts, then the
/// deposits; checks that every acknowledged deposit is in the log.
fn deposits(config: &Config, hot: bool) -> Result<Report, String> {
    let (accounts, commands) = (config.accounts(), config.commands());
    let mut builder = config.builder().temporary();
    if config.workload == Workload::W4 {
        builder = builder.passivation(Passivation {
            idle_after: Duration::from_secs(300),
            resident_actors_max: config.resident_max,
            state_cache_bytes_max: config.state_cache_bytes,
        });
    }
    let runtime = builder.start().map_err(err)?;
    let open_seconds = open_accounts(&runtime, config, accounts)?;
    let before = runtime.store().writer_stats();
    let activations_before = runtime.activations_total();
    let hits_before = runtime.state_cache_hits_total();
    let cpu_before = cpu_seconds();
    let driven = drive(
        &runtime,
        config.client_set(),
        commands,
        progress(commands, "deposit", config.quiet),
        config.seed,
        Refusals::Fail,
        move |_, rng| {
            let id = if hot { 0 } else { rng.gen_range(0..accounts) };
            (
                id.to_string(),
                AccountCommand::Deposit {
                    amount: rng.gen_range(1..=100),
                },
            )
        },
    )?;
    let cpu = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let after = runtime.store().writer_stats();
    let activations = runtime.activations_total() - activations_before;
    let state_cache_hits = runtime.state_cache_hits_total() - hits_before;
    let resident = runtime.resident_actors();
    let deposits = count_deposits(runtime.store())?;
    let head = runtime.store().head();
    runtime.shutdown_blocking().map_err(err)?;
    if head != accounts + commands || deposits != commands {
        return Err(format!(
            "lost events: {head} in the log, {} expected; {deposits} deposits, {commands} acknowledged",
            accounts + commands
        ));
    }
    let syncs = after.syncs - before.syncs;
    let events_per_fsync =
        (syncs > 0).then(|| (after.events - before.events) as f64 / syncs as f64);
    let durability = config.durability();
    let raw = baseline(config, commands, durability);
    let seconds = driven.elapsed.as_secs_f64();
    let mut extra = vec![
        ("accounts_open_seconds", json!(open_seconds)),
        (
            "events_per_write_batch",
            json!(
                (after.events - before.events) as f64
                    / (after.batches - before.batches).max(1) as f64
            ),
        ),
        ("cpu_seconds", json!(cpu)),
        (
            "cpu_us_per_command",
            json!(cpu.map(|c| c * 1e6 / commands.max(1) as f64)),
        ),
    ];
    if config.workload == Workload::W4 {
        extra.push(("resident_actors_max", json!(config.resident_max)));
        extra.push(("resident_actors_at_end", json!(resident)));
        extra.push(("activations", json!(activations)));
        extra.push(("activations_per_s", json!(activations as f64 / seconds)));
        extra.push(("state_cache_bytes_max", json!(config.state_cache_bytes)));
        extra.push(("activations_from_state_cache", json!(state_cache_hits)));
        extra.push((
            "activations_from_store",
            json!(activations.saturating_sub(state_cache_hits)),
        ));
        extra.push(("memory_limit_bytes", json!(config.memory_limit_bytes)));
        let peak = peak_rss_bytes();
        extra.push((
            "within_memory_limit",
            json!(peak.map(|p| p <= config.memory_limit_bytes)),
        ));
    }
    Ok(Report {
        workload: config.workload,
        durability,
        accounts,
        clients: config.client_set(),
        commands,
        seconds,
        latency: Some(driven.latency),
        rss_bytes_peak: peak_rss_bytes(),
        events_per_fsync,
        baseline_per_s: raw.as_ref().map(RunReport::per_second),
        baseline: baseline_text(config, durability),
        timeline: driven.timeline,
        extra,
    })
}

/// W4: W1 with 1,000,000 accounts and a resident bound that forces
/// passivation; fails when peak RSS exceeds the memory limit.
fn many_aggregates(config: &Config) -> Result<Report, String> {
    let report = deposits(config, false)?;
    match report.rss_bytes_peak {
        Some(peak) if peak > config.memory_limit_bytes => Err(format!(
            "peak RSS {peak} bytes is over the memory limit of {} bytes",
            config.memory_limit_bytes
        )),
        _ => Ok(report),
    }
}

/// `event` as a new event to append directly to the store (schema 1, no
/// metadata), as the workloads that fill a store do.
pub fn new_event(event: &AccountEvent) -> Result<NewEvent, String> {
    Ok(NewEvent::new(
        event.event_type(),
        1,
        payload::encode(event).map_err(err)?,
        Metadata::new(),
    ))
}

/// W5: a store holding `commands` events over the accounts; a new balances
/// projection catches up from position 0. Baseline: a raw RocksDB iteration
/// of the global log keyspace (no decoding).
fn catch_up(config: &Config) -> Result<Report, String> {
    let (accounts, events) = (config.accounts(), config.commands());
    let dir = tempfile::tempdir().map_err(err)?;
    let path = dir.path().join("store");
    let fill = Instant::now();
    {
        let store = RocksStore::open(&path, StoreOptions::with_durability(config.durability()))
            .map_err(err)?;
        let bar = progress(events, "fill", config.quiet);
        let (mut written, mut i) = (0u64, 0u64);
        while written < events {
            let stream = StreamId::new(format!("acc-{}", i % accounts)).map_err(err)?;
            let count = (FILL_EVENTS_PER_APPEND as u64).min(events - written);
            let batch = (0..count)
                .map(|j| {
                    let mut event = new_event(&AccountEvent::Deposited { amount: j + 1 })?;
                    if config.upcast {
                        event.schema_version = 0;
                    }
                    Ok(event)
                })
                .collect::<Result<Vec<_>, String>>()?;
            store
                .append(&stream, ExpectedVersion::Any, batch)
                .map_err(err)?;
            written += count;
            i += 1;
            bar.set_position(written);
        }
        bar.finish();
        store.close();
    }
    let fill_seconds = fill.elapsed().as_secs_f64();
    let raw = if config.no_baseline {
        None
    } else {
        Some(raw_iteration(&path)?)
    };
    // Every stored event through a step that decodes it, maps it and
    // encodes the result: what a real upcaster costs.
    let upcasters = if config.upcast {
        Upcasters::new().step("Deposited", 0, |old: AccountEvent| vec![old])
    } else {
        Upcasters::new()
    };
    let runtime = Runtime::builder()
        .path(&path)
        .upcasters(upcasters)
        .projection(|| Balances, ConsumerSettings::default())
        .start()
        .map_err(err)?;
    let started = Instant::now();
    let head = runtime.store().head();
    let sampler = {
        let runtime = runtime.clone();
        crate::measure::Sampler::start_with(
            move || {
                runtime
                    .projection_status(balances::NAME)
                    .ok()
                    .and_then(|s| s.iter().map(|c| c.checkpoint).min())
                    .unwrap_or(0)
            },
            progress(head, "catch-up", config.quiet),
        )
    };
    let waited = runtime.wait_for_blocking(balances::NAME, head, CATCH_UP_WAIT_MAX);
    let seconds = started.elapsed().as_secs_f64();
    let timeline = sampler.stop();
    waited.map_err(err)?;
    let total: i128 = runtime
        .query(balances::NAME)
        .map_err(err)?
        .get_as(balances::TOTAL_KEY)
        .map_err(err)?
        .unwrap_or(0);
    runtime.shutdown_blocking().map_err(err)?;
    // Appends of `FILL_EVENTS_PER_APPEND` events with amounts 1..=count.
    let full = events / FILL_EVENTS_PER_APPEND as u64;
    let per_full = (FILL_EVENTS_PER_APPEND * (FILL_EVENTS_PER_APPEND + 1) / 2) as i128;
    let rest = (events % FILL_EVENTS_PER_APPEND as u64) as i128;
    let expected = full as i128 * per_full + rest * (rest + 1) / 2;
    if head != events || total != expected {
        return Err(format!(
            "catch-up saw {head} events and a total of {total}; {events} and {expected} expected"
        ));
    }
    Ok(Report {
        workload: config.workload,
        durability: config.durability(),
        accounts,
        // The projection is the only reader; no client sends commands.
        clients: Clients {
            count: 1,
            on: Placement::Thread,
        },
        commands: events,
        seconds,
        latency: None,
        rss_bytes_peak: peak_rss_bytes(),
        events_per_fsync: None,
        baseline_per_s: raw,
        baseline: "raw RocksDB iteration of the global log keyspace, no decoding".into(),
        timeline,
        extra: vec![
            ("fill_seconds", json!(fill_seconds)),
            ("upcast_every_event", json!(config.upcast)),
        ],
    })
}

/// Events per second of a raw iteration of the global log.
fn raw_iteration(path: &Path) -> Result<f64, String> {
    let names = std::iter::once("default").chain(KEYSPACES);
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), path, names, false)
        .map_err(err)?;
    let cf = db.cf_handle("global").ok_or("no global keyspace")?;
    let started = Instant::now();
    let (mut count, mut bytes) = (0u64, 0usize);
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (key, value) = item.map_err(err)?;
        count += 1;
        bytes += key.len() + value.len();
    }
    std::hint::black_box(bytes);
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// W6: account `0` gets `history` deposits under snapshots every 1,000
/// events, account `1` as many without snapshots; then a runtime holding one
/// resident actor alternates commands between them, so that each command
/// activates its aggregate. The commands are refused deposits of 0: they
/// load the state and decide, and write nothing. Latency is the activation
/// with snapshots; without snapshots is reported beside it.
fn rehydration(config: &Config) -> Result<Report, String> {
    let history = config.history.max(1);
    let activations = config.commands();
    let dir = tempfile::tempdir().map_err(err)?;
    let path = dir.path().join("store");
    for (account, snapshots) in [(0u64, Some(1000)), (1, None)] {
        let runtime = config
            .builder()
            .path(&path)
            .snapshot_every_events(snapshots)
            .start()
            .map_err(err)?;
        runtime
            .execute_blocking::<Account>(&account.to_string(), open_command(account).1)
            .map_err(err)?;
        drive(
            &runtime,
            Clients {
                count: 64,
                on: config.clients_on,
            },
            history - 1,
            progress(history - 1, "history", config.quiet),
            config.seed,
            Refusals::Fail,
            move |_, _| (account.to_string(), AccountCommand::Deposit { amount: 1 }),
        )?;
        runtime.shutdown_blocking().map_err(err)?;
    }
    let runtime = config
        .builder()
        .path(&path)
        .shards(1)
        .snapshot_every_events(None)
        .passivation(Passivation {
            idle_after: Duration::from_secs(300),
            resident_actors_max: 1,
            // Activation from the store (snapshot and events) is what W6
            // measures; the state cache would skip it.
            state_cache_bytes_max: 0,
        })
        .start()
        .map_err(err)?;
    let snapshot_at = runtime
        .store()
        .load_snapshot(&StreamId::new("acc-0").map_err(err)?)
        .map_err(err)?
        .map_or(0, |s| s.stream_version);
    let activations_before = runtime.activations_total();
    let (mut with, mut without) = (histogram(), histogram());
    let bar = progress(activations, "activate", config.quiet);
    let mut timeline = Vec::new();
    let started = Instant::now();
    for i in 0..activations {
        let account = i % 2;
        let sent = Instant::now();
        match runtime.execute_blocking::<Account>(
            &account.to_string(),
            AccountCommand::Deposit { amount: 0 },
        ) {
            Err(eventfold_runtime::CommandError::Rejected(_)) => {}
            other => return Err(format!("a deposit of 0 must be refused, got {other:?}")),
        }
        let us = sent.elapsed().as_micros() as u64;
        if account == 0 {
            with.saturating_record(us);
        } else {
            without.saturating_record(us);
        }
        if i % 10 == 0 {
            bar.set_position(i);
            timeline.push((started.elapsed().as_secs_f64(), i));
        }
    }
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let activated = runtime.activations_total() - activations_before;
    runtime.shutdown_blocking().map_err(err)?;
    if activated < activations {
        return Err(format!(
            "{activated} activations for {activations} commands: the actors were not passivated"
        ));
    }
    let with_count = with.len();
    // Throughput of the activations from the snapshot alone (one at a
    // time): the sum of their latencies.
    let with_seconds = with
        .iter_recorded()
        .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
        .sum::<f64>()
        / 1e6;
    Ok(Report {
        workload: config.workload,
        durability: config.durability(),
        accounts: 2,
        // One caller on the main thread (`execute_blocking`), one command
        // at a time: what an activation costs alone.
        clients: Clients {
            count: 1,
            on: Placement::Thread,
        },
        commands: with_count,
        seconds: with_seconds,
        latency: Some(with),
        rss_bytes_peak: peak_rss_bytes(),
        events_per_fsync: None,
        baseline_per_s: None,
        baseline: "none (activation is a read)".into(),
        timeline,
        extra: vec![
            ("history_events", json!(history)),
            ("snapshot_every_events", json!(1000)),
            ("snapshot_at_version", json!(snapshot_at)),
            (
                "no_snapshot_activation_us_p50",
                json!(without.value_at_quantile(0.5)),
            ),
            (
                "no_snapshot_activation_us_p99",
                json!(without.value_at_quantile(0.99)),
            ),
            ("no_snapshot_activations", json!(without.len())),
            ("all_activations_seconds", json!(seconds)),
        ],
    })
}

/// W7: open and fund the accounts, then the transfers of
/// [`run_transfers`]. Baseline: raw RocksDB group commit of two synced puts
/// per transfer (the debit and the credit), from as many clients.
fn transfers(config: &Config) -> Result<Report, String> {
    let (accounts, transfers) = (config.accounts().max(20), config.commands());
    let partitions = config.process_partitions.unwrap_or_else(|| {
        config
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    });
    let runtime = config
        .builder()
        .temporary()
        .process_manager(
            TransferProcess::default,
            ProcessSettings {
                partitions,
                ..ProcessSettings::default()
            },
        )
        .start()
        .map_err(err)?;
    open_accounts(&runtime, config, accounts)?;
    drive(
        &runtime,
        config.client_set(),
        accounts,
        progress(accounts, "fund", config.quiet),
        config.seed,
        Refusals::Fail,
        |i, _| (i.to_string(), AccountCommand::Deposit { amount: 1000 }),
    )?;
    let before = runtime.store().writer_stats();
    let cpu_before = cpu_seconds();
    let result = run_transfers(
        &runtime,
        &TransferLoad {
            accounts,
            transfers,
            clients: config.client_set(),
            seed: config.seed,
            quiet: config.quiet,
        },
    )?;
    // Whether the machine's cores were the bound: CPU time over the
    // transfers' wall time (2.0 is two cores busy throughout).
    let cpu = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let after = runtime.store().writer_stats();
    runtime.shutdown_blocking().map_err(err)?;
    let syncs = after.syncs - before.syncs;
    let raw = baseline(config, 2 * transfers, config.durability());
    Ok(Report {
        workload: config.workload,
        durability: config.durability(),
        accounts,
        clients: config.client_set(),
        commands: result.completed + result.compensated,
        seconds: result.seconds,
        rss_bytes_peak: peak_rss_bytes(),
        events_per_fsync: (syncs > 0).then(|| (after.events - before.events) as f64 / syncs as f64),
        baseline_per_s: raw.as_ref().map(|r| r.per_second() / 2.0),
        baseline: format!(
            "{}; two puts per transfer",
            baseline_text(config, config.durability())
        ),
        timeline: result.timeline,
        extra: vec![
            ("process_partitions", json!(partitions)),
            ("cpu_seconds", json!(cpu)),
            ("cpu_cores_busy", json!(cpu.map(|c| c / result.seconds))),
            ("refused_at_source", json!(result.refused_at_source)),
            ("completed", json!(result.completed)),
            ("compensated", json!(result.compensated)),
            (
                "debit_latency_us_p50",
                json!(result.debit_latency.value_at_quantile(0.5)),
            ),
            (
                "debit_latency_us_p99",
                json!(result.debit_latency.value_at_quantile(0.99)),
            ),
            ("total_money", json!(result.total_money.to_string())),
            ("deposited", json!(result.deposited.to_string())),
            (
                "money_conserved",
                json!(result.total_money == result.deposited),
            ),
        ],
        latency: Some(result.end_to_end),
    })
}

/// W8: a store holding `accounts` accounts with one event each (written
/// directly); a runtime whose passivation keeps them all activates each with
/// a refused deposit of 0 (a load and a decision, no write). RSS per
/// resident aggregate is the growth of RSS over the activations divided by
/// the resident actors.
fn idle_actors(config: &Config) -> Result<Report, String> {
    let accounts = config.accounts();
    let dir = tempfile::tempdir().map_err(err)?;
    let path = dir.path().join("store");
    {
        let store = RocksStore::open(&path, StoreOptions::with_durability(Durability::Buffered))
            .map_err(err)?;
        let bar = progress(accounts, "fill", config.quiet);
        for i in 0..accounts {
            let new = new_event(&AccountEvent::Opened {
                owner: format!("owner-{i}"),
            })?;
            let stream = StreamId::new(format!(
                "{}-{i}",
                <Account as eventfold_runtime::domain::Aggregate>::KIND
            ))
            .map_err(err)?;
            store
                .append(&stream, ExpectedVersion::NoStream, vec![new])
                .map_err(err)?;
            if i % 4096 == 0 {
                bar.set_position(i);
            }
        }
        bar.finish();
        store.close();
    }
    let runtime = config
        .builder()
        .path(&path)
        .passivation(Passivation {
            idle_after: Duration::from_secs(3600),
            // Twice the accounts: the bound is split evenly over the shards,
            // the accounts are not.
            resident_actors_max: (2 * accounts) as usize,
            // Nothing passivates: the cache stays empty.
            ..Passivation::default()
        })
        .start()
        .map_err(err)?;
    // Fill the block cache to its bound before the first reading (a pass
    // over the log in small reads, so that little freed heap is left for
    // the actors to reuse): the growth then measures the actors, not a cache
    // whose size does not depend on them.
    let mut from = 1;
    while from <= runtime.store().head() {
        from = runtime
            .store()
            .read_all(from, WARM_READ_EVENTS_MAX, &Filter::all())
            .map_err(err)?
            .next_position;
    }
    // Warm the runtime's threads, and the heap with the clients' latency
    // histograms (one per client, freed and reused by the measured run),
    // before the first reading.
    drive(
        &runtime,
        config.client_set(),
        config.clients(),
        progress(1, "warm", true),
        config.seed,
        Refusals::Count,
        |_, _| ("0".into(), AccountCommand::Deposit { amount: 0 }),
    )?;
    let rss_before = rss_bytes().ok_or("RSS is read from /proc/self/status (Linux only)")?;
    let heap_before = crate::allocator::heap_bytes();
    let driven = drive(
        &runtime,
        config.client_set(),
        accounts,
        progress(accounts, "activate", config.quiet),
        config.seed,
        Refusals::Count,
        |i, _| (i.to_string(), AccountCommand::Deposit { amount: 0 }),
    )?;
    let rss_after = rss_bytes().ok_or("RSS is read from /proc/self/status (Linux only)")?;
    let heap_after = crate::allocator::heap_bytes();
    let resident = runtime.resident_actors();
    runtime.shutdown_blocking().map_err(err)?;
    if driven.rejected != accounts || resident < accounts {
        return Err(format!(
            "{} of {accounts} deposits of 0 refused, {resident} actors resident",
            driven.rejected
        ));
    }
    let per_actor = rss_after.saturating_sub(rss_before) as f64 / resident as f64;
    Ok(Report {
        workload: config.workload,
        durability: config.durability(),
        accounts,
        clients: config.client_set(),
        commands: accounts,
        seconds: driven.elapsed.as_secs_f64(),
        latency: Some(driven.latency),
        rss_bytes_peak: peak_rss_bytes(),
        events_per_fsync: None,
        baseline_per_s: None,
        baseline: "none (memory workload)".into(),
        timeline: driven.timeline,
        extra: vec![
            ("resident_actors", json!(resident)),
            ("rss_bytes_before", json!(rss_before)),
            ("rss_bytes_after", json!(rss_after)),
            ("rss_bytes_per_resident_aggregate", json!(per_actor)),
            (
                crate::allocator::HEAP_FIGURE,
                json!(heap_after.zip(heap_before).map(|(after, before)| {
                    after.saturating_sub(before) as f64 / resident as f64
                })),
            ),
        ],
    })
}
