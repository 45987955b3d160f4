//! Optimistic concurrency: what an append expects of its stream.

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
    /// (0 when the stream does not exist).
    pub fn check(self, actual: u64) -> Result<(), VersionMismatch> {
        let ok = match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(version) => actual == version,
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

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
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
}
