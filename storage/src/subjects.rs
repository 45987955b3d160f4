//! Data subjects' keys, for crypto-shredding: the store keeps one key per
//! subject, or the mark that the subject was forgotten. Encryption itself
//! is the runtime's (`eventfold_runtime::personal`); the store only keeps
//! the keys, in a keyspace of their own.

use crate::codec::frame::{Cursor, FORMAT_V1, checked_body, with_crc};
use crate::error::{Corruption, CorruptionKind};
use crate::keyspaces::CF_SUBJECT_KEYS;

/// Bytes of a subject's key (a 256-bit AEAD key).
pub const SUBJECT_KEY_BYTES: usize = 32;
/// The longest subject id, in bytes.
pub const SUBJECT_BYTES_MAX: usize = 256;

/// What the store keeps for a data subject.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SubjectKey {
    /// Its key.
    Active([u8; SUBJECT_KEY_BYTES]),
    /// It was forgotten: its key is destroyed.
    Forgotten,
}

impl std::fmt::Debug for SubjectKey {
    // The key's bytes never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Active(_) => f.write_str("Active(..)"),
            Self::Forgotten => f.write_str("Forgotten"),
        }
    }
}

const ACTIVE: u8 = 1;
const FORGOTTEN: u8 = 2;

/// Format byte, state (1 active, 2 forgotten), the key when active, CRC32C.
pub(crate) fn encode(key: &SubjectKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + SUBJECT_KEY_BYTES + 4);
    out.push(FORMAT_V1);
    match key {
        SubjectKey::Active(bytes) => {
            out.push(ACTIVE);
            out.extend_from_slice(bytes);
        }
        SubjectKey::Forgotten => out.push(FORGOTTEN),
    }
    with_crc(out)
}

pub(crate) fn decode(key: &[u8], value: &[u8]) -> Result<SubjectKey, Corruption> {
    let body = checked_body(CF_SUBJECT_KEYS, key, value)?;
    let mut c = Cursor { bytes: body };
    let parse = |c: &mut Cursor<'_>| {
        let decoded = match c.u8("state")? {
            ACTIVE => {
                let bytes = c.take(SUBJECT_KEY_BYTES, "key")?;
                let mut out = [0u8; SUBJECT_KEY_BYTES];
                out.copy_from_slice(bytes);
                SubjectKey::Active(out)
            }
            FORGOTTEN => SubjectKey::Forgotten,
            other => {
                return Err(CorruptionKind::InvalidField(format!(
                    "subject state {other}"
                )));
            }
        };
        c.end()?;
        Ok(decoded)
    };
    parse(&mut c).map_err(|kind| Corruption {
        keyspace: CF_SUBJECT_KEYS,
        key: key.to_vec(),
        kind,
    })
}

/// A subject id is 1 to [`SUBJECT_BYTES_MAX`] bytes.
pub(crate) fn check(subject: &str) -> Result<(), crate::NameError> {
    crate::validate::name(subject)?;
    if subject.len() > SUBJECT_BYTES_MAX {
        return Err(crate::NameError::TooLong {
            bytes: subject.len(),
            limit: SUBJECT_BYTES_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_marks_round_trip_and_damage_is_refused() {
        let active = SubjectKey::Active([7; SUBJECT_KEY_BYTES]);
        assert_eq!(decode(b"s", &encode(&active)), Ok(active));
        assert_eq!(
            decode(b"s", &encode(&SubjectKey::Forgotten)),
            Ok(SubjectKey::Forgotten)
        );
        let mut bytes = encode(&active);
        bytes[5] ^= 1;
        assert!(decode(b"s", &bytes).is_err());
        assert_eq!(format!("{active:?}"), "Active(..)");
    }
}
