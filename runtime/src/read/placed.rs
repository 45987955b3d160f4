//! A consumer (an event handler, or a projection) under a [`Placement`]:
//! it runs only while its runtime holds the grant for it, stops at once
//! (writing nothing more) when the grant goes, and under the next grant
//! starts again from its stored checkpoint and dead letters. While it
//! stands by, the checkpoint the runtime that runs it wrote (which a
//! cluster's replica applies) is what its status and read-your-writes
//! waits see. Without a placement, or one that does not decide for it, it
//! simply runs.

use super::consumer::{Consumer, Control, Served};
use crate::error::ParkedError;
use crate::read::projection::ConsumerState;
use crate::runners::Placement;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a handler standing by looks for its grant.
const STANDBY_POLL: Duration = Duration::from_millis(10);

impl Consumer {
    pub(crate) fn run(mut self) {
        let placed = self
            .placement
            .clone()
            .filter(|(placement, name)| placement.places(name));
        let Some((placement, name)) = placed else {
            if let Served::Failed = self.serve(None) {
                self.stopped();
            }
            return;
        };
        loop {
            let Some(grant) = self.await_grant(&*placement, &name) else {
                return;
            };
            match self.serve(Some((&*placement, &name, grant))) {
                Served::Told => return,
                Served::Failed => return self.stopped(),
                Served::Lost => {
                    tracing::info!(consumer = %self.shared.id, grant, "standing down: the grant moved");
                    placement.stood_down(&name, grant);
                    // Counted again from the store under the next grant.
                    self.shared.parked.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// Waits (answering control messages) until the placement grants
    /// `name` here; `None` when told to stop first.
    fn await_grant(&mut self, placement: &dyn Placement, name: &str) -> Option<u64> {
        loop {
            if let Some(grant) = placement.grant(name) {
                self.shared.set_state(ConsumerState::CatchingUp);
                return Some(grant);
            }
            self.shared.set_state(ConsumerState::Standby);
            if let Ok(Some(checkpoint)) = self.store.checkpoint(&self.shared.id)
                && checkpoint > *self.shared.processed.borrow()
            {
                self.shared.processed.send_replace(checkpoint);
            }
            loop {
                match self.control.try_recv() {
                    Ok(Control::Stop) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        return None;
                    }
                    Ok(Control::Retry(_, reply) | Control::Skip(_, reply)) => {
                        let _ = reply.send(Err(ParkedError::Elsewhere.into()));
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                }
            }
            std::thread::sleep(STANDBY_POLL);
        }
    }
}
