//! What a process manager keeps in its read model (`$pm.{name}`), key by
//! key: instances under `i{id}`, stuck markers under `s{id}`, the outbox
//! under `o{id len}{id}{seq}`, timers under `t{due}{id len}{id}{name}`,
//! the partition count under `p`. A partitioned process manager has one
//! such model per partition, `$pm.{name}#{i}`.
//! `docs/format.md` gives the bytes.

use eventfold_domain::CommandId;
use eventfold_storage::payload::{self, PayloadError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::status::InstanceStatus;

/// An instance's status as stored: one byte, the variant's index (0
/// active, 1 stuck, 2 finished; bincode writes a variant index below 251
/// as that one byte, as the `u8` of earlier versions was). Any other byte
/// does not decode: the record is refused as corrupt, never read as some
/// status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RecordStatus {
    /// Running.
    #[default]
    Active,
    /// Parked as stuck.
    Stuck,
    /// Done; its record stays to refuse late inputs.
    Finished,
}

/// The read model holding a process manager's instances, outbox and timers;
/// also the name of its checkpoint.
pub(crate) fn model_of(name: &str) -> String {
    format!("$pm.{name}")
}

/// The partition count the model's process manager was written with
/// (u32 BE), put by each partition in its first commit.
pub(crate) const PARTITIONS_KEY: &[u8] = b"p";

pub(crate) fn instance_key(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(b'i');
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) fn stuck_key(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(b's');
    key.extend_from_slice(id.as_bytes());
    key
}

/// `o`, id length (u16 BE), id, then the sequence (u64 BE).
pub(crate) fn outbox_prefix(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + id.len() + 8);
    key.push(b'o');
    key.extend_from_slice(&(id.len() as u16).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) fn outbox_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = outbox_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `t`, due (µs, u64 BE), id length (u16 BE), id, then the timer's name.
pub(crate) fn timer_key(due: u64, id: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(11 + id.len() + name.len());
    key.push(b't');
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(&(id.len() as u16).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn split_id(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return None;
    }
    let (id, rest) = rest.split_at(len);
    Some((String::from_utf8(id.to_vec()).ok()?, rest))
}

pub(crate) fn parse_outbox_key(key: &[u8]) -> Option<(String, u64)> {
    let (id, rest) = split_id(key.strip_prefix(b"o")?)?;
    let seq: [u8; 8] = rest.try_into().ok()?;
    Some((id, u64::from_be_bytes(seq)))
}

pub(crate) fn parse_timer_key(key: &[u8]) -> Option<(u64, String, String)> {
    let (due, rest) = key.strip_prefix(b"t")?.split_first_chunk::<8>()?;
    let (id, name) = split_id(rest)?;
    Some((
        u64::from_be_bytes(*due),
        id,
        String::from_utf8(name.to_vec()).ok()?,
    ))
}

/// An instance as stored under `i{id}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub status: RecordStatus,
    pub state: Vec<u8>,
    pub next_seq: u64,
    pub timers: BTreeMap<String, u64>,
    pub stuck: Option<StuckRecord>,
    /// Positions of events held while stuck, in order.
    pub held: Vec<u64>,
}

impl InstanceRecord {
    /// Its status as the handle shows it.
    pub(crate) fn status(&self) -> InstanceStatus {
        match self.status {
            RecordStatus::Active => InstanceStatus::Active,
            RecordStatus::Stuck => InstanceStatus::Stuck,
            RecordStatus::Finished => InstanceStatus::Finished,
        }
    }
}

/// Why an instance is stuck; also stored under `s{id}` for listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StuckRecord {
    pub error: String,
    pub attempts: u32,
    pub since: u64,
    pub input: StuckInput,
}

/// The input of a step: what it consumes (cleaned up after it), and what a
/// stuck instance failed on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum StuckInput {
    Event(u64),
    Result {
        seq: u64,
        command_id: [u8; 16],
    },
    Timer {
        name: String,
        due: u64,
    },
    /// The `index`-th (from 0; never 0 here, that one is `Event`) of the
    /// events upcasting made of the stored event at `position`. Last, so
    /// that the variants before keep their stored indexes.
    EventPart {
        position: u64,
        index: u32,
    },
}

impl StuckInput {
    /// The input of the `index`-th event made of the stored event at
    /// `position`.
    pub(crate) fn event(position: u64, index: u32) -> Self {
        if index == 0 {
            Self::Event(position)
        } else {
            Self::EventPart { position, index }
        }
    }

    /// The position of an event input, with the index of the first event
    /// made of it that it stands for.
    pub(crate) fn event_position(&self) -> Option<(u64, u32)> {
        match self {
            Self::Event(position) => Some((*position, 0)),
            Self::EventPart { position, index } => Some((*position, *index)),
            Self::Result { .. } | Self::Timer { .. } => None,
        }
    }
}

impl std::fmt::Display for StuckInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StuckInput::Event(position) => write!(f, "event at position {position}"),
            StuckInput::EventPart { position, index } => write!(
                f,
                "event {index} (from 0) upcast from the event at position {position}"
            ),
            StuckInput::Result { command_id, .. } => write!(
                f,
                "result of command {}",
                CommandId::from_bytes(*command_id)
            ),
            StuckInput::Timer { name, due } => write!(f, "timer {name:?} due at {due} µs"),
        }
    }
}

/// A command in the outbox, stored under `o{id}{seq}`: the record, then
/// (since the records carried it) its [`Trace`], encoded after it so that
/// records written before read the same, without one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct OutboxRecord {
    pub command_id: [u8; 16],
    pub kind: String,
    pub aggregate_id: String,
    pub payload: Vec<u8>,
    #[serde(skip)]
    pub trace: Trace,
}

/// Where a process manager's command comes from: the correlation id of
/// the input that made it, and the id of that input (its causation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Trace {
    pub correlation: Option<[u8; 16]>,
    pub causation: Option<[u8; 16]>,
}

impl OutboxRecord {
    /// The stored bytes: the record, then its trace.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, PayloadError> {
        let mut bytes = payload::encode(self)?;
        bytes.extend(payload::encode(&self.trace)?);
        Ok(bytes)
    }

    /// Reads what [`OutboxRecord::encode`] wrote, or a record written
    /// before traces (nothing after it: no trace).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let (mut record, read): (Self, usize) = payload::decode_prefix(bytes)?;
        let rest = bytes.get(read..).unwrap_or_default();
        if !rest.is_empty() {
            record.trace = payload::decode(rest)?;
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_storage::payload::{self, PayloadError};

    /// The record as versions before the enum wrote it.
    #[derive(Serialize)]
    struct WrittenWithAByte {
        status: u8,
        state: Vec<u8>,
        next_seq: u64,
        timers: BTreeMap<String, u64>,
        stuck: Option<StuckRecord>,
        held: Vec<u64>,
    }

    fn written(status: u8) -> Result<Vec<u8>, PayloadError> {
        let record = WrittenWithAByte {
            status,
            state: vec![1, 2],
            next_seq: 3,
            timers: BTreeMap::from([("t".to_owned(), 9)]),
            stuck: None,
            held: vec![4],
        };
        payload::encode(&record)
    }

    #[test]
    fn stored_status_bytes_read_as_before_and_unknown_ones_are_refused() -> Result<(), PayloadError>
    {
        for (byte, status) in [
            (0, RecordStatus::Active),
            (1, RecordStatus::Stuck),
            (2, RecordStatus::Finished),
        ] {
            let record: InstanceRecord = payload::decode(&written(byte)?)?;
            assert_eq!(
                (record.status, record.next_seq, &record.held),
                (status, 3, &vec![4])
            );
            let again = payload::encode(&record)?;
            assert_eq!(again, written(byte)?, "the same bytes as before");
        }
        // Read as "finished" before: an instance silently ended.
        for byte in [3, 7, 250] {
            assert!(
                payload::decode::<InstanceRecord>(&written(byte)?).is_err(),
                "{byte}"
            );
        }
        Ok(())
    }

    /// The outbox record as versions before traces wrote it.
    #[derive(Serialize)]
    struct OutboxWithoutTrace {
        command_id: [u8; 16],
        kind: String,
        aggregate_id: String,
        payload: Vec<u8>,
    }

    #[test]
    fn outbox_records_carry_a_trace_and_old_ones_read_without() -> Result<(), PayloadError> {
        let old = payload::encode(&OutboxWithoutTrace {
            command_id: [7; 16],
            kind: "account".into(),
            aggregate_id: "a1".into(),
            payload: vec![1, 2, 3],
        })?;
        let read = OutboxRecord::decode(&old)?;
        assert_eq!(
            (read.command_id, read.aggregate_id.as_str(), read.trace),
            ([7; 16], "a1", Trace::default())
        );
        let traced = OutboxRecord {
            trace: Trace {
                correlation: Some([1; 16]),
                causation: Some([2; 16]),
            },
            ..read
        };
        let bytes = traced.encode()?;
        assert!(bytes.starts_with(&old), "the old record, then the trace");
        assert_eq!(OutboxRecord::decode(&bytes)?.trace, traced.trace);
        // Anything after the trace is refused, as a torn trace is.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(OutboxRecord::decode(&longer).is_err());
        assert!(OutboxRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        Ok(())
    }
}
