//! Events before and after they are stored.

use crate::ids::{CausationId, CorrelationId, EventId};
use crate::stream::StreamId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Free-form key/value pairs carried with an event, in insertion order.
pub type Headers = Vec<(String, String)>;

/// What travels with an event besides its payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Unique id of the event.
    pub event_id: EventId,
    /// The request this event ultimately stems from.
    pub correlation_id: Option<CorrelationId>,
    /// The message that directly caused this event.
    pub causation_id: Option<CausationId>,
    /// Free-form headers.
    pub headers: Headers,
}

impl Metadata {
    /// Metadata with a fresh random event id and nothing else.
    pub fn new() -> Self {
        Self {
            event_id: EventId::random(),
            correlation_id: None,
            causation_id: None,
            headers: Vec::new(),
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation(mut self, id: CorrelationId) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation(mut self, id: CausationId) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

/// An event to be appended: type name, schema version, encoded payload and
/// metadata. The store assigns its version, position and recorded-at time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The event's type name, such as `Deposited`.
    pub event_type: String,
    /// The version of the payload's schema, for upcasting on read.
    pub schema_version: u16,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Ids and headers.
    pub metadata: Metadata,
}

impl NewEvent {
    /// An event of this type and schema version with this payload.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u16,
        payload: Vec<u8>,
        metadata: Metadata,
    ) -> Self {
        Self {
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata,
        }
    }

    /// This event as recorded at `position` of the global log, as version
    /// `version` of `stream_id`, at `recorded_at`.
    ///
    /// # Examples
    ///
    /// ```
    /// use eventfold_domain::{Metadata, NewEvent, StreamId, Timestamp};
    ///
    /// let event = NewEvent::new("Deposited", 1, vec![1], Metadata::new());
    /// let stream = StreamId::new("account-1")?;
    /// let recorded = event.recorded(stream, 3, 17, Timestamp::from_micros(5));
    /// assert_eq!((recorded.version, recorded.position), (3, 17));
    /// assert_eq!(recorded.event_type, "Deposited");
    /// # Ok::<(), eventfold_domain::StreamIdError>(())
    /// ```
    pub fn recorded(
        self,
        stream_id: StreamId,
        version: u64,
        position: u64,
        recorded_at: Timestamp,
    ) -> RecordedEvent {
        RecordedEvent {
            stream_id,
            version,
            position,
            recorded_at,
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload: self.payload,
            metadata: self.metadata,
        }
    }
}

/// An event as stored: a [`NewEvent`] plus where and when it was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version within the stream, from 1.
    pub version: u64,
    /// Its position in the global log, from 1, gapless.
    pub position: u64,
    /// When its batch was written; never decreases along the global log.
    pub recorded_at: Timestamp,
    /// The event's type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u16,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Ids and headers.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// The category of the event's stream (the part before the first `-`).
    pub fn category(&self) -> &str {
        crate::stream::category_of(self.stream_id.as_str())
    }
}
