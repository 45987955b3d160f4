//! A process that shuts its runtime down and exits at once exits cleanly:
//! nothing of the runtime (the store above all) is still being torn down
//! on a thread of its own while the process's static destructors run.

mod common;

use common::tally::{Cmd, Tally};
use eventfold_runtime::Runtime;

const CHILD_DIR: &str = "EVENTFOLD_EXIT_TEST_DIR";

#[test]
#[ignore = "run as a child process by a_process_exiting_right_after_shutdown_exits_cleanly"]
fn child_shuts_down_and_returns() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return Ok(());
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let runtime = Runtime::builder().path(&dir).aggregate::<Tally>().start()?;
        for i in 0..50 {
            runtime
                .execute::<Tally>(&format!("t{i}"), Cmd::Add(1))
                .await?;
        }
        // As a service's main does: shut down, then return.
        runtime.shutdown().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    drop(tokio);
    // Exit at once, as a service's main returning does (the test harness
    // would print and wait a little first): static destructors run now.
    std::process::exit(0);
}

#[test]
fn a_process_exiting_right_after_shutdown_exits_cleanly() -> Result<(), Box<dyn std::error::Error>>
{
    let exe = std::env::current_exe()?;
    for round in 0..20 {
        let dir = tempfile::tempdir()?;
        let output = std::process::Command::new(&exe)
            .args(["child_shuts_down_and_returns", "--exact", "--ignored"])
            .args(["--test-threads=1", "--nocapture"])
            .env(CHILD_DIR, dir.path())
            .output()?;
        assert!(
            output.status.success(),
            "round {round}: {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_shutdown_answered_dropping_the_last_handle_releases_the_store()
-> Result<(), Box<dyn std::error::Error>> {
    for round in 0..100 {
        let dir = tempfile::tempdir()?;
        let runtime = Runtime::builder()
            .path(dir.path())
            .aggregate::<Tally>()
            .start()?;
        runtime.execute::<Tally>("t", Cmd::Add(1)).await?;
        runtime.shutdown().await?;
        // The caller's handle is the last: the store closes here, not on
        // a thread of the runtime's that may outlive the caller.
        drop(runtime);
        let reopened = eventfold_runtime::storage::RocksStore::open(
            dir.path(),
            eventfold_runtime::storage::StoreOptions::default(),
        );
        assert!(reopened.is_ok(), "round {round}: {:?}", reopened.err());
    }
    Ok(())
}
