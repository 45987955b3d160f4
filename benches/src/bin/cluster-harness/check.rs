//! The checks after each fault, made from the log itself: every message
//! read from JetStream in order and decoded as eventfold's, every
//! acknowledged command found once, versions contiguous, tokens never going
//! back along a stream, every transfer debited once and then credited or
//! refunded once (never both), money conserved.

use eventfold_cluster::log::Log;
use eventfold_cluster::wire::{self, EventMessage};
use eventfold_examples::{Account, AccountEvent};
use eventfold_runtime::domain::{Aggregate, CommandId, StreamId};
use eventfold_runtime::storage::payload;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};

/// A command the harness sent: acknowledged (with its version and
/// position) or given up (its outcome unknown).
#[derive(Clone, Debug)]
pub struct Sent {
    pub account: String,
    pub amount: u64,
    /// A transfer's target (else a deposit, or an opening when `amount`
    /// is 0).
    pub to: Option<String>,
    pub command_id: CommandId,
    pub acknowledged: Option<(u64, u64)>,
}

/// One transfer as the log tells it.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferSeen {
    pub debits: u32,
    pub credits: u32,
    pub refunds: u32,
}

/// What the log holds, folded.
#[derive(Default)]
pub struct Folded {
    /// Messages read (events and markers).
    pub messages: u64,
    /// Events per command id.
    pub commands: HashMap<CommandId, u32>,
    /// Per stream: its version and the last token.
    pub streams: HashMap<String, (u64, u64)>,
    /// Per account stream: the balance the events make.
    pub balances: HashMap<String, i128>,
    /// Position of each command id's event.
    pub positions: HashMap<CommandId, (u64, u64)>,
    /// What each position holds: stream, version, command id.
    pub at: HashMap<u64, (String, u64, Option<CommandId>)>,
    /// Every transfer, by id.
    pub transfers: HashMap<String, TransferSeen>,
    /// Per account stream: money in and out by transfers (credits and
    /// refunds in, debits out).
    pub transferred: HashMap<String, i128>,
}

impl Folded {
    /// Transfers debited and not yet credited or refunded.
    pub fn open_transfers(&self) -> usize {
        self.transfers
            .values()
            .filter(|t| t.debits > 0 && t.credits + t.refunds == 0)
            .count()
    }
}

/// Reads of the log that may fail (an election after a fault) before the
/// fold gives up.
const FOLD_READ_ATTEMPTS: usize = 10;

/// Reads the whole log and folds it; every fault found is an error.
pub async fn fold(log: &Log) -> Result<Folded, String> {
    let end = log.last_sequence().await.map_err(|e| e.to_string())?;
    fold_until(log, end).await
}

/// Folds the log's positions 1 to `end`.
pub async fn fold_until(log: &Log, end: u64) -> Result<Folded, String> {
    let mut folded = Folded::default();
    if end == 0 {
        return Ok(folded);
    }
    let stream = log
        .jetstream()
        .get_stream(&log.config().stream)
        .await
        .map_err(|e| e.to_string())?;
    let subjects = log.subjects();
    let mut expected = 1;
    let mut messages = None;
    let mut failures = 0;
    while expected <= end {
        // A consumer from where the fold is, again after a read failed
        // (the services may be electing after the last fault).
        if messages.is_none() {
            let config = async_nats::jetstream::consumer::pull::OrderedConfig {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: expected,
                },
                ..Default::default()
            };
            let opened = match stream.create_consumer(config).await {
                Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match opened {
                Ok(opened) => messages = Some(opened),
                Err(error) => {
                    failures += 1;
                    if failures > FOLD_READ_ATTEMPTS {
                        return Err(format!("reading the log: {error}"));
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let Some(reading) = messages.as_mut() else {
            continue;
        };
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), reading.next()).await;
        let message = match next {
            Ok(Some(Ok(message))) => message,
            failed => {
                failures += 1;
                if failures > FOLD_READ_ATTEMPTS {
                    return Err(format!(
                        "position {expected} of {end} could not be read: {failed:?}"
                    ));
                }
                messages = None;
                continue;
            }
        };
        let sequence = message.info().map_err(|e| e.to_string())?.stream_sequence;
        if sequence != expected {
            return Err(format!(
                "a gap in the log: {sequence} after {}",
                expected - 1
            ));
        }
        expected += 1;
        folded.messages += 1;
        if let Some(partition) = subjects.fence_partition(&message.subject) {
            folded.at.insert(
                sequence,
                (format!("marker of partition {partition}"), 0, None),
            );
            continue;
        }
        if let Some(fence) = subjects.read_model_fence(&message.subject) {
            folded.at.insert(
                sequence,
                (format!("process manager state of fence {fence}"), 0, None),
            );
            continue;
        }
        let decoded = wire::decode_event(&EventMessage {
            sequence,
            headers: message.headers.as_ref(),
            payload: &message.payload,
        })
        .map_err(|e| e.to_string())?;
        let stream_id = decoded.stream.as_str().to_owned();
        let (version, token) = folded.streams.get(&stream_id).copied().unwrap_or((0, 0));
        if decoded.version != version + 1 {
            return Err(format!(
                "{stream_id}: version {} after {version} at {sequence}",
                decoded.version
            ));
        }
        if decoded.token < token {
            return Err(format!(
                "{stream_id}: token {} after {token} at {sequence}: fencing went back",
                decoded.token
            ));
        }
        folded
            .streams
            .insert(stream_id.clone(), (decoded.version, decoded.token));
        if let Some(id) = decoded.command
            && decoded.index == 0
        {
            *folded.commands.entry(id).or_default() += 1;
            folded.positions.insert(id, (decoded.version, sequence));
        }
        folded.at.insert(
            sequence,
            (stream_id.clone(), decoded.version, decoded.command),
        );
        let event: AccountEvent = payload::decode(&decoded.event.payload)
            .map_err(|e| format!("{stream_id} at {sequence}: {e}"))?;
        let delta = event.balance_delta();
        let transfer = match &event {
            AccountEvent::TransferDebited { transfer_id, .. } => Some((transfer_id, 0)),
            AccountEvent::TransferCredited { transfer_id, .. } => Some((transfer_id, 1)),
            AccountEvent::TransferRefunded { transfer_id, .. } => Some((transfer_id, 2)),
            _ => None,
        };
        if let Some((id, what)) = transfer {
            let seen = folded.transfers.entry(id.clone()).or_default();
            match what {
                0 => seen.debits += 1,
                1 => seen.credits += 1,
                _ => seen.refunds += 1,
            }
            *folded.transferred.entry(stream_id.clone()).or_default() += delta;
        }
        *folded.balances.entry(stream_id).or_default() += delta;
    }
    Ok(folded)
}

/// Checks the commands sent against the folded log; a description of
/// each fault found.
pub fn against(sent: &[Sent], folded: &Folded) -> Vec<String> {
    let mut faults = Vec::new();
    let mut expected: HashMap<String, i128> = HashMap::new();
    let mut deposited: i128 = 0;
    let mut seen = HashSet::new();
    for command in sent {
        if !seen.insert(command.command_id) {
            faults.push(format!(
                "command id {} sent twice by the harness",
                command.command_id
            ));
        }
        let count = folded
            .commands
            .get(&command.command_id)
            .copied()
            .unwrap_or(0);
        if count > 1 {
            faults.push(format!(
                "command {} is in the log {count} times",
                command.command_id
            ));
        }
        match (command.acknowledged, folded.positions.get(&command.command_id)) {
            (Some(ack), Some(found)) if ack != *found => faults.push(format!(
                "command {} acknowledged at {ack:?}, in the log at {found:?}",
                command.command_id
            )),
            (Some(ack), None) => faults.push(format!(
                "acknowledged command {} (account {}, version and position {ack:?}) is not in the log; that position holds {:?}",
                command.command_id,
                command.account,
                folded.at.get(&ack.1)
            )),
            _ => {}
        }
        if count > 0 && command.to.is_none() {
            let stream = StreamId::for_aggregate(Account::KIND, &command.account)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            *expected.entry(stream).or_default() += i128::from(command.amount);
            deposited += i128::from(command.amount);
        }
    }
    // Each account: the deposits that landed, and what transfers moved
    // (from the log: the process manager's credits and refunds are its
    // own commands).
    for (account, moved) in &folded.transferred {
        *expected.entry(account.clone()).or_default() += moved;
    }
    for (account, balance) in &folded.balances {
        let wanted = expected.get(account).copied().unwrap_or(0);
        if *balance != wanted {
            faults.push(format!(
                "{account}: the log makes {balance}, the commands that landed {wanted}"
            ));
        }
    }
    // With every transfer settled, transfers moved money between
    // accounts and made or lost none: the accounts hold what was deposited.
    let total: i128 = folded.balances.values().sum();
    let moved: i128 = folded.transferred.values().sum();
    if folded.open_transfers() == 0 && (moved != 0 || total != deposited) {
        faults.push(format!(
            "money: the accounts hold {total}, the deposits that landed made {deposited}, transfers moved {moved} in all"
        ));
    }
    for (id, seen) in &folded.transfers {
        if seen.debits != 1 || seen.credits + seen.refunds > 1 {
            faults.push(format!(
                "transfer {id}: debited {} times, credited {}, refunded {}",
                seen.debits, seen.credits, seen.refunds
            ));
        }
    }
    faults
}
