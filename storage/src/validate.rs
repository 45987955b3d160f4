//! Checks every backend applies to a request before it is queued.

use crate::api::AppendRequest;
use crate::error::{AppendError, NameError, WriteError};
use crate::options::{NAME_BYTES_MAX, StoreOptions};
use crate::{ReadModelBatch, ReadModelOp};
use eventfold_domain::{EventId, NewEvent, StreamId};
use std::hash::Hash;

/// Checks a deletion before it is queued: the store's own streams are not
/// the user's to delete.
pub(crate) fn delete_request(request: &crate::DeleteRequest) -> Result<(), AppendError> {
    if request.stream.as_str().starts_with('$') {
        return Err(AppendError::ReservedStream {
            stream: request.stream.clone(),
        });
    }
    Ok(())
}

/// Checks a request against the store's limits; an error names what to fix.
pub(crate) fn append_request(
    request: &AppendRequest,
    options: &StoreOptions,
) -> Result<(), AppendError> {
    if request.streams.is_empty() {
        return Err(AppendError::NoStreams);
    }
    let count = request.event_count();
    if count > options.events_per_append_max {
        return Err(AppendError::TooManyEvents {
            count,
            limit: options.events_per_append_max,
        });
    }
    let mut seen = Seen::new();
    let mut event_ids = Seen::new();
    for part in &request.streams {
        if part.stream.as_str().starts_with('$') {
            return Err(AppendError::ReservedStream {
                stream: part.stream.clone(),
            });
        }
        if !seen.insert(part.stream.as_str()) {
            return Err(AppendError::DuplicateStream {
                stream: part.stream.clone(),
            });
        }
        if part.events.is_empty() {
            return Err(AppendError::NoEvents {
                stream: part.stream.clone(),
            });
        }
        for (index, event) in part.events.iter().enumerate() {
            check_event(&part.stream, index, event, options, &mut event_ids)?;
        }
    }
    Ok(())
}

/// The checks of one event of an append: a unique id, its payload, type
/// and headers within the store's limits.
fn check_event(
    stream: &StreamId,
    index: usize,
    event: &NewEvent,
    options: &StoreOptions,
    event_ids: &mut Seen<EventId>,
) -> Result<(), AppendError> {
    let invalid = |reason: String| AppendError::InvalidEvent {
        stream: stream.clone(),
        index,
        reason,
    };
    if !event_ids.insert(event.metadata.event_id) {
        return Err(invalid(format!(
            "event id {} appears twice in one append",
            event.metadata.event_id
        )));
    }
    if event.payload.len() > options.payload_bytes_max {
        return Err(AppendError::PayloadTooLarge {
            stream: stream.clone(),
            index,
            bytes: event.payload.len(),
            limit: options.payload_bytes_max,
        });
    }
    let type_limit = options.event_type_bytes_max.min(usize::from(u16::MAX));
    if event.event_type.is_empty() {
        return Err(invalid("the event type is empty".into()));
    }
    if event.event_type.len() > type_limit {
        return Err(invalid(format!(
            "the event type is {} bytes long, more than the limit of {type_limit}",
            event.event_type.len()
        )));
    }
    let headers = &event.metadata.headers;
    let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if header_bytes > options.headers_bytes_max || headers.len() > usize::from(u16::MAX) {
        return Err(invalid(format!(
            "{} header bytes, more than the limit of {}",
            header_bytes, options.headers_bytes_max
        )));
    }
    if headers.iter().any(|(k, _)| k.len() > usize::from(u16::MAX)) {
        return Err(invalid("a header key is longer than 65535 bytes".into()));
    }
    Ok(())
}

/// The checks of a replicated append: what an append of its events would
/// get, but for the reserved names (a replica copies the source's own
/// streams too).
pub(crate) fn replicated(
    append: &crate::ReplicatedAppend,
    options: &StoreOptions,
) -> Result<(), AppendError> {
    if append.events.is_empty() {
        return Err(AppendError::NoEvents {
            stream: append.stream.clone(),
        });
    }
    if append.events.len() > options.events_per_append_max {
        return Err(AppendError::TooManyEvents {
            count: append.events.len(),
            limit: options.events_per_append_max,
        });
    }
    let mut event_ids = Seen::new();
    for (index, event) in append.events.iter().enumerate() {
        check_event(&append.stream, index, event, options, &mut event_ids)?;
    }
    Ok(())
}

/// Items [`Seen`] keeps in place before it spills into a hash set: an append
/// usually has one stream and a few events, and its check then allocates
/// nothing.
const SEEN_INLINE: usize = 8;

/// The items of a request seen so far, to find one given twice.
struct Seen<T> {
    inline: [Option<T>; SEEN_INLINE],
    len: usize,
    spill: foldhash::HashSet<T>,
}

impl<T: Copy + Eq + Hash> Seen<T> {
    fn new() -> Self {
        Self {
            inline: [None; SEEN_INLINE],
            len: 0,
            spill: foldhash::HashSet::default(),
        }
    }

    /// Remembers `item`; false if it was seen before.
    fn insert(&mut self, item: T) -> bool {
        if self.inline[..self.len].contains(&Some(item)) || self.spill.contains(&item) {
            return false;
        }
        if self.len < SEEN_INLINE {
            self.inline[self.len] = Some(item);
            self.len += 1;
            true
        } else {
            self.spill.insert(item)
        }
    }
}

/// Checks a checkpoint, read-model or other name.
pub(crate) fn name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong {
            bytes: name.len(),
            limit: NAME_BYTES_MAX,
        });
    }
    if name.as_bytes().contains(&0) {
        return Err(NameError::ContainsNul);
    }
    Ok(())
}

/// Checks a read-model batch against the store's limits.
pub(crate) fn read_model_batch(
    batch: &ReadModelBatch,
    options: &StoreOptions,
) -> Result<(), WriteError> {
    if batch.ops.len() > options.read_model_batch_entries_max {
        return Err(WriteError::BatchTooLarge {
            count: batch.ops.len(),
            limit: options.read_model_batch_entries_max,
        });
    }
    for (model, op) in &batch.ops {
        name(model)?;
        let bytes = match op {
            ReadModelOp::Put { key, value } => key.len() + value.len(),
            ReadModelOp::Delete { key } => key.len(),
        };
        if bytes > options.payload_bytes_max {
            return Err(WriteError::ValueTooLarge {
                bytes,
                limit: options.payload_bytes_max,
            });
        }
    }
    if let Some((checkpoint, _)) = &batch.checkpoint {
        name(checkpoint)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StreamAppend;
    use eventfold_domain::{ExpectedVersion, Metadata, NewEvent, StreamId};

    fn event() -> NewEvent {
        NewEvent::new("E", 1, Vec::new(), Metadata::new())
    }

    fn part(stream: &str, events: Vec<NewEvent>) -> StreamAppend {
        StreamAppend {
            stream: StreamId::new(stream).expect("a valid id"), // allowed: test helper, literal valid ids
            expected: ExpectedVersion::Any,
            events,
        }
    }

    #[test]
    fn seen_finds_a_repeat_kept_in_place_and_one_spilled() {
        let mut seen = Seen::new();
        for i in 0..40u32 {
            assert!(seen.insert(i), "{i} is new");
        }
        assert!(!seen.insert(3), "kept in place");
        assert!(!seen.insert(33), "spilled");
        assert!(seen.insert(40));
    }

    #[test]
    fn a_repeated_event_id_beyond_the_inline_ones_is_refused_at_its_index() {
        let options = StoreOptions::default();
        let request = |events| AppendRequest {
            streams: vec![part("s", events)],
            command_id: None,
        };
        let mut events: Vec<NewEvent> = (0..20).map(|_| event()).collect();
        assert!(append_request(&request(events.clone()), &options).is_ok());
        events[14].metadata.event_id = events[1].metadata.event_id;
        let result = append_request(&request(events), &options);
        assert!(
            matches!(result, Err(AppendError::InvalidEvent { index: 14, .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_stream_given_twice_among_many_is_refused() {
        let options = StoreOptions::default();
        let mut streams: Vec<StreamAppend> = (0..12)
            .map(|i| part(&format!("s{i}"), vec![event()]))
            .collect();
        let request = AppendRequest {
            streams: streams.clone(),
            command_id: None,
        };
        assert!(append_request(&request, &options).is_ok());
        streams[11] = part("s9", vec![event()]);
        let request = AppendRequest {
            streams,
            command_id: None,
        };
        let result = append_request(&request, &options);
        assert!(
            matches!(&result, Err(AppendError::DuplicateStream { stream }) if stream.as_str() == "s9"),
            "{result:?}"
        );
    }
}
