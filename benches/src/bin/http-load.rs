//! W1 over HTTP: the same deposits as `loadgen --workload w1` (N accounts
//! opened, then K deposits of 1..=100 to uniformly chosen accounts from C
//! clients), sent to `bank-service` by C keep-alive HTTP clients on
//! loopback, beside the in-process W1 of the same run, in interleaved
//! rounds (HTTP, in-process, HTTP, …).
//!
//! By default it starts `bank-service` itself (from the same target
//! directory, on a temporary store, durable appends as in W1) and measures
//! the service's CPU; `--service URL` drives one already running, on
//! loopback only. Every round is checked: each account's balance, read
//! after the last acknowledged position, is the sum of its acknowledged
//! deposits. Bounded: at most `--seconds-max` per round.
//!
//! ```text
//! cargo build --release -p eventfold-examples --bin bank-service
//! cargo run --release -p eventfold-benches --bin http-load -- --rounds 3
//! ```

#[global_allocator]
static GLOBAL: eventfold_benches::allocator::Global = eventfold_benches::allocator::GLOBAL;

use clap::Parser;
use eventfold_benches::measure::{cpu_seconds, histogram, process_cpu_seconds};
use eventfold_benches::workloads::{Config, Workload, run};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a single request may take before the round fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests in flight while the accounts are opened and checked.
const SETUP_CONCURRENCY: usize = 64;

#[derive(Parser, Debug)]
#[command(about = "W1 over HTTP against bank-service, beside the in-process W1")]
struct Args {
    /// A running bank-service (loopback only). Default: start one.
    #[arg(long)]
    service: Option<String>,
    /// Accounts (N).
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Concurrent keep-alive clients (C).
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Deposits per round (K).
    #[arg(long, default_value_t = 200_000)]
    commands: u64,
    /// Rounds; each runs over HTTP, then in process.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The longest a round's deposits may take, in seconds.
    #[arg(long, default_value_t = 300)]
    seconds_max: u64,
    /// Worker threads of the HTTP clients' tokio runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Skip the in-process W1.
    #[arg(long)]
    http_only: bool,
    /// Write every round's figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// A started `bank-service`, killed when dropped.
struct Spawned {
    child: Child,
    base: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_service() -> Result<Spawned, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name("bank-service");
    if !path.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p eventfold-examples --bin bank-service`",
            path.display()
        ));
    }
    let mut child = Command::new(&path)
        .args(["--listen", "127.0.0.1:0", "--temporary"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("bank-service said {line:?}"))?
        .to_owned();
    Ok(Spawned {
        child,
        base: format!("http://{address}"),
    })
}

fn loopback_only(url: &str) -> Result<String, String> {
    let base = url.trim_end_matches('/').to_owned();
    let host = base
        .strip_prefix("http://")
        .and_then(|rest| rest.rsplit_once(':').map(|(host, _)| host))
        .ok_or_else(|| format!("{url}: expected http://HOST:PORT"))?;
    match host {
        "127.0.0.1" | "localhost" | "[::1]" => Ok(base),
        other => Err(format!(
            "{other} is not loopback: http-load only drives a local service"
        )),
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Result<Value, String> {
    let response = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {answer}"));
    }
    Ok(answer)
}

/// Runs `task(i)` for every i in `0..count`, `SETUP_CONCURRENCY` at a time.
async fn each<F, Fut>(count: u64, task: F) -> Result<(), String>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    use futures::StreamExt;
    let mut tasks = futures::stream::iter((0..count).map(task)).buffer_unordered(SETUP_CONCURRENCY);
    while let Some(done) = tasks.next().await {
        done?;
    }
    Ok(())
}

/// One HTTP round's figures.
struct HttpRound {
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
    service_cpu_us_per_command: Option<f64>,
    client_cpu_us_per_command: Option<f64>,
}

async fn http_round(
    base: &str,
    round: usize,
    args: &Args,
    pid: Option<u32>,
) -> Result<HttpRound, String> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.clients as usize)
        .build()
        .map_err(|e| e.to_string())?;
    // Accounts of their own per round, so rounds on one service do not mix.
    let account = |i: u64| format!("r{round}a{i}");
    each(args.accounts, |i| {
        let url = format!("{base}/accounts/{}/open", account(i));
        let client = &client;
        async move {
            post(client, url, json!({"owner": "load"}))
                .await
                .map(|_| ())
        }
    })
    .await?;
    let cpu_before = pid.and_then(process_cpu_seconds);
    let client_cpu_before = cpu_seconds();
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let per_client = args.commands / args.clients;
    let started = Instant::now();
    let clients = (0..args.clients).map(|c| {
        let client = client.clone();
        let base = base.to_owned();
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ (c << 32) ^ round as u64);
        let accounts = args.accounts;
        tokio::spawn(async move {
            let mut latency = histogram();
            let mut sums = vec![0u64; accounts as usize];
            let mut last = 0u64;
            for _ in 0..per_client {
                if Instant::now() > deadline {
                    return Err("the round ran past --seconds-max".to_owned());
                }
                let (id, amount) = (rng.gen_range(0..accounts), rng.gen_range(1..=100u64));
                let url = format!("{base}/accounts/r{round}a{id}/deposit");
                let sent = Instant::now();
                let answer = post(&client, url, json!({"amount": amount})).await?;
                let _ = latency.record(sent.elapsed().as_micros() as u64);
                sums[id as usize] += amount;
                last = last.max(answer["position"].as_u64().unwrap_or(0));
            }
            Ok((latency, sums, last))
        })
    });
    let mut latency = histogram();
    let mut sums = vec![0u64; args.accounts as usize];
    let mut last = 0;
    for client in futures::future::join_all(clients).await {
        let (their_latency, their_sums, their_last) =
            client.map_err(|e| format!("a client task failed: {e}"))??;
        latency.add(&their_latency).map_err(|e| e.to_string())?;
        for (sum, theirs) in sums.iter_mut().zip(their_sums) {
            *sum += theirs;
        }
        last = last.max(their_last);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = pid
        .and_then(process_cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let client_cpu = cpu_seconds()
        .zip(client_cpu_before)
        .map(|(after, before)| after - before);
    let commands = per_client * args.clients;
    // Every acknowledged deposit is in its balance.
    let sums = &sums;
    each(args.accounts, |i| {
        let url = format!("{base}/accounts/{}?after={last}", account(i));
        let client = &client;
        async move {
            let answer: Value = client
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let balance = answer["balance"].as_u64();
            if balance == Some(sums[i as usize]) {
                Ok(())
            } else {
                Err(format!(
                    "{url}: balance {balance:?}, {} acknowledged",
                    sums[i as usize]
                ))
            }
        }
    })
    .await?;
    Ok(HttpRound {
        per_second: commands as f64 / seconds,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        service_cpu_us_per_command: cpu.map(|c| c * 1e6 / commands.max(1) as f64),
        client_cpu_us_per_command: client_cpu.map(|c| c * 1e6 / commands.max(1) as f64),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (spawned, base) = match &args.service {
        Some(url) => (None, loopback_only(url)?),
        None => {
            let spawned = spawn_service()?;
            let base = spawned.base.clone();
            (Some(spawned), base)
        }
    };
    let pid = spawned.as_ref().map(|s| s.child.id());
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let mut rounds = Vec::new();
    println!(
        "round  http deposits/s  p50 µs  p99 µs  cpu µs/cmd service+client  in-process deposits/s  http/in-process"
    );
    for round in 0..args.rounds {
        let http = clients.block_on(http_round(&base, round, &args, pid))?;
        let in_process = if args.http_only {
            None
        } else {
            let config = Config {
                accounts: Some(args.accounts),
                clients: Some(args.clients),
                commands: Some(args.commands),
                seed: args.seed,
                no_baseline: true,
                quiet: true,
                ..Config::new(Workload::W1)
            };
            Some(run(&config)?)
        };
        let in_process_per_s = in_process.as_ref().map(|r| r.commands as f64 / r.seconds);
        let ratio = in_process_per_s.map(|p| http.per_second / p);
        let show =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        println!(
            "{round:>5}  {:>15.0}  {:>6}  {:>6}  {:>29}  {:>21}  {:>15}",
            http.per_second,
            http.p50_us,
            http.p99_us,
            format!(
                "{} + {}",
                show(http.service_cpu_us_per_command, 1),
                show(http.client_cpu_us_per_command, 1)
            ),
            show(in_process_per_s, 0),
            show(ratio, 2),
        );
        rounds.push(json!({
            "round": round,
            "http_deposits_per_s": http.per_second,
            "http_latency_p50_us": http.p50_us,
            "http_latency_p99_us": http.p99_us,
            "service_cpu_us_per_command": http.service_cpu_us_per_command,
            "client_cpu_us_per_command": http.client_cpu_us_per_command,
            "in_process_deposits_per_s": in_process_per_s,
            "http_over_in_process": ratio,
        }));
    }
    if let Some(path) = &args.json {
        let figures = json!({
            "workload": "W1 over HTTP",
            "accounts": args.accounts,
            "clients": args.clients,
            "commands": args.commands,
            "client_threads": args.client_threads,
            "rounds": rounds,
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
        println!("figures written to {}", path.display());
    }
    drop(spawned);
    Ok(())
}
