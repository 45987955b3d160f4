//! The read models of single-runners, written through the log: a
//! process manager's batch (its instances, outbox, timers and checkpoint
//! in `$pm.{name}`), or an event handler's (its checkpoint and dead
//! letters), is published under its claim's fence and answered once this
//! node's replica has applied it, so every node holds what the holder last
//! wrote and the next holder starts from it. Every other read model is the
//! node's own (a projection each node keeps from its own replica) and is
//! written to the replica directly.
//!
//! A batch whose answer does not come is sent again with the same message
//! ids, up to [`PUBLISH_ATTEMPTS_MAX`](crate::log::PUBLISH_ATTEMPTS_MAX); then the claim is given up (the
//! host stands down), and the next claim's marker fences whatever may
//! still land.

use crate::follower::Progress;
use crate::log::{AfterFailure, Log, LogError, REPLICA_WAIT_MAX, WriteAttempts};
use crate::singletons::Singletons;
use crate::wire::encode_read_model;
use eventfold_runtime::storage::{ReadModelBatch, Unavailability, WriteError};
use std::sync::Arc;

/// Writes single-runners' read models through the log.
#[derive(Clone)]
pub(crate) struct ModelWriter {
    pub log: Log,
    pub progress: Progress,
    pub singletons: Arc<Singletons>,
    pub io: tokio::runtime::Handle,
}

impl ModelWriter {
    /// The single-runner `batch` belongs to (see [`owner_of`]).
    pub fn owner_of(&self, batch: &ReadModelBatch) -> Result<Option<(String, u32)>, WriteError> {
        owner_of(&self.singletons, batch)
    }

    /// Publishes `batch` of single-runner `name` under its claim and
    /// waits until the replica applied it. Blocks the calling thread (a
    /// process manager's host, which serves nothing else).
    pub fn commit(&self, name: &str, fence: u32, batch: ReadModelBatch) -> Result<(), WriteError> {
        let unavailable = |reason| WriteError::Unavailable {
            model: name.to_owned(),
            reason,
        };
        let Some(claim) = self.singletons.active(name) else {
            return Err(unavailable(Unavailability::NotHeld {
                name: name.to_owned(),
            }));
        };
        let chunks =
            encode_read_model(&batch).map_err(|e| unavailable(Unavailability::Refused(e)))?;
        let commit = format!(
            "rm.{fence}.{}.{}",
            claim.fence.sequence,
            self.singletons.next_commit()
        );
        let writer = self.clone();
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.io.spawn(async move {
            let result = writer.publish(fence, claim, chunks, &commit).await;
            let _ = answer.send(result);
        });
        let result = answered.recv().unwrap_or(Err(Unavailability::Stopping));
        if let Err(reason) = &result
            && !matches!(reason, Unavailability::Refused(_))
        {
            // Not written, or written and not yet applied here: either way
            // the host must not go on from what it holds. The claim is
            // given up, the host stands down, and under the next claim
            // (whose marker the replica applies first) it starts from
            // what the log holds.
            self.singletons.fenced(name, claim.fence.sequence);
        }
        result.map_err(unavailable)
    }

    async fn publish(
        &self,
        fence: u32,
        claim: crate::claims::Claim,
        chunks: Vec<bytes::Bytes>,
        commit: &str,
    ) -> Result<(), Unavailability> {
        let mut attempts = WriteAttempts::new();
        let landed = loop {
            match self
                .log
                .write_read_model(fence, claim.fence, chunks.clone(), commit)
                .await
            {
                Ok(landed) => break landed.last_sequence,
                // Sent before by an attempt whose answer was lost: it is
                // in the log, at most at its end.
                Err(LogError::AlreadyLanded { .. }) => {
                    break self
                        .log
                        .last_sequence()
                        .await
                        .map_err(|e| Unavailability::NoAnswer(e.to_string()))?;
                }
                // The caller gives the claim up on every failure but a
                // refusal (`write`).
                Err(LogError::WrongLastSequence { .. }) => {
                    return Err(Unavailability::Fenced {
                        partition: fence,
                        token: claim.token,
                    });
                }
                Err(error) => {
                    let reason = error.to_string();
                    return Err(match attempts.after(&error).await {
                        AfterFailure::SendAgain => continue,
                        AfterFailure::Leaderless => Unavailability::Leaderless(reason),
                        AfterFailure::NoAnswer => Unavailability::NoAnswer(reason),
                        AfterFailure::Refused => Unavailability::Refused(reason),
                    });
                }
            }
        };
        match tokio::time::timeout(REPLICA_WAIT_MAX, self.progress.wait_for(landed)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Unavailability::Stopping),
        }
    }
}

/// The single-runner `batch` belongs to, with its fence; `None` for a
/// batch of the node's own read models. A batch that mixes a
/// single-runner's names with any other is refused.
fn owner_of(
    singletons: &Singletons,
    batch: &ReadModelBatch,
) -> Result<Option<(String, u32)>, WriteError> {
    let mut names = batch
        .checkpoint
        .iter()
        .map(|(name, _)| name.as_str())
        .chain(batch.ops.iter().map(|(model, _)| model.as_str()));
    let Some(runner) = names.clone().find_map(|name| singletons.runner_of(name)) else {
        return Ok(None);
    };
    if !names.all(|name| singletons.writes(runner, name)) {
        return Err(mixed());
    }
    Ok(singletons
        .fence(runner)
        .map(|fence| (runner.to_owned(), fence)))
}

fn mixed() -> WriteError {
    WriteError::Unsupported {
        operation: "a batch mixing a process manager's state with other read models",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::singletons::{FenceClash, fence_of};

    #[test]
    fn a_batch_belongs_to_its_process_manager_or_to_the_node() -> Result<(), FenceClash> {
        let runner = |name: &str| eventfold_runtime::SingleRunner {
            name: name.into(),
            kind: eventfold_runtime::RunnerKind::ProcessManager,
        };
        let singletons = Singletons::new(vec![runner("transfers"), runner("billing")])?;
        let mut state = ReadModelBatch::new();
        state.put("$pm.transfers", b"i1".to_vec(), b"s".to_vec());
        state.set_checkpoint("$pm.transfers", 9);
        assert_eq!(
            owner_of(&singletons, &state),
            Ok(Some(("transfers".into(), fence_of("transfers"))))
        );
        let mut projection = ReadModelBatch::new();
        projection.put("balances", b"a".to_vec(), b"1".to_vec());
        projection.set_checkpoint("balances", 9);
        assert_eq!(owner_of(&singletons, &projection), Ok(None));
        // Not one of this node's process managers: the node's own.
        let mut unknown = ReadModelBatch::new();
        unknown.put("$pm.other", b"k".to_vec(), b"v".to_vec());
        assert_eq!(owner_of(&singletons, &unknown), Ok(None));
        let mut mixed_models = state.clone();
        mixed_models.put("balances", b"a".to_vec(), b"1".to_vec());
        assert!(matches!(
            owner_of(&singletons, &mixed_models),
            Err(WriteError::Unsupported { .. })
        ));
        let mut two = state;
        two.put("$pm.billing", b"k".to_vec(), b"v".to_vec());
        assert!(matches!(
            owner_of(&singletons, &two),
            Err(WriteError::Unsupported { .. })
        ));
        Ok(())
    }
}
