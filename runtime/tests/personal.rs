//! Crypto-shredding through the runtime: personal values are stored
//! encrypted with their subject's key; `forget` destroys the key, after
//! which they read as shredded in aggregates, projections, process managers
//! and temporal reads while everything else works; and neither the
//! plaintext nor the forgotten key can be found in the store's files.

mod common;

use common::wait_until;
use eventfold_runtime::domain::*;
use eventfold_runtime::personal::Personal;
use eventfold_runtime::process::*;
use eventfold_runtime::projection::{HandlerError, Projection, ReadModelTx, decode};
use eventfold_runtime::storage::*;
use eventfold_runtime::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[derive(Default, Serialize, Deserialize, Debug)]
struct Customer {
    name: Option<Personal<String>>,
    balance: u64,
}

#[derive(Serialize, Deserialize, Debug)]
enum Cmd {
    Register { subject: String, name: String },
    Credit(u64),
    Rename(String),
}

#[derive(Serialize, Deserialize, Clone, Debug)]
enum Ev {
    Registered { name: Personal<String> },
    Credited { amount: u64 },
}

impl DomainEvent for Ev {
    fn event_type(&self) -> &'static str {
        match self {
            Ev::Registered { .. } => "Registered",
            Ev::Credited { .. } => "Credited",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not registered")]
struct NotRegistered;

impl Aggregate for Customer {
    const KIND: &'static str = "customer";
    type Command = Cmd;
    type Event = Ev;
    type Error = NotRegistered;
    fn handle(&self, command: Cmd) -> Result<Vec<Ev>, NotRegistered> {
        match command {
            Cmd::Register { subject, name } => Ok(vec![Ev::Registered {
                name: Personal::new(subject, name),
            }]),
            Cmd::Credit(amount) => Ok(vec![Ev::Credited { amount }]),
            Cmd::Rename(name) => {
                let subject = self
                    .name
                    .as_ref()
                    .ok_or(NotRegistered)?
                    .subject()
                    .to_owned();
                Ok(vec![Ev::Registered {
                    name: Personal::new(subject, name),
                }])
            }
        }
    }
    fn apply(&mut self, event: &Ev) {
        match event {
            Ev::Registered { name } => self.name = Some(name.clone()),
            Ev::Credited { amount } => self.balance += amount,
        }
    }
}

/// A directory of names: the read model keeps them personal too.
struct Directory;

impl Projection for Directory {
    fn name(&self) -> &str {
        "directory"
    }
    fn apply(
        &mut self,
        event: &RecordedEvent,
        model: &mut ReadModelTx<'_>,
    ) -> Result<(), HandlerError> {
        if let Ev::Registered { name } = decode::<Ev>(event)? {
            model.put_as(event.stream_id.as_str().as_bytes(), &name)?;
        }
        Ok(())
    }
}

/// Greets each customer once: its state keeps the name.
struct Greeter;

impl ProcessManager for Greeter {
    type State = Option<Personal<String>>;
    type Error = HandlerError;
    fn name(&self) -> &str {
        "greeter"
    }
    fn filter(&self) -> Filter {
        Filter::event_types(["Registered"])
    }
    fn associate(&self, event: &RecordedEvent) -> Association {
        Association::Start(event.stream_id.to_string())
    }
    fn handle(
        &mut self,
        state: &mut Self::State,
        input: Input<'_>,
        _: &mut Effects,
    ) -> Result<(), HandlerError> {
        if let Input::Event(event) = input
            && let Ev::Registered { name } = decode::<Ev>(event)?
        {
            *state = Some(name);
        }
        Ok(())
    }
}

fn start(path: &std::path::Path) -> Result<RuntimeHandle, StartError> {
    Runtime::builder()
        .path(path)
        .aggregate::<Customer>()
        .projection(|| Directory, ConsumerSettings::default())
        .process_manager(|| Greeter, ProcessSettings::default())
        .start()
}

fn name_of(runtime: &RuntimeHandle, id: &str) -> TestResult<Option<String>> {
    let state = runtime.state_at_blocking::<Customer>(id, u64::MAX)?.state;
    let name = state.name.ok_or("not registered")?;
    Ok(runtime.subject_keys().scope(|| name.get().cloned()))
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> TestResult<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file()
            && std::fs::read(&path)?
                .windows(needle.len())
                .any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    Ok(found)
}

#[test]
fn forget_shreds_a_subjects_data_everywhere_and_its_key_leaves_the_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let runtime = start(dir.path())?;
    for (id, name) in [("ann", "Ann Example-Person"), ("bob", "Bob Example-Person")] {
        let register = Cmd::Register {
            subject: format!("subject-{id}"),
            name: name.into(),
        };
        runtime.execute_blocking::<Customer>(id, register)?;
        runtime.execute_blocking::<Customer>(id, Cmd::Credit(10))?;
    }
    let last = runtime.execute_blocking::<Customer>("bob", Cmd::Credit(1))?;
    runtime.wait_for_blocking(
        "directory",
        last.position.ok_or("no position")?,
        Duration::from_secs(20),
    )?;
    let view = runtime.query("directory")?;
    let ann = view
        .get_as::<Personal<String>>(b"customer-ann")?
        .ok_or("no row")?;
    assert_eq!(
        runtime
            .subject_keys()
            .scope(|| ann.get().cloned())
            .as_deref(),
        Some("Ann Example-Person")
    );
    wait_until("the greeter met both", || {
        Ok(runtime
            .process_instance::<Option<Personal<String>>>("greeter", "customer-bob")?
            .is_some())
    })?;
    let Some(SubjectKey::Active(ann_key)) = runtime.store().subject_key("subject-ann")? else {
        return Err("ann has no key".into());
    };

    assert!(runtime.forget("subject-ann")?);
    // Forget itself takes the key's bytes out of every file of the store.
    assert_eq!(files_contain(dir.path(), &ann_key)?, Vec::<String>::new());

    // The aggregate still works; its name is gone, the balance is not.
    runtime.execute_blocking::<Customer>("ann", Cmd::Credit(5))?;
    let renamed = runtime.execute_blocking::<Customer>("ann", Cmd::Rename("Ann Again".into()));
    assert!(
        matches!(renamed, Err(CommandError::Encode(ref e)) if e.contains("forgotten")),
        "{renamed:?}"
    );
    assert_eq!(name_of(&runtime, "ann")?, None);
    assert_eq!(
        runtime
            .state_at_blocking::<Customer>("ann", u64::MAX)?
            .state
            .balance,
        15
    );
    assert_eq!(
        name_of(&runtime, "bob")?.as_deref(),
        Some("Bob Example-Person")
    );
    // The read model and the process manager's state read as shredded.
    let ann = view
        .get_as::<Personal<String>>(b"customer-ann")?
        .ok_or("no row")?;
    assert!(ann.is_shredded());
    let bob = view
        .get_as::<Personal<String>>(b"customer-bob")?
        .ok_or("no row")?;
    assert!(!bob.is_shredded());
    let greeted = runtime
        .process_instance::<Option<Personal<String>>>("greeter", "customer-ann")?
        .ok_or("no greeter instance")?;
    assert!(greeted.state.ok_or("no name kept")?.is_shredded());
    runtime.shutdown_blocking()?;
    drop((view, runtime));

    // Restarted: still shredded, and a new customer still works.
    let runtime = start(dir.path())?;
    assert_eq!(name_of(&runtime, "ann")?, None);
    assert_eq!(
        name_of(&runtime, "bob")?.as_deref(),
        Some("Bob Example-Person")
    );
    let carol = Cmd::Register {
        subject: "subject-carol".into(),
        name: "Carol".into(),
    };
    runtime.execute_blocking::<Customer>("carol", carol)?;
    runtime.shutdown_blocking()?;
    drop(runtime);

    // Neither any plaintext nor the forgotten key is in the files, after a
    // flush and a compaction.
    let store = RocksStore::open(dir.path(), StoreOptions::default())?;
    store.compact()?;
    assert!(store.verify()?.is_clean());
    store.close();
    drop(store);
    for needle in [&b"Ann Example-Person"[..], b"Bob Example-Person", &ann_key] {
        assert_eq!(files_contain(dir.path(), needle)?, Vec::<String>::new());
    }
    Ok(())
}
