//! `EventStore` for `RocksStore`: appends go to the writer thread; reads,
//! snapshots, checkpoints and read models run on the caller's thread.

use super::options::*;
use super::reads::*;
use super::{RocksStore, verify, writer};
use crate::api::*;
use crate::codec;
use crate::error::{AppendError, Corruption, CorruptionKind, ReadError, WriteError};
use crate::keyspaces::*;
use crate::lifecycle::{DeleteRequest, DeletionRecord, StreamInfo};
use crate::options::Durability;
use crate::validate;
use eventfold_domain::{CommandId, RecordedEvent, StreamId};
use rocksdb::{IteratorMode, WriteBatch};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use writer::{Job, Message, Work};

impl RocksStore {
    /// Whether the writer takes requests (open, not poisoned).
    pub(super) fn writable(&self) -> Result<(), AppendError> {
        if self.inner.shared.read_only {
            return Err(AppendError::ReadOnly);
        }
        if self.inner.shared.closed.load(Ordering::SeqCst) {
            return Err(AppendError::Closed);
        }
        if self.inner.shared.poisoned.load(Ordering::SeqCst) {
            return Err(AppendError::Poisoned);
        }
        Ok(())
    }

    /// Queues a job for the writer; `Overloaded` when its queue is full.
    pub(super) fn queue(
        &self,
        job: Job,
        receiver: oneshot::Receiver<Result<AppendOutcome, AppendError>>,
    ) -> PendingAppend {
        match self.inner.sender.try_send(Message::Append(job)) {
            Ok(()) => PendingAppend::waiting(receiver),
            Err(TrySendError::Full(_)) => PendingAppend::ready(Err(AppendError::Overloaded {
                limit: self.inner.options.queue_appends_max,
            })),
            Err(TrySendError::Disconnected(_)) => PendingAppend::ready(Err(AppendError::Closed)),
        }
    }

    /// The lifecycle record of `stream`, if it had a deletion.
    pub(super) fn stream_meta(
        &self,
        stream: &StreamId,
    ) -> Result<Option<codec::StreamMeta>, ReadError> {
        self.get_decoded(
            CF_STREAM_META,
            stream.as_str().as_bytes(),
            codec::decode_stream_meta,
        )
    }

    /// The value of `key` in `keyspace`, decoded.
    fn get_decoded<T>(
        &self,
        keyspace: &'static str,
        key: &[u8],
        decode: impl FnOnce(&[u8], &[u8]) -> Result<T, Corruption>,
    ) -> Result<Option<T>, ReadError> {
        match self
            .inner
            .db
            .get_pinned_cf(self.cf(keyspace)?, key)
            .map_err(engine)?
        {
            Some(value) => Ok(Some(decode(key, &value)?)),
            None => Ok(None),
        }
    }

    pub(super) fn check_writable(&self) -> Result<(), WriteError> {
        if self.inner.shared.read_only {
            return Err(WriteError::ReadOnly);
        }
        if self.inner.shared.closed.load(Ordering::SeqCst) {
            return Err(WriteError::Closed);
        }
        if self.inner.shared.poisoned.load(Ordering::SeqCst) {
            return Err(WriteError::Poisoned);
        }
        Ok(())
    }

    /// Writes a batch outside the writer thread (snapshots, checkpoints, read
    /// models); a failure poisons the store.
    ///
    /// Under `Durability::Sync` the write waits for a WAL sync of its own
    /// only with [`DirectSync::Own`]; a [`DirectSync::Covered`] write is in
    /// the WAL before anything written after it, so the next sync (the
    /// syncer's, for the next append) makes it durable, and losing it in a
    /// crash is harmless to its caller (a relaxed read-model batch loses its
    /// checkpoint with it; a snapshot only shortens a replay).
    pub(super) fn write_direct(
        &self,
        batch: WriteBatch,
        sync: DirectSync,
    ) -> Result<(), WriteError> {
        self.check_writable()?;
        let durability = self.inner.options.durability;
        let own_sync = durability == Durability::Sync && sync == DirectSync::Own;
        let mut options = write_options(durability);
        if durability == Durability::Sync {
            options.set_sync(own_sync);
        }
        let faulted = self
            .inner
            .options
            .faults
            .as_ref()
            .is_some_and(|f| f.should_fail());
        let result = if faulted {
            Err("injected write failure".to_owned())
        } else {
            self.inner
                .db
                .write_opt(batch, &options)
                .map_err(|e| e.into_string())
        };
        if result.is_ok() && own_sync {
            self.inner
                .shared
                .stats_direct_syncs
                .fetch_add(1, Ordering::Relaxed);
        }
        result.map_err(|message| {
            self.inner.shared.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %message, "event store write failed; the store is poisoned");
            WriteError::Io(message)
        })
    }
}

impl EventStore for RocksStore {
    fn submit(&self, request: AppendRequest) -> PendingAppend {
        if let Err(error) = validate::append_request(&request, &self.inner.options) {
            return PendingAppend::ready(Err(error));
        }
        if let Err(error) = self.writable() {
            return PendingAppend::ready(Err(error));
        }
        let records: Vec<Vec<Vec<u8>>> = request
            .streams
            .iter()
            .map(|part| {
                part.events
                    .iter()
                    .map(|e| codec::encode_event(&part.stream, e))
                    .collect()
            })
            .collect();
        let bytes = records.iter().flatten().map(Vec::len).sum();
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            work: Work::Append { request, records },
            bytes,
            reply,
        };
        self.queue(job, receiver)
    }

    fn submit_deletion(&self, request: DeleteRequest) -> PendingAppend {
        if let Err(error) = validate::delete_request(&request) {
            return PendingAppend::ready(Err(error));
        }
        if let Err(error) = self.writable() {
            return PendingAppend::ready(Err(error));
        }
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            work: Work::Delete(request),
            bytes: 0,
            reply,
        };
        self.queue(job, receiver)
    }

    fn stream_info(&self, stream: &StreamId) -> Result<StreamInfo, ReadError> {
        let version = self.stream_version(stream)?;
        let meta = self.stream_meta(stream)?;
        Ok(StreamInfo {
            version,
            first_version: meta.map_or(1, |m| m.first_version),
            tombstoned: meta.is_some_and(|m| m.tombstoned),
        })
    }

    fn deletion_record(
        &self,
        stream: &StreamId,
        cache_only: bool,
    ) -> Result<Cached<Option<DeletionRecord>>, ReadError> {
        let key = stream.as_str().as_bytes();
        match self.inner.db.get_pinned_cf_opt(
            self.cf(CF_STREAM_META)?,
            key,
            &read_options(cache_only),
        ) {
            Ok(Some(value)) => Ok(Cached::Ready(Some(codec::decode_stream_meta(key, &value)?))),
            Ok(None) => Ok(Cached::Ready(None)),
            Err(error) if error.kind() == rocksdb::ErrorKind::Incomplete => Ok(Cached::NeedsIo),
            Err(error) => Err(engine(error)),
        }
    }

    fn subject_key(&self, subject: &str) -> Result<Option<crate::SubjectKey>, ReadError> {
        crate::subjects::check(subject)?;
        self.get_decoded(CF_SUBJECT_KEYS, subject.as_bytes(), crate::subjects::decode)
    }

    fn create_subject_key(
        &self,
        subject: &str,
        key: [u8; crate::SUBJECT_KEY_BYTES],
    ) -> Result<crate::SubjectKey, WriteError> {
        self.create_subject_key_now(subject, key)
    }

    fn forget_subject(&self, subject: &str) -> Result<bool, WriteError> {
        self.forget_subject_now(subject)
    }

    fn enforce_retention(&self) -> Result<u64, AppendError> {
        self.writable()?;
        let (reply, receiver) = oneshot::channel();
        self.inner
            .sender
            .send(Message::Sweep(reply))
            .map_err(|_| AppendError::Closed)?;
        receiver.recv().unwrap_or(Err(AppendError::Closed))
    }

    fn head(&self) -> u64 {
        self.inner.shared.head.load(Ordering::Acquire)
    }

    fn stream_version(&self, stream: &StreamId) -> Result<u64, ReadError> {
        let head = self.head();
        let iter = stream_entries_backward(&self.inner.db, self.cf(CF_STREAMS)?, stream.as_str());
        for item in iter {
            let (key, value) = item.map_err(engine)?;
            // Entries of a batch not yet durable are skipped.
            if codec::decode_stream_index(&key, &value)? <= head {
                let (_, version) = codec::parse_stream_key(&key).ok_or_else(|| Corruption {
                    keyspace: CF_STREAMS,
                    key: key.to_vec(),
                    kind: CorruptionKind::MalformedKey,
                })?;
                return Ok(version);
            }
        }
        // No index entry: a new stream, or one whose events were all
        // removed, whose version its lifecycle record keeps.
        Ok(self.stream_meta(stream)?.map_or(0, |m| m.version))
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        match self.read_stream_tier(stream, from, direction, max_count, false)? {
            Cached::Ready(events) => Ok(events),
            Cached::NeedsIo => Err(ReadError::Io("a blocking read reported incomplete".into())),
        }
    }

    /// Reads with RocksDB's block-cache tier: memtables and block cache only.
    fn read_stream_cached(
        &self,
        stream: &StreamId,
        from: u64,
        max_count: usize,
    ) -> Result<Cached<Vec<RecordedEvent>>, ReadError> {
        self.read_stream_tier(stream, from, Direction::Forward, max_count, true)
    }

    /// Reads with RocksDB's block-cache tier: memtables and block cache only.
    fn load_snapshot_cached(
        &self,
        stream: &StreamId,
    ) -> Result<Cached<Option<Snapshot>>, ReadError> {
        let key = stream.as_str().as_bytes();
        match self
            .inner
            .db
            .get_pinned_cf_opt(self.cf(CF_SNAPSHOTS)?, key, &read_options(true))
        {
            Ok(Some(bytes)) => Ok(Cached::Ready(Some(codec::decode_snapshot(key, &bytes)?))),
            Ok(None) => Ok(Cached::Ready(None)),
            Err(error) if error.kind() == rocksdb::ErrorKind::Incomplete => Ok(Cached::NeedsIo),
            Err(error) => Err(engine(error)),
        }
    }

    fn read_all(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<GlobalSlice, ReadError> {
        self.read_all_decoded(from, max_count, filter)
    }

    fn read_all_stored(
        &self,
        from: u64,
        max_count: usize,
        filter: &Filter,
        room: Vec<u8>,
    ) -> Result<crate::StoredSlice, ReadError> {
        self.read_all_encoded(from, max_count, filter, room)
    }

    fn save_snapshot(&self, stream: &StreamId, snapshot: &Snapshot) -> Result<(), WriteError> {
        if snapshot.state.len() > self.inner.options.payload_bytes_max {
            return Err(WriteError::ValueTooLarge {
                bytes: snapshot.state.len(),
                limit: self.inner.options.payload_bytes_max,
            });
        }
        let cf = self
            .cf(CF_SNAPSHOTS)
            .map_err(|e| WriteError::Io(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf,
            stream.as_str().as_bytes(),
            codec::encode_snapshot(snapshot),
        );
        self.write_direct(batch, DirectSync::Covered)
    }

    fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, ReadError> {
        self.get_decoded(
            CF_SNAPSHOTS,
            stream.as_str().as_bytes(),
            codec::decode_snapshot,
        )
    }

    fn checkpoint(&self, name: &str) -> Result<Option<u64>, ReadError> {
        validate::name(name)?;
        let key = name.as_bytes();
        match self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_CHECKPOINTS)?, key)
            .map_err(engine)?
        {
            Some(bytes) => Ok(Some(codec::decode_checkpoint(key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn read_model_get(&self, model: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        validate::name(model)?;
        let key = codec::read_model_key(model, key);
        match self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_READ_MODELS)?, &key)
            .map_err(engine)?
        {
            Some(bytes) => Ok(Some(codec::decode_opaque(CF_READ_MODELS, &key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn read_model_scan(
        &self,
        model: &str,
        prefix: &[u8],
        max_count: usize,
    ) -> Result<Vec<ReadModelEntry>, ReadError> {
        validate::name(model)?;
        let start = codec::read_model_key(model, prefix);
        let model_prefix_len = model.len() + 1;
        let iter = self.inner.db.iterator_cf(
            self.cf(CF_READ_MODELS)?,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            if out.len() >= max_count {
                break;
            }
            let (key, value) = item.map_err(engine)?;
            if !key.starts_with(&start) {
                break;
            }
            let value = codec::decode_opaque(CF_READ_MODELS, &key, &value)?;
            out.push((key[model_prefix_len..].to_vec(), value));
        }
        Ok(out)
    }

    fn commit_read_model(&self, batch: ReadModelBatch) -> Result<(), WriteError> {
        validate::read_model_batch(&batch, &self.inner.options)?;
        let missing = |e: ReadError| WriteError::Io(e.to_string());
        let models = self.cf(CF_READ_MODELS).map_err(missing)?;
        let checkpoints = self.cf(CF_CHECKPOINTS).map_err(missing)?;
        let mut write = WriteBatch::default();
        put_read_model(&mut write, [models, checkpoints], &batch);
        let sync = if batch.relaxed {
            DirectSync::Covered
        } else {
            DirectSync::Own
        };
        self.write_direct(write, sync)
    }

    fn verify(&self) -> Result<VerifyReport, ReadError> {
        verify::run(self, &|_| {})
    }

    fn command_outcome(&self, id: CommandId) -> Result<Option<AppendOutcome>, ReadError> {
        match self.command_outcome_tier(id, false)? {
            Cached::Ready(outcome) => Ok(outcome),
            Cached::NeedsIo => Err(ReadError::Io("a blocking read reported incomplete".into())),
        }
    }

    /// Reads with RocksDB's block-cache tier: memtables and block cache only.
    fn command_outcome_cached(
        &self,
        id: CommandId,
    ) -> Result<Cached<Option<AppendOutcome>>, ReadError> {
        self.command_outcome_tier(id, true)
    }

    fn set_commit_listener(&self, listener: Arc<dyn CommitListener>) {
        *self
            .inner
            .shared
            .listener
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    fn writer_stats(&self) -> WriterStats {
        let shared = &self.inner.shared;
        WriterStats {
            batches: shared.stats_batches.load(Ordering::Relaxed),
            syncs: shared.stats_syncs.load(Ordering::Relaxed),
            direct_syncs: shared.stats_direct_syncs.load(Ordering::Relaxed),
            appends: shared.stats_appends.load(Ordering::Relaxed),
            events: shared.stats_events.load(Ordering::Relaxed),
        }
    }
}

/// Adds `batch`'s changes and checkpoint to `write` (the read models' and
/// checkpoints' column families, in that order).
pub(super) fn put_read_model(
    write: &mut WriteBatch,
    [models, checkpoints]: [&rocksdb::ColumnFamily; 2],
    batch: &ReadModelBatch,
) {
    for (model, op) in &batch.ops {
        match op {
            ReadModelOp::Put { key, value } => {
                write.put_cf(
                    models,
                    codec::read_model_key(model, key),
                    codec::encode_opaque(value),
                );
            }
            ReadModelOp::Delete { key } => {
                write.delete_cf(models, codec::read_model_key(model, key));
            }
        }
    }
    if let Some((name, position)) = &batch.checkpoint {
        write.put_cf(
            checkpoints,
            name.as_bytes(),
            codec::encode_checkpoint(*position),
        );
    }
}
