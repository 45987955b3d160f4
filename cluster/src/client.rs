//! `ClusterClient`: sends commands to a cluster without being a node — a
//! NATS connection that knows the partition count and speaks the command
//! routes (`route.rs`). A node sends the commands it does not own the same
//! way.

use crate::log::LogError;
use crate::partition::partition_of;
use crate::route::{self, ClusterCommandError, RoutedReply};
use crate::wire::Subjects;
use eventfold_runtime::domain::{Aggregate, StreamId};
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
