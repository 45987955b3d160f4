//! The runtime's test aggregate, `Tally`, and the helpers the runtime's
//! integration tests share.

use eventfold_runtime::domain::*;
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A test aggregate whose state can be checked through a command.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct Tally {
    pub total: u64,
    pub count: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Cmd {
    Add(u64),
    /// Succeeds without events iff the state is exactly this.
    Check {
        total: u64,
        count: u64,
    },
    Panic,
    PanicInApply,
    /// Blocks the shard's thread: only for tests of overload and timeouts.
    Sleep(Duration),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Ev {
    Added(u64),
    Poison,
}

impl DomainEvent for Ev {
    fn event_type(&self) -> &'static str {
        match self {
            Ev::Added(_) => "Added",
            Ev::Poison => "Poison",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TallyError {
    #[error("zero")]
    Zero,
    #[error("state is total {total}, count {count}")]
    Mismatch { total: u64, count: u64 },
}

impl Aggregate for Tally {
    const KIND: &'static str = "tally";
    type Command = Cmd;
    type Event = Ev;
    type Error = TallyError;

    fn handle(&self, command: Cmd) -> Result<Vec<Ev>, TallyError> {
        match command {
            Cmd::Add(0) => Err(TallyError::Zero),
            Cmd::Add(n) => Ok(vec![Ev::Added(n)]),
            Cmd::Check { total, count } if (total, count) == (self.total, self.count) => Ok(vec![]),
            Cmd::Check { .. } => Err(TallyError::Mismatch {
                total: self.total,
                count: self.count,
            }),
            Cmd::Panic => panic!("boom in handle"),
            Cmd::PanicInApply => Ok(vec![Ev::Poison]),
            Cmd::Sleep(d) => {
                std::thread::sleep(d);
                Ok(vec![])
            }
        }
    }

    fn apply(&mut self, event: &Ev) {
        match event {
            Ev::Added(n) => {
                self.total += n;
                self.count += 1;
            }
            Ev::Poison => panic!("poison in apply"),
        }
    }
}

/// The same stream kind with another snapshot version.
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
pub struct TallyV2 {
    pub total: u64,
    pub count: u64,
}

impl Aggregate for TallyV2 {
    const KIND: &'static str = "tally";
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = Cmd;
    type Event = Ev;
    type Error = TallyError;
    fn handle(&self, command: Cmd) -> Result<Vec<Ev>, TallyError> {
        Tally {
            total: self.total,
            count: self.count,
        }
        .handle(command)
    }
    fn apply(&mut self, event: &Ev) {
        if let Ev::Added(n) = event {
            self.total += n;
            self.count += 1;
        }
    }
}

pub fn runtime() -> RuntimeHandle {
    runtime_with_shards(2)
}

pub fn runtime_with_shards(shards: usize) -> RuntimeHandle {
    Runtime::builder()
        .temporary()
        .shards(shards)
        .aggregate::<Tally>()
        .start()
        .unwrap()
}

/// A runtime of one shard on an in-memory store, with `Tally` registered.
pub fn one_shard_in_memory() -> RuntimeHandle {
    Runtime::builder()
        .in_memory()
        .shards(1)
        .aggregate::<Tally>()
        .start()
        .unwrap()
}

pub fn check(rt: &RuntimeHandle, id: &str, total: u64, count: u64) {
    match rt.execute_blocking::<Tally>(id, Cmd::Check { total, count }) {
        Ok(outcome) => assert!(outcome.events.is_empty()),
        Err(e) => panic!("state of {id} is not ({total}, {count}): {e}"),
    }
}

pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Keeps the shard of `id` busy for `held` (a `Sleep` command blocks its
/// thread), then waits `settle` so that the hold has begun.
pub fn hold_shard(
    rt: &RuntimeHandle,
    id: &'static str,
    held: Duration,
    settle: Duration,
) -> std::thread::JoinHandle<()> {
    let rt = rt.clone();
    let handle = std::thread::spawn(move || {
        rt.execute_blocking::<Tally>(id, Cmd::Sleep(held)).unwrap();
    });
    std::thread::sleep(settle);
    handle
}

/// A one-shard runtime with a shard mailbox of 4 commands and actor
/// mailboxes of 2, its shard held busy for `held` (see [`hold_shard`]).
pub fn small_mailboxes_held(held: Duration) -> (RuntimeHandle, std::thread::JoinHandle<()>) {
    let rt = Runtime::builder()
        .temporary()
        .shards(1)
        .mailboxes(4, 2)
        .aggregate::<Tally>()
        .start()
        .unwrap();
    let blocker = hold_shard(&rt, "slow", held, Duration::from_millis(300));
    (rt, blocker)
}

pub fn stream(id: &str) -> StreamId {
    StreamId::new(format!("tally-{id}")).unwrap()
}

/// Appends `Added(amount)` to the stream of `id` straight through the
/// store, behind its actor's back.
pub fn write_behind_the_actor(rt: &RuntimeHandle, id: &str, amount: u64) {
    let foreign = NewEvent::new(
        "Added",
        1,
        payload::encode(&Ev::Added(amount)).unwrap(),
        Metadata::new(),
    );
    rt.store()
        .append(&stream(id), ExpectedVersion::Any, vec![foreign])
        .unwrap();
}

/// After one event of the actor's and one foreign event: the next command
/// conflicts at version 2, the actor reloads (its state is `total` over
/// two events), and the command after that lands at version 3.
pub fn conflicts_then_reloads(rt: &RuntimeHandle, id: &str, total: u64) {
    let refused = rt.execute_blocking::<Tally>(id, Cmd::Add(7));
    assert!(
        matches!(
            refused,
            Err(CommandError::WrongExpectedVersion { actual: 2, .. })
        ),
        "{refused:?}"
    );
    check(rt, id, total, 2);
    assert_eq!(
        rt.execute_blocking::<Tally>(id, Cmd::Add(1))
            .unwrap()
            .version,
        3
    );
}
