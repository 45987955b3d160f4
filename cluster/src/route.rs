//! Commands across nodes: a command for a partition this node does not
//! hold goes as a NATS request to the partition's command subject, where
//! its owner alone listens (it subscribes while it holds the claim); the
//! owner executes it on its runtime and answers. No listener, or an owner
//! that lost the partition on the way, is
//! [`ClusterCommandError::OwnerUnavailable`]: retry with the same command
//! id, which the log and the replicas' record of applied ids make safe.

use eventfold_runtime::domain::{
    Aggregate, CausationId, CommandId, CorrelationId, ExpectedVersion,
};
use eventfold_runtime::storage::{AppendError, Unavailability};
use eventfold_runtime::{CommandError, CommandOutcome, ExecuteOptions, RuntimeHandle};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The largest command or answer sent between nodes.
pub const ROUTED_BYTES_MAX: usize = 1024 * 1024;

/// Why a command sent through the cluster failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterCommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("the command was refused: {0}")]
    Rejected(#[source] E),
    /// No node holds the aggregate's partition now (a failover, a
    /// hand-off): retry with the same command id.
    #[error("no owner of partition {partition} is available; retry with the same command id")]
    OwnerUnavailable {
        /// The partition.
        partition: u32,
    },
    /// The aggregate's history changed under the command while it was
    /// decided (its partition moved, or a preceding append was refused):
    /// nothing was written; retry with the same command id.
    #[error(
        "the aggregate moved while the command was decided (partition {partition}); retry with the same command id"
    )]
    Moved {
        /// The partition.
        partition: u32,
    },
    /// The command failed on this node's runtime.
    #[error(transparent)]
    Local(CommandError<E>),
    /// The command failed on the owner's runtime; its words.
    #[error("the owner failed the command: {0}")]
    Remote(String),
    /// The owner did not answer in time; the command may have been
    /// executed: retry with the same command id.
    #[error("the owner did not answer within {0:?}")]
    Timeout(Duration),
    /// The command or its answer could not be encoded or decoded.
    #[error("encoding: {0}")]
    Encoding(String),
}

/// A command as it travels to its owner.
#[derive(Serialize, Deserialize)]
pub(crate) struct RoutedCommand {
    pub kind: String,
    pub id: String,
    pub command: Vec<u8>,
    pub command_id: Option<CommandId>,
    pub correlation_id: Option<CorrelationId>,
    pub causation_id: Option<CausationId>,
    pub expected_version: Option<ExpectedVersion>,
    pub timeout_ms: Option<u64>,
    pub headers: Vec<(String, String)>,
}

/// The owner's answer.
#[derive(Serialize, Deserialize)]
pub(crate) enum RoutedReply {
    Done {
        version: u64,
        position: Option<u64>,
        events: Vec<u8>,
        deduplicated: bool,
    },
    Rejected(Vec<u8>),
    OwnerUnavailable(u32),
    Moved(u32),
    Timeout(u64),
    Failed(String),
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let config = bincode::config::standard().with_limit::<ROUTED_BYTES_MAX>();
    bincode::serde::decode_from_slice(bytes, config)
        .map(|(value, _)| value)
        .map_err(|e| e.to_string())
}

/// The options a routed command carries.
pub(crate) fn routed<A: Aggregate>(
    id: &str,
    command: &A::Command,
    options: &ExecuteOptions,
) -> Result<RoutedCommand, String> {
    Ok(RoutedCommand {
        kind: A::KIND.to_owned(),
        id: id.to_owned(),
        command: encode(command)?,
        command_id: options.command_id,
        correlation_id: options.correlation_id,
        causation_id: options.causation_id,
        expected_version: options.expected_version,
        timeout_ms: options
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        headers: options.headers.clone(),
    })
}

/// The options of a routed command, on its owner.
fn options_of(command: &RoutedCommand) -> ExecuteOptions {
    let mut options = ExecuteOptions::new();
    options.command_id = command.command_id;
    options.correlation_id = command.correlation_id;
    options.causation_id = command.causation_id;
    options.expected_version = command.expected_version;
    options.timeout = command.timeout_ms.map(Duration::from_millis);
    options.headers = command.headers.clone();
    options
}

/// The partition an append error says is unavailable, if it says so.
pub(crate) fn unavailable_partition(error: &AppendError) -> Option<u32> {
    match error {
        AppendError::Unavailable {
            reason:
                Unavailability::NotOwner { partition } | Unavailability::Fenced { partition, .. },
            ..
        } => Some(*partition),
        _ => None,
    }
}

/// A local command's error, as the cluster reports it.
/// `explicit`: the caller gave an expected version, so a version
/// conflict is its to handle; otherwise the conflict is with the
/// runtime's own chaining of appends, and a retry is safe.
pub(crate) fn local_error<E: std::error::Error + 'static>(
    error: CommandError<E>,
    partition: u32,
    explicit: bool,
) -> ClusterCommandError<E> {
    match error {
        CommandError::Rejected(error) => ClusterCommandError::Rejected(error),
        CommandError::Store(ref append) if unavailable_partition(append).is_some() => {
            ClusterCommandError::OwnerUnavailable { partition }
        }
        CommandError::Store(AppendError::Unavailable { .. }) => {
            ClusterCommandError::OwnerUnavailable { partition }
        }
        CommandError::PrecedingAppendFailed => ClusterCommandError::Moved { partition },
        CommandError::WrongExpectedVersion { .. } if !explicit => {
            ClusterCommandError::Moved { partition }
        }
        other => ClusterCommandError::Local(other),
    }
}

/// The answer of a routed command, on the caller.
pub(crate) fn answer_of<A: Aggregate>(
    reply: RoutedReply,
) -> Result<CommandOutcome<A::Event>, ClusterCommandError<A::Error>>
where
    A::Error: DeserializeOwned,
{
    match reply {
        RoutedReply::Done {
            version,
            position,
            events,
            deduplicated,
        } => Ok(CommandOutcome {
            version,
            position,
            events: decode(&events).map_err(ClusterCommandError::Encoding)?,
            deduplicated,
        }),
        RoutedReply::Rejected(error) => Err(ClusterCommandError::Rejected(
            decode(&error).map_err(ClusterCommandError::Encoding)?,
        )),
        RoutedReply::OwnerUnavailable(partition) => {
            Err(ClusterCommandError::OwnerUnavailable { partition })
        }
        RoutedReply::Moved(partition) => Err(ClusterCommandError::Moved { partition }),
        RoutedReply::Timeout(ms) => Err(ClusterCommandError::Timeout(Duration::from_millis(ms))),
        RoutedReply::Failed(words) => Err(ClusterCommandError::Remote(words)),
    }
}

type Handler = Arc<
    dyn Fn(RuntimeHandle, RoutedCommand, u32) -> Pin<Box<dyn Future<Output = RoutedReply> + Send>>
        + Send
        + Sync,
>;

/// The aggregates a node executes for others, by kind.
#[derive(Clone, Default)]
pub struct Routes {
    handlers: HashMap<&'static str, Handler>,
}

impl Routes {
    /// Executes commands of `A` sent by other nodes.
    pub fn add<A: Aggregate>(&mut self)
    where
        A::Error: Serialize,
    {
        let handler: Handler =
            Arc::new(|runtime: RuntimeHandle, routed: RoutedCommand, partition| {
                Box::pin(async move {
                    let command: A::Command = match decode(&routed.command) {
                        Ok(command) => command,
                        Err(words) => return RoutedReply::Failed(format!("the command: {words}")),
                    };
                    let options = options_of(&routed);
                    let explicit = routed.expected_version.is_some();
                    match runtime
                        .execute_with::<A>(&routed.id, command, options)
                        .await
                    {
                        Ok(outcome) => match encode(&outcome.events) {
                            Ok(events) => RoutedReply::Done {
                                version: outcome.version,
                                position: outcome.position,
                                events,
                                deduplicated: outcome.deduplicated,
                            },
                            Err(words) => RoutedReply::Failed(format!("the events: {words}")),
                        },
                        Err(CommandError::Rejected(error)) => match encode(&error) {
                            Ok(bytes) => RoutedReply::Rejected(bytes),
                            Err(words) => RoutedReply::Failed(format!("the refusal: {words}")),
                        },
                        // Nothing was written: the append before it failed
                        // (its partition was lost, most likely). Retry.
                        Err(CommandError::PrecedingAppendFailed) => RoutedReply::Moved(partition),
                        Err(CommandError::WrongExpectedVersion { .. }) if !explicit => {
                            RoutedReply::Moved(partition)
                        }
                        Err(CommandError::Timeout(after)) => RoutedReply::Timeout(
                            u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                        ),
                        Err(CommandError::Store(error))
                            if unavailable_partition(&error).is_some() =>
                        {
                            RoutedReply::OwnerUnavailable(partition)
                        }
                        Err(CommandError::Store(AppendError::Unavailable { .. })) => {
                            RoutedReply::OwnerUnavailable(partition)
                        }
                        Err(other) => RoutedReply::Failed(other.to_string()),
                    }
                })
            });
        self.handlers.insert(A::KIND, handler);
    }

    /// Executes a routed command on `runtime` and answers it.
    pub(crate) async fn handle(
        &self,
        runtime: RuntimeHandle,
        bytes: &[u8],
        partition: u32,
    ) -> RoutedReply {
        let routed: RoutedCommand = match decode(bytes) {
            Ok(routed) => routed,
            Err(words) => return RoutedReply::Failed(format!("the request: {words}")),
        };
        match self.handlers.get(routed.kind.as_str()) {
            Some(handler) => handler(runtime, routed, partition).await,
            None => RoutedReply::Failed(format!(
                "aggregate kind {} is not routed by its owner",
                routed.kind
            )),
        }
    }
}
