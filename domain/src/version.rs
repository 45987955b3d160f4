//! Optimistic concurrency: what an append expects of its stream.

use crate::ids::EventId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What an append expects the stream's current version to be.
///
/// Versions count events: a stream's first event has version 1, and the
/// version of a stream is the version of its last event. A stream that has no
/// events has version 0 and does not exist. The semantics follow EventStoreDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check: append whatever the stream's version.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must exist (version 1 or more).
    StreamExists,
    /// The stream's version must be exactly this. `Exact(0)` is the same as
    /// [`ExpectedVersion::NoStream`].
    Exact(u64),
    /// The stream's version must be `version` *and* its last event must be
    /// `event_id`. A writer that pipelines appends chains each to the last
    /// event of the one before: if that one failed, a foreign event in its
    /// place cannot make the version match by coincidence.
    After {
        /// The stream's version.
        version: u64,
        /// The id of the stream's last event (the event at `version`).
        event_id: EventId,
    },
}

/// The stream's version did not match the expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionMismatch {
    /// What the append expected.
    pub expected: ExpectedVersion,
    /// The stream's version when the append was checked (0: no stream).
    pub actual: u64,
}

impl ExpectedVersion {
    /// Checks the expectation against the stream's `actual` version
    /// (0 when the stream does not exist). For [`ExpectedVersion::After`] this
    /// checks the version only; see [`ExpectedVersion::check_with_last`].
    pub fn check(self, actual: u64) -> Result<(), VersionMismatch> {
        let ok = match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(version) => actual == version,
            // The store also checks the event id.
            ExpectedVersion::After { version, .. } => actual == version,
        };
        if ok {
            Ok(())
        } else {
            Err(VersionMismatch {
                expected: self,
                actual,
            })
        }
    }
}

impl ExpectedVersion {
    /// Checks the expectation against the stream's `actual` version and the
    /// id of its last event (`None` when the stream does not exist).
    pub fn check_with_last(
        self,
        actual: u64,
        last_event: Option<EventId>,
    ) -> Result<(), VersionMismatch> {
        self.check(actual)?;
        match self {
            ExpectedVersion::After { event_id, .. } if last_event != Some(event_id) => {
                Err(VersionMismatch {
                    expected: self,
                    actual,
                })
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
            ExpectedVersion::After { version, event_id } => {
                write!(f, "version {version} ending with event {event_id}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_expectation_against_missing_and_existing_streams() {
        use ExpectedVersion::*;
        assert!(Any.check(0).is_ok());
        assert!(Any.check(5).is_ok());
        assert!(NoStream.check(0).is_ok());
        assert_eq!(
            NoStream.check(2),
            Err(VersionMismatch {
                expected: NoStream,
                actual: 2
            })
        );
        assert!(StreamExists.check(0).is_err());
        assert!(StreamExists.check(1).is_ok());
        assert!(Exact(0).check(0).is_ok());
        assert!(Exact(3).check(3).is_ok());
        assert!(Exact(3).check(4).is_err());
        assert!(Exact(3).check(2).is_err());
    }

    #[test]
    fn after_checks_the_last_event_too() {
        let id = EventId::random();
        let after = ExpectedVersion::After {
            version: 2,
            event_id: id,
        };
        assert!(after.check_with_last(2, Some(id)).is_ok());
        assert!(after.check_with_last(2, Some(EventId::random())).is_err());
        assert!(after.check_with_last(2, None).is_err());
        assert!(after.check_with_last(3, Some(id)).is_err());
    }
}
