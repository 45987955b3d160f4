//! What a replica of another log writes: the entries of a log whose
//! positions, versions and times were decided elsewhere (the cluster's
//! JetStream stream), copied in their order into a local store so that
//! every read, index and subscription of that store works on them.
//!
//! A replica's positions are the source log's: every position of the
//! source is written, an entry that is no event (a fencing marker) as a
//! position that holds none, so that a position read here names the same
//! entry on every node.

use crate::api::ReadModelBatch;
use eventfold_domain::{CommandId, NewEvent, StreamId, Timestamp};

/// One entry of the source log, as a replica writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replicated {
    /// One append of the source log: events of one stream at consecutive
    /// positions and versions.
    Append(ReplicatedAppend),
    /// A position of the source log that holds no event: written as a
    /// position readers step over, so positions stay those of the source.
    Skip {
        /// The position.
        position: u64,
    },
    /// Positions of the source log that hold read-model changes written
    /// through it (a cluster's process-manager state): the positions are
    /// written as positions readers step over, and the changes (with their
    /// checkpoint) in the same write, so that a replica holds a position
    /// only with what was written at it.
    ReadModel {
        /// The first position.
        first_position: u64,
        /// The last position (the changes may span several).
        last_position: u64,
        /// The changes.
        batch: ReadModelBatch,
    },
}

impl Replicated {
    /// The first position the entry takes.
    pub fn first_position(&self) -> u64 {
        match self {
            Replicated::Append(append) => append.first_position,
            Replicated::Skip { position } => *position,
            Replicated::ReadModel { first_position, .. } => *first_position,
        }
    }

    /// The last position the entry takes.
    pub fn last_position(&self) -> u64 {
        match self {
            Replicated::Append(append) => append
                .first_position
                .saturating_add(append.events.len() as u64)
                .saturating_sub(1),
            Replicated::Skip { position } => *position,
            Replicated::ReadModel { last_position, .. } => *last_position,
        }
    }
}

/// One append of the source log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatedAppend {
    /// The position of its first event; the others follow without a gap.
    pub first_position: u64,
    /// The stream.
    pub stream: StreamId,
    /// The version of its first event: the stream's version here plus one,
    /// or the replica refuses it as a fork
    /// ([`AppendError::HistoryForked`](crate::AppendError::HistoryForked)).
    pub first_version: u64,
    /// When the source log recorded it; the replica keeps times
    /// non-decreasing along its log, as the source's own store does.
    pub recorded_at: Timestamp,
    /// The events, at least one.
    pub events: Vec<NewEvent>,
    /// The command id the append carried: recorded for idempotency checks
    /// unless the id was already recorded (the first outcome stays).
    pub command_id: Option<CommandId>,
}
