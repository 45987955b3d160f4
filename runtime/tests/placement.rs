//! Process managers and event handlers under a placement (how a cluster
//! runs each once): a host stands by until it is granted, stops at once
//! when its grant goes, says so, and under the next grant starts again
//! from the store with its instances, outbox and timers (a handler from its
//! checkpoint); commands to aggregates hosted elsewhere go through the
//! registered sender, retried like any dispatch.

mod common;

use common::wait_until;
use eventfold_runtime::domain::*;
use eventfold_runtime::process::*;
use eventfold_runtime::projection::decode;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Default, Serialize, Deserialize)]
struct Ticket;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum TicketCommand {
    Open,
    Answer,
    Close,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum TicketEvent {
    Opened,
    Answered,
    Closed,
}

impl DomainEvent for TicketEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TicketEvent::Opened => "Opened",
            TicketEvent::Answered => "Answered",
            TicketEvent::Closed => "Closed",
        }
    }
}

impl Aggregate for Ticket {
    const KIND: &'static str = "ticket";
    type Command = TicketCommand;
    type Event = TicketEvent;
    type Error = std::convert::Infallible;
    fn handle(&self, command: TicketCommand) -> Result<Vec<TicketEvent>, Self::Error> {
        Ok(vec![match command {
            TicketCommand::Open => TicketEvent::Opened,
            TicketCommand::Answer => TicketEvent::Answered,
            TicketCommand::Close => TicketEvent::Closed,
        }])
    }
    fn apply(&mut self, _: &TicketEvent) {}
}

/// Answers each opened ticket, and closes it an hour later.
struct Desk;

const NAME: &str = "desk";
const HOUR: Duration = Duration::from_secs(3600);

impl ProcessManager for Desk {
    type State = u32;
    type Error = std::convert::Infallible;
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self) -> Filter {
        Filter::categories([Ticket::KIND])
    }
    fn associate(&self, event: &RecordedEvent) -> Association {
        let id = event.stream_id.as_str()["ticket-".len()..].to_owned();
        match event.event_type.as_str() {
            "Opened" => Association::Start(id),
            _ => Association::Ignore,
        }
    }
    fn handle(
        &mut self,
        steps: &mut u32,
        input: Input<'_>,
        effects: &mut Effects,
    ) -> Result<(), Self::Error> {
        *steps += 1;
        let id = effects.instance().to_owned();
        match input {
            Input::Event(_) => {
                effects.send::<Ticket>(&id, TicketCommand::Answer);
                effects.set_timer_after("close", HOUR);
            }
            Input::Timer(_) => {
                effects.send::<Ticket>(&id, TicketCommand::Close);
                effects.finish();
            }
            Input::Result(_) => {}
        }
        Ok(())
    }
}

/// A placement switched by the test.
#[derive(Default)]
struct Switch {
    grant: Mutex<Option<u64>>,
    stood_down: Mutex<Vec<(String, u64)>>,
}

impl Switch {
    fn set(&self, grant: Option<u64>) {
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = grant;
    }
    fn stood_down(&self) -> Vec<(String, u64)> {
        self.stood_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Placement for Switch {
    fn places(&self, name: &str) -> bool {
        name != "everywhere"
    }
    fn grant(&self, _: &str) -> Option<u64> {
        *self.grant.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stood_down(&self, name: &str, grant: u64) {
        self.stood_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), grant));
    }
}

/// Sends the commands of tickets whose id starts with `far-` itself: the
/// first attempt of each times out, the next is executed.
#[derive(Default)]
struct Far {
    runtime: OnceLock<RuntimeHandle>,
    sent: AtomicUsize,
}

impl CommandSender<Ticket> for Far {
    fn hosted_here(&self, id: &str) -> bool {
        !id.starts_with("far-")
    }
    fn send(
        &self,
        id: &str,
        command: TicketCommand,
        options: ExecuteOptions,
    ) -> SentCommand<Ticket> {
        let attempt = self.sent.fetch_add(1, Ordering::SeqCst);
        let runtime = self.runtime.get().cloned();
        let id = id.to_owned();
        Box::pin(async move {
            match runtime {
                Some(runtime) if attempt % 2 == 1 => {
                    runtime.execute_with::<Ticket>(&id, command, options).await
                }
                _ => Err(CommandError::Timeout(Duration::from_millis(1))),
            }
        })
    }
}

fn events(
    runtime: &RuntimeHandle,
    id: &str,
) -> Result<Vec<TicketEvent>, Box<dyn std::error::Error>> {
    let stream = StreamId::new(format!("ticket-{id}"))?;
    let events = runtime
        .store()
        .read_stream(&stream, 1, Direction::Forward, 100)?;
    Ok(events
        .iter()
        .map(decode::<TicketEvent>)
        .collect::<Result<_, _>>()?)
}

fn open(runtime: &RuntimeHandle, id: &str) -> TestResult {
    runtime.execute_blocking::<Ticket>(id, TicketCommand::Open)?;
    Ok(())
}

#[test]
fn a_host_runs_only_under_its_grant_and_resumes_from_the_store_under_the_next() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(1_000_000_000));
    let switch = Arc::new(Switch::default());
    let far = Arc::new(Far::default());
    let runtime = Runtime::builder()
        .path(dir.path())
        .aggregate_sent_by::<Ticket>(Arc::clone(&far) as Arc<dyn CommandSender<Ticket>>)
        .clock(clock.clone())
        .process_placement(Arc::clone(&switch) as Arc<dyn Placement>)
        .process_manager(|| Desk, ProcessSettings::default())
        .start()?;
    let _ = far.runtime.set(runtime.clone());

    // No grant: it stands by, takes nothing, and sends control elsewhere.
    open(&runtime, "a")?;
    wait_until("the host stands by", || {
        Ok(runtime.process_status(NAME)?.state == ConsumerState::Standby)
    })?;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(events(&runtime, "a")?, vec![TicketEvent::Opened]);
    assert!(matches!(
        runtime.resume_instance_blocking(NAME, "a"),
        Err(ProcessError::Refused(ControlRefusal::Elsewhere(_)))
    ));

    // Granted: it catches up, answers, and keeps the timer.
    switch.set(Some(1));
    wait_until("a is answered", || {
        Ok(events(&runtime, "a")?.contains(&TicketEvent::Answered))
    })?;
    wait_until("the answer's result reached the instance", || {
        Ok(runtime.process_status(NAME)?.outbox == 0)
    })?;

    // The grant goes: it stops at once and says so; nothing is answered.
    switch.set(None);
    wait_until("the host stood down", || {
        Ok(switch.stood_down() == vec![(NAME.to_owned(), 1)])
    })?;
    wait_until("the host stands by again", || {
        Ok(runtime.process_status(NAME)?.state == ConsumerState::Standby)
    })?;
    open(&runtime, "b")?;
    open(&runtime, "far-c")?;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(events(&runtime, "b")?, vec![TicketEvent::Opened]);

    // The next grant: it starts from the store (its checkpoint, the
    // instance of a and its timer) and takes b and far-c.
    switch.set(Some(2));
    wait_until("b and far-c are answered", || {
        Ok(events(&runtime, "b")?.contains(&TicketEvent::Answered)
            && events(&runtime, "far-c")?.contains(&TicketEvent::Answered))
    })?;
    clock.advance(HOUR + Duration::from_secs(1));
    wait_until("every ticket is closed", || {
        Ok(["a", "b", "far-c"]
            .iter()
            .all(|id| events(&runtime, id).is_ok_and(|e| e.contains(&TicketEvent::Closed))))
    })?;
    for id in ["a", "b", "far-c"] {
        assert_eq!(
            events(&runtime, id)?,
            vec![
                TicketEvent::Opened,
                TicketEvent::Answered,
                TicketEvent::Closed
            ],
            "{id}: each command once"
        );
    }
    // far-c's two commands went through the sender, each timed out once
    // and was sent again.
    assert_eq!(far.sent.load(Ordering::SeqCst), 4);
    let view = runtime
        .process_instance::<u32>(NAME, "a")?
        .ok_or("no instance a")?;
    assert_eq!(view.status, InstanceStatus::Finished);
    assert_eq!(view.state, 3, "event, result and timer, once each");
    runtime.shutdown_blocking()?;
    Ok(())
}

/// Counts the tickets it saw, by id.
struct Notifier {
    name: &'static str,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl EventHandler for Notifier {
    fn name(&self) -> &str {
        self.name
    }
    fn handle(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        *seen.entry(event.stream_id.to_string()).or_default() += 1;
        Ok(())
    }
}

#[test]
fn an_event_handler_runs_only_under_its_grant_and_resumes_from_its_checkpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let switch = Arc::new(Switch::default());
    let placed = Arc::new(Mutex::new(HashMap::new()));
    let everywhere = Arc::new(Mutex::new(HashMap::new()));
    let (p, e) = (Arc::clone(&placed), Arc::clone(&everywhere));
    let builder = Runtime::builder()
        .path(dir.path())
        .aggregate::<Ticket>()
        .process_placement(Arc::clone(&switch) as Arc<dyn Placement>)
        .event_handler(
            move || Notifier {
                name: "notifier",
                seen: Arc::clone(&p),
            },
            ConsumerSettings::default(),
        )
        .event_handler(
            move || Notifier {
                name: "everywhere",
                seen: Arc::clone(&e),
            },
            ConsumerSettings::default(),
        );
    let runners: Vec<String> = builder
        .single_runners()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        runners,
        vec!["notifier".to_owned(), "everywhere".to_owned()]
    );
    let runtime = builder.start()?;
    let count = |seen: &Arc<Mutex<HashMap<String, usize>>>| {
        seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    };
    open(&runtime, "a")?;
    wait_until("the unplaced handler saw a", || Ok(count(&everywhere) == 1))?;
    wait_until("the placed one stands by", || {
        let status = runtime.projection_status("notifier")?;
        Ok(status.iter().all(|s| s.state == ConsumerState::Standby))
    })?;
    assert_eq!(count(&placed), 0, "not granted: nothing handled");

    switch.set(Some(1));
    wait_until("a is handled", || Ok(count(&placed) == 1))?;
    wait_until("its checkpoint is stored", || {
        Ok(runtime.store().checkpoint("notifier@v1")? == Some(runtime.store().head()))
    })?;
    switch.set(None);
    wait_until("the handler stood down", || {
        Ok(switch.stood_down().contains(&("notifier".to_owned(), 1)))
    })?;
    open(&runtime, "b")?;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(count(&placed), 1, "b waits for the next grant");

    switch.set(Some(2));
    wait_until("b is handled", || Ok(count(&placed) == 2))?;
    let seen = placed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        seen.get("ticket-a"),
        Some(&1),
        "a once: its checkpoint was kept"
    );
    assert_eq!(seen.get("ticket-b"), Some(&1));
    runtime.shutdown_blocking()?;
    Ok(())
}
