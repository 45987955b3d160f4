//! The `eventfold` binary run as a child process, and `bank-service`
//! started beside it on a free loopback port.

#![allow(dead_code)] // each test binary uses its own share of the helpers

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The admin token the tests' service takes.
pub const TOKEN: &str = "inspector-test-token";

/// The `eventfold` binary.
pub fn eventfold() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eventfold"))
}

/// Runs `eventfold` with `args`.
pub fn run(args: &[&str]) -> TestResult<Output> {
    Ok(eventfold()
        .args(args)
        .env_remove("EVENTFOLD_ADMIN_TOKEN")
        .output()?)
}

/// Runs `eventfold` with `args`, expecting success; its standard output.
pub fn ok(args: &[&str]) -> TestResult<String> {
    let output = run(args)?;
    if !output.status.success() {
        return Err(format!(
            "eventfold {args:?} ended with {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs `eventfold --json` with `args`, expecting success; its JSON.
pub fn json(args: &[&str]) -> TestResult<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    Ok(serde_json::from_str(&ok(&all)?)?)
}

/// Runs `eventfold --json` with `args` whose output is one JSON object per
/// line (events).
pub fn json_lines(args: &[&str]) -> TestResult<Vec<Value>> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ok(&all)?
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// Runs `eventfold` with `args`, expecting it to fail; its standard error.
pub fn fails(args: &[&str]) -> TestResult<String> {
    let output = run(args)?;
    if output.status.success() {
        return Err(format!("eventfold {args:?} succeeded").into());
    }
    Ok(String::from_utf8(output.stderr)?)
}

/// `bank-service`, built beside `eventfold` by `cargo test --workspace`.
fn bank_service() -> TestResult<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_eventfold")).with_file_name("bank-service");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build --release -p eventfold-examples --bin bank-service` (cargo test --workspace does)",
            path.display()
        )
        .into())
    }
}

/// The service on a store, with the admin token [`TOKEN`].
pub struct Service {
    pub child: Child,
    pub base: String,
    pub client: reqwest::blocking::Client,
}

impl Service {
    pub fn start(data: &Path) -> TestResult<Self> {
        let mut child = Command::new(bank_service()?)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(["--admin-token", TOKEN])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        // The rest of its stdout is drained, so it never writes into a
        // closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        Ok(Self {
            child,
            base: format!("http://{address}"),
            client: reqwest::blocking::Client::new(),
        })
    }

    /// POSTs `body` to `path`; the JSON answer, which must be a success.
    pub fn post(&self, path: &str, body: Value) -> TestResult<Value> {
        self.post_with(path, body, &[])
    }

    /// [`Service::post`] with extra headers.
    pub fn post_with(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> TestResult<Value> {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send()?;
        let status = response.status();
        let answer: Value = response.json()?;
        if !status.is_success() {
            return Err(format!("POST {path}: {status} {answer}").into());
        }
        Ok(answer)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> TestResult {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err("kill failed".into());
        }
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("bank-service ended with {status:?}").into());
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `alice` and `bob`, deposits 100 to alice (with a correlation
/// id), and transfers 30 from alice to bob; returns the head.
pub fn bank_day(service: &Service) -> TestResult<u64> {
    for owner in ["alice", "bob"] {
        service.post(
            &format!("/accounts/{owner}/open"),
            serde_json::json!({"owner": owner}),
        )?;
    }
    service.post_with(
        "/accounts/alice/deposit",
        serde_json::json!({"amount": 100}),
        &[("X-Correlation-Id", "6f1c2b8e-1d2a-4c3b-9a7e-1234567890ab")],
    )?;
    let transfer = service.post(
        "/transfers",
        serde_json::json!({"from": "alice", "to": "bob", "amount": 30}),
    )?;
    transfer["position"]
        .as_u64()
        .ok_or_else(|| "no position".into())
}

/// Polls `check` until it holds, at most 10 s.
pub fn eventually(mut check: impl FnMut() -> TestResult<bool>) -> TestResult {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if check()? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err("not within 10 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
