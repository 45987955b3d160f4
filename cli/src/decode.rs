//! Payloads made readable: events of the aggregates the binary knows are
//! upcast to their current shape and shown as JSON; the store's own
//! deletion events too; anything else as hex.

use eventfold_domain::{Aggregate, RecordedEvent};
use eventfold_runtime::evolution::{self, Upcasters};
use eventfold_storage::{DELETIONS_STREAM, StreamDeletion};
use serde_json::Value;
use std::collections::HashMap;

type DecodeFn = Box<dyn Fn(&RecordedEvent) -> Result<Value, String> + Send + Sync>;

/// What a payload shows as.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded {
    /// Decoded: the event's current shape (several or none when an
    /// upcaster split or dropped it): each one's type name and JSON.
    Json(Vec<(String, Value)>),
    /// No decoder knows the stream's category.
    Unknown,
    /// A decoder knows it and failed: why.
    Failed(String),
}

/// Decoders by stream category, and the upcasters applied first.
#[derive(Default)]
pub(crate) struct Decoders {
    by_category: HashMap<String, DecodeFn>,
    pub(crate) upcasters: Upcasters,
}

impl Decoders {
    /// Decodes `A`'s events (its streams' category is `A::KIND`).
    pub(crate) fn add<A: Aggregate>(&mut self) {
        self.by_category.insert(
            A::KIND.to_owned(),
            Box::new(|event| {
                let decoded = evolution::decode::<A::Event>(event).map_err(|e| e.to_string())?;
                serde_json::to_value(decoded).map_err(|e| e.to_string())
            }),
        );
    }

    /// `event`'s payload, readable.
    pub(crate) fn decode(&self, event: &RecordedEvent) -> Decoded {
        if event.stream_id.as_str() == DELETIONS_STREAM {
            return match StreamDeletion::of(event) {
                Some(deletion) => match serde_json::to_value(deletion) {
                    Ok(value) => Decoded::Json(vec![(event.event_type.clone(), value)]),
                    Err(e) => Decoded::Failed(e.to_string()),
                },
                None => Decoded::Failed("not a stream deletion".into()),
            };
        }
        let Some(decode) = self.by_category.get(event.stream_id.category()) else {
            return Decoded::Unknown;
        };
        let current = match self.upcasters.upcast_all(vec![event.clone()]) {
            Ok(current) => current,
            Err(error) => return Decoded::Failed(error.to_string()),
        };
        current
            .iter()
            .map(|e| Ok((e.event_type.clone(), decode(e)?)))
            .collect::<Result<Vec<_>, _>>()
            .map_or_else(Decoded::Failed, Decoded::Json)
    }
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
