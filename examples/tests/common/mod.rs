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
    /// Where the service's log (its stdout after the first line, and its
    /// stderr) goes.
    pub log: tempfile::NamedTempFile,
}

impl Service {
    pub fn start(data: &std::path::Path) -> TestResult<Self> {
        Self::start_with(data, &[])
    }

    pub fn start_with(data: &std::path::Path, extra: &[&str]) -> TestResult<Self> {
        let log = tempfile::NamedTempFile::new()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_bank-service"))
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "1")
            .env_remove("EVENTFOLD_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(log.reopen()?)
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        // The rest of stdout (the service's log) is copied to the log file,
        // so that the service never writes into a closed pipe.
        let mut copy = log.reopen()?;
        std::thread::spawn(move || {
            use std::io::Seek;
            let _ = copy.seek(std::io::SeekFrom::End(0));
            let _ = std::io::copy(&mut stdout, &mut copy);
        });
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        Ok(Self {
            child,
            base: format!("http://{address}"),
            log,
        })
    }

    /// Sends SIGTERM and waits for the exit status; an exit other than 0
    /// is an error that shows the service's log.
    pub fn terminate(mut self) -> TestResult<std::process::ExitStatus> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        if sent != 0 {
            return Err("kill failed".into());
        }
        let status = self.child.wait()?;
        if !status.success() {
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            return Err(format!("bank-service ended with {status:?}; its log:\n{log}").into());
        }
        Ok(status)
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
