//! Names of the metrics the runtime records through the `metrics` facade.
//! Install any `metrics` recorder (Prometheus, statsd, …) to collect them.

/// Histogram, seconds: from `execute` being called to the outcome. Labels:
/// `kind`, `result` (`ok`, `rejected`, `error`).
pub const COMMAND_LATENCY_SECONDS: &str = "eventfold_command_latency_seconds";
/// Histogram, seconds: from submitting an append to it being durable. Label: `kind`.
pub const APPEND_LATENCY_SECONDS: &str = "eventfold_append_latency_seconds";
/// Histogram, events: events per WriteBatch, sampled each second.
pub const WRITE_BATCH_EVENTS: &str = "eventfold_write_batch_events";
/// Gauge: commands waiting in a shard's mailbox, sampled each second.
/// Label: `shard`.
pub const MAILBOX_DEPTH: &str = "eventfold_mailbox_depth";
/// Gauge: aggregate actors resident over all shards.
pub const RESIDENT_ACTORS: &str = "eventfold_resident_actors";
/// Counter: aggregate actors activated (from the store or the state cache). Label: `kind`.
pub const ACTIVATIONS_TOTAL: &str = "eventfold_activations_total";
/// Counter: activations that started from the state cache (the state of
/// stopped aggregates kept in memory) instead of reading the store. Label: `kind`.
pub const STATE_CACHE_HITS_TOTAL: &str = "eventfold_state_cache_hits_total";
/// Counter: aggregate actors passivated. Label: `kind`.
pub const PASSIVATIONS_TOTAL: &str = "eventfold_passivations_total";
/// Counter: aggregate snapshots. Labels: `kind`, `result` (`saved`;
/// `failed`, the store refused it; `dropped`, taken when a command was
/// decided whose events then did not land, so never written).
pub const SNAPSHOTS_TOTAL: &str = "eventfold_snapshots_total";
/// Counter: commands refused before being decided. Label: `reason`
/// (`overloaded`, `timeout`, `shut_down`).
pub const REJECTIONS_TOTAL: &str = "eventfold_rejections_total";
/// Gauge: the last position a consumer has committed. Label: `consumer`.
pub const PROJECTION_CHECKPOINT: &str = "eventfold_projection_checkpoint";
/// Gauge: head minus a consumer's checkpoint. Label: `consumer`.
pub const PROJECTION_LAG: &str = "eventfold_projection_lag";
/// Gauge: the last position a durable subscription acknowledged. Label:
/// `subscription`.
pub const SUBSCRIPTION_CHECKPOINT: &str = "eventfold_subscription_checkpoint";
/// Gauge: head minus a durable subscription's last acknowledged position,
/// set at each acknowledgement. Label: `subscription`.
pub const SUBSCRIPTION_LAG: &str = "eventfold_subscription_lag";
/// Gauge: a consumer's parked events, set at each commit. Label: `consumer`.
pub const PARKED_EVENTS: &str = "eventfold_parked_events";
/// Counter: inputs (events, results, timers) a process manager's instances
/// handled. Label: `process`.
pub const PROCESS_STEPS_TOTAL: &str = "eventfold_process_steps_total";
/// Counter: commands process-manager instances sent. Label: `process`.
pub const PROCESS_COMMANDS_TOTAL: &str = "eventfold_process_commands_total";
/// Gauge: stuck instances of a process manager (read back at start, then
/// counted as they get stuck and are resumed or cancelled). Label: `process`.
pub const PROCESS_STUCK: &str = "eventfold_process_stuck";
