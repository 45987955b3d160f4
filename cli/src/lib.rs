//! `eventfold`, the inspector: what a store holds and where its readers
//! stand, for operators, beside a running service.
//!
//! The `eventfold` binary knows the bank's events. A service with its own
//! aggregates builds the same command line with its types, so `read` and
//! `tail` show its payloads decoded (and upcast to their current shape):
//!
//! ```no_run
//! use eventfold_cli::Inspector;
//! use eventfold_examples::Account;
//!
//! fn main() -> std::process::ExitCode {
//!     Inspector::new().aggregate::<Account>().run()
//! }
//! ```
//!
//! Read-only commands (`streams`, `read`, `tail`, `projections`, `parked`,
//! `processes`, `stuck`, `verify`, `stats`) open the store read-only beside
//! whoever holds it (RocksDB's secondary mode) and change nothing. Commands
//! that change something (`retry`, `skip`, `resume`, `cancel`, and `backup`
//! of a held store) go through the running service's admin endpoints
//! (`--service URL`, with its token), or are refused with what to do.
//! `restore`, `upgrade` and `salvage` need the store closed and say so.

#![deny(missing_docs)]

mod args;
mod commands;
mod decode;
mod error;
mod output;
mod progress;

pub use error::{Action, CliError};

use args::{Cli, Command};
use clap::Parser;
use commands::{actions, log, readers, upkeep};
use eventfold_domain::Aggregate;
use eventfold_runtime::evolution::Upcasters;
use output::Out;
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// The command line, with the aggregates whose events it decodes.
#[derive(Default)]
pub struct Inspector {
    decoders: decode::Decoders,
}

impl Inspector {
    /// An inspector that decodes only the store's own events (deletions);
    /// others show as hex.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the events of `A`'s streams (category `A::KIND`), upcast to
    /// their current shape first.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.decoders.add::<A>();
        self
    }

    /// The upcasters the service registers, applied before decoding.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.decoders.upcasters = self.decoders.upcasters.merge(upcasters);
        self
    }

    /// Runs the command line of this process: output on standard output,
    /// errors on standard error; exit code 0, 1 on an error, 2 on a usage
    /// error.
    pub fn run(self) -> ExitCode {
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            Err(error) => {
                let code = if error.use_stderr() { 2 } else { 0 };
                let _ = error.print();
                return ExitCode::from(code);
            }
        };
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        match self.execute(cli, &mut lock) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                let _ = lock.flush();
                eprintln!("eventfold: {error}");
                ExitCode::FAILURE
            }
        }
    }

    /// Runs the command line `args` (the program's name first), writing
    /// to `out`.
    pub fn run_from<I, T>(&self, args: I, out: &mut dyn Write) -> Result<(), RunError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(RunError::Usage)?;
        Ok(self.execute(cli, out)?)
    }

    fn execute(&self, cli: Cli, writer: &mut dyn Write) -> Result<(), CliError> {
        let mut out = Out {
            json: cli.json,
            writer,
        };
        let out = &mut out;
        let decoders = &self.decoders;
        match cli.command {
            Command::Streams {
                path,
                category,
                limit,
            } => log::streams(out, &path, category.as_deref(), limit),
            Command::Read {
                path,
                stream,
                from,
                backward,
                count,
            } => log::read(out, decoders, &path, &stream, from, backward, count),
            Command::Tail {
                path,
                from,
                category,
                event_type,
                follow,
                count,
            } => {
                let query = log::TailQuery {
                    from,
                    category,
                    event_type,
                    follow,
                    count,
                };
                log::tail(out, decoders, &path, &query)
            }
            Command::Projections { path } => readers::projections(out, &path),
            Command::Parked { path, name } => readers::parked(out, &path, &name),
            Command::Retry(a) => {
                actions::parked(out, Action::Retry, &a.name, a.position, &a.target)
            }
            Command::Skip(a) => actions::parked(out, Action::Skip, &a.name, a.position, &a.target),
            Command::Processes { path } => readers::processes(out, &path),
            Command::Stuck { path, name } => readers::stuck(out, &path, &name),
            Command::Resume(a) => actions::instance(out, Action::Resume, &a.name, &a.id, &a.target),
            Command::Cancel(a) => actions::instance(out, Action::Cancel, &a.name, &a.id, &a.target),
            Command::Backup { dest, target } => actions::backup(out, &dest, &target),
            Command::Restore { backup, target } => upkeep::restore(out, &backup, &target),
            Command::Verify { path } => upkeep::verify(out, &path),
            Command::Upgrade { path } => upkeep::upgrade(out, &path),
            Command::Salvage { path } => upkeep::salvage(out, &path),
            Command::Stats { path } => upkeep::stats(out, &path),
        }
    }
}

/// Why [`Inspector::run_from`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The command line is not one (or asked for help: the text is in it).
    #[error(transparent)]
    Usage(clap::Error),
    /// The command failed.
    #[error(transparent)]
    Command(#[from] CliError),
}
