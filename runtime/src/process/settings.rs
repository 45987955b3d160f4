//! A process manager's settings: bounds, retries, timeouts.

use crate::command::outcome::ExecuteOptions;
use crate::error::InvalidSetting;
use eventfold_domain::CommandId;
use std::time::Duration;

/// Attempts and backoff of a retried operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts_max: u32,
    /// Wait before the second attempt; doubled each time.
    pub backoff_initial: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Most partitions of one process manager.
pub const PROCESS_PARTITIONS_MAX: usize = 256;

/// Settings of one process manager.
#[derive(Clone, Debug)]
pub struct ProcessSettings {
    /// Most instances kept in memory; the least recently used beyond it are
    /// passivated (their state stays in the store).
    pub instances_resident_max: usize,
    /// Instances idle this long are passivated.
    pub instance_idle: Duration,
    /// Most commands sent and not yet answered (the outbox). While it is
    /// full no new events are taken: results and timers still are.
    pub outbox_max: usize,
    /// Most commands being delivered at once.
    pub dispatch_in_flight_max: usize,
    /// Delivery retries of one command on overload, timeout, panic or load
    /// failure of the target; after the last, the instance gets
    /// [`ResultOutcome::Failed`](super::ResultOutcome::Failed).
    pub dispatch_retry: RetryPolicy,
    /// Timeout of each delivery attempt.
    pub command_timeout: Duration,
    /// Retries of a failing handler on the same input; after the last, the
    /// instance is parked as stuck. The process manager waits during the
    /// backoff.
    pub handler_retry: RetryPolicy,
    /// Most inputs handled per commit.
    pub batch_inputs_max: usize,
    /// Most timers set at once across the process manager's instances; a
    /// step that would set more fails (and is retried, then parked).
    pub timers_max: usize,
    /// Most events read from the store per catch-up read.
    pub catch_up_chunk_events: usize,
    /// Host threads the instances are spread over, by a stable hash of
    /// the instance id (1 to [`PROCESS_PARTITIONS_MAX`]). Each partition
    /// reads the log in order, keeps its own checkpoint, outbox and timers
    /// (read model `$pm.{name}#{i}`; `$pm.{name}` when there is one), and
    /// runs under a placement as `{name}#{i}`. The count is kept in the
    /// store: a runtime started with another count on the same store is
    /// refused ([`StartError::ProcessPartitions`](crate::StartError)),
    /// since its instances would be looked for in the wrong partitions.
    pub partitions: usize,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        Self {
            instances_resident_max: 100_000,
            instance_idle: Duration::from_secs(60),
            outbox_max: 65_536,
            dispatch_in_flight_max: 4096,
            dispatch_retry: RetryPolicy {
                attempts_max: 8,
                backoff_initial: Duration::from_millis(5),
                backoff_max: Duration::from_secs(1),
            },
            command_timeout: Duration::from_secs(5),
            handler_retry: RetryPolicy {
                attempts_max: 3,
                backoff_initial: Duration::from_millis(5),
                backoff_max: Duration::from_millis(100),
            },
            batch_inputs_max: 4096,
            timers_max: 1_000_000,
            catch_up_chunk_events: 4096,
            partitions: 1,
        }
    }
}

impl ProcessSettings {
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        let zero = [
            ("instances_resident_max", self.instances_resident_max),
            ("outbox_max", self.outbox_max),
            ("dispatch_in_flight_max", self.dispatch_in_flight_max),
            ("batch_inputs_max", self.batch_inputs_max),
            ("timers_max", self.timers_max),
            ("catch_up_chunk_events", self.catch_up_chunk_events),
            ("partitions", self.partitions),
            (
                "dispatch_retry.attempts_max",
                self.dispatch_retry.attempts_max as usize,
            ),
            (
                "handler_retry.attempts_max",
                self.handler_retry.attempts_max as usize,
            ),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, value)| *value == 0) {
            return Err(InvalidSetting::new(*name, "must be at least 1"));
        }
        if self.partitions > PROCESS_PARTITIONS_MAX {
            return Err(InvalidSetting::new(
                "partitions",
                "must be at most PROCESS_PARTITIONS_MAX (256)",
            ));
        }
        Ok(())
    }

    pub(crate) fn execute_options(&self, command_id: CommandId) -> ExecuteOptions {
        ExecuteOptions::new()
            .command_id(command_id)
            .timeout(self.command_timeout)
    }
}
