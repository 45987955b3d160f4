//! Payload encoding: bincode 2 through serde, with its standard settings.

use serde::{Serialize, de::DeserializeOwned};

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The value could not be encoded.
    #[error("payload encoding failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not a valid encoding of the expected type.
    #[error("payload decoding failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The bytes hold a valid value followed by unread bytes.
    #[error("payload has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Encodes a value with bincode 2's standard configuration.
///
/// ```
/// let bytes = eventfold_storage::payload::encode(&(7u32, "x".to_string()))?;
/// let back: (u32, String) = eventfold_storage::payload::decode(&bytes)?;
/// assert_eq!(back, (7, "x".to_string()));
/// # Ok::<(), eventfold_storage::payload::PayloadError>(())
/// ```
#[inline]
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PayloadError> {
    Ok(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?)
}

/// Decodes a value encoded by [`encode`] from the start of `bytes`, and
/// how many bytes it used: for records that carry more after it.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), PayloadError> {
    Ok(bincode::serde::decode_from_slice(
        bytes,
        bincode::config::standard(),
    )?)
}

/// Decodes a value encoded by [`encode`]; every byte must be used.
#[inline]
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    if read != bytes.len() {
        return Err(PayloadError::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}
