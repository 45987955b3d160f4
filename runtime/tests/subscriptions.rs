//! External subscriptions (`RuntimeHandle::subscribe_from`): a stream that
//! catches up from the store and goes live, in position order, each event
//! once, however slowly it is read, filtered and upcast; and durable named
//! subscriptions (`RuntimeHandle::subscribe_durable`) that resume after
//! what their consumer acknowledged.

use eventfold_runtime::domain::*;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use futures::StreamExt;
use std::time::Duration;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn append(runtime: &RuntimeHandle, stream: &str, count: usize) -> TestResult {
    let events = (0..count)
        .map(|i| {
            NewEvent::new(
                if i % 2 == 0 { "Even" } else { "Odd" },
                1,
                vec![],
                Metadata::new(),
            )
        })
        .collect();
    runtime
        .store()
        .append(&StreamId::new(stream)?, ExpectedVersion::Any, events)?;
    Ok(())
}

async fn take<S>(events: &mut S, count: usize) -> TestResult<Vec<RecordedEvent>>
where
    S: futures::Stream<Item = Result<RecordedEvent, SubscribeError>> + Unpin,
{
    let mut taken = Vec::with_capacity(count);
    while taken.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await?
            .ok_or("the stream ended")??;
        taken.push(next);
    }
    Ok(taken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_goes_live_and_a_slow_reader_loses_nothing() -> TestResult {
    let settings = Settings {
        bus_capacity_batches: 2,
        ..Settings::default()
    };
    let runtime = Runtime::builder().in_memory().settings(settings).start()?;
    for i in 0..30 {
        append(&runtime, &format!("a-{i}"), 100)?;
    }
    let mut events = runtime.subscribe_from(0, Filter::all());
    let caught_up = take(&mut events, 3000).await?;
    assert!(caught_up.iter().map(|e| e.position).eq(1..=3000));
    // Live, then far more batches than the bus holds while nobody reads.
    append(&runtime, "b-1", 5)?;
    assert!(
        take(&mut events, 5)
            .await?
            .iter()
            .map(|e| e.position)
            .eq(3001..=3005)
    );
    for i in 0..200 {
        append(&runtime, &format!("c-{i}"), 3)?;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rest = take(&mut events, 600).await?;
    assert!(
        rest.iter().map(|e| e.position).eq(3006..=3605),
        "no event lost or repeated"
    );
    runtime.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_and_a_position_pick_the_events() -> TestResult {
    let runtime = Runtime::builder().in_memory().start()?;
    append(&runtime, "a-1", 10)?;
    append(&runtime, "b-1", 10)?;
    let mut odd_a = runtime.subscribe_from(
        3,
        Filter {
            event_types: vec!["Odd".into()],
            categories: vec!["a".into()],
        },
    );
    let seen = take(&mut odd_a, 4).await?;
    assert_eq!(
        seen.iter().map(|e| e.position).collect::<Vec<_>>(),
        [4, 6, 8, 10]
    );
    append(&runtime, "a-1", 2)?;
    let live = take(&mut odd_a, 1).await?;
    assert_eq!((live[0].position, live[0].event_type.as_str()), (22, "Odd"));
    runtime.shutdown().await?;
    Ok(())
}

#[test]
fn outside_a_tokio_runtime_the_stream_reads_on_the_polling_thread() -> TestResult {
    let runtime = Runtime::builder().in_memory().start()?;
    append(&runtime, "a-1", 3)?;
    let mut events = runtime.subscribe_from(0, Filter::all());
    let first = futures::executor::block_on(events.next()).ok_or("ended")??;
    assert_eq!(first.position, 1);
    runtime.shutdown_blocking()?;
    Ok(())
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_resumes_after_its_last_ack_across_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let runtime = Runtime::builder().path(dir.path()).start()?;
        append(&runtime, "mail-1", 10)?;
        let mut mailer = runtime.subscribe_durable("mailer", Filter::all()).await?;
        assert_eq!((mailer.name(), mailer.checkpoint()), ("mailer", 0));
        assert_eq!(
            positions(&take(&mut mailer, 6).await?),
            (1..=6).collect::<Vec<_>>()
        );
        mailer.ack(4).await?;
        // Acknowledging an older position changes nothing; one never
        // delivered is refused and stores nothing.
        mailer.ack(2).await?;
        assert_eq!(mailer.checkpoint(), 4);
        assert_eq!(
            mailer.ack(7).await,
            Err(AckError::NotDelivered {
                position: 7,
                delivered: 6
            })
        );
        // One consumer per name; other names are independent.
        assert!(matches!(
            runtime.subscribe_durable("mailer", Filter::all()).await,
            Err(DurableError::InUse(name)) if name == "mailer"
        ));
        let mut other = runtime.subscribe_durable("indexer", Filter::all()).await?;
        assert_eq!(take(&mut other, 1).await?[0].position, 1);
        drop(mailer);
        // Released when dropped: opened again, it resumes after 4, and 5
        // and 6 (delivered, never acknowledged) come again.
        let mut mailer = runtime.subscribe_durable("mailer", Filter::all()).await?;
        assert_eq!(positions(&take(&mut mailer, 2).await?), vec![5, 6]);
        mailer.ack(6).await?;
        runtime.shutdown().await?;
    }
    let runtime = Runtime::builder().path(dir.path()).start()?;
    append(&runtime, "mail-2", 2)?;
    let mut mailer = runtime.subscribe_durable("mailer", Filter::all()).await?;
    assert_eq!(mailer.checkpoint(), 6);
    // Caught up from the store, then live.
    assert_eq!(
        positions(&take(&mut mailer, 6).await?),
        (7..=12).collect::<Vec<_>>()
    );
    append(&runtime, "mail-3", 1)?;
    assert_eq!(positions(&take(&mut mailer, 1).await?), vec![13]);
    let mut indexer = runtime.subscribe_durable("indexer", Filter::all()).await?;
    assert_eq!(indexer.checkpoint(), 0);
    assert_eq!(take(&mut indexer, 1).await?[0].position, 1);
    runtime.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscription_names_are_checked() -> TestResult {
    let runtime = Runtime::builder().in_memory().start()?;
    for name in ["", "a#b", "a@b", "$all", &"n".repeat(201)] {
        assert!(matches!(
            runtime.subscribe_durable(name, Filter::all()).await,
            Err(DurableError::InvalidName(_))
        ));
    }
    let mut filtered = runtime
        .subscribe_durable(&"n".repeat(200), Filter::event_types(["Odd"]))
        .await?;
    append(&runtime, "x-1", 4)?;
    assert_eq!(positions(&take(&mut filtered, 2).await?), vec![2, 4]);
    Ok(())
}
