//! Sending an outbox command to its aggregate: through the runtime's
//! router (or the [`CommandSender`] registered for its type, when another
//! node hosts it), with the command's deterministic id, retried with
//! backoff as the process manager's settings say; the answer becomes a
//! `ResultOutcome` for the instance.

use super::records::OutboxRecord;
use super::results::ResultOutcome;
use super::settings::ProcessSettings;
use crate::command::router::Router;
use crate::error::CommandError;
use crate::{CommandOutcome, ExecuteOptions};
use eventfold_domain::{Aggregate, CausationId, CommandId, CorrelationId};
use eventfold_storage::{EventStore, payload};
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

/// What a delivery attempt ended with.
pub(crate) enum Delivery {
    Done(ResultOutcome),
    /// The runtime is shutting down: the command stays in the outbox and is
    /// sent again at the next start.
    Abandoned,
}

pub(crate) type DeliveryFuture = Pin<Box<dyn Future<Output = Delivery> + Send>>;

/// Sends an encoded command to one aggregate type.
pub(crate) trait Dispatch: Send + Sync {
    fn send(
        &self,
        router: &Arc<Router>,
        store: &Arc<dyn EventStore>,
        entry: &OutboxRecord,
        settings: &ProcessSettings,
    ) -> DeliveryFuture;
}

/// The aggregate types commands can be sent to, by `KIND`.
pub(crate) type DispatchTable = HashMap<&'static str, Arc<dyn Dispatch>>;

/// The answer of a command sent to another node.
pub type SentCommand<A> = Pin<
    Box<
        dyn Future<
                Output = Result<
                    CommandOutcome<<A as Aggregate>::Event>,
                    CommandError<<A as Aggregate>::Error>,
                >,
            > + Send,
    >,
>;

/// Sends the commands process managers address to aggregates of `A` that
/// another node hosts (a cluster routes each to its partition's owner).
///
/// An error other than [`CommandError::Rejected`], `InvalidId`,
/// `NotRegistered`, `Encode` or `ShutDown` is retried with the same
/// command id as the process manager's `dispatch_retry` says.
pub trait CommandSender<A: Aggregate>: Send + Sync + 'static {
    /// Whether this runtime hosts aggregate `id` now: its own router
    /// executes the command then, and [`send`](Self::send) is not asked.
    fn hosted_here(&self, id: &str) -> bool;
    /// The command's answer from the node that hosts aggregate `id`.
    fn send(&self, id: &str, command: A::Command, options: ExecuteOptions) -> SentCommand<A>;
}

pub(crate) struct TypedDispatch<A: Aggregate> {
    sender: Option<Arc<dyn CommandSender<A>>>,
    _kind: PhantomData<fn() -> A>,
}

impl<A: Aggregate> TypedDispatch<A> {
    pub(crate) fn new(sender: Option<Arc<dyn CommandSender<A>>>) -> Self {
        Self {
            sender,
            _kind: PhantomData,
        }
    }
}

impl<A: Aggregate> Dispatch for TypedDispatch<A> {
    fn send(
        &self,
        router: &Arc<Router>,
        store: &Arc<dyn EventStore>,
        entry: &OutboxRecord,
        settings: &ProcessSettings,
    ) -> DeliveryFuture {
        let router = Arc::clone(router);
        let store = Arc::clone(store);
        let aggregate_id = entry.aggregate_id.clone();
        let payload = entry.payload.clone();
        let command_id = CommandId::from_bytes(entry.command_id);
        let retry = settings.dispatch_retry.clone();
        let sender = self.sender.clone();
        let mut options = settings.execute_options(command_id);
        if let Some(correlation) = entry.trace.correlation {
            options = options.correlation_id(CorrelationId::from_bytes(correlation));
        }
        if let Some(causation) = entry.trace.causation {
            options = options.causation_id(CausationId::from_bytes(causation));
        }
        Box::pin(async move {
            let mut last = String::new();
            for attempt in 1..=retry.attempts_max {
                let command: A::Command = match payload::decode(&payload) {
                    Ok(command) => command,
                    Err(error) => {
                        return Delivery::Done(ResultOutcome::Failed(format!(
                            "the command could not be decoded: {error}"
                        )));
                    }
                };
                let answer = match &sender {
                    Some(sender) if !sender.hosted_here(&aggregate_id) => {
                        sender.send(&aggregate_id, command, options.clone()).await
                    }
                    _ => {
                        router
                            .submit::<A>(&aggregate_id, command, options.clone())
                            .await
                    }
                };
                match answer {
                    Ok(mut outcome) => {
                        if outcome.deduplicated && outcome.events.is_empty() {
                            // The answer of a duplicate found at append time
                            // carries no events: read the original's. Blocks
                            // the host's thread, which serves only this host.
                            if let Ok(Some(original)) = crate::command::actor::applied::<A>(
                                &*store,
                                &router.shared().upcasters,
                                command_id,
                            ) {
                                outcome = original;
                            }
                        }
                        return Delivery::Done(ResultOutcome::Accepted {
                            version: outcome.version,
                            position: outcome.position,
                            deduplicated: outcome.deduplicated,
                            events: Arc::new(outcome.events),
                        });
                    }
                    Err(CommandError::Rejected(error)) => {
                        return Delivery::Done(ResultOutcome::Rejected {
                            message: error.to_string(),
                            error: Arc::new(error),
                        });
                    }
                    Err(CommandError::ShutDown) => return Delivery::Abandoned,
                    Err(
                        error @ (CommandError::InvalidId(_)
                        | CommandError::NotRegistered(_)
                        | CommandError::Encode(_)),
                    ) => return Delivery::Done(ResultOutcome::Failed(error.to_string())),
                    Err(error) => {
                        last = error.to_string();
                        if attempt < retry.attempts_max {
                            tokio::time::sleep(retry.backoff(attempt)).await;
                        }
                    }
                }
            }
            Delivery::Done(ResultOutcome::Failed(format!(
                "not delivered after {} attempts: {last}",
                retry.attempts_max
            )))
        })
    }
}
