//! What the runtime's integration tests share: the test aggregate and its
//! helpers (`tally`), and running a child process to kill it (the crash
//! tests). Each test binary uses a part of it.
#![allow(dead_code)]

pub mod tally;

use std::time::{Duration, Instant};

/// Waits (polling every 10 ms, at most 20 s) until `done` says so.
pub fn wait_until(
    what: &str,
    mut done: impl FnMut() -> Result<bool, Box<dyn std::error::Error>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done()? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Runs the ignored test `child` of this test binary in a child process with
/// `env` set to `dir`, lets it work for `after`, then kills it with SIGKILL.
pub fn run_and_kill(child: &str, env: &str, dir: &std::path::Path, after: Duration) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut process = std::process::Command::new(exe)
        .args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the child starts");
    std::thread::sleep(after);
    process.kill().expect("the child can be killed");
    process.wait().expect("the child is reaped");
}
