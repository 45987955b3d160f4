//! Evolving events across releases: a store written by code with the v1
//! event types, opened by code with the v2 types and upcasters. Commands,
//! projections, a process manager and temporal reads all see v2; an event
//! of a newer schema than the code, or one that no step decodes, is a typed
//! error and changes nothing.

mod common;

use common::wait_until;
use eventfold_runtime::domain::*;
use eventfold_runtime::evolution::{EventError, Upcasters};
use eventfold_runtime::process::*;
use eventfold_runtime::projection::{HandlerError, Projection, ReadModelTx, decode};
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The first release: what it stored is what the second must read.
mod v1 {
    use super::*;

    #[derive(Default, Serialize, Deserialize)]
    pub struct Account {
        pub balance: u64,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum Event {
        Opened { owner: String },
        Deposited { amount: u64 },
        MovedOut { amount: u64, to: String },
    }

    impl DomainEvent for Event {
        fn event_type(&self) -> &'static str {
            match self {
                Event::Opened { .. } => "Opened",
                Event::Deposited { .. } => "Deposited",
                Event::MovedOut { .. } => "MovedOut",
            }
        }
    }

    #[derive(Serialize, Deserialize, Clone, Debug)]
    pub enum Command {
        Open(String),
        Deposit(u64),
        MoveOut(u64, String),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    pub struct Refused;

    impl Aggregate for Account {
        const KIND: &'static str = "acct";
        type Command = Command;
        type Event = Event;
        type Error = Refused;
        fn handle(&self, command: Command) -> Result<Vec<Event>, Refused> {
            Ok(vec![match command {
                Command::Open(owner) => Event::Opened { owner },
                Command::Deposit(amount) => Event::Deposited { amount },
                Command::MoveOut(amount, to) => Event::MovedOut { amount, to },
            }])
        }
        fn apply(&mut self, event: &Event) {
            match event {
                Event::Opened { .. } => {}
                Event::Deposited { amount } => self.balance += amount,
                Event::MovedOut { amount, .. } => self.balance -= amount,
            }
        }
    }
}

/// The second release: `Opened` gains a tier, `Deposited` is renamed
/// `Credited` and says where money came from, `MovedOut` is split into a
/// withdrawal and a record of where it went. The variants' order differs,
/// so no stored payload decodes as v2 without a step.
mod v2 {
    use super::*;

    #[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq)]
    pub struct Account {
        pub owner: String,
        pub tier: String,
        pub balance: u64,
        pub sent_to: Vec<String>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum Event {
        Sent { to: String, amount: u64 },
        Credited { amount: u64, source: String },
        Withdrawn { amount: u64 },
        Opened { owner: String, tier: String },
    }

    impl DomainEvent for Event {
        fn event_type(&self) -> &'static str {
            match self {
                Event::Opened { .. } => "Opened",
                Event::Credited { .. } => "Credited",
                Event::Withdrawn { .. } => "Withdrawn",
                Event::Sent { .. } => "Sent",
            }
        }
        fn schema_version(&self) -> u16 {
            match self {
                Event::Opened { .. } | Event::Credited { .. } => 2,
                Event::Withdrawn { .. } | Event::Sent { .. } => 1,
            }
        }
    }

    #[derive(Serialize, Deserialize, Clone, Debug)]
    pub enum Command {
        Deposit(u64, String),
        Withdraw(u64),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("insufficient funds")]
    pub struct Insufficient;

    impl Aggregate for Account {
        const KIND: &'static str = "acct";
        const SNAPSHOT_VERSION: u32 = 2;
        type Command = Command;
        type Event = Event;
        type Error = Insufficient;
        fn handle(&self, command: Command) -> Result<Vec<Event>, Insufficient> {
            match command {
                Command::Deposit(amount, source) => Ok(vec![Event::Credited { amount, source }]),
                Command::Withdraw(amount) if amount > self.balance => Err(Insufficient),
                Command::Withdraw(amount) => Ok(vec![Event::Withdrawn { amount }]),
            }
        }
        fn apply(&mut self, event: &Event) {
            match event {
                Event::Opened { owner, tier } => {
                    self.owner = owner.clone();
                    self.tier = tier.clone();
                }
                Event::Credited { amount, .. } => self.balance += amount,
                Event::Withdrawn { amount } => self.balance -= amount,
                Event::Sent { to, .. } => self.sent_to.push(to.clone()),
            }
        }
    }

    /// v1 → v2, one step per stored type.
    pub fn upcasters() -> Upcasters {
        Upcasters::new()
            .step("Opened", 1, |old: v1::Event| match old {
                v1::Event::Opened { owner } => vec![Event::Opened {
                    owner,
                    tier: "standard".into(),
                }],
                _ => Vec::new(),
            })
            .step("Deposited", 1, |old: v1::Event| match old {
                v1::Event::Deposited { amount } => vec![Event::Credited {
                    amount,
                    source: "v1".into(),
                }],
                _ => Vec::new(),
            })
            .step("MovedOut", 1, |old: v1::Event| match old {
                v1::Event::MovedOut { amount, to } => {
                    vec![Event::Withdrawn { amount }, Event::Sent { to, amount }]
                }
                _ => Vec::new(),
            })
    }

    /// Balances and the number of events of each (current) type it saw.
    pub struct Balances;

    impl Projection for Balances {
        fn name(&self) -> &str {
            "balances"
        }
        fn filter(&self) -> Filter {
            // Current names only: the runtime widens the store's filter to
            // the stored names the steps take.
            Filter::event_types(["Credited", "Withdrawn"])
        }
        fn apply(
            &mut self,
            event: &RecordedEvent,
            model: &mut ReadModelTx<'_>,
        ) -> Result<(), HandlerError> {
            let key = event.stream_id.as_str().as_bytes();
            let balance: u64 = model.get_as(key)?.unwrap_or(0);
            let balance = match decode::<Event>(event)? {
                Event::Credited { amount, .. } => balance + amount,
                Event::Withdrawn { amount } => balance - amount,
                other => return Err(HandlerError::new(format!("filtered out: {other:?}"))),
            };
            model.put_as(key, &balance)?;
            let count_key = format!("count:{}", event.event_type);
            let count: u64 = model.get_as(count_key.as_bytes())?.unwrap_or(0);
            model.put_as(count_key.as_bytes(), &(count + 1))
        }
    }

    /// Keeps what it saw of each account, as text.
    pub struct Ledger;

    impl ProcessManager for Ledger {
        type State = Vec<String>;
        type Error = HandlerError;
        fn name(&self) -> &str {
            "ledger"
        }
        fn associate(&self, event: &RecordedEvent) -> Association {
            Association::Start(event.stream_id.to_string())
        }
        fn handle(
            &mut self,
            state: &mut Vec<String>,
            input: Input<'_>,
            _: &mut Effects,
        ) -> Result<(), HandlerError> {
            if let Input::Event(event) = input {
                let line = match decode::<Event>(event)? {
                    Event::Opened { tier, .. } => format!("opened {tier}"),
                    Event::Credited { amount, source } => {
                        format!("credited {amount} from {source}")
                    }
                    Event::Withdrawn { amount } => format!("withdrawn {amount}"),
                    Event::Sent { to, amount } => format!("sent {amount} to {to}"),
                };
                state.push(format!("v{} {line}", event.schema_version));
            }
            Ok(())
        }
    }
}

/// Writes acct-1's history with the v1 code (a snapshot every 2 events, of
/// v1's snapshot version) and stops.
fn write_v1(path: &std::path::Path) -> TestResult<Timestamp> {
    let runtime = Runtime::builder()
        .path(path)
        .snapshot_every_events(Some(2))
        .aggregate::<v1::Account>()
        .start()?;
    runtime.execute_blocking::<v1::Account>("1", v1::Command::Open("ann".into()))?;
    runtime.execute_blocking::<v1::Account>("1", v1::Command::Deposit(100))?;
    std::thread::sleep(Duration::from_millis(5));
    let between = Timestamp::now();
    std::thread::sleep(Duration::from_millis(5));
    runtime.execute_blocking::<v1::Account>("1", v1::Command::Deposit(50))?;
    runtime.execute_blocking::<v1::Account>("1", v1::Command::MoveOut(30, "acct-2".into()))?;
    runtime.shutdown_blocking()?;
    Ok(between)
}

fn start_v2(path: &std::path::Path, upcasters: Upcasters) -> Result<RuntimeHandle, StartError> {
    Runtime::builder()
        .path(path)
        .aggregate::<v2::Account>()
        .upcasters(upcasters)
        .projection(|| v2::Balances, ConsumerSettings::default())
        .process_manager(|| v2::Ledger, ProcessSettings::default())
        .start()
}

#[test]
fn upcasting_across_versions_commands_projections_process_managers_and_temporal_reads_see_v2()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let between = write_v1(dir.path())?;
    let runtime = start_v2(dir.path(), v2::upcasters())?;
    let snapshot = runtime.store().load_snapshot(&StreamId::new("acct-1")?)?;
    assert_eq!(
        snapshot.map(|s| s.snapshot_version),
        Some(1),
        "v1 left a snapshot"
    );

    // Commands: the aggregate loads its v1 history (the v1 snapshot is of
    // another snapshot version: a full replay) as v2.
    let outcome = runtime.execute_blocking::<v2::Account>("1", v2::Command::Withdraw(20))?;
    assert_eq!(outcome.version, 5);
    let refused = runtime.execute_blocking::<v2::Account>("1", v2::Command::Withdraw(101));
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(v2::Insufficient))
    ));
    let position = outcome.position.ok_or("no position")?;

    // The projection saw v2 types only, the split event as two.
    runtime.wait_for_blocking("balances", position, Duration::from_secs(20))?;
    let view = runtime.query("balances")?;
    assert_eq!(view.get_as::<u64>(b"acct-1")?, Some(100));
    assert_eq!(view.get_as::<u64>(b"count:Credited")?, Some(2));
    assert_eq!(view.get_as::<u64>(b"count:Withdrawn")?, Some(2));
    assert_eq!(view.get_as::<u64>(b"count:Deposited")?, None);

    // The process manager saw v2, in order, the split event's two parts
    // one after the other.
    let expected = [
        "v2 opened standard",
        "v2 credited 100 from v1",
        "v2 credited 50 from v1",
        "v1 withdrawn 30",
        "v1 sent 30 to acct-2",
        "v1 withdrawn 20",
    ];
    wait_until("the ledger has every event", || {
        let instance = runtime.process_instance::<Vec<String>>("ledger", "acct-1")?;
        Ok(instance.is_some_and(|i| i.state.len() == expected.len()))
    })?;
    let instance = runtime
        .process_instance::<Vec<String>>("ledger", "acct-1")?
        .ok_or("no ledger instance")?;
    assert_eq!(instance.state, expected);

    // Temporal reads, by version and by time, through the upcasters.
    let at_2 = runtime.state_at_blocking::<v2::Account>("1", 2)?;
    assert_eq!(at_2.version, 2);
    assert_eq!(
        at_2.state,
        v2::Account {
            owner: "ann".into(),
            tier: "standard".into(),
            balance: 100,
            sent_to: Vec::new(),
        }
    );
    let at_4 = futures::executor::block_on(runtime.state_at::<v2::Account>("1", 4))?;
    assert_eq!(
        (at_4.state.balance, at_4.state.sent_to.clone()),
        (120, vec!["acct-2".to_owned()])
    );
    let then = runtime.state_at_time_blocking::<v2::Account>("1", between)?;
    assert_eq!((then.version, then.state.balance), (2, 100));
    let now = runtime.state_at_blocking::<v2::Account>("1", u64::MAX)?;
    assert_eq!((now.version, now.state.balance), (5, 100));
    let before = runtime.state_at_time_blocking::<v2::Account>("1", Timestamp::from_micros(0))?;
    assert_eq!((before.version, before.state), (0, v2::Account::default()));
    runtime.shutdown_blocking()?;
    Ok(())
}

#[test]
fn without_an_upcaster_a_changed_shape_is_a_typed_error_naming_the_event_and_nothing_is_written()
-> TestResult {
    let dir = tempfile::tempdir()?;
    write_v1(dir.path())?;
    let runtime = Runtime::builder()
        .path(dir.path())
        .aggregate::<v2::Account>()
        .start()?;
    let error = runtime
        .execute_blocking::<v2::Account>("1", v2::Command::Deposit(1, "x".into()))
        .err()
        .ok_or("a v1 history decoded as v2 without steps")?;
    let CommandError::Load(LoadError::Event(event_error)) = &error else {
        return Err(format!("expected an event error, got {error:?}").into());
    };
    assert!(matches!(event_error, EventError::Undecodable { .. }));
    assert_eq!(event_error.at().stream, "acct-1");
    assert_eq!(event_error.at().version, 1);
    assert!(error.to_string().contains("Opened v1"), "{error}");
    assert_eq!(
        runtime.store().stream_version(&StreamId::new("acct-1")?)?,
        4
    );
    let past = runtime.state_at_blocking::<v2::Account>("1", 2);
    assert!(matches!(past, Err(StateAtError::Load(LoadError::Event(_)))));
    runtime.shutdown_blocking()?;
    Ok(())
}

#[test]
fn an_event_of_a_newer_schema_than_the_code_is_refused_everywhere() -> TestResult {
    let store = MemoryStore::new();
    let stream = StreamId::new("acct-9")?;
    let future = NewEvent::new(
        "Withdrawn",
        7,
        payload::encode(&v2::Event::Withdrawn { amount: 1 })?,
        Metadata::new(),
    );
    store.append(&stream, ExpectedVersion::NoStream, vec![future])?;
    let runtime = Runtime::builder()
        .memory_store(store)
        .aggregate::<v2::Account>()
        .projection(|| v2::Balances, ConsumerSettings::default())
        .start()?;
    let result = runtime.execute_blocking::<v2::Account>("9", v2::Command::Deposit(5, "x".into()));
    let Err(CommandError::Load(LoadError::Event(EventError::NewerThanCode { at, known }))) = result
    else {
        return Err(format!("expected NewerThanCode, got {result:?}").into());
    };
    assert_eq!(
        (at.stream.as_str(), at.version, at.schema_version, known),
        ("acct-9", 1, 7, 1)
    );
    assert_eq!(runtime.store().stream_version(&stream)?, 1);
    // The projection parks it (its error policy), naming the schema.
    wait_until("the event is parked", || {
        Ok(!runtime.parked_events("balances")?.is_empty())
    })?;
    let parked = runtime.parked_events("balances")?;
    assert!(
        parked[0].reason.contains("newer than this code"),
        "{}",
        parked[0].reason
    );
    runtime.shutdown_blocking()?;
    Ok(())
}

#[test]
fn a_step_registered_twice_refuses_to_start() -> TestResult {
    let twice = v2::upcasters().merge(v2::upcasters());
    let started = Runtime::builder().in_memory().upcasters(twice).start();
    assert!(matches!(started, Err(StartError::Setting(_))));
    Ok(())
}

/// Refuses `Sent` events while set.
static REFUSE_SENT: AtomicBool = AtomicBool::new(true);

/// Counts withdrawals and records where money was sent.
struct Picky;

impl Projection for Picky {
    fn name(&self) -> &str {
        "picky"
    }
    fn apply(
        &mut self,
        event: &RecordedEvent,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError> {
        match decode::<v2::Event>(event)? {
            v2::Event::Withdrawn { .. } => {
                let count: u64 = model.get_as(b"withdrawals")?.unwrap_or(0);
                model.put_as(b"withdrawals", &(count + 1))
            }
            v2::Event::Sent { .. } if REFUSE_SENT.load(Ordering::SeqCst) => {
                Err(HandlerError::new("not yet"))
            }
            v2::Event::Sent { to, amount } => model.put_as(to.as_bytes(), &amount),
            _ => Ok(()),
        }
    }
}

#[test]
fn events_upcast_from_one_are_parked_and_retried_as_one_unit() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_v1(dir.path())?;
    let settings = ConsumerSettings {
        error_policy: ErrorPolicy {
            attempts_max: 1,
            ..ErrorPolicy::default()
        },
        ..ConsumerSettings::default()
    };
    let runtime = Runtime::builder()
        .path(dir.path())
        .aggregate::<v2::Account>()
        .upcasters(v2::upcasters())
        .projection(|| Picky, settings)
        .start()?;
    wait_until("MovedOut is parked", || {
        Ok(!runtime.parked_events("picky")?.is_empty())
    })?;
    let parked = runtime.parked_events("picky")?;
    assert_eq!(parked.len(), 1);
    assert_eq!(
        parked[0].position, 4,
        "the stored MovedOut, whose second part failed"
    );
    // Its first part (the withdrawal) was undone with the failed one.
    runtime.wait_for_blocking("picky", 4, Duration::from_secs(20))?;
    let view = runtime.query("picky")?;
    assert_eq!(view.get_as::<u64>(b"withdrawals")?, None);
    REFUSE_SENT.store(false, Ordering::SeqCst);
    runtime.retry_parked_blocking("picky", 4)?;
    assert!(runtime.parked_events("picky")?.is_empty());
    assert_eq!(view.get_as::<u64>(b"withdrawals")?, Some(1));
    assert_eq!(view.get_as::<u64>(b"acct-2")?, Some(30));
    runtime.shutdown_blocking()?;
    Ok(())
}

#[test]
fn a_subscription_the_runtime_hands_out_is_upcast_too() -> TestResult {
    let runtime = Runtime::builder()
        .in_memory()
        .aggregate::<v2::Account>()
        .upcasters(v2::upcasters())
        .start()?;
    let mut bus = runtime.subscribe();
    let old = v1::Event::MovedOut {
        amount: 3,
        to: "acct-9".into(),
    };
    let stored = NewEvent::new("MovedOut", 1, payload::encode(&old)?, Metadata::new());
    runtime.store().append(
        &StreamId::new("acct-8")?,
        ExpectedVersion::Any,
        vec![stored],
    )?;
    let batch = bus.try_recv()?.ok_or("no batch")?;
    let types: Vec<&str> = batch.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Withdrawn", "Sent"]);
    assert!(batch.iter().all(|e| e.position == 1));
    runtime.shutdown_blocking()?;
    Ok(())
}

/// Refuses `Sent` events while set.
static REFUSE_SENT_IN_PM: AtomicBool = AtomicBool::new(true);

/// v2::Ledger, but stuck on `Sent` while `REFUSE_SENT_IN_PM` is set.
struct PickyLedger;

impl ProcessManager for PickyLedger {
    type State = Vec<String>;
    type Error = HandlerError;
    fn name(&self) -> &str {
        "picky-ledger"
    }
    fn associate(&self, event: &RecordedEvent) -> Association {
        Association::Start(event.stream_id.to_string())
    }
    fn handle(
        &mut self,
        state: &mut Vec<String>,
        input: Input<'_>,
        _: &mut Effects,
    ) -> Result<(), HandlerError> {
        if let Input::Event(event) = input {
            let event = decode::<v2::Event>(event)?;
            if matches!(event, v2::Event::Sent { .. }) && REFUSE_SENT_IN_PM.load(Ordering::SeqCst) {
                return Err(HandlerError::new("not yet"));
            }
            state.push(format!("{event:?}"));
        }
        Ok(())
    }
}

#[test]
fn a_process_manager_stuck_on_the_second_event_made_of_one_resumes_from_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_v1(dir.path())?;
    let settings = ProcessSettings {
        handler_retry: RetryPolicy {
            attempts_max: 1,
            ..ProcessSettings::default().handler_retry
        },
        ..ProcessSettings::default()
    };
    let runtime = Runtime::builder()
        .path(dir.path())
        .aggregate::<v2::Account>()
        .upcasters(v2::upcasters())
        .process_manager(|| PickyLedger, settings)
        .start()?;
    wait_until("the instance is stuck", || {
        Ok(!runtime.stuck_instances("picky-ledger")?.is_empty())
    })?;
    let state = || -> TestResult<Vec<String>> {
        let instance = runtime.process_instance::<Vec<String>>("picky-ledger", "acct-1")?;
        Ok(instance.ok_or("no instance")?.state)
    };
    // The withdrawal made of MovedOut was handled; the send after it is stuck.
    assert_eq!(state()?.len(), 4);
    assert!(state()?[3].starts_with("Withdrawn"));
    // A command's event after it is held behind it.
    runtime.execute_blocking::<v2::Account>("1", v2::Command::Withdraw(20))?;
    REFUSE_SENT_IN_PM.store(false, Ordering::SeqCst);
    runtime.resume_instance_blocking("picky-ledger", "acct-1")?;
    wait_until("everything is handled", || Ok(state()?.len() == 6))?;
    let seen = state()?;
    assert!(seen[4].starts_with("Sent"), "{seen:?}");
    assert!(seen[5].starts_with("Withdrawn { amount: 20"), "{seen:?}");
    runtime.shutdown_blocking()?;
    Ok(())
}
