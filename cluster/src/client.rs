//! `ClusterClient`: sends commands to a cluster without being a node — a
//! NATS connection that knows the partition count and speaks the command
//! routes (`route.rs`). A node sends the commands it does not own the same
//! way.

use crate::log::LogError;
use crate::partition::partition_of;
use crate::route::{self, ClusterCommandError, RoutedReply};
use crate::wire::Subjects;
use eventfold_runtime::domain::{Aggregate, StreamId};
use eventfold_runtime::process::{CommandSender, SentCommand};
use eventfold_runtime::storage::{AppendError, Unavailability};
use eventfold_runtime::{CommandError, CommandOutcome, ExecuteOptions};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long a routed command waits for its owner's answer when its
/// options give no timeout.
pub const ROUTED_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of a cluster's command routes.
#[derive(Clone)]
pub struct ClusterClient {
    client: async_nats::Client,
    subjects: Subjects,
    partitions: u32,
}

impl ClusterClient {
    /// Connects to the cluster's NATS servers; `prefix` and `partitions`
    /// are the cluster's (`LogConfig::prefix`, `NodeConfig::partitions`).
    pub async fn connect(urls: &[String], prefix: &str, partitions: u32) -> Result<Self, LogError> {
        let mut servers = Vec::with_capacity(urls.len());
        for url in urls {
            servers.push(
                url.parse::<async_nats::ServerAddr>()
                    .map_err(|e| LogError::Address(url.clone(), e.to_string()))?,
            );
        }
        let client = async_nats::ConnectOptions::new().connect(servers).await?;
        Ok(Self::from_connection(
            client,
            Subjects::new(prefix),
            partitions,
        ))
    }

    /// A client on an existing connection.
    pub fn from_connection(
        client: async_nats::Client,
        subjects: Subjects,
        partitions: u32,
    ) -> Self {
        Self {
            client,
            subjects,
            partitions: partitions.max(1),
        }
    }

    /// The partition of aggregate `id` of `A`.
    pub fn partition_of<A: Aggregate>(&self, id: &str) -> Option<u32> {
        let stream = StreamId::for_aggregate(A::KIND, id).ok()?;
        Some(partition_of(stream.as_str(), self.partitions))
    }

    /// The partition of aggregate `id` of `A`, or why the id is invalid.
    pub(crate) fn partition_checked<A: Aggregate>(
        &self,
        id: &str,
    ) -> Result<u32, ClusterCommandError<A::Error>> {
        let stream = StreamId::for_aggregate(A::KIND, id)
            .map_err(|e| ClusterCommandError::Local(CommandError::InvalidId(e)))?;
        Ok(partition_of(stream.as_str(), self.partitions))
    }

    /// Sends a command of `A` to the owner of its partition and waits for
    /// its answer. `OwnerUnavailable` and `Timeout` mean: retry with the
    /// same command id.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        options: ExecuteOptions,
    ) -> Result<CommandOutcome<A::Event>, ClusterCommandError<A::Error>>
    where
        A::Error: DeserializeOwned,
    {
        let partition = self.partition_checked::<A>(id)?;
        let timeout = options.timeout.unwrap_or(ROUTED_TIMEOUT);
        let routed =
            route::routed::<A>(id, &command, &options).map_err(ClusterCommandError::Encoding)?;
        let bytes = route::encode(&routed).map_err(ClusterCommandError::Encoding)?;
        let subject = self.subjects.commands(partition);
        let reply = match tokio::time::timeout(timeout, self.client.request(subject, bytes.into()))
            .await
        {
            Err(_) => return Err(ClusterCommandError::Timeout(timeout)),
            Ok(Err(error)) => {
                return Err(match error.kind() {
                    async_nats::RequestErrorKind::TimedOut => ClusterCommandError::Timeout(timeout),
                    // No responders, or the connection is re-established.
                    _ => ClusterCommandError::OwnerUnavailable { partition },
                });
            }
            Ok(Ok(message)) => route::decode::<RoutedReply>(&message.payload)
                .map_err(ClusterCommandError::Encoding)?,
        };
        route::answer_of::<A>(reply)
    }
}

/// What a node's process managers send their commands with: set when
/// the node starts.
pub(crate) struct SenderParts {
    pub client: ClusterClient,
    pub claims: std::sync::Arc<crate::claims::Claims>,
    pub io: tokio::runtime::Handle,
}

/// Sends process managers' commands for `A` to the owner of their
/// partition; those of partitions this node holds run here.
pub(crate) struct RoutedSender<A> {
    pub parts: std::sync::Arc<std::sync::OnceLock<SenderParts>>,
    pub kind: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> CommandSender<A> for RoutedSender<A>
where
    A::Error: DeserializeOwned,
{
    fn hosted_here(&self, id: &str) -> bool {
        let Some(parts) = self.parts.get() else {
            return true;
        };
        parts
            .client
            .partition_of::<A>(id)
            .is_none_or(|partition| parts.claims.active(partition).is_some())
    }

    fn send(&self, id: &str, command: A::Command, options: ExecuteOptions) -> SentCommand<A> {
        let Some(parts) = self.parts.get() else {
            return Box::pin(async { Err(CommandError::ShutDown) });
        };
        let client = parts.client.clone();
        let io = parts.io.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let stream = StreamId::for_aggregate(A::KIND, &id).map_err(CommandError::InvalidId)?;
            // On the node's I/O runtime: the host's own runtime runs only
            // while the host waits.
            let sent = io.spawn(async move { client.execute::<A>(&id, command, options).await });
            let answer = sent.await.map_err(|_| CommandError::ShutDown)?;
            answer.map_err(|error| as_command_error(error, stream))
        })
    }
}

/// A routed command's error as the runtime's: those that say "retry with
/// the same command id" as an unavailable log, which dispatch retries.
fn as_command_error<E: std::error::Error + 'static>(
    error: ClusterCommandError<E>,
    stream: StreamId,
) -> CommandError<E> {
    let unavailable = |reason| CommandError::Store(AppendError::Unavailable { stream, reason });
    match error {
        ClusterCommandError::Rejected(error) => CommandError::Rejected(error),
        ClusterCommandError::Local(error) => error,
        ClusterCommandError::Timeout(limit) => CommandError::Timeout(limit),
        ClusterCommandError::OwnerUnavailable { partition }
        | ClusterCommandError::Moved { partition } => {
            unavailable(Unavailability::NotOwner { partition })
        }
        ClusterCommandError::Remote(words) => unavailable(Unavailability::NoAnswer(format!(
            "the owner failed it: {words}"
        ))),
        ClusterCommandError::Encoding(words) => CommandError::Encode(words),
    }
}
