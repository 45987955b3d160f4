//! Stream identifiers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The longest stream id accepted, in bytes of UTF-8.
pub const STREAM_ID_BYTES_MAX: usize = 256;

/// Why a string is not a valid stream id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamIdError {
    /// The id is the empty string.
    #[error("a stream id must not be empty")]
    Empty,
    /// The id is longer than [`STREAM_ID_BYTES_MAX`].
    #[error("stream id is {bytes} bytes long, more than the limit of {limit}")]
    TooLong {
        /// Its length in bytes.
        bytes: usize,
        /// [`STREAM_ID_BYTES_MAX`].
        limit: usize,
    },
    /// The id contains a NUL byte, which separates stream ids from versions
    /// in stored keys.
    #[error("a stream id must not contain a NUL character")]
    ContainsNul,
    /// An aggregate's id is the empty string: its stream would be the
    /// kind and a dash alone (`acc-`), which names no aggregate.
    #[error("an aggregate id must not be empty")]
    EmptyAggregateId,
}

/// The id of one event stream, such as `account-42`.
///
/// The part before the first `-` is the stream's *category* (`account`);
/// the global log can be read filtered by category. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Validates and wraps `id`: non-empty, at most [`STREAM_ID_BYTES_MAX`]
    /// bytes, no NUL.
    pub fn new(id: impl AsRef<str>) -> Result<Self, StreamIdError> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(StreamIdError::Empty);
        }
        if id.len() > STREAM_ID_BYTES_MAX {
            return Err(StreamIdError::TooLong {
                bytes: id.len(),
                limit: STREAM_ID_BYTES_MAX,
            });
        }
        if id.as_bytes().contains(&0) {
            return Err(StreamIdError::ContainsNul);
        }
        Ok(Self(Arc::from(id)))
    }

    /// The stream of the aggregate of kind `kind` with id `id`:
    /// `{kind}-{id}`, validated as [`StreamId::new`] does (and `id` must not
    /// be empty), built without a temporary `String` (one allocation, the
    /// id's own).
    ///
    /// ```
    /// use eventfold_domain::StreamId;
    ///
    /// let stream = StreamId::for_aggregate("account", "42")?;
    /// assert_eq!((stream.as_str(), stream.category()), ("account-42", "account"));
    /// assert!(StreamId::for_aggregate("account", &"x".repeat(300)).is_err());
    /// assert!(StreamId::for_aggregate("account", "").is_err());
    /// # Ok::<(), eventfold_domain::StreamIdError>(())
    /// ```
    pub fn for_aggregate(kind: &str, id: &str) -> Result<Self, StreamIdError> {
        if id.is_empty() {
            return Err(StreamIdError::EmptyAggregateId);
        }
        let bytes = kind.len() + 1 + id.len();
        if bytes > STREAM_ID_BYTES_MAX {
            return Err(StreamIdError::TooLong {
                bytes,
                limit: STREAM_ID_BYTES_MAX,
            });
        }
        let mut joined = [0u8; STREAM_ID_BYTES_MAX];
        joined[..kind.len()].copy_from_slice(kind.as_bytes());
        joined[kind.len()] = b'-';
        joined[kind.len() + 1..bytes].copy_from_slice(id.as_bytes());
        match std::str::from_utf8(&joined[..bytes]) {
            Ok(joined) => Self::new(joined),
            // Two strings and a `-` are UTF-8; this arm is never taken.
            Err(_) => Self::new(format!("{kind}-{id}")),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: the part before the first `-`, or the whole id.
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }
}

/// The category of a stream id string: the part before the first `-`.
pub fn category_of(id: &str) -> &str {
    id.split_once('-').map_or(id, |(category, _)| category)
}

impl TryFrom<String> for StreamId {
    type Error = StreamIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = StreamIdError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0.to_string()
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        assert_eq!(StreamId::new("account-1-x").unwrap().category(), "account");
        assert_eq!(StreamId::new("plain").unwrap().category(), "plain");
        assert_eq!(StreamId::new("-x").unwrap().category(), "");
    }

    #[test]
    fn invalid_ids_are_rejected() {
        assert_eq!(StreamId::new(""), Err(StreamIdError::Empty));
        assert_eq!(StreamId::new("a\0b"), Err(StreamIdError::ContainsNul));
        let long = "x".repeat(STREAM_ID_BYTES_MAX + 1);
        assert!(matches!(
            StreamId::new(long),
            Err(StreamIdError::TooLong { .. })
        ));
        assert!(StreamId::new("x".repeat(STREAM_ID_BYTES_MAX)).is_ok());
    }

    #[test]
    fn an_aggregate_stream_is_its_kind_a_dash_and_its_id() {
        let stream = StreamId::for_aggregate("account", "é-1").unwrap();
        assert_eq!(stream, StreamId::new("account-é-1").unwrap());
        assert_eq!(stream.category(), "account");
        let longest = "x".repeat(STREAM_ID_BYTES_MAX - "account-".len());
        assert_eq!(
            StreamId::for_aggregate("account", &longest)
                .unwrap()
                .as_str()
                .len(),
            STREAM_ID_BYTES_MAX
        );
        assert_eq!(
            StreamId::for_aggregate("account", &format!("{longest}x")),
            Err(StreamIdError::TooLong {
                bytes: STREAM_ID_BYTES_MAX + 1,
                limit: STREAM_ID_BYTES_MAX
            })
        );
        assert_eq!(
            StreamId::for_aggregate("account", "a\0b"),
            Err(StreamIdError::ContainsNul)
        );
    }

    // Regression: `execute::<Account>("", ...)` was accepted and wrote the
    // stream `acc-`.
    #[test]
    fn an_empty_aggregate_id_is_refused() {
        assert_eq!(
            StreamId::for_aggregate("account", ""),
            Err(StreamIdError::EmptyAggregateId)
        );
    }
}
