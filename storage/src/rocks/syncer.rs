//! The syncer: under `Durability::Sync`, makes written batches durable
//! (one WAL sync for every batch waiting), then advances the committed head
//! and answers their callers; and what happens when a write or sync fails.

use super::Shared;
use crate::api::AppendOutcome;
use crate::error::AppendError;
use crate::options::StoreOptions;
use eventfold_domain::RecordedEvent;
use rocksdb::DB;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

/// Where an append's (or a deletion's) outcome goes.
pub(crate) type Reply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

/// A batch that is written and waits to be made durable and answered.
pub(crate) struct Written {
    /// The last position the batch holds.
    pub(crate) last_position: u64,
    pub(crate) appends: u64,
    pub(crate) event_count: u64,
    pub(crate) answers: Vec<(Reply, Decision)>,
    /// The events written, for the commit listener (empty without one).
    pub(crate) events: Vec<RecordedEvent>,
}

/// How one job of a batch was decided.
pub(crate) enum Decision {
    Write(AppendOutcome),
    Done(Result<AppendOutcome, AppendError>),
}

/// Most written batches waiting for the syncer; past it the writer waits.
pub(crate) const SYNC_QUEUE_BATCHES_MAX: usize = 64;

/// Makes batches durable and answers them, under `Durability::Sync`.
pub(crate) struct Syncer {
    pub db: Arc<DB>,
    pub shared: Arc<Shared>,
    pub options: Arc<StoreOptions>,
    pub receiver: Receiver<Written>,
}

impl Syncer {
    pub(crate) fn run(self) {
        while let Ok(first) = self.receiver.recv() {
            let mut batches = vec![first];
            while batches.len() < SYNC_QUEUE_BATCHES_MAX {
                match self.receiver.try_recv() {
                    Ok(written) => batches.push(written),
                    Err(_) => break,
                }
            }
            if self.shared.poisoned.load(Ordering::SeqCst) {
                for written in batches {
                    fail(&self.shared, written, &BatchFailure::EarlierFailed);
                }
                continue;
            }
            let writes = batches.iter().any(|w| w.appends > 0);
            // One sync covers every batch written before it started.
            let synced = if !writes {
                Ok(())
            } else if self
                .options
                .faults
                .as_ref()
                .is_some_and(|f| f.should_fail_sync())
            {
                Err(BatchFailure::InjectedSync)
            } else {
                self.db.flush_wal(true).map_err(BatchFailure::Engine)
            };
            match synced {
                Ok(()) => {
                    if writes {
                        self.shared.stats_syncs.fetch_add(1, Ordering::Relaxed);
                    }
                    complete(&self.shared, batches)
                }
                Err(failure) => {
                    for written in batches {
                        fail(&self.shared, written, &failure);
                    }
                }
            }
        }
    }
}

/// Advances the head past durable batches (in order), then answers them.
pub(crate) fn complete(shared: &Shared, batches: Vec<Written>) {
    let mut head = None;
    for written in &batches {
        if written.appends > 0 {
            head = Some(written.last_position);
        }
        shared
            .stats_appends
            .fetch_add(written.appends, Ordering::Relaxed);
        shared
            .stats_events
            .fetch_add(written.event_count, Ordering::Relaxed);
        if written.appends > 0 {
            shared.stats_batches.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(head) = head {
        // Invariant 1: the head moves only after the batch is durable.
        shared.head.store(head, Ordering::Release);
    }
    let listener = shared.listener();
    let mut answers = Vec::with_capacity(batches.len());
    for written in batches {
        if let Some(listener) = &listener
            && !written.events.is_empty()
        {
            listener.committed(Arc::from(written.events));
        }
        answers.push(written.answers);
    }
    for answers in answers {
        for (reply, decision) in answers {
            let answer = match decision {
                Decision::Write(outcome) => Ok(outcome),
                Decision::Done(result) => result,
            };
            let _ = reply.send(answer);
        }
    }
}

/// Why a batch did not become durable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchFailure {
    /// RocksDB failed the write or the WAL sync.
    #[error("{}", .0.as_ref())]
    Engine(rocksdb::Error),
    /// A write failure injected by a test's `FaultInjector`.
    #[error("injected write failure")]
    InjectedWrite,
    /// A sync failure injected by a test's `FaultInjector`.
    #[error("injected sync failure")]
    InjectedSync,
    /// The syncer thread is gone.
    #[error("the syncer stopped")]
    SyncerStopped,
    /// The store was poisoned by an earlier batch.
    #[error("an earlier write or sync failed")]
    EarlierFailed,
}

/// Poisons the store and answers a batch whose write or sync failed.
pub(crate) fn fail(shared: &Shared, written: Written, failure: &BatchFailure) {
    if !shared.poisoned.swap(true, Ordering::SeqCst) {
        tracing::error!(error = %failure, "event store write failed; the store is poisoned");
    }
    let message = failure.to_string();
    for (reply, decision) in written.answers {
        let answer = match decision {
            // Whether it reached the disk is unknown.
            Decision::Write(_) => Err(AppendError::Io(message.clone())),
            // Refusals decided against batches that did not land may be
            // stale; the store cannot write anyway.
            Decision::Done(_) => Err(AppendError::Poisoned),
        };
        let _ = reply.send(answer);
    }
}
