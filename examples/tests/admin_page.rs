//! The admin page of `bank-service` in a real browser: headless Chromium
//! (Debian's `chromium`, on the PATH or in `EVENTFOLD_CHROMIUM`) loads
//! `/admin` from a running service after a load; the page asks for the
//! token, then shows the streams and a stream's events, the projections
//! and process managers, the live tail and the metrics chart, with numbers
//! from the load. A screenshot is taken and checked.

mod common;

use common::*;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "page-test-token";
const WINDOW: (u32, u32) = (1280, 1600);

/// Chromium: `EVENTFOLD_CHROMIUM`, else `chromium` or `chromium-browser`
/// on the PATH.
fn chromium() -> TestResult<PathBuf> {
    if let Some(path) = std::env::var_os("EVENTFOLD_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            if dir.join(name).is_file() {
                return Ok(dir.join(name));
            }
        }
    }
    Err("chromium is not installed: `apt-get install chromium` (scripts/test.sh installs it), or set EVENTFOLD_CHROMIUM".into())
}

/// `expression`'s value in the page.
fn eval(tab: &Tab, expression: &str) -> TestResult<Value> {
    let result = tab.evaluate(expression, false)?;
    Ok(result.value.unwrap_or(Value::Null))
}

/// Waits (at most 20 s) until `expression` is true in the page.
fn wait_true(tab: &Tab, expression: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if eval(tab, expression)? == Value::Bool(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let status = eval(tab, "document.getElementById('status').textContent")?;
            return Err(format!("not within 20 s: {expression} (status: {status})").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn number(tab: &Tab, id: &str) -> TestResult<f64> {
    let text = eval(tab, &format!("document.getElementById('{id}').textContent"))?;
    text.as_str()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("#{id} holds {text}, not a number").into())
}

fn rows(tab: &Tab, id: &str) -> TestResult<u64> {
    eval(
        tab,
        &format!("document.getElementById('{id}').children.length"),
    )?
    .as_u64()
    .ok_or_else(|| "no row count".into())
}

/// Deposits to ten accounts and a few transfers: what the page shows.
fn load(base: &str) -> TestResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for i in 0..10 {
            let url = format!("{base}/accounts/a{i}/open");
            post(&client, url, json!({"owner": format!("owner {i}")}), None).await?;
        }
        for n in 0..200 {
            let url = format!("{base}/accounts/a{}/deposit", n % 10);
            let (status, _) = post(&client, url, json!({"amount": 5}), None).await?;
            assert_eq!(status, 200);
        }
        for i in 0..5 {
            let body = json!({"from": format!("a{i}"), "to": format!("a{}", i + 5), "amount": 3});
            post(&client, format!("{base}/transfers"), body, None).await?;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
}

#[test]
fn the_admin_page_shows_the_service_in_a_real_browser() -> TestResult {
    let dir = tempfile::tempdir()?;
    let service = Service::start_with(dir.path(), &["--admin-token", TOKEN])?;
    load(&service.base)?;

    let options = LaunchOptions::default_builder()
        .path(Some(chromium()?))
        .sandbox(false)
        .window_size(Some(WINDOW))
        .idle_browser_timeout(Duration::from_secs(120))
        .build()?;
    let browser = Browser::new(options)?;
    let tab = browser.new_tab()?;

    // Without a token the page asks for it and shows nothing.
    tab.navigate_to(&format!("{}/admin", service.base))?;
    tab.wait_until_navigated()?;
    wait_true(
        &tab,
        "document.getElementById('status').textContent.includes('No admin token')",
    )?;
    assert_eq!(rows(&tab, "streams")?, 0);

    // A wrong token is refused by the admin API, and the page says so.
    tab.wait_for_element("#token")?.click()?;
    tab.type_str("wrong")?;
    tab.wait_for_element("#token-form button")?.click()?;
    wait_true(
        &tab,
        "document.getElementById('status').textContent.includes('unauthorized')",
    )?;
    assert_eq!(rows(&tab, "streams")?, 0);

    // The right one: everything fills in.
    eval(&tab, "document.getElementById('token').value = ''")?;
    tab.wait_for_element("#token")?.click()?;
    tab.type_str(TOKEN)?;
    tab.wait_for_element("#token-form button")?.click()?;
    wait_true(
        &tab,
        "document.getElementById('status').textContent === 'Connected'",
    )?;
    wait_true(
        &tab,
        "document.getElementById('streams').children.length === 10",
    )?;
    assert!(
        number(&tab, "head")? >= 215.0,
        "head {}",
        number(&tab, "head")?
    );
    // The overview refreshes every 5 s: the consumers' rows come with it.
    wait_true(
        &tab,
        "document.getElementById('projections').textContent.includes('balances@v1')",
    )?;
    wait_true(
        &tab,
        "document.getElementById('processes').textContent.includes('transfers')",
    )?;

    // A stream's events, newest first.
    eval(&tab, "document.querySelector('#streams tr').click()")?;
    wait_true(
        &tab,
        "document.getElementById('events').children.length > 0",
    )?;
    let first = eval(&tab, "document.querySelector('#events tr').textContent")?;
    assert!(
        first
            .as_str()
            .is_some_and(|t| t.contains("Deposited") || t.contains("Transfer")),
        "{first}"
    );

    // The live tail: the last events, then what comes.
    wait_true(&tab, "document.getElementById('tail').children.length > 0")?;
    runtime_post(
        &service.base,
        "/accounts/a0/deposit",
        json!({"amount": 777}),
    )?;
    wait_true(
        &tab,
        "document.getElementById('tail').textContent.includes('777')",
    )?;

    // The chart, fed from /metrics each second.
    wait_true(
        &tab,
        "Number(document.getElementById('chart').dataset.points) >= 3",
    )?;
    assert!(
        number(&tab, "commands")? >= 211.0,
        "commands {}",
        number(&tab, "commands")?
    );

    // The token stays in this tab's session only.
    let kept = eval(
        &tab,
        "sessionStorage.getItem('eventfold-admin-token') !== null && localStorage.length === 0",
    )?;
    assert_eq!(kept, Value::Bool(true));

    let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)?;
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    std::fs::write(&shot, &png)?;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into()?);
    let height = u32::from_be_bytes(png[20..24].try_into()?);
    assert!(width >= WINDOW.0 / 2 && height >= 400, "{width}x{height}");
    // A page of tables and a chart, not a blank one (a blank 1280x1600 PNG is
    // a few kilobytes).
    assert!(
        png.len() > 40_000,
        "{} bytes: {}",
        png.len(),
        shot.display()
    );

    drop(tab);
    drop(browser);
    service.terminate()?;
    Ok(())
}

fn runtime_post(base: &str, path: &str, body: Value) -> TestResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, answer) = runtime.block_on(post(
        &reqwest::Client::new(),
        format!("{base}{path}"),
        body,
        None,
    ))?;
    assert_eq!(status, 200, "{answer}");
    Ok(())
}
