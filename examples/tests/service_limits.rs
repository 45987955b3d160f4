//! `bank-service` under abuse and crashes: stalled connections and a flood
//! of clients do not exhaust it (its connection bound and header timeout),
//! and a kill -9 under HTTP load loses no acknowledged request.

mod common;

use common::{Service, TestResult, post};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_and_flooding_clients_do_not_exhaust_the_service() -> TestResult {
    let dir = tempfile::tempdir()?;
    let service = Service::start_with(
        dir.path(),
        &["--connections-max", "16", "--header-read-timeout", "1"],
    )?;
    let base = service.base.clone();
    let address = base.trim_start_matches("http://").to_owned();

    // Every connection the service allows, each stalled half-way through
    // a request head.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await?;
        stalled.push(stream);
    }
    // Another client is still served: the stalled connections are closed
    // after the header timeout, which makes room for it.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let started = Instant::now();
    let health = client.get(format!("{base}/health")).send().await?;
    assert_eq!(health.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(15));
    for mut stream in stalled {
        let mut rest = Vec::new();
        // Closed by the service: end of stream (or a reset), not a hang.
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest));
        assert!(read.await.is_ok(), "a stalled connection was left open");
    }

    // A flood: far more clients at once than connections allowed, each on
    // a connection of its own. Every one is answered, in turn.
    let flood = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()?;
    let requests = (0..400).map(|i| {
        let flood = flood.clone();
        let url = format!("{base}/accounts/f{i}/open");
        async move { post(&flood, url, json!({"owner": "flood"}), None).await }
    });
    let answers = futures::future::join_all(requests).await;
    for answer in answers {
        let (status, body) = answer?;
        assert_eq!(status, 200, "{body}");
    }
    let health = client.get(format!("{base}/health")).send().await?;
    assert_eq!(health.status().as_u16(), 200);
    let status = tokio::task::spawn_blocking(move || service.terminate()).await??;
    assert!(status.success(), "{status:?}");
    Ok(())
}

/// A deposit the service acknowledged: its key, account and position.
#[derive(Clone, Debug)]
struct Acknowledged {
    key: String,
    account: String,
    position: u64,
}

const ACCOUNTS: usize = 16;
const CLIENTS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_http_load_loses_no_acknowledged_request() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut service = Service::start(dir.path())?;
    let base = service.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    for a in 0..ACCOUNTS {
        let url = format!("{base}/accounts/k{a}/open");
        let (status, _) = post(&client, url, json!({"owner": "k"}), None).await?;
        assert_eq!(status, 200);
    }
    let acknowledged = Arc::new(Mutex::new(Vec::<Acknowledged>::new()));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, base) = (client.clone(), base.clone());
            let (acknowledged, sent) = (Arc::clone(&acknowledged), Arc::clone(&sent));
            tokio::spawn(async move {
                for n in 0.. {
                    let account = format!("k{}", (c + n) % ACCOUNTS);
                    let key = format!("c{c}-{n}");
                    let url = format!("{base}/accounts/{account}/deposit");
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Any failure (the service is gone) ends this client.
                    let Ok((200, answer)) =
                        post(&client, url, json!({"amount": 1}), Some(&key)).await
                    else {
                        return;
                    };
                    let Some(position) = answer["position"].as_u64() else {
                        return;
                    };
                    if let Ok(mut acked) = acknowledged.lock() {
                        acked.push(Acknowledged {
                            key,
                            account,
                            position,
                        });
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    service.child.kill()?; // SIGKILL
    service.child.wait()?;
    for client in clients {
        client.await?;
    }
    let acked = acknowledged.lock().map_err(|_| "poisoned")?.clone();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        acked.len() > 100,
        "only {} deposits acknowledged",
        acked.len()
    );

    // Restarted on the same store: every acknowledged deposit is there. A
    // retry with its key is answered from the store with its position.
    let service = Service::start(dir.path())?;
    let base = service.base.clone();
    for ack in &acked {
        let url = format!("{base}/accounts/{}/deposit", ack.account);
        let (status, answer) = post(&client, url, json!({"amount": 1}), Some(&ack.key)).await?;
        assert_eq!(status, 200, "{ack:?}: {answer}");
        assert_eq!(answer["deduplicated"], json!(true), "{ack:?}: {answer}");
        assert_eq!(answer["position"].as_u64(), Some(ack.position), "{ack:?}");
    }
    // Balances: at least what was acknowledged, at most what was sent.
    let last = acked.iter().map(|a| a.position).max().unwrap_or(0);
    let mut total = 0;
    for a in 0..ACCOUNTS {
        let url = format!("{base}/accounts/k{a}?after={last}");
        let balance: Value = client.get(url).send().await?.json().await?;
        let balance = balance["balance"].as_u64().ok_or("no balance")?;
        let acked_here = acked
            .iter()
            .filter(|x| x.account == format!("k{a}"))
            .count();
        assert!(
            balance >= acked_here as u64,
            "k{a}: {balance} < {acked_here}"
        );
        total += balance;
    }
    assert!(total <= sent, "{total} deposited of {sent} sent");
    let status = tokio::task::spawn_blocking(move || service.terminate()).await??;
    assert!(status.success(), "{status:?}");
    Ok(())
}
