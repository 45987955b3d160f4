//! Snapshots: taken from the pending state when a command brings the
//! aggregate `snapshot_every_events` past the last one, written on the
//! blocking pool once that command's append is durable, in order.

use super::AggregateActor;
use crate::metric_names::SNAPSHOTS_TOTAL;
use actix::prelude::*;
use eventfold_domain::Aggregate;
use eventfold_storage::{Snapshot, payload};
use std::sync::Arc;

impl<A: Aggregate> AggregateActor<A> {
    /// A snapshot of the pending state, if one is due: the version has
    /// passed the last snapshot's by `snapshot_every_events` and no other
    /// snapshot is taken and not yet written. Its version becomes the last
    /// snapshot's.
    pub(super) fn take_snapshot(&mut self) -> Option<Snapshot> {
        let every = self.link.shared.settings.snapshot_every_events?;
        if self.book.snapshot_taken
            || self.book.version < self.book.snapshot_version.saturating_add(every)
        {
            return None;
        }
        match payload::encode(&self.state) {
            Ok(state) => {
                self.book.snapshot_version = self.book.version;
                self.book.snapshot_taken = true;
                Some(Snapshot {
                    snapshot_version: A::SNAPSHOT_VERSION,
                    stream_version: self.book.version,
                    state,
                })
            }
            Err(error) => {
                tracing::warn!(stream = %self.stream, %error, "state could not be encoded for a snapshot");
                None
            }
        }
    }

    /// Writes a taken snapshot of durable state on the blocking pool, or,
    /// while the one before it is being written, once that is done.
    pub(super) fn save_snapshot(&mut self, snapshot: Box<Snapshot>, ctx: &mut Context<Self>) {
        if self.book.snapshot_saving {
            self.book.queues.busy().landed_snapshot = Some(snapshot);
            return;
        }
        self.book.snapshot_taken = false;
        self.book.snapshot_saving = true;
        let store = Arc::clone(&self.link.shared.store);
        let stream = self.stream.clone();
        let task = tokio::task::spawn_blocking(move || {
            // A lost snapshot only costs a longer replay.
            let result = match store.save_snapshot(&stream, &snapshot) {
                Ok(()) => "saved",
                Err(error) => {
                    tracing::warn!(%stream, %error, "snapshot not saved");
                    "failed"
                }
            };
            metrics::counter!(SNAPSHOTS_TOTAL, "kind" => A::KIND, "result" => result).increment(1);
        });
        // Dropped if the actor stops first (shutdown); the write still
        // finishes.
        ctx.spawn(task.into_actor(self).map(|_, actor, ctx| {
            actor.book.snapshot_saving = false;
            if let Some(landed) = actor
                .book
                .queues
                .0
                .as_mut()
                .and_then(|busy| busy.landed_snapshot.take())
            {
                actor.save_snapshot(landed, ctx);
            }
            actor.drain(ctx);
        }));
    }
}
