//! Process managers through the public handle: commands and their results,
//! durable timers across restarts, cancelled timers, rejections, stuck
//! instances (listed, held, resumed, cancelled).

use eventfold_runtime::domain::*;
use eventfold_runtime::process::*;
use eventfold_runtime::projection::decode;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Default, Serialize, Deserialize)]
struct Order {
    placed: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum OrderCommand {
    Place { amount: u64, poison: bool },
    Pay { amount: u64 },
    Cancel,
    Remind,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum OrderEvent {
    Placed { amount: u64, poison: bool },
    Paid { amount: u64 },
    Cancelled,
    Reminded,
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "Placed",
            OrderEvent::Paid { .. } => "Paid",
            OrderEvent::Cancelled => "Cancelled",
            OrderEvent::Reminded => "Reminded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum OrderError {
    #[error("nothing to pay")]
    NothingToPay,
}

impl Aggregate for Order {
    const KIND: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![match command {
            OrderCommand::Place { amount, poison } => OrderEvent::Placed { amount, poison },
            OrderCommand::Pay { amount: 0 } => return Err(OrderError::NothingToPay),
            OrderCommand::Pay { amount } => OrderEvent::Paid { amount },
            OrderCommand::Cancel => OrderEvent::Cancelled,
            OrderCommand::Remind => OrderEvent::Reminded,
        }])
    }
    fn apply(&mut self, event: &OrderEvent) {
        if let OrderEvent::Placed { .. } = event {
            self.placed = true;
        }
    }
}

#[derive(Default, Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Billing {
    paid: bool,
    rejected: Option<String>,
    cancelled: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BillingError(String);

/// Pays each placed order, reminds a minute later unless cancelled.
struct BillingProcess {
    fail_poison: Arc<AtomicBool>,
}

const NAME: &str = "billing";
const MINUTE: Duration = Duration::from_secs(60);

impl ProcessManager for BillingProcess {
    type State = Billing;
    type Error = BillingError;
    fn name(&self) -> &str {
        NAME
    }
    fn filter(&self) -> Filter {
        Filter::categories([Order::KIND])
    }
    fn associate(&self, event: &RecordedEvent) -> Association {
        let id = event.stream_id.as_str()["order-".len()..].to_owned();
        match event.event_type.as_str() {
            "Placed" => Association::Start(id),
            "Cancelled" => Association::Continue(id),
            _ => Association::Ignore,
        }
    }
    fn handle(
        &mut self,
        state: &mut Billing,
        input: Input<'_>,
        effects: &mut Effects,
    ) -> Result<(), BillingError> {
        let id = effects.instance().to_owned();
        match input {
            Input::Event(event) => match decode::<OrderEvent>(event) {
                Ok(OrderEvent::Placed { amount, poison }) => {
                    if poison && self.fail_poison.load(Ordering::SeqCst) {
                        return Err(BillingError("poisoned order".into()));
                    }
                    effects.send::<Order>(&id, OrderCommand::Pay { amount });
                    effects.set_timer_after("remind", MINUTE);
                }
                Ok(OrderEvent::Cancelled) => {
                    state.cancelled = true;
                    effects.cancel_timer("remind");
                }
                Ok(_) => {}
                Err(error) => return Err(BillingError(error.to_string())),
            },
            Input::Result(result) => {
                if result.events::<Order>().is_some() {
                    state.paid = true;
                } else if let Some(error) = result.rejection::<Order>() {
                    state.rejected = Some(error.to_string());
                }
            }
            Input::Timer(timer) if timer.name == "remind" => {
                effects.send::<Order>(&id, OrderCommand::Remind);
                effects.finish();
            }
            Input::Timer(_) => {}
        }
        Ok(())
    }
}

fn start(
    path: &std::path::Path,
    clock: &VirtualClock,
    fail_poison: &Arc<AtomicBool>,
) -> Result<RuntimeHandle, StartError> {
    start_with(path, clock, fail_poison, ProcessSettings::default())
}

fn start_with(
    path: &std::path::Path,
    clock: &VirtualClock,
    fail_poison: &Arc<AtomicBool>,
    settings: ProcessSettings,
) -> Result<RuntimeHandle, StartError> {
    let fail_poison = Arc::clone(fail_poison);
    Runtime::builder()
        .path(path)
        .aggregate::<Order>()
        .clock(clock.clone())
        .process_manager(
            move || BillingProcess {
                fail_poison: Arc::clone(&fail_poison),
            },
            settings,
        )
        .start()
}

fn wait_until(
    what: &str,
    mut condition: impl FnMut() -> Result<bool, Box<dyn std::error::Error>>,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if condition()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("timed out waiting until {what}").into())
}

fn order_events(
    runtime: &RuntimeHandle,
    id: &str,
) -> Result<Vec<OrderEvent>, Box<dyn std::error::Error>> {
    let stream = StreamId::new(format!("order-{id}"))?;
    let events = runtime
        .store()
        .read_stream(&stream, 1, Direction::Forward, 1000)?;
    Ok(events
        .iter()
        .map(decode::<OrderEvent>)
        .collect::<Result<_, _>>()?)
}

fn instance(
    runtime: &RuntimeHandle,
    id: &str,
) -> Result<Option<InstanceView<Billing>>, ProcessError> {
    runtime.process_instance::<Billing>(NAME, id)
}

fn place(runtime: &RuntimeHandle, id: &str, amount: u64, poison: bool) -> TestResult {
    runtime.execute_blocking::<Order>(id, OrderCommand::Place { amount, poison })?;
    Ok(())
}

#[test]
fn commands_results_and_timers_survive_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(1_000_000_000));
    let fail = Arc::new(AtomicBool::new(false));
    let runtime = start(dir.path(), &clock, &fail)?;
    place(&runtime, "a", 5, false)?;
    wait_until("a is paid", || {
        Ok(instance(&runtime, "a")?.is_some_and(|i| i.state.paid && i.outbox == 0))
    })?;
    let view = instance(&runtime, "a")?.ok_or("no instance a")?;
    assert_eq!(view.status, InstanceStatus::Active);
    assert_eq!(
        view.timers,
        vec![("remind".to_owned(), Timestamp::from_micros(1_060_000_000))]
    );
    assert_eq!(runtime.process_status(NAME)?.timers, 1);
    // The host's steps are written without a sync of their own: the sync of
    // the appends they dispatch covers them.
    assert_eq!(runtime.store().writer_stats().direct_syncs, 0);
    runtime.shutdown_blocking()?;
    drop(runtime);

    // A minute later, another process: the timer fires from the store.
    clock.advance(MINUTE + Duration::from_secs(1));
    let runtime = start(dir.path(), &clock, &fail)?;
    wait_until("a is reminded and finished", || {
        Ok(
            instance(&runtime, "a")?.is_some_and(|i| i.status == InstanceStatus::Finished)
                && order_events(&runtime, "a")?.contains(&OrderEvent::Reminded),
        )
    })?;
    // The payment was executed once, the reminder once.
    let events = order_events(&runtime, "a")?;
    assert_eq!(
        events,
        vec![
            OrderEvent::Placed {
                amount: 5,
                poison: false
            },
            OrderEvent::Paid { amount: 5 },
            OrderEvent::Reminded
        ]
    );
    let status = runtime.process_status(NAME)?;
    assert_eq!((status.timers, status.outbox, status.stuck), (0, 0, 0));
    assert!(runtime.store().verify()?.is_clean());
    Ok(())
}

#[test]
fn cancelled_timers_never_fire() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(5_000_000));
    let fail = Arc::new(AtomicBool::new(false));
    let runtime = start(dir.path(), &clock, &fail)?;
    place(&runtime, "b", 7, false)?;
    place(&runtime, "c", 8, false)?;
    wait_until("b and c have their timers", || {
        Ok(runtime.process_status(NAME)?.timers == 2)
    })?;
    runtime.execute_blocking::<Order>("b", OrderCommand::Cancel)?;
    wait_until("b's timer is cancelled", || {
        Ok(instance(&runtime, "b")?.is_some_and(|i| i.state.cancelled && i.timers.is_empty()))
    })?;
    clock.advance(MINUTE * 2);
    wait_until("c is reminded", || {
        Ok(order_events(&runtime, "c")?.contains(&OrderEvent::Reminded))
    })?;
    runtime.shutdown_blocking()?;
    drop(runtime);
    clock.advance(MINUTE * 10);
    let runtime = start(dir.path(), &clock, &fail)?;
    // Give a fired timer every chance to show: the status settles first.
    wait_until("the process manager is live", || {
        let status = runtime.process_status(NAME)?;
        Ok(status.state == ConsumerState::Live && status.checkpoint == status.head)
    })?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(!order_events(&runtime, "b")?.contains(&OrderEvent::Reminded));
    assert_eq!(runtime.process_status(NAME)?.timers, 0);
    assert_eq!(
        instance(&runtime, "b")?.map(|i| i.status),
        Some(InstanceStatus::Active)
    );
    Ok(())
}

#[test]
fn a_rejection_reaches_the_instance_with_the_domain_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(0));
    let fail = Arc::new(AtomicBool::new(false));
    let runtime = start(dir.path(), &clock, &fail)?;
    place(&runtime, "zero", 0, false)?;
    wait_until("the rejection is handled", || {
        Ok(instance(&runtime, "zero")?.is_some_and(|i| i.state.rejected.is_some()))
    })?;
    let view = instance(&runtime, "zero")?.ok_or("no instance")?;
    assert_eq!(view.state.rejected.as_deref(), Some("nothing to pay"));
    assert!(!view.state.paid);
    assert_eq!(view.outbox, 0);
    Ok(())
}

#[test]
fn stuck_instances_are_listed_hold_their_events_and_resume_or_cancel() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(0));
    let fail = Arc::new(AtomicBool::new(true));
    let runtime = start(dir.path(), &clock, &fail)?;
    place(&runtime, "p", 3, true)?;
    place(&runtime, "q", 4, true)?;
    wait_until("p and q are stuck", || {
        Ok(runtime.stuck_instances(NAME)?.len() == 2)
    })?;
    // Others are not held up.
    place(&runtime, "fine", 5, false)?;
    wait_until("fine is paid", || {
        Ok(instance(&runtime, "fine")?.is_some_and(|i| i.state.paid))
    })?;
    // An event for a stuck instance is held.
    runtime.execute_blocking::<Order>("p", OrderCommand::Cancel)?;
    wait_until("p's cancel is held", || {
        Ok(runtime
            .stuck_instances(NAME)?
            .iter()
            .any(|s| s.id == "p" && s.held_events == 1))
    })?;
    let stuck = runtime.stuck_instances(NAME)?;
    let p = stuck.iter().find(|s| s.id == "p").ok_or("p not listed")?;
    assert_eq!(p.error, "poisoned order");
    assert_eq!(
        p.attempts,
        ProcessSettings::default().handler_retry.attempts_max
    );
    assert!(p.input.starts_with("event at position"), "{}", p.input);
    assert_eq!(runtime.process_status(NAME)?.stuck, 2);
    assert_eq!(
        runtime.resume_instance_blocking(NAME, "fine"),
        Err(ProcessError::Refused(ControlRefusal::NotStuck(
            "fine".into()
        )))
    );
    assert!(matches!(
        runtime.resume_instance_blocking("nope", "p"),
        Err(ProcessError::Unknown(_))
    ));

    // Still failing: resuming parks it again.
    runtime.resume_instance_blocking(NAME, "p")?;
    assert_eq!(runtime.stuck_instances(NAME)?.len(), 2);
    assert_eq!(order_events(&runtime, "p")?.len(), 2);

    // Fixed: p handles its event, then the held one, in order.
    fail.store(false, Ordering::SeqCst);
    runtime.resume_instance_blocking(NAME, "p")?;
    wait_until("p is paid and its timer cancelled", || {
        Ok(instance(&runtime, "p")?
            .is_some_and(|i| i.state.paid && i.state.cancelled && i.timers.is_empty()))
    })?;
    // q is cancelled instead: finished, nothing sent.
    runtime.cancel_instance_blocking(NAME, "q")?;
    assert_eq!(
        instance(&runtime, "q")?.map(|i| i.status),
        Some(InstanceStatus::Finished)
    );
    assert!(runtime.stuck_instances(NAME)?.is_empty());
    assert_eq!(runtime.process_status(NAME)?.stuck, 0);
    assert_eq!(
        order_events(&runtime, "q")?,
        vec![OrderEvent::Placed {
            amount: 4,
            poison: true
        }]
    );
    assert!(runtime.cancel_instance_blocking(NAME, "q").is_err());
    Ok(())
}

#[test]
fn invalid_process_settings_and_names_are_refused() {
    let fail = Arc::new(AtomicBool::new(false));
    let settings = ProcessSettings {
        outbox_max: 0,
        ..ProcessSettings::default()
    };
    let started = Runtime::builder()
        .in_memory()
        .aggregate::<Order>()
        .process_manager(
            move || BillingProcess {
                fail_poison: Arc::clone(&fail),
            },
            settings,
        )
        .start();
    assert!(matches!(started, Err(StartError::Setting(_))));
}

#[test]
fn instances_are_passivated_and_activated_again_from_the_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(0));
    let fail = Arc::new(AtomicBool::new(false));
    let settings = ProcessSettings {
        instances_resident_max: 2,
        instance_idle: Duration::from_millis(1),
        ..ProcessSettings::default()
    };
    let runtime = start_with(dir.path(), &clock, &fail, settings)?;
    let ids: Vec<String> = (0..8).map(|i| format!("o{i}")).collect();
    for id in &ids {
        place(&runtime, id, 2, false)?;
    }
    wait_until("every order is paid", || {
        for id in &ids {
            if !instance(&runtime, id)?.is_some_and(|i| i.state.paid) {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    wait_until("the idle instances are passivated", || {
        Ok(runtime.process_status(NAME)?.resident == 0)
    })?;
    // Continued from the store: the cancel finds the state and the timer.
    for id in &ids[..4] {
        runtime.execute_blocking::<Order>(id, OrderCommand::Cancel)?;
    }
    wait_until("four timers are cancelled", || {
        Ok(runtime.process_status(NAME)?.timers == 4)
    })?;
    for id in &ids[..4] {
        let view = instance(&runtime, id)?.ok_or("no instance")?;
        assert!(view.state.paid && view.state.cancelled && view.timers.is_empty());
    }
    clock.advance(MINUTE * 2);
    wait_until("the other four are reminded", || {
        let mut reminded = 0;
        for id in &ids {
            if order_events(&runtime, id)?.contains(&OrderEvent::Reminded) {
                reminded += 1;
            }
        }
        Ok(reminded == 4)
    })?;
    for id in &ids[..4] {
        assert!(!order_events(&runtime, id)?.contains(&OrderEvent::Reminded));
    }
    Ok(())
}

#[test]
fn commands_carry_the_correlation_of_the_event_that_caused_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = VirtualClock::new(Timestamp::from_micros(1_000_000_000));
    let runtime = start(dir.path(), &clock, &Arc::new(AtomicBool::new(false)))?;
    let request = CorrelationId::random();
    let place = OrderCommand::Place {
        amount: 3,
        poison: false,
    };
    let options = ExecuteOptions::new().correlation_id(request);
    runtime.execute_blocking_with::<Order>("traced", place.clone(), options)?;
    runtime.execute_blocking::<Order>("untraced", place)?;
    for id in ["traced", "untraced"] {
        wait_until("the order is paid", || {
            Ok(order_events(&runtime, id)?.len() == 2)
        })?;
        let stream = StreamId::new(format!("order-{id}"))?;
        let events = runtime
            .store()
            .read_stream(&stream, 1, Direction::Forward, 10)?;
        let (placed, paid) = (&events[0].metadata, &events[1].metadata);
        // Caused by the event; in the request's correlation, or in the
        // event's own when the request had none.
        assert_eq!(
            paid.causation_id.map(|c| c.to_bytes()),
            Some(placed.event_id.to_bytes())
        );
        let expected = match id {
            "traced" => request.to_bytes(),
            _ => placed.event_id.to_bytes(),
        };
        assert_eq!(paid.correlation_id.map(|c| c.to_bytes()), Some(expected));
    }
    runtime.shutdown_blocking()?;
    Ok(())
}
