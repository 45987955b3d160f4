//! An aggregate's state as it was: at a version of its stream, or at a
//! moment. Read from the store on the calling thread (or the blocking
//! pool), through the upcasters, beside the live actor and without it.

use crate::command::actor::{apply_loaded, start_of};
use crate::error::{DeleteError, LoadError};
use crate::evolution::Upcasters;
use eventfold_domain::{Aggregate, StreamId, Timestamp};
use eventfold_storage::{Cached, Direction, EventStore, Snapshot, payload};
use std::sync::Arc;

/// Events read per store call while replaying a past state.
pub(crate) const HISTORY_CHUNK_EVENTS: usize = 4096;

/// Up to where a past state is replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Until {
    /// Every event up to and including this version.
    Version(u64),
    /// Every event recorded at or before this moment.
    Time(Timestamp),
}

/// An aggregate's state at a point of its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateAt<A> {
    /// The state, folded from the events up to the point asked for.
    pub state: A,
    /// The version of the last event folded in (0: none; the aggregate did
    /// not exist yet). Asked for a version past the stream's end, it is the
    /// stream's version.
    pub version: u64,
}

/// Before a truncation of `stream` before version `before`: makes sure a
/// snapshot of the aggregate's current snapshot version holds the state
/// at `before - 1` or later, replaying it (through the upcasters) when the
/// stored one is older, so that the aggregate still loads once the events
/// are gone. Blocking.
pub(crate) fn snapshot_before_truncation<A: Aggregate>(
    store: &dyn EventStore,
    upcasters: &Upcasters,
    stream: &StreamId,
    before: u64,
) -> Result<(), DeleteError> {
    let keep = before.saturating_sub(1);
    if keep == 0 {
        return Ok(());
    }
    let current = store
        .load_snapshot(stream)
        .map_err(|e| DeleteError::Replay(e.into()))?;
    if current
        .is_some_and(|s| s.snapshot_version == A::SNAPSHOT_VERSION && s.stream_version >= keep)
    {
        return Ok(());
    }
    let past = state_at::<A>(store, upcasters, stream, Until::Version(keep))
        .map_err(DeleteError::Replay)?;
    if past.version == 0 {
        return Ok(());
    }
    let state = payload::encode(&past.state).map_err(|e| DeleteError::Encode(Arc::new(e)))?;
    let snapshot = Snapshot {
        snapshot_version: A::SNAPSHOT_VERSION,
        stream_version: past.version,
        state,
    };
    store
        .save_snapshot(stream, &snapshot)
        .map_err(DeleteError::Snapshot)
}

/// The state of `stream` at `until`. Blocking. A snapshot is used when it
/// is of the aggregate's snapshot version and no later than a version
/// asked for; a moment is always replayed from the first event (snapshots
/// do not record when they were taken).
pub(crate) fn state_at<A: Aggregate>(
    store: &dyn EventStore,
    upcasters: &Upcasters,
    stream: &StreamId,
    until: Until,
) -> Result<StateAt<A>, LoadError> {
    let (mut state, mut version) = match until {
        Until::Version(target) => match store.load_snapshot(stream)? {
            Some(snapshot)
                if snapshot.snapshot_version == A::SNAPSHOT_VERSION
                    && snapshot.stream_version <= target =>
            {
                match payload::decode::<A>(&snapshot.state) {
                    Ok(state) => (state, snapshot.stream_version),
                    Err(_) => (A::default(), 0),
                }
            }
            _ => (A::default(), 0),
        },
        Until::Time(_) => (A::default(), 0),
    };
    let mut first_chunk = true;
    while let Some(from) = version.checked_add(1) {
        let mut events =
            store.read_stream(stream, from, Direction::Forward, HISTORY_CHUNK_EVENTS)?;
        if std::mem::take(&mut first_chunk) {
            let first = events.first().map(|e| e.version);
            if let Cached::Ready(start) = start_of(store, stream, version, first, false)? {
                if start.fresh {
                    state = A::default();
                }
                version = start.base;
            }
            // A version before the stream's last soft delete is gone.
            if let Until::Version(target) = until
                && target < version
                && target > 0
            {
                return Err(LoadError::EventsRemoved {
                    stream: stream.to_string(),
                    needed: target,
                    first_version: version.saturating_add(1),
                });
            }
        }
        let read = events.len();
        // Versions and times never decrease along a stream: what is kept
        // is a prefix.
        let keep = events.partition_point(|e| match until {
            Until::Version(target) => e.version <= target,
            Until::Time(moment) => e.recorded_at <= moment,
        });
        events.truncate(keep);
        let Some(last) = events.last().map(|e| e.version) else {
            break;
        };
        apply_loaded(&mut state, upcasters, events)?;
        version = last;
        if keep < read || read < HISTORY_CHUNK_EVENTS {
            break;
        }
    }
    Ok(StateAt { state, version })
}
