//! What an operator reads of a store without running its runtime: where
//! each projection and process manager stands, what is parked, which
//! process instances are stuck. It reads what the runtime keeps under its
//! reserved names (`docs/format.md`), from a store opened any way; the
//! inspector opens it beside the service that holds it
//! ([`RocksStore::open_secondary`]).
//!
//! ```
//! use eventfold_runtime::inspect;
//! use eventfold_runtime::storage::{RocksStore, StoreOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let store = RocksStore::open(dir.path(), StoreOptions::default())?;
//! assert!(inspect::projections(&store)?.is_empty());
//! assert!(inspect::processes(&store)?.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::ParkedEvent;
use crate::process::StuckInstance;
use crate::process::admin::stuck_in;
use crate::process::records::model_of;
use crate::read::parked::list_parked;
use crate::read::registry::active_version;
use eventfold_domain::Timestamp;
use eventfold_storage::{Corruption, EventStore, ReadError, RocksStore};

/// Why the store could not be inspected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The store could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A record the runtime keeps does not decode; names the key.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// Parked events could not be listed.
    #[error(transparent)]
    Projection(#[from] crate::ProjectionError),
    /// Stuck instances could not be listed.
    #[error(transparent)]
    Process(#[from] crate::ProcessError),
    /// No projection or process manager of this name has a checkpoint.
    #[error("nothing named {0} has a checkpoint in this store")]
    Unknown(String),
}

/// Where one consumer of a projection (or event handler) stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSummary {
    /// The projection's (or handler's) name.
    pub name: String,
    /// The read-model version this consumer fills.
    pub version: u32,
    /// The consumer: `name@vN`, or `name@vN#i` for partition `i`.
    pub consumer: String,
    /// The last position whose effects are committed.
    pub checkpoint: u64,
    /// The store's head when read.
    pub head: u64,
    /// `head - checkpoint`.
    pub lag: u64,
    /// Its place among the projection's versions.
    pub role: ConsumerRole,
    /// Events parked in its dead-letter keyspace.
    pub parked: u64,
}

/// A consumer's place among its projection's versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerRole {
    /// It fills the version queries read.
    Active,
    /// A rebuild under way: a newer version than the active one.
    Rebuilding,
    /// An older version, left from before a rebuild switched.
    Retired,
}

impl ConsumerRole {
    /// A word for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Rebuilding => "rebuilding",
            Self::Retired => "retired",
        }
    }
}

/// Where one process manager stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSummary {
    /// Its name.
    pub name: String,
    /// The last position whose steps are committed.
    pub checkpoint: u64,
    /// The store's head when read.
    pub head: u64,
    /// `head - checkpoint`.
    pub lag: u64,
    /// Instances kept (active, stuck, and finished ones kept to refuse
    /// late inputs).
    pub instances: u64,
    /// Instances parked as stuck.
    pub stuck: u64,
    /// Commands in the outbox, not yet answered.
    pub outbox: u64,
    /// Timers set.
    pub timers: u64,
    /// Timers whose due time has passed (the running host fires them).
    pub timers_due: u64,
}

/// Splits a consumer's checkpoint name `name@vN` or `name@vN#i`.
fn parse_consumer(checkpoint: &str) -> Option<(&str, u32)> {
    let (name, rest) = checkpoint.rsplit_once("@v")?;
    let version = rest.split_once('#').map_or(rest, |(v, _)| v);
    Some((name, version.parse().ok()?))
}

/// Every consumer of every projection and event handler with a checkpoint,
/// by name, then version, then partition.
pub fn projections(store: &RocksStore) -> Result<Vec<ConsumerSummary>, InspectError> {
    let head = store.head();
    let mut out = Vec::new();
    for (checkpoint_name, checkpoint) in store.checkpoints()? {
        if checkpoint_name.starts_with('$') {
            continue;
        }
        let Some((name, version)) = parse_consumer(&checkpoint_name) else {
            continue;
        };
        let active = active_version(store, name)?;
        let role = match version.cmp(&active) {
            std::cmp::Ordering::Equal => ConsumerRole::Active,
            std::cmp::Ordering::Greater => ConsumerRole::Rebuilding,
            std::cmp::Ordering::Less => ConsumerRole::Retired,
        };
        let parked = store.read_model_count(&format!("$parked.{checkpoint_name}"), b"", None)?;
        out.push(ConsumerSummary {
            name: name.to_owned(),
            version,
            consumer: checkpoint_name.clone(),
            checkpoint,
            head,
            lag: head.saturating_sub(checkpoint),
            role,
            parked,
        });
    }
    out.sort_by(|a, b| (&a.name, a.version, &a.consumer).cmp(&(&b.name, b.version, &b.consumer)));
    Ok(out)
}

/// The events parked by the active consumers of projection `name`, by
/// position.
pub fn parked(store: &RocksStore, name: &str) -> Result<Vec<ParkedEvent>, InspectError> {
    let consumers: Vec<_> = projections(store)?
        .into_iter()
        .filter(|c| c.name == name && c.role == ConsumerRole::Active)
        .collect();
    if consumers.is_empty() {
        return Err(InspectError::Unknown(name.to_owned()));
    }
    let mut all = Vec::new();
    for consumer in consumers {
        all.extend(list_parked(
            store,
            &format!("$parked.{}", consumer.consumer),
        )?);
    }
    all.sort_by_key(|p| p.position);
    Ok(all)
}

/// Every process manager with a checkpoint, by name; timers are counted
/// due against `now`.
pub fn processes(store: &RocksStore) -> Result<Vec<ProcessSummary>, InspectError> {
    processes_at(store, Timestamp::now())
}

/// [`processes`] with timers counted due against `now`.
pub fn processes_at(
    store: &RocksStore,
    now: Timestamp,
) -> Result<Vec<ProcessSummary>, InspectError> {
    let head = store.head();
    let mut out = Vec::new();
    // A partitioned process manager is listed partition by partition
    // (`name#i`), each with its own checkpoint.
    for (checkpoint_name, checkpoint) in store.checkpoints()? {
        let Some(name) = checkpoint_name.strip_prefix("$pm.") else {
            continue;
        };
        let model = model_of(name);
        let mut due_before = vec![b't'];
        due_before.extend_from_slice(&now.as_micros().saturating_add(1).to_be_bytes());
        out.push(ProcessSummary {
            name: name.to_owned(),
            checkpoint,
            head,
            lag: head.saturating_sub(checkpoint),
            instances: store.read_model_count(&model, b"i", None)?,
            stuck: store.read_model_count(&model, b"s", None)?,
            outbox: store.read_model_count(&model, b"o", None)?,
            timers: store.read_model_count(&model, b"t", None)?,
            timers_due: store.read_model_count(&model, b"t", Some(&due_before))?,
        });
    }
    Ok(out)
}

/// The stuck instances of process manager `name` (of all its partitions,
/// or of one named `name#i`), with their last error.
pub fn stuck(store: &RocksStore, name: &str) -> Result<Vec<StuckInstance>, InspectError> {
    let mut models = Vec::new();
    if store.checkpoint(&model_of(name))?.is_some() {
        models.push(model_of(name));
    } else {
        // A partitioned one: `name#0`, `name#1`, … as far as they go.
        for index in 0..crate::process::PROCESS_PARTITIONS_MAX {
            let model = model_of(&format!("{name}#{index}"));
            if store.checkpoint(&model)?.is_none() {
                break;
            }
            models.push(model);
        }
    }
    if models.is_empty() {
        return Err(InspectError::Unknown(name.to_owned()));
    }
    let mut stuck = Vec::new();
    for model in models {
        stuck.extend(stuck_in(&model, store)?);
    }
    Ok(stuck)
}

/// The read-model name a projection's queries read now (`{name}@v{N}`, its
/// active version), for tools that read its entries from the store.
pub fn read_model_name(store: &RocksStore, name: &str) -> Result<String, InspectError> {
    let version = crate::read::registry::active_version(store, name)?;
    Ok(crate::read::registry::model_name(name, version))
}

#[cfg(test)]
mod tests {
    use super::parse_consumer;

    #[test]
    fn consumer_names_split_into_name_and_version() {
        assert_eq!(parse_consumer("balances@v1"), Some(("balances", 1)));
        assert_eq!(parse_consumer("balances@v12#3"), Some(("balances", 12)));
        assert_eq!(parse_consumer("a@vb@v2"), Some(("a@vb", 2)));
        assert_eq!(parse_consumer("balances"), None);
        assert_eq!(parse_consumer("balances@vx"), None);
    }
}
