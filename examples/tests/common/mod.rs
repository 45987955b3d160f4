//! `bank-service` started as a child process on a free loopback port, and
//! the HTTP helpers its tests share.

#![allow(dead_code)] // each test binary uses its own share of the helpers

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The service, started on a free loopback port.
pub struct Service {
    pub child: Child,
    pub base: String,
}

impl Service {
    pub fn start(data: &std::path::Path) -> TestResult<Self> {
        Self::start_with(data, &[])
    }

    pub fn start_with(data: &std::path::Path, extra: &[&str]) -> TestResult<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bank-service"))
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("EVENTFOLD_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        Ok(Self {
            child,
            base: format!("http://{address}"),
        })
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> TestResult<std::process::ExitStatus> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        if sent != 0 {
            return Err("kill failed".into());
        }
        Ok(self.child.wait()?)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn post(
    client: &reqwest::Client,
    url: String,
    body: Value,
    key: Option<&str>,
) -> TestResult<(u16, Value)> {
    let mut request = client.post(url).json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}
