//! `bank-service` driven over real HTTP: every route and error code,
//! idempotent retries, read-your-writes, `/metrics`, and SIGTERM with
//! requests in flight (every acknowledged deposit is in the store after).

use eventfold_runtime::domain::StreamId;
use eventfold_runtime::storage::{Direction, EventStore, RocksStore, StoreOptions};
use serde_json::{Value, json};
use std::time::Duration;

mod common;

use common::{Service, TestResult, post};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_error_code_over_http() -> TestResult {
    let dir = tempfile::tempdir()?;
    let service = Service::start(dir.path())?;
    let client = reqwest::Client::new();
    let base = service.base.clone();
    let url = |path: &str| format!("{base}{path}");

    let (status, opened) = post(
        &client,
        url("/accounts/ann/open"),
        json!({"owner": "Ann"}),
        None,
    )
    .await?;
    assert_eq!((status, opened["version"].as_u64()), (200, Some(1)));
    post(
        &client,
        url("/accounts/bob/open"),
        json!({"owner": "Bob"}),
        None,
    )
    .await?;
    let (status, first) = post(
        &client,
        url("/accounts/ann/deposit"),
        json!({"amount": 100}),
        Some("dep-1"),
    )
    .await?;
    assert_eq!(status, 200);
    let (_, retry) = post(
        &client,
        url("/accounts/ann/deposit"),
        json!({"amount": 100}),
        Some("dep-1"),
    )
    .await?;
    assert_eq!(
        retry["position"], first["position"],
        "a retry gets the original answer"
    );
    assert_eq!(retry["deduplicated"], json!(true));
    let (status, withdrawn) = post(
        &client,
        url("/accounts/ann/withdraw"),
        json!({"amount": 30}),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    // Read-your-writes: the balance once the projection passed the write.
    let after = withdrawn["position"].as_u64().ok_or("no position")?;
    let balance: Value = client
        .get(url(&format!("/accounts/ann?after={after}")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(balance["balance"], json!(70));
    // The same wait asked for by a header; a position that is not one is
    // refused.
    let by_header: Value = client
        .get(url("/accounts/ann"))
        .header("X-After-Position", after.to_string())
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(by_header["balance"], json!(70));
    let refused = client
        .get(url("/accounts/ann"))
        .header("X-After-Position", "soon")
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 400);
    let refused: Value = refused.json().await?;
    assert_eq!(refused["code"], json!("bad_position"));
    // A position nobody wrote yet: the bounded wait ends in 504.
    let unreached = client
        .get(url("/accounts/ann"))
        .header("X-After-Position", "1000000")
        .send()
        .await?;
    assert_eq!(unreached.status().as_u16(), 504);
    let unreached: Value = unreached.json().await?;
    assert_eq!(unreached["code"], json!("not_caught_up"));

    let (status, moved) = post(
        &client,
        url("/transfers"),
        json!({"from": "ann", "to": "bob", "amount": 20}),
        Some("tr-1"),
    )
    .await?;
    assert_eq!(status, 200, "{moved}");

    // Errors: each with its status and stable code; nothing changes.
    let cases = [
        (
            "/accounts/ann/withdraw",
            json!({"amount": 1000}),
            422,
            "insufficient_funds",
        ),
        (
            "/accounts/ann/open",
            json!({"owner": "again"}),
            422,
            "already_open",
        ),
        (
            "/accounts/ann/deposit",
            json!({"amount": 0}),
            422,
            "zero_amount",
        ),
        (
            "/accounts/ann/deposit",
            json!({"amount": "ten"}),
            400,
            "bad_json",
        ),
        (
            "/accounts/ann/deposit",
            json!({"amount": 1, "extra": 1}),
            400,
            "bad_json",
        ),
        (
            "/accounts/not%20valid/deposit",
            json!({"amount": 1}),
            400,
            "invalid_account_id",
        ),
        (
            "/accounts/nobody/deposit",
            json!({"amount": 1}),
            422,
            "not_open",
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, answer) = post(&client, url(path), body, None).await?;
        assert_eq!(
            (status, answer["code"].as_str()),
            (want_status, Some(want_code)),
            "{path}: {answer}"
        );
    }
    // An oversized body is refused unread, and the answer closes the
    // connection so the next request does not race the server's close.
    let huge = json!({"owner": "x".repeat(64 * 1024)});
    let refused = client
        .post(url("/accounts/zed/open"))
        .json(&huge)
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 413);
    assert_eq!(
        refused
            .headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    let answer: Value = refused.json().await?;
    assert_eq!(answer["code"].as_str(), Some("body_too_large"));
    let missing = client.get(url("/accounts/nobody")).send().await?;
    assert_eq!(missing.status().as_u16(), 404);

    let health = client.get(url("/health")).send().await?;
    assert_eq!(health.status().as_u16(), 200);
    let metrics = client.get(url("/metrics")).send().await?.text().await?;
    assert!(
        metrics.contains("eventfold_command_latency_seconds"),
        "{metrics}"
    );

    let status = service.terminate()?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight_loses_no_acknowledged_deposit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let service = Service::start(dir.path())?;
    let client = reqwest::Client::new();
    let base = service.base.clone();
    post(
        &client,
        format!("{base}/accounts/load/open"),
        json!({"owner": "L"}),
        None,
    )
    .await?;
    let mut clients = Vec::new();
    for c in 0..16 {
        let (client, base) = (client.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = 0u64;
            for i in 0..10_000 {
                let key = format!("c{c}-{i}");
                match post(
                    &client,
                    format!("{base}/accounts/load/deposit"),
                    json!({"amount": 1}),
                    Some(&key),
                )
                .await
                {
                    Ok((200, _)) => acknowledged += 1,
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || service.terminate()).await??;
    assert!(status.success(), "{status:?}");
    let mut acknowledged = 0;
    for client in clients {
        acknowledged += client.await?;
    }
    assert!(acknowledged > 0, "some deposits were acknowledged");
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    let stream = StreamId::new("acc-load")?;
    let version = store.stream_version(&stream)?;
    let events = store.read_stream(&stream, 1, Direction::Forward, usize::MAX)?;
    assert_eq!(events.len() as u64, version);
    // The open, then every acknowledged deposit (and perhaps some whose
    // answer the shutdown cut off).
    assert!(
        version > acknowledged,
        "{version} events for {acknowledged} acknowledged deposits"
    );
    Ok(())
}

/// Reads SSE frames from `body` until `count` events came; their ids
/// (positions) and types.
async fn read_feed<B: AsRef<[u8]>>(
    body: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    buffer: &mut String,
    count: usize,
) -> TestResult<Vec<(u64, String)>> {
    let frames = read_frames(body, buffer, count).await?;
    Ok(frames.into_iter().map(|(id, kind, _)| (id, kind)).collect())
}

/// Reads SSE frames from `body` until `count` events came: their ids,
/// types and data.
async fn read_frames<B: AsRef<[u8]>>(
    body: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    buffer: &mut String,
    count: usize,
) -> TestResult<Vec<(u64, String, Value)>> {
    use futures::StreamExt;
    let mut seen = Vec::new();
    while seen.len() < count {
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(str::trim).map(str::to_owned))
            };
            if let (Some(id), Some(kind), Some(data)) =
                (field("id:"), field("event:"), field("data:"))
            {
                seen.push((id.parse()?, kind, serde_json::from_str(&data)?));
            }
        }
        if seen.len() >= count {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await?
            .ok_or("the feed ended")??;
        buffer.push_str(std::str::from_utf8(chunk.as_ref())?);
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_catches_up_goes_live_and_resumes_after_an_id() -> TestResult {
    let dir = tempfile::tempdir()?;
    let service = Service::start(dir.path())?;
    let client = reqwest::Client::new();
    let base = service.base.clone();
    for id in ["a1", "a2", "a3"] {
        post(
            &client,
            format!("{base}/accounts/{id}/open"),
            json!({"owner": id}),
            None,
        )
        .await?;
        post(
            &client,
            format!("{base}/accounts/{id}/deposit"),
            json!({"amount": 5}),
            None,
        )
        .await?;
    }
    let response = client.get(format!("{base}/events?from=2")).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let caught_up = read_feed(&mut body, &mut buffer, 5).await?;
    assert_eq!(
        caught_up.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6]
    );
    assert_eq!(caught_up[0].1, "Deposited");
    // Live; the request's X-Correlation-Id is its event's correlation id.
    let correlation = "5f0c6a2e-8a43-4f7e-9d2b-6c1d3e4f5a6b";
    let withdrawn = client
        .post(format!("{base}/accounts/a1/withdraw"))
        .header("X-Correlation-Id", correlation)
        .json(&json!({"amount": 1}))
        .send()
        .await?;
    assert_eq!(withdrawn.status().as_u16(), 200);
    let live = read_frames(&mut body, &mut buffer, 1).await?;
    assert_eq!((live[0].0, live[0].1.as_str()), (7, "Withdrawn"));
    assert_eq!(live[0].2["correlation_id"], json!(correlation));
    assert_eq!(live[0].2["event"]["Withdrawn"]["amount"], json!(1));
    let refused = client
        .post(format!("{base}/accounts/a1/withdraw"))
        .header("X-Correlation-Id", "not-a-uuid")
        .json(&json!({"amount": 1}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 400);
    let refused: Value = refused.json().await?;
    assert_eq!(refused["code"], json!("bad_correlation_id"));
    // Reconnecting after id 5 with a type filter.
    let resumed = client
        .get(format!("{base}/events?type=Deposited"))
        .header("Last-Event-ID", "3")
        .send()
        .await?;
    let mut body = resumed.bytes_stream();
    let mut buffer = String::new();
    let deposits = read_feed(&mut body, &mut buffer, 2).await?;
    assert_eq!(deposits.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [4, 6]);
    // SIGTERM ends the open feeds and the service exits 0.
    let status = tokio::task::spawn_blocking(move || service.terminate()).await??;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token_and_answer_with_codes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("store");
    let service = Service::start_with(&data, &["--admin-token", "s3cret-token"])?;
    let client = reqwest::Client::new();
    let base = service.base.clone();
    post(
        &client,
        format!("{base}/accounts/a/open"),
        json!({"owner": "A"}),
        None,
    )
    .await?;
    let backup_dir = dir.path().join("backup");
    let backup = json!({"dir": backup_dir.to_string_lossy()});
    // Without the token, or with a wrong one: 401, and nothing done.
    for token in [None, Some("Bearer wrong-token!"), Some("s3cret-token")] {
        let mut request = client.post(format!("{base}/admin/backup")).json(&backup);
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), 401);
        let answer: Value = response.json().await?;
        assert_eq!(answer["code"], json!("unauthorized"));
    }
    assert!(!backup_dir.exists(), "a refused backup wrote nothing");
    // The admin page's data, too, needs the token; the page itself does not.
    for path in [
        "/admin/api/overview",
        "/admin/api/streams",
        "/admin/api/streams/acc-a/events",
    ] {
        let response = client.get(format!("{base}{path}")).send().await?;
        assert_eq!(response.status().as_u16(), 401, "{path}");
    }
    let page = client.get(format!("{base}/admin")).send().await?;
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await?.contains("id=\"token-form\""));
    let admin = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .header("Authorization", "Bearer s3cret-token")
    };
    let listed: Value = admin(reqwest::Method::GET, "/admin/projections/balances/parked")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed, json!([]));
    // Once the projection has committed the opening (a read after it),
    // its checkpoint is in the store.
    let caught_up = client
        .get(format!("{base}/accounts/a?after=1"))
        .send()
        .await?;
    assert_eq!(caught_up.status().as_u16(), 200);
    let overview: Value = admin(reqwest::Method::GET, "/admin/api/overview")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(overview["head"], json!(1));
    assert_eq!(overview["projections"][0]["consumer"], json!("balances@v1"));
    assert_eq!(overview["stuck"]["transfers"], json!([]));
    let streams: Value = admin(reqwest::Method::GET, "/admin/api/streams?limit=5")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(streams[0]["stream"], json!("acc-a"));
    let events: Value = admin(reqwest::Method::GET, "/admin/api/streams/acc-a/events")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(events[0]["event"], json!({"Opened": {"owner": "A"}}));
    let bad = admin(reqwest::Method::GET, "/admin/api/streams/%24bad%00/events")
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 400);
    let cases = [
        (
            "/admin/projections/balances/parked/1/retry",
            404,
            "not_parked",
        ),
        (
            "/admin/projections/nope/parked/1/skip",
            404,
            "unknown_projection",
        ),
        (
            "/admin/processes/transfers/instances/t-x/resume",
            404,
            "no_instance",
        ),
        (
            "/admin/processes/nope/instances/x/cancel",
            404,
            "unknown_process",
        ),
    ];
    for (path, status, code) in cases {
        let response = admin(reqwest::Method::POST, path).send().await?;
        assert_eq!(response.status().as_u16(), status, "{path}");
        let answer: Value = response.json().await?;
        assert_eq!(answer["code"], json!(code), "{path}: {answer}");
    }
    let stuck: Value = admin(reqwest::Method::GET, "/admin/processes/transfers/stuck")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(stuck, json!([]));
    let made: Value = admin(reqwest::Method::POST, "/admin/backup")
        .json(&backup)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(made["backup_id"], json!(1));
    let status = tokio::task::spawn_blocking(move || service.terminate()).await??;
    assert!(status.success(), "{status:?}");
    let restored = dir.path().join("restored");
    RocksStore::restore(&backup_dir, &restored)?;
    let store = RocksStore::open(&restored, StoreOptions::default())?;
    assert_eq!(store.stream_version(&StreamId::new("acc-a")?)?, 1);
    Ok(())
}
