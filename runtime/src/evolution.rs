//! Evolving events: upcasters that turn stored events of old schemas into
//! the current ones, on every path that reads events.
//!
//! Payloads are bincode 2, which is not self-describing: a stored payload
//! decodes only as the shape it was written with. When an event's shape
//! changes, keep the old type definition, bump the new one's
//! [`DomainEvent::schema_version`], and register a step from the old to the
//! new:
//!
//! ```
//! use eventfold_runtime::domain::DomainEvent;
//! use eventfold_runtime::evolution::Upcasters;
//! use serde::{Deserialize, Serialize};
//!
//! /// The shape version 1 of the code wrote.
//! #[derive(Deserialize)]
//! enum EventV1 { Deposited { amount: u64 } }
//!
//! /// The current shape: a deposit now says where it came from.
//! #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
//! enum Event { Deposited { amount: u64, source: String } }
//! impl DomainEvent for Event {
//!     fn event_type(&self) -> &'static str { "Deposited" }
//!     fn schema_version(&self) -> u16 { 2 }
//! }
//!
//! let upcasters = Upcasters::new().step("Deposited", 1, |old: EventV1| {
//!     let EventV1::Deposited { amount } = old;
//!     vec![Event::Deposited { amount, source: "unknown".into() }]
//! });
//! assert_eq!(upcasters.len(), 1);
//! ```
//!
//! A step maps one stored event to zero, one or several events of the next
//! shape (which may carry another type name: a rename); steps chain while a
//! step is registered for the output's type and version. Every output keeps
//! the stored event's stream, version, position, time and metadata: events
//! made from one stored event share its position, and a subscriber handles
//! them as one unit (parked, retried and checkpointed together).
//!
//! **Architecture Invariant:** user code sees only upcast events. Aggregate
//! loads, projections, event handlers, process managers, parked and stuck
//! events taken again, and temporal reads all pass through
//! [`Upcasters::upcast_all`]; [`decode`] then refuses an event whose schema
//! is newer than the code's.

use eventfold_domain::{DomainEvent, RecordedEvent};
use eventfold_storage::Filter;
use eventfold_storage::payload::{self, PayloadError};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Most steps a chain may take from one stored event (a longer chain is
/// taken to be a cycle).
pub const UPCAST_STEPS_MAX: usize = 32;
/// Most events upcasting may make of one stored event.
pub const UPCAST_EVENTS_MAX: usize = 256;

/// Which stored event an [`EventError`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventAt {
    /// Its stream.
    pub stream: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its position in the global log.
    pub position: u64,
    /// Its type name (after the upcasting steps taken so far).
    pub event_type: String,
    /// Its schema version (after the upcasting steps taken so far).
    pub schema_version: u16,
}

impl EventAt {
    /// Where `event` is and what it says it is.
    pub fn of(event: &RecordedEvent) -> Self {
        Self {
            stream: event.stream_id.to_string(),
            version: event.version,
            position: event.position,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
        }
    }
}

impl fmt::Display for EventAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} v{} at version {} of {} (position {})",
            self.event_type, self.schema_version, self.version, self.stream, self.position
        )
    }
}

/// Why a stored event could not be turned into the current event type.
/// Nothing is written and nothing is skipped: the read that met it fails.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The payload is not an encoding of the step's input type.
    #[error("{at}: the upcaster's input type does not decode it: {source}")]
    StepInput {
        /// The event.
        at: EventAt,
        /// The decoder's error.
        #[source]
        source: Arc<PayloadError>,
    },
    /// A step's output did not encode.
    #[error("{at}: the upcaster's output does not encode: {source}")]
    StepOutput {
        /// The event.
        at: EventAt,
        /// The encoder's error.
        #[source]
        source: Arc<PayloadError>,
    },
    /// A step panicked.
    #[error("{at}: the upcaster panicked: {message}")]
    StepPanicked {
        /// The event.
        at: EventAt,
        /// The panic's message.
        message: String,
    },
    /// The chain took more than [`UPCAST_STEPS_MAX`] steps: a cycle.
    #[error("{at}: more than {limit} upcasting steps (do two steps lead into each other?)")]
    ChainTooLong {
        /// The event.
        at: EventAt,
        /// [`UPCAST_STEPS_MAX`].
        limit: usize,
    },
    /// Upcasting made more than [`UPCAST_EVENTS_MAX`] events of one.
    #[error("{at}: upcasting made more than {limit} events of it")]
    TooManyEvents {
        /// The event.
        at: EventAt,
        /// [`UPCAST_EVENTS_MAX`].
        limit: usize,
    },
    /// The event's schema is newer than the running code's event type: it
    /// was written by a newer release.
    #[error("{at}: written with schema version {}, newer than this code's {known}", at.schema_version)]
    NewerThanCode {
        /// The event.
        at: EventAt,
        /// The schema version the running code has for its type.
        known: u16,
    },
    /// After every step, the payload does not decode as the current type:
    /// an unknown event, or a changed shape without an upcaster.
    #[error(
        "{at}: does not decode as the current event type (a changed shape needs an upcaster): {source}"
    )]
    Undecodable {
        /// The event.
        at: EventAt,
        /// The decoder's error.
        #[source]
        source: Arc<PayloadError>,
    },
}

/// Two errors are equal when they are of one kind, about one event, and
/// say the same (the decoder's errors compare by their messages).
impl PartialEq for EventError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.at() == other.at()
            && self.to_string() == other.to_string()
    }
}

impl Eq for EventError {}

impl EventError {
    /// The event the error is about.
    pub fn at(&self) -> &EventAt {
        match self {
            Self::StepInput { at, .. }
            | Self::StepOutput { at, .. }
            | Self::StepPanicked { at, .. }
            | Self::ChainTooLong { at, .. }
            | Self::TooManyEvents { at, .. }
            | Self::NewerThanCode { at, .. }
            | Self::Undecodable { at, .. } => at,
        }
    }
}

/// Decodes an (upcast) event as the current type `E`: an event whose
/// stored schema version is newer than the decoded value's is refused.
///
/// ```
/// use eventfold_runtime::domain::{DomainEvent, Metadata, RecordedEvent, StreamId, Timestamp};
/// use eventfold_runtime::evolution::{EventError, decode};
/// use eventfold_runtime::storage::payload;
///
/// #[derive(serde::Serialize, serde::Deserialize, Clone)]
/// struct Opened { owner: String }
/// impl DomainEvent for Opened { fn event_type(&self) -> &'static str { "Opened" } }
///
/// let mut event = RecordedEvent {
///     stream_id: StreamId::new("account-1")?, version: 1, position: 1,
///     recorded_at: Timestamp::from_micros(0), event_type: "Opened".into(),
///     schema_version: 1, payload: payload::encode(&Opened { owner: "ann".into() })?,
///     metadata: Metadata::new(),
/// };
/// assert_eq!(decode::<Opened>(&event)?.owner, "ann");
/// event.schema_version = 3; // written by a newer release
/// assert!(matches!(decode::<Opened>(&event), Err(EventError::NewerThanCode { known: 1, .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode<E: DomainEvent>(event: &RecordedEvent) -> Result<E, EventError> {
    let decoded: E = payload::decode(&event.payload).map_err(|e| EventError::Undecodable {
        at: EventAt::of(event),
        source: Arc::new(e),
    })?;
    let known = decoded.schema_version();
    if event.schema_version > known {
        return Err(EventError::NewerThanCode {
            at: EventAt::of(event),
            known,
        });
    }
    Ok(decoded)
}

/// One step's output: the next shape's type name, version and payload.
struct Output {
    event_type: &'static str,
    schema_version: u16,
    payload: Vec<u8>,
}

enum StepFailure {
    Input(PayloadError),
    Output(PayloadError),
}

type StepFn = dyn Fn(&[u8]) -> Result<Vec<Output>, StepFailure> + Send + Sync;

/// The upcasting steps of a runtime, keyed by the stored type name and
/// schema version they take. Cheap to clone.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<String, Vec<(u16, Arc<StepFn>)>>,
    /// Steps registered twice for one type and version (the later ones are
    /// not kept); [`Upcasters::conflicts`] reports them, and a runtime
    /// refuses to start with any.
    conflicts: Vec<(String, u16)>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<(&str, u16)> = self
            .steps
            .iter()
            .flat_map(|(t, v)| v.iter().map(move |(version, _)| (t.as_str(), *version)))
            .collect();
        keys.sort_unstable();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// No steps: every event is read as stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the step for stored events of type `event_type` at schema
    /// version `from_version`: their payload is decoded as `Old`, `step`
    /// maps it to zero or more `New` values, and each is stored back under
    /// its own [`DomainEvent::event_type`] and
    /// [`DomainEvent::schema_version`] (where further steps may pick it up).
    pub fn step<Old, New, F>(mut self, event_type: &str, from_version: u16, step: F) -> Self
    where
        Old: DeserializeOwned,
        New: DomainEvent,
        F: Fn(Old) -> Vec<New> + Send + Sync + 'static,
    {
        let run = move |bytes: &[u8]| -> Result<Vec<Output>, StepFailure> {
            let old: Old = payload::decode(bytes).map_err(StepFailure::Input)?;
            step(old)
                .into_iter()
                .map(|new| {
                    Ok(Output {
                        event_type: new.event_type(),
                        schema_version: new.schema_version(),
                        payload: payload::encode(&new).map_err(StepFailure::Output)?,
                    })
                })
                .collect()
        };
        let versions = self.steps.entry(event_type.to_owned()).or_default();
        if versions.iter().any(|(v, _)| *v == from_version) {
            self.conflicts.push((event_type.to_owned(), from_version));
        } else {
            versions.push((from_version, Arc::new(run)));
        }
        self
    }

    /// Every step of `other` added to these.
    pub fn merge(mut self, other: Upcasters) -> Self {
        self.conflicts.extend(other.conflicts);
        for (event_type, steps) in other.steps {
            let versions = self.steps.entry(event_type.clone()).or_default();
            for (version, step) in steps {
                if versions.iter().any(|(v, _)| *v == version) {
                    self.conflicts.push((event_type.clone(), version));
                } else {
                    versions.push((version, step));
                }
            }
        }
        self
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.steps.values().map(Vec::len).sum()
    }

    /// True when there is no step.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Type names and versions registered more than once.
    pub fn conflicts(&self) -> &[(String, u16)] {
        &self.conflicts
    }

    fn step_for(&self, event_type: &str, version: u16) -> Option<&Arc<StepFn>> {
        self.steps
            .get(event_type)?
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, step)| step)
    }

    /// Whether a step takes `event` as it is stored.
    pub fn applies_to(&self, event: &RecordedEvent) -> bool {
        !self.is_empty()
            && self
                .step_for(&event.event_type, event.schema_version)
                .is_some()
    }

    /// `filter` widened so that a read by the store, which filters on the
    /// stored type names, also returns the events steps turn into the
    /// types it asks for: every type a step takes is added. Apply the
    /// original filter again after upcasting.
    pub fn widen(&self, filter: &Filter) -> Filter {
        let mut widened = filter.clone();
        if !filter.event_types.is_empty() {
            for event_type in self.steps.keys() {
                if !widened.event_types.contains(event_type) {
                    widened.event_types.push(event_type.clone());
                }
            }
        }
        widened
    }

    /// `events` in their current shapes, in order (an event a step turns
    /// into several is followed by its siblings; one turned into none is
    /// gone). Without a step that applies, the same vector comes back.
    pub fn upcast_all(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>, EventError> {
        if !events.iter().any(|e| self.applies_to(e)) {
            return Ok(events);
        }
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            self.upcast_into(event, &mut out)?;
        }
        Ok(out)
    }

    /// One stored event in its current shapes, appended to `out`.
    pub fn upcast_into(
        &self,
        event: RecordedEvent,
        out: &mut Vec<RecordedEvent>,
    ) -> Result<(), EventError> {
        if !self.applies_to(&event) {
            out.push(event);
            return Ok(());
        }
        let start = out.len();
        // Depth-first, in order: (event, steps taken to reach it).
        let mut pending = vec![(event, 0usize)];
        while let Some((event, depth)) = pending.pop() {
            let Some(step) = self.step_for(&event.event_type, event.schema_version) else {
                if out.len() - start >= UPCAST_EVENTS_MAX {
                    return Err(EventError::TooManyEvents {
                        at: EventAt::of(&event),
                        limit: UPCAST_EVENTS_MAX,
                    });
                }
                out.push(event);
                continue;
            };
            if depth >= UPCAST_STEPS_MAX {
                return Err(EventError::ChainTooLong {
                    at: EventAt::of(&event),
                    limit: UPCAST_STEPS_MAX,
                });
            }
            let outputs = match catch_unwind(AssertUnwindSafe(|| step(&event.payload))) {
                Ok(Ok(outputs)) => outputs,
                Ok(Err(StepFailure::Input(e))) => {
                    return Err(EventError::StepInput {
                        at: EventAt::of(&event),
                        source: Arc::new(e),
                    });
                }
                Ok(Err(StepFailure::Output(e))) => {
                    return Err(EventError::StepOutput {
                        at: EventAt::of(&event),
                        source: Arc::new(e),
                    });
                }
                Err(panic) => {
                    return Err(EventError::StepPanicked {
                        at: EventAt::of(&event),
                        message: crate::panics::panic_message(panic),
                    });
                }
            };
            if outputs.len() > UPCAST_EVENTS_MAX {
                return Err(EventError::TooManyEvents {
                    at: EventAt::of(&event),
                    limit: UPCAST_EVENTS_MAX,
                });
            }
            // Pushed in reverse so that they pop in order.
            for output in outputs.into_iter().rev() {
                let next = RecordedEvent {
                    stream_id: event.stream_id.clone(),
                    version: event.version,
                    position: event.position,
                    recorded_at: event.recorded_at,
                    event_type: output.event_type.to_owned(),
                    schema_version: output.schema_version,
                    payload: output.payload,
                    metadata: event.metadata.clone(),
                };
                pending.push((next, depth + 1));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
