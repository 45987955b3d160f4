//! The handle's administrative calls from async code: none waits on an
//! executor thread (a current-thread runtime would stall if one did), and
//! the running store can be verified and backed up.

mod common;

use common::tally::{Cmd, Ev, Tally};
use eventfold_runtime::domain::*;
use eventfold_runtime::projection::{
    AfterRetries, ErrorPolicy, HandlerError, Projection, ReadModelTx, decode,
};
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

static REFUSE: AtomicBool = AtomicBool::new(true);

/// Refuses every event while `REFUSE` is set.
struct Moody;

impl Projection for Moody {
    fn name(&self) -> &str {
        "moody"
    }
    fn apply(
        &mut self,
        event: &RecordedEvent,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError> {
        if REFUSE.load(Ordering::SeqCst) {
            return Err(HandlerError::new("not now"));
        }
        if let Ev::Added(n) = decode::<Ev>(event)? {
            model.put_as(b"last", &n)?;
        }
        Ok(())
    }
}

// One executor thread: a call that waited on it would keep the consumer's
// answer from ever being awaited.
#[tokio::test(flavor = "current_thread")]
async fn admin_calls_answer_on_a_single_threaded_executor() -> TestResult {
    let dir = tempfile::tempdir()?;
    let settings = ConsumerSettings {
        error_policy: ErrorPolicy {
            attempts_max: 1,
            then: AfterRetries::Park,
            ..ErrorPolicy::default()
        },
        ..ConsumerSettings::default()
    };
    let runtime = Runtime::builder()
        .path(dir.path().join("store"))
        .aggregate::<Tally>()
        .projection(|| Moody, settings)
        .start()?;
    let outcome = runtime.execute::<Tally>("a", Cmd::Add(7)).await?;
    let position = outcome.position.ok_or("no position")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while runtime.parked_events("moody")?.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    REFUSE.store(false, Ordering::SeqCst);
    runtime.retry_parked("moody", position).await?;
    assert!(runtime.parked_events("moody")?.is_empty());
    assert_eq!(runtime.query("moody")?.get_as::<u64>(b"last")?, Some(7));
    assert!(matches!(
        runtime.skip_parked("moody", position).await,
        Err(ProjectionError::Parked(ParkedError::NotParked(_)))
    ));
    let version = runtime.rebuild("moody").await?;
    assert_eq!(version, 2);
    assert!(runtime.verify().await?.is_clean());
    let backups = dir.path().join("backups");
    assert_eq!(runtime.backup(&backups).await?, 1);
    assert!(matches!(
        runtime.resume_instance("none", "x").await,
        Err(ProcessError::Unknown(_))
    ));
    runtime.shutdown().await?;
    drop(runtime);
    let restored = dir.path().join("restored");
    RocksStore::restore(&backups, &restored)?;
    let store = RocksStore::open(&restored, StoreOptions::default())?;
    assert_eq!(store.stream_version(&StreamId::new("tally-a")?)?, 1);
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn an_in_memory_runtime_has_no_backup() -> TestResult {
    let runtime = Runtime::builder().in_memory().start()?;
    assert!(matches!(
        runtime.backup("/nonexistent").await,
        Err(BackupError::InMemory)
    ));
    assert!(runtime.verify().await?.is_clean());
    runtime.shutdown().await?;
    Ok(())
}

/// Opened once the last handle has been dropped.
static GATE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static GATE_OPENED: std::sync::Condvar = std::sync::Condvar::new();

/// Holds each event until the gate opens (at most 20 s).
struct Gatekeeper;

impl EventHandler for Gatekeeper {
    fn name(&self) -> &str {
        "gatekeeper"
    }
    fn handle(&mut self, _: &RecordedEvent) -> Result<(), HandlerError> {
        let open = GATE.lock().map_err(|_| HandlerError::new("poisoned"))?;
        let _open = GATE_OPENED
            .wait_timeout_while(open, Duration::from_secs(20), |open| !*open)
            .map_err(|_| HandlerError::new("poisoned"))?;
        Ok(())
    }
}

// One worker: a drop that blocked it would keep the task that opens the
// gate from ever running.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn dropping_the_last_handle_in_a_task_does_not_stall_the_executor() -> TestResult {
    let runtime = Runtime::builder()
        .in_memory()
        .aggregate::<Tally>()
        .event_handler(|| Gatekeeper, ConsumerSettings::default())
        .start()?;
    runtime.execute::<Tally>("g", Cmd::Add(1)).await?;
    // Give the handler the event: it now waits for the gate.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Stopping joins the handler's thread, which waits for the gate, which
    // this task opens: it runs only if the drop does not hold the worker.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(mut open) = GATE.lock() {
            *open = true;
        }
        GATE_OPENED.notify_all();
    });
    // Dropped in a task, on the one worker.
    let started = std::time::Instant::now();
    tokio::spawn(async move { drop(runtime) }).await?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "the drop waited {took:?}");
    Ok(())
}
