//! The follower: copies the log into the node's replica, in order, from
//! where the replica ends. Every read of the node (aggregate loads,
//! projections, process managers, command-id checks) is a read of that
//! replica, so an append is answered only once the follower has applied
//! it here.
//!
//! A message that cannot be what eventfold wrote, a gap, or an append that
//! does not continue its stream's history stops the follower with the
//! error: the replica refuses to fold a forked or damaged log, and the
//! node's appends then fail (`Stopping`) instead of deciding on it.

use crate::log::{Fence, Log};
use crate::wire::{
    AppendAssembler, EventMessage, ReadModelAssembler, WireError, decode_event, token_of,
};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use eventfold_runtime::domain::Timestamp;
use eventfold_runtime::storage::{AppendError, EventStore, PendingAppend, Replicated, RocksStore};
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// Replicated entries handed to the replica's writer and not yet applied:
/// the follower waits for the oldest before it hands over more.
pub const REPLICA_IN_FLIGHT_MAX: usize = 1024;

/// The pause before the follower reads the log again after it could not.
pub const FOLLOW_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// How long the follower waits for a message before it asks the log how
/// far it goes: a consumer that delivers nothing while the log is ahead
/// (its server lost the stream's leadership and the consumer did not
/// notice) is made again from where the replica is.
pub const FOLLOW_IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the follower stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    /// The log could not be read.
    #[error("reading the log: {0}")]
    Log(String),
    /// A message is not what eventfold writes.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The replica refused an entry (a gap, a fork) or could not write.
    #[error("the replica refused position {position}: {source}")]
    Replica {
        /// Where.
        position: u64,
        /// Why.
        #[source]
        source: AppendError,
    },
    /// An event was written under a token that is not its partition's
    /// current claim: a fencing failure, which the log's checks exclude.
    #[error(
        "position {position}: written under token {token} while partition {partition}'s claim is {current}"
    )]
    Fencing {
        /// Where.
        position: u64,
        /// The partition.
        partition: u32,
        /// The event's token.
        token: u64,
        /// The claim's token.
        current: u64,
    },
}

/// How far the replica has applied the log, and the claim markers seen.
#[derive(Clone)]
pub struct Progress {
    applied: watch::Receiver<Applied>,
    fences: Arc<RwLock<HashMap<u32, Fence>>>,
}

/// The follower's state: the last position applied, or why it stopped.
#[derive(Clone, Debug)]
pub enum Applied {
    /// Applied up to this position.
    Through(u64),
    /// Stopped after this position.
    Stopped(u64, FollowError),
}

impl Progress {
    /// The last position applied.
    pub fn applied(&self) -> u64 {
        match &*self.applied.borrow() {
            Applied::Through(p) | Applied::Stopped(p, _) => *p,
        }
    }

    /// Waits until `position` is applied; the follower's error if it
    /// stopped before.
    pub async fn wait_for(&self, position: u64) -> Result<(), FollowError> {
        let mut applied = self.applied.clone();
        loop {
            match &*applied.borrow_and_update() {
                Applied::Through(p) if *p >= position => return Ok(()),
                Applied::Stopped(p, _) if *p >= position => return Ok(()),
                Applied::Stopped(_, error) => return Err(error.clone()),
                Applied::Through(_) => {}
            }
            if applied.changed().await.is_err() {
                return Err(FollowError::Log("the follower ended".into()));
            }
        }
    }

    /// Why the follower stopped, if it did: a node whose replica stopped
    /// cannot hold a partition.
    pub fn stopped(&self) -> Option<FollowError> {
        match &*self.applied.borrow() {
            Applied::Stopped(_, error) => Some(error.clone()),
            Applied::Through(_) => None,
        }
    }

    /// The last claim marker of `partition` the follower applied.
    pub fn fence(&self, partition: u32) -> Option<Fence> {
        self.fences.read().ok()?.get(&partition).copied()
    }
}

/// Starts the follower on the current tokio runtime: it reads the log
/// from the replica's head onwards, forever.
pub fn start(log: Log, replica: RocksStore) -> Progress {
    let head = replica.head();
    let (sender, applied) = watch::channel(Applied::Through(head));
    let fences = Arc::new(RwLock::new(HashMap::new()));
    let progress = Progress {
        applied,
        fences: Arc::clone(&fences),
    };
    tokio::spawn(async move {
        let mut follower = Follower {
            log,
            replica,
            fences,
            sender,
            assembler: AppendAssembler::default(),
            models: ReadModelAssembler::default(),
            pending: VecDeque::new(),
            next: head + 1,
        };
        let error = loop {
            match follower.run().await {
                // The log could not be read for a while (a leader
                // election, a server restarting): read again from where
                // the follower is.
                FollowError::Log(words) => {
                    tracing::warn!(%words, next = follower.next, "reading the log again");
                    tokio::time::sleep(FOLLOW_RETRY_PAUSE).await;
                }
                error => break error,
            }
        };
        let applied = follower.drain().await;
        tracing::error!(%error, applied, "the follower stopped");
        let _ = follower.sender.send(Applied::Stopped(applied, error));
    });
    progress
}

struct Follower {
    log: Log,
    replica: RocksStore,
    fences: Arc<RwLock<HashMap<u32, Fence>>>,
    sender: watch::Sender<Applied>,
    assembler: AppendAssembler,
    models: ReadModelAssembler,
    /// Entries handed to the replica, oldest first, with their last position.
    pending: VecDeque<(u64, PendingAppend)>,
    /// The next position to read.
    next: u64,
}

impl Follower {
    async fn run(&mut self) -> FollowError {
        let stream = match self
            .log
            .jetstream()
            .get_stream(&self.log.config().stream)
            .await
        {
            Ok(stream) => stream,
            Err(error) => return FollowError::Log(error.to_string()),
        };
        let consumer = match stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.next,
                },
                ..Default::default()
            })
            .await
        {
            Ok(consumer) => consumer,
            Err(error) => return FollowError::Log(error.to_string()),
        };
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => return FollowError::Log(error.to_string()),
        };
        loop {
            // Apply what the replica finished while no message waits.
            let message = tokio::select! {
                biased;
                message = tokio::time::timeout(FOLLOW_IDLE_CHECK, messages.next()) => match message {
                    Ok(message) => message,
                    Err(_) => match stream.get_info().await {
                        Ok(info) if info.state.last_sequence >= self.next => {
                            return FollowError::Log(format!(
                                "no message for {FOLLOW_IDLE_CHECK:?} while the log holds {} and the replica ends at {}",
                                info.state.last_sequence,
                                self.next - 1
                            ));
                        }
                        // Nothing more in the log, or it cannot say now:
                        // wait on.
                        _ => continue,
                    },
                },
                done = Self::oldest(&mut self.pending), if !self.pending.is_empty() => {
                    if let Err(error) = self.finish(done) {
                        return error;
                    }
                    continue;
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => return FollowError::Log(error.to_string()),
                None => return FollowError::Log("the log's consumer ended".into()),
            };
            let info = match message.info() {
                Ok(info) => (info.stream_sequence, info.published),
                Err(error) => return FollowError::Log(error.to_string()),
            };
            let (sequence, published) = info;
            if let Err(error) = self.take(&message, sequence, published).await {
                return error;
            }
        }
    }

    async fn oldest(
        pending: &mut VecDeque<(u64, PendingAppend)>,
    ) -> (u64, Result<(), AppendError>) {
        match pending.front_mut() {
            Some((position, waiting)) => {
                let result = (&mut *waiting).await.map(|_| ());
                let position = *position;
                pending.pop_front();
                (position, result)
            }
            None => std::future::pending().await,
        }
    }

    fn finish(
        &mut self,
        (position, result): (u64, Result<(), AppendError>),
    ) -> Result<(), FollowError> {
        result.map_err(|source| FollowError::Replica { position, source })?;
        let _ = self.sender.send(Applied::Through(position));
        Ok(())
    }

    /// Waits for every entry handed over; the last position applied.
    async fn drain(&mut self) -> u64 {
        let mut applied = self.replica.head();
        while let Some((position, waiting)) = self.pending.pop_front() {
            if waiting.await.is_err() {
                break;
            }
            applied = position;
        }
        applied
    }

    async fn take(
        &mut self,
        message: &async_nats::jetstream::Message,
        sequence: u64,
        published: time::OffsetDateTime,
    ) -> Result<(), FollowError> {
        if sequence < self.next {
            // Delivered again after the consumer was recreated.
            return Ok(());
        }
        if sequence > self.next {
            return Err(FollowError::Replica {
                position: sequence,
                source: AppendError::ReplicaOutOfOrder {
                    expected: self.next,
                    found: sequence,
                },
            });
        }
        self.next = sequence + 1;
        let subjects = self.log.subjects();
        let recorded_at = Timestamp::from_micros(
            u64::try_from(published.unix_timestamp_nanos() / 1_000).unwrap_or(0),
        );
        let entry = if let Some(partition) = subjects.fence_partition(&message.subject) {
            let token = message
                .headers
                .as_ref()
                .and_then(|h| h.get(crate::wire::HEADER_TOKEN))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            if let Ok(mut fences) = self.fences.write() {
                fences.insert(partition, Fence { sequence, token });
            }
            Some(Replicated::Skip { position: sequence })
        } else if let Some(partition) = subjects.events_partition(&message.subject) {
            let decoded = decode_event(&EventMessage {
                sequence,
                headers: message.headers.as_ref(),
                payload: &message.payload,
            })?;
            if let Some(current) = self.fence_token(partition)
                && decoded.token != current
            {
                return Err(FollowError::Fencing {
                    position: sequence,
                    partition,
                    token: decoded.token,
                    current,
                });
            }
            self.assembler
                .push(sequence, recorded_at, decoded)?
                .map(Replicated::Append)
        } else if let Some(fence) = subjects.read_model_fence(&message.subject) {
            let message = EventMessage {
                sequence,
                headers: message.headers.as_ref(),
                payload: &message.payload,
            };
            let token = token_of(&message)?;
            if let Some(current) = self.fence_token(fence)
                && token != current
            {
                return Err(FollowError::Fencing {
                    position: sequence,
                    partition: fence,
                    token,
                    current,
                });
            }
            self.models.push(&message)?
        } else {
            // Not a subject of ours (the stream's filter allows none):
            // kept as a position without an event.
            Some(Replicated::Skip { position: sequence })
        };
        if let Some(entry) = entry {
            let last = entry.last_position();
            while self.pending.len() >= REPLICA_IN_FLIGHT_MAX {
                let done = Self::oldest(&mut self.pending).await;
                self.finish(done)?;
            }
            self.pending
                .push_back((last, self.replica.replicate(entry)));
        }
        Ok(())
    }

    fn fence_token(&self, partition: u32) -> Option<u64> {
        self.fences
            .read()
            .ok()?
            .get(&partition)
            .map(|fence| fence.token)
    }
}
