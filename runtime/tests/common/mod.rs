//! What the runtime's integration tests share: the test aggregate and its
//! helpers (`tally`), and running a child process to kill it (the crash
//! tests). Each test binary uses a part of it.
#![allow(dead_code)]

pub mod tally;

use std::time::Duration;

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
