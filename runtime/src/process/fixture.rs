//! Given-when-then for process managers, with a virtual clock.

use super::api::{Association, Effects, FiredTimer, Input, ProcessManager, TimerChange};
use super::results::{CommandResult, OutgoingCommand};
use eventfold_domain::{Aggregate, CommandId, DomainEvent, RecordedEvent, Timestamp};
use eventfold_storage::payload;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One step's effects as a fixture sees them.
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// Commands sent, in order.
    pub commands: Vec<OutgoingCommand>,
    /// Timer changes, in order.
    pub timers: Vec<TimerChange>,
    /// Whether an instance finished.
    pub finished: bool,
}

impl StepOutcome {
    /// The commands sent to `A`, decoded, with the aggregate id.
    pub fn commands_to<A: Aggregate>(&self) -> Vec<(String, A::Command)> {
        self.commands
            .iter()
            .filter_map(|c| c.decode::<A>().map(|cmd| (c.aggregate_id.clone(), cmd)))
            .collect()
    }

    /// Names of the timers set, with due times.
    pub fn timers_set(&self) -> Vec<(String, Timestamp)> {
        self.timers
            .iter()
            .filter_map(|t| match t {
                TimerChange::Set { name, due } => Some((name.clone(), *due)),
                TimerChange::Cancel { .. } => None,
            })
            .collect()
    }

    /// Names of the timers cancelled.
    pub fn timers_cancelled(&self) -> Vec<String> {
        self.timers
            .iter()
            .filter_map(|t| match t {
                TimerChange::Cancel { name } => Some(name.clone()),
                TimerChange::Set { .. } => None,
            })
            .collect()
    }
}

/// Given-when-then for process managers, with a virtual clock: no store, no
/// actors. Instances, timers and finishing behave as in the runtime.
///
/// ```
/// # use eventfold_runtime::process::{Association, Effects, Input, ProcessManager};
/// # use eventfold_runtime::domain::RecordedEvent;
/// # use std::time::Duration;
/// # struct Reminder;
/// # impl ProcessManager for Reminder {
/// #     type State = u32;
/// #     type Error = std::convert::Infallible;
/// #     fn name(&self) -> &str { "reminder" }
/// #     fn associate(&self, event: &RecordedEvent) -> Association {
/// #         Association::Start(event.stream_id.to_string())
/// #     }
/// #     fn handle(&mut self, n: &mut u32, input: Input<'_>, effects: &mut Effects) -> Result<(), Self::Error> {
/// #         match input {
/// #             Input::Event(_) => effects.set_timer_after("remind", Duration::from_secs(60)),
/// #             Input::Timer(_) => { *n += 1; effects.finish(); }
/// #             Input::Result(_) => {}
/// #         }
/// #         Ok(())
/// #     }
/// # }
/// use eventfold_runtime::process::ProcessFixture;
/// use eventfold_runtime::domain::Timestamp;
///
/// let mut fixture = ProcessFixture::new(Reminder, Timestamp::from_micros(0));
/// let step = fixture.when_raw_event("doc-1", "Created", vec![])?;
/// assert_eq!(step.timers_set().len(), 1);
/// assert!(!fixture.when_elapsed(Duration::from_secs(59))?.finished);
/// assert!(fixture.when_elapsed(Duration::from_secs(1))?.finished);
/// assert_eq!(fixture.state("doc-1"), Some(&1));
/// # Ok::<(), std::convert::Infallible>(())
/// ```
pub struct ProcessFixture<P: ProcessManager> {
    pm: P,
    now: Timestamp,
    next_position: u64,
    versions: BTreeMap<String, u64>,
    instances: BTreeMap<String, (P::State, bool)>,
    timers: BTreeSet<(Timestamp, String, String)>,
    sent: Vec<(CommandId, String)>,
}

impl<P: ProcessManager> ProcessFixture<P> {
    /// A fixture with no history, its clock at `now`.
    pub fn new(pm: P, now: Timestamp) -> Self {
        Self {
            pm,
            now,
            next_position: 1,
            versions: BTreeMap::new(),
            instances: BTreeMap::new(),
            timers: BTreeSet::new(),
            sent: Vec::new(),
        }
    }

    /// The fixture's clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// An instance's state.
    pub fn state(&self, id: &str) -> Option<&P::State> {
        self.instances.get(id).map(|(state, _)| state)
    }

    /// Whether an instance has finished.
    pub fn is_finished(&self, id: &str) -> bool {
        self.instances.get(id).is_some_and(|(_, done)| *done)
    }

    /// Timers set: due time, instance, name.
    pub fn timers(&self) -> Vec<(Timestamp, String, String)> {
        self.timers.iter().cloned().collect()
    }

    /// Delivers a domain event of `stream`.
    pub fn when_event<E: DomainEvent>(
        &mut self,
        stream: &str,
        event: E,
    ) -> Result<StepOutcome, P::Error> {
        match payload::encode(&event) {
            Ok(bytes) => self.when_raw_event(stream, event.event_type(), bytes),
            Err(error) => panic!("the fixture could not encode an event: {error}"),
        }
    }

    /// Delivers an event given by type name and payload bytes.
    pub fn when_raw_event(
        &mut self,
        stream: &str,
        event_type: &str,
        payload: Vec<u8>,
    ) -> Result<StepOutcome, P::Error> {
        let stream_id = match eventfold_domain::StreamId::new(stream) {
            Ok(id) => id,
            Err(error) => panic!("the fixture got an invalid stream id: {error}"),
        };
        let version = self.versions.entry(stream.to_owned()).or_default();
        *version += 1;
        let event = RecordedEvent {
            stream_id,
            version: *version,
            position: self.next_position,
            recorded_at: self.now,
            event_type: event_type.to_owned(),
            schema_version: 1,
            payload,
            metadata: eventfold_domain::Metadata::new(),
        };
        self.next_position += 1;
        let mut outcome = StepOutcome::default();
        if !self.pm.filter().matches(&event) {
            return Ok(outcome);
        }
        let (id, start) = match self.pm.associate(&event) {
            Association::Start(id) => (id, true),
            Association::Continue(id) => (id, false),
            Association::Ignore => return Ok(outcome),
        };
        let key = format!("e{}", event.position);
        self.step(&id, start, Input::Event(&event), key, &mut outcome)?;
        Ok(outcome)
    }

    /// Delivers the result of a command an instance sent; the instance is
    /// found by the command id.
    pub fn when_result(&mut self, result: CommandResult) -> Result<StepOutcome, P::Error> {
        let mut outcome = StepOutcome::default();
        let instance = self.sent_by(result.command_id);
        if let Some(id) = instance {
            let key = format!("r{}", result.command_id);
            self.step(&id, false, Input::Result(&result), key, &mut outcome)?;
        }
        Ok(outcome)
    }

    /// Moves the clock forward and fires every timer that falls due, in due
    /// order.
    pub fn when_elapsed(&mut self, elapsed: Duration) -> Result<StepOutcome, P::Error> {
        self.now = self.now.plus(elapsed);
        let mut outcome = StepOutcome::default();
        while let Some(first) = self.timers.first().cloned() {
            if first.0 > self.now {
                break;
            }
            self.timers.remove(&first);
            let (due, id, name) = first;
            let timer = FiredTimer { name, due };
            let key = format!("t{}@{}", timer.name, due.as_micros());
            self.step(&id, false, Input::Timer(&timer), key, &mut outcome)?;
        }
        Ok(outcome)
    }

    fn sent_by(&self, command_id: CommandId) -> Option<String> {
        self.sent
            .iter()
            .find(|(id, _)| *id == command_id)
            .map(|(_, instance)| instance.clone())
    }

    fn step(
        &mut self,
        id: &str,
        start: bool,
        input: Input<'_>,
        key: String,
        outcome: &mut StepOutcome,
    ) -> Result<(), P::Error> {
        let (mut state, finished) = match self.instances.get(id) {
            Some((state, finished)) => (state.clone(), *finished),
            None if start => (P::State::default(), false),
            None => return Ok(()),
        };
        if finished {
            return Ok(());
        }
        let name = self.pm.name().to_owned();
        let mut effects = Effects::new(&name, id, key, self.now);
        self.pm.handle(&mut state, input, &mut effects)?;
        if let Some(error) = effects.error {
            panic!("{error}");
        }
        for change in &effects.timers {
            match change {
                TimerChange::Set { name, due } => {
                    self.timers.retain(|(_, i, n)| !(i == id && n == name));
                    self.timers.insert((*due, id.to_owned(), name.clone()));
                }
                TimerChange::Cancel { name } => {
                    self.timers.retain(|(_, i, n)| !(i == id && n == name));
                }
            }
        }
        if effects.finished {
            self.timers.retain(|(_, i, _)| i != id);
        }
        for command in &effects.commands {
            self.sent.push((command.command_id, id.to_owned()));
        }
        self.instances
            .insert(id.to_owned(), (state, effects.finished));
        outcome.commands.extend(effects.commands);
        outcome.timers.extend(effects.timers);
        outcome.finished |= effects.finished;
        Ok(())
    }
}
