//! The frame every value but a `streams` index entry has: a format byte,
//! the body, a big-endian CRC32C of all the bytes before it; and a
//! bounds-checked reader of a body.

use crate::error::{Corruption, CorruptionKind};

/// Format byte of every value written by this version.
pub(crate) const FORMAT_V1: u8 = 1;
/// Bytes of the trailing checksum.
pub(crate) const CRC_BYTES: usize = 4;

pub(crate) fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Checks the format byte and the trailing CRC; returns the bytes between.
pub(crate) fn checked_body<'a>(
    keyspace: &'static str,
    key: &[u8],
    value: &'a [u8],
) -> Result<&'a [u8], Corruption> {
    let corrupt = |kind| Corruption {
        keyspace,
        key: key.to_vec(),
        kind,
    };
    if value.len() < 1 + CRC_BYTES {
        return Err(corrupt(CorruptionKind::Truncated(
            "shorter than format byte and checksum",
        )));
    }
    let (body, crc_bytes) = value.split_at(value.len() - CRC_BYTES);
    let mut stored = [0u8; 4];
    stored.copy_from_slice(crc_bytes);
    let stored = u32::from_be_bytes(stored);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(corrupt(CorruptionKind::Checksum { stored, computed }));
    }
    if body[0] != FORMAT_V1 {
        return Err(corrupt(CorruptionKind::UnknownFormat(body[0])));
    }
    Ok(&body[1..])
}

/// Appends the checksum of `body` (which starts with the format byte).
pub(crate) fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    body
}

/// A bounds-checked reader over a value's body.
pub(crate) struct Cursor<'a> {
    pub(crate) bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn take(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<&'a [u8], CorruptionKind> {
        if self.bytes.len() < n {
            return Err(CorruptionKind::Truncated(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, CorruptionKind> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, CorruptionKind> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, CorruptionKind> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, CorruptionKind> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn id16(&mut self, what: &'static str) -> Result<[u8; 16], CorruptionKind> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16, what)?);
        Ok(a)
    }
    pub(crate) fn str_n(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<&'a str, CorruptionKind> {
        std::str::from_utf8(self.take(n, what)?)
            .map_err(|_| CorruptionKind::InvalidField(format!("{what} is not UTF-8")))
    }
    /// Bytes prefixed by their length in a `u16`.
    pub(crate) fn bytes16(&mut self, what: &'static str) -> Result<&'a [u8], CorruptionKind> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }
    pub(crate) fn str16(&mut self, what: &'static str) -> Result<&'a str, CorruptionKind> {
        let n = usize::from(self.u16(what)?);
        self.str_n(n, what)
    }
    pub(crate) fn end(&self) -> Result<(), CorruptionKind> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(CorruptionKind::InvalidField(format!(
                "{} unexpected trailing bytes",
                self.bytes.len()
            )))
        }
    }
}
