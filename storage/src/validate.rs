//! Checks every backend applies to a request before it is queued.

use crate::api::AppendRequest;
use crate::error::{AppendError, NameError, WriteError};
use crate::options::{NAME_BYTES_MAX, StoreOptions};
use crate::{ReadModelBatch, ReadModelOp};
use std::collections::HashSet;

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
    let mut seen = HashSet::with_capacity(request.streams.len());
    let mut event_ids = HashSet::with_capacity(count);
    for part in &request.streams {
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
            let invalid = |reason: String| AppendError::InvalidEvent {
                stream: part.stream.clone(),
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
                    stream: part.stream.clone(),
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
        }
    }
    Ok(())
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
