//! Data subjects' keys in RocksDB: created once under a lock, forgotten
//! with a synced mark after which the key's bytes leave every file.

use super::RocksStore;
use super::options::DirectSync;
use crate::error::WriteError;
use crate::keyspaces::CF_SUBJECT_KEYS;
use crate::{EventStore, SUBJECT_KEY_BYTES, SubjectKey};
use rocksdb::WriteBatch;

impl RocksStore {
    pub(super) fn create_subject_key_now(
        &self,
        subject: &str,
        key: [u8; SUBJECT_KEY_BYTES],
    ) -> Result<SubjectKey, WriteError> {
        crate::subjects::check(subject)?;
        // One creator at a time: two keys for one subject would leave what
        // the loser sealed unreadable.
        let _creating = self
            .inner
            .subject_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = self.subject_key(subject)? {
            return Ok(existing);
        }
        let created = SubjectKey::Active(key);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_SUBJECT_KEYS)?,
            subject.as_bytes(),
            crate::subjects::encode(&created),
        );
        // In the WAL before any append submitted after it: the sync that
        // makes such an append durable makes the key durable first.
        self.write_direct(batch, DirectSync::Covered)?;
        Ok(created)
    }

    pub(super) fn forget_subject_now(&self, subject: &str) -> Result<bool, WriteError> {
        crate::subjects::check(subject)?;
        let _creating = self
            .inner
            .subject_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let before = self.subject_key(subject)?;
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_SUBJECT_KEYS)?;
        batch.put_cf(
            cf,
            subject.as_bytes(),
            crate::subjects::encode(&SubjectKey::Forgotten),
        );
        self.write_direct(batch, DirectSync::Own)?;
        // The key's bytes are still in the memtable, in a live WAL file and
        // in table files: flush every keyspace (so no live WAL holds them)
        // and compact this one (so no table file does).
        self.flush_all()
            .map_err(|e| WriteError::Io(e.to_string()))?;
        self.inner
            .db
            .compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(before.is_some())
    }
}
