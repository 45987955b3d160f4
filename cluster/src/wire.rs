//! The cluster's log as JetStream holds it, byte for byte (see
//! `docs/format.md`, "The cluster's log"): the subjects, the headers each
//! message carries, and the payload of an event message, which is the
//! store's own record encoding (checksummed) at a placeholder position.

use async_nats::HeaderMap;
use eventfold_runtime::domain::{CommandId, NewEvent, StreamId, Timestamp};
use eventfold_runtime::storage::{
    ReadModelBatch, ReadModelOp, Replicated, ReplicatedAppend, decoders,
};
use serde::{Deserialize, Serialize};

/// The header naming the claim's token an event was written under.
pub const HEADER_TOKEN: &str = "Ef-Token";
/// The header `i/n`: the event's index in its append, and the append's
/// event count.
pub const HEADER_APPEND: &str = "Ef-Append";
/// The header holding the append's command id.
pub const HEADER_COMMAND: &str = "Ef-Command";
/// The header naming the node that wrote a claim marker.
pub const HEADER_NODE: &str = "Ef-Node";

/// The subjects of one cluster's log.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (a NATS token: letters, digits, `-`, `_`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Every subject of the log (the stream's subject filter).
    pub fn all(&self) -> Vec<String> {
        vec![
            format!("{}.e.>", self.prefix),
            format!("{}.fence.*", self.prefix),
            format!("{}.rm.*", self.prefix),
        ]
    }

    /// The subject of `stream`'s events, in `partition`: the stream id in
    /// hex, since ids may hold characters subjects cannot (`.`, `*`, `>`).
    pub fn events(&self, partition: u32, stream: &StreamId) -> String {
        let mut subject = format!("{}.e.{partition}.", self.prefix);
        for byte in stream.as_str().as_bytes() {
            subject.push_str(&format!("{byte:02x}"));
        }
        subject
    }

    /// The subject of `partition`'s claim markers: every event of the
    /// partition is accepted only while the last marker on it is the one
    /// its writer claimed with.
    pub fn fence(&self, partition: u32) -> String {
        format!("{}.fence.{partition}", self.prefix)
    }

    /// The subject commands for `partition` are sent to; its owner alone
    /// listens.
    pub fn commands(&self, partition: u32) -> String {
        format!("{}.cmd.{partition}", self.prefix)
    }

    /// The subject of the read-model changes of the single-runner whose
    /// claims are fenced on `fence` (see [`crate::singletons`]).
    pub fn read_model(&self, fence: u32) -> String {
        format!("{}.rm.{fence}", self.prefix)
    }

    /// The fence of a read-model subject, when `subject` is one.
    pub fn read_model_fence(&self, subject: &str) -> Option<u32> {
        subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".rm.")?
            .parse()
            .ok()
    }

    /// The partition of a fence subject, when `subject` is one.
    pub fn fence_partition(&self, subject: &str) -> Option<u32> {
        subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".fence.")?
            .parse()
            .ok()
    }

    /// The partition of an events subject, when `subject` is one.
    pub fn events_partition(&self, subject: &str) -> Option<u32> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".e.")?;
        rest.split('.').next()?.parse().ok()
    }
}

/// The message id of event `index` of an append: with a command id, one
/// derived from it, so that JetStream drops a retried append as a
/// duplicate within its window; else the event's own id.
pub fn message_id(command: Option<CommandId>, event: &NewEvent, index: usize) -> String {
    match command {
        Some(id) => format!("{id}.{index}"),
        None => event.metadata.event_id.to_string(),
    }
}

/// The headers of event `index` of `count`, written under the claim with
/// `token` whose marker is at `fence_sequence` on `fence_subject`.
pub struct EventHeaders<'a> {
    /// The partition's fence subject.
    pub fence_subject: &'a str,
    /// The sequence of the claim's marker.
    pub fence_sequence: u64,
    /// The claim's token.
    pub token: u64,
    /// The append's command id.
    pub command: Option<CommandId>,
}

impl EventHeaders<'_> {
    /// The headers of event `index` of `count`.
    pub fn build(&self, event: &NewEvent, index: usize, count: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            message_id(self.command, event, index).as_str(),
        );
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.fence_sequence.to_string().as_str(),
        );
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            self.fence_subject,
        );
        headers.insert(HEADER_TOKEN, self.token.to_string().as_str());
        headers.insert(HEADER_APPEND, format!("{index}/{count}").as_str());
        if let Some(id) = self.command {
            headers.insert(HEADER_COMMAND, id.to_string().as_str());
        }
        headers
    }
}

/// The position an event message's record says: a placeholder (the
/// store's records never hold 0), since the log's sequence is the position.
pub const WIRE_POSITION: u64 = 1;

/// The payload of an event message: the store's record of `event` at
/// [`WIRE_POSITION`], its `version`, time 0 (the log's time is
/// JetStream's).
pub fn encode_event(stream: &StreamId, event: &NewEvent, version: u64) -> bytes::Bytes {
    decoders::encode_record(
        stream,
        event,
        WIRE_POSITION,
        version,
        Timestamp::from_micros(0),
    )
    .into()
}

/// Why a message of the log could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The payload is not an event record (its checksum or a length fails).
    #[error("message {sequence}: {source}")]
    Corrupt {
        /// The message's sequence.
        sequence: u64,
        /// What the record decoder found.
        #[source]
        source: eventfold_runtime::storage::Corruption,
    },
    /// A header is missing or malformed.
    #[error("message {sequence}: header {header} is missing or malformed")]
    Header {
        /// The message's sequence.
        sequence: u64,
        /// The header.
        header: &'static str,
    },
    /// An append's messages do not follow each other (an index out of
    /// order, another stream in the middle).
    #[error("message {sequence}: not the next event of the append before it")]
    Interleaved {
        /// The message's sequence.
        sequence: u64,
    },
    /// A read-model message's checksum or encoding fails.
    #[error("message {sequence}: the read-model changes do not decode: {reason}")]
    ReadModel {
        /// The message's sequence.
        sequence: u64,
        /// What failed.
        reason: String,
    },
}

/// One event message as the follower reads it.
pub struct EventMessage<'a> {
    /// Its stream sequence: the event's position.
    pub sequence: u64,
    /// Its headers.
    pub headers: Option<&'a HeaderMap>,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What an event message says, decoded.
pub struct DecodedEvent {
    /// The event.
    pub event: NewEvent,
    /// Its stream.
    pub stream: StreamId,
    /// Its version.
    pub version: u64,
    /// Its index in its append and the append's count.
    pub index: usize,
    /// The append's event count.
    pub count: usize,
    /// The claim token it was written under.
    pub token: u64,
    /// The append's command id.
    pub command: Option<CommandId>,
}

fn header<'a>(message: &EventMessage<'a>, name: &'static str) -> Option<&'a str> {
    message
        .headers
        .and_then(|h| h.get(name))
        .map(|value| value.as_str())
}

/// Decodes an event message.
pub fn decode_event(message: &EventMessage<'_>) -> Result<DecodedEvent, WireError> {
    let sequence = message.sequence;
    let record = decoders::record(&WIRE_POSITION.to_be_bytes(), message.payload)
        .map_err(|source| WireError::Corrupt { sequence, source })?;
    let malformed = |header| WireError::Header { sequence, header };
    let (index, count) = header(message, HEADER_APPEND)
        .and_then(|value| value.split_once('/'))
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .filter(|(i, n)| i < n)
        .ok_or_else(|| malformed(HEADER_APPEND))?;
    let token = header(message, HEADER_TOKEN)
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| malformed(HEADER_TOKEN))?;
    let command = match header(message, HEADER_COMMAND) {
        None => None,
        Some(value) => Some(
            value
                .parse::<uuid::Uuid>()
                .map(CommandId::from)
                .map_err(|_| malformed(HEADER_COMMAND))?,
        ),
    };
    Ok(DecodedEvent {
        event: NewEvent {
            event_type: record.event_type,
            schema_version: record.schema_version,
            payload: record.payload,
            metadata: record.metadata,
        },
        stream: record.stream_id,
        version: record.version,
        index,
        count,
        token,
        command,
    })
}

/// Gathers the messages of one append into the entry a replica writes.
#[derive(Default)]
pub struct AppendAssembler {
    open: Option<ReplicatedAppend>,
}

impl AppendAssembler {
    /// Takes the next event message; the whole append once its last event
    /// has come.
    pub fn push(
        &mut self,
        sequence: u64,
        recorded_at: Timestamp,
        decoded: DecodedEvent,
    ) -> Result<Option<ReplicatedAppend>, WireError> {
        let interleaved = || WireError::Interleaved { sequence };
        match &mut self.open {
            None => {
                if decoded.index != 0 {
                    return Err(interleaved());
                }
                self.open = Some(ReplicatedAppend {
                    first_position: sequence,
                    stream: decoded.stream,
                    first_version: decoded.version,
                    recorded_at,
                    events: vec![decoded.event],
                    command_id: decoded.command,
                });
            }
            Some(open) => {
                let next = open.events.len();
                if decoded.index != next
                    || decoded.stream != open.stream
                    || decoded.version != open.first_version + next as u64
                    || sequence != open.first_position + next as u64
                {
                    return Err(interleaved());
                }
                open.events.push(decoded.event);
            }
        }
        if decoded.index + 1 == decoded.count {
            Ok(self.open.take())
        } else {
            Ok(None)
        }
    }

    /// Whether an append is half read.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// The most bytes of read-model changes one message carries; larger
/// batches go as an atomic batch of several.
pub const READ_MODEL_CHUNK_BYTES: usize = 256 * 1024;

/// One message's share of a read-model batch, as it travels.
#[derive(Serialize, Deserialize, Default)]
struct ReadModelChunk {
    /// `(model, key, value)`: a put with a value, a delete without.
    ops: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
    checkpoint: Option<(String, u64)>,
}

/// The payloads of `batch`'s messages: its changes in order, split where
/// a message would pass [`READ_MODEL_CHUNK_BYTES`] (a single larger change
/// goes alone), the checkpoint with the last; each bincode, then its
/// CRC32C (big-endian).
pub fn encode_read_model(batch: &ReadModelBatch) -> Result<Vec<bytes::Bytes>, String> {
    let mut chunks = vec![ReadModelChunk::default()];
    let mut size = 0;
    for (model, op) in &batch.ops {
        let (key, value) = match op {
            ReadModelOp::Put { key, value } => (key.clone(), Some(value.clone())),
            ReadModelOp::Delete { key } => (key.clone(), None),
        };
        let bytes = model.len() + key.len() + value.as_ref().map_or(0, Vec::len);
        if size > 0 && size + bytes > READ_MODEL_CHUNK_BYTES {
            chunks.push(ReadModelChunk::default());
            size = 0;
        }
        size += bytes;
        if let Some(chunk) = chunks.last_mut() {
            chunk.ops.push((model.clone(), key, value));
        }
    }
    if let Some(chunk) = chunks.last_mut() {
        chunk.checkpoint = batch.checkpoint.clone();
    }
    chunks
        .iter()
        .map(|chunk| {
            let mut bytes = bincode::serde::encode_to_vec(chunk, bincode::config::standard())
                .map_err(|e| e.to_string())?;
            bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_be_bytes());
            Ok(bytes.into())
        })
        .collect()
}

/// The most bytes a read-model message may hold when it is decoded.
const READ_MODEL_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Gathers the messages of one read-model batch (`Ef-Append` `i/n`) into
/// the entry a replica writes.
#[derive(Default)]
pub struct ReadModelAssembler {
    open: Option<(u64, ReadModelBatch)>,
}

impl ReadModelAssembler {
    /// Takes the next read-model message; the whole batch once its last
    /// message has come.
    pub fn push(&mut self, message: &EventMessage<'_>) -> Result<Option<Replicated>, WireError> {
        let sequence = message.sequence;
        let (index, count) = header(message, HEADER_APPEND)
            .and_then(|value| value.split_once('/'))
            .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .filter(|(i, n)| i < n)
            .ok_or(WireError::Header {
                sequence,
                header: HEADER_APPEND,
            })?;
        let chunk = decode_chunk(sequence, message.payload)?;
        let (first, batch) = match self.open.take() {
            None if index == 0 => (sequence, ReadModelBatch::new()),
            Some((first, batch)) if index > 0 && sequence == first + index as u64 => (first, batch),
            _ => return Err(WireError::Interleaved { sequence }),
        };
        let mut batch = batch;
        for (model, key, value) in chunk.ops {
            match value {
                Some(value) => batch.put(&model, key, value),
                None => batch.delete(&model, key),
            }
        }
        if let Some((name, position)) = chunk.checkpoint {
            batch.set_checkpoint(&name, position);
        }
        if index + 1 < count {
            self.open = Some((first, batch));
            return Ok(None);
        }
        Ok(Some(Replicated::ReadModel {
            first_position: first,
            last_position: sequence,
            batch,
        }))
    }
}

/// The claim token a message was written under.
pub fn token_of(message: &EventMessage<'_>) -> Result<u64, WireError> {
    header(message, HEADER_TOKEN)
        .and_then(|value| value.parse().ok())
        .ok_or(WireError::Header {
            sequence: message.sequence,
            header: HEADER_TOKEN,
        })
}

fn decode_chunk(sequence: u64, payload: &[u8]) -> Result<ReadModelChunk, WireError> {
    let failed = |reason: String| WireError::ReadModel { sequence, reason };
    let (body, sum) = payload
        .split_last_chunk::<4>()
        .ok_or_else(|| failed("shorter than its checksum".into()))?;
    if crc32c::crc32c(body) != u32::from_be_bytes(*sum) {
        return Err(failed("the checksum does not match".into()));
    }
    let config = bincode::config::standard().with_limit::<READ_MODEL_MESSAGE_BYTES_MAX>();
    let (chunk, read) =
        bincode::serde::decode_from_slice(body, config).map_err(|e| failed(e.to_string()))?;
    if read != body.len() {
        return Err(failed("bytes after the changes".into()));
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(chunks: &[bytes::Bytes], first: u64) -> Vec<(u64, HeaderMap)> {
        chunks
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let mut headers = HeaderMap::new();
                headers.insert(HEADER_APPEND, format!("{i}/{}", chunks.len()).as_str());
                (first + i as u64, headers)
            })
            .collect()
    }

    fn assemble(chunks: &[bytes::Bytes], first: u64) -> Result<Vec<Option<Replicated>>, WireError> {
        let mut assembler = ReadModelAssembler::default();
        messages(chunks, first)
            .iter()
            .zip(chunks)
            .map(|((sequence, headers), payload)| {
                assembler.push(&EventMessage {
                    sequence: *sequence,
                    headers: Some(headers),
                    payload,
                })
            })
            .collect()
    }

    #[test]
    fn a_large_batch_travels_in_chunks_and_comes_back_whole() -> Result<(), String> {
        let mut batch = ReadModelBatch::new();
        for i in 0..40u32 {
            batch.put("$pm.t", i.to_be_bytes().to_vec(), vec![i as u8; 20_000]);
        }
        batch.delete("$pm.t", b"gone".to_vec());
        batch.set_checkpoint("$pm.t", 77);
        let chunks = encode_read_model(&batch)?;
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        assert!(
            chunks
                .iter()
                .all(|c| c.len() <= READ_MODEL_CHUNK_BYTES + 1024)
        );
        let entries = assemble(&chunks, 10).map_err(|e| e.to_string())?;
        let (last, earlier) = entries.split_last().ok_or("no entries")?;
        assert!(earlier.iter().all(Option::is_none));
        assert_eq!(
            last,
            &Some(Replicated::ReadModel {
                first_position: 10,
                last_position: 10 + chunks.len() as u64 - 1,
                batch,
            })
        );
        Ok(())
    }

    #[test]
    fn damaged_or_misordered_chunks_are_refused() -> Result<(), String> {
        let mut batch = ReadModelBatch::new();
        batch.put("$pm.t", b"k".to_vec(), b"v".to_vec());
        let chunks = encode_read_model(&batch)?;
        let mut damaged = chunks[0].to_vec();
        damaged[0] ^= 1;
        assert!(matches!(
            assemble(&[damaged.into()], 1),
            Err(WireError::ReadModel { sequence: 1, .. })
        ));
        assert!(matches!(
            assemble(&[bytes::Bytes::from_static(b"ab")], 1),
            Err(WireError::ReadModel { .. })
        ));
        // The second message of a batch without its first.
        let mut assembler = ReadModelAssembler::default();
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_APPEND, "1/2");
        assert!(matches!(
            assembler.push(&EventMessage {
                sequence: 5,
                headers: Some(&headers),
                payload: &chunks[0],
            }),
            Err(WireError::Interleaved { sequence: 5 })
        ));
        // No `Ef-Append` header.
        assert!(matches!(
            assembler.push(&EventMessage {
                sequence: 6,
                headers: None,
                payload: &chunks[0],
            }),
            Err(WireError::Header { sequence: 6, .. })
        ));
        Ok(())
    }
}
