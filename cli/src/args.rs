//! The command line: one subcommand per question an operator asks.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// eventfold, the inspector: what a store holds and where its readers
/// stand, beside a running service. Read-only commands open the store
/// read-only (they work while a service holds it); commands that change
/// something go through the service's admin endpoints (`--service URL`)
/// or are refused while the store is in use.
#[derive(Parser, Debug)]
#[command(name = "eventfold", version)]
pub(crate) struct Cli {
    /// Print JSON for scripts instead of tables (events: one object per line).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where an action goes: the running service, or the store directly.
#[derive(Args, Debug, Clone)]
pub(crate) struct Target {
    /// The running service holding the store (its admin endpoints).
    #[arg(long, value_name = "URL")]
    pub service: Option<String>,
    /// The service's admin token.
    #[arg(long, env = "EVENTFOLD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The store's directory, when no service holds it.
    #[arg(long = "store", value_name = "PATH")]
    pub store: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Streams with their version, first and last position, last write time.
    Streams {
        /// The store's directory.
        path: PathBuf,
        /// Only the streams of this category (the id's part before its first `-`).
        #[arg(long)]
        category: Option<String>,
        /// At most this many streams (in index order).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The events of one stream, decoded where the binary knows them.
    Read {
        /// The store's directory.
        path: PathBuf,
        /// The stream id, such as `acc-alice`.
        stream: String,
        /// The first version to read (backward: the last; default: the end).
        #[arg(long)]
        from: Option<u64>,
        /// Read from the end toward the start.
        #[arg(long)]
        backward: bool,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// The global log: the last events, or from a position; live with --follow.
    Tail {
        /// The store's directory.
        path: PathBuf,
        /// The first position (default: the last --count events).
        #[arg(long)]
        from: Option<u64>,
        /// Only events of this category.
        #[arg(long)]
        category: Option<String>,
        /// Only events of this type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// Keep reading what the service writes, until interrupted (or --count).
        #[arg(long)]
        follow: bool,
        /// At most this many events (with --follow: stop after this many;
        /// default: without end).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Each projection's consumers: checkpoint, head, lag, state, parked events.
    Projections {
        /// The store's directory.
        path: PathBuf,
    },
    /// The events a projection parked.
    Parked {
        /// The store's directory.
        path: PathBuf,
        /// The projection.
        name: String,
    },
    /// Takes a parked event again (through the service).
    Retry(ParkedAction),
    /// Gives up on a parked event (through the service).
    Skip(ParkedAction),
    /// Each process manager: checkpoint, lag, instances, stuck, outbox, timers due.
    Processes {
        /// The store's directory.
        path: PathBuf,
    },
    /// The stuck instances of a process manager, with their last error.
    Stuck {
        /// The store's directory.
        path: PathBuf,
        /// The process manager.
        name: String,
    },
    /// Resumes a stuck instance (through the service).
    Resume(InstanceAction),
    /// Cancels an instance (through the service).
    Cancel(InstanceAction),
    /// Backs the store up (checksummed, incremental): through the service
    /// (DEST on its machine), or directly when no process holds the store.
    Backup {
        /// The backup directory.
        dest: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Restores the latest backup into an empty directory.
    Restore {
        /// The backup directory.
        backup: PathBuf,
        /// The new store's directory (missing or empty).
        target: PathBuf,
    },
    /// Walks the whole store and checks every record and index entry.
    Verify {
        /// The store's directory.
        path: PathBuf,
    },
    /// Converts a store of an earlier format in place (the store closed).
    Upgrade {
        /// The store's directory.
        path: PathBuf,
    },
    /// Opens a store whose write-ahead log is damaged, keeping the longest
    /// consistent prefix (the logs are copied aside first).
    Salvage {
        /// The store's directory.
        path: PathBuf,
    },
    /// Events, streams and bytes per keyspace.
    Stats {
        /// The store's directory.
        path: PathBuf,
    },
}

#[derive(Args, Debug)]
pub(crate) struct ParkedAction {
    /// The projection.
    pub name: String,
    /// The parked event's position.
    pub position: u64,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub(crate) struct InstanceAction {
    /// The process manager.
    pub name: String,
    /// The instance id.
    pub id: String,
    #[command(flatten)]
    pub target: Target,
}
