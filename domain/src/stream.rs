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
pub(crate) fn category_of(id: &str) -> &str {
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
}
