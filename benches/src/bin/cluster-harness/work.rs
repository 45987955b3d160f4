//! The harness's workload: commands sent to the cluster by `workers` at
//! a time, each retried with its command id while its owner is
//! unavailable, every acknowledgement recorded.

use crate::Record;
use crate::check::Sent;
use eventfold_cluster::{ClusterClient, ClusterCommandError};
use eventfold_examples::{Account, AccountCommand, AccountError};
use eventfold_runtime::ExecuteOptions;
use eventfold_runtime::domain::CommandId;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a phase's workload may take: a cluster that stops
/// acknowledging commands fails the run instead of hanging it.
pub const PHASE_TIME_MAX: Duration = Duration::from_secs(180);

/// What the harness asks of an account.
#[derive(Clone, Debug)]
pub enum Order {
    Open,
    Deposit(u64),
    /// A transfer out, to the account named.
    Transfer {
        id: String,
        to: String,
        amount: u64,
    },
}

impl Order {
    fn command(&self, account: &str) -> AccountCommand {
        match self {
            Order::Open => AccountCommand::Open {
                owner: format!("owner {account}"),
            },
            Order::Deposit(amount) => AccountCommand::Deposit { amount: *amount },
            Order::Transfer { id, to, amount } => AccountCommand::TransferOut {
                transfer_id: id.clone(),
                to: to.clone(),
                amount: *amount,
            },
        }
    }
}

/// Sends every command, `workers` at a time, each retried with its command
/// id while the owner is unavailable (at most a minute).
pub async fn workload(
    client: &ClusterClient,
    record: &Arc<Record>,
    commands: Vec<(String, Order)>,
    workers: usize,
    partitions: u32,
) -> Result<(), String> {
    let queue = Arc::new(Mutex::new(commands.into_iter()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (client, record, queue) = (client.clone(), Arc::clone(record), Arc::clone(&queue));
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((account, order)) = next else {
                    return Ok::<(), String>(());
                };
                if started.elapsed() > PHASE_TIME_MAX {
                    return Err(format!(
                        "the phase did not finish within {PHASE_TIME_MAX:?}: commands stopped being acknowledged"
                    ));
                }
                let command_id = CommandId::random();
                let command = order.command(&account);
                let partition = client
                    .partition_of::<Account>(&account)
                    .unwrap_or(partitions);
                let sent_at = Instant::now();
                let acknowledged = send(&client, &account, command, command_id).await?;
                if acknowledged.is_some()
                    && let Ok(mut acks) = record.acks.lock()
                {
                    acks.push((sent_at, Instant::now(), partition));
                }
                if let Ok(mut sent) = record.sent.lock() {
                    let (amount, to) = match order {
                        Order::Open => (0, None),
                        Order::Deposit(amount) => (amount, None),
                        Order::Transfer { to, amount, .. } => (amount, Some(to)),
                    };
                    sent.push(Sent {
                        account,
                        amount,
                        to,
                        command_id,
                        acknowledged,
                    });
                }
                record.done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// One command until it is acknowledged (its version and position) or
/// given up (`None`: its outcome unknown).
async fn send(
    client: &ClusterClient,
    account: &str,
    command: AccountCommand,
    command_id: CommandId,
) -> Result<Option<(u64, u64)>, String> {
    let started = Instant::now();
    loop {
        let options = ExecuteOptions::new()
            .command_id(command_id)
            .timeout(Duration::from_secs(5));
        match client
            .execute::<Account>(account, command.clone(), options)
            .await
        {
            Ok(outcome) => return Ok(Some((outcome.version, outcome.position.unwrap_or(0)))),
            // An account opened by an attempt whose answer was lost; a
            // transfer the account cannot cover: nothing to record.
            Err(ClusterCommandError::Rejected(
                AccountError::AlreadyOpen | AccountError::InsufficientFunds { .. },
            )) => return Ok(None),
            Err(
                ClusterCommandError::OwnerUnavailable { .. }
                | ClusterCommandError::Moved { .. }
                | ClusterCommandError::Timeout(_),
            ) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(
                ClusterCommandError::OwnerUnavailable { .. }
                | ClusterCommandError::Moved { .. }
                | ClusterCommandError::Timeout(_),
            ) => {
                return Ok(None);
            }
            Err(error) => return Err(format!("account {account}: {error}")),
        }
    }
}
